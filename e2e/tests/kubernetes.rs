//! The Kubernetes suite: the operator from `deploy/` on a real cluster, every scenario through
//! kubectl and the database. `make e2e-k8s` runs it on this machine's one-node cluster (built
//! from upstream parts by `make k8s-up`; `make test` does both), `make e2e-kind` on kind. The
//! scenarios are ignored in a plain `cargo nextest run`, which has no cluster; the shared
//! database checks run there against the local platform, so they are known to work.

use std::time::Duration;

use opengauss_e2e::checks;
use opengauss_e2e::kube::{Driver, scenarios};
use opengauss_e2e::{LocalCluster, postgres_available};

fn driver() -> Driver {
    Driver::from_env().expect("a Kubernetes cluster to run on")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shared_checks_pass_on_the_local_platform() {
    assert!(postgres_available(), "needs the PostgreSQL server binaries (apt-get install postgresql)");
    let mut c = LocalCluster::new("kube-checks", 3, "");
    c.start();
    let status = c.wait_healthy(Duration::from_secs(90)).await.expect("healthy");
    let primary = status.current_primary.clone().expect("primary");
    checks::original_deployment_checks(&c, &primary, "checks")
        .await
        .expect("the original deployment's checks");
    // The checks can fail: a standby is not the primary.
    let standby = (0..3).map(|k| c.instance(k)).find(|n| *n != primary).expect("standby");
    let err =
        checks::original_deployment_checks(&c, &standby, "checks_wrong").await.expect_err("wrong primary");
    assert!(err.to_string().contains("should accept writes"), "{err:#}");
    let down = c.down();
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes cluster: make e2e-k8s (this machine's one-node cluster) or make e2e-kind"]
async fn postgres_bootstrap_checks_columns_events_and_cleanup() {
    scenarios::bootstrap_checks_and_cleanup(&driver(), scenarios::POSTGRES_SAMPLE, "e2e-bootstrap")
        .await
        .expect("bootstrap");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a kind cluster with the openGauss image pullable: make e2e-kind (no openGauss image exists on this machine)"]
async fn opengauss_bootstrap_checks_columns_events_and_cleanup() {
    scenarios::bootstrap_checks_and_cleanup(&driver(), scenarios::OPENGAUSS_SAMPLE, "e2e-opengauss")
        .await
        .expect("openGauss bootstrap");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes cluster: make e2e-k8s (this machine's one-node cluster) or make e2e-kind"]
async fn deleting_the_primary_pod_fails_over_and_the_pod_rejoins() {
    scenarios::failover_by_deleting_the_primary_pod(&driver(), "e2e-delete-primary").await.expect("failover");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes cluster: make e2e-k8s (this machine's one-node cluster) or make e2e-kind"]
async fn killing_the_primary_container_fails_over_and_it_rejoins() {
    scenarios::failover_by_killing_the_primary_container(&driver(), "e2e-kill-primary")
        .await
        .expect("failover");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes cluster: make e2e-k8s (this machine's one-node cluster) or make e2e-kind"]
async fn a_switchover_annotation_moves_the_primary() {
    scenarios::switchover_by_annotation(&driver(), "e2e-switchover").await.expect("switchover");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes cluster: make e2e-k8s (this machine's one-node cluster) or make e2e-kind"]
async fn scaling_three_to_five_to_two_to_three() {
    scenarios::scale_up_down_and_back(&driver(), "e2e-scale").await.expect("scaling");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes cluster: make e2e-k8s (this machine's one-node cluster) or make e2e-kind"]
async fn fencing_and_unfencing_a_standby_and_the_primary() {
    scenarios::fence_and_unfence(&driver(), "e2e-fence").await.expect("fencing");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes cluster: make e2e-k8s (this machine's one-node cluster) or make e2e-kind"]
async fn a_restart_only_parameter_rolls_through_the_cluster() {
    scenarios::parameter_change_with_rolling_restart(&driver(), "e2e-parameters").await.expect("parameters");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes cluster: make e2e-k8s (this machine's one-node cluster) or make e2e-kind"]
async fn invalid_clusters_are_refused_by_the_api_server() {
    scenarios::invalid_clusters_are_refused(&driver(), "e2e-invalid").await.expect("validation");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes cluster: make e2e-k8s (this machine's one-node cluster) or make e2e-kind"]
async fn the_kubectl_plugin_works_against_the_api_server() {
    let plugin = opengauss_e2e::operator_binary().with_file_name("kubectl-opengauss");
    scenarios::kubectl_plugin(&driver(), "e2e-plugin", plugin).await.expect("kubectl opengauss");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes cluster: make e2e-k8s (this machine's one-node cluster) or make e2e-kind"]
async fn losing_the_operator_leader_mid_failover_promotes_once() {
    scenarios::leader_lost_during_failover(&driver(), "e2e-leader").await.expect("leader change");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes cluster: make e2e-k8s (this machine's one-node cluster) or make e2e-kind"]
async fn a_new_image_or_resources_roll_the_pods_standbys_first() {
    scenarios::definition_change_rolls_the_pods(&driver(), "e2e-roll").await.expect("rolling update");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes cluster: make e2e-k8s (this machine's one-node cluster) or make e2e-kind"]
async fn short_lived_certificates_renew_without_downtime() {
    scenarios::certificates_renew_without_downtime(&driver(), "e2e-renewal").await.expect("renewal");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Kubernetes cluster: make e2e-k8s (this machine's one-node cluster) or make e2e-kind"]
async fn server_certificates_the_user_supplies_are_served() {
    scenarios::supplied_certificates_are_served(&driver(), "e2e-supplied")
        .await
        .expect("supplied certificates");
}
