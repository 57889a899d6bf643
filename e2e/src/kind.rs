//! The kind end-to-end suite, and the database checks it shares with the local platform.
//!
//! The checks (`checks`) are the original Docker deployment's, run through SQL: replication
//! rows on the primary, a write on the primary read back on every standby, a write on a
//! standby refused, replication lag in bytes. They are written once against `SqlCluster`, which
//! both a local cluster (tokio-postgres over TCP) and a kind cluster (`psql`/`gsql` over the
//! pod's Unix socket through `kubectl exec`: openGauss refuses remote password logins of its
//! initial user, and its SHA256 method is beyond tokio-postgres) implement.
//!
//! `KindEnv` drives a kind cluster the way a user does: `kind create cluster` with
//! deploy/kind/cluster.yaml, `docker build` of the operator image, `kind load docker-image`,
//! `kubectl apply` of deploy/, then of a sample. It needs Docker, kind, kubectl and internet
//! (the database images are pulled by the kind nodes).

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use opengauss_crd::{Engine, OpenGaussClusterStatus, Phase, Role};
use tokio::process::Command;

use crate::LocalCluster;
use crate::wait::{Probe, until};

/// A table of text values (NULL as `None`).
pub type Rows = Vec<Vec<Option<String>>>;

/// A cluster whose instances can be queried by name.
pub trait SqlCluster: Sync {
    fn engine(&self) -> Engine;
    fn instance_names(&self) -> Vec<String>;
    /// Runs one query on `instance` and returns its rows as text.
    fn query(&self, instance: &str, sql: &str) -> impl Future<Output = anyhow::Result<Rows>> + Send;
    /// Runs statements on `instance`; an error carries the server's message.
    fn execute(&self, instance: &str, sql: &str) -> impl Future<Output = Result<(), String>> + Send;
}

impl SqlCluster for LocalCluster {
    fn engine(&self) -> Engine {
        Engine::Postgres
    }

    fn instance_names(&self) -> Vec<String> {
        (0..self.instances).map(|k| self.instance(k)).collect()
    }

    async fn query(&self, instance: &str, sql: &str) -> anyhow::Result<Rows> {
        let client = self.connect(instance).await?;
        let messages = client.simple_query(sql).await.with_context(|| format!("{sql} on {instance}"))?;
        Ok(messages
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(String::from)).collect())
                }
                _ => None,
            })
            .collect())
    }

    async fn execute(&self, instance: &str, sql: &str) -> Result<(), String> {
        let client = self.connect(instance).await.map_err(|e| format!("{e:#}"))?;
        client.batch_execute(sql).await.map_err(|e| match e.as_db_error() {
            Some(db) => db.message().to_string(),
            None => e.to_string(),
        })
    }
}

/// The database checks of the original deployment, for any `SqlCluster`.
pub mod checks {
    use super::*;

    /// Instances that are not in recovery.
    pub async fn writable_instances<C: SqlCluster>(c: &C) -> Vec<String> {
        let mut out = Vec::new();
        for name in c.instance_names() {
            if let Ok(rows) = c.query(&name, "SELECT pg_is_in_recovery()").await
                && rows.first().and_then(|r| r[0].as_deref()).is_some_and(|v| v == "f" || v == "false")
            {
                out.push(name);
            }
        }
        out
    }

