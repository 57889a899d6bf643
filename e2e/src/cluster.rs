//! One local cluster under test.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use opengauss_crd::{Engine, OpenGaussClusterStatus, Phase, Role};
use tokio_postgres::Client;

use crate::netlab::{LAB_INSTANCES, NetLab, Node};
use crate::operator_binary;
use crate::ports::{PortBlock, reserve};
use crate::wait::{Probe, until};

/// A real openGauss installation to run clusters of (`OPENGAUSS_BIN_DIR`, its `bin/` with
/// `lib/` beside it), and the OS user its servers run as: openGauss's initial user must be
/// named as that user.
#[derive(Clone, Debug)]
pub struct OpenGaussInstall {
    pub bin_dir: PathBuf,
    pub os_user: String,
}

impl OpenGaussInstall {
    /// The installation `OPENGAUSS_BIN_DIR` names (and `OPENGAUSS_OS_USER`, default `omm`),
    /// or why there is none.
    pub fn from_env() -> Result<Self, String> {
        let bin_dir = std::env::var_os("OPENGAUSS_BIN_DIR")
            .map(PathBuf::from)
            .ok_or("OPENGAUSS_BIN_DIR is not set: point it at a real openGauss's bin/ (lib/ beside it) and run make e2e-opengauss")?;
        if !bin_dir.join("gaussdb").is_file() {
            return Err(format!(
                "{} has no gaussdb: OPENGAUSS_BIN_DIR must be an openGauss bin/",
                bin_dir.display()
            ));
        }
        let os_user = std::env::var("OPENGAUSS_OS_USER").unwrap_or_else(|_| "omm".into());
        if nix::unistd::User::from_name(&os_user).ok().flatten().is_none() {
            return Err(format!(
                "the OS user {os_user} does not exist: create it (useradd {os_user}) or set OPENGAUSS_OS_USER"
            ));
        }
        Ok(Self { bin_dir, os_user })
    }

    /// `gsql` as the installation's OS user, over an instance's socket.
    pub fn gsql(&self, socket_dir: &Path, port: u16) -> Command {
        let lib = self.bin_dir.parent().map(|h| h.join("lib")).unwrap_or_default();
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", &self.os_user, "--", "env"])
            .arg(format!("LD_LIBRARY_PATH={}", lib.display()))
            .arg(self.bin_dir.join("gsql"))
            .args(["-d", "postgres", "-h"])
            .arg(socket_dir)
            .args(["-p", &port.to_string()]);
        cmd
    }
}

#[derive(Debug)]
pub struct LocalCluster {
    pub name: String,
    pub instances: u32,
    pub engine: Engine,
    /// For openGauss clusters: the installation.
    pub opengauss: Option<OpenGaussInstall>,
    pub state_dir: PathBuf,
    pub file: PathBuf,
    pub ports: PortBlock,
    root: PathBuf,
    controller: Option<Child>,
    controller_log: PathBuf,
    /// The network lab the cluster runs in, if any. Dropped after the cluster's processes are
    /// stopped (`Drop` stops them before the fields go).
    lab: Option<NetLab>,
}

/// The sample's spec with `extra` lines appended under `spec:`.
pub fn cluster_yaml(name: &str, instances: u32, extra: &str) -> String {
    cluster_yaml_for(Engine::Postgres, name, instances, extra)
}

