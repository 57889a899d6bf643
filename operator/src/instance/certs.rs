//! Picks up new certificate files: the platform replaces an instance's certificate and key
//! (renewal, or a user's new pair); the manager checks the pair, then has its own HTTPS
//! listener and the database server use it, without a restart. A pair that fails the checks is
//! not used: the listener keeps the one it has, and the failure is logged once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use axum_server::tls_rustls::RustlsConfig;

use super::manager::Manager;
use crate::fsutil::{create_dir_mode, write_atomic};
use crate::tls::{self, InstanceTls, KeyedCertificate};

/// How often the files are looked at: renewal happens long before expiry, so seconds do.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Copies the instance's files from the platform's `source` directory (same file names as
/// `InstanceTls::in_dir`) into `files` with mode 0600 where they differ: the authority, then the
/// key, then the certificate, so a new certificate never meets an old key. Whether anything
/// was copied.
pub fn copy_from_source(source: &Path, files: &InstanceTls) -> anyhow::Result<bool> {
    let from = InstanceTls::in_dir(source);
    // The database server reads the copies on its next reload: a pair that would not serve
    // (not the authority's, expired, key not its own) is never copied.
    let ca = std::fs::read_to_string(&from.ca_file)
        .with_context(|| format!("cannot read {}", from.ca_file.display()))?;
    let pair = from.read_pair()?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    tls::inspect::check_server_pair(&pair, &ca, &[], now)
        .map_err(|e| anyhow::anyhow!("the pair in {} is refused: {e}", source.display()))?;
    // What is copied is what was checked: the files are not read a second time.
    let mut copied = false;
    for (wanted, dst) in
        [(&ca, &files.ca_file), (&pair.key_pem, &files.key_file), (&pair.cert_pem, &files.cert_file)]
    {
        if std::fs::read_to_string(dst).ok().as_ref() == Some(wanted) {
            continue;
        }
        if let Some(dir) = dst.parent() {
            create_dir_mode(dir, 0o700)?;
        }
        write_atomic(dst, wanted.as_bytes(), 0o600)?;
        copied = true;
    }
    Ok(copied)
}

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
    let source: Option<PathBuf> = manager.cfg.tls_source.clone();
    let mut copy_failed = false;
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        if let Some(source) = &source {
            match copy_from_source(source, &files) {
                Ok(_) => copy_failed = false,
                Err(e) if !copy_failed => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "cannot take up the platform's certificate files"
                    );
                    copy_failed = true;
                }
                Err(_) => {}
            }
        }
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn the_platforms_files_are_copied_private_checked_and_only_when_they_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("mounted");
        std::fs::create_dir(&source).expect("source dir");
        let now = time::OffsetDateTime::now_utc();
        let ca = tls::Authority::generate("demo", now).expect("authority");
        let names = ["demo-0".to_string()];
        let lifetime = Duration::from_secs(3600);
        let mount = |pair: &KeyedCertificate| {
            for (name, text) in
                [("ca.crt", ca.cert_pem()), ("server.crt", &pair.cert_pem), ("server.key", &pair.key_pem)]
            {
                let path = source.join(name);
                let _ = std::fs::remove_file(&path);
                std::fs::write(&path, text).expect("write");
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).expect("chmod");
            }
        };
        let first = ca.issue("demo-0", &names, now, lifetime).expect("issue");
        mount(&first);
        let files = InstanceTls::in_dir(&dir.path().join("data/tls"));

        assert!(copy_from_source(&source, &files).expect("first copy"), "nothing there yet: copied");
        for (file, text) in [
            (&files.ca_file, ca.cert_pem()),
            (&files.cert_file, &first.cert_pem),
            (&files.key_file, &first.key_pem),
        ] {
            assert_eq!(std::fs::read_to_string(file).expect("copied"), *text);
            assert_eq!(mode(file), 0o600, "{}", file.display());
        }
        assert_eq!(mode(&dir.path().join("data/tls")), 0o700);
        assert!(!copy_from_source(&source, &files).expect("second copy"), "unchanged: nothing copied");

        // A renewal replaces the pair: both files follow.
        let second = ca.issue("demo-0", &names, now, lifetime).expect("issue");
        mount(&second);
        assert!(copy_from_source(&source, &files).expect("renewal copy"));
        assert_eq!(std::fs::read_to_string(&files.cert_file).expect("cert"), second.cert_pem);
        assert_eq!(std::fs::read_to_string(&files.key_file).expect("key"), second.key_pem);

        // A pair that would not serve is refused and nothing is copied: another authority's,
        // or a certificate with a key not its own.
        let other = tls::Authority::generate("other", now).expect("other");
        let foreign = other.issue("demo-0", &names, now, lifetime).expect("issue");
        for broken in [
            foreign.clone(),
            KeyedCertificate { cert_pem: first.cert_pem.clone(), key_pem: foreign.key_pem.clone() },
        ] {
            mount(&broken);
            let error = format!("{:#}", copy_from_source(&source, &files).expect_err("refused"));
            assert!(error.contains("is refused"), "{error}");
            assert_eq!(std::fs::read_to_string(&files.cert_file).expect("cert"), second.cert_pem, "kept");
            assert_eq!(std::fs::read_to_string(&files.key_file).expect("key"), second.key_pem, "kept");
        }

        // A source missing a file is an error naming it.
        std::fs::remove_file(source.join("ca.crt")).expect("remove");
        let error = format!("{:#}", copy_from_source(&source, &files).expect_err("missing ca.crt"));
        assert!(error.contains("ca.crt"), "{error}");
    }
}