    /// The primary's replication rows: (instance, state, sync state), lower case.
    pub async fn replication_rows<C: SqlCluster>(
        c: &C,
        primary: &str,
    ) -> anyhow::Result<Vec<(String, String, String)>> {
        let dialect = opengauss_operator::engine::dialect(c.engine());
        let rows =
            c.query(primary, "SELECT application_name, state, sync_state FROM pg_stat_replication").await?;
        let mut out: Vec<(String, String, String)> = rows
            .into_iter()
            .map(|r| {
                let app = r[0].clone().unwrap_or_default();
                // openGauss names its WAL senders `WalSender to Standby[<node name>]`.
                let node = app
                    .rsplit_once('[')
                    .and_then(|(_, rest)| rest.strip_suffix(']'))
                    .map(String::from)
                    .unwrap_or(app);
                let lower = |v: &Option<String>| v.clone().unwrap_or_default().to_lowercase();
                (dialect.instance_of(&node), lower(&r[1]), lower(&r[2]))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Every standby streams from the primary, at least one of them synchronously.
    pub async fn check_replication<C: SqlCluster>(
        c: &C,
        primary: &str,
        standbys: &[String],
    ) -> anyhow::Result<()> {
        let rows = replication_rows(c, primary).await?;
        let names: Vec<&String> = rows.iter().map(|r| &r.0).collect();
        let mut want: Vec<&String> = standbys.iter().collect();
        want.sort();
        if names != want {
            bail!("replication rows on {primary} name {names:?}, expected {want:?}");
        }
        // openGauss reports a streaming sender as `streaming` too (its `Normal` is the receiver's).
        if let Some(r) = rows.iter().find(|r| r.1 != "streaming") {
            bail!("{} is {:?}, not streaming", r.0, r.1);
        }
        if !rows.iter().any(|r| matches!(r.2.as_str(), "sync" | "quorum" | "potential")) {
            bail!("no synchronous standby among {rows:?}");
        }
        Ok(())
    }

    /// A row written on the primary is read back on every standby.
    pub async fn check_write_then_read<C: SqlCluster>(
        c: &C,
        primary: &str,
        standbys: &[String],
        table: &str,
        note: &str,
    ) -> anyhow::Result<()> {
        c.execute(primary, &format!("CREATE TABLE IF NOT EXISTS {table} (id int PRIMARY KEY, note text)"))
            .await
            .map_err(|e| anyhow::anyhow!("create table on {primary}: {e}"))?;
        c.execute(primary, &format!("INSERT INTO {table} VALUES (1, '{note}')"))
            .await
            .map_err(|e| anyhow::anyhow!("write on {primary}: {e}"))?;
        for s in standbys {
            let sql = format!("SELECT note FROM {table} WHERE id = 1");
            let what = format!("the row written on {primary} to reach {s}");
            until(&what, Duration::from_secs(30), Duration::from_millis(200), || async {
                match c.query(s, &sql).await {
                    Ok(rows) if rows.first().and_then(|r| r[0].as_deref()) == Some(note) => Probe::Done(()),
                    other => Probe::NotYet(format!("{other:?}")),
                }
            })
            .await?;
        }
        Ok(())
    }

    /// A standby refuses writes.
    pub async fn check_standby_refuses_writes<C: SqlCluster>(
        c: &C,
        standby: &str,
        table: &str,
    ) -> anyhow::Result<()> {
        match c.execute(standby, &format!("INSERT INTO {table} VALUES (2, 'from a standby')")).await {
            Ok(()) => bail!("{standby} accepted a write"),
            Err(e) if e.contains("read-only transaction") => Ok(()),
            Err(e) => bail!("{standby} refused the write, but not as a standby would: {e}"),
        }
    }

    /// Replication lag in bytes per standby, as the primary sees it.
    pub async fn lag_bytes<C: SqlCluster>(c: &C, primary: &str) -> anyhow::Result<Vec<(String, u64)>> {
        let sql = match c.engine() {
            Engine::Postgres => {
                "SELECT application_name, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint FROM pg_stat_replication"
            }
            Engine::OpenGauss => {
                "SELECT application_name, pg_xlog_location_diff(pg_current_xlog_location(), receiver_replay_location)::bigint FROM pg_stat_replication"
            }
        };
        let rows = c.query(primary, sql).await?;
        rows.into_iter()
            .map(|r| {
                let lag = r[1].as_deref().unwrap_or("").parse::<i64>().context("lag is a number")?;
                Ok((r[0].clone().unwrap_or_default(), u64::try_from(lag.max(0)).unwrap_or(0)))
            })
            .collect()
    }

    /// Everything the original deployment checked by hand, on a cluster whose primary is
    /// `primary`; `table` must be new.
    pub async fn original_deployment_checks<C: SqlCluster>(
        c: &C,
        primary: &str,
        table: &str,
    ) -> anyhow::Result<()> {
        let writable = writable_instances(c).await;
        if writable != [primary.to_string()] {
            bail!("exactly {primary} should accept writes, found {writable:?}");
        }
        let standbys: Vec<String> = c.instance_names().into_iter().filter(|n| n != primary).collect();
        check_replication(c, primary, &standbys).await?;
        check_write_then_read(c, primary, &standbys, table, "from the primary").await?;
        for s in &standbys {
            check_standby_refuses_writes(c, s, table).await?;
        }
        let lag = lag_bytes(c, primary).await?;
        if lag.len() != standbys.len() {
            bail!("lag reported for {lag:?}, expected {} standbys", standbys.len());
        }
        if let Some((name, bytes)) = lag.iter().find(|(_, b)| *b >= 64 * 1024 * 1024) {
            bail!("{name} lags {bytes} bytes behind");
        }
        Ok(())
    }
}

// -------------------------------------------------------------------------------------------
// kind

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

async fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(workspace())
        .output()
        .await
        .with_context(|| format!("running {program} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The kind cluster and operator image the suite uses.
#[derive(Clone, Debug)]
pub struct KindEnv {
    /// kind cluster name (`OPENGAUSS_E2E_KIND_CLUSTER`, default `opengauss`).
    pub cluster: String,
    /// Operator image (`OPENGAUSS_E2E_IMAGE`, default `opengauss-operator:dev`).
    pub image: String,
}

pub const OPERATOR_NAMESPACE: &str = "opengauss-operator-system";

impl KindEnv {
    pub fn from_env() -> Self {
        Self {
            cluster: std::env::var("OPENGAUSS_E2E_KIND_CLUSTER").unwrap_or_else(|_| "opengauss".into()),
            image: std::env::var("OPENGAUSS_E2E_IMAGE").unwrap_or_else(|_| "opengauss-operator:dev".into()),
        }
    }

    pub fn context(&self) -> String {
        format!("kind-{}", self.cluster)
    }

    pub async fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let context = self.context();
        let mut all = vec!["--context", context.as_str()];
        all.extend_from_slice(args);
        run("kubectl", &all).await
    }

    /// Creates the kind cluster unless it exists, builds the operator image and loads it into
    /// the nodes (`OPENGAUSS_E2E_SKIP_BUILD=1` skips the build and load).
    pub async fn ensure_cluster(&self) -> anyhow::Result<()> {
        let clusters = run("kind", &["get", "clusters"]).await?;
        if !clusters.lines().any(|l| l.trim() == self.cluster) {
            run(
                "kind",
                &[
                    "create",
                    "cluster",
                    "--name",
                    &self.cluster,
                    "--config",
                    "deploy/kind/cluster.yaml",
                    "--wait",
                    "180s",
                ],
            )
            .await?;
        }
        if std::env::var_os("OPENGAUSS_E2E_SKIP_BUILD").is_none() {
            run("docker", &["build", "-t", &self.image, "."]).await?;
            run("kind", &["load", "docker-image", &self.image, "--name", &self.cluster]).await?;
        }
        Ok(())
    }

    /// `kubectl apply` of the CRD, RBAC and operator, as README says; waits for the rollout.
    pub async fn deploy_operator(&self) -> anyhow::Result<()> {
        self.kubectl(&["apply", "-f", "deploy/crds/", "-f", "deploy/rbac/", "-f", "deploy/operator/"])
            .await?;
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/opengaussclusters.ha.opengauss.dev",
        ])
        .await?;
        if self.image != "opengauss-operator:dev" {
            let image = format!("operator={}", self.image);
            self.kubectl(&[
                "-n",
                OPERATOR_NAMESPACE,
                "set",
                "image",
                "deployment/opengauss-operator",
                &image,
            ])
            .await?;
        }
        self.kubectl(&[
            "-n",
            OPERATOR_NAMESPACE,
            "rollout",
            "status",
            "deployment/opengauss-operator",
            "--timeout=180s",
        ])
        .await?;
        Ok(())
    }

    /// Everything a test needs before it applies a cluster.
    pub async fn prepare(&self) -> anyhow::Result<()> {
        self.ensure_cluster().await?;
        self.deploy_operator().await
    }
}

/// One `OpenGaussCluster` in its own namespace of the kind cluster.
#[derive(Debug)]
pub struct KindCluster {
    pub env: KindEnv,
    pub namespace: String,
    pub name: String,
    pub engine: Engine,
    pub instances: u32,
    pub port: u16,
}

impl KindCluster {
    /// Applies `sample` (a file under deploy/samples) in a fresh namespace.
    pub async fn apply(env: &KindEnv, sample: &str, namespace: &str) -> anyhow::Result<Self> {
        let path = workspace().join(sample);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let cluster = opengauss_crd::parse_cluster(&text)?;
        let _ = env.kubectl(&["delete", "namespace", namespace, "--wait=true", "--ignore-not-found"]).await;
        env.kubectl(&["create", "namespace", namespace]).await?;
        env.kubectl(&["-n", namespace, "apply", "-f", sample]).await?;
        Ok(Self {
            env: env.clone(),
            namespace: namespace.to_string(),
            name: cluster.metadata.name.clone().unwrap_or_default(),
            engine: cluster.spec.engine,
            instances: cluster.spec.instances,
            port: cluster.spec.port,
        })
    }

    pub async fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", self.namespace.as_str()];
        all.extend_from_slice(args);
        self.env.kubectl(&all).await
    }

    pub async fn status(&self) -> Option<OpenGaussClusterStatus> {
        let json =
            self.kubectl(&["get", "opengaussclusters", &self.name, "-o", "jsonpath={.status}"]).await.ok()?;
        serde_json::from_str(&json).ok()
    }

    /// Polls the status until `pred` holds.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&OpenGaussClusterStatus) -> bool,
    ) -> anyhow::Result<OpenGaussClusterStatus> {
        let waited = until(what, timeout, Duration::from_secs(2), || async {
            match self.status().await {
                Some(s) if pred(&s) => Probe::Done(s),
                other => Probe::NotYet(format!("{other:#?}")),
            }
        })
        .await;
        match waited {
            Ok(s) => Ok(s),
            Err(e) => {
                let pods = self.kubectl(&["get", "pods", "-o", "wide"]).await.unwrap_or_default();
                let events =
                    self.kubectl(&["get", "events", "--sort-by=.lastTimestamp"]).await.unwrap_or_default();
                Err(e.context(format!("pods:\n{pods}\nevents:\n{events}")))
            }
        }
    }