/// A cluster file of `engine`.
pub fn cluster_yaml_for(engine: Engine, name: &str, instances: u32, extra: &str) -> String {
    format!(
        "apiVersion: ha.opengauss.dev/v1alpha1\nkind: OpenGaussCluster\nmetadata:\n  name: {name}\nspec:\n  instances: {instances}\n  engine: {engine}\n{extra}",
        engine =
            serde_json::to_value(engine).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
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

/// How many processes of process group `pgid` are alive (zombies do not count).
fn live_group_members(pgid: i32) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            // Fields after the parenthesised command: state, ppid, pgrp, ...
            let Some((_, rest)) = stat.rsplit_once(") ") else { return false };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string()
        })
        .count()
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
        Self::of(Engine::Postgres, None, test, instances, extra)
    }

    /// An openGauss cluster on `install`; not started.
    pub fn opengauss(install: &OpenGaussInstall, test: &str, instances: u32, extra: &str) -> Self {
        Self::of(Engine::OpenGauss, Some(install.clone()), test, instances, extra)
    }

    fn of(
        engine: Engine,
        opengauss: Option<OpenGaussInstall>,
        test: &str,
        instances: u32,
        extra: &str,
    ) -> Self {
        let name = "demo".to_string();
        let stride = opengauss_operator::engine::dialect(engine).port_stride();
        // Room for a scale-up to five, and the openGauss ports above the last one.
        let count = stride * 5 + 6;
        let ports = reserve(count);
        let root =
            std::env::temp_dir().join(format!("opengauss-e2e-{test}-{}-{}", std::process::id(), ports.base));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("creating the test directory");
        let file = root.join("cluster.yaml");
        std::fs::write(&file, cluster_yaml_for(engine, &name, instances, extra))
            .expect("writing the cluster file");
        if opengauss.is_some() {
            // The databases run as the installation's OS user, who must reach the state.
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755));
        }
        Self {
            name,
            instances,
            engine,
            opengauss,
            state_dir: root.join("state"),
            file,
            ports,
            controller_log: root.join("controller.log"),
            root,
            controller: None,
            lab: None,
        }
    }

    /// A cluster of `instances` (engine postgres) run in a network lab of its own: the
    /// controller in the lab's controller namespace, each instance (up to the lab's
    /// `LAB_INSTANCES`, room for a scale-up) in its own namespace at its own address. Needs
    /// root; not started.
    pub fn in_lab(test: &str, instances: u32, extra: &str) -> anyhow::Result<Self> {
        let mut cluster = Self::new(test, instances, extra);
        cluster.lab = Some(NetLab::for_ports(&cluster.ports, LAB_INSTANCES)?);
        Ok(cluster)
    }

    /// The network lab the cluster runs in, if any.
    pub fn lab(&self) -> Option<&NetLab> {
        self.lab.as_ref()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn instance(&self, ordinal: u32) -> String {
        format!("{}-{ordinal}", self.name)
    }

    pub fn ordinal_of(instance: &str) -> u16 {
        instance.rsplit('-').next().and_then(|o| o.parse().ok()).expect("instance ordinal")
    }

    pub fn port_of(&self, instance: &str) -> u16 {
        self.ports.base
            + Self::ordinal_of(instance) * opengauss_operator::engine::dialect(self.engine).port_stride()
    }

    /// The address `instance` listens on: its lab address in a lab, else 127.0.0.1.
    pub fn host_of(&self, instance: &str) -> String {
        match &self.lab {
            Some(lab) => lab.address(Node::Instance(u32::from(Self::ordinal_of(instance)))).to_string(),
            None => "127.0.0.1".into(),
        }
    }

    /// Where `instance`'s server has its socket.
    pub fn socket_dir(&self, instance: &str) -> PathBuf {
        self.instance_dir(instance).join("run")
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
        let mut args = vec![
            "local".into(),
            "up".into(),
            "-f".into(),
            self.file.display().to_string(),
            "--state-dir".into(),
            self.state_dir.display().to_string(),
            "--base-port".into(),
            self.ports.base.to_string(),
        ];
        if let Some(og) = &self.opengauss {
            args.extend([
                "--bin-dir".into(),
                og.bin_dir.display().to_string(),
                "--run-as".into(),
                og.os_user.clone(),
            ]);
        }
        if let Some(lab) = &self.lab {
            for k in 0..lab.instances() {
                args.extend(["--netns".into(), lab.placement(k)]);
            }
        }
        args
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
        // In a lab, `local up` runs inside the controller's namespace (`ip netns exec` becomes
        // it, keeping the PID).
        let mut cmd = match self.lab.as_ref().and_then(|lab| lab.namespace(Node::Controller)) {
            Some(ns) => {
                let mut ip = Command::new("ip");
                ip.args(["netns", "exec", &ns]).arg(operator_binary());
                ip
            }
            None => Command::new(operator_binary()),
        };
        let child = cmd
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

    /// Healthy again, every instance ready, with a primary other than `old`.
    pub async fn wait_healthy_without(
        &self,
        old: &str,
        timeout: Duration,
    ) -> anyhow::Result<OpenGaussClusterStatus> {
        let n = self.instances;
        self.wait_for(&format!("a healthy cluster with a primary other than {old}"), timeout, |s| {
            s.current_primary.as_deref().is_some_and(|p| p != old)
                && s.transition.is_none()
                && s.phase == Some(Phase::Healthy)
                && s.ready_instances == n
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

    /// How the tests' connections are secured: TLS with the cluster's authority, once the
    /// cluster has one.
    pub fn tls(&self) -> crate::pg::Tls {
        crate::pg::tls_of(&self.state_dir)
    }

    /// An HTTP client for the instance managers' API: trusting only the cluster's authority
    /// (HTTPS) once the cluster has one.
    pub fn manager_http_client(&self) -> reqwest::Client {
        opengauss_operator::tls::config::install_default_provider();
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(5));
        if let Ok(pem) = std::fs::read_to_string(self.state_dir.join("tls/ca.crt")) {
            let tls =
                opengauss_operator::tls::config::client(&pem).expect("the cluster's authority is usable");
            builder = builder.tls_backend_preconfigured(tls);
        }
        builder.build().expect("an HTTP client")
    }

    /// A superuser connection to `instance` over TCP with the generated password.
    pub async fn connect(&self, instance: &str) -> anyhow::Result<Client> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(self.host_of(instance))
            .port(self.port_of(instance))
            .user("postgres")
            .password(self.try_superuser_password()?)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(3));
        crate::pg::connect(&cfg, &self.tls()).await.with_context(|| format!("connecting to {instance}"))
    }

    /// Runs `sql` with `gsql` on an openGauss instance, over its socket as the installation's
    /// OS user; the output in `checks::unaligned_sql_args` form, or gsql's error.
    pub async fn gsql(&self, instance: &str, sql: &str) -> Result<String, String> {
        let og = self.opengauss.as_ref().ok_or("not an openGauss cluster")?;
        let mut cmd = og.gsql(&self.socket_dir(instance), self.port_of(instance));
        cmd.args(crate::checks::unaligned_sql_args(sql)).stdin(Stdio::null());
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("running gsql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
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

    /// `instance`'s manager and server PIDs, each checked to belong to this cluster (a guard
    /// against signalling a reused PID).
    fn instance_pids(&self, instance: &str) -> anyhow::Result<(i32, i32)> {
        let manager = self.manager_pid(instance).context("no manager pid")?;
        let server = self.server_pid(instance).context("no server pid")?;
        let dir = self.state_dir.display().to_string();
        anyhow::ensure!(cmdline_mentions(manager, &dir), "pid {manager} is not this cluster's manager");
        anyhow::ensure!(cmdline_mentions(server, &dir), "pid {server} is not this cluster's server");
        Ok((manager, server))
    }

    /// Sends `signal` to an instance's manager and to its server's whole process group.
    pub fn signal_instance(&self, instance: &str, signal: Signal) -> anyhow::Result<()> {
        let (manager, server) = self.instance_pids(instance)?;
        kill(Pid::from_raw(manager), signal)?;
        killpg(Pid::from_raw(server), signal)?;
        Ok(())
    }

    /// Loses `instance`'s data directory for good, as a wiped disk would: the manager is held
    /// (SIGSTOP) so nothing restarts the server, the server's whole process group is killed and
    /// waited for, the data directory and the bootstrap marker are removed, and only then is the
    /// held manager killed, so the manager that comes back finds no data.
    pub async fn destroy_data(&self, instance: &str) -> anyhow::Result<()> {
        let (manager, server) = self.instance_pids(instance)?;
        kill(Pid::from_raw(manager), Signal::SIGSTOP)?;
        killpg(Pid::from_raw(server), Signal::SIGKILL)?;
        until(
            &format!("server group {server} gone"),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || async move {
                // The held manager cannot reap its server, so a zombie may stay: only live members
                // of the group count.
                match live_group_members(server) {
                    0 => Probe::Done(()),
                    n => Probe::NotYet(format!("{n} process(es) of the group still running")),
                }
            },
        )
        .await?;
        let instance_dir = self.instance_dir(instance);
        std::fs::remove_dir_all(instance_dir.join("data")).context("removing the data directory")?;
        std::fs::remove_file(instance_dir.join("bootstrapped")).context("removing the marker")?;
        kill(Pid::from_raw(manager), Signal::SIGKILL)?;
        Ok(())
    }

    /// Rewrites the cluster file with `instances` and `extra` spec lines and runs `local apply`;
    /// returns the generation the status must reach.
    pub fn apply(&mut self, instances: u32, extra: &str) -> i64 {
        std::fs::write(&self.file, cluster_yaml_for(self.engine, &self.name, instances, extra))
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
