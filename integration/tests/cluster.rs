//! A simulated cluster (test_support::cluster): several nodes on one underlay bridge, each
//! with its own agent, bpffs, cgroup and CNI dirs, sharing one manifests directory. Issue 18:
//! pod ↔ pod across nodes in both routing modes (the server sees the client pod's own
//! address; the underlay carries VXLAN on UDP 8472 in tunnel mode and bare pod addresses in
//! native mode), pod → outside masqueraded to its own node, Services and NetworkPolicy across
//! nodes, nodes added and removed, an agent crash under a stream, and 4 × 25 pods.
//!
//! Expected values come from the addresses the fixture assigns (node N: 192.0.2.(10+N), pods
//! in 10.244.N.0/24) and from Kubernetes semantics. Waiting for the cluster to converge is
//! bounded by [`CONVERGE`], a guard against hanging: latencies are printed, not asserted.

#[path = "cluster/traffic.rs"]
mod traffic;

use serde_json::Value;
use std::{net::Ipv4Addr, time::Duration};

use test_support::cluster::{
    in_pod_cidr, node_ip, pod_cidr, poll_until, Capture, Cluster, ClusterOptions, ClusterPod,
    Routing, OUTSIDE_IP, WORLD_IP,
};
use traffic::{eventually, pod_cmd, serve_tcp, serve_udp, tcp, tcp_with, tcp_within, udp, Via};

/// The longest the tests wait for the cluster to converge (the issue asks for 2 s).
const CONVERGE: Duration = Duration::from_secs(30);

/// How long a connection that must fail (refused, or dropped by policy) is given: long
/// enough for a SYN to be resent once, so a lost packet is not taken for a refusal.
const DENIED_WAIT: Duration = Duration::from_millis(1500);

