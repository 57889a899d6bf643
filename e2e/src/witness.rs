//! Clients on every side of a network cut: one writer per instance, each committing to its
//! instance whatever its role, recording every acknowledged commit with when it was sent and
//! when the acknowledgement came back. From that record a test tells whether two instances
//! accepted writes at once, how many commits a minority side acknowledged after a cut, when
//! the majority side became writable, and (against the final primary) which acknowledged
//! commits were lost.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::LocalCluster;
use crate::checks::SqlCluster;

/// One acknowledged commit.
#[derive(Clone, Debug)]
pub struct Ack {
    pub instance: String,
    pub id: i64,
    /// When the INSERT was sent.
    pub sent: Instant,
    /// When its success came back.
    pub acked: Instant,
}

/// How long one commit may take before the client gives up on it (unacknowledged).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(2);
/// Ids of writer `k` start at `k × ID_STRIDE`.
const ID_STRIDE: i64 = 1_000_000_000;

#[derive(Debug)]
pub struct Witness {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Witness {
    /// Creates the table on `primary` and starts one writer per instance of `cluster`.
    pub async fn start(cluster: &LocalCluster, primary: &str) -> anyhow::Result<Self> {
        cluster
            .execute(primary, "CREATE TABLE IF NOT EXISTS witnessed (id bigint PRIMARY KEY, writer text)")
            .await
            .map_err(|e| anyhow::anyhow!("creating the witness table on {primary}: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let password = cluster.superuser_password();
        let mut tasks = Vec::new();
        for k in 0..cluster.instances {
            let name = cluster.instance(k);
            let mut cfg = tokio_postgres::Config::new();
            cfg.host(cluster.host_of(&name))
                .port(cluster.port_of(&name))
                .user("postgres")
                .password(password.clone())
                .dbname("postgres")
                .connect_timeout(Duration::from_secs(1));
            let (stop, acks, tls) = (stop.clone(), acks.clone(), cluster.tls());
            tasks.push(tokio::spawn(write_to(name, cfg, tls, i64::from(k + 1) * ID_STRIDE, stop, acks)));
        }
        Ok(Self { stop, acks, tasks })
    }

    /// Every acknowledgement so far, in the order they came back.
    pub fn acks(&self) -> Vec<Ack> {
        let mut all = self.acks.lock().expect("acks lock").clone();
        all.sort_by_key(|a| a.acked);
        all
    }

    /// Acknowledgements from `instance` whose commit was sent at or after `since`.
    pub fn acked_by_since(&self, instance: &str, since: Instant) -> usize {
        self.acks
            .lock()
            .expect("acks lock")
            .iter()
            .filter(|a| a.instance == instance && a.sent >= since)
            .count()
    }

    /// The first acknowledgement from anyone but `other_than` for a commit sent after `since`.
    pub fn first_ack_elsewhere(&self, other_than: &str, since: Instant) -> Option<Ack> {
        self.acks().into_iter().find(|a| a.instance != other_than && a.sent >= since)
    }

    /// Stops the writers and returns every acknowledgement.
    pub async fn stop(self) -> Vec<Ack> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
        let mut all = self.acks.lock().expect("acks lock").clone();
        all.sort_by_key(|a| a.acked);
        all
    }
}

/// Commits to one instance until stopped, recording what was acknowledged.
async fn write_to(
    instance: String,
    cfg: tokio_postgres::Config,
    tls: crate::pg::Tls,
    first_id: i64,
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
) {
    let mut next = first_id;
    let mut client = None;
    while !stop.load(Ordering::SeqCst) {
        if client.is_none() {
            client = match tokio::time::timeout(COMMIT_TIMEOUT, crate::pg::connect(&cfg, &tls)).await {
                Ok(Ok(c)) => Some(c),
                _ => None,
            };
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        }
        let c: &tokio_postgres::Client = client.as_ref().expect("connected");
        let id = next;
        next += 1;
        let sent = Instant::now();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&id, &instance];
        let insert = c.execute("INSERT INTO witnessed (id, writer) VALUES ($1, $2)", &params);
        match tokio::time::timeout(COMMIT_TIMEOUT, insert).await {
            Ok(Ok(_)) => acks.lock().expect("acks lock").push(Ack {
                instance: instance.clone(),
                id,
                sent,
                acked: Instant::now(),
            }),
            // A standby refuses at once: try again a little later on the same connection.
            Ok(Err(e)) if e.as_db_error().is_some() => tokio::time::sleep(Duration::from_millis(20)).await,
            // Timed out or the connection broke: the outcome is unknown, not acknowledged.
            _ => {
                client = None;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Pairs of instances with an acknowledged commit each whose sending-to-answer intervals
/// intersect: the two may have accepted writes at the same moment. Conservative: every writer
/// commits continuously, so two instances writable at once always show up here (to within a
/// commit's round trip), while a pair found may also be a slow commit on one side finishing
/// just as the other side began. Empty means writes moved from one instance to the next without
/// overlap.
pub fn overlapping_writers(acks: &[Ack]) -> Vec<String> {
    let instances: BTreeSet<&str> = acks.iter().map(|a| a.instance.as_str()).collect();
    let mut found = Vec::new();
    for x in &instances {
        for y in &instances {
            if x >= y {
                continue;
            }
            if intervals_intersect(acks, x, y) {
                found.push(format!("{x} and {y}"));
            }
        }
    }
    found
}

/// Whether an `x` commit and a `y` commit have intersecting sending-to-answer intervals. A
/// sweep, not a pairwise scan: a fast writer records tens of thousands of commits, and a scan
/// of every pair took minutes. With `x`'s intervals sorted by sending time and the latest
/// answer among each prefix, a `y` interval meets one of them exactly when the latest answer
/// among the `x` commits sent before it was answered is after it was sent.
fn intervals_intersect(acks: &[Ack], x: &str, y: &str) -> bool {
    let mut xs: Vec<(Instant, Instant)> =
        acks.iter().filter(|a| a.instance == x).map(|a| (a.sent, a.acked)).collect();
    xs.sort();
    let latest_answer: Vec<Instant> = xs
        .iter()
        .scan(None::<Instant>, |latest, (_, acked)| {
            let now = latest.map_or(*acked, |l: Instant| l.max(*acked));
            *latest = Some(now);
            Some(now)
        })
        .collect();
    acks.iter().filter(|b| b.instance == y).any(|b| {
        let sent_before = xs.partition_point(|(sent, _)| *sent < b.acked);
        sent_before > 0 && latest_answer[sent_before - 1] > b.sent
    })
}

/// The acknowledged ids `primary` does not hold.
pub async fn lost(cluster: &LocalCluster, primary: &str, acks: &[Ack]) -> anyhow::Result<Vec<i64>> {
    let client = cluster.connect(primary).await?;
    let rows = client.query("SELECT id FROM witnessed", &[]).await?;
    let held: BTreeSet<i64> = rows.iter().map(|r| r.get::<_, i64>(0)).collect();
    Ok(acks.iter().map(|a| a.id).filter(|id| !held.contains(id)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(instance: &str, sent_ms: u64, acked_ms: u64, base: Instant) -> Ack {
        Ack {
            instance: instance.into(),
            id: 0,
            sent: base + Duration::from_millis(sent_ms),
            acked: base + Duration::from_millis(acked_ms),
        }
    }

    #[test]
    fn interleaved_acknowledgements_are_two_writers() {
        let t = Instant::now();
        let handover = [ack("a", 0, 5, t), ack("a", 10, 15, t), ack("b", 20, 25, t), ack("b", 30, 31, t)];
        assert!(overlapping_writers(&handover).is_empty());
        let overlap = [ack("a", 0, 5, t), ack("b", 3, 8, t), ack("a", 10, 15, t)];
        assert_eq!(overlapping_writers(&overlap), ["a and b"]);
        // A commit sent before the other's answer and acknowledged after it overlaps it too.
        let straddle = [ack("a", 0, 50, t), ack("b", 10, 20, t)];
        assert_eq!(overlapping_writers(&straddle), ["a and b"]);
        // Touching ends do not overlap: one answered as the other was sent.
        let touching = [ack("a", 0, 10, t), ack("b", 10, 20, t), ack("a", 20, 30, t)];
        assert!(overlapping_writers(&touching).is_empty());
    }

    /// The sweep finds exactly what comparing every pair finds.
    #[test]
    fn the_sweep_agrees_with_every_pair() {
        let t = Instant::now();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        for _ in 0..500 {
            let acks: Vec<Ack> = (0..next(12) + 1)
                .map(|_| {
                    let instance = ["a", "b", "c"][next(3) as usize];
                    let sent = next(100);
                    ack(instance, sent, sent + next(20) + 1, t)
                })
                .collect();
            let every_pair = |x: &str, y: &str| {
                acks.iter().filter(|a| a.instance == x).any(|a| {
                    acks.iter().filter(|b| b.instance == y).any(|b| a.sent < b.acked && b.sent < a.acked)
                })
            };
            for (x, y) in [("a", "b"), ("a", "c"), ("b", "c")] {
                assert_eq!(intervals_intersect(&acks, x, y), every_pair(x, y), "{x} {y} in {acks:?}");
            }
        }
    }
}
