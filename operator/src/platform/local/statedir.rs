//! The local platform's state directory: the local stand-in for the API server (the applied
//! cluster, its status, user requests) and the instances' homes.
//!
//! ```text
//! <state-dir>/
//!   identity.json     which cluster owns this directory, its engine and base port
//!   cluster.yaml      the cluster as last applied
//!   status.json       the cluster's .status (written by the controller only)
//!   pgpass            libpq password file for users (mode 0600)
//!   secrets/          generated passwords and the manager API token (mode 0700)
//!   tls/              the cluster's certificate authority: ca.crt, ca.key (mode 0600)
//!   controller.lock   held by the running `local up`; controller.pid names it
//!   requests/         user requests not part of the spec (switchover)
//!   instances/<name>/ one instance: data/, run/ (socket), logs, manager.json, manager.pid,
//!                     ca.crt, server.crt, server.key (its certificate, renewed in place)
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use opengauss_crd::{Engine, OpenGaussClusterStatus};
use serde::{Deserialize, Serialize};

use crate::credentials::{self, Secrets};
use crate::fsutil::{create_dir_mode, write_atomic};

/// Which cluster a state directory belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub cluster: String,
    pub engine: Engine,
    pub base_port: u16,
}

#[derive(Clone, Debug)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn identity_file(&self) -> PathBuf {
        self.root.join("identity.json")
    }
    pub fn cluster_file(&self) -> PathBuf {
        self.root.join("cluster.yaml")
    }
    pub fn status_file(&self) -> PathBuf {
        self.root.join("status.json")
    }
    pub fn pgpass(&self) -> PathBuf {
        self.root.join("pgpass")
    }
    pub fn secrets_dir(&self) -> PathBuf {
        self.root.join("secrets")
    }
    /// The cluster's certificate authority: `ca.crt` (clients trust it) and `ca.key`.
    pub fn tls_dir(&self) -> PathBuf {
        self.root.join("tls")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("controller.lock")
    }
    pub fn controller_pid_file(&self) -> PathBuf {
        self.root.join("controller.pid")
    }
    /// The port of the running controller's metrics endpoint.
    pub fn metrics_port_file(&self) -> PathBuf {
        self.root.join("controller.metrics-port")
    }
    pub fn requests_dir(&self) -> PathBuf {
        self.root.join("requests")
    }
    pub fn switchover_request(&self) -> PathBuf {
        self.requests_dir().join("switchover")
    }
    pub fn switchover_result(&self) -> PathBuf {
        self.requests_dir().join("switchover.result")
    }
    pub fn instances_dir(&self) -> PathBuf {
        self.root.join("instances")
    }
    pub fn instance_dir(&self, name: &str) -> PathBuf {
        self.instances_dir().join(name)
    }

    pub fn exists(&self) -> bool {
        self.identity_file().exists()
    }

    pub fn read_identity(&self) -> anyhow::Result<Identity> {
        let path = self.identity_file();
        let text = fs::read_to_string(&path).with_context(|| {
            format!("{} is not a cluster state directory (no identity.json)", self.root.display())
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is corrupted", path.display()))
    }

    /// Creates the directory for `identity`, or checks that an existing one belongs to the
    /// same cluster. Never touches another cluster's directory.
    pub fn claim(&self, identity: &Identity) -> anyhow::Result<()> {
        if self.exists() {
            let found = self.read_identity()?;
            if found.cluster != identity.cluster {
                bail!(
                    "state directory {} belongs to cluster {:?}, not {:?}: pass another --state-dir",
                    self.root.display(),
                    found.cluster,
                    identity.cluster
                );
            }
            if found.engine != identity.engine {
                bail!(
                    "state directory {} holds a {} cluster; the file asks for engine {}",
                    self.root.display(),
                    found.engine,
                    identity.engine
                );
            }
            return Ok(());
        }
        // A new cluster's directory may already hold `tls/`: the user's own authority or
        // certificates, put there before the first `local up`. Anything else is not ours.
        let foreign = match fs::read_dir(&self.root) {
            Ok(entries) => entries.map(|e| e.map(|e| e.file_name())).any(|n| n.map_or(true, |n| n != "tls")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(_) => true,
        };
        if foreign {
            bail!(
                "{} exists and holds more than tls/, but is not a cluster state directory: refusing to use it",
                self.root.display()
            );
        }
        create_dir_mode(&self.root, 0o755)?;
        let json = serde_json::to_vec_pretty(identity)?;
        write_atomic(&self.identity_file(), &json, 0o644)
    }

    /// Records the base port the cluster listens from (its instances must be stopped).
    pub fn set_base_port(&self, base_port: u16) -> anyhow::Result<()> {
        let mut id = self.read_identity()?;
        id.base_port = base_port;
        write_atomic(&self.identity_file(), &serde_json::to_vec_pretty(&id)?, 0o644)
    }

    /// The cluster's secrets, generated on first use.
    pub fn secrets(&self) -> anyhow::Result<Secrets> {
        let dir = self.secrets_dir();
        create_dir_mode(&dir, 0o700)?;
        let get = |name: &str, make: fn() -> String| -> anyhow::Result<String> {
            let path = dir.join(name);
            if let Ok(text) = fs::read_to_string(&path) {
                let value = text.trim().to_string();
                if !value.is_empty() {
                    return Ok(value);
                }
            }
            let value = make();
            write_atomic(&path, value.as_bytes(), 0o600)?;
            Ok(value)
        };
        Ok(Secrets {
            superuser_password: get("superuser-password", || credentials::password(24))?,
            replication_password: get("replication-password", || credentials::password(24))?,
            token: get("api-token", credentials::token)?,
        })
    }

    pub fn read_status(&self) -> anyhow::Result<Option<OpenGaussClusterStatus>> {
        let path = self.status_file();
        match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .with_context(|| format!("{} is corrupted", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn write_status(&self, status: &OpenGaussClusterStatus) -> anyhow::Result<()> {
        let mut json = serde_json::to_vec_pretty(status)?;
        json.push(b'\n');
        write_atomic(&self.status_file(), &json, 0o644)
    }
}

/// Whether `path` can be traversed by a user who is neither its owner nor in its group, for
/// every directory from the root down: what an unprivileged instance user needs.
pub fn world_traversable(path: &Path) -> Result<(), PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut current = PathBuf::new();
    for part in path.components() {
        current.push(part);
        if let Ok(meta) = fs::metadata(&current)
            && meta.is_dir()
            && meta.permissions().mode() & 0o001 == 0
        {
            return Err(current);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(name: &str) -> Identity {
        Identity { cluster: name.into(), engine: Engine::Postgres, base_port: 15432 }
    }

    #[test]
    fn claim_refuses_another_clusters_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = StateDir::new(tmp.path().join("s"));
        dir.claim(&identity("one")).expect("first claim");
        dir.claim(&identity("one")).expect("same cluster again");
        let err = dir.claim(&identity("two")).unwrap_err().to_string();
        assert!(err.contains("belongs to cluster \"one\""), "{err}");
        assert!(dir.identity_file().exists(), "nothing deleted");
    }

    #[test]
    fn claim_refuses_a_foreign_non_empty_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::write(tmp.path().join("precious"), "data").expect("write");
        let err = StateDir::new(tmp.path()).claim(&identity("one")).unwrap_err().to_string();
        assert!(err.contains("holds more than tls/"), "{err}");
        assert!(tmp.path().join("precious").exists());
    }

    #[test]
    fn claim_takes_a_new_directory_holding_only_the_users_certificates() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = StateDir::new(tmp.path().join("s"));
        fs::create_dir_all(dir.tls_dir()).expect("tls dir");
        fs::write(dir.tls_dir().join("ca.crt"), "the user's").expect("write");
        dir.claim(&identity("one")).expect("claimed");
        assert!(dir.exists());
        assert_eq!(fs::read_to_string(dir.tls_dir().join("ca.crt")).expect("kept"), "the user's");
    }

    #[test]
    fn secrets_are_generated_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = StateDir::new(tmp.path());
        let a = dir.secrets().expect("secrets");
        let b = dir.secrets().expect("secrets again");
        assert_eq!(a, b);
        assert_ne!(a.superuser_password, a.replication_password);
        let mode = fs::metadata(dir.secrets_dir().join("api-token")).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(format!("{a:?}"), "Secrets(redacted)");
    }
}
