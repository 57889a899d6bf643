//! The cluster's components as detached processes: each in its own session (so closing the
//! terminal that ran `make k8s-up` does not stop it), output appended to its log, its PID in
//! `.k8s/pids/<component>.pid` beside the program it runs, stopped later by that PID and its
//! process group, never by name.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::Layout;

/// Lines of a component's log shown when it fails.
const TAIL_LINES: usize = 25;

/// The last lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// An error about `component`, with the tail of its log.
pub fn component_error(layout: &Layout, component: &str, error: anyhow::Error) -> anyhow::Error {
    let log = layout.log(component);
    error.context(format!(
        "{component} failed; the last lines of {}:\n{}",
        log.display(),
        tail(&log, TAIL_LINES)
    ))
}

/// A started component.
#[derive(Debug)]
pub struct Started {
    pub component: String,
    pub pid: u32,
    child: Child,
}

impl Started {
    /// Fails, naming the component and showing its log, if it has exited.
    pub fn check_running(&mut self, layout: &Layout) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(component_error(
                layout,
                &self.component,
                anyhow::anyhow!("{} exited ({status})", self.component),
            )),
            Ok(None) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("checking on {}", self.component)),
        }
    }
}

fn pid_file(layout: &Layout, component: &str) -> PathBuf {
    layout.pids().join(format!("{component}.pid"))
}

/// Starts `program args` as `component`, detached, with its output in its log.
pub fn start(
    layout: &Layout,
    component: &str,
    program: &Path,
    args: &[String],
    env: &[(&str, String)],
) -> anyhow::Result<Started> {
    std::fs::create_dir_all(layout.logs())?;
    std::fs::create_dir_all(layout.pids())?;
    let log_path = layout.log(component);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    // `setsid` execs the program in a session of its own (the PID stays the program's, and it
    // leads its own process group).
    let mut cmd = Command::new("setsid");
    cmd.arg(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .current_dir(&layout.root);
    let child = cmd.spawn().with_context(|| format!("starting {component} ({})", program.display()))?;
    let pid = child.id();
    std::fs::write(pid_file(layout, component), format!("{pid}\n{}\n", program.display()))
        .with_context(|| format!("recording the PID of {component}"))?;
    Ok(Started { component: component.to_string(), pid, child })
}

/// Whether `pid` is alive and runs `program` (a recorded PID may have been reused).
fn runs(pid: i32, program: &str) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    if stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')) {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).split('\0').any(|arg| arg == program))
        .unwrap_or(false)
}

/// The PID recorded for `component`, if that process still runs the recorded program.
pub fn running_pid(layout: &Layout, component: &str) -> Option<i32> {
    let text = std::fs::read_to_string(pid_file(layout, component)).ok()?;
    let mut lines = text.lines();
    let pid: i32 = lines.next()?.trim().parse().ok()?;
    let program = lines.next()?.trim();
    runs(pid, program).then_some(pid)
}

/// Every component with a PID file, running or not.
pub fn recorded(layout: &Layout) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(layout.pids())
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_suffix(".pid").map(String::from))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Stops `component` by its recorded PID: SIGTERM to its process group, SIGKILL after
/// `grace`, and waits (bounded) until it is gone. A component that is not running is done.
pub fn stop(layout: &Layout, component: &str, grace: Duration) -> anyhow::Result<()> {
    let file = pid_file(layout, component);
    let Some(pid) = running_pid(layout, component) else {
        let _ = std::fs::remove_file(&file);
        return Ok(());
    };
    let group = Pid::from_raw(pid);
    let _ = killpg(group, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while running_pid(layout, component).is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if running_pid(layout, component).is_some() {
        let _ = killpg(group, Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(10);
        while running_pid(layout, component).is_some() {
            if Instant::now() >= deadline {
                bail!("{component} (PID {pid}) is still running after SIGKILL");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = std::fs::remove_file(&file);
    Ok(())
}

/// Runs a command to completion, failing with its output when it fails.
pub fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> anyhow::Result<String> {
    let program = program.as_ref();
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} (is it installed?)", program.to_string_lossy()))?;
    if !out.status.success() {
        bail!(
            "{} {} failed ({}): {}{}",
            program.to_string_lossy(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until `ready` holds, up to `timeout`, checking every `every` that the component is
/// still running. The error names the component, what was awaited and the last thing seen,
/// with the tail of its log.
pub fn wait_ready(
    layout: &Layout,
    started: &mut Started,
    what: &str,
    timeout: Duration,
    every: Duration,
    mut ready: impl FnMut() -> Result<(), String>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        started.check_running(layout)?;
        let last = match ready() {
            Ok(()) => return Ok(()),
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            return Err(component_error(
                layout,
                &started.component,
                anyhow::anyhow!("timed out after {timeout:?} waiting for {what}; last seen: {last}"),
            ));
        }
        std::thread::sleep(every);
    }
}

/// Waits until `ready` holds, up to `timeout` (for conditions no single process owns).
pub fn wait_for(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut ready: impl FnMut() -> Result<(), String>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match ready() {
            Ok(()) => return Ok(()),
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        std::thread::sleep(every);
    }
}

/// Whether a TCP port on `ip` is free to listen on.
pub fn port_free(ip: std::net::Ipv4Addr, port: u16) -> bool {
    std::net::TcpListener::bind((ip, port)).is_ok()
}
