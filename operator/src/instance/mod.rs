//! The instance manager (`opengauss-operator instance run`): runs next to one database server,
//! bootstraps its data directory when told to, supervises the server, reports its state and
//! carries out the controller's requests.

pub mod api;
pub mod client;
pub mod config;
mod datadir;
pub mod manager;
mod probe;
pub mod report;
mod server;

use std::path::Path;

use anyhow::Context;
use tokio::net::TcpListener;

pub use config::InstanceConfig;
pub use manager::Manager;

use crate::fsutil::write_atomic;

/// Runs the manager until SIGTERM or SIGINT, then stops the server cleanly.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    if nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "the instance manager must not run as root: the database server refuses to; \
             run it as the database's OS user (the local platform does this for you)"
        );
    }
    let cfg = InstanceConfig::load(config_path)?;
    let manager = Manager::new(cfg.clone())?;
    manager.check_server_version().await;
    let listener = TcpListener::bind(cfg.api_listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.api_listen))?;
    let addr = listener.local_addr()?;
    if let Some(port_file) = &cfg.api_port_file {
        write_atomic(port_file, format!("{}\n", addr.port()).as_bytes(), 0o644)?;
    }
    tracing::info!(instance = %cfg.instance, %addr, "instance manager listening");
    // As PID 1 of a container, orphaned server processes are ours to reap.
    tokio::spawn(crate::reaper::run());
    let supervisor = tokio::spawn(manager.clone().supervise());
    let readiness = tokio::spawn(manager.clone().watch_readiness());
    let lease = tokio::spawn(manager.clone().keep_lease());
    let app = api::router(manager.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::signals::shutdown_requested())
        .await
        .context("HTTP server failed")?;
    tracing::info!("shutting down: stopping the database server");
    supervisor.abort();
    readiness.abort();
    lease.abort();
    manager.shutdown().await?;
    Ok(())
}

/// Whether a database server runs on `data_dir` (its postmaster is alive).
pub fn server_is_running(data_dir: &Path) -> bool {
    server_pid(data_dir).is_some()
}

/// The PID of the database server running on `data_dir`, if one is.
pub fn server_pid(data_dir: &Path) -> Option<u32> {
    server::running_postmaster(data_dir)
}
