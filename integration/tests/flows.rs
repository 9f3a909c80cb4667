//! Flow state with a lifetime, end to end: a node in namespaces, the real agent with short flow
//! timeouts (`--flow-timeouts`, `--flow-gc-interval`), real TCP and UDP from pods.
//!
//! Expected behaviour comes from conntrack semantics (RFC 9293's connection end by FIN both
//! ways or RST; idle UDP flows end), not from Sluice: a masquerade port whose connection closed
//! or whose UDP flow went idle is free again; Service translation state of a closed connection
//! never applies to a later, different connection on the same ports.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use test_support::{
    bin,
    node::{NODE_IP, OUTSIDE_IP, WORLD_IP},
    Netns, Node, NodeOptions, Pod,
};

/// A client in a pod's network namespace, outside the agent's cgroup (so Services go through
/// TC): `n` TCP connections or UDP exchanges to `ip:port`, from source port `sport` (0: any),
/// each reading the server's first line (UDP sockets are connected, so a reply from another
/// address than the one dialled is not taken). Prints one line of `ok:<answer>` / `err:<kind>`,
/// then, with `hold`, waits for a line on stdin before closing every connection cleanly
/// (shutdown, read to EOF, close: FIN both ways), and prints `closed`.
const CLIENT: &str = r#"
import socket, sys
mode, ip, port, n, sport, hold = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "hold"
socks, out = [], []
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if mode == "tcp" else socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(3)
    try:
        if sport:
            s.bind(("0.0.0.0", sport))
        # Connected UDP too: the socket takes replies only from the address it dialled.
        # "udpto": unconnected, one sendto.
        if mode == "udpto":
            s.sendto(b"x", (ip, port))
        else:
            s.connect((ip, port))
        if mode == "udp":
            s.send(b"x")
        r = s.recv(200)
        out.append("ok:" + r.decode().strip().replace(" ", "@"))
        socks.append(s)
    except Exception as e:
        out.append("err:" + type(e).__name__)
        s.close()
print(" ".join(out), flush=True)
if hold:
    sys.stdin.readline()
for s in socks:
    if mode == "tcp":
        s.shutdown(socket.SHUT_WR)
        try:
            while s.recv(200):
                pass
        except Exception:
            pass
    s.close()
print("closed", flush=True)
"#;

const PYTHON: &str = "/usr/bin/python3";

/// A client started with `hold`: its results, and the process waiting to close.
struct Held {
    child: Child,
    /// The client's stdout, read line by line (one reader: it may buffer both lines at once).
    out: BufReader<ChildStdout>,
    results: Vec<String>,
}

