//! Prometheus metrics in the text format (0.0.4): the controller's counters (kept for the
//! process's life) and each instance's state (rendered from its report at scrape time, so a
//! scrape never shows stale values).

use std::sync::atomic::AtomicU64;

use k8s_openapi::jiff::Timestamp;
use opengauss_crd::{OpenGaussClusterStatus, Phase, TransitionKind};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

use crate::instance::report::InstanceReport;

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    cluster: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    cluster: String,
    phase: String,
}

fn phases() -> [Phase; 9] {
    [
        Phase::Initializing,
        Phase::CreatingStandbys,
        Phase::Healthy,
        Phase::Degraded,
        Phase::FailingOver,
        Phase::SwitchingOver,
        Phase::FailoverBlocked,
        Phase::InvalidSpec,
        Phase::Stopped,
    ]
}

/// What the controller counts.
#[derive(Debug)]
pub struct ControllerMetrics {
    registry: Registry,
    reconciles: Family<ClusterLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    failovers: Family<ClusterLabels, Counter>,
    switchovers: Family<ClusterLabels, Counter>,
    failover_seconds: Family<ClusterLabels, Histogram>,
    phase: Family<PhaseLabels, Gauge>,
    ready: Family<ClusterLabels, Gauge>,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("opengauss_operator");
        let reconciles = Family::<ClusterLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let failovers = Family::<ClusterLabels, Counter>::default();
        let switchovers = Family::<ClusterLabels, Counter>::default();
        let failover_seconds = Family::<ClusterLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0])
        });
        let phase = Family::<PhaseLabels, Gauge>::default();
        let ready = Family::<ClusterLabels, Gauge>::default();
        registry.register("reconciles", "Reconcile passes", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconcile passes or actions that failed, by kind",
            errors.clone(),
        );
        registry.register("failovers", "Completed failovers", failovers.clone());
        registry.register("switchovers", "Completed switchovers", switchovers.clone());
        registry.register(
            "failover_duration_seconds",
            "Time from detecting the primary's loss to the new primary with its standbys",
            failover_seconds.clone(),
        );
        registry.register(
            "cluster_phase",
            "1 for the cluster's current phase, 0 for the others",
            phase.clone(),
        );
        registry.register("ready_instances", "Instances up in their intended role", ready.clone());
        Self { registry, reconciles, errors, failovers, switchovers, failover_seconds, phase, ready }
    }
}

impl ControllerMetrics {
    /// Records one decided pass: the new status (phase, ready instances, a transition that just
    /// completed). Called as soon as that status is saved, before the pass acts, so a scrape never
    /// shows an older story than the status does.
    pub fn record_decision(
        &self,
        cluster: &str,
        before: &OpenGaussClusterStatus,
        after: &OpenGaussClusterStatus,
    ) {
        let labels = ClusterLabels { cluster: cluster.to_string() };
        self.reconciles.get_or_create(&labels).inc();
        for p in phases() {
            let key = PhaseLabels { cluster: cluster.to_string(), phase: p.as_str().to_string() };
            self.phase.get_or_create(&key).set(i64::from(after.phase == Some(p)));
        }
        self.ready.get_or_create(&labels).set(i64::from(after.ready_instances));
        if let Some(done) = &after.last_transition
            && before.last_transition.as_ref() != Some(done)
        {
            match done.kind {
                TransitionKind::Failover => {
                    self.failovers.get_or_create(&labels).inc();
                    if let Some(end) = &done.completed_at {
                        let took = end.0.duration_since(done.started_at.0).as_secs_f64();
                        self.failover_seconds.get_or_create(&labels).observe(took.max(0.0));
                    }
                }
                TransitionKind::Switchover => {
                    self.switchovers.get_or_create(&labels).inc();
                }
            }
        }
    }

    /// Counts the actions of a pass that failed.
    pub fn record_failed_actions(&self, cluster: &str, failed: usize) {
        if failed > 0 {
            let key = ErrorLabels { cluster: cluster.to_string(), kind: "action".into() };
            self.errors.get_or_create(&key).inc_by(failed as u64);
        }
    }

