//! Failover and switchover as a persisted sequence of steps: fence the old primary, detach the
//! standbys so their positions are final, choose the standby holding every acknowledged commit,
//! promote it, point the others at it. Each step is recorded in `status.transition` before it
//! acts, so a restarted controller resumes where it stopped and never promotes twice.

use std::cmp::Reverse;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::SignedDuration;
use opengauss_crd::{DataDurability, Phase, Transition, TransitionKind, TransitionStep};

use super::choice::{
    best_candidate, candidates, choose, cloning_from_old, detached, live_position, server_known_down,
};
use super::config::{DesiredRole, desired_config};
use super::health::{
    InstanceHealth, classify, endpoint, extras, members, operation_running, report, silent_for,
};
use super::steady::{fence_stray_primaries, reconcile, upkeep};
use super::{Event, Input, Plan};
use crate::instance::report::{InstanceReport, ManagerPhase, OperationKind, OperationState, Request};

/// How long a switchover waits for its target to receive the old primary's last WAL before
/// giving up and restarting the old primary.
const SWITCHOVER_CATCH_UP: SignedDuration = SignedDuration::from_secs(60);

/// Why the current primary counts as lost, if it does.
fn primary_loss(input: &Input<'_>, plan: &Plan, primary: &str) -> Option<String> {
    if input.spec.is_fenced(primary) {
        // Fenced on purpose: writes stop, nothing fails over.
        return None;
    }
    let delay = SignedDuration::from_secs(i64::from(input.spec.failover.delay_seconds));
    match classify(input, primary) {
        InstanceHealth::Missing => Some(format!("the primary {primary} is gone")),
        // Its manager died but the server still answers: the platform restarts the manager,
        // which adopts the server.
        InstanceHealth::Dead { server_answers: true } => None,
        InstanceHealth::Dead { server_answers: false } => {
            Some(format!("the primary {primary}'s instance manager and server died"))
        }
        InstanceHealth::Unreachable { server_answers: true } => None,
        InstanceHealth::Unreachable { server_answers: false } => {
            let silent = silent_for(input, plan, primary, input.watching_since);
            (silent >= delay)
                .then(|| format!("the primary {primary} has not answered for {}s", silent.as_secs()))
        }
        InstanceHealth::Reachable(r) => {
            if r.is_writable_primary() || operation_running(r) || r.is_running_standby() {
                None
            } else if !r.initialized {
                Some(format!("the primary {primary} lost its data directory"))
            } else if r.phase == ManagerPhase::AwaitingRole
                && (r.server.crashed || r.control.as_ref().is_some_and(|c| !c.clean_shutdown))
            {
                Some(format!("the primary {primary}'s server crashed"))
            } else {
                None
            }
        }
    }
}

/// Starts a failover when the primary is lost, or a switchover when one was requested. Returns
/// true when a transition started (and acted) this pass.
pub fn start_transition_if_needed(input: &Input<'_>, plan: &mut Plan) -> bool {
    let Some(primary) = plan.status.current_primary.clone() else {
        return false;
    };
    if let Some(reason) = primary_loss(input, plan, &primary) {
        let holders = holders(input, &primary);
        if !holders.is_empty() && !matches!(classify(input, &primary), InstanceHealth::Reachable(_)) {
            // Cut off from the controller alone: the standbys still reach it and hold it, so
            // nobody can replace it and it keeps serving. Nothing to do but say so.
            plan.set_phase(
                Phase::Degraded,
                format!(
                    "{reason}, but it keeps serving: {} still reach it and hold it (failsafe), so it cannot be replaced",
                    holders.join(", ")
                ),
            );
            upkeep(input, plan);
            return true;
        }
        let has_standby =
            members(input).iter().any(|m| *m != primary && report(input, m).is_some_and(|r| r.initialized));
        // With nobody to take over, a primary whose data is intact is simply started again.
        let restartable = report(input, &primary).is_some_and(|r| r.initialized && !r.standby_configured);
        if !has_standby && restartable {
            return false;
        }
        if !has_standby && input.spec.instances > 1 {
            plan.set_phase(Phase::FailoverBlocked, format!("{reason}; no standby has data to take over"));
            upkeep(input, plan);
            fence_stray_primaries(input, plan, Some(&primary));
            return true;
        }
        // A lone member has nobody to hand over to; a primary beyond a new size of one does.
        if input.spec.instances == 1 && members(input).contains(&primary) {
            return false;
        }
        plan.event(Event::warning("FailingOver", format!("{reason}; failing over")));
        begin(input, plan, TransitionKind::Failover, &primary, None, reason);
        continue_transition(input, plan);
        return true;
    }
    if let Some(target) = input.requests.switchover_to.clone() {
        match switchover_refusal(input, plan, &primary, &target) {
            Some(why) => {
                plan.event(Event::warning("SwitchoverRefused", why.clone()));
                plan.request_outcome = Some(Err(why));
            }
            None => {
                let reason = format!("switchover to {target} requested");
                plan.event(Event::normal(
                    "SwitchingOver",
                    format!("switching over from {primary} to {target}"),
                ));
                plan.request_outcome = Some(Ok(reason.clone()));
                begin(input, plan, TransitionKind::Switchover, &primary, Some(target), reason);
                continue_transition(input, plan);
                return true;
            }
        }
    }
    false
}

