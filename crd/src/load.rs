//! Reading a cluster from a YAML file, with errors that name the problem: malformed YAML (with
//! its position), the wrong kind of object, unknown or mistyped fields, invalid values.

use crate::spec::OpenGaussCluster;
use crate::validate::InvalidCluster;
use crate::{API_VERSION, KIND};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the file is empty: expected an {KIND} object")]
    Empty,
    /// The parser's message (with its position), kept as text so it is printed once.
    #[error("malformed YAML: {0}")]
    Yaml(String),
    #[error("expected a mapping with apiVersion, kind, metadata and spec, found {0}")]
    NotAMapping(&'static str),
    #[error(
        "expected apiVersion {API_VERSION} and kind {KIND}, found apiVersion {api_version:?} and kind {kind:?}"
    )]
    WrongKind { api_version: String, kind: String },
    #[error("unknown field(s) {}: check the spelling against `opengauss-operator crd`", .0.join(", "))]
    UnknownFields(Vec<String>),
    #[error("field {path}: {message}")]
    Field { path: String, message: String },
    #[error(transparent)]
    Invalid(#[from] InvalidCluster),
}

/// Parses and validates one `OpenGaussCluster` from YAML (or JSON) text.
pub fn parse_cluster(text: &str) -> Result<OpenGaussCluster, LoadError> {
    let value: serde_json::Value =
        serde_yaml_ng::from_str(text).map_err(|e| LoadError::Yaml(e.to_string()))?;
    match &value {
        serde_json::Value::Null => return Err(LoadError::Empty),
        serde_json::Value::Object(_) => {}
        serde_json::Value::Array(_) => return Err(LoadError::NotAMapping("a list")),
        _ => return Err(LoadError::NotAMapping("a single value")),
    }
    let field = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let (api_version, kind) = (field(&value, "apiVersion"), field(&value, "kind"));
    if api_version != API_VERSION || kind != KIND {
        return Err(LoadError::WrongKind { api_version, kind });
    }
    let mut unknown = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let de = serde_ignored::Deserializer::new(value, &mut record);
    let cluster: OpenGaussCluster = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = match e.path().to_string() {
            p if p == "." => "(top level)".to_string(),
            p => p,
        };
        LoadError::Field { path, message: in_plain_words(&e.inner().to_string()) }
    })?;
    // The generated type reads apiVersion and kind without keeping them; they were checked above.
    unknown.retain(|path| path != "apiVersion" && path != "kind");
    if !unknown.is_empty() {
        return Err(LoadError::UnknownFields(unknown));
    }
    cluster.validate()?;
    Ok(cluster)
}

