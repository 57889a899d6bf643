//! The certificate authority the operator makes for each cluster, and the server certificates
//! it issues with it. Keys are ECDSA P-256: quick to make, accepted by PostgreSQL, libpq and
//! rustls alike.

use std::time::Duration;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::OffsetDateTime;

use super::inspect;

/// How long a generated authority is valid: far beyond any server certificate it signs, so
/// renewing those never needs a new authority (which every client would have to trust anew).
pub const AUTHORITY_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Certificates start up to this long before they are made, so a peer whose clock runs a
/// little behind does not find them not yet valid.
const BACKDATE: Duration = Duration::from_secs(300);

/// A certificate and its private key, both PEM. The key never shows in debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyedCertificate {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for KeyedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCertificate")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"redacted")
            .finish()
    }
}

/// A cluster's certificate authority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority(pub KeyedCertificate);

/// From a little before `now` (a tenth of the lifetime at most, so a short-lived certificate
/// is not mostly spent when made) to `lifetime` after it.
fn validity(params: &mut CertificateParams, now: OffsetDateTime, lifetime: Duration) {
    params.not_before = now - BACKDATE.min(lifetime / 10);
    params.not_after = now + lifetime;
}

/// Whether `cert_pem` is fit to be trusted as the cluster's authority at `now`: a CA
/// certificate that has not expired. The error says which fails.
pub fn check_authority_certificate(cert_pem: &str, now: OffsetDateTime) -> Result<(), String> {
    let info = inspect::read(cert_pem).map_err(|e| format!("not a usable certificate: {e}"))?;
    if !info.is_ca {
        return Err("not a certificate authority (no CA basic constraint)".into());
    }
    if now.unix_timestamp() >= info.not_after {
        return Err(format!("expired (at unix time {})", info.not_after));
    }
    Ok(())
}

impl Authority {
    /// A new authority for `cluster`, valid from `now` for `AUTHORITY_LIFETIME`.
    pub fn generate(cluster: &str, now: OffsetDateTime) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new()).context("certificate parameters")?;
        params.distinguished_name.push(DnType::CommonName, format!("{cluster} certificate authority"));
        params.distinguished_name.push(DnType::OrganizationName, "opengauss-operator");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        validity(&mut params, now, AUTHORITY_LIFETIME);
        let key = KeyPair::generate().context("generating the authority's key")?;
        let cert = params.self_signed(&key).context("signing the authority's certificate")?;
        Ok(Self(KeyedCertificate { cert_pem: cert.pem(), key_pem: key.serialize_pem() }))
    }

    pub fn cert_pem(&self) -> &str {
        &self.0.cert_pem
    }

    /// An authority given as PEM (the operator's own, kept; or a user's), once it is shown fit
    /// to issue with at `now`: a CA certificate, not expired, and the key signs for it. The
    /// error says which of these fails.
    pub fn from_pem(cert_pem: String, key_pem: String, now: OffsetDateTime) -> Result<Self, String> {
        let authority = Self(KeyedCertificate { cert_pem, key_pem });
        check_authority_certificate(authority.cert_pem(), now)?;
        // Proves the key signs for the certificate before anything is issued with it.
        let probe = authority
            .issue("probe", &["probe".into()], now, Duration::from_secs(60))
            .map_err(|e| format!("cannot issue with it: {e:#}"))?;
        inspect::check_server_pair(&probe, authority.cert_pem(), &[], now.unix_timestamp())
            .map_err(|e| format!("its key does not belong to its certificate: {e}"))?;
        Ok(authority)
    }

    /// Why a server certificate `pair` (absent: none yet) must be replaced by one this
    /// authority issues for `names`, or `None` when it will do at `now`: foreign, broken, too
    /// narrow, expired, or a third of its lifetime or `notice` seconds left (see
    /// `CertificateInfo::renewal_due`).
    pub fn renewal_reason(
        &self,
        pair: Option<&KeyedCertificate>,
        names: &[String],
        now: i64,
        notice: i64,
    ) -> Option<String> {
        let Some(pair) = pair else {
            return Some("it has none yet".into());
        };
        match inspect::check_server_pair(pair, self.cert_pem(), names, now) {
            Err(e) => Some(e),
            Ok(info) if info.renewal_due(now, notice) => {
                Some(format!("renewal due (expires at unix time {})", info.not_after))
            }
            Ok(_) => None,
        }
    }

    /// A certificate for `subject` that servers present and clients check: every name in
    /// `names` (host names and IP addresses) is in its subject alternative names. Valid for
    /// both server and client authentication, so the same pair can also prove the instance to
    /// a peer.
    pub fn issue(
        &self,
        subject: &str,
        names: &[String],
        now: OffsetDateTime,
        lifetime: Duration,
    ) -> anyhow::Result<KeyedCertificate> {
        let signing_key = KeyPair::from_pem(&self.0.key_pem).context("reading the authority's key")?;
        let issuer = Issuer::from_ca_cert_pem(&self.0.cert_pem, signing_key)
            .context("reading the authority's certificate")?;
        let mut params = CertificateParams::new(names.to_vec()).context("certificate names")?;
        params.distinguished_name.push(DnType::CommonName, subject);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, now, lifetime);
        let key = KeyPair::generate().context("generating a key")?;
        let cert = params.signed_by(&key, &issuer).context("signing the certificate")?;
        Ok(KeyedCertificate { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_chain_to_the_authority_and_carry_every_name() {
        let now = OffsetDateTime::now_utc();
        let ca = Authority::generate("demo", now).expect("authority");
        let names = vec!["demo-0".to_string(), "127.0.0.1".to_string(), "localhost".to_string()];
        let leaf = ca.issue("demo-0", &names, now, Duration::from_secs(3600)).expect("issue");
        let info = inspect::check_server_pair(&leaf, ca.cert_pem(), &names, now.unix_timestamp())
            .expect("a fresh certificate passes every check");
        assert_eq!(info.not_after - now.unix_timestamp(), 3600);
        assert!(info.names.contains(&"127.0.0.1".to_string()), "{:?}", info.names);
        let authority = inspect::read(ca.cert_pem()).expect("read authority");
        assert!(authority.is_ca);
        assert!(authority.not_after - now.unix_timestamp() >= AUTHORITY_LIFETIME.as_secs() as i64 - 1);
        assert!(!format!("{leaf:?}").contains("PRIVATE"), "keys stay out of debug output");
    }
}
