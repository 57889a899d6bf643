//! Reading the observation: who is who, who is healthy, and the status rows, phase and
//! conditions that summarise it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use opengauss_crd::names::instance_names;
use opengauss_crd::{FieldError, InstanceStatus, Phase, Role, TransitionKind};

use super::{Input, Observed, Plan, PlatformState};
use crate::engine::Endpoint;
use crate::instance::report::{InstanceReport, ManagerPhase, OperationKind, OperationState};

/// The instances the spec asks for, in ordinal order.
pub fn members(input: &Input<'_>) -> Vec<String> {
    instance_names(input.cluster, input.spec.instances)
}

/// Instances the platform still has but the spec no longer asks for, highest ordinal first:
/// the order in which a scale-down removes them.
pub fn extras(input: &Input<'_>) -> Vec<String> {
    let mut extra: Vec<(u32, String)> = input
        .observed
        .instances
        .iter()
        .filter(|(_, o)| o.platform != PlatformState::Missing)
        .filter_map(|(n, _)| {
            opengauss_crd::names::instance_ordinal(input.cluster, n)
                .filter(|k| *k >= input.spec.instances)
                .map(|k| (k, n.clone()))
        })
        .collect();
    extra.sort_by_key(|(k, _)| std::cmp::Reverse(*k));
    extra.into_iter().map(|(_, n)| n).collect()
}

pub fn observed<'a>(input: &Input<'a>, name: &str) -> Option<&'a Observed> {
    input.observed.instances.get(name)
}

pub fn report<'a>(input: &Input<'a>, name: &str) -> Option<&'a InstanceReport> {
    observed(input, name).and_then(|o| o.report.as_ref())
}

pub fn endpoint<'a>(input: &Input<'a>, name: &str) -> Option<&'a Endpoint> {
    observed(input, name).map(|o| &o.endpoint)
}

pub fn operation_running(r: &InstanceReport) -> bool {
    r.operation.as_ref().is_some_and(|o| o.state == OperationState::Running)
}

/// The last failed operation's message, if the last operation failed.
pub fn operation_failure(r: &InstanceReport) -> Option<&str> {
    r.operation.as_ref().filter(|o| o.state == OperationState::Failed).map(|o| o.message.as_str())
}

/// How an instance looks from the controller in this pass.
#[derive(Clone, Copy, Debug)]
pub enum InstanceHealth<'a> {
    /// The platform has no such instance.
    Missing,
    /// Its manager's process or pod is gone; `server_answers` tells whether its database
    /// still answers (a manager can die and leave its server running).
    Dead {
        server_answers: bool,
    },
    /// Its manager did not answer; `server_answers` tells whether the database port did.
    Unreachable {
        server_answers: bool,
    },
    Reachable(&'a InstanceReport),
}

pub fn classify<'a>(input: &Input<'a>, name: &str) -> InstanceHealth<'a> {
    match observed(input, name) {
        None => InstanceHealth::Missing,
        Some(o) => match (o.platform, &o.report) {
            (PlatformState::Missing, _) => InstanceHealth::Missing,
            (_, Some(r)) => InstanceHealth::Reachable(r),
            (PlatformState::Dead, None) => InstanceHealth::Dead { server_answers: o.server_answers },
            (PlatformState::Running, None) => {
                InstanceHealth::Unreachable { server_answers: o.server_answers }
            }
        },
    }
}

/// How long an instance has not answered at all, counted from when this controller started
/// watching at the earliest (a controller restart is not evidence against anyone).
pub fn silent_for(input: &Input<'_>, plan: &Plan, name: &str, watching_since: Timestamp) -> SignedDuration {
    let seen = plan
        .status
        .instance(name)
        .and_then(|i| i.last_seen.as_ref())
        .map(|t| t.0)
        .unwrap_or(watching_since)
        .max(watching_since);
    input.now.duration_since(seen)
}

pub fn validate(input: &Input<'_>) -> Result<(), Vec<FieldError>> {
    let mut problems = input.spec.problems();
    problems.extend(input.spec.fencing_problems(input.cluster));
    if problems.is_empty() { Ok(()) } else { Err(problems) }
}

pub fn invalid_spec(input: &Input<'_>, plan: &mut Plan, problems: &[FieldError]) {
    let message: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let message = message.join("; ");
    plan.status.phase = Some(Phase::InvalidSpec);
    plan.status.phase_reason = Some(message.clone());
    set_condition(input, plan, "ValidSpec", false, "InvalidSpec", &message);
}

/// Notes who answered: the manager, or at least the database port.
pub fn record_sightings(input: &Input<'_>, plan: &mut Plan) {
    for (name, o) in &input.observed.instances {
        let answered = o.report.is_some() || o.server_answers;
        let row = row_mut(plan, name);
        if answered {
            row.last_seen = Some(Time(input.now));
        }
    }
}

