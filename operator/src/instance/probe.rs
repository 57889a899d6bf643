//! Reading an instance's state over its Unix socket with the dialect's status SQL.

use std::time::Duration;

use tokio_postgres::{Client, NoTls, Row};

use super::config::InstanceConfig;
use super::report::{NodeReport, ReceiverReport, ReplicationRow};
use crate::engine::timeline::{self, History, Switch};
use crate::engine::{Dialect, Lsn};

/// A connection to the local server, reopened when it breaks.
#[derive(Default)]
pub struct LocalConnection {
    client: Option<Client>,
    /// The primary's timeline history, read once per timeline.
    switches: Option<(u32, Vec<Switch>)>,
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
    if let Some(options) = cfg.dialect().session_options() {
        pg.options(options);
    }
    let (client, connection) = pg.connect(NoTls).await?;
    tokio::spawn(async move {
        // Ends when the server closes the connection or the client is dropped.
        let _ = connection.await;
    });
    Ok(client)
}

/// Whether the server answers a query on a new connection within `timeout`.
pub async fn answers_fresh(cfg: &InstanceConfig, timeout: Duration) -> bool {
    let attempt = async {
        let client = connect(cfg, timeout).await?;
        client.simple_query("SELECT 1").await
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Ok(_)))
}

/// A superuser session on the server at `source` over TCP; with TLS the peer must present a
/// certificate of the cluster's authority for its address.
async fn connect_remote(
    cfg: &InstanceConfig,
    source: &crate::engine::Endpoint,
    password: &str,
    timeout: Duration,
) -> anyhow::Result<Client> {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&source.host)
        .port(source.port)
        .user(&cfg.superuser)
        .password(password)
        .dbname("postgres")
        .application_name("opengauss-operator")
        .connect_timeout(timeout);
    let client = match &cfg.tls {
        Some(files) => {
            let tls = crate::tls::config::client(&files.read_authority()?)?;
            pg.ssl_mode(tokio_postgres::config::SslMode::Require);
            let (client, connection) = pg.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls)).await?;
            tokio::spawn(connection);
            client
        }
        None => {
            let (client, connection) = pg.connect(NoTls).await?;
            tokio::spawn(connection);
            client
        }
    };
    Ok(client)
}

/// Asks the server at `source` for a checkpoint, as the superuser over TCP.
pub async fn checkpoint_remote(
    cfg: &InstanceConfig,
    source: &crate::engine::Endpoint,
    password: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let work = async {
        connect_remote(cfg, source, password, timeout).await?.batch_execute("CHECKPOINT").await?;
        anyhow::Ok(())
    };
    match tokio::time::timeout(timeout * 20, work).await {
        Ok(result) => result,
        Err(_) => anyhow::bail!("CHECKPOINT on {source} did not finish in time"),
    }
}

/// The timeline history of the server at `source` (`sql`: the dialect's
/// `timeline_history_sql`), as the superuser over TCP.
pub async fn remote_history(
    cfg: &InstanceConfig,
    source: &crate::engine::Endpoint,
    password: &str,
    sql: &str,
    timeout: Duration,
) -> anyhow::Result<History> {
    let work = async { timeline_history(&connect_remote(cfg, source, password, timeout).await?, sql).await };
    match tokio::time::timeout(timeout * 2, work).await {
        Ok(result) => result,
        Err(_) => anyhow::bail!("{source} did not give its timeline history in time"),
    }
}

/// The timeline history of the server `client` is connected to, as a superuser (`sql`: the
/// dialect's `timeline_history_sql`).
pub async fn timeline_history(client: &Client, sql: &str) -> anyhow::Result<History> {
    let row = client.query_one(sql, &[]).await?;
    let timeline: i32 = col(&row, "timeline")?;
    let text: Option<String> = col(&row, "history")?;
    let switches =
        timeline::parse_switches(text.as_deref().unwrap_or_default()).map_err(anyhow::Error::msg)?;
    Ok(History { timeline: u32::try_from(timeline)?, switches })
}

/// A column by name; a query without it (a dialect out of step) is an error, not a panic.
fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    column: &str,
) -> Result<T, tokio_postgres::Error> {
    row.try_get(column)
}

fn lsn(row: &Row, column: &str) -> Result<Option<Lsn>, tokio_postgres::Error> {
    Ok(col::<Option<String>>(row, column)?.and_then(|s| s.parse().ok()))
}

