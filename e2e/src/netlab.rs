//! A network lab for partition tests: a bridge and one network namespace per node, so the
//! controller, every instance and the test's own client each have an address of their own and
//! traffic between any two of them can be cut for real.
//!
//! Lab `N` (1 to 250) is the bridge `ogpN` in the root namespace at `10.213.N.1/24` (the
//! client: the test process itself), the namespace `ogpN-c` at `10.213.N.2` (the controller)
//! and `ogpN-iK` at `10.213.N.(10+K)` (instance `K`), each joined to the bridge by a veth pair.
//! Nothing has a default route: no packet can leave the machine. Cuts are iptables rules in a
//! chain `OGCUT` inside the lab's own namespaces (jumped to from INPUT and OUTPUT), never in
//! the root namespace; the only root rule ever added is an ACCEPT for frames bridged within
//! `ogpN`, when bridged frames pass through a FORWARD chain that may drop them (with
//! `br_netfilter` they pass through both the nf_tables and the legacy iptables FORWARD
//! chains). Dropping the lab deletes all of it.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::fcntl::{Flock, FlockArg};

use crate::ports::PortBlock;

/// One end of a link in the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// The controller's namespace (`ogpN-c`).
    Controller,
    /// The root namespace, where the test process, its writers and its checks run.
    Client,
    /// Instance `K`'s namespace (`ogpN-iK`).
    Instance(u32),
}

/// Which packets a cut drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// Every packet between the two nodes.
    Both,
    /// Packets from the first node to the second; the reverse still flows.
    OneWay,
}

/// The chain each lab namespace's INPUT and OUTPUT jump to; cuts live only here.
const CUT_CHAIN: &str = "OGCUT";
/// The lab's ordinals: instances 0 to 5, as far as a scale-up in the tests goes.
pub const LAB_INSTANCES: u32 = 6;
/// Every command the lab runs must finish within this.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);
const NETNS_DIR: &str = "/var/run/netns";

/// One cut rule: where it is and what it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    from: Node,
    to: Node,
    namespace: String,
    matches: Vec<String>,
}

/// A lab of one controller, `instances` instances and the client; torn down on drop.
#[derive(Debug)]
pub struct NetLab {
    id: u8,
    instances: u32,
    /// The iptables commands (`iptables`, `iptables-legacy`) this lab added the root FORWARD
    /// rule with.
    forward_rules: Vec<&'static str>,
    /// Cuts in force.
    rules: Mutex<Vec<Rule>>,
    torn_down: bool,
    /// Holds lab id `id` for this process.
    _lock: Flock<File>,
}

/// Why lab tests cannot run here, if they cannot: they need root (network namespaces,
/// bridges, iptables).
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root to create network namespaces, a bridge and iptables rules".into());
    }
    None
}

/// Runs `cmd` to completion within `COMMAND_TIMEOUT`; its standard output, or an error with
/// what it said.
fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let line = format!("{cmd:?}").replace('"', "");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("cannot run {line}"))?;
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    // The commands print a few lines at most, far below a pipe's buffer: waiting for the exit
    // before reading cannot block them.
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{line} did not finish within {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{line} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(args))
}

/// The iptables commands of the root namespace: bridged frames pass the FORWARD chains of
/// both the nf_tables and the legacy backend, whichever has rules.
const ROOT_IPTABLES: [&str; 2] = ["iptables", "iptables-legacy"];

/// `tool` (one of `ROOT_IPTABLES`) in the root namespace.
fn root_iptables(tool: &str, args: &[&str]) -> anyhow::Result<String> {
    run(Command::new(tool).args(["-w", "10"]).args(args))
}

/// `iptables` inside the namespace `namespace`.
fn iptables_in(namespace: &str, args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(["netns", "exec", namespace, "iptables", "-w", "10"]).args(args))
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn netns_exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

/// Where lab ids are locked, one file per id.
fn lock_dir() -> PathBuf {
    let dir = PathBuf::from("/run/opengauss-e2e-netlab");
    match std::fs::create_dir_all(&dir) {
        Ok(()) => dir,
        Err(_) => {
            let dir = std::env::temp_dir().join("opengauss-e2e-netlab");
            std::fs::create_dir_all(&dir).expect("creating the lab lock directory");
            dir
        }
    }
}

