//! The network lab partition tests run in: its cuts stop real packets (and only the packets
//! they name), healing restores them, nothing of the lab outlives it, and a cluster runs in it
//! with every instance in a namespace of its own. Needs root; skipped with the reason without.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use opengauss_e2e::checks::{check_standby_refuses_writes, check_write_then_read};
use opengauss_e2e::netlab::{self, NetLab, Node, Way};
use opengauss_e2e::ports::reserve;
use opengauss_e2e::wait::{Probe, until};
use opengauss_e2e::{LocalCluster, postgres_available};

/// Whether the test must be skipped here, saying why.
fn skip(test: &str) -> bool {
    match netlab::unavailable() {
        Some(why) => {
            eprintln!("{test} skipped: it {why}");
            true
        }
        None => false,
    }
}

/// How long one attempt to reach a peer may take; a cut peer never answers, so every
/// "unreachable" costs this much.
const ATTEMPT: Duration = Duration::from_secs(1);
/// How long a peer that should be reachable may take to become so (a fresh bridge port, a
/// healed cut).
const REACH: Duration = Duration::from_secs(15);

/// Whether one TCP connection from `from`'s namespace to `addr` is established.
fn connects(lab: &NetLab, from: Node, addr: SocketAddr) -> bool {
    lab.in_namespace(from, || TcpStream::connect_timeout(&addr, ATTEMPT).is_ok()).expect("in the namespace")
}

/// Waits until `from` reaches `addr` over TCP.
async fn wait_connects(lab: &NetLab, from: Node, addr: SocketAddr) {
    until(&format!("{from:?} to reach {addr}"), REACH, Duration::from_millis(50), || {
        std::future::ready(if connects(lab, from, addr) {
            Probe::Done(())
        } else {
            Probe::NotYet("no connection".into())
        })
    })
    .await
    .expect("reachable");
}

/// A UDP socket bound to `node`'s lab address inside its namespace.
fn udp_at(lab: &NetLab, node: Node) -> UdpSocket {
    let addr = SocketAddr::from((lab.address(node), 0));
    let socket =
        lab.in_namespace(node, || UdpSocket::bind(addr)).expect("in the namespace").expect("udp bind");
    socket.set_read_timeout(Some(ATTEMPT)).expect("timeout");
    socket
}

