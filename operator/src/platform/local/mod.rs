//! The local platform: a cluster as plain processes on this machine. Instance `k` listens on
//! `127.0.0.1:(base port + k)`; its manager is a child process, restarted like a kubelet
//! restarts a container; the state directory stands in for the API server.

pub mod binaries;
pub mod commands;
pub mod procs;
pub mod statedir;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use opengauss_crd::names::{instance_name, instance_ordinal};
use opengauss_crd::{ControllerPresence, Engine, OpenGaussCluster, OpenGaussClusterStatus};

use crate::controller::{Inventory, Platform, PlatformInstance, RequestOutcome};
use crate::credentials::{REPLICATION_USER, Secrets, pgpass_lines};
use crate::engine::Endpoint;
use crate::instance::InstanceConfig;
use crate::plan::{Event, EventType, PlatformState, UserRequests};
use procs::Kubelet;
use statedir::StateDir;

pub const DEFAULT_BASE_PORT: u16 = 15432;
pub const LOCAL_HOST: &str = "127.0.0.1";

/// The ports instance `ordinal` listens on: its database port (`base + stride × ordinal`, the
/// engine's stride: 1 for PostgreSQL, 10 for openGauss, whose server also binds `port + 1` and
/// `port + 5`), then every other port it opens.
pub fn ports(engine: Engine, base_port: u16, ordinal: u32) -> Vec<u16> {
    let dialect = crate::engine::dialect(engine);
    let k = u16::try_from(ordinal).unwrap_or(u16::MAX);
    let port = base_port.saturating_add(k.saturating_mul(dialect.port_stride()));
    let mut all = vec![port];
    if let Some(ha) = dialect.ha_ports(port) {
        all.extend([ha.replication, ha.heartbeat]);
    }
    all
}

#[derive(Debug)]
pub struct LocalPlatform {
    pub state: StateDir,
    pub kubelet: Kubelet,
    /// Instance configurations by name: the spec's members and, until removed, instances a
    /// scale-down left behind.
    configs: std::sync::RwLock<BTreeMap<String, InstanceConfig>>,
    cluster: String,
    engine: Engine,
    bin_dir: PathBuf,
    base_port: u16,
    secrets: Secrets,
    /// Last line printed per topic, so repeated progress is printed once.
    printed: std::sync::Mutex<BTreeMap<String, String>>,
    /// When the status file last carried a fresh heartbeat.
    last_heartbeat: std::sync::Mutex<Option<std::time::Instant>>,
}

/// This process as the cluster's controller, now.
fn presence() -> ControllerPresence {
    ControllerPresence { pid: std::process::id(), heartbeat: Time(k8s_openapi::jiff::Timestamp::now()) }
}

impl LocalPlatform {
    /// Refreshes the heartbeat in the status file when it is a second old, so readers can
    /// tell a running controller from a dead one (a status that did not change is not
    /// otherwise rewritten).
    pub fn heartbeat(&self) -> anyhow::Result<()> {
        let fresh = self
            .last_heartbeat
            .lock()
            .expect("heartbeat lock")
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1));
        if fresh {
            return Ok(());
        }
        match self.state.read_status()? {
            Some(status) => self.write_status_with_heartbeat(status),
            None => Ok(()),
        }
    }

    /// Writes `status` with this controller's presence, which counts as a heartbeat.
    fn write_status_with_heartbeat(&self, mut status: OpenGaussClusterStatus) -> anyhow::Result<()> {
        status.controller = Some(presence());
        self.state.write_status(&status)?;
        *self.last_heartbeat.lock().expect("heartbeat lock") = Some(std::time::Instant::now());
        Ok(())
    }

    pub fn new(
        state: StateDir,
        cluster: &OpenGaussCluster,
        bin_dir: PathBuf,
        base_port: u16,
        run_as: Option<procs::RunAs>,
        secrets: Secrets,
    ) -> anyhow::Result<Self> {
        let env = crate::engine::dialect(cluster.spec.engine).install_env(&bin_dir);
        let kubelet = Kubelet::new(std::env::current_exe()?, run_as, BTreeMap::new()).with_env(env);
        let platform = Self {
            cluster: cluster.metadata.name.clone().unwrap_or_default(),
            engine: cluster.spec.engine,
            state,
            kubelet,
            configs: Default::default(),
            bin_dir,
            base_port,
            secrets,
            printed: Default::default(),
            last_heartbeat: Default::default(),
        };
        platform.follow_spec(cluster);
        // Instances left from a larger size (scaled down while stopped) are kept until the
        // controller removes them.
        if let Ok(entries) = std::fs::read_dir(platform.state.instances_dir()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(k) = instance_ordinal(&platform.cluster, &name)
                    && procs::config_file(&e.path()).exists()
                {
                    platform.add_instance(k);
                }
            }
        }
        Ok(platform)
    }

    /// Adds the configurations of the instances `cluster` asks for (new ones after a
    /// scale-up); instances beyond its size stay until deleted.
    pub fn follow_spec(&self, cluster: &OpenGaussCluster) {
        for ordinal in 0..cluster.spec.instances {
            self.add_instance(ordinal);
        }
    }

    fn add_instance(&self, ordinal: u32) {
        let instance = instance_name(&self.cluster, ordinal);
        let mut configs = self.configs.write().expect("configs lock");
        if configs.contains_key(&instance) {
            return;
        }
        let root = self.state.instance_dir(&instance);
        let all = ports(self.engine, self.base_port, ordinal);
        let port = all[0];
        let ha_port = crate::engine::dialect(self.engine).ha_ports(port).map_or(port, |h| h.replication);
        let cfg = InstanceConfig {
            cluster: self.cluster.clone(),
            instance: instance.clone(),
            engine: self.engine,
            bin_dir: self.bin_dir.clone(),
            root: root.clone(),
            socket_dir: root.join("run"),
            port,
            listen_addresses: LOCAL_HOST.into(),
            advertise_host: LOCAL_HOST.into(),
            advertise_host_env: None,
            api_listen: "127.0.0.1:0".parse().expect("valid address"),
            api_port_file: Some(procs::port_file(&root)),
            superuser: crate::engine::dialect(self.engine).superuser().into(),
            replication_user: REPLICATION_USER.into(),
            token_file: root.join("api-token"),
            superuser_password_file: root.join("superuser-password"),
            replication_password_file: root.join("replication-password"),
            passfile: root.join("pgpass"),
            hba_networks: vec!["127.0.0.1/32".into(), "::1/128".into()],
            ha_port,
        };
        self.kubelet.add(&instance, root);
        configs.insert(instance, cfg);
    }

    /// A snapshot of every instance's configuration.
    pub fn configs(&self) -> BTreeMap<String, InstanceConfig> {
        self.configs.read().expect("configs lock").clone()
    }

    /// Writes an instance's files (config, its copy of the secrets) so its manager can start.
    pub fn prepare(&self, instance: &str) -> anyhow::Result<()> {
        let cfg = self.config(instance)?;
        let s = &self.secrets;
        let files = vec![
            (cfg.token_file.clone(), s.token.clone()),
            (cfg.superuser_password_file.clone(), s.superuser_password.clone()),
            (cfg.replication_password_file.clone(), s.replication_password.clone()),
            (cfg.passfile.clone(), pgpass_lines(&cfg.superuser, &cfg.replication_user, s)),
        ];
        self.kubelet.prepare(&cfg, &files)
    }

    fn config(&self, instance: &str) -> anyhow::Result<InstanceConfig> {
        self.configs
            .read()
            .expect("configs lock")
            .get(instance)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{instance} is not an instance of this cluster"))
    }

    pub fn endpoint(&self, instance: &str) -> Option<Endpoint> {
        self.config(instance).ok().map(|c| Endpoint { host: c.advertise_host.clone(), port: c.port })
    }

    /// Prints `line` unless it is what was last printed for `topic`.
    pub fn say(&self, topic: &str, line: String) {
        let mut printed = self.printed.lock().expect("printed lock");
        if printed.get(topic) != Some(&line) {
            println!("{} {line}", chrono_now());
            printed.insert(topic.to_string(), line);
        }
    }
}

