//! `opengauss-operator local up|down|status|switchover`.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use opengauss_crd::names::instance_ordinal;
use opengauss_crd::{OpenGaussCluster, OpenGaussClusterStatus, Phase, parse_cluster};

use super::binaries::find_bin_dir;
use super::procs::{self, Kubelet, choose_user};
use super::statedir::{Identity, StateDir, world_traversable};
use super::{DEFAULT_BASE_PORT, LOCAL_HOST, LocalPlatform, Placement, check_placements, ports};
use crate::controller::Controller;
use crate::credentials::{REPLICATION_USER, pgpass_lines};
use crate::fsutil::write_atomic;
use crate::instance::InstanceConfig;

/// Which cluster a command is about: by its file or by its state directory.
#[derive(Clone, Debug)]
pub enum Target {
    File(PathBuf),
    StateDir(PathBuf),
}

pub fn load_cluster_file(path: &Path) -> anyhow::Result<OpenGaussCluster> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_cluster(&text).with_context(|| format!("{} is not a valid cluster", path.display()))
}

fn default_state_dir(cluster: &str) -> PathBuf {
    PathBuf::from(".opengauss").join(cluster)
}

impl Target {
    pub fn state_dir(&self) -> anyhow::Result<StateDir> {
        let dir = match self {
            Target::StateDir(d) => d.clone(),
            Target::File(f) => {
                let c = load_cluster_file(f)?;
                default_state_dir(c.metadata.name.as_deref().unwrap_or_default())
            }
        };
        let dir = StateDir::new(dir);
        if !dir.exists() {
            bail!(
                "{} holds no cluster (no identity.json): was `local up` ever run there?",
                dir.root.display()
            );
        }
        Ok(dir)
    }
}

#[derive(Clone, Debug)]
pub struct UpArgs {
    pub file: PathBuf,
    pub state_dir: Option<PathBuf>,
    pub base_port: Option<u16>,
    pub bin_dir: Option<PathBuf>,
    pub run_as: Option<String>,
    /// Instances to run inside network namespaces (`--netns`); empty: all on 127.0.0.1.
    pub netns: Vec<Placement>,
}

/// The lock a running `local up` holds on its state directory.
fn try_lock(state: &StateDir) -> anyhow::Result<Option<Flock<File>>> {
    let file = File::options()
        .create(true)
        .append(true)
        .open(state.lock_file())
        .with_context(|| format!("cannot open {}", state.lock_file().display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(anyhow::anyhow!("cannot lock {}: {e}", state.lock_file().display())),
    }
}

fn controller_pid(state: &StateDir) -> Option<u32> {
    std::fs::read_to_string(state.controller_pid_file()).ok()?.trim().parse().ok()
}

/// The first port an unprivileged process may listen on here.
fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1024)
}

/// Refuses a base port no instance could listen on: the database servers never run as root,
/// so they cannot bind a privileged port, and port 0 would let the kernel pick a different one
/// at every start.
fn check_base_port(base_port: u16, first_unprivileged: u16) -> anyhow::Result<()> {
    if base_port == 0 {
        bail!("--base-port 0 is not usable: instances need fixed ports (the default is {DEFAULT_BASE_PORT})");
    }
    if base_port < first_unprivileged {
        bail!(
            "--base-port {base_port} is a privileged port (below {first_unprivileged}): the database servers \
             run as an unprivileged user and cannot listen on it; use {first_unprivileged} or above \
             (the default is {DEFAULT_BASE_PORT})"
        );
    }
    Ok(())
}

/// Fails with a clear message when a port some instance needs is taken by something else.
/// Instances in `placed` listen in network namespaces of their own, not here: not checked.
fn check_ports(
    cluster: &OpenGaussCluster,
    state: &StateDir,
    base_port: u16,
    placed: &std::collections::BTreeMap<u32, Placement>,
) -> anyhow::Result<()> {
    let name = cluster.metadata.name.as_deref().unwrap_or_default();
    let engine = cluster.spec.engine;
    let stride = u32::from(crate::engine::dialect(engine).port_stride());
    let last = u32::from(base_port) + stride * cluster.spec.instances;
    if last > u32::from(u16::MAX) {
        bail!("--base-port {base_port} leaves no room for {} instances", cluster.spec.instances);
    }
    for ordinal in (0..cluster.spec.instances).filter(|k| !placed.contains_key(k)) {
        let instance = opengauss_crd::names::instance_name(name, ordinal);
        let data = state.instance_dir(&instance).join("data");
        // Our own server, left running by an earlier controller, may hold its ports.
        if crate::instance::server_is_running(&data) {
            continue;
        }
        for port in ports(engine, base_port, ordinal) {
            if let Err(e) = TcpListener::bind((LOCAL_HOST, port)) {
                bail!(
                    "port {port} (for instance {instance}) is not available on {LOCAL_HOST}: {e}; \
                     stop what uses it or pass another --base-port"
                );
            }
        }
    }
    Ok(())
}

