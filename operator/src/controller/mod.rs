//! The reconcile loop shared by both platforms: observe (platform inventory and every instance
//! manager's report), plan (pure), persist the new status, then act. One `Controller` per
//! cluster keeps what the decisions need between passes (the last status, which instances
//! were silent, since when this process watches) and decides the pace; a platform's own loop
//! only calls `pass` and waits `next_pass_in`.

pub mod pacing;
pub mod platform;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use futures::future::join_all;
use k8s_openapi::jiff::Timestamp;
use opengauss_crd::{OpenGaussCluster, OpenGaussClusterStatus};

pub use platform::{Inventory, Platform, PlatformInstance, RequestOutcome};

use crate::instance::client::{ManagerClient, Submitted};
use crate::metrics::ControllerMetrics;
use crate::plan::{self, Action, Event, Observation, Observed, Plan, PlatformState};

#[derive(Debug)]
pub struct Controller<P> {
    pub platform: P,
    client: ManagerClient,
    watching_since: Timestamp,
    silent: Mutex<BTreeSet<String>>,
    /// When this controller last sent each instance a lease renewal (see `lease`), on its own
    /// monotonic clock.
    renewed: Mutex<std::collections::BTreeMap<String, std::time::Instant>>,
    /// When this controller started (its silence clocks start here at the earliest).
    started: std::time::Instant,
    /// The status as last decided (and saved).
    status: Mutex<OpenGaussClusterStatus>,
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
    /// When to look at the cluster again.
    pub next_pass_in: Duration,
}

