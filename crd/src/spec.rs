//! The desired state of a cluster: what users write in `spec`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{LocalObjectReference, ResourceRequirements, Toleration};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::status::OpenGaussClusterStatus;

/// The default number of instances: one primary and two standbys, like the Docker deployment
/// this project replaces.
pub const DEFAULT_INSTANCES: u32 = 3;
/// Upper bound on instances: openGauss lists replication peers in `replconninfo1..8`, so one
/// primary can know at most eight peers.
pub const MAX_INSTANCES: u32 = 9;
pub const DEFAULT_PORT: u16 = 5432;
pub const DEFAULT_WAL_KEEP_SEGMENTS: u32 = 256;
pub const DEFAULT_MAX_WAL_SENDERS: u32 = 10;
/// See `FailoverSpec::delay_seconds` for why this value.
pub const DEFAULT_FAILOVER_DELAY_SECONDS: u32 = 5;
pub const DEFAULT_PROBE_INTERVAL_MILLISECONDS: u32 = 1000;
pub const DEFAULT_PROBE_TIMEOUT_MILLISECONDS: u32 = 800;
pub const DEFAULT_STORAGE_SIZE: &str = "10Gi";
/// openGauss's publisher pushes each release as `opengauss/opengauss-server:<version>` (a
/// manifest over `<version>-<arch>-<os>`; docker/dockerfiles/opengauss_docker_publisher.py,
/// make_manifest). 7.0.0-RC2 is the release whose Dockerfile is in the source and the one this
/// project ran; `docker manifest inspect <image>` shows whether a registry has it.
pub const DEFAULT_OPENGAUSS_IMAGE: &str = "opengauss/opengauss-server:7.0.0-RC2";
pub const DEFAULT_POSTGRES_IMAGE: &str = "postgres:17";

/// An openGauss (or PostgreSQL) primary/standby cluster with streaming replication.
// Each printcolumn repeats `type_`; clippy mistakes that for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ha.opengauss.dev",
    version = "v1alpha1",
    kind = "OpenGaussCluster",
    plural = "opengaussclusters",
    shortname = "ogc",
    namespaced,
    status = "OpenGaussClusterStatus",
    // The scale subresource lets the disruption controller count the pods a
    // PodDisruptionBudget protects (without it the budget never allows a disruption, so a
    // node drain blocks), and `kubectl scale ogc NAME --replicas=N` resize a cluster.
    scale(spec_replicas_path = ".spec.instances", status_replicas_path = ".status.readyInstances"),
    derive = "PartialEq",
    doc = "A primary/standby openGauss cluster with streaming replication and automated failover.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Primary", type_ = "string", json_path = ".status.currentPrimary"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyInstances"),
    printcolumn(name = "Instances", type_ = "integer", json_path = ".spec.instances"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = kube::core::Rule::new(
    "self.instances == 1 || self.replication.synchronous.method == 'off' || self.replication.synchronous.number < self.instances"
).message("replication.synchronous.number must be smaller than instances: a primary cannot wait for more standbys than the cluster has"))]
#[serde(rename_all = "camelCase")]
pub struct OpenGaussClusterSpec {
    /// Number of instances (one primary, the rest standbys).
    #[serde(default = "default_instances")]
    #[schemars(range(min = 1, max = 9))]
    pub instances: u32,

    /// Database engine. `openGauss` is the product's purpose; `postgres` (13 or later) runs the
    /// same cluster on PostgreSQL.
    #[serde(default)]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("engine cannot change: the data directories belong to the engine that initialised them"))]
    pub engine: Engine,

    /// Container image of the database. Defaults to the engine's official image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,

    /// Port the database listens on inside its pod. The local platform ignores it and uses
    /// `base port + ordinal` instead.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1024, max = 65000))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("port cannot change on an existing cluster: create a new cluster to serve on another port"))]
    pub port: u16,

    /// Persistent storage of each instance.
    #[serde(default)]
    #[x_kube(validation = kube::core::Rule::new("self.size == oldSelf.size").message("storage.size cannot change: volume expansion is not supported yet"))]
    pub storage: StorageSpec,

    /// Compute resources of the database container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Kubernetes: Secrets to pull the database image and the operator image (which the pods'
    /// init container runs) from private registries. Ignored by the local platform.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// Kubernetes: the labels a node needs to run the database pods (`nodeSelector`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Kubernetes: the taints the database pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Streaming replication settings.
    #[serde(default)]
    pub replication: ReplicationSpec,