/// Locks a free lab id, trying `hint` (1 to 250) first and then the ids after it.
fn lock_id(hint: u8) -> anyhow::Result<(u8, Flock<File>)> {
    let dir = lock_dir();
    for step in 0..250u16 {
        let id = ((u16::from(hint.max(1)) - 1 + step) % 250 + 1) as u8;
        let file = File::create(dir.join(format!("{id}.lock")))?;
        if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            return Ok((id, lock));
        }
    }
    bail!("all 250 lab ids are taken")
}

/// The lab id a test with `ports` starts from: the port block's slot, so parallel tests start
/// from different ids (the lock settles the rare clash).
pub fn id_hint(ports: &PortBlock) -> u8 {
    ((ports.base.saturating_sub(20000) / 16) % 250 + 1) as u8
}

impl NetLab {
    /// A lab with instances 0 to `instances - 1`, its id derived from `ports`.
    pub fn for_ports(ports: &PortBlock, instances: u32) -> anyhow::Result<Self> {
        Self::create(id_hint(ports), instances)
    }

    /// A lab with instances 0 to `instances - 1` (at most 240), with id `hint` or the next free
    /// one.
    pub fn create(hint: u8, instances: u32) -> anyhow::Result<Self> {
        if let Some(why) = unavailable() {
            bail!("cannot create a network lab: {why}");
        }
        anyhow::ensure!(instances <= 240, "a lab holds at most 240 instances");
        let (id, lock) = lock_id(hint)?;
        let mut lab = Self {
            id,
            instances,
            forward_rules: Vec::new(),
            rules: Mutex::new(Vec::new()),
            torn_down: false,
            _lock: lock,
        };
        // Whatever a killed test left under this id is nobody's now: the lock is ours.
        lab.remove_all().context("removing what an earlier lab left under this id")?;
        // On an error, dropping the half-built lab removes what was made.
        lab.build().with_context(|| format!("creating network lab {id}"))?;
        Ok(lab)
    }

