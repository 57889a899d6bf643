//! Reading an instance's state over its Unix socket with the dialect's status SQL.

use std::time::Duration;

use tokio_postgres::{Client, NoTls, Row};

use super::config::InstanceConfig;
use super::report::{NodeReport, ReceiverReport, ReplicationRow};
use crate::engine::{Dialect, Lsn};

/// A connection to the local server, reopened when it breaks.
#[derive(Default)]
pub struct LocalConnection {
    client: Option<Client>,
}

impl std::fmt::Debug for LocalConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalConnection").field("open", &self.client.is_some()).finish()
    }
}

/// What one probe saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub node: NodeReport,
    /// Parameters waiting for a restart.
    pub pending_restart: Vec<String>,
    pub receiver: Option<ReceiverReport>,
    pub replication: Vec<ReplicationRow>,
}

pub async fn connect(cfg: &InstanceConfig, timeout: Duration) -> Result<Client, tokio_postgres::Error> {
    let mut pg = tokio_postgres::Config::new();
    pg.host_path(&cfg.socket_dir)
        .port(cfg.port)
        .user(&cfg.superuser)
        .dbname("postgres")
        .application_name("opengauss-operator")
        .connect_timeout(timeout);
    let (client, connection) = pg.connect(NoTls).await?;
    tokio::spawn(async move {
        // Ends when the server closes the connection or the client is dropped.
        let _ = connection.await;
    });
    Ok(client)
}

/// Asks the server at `source` for a checkpoint, as the superuser over TCP.
pub async fn checkpoint_remote(
    cfg: &InstanceConfig,
    source: &crate::engine::Endpoint,
    password: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&source.host)
        .port(source.port)
        .user(&cfg.superuser)
        .password(password)
        .dbname("postgres")
        .application_name("opengauss-operator")
        .connect_timeout(timeout);
    let work = async {
        let (client, connection) = pg.connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client.batch_execute("CHECKPOINT").await
    };
    match tokio::time::timeout(timeout * 20, work).await {
        Ok(result) => Ok(result?),
        Err(_) => anyhow::bail!("CHECKPOINT on {source} did not finish in time"),
    }
}

fn lsn(row: &Row, idx: usize) -> Option<Lsn> {
    row.get::<_, Option<String>>(idx).and_then(|s| s.parse().ok())
}

impl LocalConnection {
    /// Runs the status queries; `None` when the server does not answer within `timeout`.
    pub async fn probe(&mut self, cfg: &InstanceConfig, timeout: Duration) -> Option<Probe> {
        match tokio::time::timeout(timeout, self.probe_inner(cfg, timeout)).await {
            Ok(Ok(p)) => Some(p),
            _ => {
                self.client = None;
                None
            }
        }
    }

    /// Runs one statement (used for setup SQL such as creating the replication role).
    pub async fn execute(&mut self, cfg: &InstanceConfig, sql: &str) -> anyhow::Result<()> {
        let client = self.client(cfg, Duration::from_secs(5)).await?;
        client.batch_execute(sql).await.map_err(|e| {
            self.client = None;
            anyhow::anyhow!("SQL failed: {e}")
        })
    }

    async fn client(
        &mut self,
        cfg: &InstanceConfig,
        timeout: Duration,
    ) -> Result<&Client, tokio_postgres::Error> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(connect(cfg, timeout).await?);
        }
        Ok(self.client.as_ref().expect("connected above"))
    }

    async fn probe_inner(
        &mut self,
        cfg: &InstanceConfig,
        timeout: Duration,
    ) -> Result<Probe, tokio_postgres::Error> {
        let dialect: &dyn Dialect = cfg.dialect();
        let sql = dialect.status_sql();
        let client = self.client(cfg, timeout).await?;
        let row = client.query_one(sql.node, &[]).await?;
        let node = NodeReport {
            in_recovery: row.get(0),
            current_lsn: lsn(&row, 1),
            received_lsn: lsn(&row, 2),
            replayed_lsn: lsn(&row, 3),
            timeline: row.get::<_, Option<i32>>(4).and_then(|t| u32::try_from(t).ok()),
            synchronous_standby_names: row.get(5),
        };
        let receiver = client.query_opt(sql.receiver, &[]).await?.map(|r| ReceiverReport {
            status: r.get::<_, Option<String>>(0).unwrap_or_default(),
            upstream_host: r.get(1),
            upstream_port: r.get::<_, Option<i32>>(2).and_then(|p| u16::try_from(p).ok()),
            flushed_lsn: lsn(&r, 3),
        });
        let replication = if node.in_recovery {
            Vec::new()
        } else {
            client
                .query(sql.replication, &[])
                .await?
                .iter()
                .map(|r| ReplicationRow {
                    instance: dialect.instance_of(&r.get::<_, Option<String>>(0).unwrap_or_default()),
                    client_addr: r.get(1),
                    state: r.get::<_, Option<String>>(2).unwrap_or_default(),
                    sync_state: r.get::<_, Option<String>>(3).unwrap_or_default().to_lowercase(),
                    sent_lsn: lsn(r, 4),
                    flush_lsn: lsn(r, 6),
                    replay_lsn: lsn(r, 7),
                    lag_bytes: r.get::<_, Option<i64>>(8).and_then(|b| u64::try_from(b).ok()),
                    lag_seconds: r.get(9),
                })
                .collect()
        };
        let pending_restart = match sql.pending_restart {
            Some(q) => client.query(q, &[]).await?.iter().map(|r| r.get::<_, String>(0)).collect(),
            None => Vec::new(),
        };
        Ok(Probe { node, pending_restart, receiver, replication })
    }
}
