//! Shutdown signals.

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal};

/// Resolves on the first SIGTERM, SIGINT or SIGHUP. SIGHUP is what closing the terminal that
/// runs `local up` sends: left unhandled it would kill the controller and leave the instances
/// running unwatched, so it stops the cluster like Ctrl-C.
///
/// The handlers are installed when this is called, not when the future is first polled: a
/// signal that arrives while the caller is still starting up is kept for the future instead of
/// killing the process with the default action.
pub fn shutdown_requested() -> impl Future<Output = ()> + Send + 'static {
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("installing the SIGHUP handler");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
            _ = hup.recv() => tracing::info!("SIGHUP received"),
        }
    }
}
