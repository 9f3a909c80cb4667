//! Socket acceleration across address families, and never on one end only (issue 12.1).
//!
//! A server listening on `[::]` (one AF_INET6 socket with `IPV6_V6ONLY` cleared, as Go's
//! `:port`, Java and Node.js listen) accepts IPv4 clients as IPv4-mapped sockets
//! (`::ffff:a.b.c.d`, RFC 4291 2.5.5.2); a client may connect from an AF_INET6 socket to a
//! mapped address the same way. Such a connection is the same IPv4 connection as its AF_INET
//! twin, so both of its sockets are accelerated, pod to pod and on loopback inside a pod. A
//! socket alone in the sockhash breaks blocking reads (a tcp_bpf `EAGAIN`, see
//! `sockmap.rs`), so whenever one end cannot join — pure IPv6, a process outside the cgroup,
//! a peer whose namespace is not a Sluice pod's — neither end may be in the sockhash.
//!
//! Expected values come from the feature's promise: a same-node connection between
//! accelerated processes has exactly its two sockets in the sockhash while it is open (one
//! key per end, each the other's peer, with IPv4 addresses whatever the sockets' family), and
//! the replies a server writes are redirected; a connection that is not accelerated has none.

use std::net::Ipv4Addr;

use datapath_common::sock::SockKey;
use test_support::sockcheck::{
    addr, assert_sockhash_drains, num, server, sockhash_keys, start_client, Accel, Cg,
};
use test_support::{Netns, Node, NodeOptions, Pod};

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Half-close rounds per case: the issue measured 0 of 20 against a `[::]` server.
const ROUNDS: usize = 20;

fn node_with_pods(names: &[&str]) -> (Node, Vec<Pod>) {
    let node = Node::new(NodeOptions::default());
    let pods = names.iter().map(|n| node.add_pod(n)).collect();
    (node, pods)
}

/// `[::ffff:IP]:PORT`: an address an AF_INET6 client connects to over IPv4.
fn mapped(ip: Ipv4Addr, port: u16) -> String {
    format!("[{}]:{port}", ip.to_ipv6_mapped())
}

/// Holds one connection to `to` open, runs a round of echoes on it (so the server has
/// accepted it: both ends are established) and returns the sockhash keys seen meanwhile;
/// then closes it and checks the client's report.
fn keys_while_open(node: &Node, ns: &Netns, cg: Cg, to: &str) -> Vec<SockKey> {
    let mut p = start_client(node, ns, cg, &["hold", "--to", to, "--msgs", "4"]);
    assert_eq!(p.line(), "connected", "{}", p.what);
    p.say("round");
    assert_eq!(p.line(), "ok 0", "{}", p.what);
    let keys = sockhash_keys(node);
    p.report();
    keys
}

/// Asserts that `keys` are exactly the two ends of one IPv4 connection from `client` to
/// `server:port`, each the other's peer.
fn assert_both_ends(what: &str, keys: &[SockKey], client: Ipv4Addr, server: (Ipv4Addr, u16)) {
    let v4 = |a: &[u8; 16]| Ipv4Addr::new(a[0], a[1], a[2], a[3]);
    assert_eq!(
        keys.len(),
        2,
        "{what}: want both ends in the sockhash: {keys:?}"
    );
    let (c, s) = if keys[0].remote_port == u32::from(server.1) {
        (&keys[0], &keys[1])
    } else {
        (&keys[1], &keys[0])
    };
    for k in keys {
        assert_eq!(k.family, datapath_common::addr::FAMILY_V4, "{what}: {k:?}");
    }
    assert_eq!(
        (v4(&c.local_addr), v4(&c.remote_addr), c.remote_port),
        (client, server.0, u32::from(server.1)),
        "{what}: client end {c:?}"
    );
    assert_eq!(
        (
            v4(&s.local_addr),
            s.local_port,
            v4(&s.remote_addr),
            s.remote_port
        ),
        (server.0, c.remote_port, client, c.local_port),
        "{what}: server end {s:?} is not the client's peer"
    );
}

/// Runs `ROUNDS` send / half-close / read-the-reply exchanges from `ns` to `to` and returns how
/// many succeeded (every byte checked); with `polled` both ends read as event loops do.
fn half_close_rounds(node: &Node, ns: &Netns, cg: Cg, to: &str, polled: bool) -> usize {
    let mut args = vec![
        "halfclose",
        "--to",
        to,
        "--send",
        "4096",
        "--recv",
        "65536",
        "--io-timeout-ms",
        "5000",
    ];
    if polled {
        args.extend(["--poll-reads", "true"]);
    }
    (0..ROUNDS)
        .filter(|_| start_client(node, ns, cg, &args).succeeded())
        .count()
}