    /// Healthy with every instance ready and no transition.
    pub async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<OpenGaussClusterStatus> {
        let n = self.instances;
        self.wait_for("a healthy cluster", timeout, |s| {
            s.phase == Some(Phase::Healthy) && s.ready_instances == n && s.transition.is_none()
        })
        .await
    }

    /// The pods `<name>-rw` and `<name>-ro` select right now.
    pub async fn selected_by(&self, service_suffix: &str) -> anyhow::Result<Vec<String>> {
        let role = match service_suffix {
            "rw" => "primary",
            "ro" => "standby",
            other => bail!("no service -{other}"),
        };
        let selector = format!("ha.opengauss.dev/cluster={},ha.opengauss.dev/role={role}", self.name);
        let out = self
            .kubectl(&["get", "pods", "-l", &selector, "-o", "jsonpath={.items[*].metadata.name}"])
            .await?;
        Ok(out.split_whitespace().map(String::from).collect())
    }

    /// Waits until `<name>-<suffix>` selects exactly `pods` (labels follow the status within
    /// one pass).
    pub async fn wait_selected(
        &self,
        service_suffix: &str,
        pods: &[String],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let mut want = pods.to_vec();
        want.sort();
        let what = format!("{}-{service_suffix} to select {want:?}", self.name);
        until(&what, timeout, Duration::from_secs(1), || async {
            match self.selected_by(service_suffix).await {
                Ok(mut got) => {
                    got.sort();
                    if got == want { Probe::Done(()) } else { Probe::NotYet(format!("{got:?}")) }
                }
                Err(e) => Probe::NotYet(format!("{e:#}")),
            }
        })
        .await
    }

