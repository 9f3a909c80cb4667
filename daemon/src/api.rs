//! The agent's local API: one JSON request line in, one JSON reply line out, over a unix socket
//! `<state-dir>/agent.sock` that only root can open (mode 0600). `sluicectl` is its client; the
//! CNI plugin's STATUS checks that it answers.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

pub const SOCKET_NAME: &str = "agent.sock";

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "get", rename_all = "lowercase")]
pub enum Request {
    Status,
    Endpoints,
    Services,
    /// The NetworkPolicy verdict for a connection `from` → `to` (each `namespace/pod` or an
    /// address) on `port` with `protocol` (TCP, UDP, SCTP).
    PolicyTrace {
        from: String,
        to: String,
        port: u16,
        protocol: String,
    },
}

/// A policy trace: the datapath's verdict, read back from its maps, and, per side, what the
/// policies say decides it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTrace {
    pub from: String,
    pub to: String,
    /// What the datapath does: its maps judged with the datapath's verdict function.
    pub allowed: bool,
    /// What the policies say (the compiled set); differs from `allowed` when the datapath
    /// fails closed or its maps are not in step yet.
    #[serde(default)]
    pub policy_allowed: bool,
    /// The datapath's verdict in words: `allowed by the datapath`, `denied by the datapath:
    /// drop:policy-ingress`, `denied by the datapath: endpoint failed closed (rule map full)`…
    #[serde(default)]
    pub datapath: String,
    /// The policy revision the datapath's maps are at.
    #[serde(default)]
    pub revision: u32,
    /// `egress of ns/pod: …` and `ingress of ns/pod: …` lines.
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counter {
    pub reason: String,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub version: String,
    pub node_name: String,
    pub datapath_loaded: bool,
    pub bpffs: String,
    pub uplink: String,
    pub node_ip: String,
    pub pod_cidrs: Vec<String>,
    pub masquerade: bool,
    /// Same-node TCP acceleration (sockops + sk_msg) is attached.
    pub sockmap: bool,
    pub endpoints: usize,
    pub adopted_maps: usize,
    pub manifests: Option<String>,
    /// Standalone mode: what the manifest reader holds and refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_reader: Option<ManifestReaderStatus>,
    pub uptime_seconds: u64,
    pub counters: Vec<Counter>,
    /// NetworkPolicy as programmed by the last reconciliation.
    #[serde(default)]
    pub policy: PolicyStatus,
    /// Service frontends as compiled by the last reconciliation, and what was refused.
    #[serde(default)]
    pub services: ServicesStatus,
    /// Pods of this node whose address is outside the current pod CIDRs (`ns/name address`),
    /// left from an earlier pod CIDR: they keep working until they are deleted.
    #[serde(default)]
    pub pods_outside_pod_cidr: Vec<String>,
    /// hostPort mappings not programmed now (port held by an older owner, hostIP not a node
    /// address), and how many were refused over the agent's life.
    #[serde(default)]
    pub hostport_conflicts: usize,
    #[serde(default)]
    pub hostport_conflicts_total: u64,
    /// Flow state (masquerade, Service translation, policy tracking) and its collector.
    #[serde(default)]
    pub flows: FlowsStatus,
    /// Routing to other nodes' pods.
    #[serde(default)]
    pub routing: RoutingStatus,
}

/// Routing to other nodes' pods (`--routing`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RoutingStatus {
    /// `tunnel` or `native`.
    pub mode: String,
    /// The tunnel device (tunnel mode).
    pub device: Option<String>,
    pub tunnel_port: Option<u16>,
    pub tunnel_mtu: Option<u32>,
    /// Peers routed, by Node name.
    pub peers: Vec<RoutedPeer>,
    /// Nodes not routed, with the reason.
    pub not_routed: Vec<NotRouted>,
    /// Peer pod CIDRs not routed, with the reason (another route covers them, or the
    /// kernel refused Sluice's).
    pub route_conflicts: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RoutedPeer {
    pub node: String,
    pub address: String,
    pub pod_cidrs: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NotRouted {
    pub node: String,
    pub reason: String,
}

/// Service frontends, and the frontends refused because an object may not hold them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServicesStatus {
    pub frontends: usize,
    /// Taken by an older Service (same address, port, protocol).
    pub taken: usize,
    /// External or load-balancer IPs on a ClusterIP or a node address.
    pub shadowing: usize,
    /// Frontends inside a pod CIDR or on a pod's address.
    pub pod_address: usize,
    /// External IPs outside `--external-ips`.
    pub external_ip_not_allowed: usize,
    /// One line per refusal, naming both objects.
    pub conflicts: Vec<String>,
}

