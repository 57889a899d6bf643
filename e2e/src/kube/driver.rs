//! One driver per environment the Kubernetes scenarios run in; the scenarios themselves are
//! the same everywhere.
//!
//! - `Node`: the project's own one-node cluster from upstream parts (`make k8s-up`, see
//!   `crate::k8s`). Its images are imported locally, so the samples run with the PostgreSQL
//!   image it built (`localhost/postgres:15-bookworm`); openGauss has no image here.
//! - `Kind`: a kind cluster in Docker (`make e2e-kind`): `kind create cluster`, `docker build`
//!   of the operator image, `kind load`, `kubectl apply -k deploy/`; nodes pull the samples'
//!   database images themselves.
//!
//! `OPENGAUSS_E2E_CLUSTER` chooses (`node`, the default, or `kind`).

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, bail};
use opengauss_crd::Engine;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::k8s::images::Images;
use crate::k8s::node::{OPERATOR_DEPLOYMENT, OPERATOR_NAMESPACE};
use crate::k8s::{Layout, components};

/// The project's one-node cluster.
#[derive(Debug, Clone)]
pub struct NodeDriver {
    pub layout: Layout,
    pub kubectl: PathBuf,
    pub images: Images,
}

/// A kind cluster.
#[derive(Debug, Clone)]
pub struct KindDriver {
    /// kind cluster name (`OPENGAUSS_E2E_KIND_CLUSTER`, default `opengauss`).
    pub cluster: String,
    /// Operator image (`OPENGAUSS_E2E_IMAGE`, default `opengauss-operator:dev`).
    pub image: String,
}

#[derive(Debug, Clone)]
pub enum Driver {
    Node(NodeDriver),
    Kind(KindDriver),
}

/// Output of a command, failing with what it said when it fails.
pub async fn output(mut cmd: Command, what: &str, stdin: Option<&[u8]>) -> anyhow::Result<String> {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("running {what} (is it installed?)"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input).await?;
        drop(pipe);
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Driver {
    /// The driver `OPENGAUSS_E2E_CLUSTER` names.
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var("OPENGAUSS_E2E_CLUSTER").as_deref() {
            Ok("kind") => Ok(Self::Kind(KindDriver {
                cluster: std::env::var("OPENGAUSS_E2E_KIND_CLUSTER").unwrap_or_else(|_| "opengauss".into()),
                image: std::env::var("OPENGAUSS_E2E_IMAGE")
                    .unwrap_or_else(|_| "opengauss-operator:dev".into()),
            })),
            Ok("node") | Err(_) => {
                let layout = Layout::of_this_checkout();
                if !layout.kubeconfig().exists() {
                    bail!(
                        "the one-node cluster is not up ({} is missing): run `make k8s-up`",
                        layout.kubeconfig().display()
                    );
                }
                let bins = components::cached(&layout)
                    .context("the node's binaries are not built: run `make k8s-up`")?;
                let images = Images::read(&layout)?;
                Ok(Self::Node(NodeDriver { kubectl: bins.path("kubectl"), images, layout }))
            }
            Ok(other) => bail!("OPENGAUSS_E2E_CLUSTER={other}: expected `node` or `kind`"),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Node(_) => "node",
            Self::Kind(_) => "kind",
        }
    }

    /// A `kubectl` command aimed at this cluster.
    pub fn kubectl_command(&self) -> Command {
        match self {
            Self::Node(n) => {
                let mut cmd = Command::new(&n.kubectl);
                cmd.env("KUBECONFIG", n.layout.kubeconfig());
                cmd
            }
            Self::Kind(k) => {
                let mut cmd = Command::new("kubectl");
                cmd.arg("--context").arg(format!("kind-{}", k.cluster));
                cmd
            }
        }
    }

    pub async fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = self.kubectl_command();
        cmd.args(args);
        output(cmd, &format!("kubectl {}", args.join(" ")), None).await
    }

    /// `kubectl ARGS` with `input` on its standard input.
    pub async fn kubectl_with_input(&self, args: &[&str], input: &[u8]) -> anyhow::Result<String> {
        let mut cmd = self.kubectl_command();
        cmd.args(args);
        output(cmd, &format!("kubectl {}", args.join(" ")), Some(input)).await
    }

    /// Environment for other clients of the API (the kubectl plugin): its kubeconfig, and a
    /// PATH where `kubectl` is this cluster's.
    pub fn client_env(&self) -> Vec<(String, String)> {
        match self {
            Self::Node(n) => {
                let dir = n.kubectl.parent().map(|d| d.display().to_string()).unwrap_or_default();
                let path = format!("{dir}:{}", std::env::var("PATH").unwrap_or_default());
                vec![
                    ("KUBECONFIG".into(), n.layout.kubeconfig().display().to_string()),
                    ("PATH".into(), path),
                ]
            }
            Self::Kind(_) => vec![],
        }
    }

    /// The database image a sample must use here instead of its own, if any; an error when
    /// this environment has none for `engine`.
    pub fn database_image(&self, engine: Engine) -> anyhow::Result<Option<String>> {
        match (self, engine) {
            (Self::Node(n), Engine::Postgres) => Ok(Some(n.images.postgres.clone())),
            (Self::Node(_), Engine::OpenGauss) => bail!(
                "no openGauss image exists on this machine (no registry has it, and the project does not build one): \
                 run the openGauss scenarios on kind (make e2e-kind)"
            ),
            (Self::Kind(_), _) => Ok(None),
        }
    }

    /// Another image of the same engine and major version, for a scenario that changes
    /// `image`: on the one-node cluster the PostgreSQL image imported under a second name.
    pub fn alternate_database_image(&self, engine: Engine) -> Option<String> {
        match (self, engine) {
            (Self::Node(n), Engine::Postgres) => Some(n.images.postgres_alias.clone()),
            (Self::Kind(_), Engine::Postgres) => Some("postgres:17-bookworm".into()),
            _ => None,
        }
    }

    /// Fits a sample to this environment: the one-node cluster has two cores, where the
    /// samples' half a core per instance would leave a five-instance cluster unschedulable.
    pub fn fit_sample(&self, object: &mut serde_json::Value) {
        if let Self::Node(_) = self {
            object["spec"]["resources"]["requests"] = serde_json::json!({ "cpu": "100m", "memory": "256Mi" });
        }
    }

    /// Everything a scenario needs before it applies a cluster: the operator deployed and
    /// ready.
    pub async fn prepare(&self) -> anyhow::Result<()> {
        match self {
            Self::Node(_) => {}
            Self::Kind(k) => k.ensure_cluster_and_operator(self).await?,
        }
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/opengaussclusters.ha.opengauss.dev",
        ])
        .await?;
        let deployment = format!("deployment/{OPERATOR_DEPLOYMENT}");
        self.kubectl(&["-n", OPERATOR_NAMESPACE, "rollout", "status", &deployment, "--timeout=180s"]).await?;
        Ok(())
    }
}

