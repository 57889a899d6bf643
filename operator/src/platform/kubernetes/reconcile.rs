//! The kube-rs reconcile of one `OpenGaussCluster`: validate, make sure the cluster-level
//! objects exist (Secret, ConfigMap, Services, PodDisruptionBudget), run one pass of the shared
//! controller (observe, plan, persist status, act), then bring role labels and orphans in line
//! with the new status.

use std::collections::{BTreeMap, HashMap};
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
use super::caches::{self, Caches};
use super::certificates;
use super::credentials::Credentials;
use super::options::Options;
use super::platform::{ForeignStatus, KubePlatform, owned_by, truncate_note};
use super::{FIELD_MANAGER, annotations};
use crate::controller::Controller;

/// How often the cluster-level objects are applied again even when nothing changed, to repair
/// edits made behind the operator's back.
const REAPPLY_EVERY: Duration = Duration::from_secs(300);
/// Per-cluster state unused this long belongs to a deleted cluster.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// How long a reconcile waits for the watch caches' first listing.
const CACHE_SYNC: Duration = Duration::from_secs(60);
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
    /// The authority its controller trusts the managers' certificates by (`None`: plain HTTP).
    authority: Option<String>,
    /// Per cluster-level object (kind/name): the definition hash last applied, and when.
    applied: Mutex<BTreeMap<String, (String, Instant)>>,
    last_used: Mutex<Instant>,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub options: Options,
    pub recorder: Recorder,
    /// The controller's metrics, shared by every cluster's controller.
    pub metrics: Arc<crate::metrics::ControllerMetrics>,
    pub caches: Caches,
    clusters: tokio::sync::Mutex<HashMap<String, Arc<ClusterState>>>,
    /// Per cluster (by uid): the authority's certificate, when its certificates were last
    /// looked at, and for which spec (a change of instances or TLS settings looks again at once).
    certificates: Mutex<HashMap<String, CertificatesSeen>>,
}

struct CertificatesSeen {
    authority: String,
    spec: String,
    at: Instant,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("options", &self.options).finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(client: Client, options: Options, reporter: Reporter, caches: Caches) -> Self {
        let recorder = Recorder::new(client.clone(), reporter);
        Self {
            client,
            options,
            recorder,
            metrics: Default::default(),
            caches,
            clusters: Default::default(),
            certificates: Default::default(),
        }
    }

    /// The clusters this context keeps state for (by uid).
    pub async fn known_clusters(&self) -> Vec<String> {
        self.clusters.lock().await.keys().cloned().collect()
    }

    async fn forget(&self, uid: &str) {
        self.clusters.lock().await.remove(uid);
        self.certificates.lock().expect("lock").remove(uid);
    }

    /// With TLS, the cluster's authority (its certificate), after its certificates were
    /// brought up to date if they were not looked at recently: every instance of the spec has
    /// a valid pair before its pod is made. Issuing is told as an event.
    async fn certificates(&self, cluster: &OpenGaussCluster) -> anyhow::Result<Option<String>> {
        if !builders::tls_enabled(cluster) {
            return Ok(None);
        }
        let uid = cluster.metadata.uid.clone().context("the cluster has no uid")?;
        let spec = format!("{}/{:?}", cluster.spec.instances, cluster.spec.tls);
        if let Some(seen) = self.certificates.lock().expect("lock").get(&uid)
            && seen.spec == spec
            && seen.at.elapsed() < certificates::recheck_every(cluster)
        {
            return Ok(Some(seen.authority.clone()));
        }
        let certificates::Outcome { authority, issued, refused } =
            certificates::ensure(&self.client, cluster, &self.options).await?;
        // Supplied pairs that are wrong are told, not fatal: pods keep the pairs they have
        // (a manager never takes up a pair that would not serve), failover goes on.
        if !refused.is_empty() {
            let note = format!("supplied server certificates refused: {}", refused.join("; "));
            tracing::warn!(cluster = %cluster_name(cluster), namespace = %namespace(cluster), "{note}");
            publish(
                &self.recorder,
                &cluster.metadata,
                KubeEventType::Warning,
                "CertificateRefused",
                "CheckCertificates",
                &note,
            )
            .await;
        }
        // One event per issuing round: the recorder folds repeated reasons into one series, so
        // the note names every instance that got a new pair and why.
        if !issued.is_empty() {
            let list: Vec<String> =
                issued.iter().map(|(instance, reason)| format!("{instance} ({reason})")).collect();
            let note = format!("issued server certificates: {}", list.join(", "));
            tracing::info!(cluster = %cluster_name(cluster), namespace = %namespace(cluster), "{note}");
            publish(
                &self.recorder,
                &cluster.metadata,
                KubeEventType::Normal,
                "CertificateIssued",
                "IssueCertificate",
                &note,
            )
            .await;
        }
        self.certificates
            .lock()
            .expect("lock")
            .insert(uid, CertificatesSeen { authority: authority.clone(), spec, at: Instant::now() });
        Ok(Some(authority))
    }

