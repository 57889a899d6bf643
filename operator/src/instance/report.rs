//! What an instance manager reports and accepts over HTTP. The controller, the plugin and the
//! tests share these types.

use serde::{Deserialize, Serialize};

pub use crate::engine::controldata::ControlReport;

use crate::engine::{DesiredConfig, Endpoint, Lsn};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ManagerPhase {
    /// No data directory yet: waiting to be told to initialise or clone.
    AwaitingBootstrap,
    /// A data directory that was a primary, server not running: waiting to be told whether to
    /// start as primary or rejoin as a standby. A returning primary never starts on its own.
    AwaitingRole,
    /// The server runs (or is being started).
    Running,
    /// The server is stopped on request (fenced, or shutting down).
    Stopped,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceReport {
    pub instance: String,
    pub manager_pid: u32,
    pub phase: ManagerPhase,
    /// The data directory is complete (initialised or fully cloned).
    pub initialized: bool,
    /// The data directory is set up to start as a standby.
    pub standby_configured: bool,
    pub fenced: bool,
    /// For a fenced standby: the last WAL position it received before it was stopped (it was
    /// detached first, so it cannot hold more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_lsn: Option<Lsn>,
    /// The start of the oldest WAL segment the data directory holds: a standby needing WAL from
    /// before it cannot stream from this instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_wal: Option<Lsn>,
    /// Parameters changed in the configuration that take effect only after a restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_restart: Vec<String>,
    pub server: ServerProcessReport,
    /// The server's own view, when it answered SQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver: Option<ReceiverReport>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replication: Vec<ReplicationRow>,
    /// The control file, when the server is not running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<ControlReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<OperationReport>,
    /// The managed configuration last written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<DesiredConfig>,
    /// The primary this instance holds (failsafe, see `lease`): it refuses to be promoted
    /// until the hold ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failsafe: Option<FailsafeHold>,
    /// When the server certificate in use expires (unix seconds), with TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_expires: Option<i64>,
}

/// A primary held by a peer: that primary may still accept writes for `remaining_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailsafeHold {
    pub primary: String,
    pub remaining_ms: u64,
}

/// A primary's request to be held by a peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailsafeRequest {
    /// The asking primary's instance name.
    pub primary: String,
    /// Where it serves: a standby holds only the primary it streams from.
    pub endpoint: Endpoint,
    /// Its lease: the hold lasts this long from the answer.
    pub lease_ms: u64,
}

impl InstanceReport {
    /// Accepting connections as a writable primary.
    pub fn is_writable_primary(&self) -> bool {
        self.server.accepting && self.node.as_ref().is_some_and(|n| !n.in_recovery)
    }

    pub fn is_running_standby(&self) -> bool {
        self.server.accepting && self.node.as_ref().is_some_and(|n| n.in_recovery)
    }

    /// The furthest WAL position this instance holds: what it received, else what it replayed,
    /// else (server down) its last checkpoint.
    pub fn wal_position(&self) -> Option<Lsn> {
        let node = self.node.as_ref();
        let candidates = [
            node.and_then(|n| n.current_lsn),
            node.and_then(|n| n.received_lsn),
            node.and_then(|n| n.replayed_lsn),
            self.receiver.as_ref().and_then(|r| r.flushed_lsn),
            self.control.as_ref().and_then(|c| c.checkpoint_lsn),
        ];
        candidates.into_iter().flatten().max()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerProcessReport {
    pub running: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Answered SQL over the Unix socket just now.
    pub accepting: bool,
    /// The last server exit was not requested.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub crashed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    pub in_recovery: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_lsn: Option<Lsn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_lsn: Option<Lsn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_lsn: Option<Lsn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    pub synchronous_standby_names: String,
    /// A primary's timeline history: where each earlier timeline ended (empty on timeline 1,
    /// on a standby, and where the engine does not give it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline_switches: Vec<crate::engine::timeline::Switch>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceiverReport {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flushed_lsn: Option<Lsn>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationRow {
    /// The standby's instance name.
    pub instance: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    pub state: String,
    pub sync_state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_lsn: Option<Lsn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_lsn: Option<Lsn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lsn: Option<Lsn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OperationKind {
    Bootstrap,
    Start,
    Configure,
    Promote,
    Rejoin,
    Rebuild,
    Restart,
    Fence,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OperationState {
    Running,
    Succeeded,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationReport {
    pub kind: OperationKind,
    pub state: OperationState,
    /// Identifies the request, so a repeated request is recognised as the same one.
    pub request_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// A request from the controller. Each one carries the full managed configuration to apply,
/// so a manager never acts on stale settings of its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Request {
    /// Initialise a new primary (`source` empty) or clone a standby from `source`.
    Bootstrap { source: Option<Endpoint>, config: DesiredConfig },
    /// Start the server with this configuration: as primary only if the data directory is a
    /// primary's, as standby otherwise.
    Start { config: DesiredConfig },
    /// Rewrite the configuration and reload (new upstream, detach, synchronous names...).
    Configure { config: DesiredConfig },
    /// Promote this standby.
    Promote { config: DesiredConfig },
    /// Stop, rewind from `source` (re-clone if that fails), and start as its standby.
    Rejoin { source: Endpoint, config: DesiredConfig },
    /// Stop, set the data directory aside and clone it again from `source`: for a standby that
    /// cannot stream any more (its WAL diverged or the primary no longer has what it needs).
    Rebuild { source: Endpoint, config: DesiredConfig },
    /// Stop the server cleanly and start it again in the same role with `config` (for
    /// parameters that need a restart).
    Restart { config: DesiredConfig },
    /// Stop the server and keep it stopped until a `Start` or `Rejoin`. A standby is detached
    /// first and its final WAL position recorded.
    Fence,
}

impl Request {
    pub fn kind(&self) -> OperationKind {
        match self {
            Request::Bootstrap { .. } => OperationKind::Bootstrap,
            Request::Start { .. } => OperationKind::Start,
            Request::Configure { .. } => OperationKind::Configure,
            Request::Promote { .. } => OperationKind::Promote,
            Request::Rejoin { .. } => OperationKind::Rejoin,
            Request::Rebuild { .. } => OperationKind::Rebuild,
            Request::Restart { .. } => OperationKind::Restart,
            Request::Fence => OperationKind::Fence,
        }
    }
}
