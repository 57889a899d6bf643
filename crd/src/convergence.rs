//! Whether a cluster's status shows its spec carried out: what `--wait` waits for. Healthy at
//! the right generation is not enough: the status must also list exactly the spec's instances,
//! have every unfenced standby streaming, and show the synchronous set the spec asks for
//! applied, with every standby in it taking part.

use crate::names::instance_names;
use crate::spec::OpenGaussClusterSpec;
use crate::status::{OpenGaussClusterStatus, Phase};

/// What still differs between `status` and `spec` (applied as `generation` of cluster
/// `cluster`), or `None` once the status shows the spec carried out.
pub fn pending(
    cluster: &str,
    spec: &OpenGaussClusterSpec,
    generation: i64,
    status: &OpenGaussClusterStatus,
) -> Option<String> {
    if status.observed_generation.is_none_or(|g| g < generation) {
        return Some(format!("generation {generation} not yet observed"));
    }
    if status.phase != Some(Phase::Healthy) || status.transition.is_some() {
        return Some(format!("phase {}", status.phase.map(|p| p.as_str()).unwrap_or("unknown")));
    }
    let wanted = instance_names(cluster, spec.instances);
    let listed: Vec<String> = status.instances.iter().map(|i| i.name.clone()).collect();
    if listed != wanted {
        return Some(format!("instances listed {listed:?}, the spec has {wanted:?}"));
    }
    let Some(primary) = status.current_primary.as_deref() else {
        return Some("no primary yet".into());
    };
    let standbys: Vec<&str> =
        wanted.iter().map(String::as_str).filter(|n| *n != primary && !spec.is_fenced(n)).collect();
    for name in &standbys {
        let streaming = status
            .instance(name)
            .is_some_and(|row| row.ready && row.replication_state.as_deref() == Some("streaming"));
        if !streaming {
            return Some(format!("{name} is not streaming yet"));
        }
    }
    if spec.is_synchronous() && !standbys.is_empty() {
        let want = &spec.replication.synchronous;
        let number = want.number.min(u32::try_from(standbys.len()).unwrap_or(u32::MAX));
        let Some(applied) = &status.synchronous else {
            return Some("no synchronous standby set applied yet".into());
        };
        let mut members: Vec<&str> = applied.standbys.iter().map(String::as_str).collect();
        members.sort_unstable();
        let mut expected = standbys.clone();
        expected.sort_unstable();
        if applied.method != want.method.as_str() || applied.number != number || members != expected {
            return Some(format!(
                "synchronous set {} {} ({}) applied, the spec asks for {} {} ({})",
                applied.method.to_uppercase(),
                applied.number,
                applied.standbys.join(", "),
                want.method.as_str().to_uppercase(),
                number,
                expected.join(", ")
            ));
        }
        for name in &standbys {
            let sync = status.instance(name).and_then(|i| i.sync_state.as_deref()).unwrap_or("");
            if !matches!(sync, "sync" | "quorum" | "potential") {
                return Some(format!("{name} is not yet a synchronous standby ({sync})"));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::pending;
    use crate::spec::OpenGaussClusterSpec;
    use crate::status::{InstanceStatus, OpenGaussClusterStatus, Phase, SynchronousStatus};

    fn spec(json: &str) -> OpenGaussClusterSpec {
        serde_json::from_str(json).expect("spec")
    }

    fn standby(name: &str, sync: &str) -> InstanceStatus {
        InstanceStatus {
            name: name.into(),
            ready: true,
            replication_state: Some("streaming".into()),
            sync_state: Some(sync.into()),
            ..Default::default()
        }
    }

    fn converged(n: u32) -> OpenGaussClusterStatus {
        let mut instances = vec![InstanceStatus { name: "demo-0".into(), ready: true, ..Default::default() }];
        instances.extend((1..n).map(|k| standby(&format!("demo-{k}"), "quorum")));
        OpenGaussClusterStatus {
            phase: Some(Phase::Healthy),
            current_primary: Some("demo-0".into()),
            ready_instances: n,
            observed_generation: Some(2),
            synchronous: Some(SynchronousStatus {
                method: "any".into(),
                number: 1,
                standbys: (1..n).map(|k| format!("demo-{k}")).collect(),
                widened_until: None,
            }),
            instances,
            ..Default::default()
        }
    }

    #[test]
    fn only_a_status_showing_the_whole_spec_is_converged() {
        let three = spec(r#"{"instances": 3}"#);
        assert_eq!(pending("demo", &three, 2, &converged(3)), None);
        let mut headless = converged(3);
        headless.current_primary = None;
        assert!(pending("demo", &three, 2, &headless).is_some());

        let mut old = converged(3);
        old.observed_generation = Some(1);
        assert!(pending("demo", &three, 2, &old).expect("old").contains("not yet observed"));

        // After 4 to 3: the removed instance still listed.
        let leftover = converged(4);
        let mut leftover = OpenGaussClusterStatus { observed_generation: Some(2), ..leftover };
        leftover.synchronous.as_mut().expect("sync").standbys.truncate(2);
        assert!(pending("demo", &three, 2, &leftover).expect("leftover").contains("instances listed"));

        // A new instance not streaming yet, or streaming outside the synchronous set.
        let mut joining = converged(3);
        joining.instances[2].replication_state = None;
        assert!(pending("demo", &three, 2, &joining).expect("joining").contains("demo-2 is not streaming"));
        let mut outside = converged(3);
        outside.instances[2].sync_state = Some("async".into());
        assert!(
            pending("demo", &three, 2, &outside).expect("async").contains("demo-2 is not yet a synchronous")
        );

        // ANY 2 asked, ANY 1 still applied.
        let any2 =
            spec(r#"{"instances": 3, "replication": {"synchronous": {"method": "any", "number": 2}}}"#);
        let why = pending("demo", &any2, 2, &converged(3)).expect("any 1");
        assert!(why.contains("ANY 1") && why.contains("ANY 2"), "{why}");

        // Fenced standbys are neither streaming nor in the set.
        let fenced = spec(r#"{"instances": 3, "fencedInstances": ["demo-2"]}"#);
        let mut s = converged(3);
        s.instances[2] = InstanceStatus { name: "demo-2".into(), ..Default::default() };
        s.synchronous.as_mut().expect("sync").standbys = vec!["demo-1".into()];
        assert_eq!(pending("demo", &fenced, 2, &s), None);

        // Asynchronous replication needs no set.
        let off = spec(r#"{"instances": 3, "replication": {"synchronous": {"method": "off"}}}"#);
        let mut s = converged(3);
        s.synchronous = None;
        s.instances[1].sync_state = Some("async".into());
        assert_eq!(pending("demo", &off, 2, &s), None);
    }
}
