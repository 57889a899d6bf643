//! What one instance manager needs to know, written by the platform before it starts the
//! manager: a JSON file locally, the same JSON from a ConfigMap and environment on Kubernetes.
//! Secrets are referenced by file path, never inlined.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::{self, DesiredConfig, Dialect, Engine, Layout, ServerConfig};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceConfig {
    pub cluster: String,
    pub instance: String,
    pub engine: Engine,
    /// Directory of the engine's programs.
    pub bin_dir: PathBuf,
    /// The instance's own directory: `data/`, the bootstrap marker and the server log live
    /// here (the PVC mount on Kubernetes).
    pub root: PathBuf,
    /// Directory for the server's Unix socket.
    pub socket_dir: PathBuf,
    pub port: u16,
    pub listen_addresses: String,
    /// The host name or address peers use to reach this instance.
    pub advertise_host: String,
    /// An environment variable holding this instance's own address, which replaces
    /// `advertise_host` when set (a pod's IP from the downward API, for engines whose peers
    /// are named by address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_host_env: Option<String>,
    /// Where the manager's HTTP API listens; port 0 picks a free port, written to
    /// `api_port_file`.
    pub api_listen: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_port_file: Option<PathBuf>,
    pub superuser: String,
    pub replication_user: String,
    /// Bearer token the controller authenticates with.
    pub token_file: PathBuf,
    pub superuser_password_file: PathBuf,
    pub replication_password_file: PathBuf,
    /// libpq password file used for replication and rewind connections.
    pub passfile: PathBuf,
    /// Networks allowed to connect over TCP with a password.
    pub hba_networks: Vec<String>,
    /// openGauss HA port (replication channel).
    #[serde(default)]
    pub ha_port: u16,
    /// The instance's certificate, key and the cluster's authority: the database server and the
    /// manager's API then serve TLS only, and connections to peers check them. Absent: plain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::InstanceTls>,
    /// Where the platform keeps those files when the database cannot use them in place (a
    /// mounted Secret: group-readable, owned by root): the manager copies them into `tls`
    /// with the modes the database requires, and again whenever they change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_source: Option<PathBuf>,
    /// The replication user proves itself with a member's certificate (issued by the cluster's
    /// authority) instead of its password, on replication connections.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replication_by_certificate: bool,
}

impl InstanceConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read instance config {}: {e}", path.display()))?;
        let mut cfg: Self = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("instance config {} is invalid: {e}", path.display()))?;
        if cfg.dialect().superuser_is_os_user() {
            cfg.superuser = own_os_user()?;
        }
        Ok(cfg)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Written once the data directory is complete (initialised or fully cloned); a data
    /// directory without it is an interrupted bootstrap.
    pub fn bootstrap_marker(&self) -> PathBuf {
        self.root.join("bootstrapped")
    }

    /// Present while the instance is fenced; survives manager restarts.
    pub fn fence_marker(&self) -> PathBuf {
        self.root.join("fenced")
    }

    pub fn server_log(&self) -> PathBuf {
        self.root.join("server.log")
    }

    pub fn dialect(&self) -> &'static dyn Dialect {
        engine::dialect(self.engine)
    }

    /// The full server configuration: the controller's decisions plus this instance's own
    /// paths, ports and addresses.
    pub fn server_config(&self, desired: &DesiredConfig) -> ServerConfig {
        ServerConfig {
            instance: self.instance.clone(),
            listen_addresses: self.listen_addresses.clone(),
            port: self.port,
            socket_dir: self.socket_dir.clone(),
            max_wal_senders: desired.max_wal_senders,
            wal_keep_segments: desired.wal_keep_segments,
            synchronous: desired.synchronous.clone(),
            most_available_sync: desired.most_available_sync,
            standby: desired.standby,
            upstream: desired.upstream.clone(),
            replication_user: self.replication_user.clone(),
            passfile: self.passfile.clone(),
            ha_port: self.ha_port,
            ha_listen: self.own_address(),
            peers: desired.peers.clone(),
            parameters: desired.parameters.clone(),
            tls: self.tls.clone(),
        }
    }

    /// The address peers reach this instance at.
    pub fn own_address(&self) -> String {
        self.advertise_host_env
            .as_ref()
            .and_then(|var| std::env::var(var).ok())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| self.advertise_host.clone())
    }

    pub fn layout(&self) -> Layout {
        Layout {
            bin_dir: self.bin_dir.clone(),
            data_dir: self.data_dir(),
            socket_dir: self.socket_dir.clone(),
            port: self.port,
            passfile: self.passfile.clone(),
            superuser: self.superuser.clone(),
            replication_user: self.replication_user.clone(),
            instance: self.instance.clone(),
            tls: self.tls.clone(),
        }
    }
}

/// The name of the OS user this process runs as.
pub fn own_os_user() -> anyhow::Result<String> {
    let uid = nix::unistd::geteuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => Ok(user.name),
        _ => anyhow::bail!(
            "uid {uid} has no name in /etc/passwd; openGauss needs its initial user to be the OS user the server runs as"
        ),
    }
}

/// Reads a secret file, without its trailing newline.
pub fn read_secret(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read secret file {}: {e}", path.display()))?;
    let secret = text.trim_end_matches(['\n', '\r']).to_string();
    if secret.is_empty() {
        anyhow::bail!("secret file {} is empty", path.display());
    }
    Ok(secret)
}
