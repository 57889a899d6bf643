//! Bringing the node up in order, each component waited for by a real readiness signal, and
//! down in reverse: pods removed through the container runtime, every process stopped by its
//! PID, every mount under the node's directories unmounted, the network changes undone, then
//! `.k8s/` removed (only when nothing is mounted under it any more).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use super::components::{self, Binaries};
use super::images::{self, Images};
use super::layout::{
    API_PORT, COREDNS_READY_PORT, ETCD_CLIENT_PORT, ETCD_PEER_PORT, KUBE_PROXY_HEALTH_PORT, KUBELET_PORT,
    NODE_IP, NODE_NAME,
};
use super::procs::{self, Started, run, wait_for, wait_ready};
use super::{Layout, Progress, config, network, pki, probe};

/// The namespace and name of the operator as `deploy/` ships it.
pub const OPERATOR_NAMESPACE: &str = "opengauss-operator-system";
pub const OPERATOR_DEPLOYMENT: &str = "opengauss-operator";
pub const OPERATOR_LEASE: &str = "opengauss-operator-leader";

/// The order components start in; `down` stops them in reverse.
pub const COMPONENTS: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "containerd",
    "kubelet",
    "kube-proxy",
    "coredns",
    "local-path-provisioner",
];

/// kubectl with the node's administrator kubeconfig.
#[derive(Debug, Clone)]
pub struct Kubectl {
    pub program: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Kubectl {
    pub fn new(bins: &Binaries, layout: &Layout) -> Self {
        Self { program: bins.path("kubectl"), kubeconfig: layout.kubeconfig() }
    }

    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let kubeconfig = self.kubeconfig.to_string_lossy().into_owned();
        let mut all = vec!["--kubeconfig", kubeconfig.as_str()];
        all.extend_from_slice(args);
        run(&self.program, &all)
    }

    /// For readiness probes: the output, or the error as text.
    pub fn probe(&self, args: &[&str]) -> Result<String, String> {
        self.run(args).map_err(|e| format!("{e:#}"))
    }
}

fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the one-node cluster runs containerd, the kubelet and packet filter rules: run it as root");
    }
    Ok(())
}

