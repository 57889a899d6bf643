//! Where everything of the one-node cluster lives: its directory in the checkout (`.k8s/`),
//! the build cache outside it, runtime sockets under `/run`, and the addresses on the
//! project's own bridge.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The Kubernetes release the tier runs. 1.34 is the last minor release whose kubelet runs on
/// cgroup v1 without being told to (`failCgroupV1` defaults to true from 1.35), and the
/// machines here have cgroup v1 only; it also still supports containerd 1.6, Debian's.
pub const KUBERNETES_VERSION: &str = "v1.34.4";

/// The node's name.
pub const NODE_NAME: &str = "opengauss-node";
/// The bridge pods attach to; it also carries the node's own address.
pub const BRIDGE: &str = "ogk8s0";
/// The node's address: the bridge's, the pods' gateway, the API server's, the cluster DNS.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// Pod addresses (the bridge's subnet) and the range of the whole pod network.
pub const POD_SUBNET: &str = "10.244.0.0/24";
pub const POD_CIDR: &str = "10.244.0.0/16";
/// Service addresses; the first is the API server's `kubernetes` Service.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
pub const API_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
pub const CLUSTER_DOMAIN: &str = "cluster.local";
pub const API_PORT: u16 = 6443;
pub const ETCD_CLIENT_PORT: u16 = 2379;
pub const ETCD_PEER_PORT: u16 = 2380;
pub const KUBELET_PORT: u16 = 10250;
pub const KUBE_PROXY_HEALTH_PORT: u16 = 10256;
pub const COREDNS_READY_PORT: u16 = 18181;
pub const COREDNS_HEALTH_PORT: u16 = 18080;
/// The StorageClass the samples can name (the same name kind uses).
pub const STORAGE_CLASS: &str = "standard";

/// Paths of one cluster.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The checkout.
    pub workspace: PathBuf,
    /// `.k8s/` in the checkout: configuration, certificates, data, logs and PID files.
    pub root: PathBuf,
    /// Built binaries and images, kept across `k8s-down`.
    pub cache: PathBuf,
    /// Sockets and containerd's state (short paths: a Unix socket path has 108 bytes).
    pub run: PathBuf,
}

impl Layout {
    /// The layout for the checkout `workspace`; `OPENGAUSS_K8S_CACHE` moves the cache.
    pub fn new(workspace: &Path) -> Self {
        let cache = std::env::var_os("OPENGAUSS_K8S_CACHE").map(PathBuf::from).unwrap_or_else(|| {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from("/var/cache"));
            base.join("opengauss-operator").join("k8s")
        });
        Self {
            workspace: workspace.to_path_buf(),
            root: workspace.join(".k8s"),
            cache,
            run: PathBuf::from("/run/opengauss-k8s"),
        }
    }

    /// The layout of this checkout (the e2e crate's parent).
    pub fn of_this_checkout() -> Self {
        Self::new(&crate::workspace())
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.root.join("kubeconfig")
    }
    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn log(&self, component: &str) -> PathBuf {
        self.logs().join(format!("{component}.log"))
    }
    pub fn pids(&self) -> PathBuf {
        self.root.join("pids")
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config")
    }
    pub fn etcd_data(&self) -> PathBuf {
        self.root.join("etcd")
    }
    pub fn kubelet_root(&self) -> PathBuf {
        self.root.join("kubelet")
    }
    pub fn pod_logs(&self) -> PathBuf {
        self.root.join("pod-logs")
    }
    pub fn containerd_root(&self) -> PathBuf {
        self.root.join("containerd")
    }
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.root.join("cni")
    }
    /// Where PersistentVolumes get their directories.
    pub fn volumes(&self) -> PathBuf {
        self.root.join("volumes")
    }
    pub fn containerd_state(&self) -> PathBuf {
        self.run.join("containerd")
    }
    pub fn containerd_socket(&self) -> PathBuf {
        self.run.join("containerd.sock")
    }
    /// The record of what `network::setup` changed on the machine, for `down` to undo.
    pub fn network_record(&self) -> PathBuf {
        self.root.join("network.json")
    }
    /// The kustomization that deploys `deploy/` with the locally built operator image.
    pub fn deploy_overlay(&self) -> PathBuf {
        self.root.join("deploy")
    }
    pub fn bin_cache(&self) -> PathBuf {
        self.cache.join("bin")
    }
    pub fn image_cache(&self) -> PathBuf {
        self.cache.join("images")
    }
    /// The file naming the images `up` imported (read by the test drivers).
    pub fn images_file(&self) -> PathBuf {
        self.root.join("images.json")
    }
}
