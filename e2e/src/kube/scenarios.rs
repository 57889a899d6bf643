//! The scenarios of the Kubernetes suite, each on a cluster of its own in a namespace of its
//! own, through kubectl and the database only. Every one of them runs on every driver.

use std::time::Duration;

use anyhow::{Context, bail};
use opengauss_crd::{OpenGaussClusterStatus, Phase, Role};
use serde_json::{Value, json};

use super::cluster::{KubeCluster, expect_eq};
use super::driver::Driver;
use crate::checks::{self, SqlCluster};
use crate::wait::{Probe, until};

pub const POSTGRES_SAMPLE: &str = "deploy/samples/postgres.yaml";
pub const OPENGAUSS_SAMPLE: &str = "deploy/samples/opengauss.yaml";

/// Time for a first bootstrap: pods scheduled, volumes provisioned, images present (kind's
/// nodes may still be pulling).
const BOOTSTRAP: Duration = Duration::from_secs(600);
/// Time for a failover, switchover or rejoin to settle.
const SETTLE: Duration = Duration::from_secs(180);

fn primary_of(s: &OpenGaussClusterStatus) -> anyhow::Result<String> {
    s.current_primary.clone().context("the status names no primary")
}

fn timeline_of(s: &OpenGaussClusterStatus, instance: &str) -> Option<u32> {
    s.instance(instance).and_then(|i| i.timeline)
}

/// Healthy, routed right, and the original deployment's checks pass; returns the status.
async fn healthy_and_checked(c: &KubeCluster, table: &str, timeout: Duration) -> anyhow::Result<OpenGaussClusterStatus> {
    let status = c.wait_healthy(timeout).await?;
    let primary = primary_of(&status)?;
    let standbys: Vec<String> = c.instance_names().into_iter().filter(|n| *n != primary).collect();
    c.wait_selected("rw", std::slice::from_ref(&primary), Duration::from_secs(30)).await?;
    c.wait_selected("ro", &standbys, Duration::from_secs(30)).await?;
    checks::original_deployment_checks(c, &primary, table).await?;
    Ok(status)
}

/// `sample` with the suite's namespace: apply, then hand the cluster to `body`, then delete
/// the namespace whatever happened.
async fn with_cluster(
    driver: &Driver,
    sample: &str,
    namespace: &str,
    edit: impl FnOnce(&mut Value),
    body: impl AsyncFnOnce(&KubeCluster) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    driver.prepare().await?;
    let c = KubeCluster::apply(driver, sample, namespace, edit).await?;
    c.run_then_clean_up(body).await
}

/// Bootstrap of the sample to Healthy, the original deployment's checks, `kubectl get ogc`
/// columns, the events users see, the disruption budget, and the garbage collection of
/// everything the cluster owned when it is deleted.
pub async fn bootstrap_checks_and_cleanup(driver: &Driver, sample: &str, namespace: &str) -> anyhow::Result<()> {
    with_cluster(driver, sample, namespace, |_| {}, async |c| {
        let status = healthy_and_checked(c, "checks", BOOTSTRAP).await?;
        let primary = primary_of(&status)?;

        // The columns of `kubectl get ogc`, from the CRD's printer columns.
        let table = c.kubectl(&["get", "ogc", &c.name]).await?;
        let mut lines = table.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
        expect_eq("kubectl get ogc columns", header, vec!["NAME", "PHASE", "PRIMARY", "READY", "INSTANCES", "AGE"])?;
        let row: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
        let n = c.instances.to_string();
        expect_eq("kubectl get ogc row", &row[..5], &[c.name.as_str(), "Healthy", primary.as_str(), &n, &n][..])?;
        let wide = c.kubectl(&["get", "ogc"]).await?;
        if !wide.contains(&c.name) {
            bail!("kubectl get ogc does not list {}: {wide}", c.name);
        }

        // Users see what happened as events on the cluster.
        c.wait_event("PrimaryInitialized", &primary, Duration::from_secs(30)).await?;

        // The budget lets one instance go at a time (a node drain can proceed).
        until("the PodDisruptionBudget to allow one disruption", Duration::from_secs(60), Duration::from_secs(1), || async {
            match c.kubectl(&["get", "pdb", &c.name, "-o", "jsonpath={.status.disruptionsAllowed}/{.status.expectedPods}"]).await {
                Ok(s) if s.trim() == format!("1/{}", c.instances) => Probe::Done(()),
                Ok(s) => Probe::NotYet(s),
                Err(e) => Probe::NotYet(format!("{e:#}")),
            }
        })
        .await?;

        c.delete_and_check_cleanup(Duration::from_secs(120)).await
    })
    .await
}

/// Deleting the primary's pod: a standby is promoted (exactly once), `-rw` follows it, the old
/// primary's pod comes back on its volume and rejoins as a streaming standby, and the data
/// written before is there.
pub async fn failover_by_deleting_the_primary_pod(driver: &Driver, namespace: &str) -> anyhow::Result<()> {
    with_cluster(driver, POSTGRES_SAMPLE, namespace, |_| {}, async |c| {
        let before = healthy_and_checked(c, "checks", BOOTSTRAP).await?;
        let old = primary_of(&before)?;
        let old_uid = c.pod_uid(&old).await?;
        let timeline = timeline_of(&before, &old).context("the primary's timeline")?;
        c.delete_pod(&old).await?;
        after_losing_the_primary(c, &old, timeline).await?;
        let new_uid = c.pod_uid(&old).await?;
        if new_uid == old_uid {
            bail!("{old}'s pod was not replaced");
        }
        Ok(())
    })
    .await
}

