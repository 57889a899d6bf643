//! The instance manager's state and operations. One operation runs at a time; status reads
//! never wait for it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::Mutex;

use super::client::ManagerClient;
use super::config::{InstanceConfig, read_secret};
use super::datadir::{self, is_fenced, is_initialized, is_standby_configured};
use super::probe::{self, LocalConnection};
use super::report::{
    ControlReport, FailsafeHold, FailsafeRequest, InstanceReport, ManagerPhase, OperationKind,
    OperationReport, OperationState, ReceiverReport, Request, ServerProcessReport,
};
use super::server::{self, ServerProcess, running_postmaster};
use crate::engine::{CloneStep, DesiredConfig, Endpoint, StopMode, wal};
use crate::fsutil::{create_dir_mode, write_atomic};
use crate::lease::{self, Verdict};
use crate::process::run_checked;

/// How long a started server may take to accept connections (crash recovery included).
const START_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a rejoined standby has to become consistent (see `rejoin`).
const REJOIN_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a rejoined standby not yet consistent checks that its source can still bring it
/// there (see `wait_accepting_within`).
const SOURCE_HISTORY_CHECK: Duration = Duration::from_secs(2);
/// How long a base backup or rewind may take.
const COPY_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long the readiness watcher gives the server to answer: a primary too busy to answer
/// a status probe quickly still serves its clients, and must not leave its Service for it.
const READINESS_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// A readiness result older than this (the watcher itself stuck) counts as not ready.
const READINESS_STALE: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub struct Manager {
    pub cfg: InstanceConfig,
    token: String,
    server: Mutex<ServerProcess>,
    /// Connection used by operations.
    conn: Mutex<LocalConnection>,
    /// Connection used by status reads, so they never queue behind an operation.
    status_conn: Mutex<LocalConnection>,
    operation: std::sync::Mutex<Option<OperationReport>>,
    applied: std::sync::Mutex<Option<DesiredConfig>>,
    /// The last failed request, when, and how many times in a row: the same request is not
    /// retried before its back-off has passed.
    last_failure: std::sync::Mutex<Option<(String, std::time::Instant, u32)>>,
    /// When the controller last reached this manager (any authenticated request but a peer's
    /// failsafe request): it renews a primary's lease.
    last_contact: std::sync::Mutex<Option<std::time::Instant>>,
    /// When the lease loop last ran: a renewal that arrives long after (the process was stopped,
    /// SIGSTOP or a paused VM, and the kernel kept the request) is not trusted.
    last_check: std::sync::Mutex<std::time::Instant>,
    /// The contact last written to the lease file (see `lease_file`).
    persisted_contact: std::sync::Mutex<Option<std::time::Instant>>,
    /// When the last failsafe round in which every peer held this primary began.
    held_since: std::sync::Mutex<Option<std::time::Instant>>,
    /// Why the last failsafe round failed, for the log when the lease ends.
    failsafe_problem: std::sync::Mutex<Option<String>>,
    /// A failsafe round is in flight.
    asking_peers: std::sync::atomic::AtomicBool,
    /// The primary this instance holds (failsafe), and until when: no promotion before.
    holding: std::sync::Mutex<Option<(String, std::time::Instant)>>,
    /// Talks to the peers' managers.
    peers: ManagerClient,
    /// Set while the manager shuts down: no more restarts.
    stopping: std::sync::atomic::AtomicBool,
    /// Why this instance cannot be run (the server version is not supported), if it cannot.
    unsupported: std::sync::Mutex<Option<String>>,
    /// Whether the server accepted a connection at the last readiness probe, and when:
    /// `/readyz` answers from this, without running SQL under the kubelet's probe time-out.
    readiness: std::sync::Mutex<Option<(bool, std::time::Instant)>>,
    /// The WAL receiver's state at the last report, so the log says when streaming starts and
    /// stops rather than assuming it from a server start.
    receiver_state: std::sync::Mutex<Option<String>>,
    /// The server certificate in use (its text and what it says), once one was checked.
    pub(super) certificate: std::sync::Mutex<Option<(String, crate::tls::CertificateInfo)>>,
}

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("another operation is running: {0:?}")]
    Busy(OperationKind),
    #[error("{0}")]
    Invalid(String),
    #[error("the same request failed {failures} time(s); retrying in {wait_ms} ms")]
    BackingOff { failures: u32, wait_ms: u128 },
}

/// Pause before retrying a request that failed `failures` times in a row.
fn retry_backoff(failures: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << failures.min(6))).min(Duration::from_secs(30))
}

