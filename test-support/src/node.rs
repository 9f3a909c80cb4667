//! [`Node`]: one Sluice node under test — a node namespace with an uplink to an "outside"
//! namespace, a private bpffs, the real `sluice-agent` running inside, and pods created by
//! exec'ing the installed CNI plugin exactly as a runtime does.

use std::{
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{bin, unique, Netns};

pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// An address "on the internet", held by the outside namespace.
pub const WORLD_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const DEFAULT_POD_CIDR: &str = "10.244.1.0/24";

pub struct NodeOptions {
    /// `--pod-cidr`; `None` leaves it to a Node object in the manifests.
    pub pod_cidr: Option<String>,
    /// Run the agent in standalone mode on `<dir>/manifests`.
    pub manifests: bool,
    /// Extra agent flags.
    pub agent_args: Vec<String>,
    /// Start the agent (and wait for it to be ready) in `new`.
    pub start_agent: bool,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            pod_cidr: Some(DEFAULT_POD_CIDR.into()),
            manifests: false,
            agent_args: Vec::new(),
            start_agent: true,
        }
    }
}

pub struct Node {
    pub node: Netns,
    pub outside: Netns,
    /// Holds bpf/ (a bpffs mount), conf/, bin/, state/, manifests/, agent.log.
    pub dir: tempfile::TempDir,
    /// This node's own cgroup v2 directory (the agent's --cgroup-root), never the root.
    pub cgroup: PathBuf,
    opts: NodeOptions,
    agent: Option<Child>,
}

/// One CNI invocation, as a runtime makes it.
#[derive(Clone, Debug)]
pub struct CniCall {
    pub command: String,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    /// cniVersion injected into the config (libcni does this).
    pub version: String,
    /// Keys merged into the plugin config (e.g. prevResult, cni.dev/valid-attachments).
    pub extra: Value,
    /// Raw stdin instead of the derived config.
    pub stdin: Option<Vec<u8>>,
    /// Variables to leave unset.
    pub unset: Vec<String>,
}

impl CniCall {
    pub fn new(command: &str, version: &str) -> Self {
        Self {
            command: command.into(),
            container_id: None,
            netns: None,
            ifname: Some("eth0".into()),
            args: None,
            version: version.into(),
            extra: json!({}),
            stdin: None,
            unset: Vec::new(),
        }
    }

    /// ADD/DEL/CHECK for container `cid` in `netns`, with Kubernetes' CNI_ARGS.
    pub fn attachment(command: &str, version: &str, cid: &str, netns: &Path, pod: &str) -> Self {
        let mut c = Self::new(command, version);
        c.container_id = Some(cid.into());
        c.netns = Some(netns.to_path_buf());
        c.args = Some(format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={cid}"
        ));
        c
    }
}

#[derive(Debug)]
pub struct CniOutput {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CniOutput {
    /// stdout parsed as JSON (panics with the raw output if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}, stderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// The error code of a failed call (panics if it succeeded).
    pub fn error_code(&self) -> u64 {
        assert_ne!(
            self.status, 0,
            "expected failure, got success: {}",
            self.stdout
        );
        self.json()["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no code in {}", self.stdout))
    }