    /// Extra server parameters (`postgresql.conf` settings), as text, numbers or true/false.
    /// Parameters the operator manages itself (ports, replication, recovery) are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "parameter_values")]
    #[schemars(schema_with = "parameters_schema")]
    pub parameters: BTreeMap<String, String>,

    /// When and how to fail over.
    #[serde(default)]
    pub failover: FailoverSpec,

    /// Instances to fence: their server is stopped and kept stopped, they are never promoted and
    /// receive no traffic. Removing a name unfences the instance. Fencing the primary stops
    /// writes without a failover.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9))]
    pub fenced_instances: Vec<String>,

    /// TLS for database clients, replication and the instance managers' API.
    #[serde(default)]
    pub tls: TlsSpec,
}

/// The operator makes a certificate authority per cluster and a server certificate per
/// instance, and renews those when a third of their lifetime is left.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// `true` (the default): database connections over TCP, replication and the instance
    /// managers' API use TLS only. `false` serves them in clear text (development only); a
    /// change applies as each instance restarts.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How long the server certificates the operator issues are valid (default 90 days). On
    /// Kubernetes at least 300: a renewed certificate must reach the pods through the kubelet
    /// before the one it replaces expires.
    #[serde(default = "default_certificate_lifetime")]
    #[schemars(range(min = 30, max = 315_360_000))]
    pub certificate_lifetime_seconds: u64,
    /// `true`: the replication user authenticates its replication connections (streaming and
    /// base backups) with its instance's certificate instead of its password: a standby
    /// without a certificate the cluster's authority issued to a member is refused, whatever
    /// password it knows. PostgreSQL only (openGauss's `gs_ctl build` connects without TLS).
    #[serde(default)]
    pub replication_client_certificates: bool,
}

impl Default for TlsSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            certificate_lifetime_seconds: DEFAULT_CERTIFICATE_LIFETIME_SECONDS,
            replication_client_certificates: false,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_certificate_lifetime() -> u64 {
    DEFAULT_CERTIFICATE_LIFETIME_SECONDS
}

/// 90 days.
pub const DEFAULT_CERTIFICATE_LIFETIME_SECONDS: u64 = 90 * 24 * 3600;

/// Reads parameter values the way users write them in YAML (`max_connections: 200`,
/// `fsync: true`) as the text a configuration file holds.
fn parameter_values<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    use serde::de::Error;
    BTreeMap::<String, serde_json::Value>::deserialize(d)?
        .into_iter()
        .map(|(name, value)| match value {
            serde_json::Value::String(s) => Ok((name, s)),
            serde_json::Value::Number(n) => Ok((name, n.to_string())),
            serde_json::Value::Bool(b) => Ok((name, b.to_string())),
            serde_json::Value::Null => Err(D::Error::custom(format!("{name} has no value"))),
            serde_json::Value::Array(_) | serde_json::Value::Object(_) => Err(D::Error::custom(format!(
                "{name}: expected one value (text, a number or true/false), got a list or mapping"
            ))),
        })
        .collect()
}

/// Any scalar per parameter: a structural schema cannot say "string, number or boolean", so
/// the value is left open to the API server and checked by `parameter_values`.
fn parameters_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": { "x-kubernetes-preserve-unknown-fields": true }
    })
}

fn default_instances() -> u32 {
    DEFAULT_INSTANCES
}

fn default_port() -> u16 {
    DEFAULT_PORT
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum Engine {
    #[default]
    #[serde(rename = "openGauss")]
    OpenGauss,
    #[serde(rename = "postgres")]
    Postgres,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::OpenGauss => "openGauss",
            Engine::Postgres => "postgres",
        }
    }

    pub fn default_image(self) -> &'static str {
        match self {
            Engine::OpenGauss => DEFAULT_OPENGAUSS_IMAGE,
            Engine::Postgres => DEFAULT_POSTGRES_IMAGE,
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each instance's volume, as a Kubernetes quantity.
    #[serde(default = "default_storage_size")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub size: String,
    /// Storage class of the volumes; the cluster default when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self { size: default_storage_size(), storage_class_name: None }
    }
}