/// Runs the cluster in the foreground until SIGINT or SIGTERM.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    // From here on a stop signal means a clean stop, even while the cluster is still starting.
    let shutdown = crate::signals::shutdown_requested();
    let cluster = load_cluster_file(&args.file)?;
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let engine = cluster.spec.engine;
    let state = StateDir::new(args.state_dir.clone().unwrap_or_else(|| default_state_dir(&name)));
    let bin_dir = find_bin_dir(engine, args.bin_dir.as_deref())?;
    let run_as = choose_user(args.run_as.as_deref())?;
    // Every check that can refuse comes before anything is written.
    let placements = check_placements(&args.netns, nix::unistd::geteuid().is_root())?;
    if let Some(user) = &run_as {
        let root = std::fs::canonicalize(&state.root).or_else(|_| std::path::absolute(&state.root))?;
        if let Err(blocked) = world_traversable(&root) {
            bail!(
                "the instances run as {} and cannot reach {}: {} is not searchable by other users; \
                 use a --state-dir outside it",
                user.name,
                root.display(),
                blocked.display()
            );
        }
    }
    let previous = if state.exists() { Some(state.read_identity()?) } else { None };
    let base_port =
        args.base_port.or_else(|| previous.as_ref().map(|id| id.base_port)).unwrap_or(DEFAULT_BASE_PORT);
    check_base_port(base_port, unprivileged_port_start())?;
    check_ports(&cluster, &state, base_port, &placements)?;
    state.claim(&Identity { cluster: name.clone(), engine, base_port })?;
    let Some(_lock) = try_lock(&state)? else {
        bail!(
            "cluster {name} is already running from {} (pid {}); stop it with `{} local down --state-dir {}`",
            state.root.display(),
            controller_pid(&state).map(|p| p.to_string()).unwrap_or_else(|| "unknown".into()),
            self_command(),
            state.root.display()
        );
    };
    if let Some(previous) = previous.filter(|id| id.base_port != base_port) {
        let configs = recorded_instances(&state)?;
        if let Some((instance, _)) =
            configs.iter().find(|(_, c)| crate::instance::server_is_running(&c.data_dir()))
        {
            bail!(
                "{instance}'s database server still runs on the old ports; stop the cluster \
                 (`{} local down --state-dir {}`) before moving it to --base-port {base_port}",
                self_command(),
                state.root.display()
            );
        }
        // Ports are not part of the data: each instance is configured for its new ports when
        // it starts, and the standbys follow the primary at its new address.
        state.set_base_port(base_port)?;
        println!(
            "{} moving cluster {name} from base port {} to {base_port}; its data is kept",
            super::chrono_now(),
            previous.base_port
        );
    }
    write_atomic(&state.controller_pid_file(), format!("{}\n", std::process::id()).as_bytes(), 0o644)?;
    // Like a kubelet's pod sandbox: a killed manager's server is re-parented here, not to the
    // machine's init, and is reaped at once, so its PID leaves the data directory's lock file.
    crate::reaper::become_subreaper()?;
    tokio::spawn(crate::reaper::run());
    record_applied(&state, &cluster)?;
    let secrets = state.secrets()?;
    let su = crate::engine::dialect(engine).superuser();
    write_atomic(&state.pgpass(), pgpass_lines(su, REPLICATION_USER, &secrets).as_bytes(), 0o600)?;
    let root = std::fs::canonicalize(&state.root)?;
    let state = StateDir::new(root);
    std::fs::create_dir_all(state.instances_dir())?;
    std::fs::create_dir_all(state.requests_dir())?;
    let certificates = if cluster.spec.tls.enabled {
        Some(super::certificates::source(&state.tls_dir(), &name)?)
    } else {
        None
    };
    let platform = LocalPlatform::new(
        state.clone(),
        &cluster,
        bin_dir.clone(),
        base_port,
        run_as.clone(),
        super::ClusterKeys { secrets: secrets.clone(), certificates },
        placements.clone(),
    )?;
    // The status a previous controller left says nothing about this one: claim it at once.
    platform.heartbeat()?;
    if let Some(u) = platform.kubelet.run_as() {
        platform.kubelet.hand_over(&state.instances_dir())?;
        println!("{} running databases as OS user {} (PostgreSQL refuses root)", super::chrono_now(), u.name);
    }
    let database_ports: Vec<String> =
        (0..cluster.spec.instances).map(|k| ports(engine, base_port, k)[0].to_string()).collect();
    println!(
        "{} starting cluster {name} ({engine}, {} instance(s), database ports {}) from {}",
        super::chrono_now(),
        cluster.spec.instances,
        database_ports.join(", "),
        state.root.display()
    );
    for p in placements.values() {
        println!(
            "{} instance {} runs in network namespace {} at {} (subnet {})",
            super::chrono_now(),
            opengauss_crd::names::instance_name(&name, p.ordinal),
            p.netns,
            p.address,
            p.network()
        );
    }
    // Every instance's files first (a supplied certificate that fails its checks stops
    // `local up` here, before anything runs), then the managers.
    for instance in platform.configs().keys() {
        platform.prepare(instance)?;
    }
    for instance in platform.configs().keys() {
        platform.kubelet.start(instance).await?;
    }
    let authority = platform.authority_pem();
    let controller = Controller::new(
        platform,
        secrets.token.clone(),
        authority.as_deref(),
        state.read_status()?.unwrap_or_default(),
    )?;
    let metrics_server = serve_metrics(controller.metrics().clone(), &state).await?;
    let result = run_loop(&controller, &cluster, &state, shutdown).await;
    metrics_server.abort();
    let _ = std::fs::remove_file(state.metrics_port_file());
    println!("{} stopping cluster {name}", super::chrono_now());
    let stopped = stop_all(&controller.platform.kubelet, &controller.platform.configs(), &state).await;
    let status = state.read_status()?.unwrap_or_default();
    state.write_status(&stopped_status(status, "stopped by `local down` or a signal"))?;
    let _ = std::fs::remove_file(state.controller_pid_file());
    result.and(stopped)?;
    println!("{} cluster {name} stopped; data kept in {}", super::chrono_now(), state.root.display());
    Ok(())
}