/// One case of a client in `from` reaching a server in `srv_ns`.
struct Case<'a> {
    what: &'a str,
    srv_ns: &'a Netns,
    listen: String,
    from: &'a Netns,
    to: String,
    /// The IPv4 connection both sockets must be keyed as: client address, server address
    /// and port.
    client: Ipv4Addr,
    server: (Ipv4Addr, u16),
}

/// The cases of a v4-mapped end: `[::]` servers with AF_INET clients and AF_INET6 clients to
/// AF_INET servers, pod to pod and on loopback inside pod `a`.
fn mapped_cases<'a>(a: &'a Pod, b: &'a Pod) -> Vec<Case<'a>> {
    let case = |what, srv_ns, listen: String, from, to: String, client, server| Case {
        what,
        srv_ns,
        listen,
        from,
        to,
        client,
        server,
    };
    vec![
        case(
            "AF_INET client in a -> [::] server in b",
            &b.ns,
            "[::]:9000".into(),
            &a.ns,
            addr(b.ip, 9000),
            a.ip,
            (b.ip, 9000),
        ),
        case(
            "AF_INET6 client in a -> ::ffff: of an AF_INET server in b",
            &b.ns,
            addr(b.ip, 9001),
            &a.ns,
            mapped(b.ip, 9001),
            a.ip,
            (b.ip, 9001),
        ),
        case(
            "AF_INET6 client in a -> ::ffff: of a [::] server in b",
            &b.ns,
            "[::]:9002".into(),
            &a.ns,
            mapped(b.ip, 9002),
            a.ip,
            (b.ip, 9002),
        ),
        case(
            "loopback in a: 127.0.0.1 client -> [::] server",
            &a.ns,
            "[::]:9003".into(),
            &a.ns,
            addr(LOOPBACK, 9003),
            LOOPBACK,
            (LOOPBACK, 9003),
        ),
        case(
            "loopback in a: ::ffff:127.0.0.1 client -> 127.0.0.1 server",
            &a.ns,
            addr(LOOPBACK, 9004),
            &a.ns,
            mapped(LOOPBACK, 9004),
            LOOPBACK,
            (LOOPBACK, 9004),
        ),
    ]
}

/// Test that a connection with a v4-mapped end — an AF_INET client to a server listening on
/// `[::]` (`IPV6_V6ONLY=0`), an AF_INET6 client to `::ffff:` of an AF_INET or `[::]` server,
/// pod to pod and on loopback inside a pod — has both of its sockets in the sockhash under
/// their IPv4 keys while open, carries echoes intact, and that 20 of 20 send / half-close /
/// read-the-reply exchanges read as event loops do succeed with the replies redirected.
#[test]
fn v4_mapped_connections_accelerated_on_both_ends() {
    let (node, pods) = node_with_pods(&["a", "b"]);
    let (a, b) = (&pods[0], &pods[1]);
    for c in mapped_cases(a, b) {
        let srv = server(&node, c.srv_ns, Cg::In, &c.listen);
        let before = Accel::read(&node);
        let keys = keys_while_open(&node, c.from, Cg::In, &c.to);
        assert_both_ends(c.what, &keys, c.client, c.server);
        let ok = half_close_rounds(&node, c.from, Cg::In, &c.to, true);
        let s = srv.report();
        let d = Accel::read(&node).since(before);
        println!("{}: {ok}/{ROUNDS} half-close rounds, {d:?}", c.what);
        assert_eq!(ok, ROUNDS, "{}: half-close rounds failed", c.what);
        assert_eq!(num(&s, "connections"), 1 + ROUNDS as u64, "{}", c.what);
        assert_eq!(d.sockets, 2 * (1 + ROUNDS as u64), "{}: {d:?}", c.what);
        assert!(
            d.bytes >= (ROUNDS * 65536) as u64,
            "{}: replies not redirected: {d:?}",
            c.what
        );
        assert_sockhash_drains(&node);
    }
}

/// Test the same v4-mapped connections with blocking reads, as the issue measured them (0 of
/// 20 against a `[::]` server, 19 of 20 against an AF_INET one): every exchange should
/// succeed, as on plain TCP.
#[test]
#[ignore = "known kernel bug (see sockmap.rs half_close_reply_arrives_to_eof): tcp_bpf_recvmsg \
            returns EAGAIN to a blocking read woken without psock data; v4-mapped sockets now \
            fare as AF_INET ones do"]
