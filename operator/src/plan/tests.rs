//! Table-style cases for the decision core: given a status and an observation, the plan must
//! take exactly these decisions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use opengauss_crd::{
    DataDurability, OpenGaussClusterSpec, OpenGaussClusterStatus, Phase, SynchronousStatus, Transition,
    TransitionKind, TransitionStep,
};

use super::*;
use crate::engine::timeline::Switch;
use crate::engine::{DesiredConfig, Endpoint, Lsn};
use crate::instance::report::{
    ControlReport, InstanceReport, ManagerPhase, NodeReport, OperationKind, OperationReport, OperationState,
    ReceiverReport, ReplicationRow, Request, ServerProcessReport,
};

const T0: i64 = 1_700_000_000;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(T0 + secs).expect("valid time")
}

fn spec(instances: u32) -> OpenGaussClusterSpec {
    let mut s: OpenGaussClusterSpec = serde_json::from_str("{}").expect("defaults");
    s.instances = instances;
    s.engine = opengauss_crd::Engine::Postgres;
    s
}

fn name(k: u32) -> String {
    format!("demo-{k}")
}

fn ep(k: u32) -> Endpoint {
    Endpoint { host: "127.0.0.1".into(), port: 15432 + k as u16 }
}

fn lsn(n: u64) -> Lsn {
    Lsn(0x3000000 + n)
}

/// A test world: spec, persisted status and what each instance reports.
struct World {
    spec: OpenGaussClusterSpec,
    status: OpenGaussClusterStatus,
    obs: Observation,
    now: Timestamp,
    watching_since: Timestamp,
    requests: UserRequests,
}

impl World {
    fn new(instances: u32) -> Self {
        let mut obs = Observation::default();
        for k in 0..instances {
            obs.instances.insert(
                name(k),
                Observed {
                    outdated: false,
                    platform: PlatformState::Running,
                    endpoint: ep(k),
                    ha_port: 16432 + k as u16,
                    report: Some(awaiting_bootstrap(k)),
                    server_answers: false,
                    manager_url: Some(format!("http://manager-{k}")),
                    unrenewed_for: std::time::Duration::ZERO,
                },
            );
        }
        Self {
            spec: spec(instances),
            status: OpenGaussClusterStatus::default(),
            obs,
            now: at(100),
            watching_since: at(0),
            requests: UserRequests::default(),
        }
    }

    fn input(&self) -> Input<'_> {
        Input {
            cluster: "demo",
            generation: Some(1),
            spec: &self.spec,
            status: &self.status,
            observed: &self.obs,
            requests: &self.requests,
            now: self.now,
            watching_since: self.watching_since,
        }
    }

    fn decide(&self) -> Plan {
        decide(self.input())
    }

    /// A transition away from demo-0, as `begin` records it, under the synchronous set in
    /// force.
    fn in_transition(&mut self, kind: TransitionKind, step: TransitionStep, to: Option<u32>) -> &mut Self {
        self.status.transition = Some(Transition {
            kind,
            from: name(0),
            to: to.map(name),
            step,
            reason: "test".into(),
            started_at: Time(at(99)),
            completed_at: None,
            synchronous: self.status.synchronous.clone(),
        });
        self.status.target_primary = to.map(name);
        self
    }

    fn set(&mut self, k: u32, report: Option<InstanceReport>) -> &mut Self {
        self.obs.instances.get_mut(&name(k)).expect("instance").report = report;
        self
    }

    fn platform(&mut self, k: u32, state: PlatformState) -> &mut Self {
        let o = self.obs.instances.get_mut(&name(k)).expect("instance");
        o.platform = state;
        if state != PlatformState::Running {
            o.report = None;
        }
        self
    }

    /// A healthy cluster with demo-0 primary and the others streaming from it, as persisted.
    fn healthy(instances: u32) -> Self {
        let mut w = Self::new(instances);
        w.status.initialized = true;
        w.status.current_primary = Some(name(0));
        w.status.target_primary = Some(name(0));
        let others: Vec<String> = (1..instances).map(name).collect();
        w.status.synchronous = Some(SynchronousStatus {
            method: "any".into(),
            number: 1,
            standbys: others.clone(),
            widened_until: None,
        });
        for k in 0..instances {
            w.status.instances.push(opengauss_crd::InstanceStatus {
                name: name(k),
                last_seen: Some(Time(at(99))),
                ..Default::default()
            });
        }
        // Twice: the desired configurations depend on which instances report data.
        for _ in 0..2 {
            let cfg = desired(&w, 0, false);
            w.set(0, Some(primary(0, lsn(100), &others, cfg)));
            for k in 1..instances {
                let cfg = desired(&w, k, true);
                w.set(k, Some(standby(k, lsn(100), Some(ep(0)), cfg)));
            }
        }
        w
    }
}

/// The configuration the plan wants for instance `k` (standby of demo-0 or primary).
fn desired(w: &World, k: u32, standby: bool) -> DesiredConfig {
    let input = w.input();
    let role = if standby { config::DesiredRole::Standby(Some(ep(0))) } else { config::DesiredRole::Primary };
    desired_config(&input, &name(k), role)
}

fn base_report(k: u32) -> InstanceReport {
    InstanceReport {
        instance: name(k),
        manager_pid: 1000 + k,
        phase: ManagerPhase::Running,
        initialized: true,
        standby_configured: false,
        fenced: false,
        fenced_lsn: None,
        oldest_wal: None,
        pending_restart: Vec::new(),
        server: ServerProcessReport { running: true, pid: Some(2000 + k), accepting: true, crashed: false },
        node: None,
        receiver: None,
        replication: Vec::new(),
        control: None,
        operation: None,
        config: None,
        failsafe: None,
        certificate_expires: None,
    }
}

fn awaiting_bootstrap(k: u32) -> InstanceReport {
    InstanceReport {
        phase: ManagerPhase::AwaitingBootstrap,
        initialized: false,
        server: ServerProcessReport::default(),
        ..base_report(k)
    }
}

fn primary(k: u32, at_lsn: Lsn, standbys: &[String], config: DesiredConfig) -> InstanceReport {
    InstanceReport {
        node: Some(NodeReport {
            in_recovery: false,
            current_lsn: Some(at_lsn),
            received_lsn: None,
            replayed_lsn: None,
            timeline: Some(1),
            synchronous_standby_names: String::new(),
            timeline_switches: Vec::new(),
        }),
        replication: standbys
            .iter()
            .map(|s| ReplicationRow {
                instance: s.clone(),
                client_addr: Some("127.0.0.1".into()),
                state: "streaming".into(),
                sync_state: "quorum".into(),
                sent_lsn: Some(at_lsn),
                flush_lsn: Some(at_lsn),
                replay_lsn: Some(at_lsn),
                lag_bytes: Some(0),
                lag_seconds: None,
            })
            .collect(),
        config: Some(config),
        ..base_report(k)
    }
}

