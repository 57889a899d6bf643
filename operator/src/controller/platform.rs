//! The contract between the controller and a platform: what the controller needs to know
//! (the inventory, the users' requests) and to have done (create, restart, recreate, delete
//! instances; persist the status; tell users what happened). Platforms only do I/O; every
//! decision, pacing included, is the controller's.

use std::collections::BTreeMap;
use std::future::Future;

use opengauss_crd::OpenGaussClusterStatus;

use crate::engine::Endpoint;
use crate::plan::{Event, PlatformState, UserRequests};

/// One instance as the platform sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformInstance {
    pub state: PlatformState,
    /// Where the database listens.
    pub endpoint: Endpoint,
    pub ha_port: u16,
    /// Base URL of the instance manager's API, once known.
    pub manager_url: Option<String>,
    /// The instance runs from an older definition than the cluster's now (a pod made before
    /// the image, resources or the operator changed): recreating it applies the new one.
    pub outdated: bool,
}

pub type Inventory = BTreeMap<String, PlatformInstance>;

/// What became of a user's request: accepted (and how), or refused (and why).
pub type RequestOutcome = Result<String, String>;

/// What the controller needs from a platform.
pub trait Platform: Sync {
    /// Every instance the platform knows of.
    fn inventory(&self) -> impl Future<Output = anyhow::Result<Inventory>> + Send;
    /// Creates an instance (its process or pod and its storage).
    fn create(&self, instance: &str) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Starts a dead instance again.
    fn restart(&self, instance: &str) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Replaces a running instance with one made from the current definition, keeping its
    /// data (the controller asks for it only when the instance may go down).
    fn recreate(&self, instance: &str) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Removes an instance the spec no longer asks for, with its data.
    fn delete(&self, instance: &str) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Persists the cluster's status; actions run only after this succeeded.
    fn save_status(&self, status: &OpenGaussClusterStatus)
    -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Tells users what happened.
    fn publish(&self, events: &[Event]) -> impl Future<Output = ()> + Send;
    /// Requests users made outside the spec (a planned switchover).
    fn requests(&self) -> impl Future<Output = UserRequests> + Send;
    /// Tells the requester what became of its request, and retires the request.
    fn acknowledge(&self, outcome: &RequestOutcome) -> impl Future<Output = anyhow::Result<()>> + Send;
}
