//! Engine dialects: every command line, configuration line and SQL text that differs between
//! openGauss and PostgreSQL comes from here, and nothing else does. The rest of the operator
//! speaks in engine-neutral terms (initialise, clone, rewind, promote, follow) and asks the
//! dialect how to say it.

mod command;
mod conf;
pub mod controldata;
pub mod image;
mod lsn;
mod opengauss;
mod postgres;
pub mod timeline;
pub mod version;
pub mod wal;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use command::{CommandLine, shell_quote};
pub use conf::{conf_line, conninfo_value, parse_settings, quote_conf_value, with_managed_block};
pub use image::ImageLayout;
pub use lsn::Lsn;
pub use opengauss::OpenGauss;
pub use opengauss_crd::{Engine, SyncMethod};
pub use postgres::Postgres;

/// Where one instance keeps its files and how its tools are reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Directory holding the engine's programs (`initdb`, `pg_ctl`... or `gs_initdb`, `gs_ctl`...).
    pub bin_dir: PathBuf,
    pub data_dir: PathBuf,
    /// Directory of the server's Unix socket; private to the instance's OS user.
    pub socket_dir: PathBuf,
    pub port: u16,
    /// libpq password file of the instance's OS user, for replication and rewind connections.
    pub passfile: PathBuf,
    /// The database superuser the instance manager connects as over the Unix socket.
    pub superuser: String,
    /// The role standbys replicate as.
    pub replication_user: String,
    /// The instance name (`<cluster>-<ordinal>`).
    pub instance: String,
    /// The instance's certificate files: with them, connections to peers use TLS, check the
    /// peer's certificate against the authority and its name against the host (verify-full),
    /// and present the instance's own certificate.
    pub tls: Option<crate::tls::InstanceTls>,
}

impl Layout {
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

/// The ports an openGauss server opens besides its database port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HaPorts {
    /// Where standbys connect for WAL and base backups (`localport` in `replconninfoN`).
    pub replication: u16,
    /// The heartbeat channel (`localheartbeatport`).
    pub heartbeat: u16,
}

/// Where a peer's database can be reached.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A replication peer as openGauss lists it in `replconninfoN`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    pub instance: String,
    pub host: String,
    /// The peer's HA (replication) port.
    pub ha_port: u16,
    /// The peer's instance manager API, which a primary cut off from the controller asks to
    /// hold it (see `instance::lease`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
}

/// The synchronous standby policy with the standby names filled in.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncConfig {
    pub method: SyncMethod,
    pub number: u32,
    /// Instance names, in priority order for `first`.
    pub standbys: Vec<String>,
}

/// The settings the operator owns, rendered by the dialect into the managed configuration file
/// that `postgresql.conf` includes last (so they win).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    pub instance: String,
    pub listen_addresses: String,
    pub port: u16,
    pub socket_dir: PathBuf,
    pub max_wal_senders: u32,
    pub wal_keep_segments: u32,
    /// `None` (or an empty standby list) means commits do not wait for standbys.
    pub synchronous: Option<SyncConfig>,
    /// When the primary has no synchronous standby left, keep accepting writes
    /// (`dataDurability: preferred`). openGauss: `most_available_sync`.
    pub most_available_sync: bool,
    /// Run as a standby. A standby without an upstream is detached: it replays what it has and
    /// waits.
    pub standby: bool,
    pub upstream: Option<Endpoint>,
    pub replication_user: String,
    pub passfile: PathBuf,
    /// Local HA port (openGauss) and the peers to replicate with.
    pub ha_port: u16,
    pub ha_listen: String,
    pub peers: Vec<Peer>,
    /// Users' extra parameters from the cluster spec.
    pub parameters: BTreeMap<String, String>,
    /// The server's certificate, key and the authority peers are checked against; `None`
    /// serves without TLS.
    pub tls: Option<crate::tls::InstanceTls>,
}

/// The cluster-level part of an instance's configuration: what the controller decides. The
/// instance manager adds what only it knows (paths, ports, addresses) to make a `ServerConfig`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredConfig {
    pub standby: bool,
    /// Whom a standby streams from; `None` detaches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous: Option<SyncConfig>,
    #[serde(default)]
    pub most_available_sync: bool,
    pub max_wal_senders: u32,
    pub wal_keep_segments: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<Peer>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
    /// The primary's lease: it accepts writes only while it heard from the controller, or
    /// was held by every peer (failsafe), within this many milliseconds; the controller
    /// promotes a replacement only once that has certainly run out (see `instance::lease`).
    /// 0 turns it off (a single-instance cluster: nobody can replace it).
    #[serde(default)]
    pub lease_milliseconds: u64,
}

