//! Bootstrap and the steady state: create the first primary, clone standbys from it, keep
//! every instance in its role with the right configuration, and bring back instances that
//! return with a primary's data as standbys.

use k8s_openapi::jiff::SignedDuration;
use opengauss_crd::{DataDurability, Phase};

use super::choice::known_position;
use super::config::{DesiredRole, desired_config, same_sync};
use super::health::{
    InstanceHealth, classify, endpoint, extras, members, operation_failure, operation_running, report,
};
use super::{Action, Event, Input, Plan, PlatformState};
use crate::engine::timeline::History;
use crate::engine::{SyncConfig, wal};
use crate::instance::report::{InstanceReport, ManagerPhase, Request};

/// Platform-level upkeep that applies in every phase: create what is missing, restart what
/// died. Neither touches a database, so both are safe during a failover.
pub fn upkeep(input: &Input<'_>, plan: &mut Plan) {
    for name in extras(input) {
        if input.observed.instances.get(&name).map(|o| o.platform) == Some(PlatformState::Dead) {
            plan.act(Action::Restart { instance: name });
        }
    }
    for name in members(input) {
        match input.observed.instances.get(&name).map(|o| o.platform) {
            None | Some(PlatformState::Missing) => plan.act(Action::Create { instance: name }),
            Some(PlatformState::Dead) => plan.act(Action::Restart { instance: name }),
            Some(PlatformState::Running) => {}
        }
    }
}

/// Fences any instance other than `keep` that accepts writes: two writable primaries must
/// never coexist for longer than one probe.
pub fn fence_stray_primaries(input: &Input<'_>, plan: &mut Plan, keep: Option<&str>) {
    for (name, o) in &input.observed.instances {
        if Some(name.as_str()) == keep {
            continue;
        }
        if let Some(r) = &o.report
            && r.is_writable_primary()
            && !operation_running(r)
        {
            plan.event(Event::warning(
                "FencingStrayPrimary",
                format!("{name} accepts writes but is not the primary; stopping it"),
            ));
            plan.send(name, Request::Fence);
        }
    }
}

/// Creates the first primary, or adopts existing data when the status was lost.
pub fn bootstrap(input: &Input<'_>, plan: &mut Plan) {
    upkeep(input, plan);
    // No bootstrap target recorded yet: a status that was lost, or a first pass. Data on any
    // instance means the cluster exists and must be resumed.
    if plan.status.target_primary.is_none() && adopt_existing_data(input, plan) {
        return;
    }
    let members = members(input);
    let target = plan
        .status
        .target_primary
        .clone()
        .filter(|t| members.contains(t))
        .unwrap_or_else(|| members[0].clone());
    plan.status.target_primary = Some(target.clone());
    let Some(r) = report(input, &target) else {
        plan.set_phase(Phase::Initializing, format!("waiting for {target}'s instance manager"));
        return;
    };
    // Complete once its bootstrap finished (the replication role exists); if it stopped since,
    // the steady state starts it again.
    if r.initialized && !r.standby_configured {
        plan.status.initialized = true;
        plan.status.current_primary = Some(target.clone());
        plan.event(Event::normal("PrimaryInitialized", format!("{target} initialised and accepts writes")));
        reconcile(input, plan);
        return;
    }
    if let Some(failure) = operation_failure(r) {
        plan.set_phase(Phase::Initializing, format!("initialising {target} failed (will retry): {failure}"));
    }
    if r.phase == ManagerPhase::AwaitingBootstrap && !operation_running(r) {
        let config = desired_config(input, &target, DesiredRole::Primary);
        plan.send(&target, Request::Bootstrap { source: None, config });
    }
}

