//! The real-openGauss tier: the local platform running a real openGauss installation (built
//! from its source; no registry carries one), checked the way the original Docker deployment
//! was checked by hand, then through kill, freeze, switchover, a restart-only parameter,
//! scaling and fencing, with a writer that records every acknowledged commit.
//!
//! openGauss cannot be installed in CI, so these tests are ignored there and run by
//! `make e2e-opengauss` with `OPENGAUSS_BIN_DIR` naming an installation's `bin/` (its `lib/`
//! beside it) and `OPENGAUSS_OS_USER` (default `omm`) the OS user its servers run as.

use std::time::Duration;

use nix::sys::signal::Signal;
use opengauss_crd::{Role, TransitionKind};
use opengauss_e2e::checks::{SqlCluster, original_deployment_checks, replication_rows};
use opengauss_e2e::wait::{Probe, until};
use opengauss_e2e::writer::{Writer, missing_rows};
use opengauss_e2e::{LocalCluster, OpenGaussInstall};

const BOOT: Duration = Duration::from_secs(180);
const CONVERGE: Duration = Duration::from_secs(180);

async fn started(test: &str, instances: u32, extra: &str) -> LocalCluster {
    let install = OpenGaussInstall::from_env().unwrap_or_else(|why| panic!("{why}"));
    let mut c = LocalCluster::opengauss(&install, test, instances, extra);
    c.start();
    c.wait_healthy(BOOT).await.unwrap_or_else(|e| panic!("{e:#}\n{}", c.controller_output()));
    c
}

async fn show(c: &LocalCluster, instance: &str, setting: &str) -> String {
    scalar(c, instance, &format!("SHOW {setting}")).await
}

async fn scalar(c: &LocalCluster, instance: &str, sql: &str) -> String {
    let rows = c.query(instance, sql).await.expect(sql);
    rows.first().and_then(|r| r[0].clone()).unwrap_or_default()
}

async fn healthy_without(c: &LocalCluster, old: &str) -> opengauss_crd::OpenGaussClusterStatus {
    c.wait_healthy_without(old, CONVERGE).await.unwrap_or_else(|e| panic!("{e:#}\n{}", c.controller_output()))
}

