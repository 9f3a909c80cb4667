//! The four systems under test, each two "pods" (namespaces) on one node, MTU 1500 everywhere:
//!
//! ```text
//! sluice            client pod ──veth── node (agent: TC + socket programs) ──veth── server pod
//! sluice-nosockmap  client pod ──veth── node (agent --sockmap=false: TC) ──veth── server pod
//! veth              client ns ─────── one veth pair, no program, no rule ─────── server ns
//! bridge            client pod ──veth── node (cni0, iptables) ───────────veth── server pod
//! ```
//! Both Sluice systems are the integration fixture's [`Node`], each with its own agent, bpffs
//! and cgroup, its pods made by the real CNI binary and their processes in its cgroup as a
//! cluster's pods are. `sluice` runs the agent's defaults (socket acceleration on), so TCP data
//! between its pods goes socket to socket; `sluice-nosockmap` is the same node with
//! `--sockmap=false`, so the same traffic takes the TC path only. The
//! bridge node is what a kubeadm node with the `bridge` conflist looks like: cni0 as the pods'
//! gateway, `ipMasq` (the plugin adds its own nat rules), hairpin mode, and the FORWARD accept
//! rules kube-proxy and kubeadm's docs put on such nodes. br_netfilter is built into this
//! kernel and on by default in every namespace (`bridge-nf-call-iptables=1`, as kubeadm
//! requires), so bridged pod traffic crosses those rules and conntrack, as on a real node.
//! Every namespace is made here and removed by its guard; nothing is added to the root one.

use std::{
    ffi::OsStr,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::json;

use test_support::{unique, Netns, Node, NodeOptions, Pod};

use super::{cni::CniPlugin, Context as _, Error, Result};

pub const MTU: u32 = 1500;
/// The bridge node's pod CIDR: the same as the Sluice node's.
const BRIDGE_POD_CIDR: &str = test_support::node::DEFAULT_POD_CIDR;
pub(super) const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// The client and server pod of a system.
pub struct Pods<'a> {
    pub client: &'a Netns,
    pub server: &'a Netns,
    pub server_ip: Ipv4Addr,
}

pub trait System {
    /// `sluice`, `sluice-nosockmap`, `veth` or `bridge`: the name in the table and the JSON.
    fn name(&self) -> &'static str;
    fn pods(&self) -> Pods<'_>;
    /// The system's CNI plugin, as its node's runtime execs it; `None` for the bare veth.
    fn cni(&self) -> Option<CniPlugin<'_>>;

    /// A command running `program` as a process of the pod whose namespace is `ns`. The
    /// program is exec'd (no process in between), so its rusage is its own.
    fn pod_command(&self, ns: &Netns, program: &OsStr) -> Command {
        ns.command(program)
    }

    /// Which paths of the datapath carried the traffic so far, if the system can tell.
    fn path_report(&self) -> Option<String> {
        None
    }

    /// Bytes sk_msg handed from socket to socket so far (`sock:redirected`), if the system
    /// has socket programs.
    fn redirected_bytes(&self) -> Option<u64> {
        None
    }
}

/// Makes a pod ready for the load: checks its MTU, and lets `crr` clients reuse TIME_WAIT
/// ports and use the whole port range (tens of thousands of short connections a run), the
/// same in every system.
pub(super) fn prepare_pods(pods: Pods<'_>) -> Result<()> {
    prepare_pods_at(pods, MTU)
}

/// [`prepare_pods`] for pods whose eth0 must have MTU `want` (an overlay's pods have less).
pub(super) fn prepare_pods_at(pods: Pods<'_>, want: u32) -> Result<()> {
    for ns in [pods.client, pods.server] {
        // Through netlink: /sys under nsenter still shows the root namespace's interfaces.
        let link = sh(ns, "ip -o link show dev eth0")?;
        let have = link.split_whitespace().skip_while(|w| *w != "mtu").nth(1);
        if have != Some(want.to_string().as_str()) {
            return Err(Error::msg(format!(
                "eth0 in {} has MTU {have:?}, the benchmark compares at {want}",
                ns.name
            )));
        }
    }
    sh(
        pods.client,
        "sysctl -qw net.ipv4.tcp_tw_reuse=1 && sysctl -qw net.ipv4.ip_local_port_range='1024 65535'",
    )?;
    Ok(())
}

/// The agent flags of a single-node system: `agent_args`, with `--routing=native` unless
/// they name a mode. A node alone has no peer to tunnel to, and tunnel mode (the agent's
/// default) gives pods the uplink MTU less the VXLAN overhead, for a tunnel this topology
/// never uses: the same-node records compare every system at the same 1500-byte MTU.
pub fn one_node_args(agent_args: &[String]) -> Vec<String> {
    let mut args = agent_args.to_vec();
    if !args
        .iter()
        .any(|a| a == "--routing" || a.starts_with("--routing="))
    {
        args.push("--routing=native".into());
    }
    args
}

