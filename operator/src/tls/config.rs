//! rustls configurations: the instance manager's HTTPS listener, and clients (the controller,
//! peers, database connections) that trust the cluster's authority and nothing else. ring is
//! the one crypto provider, as for the Kubernetes client.

use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

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
