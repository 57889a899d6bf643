//! Failover, rejoin and switchover on real PostgreSQL through the local platform: real
//! processes, real SIGKILL/SIGSTOP, a client that records every acknowledged commit.

use std::time::Duration;

use nix::sys::signal::Signal;
use opengauss_crd::{Engine, Phase, Role, TransitionKind};
use opengauss_e2e::wait::{Probe, until};
use opengauss_e2e::writer::{Writer, missing_rows};
use opengauss_e2e::{LocalCluster, postgres_available};
use opengauss_operator::engine::{Dialect, Lsn, Postgres, controldata};
use opengauss_operator::instance::timeline_history;
use opengauss_operator::platform::local::binaries::find_bin_dir;

const BOOT: Duration = Duration::from_secs(90);
const FAILOVER: Duration = Duration::from_secs(90);

fn require_postgres() {
    assert!(
        postgres_available(),
        "these tests need the PostgreSQL server binaries (apt-get install postgresql)"
    );
}

async fn started(test: &str, instances: u32, extra: &str) -> LocalCluster {
    require_postgres();
    let mut c = LocalCluster::new(test, instances, extra);
    c.start();
    c.wait_healthy(BOOT).await.expect("healthy");
    c
}

async fn healthy_without(c: &LocalCluster, old: &str) -> opengauss_crd::OpenGaussClusterStatus {
    c.wait_healthy_without(old, FAILOVER).await.expect("failover and rejoin")
}

async fn write(c: &LocalCluster, instance: &str, sql: &str) {
    c.connect(instance).await.expect("connect").batch_execute(sql).await.expect(sql);
}

async fn count(c: &LocalCluster, instance: &str, sql: &str) -> i64 {
    c.connect(instance).await.expect("connect").query_one(sql, &[]).await.expect(sql).get(0)
}

