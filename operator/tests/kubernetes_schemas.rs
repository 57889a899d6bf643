//! Offline schema validation against the real Kubernetes OpenAPI schemas: every object
//! `opengauss-operator render` prints for each sample, and every file in deploy/, with
//! `kubernetes-validate --strict` (installed into .venv by scripts/ensure-tools.sh from
//! scripts/requirements-validate.txt) for Kubernetes 1.33 and 1.37. Custom resources are
//! validated against the generated CRD's schema by scripts/validate-custom-resources.py.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Kubernetes versions checked: the oldest the operator supports (k8s-openapi's `v1_33`)
/// and the newest kubernetes-validate 1.37.0 knows.
const VERSIONS: [&str; 2] = ["1.33", "1.37"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf()
}

fn venv_tool(name: &str) -> PathBuf {
    let path = repo().join(".venv/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `make tools` (scripts/ensure-tools.sh installs kubernetes-validate from \
         scripts/requirements-validate.txt into .venv)",
        path.display()
    );
    path
}

/// Kinds kubernetes-validate has no schema for, which are checked otherwise.
const NOT_BUILT_IN: &[(&str, &str)] = &[
    ("ha.opengauss.dev/v1alpha1", "OpenGaussCluster"),
    ("kind.x-k8s.io/v1alpha4", "Cluster"),
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
];

/// Documents (apiVersion, kind) in a YAML stream.
fn documents(text: &str) -> Vec<(String, String)> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .filter_map(|d| serde_yaml_ng::Value::deserialize(d).ok())
        .filter(|v| !v.is_null())
        .map(|v| {
            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_string();
            (s("apiVersion"), s("kind"))
        })
        .collect()
}

/// Validates `files` for every version; returns the problems found.
fn validate(files: &[PathBuf]) -> Vec<String> {
    let tool = venv_tool("kubernetes-validate");
    let mut expected = 0;
    for f in files {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        expected += documents(&text)
            .iter()
            .filter(|(a, k)| !NOT_BUILT_IN.contains(&(a.as_str(), k.as_str())))
            .count();
    }
    let mut problems = Vec::new();
    for version in VERSIONS {
        let out = Command::new(&tool)
            .args(["--strict", "-k", version])
            .args(files)
            .output()
            .expect("running kubernetes-validate");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut passed = 0;
        for line in stdout.lines().chain(stderr.lines()) {
            if line.starts_with("INFO") && line.contains(" passed for resource ") {
                passed += 1;
            } else if line.starts_with("WARN") && line.contains("Couldn't find schema for kind") {
                let known = NOT_BUILT_IN
                    .iter()
                    .any(|(a, k)| line.contains(&format!("kind {k} with api version {a} ")));
                if !known {
                    problems.push(format!("{version}: unknown kind: {line}"));
                }
            } else if !line.trim().is_empty() {
                problems.push(format!("{version}: {line}"));
            }
        }
        if !out.status.success() {
            problems.push(format!("{version}: kubernetes-validate exited with {}", out.status));
        }
        if passed != expected {
            problems.push(format!("{version}: {passed} document(s) passed, {expected} expected"));
        }
    }
    problems
}

fn samples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/samples"))
        .expect("deploy/samples")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    files
}

fn deploy_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read deploy/") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            deploy_files(&path, out);
        } else {
            out.push(path);
        }
    }
    out.sort();
}

