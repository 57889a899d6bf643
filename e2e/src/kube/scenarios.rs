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
async fn healthy_and_checked(
    c: &KubeCluster,
    table: &str,
    timeout: Duration,
) -> anyhow::Result<OpenGaussClusterStatus> {
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
pub async fn bootstrap_checks_and_cleanup(
    driver: &Driver,
    sample: &str,
    namespace: &str,
) -> anyhow::Result<()> {
    with_cluster(
        driver,
        sample,
        namespace,
        |_| {},
        async |c| {
            let status = healthy_and_checked(c, "checks", BOOTSTRAP).await?;
            let primary = primary_of(&status)?;
            super::tls::database_tls_checks(c, &primary).await?;

            // The columns of `kubectl get ogc`, from the CRD's printer columns.
            let table = c.kubectl(&["get", "ogc", &c.name]).await?;
            let mut lines = table.lines();
            let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
            expect_eq(
                "kubectl get ogc columns",
                header,
                vec!["NAME", "PHASE", "PRIMARY", "READY", "INSTANCES", "AGE"],
            )?;
            let row: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
            let n = c.instances.to_string();
            expect_eq(
                "kubectl get ogc row",
                &row[..5],
                &[c.name.as_str(), "Healthy", primary.as_str(), &n, &n][..],
            )?;
            let wide = c.kubectl(&["get", "ogc"]).await?;
            if !wide.contains(&c.name) {
                bail!("kubectl get ogc does not list {}: {wide}", c.name);
            }

            // Users see what happened as events on the cluster.
            c.wait_event("PrimaryInitialized", &primary, Duration::from_secs(30)).await?;

            // The budget lets one instance go at a time (a node drain can proceed).
            until(
                "the PodDisruptionBudget to allow one disruption",
                Duration::from_secs(60),
                Duration::from_secs(1),
                || async {
                    match c
                        .kubectl(&[
                            "get",
                            "pdb",
                            &c.name,
                            "-o",
                            "jsonpath={.status.disruptionsAllowed}/{.status.expectedPods}",
                        ])
                        .await
                    {
                        Ok(s) if s.trim() == format!("1/{}", c.instances) => Probe::Done(()),
                        Ok(s) => Probe::NotYet(s),
                        Err(e) => Probe::NotYet(format!("{e:#}")),
                    }
                },
            )
            .await?;

            c.delete_and_check_cleanup(Duration::from_secs(120)).await
        },
    )
    .await
}

/// Deleting the primary's pod: a standby is promoted (exactly once), `-rw` follows it, the old
/// primary's pod comes back on its volume and rejoins as a streaming standby, and the data
/// written before is there.
pub async fn failover_by_deleting_the_primary_pod(driver: &Driver, namespace: &str) -> anyhow::Result<()> {
    with_cluster(
        driver,
        POSTGRES_SAMPLE,
        namespace,
        |_| {},
        async |c| {
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
        },
    )
    .await
}

/// Killing every process of the primary's database container, the pod left in place: the
/// kubelet restarts the container, a standby is promoted meanwhile, the old primary rejoins.
pub async fn failover_by_killing_the_primary_container(
    driver: &Driver,
    namespace: &str,
) -> anyhow::Result<()> {
    with_cluster(
        driver,
        POSTGRES_SAMPLE,
        namespace,
        |_| {},
        async |c| {
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
        },
    )
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
    super::tls::database_tls_checks(c, &new).await?;
    c.wait_event("Promoted", &new, Duration::from_secs(30)).await?;
    Ok(())
}

/// A planned switchover requested by annotation: the named standby becomes primary, the old
/// primary follows it, the annotation is consumed, nothing is lost.
pub async fn switchover_by_annotation(driver: &Driver, namespace: &str) -> anyhow::Result<()> {
    with_cluster(
        driver,
        POSTGRES_SAMPLE,
        namespace,
        |_| {},
        async |c| {
            let before = healthy_and_checked(c, "checks", BOOTSTRAP).await?;
            let old = primary_of(&before)?;
            let target = c.instance_names().into_iter().find(|n| *n != old).context("a standby")?;
            c.patch(json!({ "metadata": { "annotations": { "ha.opengauss.dev/switchover-to": target } } }))
                .await?;
            let after = c
                .wait_for(&format!("{target} to become primary"), SETTLE, |s| {
                    s.current_primary.as_deref() == Some(target.as_str()) && s.transition.is_none()
                })
                .await?;
            expect_eq(
                "last transition",
                after.last_transition.as_ref().map(|t| t.to.clone()),
                Some(Some(target.clone())),
            )?;
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
        },
    )
    .await
}

/// The standbys the primary streams to, by name.
async fn streaming_standbys(c: &KubeCluster, primary: &str) -> anyhow::Result<Vec<String>> {
    Ok(checks::replication_rows(c, primary)
        .await?
        .into_iter()
        .filter(|r| r.1 == "streaming")
        .map(|r| r.0)
        .collect())
}

/// Scaling 3 to 5 to 2 to 3: new instances are cloned and stream, removed ones go with their
/// volumes, the synchronous set follows, the data stays.
pub async fn scale_up_down_and_back(driver: &Driver, namespace: &str) -> anyhow::Result<()> {
    with_cluster(
        driver,
        POSTGRES_SAMPLE,
        namespace,
        |_| {},
        async |c| {
            let c_sized = |n: u32| KubeCluster { instances: n, ..c.clone_handle() };
            healthy_and_checked(c, "checks", BOOTSTRAP).await?;
            for n in [5u32, 2, 3] {
                c.patch(json!({ "spec": { "instances": n } })).await?;
                let sized = c_sized(n);
                let status = sized.wait_healthy(SETTLE).await?;
                let primary = primary_of(&status)?;
                let mut want: Vec<String> =
                    sized.instance_names().into_iter().filter(|i| *i != primary).collect();
                want.sort();
                let mut got = streaming_standbys(&sized, &primary).await?;
                got.sort();
                expect_eq(&format!("standbys streaming at {n} instances"), got, want.clone())?;
                let pvcs = c
                    .kubectl(&[
                        "get",
                        "pvc",
                        "-l",
                        &format!("ha.opengauss.dev/cluster={}", c.name),
                        "-o",
                        "name",
                    ])
                    .await?;
                expect_eq(&format!("volumes at {n} instances"), pvcs.lines().count(), n as usize)?;
                let rows = sized.query(&primary, "SELECT note FROM checks WHERE id = 1").await?;
                if rows.first().and_then(|r| r[0].as_deref()) != Some("from the primary") {
                    bail!("the row written before scaling is gone at {n} instances: {rows:?}");
                }
                checks::check_write_then_read(
                    &sized,
                    &primary,
                    &want,
                    &format!("scaled_{n}"),
                    "after scaling",
                )
                .await?;
            }
            Ok(())
        },
    )
    .await
}

/// Fencing a standby stops its server and keeps it out of `-ro`; unfencing brings it back
/// streaming. Fencing the primary stops writes without a failover; unfencing resumes it.
pub async fn fence_and_unfence(driver: &Driver, namespace: &str) -> anyhow::Result<()> {
    with_cluster(
        driver,
        POSTGRES_SAMPLE,
        namespace,
        |_| {},
        async |c| {
            let status = healthy_and_checked(c, "checks", BOOTSTRAP).await?;
            let primary = primary_of(&status)?;
            let standbys: Vec<String> = c.instance_names().into_iter().filter(|n| *n != primary).collect();
            let fenced = standbys[0].clone();
            c.patch(json!({ "spec": { "fencedInstances": [fenced] } })).await?;
            c.wait_for(&format!("{fenced} fenced and stopped"), SETTLE, |s| {
                s.instance(&fenced).is_some_and(|i| !i.ready && i.state == "fenced")
            })
            .await?;
            c.wait_selected("ro", &standbys[1..], Duration::from_secs(60)).await?;
            until(
                "the fenced standby to leave pg_stat_replication",
                Duration::from_secs(60),
                Duration::from_secs(1),
                || async {
                    match streaming_standbys(c, &primary).await {
                        Ok(s) if !s.contains(&fenced) => Probe::Done(()),
                        other => Probe::NotYet(format!("{other:?}")),
                    }
                },
            )
            .await?;
            c.patch(json!({ "spec": { "fencedInstances": null } })).await?;
            healthy_and_checked(c, "checks_unfenced", SETTLE).await?;

            // The primary: writes stop, nobody is promoted.
            c.patch(json!({ "spec": { "fencedInstances": [primary] } })).await?;
            c.wait_for(&format!("{primary} fenced"), SETTLE, |s| {
                s.instance(&primary).is_some_and(|i| !i.ready)
                    && s.current_primary.as_deref() == Some(primary.as_str())
            })
            .await?;
            c.wait_selected("rw", &[], Duration::from_secs(60)).await?;
            if !checks::writable_instances(c).await.is_empty() {
                bail!("an instance accepts writes while the primary is fenced");
            }
            c.patch(json!({ "spec": { "fencedInstances": null } })).await?;
            let after = healthy_and_checked(c, "checks_primary_unfenced", SETTLE).await?;
            expect_eq("primary after unfencing", primary_of(&after)?, primary.clone())?;
            Ok(())
        },
    )
    .await
}

/// A reload-only parameter is in force everywhere without a restart; a restart-only one is
/// applied by a rolling restart (standbys first, the primary through a switchover).
pub async fn parameter_change_with_rolling_restart(driver: &Driver, namespace: &str) -> anyhow::Result<()> {
    with_cluster(
        driver,
        POSTGRES_SAMPLE,
        namespace,
        |_| {},
        async |c| {
            let before = healthy_and_checked(c, "checks", BOOTSTRAP).await?;
            let old_primary = primary_of(&before)?;
            c.patch(json!({ "spec": { "parameters": { "work_mem": "8MB", "max_connections": "150" } } }))
                .await?;
            let show = |setting: &'static str, want: &'static str| async move {
                until(
                    &format!("{setting} = {want} on every instance"),
                    SETTLE,
                    Duration::from_secs(1),
                    || async {
                        let mut seen = Vec::new();
                        for i in c.instance_names() {
                            match c.query(&i, &format!("SHOW {setting}")).await {
                                Ok(rows) => seen.push((i, rows.first().and_then(|r| r[0].clone()))),
                                Err(e) => seen.push((i, Some(format!("{e:#}")))),
                            }
                        }
                        if seen.iter().all(|(_, v)| v.as_deref() == Some(want)) {
                            Probe::Done(())
                        } else {
                            Probe::NotYet(format!("{seen:?}"))
                        }
                    },
                )
                .await
            };
            show("work_mem", "8MB").await?;
            show("max_connections", "150").await?;
            let after = healthy_and_checked(c, "checks_after", SETTLE).await?;
            if primary_of(&after)? == old_primary {
                bail!("the primary {old_primary} was restarted in place, not through a switchover");
            }
            Ok(())
        },
    )
    .await
}

/// On an existing cluster, what cannot change is refused by the CRD's transition rules.
async fn transition_rules_refuse_changes(driver: &Driver, namespace: &str) -> anyhow::Result<()> {
    let mut object = super::cluster::read_sample(POSTGRES_SAMPLE)?;
    driver.fit_sample(&mut object);
    object["metadata"]["name"] = "immutable".into();
    object["spec"]["instances"] = 1.into();
    object["spec"]["replication"]["synchronous"]["method"] = "off".into();
    if let Some(image) = driver.database_image(opengauss_crd::Engine::Postgres)? {
        object["spec"]["image"] = image.into();
    }
    driver.kubectl_with_input(&["-n", namespace, "apply", "-f", "-"], &serde_json::to_vec(&object)?).await?;
    let changes = [
        (json!({ "spec": { "engine": "openGauss" } }), "engine cannot change"),
        (json!({ "spec": { "port": 5433 } }), "port cannot change"),
        (json!({ "spec": { "storage": { "size": "20Gi" } } }), "storage.size cannot change"),
    ];
    // A merge patch the API server checks without storing it.
    let dry_run = async |patch: &Value| {
        let body = patch.to_string();
        let args = [
            "-n",
            namespace,
            "patch",
            "opengaussclusters",
            "immutable",
            "--type=merge",
            "--dry-run=server",
            "-p",
            &body,
        ];
        driver.kubectl(&args).await
    };
    for (patch, needle) in changes {
        match dry_run(&patch).await {
            Ok(out) => bail!("the change {patch} was accepted: {out}"),
            Err(e) if format!("{e:#}").contains(needle) => {}
            Err(e) => bail!("the change {patch} was refused without saying {needle:?}: {e:#}"),
        }
    }
    // What may change, changes.
    dry_run(&json!({ "spec": { "parameters": { "work_mem": "8MB" } } })).await?;
    Ok(())
}

/// Invalid clusters are refused by the API server itself (schema and CEL rules), with the
/// field named; nothing is created.
pub async fn invalid_clusters_are_refused(driver: &Driver, namespace: &str) -> anyhow::Result<()> {
    driver.prepare().await?;
    let _ = driver.kubectl(&["create", "namespace", namespace]).await;
    let cases: Vec<(&str, Value, &str)> = vec![
        ("no instances", json!({ "instances": 0 }), "spec.instances"),
        (
            "too many synchronous standbys",
            json!({ "instances": 3, "replication": { "synchronous": { "method": "any", "number": 3 } } }),
            "replication.synchronous.number must be smaller than instances",
        ),
        ("an unknown engine", json!({ "engine": "mysql" }), "spec.engine"),
        ("a privileged port", json!({ "port": 80 }), "spec.port"),
        (
            "an unknown durability",
            json!({ "failover": { "dataDurability": "maybe" } }),
            "spec.failover.dataDurability",
        ),
    ];
    let mut result = transition_rules_refuse_changes(driver, namespace).await;
    for (what, spec, needle) in cases {
        if result.is_err() {
            break;
        }
        let mut object = super::cluster::read_sample(POSTGRES_SAMPLE)?;
        merge(&mut object["spec"], &spec);
        let body = serde_json::to_vec(&object)?;
        match driver
            .kubectl_with_input(&["-n", namespace, "apply", "--dry-run=server", "-f", "-"], &body)
            .await
        {
            Ok(out) => {
                result = Err(anyhow::anyhow!("a cluster with {what} was accepted: {out}"));
                break;
            }
            Err(e) if format!("{e:#}").contains(needle) => {}
            Err(e) => {
                result = Err(anyhow::anyhow!(
                    "a cluster with {what} was refused without naming {needle:?}: {e:#}"
                ));
                break;
            }
        }
    }
    let _ = driver.kubectl(&["delete", "namespace", namespace, "--wait=false"]).await;
    result
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// `kubectl opengauss` against the real API: status, switchover, fence and unfence, psql.
pub async fn kubectl_plugin(
    driver: &Driver,
    namespace: &str,
    plugin: std::path::PathBuf,
) -> anyhow::Result<()> {
    with_cluster(
        driver,
        POSTGRES_SAMPLE,
        namespace,
        // Replication by member certificates here: the switchover below proves it on Kubernetes.
        |spec| spec["spec"]["tls"]["replicationClientCertificates"] = json!(true),
        async |c| {
            let status = healthy_and_checked(c, "checks", BOOTSTRAP).await?;
            let primary = primary_of(&status)?;
            let run = |args: Vec<String>| {
                let plugin = plugin.clone();
                let env = driver.client_env();
                let namespace = c.namespace.clone();
                async move {
                    let mut cmd = tokio::process::Command::new(&plugin);
                    cmd.arg("-n").arg(&namespace).args(&args).envs(env);
                    super::driver::output(cmd, &format!("kubectl opengauss {}", args.join(" ")), None).await
                }
            };
            let table = run(vec!["status".into(), c.name.clone()]).await?;
            for name in c.instance_names() {
                if !table.contains(&name) {
                    bail!("kubectl opengauss status does not show {name}:\n{table}");
                }
            }
            if !table.contains("primary") || !table.contains("streaming") {
                bail!("kubectl opengauss status shows no primary or streaming standby:\n{table}");
            }
            let target = c.instance_names().into_iter().find(|n| *n != primary).context("a standby")?;
            run(vec!["switchover".into(), c.name.clone(), target.clone()]).await?;
            expect_eq(
                "primary after kubectl opengauss switchover",
                c.status().await.and_then(|s| s.current_primary),
                Some(target.clone()),
            )?;
            let fenced = primary.clone();
            run(vec!["fence".into(), c.name.clone(), fenced.clone()]).await?;
            c.wait_for(&format!("{fenced} fenced"), SETTLE, |s| {
                s.instance(&fenced).is_some_and(|i| !i.ready)
            })
            .await?;
            run(vec!["unfence".into(), c.name.clone(), fenced.clone()]).await?;
            c.wait_healthy(SETTLE).await?;
            let out = run(vec![
                "psql".into(),
                c.name.clone(),
                "--".into(),
                "-Atc".into(),
                "SELECT pg_is_in_recovery()".into(),
            ])
            .await?;
            expect_eq("kubectl opengauss psql on the primary", out.trim(), "f")?;

            // After the switchover, standbys stream over TLS again; the authority the plugin
            // prints is the one every pod verifies with.
            super::tls::database_tls_checks(c, &target).await?;
            let rows = c
                .query(
                    &target,
                    "SELECT count(*) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) \
                     WHERE s.client_dn IS NOT NULL AND r.usename = 'replicator'",
                )
                .await?;
            let presented = rows.first().and_then(|r| r[0].clone());
            expect_eq(
                "standbys presenting their certificate",
                presented,
                Some((c.instances - 1).to_string()),
            )?;
            let authority = run(vec!["ca".into(), c.name.clone()]).await?;
            if !authority.starts_with("-----BEGIN CERTIFICATE-----") || authority.contains("PRIVATE KEY") {
                bail!("kubectl opengauss ca printed no certificate alone:\n{authority}");
            }
            for name in c.instance_names() {
                let in_pod = c
                    .exec(&name, &["cat".into(), super::tls::authority_in_pod()])
                    .await
                    .map_err(|e| anyhow::anyhow!("reading the authority in {name}: {e}"))?;
                expect_eq(&format!("the authority in {name}"), in_pod.trim(), authority.trim())?;
            }
            Ok(())
        },
    )
    .await
}

/// Marks every node unschedulable (`cordon`) or schedulable again.
async fn cordon_all(driver: &Driver, cordon: bool) -> anyhow::Result<()> {
    let nodes = driver.kubectl(&["get", "nodes", "-o", "name"]).await?;
    for node in nodes.lines().filter(|l| !l.is_empty()) {
        driver.kubectl(&[if cordon { "cordon" } else { "uncordon" }, node]).await?;
    }
    Ok(())
}

/// The operator's leader is deleted in the middle of a failover. To hold the failover in
/// flight long enough, the nodes are cordoned (the old primary's pod cannot come back) and
/// one standby is frozen (with `dataDurability: required` the failover waits for it: it may
/// hold commits the other lacks). The leader's pod is deleted, the other replica takes the
/// lease, the standby thaws, and the new leader finishes the failover with exactly one
/// promotion; uncordoned, the old primary rejoins.
pub async fn leader_lost_during_failover(driver: &Driver, namespace: &str) -> anyhow::Result<()> {
    let result = with_cluster(
        driver,
        POSTGRES_SAMPLE,
        namespace,
        |_| {},
        async |c| {
            let before = healthy_and_checked(c, "checks", BOOTSTRAP).await?;
            let old = primary_of(&before)?;
            let frozen = c.instance_names().into_iter().find(|n| *n != old).context("a standby")?;
            let timeline = timeline_of(&before, &old).context("the primary's timeline")?;
            let ns = crate::k8s::node::OPERATOR_NAMESPACE;
            let lease = crate::k8s::node::OPERATOR_LEASE;
            let holder = async || {
                driver
                    .kubectl(&["-n", ns, "get", "lease", lease, "-o", "jsonpath={.spec.holderIdentity}"])
                    .await
                    .map(|h| h.trim().to_string())
            };
            let leader = holder().await?;
            cordon_all(driver, true).await?;
            let middle = async {
                driver.freeze_container(c, &frozen, "database", true).await?;
                c.delete_pod(&old).await?;
                let stuck = c
                    .wait_for("a failover held in flight", SETTLE, |s| {
                        s.transition.as_ref().is_some_and(|t| t.from == old && t.completed_at.is_none())
                            && s.phase == Some(Phase::FailoverBlocked)
                    })
                    .await?;
                driver.kubectl(&["-n", ns, "delete", "pod", &leader, "--wait=false"]).await?;
                until("another operator replica to lead", SETTLE, Duration::from_secs(1), || async {
                    match holder().await {
                        Ok(h) if !h.is_empty() && h != leader => Probe::Done(()),
                        other => Probe::NotYet(format!("{other:?}")),
                    }
                })
                .await?;
                Ok::<_, anyhow::Error>(stuck)
            }
            .await;
            let thawed = driver.freeze_container(c, &frozen, "database", false).await;
            let stuck = middle?;
            thawed?;
            let promoted = c
                .wait_for("the new leader to finish the failover", SETTLE, |s| {
                    s.current_primary.as_deref().is_some_and(|p| p != old) && s.transition.is_none()
                })
                .await;
            cordon_all(driver, false).await?;
            promoted?;
            if stuck.current_primary.as_deref() != Some(old.as_str()) {
                bail!("the failover finished before the leader changed: {stuck:?}");
            }
            after_losing_the_primary(c, &old, timeline).await
        },
    )
    .await;
    // Never leave the nodes cordoned for the next scenario, whatever happened.
    let uncordoned = cordon_all(driver, false).await;
    result.and(uncordoned)
}

/// Pod uids by name.
async fn pod_uids(c: &KubeCluster) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut out = std::collections::BTreeMap::new();
    for name in c.instance_names() {
        out.insert(name.clone(), c.pod_uid(&name).await?);
    }
    Ok(out)
}

/// Changes the cluster's pod definition with `patch`, then waits until every pod was
/// replaced and the cluster is healthy again: standbys first, the primary last (after a
/// switchover made it a standby), the data kept. Returns the new primary.
async fn roll_with(c: &KubeCluster, patch: Value, what: &str) -> anyhow::Result<String> {
    let before = c.wait_healthy(SETTLE).await?;
    let old_primary = primary_of(&before)?;
    let uids = pod_uids(c).await?;
    c.patch(patch).await?;
    until(
        &format!("every pod replaced after {what}"),
        Duration::from_secs(600),
        Duration::from_secs(1),
        || async {
            match pod_uids(c).await {
                Ok(now) if now.iter().all(|(n, u)| uids.get(n) != Some(u)) => Probe::Done(()),
                other => Probe::NotYet(format!("{other:?}")),
            }
        },
    )
    .await?;
    let after = c.wait_healthy(SETTLE).await?;
    let new_primary = primary_of(&after)?;
    if new_primary == old_primary {
        bail!("{old_primary} was replaced while primary: no switchover moved it first");
    }
    // The old primary went last: its pod is the newest.
    let created = c
        .kubectl(&[
            "get",
            "pods",
            "-l",
            &format!("ha.opengauss.dev/cluster={}", c.name),
            "--sort-by=.metadata.creationTimestamp",
            "-o",
            "name",
        ])
        .await?;
    let newest = created.lines().last().unwrap_or_default().trim_start_matches("pod/").to_string();
    expect_eq(&format!("the last pod replaced after {what}"), newest, old_primary.clone())?;
    let rows = c.query(&new_primary, "SELECT note FROM checks WHERE id = 1").await?;
    if rows.first().and_then(|r| r[0].as_deref()) != Some("from the primary") {
        bail!("the row written before {what} is gone: {rows:?}");
    }
    Ok(new_primary)
}

/// A change of `resources` (and, where the environment has a second image, of `image`)
/// replaces every pod, standbys first and the primary through a switchover, without losing
/// data; the cluster is healthy after each.
pub async fn definition_change_rolls_the_pods(driver: &Driver, namespace: &str) -> anyhow::Result<()> {
    with_cluster(
        driver,
        POSTGRES_SAMPLE,
        namespace,
        |_| {},
        async |c| {
            healthy_and_checked(c, "checks", BOOTSTRAP).await?;
            let resources =
                json!({ "spec": { "resources": { "requests": { "cpu": "100m", "memory": "300Mi" } } } });
            let primary = roll_with(c, resources, "a resources change").await?;
            checks::original_deployment_checks(c, &primary, "checks_after_resources").await?;
            if let Some(image) = driver.alternate_database_image(c.engine) {
                let primary = roll_with(c, json!({ "spec": { "image": image } }), "an image change").await?;
                let images = c
                    .kubectl(&[
                        "get",
                        "pods",
                        "-o",
                        "jsonpath={.items[*].spec.containers[?(@.name==\"database\")].image}",
                    ])
                    .await?;
                if images.split_whitespace().any(|i| i != image) {
                    bail!("not every pod runs {image}: {images}");
                }
                checks::original_deployment_checks(c, &primary, "checks_after_image").await?;
            }
            Ok(())
        },
    )
    .await
}

/// Certificates that last five minutes (the shortest Kubernetes takes) are renewed without a
/// failover, a restart or a refused client.
pub async fn certificates_renew_without_downtime(driver: &Driver, namespace: &str) -> anyhow::Result<()> {
    let lifetime = Duration::from_secs(300);
    with_cluster(
        driver,
        POSTGRES_SAMPLE,
        namespace,
        |spec| spec["spec"]["tls"]["certificateLifetimeSeconds"] = json!(lifetime.as_secs()),
        async |c| super::tls::renewal_without_downtime(c, lifetime).await,
    )
    .await
}

/// Server certificates the user brings (the authority without its key in `<name>-ca`, every
/// pair in `<name>-tls`): the cluster bootstraps on them, clients verify it with the user's
/// authority, and the operator writes neither Secret.
pub async fn supplied_certificates_are_served(driver: &Driver, namespace: &str) -> anyhow::Result<()> {
    driver.prepare().await?;
    let sample = super::cluster::read_sample(POSTGRES_SAMPLE)?;
    let name = sample["metadata"]["name"].as_str().context("the sample's name")?.to_string();
    let instances = sample["spec"]["instances"].as_u64().context("the sample's instances")? as u32;
    let (secrets, pairs) = super::tls::supplied_secrets(&name, namespace, instances)?;
    let c = KubeCluster::apply_after(driver, POSTGRES_SAMPLE, namespace, |_| {}, &secrets).await?;
    c.run_then_clean_up(async |c| {
        let status = healthy_and_checked(c, "checks", BOOTSTRAP).await?;
        super::tls::database_tls_checks(c, &primary_of(&status)?).await?;
        super::tls::serves_the_supplied_pairs(c, &pairs).await
    })
    .await
}
