//! The cross-node datapath end to end, one smoke test per routing mode on two simulated nodes
//! (test_support::cluster): a pod of node 1 pings and reaches by TCP a pod of node 2, the
//! server seeing the client pod's own address, and `sluicectl status` names the peer routed.
//! The full list of issue 18's cluster tests is in `cluster.rs`.

use std::time::Duration;

use test_support::cluster::{poll_until, Cluster, ClusterOptions, Routing};

/// A guard against hanging while the cluster converges (not a timed assertion).
const CONVERGE: Duration = Duration::from_secs(30);

fn smoke(routing: Routing) {
    let c = Cluster::new(ClusterOptions {
        routing,
        nodes: 2,
        ..ClusterOptions::default()
    });
    let a = c.add_pod(1, "a", &[]);
    let b = c.add_pod(2, "b", &[]);
    let diag = || {
        let n1 = c.node(1);
        format!(
            "node1 routes:\n{}\nlinks:\n{}\nstatus:\n{}\nnode2 status:\n{}\n{}",
            n1.routes().join("\n"),
            n1.ns.sh("ip -d link show"),
            String::from_utf8_lossy(&n1.sluicectl(&["status"]).stdout),
            String::from_utf8_lossy(&c.node(2).sluicectl(&["status"]).stdout),
            c.agent_logs()
        )
    };
    if poll_until(CONVERGE, || a.ping(b.ip)).is_none() {
        let mut cap = test_support::cluster::Capture::start(&c.underlay, "br0", "");
        let mut cap2 = test_support::cluster::Capture::start(&c.node(2).ns, "sluice_vxlan", "");
        a.ping(b.ip);
        panic!(
            "a cannot ping b at {}\nunderlay: {:?}\nnode2 vxlan: {:?}\n{}",
            b.ip,
            cap.packets(""),
            cap2.packets(""),
            diag()
        );
    }
    assert!(b.ping(a.ip), "b → a\n{}", diag());
    // The server answers with the address the client connected from.
    // Bound before the client starts (a socket stays in the namespace it was made in).
    let l =
        b.ns.run(|| std::net::TcpListener::bind("0.0.0.0:7000").expect("listen"));
    let server = std::thread::spawn(move || {
        let (mut s, peer) = l.accept().expect("accept");
        std::io::Write::write_all(&mut s, peer.ip().to_string().as_bytes()).expect("answer");
    });
    let to = std::net::SocketAddr::from((b.ip, 7000));
    let seen = a.ns.run(move || {
        let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out).ok()?;
        Some(out)
    });
    assert_eq!(
        seen,
        Some(a.ip.to_string()),
        "TCP a → b: the server sees the client pod\n{}",
        diag()
    );
    server.join().expect("server");
    let status = String::from_utf8_lossy(&c.node(1).sluicectl(&["status", "-o", "json"]).stdout)
        .into_owned();
    let v: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    let peers = &v["routing"]["peers"];
    assert_eq!(peers[0]["node"], "node2", "{status}");
    assert_eq!(peers[0]["podCidrs"][0], "10.244.2.0/24", "{status}");
}

/// Test that in tunnel mode a pod reaches another node's pod by ICMP and TCP, keeping its
/// address, and that status lists the peer.
#[test]
fn xnode_smoke_tunnel() {
    smoke(Routing::Tunnel);
}

/// Test that in native mode a pod reaches another node's pod by ICMP and TCP, keeping its
/// address, and that status lists the peer.
#[test]
fn xnode_smoke_native() {
    smoke(Routing::Native);
}

/// Test that `sluice-agent --uninstall` on a tunnel-mode node removes the tunnel device and
/// every route of Sluice's protocol (83), and leaves the node's other routes.
#[test]
fn uninstall_removes_tunnel_device_and_routes() {
    let mut c = Cluster::new(ClusterOptions {
        routing: Routing::Tunnel,
        nodes: 2,
        ..ClusterOptions::default()
    });
    let routed = poll_until(CONVERGE, || {
        !c.node(1).routes_mentioning("10.244.2.0/24").is_empty()
    });
    assert!(
        routed.is_some(),
        "no route to node2's pods\n{}",
        c.agent_logs()
    );
    c.node_mut(1).stop_agent(false);
    let n = c.node(1);
    let out =
        n.ns.command(test_support::bin("sluice-agent"))
            .args(["--uninstall", "--uplink", "up0"])
            .arg("--bpffs")
            .arg(n.bpffs())
            .arg("--cni-conf-dir")
            .arg(n.path("conf"))
            .arg("--cni-bin-dir")
            .arg(n.path("bin"))
            .output()
            .expect("run sluice-agent --uninstall");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let links = n.ns.sh("ip -o link show");
    assert!(
        !links.contains("sluice_vxlan"),
        "tunnel device left: {links}"
    );
    let ours = n.ns.sh("ip -4 route show proto 83");
    assert!(ours.trim().is_empty(), "Sluice routes left: {ours}");
    assert!(
        !n.routes_mentioning("default via").is_empty(),
        "the node's own routes were touched: {:?}",
        n.routes()
    );
}

