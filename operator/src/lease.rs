//! The primary's lease: the rule that keeps two instances from accepting writes at once across
//! any network partition, whatever the durability setting and replication mode.
//!
//! - The controller renews a primary's lease every time it reaches the primary's manager (each
//!   pass reads its status). A primary accepts writes only while its lease runs: it stops its
//!   server `GUARD` before the lease ends, on its own monotonic clock, when it has heard neither
//!   from the controller nor from a full failsafe round for the lease's length.
//! - Failsafe (Patroni's failsafe mode is the model): a primary that has not heard from the
//!   controller for a while asks every peer to hold it. A standby holds the primary it streams
//!   from (an instance without data holds anyone: it cannot be promoted) and, while it holds
//!   it, refuses to be promoted, for one lease length from when it answered. A round in which
//!   every peer answered extends the primary's lease from when the round began. So a primary
//!   cut off from the controller alone keeps serving: nobody can replace it.
//! - The controller replaces an unreachable primary only once it has not heard from it for the
//!   lease plus `MARGIN` (its own clock: it heard last after the manager did), and only through
//!   a standby that holds nobody. Any peer the primary could not reach in a round makes the
//!   round fail, so a primary on the minority side of a split stops before the majority side
//!   can promote.
//!
//! Safety over availability: a primary that can reach neither the controller nor every peer
//! stops accepting writes even when the peers it cannot reach might be down rather than cut
//! off; it resumes once the controller reaches it again (or a failover has replaced it).
//!
//! The one thing a lease cannot cover is a manager that is frozen or gone while its server
//! keeps serving clients the controller cannot see: the controller treats a primary whose
//! database port still answers as alive, and on Kubernetes the manager is the container's PID 1,
//! so its death stops the server.

use std::time::Duration;

use opengauss_crd::OpenGaussClusterSpec;

/// The shortest lease: a few probe intervals, so one slow pass does not end it.
const MIN_LEASE: Duration = Duration::from_secs(3);
/// How long before its lease ends a primary stops its server: time to notice (the lease is
/// checked every `CHECK_INTERVAL`) and to stop.
const GUARD: Duration = Duration::from_secs(1);
/// How long after a primary's lease ended, on the controller's clock, it may be replaced:
/// clock rates and the time between the manager's last contact and the controller's last answer.
pub const MARGIN: Duration = Duration::from_secs(1);
/// How often a primary's manager checks its lease.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// The lease for `spec`: the failover delay, at least `MIN_LEASE`, at least three probe
/// intervals. A single instance has one too: instances a scale-down is removing may still be
/// promoted; alone, it is held by nobody (a round with no peer succeeds) and keeps serving.
pub fn lease_for(spec: &OpenGaussClusterSpec) -> Duration {
    let delay = Duration::from_secs(u64::from(spec.failover.delay_seconds));
    let probes = Duration::from_millis(u64::from(spec.failover.probe_interval_milliseconds) * 3);
    delay.max(MIN_LEASE).max(probes)
}

/// How long without renewal a primary keeps accepting writes.
pub fn writes_for(lease: Duration) -> Duration {
    lease.saturating_sub(GUARD.min(lease / 4))
}

/// How long after its last lease renewal (sent, on the controller's clock) a primary of `spec`
/// may be replaced: the lease, the margin, and the probe time-out (how long a renewal may
/// travel before the controller gives up on it).
pub fn replaceable_after(spec: &OpenGaussClusterSpec) -> Duration {
    lease_for(spec) + MARGIN + Duration::from_millis(u64::from(spec.failover.probe_timeout_milliseconds))
}

/// After how long without the controller a primary starts asking its peers to hold it: later
/// than a pass normally takes (renewals arrive about once a second), so standbys hold a
/// primary only when the controller is really away (a hold delays a switchover's promotion).
pub fn failsafe_after(lease: Duration) -> Duration {
    lease / 3
}

/// How long one failsafe request may take.
pub fn failsafe_timeout(lease: Duration) -> Duration {
    (lease / 4).min(Duration::from_secs(1))
}

/// What a primary's manager should do now, from how long ago it was last renewed by the
/// controller (`since_contact`) and by a full failsafe round (`since_failsafe`, measured from
/// when that round began).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The lease runs; nothing to do.
    Hold,
    /// The lease runs but the controller has been away a while: ask every peer to hold.
    AskPeers,
    /// The lease is about to end: stop accepting writes.
    StopWrites,
}

pub fn verdict(lease: Duration, since_contact: Duration, since_failsafe: Option<Duration>) -> Verdict {
    if lease.is_zero() {
        return Verdict::Hold;
    }
    let renewed = since_failsafe.map_or(since_contact, |f| f.min(since_contact));
    if renewed >= writes_for(lease) {
        Verdict::StopWrites
    } else if since_contact >= failsafe_after(lease) {
        Verdict::AskPeers
    } else {
        Verdict::Hold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> OpenGaussClusterSpec {
        serde_json::from_value(json).expect("a spec")
    }

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn the_lease_follows_the_failover_delay_with_a_floor() {
        assert_eq!(lease_for(&spec(serde_json::json!({}))), S(5));
        assert_eq!(lease_for(&spec(serde_json::json!({"failover": {"delaySeconds": 30}}))), S(30));
        assert_eq!(lease_for(&spec(serde_json::json!({"failover": {"delaySeconds": 1}}))), S(3));
        assert_eq!(lease_for(&spec(serde_json::json!({"instances": 1}))), S(5));
        // Defaults: a 5 s lease, replaceable 1 s plus the 800 ms probe time-out after it.
        assert_eq!(replaceable_after(&spec(serde_json::json!({}))), MS(6800));
    }

    #[test]
    fn a_primary_stops_before_anyone_may_replace_it() {
        for (delay, probe_timeout) in [(1, 50), (1, 800), (5, 800), (5, 4000), (60, 10_000)] {
            let spec = spec(serde_json::json!({
                "failover": {"delaySeconds": delay, "probeTimeoutMilliseconds": probe_timeout}
            }));
            let lease = lease_for(&spec);
            assert!(writes_for(lease) + MARGIN < replaceable_after(&spec), "{delay}s/{probe_timeout}ms");
            assert!(failsafe_after(lease) + failsafe_timeout(lease) < writes_for(lease));
        }
    }

    #[test]
    fn verdicts() {
        let lease = S(5);
        assert_eq!(verdict(lease, MS(500), None), Verdict::Hold);
        assert_eq!(verdict(lease, S(2), None), Verdict::AskPeers);
        assert_eq!(verdict(lease, S(4), None), Verdict::StopWrites);
        // A full failsafe round renews it.
        assert_eq!(verdict(lease, S(30), Some(MS(300))), Verdict::AskPeers);
        assert_eq!(verdict(lease, S(30), Some(S(4))), Verdict::StopWrites);
        // An old round does not outlive a fresh contact.
        assert_eq!(verdict(lease, MS(100), Some(S(10))), Verdict::Hold);
        assert_eq!(verdict(Duration::ZERO, S(1000), None), Verdict::Hold, "no lease: never stops");
    }
}
