//! The reconcile loop shared by both platforms: observe (platform inventory and every instance
//! manager's report), plan (pure), persist the new status, then act.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use futures::future::join_all;
use k8s_openapi::jiff::Timestamp;
use opengauss_crd::{OpenGaussCluster, OpenGaussClusterStatus};

use crate::instance::client::{ManagerClient, Submitted};
use crate::metrics::ControllerMetrics;
use crate::plan::{self, Action, Event, Observation, Observed, Plan, PlatformState, UserRequests};
use crate::platform::{Inventory, PlatformInstance};

/// What the controller needs from a platform.
pub trait Platform: Sync {
    /// Every instance the platform knows of.
    fn inventory(&self) -> impl Future<Output = anyhow::Result<Inventory>> + Send;
    /// Creates an instance (its process or pod and its storage).
    fn create(&self, instance: &str) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Starts a dead instance again.
    fn restart(&self, instance: &str) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Removes an instance the spec no longer asks for, with its data.
    fn delete(&self, instance: &str) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Persists the cluster's status; actions run only after this succeeded.
    fn save_status(&self, status: &OpenGaussClusterStatus)
    -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Tells users what happened.
    fn publish(&self, events: &[Event]) -> impl Future<Output = ()> + Send;
}

/// Probe time-out for an instance that did not answer last time: a frozen or vanished
/// instance must not hold every pass up by the full time-out.
const SILENT_PROBE_TIMEOUT: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub struct Controller<P> {
    pub platform: P,
    client: ManagerClient,
    /// Client with the short time-out for instances that were silent last pass.
    quick_client: ManagerClient,
    watching_since: Timestamp,
    silent: std::sync::Mutex<std::collections::BTreeSet<String>>,
    metrics: std::sync::Arc<ControllerMetrics>,
}

/// A pass that failed before acting, and at which stage.
#[derive(Debug)]
struct PassError {
    kind: &'static str,
    error: anyhow::Error,
}

/// What one pass did.
#[derive(Debug)]
pub struct PassOutcome {
    pub plan: Plan,
    /// Actions that could not be carried out, with why.
    pub failed_actions: Vec<(Action, String)>,
}

