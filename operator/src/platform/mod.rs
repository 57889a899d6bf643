//! Where instances run. The controller asks a platform for its inventory and to create or
//! restart instances; everything else goes through the instance managers. Kubernetes-specific
//! code lives in `kubernetes/`, process-specific code in `local/`.

pub mod kubernetes;
pub mod local;

use std::collections::BTreeMap;

use crate::engine::Endpoint;
use crate::plan::PlatformState;

/// One instance as the platform sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformInstance {
    pub state: PlatformState,
    /// Where the database listens.
    pub endpoint: Endpoint,
    pub ha_port: u16,
    /// Base URL of the instance manager's API, once known.
    pub manager_url: Option<String>,
}

pub type Inventory = BTreeMap<String, PlatformInstance>;