/// When the status says nothing was ever initialised but instances hold data (the status was
/// lost or deleted), the cluster is resumed from that data rather than initialised again.
fn adopt_existing_data(input: &Input<'_>, plan: &mut Plan) -> bool {
    let with_data: Vec<(&String, &InstanceReport)> = input
        .observed
        .instances
        .iter()
        .filter_map(|(n, o)| o.report.as_ref().filter(|r| r.initialized).map(|r| (n, r)))
        .collect();
    if with_data.is_empty() {
        return false;
    }
    // Prefer a running primary, then a primary's data, then the most advanced position.
    let best = with_data
        .iter()
        .max_by_key(|(n, r)| {
            let tl = r.node.as_ref().and_then(|x| x.timeline).or(r.control.as_ref().and_then(|c| c.timeline));
            (
                r.is_writable_primary(),
                !r.standby_configured,
                tl,
                r.wal_position(),
                std::cmp::Reverse((*n).clone()),
            )
        })
        .map(|(n, _)| (*n).clone())
        .expect("not empty");
    plan.status.initialized = true;
    plan.status.current_primary = Some(best.clone());
    plan.status.target_primary = Some(best.clone());
    plan.event(Event::warning(
        "ResumedExistingData",
        format!("the status recorded no initialised cluster but instances hold data; resuming with {best} as primary"),
    ));
    true
}

/// Keeps the cluster in shape around a healthy (or returning) primary.
pub fn reconcile(input: &Input<'_>, plan: &mut Plan) {
    upkeep(input, plan);
    let Some(primary) = plan.status.current_primary.clone() else {
        return;
    };
    plan.status.target_primary = Some(primary.clone());
    fence_stray_primaries(input, plan, Some(&primary));
    fence_per_spec(input, plan);
    let primary_ready = match classify(input, &primary) {
        InstanceHealth::Reachable(r) => reconcile_primary(input, plan, &primary, r),
        _ => false,
    };
    if !primary_ready {
        return;
    }
    let Some(primary_ep) = endpoint(input, &primary).cloned() else {
        return;
    };
    remove_extras(input, plan, &primary);
    rolling_renewal(input, plan, &primary);
    for name in members(input).into_iter().filter(|n| *n != primary) {
        let Some(r) = report(input, &name) else {
            continue;
        };
        if operation_running(r) || input.spec.is_fenced(&name) {
            continue;
        }
        let desired = desired_config(input, &name, DesiredRole::Standby(Some(primary_ep.clone())));
        if !r.initialized {
            if r.phase == ManagerPhase::AwaitingBootstrap {
                plan.send(&name, Request::Bootstrap { source: Some(primary_ep.clone()), config: desired });
            }
        } else if !r.standby_configured {
            // A primary's data on an instance that is not the primary: an old primary back.
            plan.event(Event::normal(
                "Rejoining",
                format!("{name} held a primary's data; rejoining it as a standby of {primary}"),
            ));
            plan.send(&name, Request::Rejoin { source: primary_ep.clone(), config: desired });
        } else if r.server.running {
            if let Some(why) = stalled(input, plan, &primary, &name, r, &primary_ep) {
                plan.event(Event::warning("RebuildingStandby", format!("{why}; cloning it again")));
                plan.send(&name, Request::Rebuild { source: primary_ep.clone(), config: desired });
            } else if r.config.as_ref() != Some(&desired) {
                plan.send(&name, Request::Configure { config: desired });
            }
        } else if matches!(r.phase, ManagerPhase::AwaitingRole | ManagerPhase::Stopped) {
            plan.send(&name, Request::Start { config: desired });
        }
    }
}

/// Stops every instance the spec fences (a standby is detached first, so its final WAL
/// position is known to a later failover).
fn fence_per_spec(input: &Input<'_>, plan: &mut Plan) {
    for name in &input.spec.fenced_instances {
        let Some(r) = report(input, name) else { continue };
        if !operation_running(r) && (r.server.running || !r.fenced) {
            plan.event(Event::normal(
                "Fencing",
                format!("{name} is fenced in the spec: stopping its server"),
            ));
            plan.send(name, Request::Fence);
        }
    }
}