pub fn row_mut<'p>(plan: &'p mut Plan, name: &str) -> &'p mut InstanceStatus {
    let rows = &mut plan.status.instances;
    let idx = match rows.iter().position(|r| r.name == name) {
        Some(i) => i,
        None => {
            rows.push(InstanceStatus { name: name.to_string(), ..InstanceStatus::default() });
            rows.sort_by_key(|r| (r.name.len(), r.name.clone()));
            rows.iter().position(|r| r.name == name).expect("just inserted")
        }
    };
    &mut rows[idx]
}

pub fn set_condition(input: &Input<'_>, plan: &mut Plan, type_: &str, ok: bool, reason: &str, message: &str) {
    let status = if ok { "True" } else { "False" }.to_string();
    let conditions = &mut plan.status.conditions;
    let previous = conditions.iter().find(|c| c.type_ == type_).cloned();
    let last_transition_time = match &previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(input.now),
    };
    let condition = Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: input.generation,
        last_transition_time,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => *c = condition,
        None => conditions.push(condition),
    }
}

fn operation_word(kind: OperationKind) -> &'static str {
    match kind {
        OperationKind::Bootstrap => "bootstrapping",
        OperationKind::Start => "starting",
        OperationKind::Configure => "configuring",
        OperationKind::Promote => "promoting",
        OperationKind::Rejoin => "rejoining",
        OperationKind::Rebuild => "rebuilding",
        OperationKind::Restart => "restarting",
        OperationKind::Fence => "fencing",
    }
}

/// One status row from what was observed.
fn instance_row(input: &Input<'_>, plan: &Plan, name: &str) -> InstanceStatus {
    let previous = plan.status.instance(name).cloned().unwrap_or_default();
    let primary = plan.status.current_primary.clone();
    let primary_report =
        primary.as_deref().and_then(|p| report(input, p)).filter(|r| r.is_writable_primary());
    let repl_row = primary_report.and_then(|pr| pr.replication.iter().find(|row| row.instance == name));
    let mut row = InstanceStatus {
        name: name.to_string(),
        address: endpoint(input, name).map(ToString::to_string).unwrap_or_default(),
        last_seen: previous.last_seen,
        ..InstanceStatus::default()
    };
    match classify(input, name) {
        InstanceHealth::Missing => row.state = "missing".into(),
        InstanceHealth::Dead { .. } => row.state = "dead".into(),
        InstanceHealth::Unreachable { server_answers } => {
            row.state = "unreachable".into();
            row.role = previous.role;
            row.message = Some(if server_answers {
                "instance manager does not answer; the database port does".into()
            } else {
                "neither the instance manager nor the database answers".into()
            });
        }
        InstanceHealth::Reachable(r) => {
            let node = r.node.as_ref();
            row.role = match node {
                Some(n) if !n.in_recovery => Role::Primary,
                Some(_) => Role::Standby,
                None if r.standby_configured => Role::Standby,
                None if primary.as_deref() == Some(name) => Role::Primary,
                None => Role::Unknown,
            };
            row.timeline = node.and_then(|n| n.timeline).or(r.control.as_ref().and_then(|c| c.timeline));
            row.current_lsn = node.and_then(|n| n.current_lsn).map(|l| l.to_string());
            row.received_lsn = node
                .and_then(|n| n.received_lsn)
                .or(r.receiver.as_ref().and_then(|rc| rc.flushed_lsn))
                .map(|l| l.to_string());
            row.replayed_lsn = node.and_then(|n| n.replayed_lsn).map(|l| l.to_string());
            let op = r.operation.as_ref().filter(|o| o.state == OperationState::Running);
            row.state = if let Some(op) = op {
                operation_word(op.kind).into()
            } else if r.fenced {
                "fenced".into()
            } else {
                match r.phase {
                    ManagerPhase::AwaitingBootstrap => "pending".into(),
                    ManagerPhase::AwaitingRole
                        if r.server.crashed || r.control.as_ref().is_some_and(|c| !c.clean_shutdown) =>
                    {
                        "crashed".into()
                    }
                    ManagerPhase::AwaitingRole | ManagerPhase::Stopped => "stopped".into(),
                    ManagerPhase::Running => match (node, &r.receiver) {
                        (None, _) => "starting".into(),
                        (Some(n), _) if !n.in_recovery => "running".into(),
                        (Some(_), Some(rc)) => rc.status.clone(),
                        (Some(_), None) => "not streaming".into(),
                    },
                }
            };
            row.message = operation_failure(r).map(|m| format!("last operation failed: {m}"));
            row.certificate_expires = r
                .certificate_expires
                .and_then(|t| k8s_openapi::jiff::Timestamp::from_second(t).ok())
                .map(Time);
            let is_primary = primary.as_deref() == Some(name);
            row.ready = if is_primary {
                r.is_writable_primary()
            } else {
                r.is_running_standby() && repl_row.is_some_and(|rr| rr.state == "streaming")
            };
        }
    }
    if let Some(rr) = repl_row {
        row.lag_bytes = rr.lag_bytes;
        row.replication_state = Some(rr.state.clone());
        row.sync_state = Some(rr.sync_state.clone());
    }
    // The clock runs only while the instance is a running standby with nothing to do: a clone
    // or rejoin in progress (minutes on a large or slow database) is not time spent failing
    // to stream.
    let is_primary = primary.as_deref() == Some(name);
    let idle_standby = report(input, name).is_some_and(|r| r.is_running_standby() && !operation_running(r));
    row.not_streaming_since = if row.ready || is_primary || !idle_standby {
        None
    } else {
        previous.not_streaming_since.or(Some(Time(input.now)))
    };
    row
}