async fn wait_rows(c: &LocalCluster, instance: &str, sql: &str, want: i64) {
    let what = format!("{instance}: {sql} to return {want}");
    until(&what, Duration::from_secs(20), Duration::from_millis(50), || async {
        let client = match c.connect(instance).await {
            Ok(client) => client,
            Err(e) => return Probe::NotYet(format!("connect: {e}")),
        };
        match client.query_one(sql, &[]).await.map(|row| row.get::<_, i64>(0)) {
            Ok(got) if got == want => Probe::Done(()),
            other => Probe::NotYet(format!("{other:?}")),
        }
    })
    .await
    .expect("rows arrive");
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_primary_fails_over_and_the_old_primary_rejoins() {
    let c = started("kill", 3, "").await;
    let old = c.primary().expect("primary");
    let tl = c.timeline_of(&old).expect("timeline");
    write(&c, &old, "CREATE TABLE story (id int); INSERT INTO story VALUES (1)").await;

    c.signal_instance(&old, Signal::SIGKILL).expect("kill manager and server");
    let s = healthy_without(&c, &old).await;
    let new = s.current_primary.clone().expect("new primary");

    assert_eq!(c.writable_instances().await, vec![new.clone()], "exactly one instance accepts writes");
    assert_eq!(count(&c, &new, "SELECT count(*) FROM story").await, 1, "the committed row survived");
    write(&c, &new, "INSERT INTO story VALUES (2)").await;
    let streaming =
        count(&c, &new, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").await;
    assert_eq!(streaming, 2, "the other standby and the old primary stream from the new primary");
    wait_rows(&c, &old, "SELECT count(*) FROM story", 2).await;

    let last = s.last_transition.as_ref().expect("status tells the story");
    assert_eq!(last.kind, TransitionKind::Failover);
    assert_eq!((last.from.as_str(), last.to.as_deref()), (old.as_str(), Some(new.as_str())));
    assert!(last.reason.contains("died") || last.reason.contains("crashed"), "{}", last.reason);
    let old_row = s.instance(&old).expect("old row");
    assert_eq!((old_row.role, old_row.ready), (Role::Standby, true));
    assert_eq!(c.timeline_of(&new), Some(tl + 1), "one promotion, one new timeline");
    assert!(c.controller_output().contains("FailoverCompleted"), "{}", c.controller_output());
    // Killed with its server, the old primary still rewinds: its dead server's lock is released
    // (the killed postmaster reaped) before the rewind's crash recovery runs, so no full copy.
    let rejoin = c.manager_output(&old);
    assert!(rejoin.contains("rewound from"), "{rejoin}");
    assert!(!c.instance_dir(&old).join("data.previous").exists(), "the old primary was cloned again");
}

/// What a rejoined standby's manager reads to tell whether its source can still bring it to
/// its recovery point (it stops waiting at once when not), read from real servers after a
/// failover: the new primary's timeline history names the old timeline and where it left it,
/// the standby following it holds the same history, and the old primary rewound onto it
/// records the recovery point the server itself reports, which that history contains.
#[tokio::test(flavor = "multi_thread")]
async fn timeline_histories_and_recovery_points_are_read_as_a_rejoin_checks_them() {
    let c = started("history", 3, "").await;
    let old = c.primary().expect("primary");
    let tl = c.timeline_of(&old).expect("timeline");
    write(&c, &old, "CREATE TABLE history (id int); INSERT INTO history VALUES (1)").await;
    c.signal_instance(&old, Signal::SIGKILL).expect("kill manager and server");
    let s = healthy_without(&c, &old).await;
    let new = s.current_primary.clone().expect("new primary");
    let sql = Postgres.timeline_history_sql().expect("PostgreSQL peers give their history");

    let client = c.connect(&new).await.expect("connect");
    let history = timeline_history(&client, sql).await.expect("the new primary's history");
    assert_eq!(history.timeline, tl + 1, "{history:?}");
    let [switch] = history.switches[..] else { panic!("one switch in {history:?}") };
    assert_eq!(switch.timeline, tl, "{history:?}");
    let current: String =
        client.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.expect("position").get(0);
    let current: Lsn = current.parse().expect("an LSN");
    assert!(
        switch.at > Lsn(0) && switch.at <= current,
        "switch {} beyond the primary's {current}",
        switch.at
    );
    assert_eq!(history.missing(tl, switch.at), None);
    assert!(history.missing(tl, Lsn(switch.at.0 + 1)).is_some(), "a point past the switch is not in it");

    let other = s.instances.iter().map(|i| i.name.clone()).find(|n| *n != old && *n != new).expect("third");
    let theirs = timeline_history(&c.connect(&other).await.expect("connect"), sql).await.expect("history");
    assert_eq!(theirs, history, "{other} follows {new}");

    let pg_controldata = find_bin_dir(Engine::Postgres, None).expect("PostgreSQL").join("pg_controldata");
    let data = c.instance_dir(&old).join("data");
    let rewound = c.connect(&old).await.expect("connect");
    let point = until(
        "pg_controldata and pg_control_recovery() to agree",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            let out = match std::process::Command::new(&pg_controldata).env("LC_ALL", "C").arg(&data).output()
            {
                Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
                Err(e) => return Probe::NotYet(format!("pg_controldata: {e}")),
            };
            let from_file = controldata::min_recovery_point(&out);
            let row = match rewound
                .query_one(
                    "SELECT min_recovery_end_timeline, min_recovery_end_lsn::text FROM pg_control_recovery()",
                    &[],
                )
                .await
            {
                Ok(row) => row,
                Err(e) => return Probe::NotYet(format!("pg_control_recovery(): {e}")),
            };
            let lsn: Lsn = row.get::<_, String>(1).parse().expect("an LSN");
            let from_server = (lsn != Lsn(0)).then(|| (row.get::<_, i32>(0) as u32, lsn));
            if from_file == from_server {
                Probe::Done(from_file)
            } else {
                Probe::NotYet(format!("file {from_file:?}, server {from_server:?}"))
            }
        },
    )
    .await
    .expect("the control file read as the server reads it");
    let (timeline, lsn) = point.expect("a rewound standby has a recovery point");
    assert_eq!(timeline, tl + 1, "rewound onto the new primary's timeline");
    assert_eq!(history.missing(timeline, lsn), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_primary_is_replaced_and_rejoins_when_thawed_without_taking_writes() {
    let c = started("freeze", 3, "").await;
    let old = c.primary().expect("primary");
    write(&c, &old, "CREATE TABLE frozen (id int)").await;

    c.signal_instance(&old, Signal::SIGSTOP).expect("freeze");
    let s = c
        .wait_for("a new primary while the old one is frozen", FAILOVER, |s| {
            s.current_primary.as_deref().is_some_and(|p| p != old) && s.transition.is_none()
        })
        .await
        .expect("failover");
    let new = s.current_primary.expect("new primary");
    write(&c, &new, "INSERT INTO frozen VALUES (1)").await;

    c.signal_instance(&old, Signal::SIGCONT).expect("thaw");
    // The thawed server must not acknowledge a write as primary: a commit there either fails or
    // never returns (no standby follows it any more).
    let attempt = async {
        let client = c.connect(&old).await?;
        client.batch_execute("INSERT INTO frozen VALUES (666)").await.map_err(anyhow::Error::from)
    };
    let acknowledged = matches!(tokio::time::timeout(Duration::from_secs(5), attempt).await, Ok(Ok(())));
    assert!(!acknowledged, "the thawed old primary acknowledged a write");

    let s = healthy_without(&c, &old).await;
    assert_eq!(s.current_primary.as_deref(), Some(new.as_str()));
    assert_eq!(c.writable_instances().await, vec![new.clone()]);
    assert_eq!(
        count(&c, &new, "SELECT count(*) FROM frozen WHERE id = 666").await,
        0,
        "the refused write is gone"
    );
    wait_rows(&c, &old, "SELECT count(*) FROM frozen WHERE id = 1", 1).await;
    assert_eq!(s.instance(&old).map(|i| i.role), Some(Role::Standby));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_acknowledged_commit_is_lost_across_three_failovers() {
    let c = started("writer", 3, "").await;
    let tl = c.timeline_of(&c.primary().expect("primary")).expect("timeline");
    let w = Writer::start(&c).await.expect("writer");
    let mut acked = w.progress(0, "before the first failover").await;
    for round in 1..=3 {
        let old = c.primary().expect("primary");
        c.signal_instance(&old, Signal::SIGKILL).expect("kill");
        healthy_without(&c, &old).await;
        acked = w.progress(acked, &format!("after failover {round}")).await;
    }
    let written = w.stop().await.expect("writer");
    assert!(written.acknowledged.len() >= acked);
    let missing = missing_rows(&c, &written.acknowledged).await.expect("check");
    assert!(
        missing.is_empty(),
        "{} acknowledged rows lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    let primary = c.primary().expect("primary");
    assert_eq!(c.timeline_of(&primary), Some(tl + 3), "exactly three promotions");
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_a_standby_keeps_writes_flowing_and_it_streams_again() {
    let c = started("standby", 3, "").await;
    let primary = c.primary().expect("primary");
    let victim = (0..3).map(|k| c.instance(k)).find(|n| *n != primary).expect("a standby");
    let w = Writer::start(&c).await.expect("writer");
    let acked = w.progress(0, "before the kill").await;
    c.signal_instance(&victim, Signal::SIGKILL).expect("kill standby");
    c.wait_for("the standby seen down", Duration::from_secs(30), |s| {
        s.instance(&victim).is_some_and(|i| !i.ready)
    })
    .await
    .expect("down");
    w.progress(acked, "while a standby is down").await;
    let s = c.wait_healthy(FAILOVER).await.expect("standby back");
    assert_eq!(s.current_primary.as_deref(), Some(primary.as_str()), "no failover for a standby");
    let written = w.stop().await.expect("writer");
    assert!(missing_rows(&c, &written.acknowledged).await.expect("check").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_data_directory_is_rebuilt_as_a_new_standby() {
    let c = started("dataloss", 3, "").await;
    let primary = c.primary().expect("primary");
    write(&c, &primary, "CREATE TABLE kept AS SELECT generate_series(1, 1000) AS id").await;
    let victim = (0..3).map(|k| c.instance(k)).find(|n| *n != primary).expect("a standby");
    c.destroy_data(&victim).await.expect("data destroyed");
    c.wait_for("the instance seen without data", Duration::from_secs(30), |s| {
        s.instance(&victim).is_some_and(|i| !i.ready)
    })
    .await
    .expect("noticed");
    let s = c.wait_healthy(FAILOVER).await.expect("rebuilt");
    assert_eq!(s.current_primary.as_deref(), Some(primary.as_str()));
    assert_eq!(count(&c, &victim, "SELECT count(*) FROM kept").await, 1000);
}

/// The controller dies in the middle of a failover and comes back: it finishes the failover,
/// promotes exactly once, and never lets two instances accept writes.
async fn controller_killed_at(failpoint: &str) {
    require_postgres();
    let mut c = LocalCluster::new(&format!("ctl-{}", failpoint.replace('@', "-")), 3, "");
    c.start_with(&[("OPENGAUSS_OPERATOR_FAILPOINT", failpoint)]);
    c.wait_healthy(BOOT).await.expect("healthy");
    let old = c.primary().expect("primary");
    let tl = c.timeline_of(&old).expect("timeline");
    c.signal_instance(&old, Signal::SIGKILL).expect("kill primary");
    let code = c.wait_controller(Duration::from_secs(60)).expect("controller exits at the failpoint");
    assert_eq!(code, Some(137), "controller output:\n{}", c.controller_output());
    let persisted = c.status().expect("status");
    assert!(persisted.transition.is_some(), "the failover was in flight when the controller died");
    assert!(c.writable_instances().await.len() <= 1, "two writable primaries while the controller was down");

    c.start();
    let s = healthy_without(&c, &old).await;
    let new = s.current_primary.clone().expect("new primary");
    assert_eq!(c.writable_instances().await, vec![new.clone()]);
    assert_eq!(c.timeline_of(&new), Some(tl + 1), "exactly one promotion");
    let promotions = c.controller_output().matches("Promoted:").count();
    assert_eq!(promotions, 1, "one promotion across both controllers:\n{}", c.controller_output());
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_killed_while_detaching_finishes_the_failover() {
    controller_killed_at("before-actions@Detaching").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_killed_right_after_asking_for_the_promotion_does_not_promote_twice() {
    controller_killed_at("after-actions@Promoting").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_killed_while_repointing_finishes_the_failover() {
    controller_killed_at("before-actions@Repointing").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn switchover_to_a_named_standby_loses_nothing() {
    let c = started("switchover", 3, "").await;
    let old = c.primary().expect("primary");
    let target = (0..3).map(|k| c.instance(k)).find(|n| *n != old).expect("a standby");
    let w = Writer::start(&c).await.expect("writer");
    let acked = w.progress(0, "before the switchover").await;

    let dir = c.state_dir.display().to_string();
    let out = c.cli(&["local", "switchover", "--state-dir", &dir, &target]);
    assert!(
        out.status.success(),
        "switchover failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let s = c.wait_healthy(FAILOVER).await.expect("healthy after the switchover");
    assert_eq!(s.current_primary.as_deref(), Some(target.as_str()));
    let last = s.last_transition.as_ref().expect("recorded");
    assert_eq!((last.kind, last.from.as_str()), (TransitionKind::Switchover, old.as_str()));
    assert_eq!(
        s.instance(&old).map(|i| (i.role, i.ready)),
        Some((Role::Standby, true)),
        "old primary follows"
    );
    w.progress(acked, "after the switchover").await;
    let written = w.stop().await.expect("writer");
    assert!(
        missing_rows(&c, &written.acknowledged).await.expect("check").is_empty(),
        "no acknowledged row lost"
    );

    let refused = c.cli(&["local", "switchover", "--state-dir", &dir, &target]);
    assert!(!refused.status.success(), "switching over to the current primary is refused");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("already the primary"));
    // The demoted primary was stopped as planned, not as a stray.
    let log = c.controller_output();
    assert!(log.contains("SwitchoverCompleted"), "{log}");
    assert!(!log.contains("FencingStrayPrimary"), "a planned switchover warned of a stray primary:\n{log}");
}

/// A primary cut off from the controller and from every standby stops itself when its lease
/// ends (no renewal, and no standby can hold it), so it does not keep taking (here
/// asynchronous) writes that a failover elsewhere would discard; once the controller is back,
/// it resumes.
#[tokio::test(flavor = "multi_thread")]
async fn an_isolated_primary_fences_itself() {
    let mut c = started("isolated", 3, "  replication:\n    synchronous:\n      method: off\n").await;
    let primary = c.primary().expect("primary");
    c.signal_controller(Signal::SIGSTOP);
    for k in 0..3 {
        let name = c.instance(k);
        if name != primary {
            c.signal_instance(&name, Signal::SIGKILL).expect("kill standby");
        }
    }
    // Unrenewed for its lease (failover.delaySeconds, 5 s) less a second: it stops accepting
    // writes.
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while c.connect(&primary).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "the isolated primary kept running");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = std::fs::read_to_string(c.instance_dir(&primary).join("manager.log")).expect("manager log");
    assert!(log.contains("lease ended"), "the manager says why it stopped:\n{log}");

    c.signal_controller(Signal::SIGCONT);
    let s = c.wait_healthy(FAILOVER).await.expect("healthy again");
    assert_eq!(s.current_primary.as_deref(), Some(primary.as_str()), "nobody else could take over");
}

/// Removes a running instance's data directory, as `rm -rf` would, while its server keeps
/// running (files it creates meanwhile are removed on the next round).
fn remove_running_data(c: &LocalCluster, instance: &str) {
    let data = c.instance_dir(instance).join("data");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match std::fs::remove_dir_all(&data) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => assert!(std::time::Instant::now() < deadline, "removing {}: {e}", data.display()),
        }
    }
}

/// `rm -rf` of the running primary's data directory: the server still answers on the
/// connections it had, but serves nobody new. It is lost like a crashed primary: a standby is
/// promoted within seconds, the status never calls the cluster Healthy with it as primary
/// meanwhile, the event says why, and no acknowledged commit is lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_primary_whose_data_directory_is_removed_is_failed_over() {
    let c = started("rmprimary", 3, "").await;
    let old = c.primary().expect("primary");
    // Committed with synchronous replication; then nothing writes, so no failed write makes the
    // server crash on its own: the removal alone must be noticed.
    write(&c, &old, "CREATE TABLE kept AS SELECT generate_series(1, 500) AS id").await;

    let removed_at = std::time::Instant::now();
    remove_running_data(&c, &old);
    // Every status from one probe after the removal on: never Healthy with the old primary.
    let grace = Duration::from_secs(2);
    let mut lies = Vec::new();
    let s = until("a new primary after the removal", FAILOVER, Duration::from_millis(100), || {
        let s = c.status().unwrap_or_default();
        if removed_at.elapsed() > grace
            && s.phase == Some(Phase::Healthy)
            && s.current_primary.as_deref() == Some(old.as_str())
        {
            lies.push(removed_at.elapsed());
        }
        std::future::ready(match s.current_primary.as_deref() {
            Some(p) if p != old && s.transition.is_none() => Probe::Done(s),
            _ => Probe::NotYet(format!("{:?} {:?}", s.phase, s.phase_reason)),
        })
    })
    .await
    .expect("failover");
    eprintln!("a new primary {:?} after the removal", removed_at.elapsed());
    assert!(
        lies.is_empty(),
        "status said Healthy with {old} as primary {} times, from {:?} to {:?} after the removal",
        lies.len(),
        lies.first(),
        lies.last()
    );
    let new = s.current_primary.clone().expect("new primary");
    assert_eq!(count(&c, &new, "SELECT count(*) FROM kept").await, 500, "committed rows kept");
    write(&c, &new, "INSERT INTO kept VALUES (501)").await;
    let last = s.last_transition.as_ref().expect("a failover recorded");
    assert_eq!(last.kind, TransitionKind::Failover);
    assert!(last.reason.contains("lost its data directory"), "{}", last.reason);

    // The old primary comes back as a standby, cloned again.
    let s = healthy_without(&c, &old).await;
    assert_eq!(s.current_primary.as_deref(), Some(new.as_str()));
    wait_rows(&c, &old, "SELECT count(*) FROM kept", 501).await;
    assert_eq!(c.writable_instances().await, vec![new]);
}

/// The same for a standby: it stops at once instead of pretending, and is cloned again.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_whose_data_directory_is_removed_is_cloned_again() {
    let c = started("rmstandby", 3, "").await;
    let primary = c.primary().expect("primary");
    write(&c, &primary, "CREATE TABLE kept AS SELECT generate_series(1, 500) AS id").await;
    let victim = (0..3).map(|k| c.instance(k)).find(|n| *n != primary).expect("a standby");
    wait_rows(&c, &victim, "SELECT count(*) FROM kept", 500).await;
    remove_running_data(&c, &victim);
    c.wait_for("the standby seen without data", Duration::from_secs(10), |s| {
        s.instance(&victim).is_some_and(|i| !i.ready) && s.phase != Some(Phase::Healthy)
    })
    .await
    .expect("noticed within seconds");
    let s = c.wait_healthy(FAILOVER).await.expect("cloned again");
    assert_eq!(s.current_primary.as_deref(), Some(primary.as_str()), "no failover for a standby");
    wait_rows(&c, &victim, "SELECT count(*) FROM kept", 500).await;
    // The manager's log tells what happened, in order: the loss, streaming stopped, streaming
    // again once the new copy follows the primary.
    let log = c.manager_output(&victim);
    let lost = log.find("lost an essential file").unwrap_or_else(|| panic!("no loss logged:\n{log}"));
    let after = &log[lost..];
    let stopped = after.find("stopped streaming").unwrap_or_else(|| panic!("no stop logged:\n{after}"));
    assert!(
        after[stopped..].lines().skip(1).any(|l| l.contains("streaming") && l.contains("upstream")),
        "streaming again not logged:\n{after}"
    );
}