/// The flow maps by state and what the collector did on its last run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FlowsStatus {
    pub gc_runs: u64,
    pub gc_interval_seconds: f64,
    pub last_run_seconds_ago: Option<u64>,
    pub last_run_ms: u64,
    /// Idle timeout per state.
    pub timeouts_seconds: std::collections::BTreeMap<String, u64>,
    pub maps: Vec<FlowMapStatus>,
    pub masquerade: MasqueradeStatus,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FlowMapStatus {
    /// The map's kernel name (masquerade: both of its maps, under the egress map's name).
    pub map: String,
    pub entries: u64,
    pub capacity: u32,
    /// Flows by state (`tcp-established`, `udp`, …), as of the last run.
    pub states: std::collections::BTreeMap<String, u64>,
    /// Flows looked at and deleted by the last run; deleted over the agent's life.
    pub scanned: u64,
    pub expired: u64,
    pub expired_total: u64,
    /// 0 (normal) to 3: timeouts shortened because the map fills.
    pub pressure: u32,
}

/// Masquerade port use.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MasqueradeStatus {
    /// `--masquerade-ports`.
    pub ports: String,
    pub ports_per_destination: u32,
    pub ports_in_use: u64,
    pub busiest_destination: Option<String>,
    pub busiest_ports_in_use: u64,
    /// Packets dropped because no port was free for their destination (`drop:nat-no-port`).
    pub no_port_drops: u64,
}

/// The manifest reader's counts (standalone mode).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ManifestReaderStatus {
    pub files: usize,
    pub objects: usize,
    /// Files whose current contents are not in the state (see the agent's log).
    pub rejected_files: usize,
    /// Definitions ignored because the same object was defined first elsewhere.
    pub duplicates: usize,
}

/// What the NetworkPolicy maps hold, and what did not fit (each failed closed).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// Bumped on every change; tracked connections are judged again under a new one.
    pub revision: u32,
    pub rule_entries: usize,
    pub rule_capacity: usize,
    pub isolated_endpoints: usize,
    /// Peers written with no port (they needed more ranges than an entry holds): denied.
    pub overflowed_peers: usize,
    /// Endpoints programmed with no rule because theirs did not fit in the rule map: their
    /// isolated directions deny everything but their node.
    pub failed_closed_endpoints: usize,
    /// The same two over the agent's life (summed per reconciliation).
    pub overflowed_peers_total: u64,
    pub failed_closed_total: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub namespace: String,
    pub pod: String,
    pub address: String,
    pub host_veth: String,
    pub ifindex: u32,
    pub mac: String,
    pub container_id: String,
    pub ifname: String,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// One load-balancer frontend as programmed, with its backends and counter.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceFrontend {
    /// `namespace/name`.
    pub service: String,
    pub port_name: String,
    /// ClusterIP, NodePort, ExternalIP, LoadBalancer.
    pub kind: String,
    /// `address:port/PROTO`.
    pub frontend: String,
    /// internal (pods and node processes) or external (from outside the node).
    pub scope: String,
    /// The datapath's id (0: not programmed, e.g. IPv6 or SCTP).
    pub id: u32,
    /// random or maglev.
    pub algorithm: String,
    pub affinity_timeout_seconds: Option<u32>,
    pub snat: bool,
    /// `address:port`, with ` (local)` for backends on this node.
    pub backends: Vec<String>,
    /// Connections translated at the socket plus packets translated in TC.
    pub translations: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[expect(
    clippy::large_enum_variant,
    reason = "one reply per request, serialized at once: its size costs nothing"
)]
pub enum Reply {
    Status(Status),
    Endpoints(Vec<Endpoint>),
    Services(Vec<ServiceFrontend>),
    PolicyTrace(PolicyTrace),
    Error(String),
}

/// What the server asks of the agent.
pub trait Handler: Send + Sync + 'static {
    fn status(&self) -> anyhow::Result<Status>;
    fn endpoints(&self) -> anyhow::Result<Vec<Endpoint>>;
    fn services(&self) -> anyhow::Result<Vec<ServiceFrontend>>;
    fn policy_trace(
        &self,
        from: &str,
        to: &str,
        port: u16,
        protocol: &str,
    ) -> anyhow::Result<PolicyTrace>;
}

