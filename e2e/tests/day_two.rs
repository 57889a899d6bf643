//! Day-two operations on real PostgreSQL through the local platform: scaling, parameter
//! changes (reload and rolling restart) and fencing, all through `local apply`.

use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use opengauss_crd::{Phase, Role, TransitionKind};
use opengauss_e2e::wait::{Probe, until};
use opengauss_e2e::writer::{Writer, missing_rows};
use opengauss_e2e::{LocalCluster, postgres_available};

const BOOT: Duration = Duration::from_secs(90);
const CONVERGE: Duration = Duration::from_secs(180);

async fn started(test: &str, instances: u32, extra: &str) -> LocalCluster {
    assert!(postgres_available(), "needs the PostgreSQL server binaries (apt-get install postgresql)");
    let mut c = LocalCluster::new(test, instances, extra);
    c.start();
    c.wait_healthy(BOOT).await.expect("healthy");
    c
}

/// The setting as the server reports it; `None` while it cannot be asked (restarting).
async fn show(c: &LocalCluster, instance: &str, setting: &str) -> Option<String> {
    let client = c.connect(instance).await.ok()?;
    client.query_one(&format!("SHOW {setting}"), &[]).await.ok().map(|r| r.get(0))
}

async fn started_at(c: &LocalCluster, instance: &str) -> SystemTime {
    let client = c.connect(instance).await.expect("connect");
    client.query_one("SELECT pg_postmaster_start_time()", &[]).await.expect("start time").get(0)
}

/// 3 -> 5 -> 2 -> 3 with a writer running: each step converges with the requested number of
/// streaming standbys, writes continue, nothing acknowledged is lost, and a primary beyond the
/// new size hands over before anything is removed.
#[tokio::test(flavor = "multi_thread")]
async fn scale_three_five_two_three_without_losing_writes() {
    let mut c = started("scale", 3, "").await;
    let w = Writer::start(&c).await.expect("writer");
    let mut acked = w.progress(0, "at 3").await;

    let generation = c.apply(5, "");
    let s = c.wait_healthy_at(generation, CONVERGE).await.expect("5 instances");
    let names: Vec<&str> = s.instances.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["demo-0", "demo-1", "demo-2", "demo-3", "demo-4"]);
    assert_eq!(s.instances.iter().filter(|i| i.role == Role::Standby && i.ready).count(), 4);
    assert_eq!(
        s.synchronous.as_ref().map(|x| x.standbys.len()),
        Some(4),
        "new standbys join the synchronous set"
    );
    acked = w.progress(acked, "at 5").await;

    // Make the highest ordinal the primary, so the scale-down must move it first.
    let dir = c.state_dir.display().to_string();
    let out = c.cli(&["local", "switchover", "--state-dir", &dir, "demo-4"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    c.wait_healthy(CONVERGE).await.expect("healthy after the switchover");
    acked = w.progress(acked, "after the switchover").await;

    let generation = c.apply(2, "");
    let s = c.wait_healthy_at(generation, CONVERGE).await.expect("2 instances");
    let names: Vec<&str> = s.instances.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["demo-0", "demo-1"]);
    assert!(matches!(s.current_primary.as_deref(), Some("demo-0" | "demo-1")), "{:?}", s.current_primary);
    let last = s.last_transition.as_ref().expect("a switchover moved the primary");
    assert_eq!((last.kind, last.from.as_str()), (TransitionKind::Switchover, "demo-4"));
    for gone in ["demo-2", "demo-3", "demo-4"] {
        assert!(!c.instance_dir(gone).exists(), "{gone} removed with its data");
    }
    acked = w.progress(acked, "at 2").await;

    let generation = c.apply(3, "");
    let s = c.wait_healthy_at(generation, CONVERGE).await.expect("3 instances again");
    assert_eq!(s.instances.iter().filter(|i| i.role == Role::Standby && i.ready).count(), 2);
    w.progress(acked, "at 3 again").await;

    let written = w.stop().await.expect("writer");
    let missing = missing_rows(&c, &written.acknowledged).await.expect("check");
    assert!(missing.is_empty(), "{} acknowledged rows lost", missing.len());
    assert!(c.down().status.success());
}

