//! Pure builders: the k8s-openapi objects for one cluster, from its spec (and, for role labels,
//! its status). No client, no clock, no randomness: the same cluster always gives the same
//! objects, which is what `render` prints and what the tests pin.
//!
//! Per cluster `<name>` in namespace `<ns>`:
//! - Secret `<name>-credentials`: superuser and replication passwords, the managers' API token,
//!   a libpq password file;
//! - with TLS (the default), Secrets `<name>-ca` (the cluster's certificate authority) and
//!   `<name>-tls` (each instance's server certificate and key, and the authority's
//!   certificate), made and renewed by the reconcile (`certificates`), not here: they hold
//!   keys generated at run time;
//! - ConfigMap `<name>-config`: one `<instance>.json` per instance, the instance manager's
//!   `InstanceConfig`;
//! - Service `<name>-headless` (every pod, not-ready ones included, so each pod has the stable
//!   DNS name `<instance>.<name>-headless.<ns>.svc.<domain>` that `replconninfoN` uses);
//! - Services `<name>-rw` (role `primary`) and `<name>-ro` (role `standby`);
//! - PodDisruptionBudget `<name>`: at most one instance voluntarily disrupted at a time;
//! - per instance `<name>-<k>`: PVC `<name>-<k>-data` and Pod `<name>-<k>`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, HTTPGetAction, KeyToPath, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec,
    Probe, SeccompProfile, Secret, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec,
    Volume, VolumeMount, VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use opengauss_crd::names::instance_names;
use opengauss_crd::{OpenGaussCluster, OpenGaussClusterStatus};

use super::credentials::{Credentials, keys};
use super::options::Options;
use super::roles::{RoleLabel, desired_role};
use super::{annotations, labels};
use crate::instance::InstanceConfig;

/// Where things live inside a database pod.
pub mod paths {
    /// The instance's PVC: `data/` (PGDATA), markers, server log.
    pub const DATA_ROOT: &str = "/var/lib/opengauss";
    /// emptyDir holding the manager binary copied by the init container, and the 0600 pgpass.
    pub const CONTROLLER_DIR: &str = "/controller";
    pub const MANAGER_BINARY: &str = "/controller/opengauss-operator";
    pub const PGPASS: &str = "/controller/pgpass";
    /// The server's Unix socket: private to the pod, which is how the manager queries it.
    pub const SOCKET_DIR: &str = "/run/opengauss";
    /// The cluster's ConfigMap, this instance's key only.
    pub const CONFIG_DIR: &str = "/etc/opengauss-operator/config";
    /// The cluster's Secret.
    pub const SECRET_DIR: &str = "/etc/opengauss-operator/secret";
    /// This instance's items of the TLS Secret (`ca.crt`, `server.crt`, `server.key`), which
    /// the manager copies into `TLS_DIR` with the modes the database requires.
    pub const TLS_SOURCE_DIR: &str = "/etc/opengauss-operator/tls";
    /// The files the database server and the manager's listener use, on the instance's volume.
    pub const TLS_DIR: &str = "/var/lib/opengauss/tls";
    /// Where the operator image keeps its binary.
    pub const OPERATOR_BINARY: &str = "/usr/local/bin/opengauss-operator";
}

/// Container names.
pub const DATABASE_CONTAINER: &str = "database";
/// The environment variable holding a database pod's own IP.
pub const POD_IP_ENV: &str = "POD_IP";
pub const INIT_CONTAINER: &str = "install-manager";

/// Port names (at most 15 characters).
pub mod ports {
    pub const DATABASE: &str = "postgresql";
    pub const HA: &str = "ha";
    pub const HA_HEARTBEAT: &str = "ha-heartbeat";
    pub const MANAGER: &str = "manager";
}

