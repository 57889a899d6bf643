//! The kind suite (`make e2e-kind`): the operator on a real Kubernetes cluster in Docker, with
//! the same database checks as the local end-to-end tests. The kind tests are ignored here:
//! this project's machines cannot pull container images. The shared checks themselves run here
//! against the local platform on real PostgreSQL, so they are known to work.

use std::time::Duration;

use opengauss_e2e::kind::{KindEnv, checks, lifecycle};
use opengauss_e2e::{LocalCluster, postgres_available};

const NEEDS_KIND: &str = "needs Docker, kind, kubectl and internet to pull images: run `make e2e-kind`";

#[tokio::test(flavor = "multi_thread")]
async fn the_shared_checks_pass_on_the_local_platform() {
    assert!(postgres_available(), "needs the PostgreSQL server binaries (apt-get install postgresql)");
    let mut c = LocalCluster::new("kind-checks", 3, "");
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
#[ignore = "needs Docker, kind, kubectl and internet to pull images: run `make e2e-kind`"]
async fn kind_opengauss_cluster_bootstrap_checks_failover_rejoin_and_cleanup() {
    let env = KindEnv::from_env();
    env.prepare().await.expect(NEEDS_KIND);
    lifecycle(&env, "deploy/samples/opengauss.yaml", "e2e-opengauss", true)
        .await
        .expect("openGauss lifecycle");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Docker, kind, kubectl and internet to pull images: run `make e2e-kind`"]
async fn kind_postgres_cluster_bootstrap_checks_failover_rejoin_and_cleanup() {
    let env = KindEnv::from_env();
    env.prepare().await.expect(NEEDS_KIND);
    lifecycle(&env, "deploy/samples/postgres.yaml", "e2e-postgres", true)
        .await
        .expect("PostgreSQL lifecycle");
}
