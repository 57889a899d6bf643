//! The kube-rs reconcile of one `OpenGaussCluster`: validate, make sure the cluster-level
//! objects exist (Secret, ConfigMap, Services, PodDisruptionBudget), run one pass of the shared
//! controller (observe, plan, persist status, act), then bring role labels and orphans in line
//! with the new status.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::DeserializeGuard;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType as KubeEventType, Recorder, Reporter};
use kube::{Client, Resource};
use opengauss_crd::{InvalidCluster, OpenGaussCluster, OpenGaussClusterStatus, Phase};
use serde::Serialize;

use super::builders::{self, cluster_name, namespace};
use super::credentials::Credentials;
use super::options::Options;
use super::platform::{KubePlatform, owned_by};
use super::{FIELD_MANAGER, annotations};
use crate::controller::Controller;
use crate::plan::UserRequests;

/// How often the cluster-level objects are applied again even when nothing changed, to repair
/// edits made behind the operator's back.
const REAPPLY_EVERY: Duration = Duration::from_secs(300);
/// Per-cluster state unused this long belongs to a deleted cluster.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Retry delay after a failed reconcile.
pub const ERROR_REQUEUE: Duration = Duration::from_secs(2);

/// A failed reconcile.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct ReconcileError(pub anyhow::Error);

impl From<anyhow::Error> for ReconcileError {
    fn from(e: anyhow::Error) -> Self {
        Self(e)
    }
}

/// What one cluster keeps between reconciles.
struct ClusterState {
    controller: Controller<KubePlatform>,
    probe_timeout: Duration,
    /// Hash of the cluster-level objects last applied, and when.
    applied: Mutex<Option<(u64, Instant)>>,
    last_used: Mutex<Instant>,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub options: Options,
    pub recorder: Recorder,
    /// The controller's metrics, shared by every cluster's controller.
    pub metrics: Arc<crate::metrics::ControllerMetrics>,
    clusters: tokio::sync::Mutex<HashMap<String, Arc<ClusterState>>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("options", &self.options).finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(client: Client, options: Options, reporter: Reporter) -> Self {
        let recorder = Recorder::new(client.clone(), reporter);
        Self { client, options, recorder, metrics: Default::default(), clusters: Default::default() }
    }

    /// The clusters this context keeps state for (by uid).
    pub async fn known_clusters(&self) -> Vec<String> {
        self.clusters.lock().await.keys().cloned().collect()
    }

    async fn forget(&self, uid: &str) {
        self.clusters.lock().await.remove(uid);
    }

    /// The cluster's state, made on first use: its credentials are read from (or first written
    /// to) its Secret, and a controller is set up with its API token.
    async fn state(&self, cluster: &Arc<OpenGaussCluster>) -> anyhow::Result<Arc<ClusterState>> {
        let uid = cluster.metadata.uid.clone().context("the cluster has no uid")?;
        let timeout = Duration::from_millis(u64::from(cluster.spec.failover.probe_timeout_milliseconds));
        let mut clusters = self.clusters.lock().await;
        clusters.retain(|_, s| s.last_used.lock().expect("lock").elapsed() < FORGET_AFTER);
        if let Some(s) = clusters.get(&uid)
            && s.probe_timeout == timeout
        {
            *s.last_used.lock().expect("lock") = Instant::now();
            return Ok(s.clone());
        }
        let credentials = self.credentials(cluster).await?;
        let status = clusters
            .get(&uid)
            .map(|s| s.controller.platform.status())
            .unwrap_or_else(|| cluster.status.clone().unwrap_or_default());
        let platform = KubePlatform::new(
            self.client.clone(),
            cluster.clone(),
            status,
            self.options.clone(),
            self.recorder.clone(),
        );
        let controller = Controller::new(platform, credentials.secrets.token.clone(), timeout)?
            .with_metrics(self.metrics.clone());
        let state = Arc::new(ClusterState {
            controller,
            probe_timeout: timeout,
            applied: Mutex::new(None),
            last_used: Mutex::new(Instant::now()),
        });
        clusters.insert(uid, state.clone());
        Ok(state)
    }