/// Fills in the status rows, the ready count, the phase (unless a decision set it this pass)
/// and the conditions.
pub fn summarize(input: &Input<'_>, plan: &mut Plan) {
    let mut names = members(input);
    for name in input.observed.instances.keys() {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let rows: Vec<InstanceStatus> = names.iter().map(|n| instance_row(input, plan, n)).collect();
    plan.status.ready_instances = rows.iter().filter(|r| r.ready).count() as u32;
    plan.status.instances = rows;
    let members = members(input);
    let not_ready: Vec<String> = plan
        .status
        .instances
        .iter()
        .filter(|r| members.contains(&r.name) && !r.ready)
        .map(|r| format!("{} ({})", r.name, r.state))
        .collect();
    let primary_ok =
        plan.status.current_primary.as_deref().and_then(|p| plan.status.instance(p)).is_some_and(|r| r.ready);
    if let Some((phase, reason)) = plan_phase(plan) {
        plan.status.phase = Some(phase);
        plan.status.phase_reason = Some(reason);
    } else if let Some(t) = &plan.status.transition {
        let (phase, what) = match t.kind {
            TransitionKind::Failover => (Phase::FailingOver, "failing over"),
            TransitionKind::Switchover => (Phase::SwitchingOver, "switching over"),
        };
        plan.status.phase = Some(phase);
        plan.status.phase_reason = Some(format!("{what} from {} ({:?}): {}", t.from, t.step, t.reason));
    } else if !plan.status.initialized {
        plan.status.phase = Some(Phase::Initializing);
        if plan.status.phase_reason.is_none() {
            plan.status.phase_reason = Some("creating the first primary".into());
        }
    } else if primary_ok && not_ready.is_empty() {
        plan.status.phase = Some(Phase::Healthy);
        plan.status.phase_reason =
            Some(format!("{} instance(s) ready, every standby streaming", members.len()));
    } else {
        let never_bootstrapped =
            plan.status.instances.iter().any(|r| members.contains(&r.name) && r.state == "pending");
        let phase = if primary_ok && never_bootstrapped { Phase::CreatingStandbys } else { Phase::Degraded };
        plan.status.phase = Some(phase);
        let mut reason = Vec::new();
        if !primary_ok {
            reason.push(format!(
                "primary {} not ready",
                plan.status.current_primary.as_deref().unwrap_or("(none)")
            ));
        }
        if !not_ready.is_empty() {
            reason.push(format!("not ready: {}", not_ready.join(", ")));
        }
        plan.status.phase_reason = Some(reason.join("; "));
    }
    set_condition(input, plan, "ValidSpec", true, "Valid", "the spec is valid");
    let ready = plan.status.phase == Some(Phase::Healthy);
    let reason = plan.status.phase.map(|p| p.as_str()).unwrap_or("Unknown");
    let message = plan.status.phase_reason.clone().unwrap_or_default();
    set_condition(input, plan, "Ready", ready, reason, &message);
    let writable = primary_ok && plan.status.transition.is_none();
    let (why, text) = if writable {
        (
            "PrimaryAvailable",
            format!("{} accepts writes", plan.status.current_primary.as_deref().unwrap_or("")),
        )
    } else {
        ("NoPrimary", "no instance accepts writes right now".to_string())
    };
    set_condition(input, plan, "PrimaryAvailable", writable, why, &text);
}

/// A phase decided explicitly this pass (e.g. a blocked failover), carried in the reason field
/// marker of the plan.
fn plan_phase(plan: &Plan) -> Option<(Phase, String)> {
    plan.phase_override.clone()
}