/// Serves the controller's metrics on a free loopback port, recorded in the state directory.
async fn serve_metrics(
    metrics: std::sync::Arc<crate::metrics::ControllerMetrics>,
    state: &StateDir,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use axum::routing::get;
    let listener =
        tokio::net::TcpListener::bind((LOCAL_HOST, 0)).await.context("binding the metrics port")?;
    let port = listener.local_addr()?.port();
    write_atomic(&state.metrics_port_file(), format!("{port}\n").as_bytes(), 0o644)?;
    println!("{} controller metrics on http://{LOCAL_HOST}:{port}/metrics", super::chrono_now());
    let app =
        axum::Router::new().route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    ([(axum::http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], metrics.render())
                }
            }),
        );
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint failed");
        }
    }))
}

/// The applied cluster as last recorded, with the generation `local apply` counts.
pub(super) fn read_applied(state: &StateDir) -> anyhow::Result<OpenGaussCluster> {
    load_cluster_file(&state.cluster_file())
}

/// Records `cluster` as the applied spec, counting a new generation when the spec changed.
fn record_applied(state: &StateDir, cluster: &OpenGaussCluster) -> anyhow::Result<i64> {
    let previous = read_applied(state).ok();
    let generation = match &previous {
        Some(p) if p.spec == cluster.spec => p.metadata.generation.unwrap_or(1),
        Some(p) => p.metadata.generation.unwrap_or(1) + 1,
        None => 1,
    };
    let mut applied = cluster.clone();
    applied.metadata.generation = Some(generation);
    applied.status = None;
    let yaml = serde_yaml_ng::to_string(&applied).context("serialising the cluster")?;
    write_atomic(&state.cluster_file(), yaml.as_bytes(), 0o644)?;
    Ok(generation)
}