/// Scale-down: the highest ordinal first, once the primary no longer waits for it. A primary
/// beyond the new size hands over first.
fn remove_extras(input: &Input<'_>, plan: &mut Plan, primary: &str) {
    let extras = extras(input);
    if extras.iter().any(|x| x == primary) {
        plan.switchover_wanted =
            Some(format!("the scale-down to {} instance(s) removes the primary", input.spec.instances));
        return;
    }
    let Some(victim) = extras.into_iter().next() else { return };
    let Some(primary_report) = report(input, primary) else { return };
    let applied_sync = primary_report.config.as_ref().and_then(|c| c.synchronous.as_ref());
    if applied_sync.is_some_and(|s| s.standbys.contains(&victim)) {
        plan.set_phase(
            Phase::Degraded,
            format!("removing {victim}: first dropping it from the synchronous standbys"),
        );
        return;
    }
    if input.spec.failover.data_durability == DataDurability::Required
        && let Some(sync) = applied_sync
        && let Some(why) = removal_exposes_commits(input, primary_report, sync, &victim)
    {
        plan.set_phase(Phase::Degraded, format!("removing {victim}: waiting until {why}"));
        return;
    }
    plan.event(Event::normal(
        "RemovingInstance",
        format!("{victim} is beyond spec.instances = {}: removing it and its data", input.spec.instances),
    ));
    plan.act(Action::Delete { instance: victim });
}

/// Commits `victim` acknowledged while it was synchronous must be on `number` members of the
/// set the primary applies without it before its data goes: a failover's durability check
/// trusts that set alone. Returns what is still missing, if anything.
fn removal_exposes_commits(
    input: &Input<'_>,
    primary: &InstanceReport,
    sync: &SyncConfig,
    victim: &str,
) -> Option<String> {
    let row = |name: &str| primary.replication.iter().find(|row| row.instance == name);
    // What the victim may have acknowledged: its feedback to the primary while it still
    // streams, else what it reports (its final position once fenced); unknown means
    // everything the primary has written.
    let from_victim = report(input, victim).and_then(known_position);
    let held = [row(victim).and_then(|r| r.flush_lsn), from_victim]
        .into_iter()
        .flatten()
        .max()
        .or_else(|| primary.wal_position())?;
    let holding = sync
        .standbys
        .iter()
        .filter(|m| row(m).is_some_and(|r| r.state == "streaming" && r.flush_lsn.is_some_and(|f| f >= held)))
        .count() as u32;
    (holding < sync.number.max(1)).then(|| {
        format!(
            "{} of the synchronous standbys ({}) hold WAL up to {held}, which {victim} may have acknowledged",
            sync.number.max(1),
            sync.standbys.join(", ")
        )
    })
}

/// What an instance needs before it runs the cluster's current definition.
#[derive(Debug, PartialEq, Eq)]
enum Renewal {
    /// It was made from an older definition (its pod's image or resources, or the operator
    /// changed): replace it, keeping its data.
    Recreate,
    /// Parameters changed that only a restart applies (their names).
    Restart(String),
}

/// The renewal `name` needs, if any, as `role`. Only a running instance is renewed; one that
/// is dead or missing is brought back by the upkeep, from the current definition.
fn renewal(input: &Input<'_>, name: &str, role: DesiredRole) -> Option<Renewal> {
    let observed = input.observed.instances.get(name)?;
    if observed.platform != PlatformState::Running {
        return None;
    }
    if observed.outdated {
        return Some(Renewal::Recreate);
    }
    let r = observed.report.as_ref()?;
    let applied = r.config.as_ref() == Some(&desired_config(input, name, role));
    (applied && !r.pending_restart.is_empty() && !operation_running(r))
        .then(|| Renewal::Restart(r.pending_restart.join(", ")))
}

