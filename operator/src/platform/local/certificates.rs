//! The local platform's certificates: the cluster's authority in `<state-dir>/tls/` (made on
//! the first `local up`, kept after), and each instance's server certificate beside its data,
//! issued when missing and renewed when a third of its lifetime is left. Users who keep the
//! authority's key to themselves supply each instance's pair in `<state-dir>/tls/` instead;
//! those are checked and copied, never issued. The instance manager notices new files and has
//! its listener and database server use them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use time::OffsetDateTime;

use crate::fsutil::{create_dir_mode, write_atomic};
use crate::instance::InstanceConfig;
use crate::tls::{Authority, InstanceTls, KeyedCertificate, inspect};

/// The authority's files.
pub fn authority_files(tls_dir: &Path) -> (PathBuf, PathBuf) {
    (tls_dir.join("ca.crt"), tls_dir.join("ca.key"))
}

/// A pair the user supplies for `instance` in `tls_dir`: `<instance>.crt`, `<instance>.key`.
pub fn supplied_files(tls_dir: &Path, instance: &str) -> (PathBuf, PathBuf) {
    (tls_dir.join(format!("{instance}.crt")), tls_dir.join(format!("{instance}.key")))
}

/// Where the instances' certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertificateSource {
    /// The operator issues them with the cluster's authority.
    Issued(Authority),
    /// The user supplies them in `dir`, signed by the authority `ca_pem`, whose key the
    /// operator never has.
    Supplied { ca_pem: String, dir: PathBuf },
}

impl CertificateSource {
    /// The authority's certificate (PEM) clients and peers trust.
    pub fn ca_pem(&self) -> &str {
        match self {
            Self::Issued(a) => a.cert_pem(),
            Self::Supplied { ca_pem, .. } => ca_pem,
        }
    }
}

fn read(p: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
}

