//! The four systems of the NetworkPolicy traffic scenarios, each a fixture node in standalone
//! mode (`--manifests`) with the same Namespaces and Pods (the [`super::manifests`] objects:
//! 103 CNI pods made here by the real plugin, the four below and 99 peers, their processes in
//! the node's cgroup):
//!
//! ```text
//! sluice                      default flags (socket acceleration on), 1,000 policies
//! sluice-nopolicy             default flags, no NetworkPolicy at all
//! sluice-nosockmap            --sockmap=false (TC path only), 1,000 policies
//! sluice-nosockmap-nopolicy   --sockmap=false, no NetworkPolicy at all
//! ```
//! Of the policies' peer set (100 pods), the client and 99 more are CNI pods of the node (why
//! not pods of other nodes: [`super::manifests`]), so the node carries 103 pods, under the
//! Kubernetes default of 110 a node.
//!
//! A node is ready once the agent has compiled and programmed what its manifests say, as
//! `sluicectl policy trace` reports it (the agent answers a trace from the set it last wrote
//! to the maps): the client allowed to the server and the outsider refused (policy systems),
//! or neither side isolated (no-policy systems); and the agent's last `network policy
//! programmed` log line says no rule entry overflowed and no endpoint failed closed. Then real
//! traffic must agree, with the counters: [`PolicyNode::check_enforcement`].

use std::{
    ffi::OsStr,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use test_support::{unique, CniCall, Netns, Node, NodeOptions, Pod};

use super::{
    super::{
        check_interrupted,
        cni::CniPlugin,
        measure::{Guarded, LOAD_PORT},
        topo::{prepare_pods, Pods, System},
        Context as _, Error, Result,
    },
    manifests::{self, CniPod, Peers, CLIENT, OUTSIDER, PROBE, SERVER},
};

/// Peer pods besides the client: with it, the 100 pods of the policies' peer set.
pub const PEER_PODS: usize = 99;
/// Bound on the agent compiling and programming a manifest set.
const PROGRAM_DEADLINE: Duration = Duration::from_secs(180);
/// A refused connection shows as a connect timing out (the SYN is dropped).
const REFUSED_TIMEOUT: Duration = Duration::from_millis(300);

pub struct PolicyNode {
    // Pods first: fields drop in order, pods before their node.
    pub client: Pod,
    pub server: Pod,
    pub outsider: Pod,
    pub probe: Pod,
    /// The rest of the peer set.
    pub peers: Vec<Pod>,
    pub node: Node,
    name: &'static str,
    /// Whether the manifests hold the 1,000 policies.
    pub policies: bool,
    sockmap: bool,
}

/// Makes a CNI pod `namespace/name` (CNI_ARGS as the kubelet passes them).
pub fn add_pod(node: &Node, namespace: &str, name: &str) -> Result<Pod> {
    let netns = Netns::new(&unique("slp"));
    let cid = unique("c");
    let mut call = CniCall::attachment("ADD", "1.0.0", &cid, &netns.path(), name);
    call.args = Some(format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};\
         K8S_POD_INFRA_CONTAINER_ID={cid}"
    ));
    let out = node.cni(&call);
    if out.status != 0 {
        return Err(Error::msg(format!(
            "CNI ADD of {namespace}/{name}: {} {}",
            out.stdout, out.stderr
        )));
    }
    let result = out.json();
    let ip: Ipv4Addr = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| Error::msg(format!("no IPv4 address in {result}")))?;
    Ok(Pod {
        ns: netns,
        name: name.into(),
        cid,
        ip,
        result,
    })
}

/// Writes `text` as manifest `file` of `node` in one rename (a dotfile is not a manifest, so
/// the agent never reads it half-written); returns the moment of the rename.
pub fn write_manifest(node: &Node, file: &str, text: &str) -> Result<Instant> {
    let dir = node.manifests_dir();
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    let at = Instant::now();
    std::fs::rename(&tmp, dir.join(file)).with_context(|| format!("rename to {file}"))?;
    Ok(at)
}

/// `NS/POD`, as `sluicectl policy trace` names a pod.
pub fn pod_name(p: &CniPod) -> String {
    format!("{}/{}", p.namespace, p.name)
}

/// `sluicectl policy trace` from `from` (`NS/POD`) to `to` on TCP `port`: `Some(allowed)`,
/// or `None` while the agent does not know a side yet.
pub fn trace(node: &Node, from: &str, to: &CniPod, port: u16) -> Option<bool> {
    let (to, port) = (pod_name(to), format!("{port}/TCP"));
    let out = node.sluicectl(&[
        "policy", "trace", "--from", from, "--to", &to, "--port", &port, "-o", "json",
    ]);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["allowed"].as_bool()
}