/// Hands a running (or stopped) cluster its new spec: scaling, parameters, fencing.
pub async fn apply(file: &Path, state_dir: Option<PathBuf>, wait: Option<Duration>) -> anyhow::Result<()> {
    let cluster = load_cluster_file(file)?;
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let state = StateDir::new(state_dir.unwrap_or_else(|| default_state_dir(&name)));
    let identity = state.read_identity()?;
    if identity.cluster != name {
        bail!(
            "state directory {} belongs to cluster {:?}, not {name:?}",
            state.root.display(),
            identity.cluster
        );
    }
    if identity.engine != cluster.spec.engine {
        bail!(
            "the engine cannot change (the cluster runs {}, the file asks for {})",
            identity.engine,
            cluster.spec.engine
        );
    }
    let generation = record_applied(&state, &cluster)?;
    let running = try_lock(&state)?.is_none();
    println!(
        "applied generation {generation} of cluster {name}{}",
        if running {
            "; the running controller takes it up now"
        } else {
            "; it takes effect at the next `local up`"
        }
    );
    let Some(timeout) = wait.filter(|_| running) else { return Ok(()) };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        // Healthy is not enough: the status must show this spec carried out.
        let waiting_for = match state.read_status()? {
            Some(s) => opengauss_crd::convergence::pending(&name, &cluster.spec, generation, &s),
            None => Some("no status yet".into()),
        };
        let Some(waiting_for) = waiting_for else {
            println!(
                "cluster {name} is healthy at generation {generation}: every instance of the spec streams"
            );
            return Ok(());
        };
        if std::time::Instant::now() > deadline {
            bail!(
                "cluster {name} did not converge to generation {generation} within {}s: {waiting_for}",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How often instances' certificates are looked at (renewal is due long before expiry).
const CERTIFICATE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

async fn run_loop(
    controller: &Controller<LocalPlatform>,
    started_with: &OpenGaussCluster,
    state: &StateDir,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let platform = &controller.platform;
    let name = started_with.metadata.name.clone().unwrap_or_default();
    let mut cluster = read_applied(state).unwrap_or_else(|_| started_with.clone());
    let mut announced = false;
    let mut certificates_checked: Option<std::time::Instant> = None;
    loop {
        if certificates_checked.is_none_or(|t| t.elapsed() >= CERTIFICATE_CHECK_INTERVAL) {
            certificates_checked = Some(std::time::Instant::now());
            let lifetime = Duration::from_secs(cluster.spec.tls.certificate_lifetime_seconds);
            for (instance, outcome) in platform.renew_certificates(lifetime) {
                let line = match outcome {
                    Ok(why) => format!("gave {instance} a new server certificate: {why}"),
                    Err(why) => format!("{instance} keeps its server certificate: {why}"),
                };
                platform.say(&format!("certificate {instance}"), line);
            }
        }
        // `local apply` writes the applied cluster; take it up on the next pass.
        match read_applied(state) {
            Ok(applied) if applied != cluster => {
                platform.say(
                    "spec",
                    format!("spec generation {} applied", applied.metadata.generation.unwrap_or(1)),
                );
                platform.follow_spec(&applied);
                cluster = applied;
            }
            Ok(_) => {}
            Err(e) => platform.say("spec", format!("ignoring the applied cluster file: {e:#}")),
        }
        let wait = match controller.pass(&cluster).await {
            Ok(outcome) => {
                let status = &outcome.plan.status;
                if let Some(phase) = status.phase {
                    platform.say(
                        "phase",
                        format!("phase {phase}: {}", status.phase_reason.clone().unwrap_or_default()),
                    );
                }
                if status.phase == Some(Phase::Healthy) && !announced {
                    announced = true;
                    print_connect_help(platform, &name, status, state);
                }
                outcome.next_pass_in
            }
            Err(e) => {
                platform.say("error", format!("reconcile failed: {e:#}"));
                crate::controller::pacing::after_error(&cluster.spec)
            }
        };
        // Until the next pass, the heartbeat goes on every second.
        let next_pass = tokio::time::Instant::now() + wait;
        loop {
            if let Err(e) = platform.heartbeat() {
                platform.say("error", format!("cannot write the heartbeat: {e:#}"));
            }
            let now = tokio::time::Instant::now();
            if now >= next_pass {
                break;
            }
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = tokio::time::sleep_until(next_pass.min(now + Duration::from_secs(1))) => {}
            }
        }
    }
}

fn print_connect_help(
    platform: &LocalPlatform,
    name: &str,
    status: &OpenGaussClusterStatus,
    state: &StateDir,
) {
    let primary = status.current_primary.clone().unwrap_or_default();
    let addr = status.instance(&primary).map(|i| i.address.clone()).unwrap_or_default();
    let (host, port) = addr.rsplit_once(':').unwrap_or((LOCAL_HOST, "15432"));
    let standbys: Vec<String> = status
        .instances
        .iter()
        .filter(|i| i.name != primary)
        .map(|i| format!("{} on {}", i.name, i.address))
        .collect();
    let connect = match platform.configs().get(&primary) {
        // openGauss's initial user logs in over the instance's socket only, as its OS user.
        Some(cfg) if cfg.engine == opengauss_crd::Engine::OpenGauss => {
            let shell = cfg.bin_dir.join(cfg.dialect().sql_shell());
            let run_as =
                platform.kubelet.run_as().map(|u| format!("sudo -u {} ", u.name)).unwrap_or_default();
            format!(
                "{run_as}env LD_LIBRARY_PATH={lib} {shell} -h {socket} -p {port} -d postgres",
                lib = cfg.bin_dir.parent().map(|p| p.join("lib")).unwrap_or_default().display(),
                shell = shell.display(),
                socket = cfg.socket_dir.display(),
            )
        }
        _ => {
            // With TLS, the client checks the server against the cluster's authority.
            let tls = platform
                .authority_pem()
                .map(|_| {
                    format!(
                        " sslmode=verify-full sslrootcert={}",
                        crate::engine::conninfo_value(
                            &super::certificates::authority_files(&state.tls_dir()).0.display().to_string()
                        )
                    )
                })
                .unwrap_or_default();
            format!(
                "PGPASSFILE={pgpass} psql \"host={host} port={port} user=postgres dbname=postgres{tls}\"",
                pgpass = state.pgpass().display()
            )
        }
    };
    println!(
        "\nCluster {name} is ready: primary {primary} on {addr}; standbys {}.\n\
         Connect:   {connect}\n\
         Status:    {me} local status --state-dir {dir}\n\
         Stop:      Ctrl-C here, or {me} local down --state-dir {dir}\n",
        standbys.join(", "),
        me = self_command(),
        dir = state.root.display(),
    );
}

/// This program as the user can type it where they are: its bare name when PATH finds this very
/// file, else its path (relative when it lies under the current directory, as
/// `target/release/opengauss-operator` does after `make demo`).
pub fn self_command() -> String {
    let Ok(me) = std::env::current_exe() else { return "opengauss-operator".into() };
    let name = me.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            let candidate = dir.join(&name);
            candidate.canonicalize().is_ok_and(|c| me.canonicalize().is_ok_and(|m| m == c))
        })
    });
    if on_path {
        return name;
    }
    let relative =
        std::env::current_dir().ok().and_then(|cwd| me.strip_prefix(cwd).ok().map(|p| p.to_path_buf()));
    match relative {
        Some(r) => crate::engine::shell_quote(&r.display().to_string()),
        None => crate::engine::shell_quote(&me.display().to_string()),
    }
}