impl Driver {
    /// Kills every process of `pod`'s `container` from the node, the pod left in place: the
    /// container's first process (the instance manager, its PID namespace's init) gets
    /// SIGKILL, which ends every process of the container; the kubelet then restarts it.
    pub async fn kill_container(
        &self,
        c: &super::KubeCluster,
        pod: &str,
        container: &str,
    ) -> anyhow::Result<()> {
        self.signal_container(c, pod, container, "KILL", false).await
    }

    /// Stops (`SIGSTOP`) or continues (`SIGCONT`) every process of `pod`'s `container`, as a
    /// frozen machine would be: the kernel still accepts its connections, nothing answers.
    pub async fn freeze_container(
        &self,
        c: &super::KubeCluster,
        pod: &str,
        container: &str,
        frozen: bool,
    ) -> anyhow::Result<()> {
        self.signal_container(c, pod, container, if frozen { "STOP" } else { "CONT" }, true).await
    }

    /// Sends `signal` to the container's first process, or (`all`) to every process in its
    /// PID namespace, from the node.
    async fn signal_container(
        &self,
        c: &super::KubeCluster,
        pod: &str,
        container: &str,
        signal: &str,
        all: bool,
    ) -> anyhow::Result<()> {
        let jsonpath =
            format!("jsonpath={{.status.containerStatuses[?(@.name==\"{container}\")].containerID}}");
        let id = c.kubectl(&["get", "pod", pod, "-o", &jsonpath]).await?;
        let id = id
            .trim()
            .strip_prefix("containerd://")
            .with_context(|| format!("{pod}'s {container} container id: {id:?}"))?;
        let pid_file = |state: &str| format!("{state}/io.containerd.runtime.v2.task/k8s.io/{id}/init.pid");
        // Every process whose PID namespace is the container's first process's.
        let script = |pid_file: String| {
            let targets = if all {
                "ns=$(readlink /proc/$init/ns/pid); for p in /proc/[0-9]*; do [ \"$(readlink $p/ns/pid 2>/dev/null)\" = \"$ns\" ] && echo ${p#/proc/}; done"
            } else {
                "echo $init"
            };
            format!("init=$(cat {pid_file}) && kill -{signal} $({targets})")
        };
        match self {
            Self::Node(n) => {
                let state = n.layout.containerd_state().display().to_string();
                let mut cmd = Command::new("sh");
                cmd.args(["-c", &script(pid_file(&state))]);
                output(cmd, &format!("signalling {pod}'s {container} with SIG{signal}"), None).await.map(drop)
            }
            Self::Kind(k) => {
                let node = c.kubectl(&["get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"]).await?;
                k.run("docker", &["exec", node.trim(), "sh", "-c", &script(pid_file("/run/containerd"))])
                    .await
                    .map(drop)
            }
        }
    }
}

impl KindDriver {
    async fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(program);
        cmd.args(args).current_dir(crate::workspace());
        output(cmd, &format!("{program} {}", args.join(" ")), None).await
    }

    /// Creates the kind cluster unless it exists, builds and loads the operator image
    /// (`OPENGAUSS_E2E_SKIP_BUILD=1` skips that), and deploys the operator with
    /// `kubectl apply -k deploy/`.
    async fn ensure_cluster_and_operator(&self, driver: &Driver) -> anyhow::Result<()> {
        let clusters = self.run("kind", &["get", "clusters"]).await?;
        if !clusters.lines().any(|l| l.trim() == self.cluster) {
            let config = "deploy/kind/cluster.yaml";
            self.run(
                "kind",
                &["create", "cluster", "--name", &self.cluster, "--config", config, "--wait", "180s"],
            )
            .await?;
        }
        if std::env::var_os("OPENGAUSS_E2E_SKIP_BUILD").is_none() {
            self.run("docker", &["build", "-t", &self.image, "."]).await?;
            self.run("kind", &["load", "docker-image", &self.image, "--name", &self.cluster]).await?;
        }
        let deploy = crate::workspace().join("deploy").display().to_string();
        driver.kubectl(&["apply", "-k", &deploy]).await?;
        if self.image != "opengauss-operator:dev" {
            let image = format!("operator={}", self.image);
            let deployment = format!("deployment/{OPERATOR_DEPLOYMENT}");
            driver.kubectl(&["-n", OPERATOR_NAMESPACE, "set", "image", &deployment, &image]).await?;
        }
        Ok(())
    }
}
