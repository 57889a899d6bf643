//! rustls configurations: the instance manager's HTTPS listener, and clients (the controller,
//! peers, database connections) that trust the cluster's authority and nothing else. ring is
//! the one crypto provider, as for the Kubernetes client.

use std::sync::Arc;

use anyhow::Context;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
};

use super::authority::KeyedCertificate;
use super::inspect::certificates;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process's default provider, which HTTP clients built without a TLS
/// configuration of their own need (reqwest refuses to build one otherwise). Idempotent.
pub fn install_default_provider() {
    // An error only says a default is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Trusts only the certificates in `authority_pem`, and checks the server's name against the
/// host it connects to (verify-full).
pub fn client(authority_pem: &str) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(authority_pem).map_err(|e| anyhow::anyhow!("the certificate authority: {e}"))? {
        roots.add(cert).context("the certificate authority is not usable as a trust anchor")?;
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// For the instance managers' API: trusts only `authority_pem`, like `client`, and checks the
/// server's name against the host asked, except that a manager reached at an IP address its
/// certificate does not name passes on the authority's signature alone. On Kubernetes the
/// managers are reached at their pod's IP, which is not known when the certificate is issued
/// (the pod does not exist yet); the cluster's own authority signs nothing but this cluster's
/// instances, so its signature still proves the peer is one of them.
pub fn member_client(authority_pem: &str) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(authority_pem).map_err(|e| anyhow::anyhow!("the certificate authority: {e}"))? {
        roots.add(cert).context("the certificate authority is not usable as a trust anchor")?;
    }
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .context("the certificate authority's verifier")?;
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(MemberVerifier { inner }))
        .with_no_client_auth())
}

/// `WebPkiServerVerifier`, which checks the chain (signature, validity, usage) before the
/// name, with a name mismatch for an IP address forgiven.
#[derive(Debug)]
struct MemberVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for MemberVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if matches!(server_name, ServerName::IpAddress(_)) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Trusts nothing: for a client that only speaks plain HTTP. (reqwest otherwise loads the
/// system's trust store, which a minimal container image does not have, and refuses to build.)
pub fn client_trusting_nothing() -> anyhow::Result<ClientConfig> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth())
}

/// Presents `pair` to clients, over HTTP/1.1.
pub fn server(pair: &KeyedCertificate) -> anyhow::Result<ServerConfig> {
    let chain = certificates(&pair.cert_pem).map_err(|e| anyhow::anyhow!("the server certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).context("the server's private key")?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the server certificate and key")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use time::OffsetDateTime;

    use super::*;
    use crate::tls::Authority;

    fn verifier(ca: &Authority) -> MemberVerifier {
        let mut roots = RootCertStore::empty();
        for cert in certificates(ca.cert_pem()).expect("pem") {
            roots.add(cert).expect("anchor");
        }
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build().expect("v");
        MemberVerifier { inner }
    }

    #[test]
    fn members_are_known_by_their_authority_and_by_name_when_named() {
        let now = OffsetDateTime::now_utc();
        let ca = Authority::generate("demo", now).expect("ca");
        let leaf = ca.issue("demo-0.h", &["demo-0.h".into()], now, Duration::from_secs(3600)).expect("leaf");
        let der = certificates(&leaf.cert_pem).expect("der").remove(0);
        let v = verifier(&ca);
        let check = |host: &str| {
            let name = ServerName::try_from(host.to_string()).expect("name");
            v.verify_server_cert(&der, &[], &name, &[], UnixTime::now())
        };
        assert!(check("demo-0.h").is_ok(), "the name it carries");
        assert!(check("10.244.0.7").is_ok(), "a pod IP it cannot carry, on the signature alone");
        assert!(check("demo-1.h").is_err(), "another host name is still refused");

        let other = Authority::generate("other", now).expect("other");
        let foreign =
            other.issue("demo-0.h", &["demo-0.h".into()], now, Duration::from_secs(3600)).expect("f");
        let der = certificates(&foreign.cert_pem).expect("der").remove(0);
        let name = ServerName::try_from("10.244.0.7".to_string()).expect("ip");
        assert!(
            v.verify_server_cert(&der, &[], &name, &[], UnixTime::now()).is_err(),
            "another authority's certificate is refused at an IP address too"
        );
    }
}