fn switchover_refusal(input: &Input<'_>, plan: &Plan, primary: &str, target: &str) -> Option<String> {
    if !members(input).iter().any(|m| m == target) {
        return Some(format!("{target} is not an instance of this cluster"));
    }
    if input.spec.is_fenced(target) {
        return Some(format!("{target} is fenced"));
    }
    if target == primary {
        return Some(format!("{target} is already the primary"));
    }
    let ready = plan.status.instance(target).is_some_and(|r| r.ready);
    let streaming = report(input, target).is_some_and(|r| r.is_running_standby());
    let primary_ok = report(input, primary).is_some_and(|r| r.is_writable_primary());
    if !primary_ok {
        return Some(format!("the primary {primary} is not healthy; a failover handles that"));
    }
    if !(ready || streaming) {
        return Some(format!("{target} is not a streaming standby"));
    }
    None
}

/// A switchover the cluster itself needs (a restart of the primary, or a scale-down that
/// removes it), to the most advanced streaming standby.
pub fn planned_switchover(input: &Input<'_>, plan: &mut Plan, reason: String) {
    let Some(primary) = plan.status.current_primary.clone() else { return };
    let target = members(input)
        .into_iter()
        .filter(|m| *m != primary && !input.spec.is_fenced(m))
        .filter(|m| plan.status.instance(m).is_some_and(|row| row.ready))
        .filter_map(|m| report(input, &m).and_then(live_position).map(|pos| (m, pos)))
        .min_by_key(|(m, (received, replayed))| (Reverse(*received), Reverse(*replayed), m.clone()))
        .map(|(m, _)| m);
    match target {
        Some(target) => {
            plan.event(Event::normal(
                "SwitchingOver",
                format!("{reason}: switching over from {primary} to {target}"),
            ));
            begin(input, plan, TransitionKind::Switchover, &primary, Some(target), reason);
            continue_transition(input, plan);
        }
        None => plan.set_phase(Phase::Degraded, format!("{reason}, but no streaming standby can take over")),
    }
}

fn begin(
    input: &Input<'_>,
    plan: &mut Plan,
    kind: TransitionKind,
    from: &str,
    to: Option<String>,
    reason: String,
) {
    plan.status.target_primary = to.clone();
    plan.status.transition = Some(Transition {
        kind,
        from: from.to_string(),
        to,
        step: TransitionStep::Fencing,
        reason,
        started_at: Time(input.now),
        completed_at: None,
        synchronous: plan.status.synchronous.clone(),
    });
}

