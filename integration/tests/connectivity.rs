//! Connectivity through the real datapath: pods on one node reach each other (delivered by
//! `bpf_redirect_peer`), the node, and the outside (masqueraded to the node's address), and the
//! node reaches them — with no bridge and no iptables rule in the node.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use test_support::{
    node::{NODE_IP, WORLD_IP},
    Netns, Node, NodeOptions,
};

/// Serves one TCP connection in `ns` on `port`: answers with the peer address it saw.
fn echo_peer_once(ns: &Netns, ip: Ipv4Addr, port: u16) -> std::thread::JoinHandle<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = ns.spawn(move || {
        let l = TcpListener::bind((ip, port)).expect("bind");
        tx.send(()).unwrap();
        let (mut s, peer) = l.accept().expect("accept");
        s.write_all(peer.to_string().as_bytes()).unwrap();
        peer
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("server started");
    h
}

/// Connects from `ns` to `dst:port` and returns what the server said.
fn connect_read(ns: &Netns, dst: Ipv4Addr, port: u16) -> String {
    ns.run(move || {
        let mut s = TcpStream::connect_timeout(&(dst, port).into(), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {dst}:{port}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
}

/// Test that a pod reaches another pod on the node over TCP and ICMP, that the packets took
/// the datapath's local-delivery path, and that the receiver sees the sender's real address.
#[test]
fn pod_to_pod_same_node() {
    let node = Node::new(NodeOptions::default());
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    assert!(a.ping(b.ip), "a cannot ping b");
    let server = echo_peer_once(&b.ns, b.ip, 8080);
    let seen = connect_read(&a.ns, b.ip, 8080);
    assert_eq!(server.join().unwrap().ip(), std::net::IpAddr::V4(a.ip));
    assert!(seen.starts_with(&a.ip.to_string()), "b saw {seen}");
    let (local, _) = node.counter("fwd:local-pod");
    assert!(local >= 4, "not delivered by the datapath: {local} packets");
    // No bridge device in the node.
    assert!(!node
        .node
        .sh("ip -o link show type bridge")
        .contains("bridge"));
}

/// Test that a pod reaches the node's address and the node reaches the pod.
#[test]
fn pod_to_node_and_node_to_pod() {
    let node = Node::new(NodeOptions::default());
    let a = node.add_pod("a");
    assert!(a.ping(NODE_IP), "pod cannot ping the node");
    let server = echo_peer_once(&node.node, NODE_IP, 9090);
    connect_read(&a.ns, NODE_IP, 9090);
    assert_eq!(server.join().unwrap().ip(), std::net::IpAddr::V4(a.ip));
    let server = echo_peer_once(&a.ns, a.ip, 9091);
    connect_read(&node.node, a.ip, 9091);
    server.join().unwrap();
    assert!(node
        .node
        .sh_output(&format!("ping -c1 -W2 {}", a.ip))
        .status
        .success());
}

/// Test that pod traffic to the outside is masqueraded: the outside sees the node's address,
/// and replies (TCP and ICMP) come back to the pod.
#[test]
fn pod_to_outside_is_masqueraded() {
    let node = Node::new(NodeOptions::default());
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    assert!(a.ping(WORLD_IP), "pod cannot ping the outside");
    for (i, pod) in [&a, &b].into_iter().enumerate() {
        let port = 7000 + i as u16;
        let server = echo_peer_once(&node.outside, WORLD_IP, port);
        let said = connect_read(&pod.ns, WORLD_IP, port);
        let peer = server.join().unwrap();
        assert_eq!(
            peer.ip(),
            std::net::IpAddr::V4(NODE_IP),
            "outside saw {peer}"
        );
        // The default range: 1024..=65535 outside the node's ephemeral ports (Linux's
        // default 32768-60999 in a fresh namespace) and the NodePort range 30000-32767.
        assert!(
            (1024..=29999).contains(&peer.port()),
            "masquerade port {} outside its range",
            peer.port()
        );
        assert_eq!(said, peer.to_string());
    }
    // No netfilter NAT rule does this: the node has no iptables/nftables rules at all.
    let rules = node.node.sh_output("nft list ruleset 2>/dev/null");
    assert!(!String::from_utf8_lossy(&rules.stdout).contains("masquerade"));
}

/// Test that a pod cannot send with another pod's source address.
#[test]
fn spoofed_source_is_dropped() {
    let node = Node::new(NodeOptions::default());
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    // a claims b's address as a second address and pings from it.
    a.sh(&format!("ip addr add {}/32 dev eth0", b.ip));
    let out =
        a.ns.sh_output(&format!("ping -c1 -W1 -I {} {}", b.ip, NODE_IP));
    assert!(!out.status.success(), "spoofed ping went through");
    let (spoofed, _) = node.counter("drop:spoofed-source");
    assert!(spoofed >= 1, "drop not counted: {spoofed} packets");
}
