//! The node's network: one bridge of the project's own carrying the node's address and the
//! pods, the service range routed onto it, forwarding on, and a packet filter chain that lets
//! pod traffic go only between the bridge's own addresses, so nothing a pod sends is routed
//! off the machine. What `setup` changed is recorded in `.k8s/network.json`, and `teardown`
//! undoes exactly that, even after a failed `up`.

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::Layout;
use super::layout::{BRIDGE, NODE_IP, POD_CIDR, SERVICE_CIDR};
use super::procs::run;

/// The packet filter chain of the project's own, jumped to first from FORWARD.
pub const CHAIN: &str = "OPENGAUSS-K8S";

/// What `setup` changed.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Record {
    pub ip_forward_before: Option<String>,
    pub bridge: bool,
    pub service_route: bool,
    pub chain: bool,
    /// The kubelet was started: it leaves chains of its own (`KUBE-FIREWALL` and canaries)
    /// that `kube-proxy --cleanup` does not remove.
    pub kubelet_chains: bool,
}

fn save(layout: &Layout, record: &Record) -> anyhow::Result<()> {
    std::fs::create_dir_all(&layout.root)?;
    std::fs::write(layout.network_record(), serde_json::to_vec_pretty(record)?)?;
    Ok(())
}

fn read_sysctl(name: &str) -> anyhow::Result<String> {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    Ok(std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?.trim().to_string())
}

fn write_sysctl(name: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    std::fs::write(&path, value).with_context(|| format!("setting {name} = {value}"))
}

fn bridge_exists() -> bool {
    run("ip", &["link", "show", BRIDGE]).is_ok()
}

/// Parses `a.b.c.d/n` into (network, prefix length).
fn parse_cidr(cidr: &str) -> Option<(u32, u32)> {
    let (ip, len) = cidr.split_once('/').unwrap_or((cidr, "32"));
    let ip: std::net::Ipv4Addr = ip.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    (len <= 32).then(|| (u32::from(ip) & mask(len), len))
}

fn mask(len: u32) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

fn overlaps(a: &str, b: &str) -> bool {
    match (parse_cidr(a), parse_cidr(b)) {
        (Some((na, la)), Some((nb, lb))) => {
            let len = la.min(lb);
            na & mask(len) == nb & mask(len)
        }
        _ => false,
    }
}

/// Refuses to start when a route of somebody else's already covers the cluster's ranges.
fn check_ranges_free() -> anyhow::Result<()> {
    let routes = run("ip", &["-4", "route", "show"])?;
    for line in routes.lines() {
        let mut words = line.split_whitespace();
        let Some(dest) = words.next() else { continue };
        if dest == "default" || line.contains(&format!("dev {BRIDGE}")) {
            continue;
        }
        for ours in [POD_CIDR, SERVICE_CIDR] {
            if overlaps(dest, ours) {
                bail!(
                    "the route `{line}` overlaps the cluster's range {ours}; this machine's network already uses it"
                );
            }
        }
    }
    Ok(())
}

fn iptables(args: &[&str]) -> anyhow::Result<String> {
    run("iptables", &["-w", "5"].iter().chain(args).copied().collect::<Vec<_>>())
}

/// Creates the bridge, the service route, the forwarding rules; records each change as made.
pub fn setup(layout: &Layout) -> anyhow::Result<()> {
    check_ranges_free()?;
    let mut record: Record = read_record(layout).unwrap_or_default();
    if record.ip_forward_before.is_none() {
        record.ip_forward_before = Some(read_sysctl("net.ipv4.ip_forward")?);
        save(layout, &record)?;
    }
    if !bridge_exists() {
        run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
        record.bridge = true;
        save(layout, &record)?;
    }
    let addr = format!("{NODE_IP}/24");
    if !run("ip", &["-4", "addr", "show", "dev", BRIDGE])?.contains(&addr) {
        run("ip", &["addr", "add", &addr, "dev", BRIDGE])?;
    }
    run("ip", &["link", "set", BRIDGE, "up"])?;
    if !run("ip", &["-4", "route", "show", SERVICE_CIDR])?.contains(BRIDGE) {
        run("ip", &["route", "add", SERVICE_CIDR, "dev", BRIDGE])?;
        record.service_route = true;
        save(layout, &record)?;
    }
    // Service traffic from a pod to a pod on the same bridge is routed through the node.
    write_sysctl("net.ipv4.ip_forward", "1")?;
    if std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
        write_sysctl("net.bridge.bridge-nf-call-iptables", "1")?;
    } else {
        bail!(
            "bridged traffic does not pass the packet filter (no br_netfilter): kube-proxy's rules would not apply"
        );
    }
    if iptables(&["-L", CHAIN, "-n"]).is_err() {
        iptables(&["-N", CHAIN])?;
        record.chain = true;
        save(layout, &record)?;
    }
    iptables(&["-F", CHAIN])?;
    iptables(&["-A", CHAIN, "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"])?;
    iptables(&["-A", CHAIN, "-i", BRIDGE, "-j", "DROP"])?;
    iptables(&["-A", CHAIN, "-o", BRIDGE, "-j", "DROP"])?;
    if iptables(&["-C", "FORWARD", "-j", CHAIN]).is_err() {
        iptables(&["-I", "FORWARD", "1", "-j", CHAIN])?;
    }
    record.chain = true;
    save(layout, &record)?;
    Ok(())
}

