//! The Kubernetes platform: the operator on kube-rs.
//!
//! Split so that most of it is pure and tested without an API server:
//! - `builders`: pure functions from a cluster (and its status) to the k8s-openapi objects the
//!   operator creates: Secret, ConfigMap, Services, PodDisruptionBudget, one Pod and one PVC per
//!   instance, each instance manager's `InstanceConfig`;
//! - `roles`: which role label each pod should carry for a given status, and in which order to
//!   change them so that no two pods are ever selected by `<name>-rw`;
//! - `render`: `opengauss-operator render`, every object for a cluster file, offline;
//! - `platform`: the `Platform` the shared controller drives (inventory from owned Pods, create
//!   Pod + PVC, restart, status through the status subresource, Kubernetes Events);
//! - `certificates`: the cluster's certificate authority and each instance's server
//!   certificate, in Secrets, issued and renewed;
//! - `caches`: the watch caches of the pods, Services, ConfigMaps and budgets it manages;
//! - `reconcile`: the kube-rs reconcile function around `Controller::pass`;
//! - `lease`: leader election with a `coordination.k8s.io/v1` Lease;
//! - `run`: `opengauss-operator run`.

pub mod builders;
pub mod caches;
pub mod certificates;
pub mod credentials;
pub mod lease;
pub mod options;
pub mod platform;
pub mod reconcile;
pub mod render;
pub mod roles;
pub mod run;

pub use options::Options;

/// An error's text for logs and events: each level of its context, an API server's refusal
/// by its message alone (not the whole `Status` object).
pub fn api_error_text(e: &anyhow::Error) -> String {
    e.chain()
        .map(|level| match level.downcast_ref::<kube::Error>() {
            Some(kube::Error::Api(s)) => format!("{} ({})", s.message, s.reason),
            _ => level.to_string(),
        })
        .collect::<Vec<_>>()
        .join(": ")
}

/// The one field manager every server-side apply and patch of the operator uses.
pub const FIELD_MANAGER: &str = "opengauss-operator";
/// The name events are reported under.
pub const CONTROLLER_NAME: &str = "opengauss-operator";

/// Labels the operator puts on what it creates.
pub mod labels {
    /// The cluster an object belongs to.
    pub const CLUSTER: &str = "ha.opengauss.dev/cluster";
    /// The instance a Pod or PVC belongs to.
    pub const INSTANCE: &str = "ha.opengauss.dev/instance";
    /// `primary`, `standby` or `none`: what `<name>-rw` and `<name>-ro` select.
    pub const ROLE: &str = "ha.opengauss.dev/role";
    pub const NAME: &str = "app.kubernetes.io/name";
    pub const APP_INSTANCE: &str = "app.kubernetes.io/instance";
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    /// Value of `MANAGED_BY` on everything the operator creates.
    pub const MANAGER: &str = "opengauss-operator";
}

/// Annotations users may set on an `OpenGaussCluster`.
pub mod annotations {
    /// Planned switchover: the instance that should become primary. The operator removes the
    /// annotation once it has accepted or refused the request (see the cluster's events).
    pub const SWITCHOVER_TO: &str = "ha.opengauss.dev/switchover-to";
    /// Directory of the engine's programs inside the database image, for images laid out
    /// differently from the official ones.
    pub const BIN_DIR: &str = "ha.opengauss.dev/bin-dir";
    /// The database image's OS user id (and group id), for images whose database user is not
    /// the official image's.
    pub const RUN_AS_USER: &str = "ha.opengauss.dev/run-as-user";
    /// Set by the operator on what it creates: a hash of the definition the object was made
    /// from. A pod whose hash differs from its current definition's is replaced (rolling);
    /// a Service, ConfigMap or budget whose hash differs is applied again.
    pub const DEFINITION_HASH: &str = "ha.opengauss.dev/definition-hash";
}
