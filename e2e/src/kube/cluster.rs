//! One `OpenGaussCluster` in a namespace of its own, driven the way a user drives it: through
//! kubectl and the database, never through the operator's internals.

use std::time::Duration;

use anyhow::{Context, bail};
use opengauss_crd::{Engine, OpenGaussClusterStatus, Phase};
use serde_json::Value;

use super::driver::{Driver, output};
use crate::checks::{Rows, SqlCluster};
use crate::wait::{Probe, until};

/// A cluster applied from a sample.
#[derive(Debug)]
pub struct KubeCluster {
    pub driver: Driver,
    pub namespace: String,
    pub name: String,
    pub engine: Engine,
    pub instances: u32,
    pub port: u16,
}

/// The sample file `sample` (under the checkout) as a JSON object.
pub fn read_sample(sample: &str) -> anyhow::Result<Value> {
    let path = crate::workspace().join(sample);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

impl KubeCluster {
    /// Applies `sample` in a fresh `namespace`, after `edit` changed it, with the database
    /// image this environment needs.
    pub async fn apply(
        driver: &Driver,
        sample: &str,
        namespace: &str,
        edit: impl FnOnce(&mut Value),
    ) -> anyhow::Result<Self> {
        Self::apply_after(driver, sample, namespace, edit, &[]).await
    }

    /// As `apply`, with `first` (objects such as the user's Secrets) applied in the fresh
    /// namespace before the cluster.
    pub async fn apply_after(
        driver: &Driver,
        sample: &str,
        namespace: &str,
        edit: impl FnOnce(&mut Value),
        first: &[Value],
    ) -> anyhow::Result<Self> {
        let mut object = read_sample(sample)?;
        driver.fit_sample(&mut object);
        edit(&mut object);
        let cluster: opengauss_crd::OpenGaussCluster =
            serde_json::from_value(object.clone()).context("the edited sample is not a cluster")?;
        if let Some(image) = driver.database_image(cluster.spec.engine)? {
            object["spec"]["image"] = image.into();
        }
        let _ =
            driver.kubectl(&["delete", "namespace", namespace, "--wait=true", "--ignore-not-found"]).await;
        driver.kubectl(&["create", "namespace", namespace]).await?;
        for object in first {
            driver
                .kubectl_with_input(&["-n", namespace, "apply", "-f", "-"], &serde_json::to_vec(object)?)
                .await?;
        }
        let c = Self {
            driver: driver.clone(),
            namespace: namespace.to_string(),
            name: cluster.metadata.name.clone().unwrap_or_default(),
            engine: cluster.spec.engine,
            instances: cluster.spec.instances,
            port: cluster.spec.port,
        };
        c.apply_object(&object).await?;
        Ok(c)
    }

    /// `kubectl apply` of a cluster object in this namespace.
    pub async fn apply_object(&self, object: &Value) -> anyhow::Result<String> {
        self.driver
            .kubectl_with_input(&["-n", &self.namespace, "apply", "-f", "-"], &serde_json::to_vec(object)?)
            .await
    }

    /// The same cluster, for a handle that expects `instances` of them (after scaling).
    pub fn clone_handle(&self) -> KubeCluster {
        KubeCluster {
            driver: self.driver.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            engine: self.engine,
            instances: self.instances,
            port: self.port,
        }
    }

    pub async fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", self.namespace.as_str()];
        all.extend_from_slice(args);
        self.driver.kubectl(&all).await
    }

    /// A merge patch of the cluster object.
    pub async fn patch(&self, patch: Value) -> anyhow::Result<()> {
        let body = patch.to_string();
        self.kubectl(&["patch", "opengaussclusters", &self.name, "--type=merge", "-p", &body]).await.map(drop)
    }

    /// The cluster object as the API server has it.
    pub async fn object(&self) -> anyhow::Result<Value> {
        let json = self.kubectl(&["get", "opengaussclusters", &self.name, "-o", "json"]).await?;
        Ok(serde_json::from_str(&json)?)
    }

    pub async fn status(&self) -> Option<OpenGaussClusterStatus> {
        let json =
            self.kubectl(&["get", "opengaussclusters", &self.name, "-o", "jsonpath={.status}"]).await.ok()?;
        serde_json::from_str(&json).ok()
    }

    /// Pods, events and the operator's last log lines, for failure messages.
    pub async fn diagnostics(&self) -> String {
        let pods = self.kubectl(&["get", "pods", "-o", "wide"]).await.unwrap_or_default();
        let events = self.kubectl(&["get", "events", "--sort-by=.lastTimestamp"]).await.unwrap_or_default();
        let operator = self
            .driver
            .kubectl(&[
                "-n",
                crate::k8s::node::OPERATOR_NAMESPACE,
                "logs",
                "-l",
                "app.kubernetes.io/name=opengauss-operator",
                "--tail=30",
                "--prefix",
            ])
            .await
            .unwrap_or_default();
        let events: Vec<&str> = events.lines().collect();
        let events = events[events.len().saturating_sub(40)..].join("\n");
        format!("pods:\n{pods}\nevents (last 40):\n{events}\noperator:\n{operator}")
    }

    /// Polls the status until `pred` holds.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&OpenGaussClusterStatus) -> bool,
    ) -> anyhow::Result<OpenGaussClusterStatus> {
        let waited = until(what, timeout, Duration::from_millis(500), || async {
            match self.status().await {
                Some(s) if pred(&s) => Probe::Done(s),
                other => Probe::NotYet(format!("{other:#?}")),
            }
        })
        .await;
        match waited {
            Ok(s) => Ok(s),
            Err(e) => Err(e.context(self.diagnostics().await)),
        }
    }

    /// Healthy with `n` instances ready, no transition, the spec's generation observed.
    pub async fn wait_healthy_with(
        &self,
        n: u32,
        timeout: Duration,
    ) -> anyhow::Result<OpenGaussClusterStatus> {
        let generation = self.object().await?["metadata"]["generation"].as_i64();
        self.wait_for(&format!("a healthy cluster of {n}"), timeout, |s| {
            s.phase == Some(Phase::Healthy)
                && s.ready_instances == n
                && s.instances.len() == n as usize
                && s.transition.is_none()
                && s.observed_generation == generation
        })
        .await
    }

    pub async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<OpenGaussClusterStatus> {
        self.wait_healthy_with(self.instances, timeout).await
    }

    /// The pods `<name>-rw` (`rw`) or `<name>-ro` (`ro`) select right now (by their ready
    /// endpoints).
    pub async fn selected_by(&self, service_suffix: &str) -> anyhow::Result<Vec<String>> {
        let service = format!("{}-{service_suffix}", self.name);
        let selector = format!("kubernetes.io/service-name={service}");
        let out = self
            .kubectl(&[
                "get",
                "endpointslices",
                "-l",
                &selector,
                "-o",
                "jsonpath={range .items[*].endpoints[?(@.conditions.ready==true)]}{.targetRef.name}{\"\\n\"}{end}",
            ])
            .await?;
        let mut pods: Vec<String> = out.lines().filter(|l| !l.is_empty()).map(String::from).collect();
        pods.sort();
        Ok(pods)
    }

    /// Waits until `<name>-<suffix>` routes to exactly `pods`.
    pub async fn wait_selected(
        &self,
        service_suffix: &str,
        pods: &[String],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let mut want = pods.to_vec();
        want.sort();
        let what = format!("{}-{service_suffix} to route to {want:?}", self.name);
        until(&what, timeout, Duration::from_millis(500), || async {
            match self.selected_by(service_suffix).await {
                Ok(got) if got == want => Probe::Done(()),
                Ok(got) => Probe::NotYet(format!("{got:?}")),
                Err(e) => Probe::NotYet(format!("{e:#}")),
            }
        })
        .await
    }

    pub async fn delete_pod(&self, pod: &str) -> anyhow::Result<()> {
        self.kubectl(&["delete", "pod", pod, "--wait=false"]).await.map(drop)
    }

    /// The uid of a pod (a deleted and recreated pod has a new one).
    pub async fn pod_uid(&self, pod: &str) -> anyhow::Result<String> {
        Ok(self.kubectl(&["get", "pod", pod, "-o", "jsonpath={.metadata.uid}"]).await?.trim().to_string())
    }

    /// Events about the cluster object: (type, reason, note).
    pub async fn events(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let selector = format!("involvedObject.kind=OpenGaussCluster,involvedObject.name={}", self.name);
        let json = self.kubectl(&["get", "events", "--field-selector", &selector, "-o", "json"]).await?;
        let list: Value = serde_json::from_str(&json)?;
        Ok(list["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|e| {
                        let text = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                        (text("type"), text("reason"), text("message"))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Waits for an event about the cluster with `reason` whose note contains `needle`.
    pub async fn wait_event(&self, reason: &str, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        until(
            &format!("a {reason} event mentioning {needle:?}"),
            timeout,
            Duration::from_millis(500),
            || async {
                match self.events().await {
                    Ok(events) => match events.iter().find(|(_, r, n)| r == reason && n.contains(needle)) {
                        Some((_, _, note)) => Probe::Done(note.clone()),
                        None => Probe::NotYet(format!("{events:?}")),
                    },
                    Err(e) => Probe::NotYet(format!("{e:#}")),
                }
            },
        )
        .await
    }

    /// Deletes the cluster and waits until everything it owned is gone.
    pub async fn delete_and_check_cleanup(&self, timeout: Duration) -> anyhow::Result<()> {
        self.kubectl(&["delete", "opengaussclusters", &self.name, "--wait=true"]).await?;
        let selector = format!("ha.opengauss.dev/cluster={}", self.name);
        let kinds = "pods,persistentvolumeclaims,services,configmaps,secrets,poddisruptionbudgets";
        until("everything the cluster owned to go", timeout, Duration::from_secs(1), || async {
            match self.kubectl(&["get", kinds, "-l", &selector, "-o", "name"]).await {
                Ok(left) if left.trim().is_empty() => Probe::Done(()),
                Ok(left) => Probe::NotYet(format!("still there:\n{left}")),
                Err(e) => Probe::NotYet(format!("{e:#}")),
            }
        })
        .await
    }

    pub async fn delete_namespace(&self) {
        let _ = self.driver.kubectl(&["delete", "namespace", &self.namespace, "--wait=false"]).await;
    }

    /// Runs `f`, then deletes the namespace whatever happened; a failure carries diagnostics.
    pub async fn run_then_clean_up(
        self,
        f: impl AsyncFnOnce(&KubeCluster) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let result = f(&self).await;
        let result = match result {
            Ok(()) => Ok(()),
            Err(e) => Err(e.context(self.diagnostics().await)),
        };
        self.delete_namespace().await;
        result
    }

    fn superuser(&self) -> &'static str {
        opengauss_operator::engine::dialect(self.engine).superuser()
    }

    fn sql_command(&self, sql: &str) -> Vec<String> {
        let client = match self.engine {
            Engine::OpenGauss => "gsql",
            Engine::Postgres => "psql",
        };
        let mut args: Vec<String> = [
            client,
            "-h",
            opengauss_operator::platform::kubernetes::builders::paths::SOCKET_DIR,
            "-p",
            &self.port.to_string(),
            "-U",
            self.superuser(),
            "-d",
            "postgres",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(crate::checks::unaligned_sql_args(sql));
        args
    }

    /// Runs `command` in `pod`'s database container.
    pub async fn exec(&self, pod: &str, command: &[String]) -> Result<String, String> {
        let mut cmd = self.driver.kubectl_command();
        cmd.args(["-n", &self.namespace, "exec", pod, "-c", "database", "--"]).args(command);
        output(cmd, &format!("kubectl exec {pod}"), None).await.map_err(|e| format!("{e:#}"))
    }

    async fn exec_sql(&self, instance: &str, sql: &str) -> Result<String, String> {
        self.exec(instance, &self.sql_command(sql)).await
    }
}

impl SqlCluster for KubeCluster {
    fn engine(&self) -> Engine {
        self.engine
    }

    fn instance_names(&self) -> Vec<String> {
        opengauss_crd::names::instance_names(&self.name, self.instances)
    }

    async fn query(&self, instance: &str, sql: &str) -> anyhow::Result<Rows> {
        let out =
            self.exec_sql(instance, sql).await.map_err(|e| anyhow::anyhow!("{sql} on {instance}: {e}"))?;
        Ok(crate::checks::parse_unaligned(&out))
    }

    async fn execute(&self, instance: &str, sql: &str) -> Result<(), String> {
        self.exec_sql(instance, sql).await.map(drop)
    }
}

/// Fails unless `value` is what was expected, naming what.
pub fn expect_eq<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> anyhow::Result<()> {
    if got != want {
        bail!("{what}: got {got:?}, expected {want:?}");
    }
    Ok(())
}