/// Size of the in-memory `/dev/shm` (PostgreSQL's dynamic shared memory, openGauss's shared
/// memory segments). Container runtimes default to 64 MiB, too small for parallel queries.
const SHM_SIZE: &str = "1Gi";
/// Time the kubelet gives the manager to stop the server cleanly (a fast shutdown waits for
/// standbys to receive the last WAL).
const TERMINATION_GRACE_SECONDS: i64 = 120;

// ---------------------------------------------------------------------------------------------
// Names

pub fn cluster_name(c: &OpenGaussCluster) -> &str {
    c.metadata.name.as_deref().unwrap_or_default()
}

/// The cluster's namespace; `default` for a cluster file without one (render).
pub fn namespace(c: &OpenGaussCluster) -> &str {
    c.metadata.namespace.as_deref().unwrap_or("default")
}

pub fn secret_name(cluster: &str) -> String {
    format!("{cluster}-credentials")
}
pub fn config_map_name(cluster: &str) -> String {
    format!("{cluster}-config")
}
pub fn headless_service_name(cluster: &str) -> String {
    format!("{cluster}-headless")
}
pub fn rw_service_name(cluster: &str) -> String {
    format!("{cluster}-rw")
}
pub fn ro_service_name(cluster: &str) -> String {
    format!("{cluster}-ro")
}
pub fn ca_secret_name(cluster: &str) -> String {
    format!("{cluster}-ca")
}
pub fn tls_secret_name(cluster: &str) -> String {
    format!("{cluster}-tls")
}
pub fn pdb_name(cluster: &str) -> String {
    cluster.to_string()
}
pub fn pvc_name(instance: &str) -> String {
    format!("{instance}-data")
}
/// The ConfigMap key holding one instance's manager configuration.
pub fn config_key(instance: &str) -> String {
    format!("{instance}.json")
}

/// The stable DNS name of an instance's pod, through the headless Service.
pub fn instance_host(c: &OpenGaussCluster, instance: &str, opts: &Options) -> String {
    format!(
        "{instance}.{}.{}.svc.{}",
        headless_service_name(cluster_name(c)),
        namespace(c),
        opts.cluster_domain
    )
}

/// Keys of the TLS Secret.
pub mod tls_keys {
    /// The authority's certificate (the CA Secret uses the same key, beside `CA_KEY`).
    pub const CA: &str = "ca.crt";
    pub const CA_KEY: &str = "ca.key";
    pub fn certificate(instance: &str) -> String {
        format!("{instance}.crt")
    }
    pub fn key(instance: &str) -> String {
        format!("{instance}.key")
    }
}

/// Whether the cluster's instances serve TLS.
pub fn tls_enabled(c: &OpenGaussCluster) -> bool {
    c.spec.tls.enabled
}

/// Every name an instance's server certificate carries: its pod's names through the headless
/// Service, the `-rw` and `-ro` Services in every form a client in the cluster may use, and
/// the loopback forms. (Pod IPs are not among them: a pod has none when its certificate is
/// issued.)
pub fn certificate_names(c: &OpenGaussCluster, instance: &str, opts: &Options) -> Vec<String> {
    let name = cluster_name(c);
    let ns = namespace(c);
    let domain = &opts.cluster_domain;
    let mut names = vec![instance.to_string(), "localhost".into(), "127.0.0.1".into()];
    let headless = headless_service_name(name);
    for host in [format!("{instance}.{headless}"), rw_service_name(name), ro_service_name(name)] {
        names.push(format!("{host}.{ns}.svc.{domain}"));
        names.push(format!("{host}.{ns}.svc"));
        names.push(format!("{host}.{ns}"));
        names.push(host);
    }
    names
}

/// openGauss's HA (replication) and heartbeat ports, from the engine.
pub fn ha_ports(c: &OpenGaussCluster) -> Option<crate::engine::HaPorts> {
    crate::engine::dialect(c.spec.engine).ha_ports(c.spec.port)
}

/// The HA port peers replicate over (the database port for PostgreSQL).
pub fn ha_port(c: &OpenGaussCluster) -> u16 {
    ha_ports(c).map_or(c.spec.port, |p| p.replication)
}