/// Checks what the node needs from this machine before touching anything.
fn preflight() -> anyhow::Result<()> {
    require_root()?;
    for program in
        ["containerd", "containerd-shim-runc-v2", "ctr", "runc", "iptables", "ip", "setsid", "mount"]
    {
        if which(program).is_none() {
            bail!(
                "{program} is missing: `make tools-k8s` installs containerd, runc, iptables and the CNI plugins"
            );
        }
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        if !Path::new("/usr/lib/cni").join(plugin).exists() {
            bail!(
                "the CNI plugin /usr/lib/cni/{plugin} is missing: install Debian's containernetworking-plugins"
            );
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for controller in ["cpu", "cpuacct", "cpuset", "memory", "pids"] {
        let mounted = mounts.lines().any(|l| {
            l.contains(" - cgroup ")
                && l.rsplit(' ').next().is_some_and(|opts| opts.split(',').any(|o| o == controller))
        });
        let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        if !mounted && !unified {
            bail!("the {controller} cgroup controller is not mounted; the kubelet needs it");
        }
    }
    for (ip, port) in [
        (Ipv4Addr::LOCALHOST, ETCD_CLIENT_PORT),
        (Ipv4Addr::LOCALHOST, ETCD_PEER_PORT),
        (Ipv4Addr::LOCALHOST, 10248),
        (Ipv4Addr::LOCALHOST, 10249),
        (Ipv4Addr::LOCALHOST, 10257),
        (Ipv4Addr::LOCALHOST, 10259),
        (Ipv4Addr::LOCALHOST, KUBE_PROXY_HEALTH_PORT),
        (Ipv4Addr::LOCALHOST, COREDNS_READY_PORT),
    ] {
        if !procs::port_free(ip, port) {
            bail!("port {ip}:{port}, which the node needs, is in use by another program");
        }
    }
    Ok(())
}

/// Ports on the node's address, checked once the bridge carries it.
fn node_ports_free() -> anyhow::Result<()> {
    for port in [API_PORT, KUBELET_PORT, 53] {
        if !procs::port_free(NODE_IP, port) {
            bail!("port {NODE_IP}:{port}, which the node needs, is in use by another program");
        }
    }
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(program)).find(|p| p.is_file())
}

/// Whether any component of a previous `up` is still running.
pub fn anything_running(layout: &Layout) -> bool {
    procs::recorded(layout).iter().any(|c| procs::running_pid(layout, c).is_some())
}

/// Brings the node up and deploys the operator; returns once everything is ready.
pub fn up(layout: &Layout, operator_binary: &Path, progress: &Progress) -> anyhow::Result<()> {
    require_root()?;
    if layout.root.exists() {
        progress.say("a previous node's state is here: taking it down first");
        down(layout, progress)?;
    }
    preflight()?;
    std::fs::create_dir_all(&layout.root)?;
    std::fs::create_dir_all(&layout.run)?;
    let bins = components::build(layout, progress)?;
    let (images, archives) = progress
        .step("images (pause, busybox, postgres, operator)", || images::build(layout, operator_binary))?;
    let pki = progress.step("certificates", || pki::make(layout))?;
    progress.step("network (bridge, routes, packet filter)", || network::setup(layout))?;
    node_ports_free()?;
    config::write_all(layout, &pki, &images)?;
    let kubectl = Kubectl::new(&bins, layout);
    let second = Duration::from_secs(1);
    let tick = Duration::from_millis(250);

    let mut etcd = start(layout, &bins, "etcd", &bins.path("etcd"), config::etcd_args(layout))?;
    progress.step("etcd", || {
        let health = SocketAddr::from((Ipv4Addr::LOCALHOST, ETCD_CLIENT_PORT));
        wait_ready(layout, &mut etcd, "etcd /health", 30 * second, tick, || {
            probe::http_get(health, "/health").and_then(
                |b| {
                    if b.contains("\"true\"") { Ok(()) } else { Err(b) }
                },
            )
        })
    })?;
    let mut api =
        start(layout, &bins, "kube-apiserver", &bins.path("kube-apiserver"), config::apiserver_args(&pki))?;
    progress.step("kube-apiserver", || {
        wait_ready(layout, &mut api, "the API server's /readyz", 90 * second, tick, || {
            kubectl
                .probe(&["get", "--raw", "/readyz"])
                .and_then(|b| if b.trim() == "ok" { Ok(()) } else { Err(b) })
        })
    })?;
    let mut cm = start(
        layout,
        &bins,
        "kube-controller-manager",
        &bins.path("kube-controller-manager"),
        config::controller_manager_args(&pki),
    )?;
    let mut scheduler = start(
        layout,
        &bins,
        "kube-scheduler",
        &bins.path("kube-scheduler"),
        config::scheduler_args(layout, &pki),
    )?;
    progress.step("kube-controller-manager and kube-scheduler", || {
        wait_ready(
            layout,
            &mut cm,
            "the `default` ServiceAccount (made by the controller manager)",
            60 * second,
            tick,
            || kubectl.probe(&["get", "serviceaccount", "default", "-n", "default", "-o", "name"]).map(drop),
        )?;
        scheduler.check_running(layout)
    })?;

    let containerd_config = layout.config().join("containerd.toml");
    let mut containerd = start(
        layout,
        &bins,
        "containerd",
        &which("containerd").context("containerd")?,
        vec!["--config".into(), containerd_config.to_string_lossy().into_owned()],
    )?;
    let socket = layout.containerd_socket().to_string_lossy().into_owned();
    progress.step("containerd", || {
        wait_ready(layout, &mut containerd, "containerd to answer", 30 * second, tick, || {
            run("ctr", &["--address", &socket, "version"]).map(drop).map_err(|e| format!("{e:#}"))
        })
    })?;
    progress.step("importing the images into containerd", || images::import(layout, &archives))?;
    network::expect_kubelet_chains(layout)?;
    let mut kubelet =
        start(layout, &bins, "kubelet", &bins.path("kubelet"), config::kubelet_args(layout, &pki))?;
    progress.step("kubelet (node Ready)", || {
        wait_ready(layout, &mut kubelet, &format!("node {NODE_NAME} to be Ready"), 120 * second, tick, || {
            let jsonpath = "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}";
            kubectl
                .probe(&["get", "node", NODE_NAME, "-o", jsonpath])
                .and_then(|s| if s.trim() == "True" { Ok(()) } else { Err(format!("Ready={s}")) })
        })
    })?;
    let mut proxy =
        start(layout, &bins, "kube-proxy", &bins.path("kube-proxy"), config::kube_proxy_args(layout))?;
    progress.step("kube-proxy", || {
        let health = SocketAddr::from((Ipv4Addr::LOCALHOST, KUBE_PROXY_HEALTH_PORT));
        wait_ready(layout, &mut proxy, "kube-proxy /healthz", 60 * second, tick, || {
            probe::http_get(health, "/healthz").map(drop)
        })
    })?;
    let mut dns = start(layout, &bins, "coredns", &bins.path("coredns"), config::coredns_args(layout))?;
    progress.step("CoreDNS", || {
        let ready = SocketAddr::from((Ipv4Addr::LOCALHOST, COREDNS_READY_PORT));
        wait_ready(layout, &mut dns, "CoreDNS /ready", 60 * second, tick, || {
            probe::http_get(ready, "/ready").map(drop)
        })?;
        let name = "kubernetes.default.svc.cluster.local";
        wait_ready(layout, &mut dns, &format!("CoreDNS to answer {name}"), 30 * second, tick, || {
            probe::dns_a(NODE_IP, name).and_then(|a| {
                if a.contains(&super::layout::API_SERVICE_IP) {
                    Ok(())
                } else {
                    Err(format!("answered {a:?}"))
                }
            })
        })
    })?;
    let storage = layout.config().join("storage.json").to_string_lossy().into_owned();
    kubectl.run(&["apply", "-f", &storage]).context("applying the StorageClass and provisioner objects")?;
    let mut provisioner = start(
        layout,
        &bins,
        "local-path-provisioner",
        &bins.path("local-path-provisioner"),
        config::provisioner_args(layout, &pki, &images),
    )?;
    provisioner.check_running(layout)?;

    progress.step("the operator (kubectl apply -k deploy/, two replicas, leader elected)", || {
        deploy_operator(layout, &kubectl, &images)
    })?;
    provisioner.check_running(layout)?;
    progress.say(format!(
        "ready: export KUBECONFIG={} (kubectl: {})",
        layout.kubeconfig().display(),
        bins.path("kubectl").display()
    ));
    Ok(())
}

fn start(
    layout: &Layout,
    bins: &Binaries,
    component: &str,
    program: &Path,
    args: Vec<String>,
) -> anyhow::Result<Started> {
    let path = format!(
        "{}:{}",
        bins.kubernetes_dir().display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
    );
    procs::start(layout, component, program, &args, &[("PATH", path)])
}

/// Applies `deploy/` through the overlay and waits for the rollout and a leader.
pub fn deploy_operator(layout: &Layout, kubectl: &Kubectl, images: &Images) -> anyhow::Result<()> {
    let overlay = layout.deploy_overlay().to_string_lossy().into_owned();
    kubectl.run(&["apply", "-k", &overlay]).context("kubectl apply -k of deploy/")?;
    let deployment = format!("deployment/{OPERATOR_DEPLOYMENT}");
    let rollout =
        kubectl.run(&["-n", OPERATOR_NAMESPACE, "rollout", "status", &deployment, "--timeout=180s"]);
    if let Err(e) = rollout {
        let pods = kubectl.run(&["-n", OPERATOR_NAMESPACE, "get", "pods", "-o", "wide"]).unwrap_or_default();
        let events = kubectl
            .run(&["-n", OPERATOR_NAMESPACE, "get", "events", "--sort-by=.lastTimestamp"])
            .unwrap_or_default();
        return Err(
            e.context(format!("the operator ({}) did not roll out\n{pods}\n{events}", images.operator))
        );
    }
    wait_for("a leader in the operator's Lease", Duration::from_secs(60), Duration::from_millis(500), || {
        kubectl
            .probe(&[
                "-n",
                OPERATOR_NAMESPACE,
                "get",
                "lease",
                OPERATOR_LEASE,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ])
            .and_then(|h| if h.trim().is_empty() { Err("no holder".into()) } else { Ok(()) })
    })
}

/// Mount points at or under any of `roots`, deepest first.
fn mounts_under(roots: &[&Path]) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| roots.iter().any(|r| p.starts_with(r)))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Takes the node down; every step is attempted even when an earlier one failed.
pub fn down(layout: &Layout, progress: &Progress) -> anyhow::Result<()> {
    require_root()?;
    let mut errors: Vec<anyhow::Error> = Vec::new();
    let bins = components::cached(layout);
    let grace = Duration::from_secs(15);
    for component in ["local-path-provisioner", "coredns", "kube-proxy", "kubelet"] {
        if let Err(e) = procs::stop(layout, component, grace) {
            errors.push(e);
        }
    }
    if let Some(bins) = &bins {
        if procs::running_pid(layout, "containerd").is_some() {
            let endpoint = format!("unix://{}", layout.containerd_socket().display());
            // Stops and removes every pod sandbox (the CNI plugin releases its network).
            if let Err(e) =
                run(bins.path("crictl"), &["--runtime-endpoint", &endpoint, "rmp", "--all", "--force"])
            {
                errors.push(e.context("removing the pods"));
            }
        }
        if layout.config().join("kube-proxy.json").exists() {
            // kube-proxy removes the packet filter rules it made.
            if let Err(e) = run(bins.path("kube-proxy"), &["--cleanup"]) {
                errors.push(e.context("kube-proxy --cleanup"));
            }
        }
    }
    for component in ["containerd", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"] {
        if let Err(e) = procs::stop(layout, component, grace) {
            errors.push(e);
        }
    }
    for leftover in procs::recorded(layout) {
        if let Err(e) = procs::stop(layout, &leftover, grace) {
            errors.push(e);
        }
    }
    kill_orphaned_shims(layout, &mut errors);
    let roots = [layout.root.as_path(), layout.run.as_path()];
    for mount in mounts_under(&roots) {
        let target = mount.to_string_lossy().into_owned();
        if run("umount", &[&target]).is_err()
            && let Err(e) = run("umount", &["--lazy", &target])
        {
            errors.push(e.context(format!("unmounting {target}")));
        }
    }
    if let Err(e) = network::teardown(layout) {
        errors.push(e);
    }
    remove_kubelet_cgroups(&mut errors);
    let left = mounts_under(&roots);
    if left.is_empty() {
        for dir in roots {
            if dir.exists()
                && let Err(e) = std::fs::remove_dir_all(dir)
            {
                errors.push(anyhow::Error::from(e).context(format!("removing {}", dir.display())));
            }
        }
    } else {
        errors.push(anyhow::anyhow!("still mounted, so {} is kept: {left:?}", layout.root.display()));
    }
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => {
            progress.say("the node is down; the build cache stays");
            Ok(())
        }
    }
}