/// A parameter the server reloads is applied everywhere without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_reloadable_parameter_is_applied_without_restarting() {
    let mut c = started("reload", 3, "").await;
    let mut before = Vec::new();
    for k in 0..3 {
        before.push(started_at(&c, &c.instance(k)).await);
    }
    let generation = c.apply(3, "  parameters:\n    work_mem: 12MB\n");
    c.wait_healthy_at(generation, CONVERGE).await.expect("healthy");
    for k in 0..3 {
        let name = c.instance(k);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while show(&c, &name, "work_mem").await.as_deref() != Some("12MB") {
            assert!(std::time::Instant::now() < deadline, "{name} never took work_mem");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(started_at(&c, &name).await, before[k as usize], "{name} was restarted");
    }
    assert!(c.down().status.success());
}

/// A parameter that needs a restart: standbys first, one at a time, then a switchover so the
/// old primary restarts last; writes fail only around the switchover.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_only_parameter_rolls_through_standbys_then_the_primary() {
    let mut c = started("rolling", 3, "").await;
    let old_primary = c.primary().expect("primary");
    let mut before = Vec::new();
    for k in 0..3 {
        before.push(started_at(&c, &c.instance(k)).await);
    }
    let w = Writer::start(&c).await.expect("writer");
    let acked = w.progress(0, "before").await;

    let generation = c.apply(3, "  parameters:\n    max_connections: \"120\"\n");
    let status = until("the rolling restart to complete", CONVERGE, Duration::from_millis(200), || async {
        let s = c.wait_healthy_at(generation, CONVERGE).await.expect("healthy");
        let mut all = true;
        for k in 0..3 {
            all &= show(&c, &c.instance(k), "max_connections").await.as_deref() == Some("120");
        }
        if all && s.last_transition.as_ref().is_some_and(|t| t.from == old_primary) {
            Probe::Done(s)
        } else {
            Probe::NotYet(format!("{s:?}"))
        }
    })
    .await
    .expect("rolling restart");
    w.progress(acked, "after the rolling restart").await;
    let written = w.stop().await.expect("writer");
    assert!(missing_rows(&c, &written.acknowledged).await.expect("check").is_empty());

    let mut after = Vec::new();
    for k in 0..3 {
        after.push(started_at(&c, &c.instance(k)).await);
    }
    let old_ordinal: usize = old_primary.rsplit('-').next().and_then(|o| o.parse().ok()).expect("ordinal");
    for k in 0..3 {
        assert!(after[k] > before[k], "demo-{k} restarted");
    }
    for k in (0..3).filter(|k| *k != old_ordinal) {
        assert!(after[k] < after[old_ordinal], "standby demo-{k} restarted before the old primary");
    }
    let last = status.last_transition.expect("switchover");
    assert_eq!(last.kind, TransitionKind::Switchover);
    assert!(last.reason.contains("max_connections"), "{}", last.reason);
    // Writes failed only around the switchover (whole seconds: the status keeps seconds).
    let from = SystemTime::from(last.started_at.0) - Duration::from_secs(1);
    let to = SystemTime::from(last.completed_at.expect("completed").0) + Duration::from_secs(2);
    let outside: Vec<&SystemTime> = written.failures.iter().filter(|t| **t < from || **t > to).collect();
    assert!(outside.is_empty(), "{} write failures outside the switchover", outside.len());
    assert!(c.down().status.success());
}

