//! Bad input: each gets a clear error naming the problem, a non-zero exit, no panic, and
//! nothing is deleted or left half-created.

use std::net::TcpListener;
use std::process::Output;
use std::time::Duration;

use opengauss_e2e::{LocalCluster, postgres_available};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a refused command: non-zero exit, no panic, and the message contains `needle`.
fn assert_refused(out: &Output, needle: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "expected failure, got success; stderr: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert!(err.contains(needle), "error should mention {needle:?}, got: {err}");
}

fn up_with(c: &LocalCluster, yaml: &str) -> Output {
    std::fs::write(&c.file, yaml).expect("write cluster file");
    let args = c.up_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    c.cli(&args)
}

#[test]
fn malformed_yaml_is_refused_with_its_position() {
    let c = LocalCluster::new("badyaml", 3, "");
    let out = up_with(
        &c,
        "apiVersion: ha.opengauss.dev/v1alpha1\nkind: OpenGaussCluster\nmetadata: {name: demo\nspec: {}\n",
    );
    assert_refused(&out, "malformed YAML");
    assert!(stderr(&out).contains("line"), "{}", stderr(&out));
    assert!(!c.state_dir.exists(), "nothing created for a bad file");
}

#[test]
fn zero_instances_is_refused() {
    let c = LocalCluster::new("zero", 3, "");
    let yaml = opengauss_e2e::cluster::cluster_yaml("demo", 0, "");
    assert_refused(&up_with(&c, &yaml), "spec.instances: must be between 1 and 9, got 0");
    assert!(!c.state_dir.exists());
}

#[test]
fn unknown_engine_is_refused() {
    let c = LocalCluster::new("engine", 3, "");
    let yaml =
        opengauss_e2e::cluster::cluster_yaml("demo", 3, "").replace("engine: postgres", "engine: mysql");
    let out = up_with(&c, &yaml);
    assert_refused(&out, "spec.engine");
    assert!(stderr(&out).contains("mysql") && stderr(&out).contains("openGauss"), "{}", stderr(&out));
    assert!(!c.state_dir.exists());
}

#[test]
fn missing_file_is_named() {
    let c = LocalCluster::new("nofile", 3, "");
    let out = c.cli(&["local", "up", "-f", "/nonexistent/cluster.yaml"]);
    assert_refused(&out, "/nonexistent/cluster.yaml");
}

#[test]
fn a_base_port_in_use_is_refused() {
    let c = LocalCluster::new("portbusy", 3, "");
    let busy = c.ports.base + 1;
    let _holder = TcpListener::bind(("127.0.0.1", busy)).expect("occupy a port");
    let out = up_with(&c, &opengauss_e2e::cluster::cluster_yaml("demo", 3, ""));
    assert_refused(&out, &format!("port {busy} (for instance demo-1) is not available"));
    assert!(!c.state_dir.exists(), "nothing created when a port is taken");
}

#[test]
fn impossible_base_ports_are_refused_up_front() {
    let c = LocalCluster::new("badport", 3, "");
    std::fs::write(&c.file, opengauss_e2e::cluster::cluster_yaml("demo", 3, "")).expect("write");
    let file = c.file.display().to_string();
    let dir = c.state_dir.display().to_string();
    for (port, needle) in
        [("0", "--base-port 0 is not usable"), ("80", "--base-port 80 is a privileged port")]
    {
        let out = c.cli(&["local", "up", "-f", &file, "--state-dir", &dir, "--base-port", port]);
        assert_refused(&out, needle);
        assert!(!c.state_dir.exists(), "nothing created for --base-port {port}");
    }
}