fn standby(k: u32, at_lsn: Lsn, upstream: Option<Endpoint>, mut config: DesiredConfig) -> InstanceReport {
    config.upstream = upstream.clone();
    InstanceReport {
        standby_configured: true,
        node: Some(NodeReport {
            in_recovery: true,
            current_lsn: None,
            received_lsn: Some(at_lsn),
            replayed_lsn: Some(at_lsn),
            timeline: Some(1),
            synchronous_standby_names: String::new(),
            timeline_switches: Vec::new(),
        }),
        receiver: upstream.map(|_| ReceiverReport {
            status: "streaming".into(),
            upstream_host: None,
            upstream_port: None,
            flushed_lsn: Some(at_lsn),
        }),
        config: Some(config),
        ..base_report(k)
    }
}

fn stopped_primary_data(k: u32, clean: bool) -> InstanceReport {
    InstanceReport {
        phase: ManagerPhase::AwaitingRole,
        server: ServerProcessReport { running: false, pid: None, accepting: false, crashed: !clean },
        control: Some(ControlReport {
            state: if clean { "shut down" } else { "in production" }.into(),
            clean_shutdown: clean,
            checkpoint_lsn: Some(lsn(50)),
            timeline: Some(1),
        }),
        ..base_report(k)
    }
}

fn requests_to(plan: &Plan, k: u32) -> Vec<&Request> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { instance, request } if *instance == name(k) => Some(request),
            _ => None,
        })
        .collect()
}

fn kinds_to(plan: &Plan, k: u32) -> Vec<OperationKind> {
    requests_to(plan, k).into_iter().map(Request::kind).collect()
}

fn disruptive(plan: &Plan) -> usize {
    plan.actions.iter().filter(|a| a.is_disruptive()).count()
}

fn transition(plan: &Plan) -> &Transition {
    plan.status.transition.as_ref().expect("a transition")
}

// ---------------------------------------------------------------- bootstrap

#[test]
fn fresh_cluster_initialises_only_the_first_instance() {
    let w = World::new(3);
    let plan = w.decide();
    assert_eq!(plan.status.target_primary.as_deref(), Some("demo-0"));
    assert!(!plan.status.initialized);
    assert_eq!(plan.status.phase, Some(Phase::Initializing));
    match requests_to(&plan, 0).as_slice() {
        [Request::Bootstrap { source: None, config }] => {
            assert!(!config.standby);
            let sync = config.synchronous.as_ref().expect("required durability: commits wait for a standby");
            assert_eq!(sync.standbys, ["demo-1", "demo-2"], "until one holds data, every member is listed");
        }
        other => panic!("expected one Bootstrap of a new primary, got {other:?}"),
    }
    assert!(
        requests_to(&plan, 1).is_empty() && requests_to(&plan, 2).is_empty(),
        "standbys wait for the primary"
    );
}

#[test]
fn missing_instances_are_created_first() {
    let mut w = World::new(3);
    w.platform(1, PlatformState::Missing).platform(2, PlatformState::Missing);
    let plan = w.decide();
    let created: Vec<&str> =
        plan.actions.iter().filter(|a| matches!(a, Action::Create { .. })).map(Action::instance).collect();
    assert_eq!(created, ["demo-1", "demo-2"]);
}

#[test]
fn standbys_are_cloned_once_the_primary_accepts_writes() {
    let mut w = World::new(3);
    w.status.target_primary = Some(name(0));
    let cfg = desired(&w, 0, false);
    w.set(0, Some(primary(0, lsn(1), &[], cfg)));
    let plan = w.decide();
    assert!(plan.status.initialized);
    assert_eq!(plan.status.current_primary.as_deref(), Some("demo-0"));
    assert!(plan.events.iter().any(|e| e.reason == "PrimaryInitialized"));
    for k in [1, 2] {
        match requests_to(&plan, k).as_slice() {
            [Request::Bootstrap { source: Some(src), config }] => {
                assert_eq!(*src, ep(0));
                assert!(config.standby);
                assert_eq!(config.upstream, Some(ep(0)));
            }
            other => panic!("demo-{k}: expected a clone from demo-0, got {other:?}"),
        }
    }
}

#[test]
fn a_failed_initialisation_is_reported_and_retried() {
    let mut w = World::new(3);
    w.status.target_primary = Some(name(0));
    let mut r = awaiting_bootstrap(0);
    r.operation = Some(OperationReport {
        kind: OperationKind::Bootstrap,
        state: OperationState::Failed,
        request_id: "x".into(),
        message: "initdb failed: disk full".into(),
    });
    w.set(0, Some(r));
    let plan = w.decide();
    assert!(
        plan.status.phase_reason.as_deref().is_some_and(|r| r.contains("disk full")),
        "{:?}",
        plan.status
    );
    assert_eq!(kinds_to(&plan, 0), [OperationKind::Bootstrap]);
}

#[test]
fn an_initialised_cluster_is_never_initialised_again() {
    // Every instance lost its data: report it, never run initdb again.
    let mut w = World::healthy(3);
    for k in 0..3 {
        w.set(k, Some(awaiting_bootstrap(k)));
    }
    let plan = w.decide();
    for k in 0..3 {
        assert!(
            !requests_to(&plan, k).iter().any(|r| matches!(r, Request::Bootstrap { source: None, .. })),
            "demo-{k} must not be initialised again: {:?}",
            plan.actions
        );
    }
    assert_eq!(plan.status.phase, Some(Phase::FailoverBlocked), "{:?}", plan.status.phase_reason);
}

#[test]
fn a_lost_status_is_rebuilt_from_the_data_not_reinitialised() {
    let mut w = World::healthy(3);
    w.status = OpenGaussClusterStatus::default();
    let plan = w.decide();
    assert!(plan.status.initialized);
    assert_eq!(plan.status.current_primary.as_deref(), Some("demo-0"), "the running primary keeps its role");
    assert!(plan.events.iter().any(|e| e.reason == "ResumedExistingData"));
    assert!(
        !plan.actions.iter().any(|a| matches!(a, Action::Send { request: Request::Bootstrap { .. }, .. }))
    );
}

#[test]
fn a_cleanly_stopped_primary_resumes_its_role() {
    let mut w = World::healthy(3);
    w.set(0, Some(stopped_primary_data(0, true)));
    let plan = w.decide();
    assert!(plan.status.transition.is_none(), "no failover after a clean stop");
    match requests_to(&plan, 0).as_slice() {
        [Request::Start { config }] => assert!(!config.standby),
        other => panic!("expected Start as primary, got {other:?}"),
    }
}

#[test]
fn invalid_spec_changes_nothing() {
    let mut w = World::healthy(3);
    w.spec.instances = 0;
    let plan = w.decide();
    assert_eq!(plan.status.phase, Some(Phase::InvalidSpec));
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
    let valid = plan.status.condition("ValidSpec").expect("condition");
    assert_eq!(valid.status, "False");
    assert!(valid.message.contains("spec.instances"));
}

// ---------------------------------------------------------------- steady state