/// Advances the transition in flight by as many steps as this observation allows.
pub fn continue_transition(input: &Input<'_>, plan: &mut Plan) {
    upkeep(input, plan);
    // A bounded loop: each step either waits (returns) or moves to a later step.
    for _ in 0..4 {
        let Some(t) = plan.status.transition.clone() else {
            return;
        };
        if cancel_if_old_primary_serves(input, plan, &t) {
            return;
        }
        let keep = match (t.kind, t.step) {
            (_, TransitionStep::Promoting | TransitionStep::Repointing) => t.to.as_deref(),
            // A switchover stops the old primary on purpose (demote_for_switchover): it is
            // expected to accept writes until it has stopped, not a stray.
            (TransitionKind::Switchover, _) => Some(t.from.as_str()),
            _ => None,
        };
        fence_stray_primaries(input, plan, keep);
        let advanced = match (t.kind, t.step) {
            (TransitionKind::Failover, TransitionStep::Fencing | TransitionStep::Detaching) => {
                fence_and_choose(input, plan, &t)
            }
            (TransitionKind::Switchover, TransitionStep::Fencing | TransitionStep::Detaching) => {
                demote_for_switchover(input, plan, &t)
            }
            (_, TransitionStep::Promoting) => promote(input, plan, &t),
            (_, TransitionStep::Repointing) => repoint(input, plan, &t),
        };
        if !advanced {
            return;
        }
    }
}

fn set_step(plan: &mut Plan, step: TransitionStep, to: Option<String>) {
    if let Some(t) = plan.status.transition.as_mut() {
        t.step = step;
        if to.is_some() {
            t.to = to.clone();
        }
    }
    if to.is_some() {
        plan.status.target_primary = to;
    }
}

/// The instances that hold `primary` (failsafe): while they do, it may accept writes.
fn holders(input: &Input<'_>, primary: &str) -> Vec<String> {
    input
        .observed
        .instances
        .iter()
        .filter(|(n, _)| n.as_str() != primary)
        .filter(|(_, o)| {
            o.report.as_ref().and_then(|r| r.failsafe.as_ref()).is_some_and(|h| h.primary == primary)
        })
        .map(|(n, _)| n.clone())
        .collect()
}

/// Why the old primary may still accept writes (its lease has not certainly ended, or a peer
/// holds it), if it may.
fn lease_pending(input: &Input<'_>, old: &str) -> Option<String> {
    let holders = holders(input, old);
    if !holders.is_empty() {
        return Some(format!("{} still hold {old} (failsafe): it may accept writes", holders.join(", ")));
    }
    // A process that is gone, or a manager that answers, holds no lease the controller does
    // not know about.
    if !matches!(classify(input, old), InstanceHealth::Unreachable { .. }) {
        return None;
    }
    let wait = crate::lease::replaceable_after(input.spec);
    let unrenewed = input.observed.instances.get(old)?.unrenewed_for;
    (unrenewed < wait).then(|| {
        format!(
            "waiting {:.1}s more for {old}'s lease to end before promoting a replacement",
            (wait - unrenewed).as_secs_f64()
        )
    })
}

/// A failover whose old primary is seen again, still accepting writes, before anything was
/// promoted (a cut that healed): it was never replaced, so it stays primary; fencing it now
/// would be an outage for nothing. True when the failover was cancelled.
fn cancel_if_old_primary_serves(input: &Input<'_>, plan: &mut Plan, t: &Transition) -> bool {
    let old = t.from.as_str();
    let nothing_promoted = t.kind == TransitionKind::Failover
        && matches!(t.step, TransitionStep::Fencing | TransitionStep::Detaching);
    let writable: Vec<&String> = input
        .observed
        .instances
        .iter()
        .filter(|(_, o)| o.report.as_ref().is_some_and(|r| r.is_writable_primary()))
        .map(|(n, _)| n)
        .collect();
    if !nothing_promoted || writable != [old] {
        return false;
    }
    plan.event(Event::normal(
        "FailoverCancelled",
        format!("{old} answers again and still accepts writes; nothing was promoted, so it stays primary"),
    ));
    plan.status.transition = None;
    plan.status.target_primary = Some(old.to_string());
    reconcile(input, plan);
    true
}

