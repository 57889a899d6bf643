//! Settings of the operator that shape the objects it builds.

/// The operator's image when none is configured: the one `make image` builds and the kind
/// quick start loads.
pub const DEFAULT_OPERATOR_IMAGE: &str = "opengauss-operator:dev";
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// Where each instance manager's HTTP API listens inside its pod.
pub const MANAGER_PORT: u16 = 8000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The image holding the `opengauss-operator` binary, copied into every database pod by an
    /// init container.
    pub operator_image: String,
    /// The cluster's DNS domain: per-pod names are `<pod>.<cluster>-headless.<ns>.svc.<domain>`.
    pub cluster_domain: String,
    /// The instance managers' API port.
    pub manager_port: u16,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            operator_image: DEFAULT_OPERATOR_IMAGE.to_string(),
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.to_string(),
            manager_port: MANAGER_PORT,
        }
    }
}