/// The deserializer's message in the words of the file's author rather than Rust's: `u32`
/// becomes a whole number, a `map` a mapping, `invalid type: string` "got the text".
fn in_plain_words(message: &str) -> String {
    const WORDS: &[(&str, &str)] = &[
        ("invalid type: string ", "got the text "),
        ("invalid type: integer ", "got the number "),
        ("invalid type: floating point ", "got the number "),
        ("invalid type: boolean ", "got "),
        ("invalid type: map", "got a mapping"),
        ("invalid type: sequence", "got a list"),
        ("invalid type: unit value", "got nothing"),
        ("invalid type: null", "got nothing"),
        ("invalid value: integer ", "got "),
        ("invalid value: string ", "got "),
        ("unknown variant ", "unknown value "),
        ("expected u8", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected usize", "expected a whole number"),
        ("expected i32", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected a list"),
        ("expected a map", "expected a mapping"),
    ];
    let mut out = message.to_string();
    for (rust, plain) in WORDS {
        out = out.replace(rust, plain);
    }
    // `expected struct FailoverSpec` and the like name a type, not what to write.
    if let Some(at) = out.find("expected struct ") {
        out.truncate(at);
        out.push_str("expected a mapping of fields");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Engine;

    const HEAD: &str =
        "apiVersion: ha.opengauss.dev/v1alpha1\nkind: OpenGaussCluster\nmetadata:\n  name: demo\n";

    fn load(spec: &str) -> Result<OpenGaussCluster, LoadError> {
        parse_cluster(&format!("{HEAD}spec:\n{spec}"))
    }

    #[test]
    fn parameters_take_numbers_and_booleans_as_written() {
        let c = load("  parameters:\n    max_connections: 200\n    fsync: true\n    work_mem: 4MB\n    random_page_cost: 1.5\n")
            .expect("valid");
        let p = &c.spec.parameters;
        assert_eq!(p["max_connections"], "200");
        assert_eq!(p["fsync"], "true");
        assert_eq!(p["work_mem"], "4MB");
        assert_eq!(p["random_page_cost"], "1.5");
        let err = load("  parameters:\n    shared_preload_libraries: [a, b]\n").unwrap_err().to_string();
        assert!(err.contains("shared_preload_libraries") && err.contains("got a list or mapping"), "{err}");
    }

    #[test]
    fn messages_speak_the_users_words() {
        for (spec, want) in [
            ("  instances: three\n", "spec.instances: got the text \"three\", expected a whole number"),
            ("  instances: -1\n", "spec.instances: got `-1`, expected a whole number"),
            ("  failover: 5\n", "spec.failover: got the number `5`, expected a mapping of fields"),
        ] {
            let err = load(spec).unwrap_err().to_string();
            assert!(err.contains(want), "{spec}: {err}");
            for rust in ["u32", "i64", "struct", "sequence", "map,"] {
                assert!(!err.contains(rust), "{spec}: {err} speaks Rust ({rust})");
            }
        }
    }

    #[test]
    fn one_mistake_one_error() {
        let err = load("  failover:\n    delaySeconds: 0\n").unwrap_err().to_string();
        assert!(err.contains("spec.failover.delaySeconds"), "{err}");
        assert!(!err.contains("probeTimeoutMilliseconds"), "a field the user never set is blamed: {err}");
        let yaml = parse_cluster("apiVersion: [\n").unwrap_err().to_string();
        assert_eq!(yaml.matches("did not find expected node content").count(), 1, "{yaml}");
    }

    #[test]
    fn a_list_or_a_value_is_not_a_cluster() {
        let err = parse_cluster("- a\n- b\n").unwrap_err().to_string();
        assert!(err.contains("expected a mapping") && err.contains("found a list"), "{err}");
        let err = parse_cluster("just text\n").unwrap_err().to_string();
        assert!(err.contains("found a single value"), "{err}");
    }

    #[test]
    fn minimal_cluster_takes_defaults() {
        let c = parse_cluster(&format!("{HEAD}spec: {{}}\n")).expect("valid");
        assert_eq!(c.spec.instances, 3);
        assert_eq!(c.spec.engine, Engine::OpenGauss);
        assert_eq!(c.spec.replication.wal_keep_segments, 256);
        assert_eq!(c.spec.replication.max_wal_senders, 10);
    }

    #[test]
    fn malformed_yaml_names_the_position() {
        let err = parse_cluster("apiVersion: [unclosed\n").unwrap_err();
        assert!(matches!(err, LoadError::Yaml(_)), "{err}");
        assert!(err.to_string().contains("line"), "{err}");
    }

    #[test]
    fn missing_spec() {
        let err = parse_cluster(HEAD).unwrap_err().to_string();
        assert!(err.contains("(top level): missing field `spec`"), "{err}");
    }

    #[test]
    fn empty_file() {
        assert!(matches!(parse_cluster("").unwrap_err(), LoadError::Empty));
    }

    #[test]
    fn wrong_kind() {
        let err = parse_cluster("apiVersion: v1\nkind: Pod\n").unwrap_err();
        assert!(err.to_string().contains("found apiVersion \"v1\" and kind \"Pod\""), "{err}");
    }

    #[test]
    fn zero_instances_is_refused() {
        let err = load("  instances: 0\n").unwrap_err();
        assert!(err.to_string().contains("spec.instances: must be between 1 and 9, got 0"), "{err}");
    }

    #[test]
    fn unknown_engine_names_the_choices() {
        let err = load("  engine: mysql\n").unwrap_err().to_string();
        assert!(err.contains("spec.engine") && err.contains("mysql") && err.contains("openGauss"), "{err}");
    }

    #[test]
    fn misspelt_field_is_reported() {
        let err = load("  instanses: 3\n").unwrap_err().to_string();
        assert!(err.contains("spec.instanses"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let err = load("  replication:\n    maxWalSenders: many\n").unwrap_err().to_string();
        assert!(err.contains("spec.replication.maxWalSenders"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = load("  instances: 12\n  port: 80\n").unwrap_err().to_string();
        assert!(err.contains("spec.instances") && err.contains("spec.port"), "{err}");
    }

    #[test]
    fn fenced_instances_must_belong_to_the_cluster() {
        assert!(load("  fencedInstances: [demo-1]\n").is_ok());
        let err = load("  fencedInstances: [demo-3, other-0, demo-1, demo-1]\n").unwrap_err().to_string();
        assert!(err.contains("\"demo-3\" is not an instance of this cluster (demo-0 to demo-2)"), "{err}");
        assert!(err.contains("\"other-0\" is not an instance"), "{err}");
        assert!(err.contains("\"demo-1\" is listed twice"), "{err}");
    }

    #[test]
    fn missing_name() {
        let err = parse_cluster(
            "apiVersion: ha.opengauss.dev/v1alpha1\nkind: OpenGaussCluster\nmetadata: {}\nspec: {}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("metadata.name: is required"), "{err}");
    }
}
