//! The instance manager (`opengauss-operator instance run`): runs next to one database server,
//! bootstraps its data directory when told to, supervises the server, reports its state and
//! carries out the controller's requests.

pub mod api;
mod certs;
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
pub use probe::timeline_history;

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
    if let (Some(source), Some(files)) = (&cfg.tls_source, &cfg.tls) {
        certs::copy_from_source(source, files)?;
    }
    let manager = Manager::new(cfg.clone())?;
    manager.check_server_version().await;
    let listener = std::net::TcpListener::bind(cfg.api_listen)
        .with_context(|| format!("cannot listen on {}", cfg.api_listen))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let https = match &cfg.tls {
        Some(files) => Some((files.clone(), certs::listener_config(&manager, files)?)),
        None => None,
    };
    if let Some(port_file) = &cfg.api_port_file {
        write_atomic(port_file, format!("{}\n", addr.port()).as_bytes(), 0o644)?;
    }
    tracing::info!(instance = %cfg.instance, %addr, tls = https.is_some(), "instance manager listening");
    // As PID 1 of a container, orphaned server processes are ours to reap.
    tokio::spawn(crate::reaper::run());
    let supervisor = tokio::spawn(manager.clone().supervise());
    let readiness = tokio::spawn(manager.clone().watch_readiness());
    let lease = tokio::spawn(manager.clone().keep_lease());
    let app = api::router(manager.clone());
    match https {
        Some((files, config)) => {
            let watcher = tokio::spawn(certs::watch(manager.clone(), files, config.clone()));
            let handle = axum_server::Handle::new();
            let on_signal = handle.clone();
            tokio::spawn(async move {
                crate::signals::shutdown_requested().await;
                on_signal.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
            });
            axum_server::from_tcp_rustls(listener, config)?
                .handle(handle)
                .serve(app.into_make_service())
                .await
                .context("HTTPS server failed")?;
            watcher.abort();
        }
        None => axum::serve(TcpListener::from_std(listener)?, app)
            .with_graceful_shutdown(crate::signals::shutdown_requested())
            .await
            .context("HTTP server failed")?,
    }
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
