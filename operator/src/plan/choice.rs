//! Which standby a failover may promote: the candidates, their positions, and the checks
//! that no acknowledged commit is left behind.

use std::cmp::Reverse;

use opengauss_crd::{DataDurability, SyncMethod, SynchronousStatus, Transition};

use super::Input;
use super::health::{InstanceHealth, classify, extras, members, report};
use crate::engine::Lsn;
use crate::instance::report::{InstanceReport, OperationKind, OperationState};

/// The WAL position a running server reports. A server that is down may hold more WAL than its
/// control file shows, so its position counts as unknown.
pub(super) fn live_position(r: &InstanceReport) -> Option<(Lsn, Lsn)> {
    if !r.server.accepting {
        return None;
    }
    let node = r.node.as_ref()?;
    let received = [node.received_lsn, node.replayed_lsn, r.receiver.as_ref().and_then(|x| x.flushed_lsn)]
        .into_iter()
        .flatten()
        .max()?;
    Some((received, node.replayed_lsn.unwrap_or_default()))
}

/// The furthest WAL position a standby is known to hold: what its running server received, or,
/// fenced, the position recorded when it was detached (final: it received nothing since).
pub(super) fn known_position(r: &InstanceReport) -> Option<Lsn> {
    live_position(r).map(|(received, _)| received).or(r.fenced_lsn)
}

pub(super) fn detached(r: &InstanceReport) -> bool {
    r.config.as_ref().is_some_and(|c| c.upstream.is_none())
        && r.receiver.as_ref().is_none_or(|rc| rc.status != "streaming")
}

/// An instance copying from the old primary (a rejoin, a clone) starts streaming from it once
/// done: if the old primary was only frozen, it would confirm its commits again after a
/// promotion. The choice waits for that copy to end (it fails at once when the old primary is
/// down), after which the instance is detached like the others.
/// Whether `name`'s database server is known to be down: its manager says so, or the
/// instance is gone. Unreachable or dead-manager instances may still have a server running.
pub(super) fn server_known_down(input: &Input<'_>, name: &str) -> bool {
    match classify(input, name) {
        InstanceHealth::Reachable(r) => !r.server.running,
        InstanceHealth::Missing => true,
        InstanceHealth::Dead { .. } | InstanceHealth::Unreachable { .. } => false,
    }
}

pub(super) fn cloning_from_old(input: &Input<'_>, old: &str) -> Option<String> {
    if server_known_down(input, old) {
        return None;
    }
    let copying: Vec<String> = input
        .observed
        .instances
        .iter()
        .filter(|(n, _)| n.as_str() != old)
        .filter(|(_, o)| {
            o.report.as_ref().and_then(|r| r.operation.as_ref()).is_some_and(|op| {
                op.state == OperationState::Running
                    && matches!(
                        op.kind,
                        OperationKind::Rejoin | OperationKind::Rebuild | OperationKind::Bootstrap
                    )
            })
        })
        .map(|(n, _)| n.clone())
        .collect();
    (!copying.is_empty()).then(|| {
        format!(
            "waiting for {} to finish copying from {old} before choosing: it would follow {old} afterwards",
            copying.join(", ")
        )
    })
}

pub(super) fn candidates<'a>(
    input: &Input<'a>,
    t: &Transition,
) -> Vec<(String, &'a InstanceReport, (Lsn, Lsn))> {
    // An instance awaiting removal may hold commits no member has yet (its removal waits for
    // them): it may be promoted, and hands over to a member afterwards.
    let mut list: Vec<_> = members(input)
        .into_iter()
        .chain(extras(input))
        .filter(|n| *n != t.from)
        .filter_map(|n| {
            let r = report(input, &n)?;
            if !r.is_running_standby() || r.fenced || input.spec.is_fenced(&n) || !detached(r) {
                return None;
            }
            let pos = live_position(r)?;
            Some((n, r, pos))
        })
        .collect();
    // Highest received position, then highest replayed, then name.
    list.sort_by_key(|(n, _, (received, replayed))| (Reverse(*received), Reverse(*replayed), n.clone()));
    list
}

pub(super) fn best_candidate(input: &Input<'_>, t: &Transition) -> Option<String> {
    candidates(input, t).into_iter().next().map(|(n, _, _)| n)
}

/// The standby to promote, or why none may be.
pub(super) fn choose(input: &Input<'_>, t: &Transition) -> Result<String, String> {
    let list = candidates(input, t);
    let Some((best, _, (best_pos, _))) = list.first().cloned() else {
        let fenced: Vec<String> = members(input).into_iter().filter(|m| input.spec.is_fenced(m)).collect();
        return Err(if fenced.is_empty() {
            "no standby is running, reachable and detached".into()
        } else {
            format!("no standby can take over: {} fenced, no other running and reachable", fenced.join(", "))
        });
    };
    let sync =
        t.synchronous.as_ref().filter(|s| s.method != SyncMethod::Off.as_str() && !s.standbys.is_empty());
    if sync.is_none()
        && input.spec.failover.data_durability == DataDurability::Required
        && input.spec.replication.synchronous.method != SyncMethod::Off
    {
        // Only a primary alone (a cluster scaled to one instance) acknowledges without a
        // standby: what it acknowledged may exist nowhere else.
        return Err(format!(
            "{} acknowledged commits without a synchronous standby (the cluster ran as one instance); \
             no standby is known to hold them",
            t.from
        ));
    }
    if let Some(sync) = sync {
        durable_choice(input, sync, &t.from, best_pos)?;
        let floor = input.status.last_promotion_lsn.as_deref().and_then(|l| l.parse::<Lsn>().ok());
        if let Some(floor) = floor
            && best_pos < floor
        {
            return Err(format!(
                "no reachable standby has received {floor}, where the current primary took over: \
                 commits acknowledged before then may exist only on {}",
                t.from
            ));
        }
    }
    Ok(best)
}

/// Every acknowledged commit is on at least `number` members of the synchronous set. The
/// candidate holds them all when fewer than `number` members are out of sight and it is at
/// least as far as every member in sight.
fn durable_choice(input: &Input<'_>, sync: &SynchronousStatus, old: &str, best: Lsn) -> Result<(), String> {
    let mut unknown = Vec::new();
    let mut furthest: Option<(Lsn, &str)> = None;
    let position = |name: &str| report(input, name).and_then(known_position);
    // An instance awaiting removal left the set but may still hold what it confirmed in it.
    let leaving: Vec<String> =
        extras(input).into_iter().filter(|n| n != old && !sync.standbys.contains(n)).collect();
    for name in sync.standbys.iter().chain(&leaving) {
        match position(name) {
            Some(pos) if furthest.is_none_or(|(f, _)| pos > f) => furthest = Some((pos, name)),
            Some(_) => {}
            // Out of sight, it may hold an acknowledged commit; a leaving instance that reports
            // no data holds none.
            None if !leaving.contains(name) || report(input, name).is_none_or(|r| r.initialized) => {
                unknown.push(name.clone())
            }
            None => {}
        }
    }
    if unknown.len() as u32 >= sync.number.max(1) {
        return Err(format!(
            "{} of the synchronous standbys ({}) cannot report their position, and an acknowledged commit may exist only there",
            unknown.join(", "),
            sync.standbys.join(", ")
        ));
    }
    if let Some((pos, name)) = furthest
        && pos > best
    {
        return Err(format!("{name} holds WAL up to {pos} that no promotable standby has"));
    }
    Ok(())
}
