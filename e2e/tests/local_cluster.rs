//! The local platform on real PostgreSQL: bootstrap, replication checks like the original
//! Docker deployment's, and resume after `local down`.

use std::time::Duration;

use opengauss_crd::{Phase, Role};
use opengauss_e2e::wait::{Probe, until};
use opengauss_e2e::{LocalCluster, postgres_available};

const BOOT: Duration = Duration::from_secs(90);

fn require_postgres() {
    assert!(
        postgres_available(),
        "these tests need the PostgreSQL server binaries (apt-get install postgresql)"
    );
}

/// What the original deployment checked by hand: one primary, both standbys streaming with a
/// quorum/sync state, writes replicated, writes on standbys refused, lag reported.
#[tokio::test(flavor = "multi_thread")]
async fn three_instances_replicate_like_the_original_deployment() {
    require_postgres();
    let mut c = LocalCluster::new("replicate", 3, "");
    c.start();
    let status = c.wait_healthy(BOOT).await.expect("healthy");

    let writable = c.writable_instances().await;
    assert_eq!(writable.len(), 1, "exactly one instance accepts writes: {writable:?}");
    let primary = writable[0].clone();
    assert_eq!(status.current_primary.as_deref(), Some(primary.as_str()));

    let p = c.connect(&primary).await.expect("primary");
    let rows = p
        .query("SELECT application_name, state, sync_state FROM pg_stat_replication ORDER BY 1", &[])
        .await
        .expect("pg_stat_replication");
    let standbys: Vec<String> = (0..3).map(|k| c.instance(k)).filter(|n| *n != primary).collect();
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(names, standbys, "both standbys connected");
    assert!(rows.iter().all(|r| r.get::<_, String>(1) == "streaming"), "both streaming");
    assert!(
        rows.iter().any(|r| matches!(r.get::<_, String>(2).as_str(), "quorum" | "sync")),
        "at least one synchronous standby"
    );

    // The status tells the same story.
    assert_eq!(status.phase, Some(Phase::Healthy));
    for i in &status.instances {
        let want = if i.name == primary { Role::Primary } else { Role::Standby };
        assert_eq!(i.role, want, "{}", i.name);
        assert!(i.ready, "{} ready", i.name);
    }

    p.batch_execute("CREATE TABLE checks (id int PRIMARY KEY, note text); INSERT INTO checks VALUES (1, 'from the primary')")
        .await
        .expect("write on the primary");
    for s in &standbys {
        let client = c.connect(s).await.expect("standby");
        let what = format!("the row to reach {s}");
        let note = until(&what, Duration::from_secs(10), Duration::from_millis(50), || async {
            match client.query_opt("SELECT note FROM checks WHERE id = 1", &[]).await {
                Ok(Some(row)) => Probe::Done(row.get::<_, String>(0)),
                other => Probe::NotYet(format!("{other:?}")),
            }
        })
        .await
        .expect("replicated");
        assert_eq!(note, "from the primary");
        let err = client
            .batch_execute("INSERT INTO checks VALUES (2, 'from a standby')")
            .await
            .expect_err("standby refuses writes");
        let code = err.code().map(|c| c.code().to_string());
        assert_eq!(code.as_deref(), Some("25006"), "read-only transaction error: {err}");
    }

    // Lag in bytes per standby, as the status reports it after the next probe.
    let with_lag = c
        .wait_for("lag reported for both standbys", Duration::from_secs(10), |s| {
            s.instances.iter().filter(|i| i.role == Role::Standby && i.lag_bytes.is_some()).count() == 2
        })
        .await
        .expect("lag");
    for i in with_lag.instances.iter().filter(|i| i.role == Role::Standby) {
        assert!(i.lag_bytes.expect("lag") < 64 * 1024 * 1024, "{}: lag {:?}", i.name, i.lag_bytes);
        assert!(
            matches!(i.sync_state.as_deref(), Some("quorum" | "sync" | "potential" | "async")),
            "{:?}",
            i.sync_state
        );
    }

    // The CLI's table and JSON views agree with the file.
    let dir = c.state_dir.display().to_string();
    let table = c.cli(&["local", "status", "--state-dir", &dir]);
    assert!(table.status.success());
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("Healthy") && table.contains("streaming"), "{table}");
    let json = c.cli(&["local", "status", "--state-dir", &dir, "-o", "json"]);
    let parsed: opengauss_crd::OpenGaussClusterStatus =
        serde_json::from_slice(&json.stdout).expect("status json");
    assert_eq!(parsed.current_primary.as_deref(), Some(primary.as_str()));
    let secret = c.superuser_password();
    assert!(
        !table.contains(&secret) && !String::from_utf8_lossy(&json.stdout).contains(&secret),
        "no secrets in status output"
    );
    assert!(!c.controller_output().contains(&secret), "no secrets in the controller's output");

    let down = c.down();
    assert!(down.status.success(), "local down: {}", String::from_utf8_lossy(&down.stderr));
}