/// Whether a datagram sent from `from` reaches `to`: `to`'s socket waits `ATTEMPT` for it
/// (datagrams of earlier probes are skipped by their payload). Datagrams show a one-way cut
/// for what it is; a TCP connection needs both ways and fails under either.
fn datagram_arrives(lab: &NetLab, from: Node, to: Node, probe: u32) -> bool {
    let receiver = udp_at(lab, to);
    let sender = udp_at(lab, from);
    let payload = format!("probe {probe}");
    // A datagram dropped by the sender's own OUTPUT chain fails to send (EPERM): it did not
    // arrive either.
    if sender.send_to(payload.as_bytes(), receiver.local_addr().expect("addr")).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    loop {
        match receiver.recv_from(&mut buf) {
            Ok((n, source)) if &buf[..n] == payload.as_bytes() => {
                assert_eq!(source.ip(), lab.address(from), "sent from {from:?}'s address");
                return true;
            }
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}

/// Waits until datagrams from `from` reach `to`.
async fn wait_datagrams(lab: &NetLab, from: Node, to: Node) {
    let mut probe = 0;
    until(&format!("a datagram from {from:?} to reach {to:?}"), REACH, Duration::from_millis(50), || {
        probe += 1;
        std::future::ready(if datagram_arrives(lab, from, to, probe) {
            Probe::Done(())
        } else {
            Probe::NotYet("nothing arrived".into())
        })
    })
    .await
    .expect("datagrams arrive");
}

/// A TCP listener on `node`'s lab address inside its namespace. It is never accepted from:
/// the kernel completes handshakes into its backlog, which is all a reachability check needs.
fn listen_at(lab: &NetLab, node: Node) -> (TcpListener, SocketAddr) {
    let addr = SocketAddr::from((lab.address(node), 0));
    let listener =
        lab.in_namespace(node, || TcpListener::bind(addr)).expect("in the namespace").expect("tcp bind");
    let addr = listener.local_addr().expect("addr");
    (listener, addr)
}

/// The lab's namespaces and links still on the machine.
fn leftovers(bridge: &str) -> Vec<String> {
    let prefix = format!("{bridge}-");
    let list = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    let mut left: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(|n| format!("namespace {n}"))
        .collect();
    let show = Command::new("ip").args(["link", "show", bridge]).output().expect("ip link show");
    if show.status.success() {
        left.push(format!("bridge {bridge}"));
    }
    let links = Command::new("ip").args(["-o", "link", "show"]).output().expect("ip link show");
    left.extend(
        String::from_utf8_lossy(&links.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .filter(|n| n.starts_with(&prefix))
            .map(|n| format!("link {n}")),
    );
    for tool in ["iptables", "iptables-legacy"] {
        let Ok(forward) = Command::new(tool).args(["-S", "FORWARD"]).output() else { continue };
        left.extend(
            String::from_utf8_lossy(&forward.stdout)
                .lines()
                .filter(|l| l.split_whitespace().any(|w| w == bridge))
                .map(|l| format!("{tool} rule {l}")),
        );
    }
    left
}

#[tokio::test(flavor = "multi_thread")]
async fn lab_cuts_are_real() {
    if skip("lab_cuts_are_real") {
        return;
    }
    let ports = reserve(1);
    let lab = NetLab::for_ports(&ports, 3).expect("a lab");
    let bridge = lab.bridge();
    eprintln!("lab {} (root FORWARD rule added with {:?})", lab.id(), lab.forward_rules());
    let i0 = Node::Instance(0);
    let (client, controller) = (Node::Client, Node::Controller);
    assert_eq!(lab.address(client), Ipv4Addr::new(10, 213, lab.id(), 1));
    assert_eq!(lab.address(controller), Ipv4Addr::new(10, 213, lab.id(), 2));
    assert_eq!(lab.address(i0), Ipv4Addr::new(10, 213, lab.id(), 10));
    assert_eq!(lab.placement(2), format!("2={bridge}-i2/10.213.{}.12/24", lab.id()));

    // Two services in instance 0's namespace (a database port and a manager's API port, say)
    // and one on the client.
    let (db_listener, db) = listen_at(&lab, i0);
    let (_api, api) = listen_at(&lab, i0);
    let (_client_service, client_service) = listen_at(&lab, client);
    wait_connects(&lab, client, db).await;
    wait_connects(&lab, controller, db).await;
    wait_connects(&lab, i0, client_service).await;
    // The namespaces only have their /24: nothing else is routable from them.
    let outside = SocketAddr::from(([192, 0, 2, 1], 80));
    let routed = lab.in_namespace(i0, || TcpStream::connect_timeout(&outside, ATTEMPT)).expect("ns");
    assert_eq!(
        routed.expect_err("no route off the lab").raw_os_error(),
        Some(nix::errno::Errno::ENETUNREACH as i32),
        "no default route in the lab"
    );

    // An established connection across the cut stalls too (no conntrack exception).
    let mut stream = TcpStream::connect_timeout(&db, ATTEMPT).expect("connected");
    // The backlog also holds the probes' connections: take this one.
    let mut accepted = loop {
        let (accepted, peer) = db_listener.accept().expect("accepted");
        if peer == stream.local_addr().expect("local address") {
            break accepted;
        }
    };
    accepted.set_read_timeout(Some(ATTEMPT)).expect("timeout");

    lab.cut(client, i0, Way::Both).expect("cut");
    assert!(!connects(&lab, client, db), "the client is cut off instance 0");
    assert!(!connects(&lab, i0, client_service), "instance 0 is cut off the client");
    assert!(connects(&lab, controller, db), "the controller still reaches instance 0");
    stream.write_all(b"x").expect("queued");
    let mut byte = [0u8; 1];
    assert!(accepted.read(&mut byte).is_err(), "nothing crosses the cut on an established connection");

    lab.heal(i0, client).expect("heal");
    wait_connects(&lab, client, db).await;
    // The byte sent during the cut is retransmitted and arrives.
    accepted.set_read_timeout(Some(REACH)).expect("timeout");
    assert_eq!(accepted.read(&mut byte).expect("the retransmission"), 1);
    drop((stream, accepted));

    // One way: the datagrams from `from` to `to` are dropped, the other way they flow, for a
    // receiver in a namespace (INPUT rule) and for the client as receiver (OUTPUT rule).
    for (from, to) in [(client, i0), (i0, client), (i0, controller), (controller, Node::Instance(2))] {
        wait_datagrams(&lab, from, to).await;
        lab.cut(from, to, Way::OneWay).expect("cut");
        assert!(!datagram_arrives(&lab, from, to, 0), "{from:?} -> {to:?} is cut");
        wait_datagrams(&lab, to, from).await;
        lab.heal(from, to).expect("heal");
        wait_datagrams(&lab, from, to).await;
    }
    // A one-way cut breaks TCP either way (the handshake needs both), and heal_all lifts it.
    lab.cut(client, i0, Way::OneWay).expect("cut");
    assert!(!connects(&lab, client, db));
    lab.heal_all().expect("heal all");
    wait_connects(&lab, client, db).await;

    // The manager-API cut: the controller loses that port only; the client keeps it.
    lab.cut_manager_api(0, controller, api.port()).expect("cut the API");
    assert!(!connects(&lab, controller, api), "the controller is cut off the manager API");
    assert!(connects(&lab, controller, db), "the controller still reaches the database port");
    assert!(connects(&lab, client, api), "the client still reaches the manager API");
    lab.heal(controller, i0).expect("heal");
    wait_connects(&lab, controller, api).await;

    // Cuts name real nodes of the lab.
    assert!(lab.cut(client, client, Way::Both).is_err());
    assert!(lab.cut(client, Node::Instance(3), Way::Both).is_err());

    // Cut again, then tear down with the cut in force: nothing of the lab is left.
    lab.cut(controller, i0, Way::Both).expect("cut");
    assert!(!leftovers(&bridge).is_empty(), "the lab exists before its teardown");
    drop((db_listener, _api, _client_service));
    lab.teardown().expect("teardown");
    let left = leftovers(&bridge);
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_a_lab_removes_it() {
    if skip("dropping_a_lab_removes_it") {
        return;
    }
    let ports = reserve(1);
    let bridge = {
        let lab = NetLab::for_ports(&ports, 1).expect("a lab");
        lab.cut(Node::Client, Node::Instance(0), Way::Both).expect("cut");
        assert!(leftovers(&lab.bridge()).len() >= 3, "bridge, two namespaces, two veths");
        lab.bridge()
    };
    let left = leftovers(&bridge);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The inode of a network namespace, to tell which one a process is in.
fn netns_inode(path: &str) -> u64 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}")).ino()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_runs_in_the_lab() {
    if skip("a_cluster_runs_in_the_lab") {
        return;
    }
    assert!(postgres_available(), "this test needs the PostgreSQL server binaries");
    let mut c = LocalCluster::in_lab("lab-cluster", 3, "").expect("a cluster in a lab");
    let lab = c.lab().expect("a lab");
    let bridge = lab.bridge();
    let controller_ns = format!("/var/run/netns/{}", lab.namespace(Node::Controller).expect("ns"));
    let instance_ns: Vec<String> =
        (0..3).map(|k| format!("/var/run/netns/{}", lab.namespace(Node::Instance(k)).expect("ns"))).collect();
    let addresses: Vec<String> =
        (0..3).map(|k| format!("{}:{}", lab.address(Node::Instance(k)), c.port_of(&c.instance(k)))).collect();
    c.start();
    let status = c.wait_healthy(Duration::from_secs(120)).await.expect("healthy");

    // Every instance is at its lab address, and runs (manager and server) in its namespace;
    // the controller in its own.
    for (k, address) in addresses.iter().enumerate() {
        let name = c.instance(k as u32);
        let listed = status.instance(&name).map(|i| i.address.clone());
        assert_eq!(listed.as_deref(), Some(address.as_str()), "{name}'s address in the status");
        let manager = c.manager_pid(&name).expect("manager pid");
        let server = c.server_pid(&name).expect("server pid");
        for pid in [manager, server] {
            assert_eq!(
                netns_inode(&format!("/proc/{pid}/ns/net")),
                netns_inode(&instance_ns[k]),
                "{name}'s process {pid} runs in {}",
                instance_ns[k]
            );
        }
        assert_ne!(
            std::fs::metadata(format!("/proc/{manager}/status")).map(|m| m.uid()).expect("manager status"),
            0,
            "{name}'s manager runs unprivileged"
        );
    }
    let controller = c.controller_pid().expect("controller");
    assert_eq!(netns_inode(&format!("/proc/{controller}/ns/net")), netns_inode(&controller_ns));

    // A write on the primary, through the client side of the lab, is read on the standbys.
    let primary = status.current_primary.clone().expect("a primary");
    assert_eq!(c.writable_instances().await, vec![primary.clone()], "one writable instance");
    let standbys: Vec<String> = (0..3).map(|k| c.instance(k)).filter(|n| *n != primary).collect();
    check_write_then_read(&c, &primary, &standbys, "through_the_lab", "written across the bridge")
        .await
        .expect("replicated");
    check_standby_refuses_writes(&c, &standbys[0], "through_the_lab").await.expect("read-only");

    let out = c.down();
    assert!(out.status.success(), "local down: {}", String::from_utf8_lossy(&out.stderr));
    for k in 0..3 {
        let name = c.instance(k);
        assert_eq!(c.server_pid(&name), None, "{name}'s server stopped");
        assert_eq!(c.manager_pid(&name), None, "{name}'s manager stopped");
    }
    assert_eq!(c.controller_pid(), None, "local up exited");
    drop(c);
    let left = leftovers(&bridge);
    assert!(left.is_empty(), "left behind: {left:?}");
}