impl Manager {
    pub fn new(cfg: InstanceConfig) -> anyhow::Result<Arc<Self>> {
        let token = read_secret(&cfg.token_file)?;
        let server = ServerProcess::adopt(&cfg);
        if let Some(pid) = server.pid() {
            tracing::info!(pid, "adopted running database server");
        }
        let applied = datadir::load_applied_config(&cfg);
        let last_contact = read_contact(&cfg);
        let cfg_for_hold = cfg.clone();
        let authority = cfg.tls.as_ref().map(|t| t.read_authority()).transpose()?;
        let peers = ManagerClient::new(token.clone(), authority.as_deref())?;
        Ok(Arc::new(Self {
            cfg,
            token,
            server: Mutex::new(server),
            conn: Mutex::default(),
            status_conn: Mutex::default(),
            operation: std::sync::Mutex::new(None),
            applied: std::sync::Mutex::new(applied),
            last_failure: std::sync::Mutex::new(None),
            // A restarted manager keeps the lease its predecessor had, not a fresh one.
            last_contact: std::sync::Mutex::new(last_contact),
            persisted_contact: std::sync::Mutex::new(None),
            last_check: std::sync::Mutex::new(std::time::Instant::now()),
            held_since: std::sync::Mutex::new(None),
            failsafe_problem: std::sync::Mutex::new(None),
            asking_peers: Default::default(),
            holding: std::sync::Mutex::new(read_hold(&cfg_for_hold)),
            peers,
            stopping: Default::default(),
            readiness: std::sync::Mutex::new(None),
            unsupported: std::sync::Mutex::new(None),
            receiver_state: std::sync::Mutex::new(None),
            certificate: std::sync::Mutex::new(None),
        }))
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Has a running server read its configuration files again (certificates included).
    pub(super) async fn reload_server(&self) -> anyhow::Result<bool> {
        if !self.server.lock().await.is_running() {
            return Ok(false);
        }
        run_checked(&self.cfg.dialect().reload(&self.cfg.layout()), TOOL_TIMEOUT).await?;
        Ok(true)
    }

    /// Records that the controller reached this manager.
    pub fn contacted(&self) {
        // A request that waited while this process was stopped was sent long ago: the
        // controller counts the lease from when it sent it, so it renews nothing now.
        if self.last_check.lock().expect("check lock").elapsed() > lease::CHECK_INTERVAL * 3 {
            return;
        }
        *self.last_contact.lock().expect("contact lock") = Some(std::time::Instant::now());
    }

    /// Writes the last contact down (at most once per lease check), so a restarted manager
    /// does not grant its server a lease the controller never gave.
    fn persist_contact(&self) {
        let Some(contact) = *self.last_contact.lock().expect("contact lock") else { return };
        let mut persisted = self.persisted_contact.lock().expect("persisted lock");
        if *persisted == Some(contact) {
            return;
        }
        let at = boot_clock().saturating_sub(contact.elapsed());
        if std::fs::write(lease_file(&self.cfg), format!("{}\n", at.as_millis())).is_ok() {
            *persisted = Some(contact);
        }
    }

    /// Keeps a primary's writes inside its lease (see `crate::lease`): asks the peers to hold
    /// it while the controller is away, and stops the server when neither renewed it in time.
    pub async fn keep_lease(self: Arc<Self>) {
        loop {
            tokio::time::sleep(lease::CHECK_INTERVAL).await;
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            self.check_lease().await;
            *self.last_check.lock().expect("check lock") = std::time::Instant::now();
        }
    }

    async fn check_lease(self: &Arc<Self>) {
        let cfg = &self.cfg;
        let config = self.applied_config();
        let lease = Duration::from_millis(config.as_ref().map_or(0, |c| c.lease_milliseconds));
        let serving_primary = is_initialized(cfg)
            && !is_standby_configured(cfg)
            && !is_fenced(cfg)
            && running_postmaster(&cfg.data_dir()).is_some();
        let (Some(config), true) = (config, serving_primary && !lease.is_zero()) else {
            *self.held_since.lock().expect("held lock") = None;
            return;
        };
        self.persist_contact();
        let since_contact =
            self.last_contact.lock().expect("contact lock").map_or(Duration::MAX, |t| t.elapsed());
        let since_held = self.held_since.lock().expect("held lock").map(|t| t.elapsed());
        match lease::verdict(lease, since_contact, since_held) {
            Verdict::Hold => {}
            Verdict::AskPeers => {
                if !self.asking_peers.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    let me = Arc::clone(self);
                    tokio::spawn(async move {
                        me.ask_peers(&config, lease).await;
                        me.asking_peers.store(false, std::sync::atomic::Ordering::SeqCst);
                    });
                }
            }
            Verdict::StopWrites => self.stop_for_lease(since_contact).await,
        }
    }

    /// One failsafe round: every peer must hold this primary for it to count.
    async fn ask_peers(&self, config: &DesiredConfig, lease: Duration) {
        let began = std::time::Instant::now();
        let request = FailsafeRequest {
            primary: self.cfg.instance.clone(),
            endpoint: Endpoint { host: self.cfg.own_address(), port: self.cfg.port },
            lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
        };
        let timeout = lease::failsafe_timeout(lease);
        let asks = config.peers.iter().map(|peer| {
            let request = &request;
            async move {
                let Some(url) = peer.manager.as_deref() else {
                    return Err(format!("{}: its manager's address is not known", peer.instance));
                };
                self.peers
                    .failsafe(url, request, timeout)
                    .await
                    .map_err(|e| format!("{}: {e:#}", peer.instance))
            }
        });
        let refused: Vec<String> =
            futures::future::join_all(asks).await.into_iter().filter_map(Result::err).collect();
        // No peer at all: nobody exists who could replace it.
        let problem = if refused.is_empty() { None } else { Some(refused.join("; ")) };
        match problem {
            None => {
                let first = self.held_since.lock().expect("held lock").replace(began).is_none();
                if first {
                    tracing::warn!(
                        "no word from the controller; every peer holds this primary (failsafe): still serving"
                    );
                }
                *self.failsafe_problem.lock().expect("problem lock") = None;
            }
            Some(p) => *self.failsafe_problem.lock().expect("problem lock") = Some(p),
        }
    }

