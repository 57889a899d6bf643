//! The local platform: a cluster as plain processes on this machine. Instance `k` listens on
//! `127.0.0.1:(base port + k)`, or inside a network namespace at an address of its own when
//! `local up --netns` places it there; its manager is a child process, restarted like a
//! kubelet restarts a container; the state directory stands in for the API server.

pub mod binaries;
pub mod certificates;
pub mod commands;
pub mod procs;
pub mod statedir;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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
/// Where `ip netns add NAME` makes a network namespace's file.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Instance `ordinal` runs inside the network namespace `netns` and listens on `address`, on
/// the subnet `address/prefix_len` (`local up --netns ORDINAL=NETNS/ADDRESS/PREFIXLEN`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub ordinal: u32,
    pub netns: String,
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl std::str::FromStr for Placement {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let usage = "expected ORDINAL=NETNS/ADDRESS/PREFIXLEN, e.g. 0=ogp7-i0/10.213.7.10/24";
        let (ordinal, rest) =
            value.split_once('=').ok_or_else(|| format!("{value:?} has no '=': {usage}"))?;
        let ordinal: u32 = ordinal
            .trim()
            .parse()
            .map_err(|_| format!("{ordinal:?} is not an instance ordinal (0, 1, ...): {usage}"))?;
        let mut parts = rest.rsplitn(3, '/');
        let (Some(prefix_len), Some(address), Some(netns)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("{value:?} lacks a part: {usage}"));
        };
        if netns.is_empty() || netns == "." || netns == ".." || netns.contains('/') || netns.contains('\0') {
            return Err(format!(
                "{netns:?} is not a network namespace name (as `ip netns add` takes): {usage}"
            ));
        }
        let address: IpAddr =
            address.parse().map_err(|_| format!("{address:?} is not an IP address: {usage}"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix_len: u8 = prefix_len
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{prefix_len:?} is not a prefix length (0 to {max}): {usage}"))?;
        if address.is_unspecified() || address.is_multicast() {
            return Err(format!("{address} cannot be an instance's own address: {usage}"));
        }
        Ok(Self { ordinal, netns: netns.to_string(), address, prefix_len })
    }
}

impl Placement {
    /// The namespace's file, which the instance manager enters.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.netns)
    }

    /// The subnet in network-address form (`10.213.7.0/24`), for `pg_hba.conf`.
    pub fn network(&self) -> String {
        let network = match self.address {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix_len)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        format!("{network}/{}", self.prefix_len)
    }
}

/// Checks `--netns` placements before anything starts: each ordinal once and within what a
/// cluster can have, each namespace present, and root to enter them.
pub fn check_placements(placements: &[Placement], is_root: bool) -> anyhow::Result<BTreeMap<u32, Placement>> {
    let mut by_ordinal = BTreeMap::new();
    for p in placements {
        if p.ordinal >= opengauss_crd::spec::MAX_INSTANCES {
            anyhow::bail!(
                "--netns {}=...: ordinal {} is beyond any instance of a cluster (at most {} instances, ordinals 0 to {})",
                p.ordinal,
                p.ordinal,
                opengauss_crd::spec::MAX_INSTANCES,
                opengauss_crd::spec::MAX_INSTANCES - 1
            );
        }
        if by_ordinal.insert(p.ordinal, p.clone()).is_some() {
            anyhow::bail!("--netns names instance ordinal {} twice", p.ordinal);
        }
    }
    if by_ordinal.is_empty() {
        return Ok(by_ordinal);
    }
    if !is_root {
        anyhow::bail!(
            "--netns needs root: entering a network namespace needs CAP_SYS_ADMIN (the databases still run unprivileged)"
        );
    }
    for p in by_ordinal.values() {
        if !p.netns_path().exists() {
            anyhow::bail!(
                "network namespace {} does not exist: create it with `ip netns add {}`",
                p.netns,
                p.netns
            );
        }
    }
    Ok(by_ordinal)
}

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