/// Runs `script` in `ns`; fails with its output unless it succeeds.
pub fn sh(ns: &Netns, script: &str) -> Result<String> {
    let out = ns.sh_output(script);
    if !out.status.success() {
        return Err(Error::msg(format!(
            "in {}: `{script}` failed: {}",
            ns.name,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sluice: the fixture's node with the real agent, two pods made by the real CNI plugin.
pub struct Sluice {
    // Pods first: fields drop in order, pods before their node.
    client: Pod,
    server: Pod,
    node: Node,
    name: &'static str,
}

impl Sluice {
    /// A node whose agent runs with its defaults plus `agent_args`: socket acceleration on.
    pub fn new(agent_args: &[String]) -> Result<Self> {
        Self::build("sluice", agent_args.to_vec(), true)
    }

    /// The same node with `--sockmap=false` added: TCP between its pods takes the TC path.
    pub fn without_sockmap(agent_args: &[String]) -> Result<Self> {
        let mut args = agent_args.to_vec();
        args.push("--sockmap=false".into());
        Self::build("sluice-nosockmap", args, false)
    }

    fn build(name: &'static str, agent_args: Vec<String>, sockmap: bool) -> Result<Self> {
        let node = Node::new(NodeOptions {
            agent_args: one_node_args(&agent_args),
            ..NodeOptions::default()
        });
        let client = node.add_pod("bench-client");
        let server = node.add_pod("bench-server");
        let s = Self {
            client,
            server,
            node,
            name,
        };
        // A comparison of acceleration on and off means nothing unless the agents say so.
        let on = s.status().and_then(|v| v["sockmap"].as_bool());
        if on != Some(sockmap) {
            return Err(Error::msg(format!(
                "{name}: the agent says socket acceleration is {on:?}, the run needs {sockmap}"
            )));
        }
        prepare_pods(s.pods())?;
        Ok(s)
    }

    /// `sluicectl status -o json`.
    fn status(&self) -> Option<serde_json::Value> {
        let out = self.node.sluicectl(&["status", "-o", "json"]);
        serde_json::from_slice(&out.stdout).ok()
    }
}

impl System for Sluice {
    fn name(&self) -> &'static str {
        self.name
    }

    fn pods(&self) -> Pods<'_> {
        Pods {
            client: &self.client.ns,
            server: &self.server.ns,
            server_ip: self.server.ip,
        }
    }

    /// In the node's cgroup, as a pod's containers are: the agent's socket programs (when on)
    /// apply to them as they would in a cluster.
    fn pod_command(&self, ns: &Netns, program: &OsStr) -> Command {
        self.node.pod_command(ns, program)
    }

    /// The datapath's non-zero counters (`sluicectl status`): local-pod redirects by the TC
    /// programs, sockets accelerated and bytes redirected by sk_msg.
    fn path_report(&self) -> Option<String> {
        path_report(&self.status()?)
    }

    fn redirected_bytes(&self) -> Option<u64> {
        redirected_bytes(&self.status()?)
    }

    fn cni(&self) -> Option<CniPlugin<'_>> {
        let config = serde_json::to_vec(&self.node.plugin_config("1.0.0")).expect("encode JSON");
        Some(CniPlugin {
            node: &self.node.node,
            program: self.node.path("bin").join("sluice"),
            cni_path: self.node.path("bin"),
            config,
        })
    }
}

/// The limit: one veth pair between two namespaces, nothing else.
pub struct Veth {
    client: Netns,
    server: Netns,
}

const VETH_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 9, 1);
const VETH_SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 9, 2);

impl Veth {
    pub fn new() -> Result<Self> {
        let v = Self {
            client: Netns::new(&unique("slbv")),
            server: Netns::new(&unique("slbv")),
        };
        // Both ends are created directly in their namespaces.
        let out = Command::new("ip")
            .args(["link", "add", "eth0", "netns", &v.client.name, "mtu"])
            .arg(MTU.to_string())
            .args([
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &v.server.name,
            ])
            .output()
            .context("run ip link add")?;
        if !out.status.success() {
            return Err(Error::msg(format!(
                "ip link add (veth pair): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        for (ns, ip) in [(&v.client, VETH_CLIENT_IP), (&v.server, VETH_SERVER_IP)] {
            sh(
                ns,
                &format!("ip addr add {ip}/24 dev eth0 && ip link set eth0 mtu {MTU} up"),
            )?;
        }
        prepare_pods(v.pods())?;
        Ok(v)
    }
}

impl System for Veth {
    fn name(&self) -> &'static str {
        "veth"
    }

    fn pods(&self) -> Pods<'_> {
        Pods {
            client: &self.client,
            server: &self.server,
            server_ip: VETH_SERVER_IP,
        }
    }

    fn cni(&self) -> Option<CniPlugin<'_>> {
        None
    }
}

/// The reference CNI: a node namespace running `bridge` + `host-local`, two pods it made.
pub struct Bridge {
    client: Netns,
    server: Netns,
    server_ip: Ipv4Addr,
    node: Netns,
    /// host-local's dataDir (so no state lands in /var/lib/cni).
    dir: tempfile::TempDir,
}

