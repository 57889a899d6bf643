//! Checked-in generated files must match what the code generates.

use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf()
}

fn sample(name: &str) -> opengauss_crd::OpenGaussCluster {
    let text = std::fs::read_to_string(repo().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    opengauss_crd::parse_cluster(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn deploy_crds_matches_opengauss_operator_crd() {
    let path = repo().join("deploy/crds/opengaussclusters.ha.opengauss.dev.yaml");
    let checked_in = std::fs::read_to_string(&path).expect("deploy/crds file");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_opengauss-operator"))
        .arg("crd")
        .output()
        .expect("run crd");
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(generated, opengauss_crd::crd_yaml(), "the command prints the library's CRD");
    assert!(
        checked_in == generated,
        "{} is stale: run `make generate` (opengauss-operator crd > {})",
        path.display(),
        path.display()
    );
}

#[test]
fn samples_are_valid_clusters() {
    for name in ["deploy/samples/local.yaml", "deploy/samples/opengauss.yaml", "deploy/samples/postgres.yaml"]
    {
        assert_eq!(sample(name).spec.instances, 3, "{name}");
    }
    assert_eq!(
        sample("deploy/samples/local.yaml").spec.engine,
        opengauss_crd::Engine::Postgres,
        "local runs PostgreSQL"
    );
    assert_eq!(
        sample("deploy/samples/opengauss.yaml").spec.engine,
        opengauss_crd::Engine::OpenGauss,
        "Kubernetes sample runs openGauss"
    );
}
