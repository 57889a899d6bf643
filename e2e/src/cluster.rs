//! One local cluster under test.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use opengauss_crd::{OpenGaussClusterStatus, Phase, Role};
use tokio_postgres::{Client, NoTls};

use crate::operator_binary;
use crate::ports::{PortBlock, reserve};
use crate::wait::{Probe, until};

#[derive(Debug)]
pub struct LocalCluster {
    pub name: String,
    pub instances: u32,
    pub state_dir: PathBuf,
    pub file: PathBuf,
    pub ports: PortBlock,
    root: PathBuf,
    controller: Option<Child>,
    controller_log: PathBuf,
}

/// The sample's spec with `extra` lines appended under `spec:`.
pub fn cluster_yaml(name: &str, instances: u32, extra: &str) -> String {
    format!(
        "apiVersion: ha.opengauss.dev/v1alpha1\nkind: OpenGaussCluster\nmetadata:\n  name: {name}\nspec:\n  instances: {instances}\n  engine: postgres\n{extra}"
    )
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok() && !is_zombie(pid)
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// Whether `pid` runs with `needle` somewhere on its command line: a guard against signalling
/// a reused PID.
fn cmdline_mentions(pid: i32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.lines().next()?.trim().parse().ok()
}

impl LocalCluster {
    /// A cluster of `instances` (engine postgres) with `extra` spec lines; not started.
    pub fn new(test: &str, instances: u32, extra: &str) -> Self {
        let name = "demo".to_string();
        let ports = reserve(u16::try_from(instances).expect("few instances"));
        let root =
            std::env::temp_dir().join(format!("opengauss-e2e-{test}-{}-{}", std::process::id(), ports.base));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("creating the test directory");
        let file = root.join("cluster.yaml");
        std::fs::write(&file, cluster_yaml(&name, instances, extra)).expect("writing the cluster file");
        Self {
            name,
            instances,
            state_dir: root.join("state"),
            file,
            ports,
            controller_log: root.join("controller.log"),
            root,
            controller: None,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn instance(&self, ordinal: u32) -> String {
        format!("{}-{ordinal}", self.name)
    }

    pub fn port_of(&self, instance: &str) -> u16 {
        let ordinal: u16 =
            instance.rsplit('-').next().and_then(|o| o.parse().ok()).expect("instance ordinal");
        self.ports.base + ordinal
    }

    /// Runs an `opengauss-operator` command to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(operator_binary())
            .args(args)
            .current_dir(&self.root)
            .output()
            .expect("running opengauss-operator")
    }

    pub fn up_args(&self) -> Vec<String> {
        vec![
            "local".into(),
            "up".into(),
            "-f".into(),
            self.file.display().to_string(),
            "--state-dir".into(),
            self.state_dir.display().to_string(),
            "--base-port".into(),
            self.ports.base.to_string(),
        ]
    }

    /// Starts `local up` in the background (its own process group), logging to a file.
    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// Starts `local up` with extra environment variables (e.g. a failpoint).
    pub fn start_with(&mut self, env: &[(&str, &str)]) {
        assert!(self.controller.is_none(), "already started");
        let log =
            File::options().create(true).append(true).open(&self.controller_log).expect("controller log");
        let child = Command::new(operator_binary())
            .args(self.up_args())
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0)
            .envs(env.iter().copied())
            .spawn()
            .expect("starting local up");
        self.controller = Some(child);
    }

    pub fn controller_pid(&self) -> Option<u32> {
        self.controller.as_ref().map(Child::id)
    }

    pub fn controller_output(&self) -> String {
        std::fs::read_to_string(&self.controller_log).unwrap_or_default()
    }

    /// Waits for the foreground `local up` to exit, returning its exit code.
    pub fn wait_controller(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let Some(child) = self.controller.as_mut() else {
            return Ok(None);
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                self.controller = None;
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                bail!("local up did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the controller (`local up`) alone with `signal`, leaving the instances running.
    pub fn signal_controller(&mut self, signal: Signal) {
        if let Some(child) = &self.controller {
            let _ = kill(Pid::from_raw(child.id() as i32), signal);
        }
    }

    pub fn status(&self) -> Option<OpenGaussClusterStatus> {
        let text = std::fs::read_to_string(self.state_dir.join("status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Polls the status until `pred` holds; the error carries the last status and the
    /// controller's output.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&OpenGaussClusterStatus) -> bool,
    ) -> anyhow::Result<OpenGaussClusterStatus> {
        until(what, timeout, Duration::from_millis(100), || {
            std::future::ready(match self.status() {
                Some(s) if pred(&s) => Probe::Done(s),
                other => Probe::NotYet(serde_json::to_string_pretty(&other).unwrap_or_default()),
            })
        })
        .await
        .with_context(|| format!("controller output:\n{}", self.controller_output()))
    }

    /// Healthy with every instance ready.
    pub async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<OpenGaussClusterStatus> {
        let n = self.instances;
        self.wait_for("a healthy cluster", timeout, |s| {
            s.phase == Some(Phase::Healthy) && s.ready_instances == n && s.transition.is_none()
        })
        .await
    }

    /// The timeline the status reports for `instance`.
    pub fn timeline_of(&self, instance: &str) -> Option<u32> {
        self.status()?.instance(instance)?.timeline
    }

    pub fn primary(&self) -> Option<String> {
        self.status().and_then(|s| s.current_primary)
    }

    pub fn superuser_password(&self) -> String {
        self.try_superuser_password().expect("password file")
    }

    fn try_superuser_password(&self) -> anyhow::Result<String> {
        let path = self.state_dir.join("secrets/superuser-password");
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_string())
    }

    /// A superuser connection to `instance` over TCP with the generated password.
    pub async fn connect(&self, instance: &str) -> anyhow::Result<Client> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(self.port_of(instance))
            .user("postgres")
            .password(self.try_superuser_password()?)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(3));
        let (client, conn) = cfg.connect(NoTls).await.with_context(|| format!("connecting to {instance}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Instances whose server is not in recovery right now (asked over SQL).
    pub async fn writable_instances(&self) -> Vec<String> {
        let mut out = Vec::new();
        for k in 0..self.instances {
            let name = self.instance(k);
            if let Ok(c) = self.connect(&name).await
                && let Ok(row) = c.query_one("SELECT pg_is_in_recovery()", &[]).await
                && !row.get::<_, bool>(0)
            {
                out.push(name);
            }
        }
        out
    }

    pub fn instance_dir(&self, instance: &str) -> PathBuf {
        self.state_dir.join("instances").join(instance)
    }

    /// What `instance`'s manager has logged so far.
    pub fn manager_output(&self, instance: &str) -> String {
        std::fs::read_to_string(self.instance_dir(instance).join("manager.log")).unwrap_or_default()
    }

    pub fn manager_pid(&self, instance: &str) -> Option<i32> {
        read_pid(&self.instance_dir(instance).join("manager.pid"))
    }

    pub fn server_pid(&self, instance: &str) -> Option<i32> {
        read_pid(&self.instance_dir(instance).join("data/postmaster.pid"))
    }

    /// Sends `signal` to an instance's manager and to its server's whole process group.
    pub fn signal_instance(&self, instance: &str, signal: Signal) -> anyhow::Result<()> {
        let manager = self.manager_pid(instance).context("no manager pid")?;
        let server = self.server_pid(instance).context("no server pid")?;
        let dir = self.state_dir.display().to_string();
        anyhow::ensure!(cmdline_mentions(manager, &dir), "pid {manager} is not this cluster's manager");
        anyhow::ensure!(cmdline_mentions(server, &dir), "pid {server} is not this cluster's server");
        kill(Pid::from_raw(manager), signal)?;
        killpg(Pid::from_raw(server), signal)?;
        Ok(())
    }

    /// Rewrites the cluster file with `instances` and `extra` spec lines and runs `local apply`;
    /// returns the generation the status must reach.
    pub fn apply(&mut self, instances: u32, extra: &str) -> i64 {
        std::fs::write(&self.file, cluster_yaml(&self.name, instances, extra))
            .expect("writing the cluster file");
        let out = self.cli(&[
            "local",
            "apply",
            "-f",
            &self.file.display().to_string(),
            "--state-dir",
            &self.state_dir.display().to_string(),
        ]);
        assert!(out.status.success(), "local apply failed: {}", String::from_utf8_lossy(&out.stderr));
        self.instances = instances;
        let said = String::from_utf8_lossy(&out.stdout);
        said.split_whitespace()
            .skip_while(|w| *w != "generation")
            .nth(1)
            .and_then(|g| g.parse().ok())
            .unwrap_or_else(|| panic!("no generation in {said:?}"))
    }

    /// Healthy with every instance ready, at spec generation `generation` or later.
    pub async fn wait_healthy_at(
        &self,
        generation: i64,
        timeout: Duration,
    ) -> anyhow::Result<OpenGaussClusterStatus> {
        let n = self.instances;
        self.wait_for(&format!("a healthy cluster of {n} at generation {generation}"), timeout, |s| {
            s.observed_generation.is_some_and(|g| g >= generation)
                && s.phase == Some(Phase::Healthy)
                && s.ready_instances == n
                && s.transition.is_none()
                && s.instances.len() == n as usize
        })
        .await
    }

    /// `local down` through the CLI; returns its output.
    pub fn down(&mut self) -> Output {
        let out = self.cli(&["local", "down", "--state-dir", &self.state_dir.display().to_string()]);
        let _ = self.wait_controller(Duration::from_secs(120));
        out
    }

    /// Stops whatever still runs: the controller, then every manager and server of this
    /// cluster, by PID, checking each belongs to this test's state directory.
    fn cleanup(&mut self) {
        if let Some(child) = &mut self.controller {
            let pid = Pid::from_raw(child.id() as i32);
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = child.wait();
        }
        let dir = self.state_dir.display().to_string();
        for k in 0..16 {
            let name = self.instance(k);
            for pid in [self.manager_pid(&name), self.server_pid(&name)].into_iter().flatten() {
                if alive(pid) && cmdline_mentions(pid, &dir) {
                    // Thaw first, in case a test froze it.
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGCONT);
                    let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.cleanup();
        if std::env::var_os("OPENGAUSS_E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// The role each instance reports in the status.
pub fn roles(s: &OpenGaussClusterStatus) -> Vec<(String, Role)> {
    s.instances.iter().map(|i| (i.name.clone(), i.role)).collect()
}
