//! Picks up new certificate files: the platform replaces an instance's certificate and key
//! (renewal, or a user's new pair); the manager checks the pair, then has its own HTTPS
//! listener and the database server use it, without a restart. A pair that fails the checks is
//! not used: the listener keeps the one it has, and the failure is logged once.

use std::sync::Arc;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;

use super::manager::Manager;
use crate::tls::{self, InstanceTls, KeyedCertificate};

/// How often the files are looked at: renewal happens long before expiry, so seconds do.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// `pair` (as read from `files`), checked against the cluster's authority at the current time.
fn checked(
    pair: KeyedCertificate,
    files: &InstanceTls,
) -> anyhow::Result<(KeyedCertificate, tls::CertificateInfo)> {
    let authority = files.read_authority()?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let info = tls::inspect::check_server_pair(&pair, &authority, &[], now)
        .map_err(|e| anyhow::anyhow!("certificate {} refused: {e}", files.cert_file.display()))?;
    Ok((pair, info))
}

/// The HTTPS listener's configuration from the instance's current pair (refused when it
/// fails the checks: the manager then does not start).
pub fn listener_config(manager: &Manager, files: &InstanceTls) -> anyhow::Result<RustlsConfig> {
    let (pair, info) = checked(files.read_pair()?, files)?;
    let config = RustlsConfig::from_config(Arc::new(tls::config::server(&pair)?));
    *manager.certificate.lock().expect("certificate lock") = Some((pair.cert_pem, info));
    Ok(config)
}

/// Runs for the manager's life: applies a changed pair once it passes the checks.
pub async fn watch(manager: Arc<Manager>, files: InstanceTls, listener: RustlsConfig) {
    let mut refused: Option<String> = None;
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let current =
            manager.certificate.lock().expect("certificate lock").as_ref().map(|(pem, _)| pem.clone());
        let Ok(on_disk) = files.read_pair() else { continue };
        if current.as_deref() == Some(on_disk.cert_pem.as_str()) {
            continue;
        }
        // A refused pair is tried again once either file changes (a key written after its
        // certificate completes the pair).
        let seen = format!("{}{}", on_disk.cert_pem, on_disk.key_pem);
        if refused.as_deref() == Some(seen.as_str()) {
            continue;
        }
        // The pair compared above is the one checked and used: no second read in between.
        match checked(on_disk, &files).and_then(|(pair, info)| Ok((tls::config::server(&pair)?, pair, info)))
        {
            Ok((config, pair, info)) => {
                listener.reload_from_config(Arc::new(config));
                *manager.certificate.lock().expect("certificate lock") = Some((pair.cert_pem, info.clone()));
                refused = None;
                match manager.reload_server().await {
                    Ok(server) => tracing::info!(
                        expires = info.not_after,
                        server_reloaded = server,
                        "now serving the new server certificate"
                    ),
                    Err(e) => tracing::warn!(
                        error = format!("{e:#}"),
                        "the database server could not be told to read the new certificate; it will at its next start"
                    ),
                }
            }
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "keeping the certificate in use");
                refused = Some(seen);
            }
        }
    }
}
