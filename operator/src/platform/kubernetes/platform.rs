//! The `Platform` the shared controller drives on Kubernetes: instances are the cluster's owned
//! Pods (each with its PVC), read from the watch cache; status goes through the status
//! subresource, written against the resource version this process last saw so that a stale
//! leader cannot overwrite a newer leader's status; what happens is told through Kubernetes
//! Events.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event as KubeEvent, EventType as KubeEventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use opengauss_crd::names::instance_ordinal;
use opengauss_crd::{OpenGaussCluster, OpenGaussClusterStatus};

use super::builders::{self, cluster_selector};
use super::caches::{self, Caches};
use super::options::Options;
use super::roles::{self, RoleLabel};
use super::{FIELD_MANAGER, annotations, labels};
use crate::controller::{Inventory, Platform, PlatformInstance, RequestOutcome};
use crate::engine::Endpoint;
use crate::plan::{Event, EventType, PlatformState, UserRequests};

/// The longest note an Event may carry (events.k8s.io/v1 refuses longer ones).
pub const MAX_EVENT_NOTE: usize = 1024;

/// How long this process trusts its own pod writes over a watch cache that does not show
/// them yet.
const CACHE_GRACE: Duration = Duration::from_secs(30);

/// How long a status whose only change is `lastSeen` times may go unwritten.
const LAST_SEEN_REFRESH: Duration = Duration::from_secs(30);

/// The status on the API server was written by someone else since this process last wrote
/// it (a newer leader): nothing of this pass may be acted on, and the cluster's state must
/// be read again.
#[derive(Debug, thiserror::Error)]
#[error(
    "the status of {0} was changed by another writer (a newer leader of the operator?); reading it again"
)]
pub struct ForeignStatus(pub String);

/// The status without `lastSeen` times, which change on every pass.
fn without_sightings(status: &OpenGaussClusterStatus) -> OpenGaussClusterStatus {
    let mut s = status.clone();
    for i in &mut s.instances {
        i.last_seen = None;
    }
    s
}

/// Two statuses as the API server stores them (times to the second), sightings aside.
fn same_on_the_server(a: &OpenGaussClusterStatus, b: &OpenGaussClusterStatus) -> bool {
    serde_json::to_value(without_sightings(a)).ok() == serde_json::to_value(without_sightings(b)).ok()
}

/// Whether `status` differs from the one last written in a way worth an API call now. The
/// `lastSeen` times change on every pass; they are kept in memory (the decisions use them) and
/// written with the next real change, or every `LAST_SEEN_REFRESH`. A restarted controller
/// does not hold old sightings against anyone.
pub fn worth_writing(
    written: Option<&(OpenGaussClusterStatus, Instant)>,
    status: &OpenGaussClusterStatus,
) -> bool {
    match written {
        None => true,
        Some((last, at)) => {
            without_sightings(last) != without_sightings(status) || at.elapsed() > LAST_SEEN_REFRESH
        }
    }
}

/// Cuts an Event note to what the API accepts, on a character boundary.
pub fn truncate_note(note: &str) -> String {
    if note.len() <= MAX_EVENT_NOTE {
        return note.to_string();
    }
    let mut end = MAX_EVENT_NOTE - 3;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &note[..end])
}

/// Whether an API error says the namespace is being deleted (nothing may be created in it).
pub fn namespace_terminating(e: &anyhow::Error) -> bool {
    e.chain().any(|c| match c.downcast_ref::<kube::Error>() {
        Some(kube::Error::Api(s)) => s.code == 403 && s.message.contains("because it is being terminated"),
        _ => false,
    })
}

/// Whether a pod is owned (as controller) by the object with `uid`.
pub fn owned_by(meta: &kube::core::ObjectMeta, uid: &str) -> bool {
    meta.owner_references.iter().flatten().any(|r| r.uid == uid && r.controller == Some(true))
}