/// Stops every instance: the primary first (a fast shutdown sends its last WAL to connected
/// standbys), then the standbys.
async fn stop_all(
    kubelet: &Kubelet,
    configs: &std::collections::BTreeMap<String, InstanceConfig>,
    state: &StateDir,
) -> anyhow::Result<()> {
    let primary = state.read_status().ok().flatten().and_then(|s| s.current_primary);
    let timeout = Duration::from_secs(90);
    if let Some(p) = &primary
        && configs.contains_key(p)
    {
        kubelet.stop(p, timeout).await?;
    }
    let others = configs.keys().filter(|n| Some(*n) != primary.as_ref()).map(|n| kubelet.stop(n, timeout));
    for r in futures::future::join_all(others).await {
        r?;
    }
    Ok(())
}

/// The instances recorded in a state directory, from their manager configs.
fn recorded_instances(
    state: &StateDir,
) -> anyhow::Result<std::collections::BTreeMap<String, InstanceConfig>> {
    let mut configs = std::collections::BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(state.instances_dir()) else {
        return Ok(configs);
    };
    for e in entries.flatten() {
        let path = procs::config_file(&e.path());
        if path.exists() {
            let cfg = InstanceConfig::load(&path)?;
            configs.insert(cfg.instance.clone(), cfg);
        }
    }
    Ok(configs)
}

