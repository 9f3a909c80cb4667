//! `sluice-tunnel` and `sluice-native`: two Sluice nodes on the underlay of [`super::topo`],
//! each its own node namespace with the real `sluice-agent` (`--routing tunnel|native`), its
//! own bpffs, cgroup, state and CNI dirs, both agents in standalone mode on ONE manifests
//! directory holding the two Node objects (pod CIDR, `InternalIP`), as the agents of a small
//! cluster share an API server. One pod per node, made by exec'ing that node's installed CNI
//! plugin as a runtime does, its processes in its node's cgroup (so socket programs apply as
//! in a cluster: socket acceleration is on by default and stays same-node).
//!
//! A minimal cluster of the bench's own: the integration fixture's simulated cluster
//! (`test_support::cluster`) was not there when this was written.

use std::{
    ffi::OsStr,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use test_support::{bin, unique, Netns};

use super::{
    super::{
        cni::CniPlugin,
        topo::{path_report, Pods, System, MTU},
        Context as _, Error, Result,
    },
    topo::{node_ip, pod_cidr, Underlay, VXLAN_OVERHEAD},
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Routing {
    Tunnel,
    Native,
}

impl Routing {
    fn flag(self) -> &'static str {
        match self {
            Self::Tunnel => "tunnel",
            Self::Native => "native",
        }
    }

    /// The pods' MTU: the uplink's, less VXLAN's overhead in tunnel mode.
    pub fn pod_mtu(self) -> u32 {
        match self {
            Self::Tunnel => MTU - VXLAN_OVERHEAD,
            Self::Native => MTU,
        }
    }
}

/// How long an agent may take to install its CNI config and open its socket.
const READY: Duration = Duration::from_secs(30);

/// One Sluice node of the pair.
pub struct ClusterNode {
    pub ns: Netns,
    /// bpf/ (a bpffs mount), conf/, bin/, state/, agent.log.
    dir: tempfile::TempDir,
    cgroup: PathBuf,
    agent: Option<Child>,
}

impl ClusterNode {
    /// Node `i` (1 or 2) on `underlay`, its agent started on the shared `manifests`.
    fn new(underlay: &Underlay, i: u8, manifests: &Path, args: &[String]) -> Result<Self> {
        let ns = Netns::new(&unique("slxn"));
        underlay.join(&ns, i)?;
        let dir = tempfile::Builder::new()
            .prefix("sluice-bench-")
            .tempdir()
            .context("make a temporary directory")?;
        for d in ["bpf", "conf", "bin", "state"] {
            std::fs::create_dir_all(dir.path().join(d)).context("make the node's directories")?;
        }
        let v2 = daemon::node::cgroup2_mount().ok_or_else(|| {
            Error::msg("no cgroup v2 mount (the agent's socket programs need one)")
        })?;
        let cgroup = v2.join(unique("sluice-bench-"));
        std::fs::create_dir(&cgroup)
            .with_context(|| format!("create the node's cgroup {}", cgroup.display()))?;
        let mut n = Self {
            ns,
            dir,
            cgroup,
            agent: None,
        };
        nix::mount::mount(
            Some("bpf"),
            &n.path("bpf"),
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .context("mount a bpffs for the node")?;
        n.start_agent(i, manifests, args)?;
        Ok(n)
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    fn start_agent(&mut self, i: u8, manifests: &Path, args: &[String]) -> Result<()> {
        let log = std::fs::File::create(self.path("agent.log")).context("open the agent log")?;
        let child = self
            .ns
            .command(bin("sluice-agent"))
            .args(["--node-name", &format!("node-{i}"), "--uplink", "up0"])
            .arg("--manifests")
            .arg(manifests)
            .arg("--state-dir")
            .arg(self.path("state"))
            .arg("--bpffs")
            .arg(self.path("bpf"))
            .arg("--cni-conf-dir")
            .arg(self.path("conf"))
            .arg("--cni-bin-dir")
            .arg(self.path("bin"))
            .arg("--cni-plugin")
            .arg(bin("sluice-cni"))
            .arg("--cgroup-root")
            .arg(&self.cgroup)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("dup the agent log")?)
            .stderr(log)
            .spawn()
            .context("start sluice-agent")?;
        self.agent = Some(child);
        let deadline = Instant::now() + READY;
        let (sock, conf) = (
            self.path("state").join("agent.sock"),
            self.path("conf").join("05-sluice.conflist"),
        );
        while !(sock.exists() && conf.exists()) {
            let exited = self
                .agent
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                return Err(Error::msg(format!(
                    "sluice-agent of node-{i} not ready ({}):\n{}",
                    exited.map_or("still starting after 30 s".into(), |s| s.to_string()),
                    self.agent_log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }

    /// The node's installed plugin, with the config libcni derives from its conflist.
    fn plugin(&self) -> Result<CniPlugin<'_>> {
        let text = std::fs::read_to_string(self.path("conf").join("05-sluice.conflist"))
            .context("read the installed conflist")?;
        let list: serde_json::Value =
            serde_json::from_str(&text).context("the installed conflist is not JSON")?;
        let mut conf = list["plugins"][0].clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        Ok(CniPlugin {
            node: &self.ns,
            program: self.path("bin").join("sluice"),
            cni_path: self.path("bin"),
            config: serde_json::to_vec(&conf).expect("encode JSON"),
        })
    }

    /// A pod on this node: a namespace ADDed through the plugin, and its address.
    fn add_pod(&self, name: &str) -> Result<(Netns, Ipv4Addr)> {
        let ns = Netns::new(&unique("slxp"));
        let result = self
            .plugin()?
            .call("ADD", &unique("c"), &ns.path(), name)?
            .result()
            .with_context(|| format!("sluice ADD of {name}"))?;
        let ip = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| Error::msg(format!("no IPv4 address in the result: {result}")))?;
        Ok((ns, ip))
    }

    fn status(&self) -> Option<serde_json::Value> {
        let out = self
            .ns
            .command(bin("sluicectl"))
            .args(["status", "-o", "json", "--state-dir"])
            .arg(self.path("state"))
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
            let _ = c.wait();
        }
        let _ = nix::mount::umount2(&self.path("bpf"), nix::mount::MntFlags::MNT_DETACH);
        // Whatever is left in the cgroup (the pods' load processes) is killed (cgroup.kill,
        // Linux 5.14); the directory goes once they are reaped.
        let _ = std::fs::write(self.cgroup.join("cgroup.kill"), "1");
        for _ in 0..250 {
            match std::fs::remove_dir(&self.cgroup) {
                Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break,
            }
        }
    }
}

/// Two Sluice nodes, a client pod on node 1 and a server pod on node 2.
pub struct SluicePair {
    // Pods first, then the nodes (agents stop, bpffs unmounted), then the underlay.
    client: Netns,
    server: Netns,
    server_ip: Ipv4Addr,
    nodes: [ClusterNode; 2],
    _underlay: Underlay,
    _manifests: tempfile::TempDir,
    pub routing: Routing,
    name: &'static str,
}

/// The two Node objects as the API server would hold them.
fn node_manifests() -> String {
    [1u8, 2]
        .iter()
        .map(|&i| {
            format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-{i}\nspec:\n  podCIDR: {c}\n  \
                 podCIDRs: [{c}]\nstatus:\n  addresses:\n  - {{type: InternalIP, address: {a}}}\n  \
                 - {{type: Hostname, address: node-{i}}}\n",
                c = pod_cidr(i),
                a = node_ip(i)
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

impl SluicePair {
    pub fn new(routing: Routing, agent_args: &[String]) -> Result<Self> {
        let name = match routing {
            Routing::Tunnel => "sluice-tunnel",
            Routing::Native => "sluice-native",
        };
        let underlay = Underlay::new()?;
        let manifests = tempfile::Builder::new()
            .prefix("sluice-bench-manifests-")
            .tempdir()
            .context("make the manifests directory")?;
        std::fs::write(manifests.path().join("nodes.yaml"), node_manifests())
            .context("write the Node manifests")?;
        let mut args = vec!["--routing".to_string(), routing.flag().to_string()];
        args.extend(agent_args.iter().cloned());
        let nodes = [
            ClusterNode::new(&underlay, 1, manifests.path(), &args)?,
            ClusterNode::new(&underlay, 2, manifests.path(), &args)?,
        ];
        let (client, _) = nodes[0].add_pod("bench-client")?;
        let (server, server_ip) = nodes[1].add_pod("bench-server")?;
        Ok(Self {
            client,
            server,
            server_ip,
            nodes,
            _underlay: underlay,
            _manifests: manifests,
            routing,
            name,
        })
    }

    /// The node a pod's namespace belongs to.
    fn node_of(&self, ns: &Netns) -> &ClusterNode {
        if ns.name == self.client.name {
            &self.nodes[0]
        } else {
            &self.nodes[1]
        }
    }

    /// Both nodes' agent logs, for an error.
    pub fn agent_logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("node-{}:\n{}", i + 1, n.agent_log()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl System for SluicePair {
    fn name(&self) -> &'static str {
        self.name
    }

    fn pods(&self) -> Pods<'_> {
        Pods {
            client: &self.client,
            server: &self.server,
            server_ip: self.server_ip,
        }
    }

    /// In its node's cgroup, as a pod's containers are.
    fn pod_command(&self, ns: &Netns, program: &OsStr) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && n="$1" && shift && exec nsenter --net="$n" -- "$@""#)
            .arg(&self.node_of(ns).cgroup)
            .arg(ns.path())
            .arg(program);
        c
    }

    /// Both nodes' non-zero datapath counters.
    fn path_report(&self) -> Option<String> {
        let a = path_report(&self.nodes[0].status()?)?;
        let b = path_report(&self.nodes[1].status()?)?;
        Some(format!("node-1: {a}; node-2: {b}"))
    }

    fn cni(&self) -> Option<CniPlugin<'_>> {
        None
    }
}
