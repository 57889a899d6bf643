//! Randomised simulation of the decision core.
//!
//! A model of the cluster is driven by `decide` exactly as the controller drives it: observe,
//! decide, persist the returned status, act. Thousands of seeded fault schedules are replayed
//! against it and every step checks the invariants.
//!
//! The model, per instance: the manager process (missing, running, dead; frozen or not), the
//! database server (running, accepting, crashed), the data directory (none, a primary's, a
//! standby's; clean or crashed), the fence marker, the applied `DesiredConfig`, the operation
//! in flight (one at a time, one or more steps, refusals and back-off as `instance::manager`
//! has them), and a WAL history: a list of records `(timeline, id)` whose length is the LSN.
//! A standby streams from its configured upstream when both run and its history is a prefix of
//! the upstream's (sometimes only part of what is available: lag); a diverged one cannot, and
//! needs a rewind (truncation to the common prefix) or a clone. A promotion starts a new
//! timeline. Every step each writable primary gets a commit; the engine acknowledges it as
//! PostgreSQL/openGauss would: at once without a synchronous set (or, `most_available_sync`
//! honoured, with fewer than `number` listed standbys streaming), else once `number` of the
//! listed standbys streaming from it (`ANY`) or the first `number` of them (`FIRST`) have it.
//!
//! Links: messages travel between the controller, each instance's manager and server (one
//! host: nothing cuts them apart) and the client, the source of the commits. A link is cut in
//! one direction or both; a cut has these effects (a TCP exchange needs both directions, a
//! request whose answer is lost still arrives):
//! - controller -> manager cut: no status report, no request delivered, no lease renewal;
//!   manager -> controller cut alone: requests and renewals arrive, the answers are lost, so
//!   the controller sees silence;
//! - controller <-> server: the database-port probe of a silent manager's instance fails;
//! - server <-> server: no streaming, no clone or rewind from that source;
//! - manager <-> manager: a failsafe request or its answer is lost (a peer that got the
//!   request holds the primary even when its answer is lost);
//! - client <-> server: that primary gets no commits.
//!
//! The lease (`crate::lease`), at the model's step granularity (one second, one controller pass,
//! one lease check per step):
//! - each pass the controller sends every instance the platform runs a status request that
//!   renews its lease only when it answered in the last pass, and records when it sent it;
//!   `Observed::unrenewed_for` is the time since then (since the controller started, at most).
//!   A renewal that is sent over a working controller -> manager link arrives, even when the
//!   answer is lost. A restarted controller has nothing silent, nothing renewed, and counts
//!   from its start. A clock jump moves the controller's wall clock (`now`), never the
//!   monotonic clock the lease and `unrenewed_for` use;
//! - a working manager of a running, unfenced primary with a lease checks it with the real
//!   `lease::verdict` every step, before the step's commits: it asks every peer its applied
//!   configuration lists to hold it (`AskPeers`; the round lands before or after the
//!   controller's observation), or fences and stops its server (`StopWrites`), so a primary
//!   whose lease ran out acknowledges nothing in that step. One check a step rounds the stop up
//!   to the next second, which `GUARD` covers (a primary stops when its lease ends at the
//!   latest); the controller waits `MARGIN` and the probe time-out more. A peer holds the
//!   primary, as `Manager::hold` decides, when its manager works and it has no data or is a
//!   standby whose applied upstream is that primary, holding nobody else; it reports the hold
//!   and refuses `Promote` (and a primary's bootstrap) until it ends. A round in which every
//!   listed peer held the primary and answered renews its lease from the round's start;
//! - a frozen or dead manager does nothing (its server, if it serves, keeps serving: the
//!   lease's documented limit); a thawed one checks at once; a restarted one has lost its
//!   failsafe rounds and reads its last contact and its hold back from their files. A manager
//!   frozen by SIGSTOP finds, when it resumes, the renewal the kernel kept for it meanwhile and
//!   refuses it (`Manager::contacted`: its lease loop has not run for that long).
//!
//! Faults (each step with a per-seed probability, until a per-seed step): crash of an
//! instance (manager and server; sometimes the data directory too, or the whole instance),
//! server crash, manager crash with the server left running (the local platform), freeze of
//! the whole instance or of its manager only, slow probe (no report for a pass, the database
//! port answering or not), controller restart (fresh `watching_since`, sometimes losing the
//! actions of the pass whose status it persisted), clock jump, switchover request. A disk is
//! only lost while every other instance is a standby with a complete copy and a member the spec
//! does not fence holds every acknowledged commit. Link faults, from a stream of their own with
//! per-seed probabilities: a random link cut one way or both ways; named partitions (the
//! primary against everyone else, from the controller only, from its standbys only; the
//! primary and one standby against the controller and the others; the controller against
//! everything; a standby from the primary), the client on either side of a split of the
//! instances; a flapping partition (down and up every few steps); healing one cut or all.
//! Cuts last a drawn number of steps. Then faults stop, frozen instances thaw, every link
//! heals, and the cluster must converge.
//!
//! Spec changes, during the same steps (each with a per-seed probability, from a stream of
//! their own, so a seed's faults do not depend on them):
//! - scaling: `spec.instances` changes to any other size in 1..=`MAX_SIM_INSTANCES`, the rest
//!   of the spec kept valid as `crd::validate` wants it (the synchronous number below the size,
//!   `maxWalSenders` at least the size plus one, fences only on instances of the new size). A
//!   scale-down never leaves every copy of the acknowledged commits beyond the new size (users
//!   do not remove data on purpose). The model holds a slot for every instance the spec may ask
//!   for: the platform creates members (`Action::Create`), and `Action::Delete` stops an
//!   instance and removes its data, after which it is `Missing` and leaves the observation (an
//!   orphaned server keeps the platform from removing its data);
//! - spec fencing: `fencedInstances` gains or loses a member (during a transition, half the
//!   time the one it promotes or would choose);
//! - parameters: a reload-only one (`RELOAD_PARAMETER`) or a restart-only one
//!   (`RESTART_PARAMETER`; `maxWalSenders` is restart-only too, and changes now and then with a
//!   resize). A running server started with other values of the restart-only settings than its
//!   applied configuration reports them in `pending_restart`, as PostgreSQL does.
//!
//! When faults stop, fences are settled: standbys may stay fenced if the primary is healthy, no
//! transition is in flight and enough other standbys remain for the synchronous number (else
//! the cluster could rightly never converge); everything else is unfenced.
//!
//! Invariants:
//! 1. one writer: at every step at most one server accepts writes, whatever the network does;
//!    acknowledgements never move back to a timeline that later acknowledgements left, and
//!    never come from two instances in one step; the status never has two ready primaries, and
//!    names the target as the primary whenever no transition is in flight; nothing is promoted
//!    or started as primary while another instance may still accept writes; a writable primary
//!    in sight that the plan does not keep is fenced at once. The one tolerated case is the
//!    lease's known limit: a second server accepting writes whose manager is frozen or dead
//!    (nothing stops it; only process faults make one, never the network), counted and printed
//!    with what it acknowledged while not the endorsed writer, which is left out of the
//!    bookkeeping. A replaced primary that resumes with a working manager (thawed, partitioned,
//!    restarted) is no longer tolerated: its lease stops it first. The old primary of a
//!    transition acknowledging before anything was promoted (its lease still runs) is counted;
//!    its acknowledgements obey the rules above;
//! 2. with synchronous replication and `dataDurability: required`, no acknowledged commit is
//!    lost: every acknowledgement extends the history of the earlier ones, and the primary the
//!    status names holds all of them whenever it accepts writes (and at the end);
//! 3. once faults stop, the cluster converges within `CONVERGENCE_STEPS` to exactly the final
//!    `spec.instances` members (every other instance deleted with its data), one primary that
//!    the spec does not fence, every other member streaming from it except the fenced ones,
//!    which are stopped and not ready (`Healthy`, or `Degraded` for those alone), no restart
//!    pending on a running member and no transition in flight, and stays there;
//! 4. every plan takes at most one disruptive step and never initialises a primary once the
//!    cluster is initialised;
//! 5. membership: only members are created; an instance is deleted only when it is beyond
//!    `spec.instances`, neither the primary nor an end of a transition in flight (nor the
//!    target the last pass was promoting), the highest ordinal left, and no longer listed in the
//!    primary's applied synchronous set. With `required`, removing a synchronous standby must
//!    not take away a copy of an acknowledged commit that a failover counts on: every
//!    acknowledged commit is on the primary and on `number` members of its synchronous set (that
//!    is what `ANY`/`FIRST n` promise, and what the failover's durability check trusts), so a
//!    deleted standby's acknowledged commits must already be on `number` members of the set the
//!    primary applied without it, or losing the primary next would lose them;
//! 6. spec fencing: a fenced instance is never sent `Promote`, `Start`, `Restart`, `Rejoin`,
//!    `Rebuild` or `Bootstrap` and never becomes the primary (unless its promotion was under way
//!    or done when the fence came: the plan may complete it, as primary, and fence it after), a
//!    fenced primary causes no failover, and a fenced instance's server stops within
//!    `FENCE_PASSES` passes in which the plan could stop it (steady state, its manager answering
//!    and idle, the controller acting, and no unreachable primary held by its standbys, whose
//!    pass only reports it);
//! 7. rolling restarts: at most one `Restart` in flight, and never one to the primary while the
//!    spec asks for more than one instance (it hands over through a switchover).
//!
//! Defects this simulation found in the product, all fixed: a primary without a lease (single
//! instance) replaced through an extra, a promotion outside the old primary's failsafe peers, a
//! target fenced after its promotion chosen again, commits acknowledged alone before a
//! synchronous set applied, a renewal a stopped manager took when it resumed, and commits
//! confirmed under a synchronous set the failover did not trust (a set applied but not yet seen,
//! or the set before a change); every broken invariant fails the run.
//!
//! `SIM_SEED=1234 cargo test -p opengauss-operator --lib plan::sim -- --nocapture` replays one
//! seed and prints its step-by-step trace; `SIM_SEEDS=n` changes how many seeds the normal run
//! tries, `SIM_FIRST_SEED=k` where they start. A failure prints the seed, its parameters and
//! the last steps of its trace.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use opengauss_crd::names::instance_names;
use opengauss_crd::{
    DataDurability, OpenGaussClusterSpec, OpenGaussClusterStatus, Phase, Role, SyncMethod, TransitionStep,
};

use super::{Action, Input, Observation, Observed, Plan, PlatformState, UserRequests, decide};
use crate::engine::timeline::Switch;
use crate::engine::{DesiredConfig, Endpoint, Lsn, SyncConfig};
use crate::instance::report::{
    ControlReport, FailsafeHold, InstanceReport, ManagerPhase, NodeReport, OperationKind, OperationReport,
    OperationState, ReceiverReport, ReplicationRow, Request, ServerProcessReport,
};
use crate::lease::{self, Verdict};

const CLUSTER: &str = "sim";
const PORT: u16 = 5432;
const HA_PORT: u16 = 5433;
/// Seeds tried by the normal test run.
const DEFAULT_SEEDS: u64 = 3000;
/// Fault-free steps allowed for convergence once faults stop. Generous against the slowest
/// legitimate recovery: failover delay, a failed clone's retry back-off (up to 30 s), a rejoin
/// falling back to a re-clone, and the repointing of every standby.
const CONVERGENCE_STEPS: u64 = 180;
/// Converged must hold this many passes in a row.
const STABLE_PASSES: u32 = 3;
/// The largest size the simulated spec asks for; the model holds this many instance slots.
const MAX_SIM_INSTANCES: u32 = 5;
/// A parameter that takes effect only after a restart (reported in `pending_restart` while the
/// running server still has the old value), and one a reload applies.
const RESTART_PARAMETER: &str = "shared_buffers";
const RELOAD_PARAMETER: &str = "work_mem";
/// `max_wal_senders` also needs a restart (the server allocates its senders at start).
const MAX_WAL_SENDERS: &str = "max_wal_senders";
/// Passes the plan gets, with the instance's manager answering and nothing in its way, to stop
/// the server of an instance the spec fences. One disruptive step per pass: fencing several
/// instances at once, a removal or a rolling restart compete for it.
const FENCE_PASSES: u32 = 8;

// ---------------------------------------------------------------------------------------------
// Randomness

/// SplitMix64: tiny, fast, and good enough to spread fault schedules.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x9E37_79B9_7F4A_7C15)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

// ---------------------------------------------------------------------------------------------
// Parameters of one run

#[derive(Clone, Debug)]
struct Params {
    instances: u32,
    method: SyncMethod,
    number: u32,
    durability: DataDurability,
    delay_seconds: u32,
    /// Steps during which faults are injected.
    fault_steps: u64,
    /// Probability of a fault in each faulty step.
    fault_rate: f64,
    /// Probability that a streaming standby receives only part of what it could this step.
    lag: f64,
    /// The engine honours `most_available_sync` (openGauss) rather than ignoring it (PostgreSQL).
    most_available_honoured: bool,
    /// Per faulty step, the probability that the spec's size changes (within
    /// 1..=`MAX_SIM_INSTANCES`), that an instance is fenced or unfenced in the spec, and that
    /// a server parameter changes (one needing a restart, or one a reload applies).
    scale_rate: f64,
    fence_rate: f64,
    param_rate: f64,
    /// Per faulty step, the probabilities of the link faults (see `Net`): a random link cut one
    /// way or both, a named partition, a flapping cut, and the healing of one cut or of all.
    cut_rate: f64,
    partition_rate: f64,
    flap_rate: f64,
    heal_one_rate: f64,
    heal_all_rate: f64,
}

impl Params {
    /// `rng` draws what the simulation always had (so a seed's cluster and faults do not
    /// depend on the spec changes); `changes` draws the rates of spec changes.
    fn draw(rng: &mut Rng, changes: &mut Rng) -> Self {
        // A quarter of the seeds never change the spec in a given way: the fault mix alone.
        let mut rate =
            |max: f64| if changes.chance(0.25) { 0.0 } else { max * (changes.below(1000) as f64 / 1000.0) };
        let (scale_rate, fence_rate, param_rate) = (rate(0.04), rate(0.04), rate(0.03));
        let instances = if rng.chance(0.5) { 3 } else { rng.range(2, 5) as u32 };
        let method = match rng.below(10) {
            0..=5 => SyncMethod::Any,
            6 | 7 => SyncMethod::First,
            _ => SyncMethod::Off,
        };
        let number = if instances >= 3 && rng.chance(0.25) {
            rng.range(2, u64::from(instances) - 1) as u32
        } else {
            1
        };
        let durability = if rng.chance(0.75) { DataDurability::Required } else { DataDurability::Preferred };
        Params {
            instances,
            method,
            number,
            durability,
            delay_seconds: rng.range(1, 6) as u32,
            fault_steps: rng.range(0, 250),
            fault_rate: 0.02 + 0.13 * (rng.below(1000) as f64 / 1000.0),
            lag: rng.below(4) as f64 * 0.1,
            most_available_honoured: rng.chance(0.5),
            scale_rate,
            fence_rate,
            param_rate,
            cut_rate: 0.0,
            partition_rate: 0.0,
            flap_rate: 0.0,
            heal_one_rate: 0.0,
            heal_all_rate: 0.0,
        }
    }