/// A fenced standby stops, is never promoted, and comes back when unfenced; a failover whose
/// only other standby is fenced says why it cannot proceed.
#[tokio::test(flavor = "multi_thread")]
async fn fencing_keeps_an_instance_out_and_unfencing_brings_it_back() {
    let mut c = started("fence", 3, "").await;
    let primary = c.primary().expect("primary");
    let standbys: Vec<String> = (0..3).map(|k| c.instance(k)).filter(|n| *n != primary).collect();
    let (kept, fenced) = (standbys[0].clone(), standbys[1].clone());

    let generation = c.apply(3, &format!("  fencedInstances: [{fenced}]\n"));
    let s = c
        .wait_for("the standby fenced", CONVERGE, |s| {
            s.observed_generation.is_some_and(|g| g >= generation)
                && s.instance(&fenced).is_some_and(|i| i.state == "fenced")
        })
        .await
        .expect("fenced");
    assert!(c.connect(&fenced).await.is_err(), "a fenced server accepts no connections");
    assert_eq!(s.phase, Some(Phase::Degraded));

    // The primary dies: the fenced standby is never the one promoted.
    c.signal_instance(&primary, Signal::SIGKILL).expect("kill");
    let s = c
        .wait_for("failover to the unfenced standby", CONVERGE, |s| {
            s.current_primary.as_deref() == Some(kept.as_str()) && s.transition.is_none()
        })
        .await
        .expect("failover");
    assert_ne!(s.current_primary.as_deref(), Some(fenced.as_str()));
    c.wait_for("the old primary back as a standby", CONVERGE, |s| {
        s.instance(&primary).is_some_and(|i| i.role == Role::Standby && i.ready)
    })
    .await
    .expect("rejoined");

    // Fence the only other standby too, then lose the primary: nothing can be promoted.
    let generation = c.apply(3, &format!("  fencedInstances: [{fenced}, {primary}]\n"));
    c.wait_for("both standbys fenced", CONVERGE, |s| {
        s.observed_generation.is_some_and(|g| g >= generation)
            && [&fenced, &primary].iter().all(|n| s.instance(n).is_some_and(|i| i.state == "fenced"))
    })
    .await
    .expect("fenced");
    c.signal_instance(&kept, Signal::SIGSTOP).expect("freeze the primary");
    let s = c
        .wait_for("a blocked failover", CONVERGE, |s| s.phase == Some(Phase::FailoverBlocked))
        .await
        .expect("blocked");
    let reason = s.phase_reason.unwrap_or_default();
    assert!(reason.contains("fenced"), "the reason names the fencing: {reason}");
    c.signal_instance(&kept, Signal::SIGCONT).expect("thaw");

    // Unfence everything: the cluster is whole again.
    let generation = c.apply(3, "");
    let s = c.wait_healthy_at(generation, CONVERGE).await.expect("healthy again");
    assert_eq!(s.ready_instances, 3);
    assert!(c.connect(&fenced).await.is_ok(), "unfenced, it accepts connections again");
    assert!(c.down().status.success());
}

