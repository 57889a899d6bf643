//! Fault injection for the end-to-end tests of controller restarts: with
//! `OPENGAUSS_OPERATOR_FAILPOINT=<point>@<step>` the controller exits at once (as if killed)
//! when it reaches `<point>` while the transition in flight is at `<step>`. Points:
//! `before-actions` (status persisted, nothing done yet) and `after-actions`. Unset, this costs
//! one environment lookup at start-up.

use std::sync::OnceLock;

use opengauss_crd::OpenGaussClusterStatus;

fn configured() -> Option<&'static (String, String)> {
    static POINT: OnceLock<Option<(String, String)>> = OnceLock::new();
    POINT
        .get_or_init(|| {
            let raw = std::env::var("OPENGAUSS_OPERATOR_FAILPOINT").ok()?;
            let (point, step) = raw.split_once('@')?;
            Some((point.to_string(), step.to_string()))
        })
        .as_ref()
}

/// Exits the process, without any clean-up, when the configured failpoint matches.
pub fn hit(point: &str, status: &OpenGaussClusterStatus) {
    let Some((want_point, want_step)) = configured() else { return };
    let step = status.transition.as_ref().map(|t| format!("{:?}", t.step));
    if want_point == point && step.as_deref() == Some(want_step.as_str()) {
        eprintln!("failpoint {point}@{want_step} reached: exiting as if killed");
        std::process::exit(137);
    }
}