    /// The link faults' rates, from a stream of their own (so a seed's other faults and spec
    /// changes do not depend on them). A quarter of the seeds have no link faults at all.
    fn draw_links(&mut self, links: &mut Rng) {
        let quiet = links.chance(0.25);
        let mut rate = |max: f64| if quiet { 0.0 } else { max * (links.below(1000) as f64 / 1000.0) };
        self.cut_rate = rate(0.05);
        self.partition_rate = rate(0.04);
        self.flap_rate = rate(0.02);
        self.heal_one_rate = rate(0.05);
        self.heal_all_rate = rate(0.02);
    }

    fn spec(&self) -> OpenGaussClusterSpec {
        let durability = match self.durability {
            DataDurability::Required => "required",
            DataDurability::Preferred => "preferred",
        };
        let json = serde_json::json!({
            "instances": self.instances,
            "replication": { "synchronous": { "method": self.method.as_str(), "number": self.number } },
            "failover": { "delaySeconds": self.delay_seconds, "dataDurability": durability },
        });
        let spec: OpenGaussClusterSpec = serde_json::from_value(json).expect("a valid simulated spec");
        assert!(spec.problems().is_empty(), "simulated spec is invalid: {:?}", spec.problems());
        spec
    }

    /// Whether no acknowledged commit may be lost: synchronous replication with `required`.
    /// (While the spec asks for one instance nothing waits for a standby, but nothing can
    /// replace the primary either, so nothing acknowledged may be lost then too.)
    fn no_loss(&self) -> bool {
        self.method != SyncMethod::Off && self.durability == DataDurability::Required
    }

    fn describe(&self) -> String {
        format!(
            "instances={} sync={} {} durability={:?} delay={}s fault_steps={} fault_rate={:.3} lag={:.1} most_available_sync={} scale_rate={:.3} fence_rate={:.3} param_rate={:.3} cut_rate={:.3} partition_rate={:.3} flap_rate={:.3} heal_one_rate={:.3} heal_all_rate={:.3}",
            self.instances,
            self.method.as_str(),
            self.number,
            self.durability,
            self.delay_seconds,
            self.fault_steps,
            self.fault_rate,
            self.lag,
            if self.most_available_honoured { "honoured" } else { "ignored" },
            self.scale_rate,
            self.fence_rate,
            self.param_rate,
            self.cut_rate,
            self.partition_rate,
            self.flap_rate,
            self.heal_one_rate,
            self.heal_all_rate,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// WAL

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Checkpoint,
    Promotion,
    Commit,
}

/// One WAL record. Ids are unique across the run, so two histories holding the same record at
/// the same position agree on everything before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rec {
    tl: u32,
    id: u64,
    kind: Kind,
}

/// A complete data directory.
#[derive(Clone, Debug)]
struct Data {
    wal: Vec<Rec>,
    /// `standby.signal` is present.
    standby: bool,
    /// The control file says the last shutdown was clean.
    clean: bool,
    replayed: usize,
}

impl Data {
    fn tl(&self) -> u32 {
        self.wal.last().map_or(1, |r| r.tl)
    }

    /// Where each earlier timeline of this history ended, as a primary reports it.
    fn timeline_switches(&self) -> Vec<Switch> {
        (1..self.wal.len())
            .filter(|&i| self.wal[i].tl != self.wal[i - 1].tl)
            .map(|i| Switch { timeline: self.wal[i - 1].tl, at: lsn(i) })
            .collect()
    }

    /// Whether this history is a prefix of `up`'s: it can stream from it.
    fn follows(&self, up: &Data) -> bool {
        let n = self.wal.len();
        n <= up.wal.len() && (n == 0 || up.wal[n - 1] == self.wal[n - 1])
    }

    fn contains(&self, history: &[Rec]) -> bool {
        let n = history.len();
        n == 0 || (self.wal.len() >= n && self.wal[n - 1] == history[n - 1])
    }

    /// Position and timeline of the last checkpoint (or restartpoint).
    fn checkpoint(&self) -> (usize, u32) {
        self.wal
            .iter()
            .enumerate()
            .rev()
            .find(|(i, r)| r.kind != Kind::Commit && *i < self.replayed.max(1))
            .map_or((0, 1), |(i, r)| (i, r.tl))
    }
}

fn lsn(pos: usize) -> Lsn {
    Lsn(0x0100_0000 + pos as u64 * 0x80)
}

fn common_prefix(a: &[Rec], b: &[Rec]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

// ---------------------------------------------------------------------------------------------
// Links

/// An end of a network link. An instance's manager and server share a host: nothing cuts them
/// apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Node {
    Controller,
    /// Where the applications' commits come from.
    Client,
    Manager(usize),
    Server(usize),
}

impl Node {
    fn host(&self) -> Option<usize> {
        match self {
            Node::Manager(i) | Node::Server(i) => Some(*i),
            Node::Controller | Node::Client => None,
        }
    }
}

/// A cut that heals and comes back: down for `period` steps, up for `period`, from `from`
/// until `until`.
#[derive(Clone, Debug)]
struct Flap {
    links: Vec<(Node, Node)>,
    period: u64,
    from: u64,
    until: u64,
}

/// The network: directional cuts (`(from, to)`: nothing sent from `from` reaches `to`).
#[derive(Clone, Debug, Default)]
struct Net {
    /// Cuts, each with the step at which it heals.
    cuts: BTreeMap<(Node, Node), u64>,
    flaps: Vec<Flap>,
    /// The links down this step: the cuts and the flapping links in their down phase.
    down: BTreeSet<(Node, Node)>,
}

impl Net {
    fn cut(&mut self, from: Node, to: Node, until: u64) {
        let heal = self.cuts.entry((from, to)).or_insert(until);
        *heal = (*heal).max(until);
    }

    /// Cuts every link between the two sides, both ways.
    fn split(&mut self, a: &[Node], b: &[Node], until: u64) {
        for &x in a {
            for &y in b {
                if x != y {
                    self.cut(x, y, until);
                    self.cut(y, x, until);
                }
            }
        }
    }

    fn heal_all(&mut self) {
        self.cuts.clear();
        self.flaps.clear();
        self.down.clear();
    }

    /// Sets `down` for `step`, after expiring what healed.
    fn settle(&mut self, step: u64) {
        self.cuts.retain(|_, until| *until > step);
        self.flaps.retain(|f| f.until > step);
        self.down = self.cuts.keys().copied().collect();
        for f in &self.flaps {
            if ((step - f.from) / f.period) % 2 == 0 {
                self.down.extend(f.links.iter().copied());
            }
        }
    }
}

fn node_name(insts: &[Inst], n: Node) -> String {
    match n {
        Node::Controller => "ctl".into(),
        Node::Client => "client".into(),
        Node::Manager(i) => format!("m{}", insts[i].short()),
        Node::Server(i) => format!("s{}", insts[i].short()),
    }
}

// ---------------------------------------------------------------------------------------------
// Instances

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Freeze {
    No,
    /// Only the manager hangs; the server works.
    Manager,
    /// The whole instance (manager and server) is stopped, as by SIGSTOP or a paused VM.
    Whole,
}

#[derive(Clone, Debug)]
struct Work {
    request: Request,
    left: u32,
    started: bool,
}

#[derive(Clone, Debug)]
struct Inst {
    name: String,
    endpoint: Endpoint,
    /// The manager process (pod).
    platform: PlatformState,
    freeze: Freeze,
    thaw_at: u64,
    data: Option<Data>,
    /// The applied configuration, kept next to the data directory.
    applied: Option<DesiredConfig>,
    fenced: bool,
    /// The final WAL position a standby recorded when it was fenced (detached first).
    fenced_lsn: Option<usize>,
    running: bool,
    accepting: bool,
    crashed: bool,
    work: Option<Work>,
    operation: Option<OperationReport>,
    last_failure: Option<(Request, Timestamp, u32)>,
    /// Whom the server streams from, as of the last replication step.
    streaming_from: Option<usize>,
    /// Commits waiting for synchronous standbys: WAL positions.
    pending: Vec<usize>,
    /// The manager's report is missing this pass; the value says whether the database port
    /// answers.
    slow_probe: Option<bool>,
    /// The restart-only settings the running server started with: `RESTART_PARAMETER` and
    /// `max_wal_senders`.
    started: Option<(Option<String>, u32)>,
    /// Passes the spec has fenced this instance while its server ran and the plan could have
    /// stopped it.
    fence_due: u32,
    /// The spec fenced this instance while its promotion was under way (requested, done, or
    /// already accepting writes): the plan cannot take that back, so it may still complete.
    fenced_mid_promotion: bool,
    /// Made from an older definition than the spec's now (the platform would replace it).
    outdated: bool,
    // The manager's lease bookkeeping (`instance::manager`), on the monotonic clock:
    /// When a lease renewal from the controller last arrived.
    contact: Option<Duration>,
    /// The contact last written to the lease file, which a restarted manager reads back.
    persisted_contact: Option<Duration>,
    /// When the last failsafe round in which every peer held this primary began.
    held_since: Option<Duration>,
    /// The primary this instance holds (failsafe), and until when.
    holding: Option<(String, Duration)>,
    /// A renewal reached the frozen manager; it takes it when it thaws (`SIM_QUEUED_RENEWALS`).
    queued_renewal: bool,
}

impl Inst {
    /// The manager and its server are gone (a crash, a pod deleted): nothing runs, nothing is
    /// in flight, the platform sees a dead instance. The data stays as it is.
    fn processes_gone(&mut self) {
        self.running = false;
        self.accepting = false;
        self.crashed = false;
        self.pending.clear();
        self.streaming_from = None;
        self.work = None;
        self.operation = None;
        self.last_failure = None;
        self.platform = PlatformState::Dead;
        self.manager_gone();
    }

    /// The manager process ended: what it kept in memory is lost; a restarted one reads the
    /// last contact back from its lease file and the hold back from its hold file.
    fn manager_gone(&mut self) {
        self.contact = self.persisted_contact;
        self.held_since = None;
        self.queued_renewal = false;
    }

    fn new(name: String) -> Self {
        Inst {
            endpoint: Endpoint { host: name.clone(), port: PORT },
            name,
            platform: PlatformState::Missing,
            freeze: Freeze::No,
            thaw_at: 0,
            data: None,
            applied: None,
            fenced: false,
            fenced_lsn: None,
            running: false,
            accepting: false,
            crashed: false,
            work: None,
            operation: None,
            last_failure: None,
            streaming_from: None,
            pending: Vec::new(),
            slow_probe: None,
            started: None,
            fence_due: 0,
            fenced_mid_promotion: false,
            outdated: false,
            contact: None,
            persisted_contact: None,
            held_since: None,
            holding: None,
            queued_renewal: false,
        }
    }

    /// The manager is up and can act.
    fn manager_works(&self) -> bool {
        self.platform == PlatformState::Running && self.freeze == Freeze::No
    }

    /// A server that may serve while nothing can stop it: its manager is frozen or dead (the
    /// one thing a lease cannot cover, see `crate::lease`).
    fn manager_limited(&self) -> bool {
        self.platform == PlatformState::Dead || self.freeze == Freeze::Manager
    }

    /// The server is up, not frozen, answering.
    fn serving(&self) -> bool {
        self.running && self.accepting && self.freeze != Freeze::Whole && self.data.is_some()
    }

    fn writable(&self) -> bool {
        self.serving() && self.data.as_ref().is_some_and(|d| !d.standby)
    }

    fn is_standby_server(&self) -> bool {
        self.serving() && self.data.as_ref().is_some_and(|d| d.standby)
    }

    fn short(&self) -> &str {
        self.name.rsplit('-').next().unwrap_or(&self.name)
    }

    /// An operation finished with the server running and accepting connections under `config`,
    /// any fence lifted (fresh or rewound data is not what was fenced).
    fn serve_with(&mut self, config: &DesiredConfig) {
        self.applied = Some(config.clone());
        self.fenced = false;
        self.fenced_lsn = None;
        self.running = true;
        self.accepting = true;
        self.crashed = false;
        self.started = self.restart_settings();
    }

    /// The restart-only settings of the applied configuration.
    fn restart_settings(&self) -> Option<(Option<String>, u32)> {
        self.applied.as_ref().map(|c| (c.parameters.get(RESTART_PARAMETER).cloned(), c.max_wal_senders))
    }

    /// Restart-only parameters whose applied value the running server does not have yet, as
    /// the engine reports them (only while it answers SQL).
    fn pending_restart(&self) -> Vec<String> {
        let (Some((param, senders)), Some((want_param, want_senders))) =
            (&self.started, self.restart_settings())
        else {
            return Vec::new();
        };
        if !self.running || !self.accepting {
            return Vec::new();
        }
        let mut pending = Vec::new();
        if senders != &want_senders {
            pending.push(MAX_WAL_SENDERS.to_string());
        }
        if param != &want_param {
            pending.push(RESTART_PARAMETER.to_string());
        }
        pending
    }
}

/// How the engine treats a commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ack {
    Waiting,
    /// Acknowledged without any standby's confirmation (asynchronous, or no synchronous
    /// standby left with `most_available_sync`).
    WithoutStandby,
    Confirmed,
}

/// What the manager answered to a request.
#[derive(Debug)]
enum Submitted {
    Accepted,
    Busy,
    Refused(String),
    Unreachable,
}

fn request_id(request: &Request) -> String {
    // FNV-1a over the debug form: stable within a run, which is all the model needs.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("{request:?}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn retry_backoff(failures: u32) -> SignedDuration {
    SignedDuration::from_millis(500i64.saturating_mul(1 << failures.min(6)))
        .min(SignedDuration::from_secs(30))
}

