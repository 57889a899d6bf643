//! Partition scenarios on the local platform, cut for real in a network lab (`netlab`): a
//! three-instance cluster, a writer on every instance (`witness`), one kind of cut, a heal,
//! and what happened measured. The tests (`tests/partitions.rs`) assert the rule on the
//! measurements; the benchmark (`bench-partitions`) prints them.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use opengauss_crd::Phase;

use crate::LocalCluster;
use crate::netlab::{Node, Way};
use crate::witness::{Ack, Witness, lost, overlapping_writers};

/// Which links a scenario cuts, around the primary `P` and its standbys `S1`, `S2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// `P` from the controller only: its standbys still stream from it.
    PrimaryFromController,
    /// `P` from its standbys only: the controller still reaches everyone.
    PrimaryFromStandbys,
    /// `P` from the controller and the standbys; its clients still reach it.
    PrimaryFromAllButClients,
    /// `P`'s packets to the controller dropped (one way: the controller's requests still reach
    /// it, its answers do not) and `P` cut from its standbys: requests that arrive must not
    /// keep renewing its lease.
    PrimaryAnswersLostAndStandbysCut,
    /// `{P, S1}` from `{controller, S2}`; clients reach everyone.
    PrimaryAndOneStandbyFromTheRest,
    /// The controller from everything.
    ControllerFromEverything,
    /// `S1` from `P` for a while, then `P` killed with the cut still in place: the stale `S1`
    /// must not be promoted.
    StandbyFromPrimaryThenPrimaryKilled,
    /// `P` from the controller and the standbys, cut and healed every few seconds for a minute.
    Flapping,
}

impl Split {
    pub const ALL: [Split; 8] = [
        Split::PrimaryFromController,
        Split::PrimaryFromStandbys,
        Split::PrimaryFromAllButClients,
        Split::PrimaryAnswersLostAndStandbysCut,
        Split::PrimaryAndOneStandbyFromTheRest,
        Split::ControllerFromEverything,
        Split::StandbyFromPrimaryThenPrimaryKilled,
        Split::Flapping,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Split::PrimaryFromController => "primary | controller",
            Split::PrimaryFromStandbys => "primary | standbys",
            Split::PrimaryFromAllButClients => "primary | controller+standbys",
            Split::PrimaryAnswersLostAndStandbysCut => "primary -> controller (one way), primary | standbys",
            Split::PrimaryAndOneStandbyFromTheRest => "primary+standby | controller+standby",
            Split::ControllerFromEverything => "controller | everything",
            Split::StandbyFromPrimaryThenPrimaryKilled => "standby | primary, then primary killed",
            Split::Flapping => "primary | controller+standbys, flapping",
        }
    }
}

/// How the cluster replicates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `ANY 1` of the standbys, `dataDurability: required` (the default).
    SyncRequired,
    /// `ANY 1`, `dataDurability: preferred`.
    SyncPreferred,
    /// No synchronous standby.
    Async,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::SyncRequired => "sync, required",
            Mode::SyncPreferred => "sync, preferred",
            Mode::Async => "async",
        }
    }

    /// A few letters for directory names.
    pub fn short(self) -> &'static str {
        match self {
            Mode::SyncRequired => "sr",
            Mode::SyncPreferred => "sp",
            Mode::Async => "as",
        }
    }

    fn spec_lines(self) -> &'static str {
        match self {
            Mode::SyncRequired => "",
            Mode::SyncPreferred => "  failover:\n    dataDurability: preferred\n",
            Mode::Async => "  replication:\n    synchronous:\n      method: off\n",
        }
    }

    /// Whether no acknowledged commit may be lost.
    pub fn durable(self) -> bool {
        self == Mode::SyncRequired
    }
}

/// What one run of a scenario did.
#[derive(Debug)]
pub struct Measured {
    pub split: Split,
    pub mode: Mode,
    pub old_primary: String,
    /// The primary once the cut healed and the cluster converged.
    pub final_primary: String,
    /// From the cut to the first commit acknowledged by another instance (a new primary).
    pub new_primary_writable_after: Option<Duration>,
    /// From the cut to the old primary's last acknowledgement of a commit sent after the cut,
    /// among those acknowledged before the (last) heal: how long it kept accepting writes while
    /// cut off. (After the heal it may rightly accept writes again as the primary.)
    pub old_primary_last_ack_after: Option<Duration>,
    /// Commits the old primary acknowledged that were sent after the cut.
    pub old_primary_acks_after_cut: usize,
    /// Commits the old primary acknowledged that were sent after another instance's first
    /// acknowledgement: must be zero.
    pub old_primary_acks_after_new: usize,
    /// Pairs of instances that acknowledged at overlapping times: must be empty.
    pub overlapping: Vec<String>,
    /// Acknowledged commits the final primary does not hold.
    pub lost: usize,
    pub acknowledged: usize,
    /// From the cut to the (last) heal.
    pub healed_after: Duration,
    /// From the (last) heal to a healthy cluster.
    pub converged_after_heal: Duration,
    /// The phase and its reason, sampled while the cut was in force (before healing).
    pub during_cut: (Option<Phase>, String),
    /// Events the controller printed.
    pub controller_log: String,
}

