//! Benchmarks on a real Kubernetes (`make bench-k8s`, part of `make bench` when run as root):
//! `kubectl apply` of the PostgreSQL sample to Healthy, and failover from deleting the
//! primary's pod and from killing its container to the first write acknowledged through the
//! `-rw` Service by a different server, median and worst of several runs.
//!
//! The cluster is the one `OPENGAUSS_E2E_CLUSTER` names (the project's one-node cluster by
//! default, which must be up: `make k8s-up`). Runs: `BENCH_K8S_RUNS` (default 5).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use opengauss_e2e::kube::{Driver, KubeCluster, scenarios::POSTGRES_SAMPLE};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn summary(name: &str, v: &mut [f64]) {
    let worst = v.iter().copied().fold(f64::MIN, f64::max);
    println!("{name}: median {:.2} s, worst {:.2} s, runs {}", median(v), worst, v.len());
}

/// The `-rw` Service's address and the superuser's password, to write as a client would:
/// over TLS trusting the cluster's authority (the chain is verified; the Service's cluster IP
/// is in no certificate, so, as for the operator's own IP connections, not the name).
struct Client {
    host: String,
    port: u16,
    user: String,
    password: String,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
}

impl Client {
    async fn of(c: &KubeCluster) -> anyhow::Result<Self> {
        let host = c
            .kubectl(&["get", "service", &format!("{}-rw", c.name), "-o", "jsonpath={.spec.clusterIP}"])
            .await?;
        let secret = format!("{}-credentials", c.name);
        // kubectl decodes the Secret's base64 itself.
        let field = async |key: &str| {
            let template = format!("go-template={{{{ index .data \"{key}\" | base64decode }}}}");
            c.kubectl(&["get", "secret", &secret, "-o", &template]).await
        };
        let authority = c
            .kubectl(&[
                "get",
                "secret",
                &format!("{}-ca", c.name),
                "-o",
                "go-template={{ index .data \"ca.crt\" | base64decode }}",
            ])
            .await?;
        opengauss_operator::tls::config::install_default_provider();
        let tls = opengauss_operator::tls::config::member_client(&authority)?;
        Ok(Self {
            host: host.trim().to_string(),
            port: c.port,
            user: field("username").await?,
            password: field("password").await?,
            tls: tokio_postgres_rustls::MakeRustlsConnect::new(tls),
        })
    }

    /// Commits one row through the Service; returns the address of the server that took it.
    async fn write(&self) -> anyhow::Result<String> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .password(self.password.clone())
            .dbname("postgres")
            .ssl_mode(tokio_postgres::config::SslMode::Require)
            .connect_timeout(Duration::from_millis(500));
        let work = async {
            let (client, conn) = cfg.connect(self.tls.clone()).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            client.batch_execute("CREATE TABLE IF NOT EXISTS bench (at timestamptz)").await?;
            let row = client
                .query_one("INSERT INTO bench VALUES (now()) RETURNING host(inet_server_addr())", &[])
                .await?;
            anyhow::Ok(row.get::<_, String>(0))
        };
        tokio::time::timeout(Duration::from_secs(2), work).await.context("timed out")?
    }
}

async fn pod_ip(c: &KubeCluster, pod: &str) -> anyhow::Result<String> {
    Ok(c.kubectl(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"]).await?.trim().to_string())
}

/// Seconds from `disrupt` to the first write a server other than `old_ip` acknowledged.
async fn first_write_elsewhere(client: &Client, old_ip: &str, since: Instant) -> anyhow::Result<f64> {
    let deadline = since + Duration::from_secs(120);
    loop {
        if let Ok(server) = client.write().await
            && server != old_ip
        {
            return Ok(since.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            bail!("no write through the -rw Service within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn bootstrap(driver: &Driver, runs: usize) -> anyhow::Result<()> {
    let mut times = Vec::new();
    for k in 0..runs {
        let namespace = format!("bench-boot-{k}");
        let started = Instant::now();
        let c = KubeCluster::apply(driver, POSTGRES_SAMPLE, &namespace, |_| {}).await?;
        c.wait_healthy(Duration::from_secs(300)).await?;
        times.push(started.elapsed().as_secs_f64());
        c.delete_namespace().await;
    }
    summary("kubectl apply of the sample to Healthy", &mut times);
    Ok(())
}

#[derive(Clone, Copy)]
enum Disruption {
    DeletePod,
    KillContainer,
}

async fn failover(driver: &Driver, runs: usize, how: Disruption) -> anyhow::Result<()> {
    let (namespace, label) = match how {
        Disruption::DeletePod => {
            ("bench-delete", "failover: primary pod deleted to the first write through -rw")
        }
        Disruption::KillContainer => {
            ("bench-kill", "failover: primary container killed to the first write through -rw")
        }
    };
    let c = KubeCluster::apply(driver, POSTGRES_SAMPLE, namespace, |_| {}).await?;
    let result = async {
        let mut times = Vec::new();
        for _ in 0..runs {
            let s = c.wait_healthy(Duration::from_secs(300)).await?;
            let old = s.current_primary.clone().context("no primary")?;
            let client = Client::of(&c).await?;
            let old_ip = pod_ip(&c, &old).await?;
            // The Service routes writes before anything is disrupted (a new Service takes
            // kube-proxy a moment).
            first_write_elsewhere(&client, "", Instant::now())
                .await
                .context("a write before the disruption")?;
            let since = Instant::now();
            match how {
                Disruption::DeletePod => {
                    c.kubectl(&["delete", "pod", &old, "--wait=false"]).await?;
                }
                Disruption::KillContainer => c.driver.kill_container(&c, &old, "database").await?,
            }
            times.push(first_write_elsewhere(&client, &old_ip, since).await?);
            // The old primary back as a standby before the next run.
            c.wait_for("the old primary back", Duration::from_secs(300), |s| {
                s.current_primary.as_deref().is_some_and(|p| p != old)
                    && s.instance(&old).is_some_and(|i| i.ready)
            })
            .await?;
        }
        summary(label, &mut times);
        anyhow::Ok(())
    }
    .await;
    c.delete_namespace().await;
    result
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::var("BENCH_K8S_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let driver = Driver::from_env()?;
    driver.prepare().await?;
    println!("benchmarks on {} ({runs} runs each)", driver.name());
    bootstrap(&driver, runs.min(3)).await?;
    failover(&driver, runs, Disruption::DeletePod).await?;
    failover(&driver, runs, Disruption::KillContainer).await?;
    Ok(())
}
