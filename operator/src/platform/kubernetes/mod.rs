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
//! - `reconcile`: the kube-rs reconcile function around `Controller::pass`;
//! - `lease`: leader election with a `coordination.k8s.io/v1` Lease;
//! - `run`: `opengauss-operator run`.

pub mod builders;
pub mod credentials;
pub mod lease;
pub mod options;
pub mod platform;
pub mod reconcile;
pub mod render;
pub mod roles;
pub mod run;

pub use options::Options;

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
}