/// Brings every instance to the cluster's current definition, one at a time and only while
/// every other member is settled: standbys first (restarted for new parameters, recreated for
/// a new pod definition), the primary last, through a switchover (its rejoin restarts it; a
/// recreate follows once it is a standby).
fn rolling_renewal(input: &Input<'_>, plan: &mut Plan, primary: &str) {
    let members = members(input);
    let settled = |m: &String| {
        report(input, m).is_some_and(|r| !operation_running(r))
            && (*m == primary
                || input.spec.is_fenced(m)
                || plan.status.instance(m).is_some_and(|row| row.ready))
    };
    let others_settled = |me: &str| members.iter().filter(|m| *m != me).all(settled);
    let primary_ep = endpoint(input, primary).cloned();
    for name in members.iter().filter(|m| *m != primary && !input.spec.is_fenced(m)) {
        let Some(renew) = renewal(input, name, DesiredRole::Standby(primary_ep.clone())) else {
            continue;
        };
        // One at a time: a renewal in progress elsewhere (or anything unsettled) waits. A
        // standby stuck because of its old definition is renewed without settling first.
        if !others_settled(name) {
            return;
        }
        match renew {
            Renewal::Recreate => {
                plan.event(Event::normal(
                    "RecreatingInstance",
                    format!("recreating {name} from the cluster's current definition"),
                ));
                plan.act(Action::Recreate { instance: name.clone() });
            }
            Renewal::Restart(params) => {
                plan.event(Event::normal(
                    "RestartingStandby",
                    format!("restarting {name} to apply {params}"),
                ));
                let config = desired_config(input, name, DesiredRole::Standby(primary_ep.clone()));
                plan.send(name, Request::Restart { config });
            }
        }
        return;
    }
    let Some(renew) = renewal(input, primary, DesiredRole::Primary) else { return };
    if !members.iter().all(settled) {
        return;
    }
    let why = match &renew {
        Renewal::Recreate => format!("{primary} runs an older definition of its instance"),
        Renewal::Restart(params) => format!("{primary} must restart to apply {params}"),
    };
    if input.spec.instances > 1 {
        plan.switchover_wanted = Some(why);
        return;
    }
    // Alone, it can only be renewed in place: a short outage.
    match renew {
        Renewal::Recreate => {
            plan.event(Event::normal("RecreatingInstance", format!("{why}: recreating it")));
            plan.act(Action::Recreate { instance: primary.to_string() });
        }
        Renewal::Restart(params) => {
            plan.event(Event::normal("RestartingPrimary", format!("restarting {primary} to apply {params}")));
            plan.send(
                primary,
                Request::Restart { config: desired_config(input, primary, DesiredRole::Primary) },
            );
        }
    }
}

/// A standby that follows the primary but has not streamed for this long cannot catch up on
/// its own (its WAL diverged, or the primary no longer keeps what it needs): it is cloned
/// again.
pub const STALLED_STANDBY: SignedDuration = SignedDuration::from_secs(60);

/// A standby that needs WAL older than anything the primary still holds is cloned again once
/// it has not streamed for this long (a few of its reconnection attempts): waiting longer
/// cannot help it.
pub const WAL_GONE_STANDBY: SignedDuration = SignedDuration::from_secs(5);