    fn build(&mut self) -> anyhow::Result<()> {
        let bridge = self.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", self.address(Node::Client)), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        let nodes: Vec<Node> =
            std::iter::once(Node::Controller).chain((0..self.instances).map(Node::Instance)).collect();
        for node in nodes {
            let ns = self.namespace(node).expect("a namespace");
            ip(&["netns", "add", &ns])?;
            // The host end is named as the namespace; inside, the interface is eth0.
            ip(&["link", "add", &ns, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["link", "set", &ns, "master", &bridge, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", self.address(node)), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            iptables_in(&ns, &["-N", CUT_CHAIN])?;
            iptables_in(&ns, &["-A", "INPUT", "-j", CUT_CHAIN])?;
            iptables_in(&ns, &["-A", "OUTPUT", "-j", CUT_CHAIN])?;
        }
        // With br_netfilter, frames bridged between the lab's veths pass the root FORWARD
        // chains: let them through where something there may drop them.
        let through_iptables = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
            .is_ok_and(|v| v.trim() == "1");
        if through_iptables {
            let accept = ["-i", &bridge, "-o", &bridge, "-j", "ACCEPT"];
            for tool in ROOT_IPTABLES {
                // A backend whose command is missing or unusable here has no chain to pass.
                let Ok(chain) = root_iptables(tool, &["-S", "FORWARD"]) else { continue };
                if forward_may_drop(&chain)
                    && root_iptables(tool, &[&["-C", "FORWARD"], &accept[..]].concat()).is_err()
                {
                    root_iptables(tool, &[&["-I", "FORWARD", "1"], &accept[..]].concat())?;
                    self.forward_rules.push(tool);
                }
            }
        }
        Ok(())
    }

    pub fn id(&self) -> u8 {
        self.id
    }

    /// The cuts in force. Every update is a single push, retain or clear, so the list stays
    /// whole even if a holder panicked; teardown in `Drop` must not panic.
    fn rules(&self) -> std::sync::MutexGuard<'_, Vec<Rule>> {
        self.rules.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The iptables commands whose root FORWARD chain this lab added its ACCEPT rule to
    /// (none where bridged frames skip iptables or nothing there drops them).
    pub fn forward_rules(&self) -> &[&'static str] {
        &self.forward_rules
    }

    /// The instances this lab has namespaces for.
    pub fn instances(&self) -> u32 {
        self.instances
    }

    /// The bridge in the root namespace.
    pub fn bridge(&self) -> String {
        format!("ogp{}", self.id)
    }

    /// `node`'s namespace name; the client has none (it is the root namespace).
    pub fn namespace(&self, node: Node) -> Option<String> {
        match node {
            Node::Client => None,
            Node::Controller => Some(format!("ogp{}-c", self.id)),
            Node::Instance(k) => Some(format!("ogp{}-i{k}", self.id)),
        }
    }

    /// `node`'s address on the lab's /24.
    pub fn address(&self, node: Node) -> Ipv4Addr {
        let host = match node {
            Node::Client => 1,
            Node::Controller => 2,
            Node::Instance(k) => 10 + u8::try_from(k).expect("a lab ordinal"),
        };
        Ipv4Addr::new(10, 213, self.id, host)
    }

    /// The `local up --netns` value placing instance `ordinal` in this lab.
    pub fn placement(&self, ordinal: u32) -> String {
        let ns = self.namespace(Node::Instance(ordinal)).expect("an instance namespace");
        format!("{ordinal}={ns}/{}/24", self.address(Node::Instance(ordinal)))
    }

    fn check_node(&self, node: Node) -> anyhow::Result<()> {
        if let Node::Instance(k) = node {
            anyhow::ensure!(k < self.instances, "lab {} has no instance {k}", self.id);
        }
        Ok(())
    }

    /// Drops packets from `from` to `to` (and, with `Way::Both`, from `to` to `from`) until
    /// healed, established connections included.
    pub fn cut(&self, from: Node, to: Node, way: Way) -> anyhow::Result<()> {
        anyhow::ensure!(from != to, "a cut needs two different nodes");
        self.check_node(from)?;
        self.check_node(to)?;
        self.drop_packets(from, to, None)?;
        if way == Way::Both {
            self.drop_packets(to, from, None)?;
        }
        Ok(())
    }

    /// Cuts `from` off instance `ordinal`'s TCP `port` only (its instance manager's API port,
    /// from its `manager.port` file): `from` still reaches the database port and everything
    /// else. Healed by `heal(from, Node::Instance(ordinal))` or `heal_all`.
    pub fn cut_manager_api(&self, ordinal: u32, from: Node, port: u16) -> anyhow::Result<()> {
        let to = Node::Instance(ordinal);
        anyhow::ensure!(from != to, "a cut needs two different nodes");
        self.check_node(from)?;
        self.check_node(to)?;
        self.drop_packets(from, to, Some(port))
    }

    /// Adds the rule dropping packets from `from` to `to` (to TCP `port` only, if given). It
    /// lives in the receiver's namespace (INPUT), or in the sender's (OUTPUT) when the
    /// receiver is the client, so the root namespace is never touched.
    fn drop_packets(&self, from: Node, to: Node, port: Option<u16>) -> anyhow::Result<()> {
        let namespace = match (self.namespace(to), self.namespace(from)) {
            (Some(ns), _) | (None, Some(ns)) => ns,
            (None, None) => bail!("a cut needs a node other than the client"),
        };
        let mut matches: Vec<String> =
            ["-s", &self.address(from).to_string(), "-d", &self.address(to).to_string()]
                .map(String::from)
                .to_vec();
        if let Some(port) = port {
            matches.extend(["-p", "tcp", "--dport", &port.to_string()].map(String::from));
        }
        matches.extend(["-j", "DROP"].map(String::from));
        let rule = Rule { from, to, namespace, matches };
        let mut rules = self.rules();
        if rules.contains(&rule) {
            return Ok(());
        }
        let mut args = vec!["-A", CUT_CHAIN];
        args.extend(rule.matches.iter().map(String::as_str));
        iptables_in(&rule.namespace, &args)?;
        rules.push(rule);
        Ok(())
    }

    /// Removes every cut between `a` and `b`, both ways, the manager-API cuts included.
    pub fn heal(&self, a: Node, b: Node) -> anyhow::Result<()> {
        let mut rules = self.rules();
        let mut result = Ok(());
        rules.retain(|r| {
            let between = (r.from == a && r.to == b) || (r.from == b && r.to == a);
            if !between || result.is_err() {
                return true;
            }
            let mut args = vec!["-D", CUT_CHAIN];
            args.extend(r.matches.iter().map(String::as_str));
            match iptables_in(&r.namespace, &args) {
                Ok(_) => false,
                Err(e) => {
                    result = Err(e);
                    true
                }
            }
        });
        result
    }

    /// Removes every cut.
    pub fn heal_all(&self) -> anyhow::Result<()> {
        let mut rules = self.rules();
        let nodes = std::iter::once(Node::Controller).chain((0..self.instances).map(Node::Instance));
        for ns in nodes.filter_map(|n| self.namespace(n)) {
            iptables_in(&ns, &["-F", CUT_CHAIN])?;
        }
        rules.clear();
        Ok(())
    }

    /// Runs `f` on a thread inside `node`'s network namespace: sockets it creates live there
    /// (and stay there when handed back). The client's runs in the root namespace.
    pub fn in_namespace<T: Send>(&self, node: Node, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let path = self.namespace(node).map(|ns| Path::new(NETNS_DIR).join(ns));
        std::thread::scope(|s| {
            s.spawn(move || -> anyhow::Result<T> {
                if let Some(path) = path {
                    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                    // Only this thread moves; it ends with `f`.
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .with_context(|| format!("entering {}", path.display()))?;
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread in {node:?}'s namespace panicked"))?
        })
    }

    /// Deletes everything this lab id has: veths, namespaces (with their rules), the bridge and
    /// the root FORWARD rule. Every step is tried; the errors are reported together.
    fn remove_all(&mut self) -> anyhow::Result<()> {
        let prefix = format!("ogp{}-", self.id);
        let mut namespaces = names_starting_with(Path::new(NETNS_DIR), &prefix);
        namespaces.sort();
        let mut errors = Vec::new();
        // A namespace a process still lives in outlives its name; deleting its veth first cuts
        // it off the bridge at once either way.
        let veths = names_starting_with(Path::new("/sys/class/net"), &prefix);
        for veth in veths {
            if let Err(e) = ip(&["link", "del", &veth]) {
                errors.push(format!("{e:#}"));
            }
        }
        for ns in &namespaces {
            if netns_exists(ns)
                && let Err(e) = ip(&["netns", "del", ns])
            {
                errors.push(format!("{e:#}"));
            }
        }
        let bridge = self.bridge();
        if link_exists(&bridge)
            && let Err(e) = ip(&["link", "del", &bridge])
        {
            errors.push(format!("{e:#}"));
        }
        // Ours, or one a killed lab of this id left (it names this lab's bridge only).
        let accept = ["FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT"];
        for tool in ROOT_IPTABLES {
            while root_iptables(tool, &[&["-C"], &accept[..]].concat()).is_ok() {
                if let Err(e) = root_iptables(tool, &[&["-D"], &accept[..]].concat()) {
                    errors.push(format!("{e:#}"));
                    break;
                }
            }
        }
        self.forward_rules.clear();
        self.rules().clear();
        if errors.is_empty() { Ok(()) } else { bail!("{}", errors.join("; ")) }
    }

    /// Deletes the lab now (what dropping it does), reporting what could not be removed.
    pub fn teardown(mut self) -> anyhow::Result<()> {
        self.torn_down = true;
        self.remove_all()
    }
}

/// Whether a FORWARD chain (`iptables -S FORWARD`) may drop a frame: a policy other than
/// ACCEPT, or any rule at all (a container runtime's or kube-proxy's).
fn forward_may_drop(chain: &str) -> bool {
    chain.lines().any(|l| l.starts_with("-A ") || (l.starts_with("-P ") && l.trim() != "-P FORWARD ACCEPT"))
}

impl Drop for NetLab {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        if let Err(e) = self.remove_all() {
            eprintln!("network lab {}: teardown incomplete: {e:#}", self.id);
        }
    }
}

/// The names of the entries of `dir` that start with `prefix` (none when it cannot be read).
fn names_starting_with(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::forward_may_drop;

    #[test]
    fn a_forward_chain_may_drop_unless_it_accepts_everything() {
        assert!(!forward_may_drop("-P FORWARD ACCEPT\n"));
        assert!(forward_may_drop("-P FORWARD DROP\n"));
        assert!(forward_may_drop("-P FORWARD ACCEPT\n-A FORWARD -j DOCKER-USER\n"));
    }
}