/// Failover steps 1-3: fence the old primary, detach every reachable standby, choose.
fn fence_and_choose(input: &Input<'_>, plan: &mut Plan, t: &Transition) -> bool {
    let old = t.from.as_str();
    let old_report = report(input, old);
    let someone_else_writable = input
        .observed
        .instances
        .iter()
        .any(|(n, o)| n != old && o.report.as_ref().is_some_and(|r| r.is_writable_primary()));
    if let Some(r) = old_report
        && r.server.running
        && !r
            .operation
            .as_ref()
            .is_some_and(|o| o.kind == OperationKind::Fence && o.state == OperationState::Running)
    {
        plan.send(old, Request::Fence);
    }
    let old_quiet = match classify(input, old) {
        InstanceHealth::Reachable(r) => !r.server.running,
        InstanceHealth::Unreachable { server_answers } | InstanceHealth::Dead { server_answers } => {
            !server_answers
        }
        InstanceHealth::Missing => true,
    };
    let mut all_detached = true;
    // With the old primary's server known to be down, nobody can receive from it: an instance
    // busy with an operation (a rejoin from a primary that was lost in the middle of it) need
    // not be waited for, and is repointed once it is done.
    let old_down = server_known_down(input, old);
    // Instances a scale-down has yet to remove count too: one still streaming from the old
    // primary could acknowledge its commits if it came back.
    for name in members(input).into_iter().chain(extras(input)).filter(|n| n != old) {
        let Some(r) = report(input, &name) else {
            continue;
        };
        if old_down && operation_running(r) {
            continue;
        }
        // Stopped standbys are detached too: their manager restarts them, and they must not
        // come back streaming from the old primary.
        if !r.initialized || !r.standby_configured {
            continue;
        }
        let desired = desired_config(input, &name, DesiredRole::Standby(None));
        start_stopped_standby(input, plan, &name, r);
        if !detached(r) {
            all_detached = false;
            if !operation_running(r) {
                plan.send(&name, Request::Configure { config: desired });
            }
        }
    }
    if t.step == TransitionStep::Fencing {
        set_step(plan, TransitionStep::Detaching, None);
    }
    // Someone else accepting writes (a target of an earlier attempt that finished its
    // promotion late) is fenced first; choosing now could make two primaries.
    if !old_quiet || !all_detached || someone_else_writable {
        return false;
    }
    if let Some(why) = cloning_from_old(input, old).or_else(|| lease_pending(input, old)) {
        plan.set_phase(Phase::FailingOver, why);
        return false;
    }
    match choose(input, t) {
        Ok(candidate) => {
            plan.event(Event::normal(
                "FailoverTarget",
                format!(
                    "promoting {candidate}: the most advanced standby, holding every acknowledged commit"
                ),
            ));
            record_promotion_floor(input, plan, t, &candidate);
            set_step(plan, TransitionStep::Promoting, Some(candidate));
            true
        }
        Err(why) if input.spec.failover.data_durability == DataDurability::Preferred => {
            match best_candidate(input, t) {
                Some(candidate) => {
                    plan.event(Event::warning(
                        "FailoverWithPossibleLoss",
                        format!("{why}; dataDurability is preferred, so promoting {candidate} anyway"),
                    ));
                    record_promotion_floor(input, plan, t, &candidate);
                    set_step(plan, TransitionStep::Promoting, Some(candidate));
                    true
                }
                None => blocked_or_abort(input, plan, t, why),
            }
        }
        Err(why) => blocked_or_abort(input, plan, t, why),
    }
}

/// A standby left stopped (fenced once and unfenced since, a cluster restart) can be chosen or
/// promoted only once it runs: start it, detached. True when it was asked to.
fn start_stopped_standby(input: &Input<'_>, plan: &mut Plan, name: &str, r: &InstanceReport) -> bool {
    let idle = matches!(r.phase, ManagerPhase::AwaitingRole | ManagerPhase::Stopped) && !operation_running(r);
    if r.server.running || !r.standby_configured || !idle || input.spec.is_fenced(name) {
        return false;
    }
    plan.send(name, Request::Start { config: desired_config(input, name, DesiredRole::Standby(None)) });
    true
}

/// No standby can take over. If the old primary is reachable with its data, give it back its
/// role (its data is the most complete there is); otherwise wait and say why.
fn blocked_or_abort(input: &Input<'_>, plan: &mut Plan, t: &Transition, why: String) -> bool {
    let old_back = report(input, &t.from).is_some_and(|r| r.initialized && !r.standby_configured);
    if old_back {
        plan.event(Event::warning(
            "FailoverAborted",
            format!("{why}; {} is reachable with its data, so it stays primary", t.from),
        ));
        plan.status.transition = None;
        plan.status.target_primary = Some(t.from.clone());
        reconcile(input, plan);
        return false;
    }
    plan.set_phase(Phase::FailoverBlocked, format!("cannot fail over from {}: {why}", t.from));
    false
}

