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
//! Faults (each step with a per-seed probability, until a per-seed step): crash of an
//! instance (manager and server; sometimes the data directory too, or the whole instance),
//! server crash, manager crash with the server left running (the local platform), freeze of
//! the whole instance or of its manager only, slow probe (no report for a pass, the database
//! port answering or not), controller restart (fresh `watching_since`, sometimes losing the
//! actions of the pass whose status it persisted), clock jump, switchover request. A disk is
//! only lost while every other instance is a standby with a complete copy and a member the spec
//! does not fence holds every acknowledged commit. Then faults stop, frozen instances thaw, and
//! the cluster must converge.
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
//! 1. one writer: acknowledgements never move back to a timeline that later acknowledgements
//!    left, and never come from two instances in one step; the status never has two ready
//!    primaries, and names the target as the primary whenever no transition is in flight;
//!    nothing is promoted or started as primary while another instance may still accept
//!    writes; a writable primary in sight that the plan does not keep is fenced at once. The
//!    one tolerated case: a replaced primary that resumes (thawed, orphaned by its manager, or
//!    finishing a late promotion) and acknowledges without standbys (asynchronous, or
//!    `preferred`) before the next pass can see and fence it; only synchronous replication
//!    with `required` prevents that, so it is counted (and printed), not failed;
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
//!    and idle, the controller acting);
//! 7. rolling restarts: at most one `Restart` in flight, and never one to the primary while the
//!    spec asks for more than one instance (it hands over through a switchover).
//!
//! `SIM_SEED=1234 cargo test -p opengauss-operator --lib plan::sim -- --nocapture` replays one
//! seed and prints its step-by-step trace; `SIM_SEEDS=n` changes how many seeds the normal run
//! tries, `SIM_FIRST_SEED=k` where they start. A failure prints the seed, its parameters and
//! the last steps of its trace.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use opengauss_crd::names::instance_names;
use opengauss_crd::{
    DataDurability, OpenGaussClusterSpec, OpenGaussClusterStatus, Phase, Role, SyncMethod, TransitionStep,
};

