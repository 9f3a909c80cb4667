//! `sluice-agent --kubeconfig` end to end: the real agent binary on a [`Node`] follows the
//! fake Kubernetes API server of the watcher tests (`test-support/src/kube_fake.rs`: real
//! list/watch JSON at the real paths), takes its pod CIDR from its Node object, programs the
//! Services and EndpointSlices it is served, follows watch events, relists after a 410 Gone,
//! and refuses to start when the API server cannot be reached. The objects it serves, and
//! the wrapper that keeps its lists in step with its events, are in `kube_agent/api.rs`.
//!
//! How the fake server reaches the agent: the agent runs in the node's network namespace,
//! whose 127.0.0.1 is that namespace's loopback, not the test's. The fake server is started
//! on a thread that has entered the node namespace (`Netns::run`), in a tokio runtime built
//! on that thread; its listening socket is created there, and a socket stays in the
//! namespace it was created in whatever thread later serves it, so the runtime keeps
//! accepting the agent's connections on the node's loopback after the thread is gone. No
//! veth, route or port forward is involved, and the kubeconfig the fake writes
//! (`http://127.0.0.1:PORT`) is right as it is. The agent's flags are fixed when the node is
//! built, before its namespace (and so the port) exists: they name a kubeconfig path in a
//! directory of the test, which is filled in once the server listens.
//!
//! Expected values are Kubernetes semantics: a ClusterIP port forwards to the targetPort of
//! the ready endpoints of the EndpointSlices labelled `kubernetes.io/service-name` with the
//! Service's name; a watch event is the change itself; a 410 Gone (an ERROR event in the
//! watch stream, or the watch request's own status) means the client's resourceVersion is
//! too old and it must list again, and what the new list lacks has been deleted.

#[path = "kube_agent/api.rs"]
mod api;
use test_support::kube_fake as fake;

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use api::{node_object, pod_object, service, slice, Api, NS};
use fake::{status_json, write_kubeconfig, Res};
use serde_json::{json, Value};
use test_support::{bin, node::DEFAULT_POD_CIDR, Node, NodeOptions, Pod};

const WEB: &str = "10.96.0.10:80/TCP";
const API: &str = "10.96.0.20:443/TCP";
/// How soon a watch event must be in the datapath: Kubernetes expects about a second, this
/// is generous against a noisy machine.
const EVENT_DEADLINE: Duration = Duration::from_secs(5);
/// A relist after an error comes after the watcher's backoff (0.8 s to 1.6 s with jitter).
const RELIST_DEADLINE: Duration = Duration::from_secs(10);

