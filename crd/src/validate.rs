//! Validation in code. The CRD schema carries the same ranges and rules for the API server;
//! this module is what the controller and the local platform check before acting, so that an
//! invalid spec is reported and never acted upon.

use std::fmt;

use crate::spec::{Engine, MAX_INSTANCES, OpenGaussCluster, OpenGaussClusterSpec, SyncMethod};

/// Longest cluster name: instance, Service and PVC names append suffixes such as `-8` and
/// `-headless`, and must stay within Kubernetes' 63-character label limit.
pub const MAX_CLUSTER_NAME_LEN: usize = 48;

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in a cluster, so a user fixes them all in one round.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct InvalidCluster {
    pub errors: Vec<FieldError>,
}

impl fmt::Display for InvalidCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.errors.iter().map(ToString::to_string).collect();
        write!(f, "invalid OpenGaussCluster: {}", parts.join("; "))
    }
}

/// Server parameters the operator sets itself. Letting users override them would break
/// replication, failover or the instance manager's access to the server.
pub const MANAGED_PARAMETERS: &[&str] = &[
    "application_name",
    "archive_cleanup_command",
    "config_file",
    "data_directory",
    "external_pid_file",
    "hba_file",
    "hot_standby",
    "ident_file",
    "listen_addresses",
    "logging_collector",
    "max_replication_slots",
    "max_size_for_xlog_prune",
    "max_wal_senders",
    "most_available_sync",
    "pgxc_node_name",
    "port",
    "primary_conninfo",
    "primary_slot_name",
    "promote_trigger_file",
    "recovery_target",
    "recovery_target_action",
    "recovery_target_inclusive",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_timeline",
    "recovery_target_xid",
    // TLS is spec.tls's.
    "ssl",
    "ssl_ca_file",
    "ssl_cert_file",
    "ssl_key_file",
    "sync_config_strategy",
    "synchronous_standby_names",
    "unix_socket_directories",
    "unix_socket_directory",
    "wal_keep_segments",
    "wal_keep_size",
];

/// Parameters the operator leaves to users but whose values must keep replication and rewind
/// working, on `engine`.
fn restricted_value(engine: Engine, name: &str, value: &str) -> Option<&'static str> {
    let v = value.trim().to_ascii_lowercase();
    let off = matches!(v.as_str(), "off" | "false" | "no" | "0");
    match (engine, name) {
        // openGauss knows minimal, archive, hot_standby and logical (xlogdesc.cpp); standbys
        // that serve reads need hot_standby or more.
        (Engine::OpenGauss, "wal_level") if !matches!(v.as_str(), "hot_standby" | "logical") => {
            Some("must be hot_standby or logical on openGauss: standbys that serve reads need it")
        }
        (Engine::Postgres, "wal_level") if !matches!(v.as_str(), "replica" | "hot_standby" | "logical") => {
            Some("must be replica or logical: streaming replication needs it")
        }
        _ => restricted_everywhere(name, off),
    }
}

fn restricted_everywhere(name: &str, off: bool) -> Option<&'static str> {
    match name {
        "wal_log_hints" | "full_page_writes" if off => {
            Some("must stay on: rewinding an old primary after failover needs it")
        }
        "fsync" if off => Some("must stay on: without it a crash can lose acknowledged commits"),
        _ if name.starts_with("replconninfo") => {
            Some("is managed by the operator from the cluster's membership")
        }
        _ => None,
    }
}

fn is_parameter_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
}

/// A DNS-1035 label: what Kubernetes requires of Service names, which derive from the cluster
/// name.
pub fn check_cluster_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_CLUSTER_NAME_LEN {
        return Err(format!(
            "must be at most {MAX_CLUSTER_NAME_LEN} characters (instance and Service names are derived from it)"
        ));
    }
    let bytes = name.as_bytes();
    if !bytes[0].is_ascii_lowercase() {
        return Err("must start with a lowercase letter".into());
    }
    if !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
        return Err("must end with a lowercase letter or digit".into());
    }
    if !bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-') {
        return Err("may contain only lowercase letters, digits and '-'".into());
    }
    Ok(())
}

