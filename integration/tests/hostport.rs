//! hostPort end to end: the real CNI plugin given `runtimeConfig.portMappings` exactly as a
//! runtime sends it once the conflist declares the `portMappings` capability, the real agent
//! programming the mapping, and traffic to the node's address and hostPort.
//!
//! Expected values come from the CNI conventions' `portMappings` and the reference `portmap`
//! plugin: `NODE_IP:hostPort` reaches the pod's `containerPort` from outside the node (the pod
//! sees the real client, portmap does not masquerade it) and from other pods; the mapping goes
//! away with the pod's DEL; one host port has one owner, the first.

use std::{
    io::{BufRead as _, BufReader},
    net::Ipv4Addr,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use test_support::{
    bin,
    node::{NODE_IP, OUTSIDE_IP},
    unique, CniCall, Netns, Node, NodeOptions, Pod,
};

/// A bound against hanging while the agent programs a change (it does so within a tick).
const DEADLINE: Duration = Duration::from_secs(30);

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a server in `pod` on TCP `port` (and UDP `udp`) that answers with the pod's name.
fn serve(node: &Node, pod: &Pod, port: u16) -> Server {
    serve_udp(node, pod, port, None)
}

fn serve_udp(node: &Node, pod: &Pod, port: u16, udp: Option<u16>) -> Server {
    let mut cmd = node.pod_command(&pod.ns, bin("sluice-svcprobe"));
    cmd.args(["serve", "--name", &pod.name, "--tcp", &port.to_string()]);
    if let Some(u) = udp {
        cmd.args(["--udp", &u.to_string()]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start server");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .expect("server output");
    assert_eq!(line.trim(), "ready", "server in {}", pod.name);
    Server(child)
}

/// ADDs a pod whose runtime passes `mappings` as `runtimeConfig.portMappings`.
fn add_pod_with_ports(node: &Node, name: &str, mappings: Value) -> Pod {
    add_pod_with_ports_id(node, name, &unique("c"), mappings)
}

/// [`add_pod_with_ports`] with the container id `cid`.
fn add_pod_with_ports_id(node: &Node, name: &str, cid: &str, mappings: Value) -> Pod {
    let ns = Netns::new(&unique("slp"));
    let cid = cid.to_string();
    let mut call = CniCall::attachment("ADD", "1.0.0", &cid, &ns.path(), name);
    call.extra = json!({"runtimeConfig": {"portMappings": mappings}});
    let out = node.cni(&call);
    out.assert_ok();
    let result = out.json();
    let ip: Ipv4Addr = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no IPv4 address in {result}"));
    Pod {
        ns,
        name: name.into(),
        cid,
        ip,
        result,
    }
}

/// `sluice-svcprobe probe` to `to` from `ns`: inside the agent's cgroup (socket hooks) when
/// `socket`, else a plain process (TC path).
fn probe(node: &Node, ns: &Netns, socket: bool, to: &str, count: usize) -> Value {
    probe_proto(node, ns, socket, to, count, false)
}

fn probe_proto(node: &Node, ns: &Netns, socket: bool, to: &str, count: usize, udp: bool) -> Value {
    let mut c = if socket {
        node.pod_command(ns, bin("sluice-svcprobe"))
    } else {
        ns.command(bin("sluice-svcprobe"))
    };
    c.args(["probe", "--to", to, "--count", &count.to_string()]);
    if udp {
        c.arg("--udp");
    }
    let out = c.output().expect("run probe");
    assert!(
        out.status.success(),
        "probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("probe report")
}

fn answers(v: &Value, name: &str) -> u64 {
    v["answers"][name].as_u64().unwrap_or(0)
}

fn errors(v: &Value) -> u64 {
    v["errors"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

/// The `HostPort` frontends `sluicectl services` lists for `frontend` (`addr:port/PROTO`):
/// the backends of each.
fn hostport_frontends(node: &Node, frontend: &str) -> Vec<Value> {
    let v = node.sluicectl_json(&["services"]);
    v.as_array()
        .unwrap_or_else(|| panic!("services is not a list: {v}"))
        .iter()
        .filter(|f| f["frontend"] == frontend && f["kind"] == "HostPort")
        .cloned()
        .collect()
}

/// Waits until `frontend` is programmed (internal and external scope) to `backend`, or gone
/// when `backend` is `None`.
fn wait_hostport(node: &Node, frontend: &str, backend: Option<&str>) {
    let t = Instant::now();
    loop {
        let fs = hostport_frontends(node, frontend);
        let done = match backend {
            None => fs.is_empty(),
            Some(b) => {
                fs.len() == 2
                    && fs.iter().all(|f| {
                        f["backends"].as_array().is_some_and(|bs| {
                            bs.len() == 1 && bs[0].as_str().is_some_and(|s| s.contains(b))
                        })
                    })
            }
        };
        if done {
            return;
        }
        assert!(
            t.elapsed() < DEADLINE,
            "{frontend} not {} {backend:?}: {fs:#?}\n{}",
            if backend.is_some() {
                "programmed to"
            } else {
                "removed"
            },
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Test that a hostPort given as `runtimeConfig.portMappings` at ADD takes traffic from outside
/// the node to NODE_IP:hostPort to the pod's containerPort, TCP and UDP (the pod sees the
/// outside client),
/// that another pod reaches it on NODE_IP:hostPort too, and that DEL removes the mapping.
#[test]
fn hostport_from_outside_and_from_pods_until_del() {
    let node = Node::new(NodeOptions::default());
    let conflist: Value =
        serde_json::from_str(&std::fs::read_to_string(node.conflist_path()).unwrap()).unwrap();
    assert_eq!(
        conflist["plugins"][0]["capabilities"]["portMappings"], true,
        "the conflist must declare portMappings, or runtimes pass none: {conflist}"
    );
    let web = add_pod_with_ports(
        &node,
        "web",
        json!([
            {"hostPort": 18080, "containerPort": 8080, "protocol": "tcp", "hostIP": ""},
            {"hostPort": 15353, "containerPort": 5353, "protocol": "udp"}
        ]),
    );
    let client = node.add_pod("client");
    let _srv = serve_udp(&node, &web, 8080, Some(5353));
    let frontend = format!("{NODE_IP}:18080/TCP");
    wait_hostport(&node, &frontend, Some(&web.ip.to_string()));
    wait_hostport(
        &node,
        &format!("{NODE_IP}:15353/UDP"),
        Some(&web.ip.to_string()),
    );

    let to = format!("{NODE_IP}:18080");
    let v = probe(&node, &node.outside, false, &to, 10);
    assert_eq!(errors(&v), 0, "from outside: {v:#}");
    assert_eq!(answers(&v, "web"), 10, "from outside: {v:#}");
    for peer in v["peers"].as_array().unwrap() {
        let ip = peer.as_str().unwrap().split(':').next().unwrap();
        assert_eq!(
            ip,
            OUTSIDE_IP.to_string(),
            "the pod saw {ip}, not the client"
        );
    }
    let v = probe_proto(
        &node,
        &node.outside,
        false,
        &format!("{NODE_IP}:15353"),
        5,
        true,
    );
    assert_eq!(answers(&v, "web"), 5, "UDP from outside: {v:#}");
    let v = probe(&node, &client.ns, true, &to, 5);
    assert_eq!(answers(&v, "web"), 5, "from a pod (socket): {v:#}");
    let v = probe(&node, &client.ns, false, &to, 5);
    assert_eq!(answers(&v, "web"), 5, "from a pod (TC): {v:#}");

    node.del_pod(&web);
    assert!(
        !node
            .state_dir()
            .join("hostports")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some()),
        "DEL left a hostPort record"
    );
    wait_hostport(&node, &frontend, None);
    let v = probe(&node, &node.outside, false, &to, 3);
    assert_eq!(answers(&v, "web"), 0, "after DEL: {v:#}");
    assert_eq!(errors(&v), 3, "after DEL every connection fails: {v:#}");
    node.del_pod(&client);
}

/// Test that of two pods asking for the same hostPort the first keeps it (the second's mapping
/// is refused, logged and counted) and that the second gets it once the first is deleted.
#[test]
fn hostport_conflict_first_pod_keeps_the_port() {
    let node = Node::new(NodeOptions::default());
    let ports = json!([{"hostPort": 18081, "containerPort": 8080}]);
    let first = add_pod_with_ports(&node, "first", ports.clone());
    let frontend = format!("{NODE_IP}:18081/TCP");
    wait_hostport(&node, &frontend, Some(&first.ip.to_string()));
    let second = add_pod_with_ports(&node, "second", ports);
    let _s1 = serve(&node, &first, 8080);
    let _s2 = serve(&node, &second, 8080);
    let t = Instant::now();
    while node.sluicectl_json(&["status"])["hostportConflicts"] != 1 {
        assert!(t.elapsed() < DEADLINE, "conflict not counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_hostport(&node, &frontend, Some(&first.ip.to_string()));
    let to = format!("{NODE_IP}:18081");
    let v = probe(&node, &node.outside, false, &to, 6);
    assert_eq!(answers(&v, "first"), 6, "{v:#}");

    node.del_pod(&first);
    wait_hostport(&node, &frontend, Some(&second.ip.to_string()));
    let v = probe(&node, &node.outside, false, &to, 6);
    assert_eq!(answers(&v, "second"), 6, "{v:#}");
    node.del_pod(&second);
    wait_hostport(&node, &frontend, None);
}

/// The hostPort records the plugin keeps in the node's state dir.
fn hostport_records(node: &Node) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(node.state_dir().join("hostports"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Test that a container id of a length the CNI spec allows (it sets no limit; 300 bytes here,
/// more than a file name may hold) carries hostPorts, and that GC removes the hostPort record
/// and mapping of an attachment missing from `cni.dev/valid-attachments` while the listed
/// attachment keeps its own.
#[test]
fn hostport_long_container_ids_and_gc() {
    let node = Node::new(NodeOptions::default());
    let long_id = format!("{}{}", unique("c"), "a".repeat(300));
    let kept = add_pod_with_ports_id(
        &node,
        "kept",
        &long_id,
        json!([{"hostPort": 18180, "containerPort": 8080, "protocol": "tcp"}]),
    );
    let gone = add_pod_with_ports(
        &node,
        "gone",
        json!([{"hostPort": 18181, "containerPort": 8080, "protocol": "tcp"}]),
    );
    let kept_fe = format!("{NODE_IP}:18180/TCP");
    let gone_fe = format!("{NODE_IP}:18181/TCP");
    wait_hostport(&node, &kept_fe, Some(&kept.ip.to_string()));
    wait_hostport(&node, &gone_fe, Some(&gone.ip.to_string()));
    assert_eq!(
        hostport_records(&node).len(),
        2,
        "{:?}",
        hostport_records(&node)
    );

    let mut gc = CniCall::new("GC", "1.1.0");
    gc.ifname = None;
    gc.extra = json!({"cni.dev/valid-attachments": [{"containerID": long_id, "ifname": "eth0"}]});
    node.cni(&gc).assert_ok();

    let left = hostport_records(&node);
    assert_eq!(
        left.len(),
        1,
        "GC must remove only the unlisted record: {left:?}"
    );
    assert!(
        left[0].ends_with("@eth0") && !left[0].contains(&gone.cid),
        "the listed attachment's record must stay: {left:?}"
    );
    wait_hostport(&node, &gone_fe, None);
    wait_hostport(&node, &kept_fe, Some(&kept.ip.to_string()));

    node.del_pod(&kept);
    assert!(
        hostport_records(&node).is_empty(),
        "{:?}",
        hostport_records(&node)
    );
    wait_hostport(&node, &kept_fe, None);
}