/// Remembers where the new primary starts: its position at promotion bounds every commit
/// acknowledged so far.
fn record_promotion_floor(input: &Input<'_>, plan: &mut Plan, t: &Transition, candidate: &str) {
    let position = candidates(input, t).into_iter().find(|(n, _, _)| n == candidate).map(|(_, _, (p, _))| p);
    if let Some(p) = position {
        plan.status.last_promotion_lsn = Some(p.to_string());
    }
}

/// Switchover step 1: stop the old primary cleanly, then wait for the target to have received
/// everything it wrote, including its shutdown checkpoint.
fn demote_for_switchover(input: &Input<'_>, plan: &mut Plan, t: &Transition) -> bool {
    let old = t.from.as_str();
    let target = t.to.clone().unwrap_or_default();
    if t.step == TransitionStep::Fencing {
        set_step(plan, TransitionStep::Detaching, None);
    }
    let Some(r) = report(input, old) else {
        // The old primary vanished mid-switchover: that is a failover now.
        if primary_loss(input, plan, old).is_some() {
            convert_to_failover(plan, t, format!("{old} was lost during the switchover"));
            return true;
        }
        return false;
    };
    if r.server.running {
        if !operation_running(r) {
            plan.send(old, Request::Fence);
        }
        return false;
    }
    let Some(control) = r.control.as_ref() else {
        return false;
    };
    if !control.clean_shutdown {
        convert_to_failover(plan, t, format!("{old} did not stop cleanly"));
        return true;
    }
    let Some(final_lsn) = control.checkpoint_lsn else {
        return false;
    };
    let caught_up = report(input, &target).and_then(live_position).is_some_and(|(pos, _)| pos > final_lsn);
    if caught_up {
        plan.status.last_promotion_lsn = Some(final_lsn.to_string());
        set_step(plan, TransitionStep::Promoting, Some(target));
        return true;
    }
    if input.now.duration_since(t.started_at.0) > SWITCHOVER_CATCH_UP {
        plan.event(Event::warning(
            "SwitchoverFailed",
            format!(
                "{target} did not receive {old}'s last WAL within {}s; {old} stays primary",
                SWITCHOVER_CATCH_UP.as_secs()
            ),
        ));
        plan.status.transition = None;
        plan.status.target_primary = Some(old.to_string());
        reconcile(input, plan);
    }
    false
}

fn convert_to_failover(plan: &mut Plan, t: &Transition, why: String) {
    plan.event(Event::warning("FailingOver", format!("{why}; failing over instead")));
    plan.status.target_primary = None;
    plan.status.transition = Some(Transition {
        kind: TransitionKind::Failover,
        to: None,
        step: TransitionStep::Fencing,
        reason: why,
        ..t.clone()
    });
}

