//! Reconcile scenarios against a mocked API server (tower-test) and fake instance managers:
//! what the operator writes, and in which order.

mod kubernetes_support;

use std::collections::BTreeMap;

use kubernetes_support::*;
use opengauss_crd::{OpenGaussClusterStatus, Phase, TransitionKind};
use serde_json::Value;

fn position(calls: &[Call], what: &str) -> usize {
    calls.iter().position(|c| c.short() == what).unwrap_or_else(|| {
        panic!("no {what:?} among {:#?}", calls.iter().map(Call::short).collect::<Vec<_>>())
    })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn shorts(calls: &[Call]) -> Vec<String> {
    calls.iter().map(Call::short).collect()
}

fn stored_status(api: &FakeApi, name: &str) -> OpenGaussClusterStatus {
    serde_json::from_value(api.get(&cluster_path(NS, name)).expect("cluster")["status"].clone())
        .expect("status parses")
}

fn event_reasons(api: &FakeApi) -> Vec<String> {
    api.list("events.k8s.io", "events", Some(NS))
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The notes of the events with `reason`.
fn event_notes(api: &FakeApi, reason: &str) -> Vec<String> {
    api.list("events.k8s.io", "events", Some(NS))
        .iter()
        .filter(|e| e["reason"] == reason)
        .map(|e| e["note"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The journal as a sequence of label states: never two pods labelled primary at once.
fn assert_never_two_primaries(api: &FakeApi, start: BTreeMap<String, String>) {
    let mut labels = start;
    for call in api.calls() {
        let t = call.target();
        if call.method == "PATCH"
            && t.resource == "pods"
            && let Some(role) =
                call.body.as_ref().and_then(|b| b["metadata"]["labels"]["ha.opengauss.dev/role"].as_str())
        {
            labels.insert(t.name.clone().expect("pod name"), role.to_string());
        }
        let primaries: Vec<&String> =
            labels.iter().filter(|(_, r)| *r == "primary").map(|(n, _)| n).collect();
        assert!(primaries.len() <= 1, "two pods labelled primary after {}: {primaries:?}", call.short());
    }
}

#[tokio::test]
async fn first_reconcile_creates_the_objects_in_order() {
    let (api, _ctx, result) = scenario_first_reconcile().await;
    let action = result.expect("reconcile succeeds");
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(opengauss_operator::controller::pacing::BUSY_INTERVAL),
        "a cluster being created is probed again soon"
    );
    let writes: Vec<Call> = api.writes().into_iter().filter(|c| c.target().resource != "events").collect();
    // The certificates first (every pod mounts its own), then the credentials.
    let order = [
        "PATCH secrets/og-tls",
        "PATCH configmaps/og-config",
        "PATCH services/og-headless",
        "PATCH services/og-rw",
        "PATCH services/og-ro",
        "PATCH poddisruptionbudgets/og",
        "PATCH opengaussclusters/og/status",
    ];
    let positions: Vec<usize> = order.iter().map(|w| position(&writes, w)).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "out of order: {:#?}", shorts(&writes));
    let status_at = positions[positions.len() - 1];
    for k in 0..3 {
        let pvc = position(&writes, &format!("PATCH persistentvolumeclaims/og-{k}-data"));
        let pod = position(&writes, &format!("PATCH pods/og-{k}"));
        assert!(
            status_at < pvc && pvc < pod,
            "status, then volume, then pod for og-{k}: {:#?}",
            shorts(&writes)
        );
    }
    // Everything created is applied server-side by the operator's one field manager.
    for w in writes.iter().filter(|c| c.method == "PATCH") {
        assert!(w.is_apply(), "{} is not a server-side apply", w.short());
        assert_eq!(
            w.query.get("fieldManager").map(String::as_str),
            Some("opengauss-operator"),
            "{}",
            w.short()
        );
        assert_eq!(w.query.get("force").map(String::as_str), Some("true"), "{}", w.short());
    }
    let secret_posts: Vec<usize> =
        writes.iter().enumerate().filter(|(_, c)| c.short() == "POST secrets").map(|(i, _)| i).collect();
    assert_eq!(secret_posts.len(), 2, "the authority and the credentials: {:#?}", shorts(&writes));
    assert!(secret_posts[0] < positions[0] && secret_posts[1] < positions[1], "{:#?}", shorts(&writes));
    assert_eq!(writes.len(), order.len() + 2 + 6, "nothing else written: {:#?}", shorts(&writes));

    // The authority is kept in its Secret, and every instance has a pair it signed, naming
    // the instance's Services, which its pod mounts.
    let text = |secret: &Value, key: &str| -> String {
        let bytes: k8s_openapi::ByteString = serde_json::from_value(secret["data"][key].clone())
            .unwrap_or_else(|e| panic!("{key} in {secret:#}: {e}"));
        String::from_utf8(bytes.0).expect("utf-8")
    };
    let ca_secret = api.get("/api/v1/namespaces/apps/secrets/og-ca").expect("the authority's Secret");
    assert!(text(&ca_secret, "ca.key").contains("PRIVATE KEY"));
    let ca = text(&ca_secret, "ca.crt");
    let tls = api.get("/api/v1/namespaces/apps/secrets/og-tls").expect("the certificates' Secret");
    assert_eq!(text(&tls, "ca.crt"), ca);
    for k in 0..3 {
        let pair = opengauss_operator::tls::KeyedCertificate {
            cert_pem: text(&tls, &format!("og-{k}.crt")),
            key_pem: text(&tls, &format!("og-{k}.key")),
        };
        let names = [format!("og-{k}.og-headless.apps.svc.cluster.local"), "og-rw.apps.svc".into()];
        opengauss_operator::tls::inspect::check_server_pair(&pair, &ca, &names, unix_now())
            .unwrap_or_else(|e| panic!("og-{k}: {e}"));
        let pod = api.get(&pod_path(NS, &format!("og-{k}"))).expect("pod");
        let volume = pod["spec"]["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == "tls"))
            .unwrap_or_else(|| panic!("a tls volume in {pod:#}"));
        assert_eq!(volume["secret"]["secretName"], "og-tls");
        let keys: Vec<&str> = volume["secret"]["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|i| i["key"].as_str())
            .collect();
        assert_eq!(keys, ["ca.crt".to_string(), format!("og-{k}.crt"), format!("og-{k}.key")]);
        assert_eq!(pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    }
    let issued = event_notes(&api, "CertificateIssued");
    assert_eq!(issued.len(), 1, "one issuing round, one event: {issued:?}");
    for k in 0..3 {
        assert!(issued[0].contains(&format!("og-{k} (")), "og-{k} named in {issued:?}");
    }

    // Owned by the cluster, so that deleting it deletes them.
    let uid = api.get(&cluster_path(NS, "og")).expect("cluster")["metadata"]["uid"].clone();
    for (group, resource) in [
        ("", "secrets"),
        ("", "configmaps"),
        ("", "services"),
        ("policy", "poddisruptionbudgets"),
        ("", "persistentvolumeclaims"),
        ("", "pods"),
    ] {
        let objects = api.list(group, resource, Some(NS));
        assert!(!objects.is_empty(), "no {resource}");
        for o in objects {
            let refs = o["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
            assert_eq!(refs.len(), 1, "{resource} {}", o["metadata"]["name"]);
            assert_eq!(refs[0]["uid"], uid);
            assert_eq!(refs[0]["controller"], Value::Bool(true));
            assert_eq!(refs[0]["kind"], "OpenGaussCluster");
        }
    }

    // The status records the intent: og-0 is to be the first primary.
    let status = stored_status(&api, "og");
    assert_eq!(status.phase, Some(Phase::Initializing));
    assert_eq!(status.target_primary.as_deref(), Some("og-0"));
    assert!(!status.initialized);
    // No pod is in a Service before it has a role.
    assert!(role_labels(&api).values().all(|r| r == "none"), "{:?}", role_labels(&api));

    // Generated credentials meet openGauss's password rule.
    let secret = api.get("/api/v1/namespaces/apps/secrets/og-credentials").expect("secret");
    let creds = opengauss_operator::platform::kubernetes::credentials::Credentials::from_secret(
        &serde_json::from_value(secret).expect("secret parses"),
    )
    .expect("complete secret");
    assert!(opengauss_operator::credentials::meets_policy(&creds.secrets.superuser_password, "omm"));
    assert_eq!(creds.superuser, "omm");

    // Each creation is told as an event on the cluster.
    let reasons = event_reasons(&api);
    assert!(reasons.iter().any(|r| r == "InstanceCreated"), "{reasons:?}");
}

#[tokio::test]
async fn bootstrap_patches_status_then_labels_the_primary() {
    let (api, _ctx, _managers) = scenario_bootstrap().await;
    let journal = api.journal();
    let bootstrap_sent = journal.iter().position(|e| {
        matches!(e, Entry::Manager { instance, request } if instance == "og-0" && request["kind"] == "bootstrap")
    });
    let Some(Entry::Manager { request, .. }) = bootstrap_sent.map(|i| &journal[i]) else {
        panic!("og-0 was told to initialise: {journal:#?}");
    };
    // openGauss peers are named by their pods' addresses (replconninfoN matches a connecting
    // peer by numeric IP); the fake pods run on 127.0.0.1x.
    let peers: Vec<(String, u64)> = request["config"]["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|p| (p["host"].as_str().unwrap_or_default().to_string(), p["haPort"].as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(peers, [("127.0.0.11".to_string(), 5433), ("127.0.0.12".to_string(), 5433)]);
    let status = stored_status(&api, "og");
    assert!(status.initialized, "{status:?}");
    assert_eq!(status.current_primary.as_deref(), Some("og-0"));
    let calls = api.calls();
    let status_patch =
        calls.iter().rposition(|c| c.short() == "PATCH opengaussclusters/og/status").expect("status patched");
    let body = calls[status_patch].body.clone().expect("body");
    assert_eq!(body["apiVersion"], "ha.opengauss.dev/v1alpha1");
    assert_eq!(body["kind"], "OpenGaussCluster");
    assert_eq!(body["status"]["currentPrimary"], "og-0");
    let label = calls
        .iter()
        .position(|c| {
            c.short() == "PATCH pods/og-0"
                && c.body
                    .as_ref()
                    .is_some_and(|b| b["metadata"]["labels"]["ha.opengauss.dev/role"] == "primary")
        })
        .expect("og-0 labelled primary");
    assert!(status_patch < label, "the primary is recorded before it is put behind -rw");
    assert!(
        calls[label].content_type.starts_with("application/merge-patch"),
        "labels change with a merge patch that cannot touch the pod spec"
    );
    assert_eq!(role_labels(&api).get("og-0").map(String::as_str), Some("primary"));
    assert!(event_reasons(&api).iter().any(|r| r == "PrimaryInitialized"), "{:?}", event_reasons(&api));
    assert!(event_reasons(&api).iter().any(|r| r == "RoleChanged"), "{:?}", event_reasons(&api));
}

#[tokio::test]
async fn unchanged_status_is_not_written_again() {
    let (api, ctx, _managers) = scenario_bootstrap().await;
    let before = stored_status(&api, "og");
    api.clear_journal();
    reconcile_once(&api, &ctx, "og").await.expect("reconcile");
    let status_writes: Vec<Call> =
        api.writes().into_iter().filter(|c| c.short() == "PATCH opengaussclusters/og/status").collect();
    // Only lastSeen times would have changed: no write.
    assert!(status_writes.is_empty(), "{:#?}", shorts(&status_writes));
    assert_eq!(stored_status(&api, "og"), before);
}

#[tokio::test]
async fn failover_takes_the_primary_out_of_service_before_acting() {
    let start = role_labels(&healthy_cluster(serde_json::json!({})).await.0);
    assert_eq!(start.get("og-0").map(String::as_str), Some("primary"));
    let (api, _ctx, _managers) = scenario_failover().await;
    let journal = api.journal();
    let index = |pred: &dyn Fn(&Entry) -> bool| journal.iter().position(pred);
    let status_patch = index(&|e| {
        matches!(e, Entry::Api(c) if c.short() == "PATCH opengaussclusters/og/status"
            && c.body.as_ref().is_some_and(|b| b["status"]["transition"]["kind"] == "Failover"))
    })
    .expect("the failover is recorded in the status");
    let demotion = index(&|e| {
        matches!(e, Entry::Api(c) if c.short() == "PATCH pods/og-0"
            && c.body.as_ref().is_some_and(|b| b["metadata"]["labels"]["ha.opengauss.dev/role"] == "none"))
    })
    .expect("the terminating primary leaves -rw");
    let first_request = index(&|e| matches!(e, Entry::Manager { .. })).expect("standbys are acted upon");
    let status = stored_status(&api, "og");
    let t = status.transition.clone().expect("transition in flight");
    assert_eq!(t.kind, TransitionKind::Failover);
    assert_eq!(t.from, "og-0");
    assert_eq!(status.phase, Some(Phase::FailingOver));
    assert!(status_patch < demotion, "the decision is recorded before relabelling");
    assert!(demotion < first_request, "nobody is behind -rw before any instance is acted upon");
    let labels = role_labels(&api);
    assert!(labels.values().all(|r| r != "primary"), "{labels:?}");
    assert!(event_reasons(&api).iter().any(|r| r == "FailingOver"), "{:?}", event_reasons(&api));
    assert_never_two_primaries(&api, start);
}

#[tokio::test]
async fn failover_of_a_reachable_but_dead_primary_relabels_it_first() {
    // The primary's pod stays but its container is gone for good (the pod failed).
    let (api, managers) = healthy_cluster(serde_json::json!({})).await;
    let start = role_labels(&api);
    api.modify(&pod_path(NS, "og-0"), |p| {
        p["status"] = serde_json::json!({"phase": "Failed", "reason": "Evicted", "podIP": "127.0.0.10"});
    });
    managers.set("og-0", None);
    let ctx = context(&api, managers.port);
    reconcile_once(&api, &ctx, "og").await.expect("reconcile");
    let journal = api.journal();
    let status_patch = journal
        .iter()
        .position(|e| matches!(e, Entry::Api(c) if c.short() == "PATCH opengaussclusters/og/status"))
        .expect("status patched");
    let demotion = journal
        .iter()
        .position(|e| {
            matches!(e, Entry::Api(c) if c.short() == "PATCH pods/og-0"
                && c.body.as_ref().is_some_and(|b| b["metadata"]["labels"]["ha.opengauss.dev/role"] == "none"))
        })
        .expect("og-0 leaves -rw");
    assert!(status_patch < demotion, "status first, then the label");
    if let Some(first_request) = journal.iter().position(|e| matches!(e, Entry::Manager { .. })) {
        assert!(demotion < first_request, "out of -rw before any instance is acted upon");
    }
    let replaced = journal
        .iter()
        .position(|e| matches!(e, Entry::Api(c) if c.short() == "DELETE pods/og-0"))
        .expect("the failed pod is deleted so it is created again");
    assert!(demotion < replaced);
    assert!(role_labels(&api).values().all(|r| r != "primary"), "{:?}", role_labels(&api));
    assert_never_two_primaries(&api, start);
}

#[tokio::test]
async fn a_finished_failover_puts_the_new_primary_behind_rw() {
    // A new operator (say, after a leader change) finds og-1 promoted and recorded.
    let (api, managers) = healthy_cluster(serde_json::json!({})).await;
    api.modify(&cluster_path(NS, "og"), |c| {
        c["status"]["currentPrimary"] = "og-1".into();
        c["status"]["targetPrimary"] = "og-1".into();
        c["status"]["instances"] = serde_json::json!([
            {"name": "og-0", "role": "unknown", "ready": false},
            {"name": "og-1", "role": "primary", "ready": true},
            {"name": "og-2", "role": "standby", "ready": true},
        ]);
    });
    api.modify(&pod_path(NS, "og-0"), |p| p["metadata"]["labels"]["ha.opengauss.dev/role"] = "none".into());
    let start = role_labels(&api);
    managers.set("og-0", None);
    managers.set("og-1", Some(primary_report("og-1", &["og-2"], 0x6000000)));
    managers.set("og-2", Some(standby_report("og-2", 0x6000000)));
    let ctx = context(&api, managers.port);
    reconcile_once(&api, &ctx, "og").await.expect("reconcile");
    let labels = role_labels(&api);
    assert_eq!(labels.get("og-1").map(String::as_str), Some("primary"), "{labels:?}");
    assert_eq!(labels.get("og-2").map(String::as_str), Some("standby"), "{labels:?}");
    assert_ne!(labels.get("og-0").map(String::as_str), Some("primary"), "{labels:?}");
    assert_never_two_primaries(&api, start);
}

#[tokio::test]
async fn switchover_request_is_taken_and_its_annotation_removed() {
    let (api, _ctx, _managers) = scenario_switchover().await;
    let status = stored_status(&api, "og");
    let t = status.transition.clone().expect("switchover in flight");
    assert_eq!(t.kind, TransitionKind::Switchover);
    assert_eq!(t.to.as_deref(), Some("og-1"));
    let cluster = api.get(&cluster_path(NS, "og")).expect("cluster");
    assert!(
        cluster["metadata"]["annotations"].get("ha.opengauss.dev/switchover-to").is_none(),
        "request consumed: {}",
        cluster["metadata"]
    );
    assert!(role_labels(&api).values().all(|r| r != "primary"), "{:?}", role_labels(&api));
    assert!(event_reasons(&api).iter().any(|r| r == "SwitchingOver"), "{:?}", event_reasons(&api));
}

#[tokio::test]
async fn scale_down_deletes_the_removed_instance_and_its_volume() {
    let (api, _ctx, _managers) = scenario_scale_down().await;
    let writes = shorts(&api.writes());
    assert!(writes.contains(&"DELETE pods/og-2".to_string()), "{writes:#?}");
    assert!(writes.contains(&"DELETE persistentvolumeclaims/og-2-data".to_string()), "{writes:#?}");
    assert!(!writes.iter().any(|w| w == "DELETE pods/og-0" || w == "DELETE pods/og-1"), "{writes:#?}");
    let pods: Vec<String> = role_labels(&api).into_keys().collect();
    assert_eq!(pods, ["og-0", "og-1"]);
}

#[tokio::test]
async fn deletion_writes_nothing_and_forgets_the_cluster() {
    let (api, ctx) = scenario_deletion().await;
    assert!(api.writes().is_empty(), "{:#?}", shorts(&api.writes()));
    assert!(ctx.known_clusters().await.is_empty());
}

#[tokio::test]
async fn invalid_spec_sets_a_condition_and_creates_nothing() {
    let (api, _ctx) = scenario_invalid_spec().await;
    let writes = api.writes();
    let kinds: Vec<String> = shorts(&writes);
    assert_eq!(
        kinds.iter().filter(|w| *w == "PATCH opengaussclusters/bad/status").count(),
        1,
        "written once, not again when nothing changed: {kinds:#?}"
    );
    assert!(
        writes.iter().all(|w| ["opengaussclusters", "events"].contains(&w.target().resource.as_str())),
        "nothing but the status and an event: {kinds:#?}"
    );
    let status = stored_status(&api, "bad");
    assert_eq!(status.phase, Some(Phase::InvalidSpec));
    let valid = status.condition("ValidSpec").expect("ValidSpec condition");
    assert_eq!(valid.status, "False");
    assert!(valid.message.contains("spec.replication.synchronous.number"), "{}", valid.message);
    assert!(event_reasons(&api).iter().any(|r| r == "InvalidSpec"));
}

#[tokio::test]
async fn a_malformed_object_is_reported_not_acted_upon() {
    let (api, _ctx) = scenario_malformed().await;
    let writes = api.writes();
    assert!(
        writes.iter().all(|w| ["opengaussclusters", "events"].contains(&w.target().resource.as_str())),
        "{:#?}",
        shorts(&writes)
    );
    let stored = api.get(&cluster_path(NS, "weird")).expect("cluster");
    assert_eq!(stored["status"]["phase"], "InvalidSpec");
    assert!(stored["status"]["phaseReason"].as_str().unwrap_or_default().contains("cannot be read"));
    assert!(event_reasons(&api).iter().any(|r| r == "InvalidObject"));
}

#[tokio::test]
async fn an_invalid_name_is_refused() {
    let api = FakeApi::new();
    let long = "a".repeat(50);
    api.insert(&cluster_path(NS, &long), cluster_json(&long, serde_json::json!({})));
    let ctx = context(&api, 8000);
    reconcile_once(&api, &ctx, &long).await.expect("reconcile");
    let status = stored_status(&api, &long);
    assert_eq!(status.phase, Some(Phase::InvalidSpec));
    assert!(status.phase_reason.unwrap_or_default().contains("metadata.name"));
    assert!(api.writes().iter().all(|w| w.target().resource != "pods" && w.target().resource != "secrets"));
}

#[tokio::test]
async fn a_stray_primary_is_fenced_and_never_put_behind_rw() {
    let (api, _ctx, _managers) = scenario_stray_primary().await;
    let fences: Vec<String> = api
        .journal()
        .into_iter()
        .filter_map(|e| match e {
            Entry::Manager { instance, request } if request["kind"] == "fence" => Some(instance),
            _ => None,
        })
        .collect();
    assert!(!fences.is_empty() && fences.iter().all(|i| i == "og-2"), "{fences:?}");
    let labels = role_labels(&api);
    assert_eq!(labels.get("og-0").map(String::as_str), Some("primary"), "{labels:?}");
    assert_ne!(labels.get("og-2").map(String::as_str), Some("primary"), "{labels:?}");
    // The same warning twice in a row is one event with a growing series count.
    let events = api.list("events.k8s.io", "events", Some(NS));
    let fencing: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["reason"] == "FencingStrayPrimary").collect();
    assert_eq!(fencing.len(), 1, "{events:#?}");
    assert_eq!(fencing[0]["type"], "Warning");
    assert!(fencing[0]["series"]["count"].as_i64().unwrap_or(0) >= 2, "{:#}", fencing[0]);
}

#[tokio::test]
async fn a_lost_secret_of_an_initialised_cluster_is_not_regenerated() {
    let (api, managers) = healthy_cluster_with(serde_json::json!({}), false).await;
    assert!(api.get("/api/v1/namespaces/apps/secrets/og-credentials").is_none());
    let ctx = context(&api, managers.port);
    let err = reconcile_once(&api, &ctx, "og").await.expect_err("refused");
    assert!(err.contains("og-credentials is missing"), "{err}");
    assert!(api.writes().is_empty(), "{:#?}", shorts(&api.writes()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_change_between_passes_does_not_block_the_status() {
    let (api, _ctx, _managers) = scenario_spec_change_between_passes().await;
    let status = stored_status(&api, "og");
    assert_eq!(status.observed_generation, Some(2), "the new generation's status is written");
    let calls = api.calls();
    let conflict = calls
        .iter()
        .position(|c| c.status == 409 && c.short().contains("opengaussclusters/og/status"))
        .expect("the write against the old version conflicts");
    let read = calls[conflict..]
        .iter()
        .position(|c| c.method == "GET" && c.short().contains("opengaussclusters/og"));
    assert!(read.is_some(), "the object is read after the conflict: {:#?}", shorts(&calls[conflict..]));
    assert!(
        calls[conflict + 1..]
            .iter()
            .any(|c| c.status == 200 && c.short().contains("opengaussclusters/og/status")),
        "written again at the new version: {:#?}",
        shorts(&calls[conflict..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_written_by_another_leader_is_never_overwritten() {
    let (api, managers) = healthy_cluster(serde_json::json!({})).await;
    let ctx = context(&api, managers.port);
    reconcile_once(&api, &ctx, "og").await.expect("first pass");
    // A newer leader decided something else meanwhile, and the spec changed.
    api.modify(&cluster_path(NS, "og"), |c| {
        c["status"]["phaseReason"] = serde_json::json!("written by another leader");
        c["spec"]["fencedInstances"] = serde_json::json!(["og-2"]);
        c["metadata"]["generation"] = serde_json::json!(2);
    });
    let before = api.calls().len();
    let journal_before = api.journal().len();
    reconcile_once(&api, &ctx, "og").await.expect("the pass gives up quietly");
    assert_eq!(stored_status(&api, "og").phase_reason.as_deref(), Some("written by another leader"));
    let after: Vec<Call> = api.calls()[before..].to_vec();
    assert!(
        !after.iter().any(|c| c.is_write() && c.target().resource == "pods"),
        "nothing is acted on: {:#?}",
        shorts(&after)
    );
    let asked: Vec<Entry> = api.journal()[journal_before..]
        .iter()
        .filter(|e| matches!(e, Entry::Manager { .. }))
        .cloned()
        .collect();
    assert!(asked.is_empty(), "no manager is asked anything after the foreign write: {asked:?}");
    // The next pass starts from the server's status and goes on from there.
    reconcile_once(&api, &ctx, "og").await.expect("next pass");
    assert_eq!(stored_status(&api, "og").observed_generation, Some(2));
}

/// A Secret `og-ca` the user made before the cluster, holding `ca.crt` and `ca.key`.
fn user_authority_secret(cert_pem: &str, key_pem: &str) -> Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "og-ca", "namespace": NS, "resourceVersion": "1"},
        "data": {
            "ca.crt": base64_like::encode(cert_pem.as_bytes()),
            "ca.key": base64_like::encode(key_pem.as_bytes()),
        },
    })
}

fn tls_cluster(api: &FakeApi) {
    api.insert(
        &cluster_path(NS, "og"),
        cluster_json("og", serde_json::json!({"instances": 3, "tls": {"enabled": true}})),
    );
}

#[tokio::test]
async fn an_authority_the_user_brings_is_issued_with_and_never_written() {
    let api = FakeApi::new();
    tls_cluster(&api);
    let mine = opengauss_operator::tls::Authority::generate("mine", time::OffsetDateTime::now_utc())
        .expect("an authority");
    let secret = user_authority_secret(mine.cert_pem(), &mine.0.key_pem);
    api.insert("/api/v1/namespaces/apps/secrets/og-ca", secret.clone());
    let ctx = context(&api, 8000);
    reconcile_once(&api, &ctx, "og").await.expect("reconcile succeeds");

    assert!(
        !api.writes()
            .iter()
            .any(|c| c.target().resource == "secrets" && c.target().name.as_deref() == Some("og-ca")),
        "the user's Secret is not written: {:#?}",
        shorts(&api.writes())
    );
    assert_eq!(
        api.get("/api/v1/namespaces/apps/secrets/og-ca").expect("still there")["data"],
        secret["data"]
    );
    let tls = api.get("/api/v1/namespaces/apps/secrets/og-tls").expect("the certificates' Secret");
    let text = |key: &str| -> String {
        let bytes: k8s_openapi::ByteString =
            serde_json::from_value(tls["data"][key].clone()).unwrap_or_else(|e| panic!("{key}: {e}"));
        String::from_utf8(bytes.0).expect("utf-8")
    };
    assert_eq!(text("ca.crt"), mine.cert_pem());
    for k in 0..3 {
        let pair = opengauss_operator::tls::KeyedCertificate {
            cert_pem: text(&format!("og-{k}.crt")),
            key_pem: text(&format!("og-{k}.key")),
        };
        opengauss_operator::tls::inspect::check_server_pair(&pair, mine.cert_pem(), &[], unix_now())
            .unwrap_or_else(|e| panic!("og-{k} signed by the user's authority: {e}"));
    }
}

#[tokio::test]
async fn a_broken_authority_stops_the_reconcile_with_the_secret_named_and_nothing_made() {
    let now = time::OffsetDateTime::now_utc();
    let real = opengauss_operator::tls::Authority::generate("real", now).expect("an authority");
    let other = opengauss_operator::tls::Authority::generate("other", now).expect("another");
    let leaf =
        real.issue("leaf", &["leaf".into()], now, std::time::Duration::from_secs(3600)).expect("a leaf");
    for (what, cert, key, expected) in [
        (
            "a server certificate",
            leaf.cert_pem.as_str(),
            leaf.key_pem.as_str(),
            "not a certificate authority",
        ),
        ("another authority's key", real.cert_pem(), other.0.key_pem.as_str(), "does not belong"),
        ("not PEM", "hello", real.0.key_pem.as_str(), "not a usable certificate"),
    ] {
        let api = FakeApi::new();
        tls_cluster(&api);
        api.insert("/api/v1/namespaces/apps/secrets/og-ca", user_authority_secret(cert, key));
        let ctx = context(&api, 8000);
        let error = reconcile_once(&api, &ctx, "og").await.expect_err(what);
        assert!(error.contains("og-ca") && error.contains(expected), "{what}: {error}");
        let writes: Vec<String> =
            api.writes().iter().filter(|c| c.target().resource != "events").map(|c| c.short()).collect();
        assert!(writes.is_empty(), "{what}: nothing made or rewritten: {writes:#?}");
    }
}

/// A Secret of the user's, `name`, holding `entries`.
fn users_secret(name: &str, entries: &BTreeMap<String, String>) -> Value {
    let data: serde_json::Map<String, Value> =
        entries.iter().map(|(k, v)| (k.clone(), Value::String(base64_like::encode(v.as_bytes())))).collect();
    serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": NS, "resourceVersion": "1"},
        "data": data,
    })
}

#[tokio::test]
async fn supplied_server_certificates_are_checked_and_never_written() {
    use opengauss_operator::tls::{Authority, KeyedCertificate};
    let api = FakeApi::new();
    tls_cluster(&api);
    let now = time::OffsetDateTime::now_utc();
    let users = Authority::generate("users", now).expect("an authority");
    let cluster = stored_cluster(&api, "og");
    let opts = options(8000);
    let pair_for = |instance: &str, authority: &Authority| -> KeyedCertificate {
        let host =
            opengauss_operator::platform::kubernetes::builders::instance_host(&cluster, instance, &opts);
        authority
            .issue(&host, std::slice::from_ref(&host), now, std::time::Duration::from_secs(3600))
            .expect("issue")
    };
    api.insert(
        "/api/v1/namespaces/apps/secrets/og-ca",
        users_secret("og-ca", &BTreeMap::from([("ca.crt".to_string(), users.cert_pem().to_string())])),
    );
    let mut entries = BTreeMap::from([("ca.crt".to_string(), users.cert_pem().to_string())]);
    for k in 0..3 {
        let pair = pair_for(&format!("og-{k}"), &users);
        entries.insert(format!("og-{k}.crt"), pair.cert_pem);
        entries.insert(format!("og-{k}.key"), pair.key_pem);
    }
    api.insert("/api/v1/namespaces/apps/secrets/og-tls", users_secret("og-tls", &entries));

    let ctx = context(&api, 8000);
    reconcile_once(&api, &ctx, "og").await.expect("reconcile succeeds");
    let secret_writes: Vec<String> =
        api.writes().iter().filter(|c| c.target().resource == "secrets").map(|c| c.short()).collect();
    assert_eq!(secret_writes, ["POST secrets"], "only the credentials are made: {secret_writes:?}");
    let pod = api.get(&pod_path(NS, "og-1")).expect("pods are made with the supplied pairs");
    assert!(
        pod["spec"]["volumes"]
            .as_array()
            .is_some_and(|v| v.iter().any(|v| v["secret"]["secretName"] == "og-tls"))
    );
    assert!(!event_reasons(&api).iter().any(|r| r == "CertificateRefused" || r == "CertificateIssued"));

    // A broken replacement (another authority's pair for og-1): told as a warning naming the
    // entry, nothing written, the reconcile goes on.
    let foreign = pair_for("og-1", &Authority::generate("other", now).expect("other"));
    entries.insert("og-1.crt".into(), foreign.cert_pem);
    entries.insert("og-1.key".into(), foreign.key_pem);
    api.insert("/api/v1/namespaces/apps/secrets/og-tls", users_secret("og-tls", &entries));
    api.clear_journal();
    let fresh = context(&api, 8000);
    reconcile_once(&api, &fresh, "og").await.expect("a refused pair does not stop the reconcile");
    assert!(!api.writes().iter().any(|c| c.target().resource == "secrets"), "{:#?}", shorts(&api.writes()));
    let refused = event_notes(&api, "CertificateRefused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].contains("\"og-1.crt\"") && refused[0].contains("not signed"), "{refused:?}");
}
