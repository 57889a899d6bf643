//! The database server process: started in the foreground as the manager's child (in its own
//! process group, so a signal to the manager's group does not reach it unasked), adopted when a
//! restarted manager finds it still running, stopped through the engine's own tool.

use std::fs::OpenOptions;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Child;

use super::config::InstanceConfig;
use crate::engine::StopMode;
use crate::process::run_checked;
use crate::reaper::is_zombie;

/// How long a stop may take before it is made immediate.
const STOP_GRACE: Duration = Duration::from_secs(20);

#[derive(Debug, Default)]
pub struct ServerProcess {
    child: Option<Child>,
    /// The postmaster's PID: our child's, or an adopted server's.
    pid: Option<u32>,
    /// The last exit was not asked for.
    crashed: bool,
}

/// The PID `postmaster.pid` names, if a process with that PID exists (alive or a zombie), as
/// the database itself checks its lock.
fn lock_holder(data_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    kill(Pid::from_raw(i32::try_from(pid).ok()?), None).ok()?;
    Some(pid)
}

/// The PID in `postmaster.pid`, if that process is alive and is a server of this data
/// directory.
pub fn running_postmaster(data_dir: &Path) -> Option<u32> {
    let pid = lock_holder(data_dir)?;
    // Guard against a reused PID: the process must be a server started on this directory.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    let data = data_dir.to_string_lossy();
    let ours = cmdline.split('\0').any(|arg| arg == data);
    (ours && !is_zombie(pid)).then_some(pid)
}

/// The PID `postmaster.pid` names while that process has exited but not been reaped: the
/// database (and `pg_rewind`, which runs it) counts it as running and refuses the directory.
fn unreaped_postmaster(data_dir: &Path) -> Option<u32> {
    lock_holder(data_dir).filter(|&pid| is_zombie(pid))
}

/// How long a killed server's PID may take to be reaped (by us as PID 1 or subreaper, else by
/// the machine's init) before its lock counts as stuck.
pub const LOCK_RELEASE_TIMEOUT: Duration = Duration::from_secs(15);

/// Waits until the data directory's lock no longer names an exited, unreaped server (the
/// reaper task, or the machine's init, reaps it).
pub async fn wait_lock_released(data_dir: &Path, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    while let Some(pid) = unreaped_postmaster(data_dir) {
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the lock file of {} names process {pid}, which exited {}s ago or more but was never \
                 reaped; the database refuses the directory until its parent (or init) reaps it",
                data_dir.display(),
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

impl ServerProcess {
    /// Takes over a server left running by an earlier manager process.
    pub fn adopt(cfg: &InstanceConfig) -> Self {
        let pid = running_postmaster(&cfg.data_dir());
        Self { child: None, pid, crashed: false }
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    pub fn crashed(&self) -> bool {
        self.crashed
    }

    pub fn clear_crash(&mut self) {
        self.crashed = false;
    }

    /// Whether the server process is alive; notices an exit nobody asked for.
    pub fn is_running(&mut self) -> bool {
        let alive = match (&mut self.child, self.pid) {
            (Some(child), _) => matches!(child.try_wait(), Ok(None)),
            (None, Some(pid)) => {
                i32::try_from(pid).is_ok_and(|p| kill(Pid::from_raw(p), None).is_ok()) && !is_zombie(pid)
            }
            (None, None) => false,
        };
        if !alive && self.pid.is_some() {
            tracing::warn!(pid = self.pid, "database server exited unexpectedly");
            self.child = None;
            self.pid = None;
            self.crashed = true;
        }
        alive
    }

    /// Starts the server in the foreground, logging to the instance's server log.
    pub fn start(&mut self, cfg: &InstanceConfig, standby: bool) -> anyhow::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        if let Some(pid) = running_postmaster(&cfg.data_dir()) {
            self.pid = Some(pid);
            return Ok(());
        }
        if let Some(pid) = unreaped_postmaster(&cfg.data_dir()) {
            bail!(
                "the previous server (pid {pid}) exited but is not reaped yet; its lock file blocks a start"
            );
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(cfg.server_log())
            .with_context(|| format!("cannot open server log {}", cfg.server_log().display()))?;
        let line = cfg.dialect().server(&cfg.layout(), standby);
        tracing::info!(command = %line, "starting database server");
        // What it starts with: a later change of a restart-only setting is pending until the
        // next start (for engines that do not tell themselves).
        super::datadir::record_started_settings(cfg)?;
        let mut cmd = line.to_tokio();
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).process_group(0).kill_on_drop(false);
        let child = crate::reaper::spawn(&mut cmd)
            .with_context(|| format!("cannot start {}", line.program.display()))?;
        self.pid = child.id();
        self.child = Some(child);
        self.crashed = false;
        Ok(())
    }

    /// Stops the server and waits for it to exit. Fast mode lets connected standbys receive the
    /// shutdown checkpoint; a server that ignores it for a minute is stopped immediately.
    pub async fn stop(&mut self, cfg: &InstanceConfig, mode: StopMode) -> anyhow::Result<()> {
        if !self.is_running() && running_postmaster(&cfg.data_dir()).is_none() {
            self.crashed = false;
            return Ok(());
        }
        let dialect = cfg.dialect();
        // A fast stop that takes longer than this is stuck (a WAL sender blocked on a dead
        // peer, a client that does not go): it is made immediate, which loses nothing
        // committed (the next start replays the WAL) and keeps a failover or rejoin from
        // waiting a minute on it.
        let stopped = run_checked(&dialect.stop(&cfg.layout(), mode), STOP_GRACE).await;
        if let Err(e) = stopped {
            tracing::warn!(error = %e, "fast stop failed; stopping immediately");
            if let Some(pid) = self.pid.and_then(|p| i32::try_from(p).ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGQUIT);
            }
        }
        if let Some(child) = &mut self.child {
            match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
                Ok(_) => {}
                Err(_) => bail!("database server did not exit after being stopped"),
            }
        } else if let Some(pid) = self.pid {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while i32::try_from(pid).is_ok_and(|p| kill(Pid::from_raw(p), None).is_ok()) && !is_zombie(pid) {
                if tokio::time::Instant::now() > deadline {
                    bail!("database server {pid} did not exit after being stopped");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.child = None;
        self.pid = None;
        self.crashed = false;
        Ok(())
    }
}
