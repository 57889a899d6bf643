//! `kubectl opengauss`: status, switchover, fencing and psql for clusters on Kubernetes. It
//! reads and writes the same `OpenGaussCluster` objects the operator reconciles: a switchover is
//! an annotation the operator consumes, fencing is `spec.fencedInstances`.

use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use opengauss_crd::OpenGaussCluster;
use opengauss_crd::names::instance_ordinal;

use crate::platform::kubernetes::annotations;
use crate::platform::kubernetes::builders::{DATABASE_CONTAINER, ca_secret_name, paths, tls_keys};

const FIELD_MANAGER: &str = "kubectl-opengauss";

fn api(client: &Client, namespace: &str) -> Api<OpenGaussCluster> {
    Api::namespaced(client.clone(), namespace)
}

async fn get(client: &Client, namespace: &str, name: &str) -> anyhow::Result<OpenGaussCluster> {
    api(client, namespace)
        .get(name)
        .await
        .with_context(|| format!("reading OpenGaussCluster {namespace}/{name}"))
}

/// One cluster as a table like `gs_ctl query`, or every cluster of the namespace in a line each.
pub async fn status(
    client: &Client,
    namespace: &str,
    name: Option<&str>,
    json: bool,
) -> anyhow::Result<String> {
    match name {
        Some(name) => {
            let cluster = get(client, namespace, name).await?;
            let status = cluster.status.unwrap_or_default();
            Ok(if json {
                serde_json::to_string_pretty(&status)? + "\n"
            } else {
                crate::table::render(&format!("{namespace}/{name}"), &status)
            })
        }
        None => {
            let list =
                api(client, namespace).list(&ListParams::default()).await.context("listing clusters")?;
            if json {
                let all: Vec<_> =
                    list.items.iter().map(|c| (c.metadata.name.clone(), c.status.clone())).collect();
                return Ok(serde_json::to_string_pretty(&all)? + "\n");
            }
            let mut out =
                format!("{:<24} {:<18} {:<16} {:<6} {}\n", "NAME", "PHASE", "PRIMARY", "READY", "INSTANCES");
            for c in &list.items {
                let s = c.status.clone().unwrap_or_default();
                out += &format!(
                    "{:<24} {:<18} {:<16} {:<6} {}\n",
                    c.metadata.name.as_deref().unwrap_or(""),
                    s.phase.map(|p| p.as_str()).unwrap_or("-"),
                    s.current_primary.as_deref().unwrap_or("-"),
                    s.ready_instances,
                    c.spec.instances
                );
            }
            Ok(out)
        }
    }
}

fn check_member(cluster: &OpenGaussCluster, instance: &str) -> anyhow::Result<()> {
    let name = cluster.metadata.name.as_deref().unwrap_or_default();
    match instance_ordinal(name, instance) {
        Some(k) if k < cluster.spec.instances => Ok(()),
        _ => bail!(
            "{instance} is not an instance of cluster {name} ({name}-0 to {name}-{})",
            cluster.spec.instances - 1
        ),
    }
}