/// Binds the socket (replacing a stale one from a killed agent) with mode 0600.
pub fn bind(state_dir: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = socket_path(state_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("remove stale {}", path.display())),
    }
    let l = UnixListener::bind(&path).with_context(|| format!("bind {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(l)
}

/// Serves requests until the task is dropped.
pub async fn serve(listener: UnixListener, handler: Arc<dyn Handler>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept on the API socket");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let h = handler.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, h).await {
                tracing::debug!(error = %format!("{e:#}"), "API request failed");
            }
        });
    }
}

async fn handle(stream: UnixStream, handler: Arc<dyn Handler>) -> anyhow::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut r = BufReader::new(r);
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
        .await
        .context("request timed out")??;
    let reply = match serde_json::from_str::<Request>(line.trim()) {
        Err(e) => Reply::Error(format!("bad request: {e}")),
        Ok(req) => {
            let h = handler.clone();
            // Map reads are syscalls: keep them off the async workers.
            let res = tokio::task::spawn_blocking(move || match req {
                Request::Status => h.status().map(Reply::Status),
                Request::Endpoints => h.endpoints().map(Reply::Endpoints),
                Request::Services => h.services().map(Reply::Services),
                Request::PolicyTrace {
                    from,
                    to,
                    port,
                    protocol,
                } => h
                    .policy_trace(&from, &to, port, &protocol)
                    .map(Reply::PolicyTrace),
            })
            .await
            .context("handler panicked")?;
            res.unwrap_or_else(|e| Reply::Error(format!("{e:#}")))
        }
    };
    let mut out = serde_json::to_vec(&reply)?;
    out.push(b'\n');
    w.write_all(&out).await?;
    w.shutdown().await?;
    Ok(())
}

/// Client side (blocking): sends one request and reads the reply.
pub fn call(state_dir: &Path, req: &Request) -> anyhow::Result<Reply> {
    use std::io::{BufRead as _, Write as _};
    let path = socket_path(state_dir);
    let mut s = std::os::unix::net::UnixStream::connect(&path).with_context(|| {
        format!(
            "connect to the agent at {} (is sluice-agent running with this --state-dir?)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut reply = String::new();
    std::io::BufReader::new(s)
        .read_line(&mut reply)
        .context("read the agent's reply")?;
    if reply.is_empty() {
        bail!("the agent closed the connection without a reply");
    }
    serde_json::from_str(&reply).context("decode the agent's reply")
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl Handler for Fixed {
        fn status(&self) -> anyhow::Result<Status> {
            Ok(Status {
                version: "v".into(),
                node_name: "n1".into(),
                datapath_loaded: true,
                bpffs: "/b".into(),
                uplink: "up0".into(),
                node_ip: "192.0.2.2".into(),
                pod_cidrs: vec!["10.244.1.0/24".into()],
                masquerade: true,
                sockmap: true,
                endpoints: 3,
                adopted_maps: 0,
                manifests: None,
                manifest_reader: None,
                uptime_seconds: 1,
                counters: vec![],
                policy: PolicyStatus::default(),
                services: ServicesStatus::default(),
                pods_outside_pod_cidr: Vec::new(),
                hostport_conflicts: 0,
                hostport_conflicts_total: 0,
                flows: FlowsStatus::default(),
                routing: RoutingStatus::default(),
            })
        }
        fn endpoints(&self) -> anyhow::Result<Vec<Endpoint>> {
            anyhow::bail!("maps unavailable")
        }
        fn services(&self) -> anyhow::Result<Vec<ServiceFrontend>> {
            Ok(vec![])
        }
        fn policy_trace(&self, _: &str, _: &str, _: u16, _: &str) -> anyhow::Result<PolicyTrace> {
            anyhow::bail!("no policy")
        }
    }

    /// Test that a request over the real socket gets its reply, errors included, and that the
    /// socket is root-only.
    #[tokio::test]
    async fn socket_roundtrip() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let l = bind(d.path()).unwrap();
        let mode = std::fs::metadata(socket_path(d.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let server = tokio::spawn(serve(l, Arc::new(Fixed)));
        let dir = d.path().to_path_buf();
        let (st, ep) = tokio::task::spawn_blocking(move || {
            (
                call(&dir, &Request::Status).unwrap(),
                call(&dir, &Request::Endpoints).unwrap(),
            )
        })
        .await
        .unwrap();
        match st {
            Reply::Status(s) => assert_eq!((s.node_name.as_str(), s.endpoints), ("n1", 3)),
            other => panic!("unexpected {other:?}"),
        }
        match ep {
            Reply::Error(e) => assert!(e.contains("maps unavailable"), "{e}"),
            other => panic!("unexpected {other:?}"),
        }
        server.abort();
    }
}