#[test]
fn a_healthy_cluster_needs_nothing() {
    let w = World::healthy(3);
    let plan = w.decide();
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
    assert_eq!(plan.status.phase, Some(Phase::Healthy), "{:?}", plan.status.phase_reason);
    assert_eq!(plan.status.ready_instances, 3);
    assert_eq!(plan.status.condition("Ready").map(|c| c.status.as_str()), Some("True"));
}

#[test]
fn the_synchronous_set_lists_the_other_members_holding_data() {
    let mut w = World::healthy(3);
    w.set(2, Some(awaiting_bootstrap(2)));
    w.status.synchronous = None;
    let cfg = desired(&w, 0, false);
    let sync = cfg.synchronous.expect("synchronous");
    assert_eq!(sync.standbys, ["demo-1"], "demo-2 has no data and could never acknowledge");
    assert_eq!(sync.number, 1);
}

#[test]
fn preferred_durability_lists_only_streaming_standbys() {
    let mut w = World::healthy(3);
    w.spec.failover.data_durability = DataDurability::Preferred;
    let mut p = w.obs.instances[&name(0)].report.clone().expect("primary");
    p.replication.retain(|r| r.instance == "demo-2");
    w.set(0, Some(p));
    let cfg = desired(&w, 0, false);
    assert_eq!(cfg.synchronous.expect("sync").standbys, ["demo-2"]);
    assert!(cfg.most_available_sync);
}

#[test]
fn a_returning_old_primary_rejoins_instead_of_starting_as_primary() {
    let mut w = World::healthy(3);
    w.status.current_primary = Some(name(1));
    w.status.target_primary = Some(name(1));
    let cfg = desired(&w, 1, false);
    let p = primary(1, lsn(200), &[name(2)], cfg);
    w.set(1, Some(p));
    w.set(0, Some(stopped_primary_data(0, false)));
    let plan = w.decide();
    match requests_to(&plan, 0).as_slice() {
        [Request::Rejoin { source, config }] => {
            assert_eq!(*source, ep(1));
            assert!(config.standby);
        }
        other => panic!("expected a rejoin, got {other:?}"),
    }
    assert!(!kinds_to(&plan, 0).contains(&OperationKind::Start));
}

#[test]
fn a_second_writable_primary_is_fenced_at_once() {
    let mut w = World::healthy(3);
    let cfg = desired(&w, 2, false);
    w.set(2, Some(primary(2, lsn(120), &[], cfg)));
    let plan = w.decide();
    assert_eq!(kinds_to(&plan, 2), [OperationKind::Fence]);
    assert!(plan.events.iter().any(|e| e.reason == "FencingStrayPrimary"));
    assert!(kinds_to(&plan, 0).iter().all(|k| *k != OperationKind::Fence), "the real primary keeps running");
}

#[test]
fn dead_instances_are_restarted() {
    let mut w = World::healthy(3);
    w.platform(2, PlatformState::Dead);
    let plan = w.decide();
    assert!(plan.actions.contains(&Action::Restart { instance: name(2) }));
    assert!(plan.status.transition.is_none(), "a standby's death is no failover");
    assert_eq!(plan.status.phase, Some(Phase::Degraded));
}

#[test]
fn a_standby_that_cannot_stream_for_a_minute_is_cloned_again() {
    let mut w = World::healthy(3);
    let mut p = w.obs.instances[&name(0)].report.clone().expect("primary");
    p.replication.retain(|r| r.instance != "demo-2");
    w.set(0, Some(p));
    let row = w.status.instances.iter_mut().find(|r| r.name == "demo-2").expect("row");
    row.not_streaming_since = Some(Time(at(100 - 30)));
    assert!(kinds_to(&w.decide(), 2).is_empty(), "30 s is not yet stalled");
    let row = w.status.instances.iter_mut().find(|r| r.name == "demo-2").expect("row");
    row.not_streaming_since = Some(Time(at(100 - 61)));
    let plan = w.decide();
    assert_eq!(kinds_to(&plan, 2), [OperationKind::Rebuild]);
    assert!(plan.events.iter().any(|e| e.reason == "RebuildingStandby"));
    // A controller that just started has not watched it stall.
    w.watching_since = at(90);
    assert!(kinds_to(&w.decide(), 2).is_empty());
}

#[test]
fn a_standby_needing_wal_the_primary_no_longer_holds_is_cloned_again_without_waiting_a_minute() {
    let mut w = World::healthy(3);
    let needs = w.obs.instances[&name(2)].report.as_ref().and_then(|r| r.wal_position()).expect("position");
    let segment = crate::engine::wal::segment_start_of(needs);
    let mut p = w.obs.instances[&name(0)].report.clone().expect("primary");
    p.replication.retain(|r| r.instance != "demo-2");
    // The primary still holds the standby's segment: nothing to do before the minute is up.
    p.oldest_wal = Some(segment);
    w.set(0, Some(p.clone()));
    let silent_since = |w: &mut World, secs: i64| {
        let row = w.status.instances.iter_mut().find(|r| r.name == "demo-2").expect("row");
        row.not_streaming_since = Some(Time(at(100 - secs)));
    };
    silent_since(&mut w, 10);
    assert!(kinds_to(&w.decide(), 2).is_empty(), "its WAL is there: it may still reconnect");
    // The primary's oldest segment is past the standby's position.
    p.oldest_wal = Some(Lsn(segment.0 + crate::engine::wal::WAL_SEGMENT_BYTES));
    w.set(0, Some(p));
    silent_since(&mut w, 2);
    assert!(kinds_to(&w.decide(), 2).is_empty(), "a few seconds: a report may be a moment old");
    silent_since(&mut w, 6);
    let plan = w.decide();
    assert_eq!(kinds_to(&plan, 2), [OperationKind::Rebuild]);
    let event = plan.events.iter().find(|e| e.reason == "RebuildingStandby").expect("event");
    assert!(event.message.contains("no longer holds"), "{}", event.message);
}

#[test]
fn not_streaming_since_is_recorded_and_cleared() {
    let mut w = World::healthy(3);
    let mut p = w.obs.instances[&name(0)].report.clone().expect("primary");
    p.replication.retain(|r| r.instance != "demo-1");
    w.set(0, Some(p));
    let plan = w.decide();
    assert_eq!(plan.status.instance("demo-1").and_then(|r| r.not_streaming_since.clone()), Some(Time(w.now)));
    assert_eq!(plan.status.instance("demo-2").and_then(|r| r.not_streaming_since.clone()), None);
}

// ---------------------------------------------------------------- failover

#[test]
fn a_dead_primary_starts_a_failover_at_once_and_detaches_standbys() {
    let mut w = World::healthy(3);
    w.platform(0, PlatformState::Dead);
    let plan = w.decide();
    let t = transition(&plan);
    assert_eq!(
        (t.kind, t.from.as_str(), t.step),
        (TransitionKind::Failover, "demo-0", TransitionStep::Detaching)
    );
    assert_eq!(
        t.synchronous.as_ref().map(|s| s.standbys.len()),
        Some(2),
        "the sync set in force is recorded"
    );
    assert_eq!(plan.status.phase, Some(Phase::FailingOver));
    assert_eq!(plan.status.target_primary, None, "no target before the standbys' positions are final");
    for k in [1, 2] {
        match requests_to(&plan, k).as_slice() {
            [Request::Configure { config }] => assert_eq!(config.upstream, None, "detach demo-{k}"),
            other => panic!("demo-{k}: expected detach, got {other:?}"),
        }
    }
    assert!(plan.actions.contains(&Action::Restart { instance: name(0) }));
    assert!(plan.urgent);
}