/// Wall-clock time for progress lines.
pub fn chrono_now() -> String {
    k8s_openapi::jiff::Timestamp::now().strftime("%H:%M:%S%.3fZ").to_string()
}

impl Platform for LocalPlatform {
    async fn inventory(&self) -> anyhow::Result<Inventory> {
        let mut inv = Inventory::new();
        for (name, cfg) in &self.configs() {
            let state = self.kubelet.state(name).await;
            inv.insert(
                name.clone(),
                PlatformInstance {
                    state,
                    endpoint: Endpoint { host: cfg.advertise_host.clone(), port: cfg.port },
                    ha_port: cfg.ha_port,
                    manager_url: if state == PlatformState::Running {
                        self.kubelet.manager_url(name)
                    } else {
                        None
                    },
                    // A process is always started from the instance's current configuration.
                    outdated: false,
                },
            );
        }
        Ok(inv)
    }

    async fn create(&self, instance: &str) -> anyhow::Result<()> {
        self.prepare(instance)?;
        self.kubelet.start(instance).await
    }

    async fn restart(&self, instance: &str) -> anyhow::Result<()> {
        self.kubelet.start(instance).await
    }

    async fn recreate(&self, instance: &str) -> anyhow::Result<()> {
        self.kubelet.stop(instance, std::time::Duration::from_secs(90)).await?;
        self.prepare(instance)?;
        self.kubelet.start(instance).await
    }

    async fn delete(&self, instance: &str) -> anyhow::Result<()> {
        let cfg = self.config(instance)?;
        self.kubelet.stop(instance, std::time::Duration::from_secs(90)).await?;
        if crate::instance::server_is_running(&cfg.data_dir()) {
            anyhow::bail!("{instance}'s database server still runs; not removing its data");
        }
        std::fs::remove_dir_all(&cfg.root).with_context(|| format!("removing {}", cfg.root.display()))?;
        self.kubelet.forget(instance);
        self.configs.write().expect("configs lock").remove(instance);
        self.say(&format!("removed/{instance}"), format!("{instance} removed with its data"));
        Ok(())
    }

    async fn save_status(&self, status: &OpenGaussClusterStatus) -> anyhow::Result<()> {
        self.write_status_with_heartbeat(status.clone())
    }

    async fn requests(&self) -> UserRequests {
        let requested = std::fs::read_to_string(self.state.switchover_request()).ok();
        UserRequests { switchover_to: requested.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()) }
    }

    async fn acknowledge(&self, outcome: &RequestOutcome) -> anyhow::Result<()> {
        let (accepted, message) = match outcome {
            Ok(m) => (true, m),
            Err(m) => (false, m),
        };
        let json = serde_json::json!({ "accepted": accepted, "message": message });
        crate::fsutil::write_atomic(&self.state.switchover_result(), json.to_string().as_bytes(), 0o644)?;
        match std::fs::remove_file(self.state.switchover_request()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn publish(&self, events: &[Event]) {
        for e in events {
            let mark = match e.type_ {
                EventType::Normal => "",
                EventType::Warning => "WARNING ",
            };
            self.say(&format!("event/{}", e.reason), format!("{mark}{}: {}", e.reason, e.message));
        }
    }
}
