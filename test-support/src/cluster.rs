//! [`Cluster`]: several Sluice nodes under test, as issue 18's tests need them — an underlay
//! namespace with a bridge, an "outside" namespace on it holding a world address, and N node
//! namespaces, each with its own uplink into the bridge, bpffs, cgroup (under the cluster's own
//! cgroup, never the root), state/CNI dirs and its own `sluice-agent`, all sharing ONE
//! manifests directory that plays the API server. Pods are made as a runtime and kubelet make
//! them: the Pod object (labels, `spec.nodeName`) is written before ADD, the node's CNI binary
//! is exec'd, then the object gets `status.podIP(s)`, phase Running and a Ready condition.
//!
//! ```text
//!              outside netns: out0 192.0.2.1/24, lo 203.0.113.10
//!                     │
//!   underlay netns: br0 ── n1 ── up0 192.0.2.11 node1 (10.244.1.0/24) ── pods
//!                          ├─ n2 ── up0 192.0.2.12 node2 (10.244.2.0/24) ── pods
//!                          └─ …
//! ```
//! Node N has the address 192.0.2.(10+N), the pod CIDR 10.244.N.0/24 (in its Node object, no
//! `--pod-cidr`) and a default route to the outside namespace, which has no route to any pod
//! CIDR (so what reaches it from a pod must have been masqueraded). Everything is released on
//! drop, on every path: agents, namespaces, mounts, cgroups, files.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{bin, node::exec_cni, unique, CniCall, CniOutput, Netns};

pub use crate::node::{OUTSIDE_IP, WORLD_IP};

/// The Service ClusterIP range the agents are told (`--service-cidr`).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// The address of node `n` (1-based) on the underlay.
pub fn node_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 10 + u8::try_from(n).expect("node index"))
}

/// The pod CIDR of node `n` (1-based), as its Node object gives it.
pub fn pod_cidr(n: usize) -> String {
    format!("10.244.{n}.0/24")
}

/// Whether `ip` is in node `n`'s pod CIDR.
pub fn in_pod_cidr(ip: Ipv4Addr, n: usize) -> bool {
    let [a, b, c, _] = ip.octets();
    (a, b, usize::from(c)) == (10, 244, n)
}

/// `--routing` of every agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    Tunnel,
    Native,
}

impl Routing {
    pub fn flag(self) -> &'static str {
        match self {
            Self::Tunnel => "tunnel",
            Self::Native => "native",
        }
    }
}

pub struct ClusterOptions {
    pub routing: Routing,
    /// Nodes made by [`Cluster::new`] (node1 … nodeN).
    pub nodes: usize,
    /// Extra flags for every agent.
    pub agent_args: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            routing: Routing::Tunnel,
            nodes: 3,
            agent_args: Vec::new(),
        }
    }
}

/// One node of the cluster: its namespace, directories, cgroup and agent.
pub struct ClusterNode {
    /// 1-based; the node is `node{index}`.
    pub index: usize,
    pub name: String,
    pub ip: Ipv4Addr,
    pub ns: Netns,
    /// Holds bpf/ (a bpffs mount), conf/, bin/, state/, agent.log.
    pub dir: tempfile::TempDir,
    /// This node's cgroup (the agent's --cgroup-root), under the cluster's.
    pub cgroup: PathBuf,
    /// When its Node object was written (for reporting how soon the others route it).
    pub published: Instant,
    agent: Option<Child>,
}

impl ClusterNode {
    pub fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    pub fn bpffs(&self) -> PathBuf {
        self.path("bpf")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path("state")
    }

    pub fn conflist_path(&self) -> PathBuf {
        self.path("conf").join("05-sluice.conflist")
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }

    pub fn agent_running(&self) -> bool {
        self.agent.is_some()
    }

    /// Execs this node's installed CNI plugin, as a runtime does.
    pub fn cni(&self, call: &CniCall) -> CniOutput {
        exec_cni(&self.ns, &self.path("bin"), &self.conflist_path(), call)
    }

    /// Runs `sluicectl ARGS --state-dir <state>` in the node namespace.
    pub fn sluicectl(&self, args: &[&str]) -> std::process::Output {
        self.ns
            .command(bin("sluicectl"))
            .args(args)
            .arg("--state-dir")
            .arg(self.state_dir())
            .output()
            .expect("run sluicectl")
    }