fn sync_names(s: Option<&SyncConfig>) -> String {
    match s {
        Some(s) if s.method != SyncMethod::Off && !s.standbys.is_empty() => {
            format!("{} {} ({})", s.method.as_str().to_uppercase(), s.number, s.standbys.join(", "))
        }
        _ => String::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// The model

#[derive(Default, Debug, Clone)]
struct Stats {
    steps: u64,
    acked: u64,
    faults: BTreeMap<&'static str, u64>,
    changes: BTreeMap<&'static str, u64>,
    events: BTreeMap<&'static str, u64>,
    refusals: u64,
    lost_histories: u64,
    /// Steps with some link down.
    cut_steps: u64,
    /// Lease: renewals that arrived, failsafe rounds every peer held and rounds that failed,
    /// servers stopped at the end of their lease, promotions a holding standby refused, passes
    /// in which a hold kept the controller from replacing a primary (and how many separate
    /// times that began).
    renewals: u64,
    rounds_held: u64,
    rounds_failed: u64,
    lease_stops: u64,
    hold_refusals: u64,
    held_off_passes: u64,
    held_off_times: u64,
    /// Renewals a stopped manager found waiting when it resumed, and refused.
    queued_renewals_refused: u64,
    /// The old primary of a failover in flight, nothing promoted yet, acknowledging while its
    /// lease runs (its commits may be lost by an asynchronous or `preferred` failover).
    failing_over_acks: u64,
    /// The lease's known limit: steps with a second server accepting writes whose manager is
    /// frozen or dead, and what such a server acknowledged while not the endorsed writer.
    limit_steps: u64,
    limit_acks: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.steps += o.steps;
        self.acked += o.acked;
        self.refusals += o.refusals;
        self.lost_histories += o.lost_histories;
        self.cut_steps += o.cut_steps;
        self.renewals += o.renewals;
        self.rounds_held += o.rounds_held;
        self.queued_renewals_refused += o.queued_renewals_refused;
        self.rounds_failed += o.rounds_failed;
        self.lease_stops += o.lease_stops;
        self.hold_refusals += o.hold_refusals;
        self.held_off_passes += o.held_off_passes;
        self.held_off_times += o.held_off_times;
        self.failing_over_acks += o.failing_over_acks;
        self.limit_steps += o.limit_steps;
        self.limit_acks += o.limit_acks;
        for (k, v) in &o.faults {
            *self.faults.entry(k).or_default() += v;
        }
        for (k, v) in &o.changes {
            *self.changes.entry(k).or_default() += v;
        }
        for (k, v) in &o.events {
            *self.events.entry(k).or_default() += v;
        }
    }
}

struct Model {
    p: Params,
    spec: OpenGaussClusterSpec,
    /// The fault schedule's randomness.
    faults: Rng,
    /// The model's own randomness (operation durations, replication lag, failed rewinds).
    rng: Rng,
    /// The spec changes' randomness: sizes, fences, parameters.
    changes: Rng,
    /// The link faults' randomness.
    links: Rng,
    net: Net,
    /// The monotonic clock every process shares (a clock jump moves only `now`, the wall
    /// clock): one second per step.
    mono: Duration,
    /// The spec's generation, bumped with every change.
    generation: i64,
    insts: Vec<Inst>,
    start: Timestamp,
    now: Timestamp,
    step: u64,
    next_id: u64,
    next_tl: u32,
    faults_on: bool,
    /// The acknowledged history: a prefix of the acknowledging primary's WAL up to the latest
    /// acknowledged commit.
    acked: Vec<Rec>,
    /// Timeline of the latest acknowledged commit.
    acked_tl: Option<u32>,
    /// Timelines whose acknowledgements were superseded by another timeline's.
    retired: BTreeSet<u32>,
    /// Whether some data directory was initialised (a second `initdb` gets a timeline of its own).
    initdb_done: bool,
    // The controller.
    status: OpenGaussClusterStatus,
    watching_since: Timestamp,
    /// Instances whose manager did not answer in the last pass: they get no lease renewal.
    silent: BTreeSet<usize>,
    /// When the controller last sent each instance a lease renewal.
    renewed: BTreeMap<usize, Duration>,
    /// When the controller (re)started: its silence clocks start there at the earliest.
    controller_started: Duration,
    /// Primaries whose failsafe round this step lands after the controller's observation.
    late_rounds: Vec<usize>,
    /// A failsafe hold kept the controller from replacing a primary in the last pass.
    held_off: bool,
    requests: UserRequests,
    drop_actions: bool,
    stats: Stats,
    trace: Option<Vec<String>>,
    line: String,
    /// The last step whose trace line was written.
    traced: u64,
}

impl Model {
    fn new(seed: u64, trace: bool) -> Self {
        let mut faults = Rng::new(seed);
        let mut changes = Rng::new(seed ^ 0x0C4A_6E5D_00DD_BA11);
        let mut links = Rng::new(seed ^ 0x7A11_C0DE_5EED_0001);
        let mut p = Params::draw(&mut faults, &mut changes);
        p.draw_links(&mut links);
        let rng = Rng::new(seed ^ 0x5DEE_CE66_D1CE_5EED);
        let spec = p.spec();
        // Every instance the spec may ever ask for has a slot; those beyond the spec's size that
        // the platform does not have (never created, or deleted) are not observed.
        let insts = instance_names(CLUSTER, MAX_SIM_INSTANCES).into_iter().map(Inst::new).collect();
        let start = Timestamp::from_second(1_700_000_000).expect("valid timestamp");
        Model {
            spec,
            faults,
            rng,
            changes,
            links,
            net: Net::default(),
            mono: Duration::ZERO,
            generation: 1,
            insts,
            start,
            now: start,
            step: 0,
            next_id: 1,
            next_tl: 2,
            faults_on: p.fault_steps > 0,
            acked: Vec::new(),
            acked_tl: None,
            retired: BTreeSet::new(),
            initdb_done: false,
            status: OpenGaussClusterStatus::default(),
            watching_since: start,
            silent: BTreeSet::new(),
            renewed: BTreeMap::new(),
            controller_started: Duration::ZERO,
            late_rounds: Vec::new(),
            held_off: false,
            requests: UserRequests::default(),
            drop_actions: false,
            stats: Stats::default(),
            trace: trace.then(Vec::new),
            line: String::new(),
            traced: 0,
            p,
        }
    }

    fn note(&mut self, f: impl FnOnce() -> String) {
        if self.trace.is_some() {
            let s = f();
            self.line.push_str(&s);
            self.line.push(' ');
        }
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn by_endpoint(&self, ep: &Endpoint) -> Option<usize> {
        self.insts.iter().position(|x| x.endpoint == *ep)
    }

    fn by_name(&self, name: &str) -> Option<usize> {
        self.insts.iter().position(|x| x.name == name)
    }

    /// The spec asks for this instance.
    fn member(&self, i: usize) -> bool {
        (i as u32) < self.spec.instances
    }

    /// The platform has this instance (or the spec asks for it): it is observed.
    fn exists(&self, i: usize) -> bool {
        self.member(i) || self.insts[i].platform != PlatformState::Missing
    }

    fn existing(&self) -> Vec<usize> {
        (0..self.insts.len()).filter(|&i| self.exists(i)).collect()
    }

    fn fenced_in_spec(&self, i: usize) -> bool {
        self.spec.is_fenced(&self.insts[i].name)
    }

    fn holds_acked(&self, i: usize) -> bool {
        self.insts[i].data.as_ref().is_some_and(|d| d.contains(&self.acked))
    }

    /// What `from` sends reaches `to` this step.
    fn up(&self, from: Node, to: Node) -> bool {
        (from.host().is_some() && from.host() == to.host()) || !self.net.down.contains(&(from, to))
    }

    /// A connection (TCP: a handshake, then both ways) between `a` and `b` works.
    fn connected(&self, a: Node, b: Node) -> bool {
        self.up(a, b) && self.up(b, a)
    }

    // --- servers ---

    /// What a base backup from `j` holds: its WAL, as a standby not yet started.
    fn copy_of(&self, j: usize) -> Data {
        let wal = self.insts[j].data.as_ref().map(|d| d.wal.clone()).unwrap_or_default();
        let replayed = wal.len();
        Data { wal, standby: true, clean: false, replayed }
    }

    fn start_server(&mut self, i: usize) {
        let x = &mut self.insts[i];
        if !x.running {
            x.running = true;
            x.accepting = false;
            x.crashed = false;
            x.started = x.restart_settings();
            if let Some(d) = x.data.as_mut() {
                d.clean = false;
            }
        }
    }

    /// Sends what the primary `i` has to the standbys streaming from it, as a fast shutdown
    /// does with its shutdown checkpoint.
    fn flush_to_streamers(&mut self, i: usize) {
        let Some(src) = self.insts[i].data.as_ref().map(|d| d.wal.clone()) else {
            return;
        };
        for s in 0..self.insts.len() {
            if s == i
                || self.insts[s].streaming_from != Some(i)
                || !self.insts[s].serving()
                || !self.connected(Node::Server(s), Node::Server(i))
            {
                continue;
            }
            if let Some(d) = self.insts[s].data.as_mut()
                && d.wal.len() <= src.len()
                && (d.wal.is_empty() || src[d.wal.len() - 1] == d.wal[d.wal.len() - 1])
            {
                d.wal = src.clone();
            }
        }
    }

    /// Instance `i` can copy from (clone, rewind against) or stream from `j`'s server.
    fn can_copy(&self, i: usize, j: usize) -> bool {
        self.insts[j].serving() && self.connected(Node::Server(i), Node::Server(j))
    }

    /// A clean, fast stop: a primary writes its shutdown checkpoint and its standbys receive it.
    fn stop_fast(&mut self, i: usize) {
        if !self.insts[i].running {
            self.insts[i].crashed = false;
            return;
        }
        if self.insts[i].writable() {
            let tl = self.insts[i].data.as_ref().map_or(1, Data::tl);
            let id = self.fresh_id();
            if let Some(d) = self.insts[i].data.as_mut() {
                d.wal.push(Rec { tl, id, kind: Kind::Checkpoint });
                d.replayed = d.wal.len();
            }
            self.flush_to_streamers(i);
        }
        let x = &mut self.insts[i];
        x.running = false;
        x.accepting = false;
        x.crashed = false;
        x.pending.clear();
        x.streaming_from = None;
        if let Some(d) = x.data.as_mut() {
            d.clean = true;
            d.replayed = d.wal.len();
        }
    }

    /// The server dies on its own.
    fn kill_server(&mut self, i: usize, noticed: bool) {
        let x = &mut self.insts[i];
        if x.running {
            x.crashed = noticed;
        }
        x.running = false;
        x.accepting = false;
        x.pending.clear();
        x.streaming_from = None;
    }

    // --- the manager ---

    fn check(&self, i: usize, request: &Request) -> Result<(), String> {
        let x = &self.insts[i];
        if matches!(request, Request::Promote { .. } | Request::Bootstrap { source: None, .. })
            && let Some(h) = self.held(i)
        {
            return Err(format!(
                "holding {} (failsafe) for another {} ms: it may still accept writes",
                h.primary, h.remaining_ms
            ));
        }
        let standby = x.data.as_ref().is_some_and(|d| d.standby);
        match crate::instance::manager::refusal(request, x.data.is_some(), standby) {
            Some(why) => Err(why.to_string()),
            None => Ok(()),
        }
    }

    fn submit(&mut self, i: usize, request: &Request) -> Submitted {
        if !self.insts[i].manager_works() || !self.up(Node::Controller, Node::Manager(i)) {
            return Submitted::Unreachable;
        }
        if let Some(w) = &self.insts[i].work {
            return if w.request == *request { Submitted::Accepted } else { Submitted::Busy };
        }
        // The same bootstrap again after it succeeded is a no-op.
        if let Some(op) = &self.insts[i].operation
            && op.state == OperationState::Succeeded
            && op.kind == OperationKind::Bootstrap
            && op.request_id == request_id(request)
        {
            return Submitted::Accepted;
        }
        if let Err(why) = self.check(i, request) {
            return Submitted::Refused(why);
        }
        if let Some((failed, at, failures)) = &self.insts[i].last_failure
            && failed == request
            && self.now.duration_since(*at) < retry_backoff(*failures)
        {
            return Submitted::Refused(format!("the same request failed {failures} time(s); backing off"));
        }
        let left = match request {
            Request::Bootstrap { source: None, .. } => self.rng.range(1, 3),
            Request::Bootstrap { source: Some(_), .. } => self.rng.range(1, 4),
            Request::Start { .. } | Request::Configure { .. } | Request::Restart { .. } | Request::Fence => 1,
            Request::Promote { .. } => self.rng.range(1, 2),
            Request::Rejoin { .. } | Request::Rebuild { .. } => self.rng.range(1, 4),
        } as u32;
        let x = &mut self.insts[i];
        x.work = Some(Work { request: request.clone(), left, started: false });
        x.operation = Some(OperationReport {
            kind: request.kind(),
            state: OperationState::Running,
            request_id: request_id(request),
            message: String::new(),
        });
        Submitted::Accepted
    }

    /// Advances the operation of instance `i` by one step.
    fn progress(&mut self, i: usize) {
        if !self.insts[i].manager_works() {
            return;
        }
        let Some(mut w) = self.insts[i].work.take() else {
            return;
        };
        let first = !w.started;
        w.started = true;
        w.left = w.left.saturating_sub(1);
        let result = self.execute(i, &w.request, first, w.left == 0);
        match result {
            None => self.insts[i].work = Some(w),
            Some(r) => {
                let now = self.now;
                let x = &mut self.insts[i];
                match &r {
                    Ok(_) => x.last_failure = None,
                    Err(_) => {
                        let failures = match &x.last_failure {
                            Some((prev, _, n)) if *prev == w.request => n + 1,
                            _ => 1,
                        };
                        x.last_failure = Some((w.request.clone(), now, failures));
                    }
                }
                if let Some(op) = x.operation.as_mut() {
                    match r {
                        Ok(m) => {
                            op.state = OperationState::Succeeded;
                            op.message = m;
                        }
                        Err(m) => {
                            op.state = OperationState::Failed;
                            op.message = m;
                        }
                    }
                }
            }
        }
    }

    /// One step of a request, mirroring `instance::manager`. `None` while it still runs.
    fn execute(
        &mut self,
        i: usize,
        request: &Request,
        first: bool,
        last: bool,
    ) -> Option<Result<String, String>> {
        match request {
            Request::Bootstrap { source: None, config } => {
                if first {
                    self.insts[i].data = None;
                }
                if !last {
                    return None;
                }
                if self.faults_on && self.rng.chance(0.05) {
                    return Some(Err("initdb failed".into()));
                }
                let id = self.fresh_id();
                // Every new cluster starts on timeline 1; a second one (which the plan must
                // never create) gets a timeline of its own so that its writes stand apart.
                let tl = if self.initdb_done {
                    self.next_tl += 1;
                    self.next_tl - 1
                } else {
                    1
                };
                self.initdb_done = true;
                let x = &mut self.insts[i];
                x.data = Some(Data {
                    wal: vec![Rec { tl, id, kind: Kind::Checkpoint }],
                    standby: false,
                    clean: true,
                    replayed: 1,
                });
                x.serve_with(config);
                Some(Ok("initialised a new primary".into()))
            }
            Request::Bootstrap { source: Some(src), config } => {
                if first {
                    self.insts[i].data = None;
                }
                let source = self.by_endpoint(src).filter(|&j| j != i && self.can_copy(i, j));
                let Some(j) = source else {
                    return Some(Err(format!("pg_basebackup: could not connect to {src}")));
                };
                if !last {
                    return None;
                }
                let copy = self.copy_of(j);
                let x = &mut self.insts[i];
                x.data = Some(copy);
                x.serve_with(config);
                Some(Ok(format!("cloned from {src} and started as a standby")))
            }
            Request::Start { config } => {
                if first {
                    self.insts[i].applied = Some(config.clone());
                    self.insts[i].fenced = false;
                    self.insts[i].fenced_lsn = None;
                    self.start_server(i);
                }
                let x = &self.insts[i];
                if x.running && x.accepting {
                    Some(Ok(format!("started as {}", if config.standby { "standby" } else { "primary" })))
                } else if !x.running {
                    Some(Err("the database server exited while starting".into()))
                } else {
                    None
                }
            }
            Request::Configure { config } => {
                self.insts[i].applied = Some(config.clone());
                Some(Ok("configuration reloaded".into()))
            }
            Request::Promote { config } => {
                if first {
                    if !self.insts[i].running {
                        return Some(Err("the server is not running".into()));
                    }
                    if let Some(from) = self.insts[i].data.as_ref().filter(|d| d.standby).map(Data::tl) {
                        let tl = self.next_tl;
                        self.next_tl += 1;
                        let _ = from;
                        let id = self.fresh_id();
                        let x = &mut self.insts[i];
                        if let Some(d) = x.data.as_mut() {
                            d.wal.push(Rec { tl, id, kind: Kind::Promotion });
                            d.replayed = d.wal.len();
                            d.standby = false;
                        }
                        x.accepting = true;
                        x.streaming_from = None;
                    }
                }
                if !self.insts[i].running {
                    return Some(Err("the database server exited".into()));
                }
                if !last {
                    return None;
                }
                self.insts[i].applied = Some(config.clone());
                Some(Ok("promoted to primary".into()))
            }
            Request::Rejoin { source, config } => {
                if first {
                    self.stop_fast(i);
                }
                if !last {
                    return None;
                }
                let how = if self.insts[i].data.as_ref().is_some_and(|d| d.standby) {
                    "followed"
                } else {
                    let src = self.by_endpoint(source).filter(|&j| j != i && self.can_copy(i, j));
                    let rewind_fails = self.rng.chance(0.15);
                    match src {
                        Some(j) if !rewind_fails => {
                            let src_wal =
                                self.insts[j].data.as_ref().map(|d| d.wal.clone()).unwrap_or_default();
                            let x = &mut self.insts[i];
                            if let Some(d) = x.data.as_mut() {
                                let keep = common_prefix(&d.wal, &src_wal);
                                d.wal.truncate(keep);
                                d.replayed = d.replayed.min(keep);
                                d.standby = true;
                            }
                            "rewound"
                        }
                        _ => {
                            // The data directory is set aside; a clone replaces it.
                            self.insts[i].data = None;
                            let Some(j) = src else {
                                return Some(Err(format!(
                                    "re-cloning after a failed rewind: could not connect to {source}"
                                )));
                            };
                            self.insts[i].data = Some(self.copy_of(j));
                            "re-cloned"
                        }
                    }
                };
                let x = &mut self.insts[i];
                x.serve_with(config);
                if let Some(d) = x.data.as_mut() {
                    d.clean = false;
                }
                Some(Ok(format!("{how} from {source} and started as a standby")))
            }
            Request::Rebuild { source, config } => {
                if first {
                    self.stop_fast(i);
                    // The data directory is set aside before cloning again.
                    self.insts[i].data = None;
                }
                let src = self.by_endpoint(source).filter(|&j| j != i && self.can_copy(i, j));
                let Some(j) = src else {
                    return Some(Err(format!("cloning again: could not connect to {source}")));
                };
                if !last {
                    return None;
                }
                let copy = self.copy_of(j);
                let x = &mut self.insts[i];
                x.data = Some(copy);
                x.serve_with(config);
                Some(Ok(format!("cloned again from {source} and started as a standby")))
            }
            Request::Restart { config } => {
                if first {
                    self.stop_fast(i);
                    self.insts[i].applied = Some(config.clone());
                    self.start_server(i);
                }
                let x = &self.insts[i];
                if x.running && x.accepting {
                    Some(Ok("restarted".into()))
                } else if !x.running {
                    Some(Err("the database server exited while starting".into()))
                } else {
                    None
                }
            }
            Request::Fence => {
                if first {
                    // A running standby is detached first; its position is then final.
                    let x = &mut self.insts[i];
                    let position = match &x.data {
                        Some(d) if d.standby && x.running && x.accepting => {
                            if let Some(c) = x.applied.as_mut() {
                                c.upstream = None;
                            }
                            x.streaming_from = None;
                            Some(d.wal.len())
                        }
                        _ => None,
                    };
                    x.fenced = true;
                    x.fenced_lsn = position;
                    self.stop_fast(i);
                }
                if !last {
                    return None;
                }
                Some(Ok("fenced: server stopped".into()))
            }
        }
    }

    /// The manager's supervisor: a standby's server that is down is started again.
    fn supervise(&mut self, i: usize) {
        let x = &self.insts[i];
        let busy = x.work.is_some();
        if !x.manager_works() || busy || x.fenced || x.running || !x.data.as_ref().is_some_and(|d| d.standby)
        {
            return;
        }
        self.start_server(i);
    }

    // --- the lease (`crate::lease`, `Manager::check_lease`) ---

    /// A primary's manager checks its lease; true when a failsafe round is due. A frozen or
    /// dead manager does nothing (its server, if it serves, keeps serving).
    fn check_lease(&mut self, i: usize) -> bool {
        let now = self.mono;
        let x = &mut self.insts[i];
        if !x.manager_works() {
            return false;
        }
        let lease = Duration::from_millis(x.applied.as_ref().map_or(0, |c| c.lease_milliseconds));
        let serving_primary = x.data.as_ref().is_some_and(|d| !d.standby) && !x.fenced && x.running;
        if !serving_primary || lease.is_zero() {
            x.held_since = None;
            return false;
        }
        x.persisted_contact = x.contact;
        let since_contact = x.contact.map_or(Duration::MAX, |t| now.saturating_sub(t));
        let since_held = x.held_since.map(|t| now.saturating_sub(t));
        match lease::verdict(lease, since_contact, since_held) {
            Verdict::Hold => false,
            Verdict::AskPeers => true,
            Verdict::StopWrites => {
                self.stop_for_lease(i, since_contact);
                false
            }
        }
    }

    /// One failsafe round of primary `i`: every peer its applied configuration lists must hold
    /// it, and the answer come back, for the round to count (from when it began).
    fn ask_peers(&mut self, i: usize) {
        let Some(config) = self.insts[i].applied.clone() else { return };
        let lease = Duration::from_millis(config.lease_milliseconds);
        // No peer at all: nobody exists who could replace it (`Manager::ask_peers`).
        let mut held = true;
        for peer in &config.peers {
            let Some(j) = peer.manager.as_ref().and_then(|_| self.by_name(&peer.instance)) else {
                held = false;
                continue;
            };
            if !self.insts[j].manager_works() || !self.up(Node::Manager(i), Node::Manager(j)) {
                held = false;
                continue;
            }
            // The request arrived: the peer may hold the primary even if its answer is lost.
            let granted = self.hold(j, i, lease);
            held &= granted && self.up(Node::Manager(j), Node::Manager(i));
        }
        let name = self.insts[i].short().to_string();
        if held {
            self.insts[i].held_since = Some(self.mono);
            self.stats.rounds_held += 1;
            self.note(|| format!("held({name})"));
        } else {
            self.stats.rounds_failed += 1;
            self.note(|| format!("not-held({name})"));
        }
    }

    /// Peer `j` is asked to hold primary `i` (`Manager::hold`): granted when it has no data
    /// (it cannot be promoted) or is a standby configured to stream from `i`, and holds no
    /// other primary.
    fn hold(&mut self, j: usize, i: usize, lease: Duration) -> bool {
        let now = self.mono;
        let (primary, endpoint) = (self.insts[i].name.clone(), self.insts[i].endpoint.clone());
        let y = &mut self.insts[j];
        match &y.data {
            Some(d) if !d.standby => return false,
            Some(_) if y.applied.as_ref().and_then(|c| c.upstream.as_ref()) != Some(&endpoint) => {
                return false;
            }
            _ => {}
        }
        let own = Duration::from_millis(y.applied.as_ref().map_or(0, |c| c.lease_milliseconds));
        if let Some((other, until)) = &y.holding
            && *other != primary
            && *until > now
        {
            return false;
        }
        y.holding = Some((primary, now + lease.max(own)));
        true
    }

    /// The primary instance `j` holds now, as its report shows it.
    fn held(&self, j: usize) -> Option<FailsafeHold> {
        let (primary, until) = self.insts[j].holding.as_ref()?;
        let left = until.saturating_sub(self.mono);
        (!left.is_zero()).then(|| FailsafeHold {
            primary: primary.clone(),
            remaining_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// The lease ran out: the manager fences its server and stops it (fast).
    fn stop_for_lease(&mut self, i: usize, since_contact: Duration) {
        self.stats.lease_stops += 1;
        let x = &mut self.insts[i];
        x.fenced = true;
        x.fenced_lsn = None;
        x.held_since = None;
        let name = x.short().to_string();
        self.note(|| {
            let silent = if since_contact == Duration::MAX {
                "never".to_string()
            } else {
                format!("{}s", since_contact.as_secs())
            };
            format!("LEASE-STOP({name}, renewed {silent})")
        });
        self.stop_fast(i);
    }

    // --- replication and clients ---

    fn replicate(&mut self) {
        let n = self.insts.len();
        for s in 0..n {
            self.insts[s].streaming_from = None;
        }
        for s in 0..n {
            if !self.insts[s].is_standby_server() {
                continue;
            }
            let Some(up) = self.insts[s].applied.as_ref().and_then(|c| c.upstream.clone()) else {
                continue;
            };
            let Some(u) = self.by_endpoint(&up).filter(|&u| u != s && self.can_copy(s, u)) else {
                continue;
            };
            let src = self.insts[u].data.as_ref().expect("serving has data");
            let dst = self.insts[s].data.as_ref().expect("serving has data");
            if !dst.follows(src) {
                continue;
            }
            let have = dst.wal.len();
            let avail = src.wal.len();
            let lagging = self.rng.chance(self.p.lag);
            let upto =
                if lagging { have + self.rng.below((avail - have) as u64 + 1) as usize } else { avail };
            let records: Vec<Rec> = src.wal[have..upto].to_vec();
            let replay_lag = if lagging { self.rng.below(3) as usize } else { 0 };
            let x = &mut self.insts[s];
            x.streaming_from = Some(u);
            if let Some(d) = x.data.as_mut() {
                d.wal.extend(records);
                d.replayed = d.wal.len().saturating_sub(replay_lag).max(d.replayed.min(d.wal.len()));
            }
        }
    }

    fn client_commits(&mut self) {
        for i in 0..self.insts.len() {
            if !self.insts[i].writable() || !self.connected(Node::Client, Node::Server(i)) {
                continue;
            }
            let id = self.fresh_id();
            let x = &mut self.insts[i];
            let d = x.data.as_mut().expect("writable has data");
            let tl = d.tl();
            d.wal.push(Rec { tl, id, kind: Kind::Commit });
            d.replayed = d.wal.len();
            x.pending.push(d.wal.len() - 1);
        }
    }

    /// Whether the engine acknowledges the commit at `pos` on primary `i` now, and how.
    fn acknowledged(&self, i: usize, pos: usize) -> Ack {
        let x = &self.insts[i];
        let Some(config) = x.applied.as_ref() else {
            return Ack::WithoutStandby;
        };
        let Some(sync) =
            config.synchronous.as_ref().filter(|s| s.method != SyncMethod::Off && !s.standbys.is_empty())
        else {
            return Ack::WithoutStandby;
        };
        let number = sync.number.max(1) as usize;
        let streaming: Vec<usize> = sync
            .standbys
            .iter()
            .filter_map(|n| self.by_name(n))
            .filter(|&s| self.insts[s].streaming_from == Some(i))
            .collect();
        if config.most_available_sync && self.p.most_available_honoured && streaming.len() < number {
            return Ack::WithoutStandby;
        }
        let has = |s: usize| self.insts[s].data.as_ref().is_some_and(|d| d.wal.len() > pos);
        let confirmed = match sync.method {
            SyncMethod::First => streaming.len() >= number && streaming.iter().take(number).all(|&s| has(s)),
            _ => streaming.iter().filter(|&&s| has(s)).count() >= number,
        };
        if confirmed { Ack::Confirmed } else { Ack::Waiting }
    }

    /// Not the writer the (persisted) status endorses.
    fn is_stray(&self, i: usize) -> bool {
        !endorsed(&self.status, &self.insts[i].name)
    }

    /// Acknowledges what can be, and checks invariant 1 (and the history part of 2) on the
    /// acknowledgements. Each primary writes on its own timeline (every promotion starts a new
    /// one), so two writers show as acknowledgements on two timelines: once acknowledgements
    /// moved on from a timeline, that timeline is retired and must never acknowledge again, and
    /// at most one instance acknowledges per step. Without loss allowed, every acknowledged
    /// commit must also stay in the history of every later one.
    fn acknowledge(&mut self) -> Result<(), String> {
        let mut ackers = BTreeSet::new();
        for i in 0..self.insts.len() {
            if !self.insts[i].writable() || self.insts[i].pending.is_empty() {
                continue;
            }
            let pending = std::mem::take(&mut self.insts[i].pending);
            let mut waiting = Vec::new();
            for pos in pending {
                let how = self.acknowledged(i, pos);
                if how == Ack::Waiting {
                    waiting.push(pos);
                    continue;
                }
                self.stats.acked += 1;
                let rec = self.insts[i].data.as_ref().expect("writable has data").wal[pos];
                if self.is_stray(i) {
                    let name = self.insts[i].short().to_string();
                    if self.insts[i].manager_limited() {
                        // A server the status does not endorse whose manager is frozen or dead:
                        // nothing stops it (the lease's known limit). Counted and left out of
                        // the bookkeeping below; its commits are as good as lost.
                        self.stats.limit_acks += 1;
                        self.note(|| format!("limit-ack@{name}"));
                        continue;
                    }
                    // Any other writer the status does not endorse is the old primary of a
                    // transition in flight, before anything was promoted: its lease still runs.
                    // Its acknowledgements count like any (a later writer retires its timeline).
                    self.stats.failing_over_acks += 1;
                    self.note(|| format!("old-primary-ack@{name}"));
                }
                if self.retired.contains(&rec.tl) {
                    return Err(format!(
                        "two writers: {} acknowledged commit {:?} at {} on timeline {} after commits on timeline {:?} were acknowledged{}",
                        self.insts[i].name,
                        rec,
                        pos,
                        rec.tl,
                        self.acked_tl,
                        if how == Ack::WithoutStandby {
                            " (without standbys)"
                        } else {
                            " (confirmed by a synchronous standby)"
                        }
                    ));
                }
                if self.acked_tl != Some(rec.tl) {
                    if let Some(previous) = self.acked_tl {
                        self.retired.insert(previous);
                    }
                    self.acked_tl = Some(rec.tl);
                }
                ackers.insert(i);
                let wal = &self.insts[i].data.as_ref().expect("writable has data").wal;
                let h = self.acked.len();
                let consistent = if pos < h {
                    self.acked[pos] == wal[pos]
                } else {
                    h == 0 || wal[h - 1] == self.acked[h - 1]
                };
                if !consistent {
                    if self.p.no_loss() {
                        return Err(format!(
                            "acknowledged commits lost: {} acknowledged {:?} at {} on a history without the earlier acknowledged {:?} at {}",
                            self.insts[i].name,
                            rec,
                            pos,
                            self.acked.last(),
                            h.saturating_sub(1)
                        ));
                    }
                    // Asynchronous or `preferred`: a failover may lose acknowledged commits.
                    self.stats.lost_histories += 1;
                    self.acked = wal[..=pos].to_vec();
                } else if pos >= h {
                    self.acked.extend_from_slice(&wal[h..=pos]);
                }
            }
            self.insts[i].pending = waiting;
        }
        if ackers.len() > 1 {
            let names: Vec<&str> = ackers.iter().map(|&i| self.insts[i].name.as_str()).collect();
            return Err(format!(
                "two writers: {} acknowledged commits in the same step",
                names.join(" and ")
            ));
        }
        if let Some(&i) = ackers.iter().next() {
            let name = self.insts[i].short().to_string();
            self.note(|| format!("ack@{name}"));
        }
        Ok(())
    }

    // --- faults ---

    fn current_primary_index(&self) -> Option<usize> {
        self.insts.iter().position(Inst::writable)
    }

    fn inject_faults(&mut self) {
        for i in 0..self.insts.len() {
            let x = &mut self.insts[i];
            x.slow_probe = None;
            if x.freeze != Freeze::No && (self.step >= x.thaw_at || !self.faults_on) {
                x.freeze = Freeze::No;
                let name = x.short().to_string();
                self.note(|| format!("thaw({name})"));
                // A renewal the kernel kept for it while it was stopped is refused: its lease
                // loop has not run for that long (`Manager::contacted`).
                if std::mem::take(&mut self.insts[i].queued_renewal) {
                    self.stats.queued_renewals_refused += 1;
                }
            }
        }
        // The fault stream draws the same amount every step, whatever happens, so a seed's
        // faults come at the same steps however the plan behaves.
        let f = &mut self.faults;
        let (roll, kind, prefer_primary, pick, r1, r2) =
            (f.chance(self.p.fault_rate), f.below(100), f.chance(0.5), f.next(), f.next(), f.next());
        if !self.faults_on || !roll {
            return;
        }
        let existing = self.existing();
        let n = existing.len() as u64;
        let target = match self.current_primary_index() {
            Some(p) if prefer_primary => p,
            _ => existing[(pick % n) as usize],
        };
        let label: &'static str = match kind {
            0..=24 => self.crash(target, r1 % 100 < 20, r2 % 2 == 0),
            25..=41 => self.freeze(target, Freeze::Whole, 1 + r1 % 25),
            42..=46 => self.freeze(target, Freeze::Manager, 1 + r1 % 25),
            47..=56 => {
                if self.insts[target].running && self.insts[target].freeze != Freeze::Whole {
                    let noticed = self.insts[target].platform == PlatformState::Running;
                    self.kill_server(target, noticed);
                    if let Some(d) = self.insts[target].data.as_mut() {
                        d.clean = false;
                    }
                    "server crash"
                } else {
                    "none"
                }
            }
            57..=63 => {
                if self.insts[target].platform == PlatformState::Running {
                    let x = &mut self.insts[target];
                    x.platform = PlatformState::Dead;
                    x.work = None;
                    x.operation = None;
                    x.last_failure = None;
                    x.freeze = Freeze::No;
                    x.manager_gone();
                    "manager crash"
                } else {
                    "none"
                }
            }
            64..=78 => {
                self.insts[target].slow_probe = Some(r1 % 2 == 0);
                "slow probe"
            }
            79..=87 => {
                // A new controller: nothing silent, nothing renewed, its clocks start now.
                self.drop_actions = r1 % 2 == 0;
                self.watching_since = self.now;
                self.silent.clear();
                self.renewed.clear();
                self.controller_started = self.mono;
                "controller restart"
            }
            88..=94 => {
                let extra = 2 + r1 % (u64::from(self.p.delay_seconds) + 2);
                self.now += SignedDuration::from_secs(extra as i64);
                "clock jump"
            }
            _ => {
                let to = self.insts[existing[(r1 % n) as usize]].name.clone();
                self.requests.switchover_to = Some(to);
                "switchover request"
            }
        };
        if label != "none" {
            *self.stats.faults.entry(label).or_default() += 1;
            let name = self.insts[target].short().to_string();
            let what = match label {
                "controller restart" if self.drop_actions => "controller restart (actions lost)".to_string(),
                "controller restart" | "clock jump" => label.to_string(),
                "switchover request" => format!("switchover to {:?}", self.requests.switchover_to),
                _ => format!("{label}({name})"),
            };
            self.note(|| format!("FAULT[{what}]"));
        }
    }

    /// Link faults, from a stream of their own: a random link cut one way or both ways, a
    /// named partition, a flapping cut, the healing of one cut or of all. Cuts last a drawn
    /// number of steps; when faults stop, every link heals.
    fn inject_link_faults(&mut self) {
        let l = &mut self.links;
        let p = &self.p;
        let (cut, partition, flap, heal_one, heal_all) = (
            l.chance(p.cut_rate),
            l.chance(p.partition_rate),
            l.chance(p.flap_rate),
            l.chance(p.heal_one_rate),
            l.chance(p.heal_all_rate),
        );
        let r: [u64; 6] = std::array::from_fn(|_| l.next());
        if !self.faults_on {
            if !self.net.cuts.is_empty() || !self.net.flaps.is_empty() {
                self.note(|| "HEAL[all links]".into());
            }
            self.net.heal_all();
            return;
        }
        let until = self.step + 1 + r[0] % 40;
        if heal_all && (!self.net.cuts.is_empty() || !self.net.flaps.is_empty()) {
            self.net.heal_all();
            *self.stats.faults.entry("heal all links").or_default() += 1;
            self.note(|| "HEAL[all links]".into());
        }
        if heal_one {
            let n = (self.net.cuts.len() + self.net.flaps.len()) as u64;
            if n > 0 {
                let k = (r[1] % n) as usize;
                if k < self.net.cuts.len() {
                    let key = *self.net.cuts.keys().nth(k).expect("in range");
                    self.net.cuts.remove(&key);
                    let (a, b) = (node_name(&self.insts, key.0), node_name(&self.insts, key.1));
                    self.note(|| format!("HEAL[{a}->{b}]"));
                } else {
                    self.net.flaps.remove(k - self.net.cuts.len());
                    self.note(|| "HEAL[a flapping cut]".into());
                }
                *self.stats.faults.entry("heal one link").or_default() += 1;
            }
        }
        if cut {
            let nodes = self.nodes();
            let n = nodes.len() as u64;
            let (a, b) = (nodes[(r[2] % n) as usize], nodes[((r[2] >> 20) % n) as usize]);
            if a != b && (a.host().is_none() || a.host() != b.host()) {
                let both = r[3] % 2 == 0;
                self.net.cut(a, b, until);
                if both {
                    self.net.cut(b, a, until);
                }
                let label = if both { "link cut both ways" } else { "link cut one way" };
                *self.stats.faults.entry(label).or_default() += 1;
                let (a, b) = (node_name(&self.insts, a), node_name(&self.insts, b));
                let steps = until - self.step;
                self.note(|| format!("CUT[{a}{}{b} for {steps}]", if both { "<->" } else { "->" }));
            }
        }
        if partition || flap {
            let (label, a, b) = self.named_partition(r[4]);
            if flap {
                let mut links = Vec::new();
                for &x in &a {
                    for &y in &b {
                        links.push((x, y));
                        links.push((y, x));
                    }
                }
                let period = 1 + (r[5] % 4);
                let until = self.step + 10 + (r[5] >> 8) % 50;
                self.net.flaps.push(Flap { links, period, from: self.step, until });
                *self.stats.faults.entry("flapping partition").or_default() += 1;
                let steps = until - self.step;
                self.note(|| format!("FLAP[{label} every {period} steps for {steps}]"));
            } else {
                self.net.split(&a, &b, until);
                *self.stats.faults.entry(label).or_default() += 1;
                let steps = until - self.step;
                self.note(|| format!("PARTITION[{label} for {steps}]"));
            }
        }
        self.net.settle(self.step);
        if !self.net.down.is_empty() {
            self.stats.cut_steps += 1;
        }
    }

    /// Every node of the instances the platform has, the controller and the client.
    fn nodes(&self) -> Vec<Node> {
        let mut nodes = vec![Node::Controller, Node::Client];
        for i in self.existing() {
            nodes.push(Node::Manager(i));
            nodes.push(Node::Server(i));
        }
        nodes
    }

    /// One of the named partitions, as its two sides: the primary (the instance accepting
    /// writes, else the one the status names) against everyone else, from the controller only,
    /// from its standbys only; the primary and one standby against the controller and the
    /// others; the controller against everything; a standby from the primary. The client is on
    /// either side of a partition that splits the instances.
    fn named_partition(&self, r: u64) -> (&'static str, Vec<Node>, Vec<Node>) {
        let existing = self.existing();
        let n = existing.len() as u64;
        let p = self
            .current_primary_index()
            .or_else(|| self.status.current_primary.as_deref().and_then(|p| self.by_name(p)))
            .filter(|p| existing.contains(p))
            .unwrap_or(existing[((r >> 8) % n) as usize]);
        let others: Vec<usize> = existing.iter().copied().filter(|&j| j != p).collect();
        let host = |i: usize| [Node::Manager(i), Node::Server(i)];
        let hosts = |v: &[usize]| v.iter().flat_map(|&i| host(i)).collect::<Vec<Node>>();
        let standby = (!others.is_empty()).then(|| others[((r >> 16) as usize) % others.len()]);
        let client_with_primary = (r >> 24) % 2 == 0;
        let with_client = |mut a: Vec<Node>, mut b: Vec<Node>| {
            if client_with_primary {
                a.push(Node::Client)
            } else {
                b.push(Node::Client)
            }
            (a, b)
        };
        match (r % 6, standby) {
            (0, _) | (_, None) => {
                let mut rest = hosts(&others);
                rest.push(Node::Controller);
                let (a, b) = with_client(host(p).to_vec(), rest);
                ("partition: primary vs the rest", a, b)
            }
            (1, _) => ("partition: primary from the controller", host(p).to_vec(), vec![Node::Controller]),
            (2, _) => ("partition: primary from its standbys", host(p).to_vec(), hosts(&others)),
            (3, Some(s)) => {
                let mut rest: Vec<usize> = others.iter().copied().filter(|&j| j != s).collect();
                rest.sort_unstable();
                let mut b = hosts(&rest);
                b.push(Node::Controller);
                let (a, b) = with_client(hosts(&[p, s]), b);
                ("partition: primary and a standby vs the controller and the rest", a, b)
            }
            (4, _) => {
                let all: Vec<usize> = existing.clone();
                let mut b = hosts(&all);
                b.push(Node::Client);
                ("partition: controller from everything", vec![Node::Controller], b)
            }
            (_, Some(s)) => ("partition: a standby from the primary", host(s).to_vec(), host(p).to_vec()),
        }
    }

    // --- spec changes ---

    /// Changes the spec as users do: its size, its fences, its parameters; always a valid spec.
    fn change_spec(&mut self) {
        // Like the fault stream, the same amount is drawn every step.
        let c = &mut self.changes;
        let (scale, fence, param) =
            (c.chance(self.p.scale_rate), c.chance(self.p.fence_rate), c.chance(self.p.param_rate));
        let (u1, u2, u3, u4) = (c.next(), c.next(), c.next(), c.next());
        if !self.faults_on {
            return;
        }
        let mut changed = Vec::new();
        if scale {
            let from = self.spec.instances;
            // Any other size in 1..=MAX_SIM_INSTANCES.
            let mut to = 1 + (u1 % u64::from(MAX_SIM_INSTANCES - 1)) as u32;
            if to >= from {
                to += 1;
            }
            // Users do not scale away every copy of the data: some remaining member must hold
            // every acknowledged commit (a scale-down is no way to lose data on purpose).
            let kept = (0..to as usize).any(|j| self.insts[j].data.is_some() && self.holds_acked(j));
            if to > from || kept {
                self.resize(to, u2);
                *self.stats.changes.entry(if to > from { "scale up" } else { "scale down" }).or_default() +=
                    1;
                let sync = &self.spec.replication;
                changed.push(format!(
                    "instances {from}->{to} (sync {} {}, maxWalSenders {}, fenced {:?})",
                    sync.synchronous.method.as_str(),
                    sync.synchronous.number,
                    sync.max_wal_senders,
                    self.spec.fenced_instances
                ));
            }
        }
        // Fencing is for a running cluster: the first primary is whichever instance initialises.
        if fence && self.status.initialized {
            // During a transition, half the time the instance where it hurts most: the one it
            // promotes (or the most advanced standby, which it would choose).
            let n = self.spec.instances as usize;
            let pointed = self.status.transition.as_ref().and_then(|t| {
                t.to.as_deref().and_then(|p| self.by_name(p)).filter(|&i| i < n).or_else(|| {
                    (0..n)
                        .filter(|&j| self.insts[j].is_standby_server())
                        .max_by_key(|&j| self.insts[j].data.as_ref().map_or(0, |d| d.wal.len()))
                })
            });
            let i = match pointed {
                Some(i) if (u3 >> 32) % 2 == 0 => i,
                _ => (u3 % n as u64) as usize,
            };
            let name = self.insts[i].name.clone();
            let target = self.status.transition.as_ref().and_then(|t| t.to.as_deref()) == Some(name.as_str());
            let x = &mut self.insts[i];
            x.fenced_mid_promotion = x.writable()
                || x.work.as_ref().is_some_and(|w| matches!(w.request, Request::Promote { .. }))
                || (target && x.data.as_ref().is_some_and(|d| !d.standby));
            let list = &mut self.spec.fenced_instances;
            if let Some(k) = list.iter().position(|f| *f == name) {
                list.remove(k);
                *self.stats.changes.entry("unfence").or_default() += 1;
                changed.push(format!("unfence {name}"));
            } else {
                list.push(name.clone());
                *self.stats.changes.entry("fence").or_default() += 1;
                changed.push(format!("fence {name}"));
            }
        }
        if param && (u4 >> 16) % 3 == 0 {
            // A new pod definition (another image, other resources, a new operator): every
            // instance made so far is outdated.
            let mut any = false;
            for x in self.insts.iter_mut().filter(|x| x.platform != PlatformState::Missing) {
                x.outdated = true;
                any = true;
            }
            if any {
                *self.stats.changes.entry("definition change").or_default() += 1;
                changed.push("a new instance definition".to_string());
            }
        } else if param {
            let (name, values, label) = if u4 % 2 == 0 {
                (RESTART_PARAMETER, ["128MB", "256MB", "512MB"], "restart parameter")
            } else {
                (RELOAD_PARAMETER, ["4MB", "8MB", "16MB"], "reload parameter")
            };
            let pick = (u4 >> 8) % 4;
            let before = self.spec.parameters.get(name).cloned();
            match values.get(pick as usize) {
                Some(v) => self.spec.parameters.insert(name.to_string(), v.to_string()),
                None => self.spec.parameters.remove(name),
            };
            let after = self.spec.parameters.get(name).cloned();
            if after != before {
                *self.stats.changes.entry(label).or_default() += 1;
                changed.push(format!("{name}={}", after.as_deref().unwrap_or("(default)")));
            }
        }
        if changed.is_empty() {
            return;
        }
        self.generation += 1;
        let problems: Vec<String> = self
            .spec
            .problems()
            .into_iter()
            .chain(self.spec.fencing_problems(CLUSTER))
            .map(|p| p.to_string())
            .collect();
        assert!(problems.is_empty(), "the simulation made an invalid spec: {problems:?}");
        let what = changed.join(", ");
        self.note(|| format!("SPEC[{what}]"));
    }

    /// Sets the spec's size and keeps the rest of it valid: the synchronous number below the
    /// size, enough WAL senders, fences only on instances of the new size. Sometimes
    /// `maxWalSenders` changes too (a restart-only setting), as a user adjusting it would.
    fn resize(&mut self, to: u32, r: u64) {
        let spec = &mut self.spec;
        spec.instances = to;
        if to > 1 {
            spec.replication.synchronous.number = self.p.number.min(to - 1).max(1);
        }
        let least = (to + 1).max(2);
        let senders = &mut spec.replication.max_wal_senders;
        if r % 4 == 0 {
            *senders = least + ((r >> 8) % u64::from(11 - least)) as u32;
        } else if *senders < least {
            *senders = least;
        }
        spec.fenced_instances
            .retain(|f| opengauss_crd::names::instance_ordinal(CLUSTER, f).is_some_and(|k| k < to));
    }

    /// When faults stop, the spec's fences are settled: standbys may stay fenced (they must end
    /// stopped, the others healthy around them) when the primary is healthy and no transition
    /// is in flight, as long as one member besides the primary stays unfenced; everything else
    /// is unfenced (a failover that only fenced instances could take over would rightly wait
    /// for ever).
    fn settle_fences(&mut self) {
        if self.spec.fenced_instances.is_empty() {
            return;
        }
        let s = &self.status;
        let primary = s.current_primary.as_deref().and_then(|p| self.by_name(p));
        let primary_fine =
            s.transition.is_none() && primary.is_some_and(|p| self.member(p) && self.insts[p].writable());
        let mut keep: Vec<String> = if primary_fine {
            let not = [s.current_primary.as_deref(), s.target_primary.as_deref()];
            self.spec.fenced_instances.iter().filter(|f| !not.contains(&Some(f.as_str()))).cloned().collect()
        } else {
            Vec::new()
        };
        // Enough unfenced standbys remain for the synchronous number (with `required`, the
        // fenced ones stay listed: writes would wait for ever, and so would a removal that must
        // first see the remaining synchronous standbys hold what the removed one confirmed).
        let sync = &self.spec.replication.synchronous;
        let need = if self.p.no_loss() { sync.number.max(1) } else { 1 };
        keep.truncate(self.spec.instances.saturating_sub(1 + need) as usize);
        if keep != self.spec.fenced_instances {
            self.spec.fenced_instances = keep;
            self.generation += 1;
            let what = format!("{:?}", self.spec.fenced_instances);
            self.note(|| format!("SPEC[final fences {what}]"));
        }
    }

    fn freeze(&mut self, i: usize, how: Freeze, steps: u64) -> &'static str {
        if self.insts[i].platform == PlatformState::Missing || self.insts[i].freeze != Freeze::No {
            return "none";
        }
        self.insts[i].freeze = how;
        self.insts[i].thaw_at = self.step + steps;
        match how {
            Freeze::Whole => "freeze",
            _ => "manager freeze",
        }
    }

    /// Manager and server die; with `lose_disk` (when allowed) the data directory too, and with
    /// `vanish` the whole instance (pod and volume).
    fn crash(&mut self, i: usize, lose_disk: bool, vanish: bool) -> &'static str {
        if self.insts[i].platform == PlatformState::Missing {
            return "none";
        }
        // Losing a disk is allowed only while every other member is a standby with a complete
        // copy (an old primary waiting to rejoin holds a stale one): the model never exceeds
        // what replication is meant to survive.
        let existing = self.existing();
        let others_complete = existing.len() > 1
            && existing.iter().all(|&j| {
                let y = &self.insts[j];
                // An operation that sets the data directory aside may leave it empty.
                let discarding = y.work.as_ref().is_some_and(|w| {
                    matches!(
                        w.request,
                        Request::Rejoin { .. } | Request::Rebuild { .. } | Request::Bootstrap { .. }
                    )
                });
                j == i || (y.data.as_ref().is_some_and(|d| d.standby) && !discarding)
            })
            // Some other member that a failover may promote (one the spec does not fence) holds
            // every acknowledged commit.
            && (self.acked.is_empty()
                || (0..self.insts.len())
                    .any(|j| j != i && self.member(j) && !self.fenced_in_spec(j) && self.holds_acked(j)));
        let lose_data = others_complete && lose_disk;
        let x = &mut self.insts[i];
        if x.running
            && let Some(d) = x.data.as_mut()
        {
            d.clean = false;
        }
        x.processes_gone();
        x.freeze = Freeze::No;
        if lose_data {
            x.data = None;
            x.applied = None;
            x.fenced = false;
            x.fenced_lsn = None;
            if vanish {
                x.platform = PlatformState::Missing;
            }
            "crash with data loss"
        } else {
            "crash"
        }
    }

    // --- observation ---

    fn report(&self, i: usize) -> InstanceReport {
        let x = &self.insts[i];
        let initialized = x.data.is_some();
        let standby = x.data.as_ref().is_some_and(|d| d.standby);
        let busy = x.work.is_some();
        let node = x.data.as_ref().filter(|_| x.running && x.accepting).map(|d| NodeReport {
            in_recovery: d.standby,
            current_lsn: (!d.standby).then(|| lsn(d.wal.len())),
            received_lsn: d.standby.then(|| lsn(d.wal.len())),
            replayed_lsn: d.standby.then(|| lsn(d.replayed)),
            timeline: Some(d.tl()),
            synchronous_standby_names: sync_names(x.applied.as_ref().and_then(|c| c.synchronous.as_ref())),
            timeline_switches: if d.standby { Vec::new() } else { d.timeline_switches() },
        });
        let receiver = match (x.streaming_from, &x.data) {
            (Some(u), Some(d)) if standby && node.is_some() => Some(ReceiverReport {
                status: "streaming".into(),
                upstream_host: Some(self.insts[u].endpoint.host.clone()),
                upstream_port: Some(self.insts[u].endpoint.port),
                flushed_lsn: Some(lsn(d.wal.len())),
            }),
            _ => None,
        };
        let mut replication = Vec::new();
        if let (Some(n), Some(d)) = (&node, &x.data)
            && !n.in_recovery
        {
            let sync = x.applied.as_ref().and_then(|c| c.synchronous.as_ref());
            let mut first_left = sync.map_or(0, |s| s.number as usize);
            let listed: Vec<&String> = sync.map(|s| s.standbys.iter().collect()).unwrap_or_default();
            let mut rows: Vec<(usize, ReplicationRow)> = Vec::new();
            for (s, y) in self.insts.iter().enumerate() {
                if y.streaming_from != Some(i) {
                    continue;
                }
                let yd = y.data.as_ref().expect("streaming has data");
                let rank = listed.iter().position(|n| **n == y.name);
                rows.push((
                    rank.unwrap_or(usize::MAX),
                    ReplicationRow {
                        instance: y.name.clone(),
                        client_addr: Some(format!("10.0.0.{s}")),
                        state: "streaming".into(),
                        sync_state: String::new(),
                        sent_lsn: Some(lsn(yd.wal.len())),
                        flush_lsn: Some(lsn(yd.wal.len())),
                        replay_lsn: Some(lsn(yd.replayed)),
                        lag_bytes: Some(lsn(d.wal.len()).bytes_after(lsn(yd.replayed))),
                        lag_seconds: None,
                    },
                ));
            }
            rows.sort_by_key(|(rank, r)| (*rank, r.instance.clone()));
            for (rank, mut row) in rows {
                row.sync_state = match (sync.map(|s| s.method), rank) {
                    (_, usize::MAX) | (None | Some(SyncMethod::Off), _) => "async".into(),
                    (Some(SyncMethod::Any), _) => "quorum".into(),
                    (Some(SyncMethod::First), _) if first_left > 0 => {
                        first_left -= 1;
                        "sync".into()
                    }
                    (Some(SyncMethod::First), _) => "potential".into(),
                };
                replication.push(row);
            }
            replication.sort_by(|a, b| a.instance.cmp(&b.instance));
        }
        let control = x.data.as_ref().filter(|_| !x.running).map(|d| {
            let (pos, tl) = d.checkpoint();
            ControlReport {
                state: match (d.clean, d.standby) {
                    (true, false) => "shut down".into(),
                    (true, true) => "shut down in recovery".into(),
                    (false, false) => "in production".into(),
                    (false, true) => "in archive recovery".into(),
                },
                clean_shutdown: d.clean,
                checkpoint_lsn: Some(lsn(pos)),
                timeline: Some(tl),
            }
        });
        let phase = if !initialized {
            ManagerPhase::AwaitingBootstrap
        } else if x.running || busy {
            ManagerPhase::Running
        } else if x.fenced {
            ManagerPhase::Stopped
        } else {
            ManagerPhase::AwaitingRole
        };
        let accepting = node.is_some();
        InstanceReport {
            instance: x.name.clone(),
            manager_pid: 100 + i as u32,
            phase,
            initialized,
            standby_configured: standby,
            fenced: x.fenced,
            fenced_lsn: x.fenced_lsn.filter(|_| x.fenced).map(lsn),
            oldest_wal: None,
            pending_restart: x.pending_restart(),
            server: ServerProcessReport {
                running: x.running,
                pid: x.running.then_some(1000 + i as u32),
                accepting,
                crashed: x.crashed,
            },
            node,
            receiver,
            replication,
            control,
            operation: x.operation.clone(),
            config: x.applied.clone(),
            failsafe: self.held(i),
            certificate_expires: None,
        }
    }

    /// One pass's observation, as `Controller::observe` makes it: every instance the platform
    /// runs gets a status request, carrying a lease renewal when it answered in the last pass;
    /// a renewal sent over a working link arrives (renews the manager's contact) even when the
    /// answer is lost; a silent manager's database port is probed.
    fn observe(&mut self) -> Observation {
        let now = self.mono;
        let mut instances = BTreeMap::new();
        let mut silent = BTreeSet::new();
        for i in self.existing() {
            let running = self.insts[i].platform == PlatformState::Running;
            let manager_url = running.then(|| format!("http://{}:8000", self.insts[i].name));
            let renew = running && !self.silent.contains(&i);
            if renew {
                self.renewed.insert(i, now);
            }
            let processed =
                running && self.insts[i].manager_works() && self.up(Node::Controller, Node::Manager(i));
            if renew && processed {
                self.insts[i].contact = Some(now);
                self.stats.renewals += 1;
            }
            if renew && running && !processed && self.up(Node::Controller, Node::Manager(i)) {
                self.insts[i].queued_renewal = true;
            }
            let x = &self.insts[i];
            let answered = processed && x.slow_probe.is_none() && self.up(Node::Manager(i), Node::Controller);
            let report = answered.then(|| self.report(i));
            let server_answers = report.is_none()
                && x.platform != PlatformState::Missing
                && self.connected(Node::Controller, Node::Server(i))
                && match x.slow_probe {
                    Some(answers) => answers && x.serving(),
                    None => x.serving(),
                };
            let renewed =
                self.renewed.get(&i).copied().unwrap_or(self.controller_started).max(self.controller_started);
            if report.is_none() {
                silent.insert(i);
            }
            let observed = Observed {
                platform: x.platform,
                endpoint: x.endpoint.clone(),
                ha_port: HA_PORT,
                outdated: x.outdated,
                manager_url,
                unrenewed_for: now.saturating_sub(renewed),
                report,
                server_answers,
            };
            instances.insert(x.name.clone(), observed);
        }
        self.silent = silent;
        Observation { instances }
    }

    // --- the controller's actions ---

    fn act(&mut self, action: &Action) {
        let Some(i) = self.by_name(action.instance()) else {
            return;
        };
        match action {
            Action::Create { .. } => {
                if self.insts[i].platform == PlatformState::Missing {
                    let x = &mut self.insts[i];
                    *x = Inst::new(x.name.clone());
                    x.platform = PlatformState::Running;
                }
            }
            Action::Restart { .. } => {
                if self.insts[i].platform == PlatformState::Dead {
                    let x = &mut self.insts[i];
                    x.platform = PlatformState::Running;
                    x.work = None;
                    x.operation = None;
                    x.last_failure = None;
                    // A server that outlived its manager is adopted.
                    x.crashed = false;
                    // Started again from the spec as it is now.
                    x.outdated = false;
                }
            }
            Action::Recreate { .. } => {
                // As a pod deleted for a new definition: its manager is told to stop and stops
                // the server with a fast shutdown; the instance comes back (dead, then
                // restarted) from the new definition with its data.
                if self.insts[i].platform == PlatformState::Running && self.insts[i].freeze == Freeze::No {
                    let x = &mut self.insts[i];
                    x.processes_gone();
                    x.outdated = false;
                    *self.stats.changes.entry("instance recreated").or_default() += 1;
                }
            }
            Action::Delete { .. } => {
                // The platform stops the manager (which stops its server) and removes the data;
                // a server that outlived its manager keeps its data from being removed.
                let x = &mut self.insts[i];
                if x.platform == PlatformState::Dead && x.running {
                    self.note(|| format!("(delete refused: {}'s server still runs)", action.instance()));
                    return;
                }
                *x = Inst::new(x.name.clone());
                *self.stats.changes.entry("instance deleted").or_default() += 1;
            }
            Action::Send { request, .. } => {
                let outcome = self.submit(i, request);
                match outcome {
                    Submitted::Accepted if !self.up(Node::Manager(i), Node::Controller) => {
                        self.note(|| format!("(answer lost {})", action.instance()))
                    }
                    Submitted::Accepted => {}
                    Submitted::Busy => self.note(|| format!("(busy {})", action.instance())),
                    Submitted::Refused(why) => {
                        self.stats.refusals += 1;
                        if why.contains("(failsafe)") {
                            self.stats.hold_refusals += 1;
                        }
                        self.note(|| format!("(REFUSED {} {:?}: {why})", action.instance(), request.kind()));
                    }
                    Submitted::Unreachable => self.note(|| format!("(unreachable {})", action.instance())),
                }
            }
        }
    }

    // --- one step ---

    fn tick(&mut self) -> Result<(), String> {
        // A server started last step accepts connections now.
        for x in &mut self.insts {
            if x.running && !x.accepting && x.freeze != Freeze::Whole && x.data.is_some() {
                x.accepting = true;
                if let Some(d) = x.data.as_mut() {
                    d.replayed = d.wal.len();
                }
            }
        }
        // Every lease is checked before this step's commits: a primary whose lease ran out
        // acknowledges nothing more. (The manager checks every `lease::CHECK_INTERVAL`; one check
        // a step rounds its stop up to the next second, which `GUARD` covers: it stops at the
        // latest when its lease ends, and nobody may replace it before `MARGIN` and the probe
        // time-out more.) A failsafe round lands before or after the controller's observation.
        for i in 0..self.insts.len() {
            if self.check_lease(i) {
                if self.rng.chance(0.5) {
                    self.late_rounds.push(i);
                } else {
                    self.ask_peers(i);
                }
            }
        }
        for i in 0..self.insts.len() {
            self.progress(i);
        }
        for i in 0..self.insts.len() {
            self.supervise(i);
        }
        self.client_commits();
        self.replicate();
        self.acknowledge()?;
        self.check_writers()
    }

    /// Invariant 1's core: at most one server accepts writes, except where the only others
    /// have a frozen or dead manager (the lease's known limit, counted).
    fn check_writers(&mut self) -> Result<(), String> {
        let writers: Vec<usize> = (0..self.insts.len()).filter(|&i| self.insts[i].writable()).collect();
        if writers.len() < 2 {
            return Ok(());
        }
        let working: Vec<usize> =
            writers.iter().copied().filter(|&i| !self.insts[i].manager_limited()).collect();
        let names =
            |v: &[usize]| v.iter().map(|&i| self.insts[i].name.as_str()).collect::<Vec<_>>().join(" and ");
        if working.len() > 1 {
            return Err(format!(
                "two writers: {} accept writes at once, their managers working",
                names(&working)
            ));
        }
        self.stats.limit_steps += 1;
        let all = names(&writers);
        self.note(|| format!("LIMIT[writers {all}]"));
        Ok(())
    }

    fn step_once(&mut self) -> Result<Plan, String> {
        self.step += 1;
        self.now += SignedDuration::from_secs(1);
        self.mono += Duration::from_secs(1);
        if self.faults_on && self.step > self.p.fault_steps {
            self.faults_on = false;
            self.note(|| "FAULTS STOP".into());
            self.settle_fences();
        }
        self.inject_faults();
        self.inject_link_faults();
        self.change_spec();
        self.tick()?;
        let observed = self.observe();
        for i in std::mem::take(&mut self.late_rounds) {
            self.ask_peers(i);
        }
        let requests = std::mem::take(&mut self.requests);
        let input = Input {
            cluster: CLUSTER,
            generation: Some(self.generation),
            spec: &self.spec,
            status: &self.status,
            observed: &observed,
            requests: &requests,
            now: self.now,
            watching_since: self.watching_since,
        };
        let plan = decide(input);
        if let Err(e) = self.check_plan(&plan, &observed) {
            self.finish_trace_line(Some(&plan));
            return Err(e);
        }
        for e in &plan.events {
            *self.stats.events.entry(e.reason).or_default() += 1;
        }
        let held_off = plan.status.phase_reason.as_deref().is_some_and(|r| r.contains("(failsafe)"));
        if held_off {
            self.stats.held_off_passes += 1;
            if !self.held_off {
                self.stats.held_off_times += 1;
            }
        }
        self.held_off = held_off;
        // Persist, then act (unless the controller died in between).
        let acted = !self.drop_actions;
        if let Err(e) = self.check_fence_progress(&observed, &plan, acted) {
            self.finish_trace_line(Some(&plan));
            return Err(e);
        }
        self.status = plan.status.clone();
        if self.drop_actions {
            self.drop_actions = false;
        } else {
            for a in &plan.actions {
                self.act(a);
            }
        }
        self.check_status()?;
        Ok(plan)
    }

    // --- invariants ---

    fn check_plan(&self, plan: &Plan, observed: &Observation) -> Result<(), String> {
        let disruptive: Vec<&Action> = plan.actions.iter().filter(|a| a.is_disruptive()).collect();
        if disruptive.len() > 1 {
            return Err(format!("more than one disruptive action in one pass: {disruptive:?}"));
        }
        self.check_membership(plan)?;
        self.check_fences_and_restarts(plan)?;
        let sends = |name: &str, what: fn(&Request) -> bool| {
            plan.actions
                .iter()
                .any(|a| matches!(a, Action::Send { instance, request } if instance == name && what(request)))
        };
        // A writable primary in sight that the plan does not keep is fenced at once, unless an
        // operation it runs makes its manager refuse, or the pass already takes its one
        // disruptive step (with two strays in sight, one is fenced per pass).
        if plan.status.initialized {
            for (name, o) in &observed.instances {
                if let Some(r) = &o.report
                    && r.is_writable_primary()
                    && !super::health::operation_running(r)
                    && !endorsed(&plan.status, name)
                    && !sends(name, |r| matches!(r, Request::Fence))
                    && disruptive.is_empty()
                {
                    return Err(format!(
                        "{name} accepts writes, is not the primary, and the plan does not fence it"
                    ));
                }
            }
        }
        // Nothing is promoted or started as primary while another instance may still accept
        // writes: one whose manager is silent while its database answers and that the status
        // last endorsed as the writer (the primary a promotion replaces, or a target already
        // told to promote), or, for a promotion, one that reports itself writable. (A start
        // beside a writable stray is left to the fence-on-sight check above: the stray is
        // fenced in the same pass unless the pass's one disruptive step went elsewhere.)
        for a in &plan.actions {
            let (target, what) = match a {
                Action::Send { instance, request: Request::Promote { .. } } => (instance, "promotes"),
                Action::Send { instance, request: Request::Start { config } } if !config.standby => {
                    (instance, "starts as primary")
                }
                _ => continue,
            };
            for (name, o) in &observed.instances {
                if name == target {
                    continue;
                }
                let writable = what == "promotes"
                    && o.report.as_ref().is_some_and(InstanceReport::is_writable_primary)
                    && !sends(name, |r| matches!(r, Request::Fence));
                let is = |n: Option<&str>| n == Some(name.as_str());
                let was_primary = match &self.status.transition {
                    Some(t) => {
                        let told_to_promote =
                            matches!(t.step, TransitionStep::Promoting | TransitionStep::Repointing);
                        is(Some(&t.from)) || (told_to_promote && is(t.to.as_deref()))
                    }
                    None => is(self.status.current_primary.as_deref()),
                };
                if writable || (o.report.is_none() && o.server_answers && was_primary) {
                    return Err(format!(
                        "{what} {target} while {name} may still accept writes ({})",
                        if writable {
                            "it reports so"
                        } else {
                            "its manager is silent but its database answers"
                        }
                    ));
                }
            }
        }
        if self.status.initialized || plan.status.initialized {
            for a in &plan.actions {
                if let Action::Send { instance, request: Request::Bootstrap { source: None, .. } } = a {
                    return Err(format!(
                        "initialises a new primary on {instance} although the cluster is initialised"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Scaling: only instances beyond the spec's size are created never, removed only when
    /// they are neither the primary nor either end of a transition, highest ordinal first, once
    /// the primary's applied synchronous set no longer lists them, and without taking away a
    /// copy of acknowledged commits that a failover would count on.
    ///
    /// The durability guarantee of `ANY n` / `FIRST n` with `required` is that every
    /// acknowledged commit is on the primary and on `n` members of the synchronous set, so
    /// that a failover (`durable_choice`, which trusts the set the primary applied) finds it on
    /// a standby it may promote. Dropping a standby from the set does not move its copies:
    /// commits it confirmed may exist on no remaining member until the remaining ones have
    /// received them. Removing it (with its data) is safe only once `n` members of the new set
    /// hold every acknowledged commit; before that, losing the primary loses them.
    fn check_membership(&self, plan: &Plan) -> Result<(), String> {
        // The primary and both ends of a transition in flight after this pass, and whoever the
        // last pass was promoting. (The old primary of a switchover that completed in this pass
        // may go: a scale-down that removes the primary hands over first, then removes it.)
        let (old, new) = (&self.status, &plan.status);
        let old_to = old.transition.as_ref().and_then(|t| t.to.clone());
        let new_t = new.transition.as_ref();
        let protected: Vec<String> = [
            new.current_primary.clone(),
            new.target_primary.clone(),
            new_t.map(|t| t.from.clone()),
            new_t.and_then(|t| t.to.clone()),
            old.target_primary.clone(),
            old_to,
        ]
        .into_iter()
        .flatten()
        .collect();
        for a in &plan.actions {
            match a {
                Action::Create { instance } if !self.by_name(instance).is_some_and(|i| self.member(i)) => {
                    return Err(format!(
                        "creates {instance}, beyond spec.instances = {}",
                        self.spec.instances
                    ));
                }
                Action::Delete { instance } => {
                    let Some(v) = self.by_name(instance) else {
                        return Err(format!("deletes {instance}, which is no instance"));
                    };
                    if self.member(v) {
                        return Err(format!(
                            "deletes {instance}, a member (spec.instances = {})",
                            self.spec.instances
                        ));
                    }
                    if protected.contains(instance) {
                        return Err(format!("deletes {instance}, the primary or an end of a transition"));
                    }
                    let highest = (0..self.insts.len()).rev().find(|&j| self.exists(j) && !self.member(j));
                    if highest != Some(v) {
                        return Err(format!(
                            "deletes {instance} before {}: the highest ordinal goes first",
                            highest.map_or("-", |h| self.insts[h].name.as_str())
                        ));
                    }
                    let Some(p) = plan.status.current_primary.as_deref().and_then(|p| self.by_name(p)) else {
                        return Err(format!("deletes {instance} with no primary"));
                    };
                    let sync = self.insts[p]
                        .applied
                        .as_ref()
                        .and_then(|c| c.synchronous.as_ref())
                        .filter(|s| s.method != SyncMethod::Off && !s.standbys.is_empty());
                    if sync.is_some_and(|s| s.standbys.contains(instance)) {
                        return Err(format!(
                            "deletes {instance} while the primary {}'s applied synchronous standbys still list it",
                            self.insts[p].name
                        ));
                    }
                    if !self.p.no_loss() {
                        continue;
                    }
                    if !self.holds_acked(p) {
                        return Err(format!(
                            "deletes {instance} while the primary {} lacks acknowledged commits",
                            self.insts[p].name
                        ));
                    }
                    if let Some(sync) = sync
                        && !self.acked.is_empty()
                        && self.holds_acked(v)
                    {
                        let need = sync.number.max(1).min(sync.standbys.len() as u32) as usize;
                        let holders: Vec<&str> = sync
                            .standbys
                            .iter()
                            .filter(|n| self.by_name(n).is_some_and(|j| self.holds_acked(j)))
                            .map(String::as_str)
                            .collect();
                        if holders.len() < need {
                            return Err(format!(
                                "acknowledged commits exposed: deletes {instance}, which holds the acknowledged commit {:?} at {}, \
                                 while only {holders:?} of the synchronous standbys ({}) hold it and {need} must: losing the primary {} now loses it",
                                self.acked.last(),
                                self.acked.len().saturating_sub(1),
                                sync.standbys.join(", "),
                                self.insts[p].name,
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Spec fencing and rolling restarts: a fenced instance is never promoted, started,
    /// restarted, rejoined or cloned, never becomes the primary, and a fenced primary causes no
    /// failover; at most one restart is in flight, and the primary is never restarted while
    /// other instances could take over (it hands over through a switchover).
    fn check_fences_and_restarts(&self, plan: &Plan) -> Result<(), String> {
        let (old, new) = (&self.status, &plan.status);
        let fenced = |n: &str| self.spec.is_fenced(n);
        let mut restarts: BTreeSet<&str> = self
            .insts
            .iter()
            .filter(|x| x.work.as_ref().is_some_and(|w| matches!(w.request, Request::Restart { .. })))
            .map(|x| x.name.as_str())
            .collect();
        for a in &plan.actions {
            let Action::Send { instance, request } = a else { continue };
            let starts = matches!(
                request,
                Request::Promote { .. }
                    | Request::Start { .. }
                    | Request::Restart { .. }
                    | Request::Rejoin { .. }
                    | Request::Rebuild { .. }
                    | Request::Bootstrap { .. }
            );
            // A promotion under way (or done) when the fence came is the one exception: the
            // plan may complete it, as primary, and fences it afterwards.
            let completes = matches!(request, Request::Promote { .. })
                || matches!(request, Request::Start { config } if !config.standby);
            let exempt =
                completes && self.by_name(instance).is_some_and(|i| self.insts[i].fenced_mid_promotion);
            if starts && fenced(instance) && !exempt {
                return Err(format!("sends {} to {instance}, which the spec fences", describe_action(a)));
            }
            if let Request::Restart { .. } = request {
                let primary = [old.current_primary.as_deref(), new.current_primary.as_deref()]
                    .contains(&Some(instance.as_str()))
                    || self.by_name(instance).is_some_and(|i| self.insts[i].writable());
                if primary && self.spec.instances > 1 {
                    return Err(format!(
                        "restarts the primary {instance} although {} instances could take over",
                        self.spec.instances
                    ));
                }
                restarts.insert(instance);
                if restarts.len() > 1 {
                    return Err(format!("more than one restart in flight: {restarts:?}"));
                }
            }
        }
        if let Some(p) = new.current_primary.as_deref()
            && new.current_primary != old.current_primary
            && fenced(p)
            && !self.by_name(p).is_some_and(|i| self.insts[i].fenced_mid_promotion)
        {
            return Err(format!("{p}, fenced in the spec, becomes the primary"));
        }
        if let Some(p) = old.current_primary.as_deref()
            && fenced(p)
            && old.transition.is_none()
            && new.transition.as_ref().is_some_and(|t| t.kind == opengauss_crd::TransitionKind::Failover)
        {
            return Err(format!("the primary {p} is fenced in the spec, yet a failover starts"));
        }
        Ok(())
    }

    /// A spec-fenced instance's server stops within `FENCE_PASSES` passes in which the plan
    /// could stop it: its manager answered, with no operation running, in the steady state
    /// (no transition), and the controller acted.
    fn check_fence_progress(
        &mut self,
        observed: &Observation,
        plan: &Plan,
        acted: bool,
    ) -> Result<(), String> {
        // A primary the controller cannot reach but its standbys hold (failsafe) is left alone
        // with its standbys: the pass only says so (fencing a holder would end its lease).
        let held = plan.status.phase_reason.as_deref().is_some_and(|r| r.contains("hold it (failsafe)"));
        let steady = self.status.initialized
            && self.status.transition.is_none()
            && plan.status.transition.is_none()
            && !held;
        for i in 0..self.insts.len() {
            let due = self.member(i) && self.fenced_in_spec(i) && self.insts[i].running;
            if !due {
                self.insts[i].fence_due = 0;
                continue;
            }
            let could = steady
                && acted
                && observed
                    .instances
                    .get(&self.insts[i].name)
                    .and_then(|o| o.report.as_ref())
                    .is_some_and(|r| !super::health::operation_running(r));
            if could {
                self.insts[i].fence_due += 1;
            }
            if self.insts[i].fence_due > FENCE_PASSES {
                return Err(format!(
                    "{} is fenced in the spec, but its server still runs after {FENCE_PASSES} passes that could stop it",
                    self.insts[i].name
                ));
            }
        }
        Ok(())
    }

    fn check_status(&self) -> Result<(), String> {
        let s = &self.status;
        let ready_primaries: Vec<&str> = s
            .instances
            .iter()
            .filter(|r| r.role == Role::Primary && r.ready)
            .map(|r| r.name.as_str())
            .collect();
        if ready_primaries.len() > 1 {
            return Err(format!(
                "the status treats several instances as ready primaries: {ready_primaries:?}"
            ));
        }
        if s.initialized && s.transition.is_none() && s.target_primary != s.current_primary {
            return Err(format!(
                "no transition in flight but targetPrimary {:?} differs from currentPrimary {:?}",
                s.target_primary, s.current_primary
            ));
        }
        if self.p.no_loss()
            && let Some(p) = s.current_primary.as_deref().and_then(|p| self.by_name(p))
            && self.insts[p].writable()
            && !self.holds_acked(p)
        {
            return Err(format!(
                "acknowledged commits lost: the primary {} accepts writes without the acknowledged commit {:?} at {}",
                self.insts[p].name,
                self.acked.last(),
                self.acked.len().saturating_sub(1)
            ));
        }
        Ok(())
    }

    /// Invariant 3: exactly the requested members, none beyond; one primary, not fenced, that
    /// accepts writes; every other member streaming from it, except those the spec fences,
    /// which are stopped (and not ready); no restart pending on a running member. With fences
    /// left the phase is `Degraded` (a fenced member is not ready), else `Healthy`.
    fn converged(&self) -> Result<(), String> {
        let s = &self.status;
        let fenced = !self.spec.fenced_instances.is_empty();
        let phase = if fenced { Phase::Degraded } else { Phase::Healthy };
        if s.phase != Some(phase) {
            return Err(format!("phase {:?}: {}", s.phase, s.phase_reason.clone().unwrap_or_default()));
        }
        if let Some(t) = &s.transition {
            return Err(format!("transition in flight: {t:?}"));
        }
        let Some(p) = s.current_primary.as_deref().and_then(|p| self.by_name(p)) else {
            return Err("no current primary".into());
        };
        if !self.insts[p].writable()
            || !self.member(p)
            || self.fenced_in_spec(p)
            || !s.instance(&self.insts[p].name).is_some_and(|r| r.ready)
        {
            return Err(format!("the primary {} does not accept writes as a member", self.insts[p].name));
        }
        let members = instance_names(CLUSTER, self.spec.instances);
        if s.instances.len() != members.len() || s.instances.iter().any(|r| !members.contains(&r.name)) {
            let names: Vec<&str> = s.instances.iter().map(|r| r.name.as_str()).collect();
            return Err(format!("status lists {names:?}, not the {} members", members.len()));
        }
        for (j, y) in self.insts.iter().enumerate() {
            if !self.member(j) {
                if y.platform != PlatformState::Missing || y.data.is_some() {
                    return Err(format!("{} is beyond spec.instances but not removed", y.name));
                }
                continue;
            }
            let ready = s.instance(&y.name).is_some_and(|r| r.ready);
            if self.fenced_in_spec(j) {
                if y.running || ready {
                    return Err(format!("{} is fenced in the spec but its server runs", y.name));
                }
                continue;
            }
            if j != p && (y.streaming_from != Some(p) || !y.is_standby_server() || !ready) {
                return Err(format!("{} does not stream from {}", y.name, self.insts[p].name));
            }
            if !y.pending_restart().is_empty() {
                return Err(format!("{} still has to restart for {:?}", y.name, y.pending_restart()));
            }
            if y.outdated {
                return Err(format!("{} still runs an older definition", y.name));
            }
        }
        if self.p.no_loss() && !self.holds_acked(p) {
            return Err(format!("the final primary {} lacks acknowledged commits", self.insts[p].name));
        }
        Ok(())
    }

    // --- tracing ---

    fn describe_instances(&self) -> String {
        let mut out = Vec::new();
        for (i, x) in self.insts.iter().enumerate() {
            if !self.exists(i) {
                continue;
            }
            let mut s = format!("{}{}:", x.short(), if self.member(i) { "" } else { "(extra)" });
            match x.platform {
                PlatformState::Missing => s.push_str("MISSING "),
                PlatformState::Dead => s.push_str("DEAD "),
                PlatformState::Running => {}
            }
            match x.freeze {
                Freeze::Whole => s.push_str("FROZEN "),
                Freeze::Manager => s.push_str("mgr-frozen "),
                Freeze::No => {}
            }
            match &x.data {
                None => s.push_str("nodata"),
                Some(d) => s.push_str(&format!(
                    "{}tl{}/{}{}",
                    if d.standby { "S" } else { "P" },
                    d.tl(),
                    d.wal.len(),
                    if d.clean { "" } else { "~" }
                )),
            }
            s.push(' ');
            s.push_str(match (x.running, x.accepting, x.crashed) {
                (true, true, _) => "up",
                (true, false, _) => "starting",
                (false, _, true) => "crashed",
                (false, _, false) => "down",
            });
            if x.fenced {
                s.push_str(" fenced");
            }
            if self.fenced_in_spec(i) {
                s.push_str(" SPEC-FENCED");
            }
            if !x.pending_restart().is_empty() {
                s.push_str(" restart-pending");
            }
            if x.outdated {
                s.push_str(" outdated");
            }
            if let Some(c) = &x.applied
                && c.standby
            {
                let up = c.upstream.as_ref().and_then(|u| self.by_endpoint(u));
                s.push_str(&format!(
                    " ->{}",
                    up.map_or("none".to_string(), |u| self.insts[u].short().to_string())
                ));
                if x.streaming_from.is_some() {
                    s.push('*');
                }
            }
            if x.data.as_ref().is_some_and(|d| !d.standby)
                && x.applied.as_ref().is_some_and(|c| c.lease_milliseconds == 0)
            {
                s.push_str(" NO-LEASE");
            }
            if let Some(h) = self.held(i) {
                let held = h.primary.rsplit('-').next().unwrap_or(&h.primary).to_string();
                s.push_str(&format!(" holds({held} {}ms)", h.remaining_ms));
            }
            if let Some(w) = &x.work {
                s.push_str(&format!(" op={:?}", w.request.kind()));
            } else if let Some(op) = x.operation.as_ref().filter(|o| o.state == OperationState::Failed) {
                s.push_str(&format!(" failed={:?}", op.kind));
            }
            out.push(s);
        }
        out.join(" | ")
    }

    /// The links down, by host (`2->ctl`: nothing from instance 2's host reaches the
    /// controller; `2<->ctl` both ways), single links where a host is cut only in part.
    fn describe_links(&self) -> String {
        // Hosts: the controller, the client, each instance (its manager and server).
        let host = |n: Node| n.host().map_or(if n == Node::Controller { 0 } else { 1 }, |i| i + 2);
        let label = |h: usize| match h {
            0 => "ctl".to_string(),
            1 => "client".to_string(),
            i => self.insts[i - 2].short().to_string(),
        };
        let size = |h: usize| if h < 2 { 1 } else { 2 };
        let mut by_hosts: BTreeMap<(usize, usize), Vec<(Node, Node)>> = BTreeMap::new();
        for &(a, b) in &self.net.down {
            by_hosts.entry((host(a), host(b))).or_default().push((a, b));
        }
        let mut whole = BTreeSet::new();
        let mut parts = Vec::new();
        for ((a, b), links) in &by_hosts {
            if links.len() == size(*a) * size(*b) {
                whole.insert((*a, *b));
            } else {
                parts.extend(
                    links.iter().map(|&(x, y)| {
                        format!("{}->{}", node_name(&self.insts, x), node_name(&self.insts, y))
                    }),
                );
            }
        }
        let mut out = Vec::new();
        for &(a, b) in &whole {
            if whole.contains(&(b, a)) {
                if a < b {
                    out.push(format!("{}<->{}", label(a), label(b)));
                }
            } else {
                out.push(format!("{}->{}", label(a), label(b)));
            }
        }
        out.extend(parts);
        out.join(" ")
    }

    fn finish_trace_line(&mut self, plan: Option<&Plan>) {
        if self.trace.is_none() || self.traced == self.step {
            return;
        }
        self.traced = self.step;
        let mut line = format!(
            "#{:<3} +{:<4}s {}\n      [{}]",
            self.step,
            self.now.duration_since(self.start).as_secs(),
            std::mem::take(&mut self.line),
            self.describe_instances()
        );
        if !self.net.down.is_empty() {
            line.push_str(&format!("\n      links down: {}", self.describe_links()));
        }
        if let Some(plan) = plan {
            let s = &plan.status;
            let t = s.transition.as_ref().map_or("-".to_string(), |t| {
                format!("{:?}/{:?} from {} to {}", t.kind, t.step, t.from, t.to.as_deref().unwrap_or("?"))
            });
            let acts: Vec<String> = plan.actions.iter().map(describe_action).collect();
            let events: Vec<&str> = plan.events.iter().map(|e| e.reason).collect();
            line.push_str(&format!(
                "\n      phase={} primary={} target={} transition={} sync={}\n      actions: {}{}",
                s.phase.map_or("-", |p| p.as_str()),
                s.current_primary.as_deref().unwrap_or("-"),
                s.target_primary.as_deref().unwrap_or("-"),
                t,
                s.synchronous
                    .as_ref()
                    .map_or("-".to_string(), |x| format!("{} {} {:?}", x.method, x.number, x.standbys)),
                if acts.is_empty() { "-".to_string() } else { acts.join(", ") },
                if events.is_empty() { String::new() } else { format!("  events: {}", events.join(",")) }
            ));
            if let Some(r) = &s.phase_reason
                && s.phase != Some(Phase::Healthy)
            {
                line.push_str(&format!("\n      reason: {r}"));
            }
        }
        if let Some(t) = self.trace.as_mut() {
            t.push(line);
        }
    }
}

/// Whether the status endorses `name` as the writer: the current primary when no transition is
/// in flight, else the instance being promoted.
fn endorsed(status: &OpenGaussClusterStatus, name: &str) -> bool {
    let name = Some(name);
    match &status.transition {
        None if !status.initialized => status.target_primary.as_deref() == name,
        None => status.current_primary.as_deref() == name,
        Some(t) => t.to.as_deref() == name || status.target_primary.as_deref() == name,
    }
}

fn describe_action(a: &Action) -> String {
    let short = |ep: &Endpoint| ep.host.rsplit('-').next().unwrap_or(&ep.host).to_string();
    match a {
        Action::Create { instance } => format!("create {instance}"),
        Action::Restart { instance } => format!("restart {instance}"),
        Action::Recreate { instance } => format!("RECREATE {instance}"),
        Action::Delete { instance } => format!("DELETE {instance}"),
        Action::Send { instance, request } => {
            let r = match request {
                Request::Bootstrap { source: None, .. } => "initdb".to_string(),
                Request::Bootstrap { source: Some(s), .. } => format!("clone<-{}", short(s)),
                Request::Start { config } => {
                    format!("start({})", if config.standby { "standby" } else { "primary" })
                }
                Request::Configure { config } => format!(
                    "configure(up={} sync=[{}])",
                    config.upstream.as_ref().map_or("none".to_string(), short),
                    sync_names(config.synchronous.as_ref())
                ),
                Request::Promote { .. } => "PROMOTE".to_string(),
                Request::Rejoin { source, .. } => format!("REJOIN<-{}", short(source)),
                Request::Rebuild { source, .. } => format!("REBUILD<-{}", short(source)),
                Request::Restart { .. } => "RESTART".to_string(),
                Request::Fence => "FENCE".to_string(),
            };
            format!("{instance}:{r}")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running seeds

#[derive(Debug)]
struct Failure {
    seed: u64,
    step: u64,
    message: String,
    params: String,
}

/// Runs one seed to the end: its faults, then fault-free passes until the cluster has
/// converged (or the bound is exceeded).
fn run_seed(seed: u64, trace: bool) -> Result<Stats, (Failure, Vec<String>)> {
    let mut m = Model::new(seed, trace);
    let mut stable = 0;
    let fail = |m: &mut Model, message: String| {
        m.finish_trace_line(None);
        let f = Failure { seed, step: m.step, message, params: m.p.describe() };
        Err((f, m.trace.take().unwrap_or_default()))
    };
    loop {
        let plan = match m.step_once() {
            Ok(plan) => plan,
            Err(e) => return fail(&mut m, e),
        };
        m.finish_trace_line(Some(&plan));
        if m.faults_on {
            continue;
        }
        match m.converged() {
            Ok(()) => {
                stable += 1;
                if stable >= STABLE_PASSES {
                    m.stats.steps = m.step;
                    return Ok(m.stats);
                }
            }
            Err(why) => {
                stable = 0;
                if m.step > m.p.fault_steps + CONVERGENCE_STEPS {
                    return fail(
                        &mut m,
                        format!("no convergence within {CONVERGENCE_STEPS} fault-free steps: {why}"),
                    );
                }
            }
        }
    }
}

fn report_failure(f: &Failure, trace: &[String]) -> String {
    let mut out = format!(
        "seed {} failed at step {}: {}\n  params: {}\n  replay: SIM_SEED={} cargo test -p opengauss-operator --lib plan::sim -- --nocapture\n",
        f.seed, f.step, f.message, f.params, f.seed
    );
    // The tail of the trace is what matters; the full one is printed on replay.
    let skip = trace.len().saturating_sub(60);
    if skip > 0 {
        out.push_str(&format!("  ... {skip} earlier steps (replay the seed for all of them)\n"));
    }
    for line in &trace[skip..] {
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn randomized_fault_schedules() {
    if let Some(seed) = env_u64("SIM_SEED") {
        println!("seed {seed}: {}", Model::new(seed, false).p.describe());
        for line in replay_trace(seed) {
            println!("{line}");
        }
        match run_seed(seed, false) {
            Ok(stats) => println!("seed {seed} passed in {} steps: {stats:?}", stats.steps),
            Err((f, _)) => panic!("{}", report_failure(&f, &[])),
        }
        return;
    }
    let count = env_u64("SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let first = env_u64("SIM_FIRST_SEED").unwrap_or(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8) as u64;
    let started = std::time::Instant::now();
    let results: Vec<(Stats, Vec<Failure>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut stats = Stats::default();
                    let mut failures = Vec::new();
                    for seed in (first + t..first + count).step_by(threads as usize) {
                        match run_seed(seed, false) {
                            Ok(s) => stats.add(&s),
                            Err((f, _)) => failures.push(f),
                        }
                    }
                    (stats, failures)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("simulation thread")).collect()
    });
    let mut stats = Stats::default();
    let mut failures = Vec::new();
    for (s, f) in results {
        stats.add(&s);
        failures.extend(f);
    }
    failures.sort_by_key(|f| f.seed);
    println!(
        "simulated {} seeds from {first} ({} passing steps, {} acknowledged commits, {} refused requests) in {:.1}s\n\
         acknowledgements by the old primary of a transition, before anything was promoted: {}; \
         acknowledged histories lost by asynchronous or preferred failovers: {}",
        count,
        stats.steps,
        stats.acked,
        stats.refusals,
        started.elapsed().as_secs_f64(),
        stats.failing_over_acks,
        stats.lost_histories,
    );
    println!(
        "links: {} steps with a link down; lease: {} renewals arrived, {} failsafe rounds held, {} failed, \
         {} servers stopped at the end of their lease, {} promotions refused by a holding standby, \
         {} passes (in {} separate times) in which a failsafe hold kept a primary from being replaced",
        stats.cut_steps,
        stats.renewals,
        stats.rounds_held,
        stats.rounds_failed,
        stats.lease_stops,
        stats.hold_refusals,
        stats.held_off_passes,
        stats.held_off_times,
    );
    println!(
        "the lease's known limit (a server whose manager is frozen or dead): {} steps with a second writer, \
         {} acknowledgements by it while not the endorsed writer",
        stats.limit_steps, stats.limit_acks,
    );
    println!("faults: {:?}", stats.faults);
    println!("spec changes: {:?}", stats.changes);
    println!("events: {:?}", stats.events);
    if failures.is_empty() {
        return;
    }
    let mut message = format!("{} of {count} seeds violate an invariant:\n", failures.len());
    for f in &failures {
        message.push_str(&format!("  seed {} step {} [{}]: {}\n", f.seed, f.step, f.params, f.message));
    }
    // Full traces of the first few, replayed deterministically.
    for f in failures.iter().take(3) {
        if let Err((f, trace)) = run_seed(f.seed, true) {
            message.push_str(&report_failure(&f, &trace));
        }
    }
    panic!("{message}");
}

/// The trace of a seed's run, pass or fail.
fn replay_trace(seed: u64) -> Vec<String> {
    let mut m = Model::new(seed, true);
    let mut stable = 0;
    loop {
        let Ok(plan) = m.step_once() else {
            m.finish_trace_line(None);
            break;
        };
        m.finish_trace_line(Some(&plan));
        if m.faults_on {
            continue;
        }
        if m.converged().is_ok() {
            stable += 1;
            if stable >= STABLE_PASSES {
                break;
            }
        } else {
            stable = 0;
            if m.step > m.p.fault_steps + CONVERGENCE_STEPS {
                break;
            }
        }
    }
    m.trace.take().unwrap_or_default()
}

#[test]
fn fault_free_cluster_converges_and_acknowledges() {
    for instances in 1..=5u32 {
        let mut m = Model::new(7, false);
        m.p.instances = instances;
        m.p.fault_steps = 0;
        m.p.number = 1;
        m.p.method = SyncMethod::Any;
        m.p.durability = DataDurability::Required;
        m.faults_on = false;
        m.spec = m.p.spec();
        let mut converged_at = None;
        for _ in 0..60 {
            m.step_once().unwrap_or_else(|e| panic!("{instances} instances: {e}"));
            if m.converged().is_ok() {
                converged_at = Some(m.step);
                break;
            }
        }
        let at = converged_at
            .unwrap_or_else(|| panic!("{instances} instances never converged: {:?}", m.converged().err()));
        assert!(at < 30, "{instances} instances took {at} steps");
        // Commits keep being acknowledged once healthy.
        let before = m.stats.acked;
        for _ in 0..5 {
            m.step_once().expect("steady state");
        }
        assert!(m.stats.acked >= before + 4, "{instances} instances: commits not acknowledged");
    }
}
