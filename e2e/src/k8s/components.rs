//! The upstream binaries, built from the Go modules pinned under `e2e/k8s/components/` (each
//! a small module of the project's own: go.mod and go.sum name the versions, no upstream
//! source is copied). Each module's output is cached outside the checkout under a key made of
//! its go.mod, go.sum and own files plus the Go version, so a warm `up` builds nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use super::layout::KUBERNETES_VERSION;
use super::{Layout, Progress};
use crate::k8s::images::sha256_bytes;

/// One pinned Go module and what it builds.
#[derive(Debug, Clone, Copy)]
pub struct Module {
    /// Directory under `e2e/k8s/components/`.
    pub dir: &'static str,
    /// (package, binary name)
    pub binaries: &'static [(&'static str, &'static str)],
    /// Whether the binaries carry the Kubernetes version stamp.
    pub kubernetes_version: bool,
}

pub const MODULES: &[Module] = &[
    Module {
        dir: "kubernetes",
        binaries: &[
            ("k8s.io/kubernetes/cmd/kube-apiserver", "kube-apiserver"),
            ("k8s.io/kubernetes/cmd/kube-controller-manager", "kube-controller-manager"),
            ("k8s.io/kubernetes/cmd/kube-scheduler", "kube-scheduler"),
            ("k8s.io/kubernetes/cmd/kubelet", "kubelet"),
            ("k8s.io/kubernetes/cmd/kube-proxy", "kube-proxy"),
            ("k8s.io/kubernetes/cmd/kubectl", "kubectl"),
        ],
        kubernetes_version: true,
    },
    Module { dir: "etcd", binaries: &[("go.etcd.io/etcd/server/v3", "etcd")], kubernetes_version: false },
    Module { dir: "coredns", binaries: &[(".", "coredns")], kubernetes_version: false },
    Module {
        dir: "local-path-provisioner",
        binaries: &[("github.com/rancher/local-path-provisioner", "local-path-provisioner")],
        kubernetes_version: false,
    },
    Module {
        dir: "cri-tools",
        binaries: &[("sigs.k8s.io/cri-tools/cmd/crictl", "crictl")],
        kubernetes_version: false,
    },
];

/// Where the built binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    dirs: Vec<(&'static str, PathBuf)>,
}

impl Binaries {
    /// The path of `name`, built by one of the modules.
    pub fn path(&self, name: &str) -> PathBuf {
        for (module, dir) in &self.dirs {
            let m = MODULES.iter().find(|m| m.dir == *module).expect("known module");
            if m.binaries.iter().any(|(_, b)| *b == name) {
                return dir.join(name);
            }
        }
        panic!("no module builds {name}")
    }

    /// The directory of `kubectl` and friends, for PATH.
    pub fn kubernetes_dir(&self) -> PathBuf {
        self.path("kubectl").parent().expect("a directory").to_path_buf()
    }
}

fn go_version() -> anyhow::Result<String> {
    let out = Command::new("go")
        .arg("version")
        .output()
        .context("running `go version`: the real-cluster tier builds its components with Go")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The ldflags that stamp the Kubernetes version into its binaries (without them they report
/// `v0.0.0-master`, which clients parse).
fn version_ldflags() -> String {
    let (major, minor) = {
        let mut parts = KUBERNETES_VERSION.trim_start_matches('v').split('.');
        (parts.next().unwrap_or("1").to_string(), parts.next().unwrap_or("0").to_string())
    };
    let mut flags = String::from("-s -w");
    for package in ["k8s.io/component-base/version", "k8s.io/client-go/pkg/version"] {
        for (var, value) in [
            ("gitVersion", KUBERNETES_VERSION),
            ("gitMajor", major.as_str()),
            ("gitMinor", minor.as_str()),
            ("gitTreeState", "clean"),
            ("buildDate", "1970-01-01T00:00:00Z"),
        ] {
            flags.push_str(&format!(" -X {package}.{var}={value}"));
        }
    }
    flags
}

/// The cache key of a module: its files' contents, the Go version and the flags.
fn module_key(dir: &Path, go: &str, ldflags: &str) -> anyhow::Result<String> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    let mut material = format!("{go}\n{ldflags}\n").into_bytes();
    for name in names {
        material.extend_from_slice(name.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
        material.extend_from_slice(&std::fs::read(&name)?);
    }
    Ok(sha256_bytes(&material)[..16].to_string())
}

/// Where each module's binaries go, and whether they are there.
fn planned(layout: &Layout) -> anyhow::Result<Vec<(&'static Module, PathBuf, String, bool)>> {
    let go = go_version()?;
    MODULES
        .iter()
        .map(|module| {
            let source = layout.workspace.join("e2e/k8s/components").join(module.dir);
            let ldflags = if module.kubernetes_version { version_ldflags() } else { "-s -w".to_string() };
            let key = module_key(&source, &go, &ldflags)?;
            let out = layout.bin_cache().join(format!("{}-{key}", module.dir));
            let built = out.join(".complete").exists();
            Ok((module, out, ldflags, built))
        })
        .collect()
}

/// The binaries already in the cache, if every module's are (builds nothing).
pub fn cached(layout: &Layout) -> Option<Binaries> {
    let plan = planned(layout).ok()?;
    plan.iter()
        .all(|(_, _, _, built)| *built)
        .then(|| Binaries { dirs: plan.into_iter().map(|(m, out, _, _)| (m.dir, out)).collect() })
}

/// Builds every module whose binaries are not cached yet.
pub fn build(layout: &Layout, progress: &Progress) -> anyhow::Result<Binaries> {
    let mut dirs = Vec::new();
    for (module, out, ldflags, built) in planned(layout)? {
        if !built {
            let source = layout.workspace.join("e2e/k8s/components").join(module.dir);
            progress.step(&format!("building {} (Go, cached after)", module.dir), || {
                build_module(module, &source, &out, &ldflags)
            })?;
            std::fs::write(out.join(".complete"), "")?;
        }
        dirs.push((module.dir, out));
    }
    Ok(Binaries { dirs })
}

fn build_module(module: &Module, source: &Path, out: &Path, ldflags: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let mut cmd = Command::new("go");
    cmd.current_dir(source)
        .args(["build", "-trimpath", "-tags", "selinux,notest", "-ldflags"])
        .arg(ldflags)
        // Static binaries: nothing of this machine's C libraries is linked in.
        .env("CGO_ENABLED", "0")
        .stdin(Stdio::null());
    match module.binaries {
        // `-o DIR/` would name a single binary after its package (`v3` for etcd).
        [(_, name)] => cmd.arg("-o").arg(out.join(name)),
        _ => cmd.arg("-o").arg(format!("{}/", out.display())),
    };
    cmd.args(module.binaries.iter().map(|(package, _)| *package));
    let output = cmd.output().with_context(|| format!("running go build for {}", module.dir))?;
    if !output.status.success() {
        bail!(
            "go build of {} failed ({}):\n{}",
            module.dir,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for (_, name) in module.binaries {
        if !out.join(name).exists() {
            bail!("go build of {} did not produce {name}", module.dir);
        }
    }
    Ok(())
}