#[test]
fn an_unreachable_primary_is_failed_over_only_after_the_delay() {
    let mut w = World::healthy(3);
    w.set(0, None);
    w.now = at(99 + 4);
    assert!(w.decide().status.transition.is_none(), "4 s of silence is below the 5 s delay");
    w.now = at(99 + 5);
    assert!(w.decide().status.transition.is_some(), "5 s of silence is enough");
}

#[test]
fn an_answering_database_port_is_not_a_lost_primary() {
    let mut w = World::healthy(3);
    w.set(0, None);
    w.obs.instances.get_mut(&name(0)).expect("p").server_answers = true;
    w.now = at(200);
    assert!(w.decide().status.transition.is_none());
}

#[test]
fn a_controller_restart_does_not_count_its_own_absence_as_silence() {
    let mut w = World::healthy(3);
    w.set(0, None);
    w.now = at(1000);
    w.watching_since = at(998);
    assert!(w.decide().status.transition.is_none(), "only 2 s since this controller started watching");
}

fn detached_world(lsns: [u64; 3]) -> World {
    let mut w = World::healthy(3);
    w.platform(0, PlatformState::Dead);
    w.in_transition(TransitionKind::Failover, TransitionStep::Detaching, None);
    for k in [1, 2] {
        let cfg = desired(&w, k, true);
        w.set(k, Some(standby(k, lsn(lsns[k as usize]), None, cfg)));
    }
    w
}

#[test]
fn the_most_advanced_standby_is_promoted() {
    let w = detached_world([0, 90, 100]);
    let plan = w.decide();
    let t = transition(&plan);
    assert_eq!((t.step, t.to.as_deref()), (TransitionStep::Promoting, Some("demo-2")));
    assert_eq!(plan.status.target_primary.as_deref(), Some("demo-2"));
    assert_eq!(kinds_to(&plan, 2), [OperationKind::Promote]);
    assert!(kinds_to(&plan, 1).is_empty());
}

#[test]
fn ties_go_to_the_first_name() {
    let plan = detached_world([0, 100, 100]).decide();
    assert_eq!(transition(&plan).to.as_deref(), Some("demo-1"));
}

#[test]
fn no_promotion_while_a_synchronous_standby_cannot_report() {
    let mut w = detached_world([0, 100, 100]);
    w.set(2, None);
    let plan = w.decide();
    assert_eq!(plan.status.phase, Some(Phase::FailoverBlocked), "{:?}", plan.status.phase_reason);
    assert!(plan.status.phase_reason.as_deref().is_some_and(|r| r.contains("demo-2")));
    assert!(!plan.actions.iter().any(|a| matches!(a, Action::Send { request: Request::Promote { .. }, .. })));
}

#[test]
fn preferred_durability_promotes_anyway_with_a_warning() {
    let mut w = detached_world([0, 100, 100]);
    w.spec.failover.data_durability = DataDurability::Preferred;
    w.set(2, None);
    let plan = w.decide();
    assert_eq!(transition(&plan).to.as_deref(), Some("demo-1"));
    assert!(plan.events.iter().any(|e| e.reason == "FailoverWithPossibleLoss"));
}

#[test]
fn a_standby_still_streaming_holds_the_choice_back() {
    let mut w = detached_world([0, 100, 100]);
    let cfg = desired(&w, 1, true);
    w.set(1, Some(standby(1, lsn(100), Some(ep(0)), cfg)));
    let plan = w.decide();
    assert_eq!(transition(&plan).step, TransitionStep::Detaching);
    assert_eq!(kinds_to(&plan, 1), [OperationKind::Configure], "detach it again");
}

#[test]
fn a_reachable_old_primary_aborts_a_blocked_failover() {
    let mut w = detached_world([0, 100, 100]);
    w.platform(0, PlatformState::Running);
    w.set(0, Some(stopped_primary_data(0, false)));
    w.set(2, None);
    let plan = w.decide();
    assert!(plan.status.transition.is_none(), "aborted");
    assert!(plan.events.iter().any(|e| e.reason == "FailoverAborted"));
    assert_eq!(kinds_to(&plan, 0), [OperationKind::Start], "the old primary resumes with its data");
}

/// The persisted failover chose demo-`k` and is promoting it.
fn promoting(w: &mut World, k: u32) {
    if let Some(t) = w.status.transition.as_mut() {
        t.step = TransitionStep::Promoting;
        t.to = Some(name(k));
    }
}

#[test]
fn a_restarted_controller_resumes_promotion_without_choosing_again() {
    let mut w = detached_world([0, 100, 120]);
    // Persisted before the restart: demo-1 was chosen (it was ahead then).
    promoting(&mut w, 1);
    w.status.target_primary = Some(name(1));
    w.watching_since = w.now;
    let plan = w.decide();
    assert_eq!(transition(&plan).to.as_deref(), Some("demo-1"), "the persisted choice stands");
    assert_eq!(kinds_to(&plan, 1), [OperationKind::Promote]);
    assert!(kinds_to(&plan, 2).is_empty(), "never a second promotion");
}

#[test]
fn promotion_completes_then_standbys_are_repointed_and_the_old_primary_rejoins() {
    let mut w = detached_world([0, 100, 100]);
    promoting(&mut w, 1);
    let cfg = desired(&w, 1, false);
    w.set(1, Some(primary(1, lsn(101), &[], cfg)));
    let plan = w.decide();
    assert_eq!(plan.status.current_primary.as_deref(), Some("demo-1"));
    assert_eq!(transition(&plan).step, TransitionStep::Repointing);
    match requests_to(&plan, 2).as_slice() {
        [Request::Configure { config }] => assert_eq!(config.upstream, Some(ep(1))),
        other => panic!("expected demo-2 repointed, got {other:?}"),
    }
    assert!(plan.events.iter().any(|e| e.reason == "Promoted"));
    // Next pass: demo-2 follows demo-1 and the old primary is back with its data.
    let mut w2 = w;
    w2.status = plan.status.clone();
    let cfg2 = {
        let mut c = desired(&w2, 2, true);
        c.upstream = Some(ep(1));
        c
    };
    w2.set(2, Some(standby(2, lsn(101), Some(ep(1)), cfg2)));
    w2.platform(0, PlatformState::Running);
    w2.set(0, Some(stopped_primary_data(0, false)));
    let plan2 = w2.decide();
    assert!(plan2.status.transition.is_none(), "failover complete");
    assert!(plan2.events.iter().any(|e| e.reason == "FailoverCompleted"));
    let last = plan2.status.last_transition.as_ref().expect("the story is kept");
    assert_eq!((last.from.as_str(), last.to.as_deref()), ("demo-0", Some("demo-1")));
    assert!(last.completed_at.is_some());
    assert_eq!(kinds_to(&plan2, 0), [OperationKind::Rejoin]);
    assert!(disruptive(&plan2) <= 1);
}