/// The fields of the agent's last `network policy programmed` log line (`key=value`).
pub fn last_programmed(node: &Node) -> Option<Vec<(String, String)>> {
    let log = node.agent_log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("network policy programmed"))?;
    Some(
        line.split_whitespace()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// One field of [`last_programmed`].
pub fn field(fields: &[(String, String)], key: &str) -> Option<u64> {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.parse().ok())
}

/// Fails unless the fields of the agent's last `network policy programmed` line say that no
/// rule entry overflowed and (where the agent reports it) no endpoint failed closed: a
/// policy written denied would make the comparison meaningless. A missing `overflowed` fails
/// too, so a renamed field cannot pass unseen.
pub fn nothing_failed_closed(prog: &[(String, String)]) -> Result<()> {
    match (field(prog, "overflowed"), field(prog, "failed_closed")) {
        (Some(0), None | Some(0)) => Ok(()),
        _ => Err(Error::msg(format!(
            "the agent wrote rules denied (overflowed or failed closed), or its log line lacks \
             the fields: {prog:?}"
        ))),
    }
}

/// Waits until `ready` holds, polling; fails with the agent's log tail after `deadline`.
pub fn wait_until(
    node: &Node,
    what: &str,
    deadline: Duration,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let t = Instant::now();
    loop {
        if ready()? {
            return Ok(t.elapsed());
        }
        check_interrupted()?;
        if t.elapsed() > deadline {
            let log = node.agent_log();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            return Err(Error::msg(format!(
                "{what}: not after {deadline:?}; the agent's log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The agent's VmRSS and VmHWM in MiB (/proc/PID/status).
pub fn agent_memory(node: &Node) -> Result<(f64, f64)> {
    let pid = node
        .agent_pid()
        .ok_or_else(|| Error::msg("the agent is not running"))?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "sluice-agent" {
        return Err(Error::msg(format!(
            "process {pid} is {:?}, not the agent",
            comm.trim()
        )));
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .ok_or_else(|| Error::msg(format!("no {key} in /proc/{pid}/status")))
    };
    Ok((kib("VmRSS:")? / 1024.0, kib("VmHWM:")? / 1024.0))
}

impl PolicyNode {
    pub fn new(
        name: &'static str,
        agent_args: &[String],
        sockmap: bool,
        policies: bool,
    ) -> Result<Self> {
        let mut args = agent_args.to_vec();
        if !sockmap {
            args.push("--sockmap=false".into());
        }
        let node = Node::new(NodeOptions {
            manifests: true,
            agent_args: crate::topo::one_node_args(&args),
            ..NodeOptions::default()
        });
        let t = Instant::now();
        // As on a cluster: the objects (and policies) exist before the pods start, so the
        // server starts isolated (the plugin reads the isolation the agent published).
        let four = [&SERVER, &CLIENT, &OUTSIDER, &PROBE];
        write_manifest(
            &node,
            "objects.yaml",
            &manifests::objects(PEER_PODS, Peers::Local, &four),
        )?;
        if policies {
            write_manifest(
                &node,
                "policies.yaml",
                &manifests::policies(1000, PEER_PODS),
            )?;
        }
        let add = |p: &CniPod| add_pod(&node, p.namespace, p.name);
        let peers = (0..PEER_PODS)
            .map(|i| {
                let p = manifests::peer_pod(i);
                add_pod(&node, p.namespace, &p.name)
            })
            .collect::<Result<Vec<Pod>>>()?;
        let n = Self {
            client: add(&CLIENT)?,
            server: add(&SERVER)?,
            outsider: add(&OUTSIDER)?,
            probe: add(&PROBE)?,
            peers,
            node,
            name,
            policies,
            sockmap,
        };
        let took = n.wait_programmed()?;
        let on = n.status().and_then(|v| v["sockmap"].as_bool());
        if on != Some(sockmap) {
            return Err(Error::msg(format!(
                "{name}: the agent says socket acceleration is {on:?}, the run needs {sockmap}"
            )));
        }
        prepare_pods(n.pods())?;
        let prog = last_programmed(&n.node).unwrap_or_default();
        let (rss, _) = agent_memory(&n.node)?;
        eprintln!(
            "  {name}: {} policies, {} CNI pods; ready {:.1} s after the manifests were \
             written (the CNI ADDs included; last compile: {} rule entries, {} isolated \
             endpoints, {} ms); agent VmRSS {:.1} MiB",
            if policies { 1000 } else { 0 },
            PEER_PODS + 4,
            t.elapsed().as_secs_f64().max(took.as_secs_f64()),
            field(&prog, "entries").unwrap_or(0),
            field(&prog, "isolated").unwrap_or(0),
            field(&prog, "ms").unwrap_or(0),
            rss
        );
        Ok(n)
    }

    /// Waits until the agent has compiled the manifests with every CNI pod in them: the
    /// server isolated, and the peer pods of its namespace (the policies with the empty
    /// podSelector select them too).
    fn wait_programmed(&self) -> Result<Duration> {
        let last_peer = manifests::peer_pod(PEER_PODS - 1);
        let last = format!("{}/{}", last_peer.namespace, last_peer.name);
        let isolated = if self.policies {
            1 + manifests::peers_in_server_namespace(PEER_PODS) as u64
        } else {
            0
        };
        let what = format!("{}: the manifests programmed", self.name);
        let took = wait_until(&self.node, &what, PROGRAM_DEADLINE, || {
            let client = trace(&self.node, &pod_name(&CLIENT), &SERVER, LOAD_PORT);
            let outsider = trace(&self.node, &pod_name(&OUTSIDER), &SERVER, LOAD_PORT);
            let remote = trace(&self.node, &last, &SERVER, LOAD_PORT);
            Ok(client == Some(true)
                && outsider == Some(!self.policies)
                && remote.is_some()
                && self.isolated_now() == Some(isolated))
        })?;
        if self.policies {
            let prog = last_programmed(&self.node).unwrap_or_default();
            nothing_failed_closed(&prog).with_context(|| self.name.to_string())?;
        }
        Ok(took)
    }

    /// Isolated local endpoints in the agent's last programming (0 before any).
    fn isolated_now(&self) -> Option<u64> {
        match last_programmed(&self.node) {
            Some(f) => field(&f, "isolated"),
            None => Some(0),
        }
    }

    /// `sluicectl status -o json`.
    pub fn status(&self) -> Option<serde_json::Value> {
        let out = self.node.sluicectl(&["status", "-o", "json"]);
        serde_json::from_slice(&out.stdout).ok()
    }

    /// A datapath counter's packets; absent is zero.
    pub fn counter(&self, reason: &str) -> Result<u64> {
        let v = self
            .status()
            .ok_or_else(|| Error::msg("sluicectl status failed"))?;
        let counters = v["counters"]
            .as_array()
            .ok_or_else(|| Error::msg(format!("no counters in {v}")))?;
        Ok(counters
            .iter()
            .find(|c| c["reason"] == reason)
            .map_or(0, |c| c["packets"].as_u64().unwrap_or(0)))
    }

    /// Checks with real connections that the node enforces what its manifests say: with the
    /// policies, the outsider's connect to the server's load port times out and
    /// `drop:policy-ingress` moves, the client's succeeds and `policy:allowed-new` moves;
    /// without, both connect and neither counter moves. Returns a line for the log.
    pub fn check_enforcement(&self) -> Result<String> {
        let load_bin = test_support::bin("sluice-load");
        let to = SocketAddr::from((self.server.ip, LOAD_PORT));
        let server = Guarded::spawn(
            self.node
                .pod_command(&self.server.ns, load_bin.as_os_str())
                .args(["server", "--listen", &to.to_string()])
                .args(["--workers", "4", "--max-seconds", "30"]),
            "sluice-load server",
        );
        let mut server = server?;
        server.wait_for_line(|l| l == "ready")?;
        let (drops0, allowed0) = (
            self.counter("drop:policy-ingress")?,
            self.counter("policy:allowed-new")?,
        );
        let connect = |pod: &Pod| {
            test_support::in_netns(&pod.ns.path(), move || {
                TcpStream::connect_timeout(&to, REFUSED_TIMEOUT).is_ok()
            })
        };
        let outsider = connect(&self.outsider);
        let client = connect(&self.client);
        drop(server);
        let drops = self.counter("drop:policy-ingress")? - drops0;
        let allowed = self.counter("policy:allowed-new")? - allowed0;
        let ok = if self.policies {
            !outsider && client && drops > 0 && allowed > 0
        } else {
            outsider && client && drops == 0 && allowed == 0
        };
        let line = format!(
            "{}: outsider → server:{LOAD_PORT} {}, client → server {}; drop:policy-ingress \
             +{drops}, policy:allowed-new +{allowed}",
            self.name,
            if outsider { "connected" } else { "refused" },
            if client { "connected" } else { "refused" },
        );
        if !ok {
            return Err(Error::msg(format!(
                "{line}: not what {} policies mean",
                if self.policies { "1,000" } else { "no" }
            )));
        }
        Ok(line)
    }

    pub fn sockmap(&self) -> bool {
        self.sockmap
    }
}

impl System for PolicyNode {
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

    /// Not a CNI scenario.
    fn cni(&self) -> Option<CniPlugin<'_>> {
        None
    }

    /// In the node's cgroup, as a pod's containers are.
    fn pod_command(&self, ns: &Netns, program: &OsStr) -> Command {
        self.node.pod_command(ns, program)
    }

    fn path_report(&self) -> Option<String> {
        super::super::topo::path_report(&self.status()?)
    }

    fn redirected_bytes(&self) -> Option<u64> {
        super::super::topo::redirected_bytes(&self.status()?)
    }
}
