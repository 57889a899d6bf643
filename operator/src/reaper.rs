//! Reaping orphans. The instance manager is PID 1 of the database container on Kubernetes, and
//! `local up` makes itself a child subreaper: either way, processes whose parent died (a killed
//! server's backends, a killed manager's server) become our children. Left unreaped they stay
//! zombies, and the database refuses to start (or `pg_rewind` to run) while the lock file
//! names a PID that still exists, zombie or not.
//!
//! Children we spawned ourselves are tokio's to wait for: reaping one here would take its exit
//! status away. So every spawn goes through `spawn`, which records the PID, and the reaper only
//! waits for zombies it did not spawn.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// PIDs of children spawned through `spawn` that may not have been waited for yet.
static SPAWNED: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

fn spawned() -> std::sync::MutexGuard<'static, BTreeSet<u32>> {
    // The set stays consistent even if a holder panicked: every update is a single insert or
    // retain.
    SPAWNED.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Spawns `cmd`, recording its PID so the reaper leaves it to tokio.
pub fn spawn(cmd: &mut Command) -> std::io::Result<Child> {
    let mut set = spawned();
    let child = cmd.spawn()?;
    if let Some(pid) = child.id() {
        set.insert(pid);
    }
    Ok(child)
}

/// Whether orphans of this process's descendants are re-parented to it.
pub fn adopts_orphans() -> bool {
    std::process::id() == 1 || nix::sys::prctl::get_child_subreaper().unwrap_or(false)
}

/// Makes this process adopt the orphans of its descendants (Linux child subreaper).
pub fn become_subreaper() -> anyhow::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| anyhow::anyhow!("cannot become a child subreaper: {e}"))
}

/// The parent PID and state letter from `/proc/<pid>/stat` (the command name may hold spaces
/// and parentheses, so the fields are read after its last `)`).
fn parent_and_state(stat: &str) -> Option<(u32, char)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((ppid, state))
}

/// Whether `pid` has exited and waits to be reaped (its PID still answers signals).
pub fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| parent_and_state(&stat))
        .is_some_and(|(_, state)| state == 'Z')
}

/// Waits for every zombie child this process did not spawn; returns how many.
pub fn reap_orphans() -> usize {
    let me = std::process::id();
    let mut set = spawned();
    // A spawned child tokio has waited for is gone from /proc: forget it.
    set.retain(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut reaped = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if set.contains(&pid) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if parent_and_state(&stat) != Some((me, 'Z')) {
            continue;
        }
        let Ok(raw) = i32::try_from(pid) else { continue };
        if waitpid(Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG)).is_ok() {
            tracing::debug!(pid, "reaped an orphaned process");
            reaped += 1;
        }
    }
    reaped
}

/// Reaps orphans whenever a child exits (and every second, in case a signal was coalesced),
/// for as long as the process runs; returns at once if this process adopts no orphans.
pub async fn run() {
    if !adopts_orphans() {
        return;
    }
    let mut child_exits = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok();
    loop {
        match child_exits.as_mut() {
            Some(exits) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), exits.recv()).await;
            }
            None => tokio::time::sleep(Duration::from_secs(1)).await,
        }
        reap_orphans();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        assert_eq!(parent_and_state("42 (postgres) Z 1 42 42 0"), Some((1, 'Z')));
        assert_eq!(parent_and_state("42 (a (b) c) S 7 42"), Some((7, 'S')));
        assert_eq!(parent_and_state("garbage"), None);
    }

    /// Nextest runs each test in its own process, so making this one a subreaper touches no
    /// other test.
    #[tokio::test]
    async fn orphans_are_reaped_and_spawned_children_left_to_their_owner() {
        become_subreaper().expect("subreaper");
        assert!(adopts_orphans());
        // Our own child, exited but not yet waited for.
        let mut own = spawn(Command::new("/bin/true").kill_on_drop(false)).expect("spawn true");
        let own_pid = own.id().expect("pid");
        // A grandchild orphaned when its parent exits: it is re-parented to us.
        let out =
            Command::new("/bin/sh").args(["-c", "/bin/sleep 0.2 & echo $!"]).output().await.expect("sh");
        let orphan: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("orphan pid");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::path::Path::new(&format!("/proc/{orphan}")).exists() {
            assert!(std::time::Instant::now() < deadline, "the orphan {orphan} was never reaped");
            reap_orphans();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(std::path::Path::new(&format!("/proc/{own_pid}")).exists(), "our own child was reaped");
        assert!(own.wait().await.expect("tokio still owns its exit status").success());
    }
}