/// Why a standby that follows the primary cannot stream from it, if it cannot.
fn stalled(
    input: &Input<'_>,
    plan: &Plan,
    primary: &str,
    name: &str,
    r: &InstanceReport,
    primary_ep: &crate::engine::Endpoint,
) -> Option<String> {
    let follows = r.config.as_ref().and_then(|c| c.upstream.as_ref()) == Some(primary_ep);
    let primary_report = report(input, primary);
    let streaming = primary_report
        .is_some_and(|p| p.replication.iter().any(|row| row.instance == name && row.state == "streaming"));
    if !r.is_running_standby() || !follows || streaming {
        return None;
    }
    let since = plan.status.instance(name).and_then(|row| row.not_streaming_since.as_ref()).map(|t| t.0)?;
    let silent_for = input.now.duration_since(since.max(input.watching_since));
    // Even the furthest position it holds lies in a segment older than the primary's oldest.
    let needs = r.wal_position().map(wal::segment_start_of);
    let oldest = primary_report.and_then(|p| p.oldest_wal);
    if let (Some(needs), Some(oldest)) = (needs, oldest)
        && needs < oldest
        && silent_for >= WAL_GONE_STANDBY
    {
        return Some(format!(
            "{name} needs WAL from {needs} that {primary} no longer holds (its oldest segment starts at {oldest})"
        ));
    }
    // It replayed past where the primary's history left its timeline: it diverged (it followed
    // a primary that kept acknowledging after it was replaced, asynchronously or with
    // `preferred`) and can never stream again as it is. The primary's own history says where
    // (PostgreSQL); the floor below stands in where the engine does not give it.
    let timeline = |r: &InstanceReport| r.node.as_ref().and_then(|n| n.timeline);
    if let (Some(p), Some(mine), Some(replayed)) = (
        primary_report.and_then(|p| p.node.as_ref()),
        timeline(r),
        r.node.as_ref().and_then(|n| n.replayed_lsn),
    ) && let Some(theirs) = p.timeline
        && !p.timeline_switches.is_empty()
        && silent_for >= WAL_GONE_STANDBY
    {
        let history = History { timeline: theirs, switches: p.timeline_switches.clone() };
        if let Some(why) = history.missing(mine, replayed) {
            return Some(format!(
                "{name} replayed up to {replayed} on timeline {mine}, which is not in {primary}'s history ({why}): it diverged"
            ));
        }
    }
    let floor = plan.status.last_promotion_lsn.as_deref().and_then(|l| l.parse::<crate::engine::Lsn>().ok());
    if let (Some(mine), Some(theirs), Some(pos), Some(floor)) =
        (timeline(r), primary_report.and_then(timeline), r.wal_position(), floor)
        && mine < theirs
        && pos > floor
        && silent_for >= WAL_GONE_STANDBY
    {
        return Some(format!(
            "{name} holds WAL up to {pos} on timeline {mine}, past {floor} where {primary} took over on timeline {theirs}: it diverged"
        ));
    }
    (silent_for >= STALLED_STANDBY).then(|| {
        format!(
            "{name} has not streamed from {primary} for {}s although it follows it",
            STALLED_STANDBY.as_secs()
        )
    })
}

fn sync_status(c: &SyncConfig) -> opengauss_crd::SynchronousStatus {
    opengauss_crd::SynchronousStatus {
        method: c.method.as_str().to_string(),
        number: c.number,
        standbys: c.standbys.clone(),
        widened_until: None,
    }
}

/// Both sets together: a commit acknowledged under either is on at least the smaller number
/// of their members.
fn union(
    a: opengauss_crd::SynchronousStatus,
    b: opengauss_crd::SynchronousStatus,
) -> opengauss_crd::SynchronousStatus {
    let mut standbys = a.standbys.clone();
    standbys.extend(b.standbys.iter().filter(|n| !a.standbys.contains(n)).cloned());
    opengauss_crd::SynchronousStatus {
        method: if a.method == b.method { a.method } else { "any".into() },
        number: a.number.min(b.number),
        standbys,
        widened_until: a.widened_until.or(b.widened_until),
    }
}