impl<P: Platform> Controller<P> {
    /// A controller for one cluster, resuming from `status` (as last persisted).
    /// With `authority` (PEM), managers are reached over HTTPS and checked against it.
    pub fn new(
        platform: P,
        token: String,
        authority: Option<&str>,
        status: OpenGaussClusterStatus,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            platform,
            client: ManagerClient::new(token, authority)?,
            watching_since: Timestamp::now(),
            silent: Default::default(),
            renewed: Default::default(),
            started: std::time::Instant::now(),
            status: Mutex::new(status),
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

    /// The status as last decided.
    pub fn status(&self) -> OpenGaussClusterStatus {
        self.status.lock().expect("status lock").clone()
    }

    /// Reads every instance: the platform's view, the manager's report, and for an instance
    /// whose manager is silent, whether its database port still answers.
    pub async fn observe(&self, inventory: &Inventory, cluster: &OpenGaussCluster) -> Observation {
        let silent = self.silent.lock().expect("silent lock").clone();
        let (normal, quick) =
            (pacing::probe_timeout(&cluster.spec), pacing::silent_probe_timeout(&cluster.spec));
        let probes = inventory.iter().map(|(name, inst)| {
            let quiet = silent.contains(name);
            let timeout = if quiet { quick } else { normal };
            async move {
                // Only an instance heard from last pass gets its lease renewed: then the last
                // renewal that may have reached a silent primary is one this controller knows.
                let renew = !quiet;
                let renewing_now = || {
                    self.renewed.lock().expect("renewed lock").insert(name.clone(), std::time::Instant::now())
                };
                if renew && inst.manager_url.is_some() && inst.state == PlatformState::Running {
                    renewing_now();
                }
                let mut report = match (&inst.manager_url, inst.state) {
                    (Some(url), PlatformState::Running) => self.client.status(url, timeout, renew).await.ok(),
                    _ => None,
                };
                // Heard again after a silence: renew at once rather than a pass later, or a
                // primary back from a short cut could reach the end of its lease meanwhile.
                if let (false, Some(_), Some(url)) = (renew, &report, &inst.manager_url) {
                    renewing_now();
                    if let Ok(fresh) = self.client.status(url, timeout, true).await {
                        report = Some(fresh);
                    }
                }
                let unrenewed_for = self
                    .renewed
                    .lock()
                    .expect("renewed lock")
                    .get(name)
                    .copied()
                    .unwrap_or(self.started)
                    .max(self.started)
                    .elapsed();
                let server_answers = report.is_none() && tcp_answers(inst, timeout).await;
                let observed = Observed {
                    platform: inst.state,
                    endpoint: inst.endpoint.clone(),
                    ha_port: inst.ha_port,
                    outdated: inst.outdated,
                    manager_url: inst.manager_url.clone(),
                    unrenewed_for,
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

    /// One reconcile pass over `cluster`.
    pub async fn pass(&self, cluster: &OpenGaussCluster) -> anyhow::Result<PassOutcome> {
        let name = cluster.metadata.name.clone().unwrap_or_default();
        let outcome = self.pass_inner(&name, cluster).await;
        match &outcome {
            Ok(o) => self.metrics.record_failed_actions(&name, o.failed_actions.len()),
            Err(e) => self.metrics.record_error(&name, e.kind),
        }
        outcome.map_err(|e| e.error)
    }

    async fn pass_inner(&self, name: &str, cluster: &OpenGaussCluster) -> Result<PassOutcome, PassError> {
        let requests = self.platform.requests().await;
        let inventory = self
            .platform
            .inventory()
            .await
            .context("reading the platform's inventory")
            .map_err(|error| PassError { kind: "inventory", error })?;
        let observed = self.observe(&inventory, cluster).await;
        let status = self.status();
        let plan = plan::decide(plan::Input {
            cluster: name,
            generation: cluster.metadata.generation,
            spec: &cluster.spec,
            status: &status,
            observed: &observed,
            requests: &requests,
            now: Timestamp::now(),
            watching_since: self.watching_since,
        });
        if plan.status != status {
            // Intent first: if it cannot be recorded, nothing is done.
            self.platform
                .save_status(&plan.status)
                .await
                .context("saving the cluster status")
                .map_err(|error| PassError { kind: "status", error })?;
        }
        *self.status.lock().expect("status lock") = plan.status.clone();
        self.metrics.record_decision(name, &status, &plan.status);
        self.platform.publish(&plan.events).await;
        if let Some(outcome) = &plan.request_outcome
            && let Err(e) = self.platform.acknowledge(outcome).await
        {
            let why = format!("the request was handled but could not be retired: {e:#}");
            self.platform.publish(&[Event::warning("RequestNotRetired", why)]).await;
        }
        crate::failpoint::hit("before-actions", &plan.status);
        let results = join_all(plan.actions.iter().map(|a| self.act(a, &inventory, cluster))).await;
        crate::failpoint::hit("after-actions", &plan.status);
        let failed_actions: Vec<(Action, String)> = plan
            .actions
            .iter()
            .zip(results)
            .filter_map(|(a, r)| r.err().map(|e| (a.clone(), format!("{e:#}"))))
            .collect();
        let failures: Vec<Event> = failed_actions
            .iter()
            .map(|(a, why)| Event::warning("ActionFailed", format!("{}: {why}", a.instance())))
            .collect();
        self.platform.publish(&failures).await;
        let next_pass_in = pacing::next_pass_in(&plan, &cluster.spec);
        Ok(PassOutcome { plan, failed_actions, next_pass_in })
    }

    async fn act(
        &self,
        action: &Action,
        inventory: &Inventory,
        cluster: &OpenGaussCluster,
    ) -> anyhow::Result<()> {
        match action {
            Action::Create { instance } => self.platform.create(instance).await,
            Action::Restart { instance } => self.platform.restart(instance).await,
            Action::Recreate { instance } => self.platform.recreate(instance).await,
            Action::Delete { instance } => self.platform.delete(instance).await,
            Action::Send { instance, request } => {
                let url = inventory
                    .get(instance)
                    .and_then(|i| i.manager_url.clone())
                    .with_context(|| format!("{instance}'s manager address is not known yet"))?;
                match self.client.submit(&url, request, pacing::probe_timeout(&cluster.spec)).await? {
                    Submitted::Accepted(_) | Submitted::Busy(_) => Ok(()),
                    Submitted::Refused(why) => {
                        anyhow::bail!("{instance} refused {:?}: {why}", request.kind())
                    }
                }
            }
        }
    }
}

/// `host` as an absolute DNS name when it is a qualified one: `og-0.og-headless.ns.svc.cluster.local`
/// has fewer dots than a pod's `ndots:5`, so the resolver would first try it under every search
/// domain (each an NXDOMAIN round trip) before asking for the name itself.
fn absolute_name(host: &str) -> String {
    let qualified_name =
        host.contains('.') && !host.ends_with('.') && host.parse::<std::net::IpAddr>().is_err();
    if qualified_name { format!("{host}.") } else { host.to_string() }
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
    let addr = (absolute_name(&inst.endpoint.host), inst.endpoint.port);
    let exchange = async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(&SSL_REQUEST).await?;
        let mut reply = [0u8; 1];
        stream.read_exact(&mut reply).await?;
        Ok::<_, std::io::Error>(matches!(reply[0], b'S' | b'N'))
    };
    matches!(tokio::time::timeout(timeout, exchange).await, Ok(Ok(true)))
}

#[cfg(test)]
mod tests {
    use super::absolute_name;

    #[test]
    fn qualified_names_are_made_absolute_and_nothing_else() {
        assert_eq!(
            absolute_name("og-0.og-headless.ns.svc.cluster.local"),
            "og-0.og-headless.ns.svc.cluster.local."
        );
        assert_eq!(
            absolute_name("og-0.og-headless.ns.svc.cluster.local."),
            "og-0.og-headless.ns.svc.cluster.local."
        );
        assert_eq!(absolute_name("10.244.0.7"), "10.244.0.7");
        assert_eq!(absolute_name("fd00::7"), "fd00::7");
        assert_eq!(absolute_name("localhost"), "localhost");
    }
}