/// Test that in tunnel mode a packet too large for the tunnel (a pod whose MTU was raised to
/// the uplink's) is not silently dropped: the sender gets ICMP "fragmentation needed" with
/// the tunnel's MTU (1500 − 50), and a packet that fits still crosses (RFC 1191).
#[test]
fn too_large_for_tunnel_gets_fragmentation_needed() {
    let c = Cluster::new(ClusterOptions {
        routing: Routing::Tunnel,
        nodes: 2,
        ..ClusterOptions::default()
    });
    let a = c.add_pod(1, "a", &[]);
    let b = c.add_pod(2, "b", &[]);
    assert!(
        poll_until(CONVERGE, || a.ping(b.ip)).is_some(),
        "a → b\n{}",
        c.agent_logs()
    );
    // Raise the MTU of a's link on both ends, as a pod with a wrong MTU would have it.
    let host_veth = a.result["interfaces"]
        .as_array()
        .and_then(|ifs| ifs.iter().find(|i| i.get("sandbox").is_none()))
        .and_then(|i| i["name"].as_str())
        .expect("host veth in the CNI result")
        .to_owned();
    c.node(1)
        .ns
        .sh(&format!("ip link set {host_veth} mtu 1500"));
    a.sh("ip link set eth0 mtu 1500");
    // 1422 bytes of ICMP data + 8 + 20 = 1450: fits. One more byte does not.
    assert!(
        a.ns.sh_output(&format!("ping -c1 -W2 -M do -s 1422 {}", b.ip))
            .status
            .success(),
        "a packet of exactly the tunnel MTU must cross"
    );
    let out =
        a.ns.sh_output(&format!("ping -c1 -W2 -M do -s 1423 {}", b.ip));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "too large a packet crossed: {text}");
    assert!(
        text.contains("mtu = 1450") || text.contains("mtu=1450"),
        "no fragmentation needed (mtu 1450) for the sender: {text}"
    );
}

/// `sluicectl status -o json` of node `i`.
fn status_json(c: &Cluster, i: usize) -> serde_json::Value {
    let out = c.node(i).sluicectl(&["status", "-o", "json"]);
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// Whether node `i`'s status lists Node `name` as not routed.
fn not_routed(c: &Cluster, i: usize, name: &str) -> bool {
    status_json(c, i)["routing"]["notRouted"]
        .as_array()
        .is_some_and(|l| l.iter().any(|n| n["node"] == name))
}

/// Test that a Node without an InternalIP is not routed, is listed in `sluicectl status`
/// with a reason, and is logged once when it appears, not again at later cluster changes.
#[test]
fn node_without_address_listed_and_logged_once() {
    let c = Cluster::new(ClusterOptions {
        routing: Routing::Tunnel,
        nodes: 1,
        ..ClusterOptions::default()
    });
    let node = |name: &str, cidr: &str| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "uid": format!("uid-{name}")},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}
        })
    };
    c.write_manifest("node-bad1.json", &node("bad1", "10.244.9.0/24"));
    let seen = poll_until(CONVERGE, || not_routed(&c, 1, "bad1"));
    assert!(seen.is_some(), "bad1 not listed\n{}", c.agent_logs());
    // A later change the agent is seen to have taken in.
    c.write_manifest("node-bad2.json", &node("bad2", "10.244.8.0/24"));
    let seen = poll_until(CONVERGE, || not_routed(&c, 1, "bad2"));
    assert!(seen.is_some(), "bad2 not listed\n{}", c.agent_logs());
    let log = c.node(1).agent_log();
    let lines = log
        .lines()
        .filter(|l| l.contains("node not routed") && l.contains("bad1"))
        .count();
    assert_eq!(lines, 1, "bad1 logged {lines} times:\n{log}");
    assert!(
        c.node(1).routes_mentioning("10.244.9.0").is_empty(),
        "a route to a Node without address"
    );
}

/// Test that restarting the agents of a tunnel-mode cluster in native mode removes the
/// tunnel device, replaces Sluice's route by one via the peer's InternalIP, and keeps pods
/// reaching each other.
#[test]
fn switch_tunnel_to_native_replaces_device_and_routes() {
    let mut c = Cluster::new(ClusterOptions {
        routing: Routing::Tunnel,
        nodes: 2,
        ..ClusterOptions::default()
    });
    let a = c.add_pod(1, "a", &[]);
    let b = c.add_pod(2, "b", &[]);
    assert!(
        poll_until(CONVERGE, || a.ping(b.ip)).is_some(),
        "tunnel\n{}",
        c.agent_logs()
    );
    for i in [1, 2] {
        c.node_mut(i).stop_agent(false);
    }
    c.opts.routing = Routing::Native;
    for i in [1, 2] {
        c.start_agent(i);
    }
    let n = c.node(1);
    let links = n.ns.sh("ip -o link show");
    assert!(
        !links.contains("sluice_vxlan"),
        "tunnel device left: {links}"
    );
    let want = "10.244.2.0/24 via 192.0.2.12 dev up0 proto 83";
    let routed = poll_until(CONVERGE, || n.routes().iter().any(|r| r.trim() == want));
    assert!(routed.is_some(), "{:?}\n{}", n.routes(), c.agent_logs());
    assert!(
        poll_until(CONVERGE, || a.ping(b.ip)).is_some(),
        "native after the switch\n{}",
        c.agent_logs()
    );
}