/// What the platform knows of an instance from its pod alone.
pub fn pod_state(pod: &Pod) -> PlatformState {
    if pod.metadata.deletion_timestamp.is_some() {
        // Going away: its manager is stopping or stopped.
        return PlatformState::Dead;
    }
    if database_container_ended(pod) {
        // Its manager and server are gone (the kubelet restarts the container by itself): as
        // good as a dead instance now, not after the probes have waited out the failover delay.
        return PlatformState::Dead;
    }
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        // Terminal: the kubelet will not restart it; the pod must be replaced.
        Some("Failed" | "Succeeded") => PlatformState::Dead,
        // Pending, Running, Unknown (node unreachable): the probes decide.
        _ => PlatformState::Running,
    }
}

/// Whether the database container ran and has ended: terminated, or waiting to be restarted
/// after it terminated (a container not yet started the first time has not ended).
fn database_container_ended(pod: &Pod) -> bool {
    let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.as_ref());
    statuses.into_iter().flatten().filter(|c| c.name == builders::DATABASE_CONTAINER).any(|c| {
        let state = c.state.as_ref();
        let terminated = state.is_some_and(|s| s.terminated.is_some());
        let restarting = state.is_some_and(|s| s.waiting.is_some())
            && c.last_state.as_ref().is_some_and(|l| l.terminated.is_some());
        terminated || restarting
    })
}

/// The manager's API address, once the pod runs and has an IP.
pub fn manager_url(pod: &Pod, port: u16) -> Option<String> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") || pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let ip = status.pod_ip.as_deref().filter(|ip| !ip.is_empty())?;
    let scheme = if serves_https(pod) { "https" } else { "http" };
    Some(if ip.contains(':') {
        format!("{scheme}://[{ip}]:{port}")
    } else {
        format!("{scheme}://{ip}:{port}")
    })
}

/// Whether the pod's manager serves HTTPS: it was made with TLS, which its probes show (a
/// change of `spec.tls.enabled` reaches each pod as it is recreated).
fn serves_https(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.containers.iter().any(|c| {
            c.readiness_probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .is_some_and(|h| h.scheme.as_deref() == Some("HTTPS"))
        })
    })
}

/// The current role label of a pod, if it carries a known one.
pub fn pod_role(pod: &Pod) -> Option<RoleLabel> {
    pod.labels().get(labels::ROLE).and_then(|v| RoleLabel::parse(v))
}

/// Pod writes of this process the watch cache may not show yet.
#[derive(Default)]
struct RecentWrites {
    /// Pods created, as the API server returned them.
    created: BTreeMap<String, (Pod, Instant)>,
    /// Pods deleted, by uid.
    deleted: BTreeMap<String, (String, Instant)>,
}

impl RecentWrites {
    /// Overlays this process's own writes on the cached pods.
    fn overlay(&mut self, pods: &mut BTreeMap<String, Pod>) {
        self.created.retain(|name, (pod, at)| {
            let cached_uid = pods.get(name).and_then(|p| p.metadata.uid.clone());
            if cached_uid == pod.metadata.uid || at.elapsed() > CACHE_GRACE {
                return false;
            }
            if cached_uid.is_none() {
                pods.insert(name.clone(), pod.clone());
            }
            true
        });
        self.deleted.retain(|name, (uid, at)| match pods.get_mut(name) {
            Some(p) if p.metadata.uid.as_deref() == Some(uid.as_str()) => {
                if p.metadata.deletion_timestamp.is_some() || at.elapsed() > CACHE_GRACE {
                    return false;
                }
                p.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
                true
            }
            _ => false,
        });
    }
}