impl<P: Platform> Controller<P> {
    pub fn new(platform: P, token: String, probe_timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            platform,
            client: ManagerClient::new(token.clone(), probe_timeout)?,
            quick_client: ManagerClient::new(token, probe_timeout.min(SILENT_PROBE_TIMEOUT))?,
            watching_since: Timestamp::now(),
            silent: Default::default(),
            metrics: Default::default(),
        })
    }

    /// Records into `metrics` (shared by the controllers of several clusters).
    pub fn with_metrics(mut self, metrics: std::sync::Arc<ControllerMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn metrics(&self) -> &std::sync::Arc<ControllerMetrics> {
        &self.metrics
    }

    /// Reads every instance: the platform's view, the manager's report, and for an instance
    /// whose manager is silent, whether its database port still answers.
    pub async fn observe(&self, inventory: &Inventory, probe_timeout: Duration) -> Observation {
        let silent = self.silent.lock().expect("silent lock").clone();
        let probes = inventory.iter().map(|(name, inst)| {
            let quick = silent.contains(name);
            async move {
                let client = if quick { &self.quick_client } else { &self.client };
                let timeout = if quick { probe_timeout.min(SILENT_PROBE_TIMEOUT) } else { probe_timeout };
                let report = match (&inst.manager_url, inst.state) {
                    (Some(url), PlatformState::Running) => client.status(url).await.ok(),
                    _ => None,
                };
                let server_answers = report.is_none() && tcp_answers(inst, timeout).await;
                let observed = Observed {
                    platform: inst.state,
                    endpoint: inst.endpoint.clone(),
                    ha_port: inst.ha_port,
                    report,
                    server_answers,
                };
                (name.clone(), observed)
            }
        });
        let observation = Observation { instances: join_all(probes).await.into_iter().collect() };
        *self.silent.lock().expect("silent lock") = observation
            .instances
            .iter()
            .filter(|(_, o)| o.report.is_none())
            .map(|(n, _)| n.clone())
            .collect();
        observation
    }

    /// One reconcile pass.
    pub async fn pass(
        &self,
        cluster: &OpenGaussCluster,
        status: &OpenGaussClusterStatus,
        requests: &UserRequests,
    ) -> anyhow::Result<PassOutcome> {
        let name = cluster.metadata.name.clone().unwrap_or_default();
        let outcome = self.pass_inner(&name, cluster, status, requests).await;
        match &outcome {
            Ok(o) => self.metrics.record_failed_actions(&name, o.failed_actions.len()),
            Err(e) => self.metrics.record_error(&name, e.kind),
        }
        outcome.map_err(|e| e.error)
    }

    async fn pass_inner(
        &self,
        name: &str,
        cluster: &OpenGaussCluster,
        status: &OpenGaussClusterStatus,
        requests: &UserRequests,
    ) -> Result<PassOutcome, PassError> {
        let timeout = Duration::from_millis(u64::from(cluster.spec.failover.probe_timeout_milliseconds));
        let inventory = self
            .platform
            .inventory()
            .await
            .context("reading the platform's inventory")
            .map_err(|error| PassError { kind: "inventory", error })?;
        let observed = self.observe(&inventory, timeout).await;
        let plan = plan::decide(plan::Input {
            cluster: name,
            generation: cluster.metadata.generation,
            spec: &cluster.spec,
            status,
            observed: &observed,
            requests,
            now: Timestamp::now(),
            watching_since: self.watching_since,
        });
        if plan.status != *status {
            // Intent first: if it cannot be recorded, nothing is done.
            self.platform
                .save_status(&plan.status)
                .await
                .context("saving the cluster status")
                .map_err(|error| PassError { kind: "status", error })?;
        }
        self.metrics.record_decision(name, status, &plan.status);
        self.platform.publish(&plan.events).await;
        crate::failpoint::hit("before-actions", &plan.status);
        let results = join_all(plan.actions.iter().map(|a| self.act(a, &inventory))).await;
        crate::failpoint::hit("after-actions", &plan.status);
        let failed_actions = plan
            .actions
            .iter()
            .zip(results)
            .filter_map(|(a, r)| r.err().map(|e| (a.clone(), format!("{e:#}"))))
            .collect();
        Ok(PassOutcome { plan, failed_actions })
    }

    async fn act(&self, action: &Action, inventory: &Inventory) -> anyhow::Result<()> {
        match action {
            Action::Create { instance } => self.platform.create(instance).await,
            Action::Restart { instance } => self.platform.restart(instance).await,
            Action::Delete { instance } => self.platform.delete(instance).await,
            Action::Send { instance, request } => {
                let url = inventory
                    .get(instance)
                    .and_then(|i| i.manager_url.clone())
                    .with_context(|| format!("{instance}'s manager address is not known yet"))?;
                match self.client.submit(&url, request).await? {
                    Submitted::Accepted(_) | Submitted::Busy(_) => Ok(()),
                    Submitted::Refused(why) => {
                        anyhow::bail!("{instance} refused {:?}: {why}", request.kind())
                    }
                }
            }
        }
    }
}

/// Whether the database server itself answers: a TCP connection alone is not enough (the
/// kernel accepts connections for a frozen server), so it must also reply to an SSL request,
/// which both engines answer with one byte before authentication.
async fn tcp_answers(inst: &PlatformInstance, timeout: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if inst.state == PlatformState::Missing {
        return false;
    }
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let addr = (inst.endpoint.host.clone(), inst.endpoint.port);
    let exchange = async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(&SSL_REQUEST).await?;
        let mut reply = [0u8; 1];
        stream.read_exact(&mut reply).await?;
        Ok::<_, std::io::Error>(matches!(reply[0], b'S' | b'N'))
    };
    matches!(tokio::time::timeout(timeout, exchange).await, Ok(Ok(true)))
}
