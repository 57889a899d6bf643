//! Reading certificates and checking them before they are used: a server keeps the pair it has
//! unless the new one is current, matches its key, chains to the cluster's authority and names
//! every way clients reach the server. Each refusal names what is wrong.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::authority::KeyedCertificate;

/// What a certificate says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// Subject alternative names: DNS names and IP addresses, as text.
    pub names: Vec<String>,
    pub is_ca: bool,
}

impl CertificateInfo {
    /// Renew once less than a third of the lifetime is left, or less than `notice` seconds
    /// (the time a renewed certificate may take to reach the server): a 90-day certificate is
    /// renewed a month before it expires, with time to notice if renewing fails.
    pub fn renewal_due(&self, now: i64, notice: i64) -> bool {
        let lifetime = (self.not_after - self.not_before).max(0);
        self.not_after - now < (lifetime / 3).max(notice)
    }
}

/// The certificates in a PEM text, in order.
pub fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in it".into());
    }
    Ok(certs)
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, String> {
    X509Certificate::from_der(der.as_ref())
        .map(|(_, c)| c)
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))
}

fn info(cert: &X509Certificate<'_>) -> Result<CertificateInfo, String> {
    let mut names = Vec::new();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("its subject alternative names are invalid: {e}"))?;
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        match name {
            GeneralName::DNSName(dns) => names.push((*dns).to_string()),
            GeneralName::IPAddress(raw) => match raw.len() {
                4 => names.push(IpAddr::from(<[u8; 4]>::try_from(*raw).expect("4 bytes")).to_string()),
                16 => names.push(IpAddr::from(<[u8; 16]>::try_from(*raw).expect("16 bytes")).to_string()),
                _ => {}
            },
            _ => {}
        }
    }
    Ok(CertificateInfo {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        names,
        is_ca: cert.is_ca(),
    })
}

/// What the first certificate of a PEM text says.
pub fn read(pem: &str) -> Result<CertificateInfo, String> {
    let certs = certificates(pem)?;
    info(&parse(&certs[0])?)
}

/// Whether `name` (a host name or an address) is one of `names`; a `*.` entry covers one label.
fn covers(names: &[String], name: &str) -> bool {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return names.iter().any(|n| n.parse::<IpAddr>().is_ok_and(|m| m == ip));
    }
    let name = name.to_ascii_lowercase();
    names.iter().map(|n| n.to_ascii_lowercase()).any(|n| match n.strip_prefix("*.") {
        Some(domain) => name.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == domain),
        None => n == name,
    })
}

/// Checks a server's certificate and key before they are used: both parse, the key is the
/// certificate's, it is valid at `now` (unix seconds), it was signed by the first certificate
/// of `authority_pem`, and it names every one of `required_names`.
pub fn check_server_pair(
    pair: &KeyedCertificate,
    authority_pem: &str,
    required_names: &[String],
    now: i64,
) -> Result<CertificateInfo, String> {
    let chain = certificates(&pair.cert_pem).map_err(|e| format!("the certificate: {e}"))?;
    let cert = parse(&chain[0]).map_err(|e| format!("the certificate: {e}"))?;
    let found = info(&cert)?;
    let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes())
        .map_err(|e| format!("the private key: not a PEM private key: {e}"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("the private key: unsupported: {e}"))?;
    rustls::sign::CertifiedKey::new(chain.clone(), Arc::clone(&signing))
        .keys_match()
        .map_err(|_| "the private key does not belong to the certificate".to_string())?;
    if now < found.not_before {
        return Err(format!("the certificate is not valid yet (from unix time {})", found.not_before));
    }
    if now >= found.not_after {
        return Err(format!("the certificate expired (at unix time {})", found.not_after));
    }
    let authorities = certificates(authority_pem).map_err(|e| format!("the authority: {e}"))?;
    let authority = parse(&authorities[0]).map_err(|e| format!("the authority: {e}"))?;
    cert.verify_signature(Some(authority.public_key()))
        .map_err(|_| "the certificate was not signed by the cluster's certificate authority".to_string())?;
    let missing: Vec<&str> =
        required_names.iter().filter(|n| !covers(&found.names, n)).map(String::as_str).collect();
    if !missing.is_empty() {
        return Err(format!(
            "the certificate does not name {} (it names {})",
            missing.join(", "),
            if found.names.is_empty() { "nothing".to_string() } else { found.names.join(", ") }
        ));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use time::OffsetDateTime;

    use super::*;
    use crate::tls::authority::Authority;

    fn names() -> Vec<String> {
        vec!["demo-0".into(), "127.0.0.1".into()]
    }

    #[test]
    fn every_flaw_is_named() {
        let now = OffsetDateTime::now_utc();
        let t = now.unix_timestamp();
        let ca = Authority::generate("demo", now).expect("ca");
        let good = ca.issue("demo-0", &names(), now, Duration::from_secs(3600)).expect("issue");
        check_server_pair(&good, ca.cert_pem(), &names(), t).expect("good pair");

        let err = |pair: &KeyedCertificate, authority: &str, at: i64| {
            check_server_pair(pair, authority, &names(), at).expect_err("refused")
        };
        assert!(err(&good, ca.cert_pem(), t + 3601).contains("expired"));
        assert!(err(&good, ca.cert_pem(), t - 3600).contains("not valid yet"));

        let other = ca.issue("demo-1", &names(), now, Duration::from_secs(3600)).expect("issue");
        let mismatched = KeyedCertificate { cert_pem: good.cert_pem.clone(), key_pem: other.key_pem };
        assert!(err(&mismatched, ca.cert_pem(), t).contains("does not belong"));

        let stranger = Authority::generate("other", now).expect("other ca");
        assert!(err(&good, stranger.cert_pem(), t).contains("not signed by the cluster's"));

        let narrow =
            ca.issue("demo-0", &["demo-0".to_string()], now, Duration::from_secs(3600)).expect("issue");
        let e = err(&narrow, ca.cert_pem(), t);
        assert!(e.contains("does not name 127.0.0.1") && e.contains("it names demo-0"), "{e}");

        let garbage = KeyedCertificate { cert_pem: "hello".into(), key_pem: good.key_pem.clone() };
        assert!(err(&garbage, ca.cert_pem(), t).contains("the certificate: no certificate"));
        let no_key = KeyedCertificate { cert_pem: good.cert_pem.clone(), key_pem: "nope".into() };
        assert!(err(&no_key, ca.cert_pem(), t).contains("the private key"));
    }

    #[test]
    fn names_match_exactly_or_by_one_wildcard_label() {
        let names = vec!["*.demo-hl.db.svc".to_string(), "Demo-rw".to_string(), "::1".to_string()];
        assert!(covers(&names, "demo-0.demo-hl.db.svc"));
        assert!(!covers(&names, "a.b.demo-hl.db.svc"));
        assert!(!covers(&names, "demo-hl.db.svc"));
        assert!(covers(&names, "demo-rw"));
        assert!(covers(&names, "0:0::1"));
        assert!(!covers(&names, "127.0.0.1"));
    }

    #[test]
    fn renewal_is_due_in_the_last_third() {
        let info = CertificateInfo { not_before: 0, not_after: 90, names: vec![], is_ca: false };
        assert!(!info.renewal_due(59, 0));
        assert!(!info.renewal_due(60, 0));
        assert!(info.renewal_due(61, 0));
        assert!(info.renewal_due(200, 0));
        // A longer notice than the third moves the renewal earlier, never later.
        assert!(!info.renewal_due(49, 40));
        assert!(info.renewal_due(51, 40));
        assert!(info.renewal_due(61, 10));
    }
}
