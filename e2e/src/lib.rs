//! End-to-end harness for the local platform on a real PostgreSQL server: a cluster per test,
//! with its own ports and state directory, driven through the `opengauss-operator` binary
//! exactly as users drive it, and cleaned up by PID when the test ends.

pub mod checks;
pub mod cluster;
pub mod k8s;
pub mod kube;
pub mod netlab;
pub mod partition;
pub mod pg;
pub mod ports;
pub mod wait;
pub mod witness;
pub mod writer;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

pub use cluster::{LocalCluster, OpenGaussInstall};

/// The checkout this crate belongs to.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The `opengauss-operator` binary, built once per test process.
pub fn operator_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(explicit) = std::env::var_os("OPENGAUSS_OPERATOR_BIN") {
            return PathBuf::from(explicit);
        }
        let workspace = workspace();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        // The test runner's CARGO_* variables would change build-script fingerprints and make
        // this build and the next test build undo each other's work.
        let mut build = Command::new(cargo);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            let keep = matches!(key.as_ref(), "CARGO_HOME" | "CARGO_TARGET_DIR");
            if (key.starts_with("CARGO_") || key.starts_with("NEXTEST") || key == "OUT_DIR") && !keep {
                build.env_remove(key.as_ref());
            }
        }
        let status = build
            .args(["build", "--quiet", "--workspace", "--all-targets"])
            .current_dir(&workspace)
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building opengauss-operator failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target"));
        target.join("debug").join("opengauss-operator")
    })
    .clone()
}

/// Whether PostgreSQL server binaries exist here; real-database tests need them.
pub fn postgres_available() -> bool {
    opengauss_operator::platform::local::binaries::find_bin_dir(opengauss_crd::Engine::Postgres, None).is_ok()
}