/// Asks the operator for a switchover to `instance` and waits until it is the primary.
pub async fn switchover(
    client: &Client,
    namespace: &str,
    name: &str,
    instance: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let cluster = get(client, namespace, name).await?;
    check_member(&cluster, instance)?;
    let status = cluster.status.clone().unwrap_or_default();
    if status.current_primary.as_deref() == Some(instance) {
        bail!("{instance} is already the primary");
    }
    let patch =
        serde_json::json!({ "metadata": { "annotations": { annotations::SWITCHOVER_TO: instance } } });
    api(client, namespace)
        .patch(name, &PatchParams::apply(FIELD_MANAGER), &Patch::Merge(&patch))
        .await
        .context("requesting the switchover")?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let c = get(client, namespace, name).await?;
        let s = c.status.unwrap_or_default();
        let pending =
            c.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(annotations::SWITCHOVER_TO));
        if s.current_primary.as_deref() == Some(instance) && s.transition.is_none() {
            return Ok(());
        }
        if !pending && s.transition.is_none() {
            bail!("the operator did not switch over: {}", s.phase_reason.unwrap_or_default());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{instance} did not become the primary within {}s", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Adds `instance` to (or removes it from) `spec.fencedInstances`; returns whether that
/// changed anything. The write carries the resource version read, so a concurrent edit is
/// not overwritten.
pub async fn set_fenced(
    client: &Client,
    namespace: &str,
    name: &str,
    instance: &str,
    fenced: bool,
) -> anyhow::Result<bool> {
    let cluster = get(client, namespace, name).await?;
    check_member(&cluster, instance)?;
    let mut list = cluster.spec.fenced_instances.clone();
    let present = list.iter().any(|f| f == instance);
    match (fenced, present) {
        (true, true) | (false, false) => return Ok(false),
        (true, false) => list.push(instance.to_string()),
        (false, true) => list.retain(|f| f != instance),
    }
    let patch = serde_json::json!({
        "metadata": { "resourceVersion": cluster.metadata.resource_version },
        "spec": { "fencedInstances": list },
    });
    api(client, namespace)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .context("updating spec.fencedInstances")?;
    Ok(true)
}

/// The `kubectl exec` command line that opens the engine's SQL shell in `instance` (the
/// primary by default) over its Unix socket, with `extra` arguments for the shell; a terminal
/// is allocated only when standard input is one.
pub async fn psql_command(
    client: &Client,
    namespace: &str,
    name: &str,
    instance: Option<&str>,
    extra: &[String],
    terminal: bool,
) -> anyhow::Result<Vec<String>> {
    let cluster = get(client, namespace, name).await?;
    let instance = match instance {
        Some(i) => {
            check_member(&cluster, i)?;
            i.to_string()
        }
        None => cluster
            .status
            .as_ref()
            .and_then(|s| s.current_primary.clone())
            .with_context(|| format!("cluster {name} has no primary right now; name an instance"))?,
    };
    let dialect = crate::engine::dialect(cluster.spec.engine);
    let (shell, user) = (dialect.sql_shell(), dialect.superuser());
    let mut argv: Vec<String> = vec![
        "kubectl".into(),
        "exec".into(),
        if terminal { "-it".into() } else { "-i".into() },
        "-n".into(),
        namespace.into(),
        instance,
        "-c".into(),
        DATABASE_CONTAINER.into(),
        "--".into(),
        shell.into(),
        "-h".into(),
        paths::SOCKET_DIR.into(),
        "-p".into(),
        cluster.spec.port.to_string(),
        "-U".into(),
        user.into(),
        "-d".into(),
        "postgres".into(),
    ];
    argv.extend(extra.iter().cloned());
    Ok(argv)
}

/// The cluster's certificate authority (PEM), for clients connecting with
/// `sslmode=verify-full`: the certificate only, read from the CA Secret; its key never leaves it.
pub async fn authority(client: &Client, namespace: &str, name: &str) -> anyhow::Result<String> {
    let cluster = get(client, namespace, name).await?;
    if !cluster.spec.tls.enabled {
        bail!("cluster {name} runs without TLS (spec.tls.enabled is false): it has no certificate authority");
    }
    let secret_name = ca_secret_name(name);
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(&secret_name)
        .await
        .with_context(|| format!("reading Secret {namespace}/{secret_name}"))?
        .with_context(|| {
            format!("Secret {namespace}/{secret_name} does not exist yet: the operator makes it on its first reconcile")
        })?;
    let pem = secret
        .data
        .as_ref()
        .and_then(|d| d.get(tls_keys::CA))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .with_context(|| format!("Secret {namespace}/{secret_name} has no {:?}", tls_keys::CA))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        bail!("Secret {namespace}/{secret_name}: {:?} is not a PEM certificate", tls_keys::CA);
    }
    Ok(pem)
}
