//! The observed state of a cluster: what the controller writes in `status`. The local platform
//! writes the same structure to `<state-dir>/status.json`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenGaussClusterStatus {
    /// Where the cluster is in its life: see `Phase`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Why the cluster is in this phase, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_reason: Option<String>,
    /// The instance that accepts writes (or last did, while failing over).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_primary: Option<String>,
    /// The instance chosen to become primary. Equal to `currentPrimary` when no failover or
    /// switchover is in flight; empty while a failover is still choosing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_primary: Option<String>,
    /// Instances whose server is up and in its intended role (primary writable, standby
    /// streaming).
    #[serde(default)]
    pub ready_instances: u32,
    /// True once the first primary has been initialised: from then on the cluster is only ever
    /// resumed, never initialised again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub initialized: bool,
    /// The synchronous standby set in force on the primary, as last configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous: Option<SynchronousStatus>,
    /// A failover or switchover in flight, persisted before each disruptive step so that a
    /// restarted controller resumes it instead of starting another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transition: Option<Transition>,
    /// The last completed failover or switchover: who replaced whom, why, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition: Option<Transition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// WAL position of the primary when it was last promoted (or, after a switchover, where
    /// the old primary stopped): every commit acknowledged before then lies at or below it, so
    /// no standby below it may be promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_promotion_lsn: Option<String>,
    /// The local platform's controller: its process and when it last wrote this status. A
    /// heartbeat older than `CONTROLLER_HEARTBEAT_STALE_SECONDS` means nothing watches the
    /// cluster and no failover can happen. (On Kubernetes the operator's Lease tells this.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<ControllerPresence>,
}

/// A heartbeat this old (in seconds) means the controller is not running (it writes one at
/// least every second while it runs).
pub const CONTROLLER_HEARTBEAT_STALE_SECONDS: i64 = 5;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControllerPresence {
    pub pid: u32,
    pub heartbeat: Time,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum Phase {
    /// Creating the first primary.
    Initializing,
    /// A primary accepts writes; standbys are being created or are catching up.
    CreatingStandbys,
    /// Every instance is up in its role and every standby streams.
    Healthy,
    /// A primary accepts writes but some instance is missing, down or not streaming.
    Degraded,
    /// The primary was lost and a standby is being promoted.
    FailingOver,
    /// A planned change of primary is in progress.
    SwitchingOver,
    /// No instance can safely become primary; see `phaseReason`.
    FailoverBlocked,
    /// The spec is invalid; see `phaseReason` and the `Valid` condition.
    InvalidSpec,
    /// The cluster has been stopped.
    Stopped,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Initializing => "Initializing",
            Phase::CreatingStandbys => "CreatingStandbys",
            Phase::Healthy => "Healthy",
            Phase::Degraded => "Degraded",
            Phase::FailingOver => "FailingOver",
            Phase::SwitchingOver => "SwitchingOver",
            Phase::FailoverBlocked => "FailoverBlocked",
            Phase::InvalidSpec => "InvalidSpec",
            Phase::Stopped => "Stopped",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SynchronousStatus {
    /// `any` or `first`.
    pub method: String,
    pub number: u32,
    /// The standbys a failover counts on: every acknowledged commit is on `number` of them. The
    /// set named in `synchronous_standby_names`, and while it changes, the old and new sets
    /// together (commits acknowledged under either may be only where that set put them).
    pub standbys: Vec<String>,
    /// While the set is wider than the one applied: it narrows once `number` members of the
    /// applied set have received this WAL position (everything acknowledged before the change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub widened_until: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    pub kind: TransitionKind,
    /// The primary being replaced.
    pub from: String,
    /// The instance being promoted, once chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    pub step: TransitionStep,
    pub reason: String,
    pub started_at: Time,
    /// When the new primary accepted writes and the other standbys followed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// The synchronous standby set that was in force when the primary was lost: every
    /// acknowledged commit is on at least `number` of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous: Option<SynchronousStatus>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum TransitionKind {
    Failover,
    Switchover,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum TransitionStep {
    /// Take the old primary out of service (stop it if it answers).
    Fencing,
    /// Stop every reachable standby's WAL receiver so their positions are final.
    Detaching,
    /// Promote the chosen standby.
    Promoting,
    /// Point the remaining standbys at the new primary.
    Repointing,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    pub name: String,
    pub role: Role,
    /// Up in its intended role: primary writable, standby streaming from the primary.
    pub ready: bool,
    /// What the instance is doing, in a word: running, streaming, starting, cloning,
    /// rewinding, stopped, unreachable, fenced...
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    /// `host:port` clients and peers use to reach the database.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    /// Write position of a primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_lsn: Option<String>,
    /// WAL received and flushed by a standby.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_lsn: Option<String>,
    /// WAL replayed by a standby.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_lsn: Option<String>,
    /// Bytes of WAL the primary has written that this standby has not replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
    /// The primary's view of this standby's replication connection (`streaming`, `catchup`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_state: Option<String>,
    /// The primary's view of this standby's synchronous state (`quorum`, `sync`, `async`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_state: Option<String>,
    /// When the instance manager last answered a probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
    /// Since when a standby has not been streaming from the primary (absent while it streams).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_streaming_since: Option<Time>,
    /// Why the instance is not ready, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the server certificate the instance presents expires (it is renewed well before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_expires: Option<Time>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    Primary,
    Standby,
    #[default]
    Unknown,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
            Role::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl OpenGaussClusterStatus {
    pub fn instance(&self, name: &str) -> Option<&InstanceStatus> {
        self.instances.iter().find(|i| i.name == name)
    }

    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}