/// Exactly `primary` accepts writes and every other instance streams from it.
async fn one_writer_all_streaming(c: &LocalCluster, primary: &str) {
    let writable = until(
        "one writable instance, every standby streaming",
        CONVERGE,
        Duration::from_millis(500),
        || async {
            let writable = opengauss_e2e::checks::writable_instances(c).await;
            let rows = replication_rows(c, primary).await.unwrap_or_default();
            let streaming = rows.iter().filter(|r| r.1 == "streaming").count();
            if writable == [primary.to_string()] && streaming == c.instance_names().len() - 1 {
                Probe::Done(writable)
            } else {
                Probe::NotYet(format!("writable {writable:?}, replication {rows:?}"))
            }
        },
    )
    .await
    .expect("replication settles");
    assert_eq!(writable, vec![primary.to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a real openGauss installation: make e2e-opengauss"]
async fn opengauss_three_instances_replicate_like_the_original_deployment() {
    let mut c = started("og-boot", 3, "").await;
    let primary = c.primary().expect("primary");
    original_deployment_checks(&c, &primary, "original").await.expect("the original deployment's checks");
    // The original deployment's settings, as the server reports them.
    assert_eq!(show(&c, &primary, "wal_level").await, "hot_standby");
    assert_eq!(show(&c, &primary, "max_wal_senders").await, "10");
    assert_eq!(show(&c, &primary, "wal_keep_segments").await, "256");
    let names = show(&c, &primary, "synchronous_standby_names").await;
    assert!(names.starts_with("ANY 1("), "synchronous_standby_names = {names}");
    // The managed settings live inside postgresql.conf: gs_ctl build refuses include lines.
    let conf = std::fs::read_to_string(c.instance_dir(&primary).join("data/postgresql.conf")).expect("conf");
    assert!(!conf.lines().any(|l| l.trim_start().starts_with("include")), "an include line is left");
    // Status shows where each standby has replayed to.
    let s = c.status().expect("status");
    for i in s.instances.iter().filter(|i| i.role == Role::Standby) {
        assert!(i.replayed_lsn.is_some(), "{} shows no replayed position", i.name);
    }
    // The banner names the SQL shell of this engine.
    let out = c.controller_output();
    assert!(out.contains("gsql") && !out.contains("psql "), "{out}");
    assert!(c.down().status.success());
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a real openGauss installation: make e2e-opengauss"]
async fn opengauss_killed_primary_fails_over_and_rejoins_by_incremental_build() {
    let mut c = started("og-kill", 3, "").await;
    let old = c.primary().expect("primary");
    let w = Writer::start(&c).await.expect("writer");
    let acked = w.progress(0, "before the kill").await;

    c.signal_instance(&old, Signal::SIGKILL).expect("kill manager and server");
    let s = healthy_without(&c, &old).await;
    let new = s.current_primary.clone().expect("new primary");
    w.progress(acked, "after the failover").await;
    let written = w.stop().await.expect("writer");
    assert!(
        missing_rows(&c, &written.acknowledged).await.expect("check").is_empty(),
        "acknowledged rows lost"
    );
    one_writer_all_streaming(&c, &new).await;

    let last = s.last_transition.as_ref().expect("status tells the story");
    assert_eq!(last.kind, TransitionKind::Failover);
    assert_eq!((last.from.as_str(), last.to.as_deref()), (old.as_str(), Some(new.as_str())));
    // The old primary came back by `gs_ctl build -b incremental`, not a full copy.
    let rejoin = c.manager_output(&old);
    assert!(rejoin.contains("rewound from"), "{rejoin}");
    assert!(!c.instance_dir(&old).join("data.previous").exists(), "the old primary was cloned again");
    assert!(c.down().status.success());
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a real openGauss installation: make e2e-opengauss"]
async fn opengauss_frozen_primary_is_replaced_and_rejoins_without_taking_writes() {
    let mut c = started("og-freeze", 3, "").await;
    let old = c.primary().expect("primary");
    let w = Writer::start(&c).await.expect("writer");
    let acked = w.progress(0, "before the freeze").await;

    c.signal_instance(&old, Signal::SIGSTOP).expect("freeze");
    c.wait_for("a new primary while the old one is frozen", CONVERGE, |s| {
        s.current_primary.as_deref().is_some_and(|p| p != old) && s.transition.is_none()
    })
    .await
    .expect("failover");
    let acked = w.progress(acked, "while the old primary is frozen").await;
    c.signal_instance(&old, Signal::SIGCONT).expect("thaw");
    let s = healthy_without(&c, &old).await;
    let new = s.current_primary.clone().expect("new primary");
    w.progress(acked, "after the thaw").await;
    let written = w.stop().await.expect("writer");
    assert!(
        missing_rows(&c, &written.acknowledged).await.expect("check").is_empty(),
        "acknowledged rows lost"
    );
    one_writer_all_streaming(&c, &new).await;
    assert!(c.down().status.success());
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a real openGauss installation: make e2e-opengauss"]
async fn opengauss_switchover_moves_the_primary_and_loses_nothing() {
    let mut c = started("og-switch", 3, "").await;
    let old = c.primary().expect("primary");
    let target = (0..3).map(|k| c.instance(k)).find(|n| *n != old).expect("a standby");
    let w = Writer::start(&c).await.expect("writer");
    let acked = w.progress(0, "before the switchover").await;

    let dir = c.state_dir.display().to_string();
    let out = c.cli(&["local", "switchover", "--state-dir", &dir, &target]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = healthy_without(&c, &old).await;
    assert_eq!(s.current_primary.as_deref(), Some(target.as_str()));
    w.progress(acked, "after the switchover").await;
    let written = w.stop().await.expect("writer");
    assert!(
        missing_rows(&c, &written.acknowledged).await.expect("check").is_empty(),
        "acknowledged rows lost"
    );
    one_writer_all_streaming(&c, &target).await;
    let last = s.last_transition.expect("switchover recorded");
    assert_eq!(last.kind, TransitionKind::Switchover);
    assert!(c.manager_output(&old).contains("rewound from"), "{}", c.manager_output(&old));
    assert!(c.down().status.success());
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a real openGauss installation: make e2e-opengauss"]
async fn opengauss_restart_only_parameter_rolls_through_every_instance() {
    let mut c = started("og-roll", 3, "").await;
    let old = c.primary().expect("primary");
    let w = Writer::start(&c).await.expect("writer");
    let acked = w.progress(0, "before").await;
    let generation = c.apply(3, "  parameters:\n    max_connections: \"230\"\n");
    until("max_connections 230 on every instance", CONVERGE, Duration::from_millis(500), || async {
        let s = c.wait_healthy_at(generation, CONVERGE).await.expect("healthy");
        let mut seen = Vec::new();
        for k in 0..3 {
            // An instance restarting refuses connections for a moment.
            let rows = c.query(&c.instance(k), "SHOW max_connections").await.unwrap_or_default();
            seen.push(rows.first().and_then(|r| r[0].clone()).unwrap_or_default());
        }
        if seen.iter().all(|v| v == "230") && s.last_transition.as_ref().is_some_and(|t| t.from == old) {
            Probe::Done(())
        } else {
            Probe::NotYet(format!("{seen:?}, {:?}", s.last_transition))
        }
    })
    .await
    .expect("rolled");
    w.progress(acked, "after the roll").await;
    let written = w.stop().await.expect("writer");
    assert!(
        missing_rows(&c, &written.acknowledged).await.expect("check").is_empty(),
        "acknowledged rows lost"
    );
    assert!(c.down().status.success());
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a real openGauss installation: make e2e-opengauss"]
async fn opengauss_scale_out_and_back_keeps_every_row() {
    let mut c = started("og-scale", 3, "").await;
    let primary = c.primary().expect("primary");
    let w = Writer::start(&c).await.expect("writer");
    let mut acked = w.progress(0, "before scaling").await;
    for n in [4, 3] {
        let generation = c.apply(n, "");
        let s = c.wait_healthy_at(generation, CONVERGE).await.expect("healthy after scaling");
        assert_eq!(s.ready_instances, n);
        acked = w.progress(acked, &format!("at {n} instances")).await;
    }
    let written = w.stop().await.expect("writer");
    assert!(
        missing_rows(&c, &written.acknowledged).await.expect("check").is_empty(),
        "acknowledged rows lost"
    );
    assert_eq!(c.primary().as_deref(), Some(primary.as_str()), "scaling moved the primary");
    one_writer_all_streaming(&c, &primary).await;
    let rows = scalar(&c, &primary, "SELECT count(*) FROM acked").await;
    assert!(rows.parse::<usize>().expect("a count") >= written.acknowledged.len());
    assert!(c.down().status.success());
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a real openGauss installation: make e2e-opengauss"]
async fn opengauss_fenced_standby_stops_and_returns_when_unfenced() {
    let mut c = started("og-fence", 3, "").await;
    let primary = c.primary().expect("primary");
    let victim = (0..3).map(|k| c.instance(k)).find(|n| *n != primary).expect("a standby");
    let generation = c.apply(3, &format!("  fencedInstances: [\"{victim}\"]\n"));
    c.wait_for(&format!("{victim} fenced"), CONVERGE, |s| {
        s.observed_generation == Some(generation) && s.instance(&victim).is_some_and(|i| !i.ready)
    })
    .await
    .expect("fenced");
    assert!(c.query(&victim, "SELECT 1").await.is_err(), "a fenced instance still serves");
    let generation = c.apply(3, "");
    c.wait_healthy_at(generation, CONVERGE).await.expect("unfenced");
    one_writer_all_streaming(&c, &primary).await;
    assert!(c.down().status.success());
}