/// `local down` then `local up` resumes the same cluster: same system identifier, same data,
/// same primary, no initdb.
#[tokio::test(flavor = "multi_thread")]
async fn down_then_up_resumes_the_same_cluster() {
    require_postgres();
    let mut c = LocalCluster::new("resume", 3, "");
    c.start();
    c.wait_healthy(BOOT).await.expect("healthy");
    let primary = c.primary().expect("primary");
    let p = c.connect(&primary).await.expect("primary");
    let sysid: i64 =
        p.query_one("SELECT system_identifier FROM pg_control_system()", &[]).await.expect("sysid").get(0);
    p.batch_execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before down')")
        .await
        .expect("write");
    drop(p);

    let down = c.down();
    assert!(down.status.success(), "down failed: {}", String::from_utf8_lossy(&down.stderr));
    let stopped = c.status().expect("status");
    assert_eq!(stopped.phase, Some(Phase::Stopped));
    for k in 0..3 {
        let name = c.instance(k);
        assert!(c.instance_dir(&name).join("data/PG_VERSION").exists(), "{name}'s data kept");
        assert!(c.server_pid(&name).is_none(), "{name}'s server stopped (no postmaster.pid)");
    }

    c.start();
    let status = c.wait_healthy(BOOT).await.expect("healthy again");
    assert_eq!(
        status.current_primary.as_deref(),
        Some(primary.as_str()),
        "same primary after a clean restart"
    );
    for k in 0..3 {
        let client = c.connect(&c.instance(k)).await.expect("connect");
        let again: i64 = client
            .query_one("SELECT system_identifier FROM pg_control_system()", &[])
            .await
            .expect("sysid")
            .get(0);
        assert_eq!(again, sysid, "same cluster, not re-initialised");
        let v: String = client.query_one("SELECT v FROM kept", &[]).await.expect("data").get(0);
        assert_eq!(v, "before down");
    }
    let down = c.down();
    assert!(down.status.success());
}

/// SIGTERM to the foreground `local up` stops every instance and exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_cleanly_and_exits_zero() {
    stops_cleanly_on("sigterm", nix::sys::signal::Signal::SIGTERM).await;
}

/// Closing the terminal that runs `local up` (`make demo`) sends SIGHUP: the cluster stops as on
/// Ctrl-C instead of leaving the instances running with nothing watching them.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_stops_cleanly_like_ctrl_c() {
    stops_cleanly_on("sighup", nix::sys::signal::Signal::SIGHUP).await;
}

async fn stops_cleanly_on(test: &str, signal: nix::sys::signal::Signal) {
    require_postgres();
    let mut c = LocalCluster::new(test, 2, "");
    c.start();
    c.wait_healthy(BOOT).await.expect("healthy");
    let pids: Vec<i32> = (0..2)
        .flat_map(|k| [c.manager_pid(&c.instance(k)), c.server_pid(&c.instance(k))])
        .flatten()
        .collect();
    assert_eq!(pids.len(), 4);
    c.signal_controller(signal);
    let code = c.wait_controller(Duration::from_secs(120)).expect("exits");
    assert_eq!(code, Some(0), "{}", c.controller_output());
    for pid in pids {
        assert!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err(),
            "process {pid} still runs after local up exited"
        );
    }
    assert!(c.controller_output().contains("stopped"), "{}", c.controller_output());
    // A clean stop is reported as stopped, with nothing left streaming.
    let s = c.status().expect("status");
    assert_eq!(s.phase, Some(Phase::Stopped));
    assert!(s.controller.is_none());
    assert!(s.instances.iter().all(|i| !i.ready && i.replication_state.is_none() && i.sync_state.is_none()));
}

