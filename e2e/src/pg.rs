//! The tests' database connections: over TLS, checked against the cluster's authority
//! (`<state-dir>/tls/ca.crt`, verify-full), when the cluster has one, as it does by default;
//! in clear text for a cluster that runs without TLS.

use std::path::Path;

use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How to secure a connection: clear text for a cluster without TLS.
#[derive(Clone)]
pub struct Tls(Option<MakeRustlsConnect>);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Tls(verify-full)" } else { "Tls(none)" })
    }
}

/// TLS trusting the authority of the cluster whose state directory is `state_dir`, if it has one.
pub fn tls_of(state_dir: &Path) -> Tls {
    let Ok(pem) = std::fs::read_to_string(state_dir.join("tls/ca.crt")) else { return Tls(None) };
    let config = opengauss_operator::tls::config::client(&pem).expect("the cluster's authority is usable");
    Tls(Some(MakeRustlsConnect::new(config)))
}

/// Connects with `cfg`, over TLS when `tls` is given; the connection runs in the background
/// until the client is dropped.
pub async fn connect(cfg: &Config, tls: &Tls) -> Result<Client, tokio_postgres::Error> {
    match &tls.0 {
        Some(tls) => {
            let mut cfg = cfg.clone();
            cfg.ssl_mode(SslMode::Require);
            let (client, connection) = cfg.connect(tls.clone()).await?;
            tokio::spawn(connection);
            Ok(client)
        }
        None => {
            let (client, connection) = cfg.connect(NoTls).await?;
            tokio::spawn(connection);
            Ok(client)
        }
    }
}