use super::{Action, Input, Observation, Observed, Plan, PlatformState, UserRequests, decide};
use crate::engine::{DesiredConfig, Endpoint, Lsn, SyncConfig};
use crate::instance::report::{
    ControlReport, InstanceReport, ManagerPhase, NodeReport, OperationKind, OperationReport, OperationState,
    ReceiverReport, ReplicationRow, Request, ServerProcessReport,
};

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
        }
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
            "instances={} sync={} {} durability={:?} delay={}s fault_steps={} fault_rate={:.3} lag={:.1} most_available_sync={} scale_rate={:.3} fence_rate={:.3} param_rate={:.3}",
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
        }
    }

    /// The manager is up and can act.
    fn manager_works(&self) -> bool {
        self.platform == PlatformState::Running && self.freeze == Freeze::No
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
    stray_acks: u64,
    lost_histories: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.steps += o.steps;
        self.acked += o.acked;
        self.refusals += o.refusals;
        self.stray_acks += o.stray_acks;
        self.lost_histories += o.lost_histories;
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
        let p = Params::draw(&mut faults, &mut changes);
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
            if s == i || self.insts[s].streaming_from != Some(i) || !self.insts[s].serving() {
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
        let standby = x.data.as_ref().is_some_and(|d| d.standby);
        match crate::instance::manager::refusal(request, x.data.is_some(), standby) {
            Some(why) => Err(why.to_string()),
            None => Ok(()),
        }
    }

    fn submit(&mut self, i: usize, request: &Request) -> Submitted {
        if !self.insts[i].manager_works() {
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
                let source = self.by_endpoint(src).filter(|&j| j != i && self.insts[j].serving());
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
                    let src = self.by_endpoint(source).filter(|&j| j != i && self.insts[j].serving());
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
                let src = self.by_endpoint(source).filter(|&j| j != i && self.insts[j].serving());
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
            let Some(u) = self.by_endpoint(&up).filter(|&u| u != s && self.insts[u].serving()) else {
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
            if !self.insts[i].writable() {
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
                let loss_allowed =
                    how == Ack::WithoutStandby || self.p.durability == DataDurability::Preferred;
                if loss_allowed && self.is_stray(i) {
                    // A primary the status does not endorse, acknowledging without standbys
                    // (or with `preferred`, with a standby that could not be detached): a
                    // primary that was frozen (or lost its manager, or whose late promotion
                    // completed) while it was replaced, acknowledging before the fence the plan
                    // sends on sight (checked in `check_plan`) takes effect. Only synchronous
                    // replication with `required` prevents that, so it is tolerated, counted
                    // and left out of the bookkeeping below; its commits are as good as lost.
                    self.stats.stray_acks += 1;
                    let name = self.insts[i].short().to_string();
                    self.note(|| format!("stray-ack@{name}"));
                    continue;
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
                self.drop_actions = r1 % 2 == 0;
                self.watching_since = self.now;
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
            failsafe: None,
        }
    }

    fn observe(&self) -> Observation {
        let instances = self
            .insts
            .iter()
            .enumerate()
            .filter(|(i, _)| self.exists(*i))
            .map(|(i, x)| {
                let answers_report = x.manager_works() && x.slow_probe.is_none();
                let report = answers_report.then(|| self.report(i));
                let server_answers = report.is_none()
                    && x.platform == PlatformState::Running
                    && match x.slow_probe {
                        Some(answers) => answers && x.serving(),
                        None => x.serving(),
                    };
                let last_seen = self
                    .status
                    .instance(&x.name)
                    .and_then(|r| r.last_seen.as_ref())
                    .map_or(self.watching_since, |t| t.0)
                    .max(self.watching_since);
                let unrenewed_for = self.now.duration_since(last_seen).unsigned_abs();
                let observed = Observed {
                    platform: x.platform,
                    endpoint: x.endpoint.clone(),
                    ha_port: HA_PORT,
                    outdated: x.outdated,
                    manager_url: None,
                    unrenewed_for,
                    report,
                    server_answers,
                };
                (x.name.clone(), observed)
            })
            .collect();
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
                    Submitted::Accepted => {}
                    Submitted::Busy => self.note(|| format!("(busy {})", action.instance())),
                    Submitted::Refused(why) => {
                        self.stats.refusals += 1;
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
        for i in 0..self.insts.len() {
            self.progress(i);
        }
        for i in 0..self.insts.len() {
            self.supervise(i);
        }
        self.client_commits();
        self.replicate();
        self.acknowledge()
    }

    fn step_once(&mut self) -> Result<Plan, String> {
        self.step += 1;
        self.now += SignedDuration::from_secs(1);
        if self.faults_on && self.step > self.p.fault_steps {
            self.faults_on = false;
            self.note(|| "FAULTS STOP".into());
            self.settle_fences();
        }
        self.inject_faults();
        self.change_spec();
        self.tick()?;
        let observed = self.observe();
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
        let steady =
            self.status.initialized && self.status.transition.is_none() && plan.status.transition.is_none();
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
            if let Some(w) = &x.work {
                s.push_str(&format!(" op={:?}", w.request.kind()));
            } else if let Some(op) = x.operation.as_ref().filter(|o| o.state == OperationState::Failed) {
                s.push_str(&format!(" failed={:?}", op.kind));
            }
            out.push(s);
        }
        out.join(" | ")
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
         acknowledgements by a replaced primary before a pass could fence it (tolerated): {}; \
         acknowledged histories lost by asynchronous or preferred failovers: {}",
        count,
        stats.steps,
        stats.acked,
        stats.refusals,
        started.elapsed().as_secs_f64(),
        stats.stray_acks,
        stats.lost_histories,
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
