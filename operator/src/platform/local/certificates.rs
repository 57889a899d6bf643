//! The local platform's certificates: the cluster's authority in `<state-dir>/tls/` (made on
//! the first `local up`, kept after), and each instance's server certificate beside its data,
//! issued when missing and renewed when a third of its lifetime is left. The instance manager
//! notices new files and has its listener and database server use them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use time::OffsetDateTime;

use crate::fsutil::{create_dir_mode, write_atomic};
use crate::instance::InstanceConfig;
use crate::tls::{Authority, InstanceTls};

/// The authority's files.
pub fn authority_files(tls_dir: &Path) -> (PathBuf, PathBuf) {
    (tls_dir.join("ca.crt"), tls_dir.join("ca.key"))
}

/// The cluster's authority: the one in `tls_dir`, or a new one written there (the key 0600).
/// An authority certificate without its key, or a pair that does not parse, is an error that
/// names the file; nothing is overwritten.
pub fn authority(tls_dir: &Path, cluster: &str) -> anyhow::Result<Authority> {
    let (cert_file, key_file) = authority_files(tls_dir);
    match (cert_file.exists(), key_file.exists()) {
        (true, true) => {
            let read =
                |p: &Path| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()));
            Authority::from_pem(read(&cert_file)?, read(&key_file)?, OffsetDateTime::now_utc()).map_err(|e| {
                anyhow::anyhow!(
                    "{} (with its key {}): {e}; replace them, or remove both for a new authority",
                    cert_file.display(),
                    key_file.display()
                )
            })
        }
        (false, false) => {
            create_dir_mode(tls_dir, 0o755)?;
            let authority = Authority::generate(cluster, OffsetDateTime::now_utc())?;
            write_atomic(&key_file, authority.0.key_pem.as_bytes(), 0o600)?;
            write_atomic(&cert_file, authority.cert_pem().as_bytes(), 0o644)?;
            Ok(authority)
        }
        (true, false) => bail!(
            "{} has no key beside it ({}): the operator cannot issue certificates with it",
            cert_file.display(),
            key_file.display()
        ),
        (false, true) => {
            bail!("{} has no certificate beside it ({})", key_file.display(), cert_file.display())
        }
    }
}

/// Every name an instance is reached by: its name, its address, and the loopback forms.
pub fn instance_names(cfg: &InstanceConfig) -> Vec<String> {
    let mut names =
        vec![cfg.instance.clone(), cfg.advertise_host.clone(), "127.0.0.1".into(), "localhost".into()];
    names.dedup();
    names.sort();
    names.dedup();
    names
}

/// Why the instance needs a new certificate, or `None` when the one it has will do.
pub fn renewal_reason(
    files: &InstanceTls,
    authority: &Authority,
    names: &[String],
    now: i64,
) -> Option<String> {
    authority.renewal_reason(files.read_pair().ok().as_ref(), names, now)
}

/// What an instance's certificate files need.
#[derive(Debug, Default)]
pub struct Renewal {
    /// The files to write, in order: the authority, then the key, then the certificate (the
    /// manager acts on a new certificate, and by then its key is in place). Empty when
    /// nothing needs to change.
    pub files: Vec<(PathBuf, String)>,
    /// Why a new certificate was issued, when one was.
    pub reason: Option<String>,
}