    pub async fn delete_pod(&self, pod: &str) -> anyhow::Result<()> {
        self.kubectl(&["delete", "pod", pod, "--wait=false"]).await.map(drop)
    }

    /// Deletes the cluster and waits until everything it owned is gone.
    pub async fn delete_and_check_cleanup(&self, timeout: Duration) -> anyhow::Result<()> {
        self.kubectl(&["delete", "opengaussclusters", &self.name, "--wait=true"]).await?;
        let selector = format!("ha.opengauss.dev/cluster={}", self.name);
        let kinds = "pods,persistentvolumeclaims,services,configmaps,secrets,poddisruptionbudgets";
        until("everything the cluster owned to go", timeout, Duration::from_secs(2), || async {
            match self.kubectl(&["get", kinds, "-l", &selector, "-o", "name"]).await {
                Ok(left) if left.trim().is_empty() => Probe::Done(()),
                Ok(left) => Probe::NotYet(format!("still there:\n{left}")),
                Err(e) => Probe::NotYet(format!("{e:#}")),
            }
        })
        .await
    }

    pub async fn delete_namespace(&self) {
        let _ = self.env.kubectl(&["delete", "namespace", &self.namespace, "--wait=false"]).await;
    }

    fn sql_command(&self, sql: &str) -> Vec<String> {
        let (client, user) = match self.engine {
            Engine::OpenGauss => ("gsql", "omm"),
            Engine::Postgres => ("psql", "postgres"),
        };
        [
            client,
            "-h",
            opengauss_operator::platform::kubernetes::builders::paths::SOCKET_DIR,
            "-p",
            &self.port.to_string(),
            "-U",
            user,
            "-d",
            "postgres",
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-F",
            "\u{1f}",
            "-c",
            sql,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    async fn exec_sql(&self, instance: &str, sql: &str) -> Result<String, String> {
        let context = self.env.context();
        let mut args: Vec<String> = [
            "--context",
            context.as_str(),
            "-n",
            self.namespace.as_str(),
            "exec",
            instance,
            "-c",
            "database",
            "--",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.sql_command(sql));
        let out = Command::new("kubectl").args(&args).output().await.map_err(|e| format!("kubectl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl SqlCluster for KindCluster {
    fn engine(&self) -> Engine {
        self.engine
    }

    fn instance_names(&self) -> Vec<String> {
        opengauss_crd::names::instance_names(&self.name, self.instances)
    }

    async fn query(&self, instance: &str, sql: &str) -> anyhow::Result<Rows> {
        let out =
            self.exec_sql(instance, sql).await.map_err(|e| anyhow::anyhow!("{sql} on {instance}: {e}"))?;
        Ok(out
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('\u{1f}').map(|v| (!v.is_empty()).then(|| v.to_string())).collect())
            .collect())
    }

    async fn execute(&self, instance: &str, sql: &str) -> Result<(), String> {
        self.exec_sql(instance, sql).await.map(drop)
    }
}

/// The whole lifecycle on kind: apply `sample`, wait until healthy, run the original
/// deployment's checks, delete the primary's pod and check failover and rejoin, delete the
/// cluster and check that everything it owned is gone.
pub async fn lifecycle(env: &KindEnv, sample: &str, namespace: &str, failover: bool) -> anyhow::Result<()> {
    let c = KindCluster::apply(env, sample, namespace).await?;
    let result = lifecycle_steps(&c, failover).await;
    if result.is_err() {
        c.delete_namespace().await;
    }
    result
}

async fn lifecycle_steps(c: &KindCluster, failover: bool) -> anyhow::Result<()> {
    // Image pulls on fresh kind nodes dominate the first start.
    let status = c.wait_healthy(Duration::from_secs(900)).await?;
    let primary = status.current_primary.clone().context("a healthy cluster has a primary")?;
    let standbys: Vec<String> = c.instance_names().into_iter().filter(|n| *n != primary).collect();
    c.wait_selected("rw", std::slice::from_ref(&primary), Duration::from_secs(30)).await?;
    c.wait_selected("ro", &standbys, Duration::from_secs(30)).await?;
    checks::original_deployment_checks(c, &primary, "checks").await?;

    if failover {
        c.delete_pod(&primary).await?;
        let after = c
            .wait_for("a new primary", Duration::from_secs(180), |s| {
                s.current_primary.as_deref().is_some_and(|p| p != primary) && s.transition.is_none()
            })
            .await?;
        let new_primary = after.current_primary.clone().context("primary")?;
        // The old primary's pod comes back on its volume and rejoins as a standby.
        let healthy = c.wait_healthy(Duration::from_secs(600)).await?;
        let old = healthy.instance(&primary).context("old primary listed")?;
        if old.role != Role::Standby || !old.ready {
            bail!("{primary} did not rejoin as a streaming standby: {old:?}");
        }
        c.wait_selected("rw", std::slice::from_ref(&new_primary), Duration::from_secs(30)).await?;
        // Data written before the failover survived it.
        let rows = c.query(&new_primary, "SELECT note FROM checks WHERE id = 1").await?;
        if rows.first().and_then(|r| r[0].as_deref()) != Some("from the primary") {
            bail!("the row written before the failover is gone: {rows:?}");
        }
        checks::original_deployment_checks(c, &new_primary, "checks_after_failover").await?;
    }

    c.delete_and_check_cleanup(Duration::from_secs(300)).await?;
    c.delete_namespace().await;
    Ok(())
}