/// Promote the chosen standby and wait until it accepts writes.
fn promote(input: &Input<'_>, plan: &mut Plan, t: &Transition) -> bool {
    let Some(target) = t.to.clone() else {
        set_step(plan, TransitionStep::Fencing, None);
        return true;
    };
    match classify(input, &target) {
        InstanceHealth::Reachable(r) if r.is_writable_primary() => {
            let took = input.now.duration_since(t.started_at.0);
            plan.status.current_primary = Some(target.clone());
            plan.status.target_primary = Some(target.clone());
            plan.event(Event::normal(
                "Promoted",
                format!(
                    "{target} is the primary ({:?} from {}, {:.1}s after it started)",
                    t.kind,
                    t.from,
                    took.as_secs_f64()
                ),
            ));
            set_step(plan, TransitionStep::Repointing, None);
            true
        }
        // It may have promoted just before it was lost: wait for it to come back rather than
        // risk a second primary. Only an instance gone for good, or without data, is replaced.
        InstanceHealth::Reachable(r) if !r.initialized => {
            retarget(plan, t, &format!("{target} was lost before its promotion completed"))
        }
        InstanceHealth::Reachable(r) => {
            if operation_running(r) {
                return false;
            }
            if start_stopped_standby(input, plan, &target, r) {
                // Stopped since it was chosen: promoted once it runs.
                return false;
            }
            if input.spec.is_fenced(&target) && !r.standby_configured {
                // Its promotion completed (it may have acknowledged commits) before the fence
                // came: it is the primary now, fenced, so no writes until it is unfenced.
                // Choosing again would drop what it acknowledged.
                plan.status.current_primary = Some(target.clone());
                plan.status.target_primary = Some(target.clone());
                plan.event(Event::warning(
                    "Promoted",
                    format!("{target} is the primary, promoted before it was fenced in the spec: no writes until it is unfenced"),
                ));
                set_step(plan, TransitionStep::Repointing, None);
                return true;
            }
            if input.spec.is_fenced(&target) {
                // Fenced before it accepted writes: stop it first (a promotion it may still
                // have queued cannot then make a second primary), then choose again.
                if r.server.running {
                    plan.send(&target, Request::Fence);
                    return false;
                }
                return retarget(plan, t, &format!("{target} was fenced in the spec before its promotion"));
            }
            let desired = desired_config(input, &target, DesiredRole::Primary);
            if r.is_running_standby() {
                plan.send(&target, Request::Promote { config: desired });
            } else if !r.standby_configured && !r.server.running {
                // It promoted, then its server stopped: start it again as the primary.
                plan.send(&target, Request::Start { config: desired });
            }
            false
        }
        InstanceHealth::Missing => {
            retarget(plan, t, &format!("{target} was lost before its promotion completed"))
        }
        InstanceHealth::Dead { .. } | InstanceHealth::Unreachable { .. } => false,
    }
}

/// The chosen standby is gone for good (or fenced and stopped) before it accepted writes:
/// choose again. It cannot have acknowledged a commit meanwhile, since every other standby is
/// detached.
fn retarget(plan: &mut Plan, t: &Transition, why: &str) -> bool {
    plan.event(Event::warning("FailoverTargetLost", format!("{why}; choosing again")));
    plan.status.target_primary = None;
    if let Some(tr) = plan.status.transition.as_mut() {
        tr.kind = TransitionKind::Failover;
        tr.to = None;
        tr.step = TransitionStep::Fencing;
        tr.reason = format!("{}; then {why}", t.reason);
    }
    true
}

/// Point every other standby at the new primary; done when all reachable ones follow it.
fn repoint(input: &Input<'_>, plan: &mut Plan, t: &Transition) -> bool {
    let Some(primary) = t.to.clone() else {
        return false;
    };
    let Some(primary_ep) = endpoint(input, &primary).cloned() else {
        return false;
    };
    let mut pending = Vec::new();
    for name in members(input).into_iter().chain(extras(input)).filter(|n| *n != primary && *n != t.from) {
        let Some(r) = report(input, &name) else {
            continue;
        };
        if !r.initialized || !r.standby_configured {
            continue;
        }
        // Busy (a rejoin that cannot finish while its source is gone): the steady state
        // points it at the new primary once its operation ends.
        if operation_running(r) && !r.server.accepting {
            continue;
        }
        let desired = desired_config(input, &name, DesiredRole::Standby(Some(primary_ep.clone())));
        if r.config.as_ref().and_then(|c| c.upstream.as_ref()) != Some(&primary_ep) {
            pending.push(name.clone());
            if !operation_running(r) {
                plan.send(&name, Request::Configure { config: desired });
            }
        }
    }
    if !pending.is_empty() {
        return false;
    }
    let took = input.now.duration_since(t.started_at.0);
    let what = match t.kind {
        TransitionKind::Failover => "FailoverCompleted",
        TransitionKind::Switchover => "SwitchoverCompleted",
    };
    plan.event(Event::normal(
        what,
        format!("{primary} replaced {} as primary in {:.1}s; standbys follow it", t.from, took.as_secs_f64()),
    ));
    plan.status.last_transition = Some(Transition { completed_at: Some(Time(input.now)), ..t.clone() });
    plan.status.transition = None;
    reconcile(input, plan);
    false
}