/// A standby kept out while the primary recycles the WAL it would need cannot stream when it
/// returns: it is cloned again as soon as that is clear, not after the one-minute stall rule.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_whose_wal_is_gone_from_the_primary_is_cloned_again() {
    // Every spec applied keeps the smallest WAL retention, so recycling comes quickly.
    const KEEP_ONE: &str = "  replication:\n    walKeepSegments: 1\n";
    let mut c = started("walgone", 3, KEEP_ONE).await;
    let primary = c.primary().expect("primary");
    let away = (0..3).map(|k| c.instance(k)).find(|n| *n != primary).expect("a standby");
    let generation = c.apply(3, &format!("{KEEP_ONE}  fencedInstances: [{away}]\n"));
    c.wait_for("the standby fenced", CONVERGE, |s| {
        s.observed_generation.is_some_and(|g| g >= generation)
            && s.instance(&away).is_some_and(|i| i.state == "fenced")
    })
    .await
    .expect("fenced");

    // Nothing the fenced standby holds is past the primary's position now; move the primary on
    // until every segment up to the one holding that position is gone from its WAL directory
    // (`+ 1`: at a segment boundary, the file name is the previous segment's).
    let p = c.connect(&primary).await.expect("primary");
    let fenced_at: String =
        p.query_one("SELECT pg_walfile_name(pg_current_wal_lsn() + 1)", &[]).await.expect("lsn").get(0);
    p.batch_execute("CREATE TABLE churn (id int)").await.expect("table");
    let sql = "SELECT count(*) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$' AND name <= $1";
    until("the fenced standby's WAL to be recycled", CONVERGE, Duration::from_millis(10), || async {
        p.batch_execute(
            "INSERT INTO churn SELECT generate_series(1, 1000); SELECT pg_switch_wal(); CHECKPOINT",
        )
        .await
        .expect("churn");
        match p.query_one(sql, &[&fenced_at]).await.map(|r| r.get::<_, i64>(0)) {
            Ok(0) => Probe::Done(()),
            other => Probe::NotYet(format!("segments up to {fenced_at} left: {other:?}")),
        }
    })
    .await
    .expect("recycled");

    let generation = c.apply(3, KEEP_ONE);
    let s = c.wait_healthy_at(generation, CONVERGE).await.expect("healthy again");
    assert!(s.instance(&away).is_some_and(|i| i.role == Role::Standby && i.ready));
    let said = c.controller_output();
    assert!(
        said.lines()
            .any(|l| l.contains("RebuildingStandby") && l.contains(&away) && l.contains("no longer holds")),
        "the rebuild names the missing WAL:\n{said}"
    );
    let rows = c.connect(&away).await.expect("standby").query_one("SELECT count(*) FROM churn", &[]).await;
    assert!(rows.expect("churn replicated").get::<_, i64>(0) > 0);
    assert!(c.down().status.success());
}

/// `local apply --wait` returns only once the status shows the applied spec carried out: after
/// a scale-up every instance streams inside the synchronous set, after a scale-down the removed
/// instance is gone from the status, after ANY 2 the set says ANY 2.
#[tokio::test(flavor = "multi_thread")]
async fn apply_wait_returns_only_when_the_status_shows_the_spec() {
    let c = started("applywait", 3, "").await;
    let dir = c.state_dir.display().to_string();
    let file = c.file.display().to_string();
    let apply_and_wait = |instances: u32, extra: &str| {
        std::fs::write(&c.file, opengauss_e2e::cluster::cluster_yaml(&c.name, instances, extra))
            .expect("cluster file");
        let out = c.cli(&["local", "apply", "-f", &file, "--state-dir", &dir, "--wait", "180"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        c.status().expect("status")
    };
    let streaming_in_set = |s: &opengauss_crd::OpenGaussClusterStatus, n: usize| {
        let primary = s.current_primary.clone().expect("primary");
        let standbys: Vec<_> = s.instances.iter().filter(|i| i.name != primary).collect();
        assert_eq!(s.instances.len(), n, "{:?}", s.instances);
        assert_eq!(standbys.len(), n - 1);
        for i in standbys {
            assert_eq!(i.replication_state.as_deref(), Some("streaming"), "{i:?}");
            assert!(matches!(i.sync_state.as_deref(), Some("quorum" | "sync" | "potential")), "{i:?}");
        }
    };

    let s = apply_and_wait(4, "");
    streaming_in_set(&s, 4);
    assert_eq!(s.synchronous.as_ref().map(|x| x.standbys.len()), Some(3));

    let s = apply_and_wait(3, "");
    streaming_in_set(&s, 3);
    assert!(s.instance("demo-3").is_none(), "the removed instance is still listed");

    let s = apply_and_wait(3, "  replication:\n    synchronous:\n      method: any\n      number: 2\n");
    streaming_in_set(&s, 3);
    assert_eq!(s.synchronous.as_ref().map(|x| x.number), Some(2), "{:?}", s.synchronous);
}
