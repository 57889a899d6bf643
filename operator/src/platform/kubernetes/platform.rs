//! The `Platform` the shared controller drives on Kubernetes: instances are the cluster's owned
//! Pods (each with its PVC), status goes through the status subresource, and what happens is
//! told through Kubernetes Events.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event as KubeEvent, EventType as KubeEventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use opengauss_crd::names::instance_ordinal;
use opengauss_crd::{OpenGaussCluster, OpenGaussClusterStatus};

use super::builders::{self, cluster_selector};
use super::options::Options;
use super::roles::{self, RoleLabel};
use super::{FIELD_MANAGER, labels};
use crate::controller::Platform;
use crate::engine::Endpoint;
use crate::plan::{Event, EventType, PlatformState};
use crate::platform::{Inventory, PlatformInstance};

/// The Kubernetes platform of one cluster.
pub struct KubePlatform {
    client: Client,
    namespace: String,
    name: String,
    uid: String,
    opts: Options,
    recorder: Recorder,
    reference: ObjectReference,
    /// The cluster as last reconciled.
    cluster: Mutex<Arc<OpenGaussCluster>>,
    /// The status as last saved (or read when this platform was made).
    status: Mutex<OpenGaussClusterStatus>,
    /// The owned pods as the last inventory saw them.
    pods: Mutex<BTreeMap<String, Pod>>,
    /// The status as last written to the API server, and when.
    written: Mutex<Option<(OpenGaussClusterStatus, Instant)>>,
}

/// How long a status whose only change is `lastSeen` times may go unwritten.
const LAST_SEEN_REFRESH: Duration = Duration::from_secs(30);

/// The status without `lastSeen` times, which change on every pass.
fn without_sightings(status: &OpenGaussClusterStatus) -> OpenGaussClusterStatus {
    let mut s = status.clone();
    for i in &mut s.instances {
        i.last_seen = None;
    }
    s
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

impl std::fmt::Debug for KubePlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubePlatform").field("namespace", &self.namespace).field("name", &self.name).finish()
    }
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
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        // Terminal: the kubelet will not restart it; the pod must be replaced.
        Some("Failed" | "Succeeded") => PlatformState::Dead,
        // Pending, Running, Unknown (node unreachable): the probes decide.
        _ => PlatformState::Running,
    }
}

/// The manager's API address, once the pod runs and has an IP.
pub fn manager_url(pod: &Pod, port: u16) -> Option<String> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") || pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let ip = status.pod_ip.as_deref().filter(|ip| !ip.is_empty())?;
    Some(if ip.contains(':') { format!("http://[{ip}]:{port}") } else { format!("http://{ip}:{port}") })
}

/// The current role label of a pod, if it carries a known one.
pub fn pod_role(pod: &Pod) -> Option<RoleLabel> {
    pod.labels().get(labels::ROLE).and_then(|v| RoleLabel::parse(v))
}