/// A controller killed without a chance to clean up (kill -9) leaves the instances running
/// with nothing watching them: `local status` says so within seconds and fails, and so does a
/// controller that holds on but no longer works (SIGSTOP).
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_or_stuck_controller_shows_in_status() {
    require_postgres();
    let mut c = LocalCluster::new("deadctl", 2, "");
    c.start();
    c.wait_healthy(BOOT).await.expect("healthy");
    let dir = c.state_dir.display().to_string();
    let status_of = |c: &LocalCluster| {
        let out = c.cli(&["local", "status", "--state-dir", &dir]);
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, table) = status_of(&c);
    assert_eq!(code, Some(0), "{table}");
    assert!(table.contains("Healthy"), "{table}");

    c.signal_controller(nix::sys::signal::Signal::SIGSTOP);
    let stuck = until(
        "status to report a stuck controller",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let (code, table) = status_of(&c);
            std::future::ready(if code == Some(3) { Probe::Done(table) } else { Probe::NotYet(table) })
        },
    )
    .await
    .expect("stuck controller reported");
    assert!(stuck.contains("not responding") && !stuck.contains("Healthy"), "{stuck}");
    c.signal_controller(nix::sys::signal::Signal::SIGCONT);
    until(
        "status to recover with the controller",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let (code, table) = status_of(&c);
            std::future::ready(if code == Some(0) { Probe::Done(()) } else { Probe::NotYet(table) })
        },
    )
    .await
    .expect("watched again");

    c.signal_controller(nix::sys::signal::Signal::SIGKILL);
    c.wait_controller(Duration::from_secs(10)).expect("killed");
    let (code, table) = status_of(&c);
    assert_eq!(code, Some(3), "{table}");
    assert!(table.contains("controller not running: no failover until `local up`"), "{table}");
    assert!(!table.contains("Healthy"), "{table}");
    let json = c.cli(&["local", "status", "--state-dir", &dir, "-o", "json"]);
    assert_eq!(json.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&json.stdout).contains("controller not running"));
    // `local up` takes the running instances back.
    c.start();
    until("status to be watched again", Duration::from_secs(30), Duration::from_millis(200), || {
        let (code, table) = status_of(&c);
        std::future::ready(if code == Some(0) { Probe::Done(()) } else { Probe::NotYet(table) })
    })
    .await
    .expect("watched by the new controller");
    c.wait_healthy(BOOT).await.expect("healthy again");
    let down = c.down();
    assert!(
        down.status.success(),
        "local down failed: {}\ncontroller:\n{}",
        String::from_utf8_lossy(&down.stderr),
        c.controller_output()
    );
}

/// The ready banner's Connect, Status and Stop lines work exactly as printed, from where
/// `local up` ran, with nothing of this project on PATH.
#[tokio::test(flavor = "multi_thread")]
async fn the_banners_commands_work_as_printed() {
    require_postgres();
    let mut c = LocalCluster::new("banner", 3, "");
    c.start();
    c.wait_healthy(BOOT).await.expect("healthy");
    let banner = until("the ready banner", Duration::from_secs(30), Duration::from_millis(100), || {
        let out = c.controller_output();
        std::future::ready(if out.contains("Stop:") { Probe::Done(out) } else { Probe::NotYet(out) })
    })
    .await
    .expect("banner printed");
    let line = |label: &str| {
        banner
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label} line in\n{banner}"))
            .trim()
            .to_string()
    };
    let shell = |command: &str| {
        std::process::Command::new("sh")
            .args(["-c", command])
            .current_dir(c.root())
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .output()
            .expect("sh")
    };

    let connect = shell(&format!("{} -XAtc 'SELECT 1'", line("Connect:")));
    assert!(connect.status.success(), "{}", String::from_utf8_lossy(&connect.stderr));
    assert_eq!(String::from_utf8_lossy(&connect.stdout).trim(), "1");

    let status = shell(&line("Status:"));
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(String::from_utf8_lossy(&status.stdout).contains("Healthy"));

    let stop_line = line("Stop:");
    let stop = stop_line.split_once(", or ").map(|(_, cmd)| cmd).expect("a stop command");
    let out = shell(stop);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(c.wait_controller(Duration::from_secs(60)).expect("controller stops"), Some(0));
}