    /// Reads the cluster's credentials, creating its Secret with fresh ones the first time.
    /// An existing Secret is never rewritten: the databases were initialised with it.
    async fn credentials(&self, cluster: &OpenGaussCluster) -> anyhow::Result<Credentials> {
        let name = builders::secret_name(cluster_name(cluster));
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace(cluster));
        let existing = api.get_opt(&name).await.with_context(|| format!("reading Secret {name}"))?;
        let secret = match existing {
            Some(s) => s,
            // New passwords would not match the ones the databases were initialised with.
            None if cluster.status.as_ref().is_some_and(|s| s.initialized) => anyhow::bail!(
                "Secret {name} is missing but the cluster was initialised with its credentials: \
                 restore it (from a backup of the Secret) instead of letting new ones be generated"
            ),
            None => {
                let fresh = builders::secret(cluster, &Credentials::generate(cluster.spec.engine));
                let pp = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
                match api.create(&pp, &fresh).await {
                    Ok(_) => fresh,
                    // Created meanwhile: use that one.
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        api.get(&name).await.with_context(|| format!("reading Secret {name}"))?
                    }
                    Err(e) => return Err(e).with_context(|| format!("creating Secret {name}")),
                }
            }
        };
        if let Some(uid) = &cluster.metadata.uid
            && secret.metadata.uid.is_some()
            && !owned_by(&secret.metadata, uid)
        {
            tracing::warn!(secret = %name, "the cluster's Secret is not owned by the cluster; using it anyway");
        }
        Ok(Credentials::from_secret(&secret)?)
    }
}

/// The status of a cluster whose object or spec is invalid: nothing is created or changed
/// until it is fixed.
pub fn invalid_status(
    previous: &OpenGaussClusterStatus,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> OpenGaussClusterStatus {
    let mut status = previous.clone();
    status.phase = Some(Phase::InvalidSpec);
    status.phase_reason = Some(message.to_string());
    status.observed_generation = generation;
    for (type_, reason) in [("ValidSpec", "InvalidSpec"), ("Ready", "InvalidSpec")] {
        let since = match previous.condition(type_) {
            Some(c) if c.status == "False" => c.last_transition_time.clone(),
            _ => Time(now),
        };
        let condition = Condition {
            type_: type_.into(),
            status: "False".into(),
            reason: reason.into(),
            message: message.to_string(),
            observed_generation: generation,
            last_transition_time: since,
        };
        match status.conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(c) => *c = condition,
            None => status.conditions.push(condition),
        }
    }
    status
}

fn hash_json<T: Serialize>(value: &T) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(value).unwrap_or_default().hash(&mut h);
    h.finish()
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn apply<K>(client: &Client, ns: &str, object: &K) -> anyhow::Result<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.patch(&name, &apply_params(), &Patch::Apply(object))
        .await
        .with_context(|| format!("applying {} {name}", K::kind(&())))?;
    Ok(())
}

/// Applies the ConfigMap, the Services and the PodDisruptionBudget (the Secret exists by now)
/// when they changed, on the first pass of this process, and every few minutes.
async fn apply_cluster_objects(
    ctx: &Context,
    state: &ClusterState,
    cluster: &OpenGaussCluster,
) -> anyhow::Result<()> {
    let opts = &ctx.options;
    let config_map = builders::config_map(cluster, opts);
    let headless = builders::headless_service(cluster);
    let rw = builders::rw_service(cluster);
    let ro = builders::ro_service(cluster);
    let pdb = builders::pod_disruption_budget(cluster);
    let hash = hash_json(&(&config_map, &headless, &rw, &ro, &pdb));
    let due = match *state.applied.lock().expect("lock") {
        Some((h, at)) => h != hash || at.elapsed() > REAPPLY_EVERY,
        None => true,
    };
    if !due {
        return Ok(());
    }
    let ns = namespace(cluster);
    let client = &ctx.client;
    // The headless Service before any pod: peers find each other through it.
    apply(client, ns, &config_map).await?;
    apply(client, ns, &headless).await?;
    apply(client, ns, &rw).await?;
    apply(client, ns, &ro).await?;
    apply(client, ns, &pdb).await?;
    *state.applied.lock().expect("lock") = Some((hash, Instant::now()));
    Ok(())
}