fn v4_mapped_half_close_with_blocking_reads() {
    let (node, pods) = node_with_pods(&["a", "b"]);
    let (a, b) = (&pods[0], &pods[1]);
    let mut failed = Vec::new();
    for c in mapped_cases(a, b) {
        let srv = server(&node, c.srv_ns, Cg::In, &c.listen);
        let ok = half_close_rounds(&node, c.from, Cg::In, &c.to, false);
        println!("{}: {ok}/{ROUNDS} with blocking reads", c.what);
        drop(srv);
        if ok != ROUNDS {
            failed.push(format!("{}: {ok}/{ROUNDS}", c.what));
        }
    }
    assert!(failed.is_empty(), "blocking half-close failed: {failed:?}");
}

/// Test that pure IPv6 connections (`::1` inside a pod, to a `[::]` server) are accelerated on
/// neither end, carry echoes intact, and that 20 of 20 half-close exchanges with blocking reads
/// succeed (plain TCP).
#[test]
fn pure_ipv6_loopback_accelerated_on_neither_end() {
    let (node, pods) = node_with_pods(&["a"]);
    let a = &pods[0];
    let srv = server(&node, &a.ns, Cg::In, "[::]:9000");
    let before = Accel::read(&node);
    let keys = keys_while_open(&node, &a.ns, Cg::In, "[::1]:9000");
    assert!(keys.is_empty(), "::1 sockets in the sockhash: {keys:?}");
    let ok = half_close_rounds(&node, &a.ns, Cg::In, "[::1]:9000", false);
    srv.report();
    let d = Accel::read(&node).since(before);
    println!("::1: {ok}/{ROUNDS} half-close rounds, {d:?}");
    assert_eq!(ok, ROUNDS);
    assert_eq!(d, Accel::default(), "::1 accelerated: {d:?}");
}

/// Test that when one end of a connection cannot join the sockhash the other is not left in
/// it: a client outside the cgroup (pod to pod to a `[::]` server, and on loopback), and a
/// peer pod whose namespace is not registered as a Sluice pod's (its sockets never qualify,
/// while its address is still a pod's, so the other end qualifies on its own) as server and
/// as client. Nothing is redirected, and 20 of 20 half-close exchanges with blocking reads
/// succeed, as on plain TCP.
#[test]
fn one_end_cannot_join_leaves_neither_end_accelerated() {
    let (node, pods) = node_with_pods(&["a", "b", "c"]);
    let (a, b, c) = (&pods[0], &pods[1], &pods[2]);
    // c's namespace leaves SL_PODNS_V1 (the agent only updates entries that exist).
    let cookie = node
        .endpoints()
        .into_iter()
        .find(|e| e.name == c.name)
        .map(|e| e.netns_cookie)
        .expect("endpoint of pod c");
    datapath_user::PodNamespaces::open(&node.bpffs())
        .and_then(|mut ns| ns.remove(cookie))
        .expect("unregister c's namespace");
    let cases = [
        (
            "client outside the cgroup in a -> [::] server in b",
            (&b.ns, "[::]:9000".to_string(), Cg::In),
            (&a.ns, Cg::Out, addr(b.ip, 9000)),
        ),
        (
            "loopback in a, client outside the cgroup",
            (&a.ns, "127.0.0.1:9001".into(), Cg::In),
            (&a.ns, Cg::Out, addr(LOOPBACK, 9001)),
        ),
        (
            "a -> server in unregistered c (the accepting end refuses)",
            (&c.ns, addr(c.ip, 9002), Cg::In),
            (&a.ns, Cg::In, addr(c.ip, 9002)),
        ),
        (
            "client in unregistered c -> [::] server in a (the opening end refuses)",
            (&a.ns, "[::]:9003".into(), Cg::In),
            (&c.ns, Cg::In, addr(a.ip, 9003)),
        ),
    ];
    for (what, (srv_ns, listen, srv_cg), (from, cg, to)) in cases {
        let srv = server(&node, srv_ns, srv_cg, &listen);
        let before = Accel::read(&node);
        let keys = keys_while_open(&node, from, cg, &to);
        assert!(keys.is_empty(), "{what}: one end accelerated: {keys:?}");
        let ok = half_close_rounds(&node, from, cg, &to, false);
        srv.report();
        let d = Accel::read(&node).since(before);
        println!("{what}: {ok}/{ROUNDS} half-close rounds, {d:?}");
        assert_eq!(ok, ROUNDS, "{what}: blocking half-close failed");
        assert_eq!(d, Accel::default(), "{what}: accelerated: {d:?}");
        assert_sockhash_drains(&node);
    }
}