/// What to write for an instance whose certificate is missing, foreign, too narrow or due.
pub fn files_to_write(
    cfg: &InstanceConfig,
    authority: &Authority,
    lifetime: Duration,
) -> anyhow::Result<Renewal> {
    let Some(files) = &cfg.tls else { return Ok(Renewal::default()) };
    let now = OffsetDateTime::now_utc();
    let names = instance_names(cfg);
    let mut out = Vec::new();
    if std::fs::read_to_string(&files.ca_file).ok().as_deref() != Some(authority.cert_pem()) {
        out.push((files.ca_file.clone(), authority.cert_pem().to_string()));
    }
    let reason = renewal_reason(files, authority, &names, now.unix_timestamp());
    if reason.is_some() {
        // The subject is the address peers use: openGauss's libpq checks only the subject's
        // common name against the host it connects to, never the alternative names.
        let pair = authority.issue(&cfg.advertise_host, &names, now, lifetime)?;
        out.push((files.key_file.clone(), pair.key_pem));
        out.push((files.cert_file.clone(), pair.cert_pem));
    }
    Ok(Renewal { files: out, reason })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::KeyedCertificate;

    #[test]
    fn the_authority_is_made_once_and_a_broken_one_is_named_not_replaced() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("tls");
        let first = authority(&dir, "demo").expect("made");
        let again = authority(&dir, "demo").expect("read back");
        assert_eq!(first, again, "kept, not made again");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("ca.key")).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        std::fs::write(dir.join("ca.crt"), "garbage").expect("break it");
        let err = authority(&dir, "demo").expect_err("refused").to_string();
        assert!(err.contains("ca.crt (with its key") && err.contains("not a usable certificate"), "{err}");
        assert_eq!(std::fs::read_to_string(dir.join("ca.crt")).expect("kept"), "garbage", "not overwritten");

        // A user's own authority is used as given; one whose key is not its own is refused.
        let mine = tmp.path().join("mine");
        std::fs::create_dir_all(&mine).expect("dir");
        let users = Authority::generate("users", OffsetDateTime::now_utc()).expect("authority");
        std::fs::write(mine.join("ca.crt"), users.cert_pem()).expect("cert");
        std::fs::write(mine.join("ca.key"), &users.0.key_pem).expect("key");
        assert_eq!(authority(&mine, "demo").expect("used as given"), users);
        let other = Authority::generate("other", OffsetDateTime::now_utc()).expect("other");
        std::fs::write(mine.join("ca.key"), &other.0.key_pem).expect("wrong key");
        let err = authority(&mine, "demo").expect_err("refused").to_string();
        assert!(err.contains("its key does not belong to its certificate"), "{err}");
        let expired = Authority::generate(
            "old",
            OffsetDateTime::now_utc() - crate::tls::authority::AUTHORITY_LIFETIME * 2,
        )
        .expect("an old authority");
        std::fs::write(mine.join("ca.crt"), expired.cert_pem()).expect("cert");
        std::fs::write(mine.join("ca.key"), &expired.0.key_pem).expect("key");
        let err = authority(&mine, "demo").expect_err("refused").to_string();
        assert!(err.contains("ca.crt (with its key") && err.contains("expired"), "{err}");

        std::fs::remove_file(dir.join("ca.key")).expect("remove key");
        let err = authority(&dir, "demo").expect_err("refused").to_string();
        assert!(err.contains("has no key beside it"), "{err}");
    }

    #[test]
    fn a_certificate_is_renewed_when_missing_due_foreign_or_too_narrow() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = InstanceTls::in_dir(tmp.path());
        let now = OffsetDateTime::now_utc();
        let ca = Authority::generate("demo", now).expect("ca");
        let names = vec!["demo-0".to_string(), "127.0.0.1".to_string()];
        let t = now.unix_timestamp();
        assert_eq!(renewal_reason(&files, &ca, &names, t).as_deref(), Some("it has none yet"));

        let write = |pair: &KeyedCertificate| {
            std::fs::write(&files.cert_file, &pair.cert_pem).expect("cert");
            std::fs::write(&files.key_file, &pair.key_pem).expect("key");
        };
        write(&ca.issue("demo-0", &names, now, Duration::from_secs(90)).expect("issue"));
        assert_eq!(renewal_reason(&files, &ca, &names, t), None, "fresh");
        assert!(renewal_reason(&files, &ca, &names, t + 61).expect("due").contains("renewal due"));

        let wider = vec!["demo-0".to_string(), "127.0.0.1".to_string(), "10.0.0.5".to_string()];
        assert!(renewal_reason(&files, &ca, &wider, t).expect("narrow").contains("does not name 10.0.0.5"));

        let other = Authority::generate("other", now).expect("other");
        write(&other.issue("demo-0", &names, now, Duration::from_secs(90)).expect("issue"));
        assert!(renewal_reason(&files, &ca, &names, t).expect("foreign").contains("not signed"));
    }
}
