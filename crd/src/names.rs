//! Names derived from the cluster name. Instances are `<cluster>-<ordinal>`, ordinals from 0,
//! so instance `k` is the one the local platform puts on `base port + k`.

/// The name of the instance with this ordinal.
pub fn instance_name(cluster: &str, ordinal: u32) -> String {
    format!("{cluster}-{ordinal}")
}

/// The ordinal of an instance of this cluster, or `None` when the name is not one of its
/// instances.
pub fn instance_ordinal(cluster: &str, instance: &str) -> Option<u32> {
    let rest = instance.strip_prefix(cluster)?.strip_prefix('-')?;
    if rest.is_empty() || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    rest.parse().ok()
}

/// Names of the first `count` instances, in ordinal order.
pub fn instance_names(cluster: &str, count: u32) -> Vec<String> {
    (0..count).map(|k| instance_name(cluster, k)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for k in [0, 1, 8, 12] {
            assert_eq!(instance_ordinal("demo", &instance_name("demo", k)), Some(k));
        }
    }

    #[test]
    fn foreign_names_have_no_ordinal() {
        for name in ["demo", "demo-", "demo-x", "demo-01", "other-1", "demox-1", "demo--1"] {
            assert_eq!(instance_ordinal("demo", name), None, "{name}");
        }
    }

    #[test]
    fn names_in_order() {
        assert_eq!(instance_names("pg", 3), ["pg-0", "pg-1", "pg-2"]);
    }
}