    /// The lease ran out: stop accepting writes before anyone may replace this primary. The
    /// controller starts it again if nobody did.
    async fn stop_for_lease(&self, since_contact: Duration) {
        let cfg = &self.cfg;
        let problem = self.failsafe_problem.lock().expect("problem lock").clone();
        tracing::error!(
            silent_ms = since_contact.as_millis() as u64,
            failsafe = problem.as_deref().unwrap_or("not asked yet"),
            "lease ended: no word from the controller and not every peer holds this primary; stopping writes"
        );
        if let Err(e) = datadir::set_fenced(cfg, Some(None)) {
            tracing::error!(error = format!("{e:#}"), "cannot record the fence");
        }
        *self.held_since.lock().expect("held lock") = None;
        if let Err(e) = self.server.lock().await.stop(cfg, StopMode::Fast).await {
            tracing::error!(error = format!("{e:#}"), "cannot stop the server at the end of its lease");
        }
    }

    /// A primary asks this instance to hold it (failsafe): granted when this instance cannot
    /// replace it (no data yet) or streams from it; while held, it refuses to be promoted.
    pub fn hold(&self, request: &FailsafeRequest) -> Result<Duration, String> {
        let cfg = &self.cfg;
        let applied = self.applied_config();
        let own = Duration::from_millis(applied.as_ref().map_or(0, |c| c.lease_milliseconds));
        let upstream = applied.and_then(|c| c.upstream);
        let mut holding = self.holding.lock().expect("holding lock");
        let held = holding
            .as_ref()
            .filter(|(_, until)| *until > std::time::Instant::now())
            .map(|(primary, _)| primary.as_str());
        let state = HolderState {
            instance: &cfg.instance,
            initialized: is_initialized(cfg),
            standby: is_standby_configured(cfg),
            upstream: upstream.as_ref(),
            holds: held,
        };
        if let Some(why) = hold_refusal(&state, request) {
            return Err(why);
        }
        let length = Duration::from_millis(request.lease_ms).max(own);
        // Written down first: a manager restarted while it holds must still refuse promotion.
        let until = boot_clock() + length;
        std::fs::write(hold_file(cfg), format!("{} {}\n", until.as_millis(), request.primary))
            .map_err(|e| format!("{} cannot record the hold: {e}", cfg.instance))?;
        *holding = Some((request.primary.clone(), std::time::Instant::now() + length));
        Ok(length)
    }

    /// The primary this instance holds right now, if any.
    fn held(&self) -> Option<FailsafeHold> {
        let holding = self.holding.lock().expect("holding lock");
        let (primary, until) = holding.as_ref()?;
        let left = until.saturating_duration_since(std::time::Instant::now());
        (!left.is_zero()).then(|| FailsafeHold {
            primary: primary.clone(),
            remaining_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
        })
    }

    fn current_operation(&self) -> Option<OperationReport> {
        self.operation.lock().expect("operation lock").clone()
    }

    fn applied_config(&self) -> Option<DesiredConfig> {
        self.applied.lock().expect("applied lock").clone()
    }