    /// `ip -4 route` of the node namespace, one route a line.
    pub fn routes(&self) -> Vec<String> {
        self.ns
            .sh("ip -4 route show table all")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The routes (any table) that mention `cidr`'s network address or `via` the address.
    pub fn routes_mentioning(&self, needle: &str) -> Vec<String> {
        self.routes()
            .into_iter()
            .filter(|r| r.contains(needle))
            .collect()
    }

    fn spawn_agent(&mut self, manifests: &Path, opts: &ClusterOptions) {
        assert!(
            self.agent.is_none(),
            "agent of {} already running",
            self.name
        );
        // A killed agent leaves its socket behind; readiness is the new agent binding it.
        let _ = std::fs::remove_file(self.state_dir().join("agent.sock"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("agent.log"))
            .expect("open agent log");
        let mut c = self.ns.command(bin("sluice-agent"));
        c.args(["--node-name", &self.name, "--uplink", "up0"]);
        c.arg("--manifests").arg(manifests);
        c.args(["--routing", opts.routing.flag()]);
        c.args(["--service-cidr", SERVICE_CIDR]);
        c.arg("--state-dir").arg(self.state_dir());
        c.arg("--bpffs").arg(self.bpffs());
        c.arg("--cni-conf-dir").arg(self.path("conf"));
        c.arg("--cni-bin-dir").arg(self.path("bin"));
        c.arg("--cni-plugin").arg(bin("sluice-cni"));
        c.arg("--cgroup-root").arg(&self.cgroup);
        c.args(&opts.agent_args);
        let child = c
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn sluice-agent");
        self.agent = Some(child);
    }

    /// Waits until the agent has installed the CNI config and opened its socket.
    fn wait_agent_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let sock = self.state_dir().join("agent.sock");
        while !(self.conflist_path().exists() && sock.exists()) {
            if let Some(st) = self
                .agent
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "sluice-agent of {} exited ({st}) before it was ready:\n{}",
                    self.name,
                    self.agent_log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "agent of {} not ready in 60 s:\n{}",
                self.name,
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the agent: SIGKILL when `hard` (a crash), else SIGTERM and wait.
    pub fn stop_agent(&mut self, hard: bool) {
        if let Some(mut c) = self.agent.take() {
            let sig = if hard {
                nix::sys::signal::SIGKILL
            } else {
                nix::sys::signal::SIGTERM
            };
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
            let _ = c.wait();
        }
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.stop_agent(false);
        let _ = nix::mount::umount2(&self.bpffs(), nix::mount::MntFlags::MNT_DETACH);
        // Whatever a test left in the cgroup is killed (cgroup v2 `cgroup.kill`, Linux 5.14);
        // a loaded machine may take a few seconds to reap it.
        let _ = std::fs::write(self.cgroup.join("cgroup.kill"), "1");
        remove_cgroup(&self.cgroup);
    }
}

fn remove_cgroup(dir: &Path) {
    for _ in 0..250 {
        match std::fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => break,
        }
    }
}

/// A pod of the cluster.
pub struct ClusterPod {
    pub ns: Netns,
    pub name: String,
    pub namespace: String,
    pub cid: String,
    pub ip: Ipv4Addr,
    /// The node (1-based index) it runs on.
    pub node: usize,
    /// Its node's cgroup, where its "container" processes run ([`ClusterPod::command`]).
    pub cgroup: PathBuf,
    pub result: Value,
}

impl ClusterPod {
    /// Runs a shell command in the pod's namespace, outside any pod cgroup (so socket
    /// programs do not see it: the TC path); panics if it fails.
    pub fn sh(&self, script: &str) -> String {
        self.ns.sh(script)
    }

    /// A command that runs `program` inside the pod as a process of its node's cgroup, as a
    /// pod's container processes are (socket programs see it).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && n="$1" && shift && exec nsenter --net="$n" -- "$@""#)
            .arg(&self.cgroup)
            .arg(self.ns.path())
            .arg(program);
        c
    }

    /// `sh -c SCRIPT` as a container process of the pod (in its node's cgroup); its output,
    /// whatever its status.
    pub fn exec(&self, script: &str) -> std::process::Output {
        self.command("sh")
            .args(["-c", script])
            .output()
            .expect("run a command in the pod")
    }

    /// Whether one `ping` to `dst` from the pod is answered.
    pub fn ping(&self, dst: Ipv4Addr) -> bool {
        self.ns
            .sh_output(&format!("ping -c1 -W2 {dst}"))
            .status
            .success()
    }
}

/// A running `tcpdump -w` on one interface; [`Capture::stop`] gives the packets.
pub struct Capture {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Capture {
    /// Starts capturing on `iface` of `ns` (pcap filter `filter`, may be empty) and returns
    /// once tcpdump is listening.
    pub fn start(ns: &Netns, iface: &str, filter: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sluice-cap-")
            .tempdir()
            .expect("tempdir");
        let file = dir.path().join("cap.pcap");
        let err = dir.path().join("tcpdump.err");
        // --immediate-mode: without it packets wait in the capture ring for up to a second
        // and those of the last second are lost at SIGINT.
        let mut c = ns.command("tcpdump");
        c.args([
            "-i",
            iface,
            "-nn",
            "-U",
            "--immediate-mode",
            "-s",
            "256",
            "-w",
        ])
        .arg(&file)
        .args(filter.split_whitespace())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).expect("tcpdump stderr file"));
        let child = c.spawn().expect("run tcpdump (scripts/setup installs it)");
        let mut cap = Self {
            child: Some(child),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&err).unwrap_or_default();
            if text.contains("listening on") {
                break;
            }
            if let Some(st) = cap.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("tcpdump on {iface} exited ({st}): {text}");
            }
            assert!(Instant::now() < deadline, "tcpdump not listening: {text}");
            std::thread::sleep(Duration::from_millis(20));
        }
        cap
    }

    /// Stops the capture (SIGINT, so the file is complete) and returns the packets that
    /// match the pcap `filter` (on the outer headers), one `tcpdump -nn` line each.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // tcpdump exits at SIGINT without reading what is still queued on its socket, and
            // on a loaded machine it may not have run since the traffic: let it drain first
            // (`-U` writes each packet as it is read, so the file stops growing once it has).
            let file = self.dir.path().join("cap.pcap");
            let size = || std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            let deadline = Instant::now() + Duration::from_secs(5);
            let (mut last, mut since) = (size(), Instant::now());
            while Instant::now() < deadline && since.elapsed() < Duration::from_millis(500) {
                std::thread::sleep(Duration::from_millis(50));
                let now = size();
                if now != last {
                    (last, since) = (now, Instant::now());
                }
            }
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::SIGINT,
            );
            let _ = c.wait();
        }
    }

    /// The captured packets matching the pcap `filter`, one `tcpdump -nn` line each (stops
    /// the capture first).
    pub fn packets(&mut self, filter: &str) -> Vec<String> {
        self.stop();
        let out = Command::new("tcpdump")
            .args(["-nn", "-r"])
            .arg(self.dir.path().join("cap.pcap"))
            .args(filter.split_whitespace())
            .stderr(Stdio::null())
            .output()
            .expect("run tcpdump -r");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The simulated cluster.
pub struct Cluster {
    pub underlay: Netns,
    pub outside: Netns,
    /// The one manifests directory every agent reads (the cluster's "API server").
    pub manifests: tempfile::TempDir,
    /// The cluster's own cgroup; each node's is a child.
    pub cgroup: PathBuf,
    pub opts: ClusterOptions,
    /// Indexed by node index - 1; `None` once removed.
    nodes: Vec<Option<ClusterNode>>,
    uid: std::sync::atomic::AtomicU64,
}

impl Cluster {
    /// Builds the underlay, the outside and `opts.nodes` nodes, and waits for every agent.
    pub fn new(opts: ClusterOptions) -> Self {
        crate::require_root();
        let underlay = Netns::new(&unique("slu"));
        let outside = Netns::new(&unique("slo"));
        underlay.sh("ip link add br0 type bridge && ip link set br0 up \
             && sysctl -qw net.ipv6.conf.all.disable_ipv6=1");
        sh(&format!(
            "ip link add out0 netns {} type veth peer name out netns {}",
            outside.name, underlay.name
        ));
        underlay.sh("ip link set out master br0 && ip link set out up");
        outside.sh(&format!(
            "ip addr add {OUTSIDE_IP}/24 dev out0 && ip link set out0 up && ip addr add {WORLD_IP}/32 dev lo"
        ));
        let manifests = tempfile::Builder::new()
            .prefix("sluice-cluster-")
            .tempdir()
            .expect("tempdir");
        let v2 = daemon::node::cgroup2_mount().expect("a cgroup v2 mount (needed for sockops)");
        let cgroup = v2.join(unique("sluice-cluster-"));
        std::fs::create_dir(&cgroup)
            .unwrap_or_else(|e| panic!("create cluster cgroup {}: {e}", cgroup.display()));
        let n = opts.nodes;
        let mut c = Self {
            underlay,
            outside,
            manifests,
            cgroup,
            opts,
            nodes: Vec::new(),
            uid: std::sync::atomic::AtomicU64::new(1),
        };
        c.write_manifest(
            "namespace-default.json",
            &json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "default", "uid": "ns-default",
                    "labels": {"kubernetes.io/metadata.name": "default"}}
            }),
        );
        // All agents start together (each takes seconds to load the datapath).
        let new: Vec<usize> = (1..=n).map(|_| c.make_node()).collect();
        for i in new {
            c.node_mut(i).wait_agent_ready();
        }
        c
    }

    /// Adds a node later: writes its Node object and starts its agent; returns its index.
    pub fn add_node(&mut self) -> usize {
        let i = self.make_node();
        self.node_mut(i).wait_agent_ready();
        i
    }

    /// Removes node `i`: deletes its Node object, stops its agent and deletes its namespace
    /// (its pods' veths go with it; their objects and namespaces are the test's).
    pub fn remove_node(&mut self, i: usize) {
        let _ = std::fs::remove_file(self.manifests.path().join(format!("node-node{i}.json")));
        let slot = self.nodes.get_mut(i - 1).expect("node index");
        let node = slot.take().expect("node already removed");
        drop(node);
    }

    /// The live nodes' indices.
    pub fn node_indices(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .filter_map(|n| n.as_ref().map(|n| n.index))
            .collect()
    }

    pub fn node(&self, i: usize) -> &ClusterNode {
        self.nodes
            .get(i.wrapping_sub(1))
            .and_then(Option::as_ref)
            .unwrap_or_else(|| panic!("no node{i}"))
    }

    pub fn node_mut(&mut self, i: usize) -> &mut ClusterNode {
        self.nodes
            .get_mut(i.wrapping_sub(1))
            .and_then(Option::as_mut)
            .unwrap_or_else(|| panic!("no node{i}"))
    }

    /// `kill -9` of node `i`'s agent (a crash).
    pub fn kill_agent(&mut self, i: usize) {
        self.node_mut(i).stop_agent(true);
    }

    /// Starts node `i`'s agent again and waits for it.
    pub fn start_agent(&mut self, i: usize) {
        let dir = self.manifests.path().to_path_buf();
        let n = self.nodes[i - 1].as_mut().expect("node removed");
        n.spawn_agent(&dir, &self.opts);
        n.wait_agent_ready();
    }

    /// Every agent's log, for failure messages.
    pub fn agent_logs(&self) -> String {
        let mut s = String::new();
        for n in self.nodes.iter().flatten() {
            s.push_str(&format!(
                "==== agent of {} ====\n{}\n",
                n.name,
                n.agent_log()
            ));
        }
        s
    }

    /// Writes (atomically: a rename) a manifest into the shared directory.
    pub fn write_manifest(&self, file: &str, obj: &Value) {
        let dir = self.manifests.path();
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(obj).expect("encode manifest"),
        )
        .unwrap_or_else(|e| panic!("write manifest {file}: {e}"));
        std::fs::rename(&tmp, dir.join(file))
            .unwrap_or_else(|e| panic!("rename manifest {file}: {e}"));
    }

    /// Writes a YAML (or JSON) manifest text as it is.
    pub fn write_manifest_text(&self, file: &str, text: &str) {
        let dir = self.manifests.path();
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write manifest {file}: {e}"));
        std::fs::rename(&tmp, dir.join(file))
            .unwrap_or_else(|e| panic!("rename manifest {file}: {e}"));
    }

    pub fn remove_manifest(&self, file: &str) {
        let _ = std::fs::remove_file(self.manifests.path().join(file));
    }

    fn next_uid(&self) -> u64 {
        self.uid.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// The Node object of node `i`, as the API server holds it.
    pub fn node_object(i: usize) -> Value {
        let name = format!("node{i}");
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "uid": format!("node-uid-{i}"),
                "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
            "spec": {"podCIDR": pod_cidr(i), "podCIDRs": [pod_cidr(i)]},
            "status": {"addresses": [
                {"type": "InternalIP", "address": node_ip(i).to_string()},
                {"type": "Hostname", "address": name}
            ]}
        })
    }

    /// Builds node `nodes.len() + 1`: namespace, uplink into the bridge, dirs, bpffs, cgroup,
    /// Node object; spawns its agent (not waited for).
    fn make_node(&mut self) -> usize {
        let i = self.nodes.len() + 1;
        let name = format!("node{i}");
        let ip = node_ip(i);
        let ns = Netns::new(&unique("sln"));
        sh(&format!(
            "ip link add up0 netns {} type veth peer name n{i} netns {}",
            ns.name, self.underlay.name
        ));
        self.underlay.sh(&format!(
            "ip link set n{i} master br0 && ip link set n{i} up"
        ));
        ns.sh(&format!(
            "ip addr add {ip}/24 dev up0 && ip link set up0 up && ip route add default via {OUTSIDE_IP}"
        ));
        let dir = tempfile::Builder::new()
            .prefix("sluice-test-")
            .tempdir()
            .expect("tempdir");
        for d in ["bpf", "conf", "bin", "state"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("mkdir");
        }
        let cgroup = self.cgroup.join(&name);
        std::fs::create_dir(&cgroup)
            .unwrap_or_else(|e| panic!("create node cgroup {}: {e}", cgroup.display()));
        // The node is owned (and so released) before anything else can fail.
        self.nodes.push(Some(ClusterNode {
            index: i,
            name,
            ip,
            ns,
            dir,
            cgroup,
            published: Instant::now(),
            agent: None,
        }));
        let bpf = self.node(i).bpffs();
        nix::mount::mount(
            Some("bpf"),
            &bpf,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount a bpffs for the node");
        self.write_manifest(&format!("node-node{i}.json"), &Self::node_object(i));
        let dir = self.manifests.path().to_path_buf();
        let n = self.nodes[i - 1].as_mut().expect("just made");
        n.published = Instant::now();
        n.spawn_agent(&dir, &self.opts);
        i
    }

    fn pod_file(namespace: &str, name: &str) -> String {
        format!("pod-{namespace}-{name}.json")
    }

    fn pod_object(
        &self,
        node: usize,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Value {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels,
                "uid": format!("pod-uid-{}", self.next_uid()),
                "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": format!("node{node}"),
                "containers": [{"name": "main", "image": "busybox"}]},
            "status": {"phase": "Pending"}
        })
    }

    /// Makes pod `name` (namespace `default`) with `labels` on node `node`, as the API server,
    /// the runtime and kubelet do.
    pub fn add_pod(&self, node: usize, name: &str, labels: &[(&str, &str)]) -> ClusterPod {
        self.add_pod_in(node, "default", name, labels)
    }

    /// [`Cluster::add_pod`] in namespace `namespace` (write its Namespace object first).
    pub fn add_pod_in(
        &self,
        node: usize,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
    ) -> ClusterPod {
        let n = self.node(node);
        let mut obj = self.pod_object(node, namespace, name, labels);
        let file = Self::pod_file(namespace, name);
        self.write_manifest(&file, &obj);
        let ns = Netns::new(&unique("slp"));
        let cid = unique("c");
        let mut call = CniCall::attachment("ADD", "1.0.0", &cid, &ns.path(), name);
        call.args = Some(format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={cid}"
        ));
        let out = n.cni(&call);
        if out.status != 0 {
            self.remove_manifest(&file);
            panic!(
                "CNI ADD of {namespace}/{name} on {} failed: {} {}",
                n.name, out.stdout, out.stderr
            );
        }
        let result = out.json();
        let ip: Ipv4Addr = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no IPv4 address in {result}"));
        obj["status"] = json!({
            "phase": "Running",
            "hostIP": n.ip.to_string(),
            "hostIPs": [{"ip": n.ip.to_string()}],
            "podIP": ip.to_string(),
            "podIPs": [{"ip": ip.to_string()}],
            "conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": "True"},
                {"type": "Ready", "status": "True"}
            ]
        });
        self.write_manifest(&file, &obj);
        ClusterPod {
            ns,
            name: name.into(),
            namespace: namespace.into(),
            cid,
            ip,
            node,
            cgroup: n.cgroup.clone(),
            result,
        }
    }

    /// Deletes a pod's object without CNI DEL (a pod of a removed node, as the pod GC does).
    pub fn forget_pod(&self, pod: &ClusterPod) {
        self.remove_manifest(&Self::pod_file(&pod.namespace, &pod.name));
    }

    /// DELs a pod on its node (asserting success) and deletes its object.
    pub fn del_pod(&self, pod: &ClusterPod) {
        let mut call = CniCall::attachment("DEL", "1.0.0", &pod.cid, &pod.ns.path(), &pod.name);
        call.args = Some(format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
            pod.namespace, pod.name, pod.cid
        ));
        self.node(pod.node).cni(&call).assert_ok();
        self.remove_manifest(&Self::pod_file(&pod.namespace, &pod.name));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Nodes first (agents, bpffs, their cgroups), then the cluster's cgroup; the
        // namespaces and the manifests dir go with the fields.
        self.nodes.clear();
        remove_cgroup(&self.cgroup);
    }
}

/// Polls `f` every 50 ms until it holds or `limit` has passed; returns how long it took, or
/// `None`. A bound against hanging, not a timing assertion.
pub fn poll_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sh(script: &str) {
    let out = Command::new("sh")
        .args(["-c", script])
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