/// A server process in a pod, in the node's cgroup; killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(node: &Node, pod: &Pod) -> Server {
    let mut child = node
        .pod_command(&pod.ns, bin("sluice-svcprobe"))
        .args(["serve", "--name", &pod.name, "--tcp", "8080"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start server");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("server output");
    assert_eq!(line.trim(), "ready", "server in {}", pod.name);
    Server(child)
}

/// `count` TCP connections to `to` from `client`, a process of the node's cgroup (socket
/// hooks); the `sluice-svcprobe probe` report.
fn probe(node: &Node, client: &Pod, to: &str, count: usize) -> Value {
    let out = node
        .pod_command(&client.ns, bin("sluice-svcprobe"))
        .args(["probe", "--to", to, "--count", &count.to_string()])
        .output()
        .expect("run probe");
    assert!(out.status.success(), "probe: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("probe report")
}

/// Asserts that all `count` connections of `report` were answered, by `pods` only, and that
/// the client saw the service address `to` as its peer.
fn assert_answered_by(report: &Value, count: u64, pods: &[Pod], to: &str) {
    let answers = report["answers"].as_object().expect("answers");
    let total: u64 = answers.values().filter_map(Value::as_u64).sum();
    assert_eq!(total, count, "not every connection answered: {report:#}");
    for name in answers.keys() {
        assert!(
            pods.iter().any(|p| &p.name == name),
            "{name} answered: {report:#}"
        );
    }
    for g in report["getpeername"].as_array().expect("getpeername") {
        assert_eq!(g, to, "the client sees the backend: {report:#}");
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The backends `sluicectl services` shows for the internal frontend `frontend`, sorted;
/// `None` when it is not there.
fn backends(node: &Node, frontend: &str) -> Option<Vec<String>> {
    let v = node.sluicectl_json(&["services"]);
    let f = v
        .as_array()
        .expect("a list of frontends")
        .iter()
        .find(|f| f["frontend"] == frontend && f["scope"] == "internal")?;
    assert_ne!(f["id"], 0, "frontend listed but not programmed: {f}");
    let list = f["backends"].as_array().expect("backends");
    let mut v: Vec<String> = list
        .iter()
        .filter_map(|b| Some(b.as_str()?.to_owned()))
        .collect();
    v.sort();
    Some(v)
}

/// What `sluicectl services` shows for endpoints on `pods` (all on this node), sorted.
fn local_backends(pods: &[Pod]) -> Vec<String> {
    let mut v: Vec<String> = pods
        .iter()
        .map(|p| format!("{}:8080 (local)", p.ip))
        .collect();
    v.sort();
    v
}

/// Waits until `frontend` shows exactly `want` (`None`: is gone); returns how long it took.
/// `deadline` only bounds hanging: the times are printed, not asserted.
fn wait_backends(
    node: &Node,
    frontend: &str,
    want: Option<&[String]>,
    deadline: Duration,
) -> Duration {
    let t = Instant::now();
    loop {
        let got = backends(node, frontend);
        if got.as_deref() == want {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < deadline,
            "{frontend}: {got:?} after {deadline:?}, wanted {want:?}\n{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A node whose agent follows the fake API server: pods `web-1` and `web-2` serving TCP 8080
/// behind the `web` Service's EndpointSlice, a `client` pod, and the API serving this node,
/// `services` and the pods.
struct Cluster {
    // Dropped in this order: processes, pods, the node (its agent, bpffs, cgroup), the API.
    _servers: Vec<Server>,
    client: Pod,
    web: Vec<Pod>,
    node: Node,
    api: Api,
    _kubeconfig: tempfile::TempDir,
}

fn cluster(services: Vec<Value>) -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    let mut node = Node::new(NodeOptions {
        pod_cidr: None,
        agent_args: vec!["--kubeconfig".into(), kubeconfig.display().to_string()],
        start_agent: false,
        ..NodeOptions::default()
    });
    let namespace =
        json!({"metadata": {"name": NS, "labels": {"kubernetes.io/metadata.name": NS}}});
    let mut api = Api::start(
        &node.node,
        &kubeconfig,
        vec![
            (Res::Namespaces, vec![namespace]),
            (Res::Nodes, vec![node_object()]),
            (Res::Services, services),
        ],
    );
    node.start_agent();
    // Kubelet runs CNI ADD, then reports the pods; the EndpointSlice controller then lists
    // the ready ones.
    let web: Vec<Pod> = ["web-1", "web-2"].map(|n| node.add_pod(n)).into();
    let client = node.add_pod("client");
    let servers = web.iter().map(|p| serve(&node, p)).collect();
    for p in &web {
        api.apply(Res::Pods, pod_object(p, "web"));
    }
    api.apply(Res::Pods, pod_object(&client, "client"));
    api.apply(Res::EndpointSlices, slice("web", &web));
    Cluster {
        _servers: servers,
        client,
        web,
        node,
        api,
        _kubeconfig: dir,
    }
}

/// Test that an agent given `--kubeconfig` and no `--pod-cidr` takes the pod CIDR from its
/// Node's spec.podCIDR, watches the pods of every node, programs the ClusterIP 10.96.0.10:80
/// of a Service with the two ready endpoints of its EndpointSlice (targetPort 8080) as
/// backends, and that a pod's connections to the ClusterIP reach those pods.
#[test]
fn kube_agent_programs_served_service_and_pods_reach_it() {
    let c = cluster(vec![service("web", "10.96.0.10", 80)]);
    let status = c.node.sluicectl_json(&["status"]);
    assert_eq!(status["podCidrs"], json!([DEFAULT_POD_CIDR]), "{status}");
    let subnet = DEFAULT_POD_CIDR.trim_end_matches("0/24");
    for p in [&c.web[0], &c.web[1], &c.client] {
        assert!(
            p.ip.to_string().starts_with(subnet),
            "{} outside the podCIDR",
            p.ip
        );
    }
    for list in c.api.fake.lists(Res::Pods) {
        assert_eq!(list.param("fieldSelector"), None, "{list:?}");
    }
    let took = wait_backends(&c.node, WEB, Some(&local_backends(&c.web)), EVENT_DEADLINE);
    eprintln!("EndpointSlice ADDED: backends programmed {took:?} after it was sent");
    let report = probe(&c.node, &c.client, "10.96.0.10:80", 20);
    assert_answered_by(&report, 20, &c.web, "10.96.0.10:80");
}

/// Test that watch events are applied to the datapath (Kubernetes expects about a second;
/// the delays are printed, the deadline only bounds hanging): an EndpointSlice MODIFIED
/// without web-2 takes that backend away and new connections reach web-1 only, an ADDED
/// Service (after its EndpointSlice) gets its frontend, and a DELETED Service loses its.
#[test]
fn kube_agent_applies_watch_events() {
    let mut c = cluster(vec![service("web", "10.96.0.10", 80)]);
    wait_backends(&c.node, WEB, Some(&local_backends(&c.web)), EVENT_DEADLINE);

    c.api.apply(Res::EndpointSlices, slice("web", &c.web[..1]));
    let took = wait_backends(
        &c.node,
        WEB,
        Some(&local_backends(&c.web[..1])),
        EVENT_DEADLINE,
    );
    eprintln!("EndpointSlice MODIFIED: web-2 left the backends in {took:?}");
    let report = probe(&c.node, &c.client, "10.96.0.10:80", 10);
    assert_answered_by(&report, 10, &c.web[..1], "10.96.0.10:80");

    c.api.apply(Res::EndpointSlices, slice("api", &c.web[1..]));
    c.api
        .apply(Res::Services, service("api", "10.96.0.20", 443));
    let took = wait_backends(
        &c.node,
        API,
        Some(&local_backends(&c.web[1..])),
        EVENT_DEADLINE,
    );
    eprintln!("Service ADDED: frontend programmed in {took:?}");

    c.api.delete(Res::Services, "web");
    let took = wait_backends(&c.node, WEB, None, EVENT_DEADLINE);
    eprintln!("Service DELETED: frontend removed in {took:?}");
    assert_eq!(backends(&c.node, API), Some(local_backends(&c.web[1..])));
    let report = probe(&c.node, &c.client, "10.96.0.20:443", 5);
    assert_answered_by(&report, 5, &c.web[1..], "10.96.0.20:443");
}

/// Test that a 410 Gone on the services watch makes the agent list services again and drop
/// the frontend of a Service the new list no longer has (deleted while it was not
/// watching), for both forms of it: an ERROR event in the watch stream, and the HTTP status
/// of the watch request itself. The other frontends stay.
#[test]
fn kube_agent_relists_after_gone_and_drops_missing_service() {
    let mut c = cluster(vec![
        service("web", "10.96.0.10", 80),
        service("old-a", "10.96.0.21", 80),
        service("old-b", "10.96.0.22", 80),
    ]);
    wait_backends(&c.node, WEB, Some(&local_backends(&c.web)), EVENT_DEADLINE);
    for f in ["10.96.0.21:80/TCP", "10.96.0.22:80/TCP"] {
        wait_backends(&c.node, f, Some(&[] as &[String]), EVENT_DEADLINE);
    }
    let fake_lists = |c: &Cluster| c.api.fake.lists(Res::Services).len();
    let watches = c.api.fake.watches(Res::Services).len();

    let lists = fake_lists(&c);
    c.api.forget(Res::Services, "old-a");
    let gone = status_json(410, "Expired", "too old resource version");
    c.api.fake.send(Res::Services, "ERROR", gone);
    let took = wait_backends(&c.node, "10.96.0.21:80/TCP", None, RELIST_DEADLINE);
    eprintln!("410 as a watch ERROR event: relisted and removed in {took:?}");
    assert!(fake_lists(&c) > lists, "removed without a relist");
    // The watch from the new list's resourceVersion, before the next 410.
    let rt = &c.api.rt;
    rt.block_on(c.api.fake.wait_watches(Res::Services, watches + 1));

    let lists = fake_lists(&c);
    c.api.forget(Res::Services, "old-b");
    let gone = status_json(410, "Expired", "too old resource version");
    c.api.fake.fail_next_watch(Res::Services, 410, gone);
    c.api.fake.end_watch(Res::Services);
    let took = wait_backends(&c.node, "10.96.0.22:80/TCP", None, RELIST_DEADLINE);
    eprintln!("410 as the watch request's status: relisted and removed in {took:?}");
    assert!(fake_lists(&c) > lists, "removed without a relist");
    let statuses: Vec<u16> = (c.api.fake.watches(Res::Services).iter())
        .map(|w| w.status)
        .collect();
    assert!(
        statuses.contains(&410),
        "no watch was answered 410: {statuses:?}"
    );
    assert_eq!(backends(&c.node, WEB), Some(local_backends(&c.web)));
}

/// Runs `cmd` to completion with its output captured, killing it after `limit`.
fn output_bounded(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for the command"),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGKILL);
            panic!("{cmd:?} still running after {limit:?}");
        }
    }
}

/// Test that an agent whose API server refuses connections exits non-zero, after its sync
/// timeout (60 s, not settable), with an error naming the kinds it could not list and why,
/// and leaves nothing behind: no pins in the bpffs, no CNI config or plugin, no socket.
#[test]
fn kube_agent_exits_when_api_unreachable_leaving_nothing() {
    // Nothing listens in the node namespace, on the API server's usual port or any other.
    let (_dir, kubeconfig) = write_kubeconfig(6443);
    let node = Node::new(NodeOptions {
        pod_cidr: Some(DEFAULT_POD_CIDR.into()),
        agent_args: vec!["--kubeconfig".into(), kubeconfig.display().to_string()],
        start_agent: false,
        ..NodeOptions::default()
    });
    // A fresh bpffs is not empty on every kernel (the bpf_preload iterators `maps.debug` and
    // `progs.debug`, since 5.10): what was there before the agent ran may stay.
    let before = bpffs_entries(&node);
    let t = Instant::now();
    let mut cmd = node.agent_command();
    cmd.env("NO_COLOR", "1");
    let out = output_bounded(cmd, Duration::from_secs(120));
    let err = text(&out.stderr);
    eprintln!("agent exited with {} after {:?}", out.status, t.elapsed());
    assert_eq!(out.status.code(), Some(1), "{err}");
    let failed = err
        .lines()
        .find(|l| l.contains("agent failed"))
        .unwrap_or_else(|| panic!("no `agent failed` line:\n{err}"));
    for needle in [
        "Kubernetes API server",
        "initial list of",
        "Namespace",
        "Pod",
        "Service",
        "EndpointSlice",
        "NetworkPolicy",
        "Node",
        "Connection refused",
    ] {
        assert!(
            failed.contains(needle),
            "error does not say {needle:?}: {failed}"
        );
    }
    // The server is named in the log (not in the error itself).
    assert!(
        err.contains("http://127.0.0.1:6443"),
        "server not logged:\n{err}"
    );
    assert!(!node.conflist_path().exists(), "conflist written");
    assert!(!node.path("bin/sluice").exists(), "plugin installed");
    assert!(!node.state_dir().join("agent.sock").exists(), "socket left");
    assert_eq!(bpffs_entries(&node), before, "pinned in the bpffs");
}

fn bpffs_entries(node: &Node) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(node.bpffs())
        .expect("read the bpffs")
        .map(|e| {
            e.expect("bpffs entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// `sluicectl policy trace --from FROM --to TO --port PORT -o json`, or `None` while the
/// agent cannot answer it (a pod it does not know yet).
fn trace(node: &Node, from: &str, to: &str, port: &str) -> Option<Value> {
    let out = node.sluicectl(&[
        "policy", "trace", "--from", from, "--to", to, "--port", port, "-o", "json",
    ]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// A pod of node `node-2` as the API server serves it: another node's kubelet reported its
/// address (in node-2's pod CIDR, not this node's).
fn remote_pod(name: &str, app: &str, ip: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": NS, "uid": format!("77aa-{name}"),
                     "labels": {"app": app},
                     "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-12-01T10:00:00Z"}},
        "spec": {
            "nodeName": "node-2",
            "containers": [{"name": "app", "image": "curl:8", "command": ["sleep", "inf"]}],
        },
        "status": {
            "phase": "Running",
            "hostIP": "192.0.2.3",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

/// Test that in API mode a NetworkPolicy peer on another node is known by its labels: with a
/// policy letting only `app=remote-client` pods into `app=web` on TCP 8080, the web pods'
/// ingress rules hold the address of the remote-client pod of node-2 (the datapath's rule
/// trie allows that address, and `policy trace` from the pod allows it) and not that of
/// node-2's intruder pod, as the NetworkPolicy API says for a podSelector peer on any node.
#[test]
fn kube_agent_policy_peer_on_another_node() {
    let mut c = cluster(vec![]);
    let (client_ip, intruder_ip) = ("10.244.2.5", "10.244.2.6");
    c.api.apply(
        Res::Nodes,
        json!({
            "metadata": {"name": "node-2"},
            "spec": {"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.3"}]},
        }),
    );
    c.api.apply(
        Res::Pods,
        remote_pod("remote-client", "remote-client", client_ip),
    );
    c.api.apply(
        Res::Pods,
        remote_pod("remote-intruder", "intruder", intruder_ip),
    );
    c.api.apply(
        Res::NetworkPolicies,
        json!({
            "metadata": {"name": "web-from-remote", "namespace": NS, "uid": "5e1f-web"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "web"}},
                "policyTypes": ["Ingress"],
                "ingress": [{
                    "from": [{"podSelector": {"matchLabels": {"app": "remote-client"}}}],
                    "ports": [{"protocol": "TCP", "port": 8080}],
                }],
            },
        }),
    );
    let to = format!("{NS}/{}", c.web[0].name);
    let from_pod = format!("{NS}/remote-client");
    let start = Instant::now();
    let allowed = loop {
        let t = trace(&c.node, &from_pod, &to, "8080/TCP");
        if let Some(t) = t.filter(|t| t["allowed"] == true && t["policyAllowed"] == true) {
            break t;
        }
        assert!(
            start.elapsed() < EVENT_DEADLINE,
            "the remote pod never became an allowed peer: {:?}\n{}",
            trace(&c.node, &from_pod, &to, "8080/TCP"),
            c.node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "remote peer allowed {:?} after the events: {allowed}",
        start.elapsed()
    );
    // The datapath's own rule trie, judged on the bare address.
    let by_addr = trace(&c.node, client_ip, &to, "8080/TCP").expect("trace by address");
    assert_eq!(by_addr["allowed"], true, "{by_addr}");
    for from in [format!("{NS}/remote-intruder"), intruder_ip.to_owned()] {
        let t = trace(&c.node, &from, &to, "8080/TCP").expect("trace the intruder");
        assert_eq!(t["allowed"], false, "{from}: {t}");
        assert_eq!(t["policyAllowed"], false, "{from}: {t}");
    }
    // Not a port the policy opens, even for the allowed peer.
    let other_port = trace(&c.node, client_ip, &to, "9090/TCP").expect("trace");
    assert_eq!(other_port["allowed"], false, "{other_port}");
}

/// Test that an agent following the API server whose Node has no pod CIDR yet (the node IPAM
/// controller has not got to it) waits, saying so once, instead of exiting, and gets ready
/// with the pod CIDR the Node gets later through a watch event.
#[test]
fn kube_agent_waits_for_its_node_pod_cidr() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    let mut node = Node::new(NodeOptions {
        pod_cidr: None,
        agent_args: vec!["--kubeconfig".into(), kubeconfig.display().to_string()],
        start_agent: false,
        ..NodeOptions::default()
    });
    let mut booting = node_object();
    booting["spec"] = json!({});
    let mut api = Api::start(&node.node, &kubeconfig, vec![(Res::Nodes, vec![booting])]);
    let log = node.path("agent.log");
    let conflist = node.conflist_path();
    // start_agent returns once the agent is ready: the Node gets its CIDR from here.
    let controller = std::thread::spawn(move || {
        let deadline = Instant::now() + EVENT_DEADLINE * 4;
        let needle = "waiting for Node \"node-1\" to get a pod CIDR";
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(needle)
        {
            assert!(Instant::now() < deadline, "the agent never said {needle:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let early = conflist.exists();
        api.apply(Res::Nodes, node_object());
        (api, early)
    });
    node.start_agent();
    let (api, early) = controller.join().expect("the node controller thread");
    assert!(
        !early,
        "the CNI config was written before the Node had a pod CIDR"
    );
    let status = node.sluicectl_json(&["status"]);
    assert_eq!(status["podCidrs"], json!([DEFAULT_POD_CIDR]), "{status}");
    let waits = node
        .agent_log()
        .lines()
        .filter(|l| l.contains("waiting for Node"))
        .count();
    assert_eq!(waits, 1, "{}", node.agent_log());
    drop(node);
    drop(api);
}