    /// The cluster's state, made on first use: its credentials are read from (or first written
    /// to) its Secret, and a controller is set up with its API token, resuming from the status
    /// on the object.
    async fn state(
        &self,
        cluster: &Arc<OpenGaussCluster>,
        authority: Option<String>,
    ) -> anyhow::Result<Arc<ClusterState>> {
        let uid = cluster.metadata.uid.clone().context("the cluster has no uid")?;
        {
            let mut clusters = self.clusters.lock().await;
            clusters.retain(|_, s| s.last_used.lock().expect("lock").elapsed() < FORGET_AFTER);
            // TLS switched on or off, or a new authority: a controller whose client trusts it.
            clusters.retain(|id, s| *id != uid || s.authority == authority);
            if let Some(s) = clusters.get(&uid) {
                *s.last_used.lock().expect("lock") = Instant::now();
                return Ok(s.clone());
            }
        }
        // Outside the lock: the Secret's round trips must not hold up other clusters.
        let credentials = self.credentials(cluster).await?;
        let platform = KubePlatform::new(
            self.client.clone(),
            cluster.clone(),
            self.options.clone(),
            self.recorder.clone(),
            self.caches.clone(),
        );
        let status = cluster.status.clone().unwrap_or_default();
        let controller =
            Controller::new(platform, credentials.secrets.token.clone(), authority.as_deref(), status)?
                .with_metrics(self.metrics.clone());
        let state = Arc::new(ClusterState {
            controller,
            authority,
            applied: Mutex::default(),
            last_used: Mutex::new(Instant::now()),
        });
        Ok(self.clusters.lock().await.entry(uid).or_insert(state).clone())
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
        let credentials = Credentials::from_secret(&secret)?;
        credentials.check_for(cluster.spec.engine, &name)?;
        Ok(credentials)
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

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// How long an object applied by this process is not applied again while the watch cache
/// does not show it yet.
const APPLIED_GRACE: Duration = Duration::from_secs(10);

/// Whether `object` (desired, carrying its definition hash) must be applied: it is missing
/// from the cache or differs from what was applied, unless this process just applied it; and
/// in any case every `REAPPLY_EVERY`, to repair edits made behind the operator's back.
fn due<K>(state: &ClusterState, store: &kube::runtime::reflector::Store<K>, object: &K) -> bool
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let meta = object.meta();
    let (ns, name) = (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default());
    let hash = meta.annotations.as_ref().and_then(|a| a.get(annotations::DEFINITION_HASH)).cloned();
    let key = format!("{}/{name}", K::kind(&()));
    let cached_hash = caches::named(store, &ns, &name).and_then(|o| {
        o.meta().annotations.as_ref().and_then(|a| a.get(annotations::DEFINITION_HASH)).cloned()
    });
    match state.applied.lock().expect("lock").get(&key) {
        Some((h, at)) if Some(h) == hash.as_ref() && at.elapsed() < APPLIED_GRACE => false,
        Some((h, at)) if Some(h) == hash.as_ref() && cached_hash == hash => at.elapsed() > REAPPLY_EVERY,
        _ => cached_hash.is_none() || cached_hash != hash,
    }
}

/// Applies `object` if `due`, recording it.
async fn apply_if_due<K>(
    ctx: &Context,
    state: &ClusterState,
    store: &kube::runtime::reflector::Store<K>,
    object: &K,
) -> anyhow::Result<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + Serialize
        + std::fmt::Debug
        + 'static,
{
    if !due(state, store, object) {
        return Ok(());
    }
    let meta = object.meta();
    let (ns, name) = (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default());
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch(&name, &apply_params(), &Patch::Apply(object))
        .await
        .with_context(|| format!("applying {} {name}", K::kind(&())))?;
    let hash = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::DEFINITION_HASH))
        .cloned()
        .unwrap_or_default();
    state.applied.lock().expect("lock").insert(format!("{}/{name}", K::kind(&())), (hash, Instant::now()));
    Ok(())
}

/// Marks a desired object with the hash of its definition.
fn with_hash<K: Resource + Serialize>(mut object: K) -> K {
    let hash = builders::definition_hash(&object);
    object
        .meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(annotations::DEFINITION_HASH.into(), hash);
    object
}

/// Applies the ConfigMap, the Services and the PodDisruptionBudget (the Secret exists by now)
/// when one is missing or differs from what the cluster asks for; the watches on them bring
/// a reconcile as soon as one is deleted or edited.
async fn apply_cluster_objects(
    ctx: &Context,
    state: &ClusterState,
    cluster: &OpenGaussCluster,
) -> anyhow::Result<()> {
    let c = &ctx.caches;
    // The headless Service before any pod: peers find each other through it.
    apply_if_due(ctx, state, &c.config_maps, &with_hash(builders::config_map(cluster, &ctx.options))).await?;
    apply_if_due(ctx, state, &c.services, &with_hash(builders::headless_service(cluster))).await?;
    apply_if_due(ctx, state, &c.services, &with_hash(builders::rw_service(cluster))).await?;
    apply_if_due(ctx, state, &c.services, &with_hash(builders::ro_service(cluster))).await?;
    apply_if_due(ctx, state, &c.budgets, &with_hash(builders::pod_disruption_budget(cluster))).await?;
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
    let note = super::api_error_text(&error.0);
    tokio::spawn(async move {
        publish(&ctx.recorder, &meta, KubeEventType::Warning, "ReconcileFailed", "Reconcile", &note).await;
    });
    Action::requeue(ERROR_REQUEUE)
}