    /// The instance as it is now.
    pub async fn report(&self) -> InstanceReport {
        let cfg = &self.cfg;
        let initialized = is_initialized(cfg);
        let fenced = is_fenced(cfg);
        let fenced_lsn = if fenced { datadir::fenced_position(cfg) } else { None };
        let (running, pid, crashed) = match self.server.try_lock() {
            Ok(mut s) => {
                let running = s.is_running();
                (running, s.pid(), s.crashed())
            }
            // An operation holds the server: read its PID file instead.
            Err(_) => {
                let pid = running_postmaster(&cfg.data_dir());
                (pid.is_some(), pid, false)
            }
        };
        let probe =
            if running { self.status_conn.lock().await.probe(cfg, PROBE_TIMEOUT).await } else { None };
        let control = if !running && initialized { self.control_data().await } else { None };
        let standby_configured = is_standby_configured(cfg);
        let operation = self.current_operation();
        let busy = operation.as_ref().is_some_and(|o| o.state == OperationState::Running);
        let phase = if !initialized {
            ManagerPhase::AwaitingBootstrap
        } else if running || busy {
            ManagerPhase::Running
        } else if fenced || self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            ManagerPhase::Stopped
        } else {
            ManagerPhase::AwaitingRole
        };
        let (node, receiver, replication, pending_restart) = match probe {
            Some(p) => (Some(p.node), p.receiver, p.replication, p.pending_restart),
            None => (None, None, Vec::new(), Vec::new()),
        };
        self.log_receiver_change(receiver.as_ref());
        InstanceReport {
            instance: cfg.instance.clone(),
            manager_pid: std::process::id(),
            phase,
            initialized,
            standby_configured,
            fenced,
            fenced_lsn,
            oldest_wal: if initialized {
                wal::oldest_segment_start(&cfg.data_dir().join(cfg.dialect().wal_dir()))
            } else {
                None
            },
            pending_restart,
            // A server whose data directory is gone still answers on the connection it had;
            // it cannot serve anyone else.
            server: ServerProcessReport {
                running,
                pid,
                accepting: node.is_some() && datadir::missing_essential(&cfg.data_dir()).is_none(),
                crashed,
            },
            node,
            receiver,
            replication,
            control,
            operation,
            config: self.applied_config(),
            failsafe: self.held(),
            certificate_expires: self
                .certificate
                .lock()
                .expect("certificate lock")
                .as_ref()
                .map(|(_, i)| i.not_after),
        }
    }

    async fn control_data(&self) -> Option<ControlReport> {
        Some(crate::engine::controldata::parse(&self.controldata_output().await?))
    }

    async fn controldata_output(&self) -> Option<String> {
        let line = self.cfg.dialect().controldata(&self.cfg.layout());
        run_checked(&line, Duration::from_secs(10)).await.ok()
    }

    /// Accepts a request and runs it in the background. The same request repeated while it
    /// runs is accepted again without starting twice.
    pub fn submit(self: &Arc<Self>, request: Request) -> Result<OperationReport, Refusal> {
        let request_id = request_id(&request);
        let report = {
            let mut slot = self.operation.lock().expect("operation lock");
            if let Some(op) = slot.as_ref()
                && op.state == OperationState::Running
            {
                if op.request_id == request_id {
                    return Ok(op.clone());
                }
                return Err(Refusal::Busy(op.kind));
            }
            // The same bootstrap again after it succeeded (the controller acted on a report
            // from just before it finished): nothing to do. Other requests are re-run, since
            // the state they produced may have changed since.
            if let Some(op) = slot.as_ref()
                && op.state == OperationState::Succeeded
                && op.request_id == request_id
                && request.kind() == OperationKind::Bootstrap
            {
                return Ok(op.clone());
            }
            self.check(&request)?;
            if let Some((id, at, failures)) = self.last_failure.lock().expect("failure lock").as_ref()
                && *id == request_id
            {
                let wait = retry_backoff(*failures).saturating_sub(at.elapsed());
                if !wait.is_zero() {
                    return Err(Refusal::BackingOff { failures: *failures, wait_ms: wait.as_millis() });
                }
            }
            let report = OperationReport {
                kind: request.kind(),
                state: OperationState::Running,
                request_id,
                message: String::new(),
            };
            *slot = Some(report.clone());
            report
        };
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let kind = request.kind();
            tracing::info!(?kind, "operation started");
            let result = me.execute(request).await;
            {
                let mut last = me.last_failure.lock().expect("failure lock");
                let id = request_id_of(&me);
                match &result {
                    Ok(_) => *last = None,
                    Err(_) => {
                        let failures = match last.as_ref() {
                            Some((prev, _, n)) if *prev == id => n + 1,
                            _ => 1,
                        };
                        *last = Some((id, std::time::Instant::now(), failures));
                    }
                }
            }
            let mut slot = me.operation.lock().expect("operation lock");
            if let Some(op) = slot.as_mut() {
                match result {
                    Ok(message) => {
                        tracing::info!(?kind, %message, "operation succeeded");
                        op.state = OperationState::Succeeded;
                        op.message = message;
                    }
                    Err(e) => {
                        tracing::error!(?kind, error = format!("{e:#}"), "operation failed");
                        op.state = OperationState::Failed;
                        op.message = format!("{e:#}");
                    }
                }
            }
        });
        Ok(report)
    }

    /// Checks the server's version once at start; an unsupported one makes every request
    /// fail with why.
    pub async fn check_server_version(&self) {
        let line = self.cfg.dialect().version(&self.cfg.layout());
        let verdict = match run_checked(&line, Duration::from_secs(30)).await {
            Ok(out) => self.cfg.dialect().check_version(&out),
            Err(e) => Err(format!("cannot run {}: {e:#}", line.name())),
        };
        if let Err(why) = verdict {
            tracing::error!("{why}");
            *self.unsupported.lock().expect("unsupported lock") = Some(why);
        }
    }

    /// Refuses requests that cannot apply to the instance as it is.
    fn check(&self, request: &Request) -> Result<(), Refusal> {
        if let Some(why) = self.unsupported.lock().expect("unsupported lock").clone()
            && !matches!(request, Request::Fence)
        {
            return Err(Refusal::Invalid(why));
        }
        if matches!(request, Request::Promote { .. } | Request::Bootstrap { source: None, .. })
            && let Some(h) = self.held()
        {
            return Err(Refusal::Invalid(format!(
                "holding {} (failsafe) for another {} ms: it may still accept writes",
                h.primary, h.remaining_ms
            )));
        }
        match refusal(request, is_initialized(&self.cfg), is_standby_configured(&self.cfg)) {
            Some(why) => Err(Refusal::Invalid(why.to_string())),
            None => Ok(()),
        }
    }

    async fn execute(&self, request: Request) -> anyhow::Result<String> {
        match request {
            Request::Bootstrap { source: None, config } => self.initialize(&config).await,
            Request::Bootstrap { source: Some(source), config } => self.clone_from(&source, &config).await,
            Request::Start { config } => self.start(&config).await,
            Request::Configure { config } => self.configure(&config).await,
            Request::Promote { config } => self.promote(&config).await,
            Request::Rejoin { source, config } => self.rejoin(&source, &config).await,
            Request::Rebuild { source, config } => self.rebuild(&source, &config).await,
            Request::Restart { config } => self.restart(&config).await,
            Request::Fence => self.fence().await,
        }
    }

    fn apply_files(&self, config: &DesiredConfig) -> anyhow::Result<()> {
        datadir::write_server_files(&self.cfg, config)?;
        *self.applied.lock().expect("applied lock") = Some(config.clone());
        Ok(())
    }

    /// Moves an interrupted bootstrap out of the way so it can be retried.
    fn clear_incomplete(&self) -> anyhow::Result<()> {
        if let Some(moved) = datadir::set_aside(&self.cfg, "incomplete")? {
            tracing::warn!(to = %moved.display(), "moved an incomplete data directory aside");
        }
        Ok(())
    }

    async fn initialize(&self, config: &DesiredConfig) -> anyhow::Result<String> {
        let cfg = &self.cfg;
        self.clear_incomplete()?;
        create_dir_mode(&cfg.data_dir(), 0o700)?;
        let pwfile = cfg.root.join(".initdb-password");
        write_atomic(&pwfile, read_secret(&cfg.superuser_password_file)?.as_bytes(), 0o600)?;
        let line = cfg.dialect().initdb(&cfg.layout(), &pwfile);
        let result = run_checked(&line, TOOL_TIMEOUT).await;
        let _ = std::fs::remove_file(&pwfile);
        result?;
        self.apply_files(config)?;
        self.start_server(false).await?;
        tracing::debug!("server accepts connections; creating the replication role");
        let password = read_secret(&cfg.replication_password_file)?;
        if let Some(sql) = cfg.dialect().replication_role_sql(&cfg.replication_user, &password) {
            self.conn.lock().await.execute(cfg, &sql).await.context("creating the replication role")?;
        }
        datadir::mark_bootstrapped(cfg)?;
        Ok("initialised a new primary".into())
    }

    async fn clone_from(&self, source: &Endpoint, config: &DesiredConfig) -> anyhow::Result<String> {
        let cfg = &self.cfg;
        self.clear_incomplete()?;
        self.run_clone_steps(source, config).await?;
        datadir::mark_bootstrapped(cfg)?;
        // A fence or rejoin left by an earlier failed rejoin does not apply to fresh data.
        datadir::set_fenced(cfg, None)?;
        datadir::set_rejoin_incomplete(cfg, false)?;
        self.start_server(true).await?;
        Ok(format!("cloned from {source} and started as a standby"))
    }

    async fn run_clone_steps(&self, source: &Endpoint, config: &DesiredConfig) -> anyhow::Result<()> {
        let cfg = &self.cfg;
        let pwfile = cfg.root.join(".initdb-password");
        write_atomic(&pwfile, read_secret(&cfg.superuser_password_file)?.as_bytes(), 0o600)?;
        let steps = cfg.dialect().clone_steps(&cfg.layout(), source, &pwfile);
        let mut result = Ok(());
        for step in steps {
            result = match step {
                CloneStep::Run(line) => run_checked(&line, COPY_TIMEOUT).await.map(drop),
                CloneStep::WriteConfig => std::fs::set_permissions(
                    cfg.data_dir(),
                    std::os::unix::fs::PermissionsExt::from_mode(0o700),
                )
                .context("setting data directory permissions")
                .and_then(|()| self.apply_files(config)),
            };
            if result.is_err() {
                break;
            }
        }
        let _ = std::fs::remove_file(&pwfile);
        result
    }

    async fn start(&self, config: &DesiredConfig) -> anyhow::Result<String> {
        // A standby whose rejoin did not complete may never become consistent as it is: it is
        // rewound from the primary it is to follow first.
        if datadir::rejoin_incomplete(&self.cfg)
            && config.standby
            && let Some(upstream) = &config.upstream
        {
            return self.rejoin(upstream, config).await;
        }
        self.apply_files(config)?;
        datadir::set_fenced(&self.cfg, None)?;
        self.start_server(config.standby).await?;
        Ok(format!("started as {}", if config.standby { "standby" } else { "primary" }))
    }

    async fn configure(&self, config: &DesiredConfig) -> anyhow::Result<String> {
        self.apply_files(config)?;
        if self.server.lock().await.is_running() {
            run_checked(&self.cfg.dialect().reload(&self.cfg.layout()), TOOL_TIMEOUT).await?;
            if !config.standby {
                self.drop_stale_slots(config).await;
            }
            Ok("configuration reloaded".into())
        } else {
            Ok("configuration written; server not running".into())
        }
    }

    /// Drops the replication slots of instances that are no longer peers (best effort: a
    /// failure is logged and tried again with the next configuration).
    async fn drop_stale_slots(&self, config: &DesiredConfig) {
        let keep: Vec<String> = config.peers.iter().map(|p| p.instance.clone()).collect();
        let Some(sql) = self.cfg.dialect().stale_slots_sql(&keep) else { return };
        if let Err(e) = self.conn.lock().await.execute(&self.cfg, &sql).await {
            tracing::warn!(error = format!("{e:#}"), "could not drop stale replication slots");
        }
    }

    async fn promote(&self, config: &DesiredConfig) -> anyhow::Result<String> {
        let cfg = &self.cfg;
        if !self.server.lock().await.is_running() {
            bail!("the server is not running");
        }
        let already = self.status_conn.lock().await.probe(cfg, PROBE_TIMEOUT).await;
        if already.as_ref().is_none_or(|p| p.node.in_recovery) {
            run_checked(&cfg.dialect().promote(&cfg.layout()), TOOL_TIMEOUT).await?;
        }
        self.wait_accepting(Some(false)).await?;
        self.apply_files(config)?;
        run_checked(&cfg.dialect().reload(&cfg.layout()), TOOL_TIMEOUT).await?;
        Ok("promoted to primary".into())
    }

    async fn rejoin(&self, source: &Endpoint, config: &DesiredConfig) -> anyhow::Result<String> {
        let cfg = &self.cfg;
        self.server.lock().await.stop(cfg, StopMode::Fast).await?;
        let repeated = is_standby_configured(cfg) && !datadir::rejoin_incomplete(cfg);
        datadir::set_rejoin_incomplete(cfg, true)?;
        let rewound = if repeated {
            // Already a standby (a repeated request): nothing diverged, just follow.
            Ok(String::new())
        } else {
            if cfg.dialect().checkpoint_source_before_rewind() {
                let password = read_secret(&cfg.superuser_password_file)?;
                if let Err(e) = probe::checkpoint_remote(cfg, source, &password, Duration::from_secs(3)).await
                {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "could not checkpoint the new primary before rewinding"
                    );
                }
            }
            // A killed server's lock must be free, or the rewind's crash recovery is refused.
            async {
                server::wait_lock_released(&cfg.data_dir(), server::LOCK_RELEASE_TIMEOUT).await?;
                run_checked(&cfg.dialect().rewind(&cfg.layout(), source), COPY_TIMEOUT).await
            }
            .await
        };
        let how = match rewound {
            Ok(_) => {
                self.apply_files(config)?;
                "rewound"
            }
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "rewind failed; cloning again");
                let moved = datadir::set_aside(cfg, "previous")?;
                if let Some(m) = moved {
                    tracing::warn!(to = %m.display(), "kept the old data directory");
                }
                self.run_clone_steps(source, config).await.context("re-cloning after a failed rewind")?;
                datadir::mark_bootstrapped(cfg)?;
                "re-cloned"
            }
        };
        datadir::set_fenced(cfg, None)?;
        // A rewound standby replays up to where its source was when it was copied. Should the
        // source lose its place meanwhile (a newer primary forked its history before that
        // point), the standby can never become consistent: it is stopped as soon as the
        // source's history shows it (or at the timeout where it cannot be read), and the rejoin
        // asked again rewinds it from the new primary.
        server::wait_lock_released(&cfg.data_dir(), server::LOCK_RELEASE_TIMEOUT).await?;
        self.server.lock().await.start(cfg, true)?;
        if let Err(e) = self.wait_accepting_within(None, REJOIN_READY_TIMEOUT, Some(source)).await {
            let _ = self.server.lock().await.stop(cfg, StopMode::Fast).await;
            return Err(e.context(format!(
                "{how} from {source}, but the standby did not reach a consistent state; \
                 the next rejoin rewinds it again"
            )));
        }
        datadir::set_rejoin_incomplete(cfg, false)?;
        Ok(format!("{how} from {source} and started as a standby"))
    }

    async fn rebuild(&self, source: &Endpoint, config: &DesiredConfig) -> anyhow::Result<String> {
        let cfg = &self.cfg;
        self.server.lock().await.stop(cfg, StopMode::Fast).await?;
        if let Some(m) = datadir::set_aside(cfg, "previous")? {
            tracing::warn!(to = %m.display(), "kept the old data directory before cloning again");
        }
        self.run_clone_steps(source, config).await.context("cloning again")?;
        datadir::mark_bootstrapped(cfg)?;
        datadir::set_fenced(cfg, None)?;
        datadir::set_rejoin_incomplete(cfg, false)?;
        self.start_server(true).await?;
        Ok(format!("cloned again from {source} and started as a standby"))
    }

    async fn fence(&self) -> anyhow::Result<String> {
        let cfg = &self.cfg;
        let mut position = None;
        if is_standby_configured(cfg) && self.server.lock().await.is_running() {
            position = self.detach_for_fencing().await;
        }
        datadir::set_fenced(cfg, Some(position))?;
        self.server.lock().await.stop(cfg, StopMode::Fast).await?;
        Ok(match position {
            Some(lsn) => format!("fenced: detached at {lsn}, server stopped"),
            None => "fenced: server stopped".into(),
        })
    }

    /// Stops a standby's WAL receiver and returns the last position it received, which is then
    /// final: a detached, stopped standby cannot receive more.
    async fn detach_for_fencing(&self) -> Option<crate::engine::Lsn> {
        let cfg = &self.cfg;
        let mut detached = self.applied_config()?;
        detached.upstream = None;
        self.apply_files(&detached).ok()?;
        run_checked(&cfg.dialect().reload(&cfg.layout()), TOOL_TIMEOUT).await.ok()?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let probe = self.conn.lock().await.probe(cfg, PROBE_TIMEOUT).await?;
            let streaming = probe.receiver.as_ref().is_some_and(|r| r.status == "streaming");
            if !streaming {
                let n = &probe.node;
                return [n.received_lsn, n.replayed_lsn, probe.receiver.and_then(|r| r.flushed_lsn)]
                    .into_iter()
                    .flatten()
                    .max();
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn restart(&self, config: &DesiredConfig) -> anyhow::Result<String> {
        let cfg = &self.cfg;
        self.server.lock().await.stop(cfg, StopMode::Fast).await?;
        self.apply_files(config)?;
        self.start_server(config.standby).await?;
        Ok("restarted".into())
    }

    /// Starts the server and waits until it answers SQL.
    async fn start_server(&self, standby: bool) -> anyhow::Result<()> {
        server::wait_lock_released(&self.cfg.data_dir(), server::LOCK_RELEASE_TIMEOUT).await?;
        self.server.lock().await.start(&self.cfg, standby)?;
        tracing::debug!("server started; waiting until it accepts connections");
        self.wait_accepting(None).await
    }

    /// Waits until the server answers SQL (and, when asked, is or is not in recovery).
    async fn wait_accepting(&self, in_recovery: Option<bool>) -> anyhow::Result<()> {
        self.wait_accepting_within(in_recovery, START_TIMEOUT, None).await
    }

    /// Why `source` can never bring this server to its recovery point, when that can be told.
    async fn source_lacks_recovery_point(&self, source: &Endpoint) -> Option<String> {
        let cfg = &self.cfg;
        let sql = cfg.dialect().timeline_history_sql()?;
        let (timeline, point) =
            crate::engine::controldata::min_recovery_point(&self.controldata_output().await?)?;
        let password = read_secret(&cfg.superuser_password_file).ok()?;
        match probe::remote_history(cfg, source, &password, sql, PROBE_TIMEOUT).await {
            Ok(history) => history.missing(timeline, point).map(|why| {
                format!(
                    "{source} cannot bring it to its recovery point {point} on timeline {timeline}: {why}"
                )
            }),
            Err(e) => {
                tracing::debug!(error = format!("{e:#}"), %source, "could not read the source's timeline history");
                None
            }
        }
    }

    /// Waits until the server answers SQL (and, when asked, is or is not in recovery).
    ///
    /// A standby rejoined from `rejoined_from` must replay up to the recovery point its copy
    /// recorded, and only its source's history can bring it there: should the source have
    /// lost that point meanwhile (after flapping links it was itself rewound onto a newer
    /// primary's history), the standby would wait for ever. That is checked every few seconds
    /// and ends the wait at once; `within` covers what cannot be checked.
    async fn wait_accepting_within(
        &self,
        in_recovery: Option<bool>,
        within: Duration,
        rejoined_from: Option<&Endpoint>,
    ) -> anyhow::Result<()> {
        let mut next_source_check = tokio::time::Instant::now() + SOURCE_HISTORY_CHECK;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            tracing::trace!("probing");
            if let Some(p) = self.conn.lock().await.probe(&self.cfg, PROBE_TIMEOUT).await
                && in_recovery.is_none_or(|want| p.node.in_recovery == want)
            {
                return Ok(());
            }
            if !self.server.lock().await.is_running() {
                bail!("the database server exited while starting; see {}", self.cfg.server_log().display());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the database server did not become ready within {}s", within.as_secs());
            }
            if let Some(source) = rejoined_from
                && tokio::time::Instant::now() >= next_source_check
            {
                if let Some(why) = self.source_lacks_recovery_point(source).await {
                    bail!("{why}");
                }
                next_source_check = tokio::time::Instant::now() + SOURCE_HISTORY_CHECK;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Logs when the WAL receiver starts or stops streaming (seen at a report).
    fn log_receiver_change(&self, receiver: Option<&ReceiverReport>) {
        let now = receiver.map(|r| r.status.clone());
        let mut last = self.receiver_state.lock().expect("receiver state lock");
        if *last == now {
            return;
        }
        let streaming = |s: &Option<String>| s.as_deref() == Some("streaming");
        match receiver {
            Some(r) if streaming(&now) => tracing::info!(
                upstream = format!(
                    "{}:{}",
                    r.upstream_host.as_deref().unwrap_or("?"),
                    r.upstream_port.map(|p| p.to_string()).unwrap_or_default()
                ),
                "streaming"
            ),
            _ if streaming(&last) => {
                tracing::warn!(receiver = now.as_deref().unwrap_or("none"), "stopped streaming")
            }
            _ => {}
        }
        *last = now;
    }

    /// Stops a server whose data directory lost an essential file (removed, a disk replaced):
    /// it cannot serve new connections, and left alone it notices only when it next checks its
    /// lock file, a minute later. Stopped, it is reported as what it is, an instance without
    /// data, and the controller fails over (a primary) or clones it again (a standby).
    async fn stop_if_data_lost(&self) {
        let cfg = &self.cfg;
        let mut server = self.server.lock().await;
        if !server.is_running() {
            return;
        }
        let Some(missing) = datadir::missing_essential(&cfg.data_dir()) else { return };
        tracing::error!(
            missing,
            data = %cfg.data_dir().display(),
            "the data directory lost an essential file; stopping the server, which can no longer serve"
        );
        if let Err(e) = server.stop(cfg, StopMode::Immediate).await {
            tracing::error!(error = format!("{e:#}"), "could not stop the server");
        }
    }

    /// Keeps a standby's server running: a standby that exits on its own is restarted, with a
    /// growing pause between attempts. A primary's server is never restarted here: whether it
    /// comes back as primary is the controller's decision.
    pub async fn supervise(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(500);
        loop {
            tokio::time::sleep(backoff.min(Duration::from_secs(1))).await;
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let busy = self.current_operation().is_some_and(|o| o.state == OperationState::Running);
            let cfg = &self.cfg;
            if !busy {
                self.stop_if_data_lost().await;
            }
            if busy || !is_initialized(cfg) || is_fenced(cfg) {
                continue;
            }
            if !is_standby_configured(cfg) {
                continue;
            }
            let mut server = self.server.lock().await;
            if server.is_running() {
                backoff = Duration::from_millis(500);
                continue;
            }
            tracing::info!(after = ?backoff, "starting standby server");
            tokio::time::sleep(backoff.saturating_sub(Duration::from_secs(1))).await;
            match server.start(cfg, true) {
                Ok(()) => server.clear_crash(),
                Err(e) => tracing::error!(error = format!("{e:#}"), "cannot start standby server"),
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// Probes the server once a second for `/readyz`: ready means serving, so a real query on
    /// a fresh connection (an old one keeps working after the files it needs are gone) on an
    /// intact data directory.
    pub async fn watch_readiness(self: Arc<Self>) {
        loop {
            let data = self.cfg.data_dir();
            let running = running_postmaster(&data).is_some();
            let accepting = running
                && datadir::missing_essential(&data).is_none()
                && probe::answers_fresh(&self.cfg, READINESS_PROBE_TIMEOUT).await;
            *self.readiness.lock().expect("readiness lock") = Some((accepting, std::time::Instant::now()));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Whether the server accepted connections at the last readiness probe (recent enough).
    pub fn ready(&self) -> bool {
        matches!(*self.readiness.lock().expect("readiness lock"), Some((true, at)) if at.elapsed() < READINESS_STALE)
    }

    /// Stops the server cleanly for shutdown.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        self.server.lock().await.stop(&self.cfg, StopMode::Fast).await
    }
}

/// What a peer asked to hold a primary needs to know about itself.
#[derive(Debug)]
pub struct HolderState<'a> {
    pub instance: &'a str,
    pub initialized: bool,
    pub standby: bool,
    /// Whom it streams from (a standby), if anyone.
    pub upstream: Option<&'a Endpoint>,
    /// The primary it holds right now, if any.
    pub holds: Option<&'a str>,
}

/// Why `holder` must not hold the asking primary; `None` when it may. It may when it cannot
/// replace the primary anyway (no data yet) or streams from it: then refusing its own
/// promotion for a lease costs nothing a failover would not have cost.
pub fn hold_refusal(holder: &HolderState<'_>, request: &FailsafeRequest) -> Option<String> {
    let me = holder.instance;
    if holder.initialized && !holder.standby {
        return Some(format!("{me} is a primary itself"));
    }
    if let Some(other) = holder.holds
        && other != request.primary
    {
        return Some(format!("{me} holds {other} already"));
    }
    if holder.initialized && holder.upstream != Some(&request.endpoint) {
        return Some(match holder.upstream {
            Some(up) => format!("{me} streams from {up}, not from {}", request.primary),
            None => format!("{me} is detached (a failover is under way)"),
        });
    }
    None
}

/// Where a manager keeps the time of its last contact with the controller, on the boot clock.
fn lease_file(cfg: &InstanceConfig) -> std::path::PathBuf {
    cfg.root.join("lease-contact")
}

/// Time since boot (counting suspend): one clock for every process on the machine.
fn boot_clock() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(Duration::ZERO, Duration::from)
}

/// Where a peer records the primary it holds and until when (boot clock, milliseconds).
fn hold_file(cfg: &InstanceConfig) -> std::path::PathBuf {
    cfg.root.join("failsafe-hold")
}

/// The hold a previous manager of this instance recorded, if it has not ended.
fn read_hold(cfg: &InstanceConfig) -> Option<(String, std::time::Instant)> {
    let text = std::fs::read_to_string(hold_file(cfg)).ok()?;
    let (until, primary) = text.trim().split_once(' ')?;
    let left = Duration::from_millis(until.parse().ok()?).checked_sub(boot_clock())?;
    Some((primary.to_string(), std::time::Instant::now() + left))
}

/// The last contact a previous manager of this instance wrote down, as an instant.
fn read_contact(cfg: &InstanceConfig) -> Option<std::time::Instant> {
    let millis: u64 = std::fs::read_to_string(lease_file(cfg)).ok()?.trim().parse().ok()?;
    let ago = boot_clock().checked_sub(Duration::from_millis(millis))?;
    std::time::Instant::now().checked_sub(ago)
}

/// Why `request` cannot apply to an instance whose data directory is (or is not)
/// `initialized` and set up as a standby (`standby`); `None` when it can.
pub fn refusal(request: &Request, initialized: bool, standby: bool) -> Option<&'static str> {
    match request {
        Request::Bootstrap { .. } if initialized => Some("the data directory is already initialised"),
        Request::Bootstrap { source: None, config } if config.standby => {
            Some("a new primary cannot be configured as a standby")
        }
        Request::Bootstrap { source: Some(_), config } if !config.standby => {
            Some("a clone must be configured as a standby")
        }
        Request::Start { .. }
        | Request::Configure { .. }
        | Request::Promote { .. }
        | Request::Rejoin { .. }
        | Request::Rebuild { .. }
        | Request::Restart { .. }
            if !initialized =>
        {
            Some("the data directory is not initialised yet")
        }
        Request::Start { config } | Request::Configure { config } | Request::Restart { config }
            if config.standby != standby =>
        {
            Some(if standby {
                "this instance is a standby: promote it to make it a primary"
            } else {
                "this instance was a primary: rejoin it to make it a standby"
            })
        }
        Request::Promote { config } if config.standby => {
            Some("a promoted instance cannot be configured as a standby")
        }
        Request::Rejoin { config, .. } | Request::Rebuild { config, .. } if !config.standby => {
            Some("a rejoining instance must be configured as a standby")
        }
        _ => None,
    }
}

/// A stable identity for a request: its content.
fn request_id_of(m: &Manager) -> String {
    m.current_operation().map(|o| o.request_id).unwrap_or_default()
}

fn request_id(request: &Request) -> String {
    use std::hash::{Hash, Hasher};
    let json = serde_json::to_string(request).unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    json.hash(&mut h);
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_holds_only_the_primary_it_streams_from_and_never_two() {
        let primary = Endpoint { host: "10.0.0.1".into(), port: 5432 };
        let other = Endpoint { host: "10.0.0.3".into(), port: 5432 };
        let ask = FailsafeRequest { primary: "db-0".into(), endpoint: primary.clone(), lease_ms: 5000 };
        let state = |initialized, standby, upstream, holds| HolderState {
            instance: "db-1",
            initialized,
            standby,
            upstream,
            holds,
        };
        assert_eq!(hold_refusal(&state(true, true, Some(&primary), None), &ask), None);
        assert_eq!(hold_refusal(&state(true, true, Some(&primary), Some("db-0")), &ask), None, "renewed");
        assert_eq!(hold_refusal(&state(false, false, None, None), &ask), None, "no data: cannot replace it");
        let refused = |s: HolderState<'_>| hold_refusal(&s, &ask).unwrap_or_default();
        assert!(refused(state(true, false, None, None)).contains("primary itself"));
        assert!(refused(state(true, true, None, None)).contains("detached"));
        assert!(refused(state(true, true, Some(&other), None)).contains("streams from 10.0.0.3:5432"));
        assert!(refused(state(true, true, Some(&primary), Some("db-2"))).contains("holds db-2 already"));
        assert!(refused(state(false, false, None, Some("db-2"))).contains("holds db-2 already"));
    }
}
