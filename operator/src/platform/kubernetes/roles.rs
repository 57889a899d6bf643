//! Role labels: which pod `<name>-rw` and `<name>-ro` select, derived from the cluster status
//! alone, and the order in which to change them.

use std::collections::BTreeMap;

use opengauss_crd::{OpenGaussClusterStatus, Role};

/// The value of the `ha.opengauss.dev/role` label of a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RoleLabel {
    /// Selected by `<name>-rw`.
    Primary,
    /// Selected by `<name>-ro`.
    Standby,
    /// Selected by neither: not yet bootstrapped, fenced, an old primary, or any instance
    /// while a failover or switchover is in flight.
    None,
}

impl RoleLabel {
    pub fn as_str(self) -> &'static str {
        match self {
            RoleLabel::Primary => "primary",
            RoleLabel::Standby => "standby",
            RoleLabel::None => "none",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "primary" => Some(RoleLabel::Primary),
            "standby" => Some(RoleLabel::Standby),
            "none" => Some(RoleLabel::None),
            _ => None,
        }
    }
}

impl std::fmt::Display for RoleLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The label `instance` should carry for this status. Only the recorded primary is labelled
/// primary, and nobody is while a transition is in flight: the old primary leaves `-rw` as
/// soon as a failover is decided, and the new one joins only once its promotion is recorded.
pub fn desired_role(status: &OpenGaussClusterStatus, instance: &str) -> RoleLabel {
    let transition = status.transition.is_some();
    if status.current_primary.as_deref() == Some(instance) {
        return if transition { RoleLabel::None } else { RoleLabel::Primary };
    }
    match status.instance(instance).map(|i| i.role) {
        Some(Role::Standby) => RoleLabel::Standby,
        _ => RoleLabel::None,
    }
}

/// The relabelling that takes pods from `current` labels to what `status` asks for, in a safe
/// order: every pod losing `primary` first, then everything else, with a new `primary` last.
/// Pods whose label is already right are left alone.
pub fn changes(
    current: &BTreeMap<String, Option<RoleLabel>>,
    status: &OpenGaussClusterStatus,
) -> Vec<(String, RoleLabel)> {
    let mut out: Vec<(String, RoleLabel)> = current
        .iter()
        .filter_map(|(pod, have)| {
            let want = desired_role(status, pod);
            (*have != Some(want)).then(|| (pod.clone(), want))
        })
        .collect();
    let rank = |pod: &str, want: RoleLabel| {
        let demotes_primary = current.get(pod).copied().flatten() == Some(RoleLabel::Primary);
        match (demotes_primary, want) {
            (true, _) => 0,
            (false, RoleLabel::Primary) => 2,
            _ => 1,
        }
    };
    out.sort_by_key(|(pod, want)| (rank(pod, *want), pod.clone()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use opengauss_crd::{InstanceStatus, Transition, TransitionKind, TransitionStep};

    fn status(primary: &str, standbys: &[&str]) -> OpenGaussClusterStatus {
        let mut s = OpenGaussClusterStatus {
            current_primary: Some(primary.into()),
            target_primary: Some(primary.into()),
            ..Default::default()
        };
        s.instances.push(InstanceStatus { name: primary.into(), role: Role::Primary, ..Default::default() });
        for n in standbys {
            s.instances.push(InstanceStatus { name: (*n).into(), role: Role::Standby, ..Default::default() });
        }
        s
    }

    fn failing_over(mut s: OpenGaussClusterStatus) -> OpenGaussClusterStatus {
        let from = s.current_primary.clone().expect("primary");
        s.transition = Some(
            serde_json::from_value::<Transition>(serde_json::json!({
                "kind": "Failover", "from": from, "step": "Fencing", "reason": "test",
                "startedAt": Time(Timestamp::UNIX_EPOCH),
            }))
            .expect("transition"),
        );
        assert_eq!(
            s.transition.as_ref().map(|t| (t.kind, t.step)),
            Some((TransitionKind::Failover, TransitionStep::Fencing))
        );
        s
    }

    #[test]
    fn steady_state_labels() {
        let s = status("og-0", &["og-1", "og-2"]);
        assert_eq!(desired_role(&s, "og-0"), RoleLabel::Primary);
        assert_eq!(desired_role(&s, "og-1"), RoleLabel::Standby);
        assert_eq!(desired_role(&s, "og-3"), RoleLabel::None);
        assert_eq!(desired_role(&OpenGaussClusterStatus::default(), "og-0"), RoleLabel::None);
    }

    #[test]
    fn nobody_is_primary_during_a_failover() {
        let s = failing_over(status("og-0", &["og-1", "og-2"]));
        for pod in ["og-0", "og-1", "og-2"] {
            assert_ne!(desired_role(&s, pod), RoleLabel::Primary, "{pod}");
        }
    }

    #[test]
    fn demotions_come_before_promotions() {
        let current: BTreeMap<String, Option<RoleLabel>> = [
            ("og-0".to_string(), Some(RoleLabel::Primary)),
            ("og-1".to_string(), Some(RoleLabel::Standby)),
            ("og-2".to_string(), None),
        ]
        .into();
        let mut s = status("og-1", &["og-2"]);
        s.instances.push(InstanceStatus { name: "og-0".into(), role: Role::Primary, ..Default::default() });
        let got = changes(&current, &s);
        assert_eq!(
            got,
            vec![
                ("og-0".to_string(), RoleLabel::None),
                ("og-2".to_string(), RoleLabel::Standby),
                ("og-1".to_string(), RoleLabel::Primary),
            ]
        );
    }

    #[test]
    fn nothing_to_change_when_labels_match() {
        let s = status("og-0", &["og-1"]);
        let current: BTreeMap<String, Option<RoleLabel>> =
            [("og-0".to_string(), Some(RoleLabel::Primary)), ("og-1".to_string(), Some(RoleLabel::Standby))]
                .into();
        assert!(changes(&current, &s).is_empty());
    }

    #[test]
    fn labels_parse_back() {
        for l in [RoleLabel::Primary, RoleLabel::Standby, RoleLabel::None] {
            assert_eq!(RoleLabel::parse(l.as_str()), Some(l));
        }
        assert_eq!(RoleLabel::parse("leader"), None);
    }
}