#[test]
fn a_promotion_target_that_died_is_waited_for_not_replaced() {
    // It may have promoted before dying: replacing it could make two primaries.
    let mut w = detached_world([0, 100, 100]);
    promoting(&mut w, 1);
    w.platform(1, PlatformState::Dead);
    let plan = w.decide();
    assert_eq!(transition(&plan).to.as_deref(), Some("demo-1"));
    assert!(plan.actions.contains(&Action::Restart { instance: name(1) }));
    assert!(kinds_to(&plan, 2).is_empty(), "no other standby promoted meanwhile");
}

#[test]
fn a_promotion_target_gone_for_good_is_replaced() {
    let mut w = detached_world([0, 100, 100]);
    promoting(&mut w, 1);
    w.platform(1, PlatformState::Missing);
    let plan = w.decide();
    assert_ne!(transition(&plan).to.as_deref(), Some("demo-1"));
    assert!(plan.events.iter().any(|e| e.reason == "FailoverTargetLost"));
}

#[test]
fn a_dead_manager_with_a_live_server_is_no_lost_primary() {
    let mut w = World::healthy(3);
    w.platform(0, PlatformState::Dead);
    w.obs.instances.get_mut(&name(0)).expect("p").server_answers = true;
    let plan = w.decide();
    assert!(plan.status.transition.is_none(), "the manager is restarted and adopts the server");
    assert!(plan.actions.contains(&Action::Restart { instance: name(0) }));
}

#[test]
fn no_standby_below_the_last_promotion_point_is_promoted() {
    let mut w = detached_world([0, 100, 100]);
    w.status.last_promotion_lsn = Some(lsn(150).to_string());
    let plan = w.decide();
    assert_eq!(plan.status.phase, Some(Phase::FailoverBlocked), "{:?}", plan.status.phase_reason);
    assert!(plan.status.phase_reason.as_deref().is_some_and(|r| r.contains("took over")));
    w.status.last_promotion_lsn = Some(lsn(90).to_string());
    let plan = w.decide();
    assert_eq!(transition(&plan).step, TransitionStep::Promoting);
    assert_eq!(
        plan.status.last_promotion_lsn,
        Some(lsn(100).to_string()),
        "the new floor is the candidate's position"
    );
}

#[test]
fn never_more_than_one_disruptive_step_per_pass() {
    let mut w = World::healthy(3);
    // Two strays and a returning old primary at once.
    for k in [1, 2] {
        let cfg = desired(&w, k, false);
        w.set(k, Some(primary(k, lsn(1), &[], cfg)));
    }
    let plan = w.decide();
    assert_eq!(disruptive(&plan), 1, "{:?}", plan.actions);
}

// ---------------------------------------------------------------- switchover

#[test]
fn switchover_stops_the_primary_then_promotes_the_target_once_it_has_everything() {
    let mut w = World::healthy(3);
    w.requests.switchover_to = Some(name(2));
    let plan = w.decide();
    assert_eq!(plan.request_outcome.as_ref().map(Result::is_ok), Some(true));
    let t = transition(&plan);
    assert_eq!((t.kind, t.to.as_deref()), (TransitionKind::Switchover, Some("demo-2")));
    assert_eq!(kinds_to(&plan, 0), [OperationKind::Fence]);
    // Stopping the old primary is the plan, not a stray primary.
    assert!(!plan.events.iter().any(|e| e.reason == "FencingStrayPrimary"), "{:?}", plan.events);

    // While it stops, it still reports itself writable: expected, and asked once more only.
    let mut w1 = World::healthy(3);
    w1.status = plan.status.clone();
    w1.requests = UserRequests::default();
    let again = w1.decide();
    assert!(!again.events.iter().any(|e| e.reason == "FencingStrayPrimary"), "{:?}", again.events);
    assert_eq!(kinds_to(&again, 0), [OperationKind::Fence]);
    // Another writable instance during the switchover is a real stray.
    let cfg = desired(&w1, 1, false);
    w1.set(1, Some(primary(1, lsn(120), &[], cfg)));
    let stray = w1.decide();
    assert!(stray.events.iter().any(|e| e.reason == "FencingStrayPrimary" && e.message.contains("demo-1")));

    let mut w2 = World::healthy(3);
    w2.status = plan.status.clone();
    w2.requests = UserRequests::default();
    let mut stopped = stopped_primary_data(0, true);
    stopped.fenced = true;
    stopped.phase = ManagerPhase::Stopped;
    stopped.control.as_mut().expect("control").checkpoint_lsn = Some(lsn(100));
    w2.set(0, Some(stopped));
    // The target has not yet received the shutdown checkpoint: wait.
    let cfg = desired(&w2, 2, true);
    w2.set(2, Some(standby(2, lsn(100), Some(ep(0)), cfg.clone())));
    let wait = w2.decide();
    assert!(kinds_to(&wait, 2).is_empty(), "not promoted before it has the last WAL");
    w2.set(2, Some(standby(2, lsn(140), Some(ep(0)), cfg)));
    let go = w2.decide();
    assert_eq!(kinds_to(&go, 2), [OperationKind::Promote]);
}

#[test]
fn switchover_to_a_non_member_or_the_primary_is_refused() {
    for target in ["demo-7", "demo-0"] {
        let mut w = World::healthy(3);
        w.requests.switchover_to = Some(target.into());
        let plan = w.decide();
        assert!(plan.status.transition.is_none(), "{target}");
        assert!(matches!(plan.request_outcome, Some(Err(_))), "{target}");
    }
}

#[test]
fn timestamps_come_from_the_input_only() {
    let a = World::healthy(3).decide();
    let b = World::healthy(3).decide();
    assert_eq!(a, b, "the same input always gives the same plan");
}

// ---------------------------------------------------------------- day two: fencing, scaling

/// A standby whose server the manager stopped for a fence.
fn fenced_standby(k: u32, at_lsn: Lsn, config: DesiredConfig) -> InstanceReport {
    let mut r = standby(k, at_lsn, None, config);
    r.phase = ManagerPhase::Stopped;
    r.fenced = true;
    r.fenced_lsn = Some(at_lsn);
    r.server = ServerProcessReport::default();
    r.receiver = None;
    r
}

#[test]
fn a_fenced_primary_is_neither_replaced_nor_started() {
    let mut w = World::healthy(3);
    w.spec.fenced_instances = vec![name(0)];
    w.set(0, Some(stopped_primary_data(0, false)));
    let plan = w.decide();
    assert!(plan.status.transition.is_none(), "fencing the primary is chosen downtime, not a loss");
    assert!(
        !kinds_to(&plan, 0).iter().any(|k| matches!(k, OperationKind::Start | OperationKind::Promote)),
        "a fenced primary is not started: {:?}",
        kinds_to(&plan, 0)
    );
    assert_eq!(plan.status.phase, Some(Phase::Degraded));
    assert!(plan.status.phase_reason.as_deref().is_some_and(|r| r.contains("fenced")), "{plan:?}");
}