impl OpenGaussClusterSpec {
    /// Every problem with this spec; empty when it is valid.
    pub fn problems(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut err = |field: &str, message: String| {
            errors.push(FieldError { field: format!("spec.{field}"), message })
        };
        if self.instances == 0 || self.instances > MAX_INSTANCES {
            err("instances", format!("must be between 1 and {MAX_INSTANCES}, got {}", self.instances));
        }
        if self.port < 1024 || self.port > 65000 {
            err("port", format!("must be between 1024 and 65000, got {}", self.port));
        }
        if let Some(image) = &self.image
            && image.trim().is_empty()
        {
            err("image", "must not be empty when given".into());
        }
        if !is_quantity(&self.storage.size) {
            err("storage.size", format!("{:?} is not a Kubernetes quantity such as 10Gi", self.storage.size));
        }
        let sync = &self.replication.synchronous;
        if sync.number == 0 || sync.number > 8 {
            err("replication.synchronous.number", format!("must be between 1 and 8, got {}", sync.number));
        } else if self.instances > 1 && sync.method != SyncMethod::Off && sync.number >= self.instances {
            err(
                "replication.synchronous.number",
                format!(
                    "is {} but the cluster has only {} standby(s): commits would wait forever",
                    sync.number,
                    self.instances - 1
                ),
            );
        }
        let repl = &self.replication;
        if repl.wal_keep_segments == 0 || repl.wal_keep_segments > 1_000_000 {
            err(
                "replication.walKeepSegments",
                format!("must be between 1 and 1000000, got {}", repl.wal_keep_segments),
            );
        }
        if repl.max_wal_senders < 2 || repl.max_wal_senders > 100 {
            err(
                "replication.maxWalSenders",
                format!("must be between 2 and 100, got {}", repl.max_wal_senders),
            );
        } else if repl.max_wal_senders < self.instances + 1 {
            err(
                "replication.maxWalSenders",
                format!(
                    "is {} but {} instances need at least {} (one per standby, plus a base backup and a rewind)",
                    repl.max_wal_senders,
                    self.instances,
                    self.instances + 1
                ),
            );
        }
        for (name, value) in &self.parameters {
            let field = format!("parameters.{name}");
            if !is_parameter_name(name) {
                err(&field, "is not a valid parameter name".into());
            } else if MANAGED_PARAMETERS.contains(&name.as_str()) {
                err(&field, "is managed by the operator and cannot be set here".into());
            } else if let Some(why) = restricted_value(self.engine, name, value) {
                err(&field, why.into());
            }
            if value.contains(['\n', '\r', '\0']) {
                err(&field, "value must be a single line".into());
            }
        }
        if self.tls.replication_client_certificates {
            if !self.tls.enabled {
                err(
                    "tls.replicationClientCertificates",
                    "needs spec.tls.enabled: client certificates are presented over TLS".into(),
                );
            } else if self.engine == Engine::OpenGauss {
                err(
                    "tls.replicationClientCertificates",
                    "is not supported on openGauss: its standbys' base backup (gs_ctl build) connects \
                     without TLS, so it could present no certificate"
                        .into(),
                );
            }
        }
        let f = &self.failover;
        let delay_valid = (1..=3600).contains(&f.delay_seconds);
        if !delay_valid {
            err("failover.delaySeconds", format!("must be between 1 and 3600, got {}", f.delay_seconds));
        }
        if !(100..=1000).contains(&f.probe_interval_milliseconds) {
            err(
                "failover.probeIntervalMilliseconds",
                format!("must be between 100 and 1000, got {}", f.probe_interval_milliseconds),
            );
        }
        if !(50..=10_000).contains(&f.probe_timeout_milliseconds) {
            err(
                "failover.probeTimeoutMilliseconds",
                format!("must be between 50 and 10000, got {}", f.probe_timeout_milliseconds),
            );
        } else if delay_valid && u64::from(f.probe_timeout_milliseconds) >= u64::from(f.delay_seconds) * 1000
        {
            err(
                "failover.probeTimeoutMilliseconds",
                "must be shorter than failover.delaySeconds".to_string(),
            );
        }
        errors
    }
}