/// The databases run as an unprivileged user (PostgreSQL refuses root): a state directory that
/// user cannot reach is refused before any secret or password file is written.
#[test]
fn an_unreachable_state_directory_is_refused_before_anything_is_written() {
    use std::os::unix::fs::PermissionsExt;
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: only a root `local up` hands the instances to another user"
    );
    let c = LocalCluster::new("private", 3, "");
    let private = c.root().join("private");
    std::fs::create_dir_all(&private).expect("mkdir");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::fs::write(&c.file, opengauss_e2e::cluster::cluster_yaml("demo", 3, "")).expect("write");
    let state = private.join("state");
    let out = c.cli(&[
        "local",
        "up",
        "-f",
        &c.file.display().to_string(),
        "--state-dir",
        &state.display().to_string(),
        "--base-port",
        &c.ports.base.to_string(),
    ]);
    assert_refused(&out, "is not searchable by other users");
    assert!(!state.exists(), "nothing written: {:?}", std::fs::read_dir(&state).map(|d| d.count()));
}

#[test]
fn missing_postgres_binaries_are_refused() {
    let c = LocalCluster::new("nobin", 3, "");
    let empty = c.root().join("empty-bin");
    std::fs::create_dir_all(&empty).expect("mkdir");
    std::fs::write(&c.file, opengauss_e2e::cluster::cluster_yaml("demo", 3, "")).expect("write");
    let mut args = c.up_args();
    args.extend(["--bin-dir".into(), empty.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = c.cli(&args);
    assert_refused(&out, "lacks the postgres programs");
    assert!(stderr(&out).contains("initdb") && stderr(&out).contains("pg_rewind"), "{}", stderr(&out));
    assert!(!c.state_dir.exists());
}

#[test]
fn a_non_empty_foreign_directory_is_never_used() {
    let c = LocalCluster::new("foreign", 3, "");
    std::fs::create_dir_all(&c.state_dir).expect("mkdir");
    std::fs::write(c.state_dir.join("precious.txt"), "keep me").expect("write");
    let out = up_with(&c, &opengauss_e2e::cluster::cluster_yaml("demo", 3, ""));
    assert_refused(&out, "is not a cluster state directory");
    assert_eq!(std::fs::read_to_string(c.state_dir.join("precious.txt")).expect("kept"), "keep me");
}

/// A state directory holding another cluster, and a second `up` of a running cluster, are both
/// refused without touching the data.
#[tokio::test(flavor = "multi_thread")]
async fn another_clusters_state_dir_and_a_second_up_are_refused() {
    assert!(postgres_available(), "needs the PostgreSQL server binaries");
    let mut c = LocalCluster::new("owned", 2, "");
    c.start();
    c.wait_healthy(Duration::from_secs(90)).await.expect("healthy");
    let identity = std::fs::read_to_string(c.state_dir.join("identity.json")).expect("identity");

    let again = c.cli(&c.up_args().iter().map(String::as_str).collect::<Vec<_>>());
    assert_refused(&again, "already running");

    let other = c.root().join("other.yaml");
    std::fs::write(&other, opengauss_e2e::cluster::cluster_yaml("other", 2, "")).expect("write");
    let dir = c.state_dir.display().to_string();
    let other_base = (c.ports.base + 8).to_string();
    let out = c.cli(&[
        "local",
        "up",
        "-f",
        &other.display().to_string(),
        "--state-dir",
        &dir,
        "--base-port",
        &other_base,
    ]);
    assert_refused(&out, "belongs to cluster \"demo\", not \"other\"");

    assert_eq!(std::fs::read_to_string(c.state_dir.join("identity.json")).expect("identity"), identity);
    let status = c.wait_healthy(Duration::from_secs(30)).await.expect("still healthy");
    assert_eq!(status.ready_instances, 2);
    assert!(c.down().status.success());
    for k in 0..2 {
        assert!(c.instance_dir(&c.instance(k)).join("data/PG_VERSION").exists(), "data kept");
    }
}

#[test]
fn status_of_an_unknown_directory_is_explained() {
    let c = LocalCluster::new("nostatus", 3, "");
    let out = c.cli(&["local", "status", "--state-dir", "/nonexistent/state"]);
    assert_refused(&out, "holds no cluster");
    let out = c.cli(&["local", "down", "--state-dir", "/nonexistent/state", "--purge"]);
    assert_refused(&out, "holds no cluster");
}