/// demo-0 primary of a cluster scaled from 3 to 2: it applied the set without demo-2, and
/// demo-1 has flushed up to `demo1_flush` of the 100 that demo-2 confirmed.
fn scaled_down_world(demo1_flush: u64) -> World {
    let mut w = World::healthy(3);
    w.spec.instances = 2;
    let cfg = desired(&w, 0, false);
    assert_eq!(cfg.synchronous.as_ref().map(|s| s.standbys.clone()), Some(vec![name(1)]));
    let mut p = primary(0, lsn(100), &[name(1), name(2)], cfg);
    p.replication[0].flush_lsn = Some(lsn(demo1_flush));
    w.set(0, Some(p));
    w
}

#[test]
fn a_removed_standby_goes_only_once_the_remaining_synchronous_set_holds_what_it_confirmed() {
    let plan = scaled_down_world(90).decide();
    assert!(
        !plan.actions.iter().any(|a| matches!(a, Action::Delete { .. })),
        "demo-2 may hold acknowledged commits demo-1 lacks: {:?}",
        plan.actions
    );
    assert!(plan.status.phase_reason.as_deref().is_some_and(|r| r.contains("removing demo-2")), "{plan:?}");
    let plan = scaled_down_world(100).decide();
    assert!(plan.actions.contains(&Action::Delete { instance: name(2) }), "{:?}", plan.actions);
}

#[test]
fn a_removed_standby_still_listed_as_synchronous_waits() {
    let mut w = scaled_down_world(100);
    let mut cfg = desired(&w, 0, false);
    cfg.synchronous.as_mut().expect("sync").standbys.push(name(2));
    let p = primary(0, lsn(100), &[name(1), name(2)], cfg);
    w.set(0, Some(p));
    let plan = w.decide();
    assert!(!plan.actions.iter().any(|a| matches!(a, Action::Delete { .. })));
    assert_eq!(kinds_to(&plan, 0), [OperationKind::Configure], "first the primary drops it from the set");
}

#[test]
fn a_primary_beyond_a_new_size_of_one_still_waits_for_the_member_taking_over() {
    let mut w = World::healthy(2);
    w.spec.instances = 1;
    let input = w.input();
    let beyond = config::synchronous_set(&input, None, &name(1)).map(|s| s.standbys);
    assert_eq!(beyond, Some(vec![name(0)]), "demo-1 hands over to demo-0: its commits wait for it");
    assert_eq!(config::synchronous_set(&input, None, &name(0)), None, "a single member waits for nobody");
    let mut asynchronous = w.spec.clone();
    asynchronous.replication.synchronous.method = opengauss_crd::SyncMethod::Off;
    let input = Input { spec: &asynchronous, ..input };
    assert_eq!(config::synchronous_set(&input, None, &name(1)), None, "asynchronous by choice");
}

#[test]
fn a_switchover_target_fenced_before_its_promotion_is_stopped_then_replaced() {
    let mut w = World::healthy(3);
    w.in_transition(TransitionKind::Switchover, TransitionStep::Promoting, Some(2));
    let mut stopped = stopped_primary_data(0, true);
    stopped.fenced = true;
    w.set(0, Some(stopped));
    w.spec.fenced_instances = vec![name(2)];
    let plan = w.decide();
    assert_eq!(kinds_to(&plan, 2), [OperationKind::Fence], "stopped, not promoted");
    assert_eq!(transition(&plan).to.as_deref(), Some("demo-2"), "nothing chosen before it stopped");

    let cfg = desired(&w, 2, true);
    w.set(2, Some(fenced_standby(2, lsn(100), cfg)));
    let plan = w.decide();
    assert!(plan.events.iter().any(|e| e.reason == "FailoverTargetLost"), "{:?}", plan.events);
    assert!(!kinds_to(&plan, 2).contains(&OperationKind::Promote));
    let t = transition(&plan);
    assert_eq!(t.kind, TransitionKind::Failover, "the others are detached and the best chosen again");
    assert_ne!(t.to.as_deref(), Some("demo-2"));
}

#[test]
fn without_a_recorded_synchronous_set_required_durability_does_not_guess() {
    let mut w = detached_world([0, 90, 100]);
    w.status.transition.as_mut().expect("t").synchronous = None;
    let plan = w.decide();
    assert_eq!(
        plan.status.phase,
        Some(Phase::FailoverBlocked),
        "the lone primary's commits may be nowhere else"
    );
    assert!(kinds_to(&plan, 2).is_empty() && kinds_to(&plan, 1).is_empty());

    w.spec.failover.data_durability = DataDurability::Preferred;
    let plan = w.decide();
    assert_eq!(kinds_to(&plan, 2), [OperationKind::Promote], "preferred: availability first");
}

#[test]
fn a_failover_detaches_instances_awaiting_removal_too() {
    let mut w = World::healthy(4);
    w.spec.instances = 3;
    w.platform(0, PlatformState::Dead);
    let plan = w.decide();
    match requests_to(&plan, 3).as_slice() {
        [Request::Configure { config }] => assert_eq!(config.upstream, None),
        other => panic!("demo-3, awaiting removal, must be detached too: {other:?}"),
    }
}

#[test]
fn a_failover_starts_a_stopped_unfenced_standby_detached() {
    let mut w = detached_world([0, 100, 90]);
    let cfg = desired(&w, 1, true);
    w.set(1, Some(fenced_standby(1, lsn(100), cfg)));
    let plan = w.decide();
    match requests_to(&plan, 1).as_slice() {
        [Request::Start { config }] => assert!(config.standby && config.upstream.is_none()),
        other => panic!("demo-1 is a candidate only once it runs: {other:?}"),
    }
    assert_eq!(transition(&plan).to, None, "nothing is chosen while demo-1 may hold more");

    w.spec.fenced_instances = vec![name(1)];
    let plan = w.decide();
    assert!(requests_to(&plan, 1).is_empty(), "a standby the spec fences stays stopped");
}

#[test]
fn an_instance_awaiting_removal_out_of_sight_holds_back_a_required_failover() {
    // demo-3 left the synchronous set in a scale-down but may still hold what it confirmed.
    let mut w = World::healthy(4);
    w.spec.instances = 3;
    w.platform(0, PlatformState::Dead);
    w.status.synchronous = Some(SynchronousStatus {
        method: "any".into(),
        number: 1,
        standbys: vec![name(1), name(2)],
        widened_until: None,
    });
    w.in_transition(TransitionKind::Failover, TransitionStep::Detaching, None);
    for k in [1, 2] {
        let cfg = desired(&w, k, true);
        w.set(k, Some(standby(k, lsn(90), None, cfg)));
    }
    let cfg = desired(&w, 3, true);
    w.set(3, Some(standby(3, lsn(100), None, cfg)));
    let plan = w.decide();
    assert_eq!(transition(&plan).to.as_deref(), Some("demo-3"), "the most advanced copy wins, member or not");

    w.set(3, None);
    let plan = w.decide();
    assert_eq!(plan.status.phase, Some(Phase::FailoverBlocked), "demo-3 may hold commits nobody else has");
    assert!(kinds_to(&plan, 1).is_empty() && kinds_to(&plan, 2).is_empty());
}

