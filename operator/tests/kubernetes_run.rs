//! `opengauss-operator run` against a mocked API server: it waits for its CRD, elects one
//! leader among replicas, keeps watching past a malformed object, hands over on shutdown and
//! stops when its lease is taken.

mod kubernetes_support;

use std::time::Duration;

use kubernetes_support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_reconciles_past_a_malformed_object_and_releases_its_lease() {
    let api = scenario_operator_run().await;
    let calls = api.calls();
    let first = |what: &str| calls.iter().position(|c| c.short() == what);
    let crd = first("GET customresourcedefinitions/opengaussclusters.ha.opengauss.dev").expect("CRD checked");
    let lease = first("POST leases").expect("lease created");
    let list = calls
        .iter()
        .position(|c| {
            c.method == "GET" && c.target().resource == "opengaussclusters" && c.target().name.is_none()
        })
        .expect("clusters listed");
    assert!(crd < lease && lease < list, "CRD, then leadership, then watching");
    let watched_all = calls.iter().any(|c| {
        c.path == "/apis/ha.opengauss.dev/v1alpha1/opengaussclusters" && c.query.contains_key("watch")
    });
    assert!(watched_all, "clusters of every namespace are watched");
    // The init containers copy the manager from the operator's own image.
    let pod = api.get(&pod_path(NS, "og-0")).expect("pod");
    assert_eq!(pod["spec"]["initContainers"][0]["image"], "registry.example/opengauss-operator:1.2.3");
    // Released on the way out.
    assert_eq!(lease_holder(&api).as_deref(), Some(""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_acts_and_the_other_takes_over_when_it_stops() {
    let api = operator_world(true);
    let a = Replica::start(&api, "op-a");
    eventually("op-a leads and reconciles", Duration::from_secs(20), || {
        lease_holder(&api).as_deref() == Some("op-a") && api.get(&pod_path(NS, "og-0")).is_some()
    })
    .await;
    let b = Replica::start(&api, "op-b");
    // Long enough for op-b to poll the lease more than once.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let b_writes: Vec<String> =
        api.writes().into_iter().filter(|c| c.who == "op-b").map(|c| c.short()).collect();
    assert!(b_writes.is_empty(), "a follower writes nothing: {b_writes:?}");
    assert!(
        api.calls().iter().any(|c| c.who == "op-b" && c.target().resource == "leases"),
        "op-b polls the lease"
    );
    assert_eq!(lease_holder(&api).as_deref(), Some("op-a"));

    a.stop().await.expect("op-a stops cleanly");
    let stopped_at = api.calls().len();
    eventually("op-b takes over", Duration::from_secs(10), || lease_holder(&api).as_deref() == Some("op-b"))
        .await;
    // Taking the cluster up starts by reading its credentials; the cluster-level objects op-a
    // applied are in op-b's caches already and are not written again.
    eventually("op-b reconciles", Duration::from_secs(20), || {
        api.calls()[stopped_at..].iter().any(|c| c.who == "op-b" && c.target().resource == "secrets")
    })
    .await;
    b.stop().await.expect("op-b stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_is_taken_stops() {
    let api = operator_world(true);
    let a = Replica::start(&api, "op-a");
    eventually("op-a leads", Duration::from_secs(20), || lease_holder(&api).as_deref() == Some("op-a")).await;
    api.modify(LEASE_PATH, |l| l["spec"]["holderIdentity"] = json!("intruder"));
    let result =
        tokio::time::timeout(Duration::from_secs(20), a.handle).await.expect("op-a exits").expect("joins");
    let err = result.expect_err("losing the lease is an error exit");
    assert!(err.to_string().contains("lost the leadership"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_watched_before_the_crd_is_established() {
    let api = operator_world(false);
    let a = Replica::start(&api, "op-a");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let touched: Vec<String> = api
        .calls()
        .iter()
        .filter(|c| c.target().resource != "customresourcedefinitions")
        .map(|c| c.short())
        .collect();
    assert!(touched.is_empty(), "waits for the CRD first: {touched:?}");
    api.insert(CRD_PATH, established_crd());
    eventually("reconciling once the CRD is there", Duration::from_secs(20), || {
        api.get(&pod_path(NS, "og-0")).is_some()
    })
    .await;
    a.stop().await.expect("stops");
}