/// Stops the cluster: asks a running `local up` to stop, or stops instances it left behind.
pub async fn down(target: Target, purge: bool) -> anyhow::Result<()> {
    let state = target.state_dir()?;
    let identity = state.read_identity()?;
    match try_lock(&state)? {
        None => {
            let pid = controller_pid(&state)
                .context("the cluster's controller runs but its pid file is missing")?;
            println!("asking the controller of {} (pid {pid}) to stop the cluster", identity.cluster);
            kill(Pid::from_raw(i32::try_from(pid)?), Signal::SIGTERM).context("signalling the controller")?;
            let deadline = std::time::Instant::now() + Duration::from_secs(180);
            loop {
                if let Some(lock) = try_lock(&state)? {
                    drop(lock);
                    break;
                }
                if std::time::Instant::now() > deadline {
                    bail!("the controller (pid {pid}) did not stop within 180s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Some(_lock) => {
            let configs = recorded_instances(&state)?;
            let dirs = configs.iter().map(|(n, c)| (n.clone(), c.root.clone())).collect();
            let kubelet = Kubelet::new(std::env::current_exe()?, None, dirs);
            stop_all(&kubelet, &configs, &state).await?;
            if let Some(status) = state.read_status()? {
                state.write_status(&stopped_status(status, "stopped by `local down`"))?;
            }
        }
    }
    // A server stopping takes a moment to exit after its manager; one still running after that
    // has no manager left to stop it.
    let configs = recorded_instances(&state)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Some((name, pid)) =
        configs.iter().find_map(|(n, c)| crate::instance::server_pid(&c.data_dir()).map(|pid| (n, pid)))
    {
        if std::time::Instant::now() > deadline {
            bail!(
                "{name}'s database server (pid {pid}) is still running without its instance manager; \
                 `{} local up` takes it back, or stop it with `kill -TERM {pid}`{}",
                self_command(),
                if purge { "; nothing was purged" } else { "" }
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if purge {
        std::fs::remove_dir_all(&state.root)
            .with_context(|| format!("cannot remove {}", state.root.display()))?;
        println!(
            "cluster {} stopped and its state directory {} removed",
            identity.cluster,
            state.root.display()
        );
    } else {
        println!("cluster {} stopped; data kept in {}", identity.cluster, state.root.display());
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

/// What `local status` prints, and whether a controller watches the cluster (a status check
/// fails when none does: nothing would fail over).
/// `status` of a cluster whose instances all stopped: nothing is ready, nothing streams, no
/// controller watches.
fn stopped_status(mut status: OpenGaussClusterStatus, reason: &str) -> OpenGaussClusterStatus {
    status.phase = Some(Phase::Stopped);
    status.phase_reason = Some(reason.into());
    status.ready_instances = 0;
    status.controller = None;
    for i in &mut status.instances {
        i.ready = false;
        i.state = "stopped".into();
        i.replication_state = None;
        i.sync_state = None;
        i.lag_bytes = None;
        i.not_streaming_since = None;
    }
    status
}

#[derive(Debug)]
pub struct StatusReport {
    pub text: String,
    pub watched: bool,
}

pub fn status(target: Target, output: Output) -> anyhow::Result<StatusReport> {
    let state = target.state_dir()?;
    let identity = state.read_identity()?;
    let mut status = state.read_status()?.unwrap_or_default();
    let running = try_lock(&state)?.is_none();
    let unwatched = unwatched_reason(&status, running, k8s_openapi::jiff::Timestamp::now());
    if let Some(reason) = &unwatched {
        // What the file says was true when a controller last looked; say so instead of a phase
        // nobody maintains.
        status.phase = None;
        status.phase_reason = Some(reason.clone());
    }
    let text = match output {
        Output::Json => serde_json::to_string_pretty(&status)? + "\n",
        Output::Table => crate::table::render(&identity.cluster, &status),
    };
    Ok(StatusReport { text, watched: unwatched.is_none() })
}

/// Why no controller watches a cluster whose status is `status`, if none does: `running` says
/// whether a `local up` holds the state directory's lock, the heartbeat whether it still works.
/// A cluster stopped cleanly is not unwatched, only stopped.
pub fn unwatched_reason(
    status: &OpenGaussClusterStatus,
    running: bool,
    now: k8s_openapi::jiff::Timestamp,
) -> Option<String> {
    if status.phase == Some(Phase::Stopped) && !running {
        return None;
    }
    if !running {
        return Some("controller not running: no failover until `local up`".into());
    }
    let heartbeat = status.controller.as_ref().map(|c| c.heartbeat.0);
    let age = heartbeat.map(|h| now.duration_since(h).as_secs());
    match age {
        Some(age) if age >= opengauss_crd::CONTROLLER_HEARTBEAT_STALE_SECONDS => Some(format!(
            "controller not responding for {age}s (pid {}): no failover while it is stuck",
            status.controller.as_ref().map(|c| c.pid).unwrap_or_default()
        )),
        _ => None,
    }
}

/// Asks the running controller to switch over to `instance`, then follows it to completion.
pub async fn switchover(target: Target, instance: &str, timeout: Duration) -> anyhow::Result<()> {
    let state = target.state_dir()?;
    let identity = state.read_identity()?;
    if instance_ordinal(&identity.cluster, instance).is_none() {
        bail!("{instance} is not an instance of cluster {}", identity.cluster);
    }
    if let Some(lock) = try_lock(&state)? {
        drop(lock);
        bail!("cluster {} is not running: start it with `local up` first", identity.cluster);
    }
    let _ = std::fs::remove_file(state.switchover_result());
    write_atomic(&state.switchover_request(), format!("{instance}\n").as_bytes(), 0o644)?;
    println!("switchover to {instance} requested");
    let deadline = std::time::Instant::now() + timeout;
    let mut accepted = false;
    loop {
        if std::time::Instant::now() > deadline {
            bail!("the switchover to {instance} did not complete within {}s", timeout.as_secs());
        }
        if !accepted && let Ok(text) = std::fs::read_to_string(state.switchover_result()) {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let message = v["message"].as_str().unwrap_or_default().to_string();
            if v["accepted"].as_bool() != Some(true) {
                bail!("switchover refused: {message}");
            }
            println!("accepted: {message}");
            accepted = true;
        }
        if accepted
            && let Some(s) = state.read_status()?
            && s.transition.is_none()
            && s.current_primary.as_deref() == Some(instance)
        {
            println!("{instance} is the primary");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::{SignedDuration, Timestamp};
    use opengauss_crd::{ControllerPresence, InstanceStatus, OpenGaussClusterStatus, Phase};

    use super::{stopped_status, unwatched_reason};

    fn healthy(heartbeat: Timestamp) -> OpenGaussClusterStatus {
        OpenGaussClusterStatus {
            phase: Some(Phase::Healthy),
            controller: Some(ControllerPresence { pid: 42, heartbeat: Time(heartbeat) }),
            instances: vec![InstanceStatus {
                name: "demo-1".into(),
                ready: true,
                replication_state: Some("streaming".into()),
                sync_state: Some("quorum".into()),
                lag_bytes: Some(0),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_status_nobody_maintains_says_so() {
        let now = Timestamp::now();
        // Running and writing: watched.
        assert_eq!(unwatched_reason(&healthy(now), true, now), None);
        let recent = now - SignedDuration::from_secs(2);
        assert_eq!(unwatched_reason(&healthy(recent), true, now), None);
        // No `local up` holds the state directory (killed): whatever the file says.
        let dead = unwatched_reason(&healthy(now), false, now).expect("unwatched");
        assert!(dead.contains("controller not running") && dead.contains("local up"), "{dead}");
        // Holding the lock but silent (stopped, hung): stuck.
        let stale = now - SignedDuration::from_secs(7);
        let stuck = unwatched_reason(&healthy(stale), true, now).expect("stuck");
        assert!(stuck.contains("not responding for 7s") && stuck.contains("pid 42"), "{stuck}");
        // Stopped cleanly: stopped, not unwatched.
        let stopped = stopped_status(healthy(stale), "stopped by `local down`");
        assert_eq!(unwatched_reason(&stopped, false, now), None);
        assert!(stopped.controller.is_none());
        let i = &stopped.instances[0];
        assert_eq!((i.ready, i.state.as_str()), (false, "stopped"));
        assert_eq!((&i.replication_state, &i.sync_state, i.lag_bytes), (&None, &None, None));
    }
}
