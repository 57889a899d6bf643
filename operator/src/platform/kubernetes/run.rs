//! `opengauss-operator run`: the operator. Waits for its CRD, serves its own health endpoints,
//! wins the leader election, then runs the kube-rs controller over every `OpenGaussCluster`
//! (one namespace or all) until SIGTERM, when it finishes the reconciles in flight and hands
//! the lease over.

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Resource};
use opengauss_crd::OpenGaussCluster;

use super::caches::Caches;
use super::lease::{LeaderElector, LeaseSettings};
use super::options::{DEFAULT_CLUSTER_DOMAIN, MANAGER_PORT, Options};
use super::reconcile::{Context, error_policy, reconcile};
use super::{CONTROLLER_NAME, labels};

/// The CRD's name.
pub fn crd_name() -> String {
    format!("{}.{}", OpenGaussCluster::plural(&()), opengauss_crd::GROUP)
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Watch only this namespace [default: every namespace].
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// The image of this operator, which database pods copy the instance manager from
    /// [default: read from this operator's own pod].
    #[arg(long, env = "OPERATOR_IMAGE")]
    pub operator_image: Option<String>,
    /// The Kubernetes cluster's DNS domain.
    #[arg(long, env = "CLUSTER_DOMAIN", default_value = DEFAULT_CLUSTER_DOMAIN)]
    pub cluster_domain: String,
    /// This replica's pod name: its identity in the leader election.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// This replica's namespace, where the leader-election Lease lives [default: the client's
    /// namespace].
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "opengauss-operator-leader")]
    pub lease_name: String,
    /// Run without leader election (a single replica, for development only).
    #[arg(long)]
    pub no_leader_election: bool,
    /// Where the operator's own /healthz and /readyz listen.
    #[arg(long, env = "HEALTH_LISTEN", default_value = "0.0.0.0:8080")]
    pub health_listen: SocketAddr,
    /// Clusters reconciled at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u16,
}

impl RunArgs {
    /// Defaults for tests and embedding: every namespace, leader election on.
    pub fn for_tests(pod_name: &str, pod_namespace: &str) -> Self {
        Self {
            namespace: None,
            operator_image: None,
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.into(),
            pod_name: Some(pod_name.into()),
            pod_namespace: Some(pod_namespace.into()),
            lease_name: "opengauss-operator-leader".into(),
            no_leader_election: false,
            health_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            concurrency: 4,
        }
    }
}

/// Runs the operator with the in-cluster (or kubeconfig) client until SIGTERM or SIGINT.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = Client::try_default().await.context("connecting to the Kubernetes API server")?;
    run_with(client, args, crate::signals::shutdown_requested()).await
}

/// Waits until the API server serves the CRD.
pub async fn wait_for_crd(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd_name();
    let mut waited = Duration::ZERO;
    let step = Duration::from_secs(2);
    loop {
        let established = match api.get_opt(&name).await {
            Ok(Some(crd)) => crd
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Established" && c.status == "True")),
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read CRD {name}");
                false
            }
        };
        if established {
            return Ok(());
        }
        if waited.as_secs() % 30 == 0 {
            tracing::info!("waiting for CRD {name} to be established (kubectl apply -f deploy/crds/)");
        }
        tokio::time::sleep(step).await;
        waited += step;
    }
}

/// The image of the `operator` container of this replica's own pod.
async fn own_image(client: &Client, pod_namespace: &str, pod_name: &str) -> anyhow::Result<String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), pod_namespace);
    let pod = api
        .get(pod_name)
        .await
        .with_context(|| format!("reading this operator's pod {pod_namespace}/{pod_name}"))?;
    let containers = pod.spec.map(|s| s.containers).unwrap_or_default();
    containers
        .iter()
        .find(|c| c.name == "operator")
        .or(containers.first())
        .and_then(|c| c.image.clone())
        .context("this operator's pod names no image")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("opengauss-operator-{}", std::process::id()))
}

/// An API of every namespace, or of the one watched.
fn scoped<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// What triggers a reconcile from the cluster object itself: a new generation (spec), changed
/// annotations (a switchover request) or a deletion; never a status write, so the operator's
/// own status updates do not make it spin.
fn trigger_hash(c: &DeserializeGuard<OpenGaussCluster>) -> Option<u64> {
    let meta = c.meta();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (meta.generation, &meta.annotations, meta.deletion_timestamp.is_some(), c.0.is_ok()).hash(&mut h);
    Some(h.finish())
}

async fn serve_health(
    listener: tokio::net::TcpListener,
    ready: Arc<AtomicBool>,
    metrics: Arc<crate::metrics::ControllerMetrics>,
) {
    use axum::http::StatusCode;
    use axum::routing::get;
    let metrics_route = get(move || {
        let metrics = metrics.clone();
        async move { ([(axum::http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], metrics.render()) }
    });
    let app =
        axum::Router::new().route("/healthz", get(|| async { "ok" })).route("/metrics", metrics_route).route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready.load(Ordering::SeqCst) {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "waiting for the CRD")
                    }
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "health endpoint failed");
    }
}