impl Held {
    /// Closes every connection (FIN both ways) and waits for the client to finish.
    fn close(mut self) {
        let mut stdin = self.child.stdin.take().expect("client stdin");
        // A client run without `hold` may be gone already.
        let _ = stdin.write_all(b"\n");
        drop(stdin);
        let mut out = String::new();
        self.out.read_line(&mut out).expect("client output");
        assert_eq!(out.trim(), "closed");
        let _ = self.child.wait();
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client(ns: &Netns, mode: &str, to: (&str, u16), n: usize, sport: u16, hold: bool) -> Held {
    spawn_client(ns.command(PYTHON), mode, to, n, sport, hold)
}

fn spawn_client(
    mut cmd: Command,
    mode: &str,
    to: (&str, u16),
    n: usize,
    sport: u16,
    hold: bool,
) -> Held {
    let mut child = cmd
        .args(["-c", CLIENT, mode, to.0, &to.1.to_string(), &n.to_string()])
        .args([sport.to_string().as_str(), if hold { "hold" } else { "-" }])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start python3 client");
    let mut out = BufReader::new(child.stdout.take().expect("client stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("client output");
    Held {
        child,
        out,
        results: line.split_whitespace().map(str::to_string).collect(),
    }
}

/// Runs a client to completion and returns its results.
fn exchange(ns: &Netns, mode: &str, to: (&str, u16), n: usize, sport: u16) -> Vec<String> {
    let h = client(ns, mode, to, n, sport, false);
    let results = h.results.clone();
    h.close();
    results
}

fn oks(results: &[String]) -> usize {
    results.iter().filter(|r| r.starts_with("ok:")).count()
}

/// A `sluice-svcprobe serve` process (names itself, then echoes); killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(mut c: std::process::Command, name: &str, tcp: u16, udp: u16) -> Server {
    c.args(["serve", "--name", name])
        .args(["--tcp", &tcp.to_string(), "--udp", &udp.to_string()]);
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start server");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .expect("server output");
    assert_eq!(line.trim(), "ready");
    Server(child)
}

/// The flow collector's part of `sluicectl status -o json`.
fn flows(node: &Node) -> Value {
    node.sluicectl_json(&["status"])["flows"].clone()
}

fn map_status(f: &Value, map: &str) -> Value {
    f["maps"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["map"] == map).cloned())
        .unwrap_or(Value::Null)
}

/// Waits until `done(flows)` holds: a bound against hanging, not a timing assertion.
fn wait_flows(node: &Node, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let f = flows(node);
        if done(&f) {
            eprintln!("{what}: after {:?}", t.elapsed());
            return f;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{what}: not reached: {f:#}\n{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Agent flags: short timeouts so tests wait seconds, not minutes.
fn short_timeouts(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--flow-timeouts",
        "tcp-closed=1,tcp-half-closed=2,tcp-syn=2,udp=1,udp-replied=1,icmp=1",
        "--flow-gc-interval",
        "0.5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// Test that masquerade ports come back: with a range of 4 ports, 4 open connections to one
/// outside address take them all and a 5th is dropped (`drop:nat-no-port`, reported as
/// exhaustion in `sluicectl status`); once the 4 are closed (FIN both ways) their ports are
/// collected and 4 new connections from another pod succeed, each translated to a port of the
/// range.
#[test]
fn masquerade_ports_come_back_after_tcp_close() {
    let node = Node::new(NodeOptions {
        agent_args: short_timeouts(&["--masquerade-ports", "61000-61003"]),
        ..Default::default()
    });
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    let _world = serve(
        node.outside.command(bin("sluice-svcprobe")),
        "world",
        8000,
        5300,
    );
    let world = (WORLD_IP.to_string(), 8000);
    let to = (world.0.as_str(), world.1);
    let held = client(&a.ns, "tcp", to, 5, 0, true);
    assert_eq!(oks(&held.results), 4, "{:?}", held.results);
    assert!(held.results[4].starts_with("err:"), "{:?}", held.results);
    let f = flows(&node);
    assert_eq!(f["masquerade"]["ports"], "61000-61003");
    assert_eq!(f["masquerade"]["portsPerDestination"], 4);
    assert!(
        f["masquerade"]["noPortDrops"].as_u64().unwrap() > 0,
        "exhaustion not reported: {f:#}"
    );
    held.close();
    wait_flows(&node, "masquerade ports collected", |f| {
        map_status(f, "SL_SNAT_V2")["entries"] == 0
    });
    let again = exchange(&b.ns, "tcp", to, 4, 0);
    assert_eq!(oks(&again), 4, "ports did not come back: {again:?}");
    for r in &again {
        // "ok:world@192.0.2.2:PORT": the outside sees the node at a port of the range.
        let peer = r.rsplit('@').next().unwrap();
        let (ip, port) = peer.split_once(':').unwrap();
        assert_eq!(ip, NODE_IP.to_string());
        assert!(
            (61000..=61003).contains(&port.parse::<u16>().unwrap()),
            "{r}"
        );
    }
    let f = flows(&node);
    assert!(
        map_status(&f, "SL_SNAT_V2")["expiredTotal"]
            .as_u64()
            .unwrap()
            >= 4
    );
}

/// Test that idle UDP flows end: with 2 masquerade ports, two pods' UDP flows to one outside
/// address take both; after they go idle their ports are collected and two new flows succeed.
#[test]
fn masquerade_udp_ports_come_back_when_idle() {
    let node = Node::new(NodeOptions {
        agent_args: short_timeouts(&["--masquerade-ports", "61000-61001"]),
        ..Default::default()
    });
    let a = node.add_pod("a");
    let _world = serve(
        node.outside.command(bin("sluice-svcprobe")),
        "world",
        8000,
        5300,
    );
    // The outside's own address: a server bound to 0.0.0.0 answers UDP from the address its
    // route to the node prefers, and the reply must come from the address dialled.
    let w = OUTSIDE_IP.to_string();
    let held = client(&a.ns, "udp", (&w, 5300), 3, 0, true);
    assert_eq!(oks(&held.results), 2, "{:?}", held.results);
    held.close();
    wait_flows(&node, "idle UDP flows collected", |f| {
        map_status(f, "SL_SNAT_V2")["entries"] == 0
    });
    assert_eq!(oks(&exchange(&a.ns, "udp", (&w, 5300), 2, 0)), 2);
}

/// Test that a wanted masquerade range overlapping the node's ephemeral ports is refused with
/// a clear error, and nothing is installed.
#[test]
fn masquerade_range_overlapping_ephemeral_ports_is_refused() {
    let node = Node::new(NodeOptions {
        start_agent: false,
        ..Default::default()
    });
    node.node
        .sh("sysctl -qw net.ipv4.ip_local_port_range='40000 50000'");
    let out = node
        .agent_command()
        .args(["--masquerade-ports", "49000-52000"])
        .output()
        .expect("run the agent");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ip_local_port_range"), "{err}");
    assert!(err.contains("40000-50000"), "{err}");
    assert!(!node.conflist_path().exists());
}

const ONE_BACKEND: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: default
  labels: {app: web}
spec:
  containers:
  - name: app
    image: app
    ports:
    - {name: http, containerPort: 8080, protocol: TCP}
    - {name: dns, containerPort: 5353, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: dns, port: 53, protocol: UDP, targetPort: dns}
";

fn service_node(extra: &[&str]) -> (Node, Pod, Pod, Server) {
    let node = Node::new(NodeOptions {
        manifests: true,
        agent_args: short_timeouts(extra),
        ..Default::default()
    });
    let web = node.add_pod("web");
    let client = node.add_pod("client");
    std::fs::write(node.manifests_dir().join("all.yaml"), ONE_BACKEND).expect("manifests");
    let server = serve(
        node.pod_command(&web.ns, bin("sluice-svcprobe")),
        "web",
        8080,
        5353,
    );
    let t = Instant::now();
    while !node
        .sluicectl_json(&["services"])
        .as_array()
        .is_some_and(|a| {
            a.iter().any(|f| {
                f["frontend"] == "10.96.0.10:80/TCP"
                    && f["backends"].as_array().map(Vec::len) == Some(1)
            })
        })
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (node, web, client, server)
}

/// Test that Service translation state of a closed connection never applies to another one
/// (TC path: the client runs outside the agent's cgroup): a connection to the ClusterIP from
/// source port P, closed, then at once a direct connection from the same pod and port P to the
/// backend pod succeeds (its SYN-ACK must not be turned into the ClusterIP's), and so does a
/// new connection to the ClusterIP from P again; the closed flows are then collected.
#[test]
fn tc_service_translation_never_applies_to_a_later_connection() {
    let (node, web, client, _server) = service_node(&[]);
    const P: u16 = 40123;
    let web_ip = web.ip.to_string();
    let via_service = exchange(&client.ns, "tcp", ("10.96.0.10", 80), 1, P);
    assert_eq!(
        via_service,
        [format!("ok:web@{}:{P}", client.ip)],
        "through the ClusterIP"
    );
    let direct = exchange(&client.ns, "tcp", (&web_ip, 8080), 1, P);
    assert_eq!(
        direct,
        [format!("ok:web@{}:{P}", client.ip)],
        "straight to the backend from the same port"
    );
    let again = exchange(&client.ns, "tcp", ("10.96.0.10", 80), 1, P);
    assert_eq!(
        again,
        [format!("ok:web@{}:{P}", client.ip)],
        "ClusterIP again"
    );
    assert!(node.counter("svc:tc-dnat").0 > 0, "not the TC path");
    wait_flows(&node, "translation state collected", |f| {
        map_status(f, "SL_LBCT_V2")["entries"] == 0
    });
}

/// Test the same for UDP: after a translated exchange from port P, an exchange from P straight
/// to the backend gets its reply (not rewritten to the ClusterIP), and the idle flows end.
#[test]
fn tc_service_udp_direct_after_translated_gets_its_reply() {
    let (node, web, client, _server) = service_node(&[]);
    const P: u16 = 40124;
    let web_ip = web.ip.to_string();
    let via = exchange(&client.ns, "udp", ("10.96.0.10", 53), 1, P);
    assert_eq!(via, [format!("ok:web@{}:{P}", client.ip)]);
    let direct = exchange(&client.ns, "udp", (&web_ip, 5353), 1, P);
    assert_eq!(
        direct,
        [format!("ok:web@{}:{P}", client.ip)],
        "direct to the backend"
    );
    wait_flows(&node, "UDP translation state collected", |f| {
        map_status(f, "SL_LBCT_V2")["entries"] == 0
    });
}

/// Test that `sluicectl status` reports the flow maps by state and the collector's work, in
/// JSON and in its table.
#[test]
fn status_reports_flows_and_collector() {
    let (node, _web, client, _server) = service_node(&[]);
    let held = client_keeping(&client);
    let f = wait_flows(&node, "an established translated flow", |f| {
        map_status(f, "SL_LBCT_V2")["states"]["tcp-established"].as_u64() == Some(1)
    });
    assert!(f["gcRuns"].as_u64().unwrap() > 0);
    assert!(f["lastRunSecondsAgo"].is_u64());
    assert_eq!(f["timeoutsSeconds"]["tcp-closed"], 1);
    held.close();
    let out = node.sluicectl(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SL_LBCT_V2"), "{text}");
    assert!(text.contains("Masquerade ports"), "{text}");
}

fn client_keeping(pod: &Pod) -> Held {
    let h = client(&pod.ns, "tcp", ("10.96.0.10", 80), 1, 0, true);
    assert_eq!(oks(&h.results), 1, "{:?}", h.results);
    h
}

/// Test that the socket path's reverse translation (`SL_SKREV_V2`) ends with its socket: a TCP
/// connection made through the cgroup hooks to the ClusterIP has its entry while open and none
/// once closed (socket cookies are never reused, but dead entries would fill the map); an
/// unconnected UDP socket's entry ends once idle.
#[test]
fn socket_path_reverse_entries_end_with_their_socket() {
    let (node, _web, client, _server) = service_node(&[]);
    let skrev = |f: &Value| map_status(f, "SL_SKREV_V2")["entries"].as_u64();
    let held = spawn_client(
        node.pod_command(&client.ns, PYTHON),
        "tcp",
        ("10.96.0.10", 80),
        1,
        0,
        true,
    );
    assert_eq!(oks(&held.results), 1, "{:?}", held.results);
    assert!(node.counter("svc:socket-lb").0 > 0, "not the socket path");
    wait_flows(&node, "the open socket's entry", |f| skrev(f) == Some(1));
    held.close();
    wait_flows(&node, "the closed socket's entry gone", |f| {
        skrev(f) == Some(0)
    });
    let udp = spawn_client(
        node.pod_command(&client.ns, PYTHON),
        "udpto",
        ("10.96.0.10", 53),
        1,
        0,
        true,
    );
    assert_eq!(oks(&udp.results), 1, "{:?}", udp.results);
    // Still open, but idle past udp-replied: collected.
    wait_flows(&node, "the idle UDP socket's entry gone", |f| {
        skrev(f) == Some(0) && map_status(f, "SL_SKREV_V2")["expiredTotal"].as_u64() >= Some(1)
    });
    udp.close();
}

/// Test that policy tracking (`SL_CT_V2`) ends with the connection: the record of a TCP
/// connection between two pods (written at its SYN) is there while it is open and collected
/// once it closed (FIN both ways), not kept until LRU eviction.
#[test]
fn policy_tracking_ends_with_the_connection() {
    let (node, web, pod, _server) = service_node(&[]);
    let ct = |f: &Value| map_status(f, "SL_CT_V2");
    let web_ip = web.ip.to_string();
    let held = client(&pod.ns, "tcp", (&web_ip, 8080), 1, 0, true);
    assert_eq!(oks(&held.results), 1, "{:?}", held.results);
    wait_flows(&node, "the open connection tracked", |f| {
        ct(f)["states"]["tcp-established"].as_u64() == Some(1)
    });
    held.close();
    wait_flows(&node, "the closed connection collected", |f| {
        ct(f)["entries"] == 0 && ct(f)["expiredTotal"].as_u64() >= Some(1)
    });
}

/// Test that an agent upgraded from flow maps without lifetimes removes their pins (`_V1`
/// names) and keeps forwarding with the new ones: the old pins are put back under their old
/// names while the agent is down, and are gone after it starts again, traffic still flowing.
#[test]
fn upgrade_removes_retired_flow_map_pins() {
    let mut node = Node::new(NodeOptions::default());
    let a = node.add_pod("a");
    node.stop_agent(false);
    let maps = node.bpffs().join(datapath_common::pins::MAPS_DIR);
    // Any map object stands in for the old one: the agent removes retired pins by name.
    let stand_in = aya::maps::MapData::from_pin(maps.join(datapath_common::nat::MAP_NAME))
        .expect("open a pinned map");
    for old in datapath_common::flow::RETIRED_MAPS {
        stand_in
            .pin(maps.join(old))
            .expect("pin under a retired name");
    }
    node.start_agent();
    for old in datapath_common::flow::RETIRED_MAPS {
        assert!(!maps.join(old).exists(), "{old} still pinned");
    }
    assert!(
        node.agent_log()
            .contains("removed the pin of a retired map layout"),
        "{}",
        node.agent_log()
    );
    let _world = serve(
        node.outside.command(bin("sluice-svcprobe")),
        "world",
        8000,
        5300,
    );
    let w = WORLD_IP.to_string();
    assert_eq!(oks(&exchange(&a.ns, "tcp", (&w, 8000), 1, 0)), 1);
}