const BOOT: Duration = Duration::from_secs(90);
/// After the last heal: room for one rejoin that cannot become consistent (after flapping, a
/// standby may have been rewound from a source that forked again; the manager gives such a
/// rejoin 60 s, then rewinds again) plus the second rewind and catch-up on a busy machine. A
/// clean-clone run timed out at 90 s in exactly that case.
const CONVERGE: Duration = Duration::from_secs(150);

/// Runs `split` under `mode` in a fresh lab; `Err` when the cluster could not be set up or did
/// not converge (the measurement is then meaningless).
pub async fn run(split: Split, mode: Mode, test: &str) -> anyhow::Result<Measured> {
    let mut c = LocalCluster::in_lab(test, 3, mode.spec_lines())?;
    c.start();
    c.wait_healthy(BOOT).await?;
    let old = c.primary().ok_or_else(|| anyhow::anyhow!("no primary after bootstrap"))?;
    let p = u32::from(LocalCluster::ordinal_of(&old));
    let standbys: Vec<u32> = (0..3).filter(|k| *k != p).collect();
    let (s1, s2) = (standbys[0], standbys[1]);
    let witness = Witness::start(&c, &old).await?;
    wait_for_acks(&witness, &old, 20).await?;
    let lab = c.lab().ok_or_else(|| anyhow::anyhow!("not in a lab"))?;
    let (pn, s1n, s2n) = (Node::Instance(p), Node::Instance(s1), Node::Instance(s2));
    let cut_at = Instant::now();
    let mut during_cut = (None, String::new());
    let sample = |c: &LocalCluster| {
        c.status().map(|s| (s.phase, s.phase_reason.unwrap_or_default())).unwrap_or((None, String::new()))
    };
    match split {
        Split::PrimaryFromController => {
            lab.cut(Node::Controller, pn, Way::Both)?;
            hold(Duration::from_secs(15)).await;
            during_cut = sample(&c);
        }
        Split::PrimaryFromStandbys => {
            lab.cut(pn, s1n, Way::Both)?;
            lab.cut(pn, s2n, Way::Both)?;
            hold(Duration::from_secs(12)).await;
            during_cut = sample(&c);
        }
        Split::PrimaryFromAllButClients => {
            for other in [Node::Controller, s1n, s2n] {
                lab.cut(pn, other, Way::Both)?;
            }
            wait_elsewhere_or(&witness, &old, cut_at, Duration::from_secs(30)).await;
            hold(Duration::from_secs(3)).await;
            during_cut = sample(&c);
        }
        Split::PrimaryAnswersLostAndStandbysCut => {
            lab.cut(pn, Node::Controller, Way::OneWay)?;
            lab.cut(pn, s1n, Way::Both)?;
            lab.cut(pn, s2n, Way::Both)?;
            wait_elsewhere_or(&witness, &old, cut_at, Duration::from_secs(30)).await;
            hold(Duration::from_secs(3)).await;
            during_cut = sample(&c);
        }
        Split::PrimaryAndOneStandbyFromTheRest => {
            for (a, b) in [(pn, Node::Controller), (s1n, Node::Controller), (pn, s2n), (s1n, s2n)] {
                lab.cut(a, b, Way::Both)?;
            }
            wait_elsewhere_or(&witness, &old, cut_at, Duration::from_secs(20)).await;
            hold(Duration::from_secs(3)).await;
            during_cut = sample(&c);
        }
        Split::ControllerFromEverything => {
            for k in 0..3 {
                lab.cut(Node::Controller, Node::Instance(k), Way::Both)?;
            }
            hold(Duration::from_secs(15)).await;
            during_cut = sample(&c);
        }
        Split::StandbyFromPrimaryThenPrimaryKilled => {
            lab.cut(s1n, pn, Way::Both)?;
            hold(Duration::from_secs(6)).await;
            c.signal_instance(&old, Signal::SIGKILL)?;
            wait_elsewhere_or(&witness, &old, cut_at, Duration::from_secs(30)).await;
            hold(Duration::from_secs(2)).await;
            during_cut = sample(&c);
        }
        Split::Flapping => {
            let pattern = [(3, 2), (6, 2), (8, 3), (2, 2), (7, 4), (4, 2), (9, 3), (2, 2)];
            for (cut_s, heal_s) in pattern {
                // Always the primary of the moment.
                let p = c.primary().map_or(p, |n| u32::from(LocalCluster::ordinal_of(&n)));
                let pn = Node::Instance(p);
                for other in (0..3).filter(|k| *k != p).map(Node::Instance).chain([Node::Controller]) {
                    lab.cut(pn, other, Way::Both)?;
                }
                hold(Duration::from_secs(cut_s)).await;
                during_cut = sample(&c);
                lab.heal_all()?;
                hold(Duration::from_secs(heal_s)).await;
            }
        }
    }
    lab.heal_all()?;
    let healed = Instant::now();
    let status = c.wait_healthy(CONVERGE).await;
    let converged_after_heal = healed.elapsed();
    let status = status?;
    // Writes flow again everywhere before the writers stop.
    let final_primary = status.current_primary.clone().unwrap_or_default();
    wait_for_acks_since(&witness, &final_primary, Instant::now(), 10).await?;
    let acks = witness.stop().await;
    let lost = lost(&c, &final_primary, &acks).await?.len();
    let controller_log = c.controller_output();
    let _ = c.down();
    Ok(measure(
        split,
        mode,
        old,
        final_primary,
        (cut_at, healed),
        &acks,
        lost,
        converged_after_heal,
        during_cut,
        controller_log,
    ))
}

