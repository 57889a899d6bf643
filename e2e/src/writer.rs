//! A client that keeps committing rows through failovers and remembers exactly which commits
//! were acknowledged, so a test can check none was lost.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

use crate::LocalCluster;
use crate::wait::{Probe, until};

/// Where the writer finds the cluster.
#[derive(Clone, Debug)]
struct Target {
    /// Instance name and port.
    ports: Vec<(String, u16)>,
    password: String,
    status_file: PathBuf,
}

#[derive(Debug)]
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<(Vec<i64>, Vec<std::time::SystemTime>)>,
}

/// What a writer did.
#[derive(Debug)]
pub struct Written {
    /// Ids whose COMMIT returned success to the client.
    pub acknowledged: Vec<i64>,
    /// When commits failed or timed out (the client could not write).
    pub failures: Vec<std::time::SystemTime>,
}

const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

impl Target {
    fn primary_port(&self) -> Option<u16> {
        let text = std::fs::read_to_string(&self.status_file).ok()?;
        let status: opengauss_crd::OpenGaussClusterStatus = serde_json::from_str(&text).ok()?;
        if status.transition.is_some() {
            return None;
        }
        let primary = status.current_primary?;
        self.ports.iter().find(|(n, _)| *n == primary).map(|(_, p)| *p)
    }

    async fn connect(&self, port: u16) -> Option<tokio_postgres::Client> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(port)
            .user("postgres")
            .password(self.password.clone())
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(2));
        let (client, conn) =
            tokio::time::timeout(Duration::from_secs(3), cfg.connect(NoTls)).await.ok()?.ok()?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Some(client)
    }
}

impl Writer {
    /// Creates the table on the current primary and starts committing one row at a time.
    pub async fn start(cluster: &LocalCluster) -> anyhow::Result<Self> {
        let target = Target {
            ports: (0..cluster.instances)
                .map(|k| (cluster.instance(k), cluster.port_of(&cluster.instance(k))))
                .collect(),
            password: cluster.superuser_password(),
            status_file: cluster.state_dir.join("status.json"),
        };
        let primary = cluster.primary().ok_or_else(|| anyhow::anyhow!("no primary"))?;
        cluster
            .connect(&primary)
            .await?
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS acked (id bigint PRIMARY KEY, at timestamptz DEFAULT now())",
            )
            .await?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = acked.clone();
        let task = tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut failures = Vec::new();
            let mut next: i64 = 1;
            let mut client = None;
            while !flag.load(Ordering::SeqCst) {
                if client.is_none() {
                    client = match target.primary_port() {
                        Some(port) => target.connect(port).await,
                        None => None,
                    };
                    if client.is_none() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
                let c = client.as_ref().expect("connected");
                let id = next;
                next += 1;
                // Only a COMMIT that returns success counts; a time-out drops the connection
                // and the row counts as unacknowledged.
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
                let insert = c.execute("INSERT INTO acked (id) VALUES ($1)", &params);
                match tokio::time::timeout(COMMIT_TIMEOUT, insert).await {
                    Ok(Ok(_)) => {
                        acknowledged.push(id);
                        counter.store(acknowledged.len(), Ordering::SeqCst);
                    }
                    _ => {
                        failures.push(std::time::SystemTime::now());
                        client = None;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (acknowledged, failures)
        });
        Ok(Self { stop, acked, task })
    }

    /// Waits until more than `since` commits are acknowledged (at most 30 s); returns the new
    /// count. `what` says when, for the failure message.
    pub async fn progress(&self, since: usize, what: &str) -> usize {
        let what = format!("an acknowledged write {what}");
        until(&what, Duration::from_secs(30), Duration::from_millis(50), || {
            let n = self.acknowledged_count();
            assert!(n > since || self.is_running(), "the writer stopped");
            std::future::ready(if n > since { Probe::Done(n) } else { Probe::NotYet(format!("still {n}")) })
        })
        .await
        .expect("the writer makes progress")
    }

    /// Commits acknowledged so far.
    pub fn acknowledged_count(&self) -> usize {
        self.acked.load(Ordering::SeqCst)
    }

    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    pub async fn stop(self) -> anyhow::Result<Written> {
        self.stop.store(true, Ordering::SeqCst);
        let (acknowledged, failures) = tokio::time::timeout(COMMIT_TIMEOUT * 2, self.task).await??;
        Ok(Written { acknowledged, failures })
    }
}

/// Ids in `acknowledged` missing from the primary's table.
pub async fn missing_rows(cluster: &LocalCluster, acknowledged: &[i64]) -> anyhow::Result<Vec<i64>> {
    let primary = cluster.primary().ok_or_else(|| anyhow::anyhow!("no primary"))?;
    let client = cluster.connect(&primary).await?;
    let rows = client.query("SELECT id FROM acked", &[]).await?;
    let present: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    Ok(acknowledged.iter().copied().filter(|id| !present.contains(id)).collect())
}