/// Reconciles one cluster: the function given to the kube-rs controller.
pub async fn reconcile(
    object: Arc<DeserializeGuard<OpenGaussCluster>>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    match &object.0 {
        Ok(cluster) => Ok(reconcile_cluster(Arc::new(cluster.clone()), &ctx).await?),
        Err(invalid) => {
            report_malformed(&ctx, invalid).await?;
            Ok(Action::await_change())
        }
    }
}

/// After a failed reconcile: log, tell the cluster's users, try again soon.
pub fn error_policy(
    object: Arc<DeserializeGuard<OpenGaussCluster>>,
    error: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    let meta = kube::Resource::meta(object.as_ref()).clone();
    let name = meta.name.clone().unwrap_or_default();
    tracing::warn!(cluster = %name, namespace = meta.namespace.as_deref().unwrap_or(""), error = %error, "reconcile failed");
    let reference = reference_to(&meta);
    let note = format!("{error}");
    tokio::spawn(async move {
        let event = KubeEvent {
            type_: KubeEventType::Warning,
            reason: "ReconcileFailed".into(),
            note: Some(truncate(&note, 1000)),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::debug!(error = %e, "cannot publish ReconcileFailed");
        }
    });
    Action::requeue(ERROR_REQUEUE)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn reference_to(meta: &kube::core::ObjectMeta) -> ObjectReference {
    ObjectReference {
        api_version: Some(opengauss_crd::API_VERSION.into()),
        kind: Some(opengauss_crd::KIND.into()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..ObjectReference::default()
    }
}

/// An object that does not even deserialise (a schema change, a hand-edited object): report it
/// on the object, create nothing, and keep watching the others.
async fn report_malformed(ctx: &Context, invalid: &InvalidObject) -> Result<(), ReconcileError> {
    let meta = &invalid.metadata;
    let name = meta.name.clone().unwrap_or_default();
    let ns = meta.namespace.clone().unwrap_or_default();
    let message = format!("the object cannot be read: {}", invalid.error);
    tracing::warn!(cluster = %name, namespace = %ns, "{message}");
    let status =
        invalid_status(&OpenGaussClusterStatus::default(), &message, meta.generation, Timestamp::now());
    let api: Api<DeserializeGuard<OpenGaussCluster>> = Api::namespaced(ctx.client.clone(), &ns);
    let body = serde_json::json!({
        "apiVersion": opengauss_crd::API_VERSION,
        "kind": opengauss_crd::KIND,
        "status": { "phase": status.phase, "phaseReason": status.phase_reason, "conditions": status.conditions },
    });
    api.patch_status(&name, &apply_params(), &Patch::Apply(&body))
        .await
        .with_context(|| format!("patching the status of {ns}/{name}"))?;
    let event = KubeEvent {
        type_: KubeEventType::Warning,
        reason: "InvalidObject".into(),
        note: Some(truncate(&message, 1000)),
        action: "Validate".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &reference_to(meta)).await {
        tracing::warn!(error = %e, "cannot publish InvalidObject");
    }
    Ok(())
}

async fn reconcile_cluster(cluster: Arc<OpenGaussCluster>, ctx: &Context) -> anyhow::Result<Action> {
    let name = cluster_name(&cluster).to_string();
    let ns = namespace(&cluster).to_string();
    let uid = cluster.metadata.uid.clone().unwrap_or_default();
    if cluster.metadata.deletion_timestamp.is_some() {
        // Everything the cluster owns is deleted by the garbage collector.
        tracing::info!(cluster = %name, namespace = %ns, "cluster deleted; its objects go with it");
        ctx.forget(&uid).await;
        return Ok(Action::await_change());
    }
    if let Err(invalid) = cluster.validate() {
        ctx.forget(&uid).await;
        return report_invalid(ctx, &cluster, &invalid).await;
    }
    let state = ctx.state(&cluster).await?;
    let platform = &state.controller.platform;
    platform.set_cluster(cluster.clone());
    apply_cluster_objects(ctx, &state, &cluster).await?;

    let status = platform.status();
    let requests = UserRequests {
        switchover_to: cluster
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(annotations::SWITCHOVER_TO))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()),
    };
    let outcome = state.controller.pass(&cluster, &status, &requests).await?;
    let plan = outcome.plan;
    for (action, why) in &outcome.failed_actions {
        platform
            .event(
                KubeEventType::Warning,
                "ActionFailed",
                truncate(&format!("{}: {why}", action.instance()), 1000),
            )
            .await;
    }
    if plan.request_outcome.is_some() {
        // The request was accepted or refused (the plan's events say which): it is done.
        let api: Api<OpenGaussCluster> = Api::namespaced(ctx.client.clone(), &ns);
        let patch =
            serde_json::json!({ "metadata": { "annotations": { annotations::SWITCHOVER_TO: null } } });
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
        api.patch(&name, &params, &Patch::Merge(&patch))
            .await
            .with_context(|| format!("removing the {} annotation", annotations::SWITCHOVER_TO))?;
    }
    platform.sync_role_labels(&plan.status).await?;
    let interval = Duration::from_millis(u64::from(cluster.spec.failover.probe_interval_milliseconds));
    let busy = plan.urgent || plan.status.phase != Some(Phase::Healthy);
    Ok(Action::requeue(if busy { interval.min(Duration::from_millis(500)) } else { interval }))
}

