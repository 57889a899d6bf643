//! TLS for everything the cluster's members say to each other and to clients: a certificate
//! authority per cluster, a server certificate per instance naming every way it is reached
//! (database, replication and the instance manager's API all present it), the checks a
//! certificate passes before it is used, and the rustls configurations built from them.
//!
//! An instance's files (`InstanceTls`) are written by its platform; the instance manager
//! notices when they change and has the database server and its own listener pick them up.

pub mod authority;
pub mod config;
pub mod inspect;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use authority::{Authority, KeyedCertificate};
pub use inspect::CertificateInfo;

/// Server certificates last this long unless the spec says otherwise (renewed a month before).
pub const DEFAULT_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// Where an instance finds its certificate, its key and the authority it trusts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceTls {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl InstanceTls {
    /// The usual file names in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_file: dir.join("ca.crt"),
            cert_file: dir.join("server.crt"),
            key_file: dir.join("server.key"),
        }
    }

    pub fn read_pair(&self) -> anyhow::Result<KeyedCertificate> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
        };
        Ok(KeyedCertificate { cert_pem: read(&self.cert_file)?, key_pem: read(&self.key_file)? })
    }

    pub fn read_authority(&self) -> anyhow::Result<String> {
        std::fs::read_to_string(&self.ca_file)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", self.ca_file.display()))
    }
}