fn default_storage_size() -> String {
    DEFAULT_STORAGE_SIZE.to_owned()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationSpec {
    /// Which standbys must confirm a commit before it is acknowledged.
    #[serde(default)]
    pub synchronous: SynchronousSpec,
    /// WAL segments the primary keeps for standbys that fall behind (openGauss
    /// `wal_keep_segments`; PostgreSQL `wal_keep_size` of as many 16 MiB segments).
    #[serde(default = "default_wal_keep_segments")]
    #[schemars(range(min = 1, max = 1000000))]
    pub wal_keep_segments: u32,
    /// Maximum concurrent WAL sender processes on each instance.
    #[serde(default = "default_max_wal_senders")]
    #[schemars(range(min = 2, max = 100))]
    pub max_wal_senders: u32,
}

impl Default for ReplicationSpec {
    fn default() -> Self {
        Self {
            synchronous: SynchronousSpec::default(),
            wal_keep_segments: DEFAULT_WAL_KEEP_SEGMENTS,
            max_wal_senders: DEFAULT_MAX_WAL_SENDERS,
        }
    }
}

fn default_wal_keep_segments() -> u32 {
    DEFAULT_WAL_KEEP_SEGMENTS
}

fn default_max_wal_senders() -> u32 {
    DEFAULT_MAX_WAL_SENDERS
}

/// `synchronous_standby_names` as a policy: the operator fills in the standby names from the
/// cluster's membership, so a removed instance never stays in the list.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SynchronousSpec {
    /// `any` (quorum: any `number` standbys), `first` (priority order) or `off` (asynchronous).
    #[serde(default)]
    pub method: SyncMethod,
    /// How many standbys must confirm each commit.
    #[serde(default = "default_sync_number")]
    #[schemars(range(min = 1, max = 8))]
    pub number: u32,
}

impl Default for SynchronousSpec {
    fn default() -> Self {
        Self { method: SyncMethod::Any, number: 1 }
    }
}

fn default_sync_number() -> u32 {
    1
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SyncMethod {
    #[default]
    Any,
    First,
    Off,
}

impl SyncMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMethod::Any => "any",
            SyncMethod::First => "first",
            SyncMethod::Off => "off",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverSpec {
    /// Seconds the primary's instance manager and server must both have failed to answer before
    /// the primary is declared lost. A shorter delay fails over faster; a longer one tolerates a
    /// primary too loaded to answer probes. An instance known to be dead (its process or pod is
    /// gone) is failed over without waiting.
    #[serde(default = "default_failover_delay")]
    #[schemars(range(min = 1, max = 3600))]
    pub delay_seconds: u32,
    /// How often the controller probes every instance.
    #[serde(default = "default_probe_interval")]
    #[schemars(range(min = 100, max = 1000))]
    pub probe_interval_milliseconds: u32,
    /// How long one probe may take before it counts as unanswered.
    #[serde(default = "default_probe_timeout")]
    #[schemars(range(min = 50, max = 10000))]
    pub probe_timeout_milliseconds: u32,
    /// `required`: with synchronous replication, never promote a standby that may miss an
    /// acknowledged commit; wait instead and report why. `preferred`: when no such standby is
    /// reachable, promote the most advanced one anyway, and keep writes flowing when synchronous
    /// standbys are lost.
    #[serde(default)]
    pub data_durability: DataDurability,
}

impl Default for FailoverSpec {
    fn default() -> Self {
        Self {
            delay_seconds: DEFAULT_FAILOVER_DELAY_SECONDS,
            probe_interval_milliseconds: DEFAULT_PROBE_INTERVAL_MILLISECONDS,
            probe_timeout_milliseconds: DEFAULT_PROBE_TIMEOUT_MILLISECONDS,
            data_durability: DataDurability::Required,
        }
    }
}

fn default_failover_delay() -> u32 {
    DEFAULT_FAILOVER_DELAY_SECONDS
}

fn default_probe_interval() -> u32 {
    DEFAULT_PROBE_INTERVAL_MILLISECONDS
}

fn default_probe_timeout() -> u32 {
    DEFAULT_PROBE_TIMEOUT_MILLISECONDS
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DataDurability {
    #[default]
    Required,
    Preferred,
}

impl OpenGaussClusterSpec {
    /// The image to run, the engine's default when none is given.
    pub fn image(&self) -> &str {
        self.image.as_deref().unwrap_or_else(|| self.engine.default_image())
    }

    /// Whether `instance` is fenced by the spec.
    pub fn is_fenced(&self, instance: &str) -> bool {
        self.fenced_instances.iter().any(|f| f == instance)
    }

    /// Whether commits wait for standbys at all, given the current number of instances.
    pub fn is_synchronous(&self) -> bool {
        self.instances > 1 && self.replication.synchronous.method != SyncMethod::Off
    }
}