/// The set a failover may trust from now on, given the one it trusted (`previous`) and the one
/// the primary applies or is about to (`now`): `now` when it covers `previous` (no member
/// dropped, no smaller number); otherwise both together, until `number` members of `now` have
/// received the primary's position at the change, which holds everything acknowledged before.
fn trusted_set(
    previous: Option<opengauss_crd::SynchronousStatus>,
    now: opengauss_crd::SynchronousStatus,
    primary: &InstanceReport,
) -> opengauss_crd::SynchronousStatus {
    let Some(mut previous) = previous else { return now };
    // The primary itself may have been a member under an earlier primary: what it confirmed
    // then is below its promotion floor, which a failover checks on its own.
    previous.standbys.retain(|n| *n != primary.instance);
    let covers = previous.standbys.iter().all(|n| now.standbys.contains(n)) && now.number <= previous.number;
    if covers {
        return now;
    }
    let from = previous
        .widened_until
        .as_deref()
        .and_then(|l| l.parse::<crate::engine::Lsn>().ok())
        .or(primary.node.as_ref().and_then(|n| n.current_lsn));
    let caught_up = from.is_some_and(|from| {
        let holding = primary
            .replication
            .iter()
            .filter(|row| now.standbys.contains(&row.instance) && row.flush_lsn.is_some_and(|f| f >= from))
            .count();
        holding as u32 >= now.number
    });
    if caught_up {
        return now;
    }
    let mut wide = union(opengauss_crd::SynchronousStatus { widened_until: None, ..previous }, now);
    wide.widened_until = from.map(|l| l.to_string());
    wide
}

/// Brings the current primary up and keeps its configuration current; true when it accepts
/// writes.
fn reconcile_primary(input: &Input<'_>, plan: &mut Plan, primary: &str, r: &InstanceReport) -> bool {
    if operation_running(r) {
        return false;
    }
    if input.spec.is_fenced(primary) {
        // Fencing the primary is a user's choice of downtime: it is neither replaced nor
        // started until unfenced.
        plan.set_phase(
            Phase::Degraded,
            format!("the primary {primary} is fenced in the spec: no writes until it is unfenced"),
        );
        return false;
    }
    let desired = desired_config(input, primary, DesiredRole::Primary);
    if r.is_writable_primary() {
        // A set about to be applied counts from now: the primary may apply it and acknowledge
        // under it before the controller sees it again.
        let sending = r.config.as_ref() != Some(&desired);
        let pending = sending.then(|| desired.synchronous.clone()).flatten();
        // About to acknowledge without any standby: from now on a commit may be on the primary
        // alone, so no set can be trusted (with `required`, a failover then waits for it).
        let goes_alone = sending && same_sync(desired.synchronous.as_ref(), None);
        if sending {
            plan.send(primary, Request::Configure { config: desired });
        }
        if goes_alone {
            plan.status.synchronous = None;
        } else if let Some(applied) = r.config.as_ref().and_then(|c| c.synchronous.clone()) {
            // Commits acknowledged before a synchronous set applied (alone, or asynchronous)
            // are only on this primary: a failover must not promote a standby that has not
            // received them, which the promotion floor checks.
            if plan.status.synchronous.is_none()
                && let Some(at) = r.node.as_ref().and_then(|n| n.current_lsn)
            {
                let floor = plan
                    .status
                    .last_promotion_lsn
                    .as_deref()
                    .and_then(|l| l.parse::<crate::engine::Lsn>().ok());
                if floor.is_none_or(|f| f < at) {
                    plan.status.last_promotion_lsn = Some(at.to_string());
                }
            }
            let wanted =
                [Some(&applied), pending.as_ref()].into_iter().flatten().map(sync_status).reduce(union);
            plan.status.synchronous = wanted.map(|now| trusted_set(plan.status.synchronous.take(), now, r));
        } else if r.config.as_ref().is_some_and(|c| same_sync(c.synchronous.as_ref(), None)) {
            plan.status.synchronous = None;
        }
        return true;
    }
    if !r.initialized {
        return false;
    }
    if r.is_running_standby() {
        // The recorded primary runs as a standby (its promotion was interrupted): finish it,
        // unless someone else accepts writes.
        let other_primary = input
            .observed
            .instances
            .iter()
            .any(|(n, o)| n != primary && o.report.as_ref().is_some_and(|x| x.is_writable_primary()));
        if !other_primary {
            plan.send(primary, Request::Promote { config: desired });
        }
        return false;
    }
    if !r.server.running && !r.standby_configured {
        // Cleanly stopped (cluster restart), or fenced by an aborted failover: resume.
        plan.send(primary, Request::Start { config: desired });
    }
    false
}