/// Which clients may connect, and how they authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HbaConfig {
    pub superuser: String,
    pub replication_user: String,
    /// Networks (CIDR) allowed to connect with a password.
    pub networks: Vec<String>,
    /// The replication peers' addresses (openGauss trusts its initial user's own tools from
    /// them).
    pub peers: Vec<String>,
    /// Connections over TCP must use TLS (`hostssl`): one without is refused.
    pub tls: bool,
    /// The replication user's replication connections authenticate with a certificate from
    /// the cluster's authority whose common name is one of these (the members' addresses),
    /// not with a password. `None`: with the password.
    pub replication_certificates: Option<Vec<String>>,
}

/// The user-name map (`pg_ident.conf`) that lets members' certificates stand for the
/// replication user.
pub const MEMBERS_MAP: &str = "members";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Disconnect clients, write a shutdown checkpoint and let connected standbys receive it.
    Fast,
    /// Exit at once; the next start runs crash recovery.
    Immediate,
}

/// One step of building a standby's data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloneStep {
    /// Run a program; a non-zero exit fails the clone.
    Run(CommandLine),
    /// Write the managed configuration, authentication rules and standby marker now.
    WriteConfig,
}

/// The SQL the instance manager runs over the Unix socket to report an instance's state. Both
/// dialects answer with the same column names, which the manager reads by name.
#[derive(Clone, Copy, Debug)]
pub struct StatusSql {
    /// One row: in_recovery bool, current_lsn text, received_lsn text, replayed_lsn text,
    /// timeline int4, synchronous_standby_names text.
    pub node: &'static str,
    /// Zero or one row: status text (`streaming` while receiving), upstream_host text,
    /// upstream_port int4 (NULL when the engine cannot name the upstream's SQL endpoint),
    /// flushed_lsn text.
    pub receiver: &'static str,
    /// One row per streaming standby: application_name, client_addr (an address, no mask),
    /// state and sync_state (lower case), sent_lsn, flush_lsn, replay_lsn (text), lag_bytes int8
    /// and lag_seconds float8 (NULL where the engine does not measure it).
    pub replication: &'static str,
    /// Names of parameters changed in the configuration files that need a restart, or `None`
    /// when the engine cannot tell: the manager then compares the settings the server started
    /// with against the files now, for the parameters `postmaster_settings` names.
    pub pending_restart: Option<&'static str>,
    /// Names (column `name`) of the parameters that take effect only at a server start.
    pub postmaster_settings: &'static str,
}