/// Records that the kubelet is about to make its packet filter chains.
pub fn expect_kubelet_chains(layout: &Layout) -> anyhow::Result<()> {
    let mut record = read_record(layout).unwrap_or_default();
    record.kubelet_chains = true;
    save(layout, &record)
}

/// Removes every `KUBE-*` chain of the filter, nat and mangle tables and the rules jumping
/// to them (kube-proxy's are gone by now; these are the kubelet's).
fn remove_kubelet_chains() -> anyhow::Result<()> {
    for table in ["filter", "nat", "mangle"] {
        let rules = iptables(&["-t", table, "-S"])?;
        for rule in rules.lines().filter(|r| r.starts_with("-A ") && r.contains("-j KUBE-")) {
            let chain = rule.split_whitespace().nth(1).unwrap_or_default();
            if chain.starts_with("KUBE-") {
                continue;
            }
            let mut args: Vec<&str> = vec!["-t", table, "-D"];
            args.extend(rule.split_whitespace().skip(1));
            // Quoted comments are split here; delete by the rule's position instead.
            if iptables(&args).is_err() {
                delete_by_spec(table, chain, rule)?;
            }
        }
        let chains: Vec<String> = iptables(&["-t", table, "-S"])?
            .lines()
            .filter_map(|l| l.strip_prefix("-N "))
            .filter(|c| c.starts_with("KUBE-"))
            .map(String::from)
            .collect();
        for chain in &chains {
            iptables(&["-t", table, "-F", chain])?;
        }
        for chain in &chains {
            iptables(&["-t", table, "-X", chain])?;
        }
    }
    Ok(())
}

fn delete_by_spec(table: &str, chain: &str, rule: &str) -> anyhow::Result<()> {
    let listed = iptables(&["-t", table, "-S", chain])?;
    let position = listed.lines().filter(|l| l.starts_with("-A ")).position(|l| l == rule);
    match position {
        Some(i) => iptables(&["-t", table, "-D", chain, &(i + 1).to_string()]).map(drop),
        None => Ok(()),
    }
}

fn read_record(layout: &Layout) -> Option<Record> {
    serde_json::from_slice(&std::fs::read(layout.network_record()).ok()?).ok()
}

/// Undoes what `setup` recorded; every step is attempted, the first error is returned.
pub fn teardown(layout: &Layout) -> anyhow::Result<()> {
    let Some(record) = read_record(layout) else { return Ok(()) };
    let mut errors = Vec::new();
    let mut attempt = |step: anyhow::Result<()>| {
        if let Err(e) = step {
            errors.push(e);
        }
    };
    if record.chain {
        attempt((|| {
            while iptables(&["-C", "FORWARD", "-j", CHAIN]).is_ok() {
                iptables(&["-D", "FORWARD", "-j", CHAIN])?;
            }
            if iptables(&["-L", CHAIN, "-n"]).is_ok() {
                iptables(&["-F", CHAIN])?;
                iptables(&["-X", CHAIN])?;
            }
            Ok(())
        })());
    }
    if record.kubelet_chains {
        attempt(remove_kubelet_chains().context("removing the kubelet's packet filter chains"));
    }
    if record.service_route
        && run("ip", &["-4", "route", "show", SERVICE_CIDR]).is_ok_and(|r| r.contains(BRIDGE))
    {
        attempt(run("ip", &["route", "del", SERVICE_CIDR, "dev", BRIDGE]).map(drop));
    }
    if record.bridge && bridge_exists() {
        attempt(run("ip", &["link", "del", BRIDGE]).map(drop));
    }
    if let Some(before) = &record.ip_forward_before {
        attempt(write_sysctl("net.ipv4.ip_forward", before));
    }
    match errors.into_iter().next() {
        Some(e) => Err(e.context("undoing the node's network changes")),
        None => {
            let _ = std::fs::remove_file(layout.network_record());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_overlap_when_one_contains_the_other() {
        assert!(overlaps("10.244.0.0/24", POD_CIDR));
        assert!(overlaps("10.0.0.0/8", SERVICE_CIDR));
        assert!(!overlaps("192.0.2.0/24", POD_CIDR));
        assert!(!overlaps("10.97.0.0/16", SERVICE_CIDR));
        assert!(overlaps("10.96.3.4", SERVICE_CIDR));
    }
}
