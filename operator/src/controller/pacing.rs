//! How often the controller looks at a cluster, and how long it waits for an instance: decided
//! here once, for both platforms.

use std::time::Duration;

use opengauss_crd::OpenGaussClusterSpec;

use crate::plan::Plan;

/// The pace while something is in motion (a transition, a bootstrap, a cluster that is not
/// healthy): fast enough that each step of a failover follows the last within a fraction of a
/// second, slow enough to leave the machine to the databases.
pub const BUSY_INTERVAL: Duration = Duration::from_millis(200);

/// Probe time-out for an instance that did not answer last time: a frozen or vanished
/// instance must not hold every pass up by the full time-out.
pub const SILENT_PROBE_TIMEOUT: Duration = Duration::from_millis(200);

/// How long to wait for one instance's manager or server.
pub fn probe_timeout(spec: &OpenGaussClusterSpec) -> Duration {
    Duration::from_millis(u64::from(spec.failover.probe_timeout_milliseconds))
}

/// The probe time-out for an instance that was silent last pass.
pub fn silent_probe_timeout(spec: &OpenGaussClusterSpec) -> Duration {
    probe_timeout(spec).min(SILENT_PROBE_TIMEOUT)
}

/// The user's probe interval.
pub fn interval(spec: &OpenGaussClusterSpec) -> Duration {
    Duration::from_millis(u64::from(spec.failover.probe_interval_milliseconds))
}

/// When to look again after a pass that decided `plan`.
pub fn next_pass_in(plan: &Plan, spec: &OpenGaussClusterSpec) -> Duration {
    let busy = plan.urgent || plan.status.phase != Some(opengauss_crd::Phase::Healthy);
    if busy { interval(spec).min(BUSY_INTERVAL) } else { interval(spec) }
}

/// When to try again after a pass that failed before acting (the platform could not be read
/// or the status not saved).
pub fn after_error(spec: &OpenGaussClusterSpec) -> Duration {
    interval(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_in_motion_is_looked_at_sooner() {
        let spec: OpenGaussClusterSpec = serde_json::from_value(serde_json::json!({})).expect("defaults");
        let mut plan = Plan::default();
        plan.status.phase = Some(opengauss_crd::Phase::Healthy);
        assert_eq!(next_pass_in(&plan, &spec), interval(&spec));
        plan.urgent = true;
        assert_eq!(next_pass_in(&plan, &spec), BUSY_INTERVAL);
        plan.urgent = false;
        plan.status.phase = Some(opengauss_crd::Phase::Degraded);
        assert_eq!(next_pass_in(&plan, &spec), BUSY_INTERVAL);
        let mut fast = spec.clone();
        fast.failover.probe_interval_milliseconds = 100;
        assert_eq!(next_pass_in(&plan, &fast), Duration::from_millis(100), "never slower than asked");
    }
}
