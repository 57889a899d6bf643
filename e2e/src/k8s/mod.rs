//! A real one-node Kubernetes cluster on this machine, assembled from upstream parts and run as
//! plain processes: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and
//! kube-proxy built from their Go modules, CoreDNS and kind's local-path provisioner likewise,
//! containerd, runc and the CNI plugins from Debian. It is what a kind node runs, without the
//! Docker container around it.
//!
//! `make k8s-up` (`k8s-node up`) builds or reuses every binary and image, starts every
//! component under `.k8s/`, deploys the operator from `deploy/` and returns once the node is
//! Ready, the cluster DNS answers and the operator is ready. `make k8s-down` stops everything
//! it started, by PID, removes every rule, route and interface it added, and deletes `.k8s/`;
//! the caches of built binaries and images stay (`OPENGAUSS_K8S_CACHE`, by default
//! `~/.cache/opengauss-operator/k8s`).
//!
//! Every address lives on the project's own bridge: nothing a pod sends is routed off the
//! machine, CoreDNS forwards nothing, and images are imported, never pulled.
//!
//! Split by job: `layout` (paths and addresses), `procs` (detached processes, PID files,
//! stopping by PID), `components` (Go builds and their cache), `images` (image archives
//! without a registry), `pki` (certificates and kubeconfigs), `config` (the components'
//! configuration files), `network` (bridge, routes, packet filter rules), `probe` (health
//! endpoints and DNS) and `node` (bringing it all up and down in order).

pub mod components;
pub mod config;
pub mod images;
pub mod layout;
pub mod network;
pub mod node;
pub mod pki;
pub mod probe;
pub mod procs;

pub use layout::Layout;
pub use node::{down, up};

use std::time::Instant;

/// Prints harness progress with the time since the harness started.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    started: Instant,
}

impl Progress {
    pub fn new() -> Self {
        Self { started: Instant::now() }
    }

    pub fn say(&self, what: impl std::fmt::Display) {
        eprintln!("[{:>6.1}s] {what}", self.started.elapsed().as_secs_f64());
    }

    /// Runs `step`, printing its name first and its duration after.
    pub fn step<T>(&self, what: &str, step: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
        let t = Instant::now();
        self.say(format!("{what} ..."));
        let out = step()?;
        self.say(format!("{what}: done in {:.1}s", t.elapsed().as_secs_f64()));
        Ok(out)
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}