/// The Kubernetes platform of one cluster.
pub struct KubePlatform {
    client: Client,
    namespace: String,
    name: String,
    uid: String,
    opts: Options,
    recorder: Recorder,
    reference: ObjectReference,
    caches: Caches,
    /// The cluster as last reconciled.
    cluster: Mutex<Arc<OpenGaussCluster>>,
    /// The owned pods as the last inventory saw them.
    seen: Mutex<BTreeMap<String, Pod>>,
    recent: Mutex<RecentWrites>,
    /// The status as last written by this process (or found when it started), and when.
    written: Mutex<Option<(OpenGaussClusterStatus, Instant)>>,
    /// The status known to be on the API server, and the resource version it was read or
    /// written at: status writes are made against that version.
    server: Mutex<(OpenGaussClusterStatus, Option<String>)>,
}

impl std::fmt::Debug for KubePlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubePlatform").field("namespace", &self.namespace).field("name", &self.name).finish()
    }
}

impl KubePlatform {
    pub fn new(
        client: Client,
        cluster: Arc<OpenGaussCluster>,
        opts: Options,
        recorder: Recorder,
        caches: Caches,
    ) -> Self {
        let namespace = builders::namespace(&cluster).to_string();
        let name = builders::cluster_name(&cluster).to_string();
        let uid = cluster.metadata.uid.clone().unwrap_or_default();
        let reference = cluster.object_ref(&());
        let server = (cluster.status.clone().unwrap_or_default(), cluster.metadata.resource_version.clone());
        Self {
            client,
            namespace,
            name,
            uid,
            opts,
            recorder,
            reference,
            caches,
            cluster: Mutex::new(cluster),
            seen: Mutex::default(),
            recent: Mutex::default(),
            written: Mutex::default(),
            server: Mutex::new(server),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn cluster(&self) -> Arc<OpenGaussCluster> {
        self.cluster.lock().expect("cluster lock").clone()
    }

    pub fn set_cluster(&self, cluster: Arc<OpenGaussCluster>) {
        *self.cluster.lock().expect("cluster lock") = cluster;
    }

    /// The owned pods as the last inventory saw them.
    pub fn pods(&self) -> BTreeMap<String, Pod> {
        self.seen.lock().expect("pods lock").clone()
    }

    fn pods_api(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn pvcs_api(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn apply_params() -> PatchParams {
        PatchParams::apply(FIELD_MANAGER).force()
    }

    /// Publishes one event about the cluster; failures are logged, never fatal.
    pub async fn event(&self, type_: KubeEventType, reason: &str, note: String) {
        let note = truncate_note(&note);
        let event = KubeEvent {
            type_,
            reason: reason.to_string(),
            note: Some(note.clone()),
            action: reason.to_string(),
            secondary: None,
        };
        match type_ {
            KubeEventType::Normal => {
                tracing::info!(cluster = %self.name, namespace = %self.namespace, reason, "{note}")
            }
            KubeEventType::Warning => {
                tracing::warn!(cluster = %self.name, namespace = %self.namespace, reason, "{note}")
            }
        }
        if let Err(e) = self.recorder.publish(&event, &self.reference).await {
            let e = anyhow::Error::from(e);
            if !namespace_terminating(&e) {
                tracing::warn!(cluster = %self.name, error = %crate::platform::kubernetes::api_error_text(&e), "cannot publish event {reason}");
            }
        }
    }

    /// Brings every pod's role label to what `status` asks for, demotions first: `-rw` never
    /// selects two pods, and selects none while a failover is in flight.
    pub async fn sync_role_labels(&self, status: &OpenGaussClusterStatus) -> anyhow::Result<()> {
        // Terminating pods too: a primary's pod being deleted must leave `-rw` now.
        let current: BTreeMap<String, Option<RoleLabel>> =
            self.pods().iter().map(|(n, p)| (n.clone(), pod_role(p))).collect();
        for (pod, role) in roles::changes(&current, status) {
            let patch = serde_json::json!({ "metadata": { "labels": { labels::ROLE: role.as_str() } } });
            let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
            match self.pods_api().patch(&pod, &params, &Patch::Merge(&patch)).await {
                Ok(updated) => {
                    let was = current.get(&pod).copied().flatten();
                    self.seen.lock().expect("pods lock").insert(pod.clone(), updated);
                    self.event(
                        KubeEventType::Normal,
                        "RoleChanged",
                        format!(
                            "pod {pod} is now labelled {}={role} (was {})",
                            labels::ROLE,
                            was.map_or("unlabelled", RoleLabel::as_str)
                        ),
                    )
                    .await;
                }
                // Gone since the inventory: nothing to relabel.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e).with_context(|| format!("labelling pod {pod} {role}")),
            }
        }
        Ok(())
    }

    /// Deletes `instance`'s pod (the one the inventory saw), unless it is already going.
    async fn delete_pod(&self, instance: &str) -> anyhow::Result<bool> {
        let Some(pod) = self.pods().get(instance).cloned() else { return Ok(false) };
        if pod.metadata.deletion_timestamp.is_some() {
            return Ok(false);
        }
        let uid = pod.metadata.uid.clone();
        let dp =
            DeleteParams::default().preconditions(Preconditions { uid: uid.clone(), resource_version: None });
        match self.pods_api().delete(instance, &dp).await {
            Ok(_) => {
                if let Some(uid) = uid {
                    self.recent
                        .lock()
                        .expect("recent lock")
                        .deleted
                        .insert(instance.to_string(), (uid, Instant::now()));
                }
                Ok(true)
            }
            // Gone, or replaced by a pod of another uid (the precondition failed).
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
            Err(e) => Err(e).with_context(|| format!("deleting pod {instance}")),
        }
    }

    /// Deletes an instance's pod and volume (the plan removes instances beyond
    /// `spec.instances`, highest ordinal first, never the primary).
    pub async fn delete_instance(&self, instance: &str) -> anyhow::Result<()> {
        let cluster = self.cluster();
        if self.delete_pod(instance).await? {
            self.event(
                KubeEventType::Normal,
                "InstanceRemoved",
                format!("deleted pod {instance}: the cluster has {} instance(s) now", cluster.spec.instances),
            )
            .await
        }
        let lp = ListParams::default().labels(&cluster_selector(&self.name));
        for pvc in self.pvcs_api().list(&lp).await.context("listing volumes")?.items {
            // A volume still mounted by a terminating pod is kept by the API server's
            // protection finalizer until the pod is gone.
            if pvc.labels().get(labels::INSTANCE).map(String::as_str) != Some(instance)
                || !owned_by(&pvc.metadata, &self.uid)
            {
                continue;
            }
            let name = pvc.name_any();
            let dp = DeleteParams::default()
                .preconditions(Preconditions { uid: pvc.metadata.uid.clone(), resource_version: None });
            match self.pvcs_api().delete(&name, &dp).await {
                Ok(_) => {
                    self.event(
                        KubeEventType::Normal,
                        "VolumeRemoved",
                        format!("deleted volume {name} of removed instance {instance}"),
                    )
                    .await
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e).with_context(|| format!("deleting volume {name}")),
            }
        }
        Ok(())
    }

    /// Writes `status` through the status subresource (server-side apply of the whole status)
    /// against the resource version last seen. A conflict caused by a change of the spec or
    /// metadata only is retried at the new version; a status changed by another writer is
    /// `ForeignStatus`.
    pub async fn patch_status(&self, status: &OpenGaussClusterStatus) -> anyhow::Result<()> {
        let api: Api<OpenGaussCluster> = Api::namespaced(self.client.clone(), &self.namespace);
        let what = format!("the status of {}/{}", self.namespace, self.name);
        for attempt in 0..2 {
            let version = self.server.lock().expect("server lock").1.clone();
            let body = serde_json::json!({
                "apiVersion": opengauss_crd::API_VERSION,
                "kind": opengauss_crd::KIND,
                "metadata": { "resourceVersion": version },
                "status": status,
            });
            match api.patch_status(&self.name, &Self::apply_params(), &Patch::Apply(&body)).await {
                Ok(updated) => {
                    *self.server.lock().expect("server lock") =
                        (status.clone(), updated.metadata.resource_version);
                    *self.written.lock().expect("written lock") = Some((status.clone(), Instant::now()));
                    return Ok(());
                }
                Err(kube::Error::Api(s)) if s.code == 409 && attempt == 0 => {
                    let current = api.get(&self.name).await.with_context(|| format!("reading {what}"))?;
                    let known = self.server.lock().expect("server lock").0.clone();
                    let on_server = current.status.clone().unwrap_or_default();
                    if !same_on_the_server(&known, &on_server) {
                        return Err(ForeignStatus(format!("{}/{}", self.namespace, self.name)).into());
                    }
                    self.server.lock().expect("server lock").1 = current.metadata.resource_version;
                }
                Err(e) => return Err(e).with_context(|| format!("writing {what}")),
            }
        }
        anyhow::bail!("writing {what}: the cluster kept changing")
    }
}

impl Platform for KubePlatform {
    async fn inventory(&self) -> anyhow::Result<Inventory> {
        let cluster = self.cluster();
        let mut pods: BTreeMap<String, Pod> = caches::owned(&self.caches.pods, &self.namespace, &self.uid)
            .into_iter()
            .filter(|p| instance_ordinal(&self.name, &p.name_any()).is_some())
            .map(|p| (p.name_any(), (*p).clone()))
            .collect();
        self.recent.lock().expect("recent lock").overlay(&mut pods);
        let inventory = pods
            .iter()
            .map(|(name, pod)| {
                let desired = builders::pod(&cluster, name, RoleLabel::None, &self.opts);
                // Peers named by address follow the pod's IP (a new pod has a new one, and the
                // changed configuration is reloaded); until it has one, it has no address.
                let host = if crate::engine::dialect(cluster.spec.engine).peers_by_address() {
                    pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default()
                } else {
                    builders::instance_host(&cluster, name, &self.opts)
                };
                let inst = PlatformInstance {
                    state: pod_state(pod),
                    endpoint: Endpoint { host, port: cluster.spec.port },
                    ha_port: builders::ha_port(&cluster),
                    manager_url: manager_url(pod, self.opts.manager_port),
                    outdated: builders::pod_definition_hash(pod) != builders::pod_definition_hash(&desired),
                };
                (name.clone(), inst)
            })
            .collect();
        *self.seen.lock().expect("pods lock") = pods;
        Ok(inventory)
    }

    async fn create(&self, instance: &str) -> anyhow::Result<()> {
        let cluster = self.cluster();
        match instance_ordinal(&self.name, instance) {
            Some(k) if k < cluster.spec.instances => {}
            _ => anyhow::bail!("{instance} is not an instance of {}", self.name),
        }
        let pvc = builders::pvc(&cluster, instance);
        let status = self.server.lock().expect("server lock").0.clone();
        let role = builders::role_for(Some(&status), instance);
        let pod = builders::pod(&cluster, instance, role, &self.opts);
        let pvc_name = builders::pvc_name(instance);
        let created = async {
            // The volume first: a pod never starts without the instance's own data.
            self.pvcs_api()
                .patch(&pvc_name, &Self::apply_params(), &Patch::Apply(&pvc))
                .await
                .with_context(|| format!("applying volume {pvc_name}"))?;
            self.pods_api()
                .patch(instance, &Self::apply_params(), &Patch::Apply(&pod))
                .await
                .with_context(|| format!("creating pod {instance}"))
        }
        .await;
        let created = match created {
            Ok(pod) => pod,
            // The namespace is going, and the cluster with it.
            Err(e) if namespace_terminating(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.recent
            .lock()
            .expect("recent lock")
            .created
            .insert(instance.to_string(), (created.clone(), Instant::now()));
        self.seen.lock().expect("pods lock").insert(instance.to_string(), created);
        self.event(
            KubeEventType::Normal,
            "InstanceCreated",
            format!("created pod {instance} with volume {pvc_name}"),
        )
        .await;
        Ok(())
    }

    async fn delete(&self, instance: &str) -> anyhow::Result<()> {
        self.delete_instance(instance).await
    }

    async fn restart(&self, instance: &str) -> anyhow::Result<()> {
        let Some(pod) = self.pods().get(instance).cloned() else {
            return Ok(());
        };
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        if !matches!(phase.as_str(), "Failed" | "Succeeded") {
            // The kubelet restarts containers of a live pod itself; a terminating one is
            // created again once gone.
            return Ok(());
        }
        let why = pod.status.as_ref().and_then(|s| s.reason.clone()).unwrap_or_else(|| phase.clone());
        if self.delete_pod(instance).await? {
            self.event(
                KubeEventType::Warning,
                "InstanceReplaced",
                format!("pod {instance} ended ({why}); deleted it so that it is created again on its volume"),
            )
            .await;
        }
        Ok(())
    }

    async fn recreate(&self, instance: &str) -> anyhow::Result<()> {
        if self.delete_pod(instance).await? {
            self.event(
                KubeEventType::Normal,
                "InstanceRecreated",
                format!(
                    "deleted pod {instance} to create it again from the cluster's current definition (image, resources or operator changed); its volume stays"
                ),
            )
            .await;
        }
        Ok(())
    }

    async fn save_status(&self, status: &OpenGaussClusterStatus) -> anyhow::Result<()> {
        if worth_writing(self.written.lock().expect("written lock").as_ref(), status) {
            self.patch_status(status).await?;
        }
        // Intent is recorded; now take pods out of (and then into) the Services accordingly,
        // before the pass acts on any instance.
        self.sync_role_labels(status).await
    }

    async fn publish(&self, events: &[Event]) {
        for e in events {
            let type_ = match e.type_ {
                EventType::Normal => KubeEventType::Normal,
                EventType::Warning => KubeEventType::Warning,
            };
            self.event(type_, e.reason, e.message.clone()).await;
        }
    }

    async fn requests(&self) -> UserRequests {
        let cluster = self.cluster();
        UserRequests {
            switchover_to: cluster
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(annotations::SWITCHOVER_TO))
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
        }
    }

    async fn acknowledge(&self, _outcome: &RequestOutcome) -> anyhow::Result<()> {
        // The plan's events said whether it was accepted and why; the request is done.
        let api: Api<OpenGaussCluster> = Api::namespaced(self.client.clone(), &self.namespace);
        let patch =
            serde_json::json!({ "metadata": { "annotations": { annotations::SWITCHOVER_TO: null } } });
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
        api.patch(&self.name, &params, &Patch::Merge(&patch))
            .await
            .with_context(|| format!("removing the {} annotation", annotations::SWITCHOVER_TO))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sightings_alone_are_not_worth_an_immediate_write() {
        let mut a = OpenGaussClusterStatus::default();
        a.instances.push(opengauss_crd::InstanceStatus { name: "og-0".into(), ..Default::default() });
        let mut b = a.clone();
        b.instances[0].last_seen = Some(Time(Timestamp::UNIX_EPOCH));
        let written = (a.clone(), Instant::now());
        assert!(!worth_writing(Some(&written), &b));
        let stale = (a.clone(), Instant::now() - LAST_SEEN_REFRESH - Duration::from_secs(1));
        assert!(worth_writing(Some(&stale), &b));
        b.instances[0].ready = true;
        assert!(worth_writing(Some(&written), &b));
        assert!(worth_writing(None, &a));
        assert!(same_on_the_server(&a, &a.clone()));
        assert!(!same_on_the_server(&a, &b));
    }

    #[test]
    fn pod_states() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "og-0"},
            "status": {"phase": "Running", "podIP": "10.0.0.7"}
        }))
        .expect("pod");
        assert_eq!(pod_state(&pod), PlatformState::Running);
        assert_eq!(manager_url(&pod, 8000).as_deref(), Some("http://10.0.0.7:8000"));
        pod.status.as_mut().expect("status").pod_ip = Some("fd00::7".into());
        assert_eq!(manager_url(&pod, 8000).as_deref(), Some("http://[fd00::7]:8000"));
        // A pod made with TLS: its probes, like the controller, use HTTPS.
        let mut tls_pod = pod.clone();
        tls_pod.spec = Some(
            serde_json::from_value(serde_json::json!({"containers": [{
                "name": "database", "readinessProbe": {"httpGet": {"port": "manager", "scheme": "HTTPS"}}
            }]}))
            .expect("spec"),
        );
        assert_eq!(manager_url(&tls_pod, 8000).as_deref(), Some("https://[fd00::7]:8000"));
        pod.status.as_mut().expect("status").phase = Some("Pending".into());
        assert_eq!(pod_state(&pod), PlatformState::Running);
        assert_eq!(manager_url(&pod, 8000), None);
        pod.status.as_mut().expect("status").phase = Some("Failed".into());
        assert_eq!(pod_state(&pod), PlatformState::Dead);
        pod.status.as_mut().expect("status").phase = Some("Running".into());
        // The database container: starting the first time, running, killed, restarting.
        let with_container = |state: serde_json::Value, last: serde_json::Value| -> Pod {
            let mut p = pod.clone();
            p.status.as_mut().expect("status").container_statuses = Some(vec![
                serde_json::from_value(serde_json::json!({
                    "name": "database", "image": "i", "imageID": "", "ready": false, "restartCount": 1,
                    "state": state, "lastState": last
                }))
                .expect("container status"),
            ]);
            p
        };
        let waiting = serde_json::json!({"waiting": {"reason": "PodInitializing"}});
        let running = serde_json::json!({"running": {}});
        let terminated = serde_json::json!({"terminated": {"exitCode": 137}});
        let none = serde_json::json!({});
        assert_eq!(pod_state(&with_container(waiting.clone(), none.clone())), PlatformState::Running);
        assert_eq!(pod_state(&with_container(running.clone(), terminated.clone())), PlatformState::Running);
        assert_eq!(pod_state(&with_container(terminated.clone(), none)), PlatformState::Dead);
        assert_eq!(pod_state(&with_container(waiting, terminated)), PlatformState::Dead);
        pod.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        assert_eq!(pod_state(&pod), PlatformState::Dead);
        assert_eq!(manager_url(&pod, 8000), None);
    }

    fn pod(name: &str, uid: &str) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "uid": uid}})).expect("pod")
    }

    #[test]
    fn own_writes_show_until_the_cache_has_them() {
        let mut recent = RecentWrites::default();
        recent.created.insert("og-1".into(), (pod("og-1", "b"), Instant::now()));
        recent.deleted.insert("og-0".into(), ("a".into(), Instant::now()));
        let mut cached = BTreeMap::from([("og-0".to_string(), pod("og-0", "a"))]);
        recent.overlay(&mut cached);
        assert!(cached.contains_key("og-1"), "a pod just created is there before the cache has it");
        assert!(cached["og-0"].metadata.deletion_timestamp.is_some(), "a pod just deleted is going");
        // The cache catches up: the created pod is there, the deleted one gone.
        let mut cached = BTreeMap::from([("og-1".to_string(), pod("og-1", "b"))]);
        recent.overlay(&mut cached);
        assert!(recent.created.is_empty() && recent.deleted.is_empty(), "nothing left to overlay");
        // A pod created again under the same name (new uid) is not the deleted one.
        recent.deleted.insert("og-1".into(), ("old".into(), Instant::now()));
        recent.overlay(&mut cached);
        assert!(cached["og-1"].metadata.deletion_timestamp.is_none());
    }

    #[test]
    fn long_notes_are_cut_on_a_character_boundary() {
        let s = "é".repeat(600);
        let t = truncate_note(&s);
        assert!(t.ends_with("...") && t.len() <= MAX_EVENT_NOTE, "{}", t.len());
        assert_eq!(truncate_note("short"), "short");
    }
}
