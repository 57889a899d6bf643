//! Where instances run. The controller asks a platform (the contract is
//! `controller::Platform`) for its inventory and to create, restart, recreate or delete
//! instances; everything else goes through the instance managers. Kubernetes-specific code
//! lives in `kubernetes/`, process-specific code in `local/`.

pub mod kubernetes;
pub mod local;
