//! `make bench`: figures measured on real PostgreSQL through the local platform.
//!
//! - bootstrap: `local up` to both standbys streaming (seen in the primary's
//!   pg_stat_replication) and to the status reporting the cluster healthy;
//! - failover: SIGKILL of the primary's manager and server to the first acknowledged
//!   (synchronous) write on the new primary, with default settings and with the fastest safe
//!   settings; and to the old primary streaming again; and from a SIGSTOP of the primary (a
//!   freeze, declared only after `failover.delaySeconds`) to the first acknowledged write;
//! - rejoin: kill to the old primary streaming again, by database size, when it is rewound
//!   (the normal path) and when its data is gone and it is cloned again.
//!
//! - partitions: every cut of `opengauss_e2e::partition` (real cuts in a network lab), with
//!   synchronous (`required`) and asynchronous replication (and `preferred` for the split
//!   with one standby on each side): when a new primary accepted writes, when the old one
//!   acknowledged last, what it acknowledged after the cut and after the new primary's first
//!   write (must be 0), acknowledged commits lost, and the time to converge after the heal.
//!   Needs root (network namespaces); skipped with the reason otherwise.
//!
//! Usage: `bench [all|bootstrap|failover|rejoin|partitions] [--runs N] [--sizes 100,1000]`
//! (sizes in MB).

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use opengauss_e2e::LocalCluster;

/// The fastest settings: a pass every 100 ms, one second of silence before an unresponsive
/// primary is declared lost (its replacement still waits for its lease, at least 3 s, to end).
const FASTEST: &str = "  failover:\n    delaySeconds: 1\n    probeIntervalMilliseconds: 100\n    probeTimeoutMilliseconds: 80\n";

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn summary(name: &str, v: &mut [f64]) {
    let worst = v.iter().copied().fold(f64::MIN, f64::max);
    let best = v.iter().copied().fold(f64::MAX, f64::min);
    println!(
        "{name:<62} median {:>6.2}s  best {best:>6.2}s  worst {worst:>6.2}s  (n={})",
        median(v),
        v.len()
    );
}

async fn partitions() -> anyhow::Result<()> {
    use opengauss_e2e::partition::{Measured, Mode, Split, run};
    if let Some(why) = opengauss_e2e::netlab::unavailable() {
        println!("partitions: skipped ({why})");
        return Ok(());
    }
    println!("{}", Measured::HEADER);
    for split in Split::ALL {
        let mut modes = vec![Mode::SyncRequired, Mode::Async];
        if split == Split::PrimaryAndOneStandbyFromTheRest {
            modes.insert(1, Mode::SyncPreferred);
        }
        for mode in modes {
            let m = run(split, mode, "bench-part").await?;
            println!("{}", m.row());
            if !m.overlapping.is_empty() {
                println!("  TWO WRITERS AT ONCE: {:?}", m.overlapping);
            }
        }
    }
    Ok(())
}

async fn streaming_standbys(c: &LocalCluster, primary: &str) -> usize {
    let Ok(client) = c.connect(primary).await else { return 0 };
    client
        .query_one("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'", &[])
        .await
        .map(|r| r.get::<_, i64>(0) as usize)
        .unwrap_or(0)
}

/// The spec lines that turn TLS off, for the figures beside the default (TLS on).
const WITHOUT_TLS: &str = "  tls:\n    enabled: false\n";

async fn bootstrap(runs: usize, label: &str, extra: &str) -> anyhow::Result<()> {
    let (mut streaming, mut healthy) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let mut c = LocalCluster::new(&format!("bench-boot{run}{}", &label[..label.len().min(2)]), 3, extra);
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
    summary(&format!("bootstrap ({label}): local up -> both standbys streaming"), &mut streaming);
    summary(&format!("bootstrap ({label}): local up -> status Healthy"), &mut healthy);
    Ok(())
}