impl OpenGaussClusterSpec {
    /// Problems with `fencedInstances` for the cluster named `cluster`.
    pub fn fencing_problems(&self, cluster: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for fenced in &self.fenced_instances {
            let field = "spec.fencedInstances".to_string();
            match crate::names::instance_ordinal(cluster, fenced) {
                Some(k) if k < self.instances => {}
                _ => errors.push(FieldError {
                    field: field.clone(),
                    message: format!(
                        "{fenced:?} is not an instance of this cluster ({cluster}-0 to {cluster}-{})",
                        self.instances.saturating_sub(1)
                    ),
                }),
            }
            if !seen.insert(fenced) {
                errors.push(FieldError { field, message: format!("{fenced:?} is listed twice") });
            }
        }
        errors
    }
}

impl OpenGaussCluster {
    /// Checks the whole object: name and spec.
    pub fn validate(&self) -> Result<(), InvalidCluster> {
        let mut errors = Vec::new();
        match self.metadata.name.as_deref() {
            None => errors.push(FieldError { field: "metadata.name".into(), message: "is required".into() }),
            Some(name) => {
                if let Err(message) = check_cluster_name(name) {
                    errors.push(FieldError { field: "metadata.name".into(), message });
                }
            }
        }
        errors.extend(self.spec.problems());
        if let Some(name) = self.metadata.name.as_deref() {
            errors.extend(self.spec.fencing_problems(name));
        }
        if errors.is_empty() { Ok(()) } else { Err(InvalidCluster { errors }) }
    }
}

fn is_quantity(s: &str) -> bool {
    quantity_bytes(s).is_some()
}