/// Where the cluster's certificates come from: the authority in `tls_dir` with its key (the
/// operator issues), its certificate alone (the user supplies every instance's pair), or a new
/// authority written there (the key 0600) when there is none. A certificate that does not
/// parse, is not a CA or has expired, or a key that is not its own, is an error naming the
/// file; nothing is overwritten.
pub fn source(tls_dir: &Path, cluster: &str) -> anyhow::Result<CertificateSource> {
    let (cert_file, key_file) = authority_files(tls_dir);
    let now = OffsetDateTime::now_utc();
    match (cert_file.exists(), key_file.exists()) {
        (true, true) => Authority::from_pem(read(&cert_file)?, read(&key_file)?, now)
            .map(CertificateSource::Issued)
            .map_err(|e| {
                anyhow::anyhow!(
                    "{} (with its key {}): {e}; replace them, or remove both for a new authority",
                    cert_file.display(),
                    key_file.display()
                )
            }),
        (false, false) => {
            create_dir_mode(tls_dir, 0o755)?;
            let authority = Authority::generate(cluster, now)?;
            write_atomic(&key_file, authority.0.key_pem.as_bytes(), 0o600)?;
            write_atomic(&cert_file, authority.cert_pem().as_bytes(), 0o644)?;
            Ok(CertificateSource::Issued(authority))
        }
        (true, false) => {
            let ca_pem = read(&cert_file)?;
            crate::tls::authority::check_authority_certificate(&ca_pem, now)
                .map_err(|e| anyhow::anyhow!("{}: {e}", cert_file.display()))?;
            Ok(CertificateSource::Supplied { ca_pem, dir: tls_dir.to_path_buf() })
        }
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
    // The files are written where the server reads them: no delivery time to allow for.
    authority.renewal_reason(files.read_pair().ok().as_ref(), names, now, 0)
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

/// What to write for an instance: with issued certificates, a new pair when its own is
/// missing, foreign, too narrow or due; with supplied ones, the user's pair when it differs
/// from the one in use and passes the checks (signed by the authority, naming the instance's
/// address, current, key matching). A supplied pair that is missing or fails them is an error
/// naming its file, and nothing is written: the instance keeps the pair it has.
pub fn files_to_write(
    cfg: &InstanceConfig,
    source: &CertificateSource,
    lifetime: Duration,
) -> anyhow::Result<Renewal> {
    let Some(files) = &cfg.tls else { return Ok(Renewal::default()) };
    let now = OffsetDateTime::now_utc();
    let mut out = Vec::new();
    if std::fs::read_to_string(&files.ca_file).ok().as_deref() != Some(source.ca_pem()) {
        out.push((files.ca_file.clone(), source.ca_pem().to_string()));
    }
    let reason = match source {
        CertificateSource::Issued(authority) => {
            let names = instance_names(cfg);
            let reason = renewal_reason(files, authority, &names, now.unix_timestamp());
            if reason.is_some() {
                // The subject is the address peers use: openGauss's libpq checks only the
                // subject's common name against the host it connects to, never the
                // alternative names.
                let pair = authority.issue(&cfg.advertise_host, &names, now, lifetime)?;
                out.push((files.key_file.clone(), pair.key_pem));
                out.push((files.cert_file.clone(), pair.cert_pem));
            }
            reason
        }
        CertificateSource::Supplied { ca_pem, dir } => {
            let (cert_file, key_file) = supplied_files(dir, &cfg.instance);
            let pair = KeyedCertificate { cert_pem: read(&cert_file)?, key_pem: read(&key_file)? };
            if files.read_pair().ok().as_ref() == Some(&pair) {
                None
            } else {
                // Peers and the controller reach the instance at its address.
                inspect::check_server_pair(
                    &pair,
                    ca_pem,
                    std::slice::from_ref(&cfg.advertise_host),
                    now.unix_timestamp(),
                )
                .map_err(|e| anyhow::anyhow!("{} (with {}): {e}", cert_file.display(), key_file.display()))?;
                out.push((files.key_file.clone(), pair.key_pem));
                out.push((files.cert_file.clone(), pair.cert_pem));
                Some(format!("supplied in {}", cert_file.display()))
            }
        }
    };
    Ok(Renewal { files: out, reason })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::KeyedCertificate;

    /// The authority, for the cases that issue.
    fn authority(dir: &Path, cluster: &str) -> anyhow::Result<Authority> {
        match source(dir, cluster)? {
            CertificateSource::Issued(a) => Ok(a),
            other => panic!("expected an issuing authority, got {other:?}"),
        }
    }

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

        // The authority's certificate alone: the user supplies the pairs; it must still be a
        // current CA certificate.
        std::fs::remove_file(mine.join("ca.key")).expect("remove key");
        let err = source(&mine, "demo").expect_err("expired").to_string();
        assert!(err.contains("ca.crt: expired"), "{err}");
        std::fs::write(mine.join("ca.crt"), users.cert_pem()).expect("cert");
        assert_eq!(
            source(&mine, "demo").expect("supplied"),
            CertificateSource::Supplied { ca_pem: users.cert_pem().to_string(), dir: mine.clone() }
        );
        let leaf = users
            .issue("x", &["x".into()], OffsetDateTime::now_utc(), Duration::from_secs(60))
            .expect("leaf");
        std::fs::write(mine.join("ca.crt"), &leaf.cert_pem).expect("cert");
        let err = source(&mine, "demo").expect_err("not a CA").to_string();
        assert!(err.contains("not a certificate authority"), "{err}");
        std::fs::remove_file(mine.join("ca.crt")).expect("remove");
        std::fs::write(mine.join("ca.key"), &users.0.key_pem).expect("key");
        let err = source(&mine, "demo").expect_err("a key alone").to_string();
        assert!(err.contains("has no certificate beside it"), "{err}");
    }

    /// A test instance's configuration with TLS files in `root`, reached at 127.0.0.1.
    fn instance_config(root: &Path) -> InstanceConfig {
        let mut cfg: InstanceConfig = serde_json::from_value(serde_json::json!({
            "cluster": "demo", "instance": "demo-0", "engine": "postgres", "binDir": "/usr/bin",
            "root": root, "socketDir": root, "port": 5432, "listenAddresses": "127.0.0.1",
            "advertiseHost": "127.0.0.1", "apiListen": "127.0.0.1:0", "superuser": "postgres",
            "replicationUser": "replicator", "tokenFile": root.join("t"),
            "superuserPasswordFile": root.join("p"), "replicationPasswordFile": root.join("r"),
            "passfile": root.join("pgpass"), "hbaNetworks": [],
        }))
        .expect("a config");
        cfg.tls = Some(InstanceTls::in_dir(root));
        cfg
    }

    #[test]
    fn supplied_pairs_are_checked_then_copied_and_a_broken_one_changes_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("tls");
        std::fs::create_dir_all(&dir).expect("dir");
        let now = OffsetDateTime::now_utc();
        let users = Authority::generate("users", now).expect("authority");
        std::fs::write(dir.join("ca.crt"), users.cert_pem()).expect("cert");
        let src = source(&dir, "demo").expect("supplied");
        let root = tmp.path().join("demo-0");
        std::fs::create_dir_all(&root).expect("root");
        let cfg = instance_config(&root);
        let lifetime = Duration::from_secs(3600);

        let err = format!("{:#}", files_to_write(&cfg, &src, lifetime).expect_err("nothing supplied"));
        assert!(err.contains("demo-0.crt"), "{err}");

        let (cert_file, key_file) = supplied_files(&dir, "demo-0");
        let good = users.issue("127.0.0.1", &["127.0.0.1".into()], now, lifetime).expect("issue");
        std::fs::write(&cert_file, &good.cert_pem).expect("cert");
        std::fs::write(&key_file, &good.key_pem).expect("key");
        let renewal = files_to_write(&cfg, &src, lifetime).expect("a good pair");
        assert!(renewal.reason.as_deref().is_some_and(|r| r.contains("demo-0.crt")), "{:?}", renewal.reason);
        let written: Vec<(PathBuf, String)> = renewal.files.clone();
        assert_eq!(
            written,
            vec![
                (root.join("ca.crt"), users.cert_pem().to_string()),
                (root.join("server.key"), good.key_pem.clone()),
                (root.join("server.crt"), good.cert_pem.clone()),
            ],
            "the authority, then the key, then the certificate, exactly as supplied"
        );
        for (path, text) in &written {
            std::fs::write(path, text).expect("write");
        }
        assert!(files_to_write(&cfg, &src, lifetime).expect("unchanged").files.is_empty());

        // Broken replacements are refused with the file named; nothing is written.
        let other = Authority::generate("other", now).expect("other");
        let wrong_name = users.issue("10.1.1.1", &["10.1.1.1".into()], now, lifetime).expect("issue");
        let foreign = other.issue("127.0.0.1", &["127.0.0.1".into()], now, lifetime).expect("issue");
        let expired = users
            .issue("127.0.0.1", &["127.0.0.1".into()], now - Duration::from_secs(7200), lifetime)
            .expect("issue");
        for (what, cert, key, expected) in [
            ("a wrong name", &wrong_name.cert_pem, &wrong_name.key_pem, "does not name 127.0.0.1"),
            ("another authority", &foreign.cert_pem, &foreign.key_pem, "not signed"),
            ("expired", &expired.cert_pem, &expired.key_pem, "expired"),
            ("a key not its own", &good.cert_pem, &foreign.key_pem, "does not belong"),
        ] {
            std::fs::write(&cert_file, cert).expect("cert");
            std::fs::write(&key_file, key).expect("key");
            let err = format!("{:#}", files_to_write(&cfg, &src, lifetime).expect_err(what));
            assert!(err.contains("demo-0.crt") && err.contains(expected), "{what}: {err}");
        }
        assert_eq!(std::fs::read_to_string(root.join("server.crt")).expect("kept"), good.cert_pem);
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