impl KubePlatform {
    pub fn new(
        client: Client,
        cluster: Arc<OpenGaussCluster>,
        status: OpenGaussClusterStatus,
        opts: Options,
        recorder: Recorder,
    ) -> Self {
        let namespace = builders::namespace(&cluster).to_string();
        let name = builders::cluster_name(&cluster).to_string();
        let uid = cluster.metadata.uid.clone().unwrap_or_default();
        let reference = cluster.object_ref(&());
        Self {
            client,
            namespace,
            name,
            uid,
            opts,
            recorder,
            reference,
            cluster: Mutex::new(cluster),
            status: Mutex::new(status),
            pods: Mutex::default(),
            written: Mutex::default(),
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

    pub fn status(&self) -> OpenGaussClusterStatus {
        self.status.lock().expect("status lock").clone()
    }

    /// The owned pods as the last inventory saw them.
    pub fn pods(&self) -> BTreeMap<String, Pod> {
        self.pods.lock().expect("pods lock").clone()
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
            tracing::warn!(cluster = %self.name, error = %e, "cannot publish event {reason}");
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
                    self.pods.lock().expect("pods lock").insert(pod.clone(), updated);
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

    /// Deletes an instance's pod and volume (the plan removes instances beyond
    /// `spec.instances`, highest ordinal first, never the primary).
    pub async fn delete_instance(&self, instance: &str) -> anyhow::Result<()> {
        let cluster = self.cluster();
        if let Some(pod) = self.pods().get(instance)
            && pod.metadata.deletion_timestamp.is_none()
        {
            let uid = pod.metadata.uid.clone();
            let dp = DeleteParams::default().preconditions(Preconditions { uid, resource_version: None });
            match self.pods_api().delete(instance, &dp).await {
                Ok(_) => {
                    self.event(
                        KubeEventType::Normal,
                        "InstanceRemoved",
                        format!(
                            "deleted pod {instance}: the cluster has {} instance(s) now",
                            cluster.spec.instances
                        ),
                    )
                    .await
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e).with_context(|| format!("deleting pod {instance}")),
            }
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

    /// Writes `status` through the status subresource (server-side apply of the whole status).
    pub async fn patch_status(&self, status: &OpenGaussClusterStatus) -> anyhow::Result<()> {
        let api: Api<OpenGaussCluster> = Api::namespaced(self.client.clone(), &self.namespace);
        let body = serde_json::json!({
            "apiVersion": opengauss_crd::API_VERSION,
            "kind": opengauss_crd::KIND,
            "status": status,
        });
        api.patch_status(&self.name, &Self::apply_params(), &Patch::Apply(&body))
            .await
            .with_context(|| format!("patching the status of {}/{}", self.namespace, self.name))?;
        *self.status.lock().expect("status lock") = status.clone();
        *self.written.lock().expect("written lock") = Some((status.clone(), Instant::now()));
        Ok(())
    }
}

impl Platform for KubePlatform {
    async fn inventory(&self) -> anyhow::Result<Inventory> {
        let cluster = self.cluster();
        let lp = ListParams::default().labels(&cluster_selector(&self.name));
        let listed = self.pods_api().list(&lp).await.context("listing the cluster's pods")?;
        let pods: BTreeMap<String, Pod> = listed
            .items
            .into_iter()
            .filter(|p| owned_by(&p.metadata, &self.uid))
            .filter(|p| instance_ordinal(&self.name, &p.name_any()).is_some())
            .map(|p| (p.name_any(), p))
            .collect();
        let inventory = pods
            .iter()
            .map(|(name, pod)| {
                let inst = PlatformInstance {
                    state: pod_state(pod),
                    endpoint: Endpoint {
                        host: builders::instance_host(&cluster, name, &self.opts),
                        port: cluster.spec.port,
                    },
                    ha_port: builders::ha_port(&cluster),
                    manager_url: manager_url(pod, self.opts.manager_port),
                };
                (name.clone(), inst)
            })
            .collect();
        *self.pods.lock().expect("pods lock") = pods;
        Ok(inventory)
    }

    async fn create(&self, instance: &str) -> anyhow::Result<()> {
        let cluster = self.cluster();
        match instance_ordinal(&self.name, instance) {
            Some(k) if k < cluster.spec.instances => {}
            _ => anyhow::bail!("{instance} is not an instance of {}", self.name),
        }
        let pvc = builders::pvc(&cluster, instance);
        let role = builders::role_for(Some(&self.status()), instance);
        let pod = builders::pod(&cluster, instance, role, &self.opts);
        let pvc_name = builders::pvc_name(instance);
        // The volume first: a pod never starts without the instance's own data.
        self.pvcs_api()
            .patch(&pvc_name, &Self::apply_params(), &Patch::Apply(&pvc))
            .await
            .with_context(|| format!("applying volume {pvc_name}"))?;
        let created = self
            .pods_api()
            .patch(instance, &Self::apply_params(), &Patch::Apply(&pod))
            .await
            .with_context(|| format!("creating pod {instance}"))?;
        self.pods.lock().expect("pods lock").insert(instance.to_string(), created);
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
        if pod.metadata.deletion_timestamp.is_some() {
            // Already going; it is created again once gone.
            return Ok(());
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        if !matches!(phase.as_str(), "Failed" | "Succeeded") {
            // The kubelet restarts containers of a live pod itself.
            return Ok(());
        }
        let why = pod.status.as_ref().and_then(|s| s.reason.clone()).unwrap_or_else(|| phase.clone());
        let dp = DeleteParams::default()
            .preconditions(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None });
        match self.pods_api().delete(instance, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("deleting failed pod {instance}")),
        }
        self.event(
            KubeEventType::Warning,
            "InstanceReplaced",
            format!("pod {instance} ended ({why}); deleted it so that it is created again on its volume"),
        )
        .await;
        Ok(())
    }

    async fn save_status(&self, status: &OpenGaussClusterStatus) -> anyhow::Result<()> {
        let write = worth_writing(self.written.lock().expect("written lock").as_ref(), status);
        if write {
            self.patch_status(status).await?;
        } else {
            *self.status.lock().expect("status lock") = status.clone();
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

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
        pod.status.as_mut().expect("status").phase = Some("Pending".into());
        assert_eq!(pod_state(&pod), PlatformState::Running);
        assert_eq!(manager_url(&pod, 8000), None);
        pod.status.as_mut().expect("status").phase = Some("Failed".into());
        assert_eq!(pod_state(&pod), PlatformState::Dead);
        pod.status.as_mut().expect("status").phase = Some("Running".into());
        pod.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        assert_eq!(pod_state(&pod), PlatformState::Dead);
        assert_eq!(manager_url(&pod, 8000), None);
    }
}
