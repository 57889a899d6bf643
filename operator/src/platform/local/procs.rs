//! The local platform's kubelet: one instance-manager process per instance, started as an
//! unprivileged user when run as root, in its own process group, restarted with a growing
//! back-off when it dies, found again (adopted) after a controller restart. A manager may be
//! started inside a network namespace (`local up --netns`); its server and tools inherit it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Gid, Pid, Uid, User, chown};
use tokio::process::Child;
use tokio::sync::Mutex;

use crate::fsutil::{create_dir_mode, write_atomic};
use crate::instance::InstanceConfig;
use crate::plan::PlatformState;

/// The OS user instances run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
}

/// When running as root, the user to drop to: `explicit`, else `postgres`, else `nobody`.
/// `None` when not root (instances run as the current user).
pub fn choose_user(explicit: Option<&str>) -> anyhow::Result<Option<RunAs>> {
    if !nix::unistd::geteuid().is_root() {
        if let Some(name) = explicit {
            bail!("--run-as {name} needs root; without it, instances run as the current user");
        }
        return Ok(None);
    }
    let wanted: Vec<&str> = match explicit {
        Some(n) => vec![n],
        None => vec!["postgres", "nobody"],
    };
    for name in &wanted {
        if let Some(u) = User::from_name(name).context("looking up users")? {
            if u.uid.is_root() {
                bail!("--run-as {name} is root; the database refuses to run as root");
            }
            return Ok(Some(RunAs { name: u.name, uid: u.uid, gid: u.gid }));
        }
    }
    bail!(
        "running as root needs an unprivileged OS user for the databases; none of {} exists: pass --run-as USER",
        wanted.join(", ")
    )
}

pub fn pid_file(instance_dir: &Path) -> PathBuf {
    instance_dir.join("manager.pid")
}
pub fn config_file(instance_dir: &Path) -> PathBuf {
    instance_dir.join("manager.json")
}
pub fn port_file(instance_dir: &Path) -> PathBuf {
    instance_dir.join("manager.port")
}
pub fn log_file(instance_dir: &Path) -> PathBuf {
    instance_dir.join("manager.log")
}

