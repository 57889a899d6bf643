//! The configuration the controller wants on each instance: role, upstream, synchronous
//! standby set, peers and user parameters.

use std::collections::BTreeMap;

use opengauss_crd::{DataDurability, OpenGaussClusterSpec, SyncMethod};

use super::Input;
use super::health::{members, report};
use crate::engine::{DesiredConfig, Endpoint, Peer, SyncConfig};

/// The role an instance should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DesiredRole {
    Primary,
    /// A standby streaming from `upstream`, or detached when `None`.
    Standby(Option<Endpoint>),
}

/// The synchronous standby set a primary named `primary` should wait for.
///
/// With `dataDurability: required` every other member that holds data is listed (a member
/// still waiting for its first clone could never answer): `ANY n` (or `FIRST n`) then keeps
/// writes flowing as long as `n` of them are up, and a lost or removed member never leaves
/// writes waiting for it while another could answer. A member once listed stays listed while
/// its manager is silent. With `preferred`, only standbys streaming right now are listed, so
/// writes continue even with none.
pub fn synchronous_set(input: &Input<'_>, previous: Option<&[String]>, primary: &str) -> Option<SyncConfig> {
    let spec = input.spec;
    // Not `spec.is_synchronous()`: a primary beyond a new size of one still has standbys, and
    // its commits must wait for the member that takes over from it.
    if spec.replication.synchronous.method == SyncMethod::Off {
        return None;
    }
    let others = members(input).into_iter().filter(|m| m != primary);
    let standbys: Vec<String> = match spec.failover.data_durability {
        DataDurability::Required => {
            let others: Vec<String> = others.collect();
            let holding: Vec<String> = others
                .iter()
                .filter(|m| match report(input, m) {
                    Some(r) => r.initialized,
                    None => previous.is_some_and(|p| p.contains(*m)),
                })
                .cloned()
                .collect();
            // Until a standby holds data, every commit still waits for one: an acknowledged
            // commit is always on a standby.
            if holding.is_empty() { others } else { holding }
        }
        DataDurability::Preferred => {
            let streaming: Vec<String> = report(input, primary)
                .map(|r| {
                    r.replication
                        .iter()
                        .filter(|row| row.state == "streaming")
                        .map(|row| row.instance.clone())
                        .collect()
                })
                .unwrap_or_default();
            others.filter(|m| streaming.contains(m)).collect()
        }
    };
    if standbys.is_empty() {
        return None;
    }
    let sync = &spec.replication.synchronous;
    Some(SyncConfig { method: sync.method, number: sync.number.min(standbys.len() as u32), standbys })
}

/// The full desired configuration of `instance` in `role`.
pub fn desired_config(input: &Input<'_>, instance: &str, role: DesiredRole) -> DesiredConfig {
    let previous_sync = input.status.synchronous.as_ref().map(|s| s.standbys.as_slice());
    let spec = input.spec;
    let (standby, upstream) = match role {
        DesiredRole::Primary => (false, None),
        DesiredRole::Standby(up) => (true, up),
    };
    // A standby carries the set it would enforce once promoted, so the first write after a
    // promotion already waits for a standby.
    let synchronous = synchronous_set(input, previous_sync, instance);
    // Every instance a failover could promote, those a scale-down is still removing included:
    // a primary cut off from the controller must be held by all of them to keep serving.
    let peers = members(input)
        .into_iter()
        .chain(super::health::extras(input))
        .filter(|m| m != instance)
        .filter_map(|m| {
            input.observed.instances.get(&m).map(|o| Peer {
                instance: m.clone(),
                host: o.endpoint.host.clone(),
                ha_port: o.ha_port,
                manager: o.manager_url.clone(),
            })
        })
        .collect();
    DesiredConfig {
        standby,
        upstream,
        synchronous,
        most_available_sync: spec.failover.data_durability == DataDurability::Preferred,
        max_wal_senders: spec.replication.max_wal_senders,
        wal_keep_segments: spec.replication.wal_keep_segments,
        peers,
        parameters: parameters(spec),
        lease_milliseconds: u64::try_from(crate::lease::lease_for(spec).as_millis()).unwrap_or(u64::MAX),
    }
}

/// The user's parameters over what the engine needs to fit the container's memory limit.
fn parameters(spec: &OpenGaussClusterSpec) -> BTreeMap<String, String> {
    let limit = spec
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
        .and_then(|q| opengauss_crd::validate::quantity_bytes(&q.0));
    let mut out =
        limit.map(|bytes| crate::engine::dialect(spec.engine).memory_settings(bytes)).unwrap_or_default();
    out.extend(spec.parameters.clone());
    out
}

/// Whether an applied synchronous set differs from the wanted one in a way that matters.
pub fn same_sync(a: Option<&SyncConfig>, b: Option<&SyncConfig>) -> bool {
    let norm =
        |s: Option<&SyncConfig>| s.filter(|s| s.method != SyncMethod::Off && !s.standbys.is_empty()).cloned();
    norm(a) == norm(b)
}

#[cfg(test)]
mod tests {
    use super::parameters;

    fn spec(json: &str) -> opengauss_crd::OpenGaussClusterSpec {
        serde_json::from_str(json).expect("a spec")
    }

    #[test]
    fn opengauss_fits_its_memory_limit_unless_the_user_says_otherwise() {
        let limited = |memory: &str, extra: &str| {
            parameters(&spec(&format!(
                r#"{{"engine": "openGauss", "resources": {{"limits": {{"memory": "{memory}"}}}}{extra}}}"#
            )))
        };
        let p = limited("4Gi", "");
        assert_eq!(p.get("max_process_memory").map(String::as_str), Some("3276MB"));
        assert_eq!(p.get("cstore_buffers").map(String::as_str), Some("16MB"));
        // openGauss refuses less than 2 GB.
        assert_eq!(limited("1Gi", "").get("max_process_memory").map(String::as_str), Some("2048MB"));
        let own = limited("4Gi", r#", "parameters": {"max_process_memory": "3GB"}"#);
        assert_eq!(own.get("max_process_memory").map(String::as_str), Some("3GB"));
        assert_eq!(own.get("cstore_buffers").map(String::as_str), Some("16MB"));
        // No limit, nothing derived; PostgreSQL sizes itself from its own settings.
        assert!(parameters(&spec(r#"{"engine": "openGauss"}"#)).is_empty());
        let pg = parameters(&spec(r#"{"engine": "postgres", "resources": {"limits": {"memory": "4Gi"}}}"#));
        assert!(pg.is_empty(), "{pg:?}");
    }
}