/// Runs the operator with `client` until `shutdown` resolves (or leadership is lost, which is
/// an error: the process exits and its replacement waits for the lease again).
pub async fn run_with(
    client: Client,
    args: RunArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = {
        let rx = stop_rx.clone();
        move || {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        }
    };

    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(args.health_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.health_listen))?;
    tracing::info!(addr = %listener.local_addr()?, "health endpoints listening");
    let metrics: Arc<crate::metrics::ControllerMetrics> = Arc::default();
    let health = tokio::spawn(serve_health(listener, ready.clone(), metrics.clone()));

    tokio::select! {
        r = wait_for_crd(&client) => r?,
        () = stopped() => { health.abort(); return Ok(()); }
    }
    ready.store(true, Ordering::SeqCst);

    let pod_namespace = args.pod_namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
    let identity = args.pod_name.clone().unwrap_or_else(hostname);
    let operator_image = match (&args.operator_image, &args.pod_name) {
        (Some(image), _) => image.clone(),
        (None, Some(pod)) => own_image(&client, &pod_namespace, pod).await?,
        (None, None) => {
            anyhow::bail!("set --operator-image (OPERATOR_IMAGE) or POD_NAME so it can be read from this pod")
        }
    };
    let options =
        Options { operator_image, cluster_domain: args.cluster_domain.clone(), manager_port: MANAGER_PORT };
    tracing::info!(?options, namespace = ?args.namespace, "operator starting");

    let elector = (!args.no_leader_election).then(|| {
        LeaderElector::new(client.clone(), LeaseSettings::new(&pod_namespace, &args.lease_name, &identity))
    });
    if let Some(e) = &elector {
        tokio::select! {
            r = e.acquire() => r?,
            () = stopped() => { health.abort(); return Ok(()); }
        }
    }

    let reporter = Reporter { controller: CONTROLLER_NAME.into(), instance: Some(identity.clone()) };
    let clusters: Api<DeserializeGuard<OpenGaussCluster>> = scoped(&client, &args.namespace);
    let (reader, writer) = reflector::store();
    let trigger = watcher(clusters, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(trigger_hash, Default::default());
    // What the operator manages is watched into caches the reconciles read; a change to any
    // of it (a pod going, a Service deleted) reconciles its cluster.
    let (caches, writers) = Caches::new();
    let managed = watcher::Config::default().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGER));
    let pods = watcher(scoped::<Pod>(&client, &args.namespace), managed.clone())
        .default_backoff()
        .reflect(writers.pods)
        .touched_objects();
    let services = watcher(scoped::<Service>(&client, &args.namespace), managed.clone())
        .default_backoff()
        .reflect(writers.services)
        .touched_objects();
    let config_maps = watcher(scoped::<ConfigMap>(&client, &args.namespace), managed.clone())
        .default_backoff()
        .reflect(writers.config_maps)
        .touched_objects();
    let budgets = watcher(scoped::<PodDisruptionBudget>(&client, &args.namespace), managed)
        .default_backoff()
        .reflect(writers.budgets)
        .touched_objects();
    let mut ctx = Context::new(client.clone(), options, reporter, caches.clone());
    ctx.metrics = metrics;
    let ctx = Arc::new(ctx);
    let controller = Controller::for_stream(trigger, reader)
        .owns_stream(pods)
        .owns_stream(services)
        .owns_stream(config_maps)
        .owns_stream(budgets)
        .with_config(controller::Config::default().concurrency(args.concurrency))
        .graceful_shutdown_on(stopped())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::trace!(cluster = %object.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile"),
            }
        });

    let outcome = match &elector {
        Some(e) => tokio::select! {
            () = controller => Ok(()),
            why = e.keep() => Err(anyhow::anyhow!("lost the leadership: {why}; exiting so that the new leader alone acts")),
        },
        None => {
            controller.await;
            Ok(())
        }
    };
    if outcome.is_ok()
        && let Some(e) = &elector
        && let Err(err) = e.release().await
    {
        tracing::warn!(error = format!("{err:#}"), "could not release the lease");
    }
    health.abort();
    tracing::info!("operator stopped");
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(value: serde_json::Value) -> DeserializeGuard<OpenGaussCluster> {
        serde_json::from_value(value).expect("guard")
    }

    fn object(generation: i64, phase: &str, annotations: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "ha.opengauss.dev/v1alpha1", "kind": "OpenGaussCluster",
            "metadata": {"name": "og", "namespace": "apps", "generation": generation, "annotations": annotations},
            "spec": {}, "status": {"phase": phase},
        })
    }

    #[test]
    fn status_writes_do_not_trigger_a_reconcile_but_spec_and_annotations_do() {
        let base = trigger_hash(&guard(object(1, "Initializing", serde_json::json!({}))));
        assert_eq!(base, trigger_hash(&guard(object(1, "Healthy", serde_json::json!({})))));
        assert_ne!(base, trigger_hash(&guard(object(2, "Initializing", serde_json::json!({})))));
        let asked = object(1, "Initializing", serde_json::json!({"ha.opengauss.dev/switchover-to": "og-1"}));
        assert_ne!(base, trigger_hash(&guard(asked)));
        let mut broken = object(1, "Initializing", serde_json::json!({}));
        broken["spec"]["instances"] = "three".into();
        let broken = guard(broken);
        assert!(broken.0.is_err());
        assert_ne!(base, trigger_hash(&broken), "becoming unreadable (or readable again) is a change");
    }

    #[test]
    fn crd_name_matches_the_generated_crd() {
        assert_eq!(crd_name(), "opengaussclusters.ha.opengauss.dev");
        assert!(opengauss_crd::crd_yaml().contains(&format!("name: {}", crd_name())));
    }
}