/// containerd's shims outlive containerd; once the pods are removed they exit on their own,
/// but the shim and processes of a container that could not be removed are stopped by the
/// PIDs containerd recorded, after checking each still belongs to that container.
fn kill_orphaned_shims(layout: &Layout, errors: &mut Vec<anyhow::Error>) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let tasks = layout.containerd_state().join("io.containerd.runtime.v2.task");
    let Ok(namespaces) = std::fs::read_dir(&tasks) else { return };
    let pid_in =
        |path: PathBuf| std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse::<i32>().ok());
    for ns in namespaces.flatten() {
        let Ok(containers) = std::fs::read_dir(ns.path()) else { continue };
        for container in containers.flatten() {
            let bundle = container.path();
            let id = container.file_name().to_string_lossy().into_owned();
            if let Some(pid) = pid_in(bundle.join("init.pid"))
                && std::fs::read_link(format!("/proc/{pid}/root")).is_ok_and(|r| r == bundle.join("rootfs"))
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            if let Some(pid) = pid_in(bundle.join("shim.pid"))
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).split('\0').any(|a| a == id))
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
    if let Err(e) = wait_for(
        "the containers' root filesystems to be released",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            let left: Vec<PathBuf> = mounts_under(&[tasks.as_path()]);
            if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) }
        },
    ) {
        errors.push(e);
    }
}

/// The kubelet's `kubepods` cgroups, empty once every pod is gone.
fn remove_kubelet_cgroups(errors: &mut Vec<anyhow::Error>) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else { return };
    for h in hierarchies.flatten() {
        let root = h.path().join("kubepods");
        if !root.is_dir() {
            continue;
        }
        let mut dirs = Vec::new();
        collect_dirs(&root, &mut dirs);
        dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for dir in dirs {
            if let Err(e) = std::fs::remove_dir(&dir) {
                errors.push(anyhow::Error::from(e).context(format!("removing the cgroup {}", dir.display())));
                return;
            }
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}