    /// Counts a pass that failed before it could decide (`kind` names what failed).
    pub fn record_error(&self, cluster: &str, kind: &str) {
        let key = ErrorLabels { cluster: cluster.to_string(), kind: kind.to_string() };
        self.errors.get_or_create(&key).inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    cluster: String,
    instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WalLabels {
    cluster: String,
    instance: String,
    position: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StandbyLabels {
    cluster: String,
    instance: String,
    standby: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncLabels {
    cluster: String,
    instance: String,
    standby: String,
    state: String,
}

/// One instance's metrics from its report.
pub fn render_instance(cluster: &str, report: &InstanceReport, now: Timestamp) -> String {
    let mut registry = Registry::with_prefix("opengauss");
    let me = InstanceLabels { cluster: cluster.to_string(), instance: report.instance.clone() };
    let gauge = |registry: &mut Registry, name: &str, help: &str, value: i64| {
        let family = Family::<InstanceLabels, Gauge>::default();
        family.get_or_create(&me).set(value);
        registry.register(name, help, family);
    };
    let node = report.node.as_ref();
    gauge(
        &mut registry,
        "instance_up",
        "1 when the database server answers SQL",
        i64::from(report.server.accepting),
    );
    gauge(
        &mut registry,
        "instance_is_primary",
        "1 when the server accepts writes (not in recovery)",
        i64::from(report.is_writable_primary()),
    );
    gauge(&mut registry, "instance_fenced", "1 while the instance is fenced", i64::from(report.fenced));
    if let Some(expires) = report.certificate_expires {
        gauge(
            &mut registry,
            "instance_certificate_expiry_timestamp_seconds",
            "When the server certificate the instance presents expires (unix seconds)",
            expires,
        );
    }
    if let Some(tl) = node.and_then(|n| n.timeline) {
        gauge(&mut registry, "instance_timeline", "The server's timeline", i64::from(tl));
    }
    let wal = Family::<WalLabels, FloatGauge>::default();
    if let Some(n) = node {
        for (position, lsn) in
            [("current", n.current_lsn), ("received", n.received_lsn), ("replayed", n.replayed_lsn)]
        {
            if let Some(lsn) = lsn {
                let key = WalLabels {
                    cluster: me.cluster.clone(),
                    instance: me.instance.clone(),
                    position: position.into(),
                };
                wal.get_or_create(&key).set(lsn.0 as f64);
            }
        }
    }
    registry.register(
        "instance_wal_position_bytes",
        "WAL position as a byte offset: current (primary), received and replayed (standby)",
        wal,
    );
    let lag_bytes = Family::<StandbyLabels, FloatGauge>::default();
    let lag_seconds = Family::<StandbyLabels, FloatGauge>::default();
    let streaming = Family::<StandbyLabels, Gauge>::default();
    let sync = Family::<SyncLabels, Gauge>::default();
    for row in &report.replication {
        let key = StandbyLabels {
            cluster: me.cluster.clone(),
            instance: me.instance.clone(),
            standby: row.instance.clone(),
        };
        if let Some(b) = row.lag_bytes {
            lag_bytes.get_or_create(&key).set(b as f64);
        }
        if let Some(s) = row.lag_seconds {
            lag_seconds.get_or_create(&key).set(s);
        }
        streaming.get_or_create(&key).set(i64::from(row.state == "streaming"));
        let skey = SyncLabels {
            cluster: me.cluster.clone(),
            instance: me.instance.clone(),
            standby: row.instance.clone(),
            state: row.sync_state.clone(),
        };
        sync.get_or_create(&skey).set(1);
    }
    registry.register(
        "replication_lag_bytes",
        "WAL the standby has not replayed, seen from the primary",
        lag_bytes,
    );
    registry.register(
        "replication_lag_seconds",
        "Replay lag of the standby, seen from the primary",
        lag_seconds,
    );
    registry.register("replication_streaming", "1 while the standby streams from this primary", streaming);
    registry.register("replication_sync_state", "The standby's synchronous state (label), always 1", sync);
    let scraped = Family::<InstanceLabels, FloatGauge>::default();
    scraped.get_or_create(&me).set(now.as_millisecond() as f64 / 1000.0);
    registry.register("instance_report_timestamp_seconds", "When this report was taken", scraped);
    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}