/// The number of bytes a Kubernetes quantity such as `4Gi`, `512M` or `1.5Gi` stands for
/// (binary suffixes are powers of 1024, decimal ones of 1000); `None` for anything else.
pub fn quantity_bytes(s: &str) -> Option<u64> {
    const SUFFIXES: &[(&str, u64)] = &[
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
        ("", 1),
    ];
    SUFFIXES.iter().find_map(|(suffix, unit)| {
        let number = s.strip_suffix(suffix)?;
        let (whole, frac) = match number.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (number, None),
        };
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || frac.is_some_and(|f| !digits(f)) {
            return None;
        }
        let whole_bytes = whole.parse::<u64>().ok()?.checked_mul(*unit)?;
        let frac_bytes = match frac {
            // Quantities only need a few fractional digits; more would overflow the scaling.
            Some(f) => {
                let f = &f[..f.len().min(9)];
                let scale = 10u64.pow(u32::try_from(f.len()).ok()?);
                u64::try_from(u128::from(f.parse::<u64>().ok()?) * u128::from(*unit) / u128::from(scale))
                    .ok()?
            }
            None => 0,
        };
        whole_bytes.checked_add(frac_bytes)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::OpenGaussClusterSpec;

    #[test]
    fn quantities_in_bytes() {
        for (q, want) in [
            ("4Gi", Some(4u64 << 30)),
            ("1.5Gi", Some(3u64 << 29)),
            ("512M", Some(512_000_000)),
            ("2048", Some(2048)),
            ("100k", Some(100_000)),
            ("", None),
            ("Gi", None),
            ("1.Gi", None),
            ("-1Gi", None),
            ("99999999999Ei", None),
        ] {
            assert_eq!(quantity_bytes(q), want, "{q}");
        }
    }

    fn spec() -> OpenGaussClusterSpec {
        serde_json::from_str("{}").expect("empty spec takes defaults")
    }

    fn fields(spec: &OpenGaussClusterSpec) -> Vec<String> {
        spec.problems().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(spec().problems(), vec![]);
    }

    #[test]
    fn replication_client_certificates_need_tls_and_postgres() {
        let mut s = spec();
        s.engine = Engine::Postgres;
        s.tls.replication_client_certificates = true;
        assert_eq!(s.problems(), vec![]);
        s.tls.enabled = false;
        assert_eq!(fields(&s), ["spec.tls.replicationClientCertificates"]);
        assert!(s.problems()[0].message.contains("spec.tls.enabled"));
        s.tls.enabled = true;
        s.engine = Engine::OpenGauss;
        assert_eq!(fields(&s), ["spec.tls.replicationClientCertificates"]);
        assert!(s.problems()[0].message.contains("gs_ctl build"));
    }

    #[test]
    fn instances_out_of_range() {
        for n in [0, 10] {
            let mut s = spec();
            s.instances = n;
            assert!(fields(&s).contains(&"spec.instances".to_string()), "{n}");
        }
    }

    #[test]
    fn single_instance_with_default_sync_is_valid() {
        let mut s = spec();
        s.instances = 1;
        assert_eq!(s.problems(), vec![]);
        assert!(!s.is_synchronous());
    }

    #[test]
    fn sync_number_must_leave_a_standby_to_wait_for() {
        let mut s = spec();
        s.replication.synchronous.number = 3;
        let errs = s.problems();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].message.contains("only 2 standby"), "{}", errs[0].message);
        s.replication.synchronous.method = SyncMethod::Off;
        assert_eq!(s.problems(), vec![]);
    }

    #[test]
    fn managed_and_dangerous_parameters_are_refused() {
        let mut s = spec();
        s.parameters.insert("port".into(), "1".into());
        s.parameters.insert("wal_level".into(), "minimal".into());
        s.parameters.insert("full_page_writes".into(), "off".into());
        s.parameters.insert("replconninfo3".into(), "x".into());
        s.parameters.insert("Bad Name".into(), "x".into());
        s.parameters.insert("work_mem".into(), "64MB\nport=1".into());
        s.parameters.insert("shared_buffers".into(), "256MB".into());
        let got = fields(&s);
        for f in ["port", "wal_level", "full_page_writes", "replconninfo3", "Bad Name", "work_mem"] {
            assert!(got.contains(&format!("spec.parameters.{f}")), "{f} not refused: {got:?}");
        }
        assert!(!got.contains(&"spec.parameters.shared_buffers".to_string()));
    }

    #[test]
    fn wal_senders_must_cover_the_standbys() {
        let mut s = spec();
        s.instances = 9;
        s.replication.synchronous.number = 1;
        s.replication.max_wal_senders = 9;
        assert_eq!(fields(&s), vec!["spec.replication.maxWalSenders"]);
        s.replication.max_wal_senders = 10;
        assert_eq!(s.problems(), vec![]);
    }

    #[test]
    fn failover_timing_bounds() {
        let mut s = spec();
        s.failover.probe_interval_milliseconds = 2000;
        s.failover.delay_seconds = 0;
        let got = fields(&s);
        assert!(got.contains(&"spec.failover.probeIntervalMilliseconds".to_string()));
        assert!(got.contains(&"spec.failover.delaySeconds".to_string()));
        let mut s = spec();
        s.failover.delay_seconds = 1;
        s.failover.probe_timeout_milliseconds = 1000;
        assert_eq!(fields(&s), vec!["spec.failover.probeTimeoutMilliseconds"]);
    }

    #[test]
    fn quantities() {
        for ok in ["10Gi", "1.5Gi", "500M", "1024"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "Gi", "10 Gi", "ten", "1.Gi", "-1Gi"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn cluster_names() {
        assert!(check_cluster_name("demo-1").is_ok());
        for bad in ["", "Demo", "1demo", "demo-", "de_mo", &"a".repeat(49)] {
            assert!(check_cluster_name(bad).is_err(), "{bad}");
        }
    }
}