/// Publishes an event about the cluster `meta`; a failure is logged, never fatal.
async fn publish(
    recorder: &Recorder,
    meta: &kube::core::ObjectMeta,
    type_: KubeEventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let event = KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(truncate_note(note)),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &reference_to(meta)).await {
        tracing::warn!(error = %e, reason, "cannot publish an event");
    }
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
    // A merge patch of these fields alone: the rest of the status (the primary, a transition
    // in flight) stays as it was for when the object can be read again.
    let body = serde_json::json!({
        "status": { "phase": status.phase, "phaseReason": status.phase_reason, "conditions": status.conditions },
    });
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    api.patch_status(&name, &params, &Patch::Merge(&body))
        .await
        .with_context(|| format!("patching the status of {ns}/{name}"))?;
    publish(&ctx.recorder, meta, KubeEventType::Warning, "InvalidObject", "Validate", &message).await;
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
    if let Err(invalid) = validate(&cluster) {
        ctx.forget(&uid).await;
        return report_invalid(ctx, &cluster, &invalid).await;
    }
    // Decisions are made from the caches only once they hold a full listing.
    tokio::time::timeout(CACHE_SYNC, ctx.caches.wait_until_ready())
        .await
        .context("the watch caches did not fill within a minute")??;
    let authority = ctx.certificates(&cluster).await?;
    let state = ctx.state(&cluster, authority).await?;
    let platform = &state.controller.platform;
    platform.set_cluster(cluster.clone());
    apply_cluster_objects(ctx, &state, &cluster).await?;
    match state.controller.pass(&cluster).await {
        Ok(outcome) => {
            // Labels drift too (a pod recreated, an edit): bring them in line on every pass.
            platform.sync_role_labels(&outcome.plan.status).await?;
            Ok(Action::requeue(outcome.next_pass_in))
        }
        Err(e) if e.downcast_ref::<ForeignStatus>().is_some() => {
            // Another leader wrote: start again from what is on the server.
            tracing::warn!(cluster = %name, namespace = %ns, "{e:#}");
            ctx.forget(&uid).await;
            Ok(Action::requeue(ERROR_REQUEUE))
        }
        Err(e) => Err(e),
    }
}

/// The spec's problems, with those only Kubernetes has.
fn validate(cluster: &OpenGaussCluster) -> Result<(), InvalidCluster> {
    let mut errors = cluster.validate().err().map(|e| e.errors).unwrap_or_default();
    errors.extend(certificates::lifetime_problem(cluster));
    if errors.is_empty() { Ok(()) } else { Err(InvalidCluster { errors }) }
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
            ctx.options.clone(),
            ctx.recorder.clone(),
            ctx.caches.clone(),
        );
        platform.patch_status(&status).await?;
        platform.event(KubeEventType::Warning, "InvalidSpec", message.clone()).await;
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
    fn certificates_too_short_lived_for_the_kubelet_are_refused_on_kubernetes() {
        let yaml = |tls: &str| {
            format!(
                "apiVersion: ha.opengauss.dev/v1alpha1\nkind: OpenGaussCluster\nmetadata: {{name: pg}}\nspec:\n  instances: 3\n{tls}"
            )
        };
        let cluster = |tls: &str| serde_yaml_ng::from_str::<OpenGaussCluster>(&yaml(tls)).expect("cluster");
        let short = cluster("  tls: {certificateLifetimeSeconds: 299}\n");
        assert!(short.validate().is_ok(), "the local platform takes it");
        let invalid = validate(&short).expect_err("too short for Kubernetes");
        let text = invalid.to_string();
        assert!(
            text.contains("spec.tls.certificateLifetimeSeconds") && text.contains("at least 300"),
            "{text}"
        );
        assert!(validate(&cluster("  tls: {certificateLifetimeSeconds: 300}\n")).is_ok());
        assert!(
            validate(&cluster("  tls: {enabled: false, certificateLifetimeSeconds: 60}\n")).is_ok(),
            "no certificates"
        );
        assert!(validate(&cluster("")).is_ok(), "the default lifetime");
        // Alongside the spec's own problems, not instead of them.
        let both = validate(&cluster("  tls: {certificateLifetimeSeconds: 60}\n  fencedInstances: [nope]\n"));
        assert_eq!(both.map_err(|e| e.errors.len()), Err(2));
    }
}