/// Tries one synchronous insert on every instance but `old` until one is acknowledged.
async fn first_write(c: &LocalCluster, old: &str, deadline: Instant) -> anyhow::Result<Instant> {
    loop {
        for k in 0..c.instances {
            let name = c.instance(k);
            if name == old {
                continue;
            }
            let attempt = async {
                let client = c.connect(&name).await?;
                client.batch_execute("INSERT INTO bench_probe VALUES (1)").await?;
                anyhow::Ok(())
            };
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_millis(500), attempt).await {
                return Ok(Instant::now());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "no instance accepted a write after the failover");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Removes a killed instance's data directory. Backends of the killed server may still be
/// exiting and writing for a moment, so a directory refilled under the removal is removed again
/// (a bounded number of times).
async fn remove_data(data: &std::path::Path) -> anyhow::Result<()> {
    let mut attempt = 0;
    loop {
        match std::fs::remove_dir_all(data) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if attempt < 20 && e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(anyhow::anyhow!("removing {}: {e}", data.display())),
        }
    }
}

/// Kills the primary and returns (seconds to the first acknowledged write elsewhere, seconds to
/// the old primary streaming again).
async fn kill_and_measure(c: &LocalCluster, forget_data: bool) -> anyhow::Result<(f64, f64)> {
    let old = c.primary().ok_or_else(|| anyhow::anyhow!("no primary"))?;
    let server = c.server_pid(&old);
    let killed = Instant::now();
    c.signal_instance(&old, Signal::SIGKILL)?;
    if forget_data {
        // The killed server's processes must be gone before its files are.
        while let Some(pid) = server
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
            && killed.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let dir = c.instance_dir(&old);
        remove_data(&dir.join("data")).await?;
        std::fs::remove_file(dir.join("bootstrapped"))?;
    }
    let wrote = first_write(c, &old, killed + Duration::from_secs(120)).await?;
    let n = c.instances;
    c.wait_for("the old primary streaming again", Duration::from_secs(900), |s| {
        s.current_primary.as_deref().is_some_and(|p| p != old)
            && s.transition.is_none()
            && s.ready_instances == n
    })
    .await?;
    Ok((wrote.duration_since(killed).as_secs_f64(), killed.elapsed().as_secs_f64()))
}

async fn failover(runs: usize, label: &str, extra: &str) -> anyhow::Result<()> {
    let mut c = LocalCluster::new(&format!("bench-fo-{}", label.replace([' ', ','], "")), 3, extra);
    c.start();
    c.wait_healthy(Duration::from_secs(90)).await?;
    let primary = c.primary().expect("primary");
    c.connect(&primary).await?.batch_execute("CREATE TABLE bench_probe (v int)").await?;
    let (mut write, mut rejoin) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        c.wait_healthy(Duration::from_secs(120)).await?;
        let (w, r) = kill_and_measure(&c, false).await?;
        write.push(w);
        rejoin.push(r);
    }
    summary(&format!("failover ({label}): kill -> first acknowledged write"), &mut write);
    summary(&format!("failover ({label}): kill -> old primary streaming again"), &mut rejoin);
    // A frozen primary (SIGSTOP) is only declared lost after failover.delaySeconds of silence.
    let mut frozen = Vec::new();
    for _ in 0..runs.min(3) {
        c.wait_healthy(Duration::from_secs(120)).await?;
        let old = c.primary().ok_or_else(|| anyhow::anyhow!("no primary"))?;
        let stopped = Instant::now();
        c.signal_instance(&old, Signal::SIGSTOP)?;
        let wrote = first_write(&c, &old, stopped + Duration::from_secs(120)).await;
        c.signal_instance(&old, Signal::SIGCONT)?;
        frozen.push(wrote?.duration_since(stopped).as_secs_f64());
    }
    summary(&format!("failover ({label}): SIGSTOP -> first acknowledged write"), &mut frozen);
    c.down();
    Ok(())
}

async fn rejoin_by_size(size_mb: u64) -> anyhow::Result<()> {
    let mut c = LocalCluster::new(&format!("bench-rejoin{size_mb}"), 3, "");
    c.start();
    c.wait_healthy(Duration::from_secs(90)).await?;
    let primary = c.primary().expect("primary");
    // About 1.1 kB per row.
    let rows = size_mb * 1024 * 1024 / 1100;
    let loaded = Instant::now();
    c.connect(&primary)
        .await?
        .batch_execute(&format!(
            "CREATE TABLE bench_probe (v int); \
             CREATE TABLE bulk AS SELECT g AS id, repeat('x', 1000) AS pad FROM generate_series(1, {rows}) g"
        ))
        .await?;
    let size: i64 =
        c.connect(&primary).await?.query_one("SELECT pg_database_size('postgres')", &[]).await?.get(0);
    c.wait_healthy(Duration::from_secs(600)).await?;
    println!(
        "rejoin: database of {} MB loaded and replicated in {:.1}s",
        size / 1024 / 1024,
        loaded.elapsed().as_secs_f64()
    );
    let (_, rewound) = kill_and_measure(&c, false).await?;
    c.wait_healthy(Duration::from_secs(600)).await?;
    let (_, recloned) = kill_and_measure(&c, true).await?;
    println!("rejoin ({} MB): kill -> streaming again, rewind          {rewound:>7.2}s", size / 1024 / 1024);
    println!("rejoin ({} MB): kill -> streaming again, full clone      {recloned:>7.2}s", size / 1024 / 1024);
    c.down();
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let runs = value("--runs").and_then(|r| r.parse().ok()).unwrap_or(5);
    let sizes: Vec<u64> = value("--sizes")
        .unwrap_or_else(|| "100,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let flags_values: Vec<String> = ["--runs", "--sizes"].iter().filter_map(|f| value(f)).collect();
    let which = args
        .iter()
        .find(|a| !a.starts_with("--") && !flags_values.contains(a))
        .cloned()
        .unwrap_or_else(|| "all".into());
    println!(
        "benchmarks on {} core(s), {runs} run(s) each",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    if matches!(which.as_str(), "all" | "bootstrap") {
        bootstrap(runs, "TLS", "").await?;
        bootstrap(runs, "no TLS", WITHOUT_TLS).await?;
    }
    if matches!(which.as_str(), "all" | "failover") {
        failover(runs, "defaults", "").await?;
        failover(runs, "defaults, no TLS", WITHOUT_TLS).await?;
        failover(runs, "fastest safe settings", FASTEST).await?;
    }
    if matches!(which.as_str(), "all" | "partitions") {
        partitions().await?;
    }
    if matches!(which.as_str(), "all" | "rejoin") {
        for size in sizes {
            rejoin_by_size(size).await?;
        }
    }
    Ok(())
}