/// What differs between engines.
pub trait Dialect: Send + Sync + std::fmt::Debug {
    fn engine(&self) -> Engine;
    /// The database superuser a cluster is initialised with (the official images' name).
    fn superuser(&self) -> &'static str;
    /// The engine's interactive SQL client.
    fn sql_shell(&self) -> &'static str;
    /// Whether the database superuser must be named as the OS user the server runs as
    /// (openGauss trusts only that initial user over the socket and for its own tools).
    fn superuser_is_os_user(&self) -> bool {
        false
    }
    /// Whether replication peers must be named by address: openGauss matches a connecting
    /// peer against `replconninfoN` by its numeric IP (hba.cpp is_node_internal_connection;
    /// reverse DNS only in newer sources, and a pod behind several Services has several PTR
    /// names), its heartbeat channel takes IP literals only, and hosts of 64 bytes or more stop
    /// the server (replicainternal.h IP_LEN).
    fn peers_by_address(&self) -> bool {
        false
    }
    /// Options for the manager's own sessions (`-c name=value ...`), if any.
    fn session_options(&self) -> Option<&'static str> {
        None
    }
    /// Programs the engine needs in its bin directory.
    fn required_tools(&self) -> &'static [&'static str];
    /// The replication (HA) and heartbeat ports of a server on `port`, when the engine
    /// replicates on ports of their own.
    fn ha_ports(&self, port: u16) -> Option<HaPorts>;
    /// How far apart the database ports of two instances on one host must be.
    fn port_stride(&self) -> u16 {
        1
    }
    /// The layout of the engine's official image `image`.
    fn image_layout(&self, image: &str) -> ImageLayout;
    /// The environment the engine's programs need when installed with their programs in
    /// `bin_dir` (outside an image, which sets its own).
    fn install_env(&self, _bin_dir: &Path) -> Vec<(String, String)> {
        Vec::new()
    }
    /// The name a standby reports as `application_name` and that `synchronous_standby_names`
    /// lists.
    fn application_name(&self, instance: &str) -> String;
    /// The instance behind an `application_name` (the inverse of `application_name`).
    fn instance_of(&self, application_name: &str) -> String;
    /// Creates the first primary's data directory. The superuser password is read from
    /// `pwfile`.
    fn initdb(&self, l: &Layout, pwfile: &Path) -> CommandLine;
    /// Prints the server's version.
    fn version(&self, l: &Layout) -> CommandLine;
    /// Whether the server version printed by `version` is one the operator supports; the
    /// reason when it is not.
    fn check_version(&self, output: &str) -> Result<(), String>;
    /// Runs the server in the foreground, so the instance manager supervises it directly.
    fn server(&self, l: &Layout, standby: bool) -> CommandLine;
    /// Builds a standby's data directory from `source`.
    fn clone_steps(&self, l: &Layout, source: &Endpoint, pwfile: &Path) -> Vec<CloneStep>;
    /// Makes a stopped old primary consistent with `source` so it can follow it.
    fn rewind(&self, l: &Layout, source: &Endpoint) -> CommandLine;
    /// Whether `source` must write a checkpoint before `rewind` runs: a freshly promoted
    /// PostgreSQL primary still records its old timeline in its control file until its first
    /// checkpoint, and `pg_rewind` would then see no divergence and do nothing.
    fn checkpoint_source_before_rewind(&self) -> bool;
    /// Turns a standby into a primary.
    fn promote(&self, l: &Layout) -> CommandLine;
    fn stop(&self, l: &Layout, mode: StopMode) -> CommandLine;
    fn reload(&self, l: &Layout) -> CommandLine;
    /// Prints the control file: cluster state and the last checkpoint.
    fn controldata(&self, l: &Layout) -> CommandLine;
    /// The managed settings (`name = 'value'` lines).
    fn managed_conf(&self, c: &ServerConfig) -> String;
    /// Where the managed settings live.
    fn managed_settings(&self) -> ManagedSettings;
    fn hba(&self, h: &HbaConfig) -> String;
    /// `pg_ident.conf` for `h`, when its rules use a user-name map.
    fn ident(&self, _h: &HbaConfig) -> Option<String> {
        None
    }
    /// A file in the data directory whose presence makes the server start as a standby.
    fn standby_signal(&self) -> &'static str;
    /// The WAL directory inside the data directory.
    fn wal_dir(&self) -> &'static str;
    fn status_sql(&self) -> StatusSql;
    /// SQL run as the superuser on a peer, returning one row: `timeline` int4 (the peer's
    /// current timeline) and `history` text (its timeline history file, NULL on timeline 1);
    /// `None` when the manager cannot ask a peer.
    fn timeline_history_sql(&self) -> Option<&'static str>;
    /// SQL dropping the replication slots standbys left on a primary that are no longer
    /// peers (`keep`: the application names of the current peers), or `None` when the engine
    /// makes no slots of its own.
    fn stale_slots_sql(&self, _keep: &[String]) -> Option<String> {
        None
    }
    /// Settings that keep the server inside a container memory limit of `limit_bytes`
    /// (applied unless the user set them); none when the engine sizes itself from the limit.
    fn memory_settings(&self, _limit_bytes: u64) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
    /// SQL creating (or updating) the replication role, or `None` when the engine trusts its
    /// configured peers instead. The password is sent already hashed, so the plain password
    /// never reaches the server's statement log.
    fn replication_role_sql(&self, user: &str, password: &str) -> Option<String>;
}

/// The managed configuration file, included last from `postgresql.conf` (PostgreSQL).
pub const MANAGED_CONF: &str = "opengauss-operator.conf";

/// Where an engine's managed settings live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManagedSettings {
    /// In `MANAGED_CONF`, which `postgresql.conf` includes last (`include_directive`).
    IncludedFile,
    /// In a marked block at the end of `postgresql.conf` itself (`conf::with_managed_block`):
    /// the engine's tools read only that file and refuse include lines.
    InlineBlock,
}

/// The line appended to `postgresql.conf` to include the managed file.
pub fn include_directive() -> String {
    format!("include_if_exists = '{MANAGED_CONF}'\n")
}

pub fn dialect(engine: Engine) -> &'static dyn Dialect {
    match engine {
        Engine::Postgres => &Postgres,
        Engine::OpenGauss => &OpenGauss,
    }
}