/// Whether `pid` is alive and is an instance manager started with `config`.
pub fn is_our_manager(pid: u32, config: &Path) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if kill(Pid::from_raw(raw), None).is_err() {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let config = config.to_string_lossy();
    !crate::reaper::is_zombie(pid) && String::from_utf8_lossy(&cmdline).split('\0').any(|a| a == config)
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[derive(Debug)]
struct Slot {
    child: Option<Child>,
    pid: u32,
    started: Instant,
    /// Restarts since the manager last stayed up for a while.
    restarts: u32,
}

/// Starts, watches and stops instance managers.
#[derive(Debug)]
pub struct Kubelet {
    exe: PathBuf,
    run_as: Option<RunAs>,
    /// Environment of every manager (and so of its server and tools).
    env: Vec<(String, String)>,
    slots: Mutex<BTreeMap<String, Slot>>,
    /// Instance directories by name; grows and shrinks with the cluster.
    dirs: std::sync::Mutex<BTreeMap<String, PathBuf>>,
    /// Instances placed in a network namespace: its file and the instance's address there.
    placed: std::sync::Mutex<BTreeMap<String, (PathBuf, IpAddr)>>,
    /// The managers serve HTTPS.
    https: bool,
}

/// How long to wait before the next restart after `restarts` quick ones: immediately the
/// first time, then doubling up to half a minute (a kubelet starts at ten seconds; an
/// instance that crashed once is usually worth restarting at once).
fn restart_backoff(restarts: u32) -> Duration {
    if restarts == 0 {
        Duration::ZERO
    } else {
        Duration::from_millis(500 * (1u64 << restarts.min(6))).min(Duration::from_secs(30))
    }
}

impl Kubelet {
    pub fn new(exe: PathBuf, run_as: Option<RunAs>, dirs: BTreeMap<String, PathBuf>) -> Self {
        Self {
            exe,
            run_as,
            env: Vec::new(),
            slots: Mutex::new(BTreeMap::new()),
            dirs: std::sync::Mutex::new(dirs),
            placed: std::sync::Mutex::new(BTreeMap::new()),
            https: false,
        }
    }

    /// Reaches the managers over HTTPS.
    pub fn with_https(mut self, https: bool) -> Self {
        self.https = https;
        self
    }

    /// Gives every manager `env` too.
    pub fn with_env(mut self, env: Vec<(String, String)>) -> Self {
        self.env = env;
        self
    }

    pub fn run_as(&self) -> Option<&RunAs> {
        self.run_as.as_ref()
    }

    fn dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        self.dirs
            .lock()
            .expect("dirs lock")
            .get(name)
            .cloned()
            .with_context(|| format!("unknown instance {name}"))
    }

    /// Starts managing an instance living in `dir`.
    pub fn add(&self, name: &str, dir: PathBuf) {
        self.dirs.lock().expect("dirs lock").insert(name.to_string(), dir);
    }

    /// Starts `name`'s manager inside the network namespace whose file is `netns`, where the
    /// instance's manager API listens on `address`.
    pub fn place(&self, name: &str, netns: PathBuf, address: IpAddr) {
        self.placed.lock().expect("placed lock").insert(name.to_string(), (netns, address));
    }

    fn placement(&self, name: &str) -> Option<(PathBuf, IpAddr)> {
        self.placed.lock().expect("placed lock").get(name).cloned()
    }

    /// Stops managing an instance (after `stop`).
    pub fn forget(&self, name: &str) {
        self.dirs.lock().expect("dirs lock").remove(name);
        self.placed.lock().expect("placed lock").remove(name);
    }

    /// Gives a path to the instance user.
    pub fn hand_over(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(u) = &self.run_as {
            chown(path, Some(u.uid), Some(u.gid))
                .with_context(|| format!("cannot hand {} to {}", path.display(), u.name))?;
        }
        Ok(())
    }

    /// Writes an instance's directories, config and secret files, owned by the instance user.
    pub fn prepare(&self, cfg: &InstanceConfig, files: &[(PathBuf, String)]) -> anyhow::Result<()> {
        let dir = self.dir(&cfg.instance)?;
        create_dir_mode(&dir, 0o700)?;
        self.hand_over(&dir)?;
        create_dir_mode(&cfg.socket_dir, 0o700)?;
        self.hand_over(&cfg.socket_dir)?;
        self.write_files(files)?;
        let json = serde_json::to_vec_pretty(cfg)?;
        let path = config_file(&dir);
        write_atomic(&path, &json, 0o600)?;
        self.hand_over(&path)
    }

    /// Writes private files of instances (mode 0600, owned by the instances' user), in order.
    pub fn write_files(&self, files: &[(PathBuf, String)]) -> anyhow::Result<()> {
        for (path, content) in files {
            write_atomic(path, content.as_bytes(), 0o600)?;
            self.hand_over(path)?;
        }
        Ok(())
    }

    /// Whether an instance's manager runs, died, or was never started here.
    pub async fn state(&self, name: &str) -> PlatformState {
        let Ok(dir) = self.dir(name) else {
            return PlatformState::Missing;
        };
        if !config_file(&dir).exists() {
            return PlatformState::Missing;
        }
        let mut slots = self.slots.lock().await;
        if let Some(slot) = slots.get_mut(name) {
            let alive = match &mut slot.child {
                Some(child) => matches!(child.try_wait(), Ok(None)),
                None => is_our_manager(slot.pid, &config_file(&dir)),
            };
            return if alive { PlatformState::Running } else { PlatformState::Dead };
        }
        // Not started by this controller: adopt a manager an earlier controller left running.
        match read_pid(&pid_file(&dir)) {
            Some(pid) if is_our_manager(pid, &config_file(&dir)) => {
                slots.insert(
                    name.to_string(),
                    Slot { child: None, pid, started: Instant::now(), restarts: 0 },
                );
                PlatformState::Running
            }
            Some(_) => PlatformState::Dead,
            None => PlatformState::Missing,
        }
    }

    /// The manager's API address, once it has written it.
    pub fn manager_url(&self, name: &str) -> Option<String> {
        let port = read_pid(&port_file(&self.dir(name).ok()?))?;
        let port = u16::try_from(port).ok()?;
        let host = self.placement(name).map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |(_, address)| address);
        let scheme = if self.https { "https" } else { "http" };
        Some(format!("{scheme}://{}", SocketAddr::new(host, port)))
    }

    pub fn pid(&self, name: &str) -> Option<u32> {
        read_pid(&pid_file(&self.dir(name).ok()?))
    }

    /// Starts the manager unless it runs; a restart soon after the last one waits out the
    /// back-off (the controller asks again next pass).
    pub async fn start(&self, name: &str) -> anyhow::Result<()> {
        if self.state(name).await == PlatformState::Running {
            return Ok(());
        }
        let dir = self.dir(name)?;
        let mut slots = self.slots.lock().await;
        let restarts = match slots.get(name) {
            Some(slot) => {
                let quick = slot.started.elapsed() < Duration::from_secs(60);
                let restarts = if quick { slot.restarts + 1 } else { 1 };
                if slot.started.elapsed() < restart_backoff(restarts - 1) {
                    return Ok(());
                }
                restarts
            }
            None => 0,
        };
        let _ = std::fs::remove_file(port_file(&dir));
        let log = OpenOptions::new().create(true).append(true).open(log_file(&dir))?;
        self.hand_over(&log_file(&dir))?;
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("instance")
            .arg("run")
            .arg("--config")
            .arg(config_file(&dir))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(false)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        match self.placement(name) {
            Some((netns, _)) => {
                let netns = File::open(&netns).with_context(|| {
                    format!("cannot open the network namespace {} for {name}", netns.display())
                })?;
                enter_netns_then_drop_privileges(
                    &mut cmd,
                    netns,
                    self.run_as.as_ref().map(|u| (u.uid, u.gid)),
                );
            }
            None => {
                if let Some(u) = &self.run_as {
                    cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
                }
            }
        }
        let child = crate::reaper::spawn(&mut cmd)
            .with_context(|| format!("cannot start the instance manager of {name}"))?;
        let pid = child.id().context("instance manager exited at once")?;
        write_atomic(&pid_file(&dir), format!("{pid}\n").as_bytes(), 0o644)?;
        tracing::debug!(instance = name, pid, restarts, "instance manager started");
        slots.insert(name.to_string(), Slot { child: Some(child), pid, started: Instant::now(), restarts });
        Ok(())
    }

    /// Asks a manager to stop (it stops its server cleanly first) and waits; a manager that
    /// does not exit within `timeout` is killed with its process group.
    pub async fn stop(&self, name: &str, timeout: Duration) -> anyhow::Result<()> {
        let dir = self.dir(name)?;
        let state = self.state(name).await;
        let mut slots = self.slots.lock().await;
        let slot = slots.remove(name);
        if state != PlatformState::Running {
            let _ = std::fs::remove_file(pid_file(&dir));
            return Ok(());
        }
        let Some(mut slot) = slot else { return Ok(()) };
        let pid = Pid::from_raw(i32::try_from(slot.pid)?);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        let config = config_file(&dir);
        loop {
            let alive = match &mut slot.child {
                Some(child) => matches!(child.try_wait(), Ok(None)),
                None => is_our_manager(slot.pid, &config),
            };
            if !alive {
                break;
            }
            if Instant::now() > deadline {
                tracing::warn!(instance = name, "instance manager did not stop in time; killing it");
                let _ = killpg(pid, Signal::SIGKILL);
                if let Some(child) = &mut slot.child {
                    let _ = child.wait().await;
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = std::fs::remove_file(pid_file(&dir));
        let _ = std::fs::remove_file(port_file(&dir));
        Ok(())
    }
}

/// Makes `cmd`'s child enter the network namespace `netns` and only then become `user`: the
/// user and group `Command` sets are applied before any `pre_exec` closure runs, and entering a
/// namespace needs CAP_SYS_ADMIN, so the drop happens here, the same drop `Command::uid` and
/// `gid` make: no supplementary groups, the group, then the user.
#[expect(unsafe_code, reason = "pre_exec is the only way to act between fork and exec")]
fn enter_netns_then_drop_privileges(
    cmd: &mut tokio::process::Command,
    netns: File,
    user: Option<(Uid, Gid)>,
) {
    let enter = move || -> std::io::Result<()> {
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        if let Some((uid, gid)) = user {
            nix::unistd::setgroups(&[])?;
            nix::unistd::setgid(gid)?;
            nix::unistd::setuid(uid)?;
        }
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec and only makes system calls
    // (setns, setgroups, setgid, setuid) through thin wrappers that neither allocate nor take
    // locks; its errors are plain errno values. The namespace file was opened with O_CLOEXEC,
    // so the manager does not inherit it.
    unsafe {
        cmd.pre_exec(enter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert_eq!(restart_backoff(0), Duration::ZERO);
        assert!(restart_backoff(1) < restart_backoff(2));
        assert_eq!(restart_backoff(20), Duration::from_secs(30));
    }

    #[test]
    fn a_foreign_pid_is_not_ours() {
        // PID 1 is alive but is not an instance manager of this config.
        assert!(!is_our_manager(1, Path::new("/nonexistent/manager.json")));
        assert!(!is_our_manager(u32::MAX, Path::new("/x")));
    }
}