/// Generates, for each generic test `name(routing)`, `tunnel::name` and `native::name`.
macro_rules! both_modes {
    ($($(#[doc = $doc:expr])* fn $name:ident;)*) => {
        mod tunnel {
            $($(#[doc = $doc])* #[test] fn $name() { super::$name(super::Routing::Tunnel) })*
        }
        mod native {
            $($(#[doc = $doc])* #[test] fn $name() { super::$name(super::Routing::Native) })*
        }
    };
}

both_modes! {
    /// Test that pods on different nodes reach each other by ICMP, TCP and UDP, each server
    /// seeing the client pod's own address (never masqueraded), and that the underlay carries
    /// VXLAN (UDP 8472, node to node) in tunnel mode and bare pod addresses in native mode.
    fn pod_to_pod_across_nodes;
    /// Test that a multi-MiB TCP transfer between pods of two nodes arrives intact both ways
    /// (the pod MTU leaves room for the tunnel overhead).
    fn multi_mib_transfer_intact;
    /// Test that a pod's traffic to the outside is masqueraded to its own node's address.
    fn pod_to_outside_masqueraded_to_own_node;
    /// Test that a ClusterIP whose backends are all on other nodes is reached from a pod, at
    /// the socket (a container process) and in TC (a process outside the cgroup), the backend
    /// seeing the client pod's address.
    fn clusterip_backends_on_other_nodes;
    /// Test that a NodePort reached from outside on a node without the backend is served by
    /// the remote backend with `externalTrafficPolicy: Cluster` (the backend sees the node's
    /// address), and with `Local` only by the node that has the endpoint (the client's address
    /// kept).
    fn nodeport_from_outside_remote_backend;
    /// Test that a NetworkPolicy admits a client pod on another node and refuses an intruder
    /// on a third node, by pod address and by ClusterIP, and that an egress policy on the
    /// client's node refuses a pod the policy does not allow.
    fn network_policy_across_nodes;
    /// Test that a node added later is reachable from the others and reaches them (the time
    /// is reported; the issue asks for 2 s).
    fn node_added_later_reachable;
    /// Test that a Node changed in place takes effect on the other nodes without a restart: a
    /// new InternalIP carries its pods' traffic (the old address is then removed from the node,
    /// so nothing else could), and a new pod CIDR replaces the old one's route.
    fn node_changed_rerouted;
    /// Test that a removed node leaves no route to its pod CIDR or its address in the other
    /// nodes, and that the remaining nodes still reach each other.
    fn node_removed_leaves_no_route;
    /// Test that `kill -9` of an agent during a cross-node TCP stream, and its restart, lose
    /// nothing: the stream arrives whole.
    fn agent_kill_during_stream_loses_nothing;
    /// Test that 4 nodes × 25 pods each reach one pod on every other node.
    fn four_nodes_25_pods_each_reach_every_node;
}

fn cluster(routing: Routing, nodes: usize) -> Cluster {
    Cluster::new(ClusterOptions {
        routing,
        nodes,
        ..ClusterOptions::default()
    })
}

/// Waits until `from` pings `to` (the cluster has converged for this pair).
fn wait_ping(c: &Cluster, from: &ClusterPod, to: Ipv4Addr) {
    let took = poll_until(CONVERGE, || from.ping(to));
    match took {
        Some(t) => println!("{} (node{}) → {to}: ping after {t:?}", from.name, from.node),
        None => panic!(
            "{} (node{}) cannot ping {to} within {CONVERGE:?}\n{}",
            from.name,
            from.node,
            c.agent_logs()
        ),
    }
}

/// Whether TCP from `pod` to `host:port` fails (within [`DENIED_WAIT`]).
fn tcp_denied(pod: &ClusterPod, via: Via, host: impl ToString, port: u16) -> bool {
    tcp_within(
        pod_cmd(pod, via),
        &host.to_string(),
        port,
        1000,
        0,
        DENIED_WAIT,
    )
    .is_err()
}

fn pod_to_pod_across_nodes(routing: Routing) {
    let c = cluster(routing, 2);
    let a = c.add_pod(1, "a", &[("app", "a")]);
    let b = c.add_pod(2, "b", &[("app", "b")]);
    assert!(
        in_pod_cidr(a.ip, 1) && in_pod_cidr(b.ip, 2),
        "{} {}",
        a.ip,
        b.ip
    );
    let _ta = serve_tcp(&a.ns, 8080, "a");
    let _tb = serve_tcp(&b.ns, 8080, "b");
    let _ua = serve_udp(&a.ns, 5353, "a");
    let _ub = serve_udp(&b.ns, 5353, "b");
    wait_ping(&c, &a, b.ip);
    wait_ping(&c, &b, a.ip);

    // Node1's port on the bridge sees all it exchanges (br0 itself only sees what the bridge
    // delivers locally, not what it forwards between ports).
    let mut cap = Capture::start(&c.underlay, "n1", "ip");
    for (from, to) in [(&a, &b), (&b, &a)] {
        assert!(from.ping(to.ip), "{} → {} ping", from.name, to.name);
        let t = tcp(from, Via::Socket, to.ip, 8080)
            .unwrap_or_else(|e| panic!("{} → {} TCP: {e}\n{}", from.name, to.name, c.agent_logs()));
        assert_eq!(
            (t.server.as_str(), t.peer),
            (to.name.as_str(), from.ip),
            "TCP {t:?}"
        );
        assert!(t.intact, "{t:?}");
        let u = udp(from, to.ip, 5353)
            .unwrap_or_else(|e| panic!("{} → {} UDP: {e}\n{}", from.name, to.name, c.agent_logs()));
        assert_eq!(u, (to.name.clone(), from.ip), "UDP");
    }
    let vxlan = cap.packets(&format!(
        "udp port 8472 and host {} and host {}",
        node_ip(1),
        node_ip(2)
    ));
    let bare = cap.packets(&format!("host {} and host {}", a.ip, b.ip));
    let all = cap.packets("");
    match routing {
        Routing::Tunnel => {
            assert!(!vxlan.is_empty(), "no VXLAN between the nodes: {all:#?}");
            assert!(
                bare.is_empty(),
                "pod addresses bare on the underlay: {bare:#?}"
            );
        }
        Routing::Native => {
            assert!(
                !bare.is_empty(),
                "no bare pod traffic on the underlay: {all:#?}"
            );
            assert!(
                cap.packets("udp port 8472").is_empty(),
                "VXLAN in native mode: {all:#?}"
            );
        }
    }
}

fn multi_mib_transfer_intact(routing: Routing) {
    const LEN: u64 = 8 << 20;
    let c = cluster(routing, 2);
    let a = c.add_pod(1, "a", &[]);
    let b = c.add_pod(2, "b", &[]);
    let _ta = serve_tcp(&a.ns, 8080, "a");
    let _tb = serve_tcp(&b.ns, 8080, "b");
    wait_ping(&c, &a, b.ip);
    // The underlay's MTU is 1500; VXLAN over IPv4 adds 50 bytes (RFC 7348: outer IPv4 20,
    // UDP 8, VXLAN 8, inner Ethernet 14), so a tunnelled pod's MTU is at most 1450.
    let max_mtu = match routing {
        Routing::Tunnel => 1450,
        Routing::Native => 1500,
    };
    for p in [&a, &b] {
        // `ip link`, not /sys: nsenter --net keeps the test's sysfs, another namespace's.
        let link = p.sh("ip -o link show eth0");
        let mtu: u32 = link
            .split_whitespace()
            .skip_while(|w| *w != "mtu")
            .nth(1)
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("no mtu in {link}"));
        assert!(mtu <= max_mtu, "{}'s MTU {mtu} > {max_mtu}", p.name);
    }
    for (from, to) in [(&a, &b), (&b, &a)] {
        let t = tcp_with(from.command("python3"), &to.ip.to_string(), 8080, LEN, 0)
            .unwrap_or_else(|e| panic!("{} → {}: {e}\n{}", from.name, to.name, c.agent_logs()));
        assert_eq!(t.len, LEN, "{t:?}");
        assert!(t.intact, "{t:?}");
        assert_eq!(t.peer, from.ip);
    }
}

fn pod_to_outside_masqueraded_to_own_node(routing: Routing) {
    let c = cluster(routing, 2);
    let pods = [c.add_pod(1, "a", &[]), c.add_pod(2, "b", &[])];
    let _world = serve_tcp(&c.outside, 9000, "world");
    for p in &pods {
        let mut cap = Capture::start(&c.underlay, &format!("n{}", p.node), "ip");
        let t = eventually(
            &format!("{} → world", p.name),
            CONVERGE,
            || c.agent_logs(),
            || tcp(p, Via::Socket, WORLD_IP, 9000),
        );
        assert_eq!(
            t.peer,
            node_ip(p.node),
            "{} not masqueraded to node{}",
            p.name,
            p.node
        );
        assert!(p.ping(WORLD_IP), "{} ping world", p.name);
        let world = cap.packets(&format!("host {WORLD_IP}"));
        let masqueraded = cap.packets(&format!("src {} and dst {WORLD_IP}", node_ip(p.node)));
        assert!(
            !masqueraded.is_empty(),
            "nothing from node{} to the world: {world:#?}",
            p.node
        );
        let bare = cap.packets(&format!("host {}", p.ip));
        assert!(
            bare.is_empty(),
            "{}'s own address on the underlay: {bare:#?}",
            p.name
        );
    }
}

fn clusterip_backends_on_other_nodes(routing: Routing) {
    let c = cluster(routing, 3);
    let client = c.add_pod(1, "client", &[("role", "client")]);
    let w2 = c.add_pod(2, "web2", &[("app", "web")]);
    let w3 = c.add_pod(3, "web3", &[("app", "web")]);
    let _s2 = serve_tcp(&w2.ns, 8080, "web2");
    let _s3 = serve_tcp(&w3.ns, 8080, "web3");
    c.write_manifest_text(
        "svc-web.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default, uid: svc-web}\n\
         spec:\n  clusterIP: 10.96.0.10\n  selector: {app: web}\n  ports:\n  - {port: 80, targetPort: 8080}\n",
    );
    for from in [Via::Socket, Via::Tc] {
        let mut served = std::collections::BTreeSet::new();
        for i in 0..12 {
            let t = eventually(
                &format!("{from:?} connection {i} to 10.96.0.10:80"),
                CONVERGE,
                || c.agent_logs(),
                || tcp(&client, from, "10.96.0.10", 80),
            );
            assert!(["web2", "web3"].contains(&t.server.as_str()), "{t:?}");
            assert_eq!(t.peer, client.ip, "{from:?}: backend saw {t:?}");
            served.insert(t.server);
        }
        println!("{from:?}: served by {served:?}");
    }
}

fn nodeport_from_outside_remote_backend(routing: Routing) {
    let c = cluster(routing, 2);
    let web = c.add_pod(2, "web", &[("app", "web")]);
    let _s = serve_tcp(&web.ns, 8080, "web");
    c.write_manifest_text(
        "svc-np.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: np-cluster, namespace: default, uid: svc-np1}\n\
         spec:\n  type: NodePort\n  clusterIP: 10.96.0.50\n  selector: {app: web}\n  ports:\n  - {port: 80, targetPort: 8080, nodePort: 30080}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {name: np-local, namespace: default, uid: svc-np2}\n\
         spec:\n  type: NodePort\n  externalTrafficPolicy: Local\n  clusterIP: 10.96.0.51\n  selector: {app: web}\n  ports:\n  - {port: 80, targetPort: 8080, nodePort: 30081}\n",
    );
    let outside = || c.outside.command("python3");
    // eTP Cluster: node1 has no endpoint and forwards, translating the client to itself.
    for n in [1, 2] {
        let t = eventually(
            &format!("outside → node{n}:30080"),
            CONVERGE,
            || c.agent_logs(),
            || tcp_with(outside(), &node_ip(n).to_string(), 30080, 1000, 0),
        );
        assert_eq!(t.server, "web");
        assert!(t.intact, "{t:?}");
        assert_eq!(
            t.peer,
            node_ip(n),
            "eTP Cluster via node{n}: backend saw {t:?}"
        );
    }
    // eTP Local: node2 has the endpoint and keeps the client's address; node1 serves nothing.
    let t = eventually(
        "outside → node2:30081",
        CONVERGE,
        || c.agent_logs(),
        || tcp_with(outside(), &node_ip(2).to_string(), 30081, 1000, 0),
    );
    assert_eq!(
        (t.server.as_str(), t.peer),
        ("web", OUTSIDE_IP),
        "eTP Local: {t:?}"
    );
    let r = tcp_within(
        outside(),
        &node_ip(1).to_string(),
        30081,
        1000,
        0,
        DENIED_WAIT,
    );
    assert!(
        r.is_err(),
        "eTP Local served by node1, which has no endpoint: {r:?}"
    );
}

fn network_policy_across_nodes(routing: Routing) {
    let c = cluster(routing, 3);
    let db = c.add_pod(1, "db", &[("app", "db")]);
    let client = c.add_pod(2, "client", &[("role", "client")]);
    let intruder = c.add_pod(3, "intruder", &[("role", "intruder")]);
    let _sdb = serve_tcp(&db.ns, 8080, "db");
    let _sin = serve_tcp(&intruder.ns, 8080, "intruder");
    c.write_manifest_text(
        "svc-db.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: default, uid: svc-db}\n\
         spec:\n  clusterIP: 10.96.0.40\n  selector: {app: db}\n  ports:\n  - {port: 80, targetPort: 8080}\n",
    );
    // Without policy everyone reaches everyone: what is refused later is the policy's doing.
    let logs = || c.agent_logs();
    for p in [&client, &intruder] {
        eventually(&format!("{} → db", p.name), CONVERGE, logs, || {
            tcp(p, Via::Socket, db.ip, 8080)
        });
        eventually(&format!("{} → db svc", p.name), CONVERGE, logs, || {
            tcp(p, Via::Socket, "10.96.0.40", 80)
        });
    }
    eventually("client → intruder", CONVERGE, logs, || {
        tcp(&client, Via::Socket, intruder.ip, 8080)
    });

    c.write_manifest_text(
        "netpol.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: db-from-client, namespace: default, uid: np-1}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  \
         policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {role: client}}\n    \
         ports: [{protocol: TCP, port: 8080}]\n\
         ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: client-to-db, namespace: default, uid: np-2}\nspec:\n  podSelector: {matchLabels: {role: client}}\n  \
         policyTypes: [Egress]\n  egress:\n  - to:\n    - podSelector: {matchLabels: {app: db}}\n    \
         ports: [{protocol: TCP, port: 8080}]\n",
    );
    // Ingress on node1 against a pod of node3, egress on node2 against a pod of node3.
    // A refusal takes DENIED_WAIT to be seen: report when the check that saw it began.
    let written = std::time::Instant::now();
    let mut began = written;
    let took = poll_until(CONVERGE, || {
        began = std::time::Instant::now();
        tcp_denied(&intruder, Via::Socket, db.ip, 8080)
            && tcp_denied(&client, Via::Socket, intruder.ip, 8080)
    });
    assert!(
        took.is_some(),
        "policies not enforced within {CONVERGE:?}\n{}",
        c.agent_logs()
    );
    println!(
        "policies enforced: seen by the check begun {:?} after they were written",
        began - written
    );
    for from in [Via::Socket, Via::Tc] {
        let t = tcp(&client, from, db.ip, 8080).unwrap_or_else(|e| {
            panic!("client → db by address ({from:?}): {e}\n{}", c.agent_logs())
        });
        assert_eq!(t.peer, client.ip);
        let t = tcp(&client, from, "10.96.0.40", 80).unwrap_or_else(|e| {
            panic!(
                "client → db by ClusterIP ({from:?}): {e}\n{}",
                c.agent_logs()
            )
        });
        assert_eq!((t.server.as_str(), t.peer), ("db", client.ip));
        assert!(
            tcp_denied(&intruder, from, db.ip, 8080),
            "intruder → db by address ({from:?})"
        );
        assert!(
            tcp_denied(&intruder, from, "10.96.0.40", 80),
            "intruder → db by ClusterIP ({from:?})"
        );
        assert!(
            tcp_denied(&client, from, intruder.ip, 8080),
            "client egress to intruder ({from:?})"
        );
    }

    // `policy trace` on each node says which node enforces which direction: the server's
    // node its ingress, the client's node its egress, each naming the other for the far side.
    let reasons = |t: &Value| -> Vec<String> {
        t["reasons"]
            .as_array()
            .unwrap_or_else(|| panic!("trace without reasons: {t:#}"))
            .iter()
            .map(|r| r.as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let has =
        |rs: &[String], parts: &[&str]| rs.iter().any(|r| parts.iter().all(|p| r.contains(p)));
    let on1 = trace(&c, 1, "default/client", "default/db", "8080/TCP");
    assert_eq!(on1["allowed"], true, "{on1:#}");
    let rs = reasons(&on1);
    assert!(
        has(&rs, &["Ingress of default/db", "default/db-from-client"]),
        "{on1:#}"
    );
    assert!(
        has(
            &rs,
            &["Egress of default/client", "node2", "enforced there"]
        ),
        "{on1:#}"
    );
    let on2 = trace(&c, 2, "default/client", "default/db", "8080/TCP");
    assert_eq!(on2["allowed"], true, "{on2:#}");
    let rs = reasons(&on2);
    assert!(
        has(&rs, &["Egress of default/client", "default/client-to-db"]),
        "{on2:#}"
    );
    assert!(
        has(&rs, &["Ingress of default/db", "node1", "enforced there"]),
        "{on2:#}"
    );
    let intr = trace(&c, 1, "default/intruder", "default/db", "8080/TCP");
    assert_eq!(intr["allowed"], false, "{intr:#}");
    assert!(
        has(
            &reasons(&intr),
            &[
                "Ingress of default/db",
                "isolated by",
                "default/db-from-client"
            ]
        ),
        "{intr:#}"
    );
    let egress = trace(&c, 2, "default/client", "default/intruder", "8080/TCP");
    assert_eq!(egress["allowed"], false, "{egress:#}");
    assert!(
        has(
            &reasons(&egress),
            &[
                "Egress of default/client",
                "isolated by",
                "default/client-to-db"
            ]
        ),
        "{egress:#}"
    );
}

/// `sluicectl policy trace --from FROM --to TO --port PORT -o json` on node `n`.
fn trace(c: &Cluster, n: usize, from: &str, to: &str, port: &str) -> Value {
    let out = c.node(n).sluicectl(&[
        "policy", "trace", "--from", from, "--to", to, "--port", port, "-o", "json",
    ]);
    assert!(
        out.status.success(),
        "sluicectl policy trace on node{n}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("trace JSON")
}

fn node_added_later_reachable(routing: Routing) {
    let mut c = cluster(routing, 2);
    let a = c.add_pod(1, "a", &[]);
    let b = c.add_pod(2, "b", &[]);
    wait_ping(&c, &a, b.ip);
    let n = c.add_node();
    assert_eq!(n, 3);
    let late = c.add_pod(n, "late", &[]);
    assert!(in_pod_cidr(late.ip, 3), "{}", late.ip);
    let published = c.node(n).published;
    for p in [&a, &b] {
        wait_ping(&c, p, late.ip);
        wait_ping(&c, &late, p.ip);
    }
    // Reported, not asserted (the issue asks for 2 s): this includes the new agent's start.
    println!(
        "node3 reachable both ways {:?} after its Node object was written",
        published.elapsed()
    );
}

fn node_changed_rerouted(routing: Routing) {
    let c = cluster(routing, 2);
    let a = c.add_pod(1, "a", &[]);
    let b = c.add_pod(2, "b", &[]);
    wait_ping(&c, &a, b.ip);
    wait_ping(&c, &b, a.ip);

    // Node 2 moves to another address on its uplink; its Node object says so.
    let new_ip: Ipv4Addr = "192.0.2.112".parse().expect("an address");
    c.node(2).ns.sh(&format!("ip addr add {new_ip}/24 dev up0"));
    let mut moved = Cluster::node_object(2);
    moved["status"]["addresses"][0]["address"] = Value::from(new_ip.to_string());
    c.write_manifest("node-node2.json", &moved);
    let took = poll_until(CONVERGE, || {
        peer_address(&c, 1, "node2").as_deref() == Some(&new_ip.to_string())
    });
    assert!(
        took.is_some(),
        "node1 still routes node2 at its old address\n{}",
        c.agent_logs()
    );
    println!("node1 routes node2 at {new_ip} {took:?} after its Node object changed");
    // Without its old address node 2 is reachable only at the new one.
    // The new address is promoted to primary (else deleting the primary takes the
    // secondaries of its subnet with it).
    c.node(2).ns.sh(&format!(
        "sysctl -qw net.ipv4.conf.up0.promote_secondaries=1 && ip addr del {}/24 dev up0 && \
         ip route replace default via {OUTSIDE_IP}",
        node_ip(2)
    ));
    wait_ping(&c, &a, b.ip);
    wait_ping(&c, &b, a.ip);
    if routing == Routing::Native {
        assert!(
            !c.node(1)
                .routes_mentioning(&format!("via {new_ip}"))
                .is_empty(),
            "no route via {new_ip}: {:#?}",
            c.node(1).routes()
        );
    }

    // A new pod CIDR replaces the old one's route (pods of the old one keep their addresses
    // on their node; Kubernetes drains a node before its CIDR changes).
    let mut recidred = moved.clone();
    recidred["spec"]["podCIDR"] = Value::from("10.244.22.0/24");
    recidred["spec"]["podCIDRs"] = serde_json::json!(["10.244.22.0/24"]);
    c.write_manifest("node-node2.json", &recidred);
    let took = poll_until(CONVERGE, || {
        !c.node(1).routes_mentioning("10.244.22.0/24").is_empty()
            && c.node(1).routes_mentioning(&pod_cidr(2)).is_empty()
    });
    assert!(
        took.is_some(),
        "node1's routes did not follow node2's new pod CIDR: {:#?}\n{}",
        c.node(1).routes(),
        c.agent_logs()
    );
}

/// The address node `n` routes peer `peer` at (`sluicectl status -o json`,
/// `routing.peers[].address`).
fn peer_address(c: &Cluster, n: usize, peer: &str) -> Option<String> {
    let out = c.node(n).sluicectl(&["status", "-o", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["routing"]["peers"]
        .as_array()?
        .iter()
        .find(|p| p["node"] == peer)
        .and_then(|p| p["address"].as_str().map(str::to_owned))
}

/// The peers node `n` says it routes (`sluicectl status -o json`, `routing.peers[].node`).
fn routed_peers(c: &Cluster, n: usize) -> Vec<String> {
    let out = c.node(n).sluicectl(&["status", "-o", "json"]);
    assert!(
        out.status.success(),
        "sluicectl status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status is JSON");
    v["routing"]["peers"]
        .as_array()
        .unwrap_or_else(|| panic!("no routing.peers in {v:#}"))
        .iter()
        .map(|p| p["node"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn node_removed_leaves_no_route(routing: Routing) {
    let mut c = cluster(routing, 3);
    let a = c.add_pod(1, "a", &[]);
    let b = c.add_pod(2, "b", &[]);
    let gone = c.add_pod(3, "gone", &[]);
    wait_ping(&c, &a, gone.ip);
    wait_ping(&c, &b, gone.ip);
    for n in [1, 2] {
        assert!(
            routed_peers(&c, n).contains(&"node3".to_string()),
            "node{n} does not list node3 as routed"
        );
        assert!(
            !c.node(n).routes_mentioning("10.244.3.0/24").is_empty(),
            "node{n} has no route to node3's pod CIDR: {:#?}",
            c.node(n).routes()
        );
    }
    if routing == Routing::Native {
        // The issue: each peer's pod CIDRs are routed via its InternalIP.
        for n in [1, 2] {
            let r = c.node(n).routes_mentioning("10.244.3.0/24");
            assert!(
                r.iter().any(|r| r.contains(&format!("via {}", node_ip(3)))),
                "node{n} has no route to node3's pod CIDR via its address: {r:?}"
            );
        }
    }
    c.forget_pod(&gone);
    c.remove_node(3);
    let stale = |c: &Cluster| -> Vec<String> {
        [1, 2]
            .iter()
            .flat_map(|&n| {
                let node = c.node(n);
                let mut r = node.routes_mentioning("10.244.3.");
                r.extend(node.routes_mentioning(&format!("{} ", node_ip(3))));
                r.into_iter().map(move |r| format!("node{n}: {r}"))
            })
            .collect()
    };
    let took = poll_until(CONVERGE, || stale(&c).is_empty());
    assert!(
        took.is_some(),
        "routes left after node3 was removed: {:#?}\n{}",
        stale(&c),
        c.agent_logs()
    );
    println!("node3's routes gone after {took:?}");
    for n in [1, 2] {
        let peers = routed_peers(&c, n);
        assert!(
            !peers.contains(&"node3".to_string()),
            "node{n} still routes node3: {peers:?}"
        );
    }
    wait_ping(&c, &a, b.ip);
    wait_ping(&c, &b, a.ip);
}

fn agent_kill_during_stream_loses_nothing(routing: Routing) {
    const LEN: u64 = 16 << 20;
    let mut c = cluster(routing, 2);
    let a = c.add_pod(1, "a", &[]);
    let b = c.add_pod(2, "b", &[]);
    let _s = serve_tcp(&b.ns, 8080, "b");
    eventually(
        "a → b",
        CONVERGE,
        || c.agent_logs(),
        || tcp(&a, Via::Socket, b.ip, 8080),
    );
    // 256 chunks of 64 KiB, 10 ms apart: the stream runs for seconds around the crash.
    let cmd = a.command("python3");
    let dst = b.ip.to_string();
    let stream = std::thread::spawn(move || tcp_with(cmd, &dst, 8080, LEN, 10));
    std::thread::sleep(Duration::from_millis(500));
    c.kill_agent(1);
    std::thread::sleep(Duration::from_millis(500));
    c.kill_agent(2);
    // Paced to take seconds, the stream must still be running: else the crash proved nothing.
    assert!(
        !stream.is_finished(),
        "the stream ended before the agents were killed"
    );
    std::thread::sleep(Duration::from_millis(500));
    c.start_agent(1);
    c.start_agent(2);
    let t = stream
        .join()
        .expect("stream thread")
        .unwrap_or_else(|e| panic!("stream broken by the crash: {e}\n{}", c.agent_logs()));
    assert_eq!(t.len, LEN, "{t:?}");
    assert!(t.intact, "{t:?}");
    assert_eq!(t.peer, a.ip);
    // The restarted agents still carry new connections.
    tcp(&a, Via::Socket, b.ip, 8080).unwrap_or_else(|e| panic!("after restart: {e}"));
}

fn four_nodes_25_pods_each_reach_every_node(routing: Routing) {
    const NODES: usize = 4;
    const PER_NODE: usize = 25;
    let c = cluster(routing, NODES);
    // Nodes make their pods in parallel, as kubelets do.
    let pods: Vec<Vec<ClusterPod>> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=NODES)
            .map(|n| {
                let c = &c;
                s.spawn(move || {
                    (0..PER_NODE)
                        .map(|i| c.add_pod(n, &format!("p{n}-{i}"), &[("node", &format!("n{n}"))]))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("add pods"))
            .collect()
    });
    for (n, ps) in pods.iter().enumerate() {
        for p in ps {
            assert!(in_pod_cidr(p.ip, n + 1), "{} has {}", p.name, p.ip);
        }
    }
    let targets: Vec<(usize, Ipv4Addr)> = pods.iter().map(|ps| (ps[0].node, ps[0].ip)).collect();
    // Converged when the first pod of each node reaches every other node's target.
    for ps in &pods {
        for &(n, t) in &targets {
            if n != ps[0].node {
                wait_ping(&c, &ps[0], t);
            }
        }
    }
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|ps| {
                let targets = &targets;
                s.spawn(move || {
                    let mut bad = Vec::new();
                    for p in ps {
                        for &(n, t) in targets {
                            // One retry: a single lost echo on a loaded machine is not a route.
                            if n != p.node && !(p.ping(t) || p.ping(t)) {
                                bad.push(format!("{} ({}) → node{n} {t}", p.name, p.ip));
                            }
                        }
                    }
                    bad
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("pings"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "unreachable: {failures:#?}\n{}",
        c.agent_logs()
    );
}

/// Test that the fixture builds a cluster whose nodes each run their own agent and give pods
/// addresses from their own Node's pod CIDR, and that a pod reaches a pod of its own node.
#[test]
fn cluster_fixture_pods_get_their_nodes_cidr() {
    let c = cluster(Routing::Tunnel, 2);
    let a = c.add_pod(1, "a", &[("app", "a")]);
    let b = c.add_pod(1, "b", &[("app", "b")]);
    let d = c.add_pod(2, "d", &[("app", "d")]);
    assert!(in_pod_cidr(a.ip, 1), "{}", a.ip);
    assert!(in_pod_cidr(b.ip, 1), "{}", b.ip);
    assert!(in_pod_cidr(d.ip, 2), "{}", d.ip);
    assert!(a.ping(b.ip), "same-node ping\n{}", c.agent_logs());
    c.del_pod(&b);
}