/// The rules kube-proxy (KUBE-FORWARD) and kubeadm's CNI docs (pod CIDR accepts) put in a
/// node's filter FORWARD chain; the bridge plugin adds its nat rules itself on each ADD.
pub(super) const FORWARD_RULES: &[&str] = &[
    "-N KUBE-FORWARD",
    "-A FORWARD -m comment --comment 'kubernetes forwarding rules' -j KUBE-FORWARD",
    "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
    "-A KUBE-FORWARD -m comment --comment 'kubernetes forwarding rules' -m mark --mark 0x4000/0x4000 -j ACCEPT",
    "-A KUBE-FORWARD -m comment --comment 'kubernetes forwarding conntrack rule' -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    "-A FORWARD -s 10.244.0.0/16 -j ACCEPT",
    "-A FORWARD -d 10.244.0.0/16 -j ACCEPT",
];

impl Bridge {
    pub fn new() -> Result<Self> {
        for p in ["bridge", "host-local"] {
            let path = Path::new(CNI_BIN_DIR).join(p);
            if !path.exists() {
                return Err(Error::msg(format!(
                    "{} not found: install containernetworking-plugins (scripts/setup does)",
                    path.display()
                )));
            }
        }
        let node = Netns::new(&unique("slbn"));
        let dir = tempfile::Builder::new()
            .prefix("sluice-bench-")
            .tempdir()
            .context("make a temporary directory")?;
        for rule in FORWARD_RULES {
            sh(&node, &format!("iptables -w {rule}"))?;
        }
        let client = Netns::new(&unique("slbp"));
        let server = Netns::new(&unique("slbp"));
        let mut b = Self {
            client,
            server,
            server_ip: Ipv4Addr::UNSPECIFIED,
            node,
            dir,
        };
        b.add_pod(&b.client, "bench-client")?;
        b.server_ip = b.add_pod(&b.server, "bench-server")?;
        prepare_pods(b.pods())?;
        Ok(b)
    }

    /// The node namespace: where the plugin runs and kube-proxy would write its rules.
    pub(super) fn node(&self) -> &Netns {
        &self.node
    }

    /// A new pod: a namespace ADDed through the plugin, and its address.
    pub(super) fn new_pod(&self, name: &str) -> Result<(Netns, Ipv4Addr)> {
        let ns = Netns::new(&unique("slbp"));
        let ip = self.add_pod(&ns, name)?;
        Ok((ns, ip))
    }

    /// ADDs the pod in `ns` through the plugin, as the runtime does; returns its address.
    fn add_pod(&self, ns: &Netns, name: &str) -> Result<Ipv4Addr> {
        let result = self
            .plugin()
            .call("ADD", &unique("c"), &ns.path(), name)?
            .result()
            .with_context(|| format!("bridge ADD of {name}"))?;
        result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| Error::msg(format!("no IPv4 address in the result: {result}")))
    }

    /// The conflist a kubeadm node with the bridge plugin carries.
    fn conflist(&self) -> serde_json::Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "k8s-pod-network",
            "plugins": [{
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "mtu": MTU,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": BRIDGE_POD_CIDR }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": self.dir.path().join("ipam"),
                },
            }],
        })
    }

    fn plugin(&self) -> CniPlugin<'_> {
        let list = self.conflist();
        let mut conf = list["plugins"][0].clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        CniPlugin {
            node: &self.node,
            program: PathBuf::from(CNI_BIN_DIR).join("bridge"),
            cni_path: PathBuf::from(CNI_BIN_DIR),
            config: serde_json::to_vec(&conf).expect("encode JSON"),
        }
    }
}

impl System for Bridge {
    fn name(&self) -> &'static str {
        "bridge"
    }

    fn pods(&self) -> Pods<'_> {
        Pods {
            client: &self.client,
            server: &self.server,
            server_ip: self.server_ip,
        }
    }

    fn cni(&self) -> Option<CniPlugin<'_>> {
        Some(self.plugin())
    }
}

/// A Sluice node's non-zero datapath counters from its `sluicectl status -o json`, for the
/// run's summary.
pub(super) fn path_report(status: &serde_json::Value) -> Option<String> {
    let parts: Vec<String> = status["counters"]
        .as_array()?
        .iter()
        .filter(|c| c["packets"].as_u64().unwrap_or(0) > 0)
        .map(|c| {
            format!(
                "{} {} packets/{} bytes",
                c["reason"].as_str().unwrap_or("?"),
                c["packets"],
                c["bytes"]
            )
        })
        .collect();
    Some(parts.join(", "))
}

/// The bytes sk_msg redirected, from a `sluicectl status -o json` (a counter that never
/// moved may be absent: none redirected).
pub(super) fn redirected_bytes(status: &serde_json::Value) -> Option<u64> {
    Some(
        status["counters"]
            .as_array()?
            .iter()
            .find(|c| c["reason"] == "sock:redirected")
            .map_or(0, |c| c["bytes"].as_u64().unwrap_or(0)),
    )
}