#[test]
fn a_stray_primary_is_fenced_even_while_a_failover_is_blocked() {
    let mut w = World::healthy(3);
    w.spec.instances = 2;
    w.platform(0, PlatformState::Dead);
    w.set(1, Some(awaiting_bootstrap(1)));
    let cfg = desired(&w, 2, false);
    w.set(2, Some(primary(2, lsn(90), &[], cfg)));
    let plan = w.decide();
    assert_eq!(plan.status.phase, Some(Phase::FailoverBlocked));
    assert_eq!(kinds_to(&plan, 2), [OperationKind::Fence], "demo-2 accepts writes but is not the primary");
}

// --- partitions: the primary's lease and failsafe (see `lease`) ---

/// demo-0 unreachable for `secs` seconds (manager and database port), its last lease renewal
/// sent as long ago.
fn cut_off_primary(secs: i64) -> World {
    let mut w = World::healthy(3);
    w.set(0, None);
    w.now = at(99 + secs);
    w.obs.instances.get_mut(&name(0)).expect("p").unrenewed_for = std::time::Duration::from_secs(secs as u64);
    w
}

fn holding(mut r: InstanceReport, primary: u32) -> InstanceReport {
    r.failsafe = Some(crate::instance::report::FailsafeHold { primary: name(primary), remaining_ms: 4000 });
    r
}

#[test]
fn a_primary_its_standbys_still_hold_is_not_failed_over_and_the_status_says_why() {
    let mut w = cut_off_primary(60);
    for k in [1, 2] {
        let r = w.obs.instances[&name(k)].report.clone().expect("standby report");
        w.set(k, Some(holding(r, 0)));
    }
    let plan = w.decide();
    assert!(plan.status.transition.is_none(), "no failover while demo-0 is held");
    assert!(plan.actions.iter().all(|a| !a.is_disruptive()), "{:?}", plan.actions);
    assert_eq!(plan.status.phase, Some(Phase::Degraded));
    let reason = plan.status.phase_reason.clone().unwrap_or_default();
    assert!(reason.contains("keeps serving") && reason.contains("demo-1, demo-2"), "{reason}");
    assert_eq!(plan.status.current_primary.as_deref(), Some("demo-0"));
}

#[test]
fn no_replacement_is_promoted_before_the_old_primarys_lease_has_certainly_ended() {
    // Defaults: a 5 s lease, replaceable 6.8 s after the last renewal was sent.
    let mut w = cut_off_primary(6);
    w.in_transition(TransitionKind::Failover, TransitionStep::Detaching, None);
    for k in [1, 2] {
        let cfg = desired(&w, k, true);
        w.set(k, Some(standby(k, lsn(100), None, cfg)));
    }
    let plan = w.decide();
    assert_eq!(transition(&plan).step, TransitionStep::Detaching, "still waiting for the lease");
    assert!(plan.status.phase_reason.as_deref().is_some_and(|r| r.contains("lease")), "{:?}", plan.status);
    assert!(!plan.actions.iter().any(|a| matches!(a, Action::Send { request: Request::Promote { .. }, .. })));
    w.obs.instances.get_mut(&name(0)).expect("p").unrenewed_for = std::time::Duration::from_millis(6800);
    let plan = w.decide();
    assert_eq!(transition(&plan).step, TransitionStep::Promoting, "the lease has ended: choose");
}

#[test]
fn a_standby_holding_the_old_primary_keeps_the_choice_back() {
    let mut w = cut_off_primary(60);
    w.in_transition(TransitionKind::Failover, TransitionStep::Detaching, None);
    for k in [1, 2] {
        let cfg = desired(&w, k, true);
        w.set(k, Some(standby(k, lsn(100), None, cfg)));
    }
    let r = w.obs.instances[&name(2)].report.clone().expect("report");
    w.set(2, Some(holding(r, 0)));
    let plan = w.decide();
    assert_eq!(transition(&plan).step, TransitionStep::Detaching);
    assert!(
        plan.status.phase_reason.as_deref().is_some_and(|r| r.contains("demo-2 still hold")),
        "{:?}",
        plan
    );
}

#[test]
fn a_cut_that_heals_before_anything_was_promoted_cancels_the_failover_without_a_fence() {
    for step in [TransitionStep::Fencing, TransitionStep::Detaching] {
        let mut w = World::healthy(3);
        w.in_transition(TransitionKind::Failover, step, None);
        for k in [1, 2] {
            let cfg = desired(&w, k, true);
            w.set(k, Some(standby(k, lsn(100), None, cfg)));
        }
        let plan = w.decide();
        assert!(plan.status.transition.is_none(), "{step:?}: cancelled");
        assert!(plan.events.iter().any(|e| e.reason == "FailoverCancelled"));
        assert!(kinds_to(&plan, 0).is_empty(), "{step:?}: no fence, no restart: {:?}", kinds_to(&plan, 0));
        assert_eq!(plan.status.current_primary.as_deref(), Some("demo-0"));
        // The standbys are pointed back at it.
        for k in [1, 2] {
            match requests_to(&plan, k).as_slice() {
                [Request::Configure { config }] => {
                    assert_eq!(config.upstream, Some(ep(0)), "{step:?} demo-{k}")
                }
                other => panic!("{step:?} demo-{k}: expected re-attach, got {other:?}"),
            }
        }
    }
}

#[test]
fn a_writable_old_primary_is_fenced_not_kept_when_another_instance_also_accepts_writes() {
    let mut w = World::healthy(3);
    w.in_transition(TransitionKind::Failover, TransitionStep::Detaching, None);
    let others: Vec<String> = vec![name(0), name(2)];
    let cfg = desired(&w, 1, false);
    w.set(1, Some(primary(1, lsn(100), &others, cfg)));
    let plan = w.decide();
    assert!(plan.status.transition.is_some(), "not cancelled with two writable instances");
    assert!(!plan.events.iter().any(|e| e.reason == "FailoverCancelled"));
}

#[test]
fn every_peer_in_a_primarys_configuration_carries_its_managers_address_and_the_lease() {
    let w = World::healthy(3);
    let cfg = desired(&w, 0, false);
    assert_eq!(cfg.lease_milliseconds, 5000);
    let managers: Vec<Option<String>> = cfg.peers.iter().map(|p| p.manager.clone()).collect();
    assert_eq!(managers, [Some("http://manager-1".to_string()), Some("http://manager-2".to_string())]);
    let mut single = World::healthy(1);
    single.spec.instances = 1;
    assert_eq!(desired(&single, 0, false).lease_milliseconds, 5000, "extras being removed could replace it");
    assert!(desired(&single, 0, false).peers.is_empty(), "alone: held by nobody, it keeps serving");
    // Instances a scale-down has yet to remove are peers too.
    let mut shrinking = World::healthy(3);
    shrinking.spec.instances = 2;
    let peers: Vec<String> = desired(&shrinking, 0, false).peers.iter().map(|p| p.instance.clone()).collect();
    assert_eq!(peers, ["demo-1", "demo-2"]);
}

