//! Metrics endpoints of the instance managers and the controller, scraped and parsed as
//! Prometheus would, checked against what SQL reports.

use std::time::Duration;

use nix::sys::signal::Signal;
use opengauss_e2e::wait::{Probe, until};
use opengauss_e2e::{LocalCluster, postgres_available};
use prometheus_parse::{Scrape, Value};

/// Scrapes `url`; an instance manager's over HTTPS, trusting only the cluster's authority.
async fn scrape(c: &LocalCluster, url: &str) -> Scrape {
    let body = c
        .manager_http_client()
        .get(url)
        .send()
        .await
        .expect("scrape")
        .error_for_status()
        .expect("200")
        .text()
        .await
        .expect("body");
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("valid Prometheus text format")
}

/// The value of `metric` whose labels include every pair in `labels`.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .and_then(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
}

fn manager_url(c: &LocalCluster, instance: &str) -> String {
    let port = std::fs::read_to_string(c.instance_dir(instance).join("manager.port")).expect("manager port");
    format!("https://127.0.0.1:{}/metrics", port.trim())
}

fn controller_url(c: &LocalCluster) -> String {
    let port = std::fs::read_to_string(c.state_dir.join("controller.metrics-port")).expect("metrics port");
    format!("http://127.0.0.1:{}/metrics", port.trim())
}

async fn sql_i64(c: &LocalCluster, instance: &str, sql: &str) -> i64 {
    c.connect(instance).await.expect("connect").query_one(sql, &[]).await.expect(sql).get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn instance_and_controller_metrics_match_the_database() {
    assert!(postgres_available(), "needs the PostgreSQL server binaries");
    let mut c = LocalCluster::new("metrics", 3, "");
    c.start();
    c.wait_healthy(Duration::from_secs(90)).await.expect("healthy");
    let primary = c.primary().expect("primary");
    let standbys: Vec<String> = (0..3).map(|k| c.instance(k)).filter(|n| *n != primary).collect();

    // Roles and liveness.
    for k in 0..3 {
        let name = c.instance(k);
        let m = scrape(&c, &manager_url(&c, &name)).await;
        let me = [("cluster", "demo"), ("instance", name.as_str())];
        assert_eq!(value(&m, "opengauss_instance_up", &me), Some(1.0), "{name} up");
        let in_recovery: bool = c
            .connect(&name)
            .await
            .expect("c")
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .expect("q")
            .get(0);
        let want = if in_recovery { 0.0 } else { 1.0 };
        assert_eq!(value(&m, "opengauss_instance_is_primary", &me), Some(want), "{name} role");
        assert_eq!(value(&m, "opengauss_instance_timeline", &me), Some(1.0));
        // The expiry of the certificate it serves: the status says the same.
        let expiry =
            value(&m, "opengauss_instance_certificate_expiry_timestamp_seconds", &me).expect("expiry");
        let status = c.status().expect("status");
        let row = status.instance(&name).expect("row");
        let in_status = row.certificate_expires.as_ref().expect("status carries the expiry").0.as_second();
        assert_eq!(expiry, in_status as f64, "{name}: metric and status agree");
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
        let days = (expiry - now) / 86400.0;
        assert!(
            (89.0..=90.1).contains(&days),
            "{name}: a default certificate lasts 90 days, this one {days}"
        );
    }

    // Lag: pause replay on one standby, write, and compare with pg_stat_replication.
    let lagging = standbys[0].clone();
    c.connect(&lagging).await.expect("c").batch_execute("SELECT pg_wal_replay_pause()").await.expect("pause");
    let p = c.connect(&primary).await.expect("primary");
    p.batch_execute("CREATE TABLE lagged AS SELECT generate_series(1, 20000) AS id").await.expect("write");
    let lag_sql = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint FROM pg_stat_replication WHERE application_name = $1";
    let lag_of = |s: String| {
        let p = &p;
        async move { p.query_one(lag_sql, &[&s]).await.expect("lag").get::<_, i64>(0) as f64 }
    };
    // The standby's replay position is frozen; only background WAL can move the primary's.
    let before = lag_of(lagging.clone()).await;
    let m = scrape(&c, &manager_url(&c, &primary)).await;
    let after = lag_of(lagging.clone()).await;
    let key = [("instance", primary.as_str()), ("standby", lagging.as_str())];
    let lag = value(&m, "opengauss_replication_lag_bytes", &key).expect("lag metric");
    assert!(before > 100_000.0, "the paused standby lags: {before}");
    assert!(before <= lag && lag <= after, "metric lag {lag} outside SQL's [{before}, {after}]");
    assert_eq!(value(&m, "opengauss_replication_streaming", &key), Some(1.0));
    let quorum = [("instance", primary.as_str()), ("standby", lagging.as_str()), ("state", "quorum")];
    assert_eq!(value(&m, "opengauss_replication_sync_state", &quorum), Some(1.0));
    let current_before =
        sql_i64(&c, &primary, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint").await as f64;
    let m = scrape(&c, &manager_url(&c, &primary)).await;
    let current_after =
        sql_i64(&c, &primary, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint").await as f64;
    let current = value(
        &m,
        "opengauss_instance_wal_position_bytes",
        &[("instance", primary.as_str()), ("position", "current")],
    )
    .expect("current position");
    assert!(
        current_before <= current && current <= current_after,
        "{current} outside [{current_before}, {current_after}]"
    );
    c.connect(&lagging)
        .await
        .expect("c")
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .expect("resume");

    // The controller counts passes, knows the phase, and counts a failover with its duration.
    let ctl = scrape(&c, &controller_url(&c)).await;
    assert!(
        value(&ctl, "opengauss_operator_reconciles_total", &[("cluster", "demo")]).is_some_and(|v| v > 0.0)
    );
    assert_eq!(value(&ctl, "opengauss_operator_cluster_phase", &[("phase", "Healthy")]), Some(1.0));
    assert_eq!(value(&ctl, "opengauss_operator_ready_instances", &[("cluster", "demo")]), Some(3.0));
    c.signal_instance(&primary, Signal::SIGKILL).expect("kill");
    c.wait_for("failover complete", Duration::from_secs(90), |s| {
        s.current_primary.as_deref().is_some_and(|p| p != primary) && s.last_transition.is_some()
    })
    .await
    .expect("failover");
    // A scrape may come between the status write and the metrics update; Prometheus readers
    // see the same, so the counter is waited for, then must say exactly one.
    let ctl =
        until("the failover to be counted", Duration::from_secs(10), Duration::from_millis(50), || async {
            let ctl = scrape(&c, &controller_url(&c)).await;
            match value(&ctl, "opengauss_operator_failovers_total", &[("cluster", "demo")]) {
                Some(_) => Probe::Done(ctl),
                None => Probe::NotYet("no opengauss_operator_failovers_total sample".into()),
            }
        })
        .await
        .expect("counted");
    assert_eq!(value(&ctl, "opengauss_operator_failovers_total", &[("cluster", "demo")]), Some(1.0));
    let histogram = ctl
        .samples
        .iter()
        .find(|s| s.metric == "opengauss_operator_failover_duration_seconds")
        .expect("failover duration histogram");
    match &histogram.value {
        Value::Histogram(buckets) => assert!(buckets.iter().any(|b| b.count >= 1.0), "{buckets:?}"),
        other => panic!("not a histogram: {other:?}"),
    }
    assert!(c.down().status.success());
}