// ---------------------------------------------------------------------------------------------
// The database image

pub use crate::engine::ImageLayout;

/// The database image's layout: the engine's official one, adapted by the cluster's
/// annotations for images laid out otherwise.
pub fn image_layout(c: &OpenGaussCluster) -> ImageLayout {
    let anns = c.metadata.annotations.clone().unwrap_or_default();
    let mut layout = crate::engine::dialect(c.spec.engine).image_layout(c.spec.image());
    if let Some(dir) = anns.get(annotations::BIN_DIR).filter(|d| d.starts_with('/')) {
        layout.bin_dir = dir.clone();
    }
    if let Some(uid) =
        anns.get(annotations::RUN_AS_USER).and_then(|u| u.parse::<i64>().ok()).filter(|u| *u > 0)
    {
        layout.uid = uid;
        layout.gid = uid;
    }
    layout
}

// ---------------------------------------------------------------------------------------------
// Metadata

/// Labels on every object of the cluster.
pub fn cluster_labels(cluster: &str) -> BTreeMap<String, String> {
    [
        (labels::NAME, "opengauss"),
        (labels::APP_INSTANCE, cluster),
        (labels::MANAGED_BY, labels::MANAGER),
        (labels::CLUSTER, cluster),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The label selector matching every object of the cluster.
pub fn cluster_selector(cluster: &str) -> String {
    format!("{}={cluster},{}={}", labels::CLUSTER, labels::MANAGED_BY, labels::MANAGER)
}

fn instance_labels(cluster: &str, instance: &str) -> BTreeMap<String, String> {
    let mut l = cluster_labels(cluster);
    l.insert(labels::INSTANCE.into(), instance.into());
    l.insert(labels::COMPONENT.into(), "database".into());
    l
}

/// The controller reference to the cluster. A cluster read from a file (render) has no uid
/// yet, and gets none: a reference to a uid that does not exist would make the garbage
/// collector delete the object.
pub fn owner_reference(c: &OpenGaussCluster) -> Option<OwnerReference> {
    let uid = c.metadata.uid.clone()?;
    Some(OwnerReference {
        api_version: opengauss_crd::API_VERSION.into(),
        kind: opengauss_crd::KIND.into(),
        name: cluster_name(c).into(),
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

pub(super) fn meta(c: &OpenGaussCluster, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace(c).to_string()),
        labels: Some(labels),
        owner_references: owner_reference(c).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster-level objects

/// The Secret, created once with `credentials` and never updated.
pub fn secret(c: &OpenGaussCluster, credentials: &Credentials) -> Secret {
    Secret {
        metadata: meta(c, secret_name(cluster_name(c)), cluster_labels(cluster_name(c))),
        type_: Some("Opaque".into()),
        string_data: Some(credentials.entries()),
        ..Secret::default()
    }
}

/// The instance manager's configuration for `instance` inside its pod.
pub fn instance_config(c: &OpenGaussCluster, instance: &str, opts: &Options) -> InstanceConfig {
    let layout = image_layout(c);
    let secret = |key: &str| PathBuf::from(paths::SECRET_DIR).join(key);
    InstanceConfig {
        cluster: cluster_name(c).to_string(),
        instance: instance.to_string(),
        engine: c.spec.engine,
        bin_dir: PathBuf::from(layout.bin_dir),
        root: PathBuf::from(paths::DATA_ROOT),
        socket_dir: PathBuf::from(paths::SOCKET_DIR),
        port: c.spec.port,
        listen_addresses: "*".into(),
        advertise_host: instance_host(c, instance, opts),
        advertise_host_env: crate::engine::dialect(c.spec.engine)
            .peers_by_address()
            .then(|| POD_IP_ENV.into()),
        api_listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, opts.manager_port)),
        api_port_file: None,
        superuser: crate::engine::dialect(c.spec.engine).superuser().into(),
        replication_user: crate::credentials::REPLICATION_USER.into(),
        token_file: secret(keys::API_TOKEN),
        superuser_password_file: secret(keys::PASSWORD),
        replication_password_file: secret(keys::REPLICATION_PASSWORD),
        passfile: PathBuf::from(paths::PGPASS),
        // Pod networks differ between clusters; every TCP login needs a password.
        hba_networks: vec!["0.0.0.0/0".into(), "::/0".into()],
        ha_port: ha_port(c),
        tls: tls_enabled(c).then(|| crate::tls::InstanceTls::in_dir(std::path::Path::new(paths::TLS_DIR))),
        tls_source: tls_enabled(c).then(|| PathBuf::from(paths::TLS_SOURCE_DIR)),
        replication_by_certificate: tls_enabled(c) && c.spec.tls.replication_client_certificates,
    }
}

/// The ConfigMap: one manager configuration per instance.
pub fn config_map(c: &OpenGaussCluster, opts: &Options) -> ConfigMap {
    let name = cluster_name(c);
    let data = instance_names(name, c.spec.instances)
        .into_iter()
        .map(|i| {
            let cfg = instance_config(c, &i, opts);
            let json = serde_json::to_string_pretty(&cfg).expect("an InstanceConfig always serialises");
            (config_key(&i), json + "\n")
        })
        .collect();
    ConfigMap {
        metadata: meta(c, config_map_name(name), cluster_labels(name)),
        data: Some(data),
        ..ConfigMap::default()
    }
}

fn service_port(name: &str, port: u16) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: i32::from(port),
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// The headless Service: a DNS name for every pod, ready or not (replication peers must find
/// each other before they are ready).
pub fn headless_service(c: &OpenGaussCluster) -> Service {
    let name = cluster_name(c);
    let ha = ha_ports(c);
    Service {
        metadata: meta(c, headless_service_name(name), cluster_labels(name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(name, None)),
            ports: Some(match ha {
                Some(ha) => vec![
                    service_port(ports::DATABASE, c.spec.port),
                    service_port(ports::HA, ha.replication),
                    service_port(ports::HA_HEARTBEAT, ha.heartbeat),
                ],
                None => vec![service_port(ports::DATABASE, c.spec.port)],
            }),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn selector_labels(cluster: &str, role: Option<RoleLabel>) -> BTreeMap<String, String> {
    let mut s = BTreeMap::from([(labels::CLUSTER.to_string(), cluster.to_string())]);
    if let Some(role) = role {
        s.insert(labels::ROLE.into(), role.as_str().into());
    }
    s
}

fn role_service(c: &OpenGaussCluster, name: String, role: RoleLabel) -> Service {
    let cluster = cluster_name(c);
    Service {
        metadata: meta(c, name, cluster_labels(cluster)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(cluster, Some(role))),
            ports: Some(vec![service_port(ports::DATABASE, c.spec.port)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// `<name>-rw`: the primary, and nothing while a failover is in flight.
pub fn rw_service(c: &OpenGaussCluster) -> Service {
    role_service(c, rw_service_name(cluster_name(c)), RoleLabel::Primary)
}

/// `<name>-ro`: the standbys.
pub fn ro_service(c: &OpenGaussCluster) -> Service {
    role_service(c, ro_service_name(cluster_name(c)), RoleLabel::Standby)
}

/// At most one instance of the cluster voluntarily disrupted (drained, evicted) at a time.
pub fn pod_disruption_budget(c: &OpenGaussCluster) -> PodDisruptionBudget {
    let name = cluster_name(c);
    PodDisruptionBudget {
        metadata: meta(c, pdb_name(name), cluster_labels(name)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(name, None)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Instances

pub fn pvc(c: &OpenGaussCluster, instance: &str) -> PersistentVolumeClaim {
    let name = cluster_name(c);
    PersistentVolumeClaim {
        metadata: meta(c, pvc_name(instance), instance_labels(name, instance)),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(c.spec.storage.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            storage_class_name: c.spec.storage.storage_class_name.clone(),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

/// The kubelet's probe of the manager's API (over HTTPS with TLS; the kubelet does not check
/// the certificate, and the probe paths need no token).
fn http_probe(path: &str, tls: bool, period: i32, timeout: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(ports::MANAGER.into()),
            scheme: Some(if tls { "HTTPS" } else { "HTTP" }.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(timeout),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn container_port(name: &str, port: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(port),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

/// No privileges, no capabilities.
fn restricted(read_only_root: bool) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(read_only_root),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
        ..SecurityContext::default()
    }
}

/// The init container's script: copy the manager binary next to the database, and the password
/// file with the 0600 mode libpq insists on. Runs in the operator image (busybox userland).
fn install_script() -> String {
    format!(
        "set -eu\ncp {bin} {dst}\ncp {secret}/{pgpass} {pgpass_dst}\nchmod 0600 {pgpass_dst}\n",
        bin = paths::OPERATOR_BINARY,
        dst = paths::MANAGER_BINARY,
        secret = paths::SECRET_DIR,
        pgpass = keys::PGPASS,
        pgpass_dst = paths::PGPASS,
    )
}

/// The role label a pod is created with.
pub fn role_for(status: Option<&OpenGaussClusterStatus>, instance: &str) -> RoleLabel {
    status.map_or(RoleLabel::None, |s| desired_role(s, instance))
}

/// One instance's pod: the instance manager as PID 1 of the stock database image.
pub fn pod(c: &OpenGaussCluster, instance: &str, role: RoleLabel, opts: &Options) -> Pod {
    let name = cluster_name(c);
    let layout = image_layout(c);
    let mut pod_labels = instance_labels(name, instance);
    pod_labels.insert(labels::ROLE.into(), role.as_str().into());
    let ha = ha_ports(c);
    let tls = tls_enabled(c);
    let mut env: Vec<EnvVar> = layout
        .env
        .iter()
        .map(|(k, v)| EnvVar { name: k.clone(), value: Some(v.clone()), ..EnvVar::default() })
        .collect();
    env.push(EnvVar { name: "RUST_LOG".into(), value: Some("info".into()), ..EnvVar::default() });
    // The pod's own address, for engines whose replication peers are named by address.
    env.push(EnvVar {
        name: POD_IP_ENV.into(),
        value_from: Some(k8s_openapi::api::core::v1::EnvVarSource {
            field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                field_path: "status.podIP".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..EnvVar::default()
    });
    let database = Container {
        name: DATABASE_CONTAINER.into(),
        image: Some(c.spec.image().to_string()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec![
            paths::MANAGER_BINARY.into(),
            "instance".into(),
            "run".into(),
            "--config".into(),
            format!("{}/{}", paths::CONFIG_DIR, config_key(instance)),
        ]),
        env: Some(env),
        ports: Some(match ha {
            Some(ha) => vec![
                container_port(ports::DATABASE, c.spec.port),
                container_port(ports::HA, ha.replication),
                container_port(ports::HA_HEARTBEAT, ha.heartbeat),
                container_port(ports::MANAGER, opts.manager_port),
            ],
            None => vec![
                container_port(ports::DATABASE, c.spec.port),
                container_port(ports::MANAGER, opts.manager_port),
            ],
        }),
        // The manager answers /healthz as long as it runs; /readyz only while the server
        // accepts connections, which keeps an instance out of the Services until then.
        liveness_probe: Some(http_probe("/healthz", tls, 10, 5, 6)),
        readiness_probe: Some(http_probe("/readyz", tls, 2, 3, 3)),
        resources: c.spec.resources.clone(),
        // The database image writes outside its volumes (lock files, temporary files).
        security_context: Some(restricted(false)),
        volume_mounts: Some(
            [
                mount("data", paths::DATA_ROOT, false),
                mount("controller", paths::CONTROLLER_DIR, true),
                mount("run", paths::SOCKET_DIR, false),
                mount("config", paths::CONFIG_DIR, true),
                mount("secret", paths::SECRET_DIR, true),
                mount("shm", "/dev/shm", false),
                mount("tmp", "/tmp", false),
            ]
            .into_iter()
            .chain(tls.then(|| mount("tls", paths::TLS_SOURCE_DIR, true)))
            .collect(),
        ),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };
    let init = Container {
        name: INIT_CONTAINER.into(),
        image: Some(opts.operator_image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec!["/bin/sh".into(), "-c".into(), install_script()]),
        security_context: Some(restricted(true)),
        volume_mounts: Some(vec![
            mount("controller", paths::CONTROLLER_DIR, false),
            mount("secret", paths::SECRET_DIR, true),
        ]),
        resources: Some(k8s_openapi::api::core::v1::ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("10m".into())),
                ("memory".to_string(), Quantity("16Mi".into())),
            ])),
            limits: Some(BTreeMap::from([("memory".to_string(), Quantity("64Mi".into()))])),
            ..Default::default()
        }),
        ..Container::default()
    };
    let empty = |medium: Option<&str>, size: Option<&str>| EmptyDirVolumeSource {
        medium: medium.map(Into::into),
        size_limit: size.map(|s| Quantity(s.into())),
    };
    let mut volumes = vec![
        Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc_name(instance),
                ..PersistentVolumeClaimVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "controller".into(),
            empty_dir: Some(empty(None, Some("256Mi"))),
            ..Volume::default()
        },
        Volume { name: "run".into(), empty_dir: Some(empty(None, Some("16Mi"))), ..Volume::default() },
        Volume { name: "tmp".into(), empty_dir: Some(empty(None, Some("1Gi"))), ..Volume::default() },
        Volume {
            name: "shm".into(),
            empty_dir: Some(empty(Some("Memory"), Some(SHM_SIZE))),
            ..Volume::default()
        },
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(name),
                items: Some(vec![KeyToPath {
                    key: config_key(instance),
                    path: config_key(instance),
                    ..KeyToPath::default()
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "secret".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret_name(name)),
                // Readable by the database user through fsGroup, by nobody else.
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    if tls {
        // This instance's own key only; the kubelet updates the files when the Secret is
        // renewed, and the manager takes them up.
        let item = |key: String, path: &str| KeyToPath { key, path: path.into(), ..KeyToPath::default() };
        volumes.push(Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(tls_secret_name(name)),
                items: Some(vec![
                    item(tls_keys::CA.into(), "ca.crt"),
                    item(tls_keys::certificate(instance), "server.crt"),
                    item(tls_keys::key(instance), "server.key"),
                ]),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    let spec = PodSpec {
        hostname: Some(instance.into()),
        subdomain: Some(headless_service_name(name)),
        init_containers: Some(vec![init]),
        containers: vec![database],
        volumes: Some(volumes),
        // Database pods never talk to the API server.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        // Absent unless set, so clusters that set none keep their definition hash.
        image_pull_secrets: Some(c.spec.image_pull_secrets.clone()).filter(|v| !v.is_empty()),
        node_selector: Some(c.spec.node_selector.clone()).filter(|m| !m.is_empty()),
        tolerations: Some(c.spec.tolerations.clone()).filter(|v| !v.is_empty()),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(layout.uid),
            run_as_group: Some(layout.gid),
            fs_group: Some(layout.gid),
            fs_group_change_policy: Some("OnRootMismatch".into()),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        // Spread instances over nodes when there are several.
        affinity: Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector_labels(name, None)),
                            ..LabelSelector::default()
                        }),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..PodAffinityTerm::default()
                    },
                }]),
                ..PodAntiAffinity::default()
            }),
            ..Affinity::default()
        }),
        ..PodSpec::default()
    };
    let mut metadata = meta(c, instance.to_string(), pod_labels);
    metadata.annotations =
        Some(BTreeMap::from([(annotations::DEFINITION_HASH.into(), definition_hash(&spec))]));
    Pod { metadata, spec: Some(spec), ..Pod::default() }
}

/// A stable hash (64-bit FNV-1a, hex) of an object's definition as JSON: the same definition
/// hashes the same in every operator build, so only a real change rolls pods.
pub fn definition_hash<T: serde::Serialize>(definition: &T) -> String {
    let json = serde_json::to_vec(definition).unwrap_or_default();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in json {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The definition hash a pod was created with, if it carries one.
pub fn pod_definition_hash(pod: &Pod) -> Option<&str> {
    pod.metadata.annotations.as_ref()?.get(annotations::DEFINITION_HASH).map(String::as_str)
}

// ---------------------------------------------------------------------------------------------
// Everything at once

/// Every object of a cluster, in the order the operator creates them.
#[derive(Clone, Debug)]
pub struct ClusterObjects {
    pub secret: Secret,
    pub config_map: ConfigMap,
    pub headless: Service,
    pub rw: Service,
    pub ro: Service,
    pub pdb: PodDisruptionBudget,
    /// Per instance, in ordinal order.
    pub instances: Vec<(PersistentVolumeClaim, Pod)>,
}

pub fn cluster_objects(
    c: &OpenGaussCluster,
    status: Option<&OpenGaussClusterStatus>,
    credentials: &Credentials,
    opts: &Options,
) -> ClusterObjects {
    let instances = instance_names(cluster_name(c), c.spec.instances)
        .into_iter()
        .map(|i| (pvc(c, &i), pod(c, &i, role_for(status, &i), opts)))
        .collect();
    ClusterObjects {
        secret: secret(c, credentials),
        config_map: config_map(c, opts),
        headless: headless_service(c),
        rw: rw_service(c),
        ro: ro_service(c),
        pdb: pod_disruption_budget(c),
        instances,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_secrets_and_scheduling_reach_the_pod_and_roll_it() {
        let opts = Options::default();
        let plain: OpenGaussCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "ha.opengauss.dev/v1alpha1", "kind": "OpenGaussCluster",
            "metadata": {"name": "og", "namespace": "db", "uid": "u1"},
            "spec": {"engine": "postgres"}
        }))
        .expect("cluster");
        let before = pod(&plain, "og-0", RoleLabel::None, &opts);
        let spec = before.spec.as_ref().expect("spec");
        assert!(
            spec.image_pull_secrets.is_none() && spec.node_selector.is_none() && spec.tolerations.is_none()
        );

        let mut placed = plain.clone();
        placed.spec = serde_json::from_value(serde_json::json!({
            "engine": "postgres",
            "imagePullSecrets": [{"name": "registry"}],
            "nodeSelector": {"disk": "ssd"},
            "tolerations": [{"key": "db", "operator": "Exists", "effect": "NoSchedule"}]
        }))
        .expect("spec");
        let after = pod(&placed, "og-0", RoleLabel::None, &opts);
        let spec = after.spec.as_ref().expect("spec");
        assert_eq!(spec.image_pull_secrets.as_ref().map(|v| v[0].name.as_str()), Some("registry"));
        assert_eq!(spec.node_selector.as_ref().and_then(|m| m.get("disk")).map(String::as_str), Some("ssd"));
        assert_eq!(spec.tolerations.as_ref().and_then(|t| t[0].key.as_deref()), Some("db"));
        assert_ne!(
            pod_definition_hash(&before),
            pod_definition_hash(&after),
            "a change of placement rolls the pods"
        );
    }

    #[test]
    fn install_script_copies_binary_and_private_pgpass() {
        let s = install_script();
        assert!(s.contains("cp /usr/local/bin/opengauss-operator /controller/opengauss-operator"), "{s}");
        assert!(s.contains("chmod 0600 /controller/pgpass"), "{s}");
    }
}