/// The cluster's secrets and, with TLS on, where its certificates come from.
#[derive(Debug)]
pub struct ClusterKeys {
    pub secrets: Secrets,
    pub certificates: Option<certificates::CertificateSource>,
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
    /// Instances placed in network namespaces, by ordinal (`local up --netns`).
    placements: BTreeMap<u32, Placement>,
    /// Last line printed per topic, so repeated progress is printed once.
    printed: std::sync::Mutex<BTreeMap<String, String>>,
    /// When the status file last carried a fresh heartbeat.
    last_heartbeat: std::sync::Mutex<Option<std::time::Instant>>,
    /// Where the instances' certificates come from, with TLS on.
    certificates: Option<certificates::CertificateSource>,
    /// `spec.tls.replicationClientCertificates`, fixed at `local up` like the rest of TLS.
    replication_by_certificate: bool,
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
        keys: ClusterKeys,
        placements: BTreeMap<u32, Placement>,
    ) -> anyhow::Result<Self> {
        let ClusterKeys { secrets, certificates } = keys;
        let env = crate::engine::dialect(cluster.spec.engine).install_env(&bin_dir);
        let kubelet = Kubelet::new(std::env::current_exe()?, run_as, BTreeMap::new())
            .with_env(env)
            .with_https(certificates.is_some());
        let platform = Self {
            cluster: cluster.metadata.name.clone().unwrap_or_default(),
            engine: cluster.spec.engine,
            replication_by_certificate: certificates.is_some()
                && cluster.spec.tls.replication_client_certificates,
            state,
            kubelet,
            configs: Default::default(),
            bin_dir,
            base_port,
            secrets,
            placements,
            printed: Default::default(),
            last_heartbeat: Default::default(),
            certificates,
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
        let placement = self.placements.get(&ordinal);
        // Placed in a network namespace: its own address there, and its subnet may log in.
        let host = placement.map_or_else(|| LOCAL_HOST.to_string(), |p| p.address.to_string());
        let api_ip = placement.map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |p| p.address);
        let mut hba_networks = vec!["127.0.0.1/32".to_string(), "::1/128".to_string()];
        hba_networks.extend(placement.map(Placement::network));
        let cfg = InstanceConfig {
            cluster: self.cluster.clone(),
            instance: instance.clone(),
            engine: self.engine,
            bin_dir: self.bin_dir.clone(),
            root: root.clone(),
            socket_dir: root.join("run"),
            port,
            listen_addresses: host.clone(),
            advertise_host: host,
            advertise_host_env: None,
            api_listen: SocketAddr::new(api_ip, 0),
            api_port_file: Some(procs::port_file(&root)),
            superuser: crate::engine::dialect(self.engine).superuser().into(),
            replication_user: REPLICATION_USER.into(),
            token_file: root.join("api-token"),
            superuser_password_file: root.join("superuser-password"),
            replication_password_file: root.join("replication-password"),
            passfile: root.join("pgpass"),
            hba_networks,
            ha_port,
            tls: self.certificates.as_ref().map(|_| crate::tls::InstanceTls::in_dir(&root)),
            // Written in place by this platform, with the modes the database requires.
            tls_source: None,
            replication_by_certificate: self.replication_by_certificate,
        };
        self.kubelet.add(&instance, root);
        if let Some(p) = placement {
            self.kubelet.place(&instance, p.netns_path(), p.address);
        }
        configs.insert(instance, cfg);
    }

    /// A snapshot of every instance's configuration.
    pub fn configs(&self) -> BTreeMap<String, InstanceConfig> {
        self.configs.read().expect("configs lock").clone()
    }

    /// Writes an instance's files (config, its copy of the secrets, its certificate) so its
    /// manager can start.
    pub fn prepare(&self, instance: &str) -> anyhow::Result<()> {
        let cfg = self.config(instance)?;
        let s = &self.secrets;
        let mut files = vec![
            (cfg.token_file.clone(), s.token.clone()),
            (cfg.superuser_password_file.clone(), s.superuser_password.clone()),
            (cfg.replication_password_file.clone(), s.replication_password.clone()),
            (cfg.passfile.clone(), pgpass_lines(&cfg.superuser, &cfg.replication_user, s)),
        ];
        if let Some(source) = &self.certificates {
            let lifetime = self.certificate_lifetime();
            files.extend(certificates::files_to_write(&cfg, source, lifetime)?.files);
        }
        self.kubelet.prepare(&cfg, &files)
    }

    /// The cluster's authority (PEM), with TLS on.
    pub fn authority_pem(&self) -> Option<String> {
        self.certificates.as_ref().map(|c| c.ca_pem().to_string())
    }

    /// How long new certificates last, from the spec as last applied.
    fn certificate_lifetime(&self) -> std::time::Duration {
        let seconds = commands::read_applied(&self.state)
            .map_or(opengauss_crd::spec::DEFAULT_CERTIFICATE_LIFETIME_SECONDS, |c| {
                c.spec.tls.certificate_lifetime_seconds
            });
        std::time::Duration::from_secs(seconds)
    }

    /// Gives every instance a new pair where it needs one: issued when its own is missing,
    /// foreign, too narrow or a third from its end; or the user's, when a supplied pair
    /// changed and passes the checks. Its manager picks it up. Per instance that changed or
    /// could not: `Ok(why)` it has a new pair, `Err(why not)` it keeps the one it has.
    pub fn renew_certificates(&self, lifetime: std::time::Duration) -> Vec<(String, Result<String, String>)> {
        let Some(source) = &self.certificates else { return Vec::new() };
        let mut outcomes = Vec::new();
        for (name, cfg) in self.configs() {
            if !cfg.root.exists() {
                continue;
            }
            let written = certificates::files_to_write(&cfg, source, lifetime)
                .and_then(|renewal| self.kubelet.write_files(&renewal.files).map(|()| renewal.reason));
            match written {
                Ok(Some(reason)) => outcomes.push((name, Ok(reason))),
                Ok(None) => {}
                Err(e) => outcomes.push((name, Err(format!("{e:#}")))),
            }
        }
        outcomes
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &str) -> Result<Placement, String> {
        v.parse()
    }

    #[test]
    fn a_placement_names_ordinal_namespace_address_and_subnet() {
        let p = parse("0=ogp7-i0/10.213.7.10/24").expect("valid");
        assert_eq!(
            p,
            Placement {
                ordinal: 0,
                netns: "ogp7-i0".into(),
                address: IpAddr::V4(Ipv4Addr::new(10, 213, 7, 10)),
                prefix_len: 24
            }
        );
        assert_eq!(p.network(), "10.213.7.0/24");
        assert_eq!(p.netns_path(), PathBuf::from("/var/run/netns/ogp7-i0"));
        assert_eq!(parse("3=ns/10.1.2.3/32").expect("valid").network(), "10.1.2.3/32");
        assert_eq!(parse("3=ns/10.1.2.3/0").expect("valid").network(), "0.0.0.0/0");
        assert_eq!(parse("3=ns/10.1.130.3/17").expect("valid").network(), "10.1.128.0/17");
        let v6 = parse("12=lab.v6/fd00:1::5/64").expect("valid");
        assert_eq!((v6.ordinal, v6.netns.as_str(), v6.network()), (12, "lab.v6", "fd00:1::/64".to_string()));
    }

    #[test]
    fn a_malformed_placement_is_refused_with_the_expected_form() {
        for bad in [
            "",
            "ogp7-i0/10.213.7.10/24",
            "x=ogp7-i0/10.213.7.10/24",
            "-1=ogp7-i0/10.213.7.10/24",
            "0=10.213.7.10/24",
            "0=ogp7-i0/10.213.7.10",
            "0=/10.213.7.10/24",
            "0=../10.213.7.10/24",
            "0=a/b/10.213.7.10/24",
            "0=ogp7-i0/10.213.7/24",
            "0=ogp7-i0/10.213.7.10/33",
            "0=ogp7-i0/10.213.7.10/",
            "0=ogp7-i0/0.0.0.0/24",
            "0=ogp7-i0/224.0.0.1/24",
            "0=v6/fd00::1/129",
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(err.contains("ORDINAL=NETNS/ADDRESS/PREFIXLEN"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn placements_are_checked_before_anything_starts() {
        let p = |v: &str| parse(v).expect("valid");
        // None given: nothing to check, root or not.
        assert!(check_placements(&[], false).expect("fine").is_empty());
        let beyond = check_placements(&[p("9=lo/10.0.0.1/24")], true).expect_err("beyond");
        assert!(beyond.to_string().contains("ordinal 9 is beyond"), "{beyond}");
        let twice = check_placements(&[p("1=a/10.0.0.1/24"), p("1=b/10.0.0.2/24")], true).expect_err("twice");
        assert!(twice.to_string().contains("ordinal 1 twice"), "{twice}");
        let unprivileged = check_placements(&[p("0=a/10.0.0.1/24")], false).expect_err("not root");
        assert!(unprivileged.to_string().contains("--netns needs root"), "{unprivileged}");
        let missing = check_placements(&[p("0=ogp-no-such-ns-here/10.0.0.1/24")], true).expect_err("missing");
        assert_eq!(
            missing.to_string(),
            "network namespace ogp-no-such-ns-here does not exist: create it with `ip netns add ogp-no-such-ns-here`"
        );
    }
}