#[test]
fn every_object_render_prints_validates() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rendered = Vec::new();
    for sample in samples() {
        let out = Command::new(env!("CARGO_BIN_EXE_opengauss-operator"))
            .args(["render", "-f"])
            .arg(&sample)
            .output()
            .expect("run render");
        assert!(
            out.status.success(),
            "render {}: {}",
            sample.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let cluster =
            opengauss_crd::parse_cluster(&std::fs::read_to_string(&sample).expect("sample")).expect("valid");
        let docs = documents(&text);
        let instances = cluster.spec.instances as usize;
        assert_eq!(docs.len(), 6 + 2 * instances, "{}: {docs:?}", sample.display());
        let path = tmp.path().join(sample.file_name().expect("name"));
        std::fs::write(&path, &text).expect("write");
        rendered.push(path);
    }
    let problems = validate(&rendered);
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn every_file_in_deploy_validates() {
    let mut files = Vec::new();
    deploy_files(&repo().join("deploy"), &mut files);
    let yaml: Vec<PathBuf> =
        files.iter().filter(|p| p.extension().is_some_and(|e| e == "yaml")).cloned().collect();
    assert_eq!(yaml.len(), files.len(), "only YAML in deploy/: {files:?}");
    let problems = validate(&yaml);
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn custom_resources_validate_against_the_crd_schema() {
    let python = venv_tool("python");
    let crd = repo().join("deploy/crds/opengaussclusters.ha.opengauss.dev.yaml");
    let out = Command::new(&python)
        .arg(repo().join("scripts/validate-custom-resources.py"))
        .arg(&crd)
        .args(samples())
        .output()
        .expect("run validate-custom-resources.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.lines().filter(|l| l.starts_with("INFO")).count(), samples().len(), "{stdout}");
    for sample in samples() {
        let text = std::fs::read_to_string(&sample).expect("sample");
        opengauss_crd::parse_cluster(&text).unwrap_or_else(|e| panic!("{}: {e}", sample.display()));
    }
}

#[test]
fn validation_catches_broken_manifests() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pod = tmp.path().join("pod.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\nspec:\n  containers:\n  - name: c\n    image: i\n    imagePullPolicy: Sometimes\n    bogus: true\n",
    )
    .expect("write");
    let problems = validate(std::slice::from_ref(&pod));
    assert!(problems.iter().any(|p| p.contains("bogus")), "{problems:#?}");
    let unknown = tmp.path().join("unknown.yaml");
    std::fs::write(&unknown, "apiVersion: policy/v1beta9\nkind: PodDisruptionBudget\nmetadata:\n  name: x\n")
        .expect("write");
    assert!(!validate(&[unknown]).is_empty(), "an unknown apiVersion of a built-in kind is an error");
    let cr = tmp.path().join("cr.yaml");
    std::fs::write(
        &cr,
        "apiVersion: ha.opengauss.dev/v1alpha1\nkind: OpenGaussCluster\nmetadata:\n  name: x\nspec:\n  instanses: 3\n",
    )
    .expect("write");
    let out = Command::new(venv_tool("python"))
        .arg(repo().join("scripts/validate-custom-resources.py"))
        .arg(repo().join("deploy/crds/opengaussclusters.ha.opengauss.dev.yaml"))
        .arg(&cr)
        .output()
        .expect("run");
    assert!(!out.status.success(), "a misspelt field is refused");
    assert!(String::from_utf8_lossy(&out.stdout).contains("instanses"));
}

#[test]
fn kustomization_applies_exactly_the_install_files() {
    let text = std::fs::read_to_string(repo().join("deploy/kustomization.yaml")).expect("kustomization");
    let k: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("yaml");
    let mut listed: Vec<String> = k["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("string").to_string())
        .collect();
    listed.sort();
    let mut files = Vec::new();
    for dir in ["crds", "rbac", "operator"] {
        let mut in_dir = Vec::new();
        deploy_files(&repo().join("deploy").join(dir), &mut in_dir);
        files.extend(
            in_dir
                .iter()
                .map(|p| p.strip_prefix(repo().join("deploy")).expect("under deploy").display().to_string()),
        );
    }
    files.sort();
    assert_eq!(listed, files, "`kubectl apply -k deploy/` must install what the -f sequence installs");
}

#[test]
fn kind_cluster_config_has_workers_for_each_instance() {
    let text = std::fs::read_to_string(repo().join("deploy/kind/cluster.yaml")).expect("kind config");
    let c: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("yaml");
    assert_eq!(c["kind"].as_str(), Some("Cluster"));
    assert_eq!(c["apiVersion"].as_str(), Some("kind.x-k8s.io/v1alpha4"));
    let roles: Vec<&str> =
        c["nodes"].as_sequence().expect("nodes").iter().filter_map(|n| n["role"].as_str()).collect();
    assert_eq!(roles.iter().filter(|r| **r == "control-plane").count(), 1);
    assert!(roles.iter().filter(|r| **r == "worker").count() >= 3, "{roles:?}");
}