/// Killing every process of the primary's database container, the pod left in place: the
/// kubelet restarts the container, a standby is promoted meanwhile, the old primary rejoins.
pub async fn failover_by_killing_the_primary_container(driver: &Driver, namespace: &str) -> anyhow::Result<()> {
    with_cluster(driver, POSTGRES_SAMPLE, namespace, |_| {}, async |c| {
        let before = healthy_and_checked(c, "checks", BOOTSTRAP).await?;
        let old = primary_of(&before)?;
        let old_uid = c.pod_uid(&old).await?;
        let timeline = timeline_of(&before, &old).context("the primary's timeline")?;
        let restarts = restart_count(c, &old).await?;
        c.driver.kill_container(c, &old, "database").await?;
        after_losing_the_primary(c, &old, timeline).await?;
        expect_eq("the old primary's pod", c.pod_uid(&old).await?, old_uid)?;
        if restart_count(c, &old).await? <= restarts {
            bail!("the kubelet did not restart {old}'s database container");
        }
        Ok(())
    })
    .await
}

async fn restart_count(c: &KubeCluster, pod: &str) -> anyhow::Result<u32> {
    let jsonpath = "jsonpath={.status.containerStatuses[?(@.name==\"database\")].restartCount}";
    let out = c.kubectl(&["get", "pod", pod, "-o", jsonpath]).await?;
    out.trim().parse().with_context(|| format!("restart count of {pod}: {out:?}"))
}

/// After the primary `old` (on `timeline`) was lost: exactly one promotion, routing follows,
/// `old` rejoins as a streaming standby, data from before is there, checks pass again.
async fn after_losing_the_primary(c: &KubeCluster, old: &str, timeline: u32) -> anyhow::Result<()> {
    let after = c
        .wait_for("a new primary", SETTLE, |s| {
            s.current_primary.as_deref().is_some_and(|p| p != old) && s.transition.is_none()
        })
        .await?;
    let new = primary_of(&after)?;
    let healthy = c.wait_healthy(SETTLE).await?;
    let rejoined = healthy.instance(old).context("the old primary is listed")?;
    if rejoined.role != Role::Standby || !rejoined.ready {
        bail!("{old} did not rejoin as a streaming standby: {rejoined:?}");
    }
    expect_eq("primary after the failover settled", primary_of(&healthy)?, new.clone())?;
    // One promotion: the new primary's timeline is exactly one above the old one's.
    expect_eq("the new primary's timeline", timeline_of(&healthy, &new), Some(timeline + 1))?;
    c.wait_selected("rw", std::slice::from_ref(&new), Duration::from_secs(30)).await?;
    let rows = c.query(&new, "SELECT note FROM checks WHERE id = 1").await?;
    if rows.first().and_then(|r| r[0].as_deref()) != Some("from the primary") {
        bail!("the row written before the failover is gone: {rows:?}");
    }
    checks::original_deployment_checks(c, &new, "checks_after").await?;
    c.wait_event("Promoted", &new, Duration::from_secs(30)).await?;
    Ok(())
}

/// A planned switchover requested by annotation: the named standby becomes primary, the old
/// primary follows it, the annotation is consumed, nothing is lost.
pub async fn switchover_by_annotation(driver: &Driver, namespace: &str) -> anyhow::Result<()> {
    with_cluster(driver, POSTGRES_SAMPLE, namespace, |_| {}, async |c| {
        let before = healthy_and_checked(c, "checks", BOOTSTRAP).await?;
        let old = primary_of(&before)?;
        let target = c.instance_names().into_iter().find(|n| *n != old).context("a standby")?;
        c.patch(json!({ "metadata": { "annotations": { "ha.opengauss.dev/switchover-to": target } } })).await?;
        let after = c
            .wait_for(&format!("{target} to become primary"), SETTLE, |s| {
                s.current_primary.as_deref() == Some(target.as_str()) && s.transition.is_none()
            })
            .await?;
        expect_eq("last transition", after.last_transition.as_ref().map(|t| t.to.clone()), Some(Some(target.clone())))?;
        let healthy = c.wait_healthy(SETTLE).await?;
        expect_eq("old primary's role", healthy.instance(&old).map(|i| i.role), Some(Role::Standby))?;
        let annotations = c.object().await?["metadata"]["annotations"].clone();
        if annotations.get("ha.opengauss.dev/switchover-to").is_some() {
            bail!("the switchover annotation was not consumed: {annotations}");
        }
        c.wait_selected("rw", std::slice::from_ref(&target), Duration::from_secs(30)).await?;
        let rows = c.query(&target, "SELECT note FROM checks WHERE id = 1").await?;
        if rows.first().and_then(|r| r[0].as_deref()) != Some("from the primary") {
            bail!("the row written before the switchover is gone: {rows:?}");
        }
        checks::original_deployment_checks(c, &target, "checks_after").await?;
        c.wait_event("SwitchoverCompleted", &target, Duration::from_secs(30)).await?;
        if healthy.phase != Some(Phase::Healthy) {
            bail!("not healthy: {healthy:?}");
        }
        Ok(())
    })
    .await
}