    pub fn assert_ok(&self) -> &Self {
        assert_eq!(
            self.status, 0,
            "CNI call failed: stdout {} stderr {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// A pod: its namespace, container id and address.
pub struct Pod {
    pub ns: Netns,
    pub name: String,
    pub cid: String,
    pub ip: Ipv4Addr,
    pub result: Value,
}

impl Pod {
    pub fn sh(&self, script: &str) -> String {
        self.ns.sh(script)
    }

    /// Whether `ping -c1` to `dst` succeeds from this pod.
    pub fn ping(&self, dst: Ipv4Addr) -> bool {
        self.ns
            .sh_output(&format!("ping -c1 -W2 {dst}"))
            .status
            .success()
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

impl Node {
    pub fn new(opts: NodeOptions) -> Self {
        crate::require_root();
        let node = Netns::new(&unique("sln"));
        let outside = Netns::new(&unique("slo"));
        sh(&format!(
            "ip link add up0 netns {} type veth peer name out0 netns {}",
            node.name, outside.name
        ));
        node.sh(&format!(
            "ip addr add {NODE_IP}/24 dev up0 && ip link set up0 up && ip route add default via {OUTSIDE_IP}"
        ));
        outside.sh(&format!(
            "ip addr add {OUTSIDE_IP}/24 dev out0 && ip link set out0 up && ip addr add {WORLD_IP}/32 dev lo"
        ));
        let dir = tempfile::Builder::new()
            .prefix("sluice-test-")
            .tempdir()
            .expect("tempdir");
        for d in ["bpf", "conf", "bin", "state", "manifests"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("mkdir");
        }
        let bpf = dir.path().join("bpf");
        nix::mount::mount(
            Some("bpf"),
            &bpf,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount a bpffs for the test");
        let v2 = daemon::node::cgroup2_mount().expect("a cgroup v2 mount (needed for sockops)");
        let cgroup = v2.join(unique("sluice-test-"));
        std::fs::create_dir(&cgroup)
            .unwrap_or_else(|e| panic!("create test cgroup {}: {e}", cgroup.display()));
        let start = opts.start_agent;
        let mut n = Self {
            node,
            outside,
            dir,
            cgroup,
            opts,
            agent: None,
        };
        if start {
            n.start_agent();
        }
        n
    }

    /// The options the next [`Node::start_agent`] uses (e.g. another pod CIDR on restart).
    pub fn options_mut(&mut self) -> &mut NodeOptions {
        &mut self.opts
    }

    pub fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    pub fn bpffs(&self) -> PathBuf {
        self.path("bpf")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path("state")
    }

    pub fn manifests_dir(&self) -> PathBuf {
        self.path("manifests")
    }

    pub fn conflist_path(&self) -> PathBuf {
        self.path("conf").join("05-sluice.conflist")
    }

    /// The agent's command line.
    pub fn agent_command(&self) -> Command {
        let mut c = self.node.command(bin("sluice-agent"));
        c.args(["--node-name", "node-1", "--uplink", "up0"]);
        c.arg("--state-dir").arg(self.state_dir());
        c.arg("--bpffs").arg(self.bpffs());
        c.arg("--cni-conf-dir").arg(self.path("conf"));
        c.arg("--cni-bin-dir").arg(self.path("bin"));
        c.arg("--cni-plugin").arg(bin("sluice-cni"));
        c.arg("--cgroup-root").arg(&self.cgroup);
        if let Some(cidr) = &self.opts.pod_cidr {
            c.args(["--pod-cidr", cidr]);
        }
        if self.opts.manifests {
            c.arg("--manifests").arg(self.manifests_dir());
        }
        c.args(&self.opts.agent_args);
        c
    }

    /// Starts the agent and waits until it has installed the CNI config and opened its socket.
    pub fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "agent already running");
        // A killed agent leaves its socket behind; readiness is the new agent binding it.
        let _ = std::fs::remove_file(self.state_dir().join("agent.sock"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("agent.log"))
            .expect("open agent log");
        let child = self
            .agent_command()
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn sluice-agent");
        self.agent = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let sock = self.state_dir().join("agent.sock");
        while !(self.conflist_path().exists() && sock.exists()) {
            if let Some(st) = self
                .agent
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "sluice-agent exited ({st}) before it was ready:\n{}",
                    self.agent_log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready in 30 s:\n{}",
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

    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(|c| c.id())
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }

    /// The network config the plugin gets for `version`, derived from the installed conflist
    /// as libcni derives it (plugin object + `name` + `cniVersion`).
    pub fn plugin_config(&self, version: &str) -> Value {
        plugin_config(&self.conflist_path(), version)
    }

    /// Execs the installed plugin (`<bin>/sluice`) in the node namespace, as a runtime does.
    pub fn cni(&self, call: &CniCall) -> CniOutput {
        exec_cni(&self.node, &self.path("bin"), &self.conflist_path(), call)
    }

    /// Creates a pod namespace and ADDs it (config version 1.0.0, as podman/kubelet would).
    pub fn add_pod(&self, name: &str) -> Pod {
        self.add_pod_version(name, "1.0.0")
    }

    pub fn add_pod_version(&self, name: &str, version: &str) -> Pod {
        let ns = Netns::new(&unique("slp"));
        let cid = unique("c");
        let out = self.cni(&CniCall::attachment("ADD", version, &cid, &ns.path(), name));
        out.assert_ok();
        let result = out.json();
        let addr = result["ips"][0]["address"]
            .as_str()
            .expect("address in result");
        let ip: Ipv4Addr = addr
            .split('/')
            .next()
            .unwrap()
            .parse()
            .expect("IPv4 address");
        Pod {
            ns,
            name: name.into(),
            cid,
            ip,
            result,
        }
    }

    /// DELs a pod (config 1.0.0), asserting success.
    pub fn del_pod(&self, pod: &Pod) {
        self.cni(&CniCall::attachment(
            "DEL",
            "1.0.0",
            &pod.cid,
            &pod.ns.path(),
            &pod.name,
        ))
        .assert_ok();
    }

    /// A command that runs `program` inside `ns` as a process of this node's cgroup, as a pod's
    /// container processes are (socket programs only see processes of the agent's cgroup).
    pub fn pod_command(&self, ns: &Netns, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && n="$1" && shift && exec nsenter --net="$n" -- "$@""#)
            .arg(&self.cgroup)
            .arg(ns.path())
            .arg(program);
        c
    }

    /// Endpoints recorded in the datapath's maps.
    pub fn endpoints(&self) -> Vec<datapath_user::EndpointRecord> {
        datapath_user::Endpoints::open(&self.bpffs())
            .expect("open endpoint maps")
            .list()
            .expect("list endpoints")
    }

    /// Addresses held in the IPAM store.
    pub fn ipam_addresses(&self) -> Vec<String> {
        let dir = self.state_dir().join("ipam").join("sluice");
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut v: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect();
        v.sort();
        v
    }

    /// Host-side pod veths (`sl…`) in the node namespace.
    pub fn host_veths(&self) -> Vec<String> {
        let out = self.node.sh("ip -o link show");
        let mut v: Vec<String> = out
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .filter(|n| n.starts_with("sl") && n.len() == 15)
            .collect();
        v.sort();
        v
    }

    /// `sluicectl ARGS -o json` in the node namespace, parsed; panics with its output if it
    /// fails or does not print JSON.
    pub fn sluicectl_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.sluicectl(&all);
        assert!(
            out.status.success(),
            "sluicectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "sluicectl {args:?} is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// One datapath counter from `sluicectl status`: (packets, bytes). A reason the status does
    /// not list counts as zero.
    pub fn counter(&self, reason: &str) -> (u64, u64) {
        let v = self.sluicectl_json(&["status"]);
        let counters = v["counters"]
            .as_array()
            .unwrap_or_else(|| panic!("no counters in {v}"));
        counters
            .iter()
            .find(|c| c["reason"] == reason)
            .map_or((0, 0), |c| {
                let n = |k: &str| {
                    c[k].as_u64()
                        .unwrap_or_else(|| panic!("no number {k} in {c}"))
                };
                (n("packets"), n("bytes"))
            })
    }

    /// Runs `sluicectl ARGS --state-dir <state>` in the node namespace.
    pub fn sluicectl(&self, args: &[&str]) -> std::process::Output {
        self.node
            .command(bin("sluicectl"))
            .args(args)
            .arg("--state-dir")
            .arg(self.state_dir())
            .output()
            .expect("run sluicectl")
    }
}

/// The network config the plugin gets for `version`, derived from the conflist at `conflist`
/// as libcni derives it (plugin object + `name` + `cniVersion`).
pub fn plugin_config(conflist: &Path, version: &str) -> Value {
    let text = std::fs::read_to_string(conflist).expect("read conflist");
    let list: Value = serde_json::from_str(&text).expect("conflist is JSON");
    let mut p = list["plugins"][0].clone();
    p["name"] = list["name"].clone();
    p["cniVersion"] = json!(version);
    p
}

/// Execs `<bin_dir>/sluice` in namespace `node` with the config of `conflist`, as a runtime
/// does (the one place [`Node`] and the cluster fixture exec the plugin).
pub fn exec_cni(node: &Netns, bin_dir: &Path, conflist: &Path, call: &CniCall) -> CniOutput {
    let stdin = match &call.stdin {
        Some(raw) => raw.clone(),
        None => {
            let mut conf = plugin_config(conflist, &call.version);
            if let (Some(c), Some(e)) = (conf.as_object_mut(), call.extra.as_object()) {
                for (k, v) in e {
                    c.insert(k.clone(), v.clone());
                }
            }
            serde_json::to_vec(&conf).expect("encode config")
        }
    };
    let mut cmd = node.command(bin_dir.join("sluice"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd.env("CNI_COMMAND", &call.command);
    cmd.env("CNI_PATH", bin_dir);
    if let Some(v) = &call.container_id {
        cmd.env("CNI_CONTAINERID", v);
    }
    if let Some(v) = &call.netns {
        cmd.env("CNI_NETNS", v);
    }
    if let Some(v) = &call.ifname {
        cmd.env("CNI_IFNAME", v);
    }
    if let Some(v) = &call.args {
        cmd.env("CNI_ARGS", v);
    }
    for v in &call.unset {
        cmd.env_remove(v);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("exec the CNI plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&stdin)
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait for the CNI plugin");
    CniOutput {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_agent(false);
        // Uplink filters go with the namespace; pins (and the sockops link) with the bpffs.
        let _ = nix::mount::umount2(&self.bpffs(), nix::mount::MntFlags::MNT_DETACH);
        // The cgroup can go once its processes have exited: whatever a test left in it is
        // killed (cgroup v2 `cgroup.kill`, Linux 5.14), and a loaded machine may take a few
        // seconds to reap them.
        let _ = std::fs::write(self.cgroup.join("cgroup.kill"), "1");
        for _ in 0..250 {
            match std::fs::remove_dir(&self.cgroup) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break,
            }
        }
    }
}