/// A port taken by something else after the cluster was created is no dead end: the stopped
/// cluster moves to another base port with `--base-port`, keeping its data; a running one is
/// refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_cluster_moves_to_new_ports_with_its_data() {
    require_postgres();
    let mut c = LocalCluster::new("moveports", 3, "");
    c.start();
    let s = c.wait_healthy(BOOT).await.expect("healthy");
    let primary = s.current_primary.clone().expect("primary");
    c.connect(&primary)
        .await
        .expect("connect")
        .batch_execute("CREATE TABLE moved AS SELECT generate_series(1, 100) AS id")
        .await
        .expect("write");
    assert!(c.down().status.success());

    // Something else takes one of the old ports.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", c.ports.base + 1)).expect("occupy an old port");
    let dir = c.state_dir.display().to_string();
    let file = c.file.display().to_string();
    let old_base = c.ports.base.to_string();
    let refused = c.cli(&["local", "up", "-f", &file, "--state-dir", &dir, "--base-port", &old_base]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not available"));

    // The new block: the upper part of the ports reserved for this test.
    c.ports.base += 5;
    c.start();
    let s = c.wait_healthy(BOOT).await.expect("healthy on the new ports");
    assert!(c.controller_output().contains("its data is kept"), "{}", c.controller_output());
    for i in &s.instances {
        let port: u16 = i.address.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port");
        assert!(port >= c.ports.base, "{} still on {}", i.name, i.address);
    }
    let primary = s.current_primary.clone().expect("primary");
    let rows: i64 = c
        .connect(&primary)
        .await
        .expect("connect on the new port")
        .query_one("SELECT count(*) FROM moved", &[])
        .await
        .expect("read")
        .get(0);
    assert_eq!(rows, 100, "the data moved with the cluster");
    let streaming: i64 = c
        .connect(&primary)
        .await
        .expect("connect")
        .query_one("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'", &[])
        .await
        .expect("replication")
        .get(0);
    assert_eq!(streaming, 2, "both standbys follow the primary at its new port");

    // Moving a running cluster is refused.
    drop(squatter);
    let running = c.cli(&["local", "up", "-f", &file, "--state-dir", &dir, "--base-port", &old_base]);
    assert!(!running.status.success());
    assert!(String::from_utf8_lossy(&running.stderr).contains("already running"));
    assert!(c.down().status.success());
}

/// A stop signal while `local up` is still starting (as `local down` right after a restart
/// sends) stops the cluster cleanly instead of killing the controller with the instances left
/// running.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_signal_during_startup_stops_cleanly() {
    require_postgres();
    let mut c = LocalCluster::new("earlystop", 2, "");
    c.start();
    let first = c.instance(0);
    let manager = until(
        "the first instance manager started",
        Duration::from_secs(30),
        Duration::from_millis(10),
        || {
            std::future::ready(match c.manager_pid(&first) {
                Some(pid) => Probe::Done(pid),
                None => Probe::NotYet("no manager yet".into()),
            })
        },
    )
    .await
    .expect("a manager");
    c.signal_controller(nix::sys::signal::Signal::SIGTERM);
    let code = c.wait_controller(Duration::from_secs(120)).expect("exits");
    assert_eq!(code, Some(0), "killed instead of stopping:\n{}", c.controller_output());
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(manager), None).is_err(),
        "manager {manager} left running"
    );
    for k in 0..2 {
        assert!(
            c.server_pid(&c.instance(k)).is_none_or(|pid| nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                None
            )
            .is_err())
        );
    }
}