#[allow(clippy::too_many_arguments)]
fn measure(
    split: Split,
    mode: Mode,
    old: String,
    final_primary: String,
    (cut_at, healed): (Instant, Instant),
    acks: &[Ack],
    lost: usize,
    converged_after_heal: Duration,
    during_cut: (Option<Phase>, String),
    controller_log: String,
) -> Measured {
    let first_new = acks.iter().filter(|a| a.instance != old && a.sent >= cut_at).map(|a| a.acked).min();
    let old_after_cut: Vec<&Ack> = acks.iter().filter(|a| a.instance == old && a.sent >= cut_at).collect();
    Measured {
        split,
        mode,
        new_primary_writable_after: first_new.map(|t| t - cut_at),
        old_primary_last_ack_after: old_after_cut
            .iter()
            .map(|a| a.acked)
            .filter(|t| *t < healed)
            .max()
            .map(|t| t - cut_at),
        old_primary_acks_after_cut: old_after_cut.len(),
        old_primary_acks_after_new: first_new
            .map_or(0, |t| acks.iter().filter(|a| a.instance == old && a.sent >= t).count()),
        overlapping: overlapping_writers(acks),
        lost,
        acknowledged: acks.len(),
        healed_after: healed - cut_at,
        converged_after_heal,
        during_cut,
        controller_log,
        old_primary: old,
        final_primary,
    }
}

/// Waits (bounded, by condition) for `n` acknowledgements from `instance`.
async fn wait_for_acks(w: &Witness, instance: &str, n: usize) -> anyhow::Result<()> {
    wait_for_acks_since(w, instance, Instant::now() - Duration::from_secs(3600), n).await
}

async fn wait_for_acks_since(w: &Witness, instance: &str, since: Instant, n: usize) -> anyhow::Result<()> {
    let what = format!("{n} acknowledged commits on {instance}");
    crate::wait::until(&what, Duration::from_secs(30), Duration::from_millis(50), || {
        let got = w.acked_by_since(instance, since);
        std::future::ready(if got >= n {
            crate::wait::Probe::Done(())
        } else {
            crate::wait::Probe::NotYet(format!("{got} so far"))
        })
    })
    .await
}

/// Waits until an instance other than `old` acknowledges a commit sent after `since`, at most
/// `limit` (a scenario where nobody may take over simply runs out the time).
async fn wait_elsewhere_or(w: &Witness, old: &str, since: Instant, limit: Duration) {
    let _ = crate::wait::until("another instance to accept writes", limit, Duration::from_millis(50), || {
        std::future::ready(match w.first_ack_elsewhere(old, since) {
            Some(_) => crate::wait::Probe::Done(()),
            None => crate::wait::Probe::NotYet(String::new()),
        })
    })
    .await;
}

/// Keeps the cut (or the healed state) for `d`: the scenario's own length, not a wait for a
/// condition.
async fn hold(d: Duration) {
    tokio::time::sleep(d).await;
}

impl Measured {
    /// One line for the benchmark table.
    pub fn row(&self) -> String {
        let secs = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.2}", d.as_secs_f64()));
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {}/{} | {:.2} |",
            self.split.name(),
            self.mode.name(),
            if self.final_primary == self.old_primary { "kept" } else { "failed over" },
            secs(self.new_primary_writable_after),
            secs(self.old_primary_last_ack_after),
            self.old_primary_acks_after_cut,
            self.old_primary_acks_after_new,
            self.lost,
            self.acknowledged,
            self.converged_after_heal.as_secs_f64(),
        )
    }

    pub const HEADER: &'static str = "| cut | replication | outcome | new primary writable (s after cut) | old primary's last ack (s after cut) | old primary acks after cut | old primary acks after new primary's first | lost/acknowledged | converged (s after heal) |\n|---|---|---|---|---|---|---|---|---|";
}
