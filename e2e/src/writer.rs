//! A client that keeps committing rows through failovers and remembers exactly which commits
//! were acknowledged, so a test can check none was lost.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

use std::process::Stdio;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::checks::SqlCluster;
use crate::wait::{Probe, until};
use crate::{LocalCluster, OpenGaussInstall};

/// Where the writer finds the cluster.
#[derive(Clone, Debug)]
struct Target {
    /// Instance name, address, port and socket directory.
    instances: Vec<(String, String, u16, PathBuf)>,
    password: String,
    tls: crate::pg::Tls,
    status_file: PathBuf,
    /// openGauss's initial user logs in over the socket only, and by SHA256, which
    /// tokio-postgres does not speak: its commits go through `gsql`, one per statement.
    opengauss: Option<OpenGaussInstall>,
}

/// A way to commit on the current primary.
enum Session {
    Postgres(tokio_postgres::Client),
    Gsql { port: u16, socket: PathBuf },
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
    /// The current primary's address, port and socket directory, when no transition is under
    /// way.
    fn primary(&self) -> Option<(String, u16, PathBuf)> {
        let text = std::fs::read_to_string(&self.status_file).ok()?;
        let status: opengauss_crd::OpenGaussClusterStatus = serde_json::from_str(&text).ok()?;
        if status.transition.is_some() {
            return None;
        }
        let primary = status.current_primary?;
        self.instances
            .iter()
            .find(|(n, _, _, _)| *n == primary)
            .map(|(_, h, p, s)| (h.clone(), *p, s.clone()))
    }

    async fn open(&self, host: &str, port: u16, socket: PathBuf) -> Option<Session> {
        if self.opengauss.is_some() {
            return Some(Session::Gsql { port, socket });
        }
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(host)
            .port(port)
            .user("postgres")
            .password(self.password.clone())
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(2));
        let client = tokio::time::timeout(Duration::from_secs(3), crate::pg::connect(&cfg, &self.tls))
            .await
            .ok()?
            .ok()?;
        Some(Session::Postgres(client))
    }

    /// Commits row `id`; true only when the commit was acknowledged within the time-out.
    async fn commit(&self, session: &Session, id: i64) -> bool {
        match session {
            Session::Postgres(c) => {
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
                let insert = c.execute("INSERT INTO acked (id) VALUES ($1)", &params);
                matches!(tokio::time::timeout(COMMIT_TIMEOUT, insert).await, Ok(Ok(_)))
            }
            Session::Gsql { port, socket } => {
                let Some(og) = &self.opengauss else { return false };
                let mut cmd = tokio::process::Command::from(og.gsql(socket, *port));
                cmd.args(crate::checks::unaligned_sql_args(&format!("INSERT INTO acked (id) VALUES ({id})")))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .process_group(0);
                let Ok(mut child) = cmd.spawn() else { return false };
                match tokio::time::timeout(COMMIT_TIMEOUT, child.wait()).await {
                    Ok(Ok(status)) => status.success(),
                    _ => {
                        // runuser and gsql share the group: stop both, then reap.
                        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                        }
                        let _ = child.wait().await;
                        false
                    }
                }
            }
        }
    }
}

impl Writer {
    /// Creates the table on the current primary and starts committing one row at a time.
    pub async fn start(cluster: &LocalCluster) -> anyhow::Result<Self> {
        let target = Target {
            instances: (0..cluster.instances)
                .map(|k| {
                    let name = cluster.instance(k);
                    let (host, port, socket) =
                        (cluster.host_of(&name), cluster.port_of(&name), cluster.socket_dir(&name));
                    (name, host, port, socket)
                })
                .collect(),
            password: if cluster.opengauss.is_some() { String::new() } else { cluster.superuser_password() },
            tls: cluster.tls(),
            status_file: cluster.state_dir.join("status.json"),
            opengauss: cluster.opengauss.clone(),
        };
        let primary = cluster.primary().ok_or_else(|| anyhow::anyhow!("no primary"))?;
        cluster
            .execute(
                &primary,
                "CREATE TABLE IF NOT EXISTS acked (id bigint PRIMARY KEY, at timestamptz DEFAULT now())",
            )
            .await
            .map_err(|e| anyhow::anyhow!("creating the writer's table on {primary}: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = acked.clone();
        let task = tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut failures = Vec::new();
            let mut next: i64 = 1;
            let mut session = None;
            while !flag.load(Ordering::SeqCst) {
                if session.is_none() {
                    session = match target.primary() {
                        Some((host, port, socket)) => target.open(&host, port, socket).await,
                        None => None,
                    };
                    if session.is_none() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
                let id = next;
                next += 1;
                // Only a COMMIT that returns success counts; a time-out drops the session and
                // the row counts as unacknowledged.
                if target.commit(session.as_ref().expect("opened"), id).await {
                    acknowledged.push(id);
                    counter.store(acknowledged.len(), Ordering::SeqCst);
                } else {
                    failures.push(std::time::SystemTime::now());
                    session = None;
                    tokio::time::sleep(Duration::from_millis(20)).await;
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
    let rows = cluster.query(&primary, "SELECT id FROM acked").await?;
    let present: std::collections::HashSet<i64> =
        rows.iter().filter_map(|r| r.first()?.as_deref()?.parse().ok()).collect();
    Ok(acknowledged.iter().copied().filter(|id| !present.contains(id)).collect())
}
