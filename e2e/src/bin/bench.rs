//! `make bench`: figures measured on real PostgreSQL through the local platform.
//!
//! - bootstrap: `local up` to both standbys streaming (seen in the primary's
//!   pg_stat_replication) and to the status reporting the cluster healthy.

use std::time::{Duration, Instant};

use opengauss_e2e::LocalCluster;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn summary(name: &str, v: &mut [f64]) {
    let worst = v.iter().copied().fold(f64::MIN, f64::max);
    let best = v.iter().copied().fold(f64::MAX, f64::min);
    println!(
        "{name:<58} median {:>6.2}s  best {best:>6.2}s  worst {worst:>6.2}s  (n={})",
        median(v),
        v.len()
    );
}

async fn streaming_standbys(c: &LocalCluster, primary: &str) -> usize {
    let Ok(client) = c.connect(primary).await else {
        return 0;
    };
    client
        .query_one("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'", &[])
        .await
        .map(|r| r.get::<_, i64>(0) as usize)
        .unwrap_or(0)
}

async fn bootstrap(runs: usize) -> anyhow::Result<()> {
    let (mut streaming, mut healthy) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let mut c = LocalCluster::new(&format!("bench-boot{run}"), 3, "");
        let started = Instant::now();
        c.start();
        let primary = c.instance(0);
        let deadline = started + Duration::from_secs(120);
        while streaming_standbys(&c, &primary).await < 2 {
            anyhow::ensure!(Instant::now() < deadline, "standbys never streamed:\n{}", c.controller_output());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        streaming.push(started.elapsed().as_secs_f64());
        c.wait_healthy(Duration::from_secs(60)).await?;
        healthy.push(started.elapsed().as_secs_f64());
        c.down();
    }
    summary("bootstrap: local up -> both standbys streaming", &mut streaming);
    summary("bootstrap: local up -> status Healthy", &mut healthy);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let which = args
        .iter()
        .find(|a| !a.starts_with("--") && a.parse::<usize>().is_err())
        .cloned()
        .unwrap_or_else(|| "all".into());
    println!(
        "benchmarks on {} core(s), {runs} run(s) each",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    if matches!(which.as_str(), "all" | "bootstrap") {
        bootstrap(runs).await?;
    }
    Ok(())
}