impl LocalConnection {
    /// Runs the status queries; `None` when the server does not answer within `timeout`.
    pub async fn probe(&mut self, cfg: &InstanceConfig, timeout: Duration) -> Option<Probe> {
        match tokio::time::timeout(timeout, self.probe_inner(cfg, timeout)).await {
            Ok(Ok(mut p)) => {
                if !p.node.in_recovery
                    && let Some(timeline) = p.node.timeline
                {
                    p.node.timeline_switches = self.timeline_switches(cfg, timeline, timeout).await;
                }
                Some(p)
            }
            _ => {
                self.client = None;
                None
            }
        }
    }

    /// The primary's history on `timeline` (from the cache when the timeline is the same):
    /// standbys on an earlier timeline are checked against it (see `plan::steady`). Empty
    /// where it cannot be read.
    async fn timeline_switches(
        &mut self,
        cfg: &InstanceConfig,
        timeline: u32,
        timeout: Duration,
    ) -> Vec<Switch> {
        if let Some((cached, switches)) = &self.switches
            && *cached == timeline
        {
            return switches.clone();
        }
        let Some(sql) = cfg.dialect().timeline_history_sql() else { return Vec::new() };
        let read = async { timeline_history(self.client(cfg, timeout).await?, sql).await };
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(history)) if history.timeline == timeline => {
                self.switches = Some((timeline, history.switches.clone()));
                history.switches
            }
            Ok(Ok(_)) => Vec::new(),
            Ok(Err(e)) => {
                tracing::debug!(error = format!("{e:#}"), "could not read the timeline history");
                Vec::new()
            }
            Err(_) => Vec::new(),
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
            in_recovery: col(&row, "in_recovery")?,
            current_lsn: lsn(&row, "current_lsn")?,
            received_lsn: lsn(&row, "received_lsn")?,
            replayed_lsn: lsn(&row, "replayed_lsn")?,
            timeline: col::<Option<i32>>(&row, "timeline")?.and_then(|t| u32::try_from(t).ok()),
            synchronous_standby_names: col(&row, "synchronous_standby_names")?,
            timeline_switches: Vec::new(),
        };
        let receiver = match client.query_opt(sql.receiver, &[]).await? {
            Some(r) => Some(ReceiverReport {
                status: col::<Option<String>>(&r, "status")?.unwrap_or_default(),
                upstream_host: col(&r, "upstream_host")?,
                upstream_port: col::<Option<i32>>(&r, "upstream_port")?.and_then(|p| u16::try_from(p).ok()),
                flushed_lsn: lsn(&r, "flushed_lsn")?,
            }),
            None => None,
        };
        let replication = if node.in_recovery {
            Vec::new()
        } else {
            let mut rows = Vec::new();
            for r in client.query(sql.replication, &[]).await? {
                rows.push(ReplicationRow {
                    instance: dialect
                        .instance_of(&col::<Option<String>>(&r, "application_name")?.unwrap_or_default()),
                    client_addr: col(&r, "client_addr")?,
                    state: col::<Option<String>>(&r, "state")?.unwrap_or_default(),
                    sync_state: col::<Option<String>>(&r, "sync_state")?.unwrap_or_default(),
                    sent_lsn: lsn(&r, "sent_lsn")?,
                    flush_lsn: lsn(&r, "flush_lsn")?,
                    replay_lsn: lsn(&r, "replay_lsn")?,
                    lag_bytes: col::<Option<i64>>(&r, "lag_bytes")?.and_then(|b| u64::try_from(b).ok()),
                    lag_seconds: col(&r, "lag_seconds")?,
                });
            }
            rows
        };
        let names = async |q: &str| -> Result<Vec<String>, tokio_postgres::Error> {
            let mut names = Vec::new();
            for r in client.query(q, &[]).await? {
                names.push(col::<String>(&r, "name")?);
            }
            Ok(names)
        };
        let pending_restart = match sql.pending_restart {
            Some(q) => names(q).await?,
            None => {
                let postmaster = names(sql.postmaster_settings).await?.into_iter().collect();
                super::datadir::pending_restart(cfg, &postmaster)
            }
        };
        Ok(Probe { node, pending_restart, receiver, replication })
    }
}