async fn report_invalid(
    ctx: &Context,
    cluster: &OpenGaussCluster,
    invalid: &InvalidCluster,
) -> anyhow::Result<Action> {
    let previous = cluster.status.clone().unwrap_or_default();
    let message = invalid.to_string();
    let status = invalid_status(&previous, &message, cluster.metadata.generation, Timestamp::now());
    if previous != status {
        let platform = KubePlatform::new(
            ctx.client.clone(),
            Arc::new(cluster.clone()),
            previous,
            ctx.options.clone(),
            ctx.recorder.clone(),
        );
        platform.patch_status(&status).await?;
        platform.event(KubeEventType::Warning, "InvalidSpec", truncate(&message, 1000)).await;
    }
    // A fixed spec is a new generation, which reconciles again.
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_status_keeps_the_transition_time() {
        let t0 = Timestamp::UNIX_EPOCH;
        let t1 = t0 + k8s_openapi::jiff::SignedDuration::from_secs(60);
        let first = invalid_status(&OpenGaussClusterStatus::default(), "bad", Some(1), t0);
        assert_eq!(first.phase, Some(Phase::InvalidSpec));
        let cond = first.condition("ValidSpec").expect("condition");
        assert_eq!((cond.status.as_str(), cond.reason.as_str()), ("False", "InvalidSpec"));
        let again = invalid_status(&first, "bad", Some(1), t1);
        assert_eq!(again, first, "nothing changed, nothing to write");
        let other = invalid_status(&first, "worse", Some(2), t1);
        assert_eq!(other.condition("ValidSpec").expect("c").last_transition_time, Time(t0));
        assert_eq!(other.phase_reason.as_deref(), Some("worse"));
    }

    #[test]
    fn long_notes_are_cut_on_a_character_boundary() {
        let s = "é".repeat(600);
        let t = truncate(&s, 1001);
        assert!(t.ends_with("...") && t.len() <= 1004);
    }
}
