//! Reading a cluster from a YAML file, with errors that name the problem: malformed YAML (with
//! its position), the wrong kind of object, unknown or mistyped fields, invalid values.

use crate::spec::OpenGaussCluster;
use crate::validate::InvalidCluster;
use crate::{API_VERSION, KIND};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the file is empty: expected an {KIND} object")]
    Empty,
    #[error("malformed YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
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
    let value: serde_json::Value = serde_yaml_ng::from_str(text)?;
    if value.is_null() {
        return Err(LoadError::Empty);
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
        LoadError::Field { path, message: e.inner().to_string() }
    })?;
    // The generated type reads apiVersion and kind without keeping them; they were checked above.
    unknown.retain(|path| path != "apiVersion" && path != "kind");
    if !unknown.is_empty() {
        return Err(LoadError::UnknownFields(unknown));
    }
    cluster.validate()?;
    Ok(cluster)
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