/// demo-0 primary on timeline 2 (its history: `switches`), the status's promotion floor at
/// `floor`; demo-2 still on timeline 1 at `standby_at`, following demo-0 but not streaming.
fn promoted_with_a_standby_left_behind(floor: Lsn, switches: Vec<Switch>, standby_at: Lsn) -> World {
    let mut w = World::healthy(3);
    w.status.last_promotion_lsn = Some(floor.to_string());
    let mut p = w.obs.instances[&name(0)].report.clone().expect("primary");
    p.replication.retain(|r| r.instance != "demo-2");
    if let Some(n) = p.node.as_mut() {
        n.timeline = Some(2);
        n.timeline_switches = switches;
    }
    w.set(0, Some(p));
    let cfg = desired(&w, 2, true);
    w.set(2, Some(standby(2, standby_at, Some(ep(0)), cfg)));
    w
}

/// demo-2 has not streamed for `secs` seconds.
fn demo_2_silent_for(w: &mut World, secs: i64) {
    let row = w.status.instances.iter_mut().find(|r| r.name == "demo-2").expect("row");
    row.not_streaming_since = Some(Time(at(100 - secs)));
}

/// Not after 2 s (a report may be old), but after 6 s demo-2 is cloned again, the event
/// saying why; returns that event's message.
fn demo_2_rebuilt_after_five_seconds(w: &mut World) -> String {
    demo_2_silent_for(w, 2);
    assert!(kinds_to(&w.decide(), 2).is_empty(), "a moment: a report may be old");
    demo_2_silent_for(w, 6);
    let plan = w.decide();
    assert_eq!(kinds_to(&plan, 2), [OperationKind::Rebuild]);
    let event = plan.events.iter().find(|e| e.reason == "RebuildingStandby").expect("event");
    assert!(event.message.contains("diverged"), "{}", event.message);
    event.message.clone()
}

#[test]
fn a_standby_that_diverged_past_the_promotion_is_cloned_again_without_waiting_a_minute() {
    // demo-0 was promoted at lsn(100) onto timeline 2; demo-2 stayed on timeline 1 and holds
    // WAL up to lsn(120) from the primary it followed before (a partition's minority side).
    let mut w = promoted_with_a_standby_left_behind(lsn(100), vec![], lsn(120));
    demo_2_rebuilt_after_five_seconds(&mut w);
    // Behind the promotion point it has not diverged: it may still catch up.
    let mut w = promoted_with_a_standby_left_behind(lsn(100), vec![], lsn(90));
    demo_2_silent_for(&mut w, 6);
    assert!(kinds_to(&w.decide(), 2).is_empty());
}

/// The primary's timeline history tells where it left the old timeline, whatever the status's
/// promotion floor says since (it is raised when a synchronous set applies, past the fork:
/// a partition scenario waited a minute for the stalled-standby rule because of that).
#[test]
fn a_standby_past_the_primarys_timeline_switch_is_cloned_again_whatever_the_floor() {
    // demo-0 left timeline 1 at lsn(100); the floor was raised to lsn(150) on timeline 2 since.
    let history = || vec![Switch { timeline: 1, at: lsn(100) }];
    let mut w = promoted_with_a_standby_left_behind(lsn(150), history(), lsn(120));
    let message = demo_2_rebuilt_after_five_seconds(&mut w);
    assert!(message.contains(&format!("replayed up to {} on timeline 1", lsn(120))), "{message}");
    // Exactly at the switch, or before it: it can follow the new timeline.
    for at_or_before in [lsn(100), lsn(90)] {
        let mut w = promoted_with_a_standby_left_behind(lsn(150), history(), at_or_before);
        demo_2_silent_for(&mut w, 6);
        assert!(kinds_to(&w.decide(), 2).is_empty(), "{at_or_before}");
    }
    // Without the history (openGauss), the floor decides as before: lsn(120) is under it.
    let mut w = promoted_with_a_standby_left_behind(lsn(150), vec![], lsn(120));
    demo_2_silent_for(&mut w, 6);
    assert!(kinds_to(&w.decide(), 2).is_empty());
}

/// The set a failover trusts while the primary's synchronous set changes: a set about to be
/// applied counts at once, a dropped member only once the remaining ones hold what it may have
/// confirmed, and a primary about to acknowledge alone leaves nothing to trust.
#[test]
fn the_trusted_synchronous_set_covers_the_old_and_the_new_set_while_it_changes() {
    let trusted = |w: &World| w.decide().status.synchronous.map(|s| (s.standbys, s.number));
    // Three instances, demo-0 applied ANY 1 (demo-1): demo-2 is about to join the set.
    let mut w = World::healthy(3);
    let mut cfg = desired(&w, 0, false);
    cfg.synchronous.as_mut().expect("sync").standbys = vec![name(1)];
    w.set(0, Some(primary(0, lsn(100), &[name(1), name(2)], cfg)));
    w.status.synchronous.as_mut().expect("sync").standbys = vec![name(1)];
    assert_eq!(trusted(&w), Some((vec![name(1), name(2)], 1)), "the wider set counts before it is seen");

    // demo-0 applied ANY 1 (demo-1, demo-2) but the spec now has two instances: demo-2 leaves.
    let mut w = World::healthy(3);
    w.spec.instances = 2;
    let cfg = desired(&w, 0, false);
    assert_eq!(cfg.synchronous.as_ref().map(|s| s.standbys.clone()), Some(vec![name(1)]));
    let mut applied = cfg.clone();
    applied.synchronous.as_mut().expect("sync").standbys = vec![name(1)];
    // Applied, but demo-1 has not yet received what the primary had when the set changed.
    let mut p = primary(0, lsn(120), &[name(1)], applied);
    p.replication[0].flush_lsn = Some(lsn(110));
    w.set(0, Some(p.clone()));
    let status = w.decide().status.synchronous.expect("trusted");
    assert_eq!(status.standbys, [name(1), name(2)], "demo-2 may hold what it confirmed");
    assert_eq!(status.widened_until.as_deref(), Some(lsn(120).to_string().as_str()));
    // Once demo-1 holds everything up to the change, the set narrows.
    w.status.synchronous = Some(status);
    p.replication[0].flush_lsn = Some(lsn(120));
    w.set(0, Some(p));
    assert_eq!(trusted(&w), Some((vec![name(1)], 1)));

    // Scaled to one instance: the primary is about to acknowledge alone.
    let mut w = World::healthy(3);
    w.spec.instances = 1;
    let plan = w.decide();
    assert!(kinds_to(&plan, 0).contains(&OperationKind::Configure));
    assert_eq!(plan.status.synchronous, None, "nothing to trust once commits may be on the primary alone");
}
