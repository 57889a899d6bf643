//! The Kubernetes end-to-end suite: the operator deployed from `deploy/` on a real cluster, and
//! every scenario driven through kubectl and the database, as users do. `driver` says which
//! cluster (the project's one-node cluster or kind), `cluster` is one `OpenGaussCluster` under
//! test, `scenarios` are the tests' bodies, the same for every driver.

pub mod cluster;
pub mod driver;
pub mod scenarios;
pub mod tls;

pub use cluster::KubeCluster;
pub use driver::Driver;
