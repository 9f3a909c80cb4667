//! Kubernetes Services compiled into load-balancer frontends: the pure function from the
//! cluster model ([`ClusterState`]) and this node's facts ([`NodeInfo`]) to the list of
//! [`Frontend`]s the agent programs into the datapath's service maps, and the [`diff`] between
//! two such lists.
//!
//! One frontend is one (address, port, protocol, scope) the datapath translates: a ClusterIP,
//! a NodePort on each node address, an external IP or a load-balancer ingress IP. Traffic is
//! told apart by where it comes from ([`Scope`]), because the traffic policies treat it
//! differently: `internalTrafficPolicy` applies to ClusterIP traffic only, and
//! `externalTrafficPolicy` to traffic arriving from outside the node on the externally-facing
//! addresses. Traffic from this node to a NodePort, external or load-balancer address is
//! cluster traffic, as kube-proxy treats it ("short-circuit" to all endpoints), so those
//! addresses get a [`Scope::Internal`] frontend with every backend as well.
//!
//! Backends come from the Service's EndpointSlices or, in standalone mode where nothing
//! writes EndpointSlices, from the pods its selector picks (`services/endpoints.rs`).
//!
//! Decisions where the Kubernetes documentation leaves room:
//! - When a frontend has no usable (ready, not terminating) backend within its traffic
//!   policy, it falls back to the serving and terminating ones, as kube-proxy does since
//!   Kubernetes 1.28 for both traffic policies (KEP-1669, `ProxyTerminatingEndpoints` GA).
//! - Load-balancer ingress entries with `ipMode: Proxy` get no frontend: the load balancer
//!   rewrites the destination to a node address itself (kube-proxy skips them too).
//! - Two services claiming the same (address, port, protocol, scope) — say the same external
//!   IP and port — cannot both be programmed: the older one keeps it, and no frontend may sit
//!   on a pod's address or shadow a ClusterIP or node address (`services/claims.rs`). Every
//!   refusal is a [`Conflict`].
//! - A headless Service (`clusterIP: None`) gets no frontend at all, not even on external
//!   IPs, as kube-proxy skips it. One with no cluster IP (standalone manifests, where no API
//!   server allocates one) still gets its NodePort, external and load-balancer frontends.
//! - Any EndpointSlice for a Service, even an empty one, means its selector is not used.
//!   Of an endpoint's addresses only the first is used (the API calls them fungible, and
//!   kube-proxy does the same); FQDN slices are ignored.
//! - Derived endpoints leave terminating pods out entirely (so standalone mode has no
//!   terminating fallback), and pods whose `Ready` condition is `False` unless the Service
//!   sets `publishNotReadyAddresses`; a pod with no status (standalone manifests carry none)
//!   counts as ready. A named `targetPort` is also looked up in sidecars (init containers
//!   with `restartPolicy: Always`), as the endpoints controller's `FindPort` does.
//! - Malformed values are logged once per [`frontends`] call and left out; nothing panics.

mod claims;
mod endpoints;
pub mod hostport;
pub mod maps;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_claims;
#[cfg(test)]
mod tests_endpoints;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use tracing::warn;

use crate::model::{ClusterState, DEFAULT_NAMESPACE};
use claims::{Age, Reserved};
pub use claims::{Conflict, ConflictKind};
use endpoints::{Candidate, ServiceEndpoints};

/// Per-Service annotation choosing the load-balancing algorithm: `random` or `maglev`
/// (case-insensitive). Absent or unknown values use the agent's `--lb-algorithm`.
pub const LB_ALGORITHM_ANNOTATION: &str = "sluice.dev/lb-algorithm";

/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset (3 hours, the API default).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// The largest `timeoutSeconds` the API accepts (1 day).
const MAX_AFFINITY_TIMEOUT: i32 = 86_400;

/// Transport protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// The protocol named by a `protocol` field, `TCP` when unset (the API default).
    /// Kubernetes spells protocols in capitals and so does this.
    pub fn from_k8s(protocol: Option<&str>) -> Option<Proto> {
        match protocol.unwrap_or("TCP") {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }

    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        }
    }
}

/// Where the traffic a frontend matches comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// From pods or processes on this node.
    Internal,
    /// Arriving from outside the node.
    External,
}

/// Which of a Service's addresses a frontend is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    ExternalIp,
    LoadBalancer,
    /// A pod's hostPort (`services/hostport.rs`); `namespace`/`service` name the pod.
    HostPort,
}

/// One endpoint a frontend translates to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    pub addr: IpAddr,
    pub port: u16,
    /// The endpoint runs on this node.
    pub local: bool,
    /// (namespace, name) of the pod behind the endpoint, when known.
    pub pod: Option<(String, String)>,
}

/// One (address, port, protocol, scope) the datapath load-balances, with its backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontend {
    pub namespace: String,
    pub service: String,
    /// `ServicePort.name`, `""` if unnamed.
    pub port_name: String,
    pub kind: FrontendKind,
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Proto,
    pub scope: Scope,
    /// Sorted by (addr, port), deduplicated, of the frontend's address family; only usable
    /// endpoints (ready and not terminating, else serving and terminating).
    pub backends: Vec<Backend>,
    /// `Some(seconds)` when `sessionAffinity: ClientIP`.
    pub affinity_timeout: Option<u32>,
    pub maglev: bool,
    /// External scope with `externalTrafficPolicy: Cluster`: the source is translated to the
    /// node address so that replies come back through this node.
    pub snat: bool,
}

/// What identifies a frontend in the datapath: (addr, port, proto, scope).
pub type FrontendKey = (IpAddr, u16, Proto, Scope);

impl Frontend {
    /// The datapath key of this frontend.
    pub fn key(&self) -> FrontendKey {
        (self.addr, self.port, self.proto, self.scope)
    }
}

/// The facts about this node that frontends depend on.
pub struct NodeInfo<'a> {
    pub node_name: &'a str,
    /// Addresses NodePorts listen on.
    pub node_ips: &'a [IpAddr],
    /// (namespace, pod) -> address given by CNI ADD on this node.
    pub local_pods: &'a BTreeMap<(String, String), IpAddr>,
    /// The agent flag `--lb-algorithm=maglev`.
    pub default_maglev: bool,
    /// This node's pod CIDRs (the agent's); other nodes' come from their Node objects.
    pub pod_cidrs: &'a [IpNetwork],
    /// The agent flag `--external-ips`: only external IPs inside these are honoured.
    pub external_ips: &'a [IpNetwork],
    /// The frontends of the last compilation: who held a frontend before, the last tie-break
    /// between Services of the same age.
    pub previous: &'a [Frontend],
}

/// What [`compile`] produces: the frontends and what was refused.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// Sorted by (addr, port, proto, scope), one frontend per key.
    pub frontends: Vec<Frontend>,
    /// Sorted, each once.
    pub conflicts: Vec<Conflict>,
}

/// The frontends of every Service in `state`, as seen from `node` (see [`compile`]).
pub fn frontends(state: &ClusterState, node: &NodeInfo) -> Vec<Frontend> {
    compile(state, node).frontends
}

/// The frontends of every Service in `state`, as seen from `node`, sorted by
/// (addr, port, proto, scope) with one frontend per key, and the frontends refused.
pub fn compile(state: &ClusterState, node: &NodeInfo) -> Compiled {
    let mut warnings = Warnings::default();
    let reserved = Reserved::new(state, node);
    let mut conflicts = BTreeSet::new();
    let mut out = Vec::new();
    let mut ages: BTreeMap<(String, String), Age> = BTreeMap::new();
    for svc in state.services() {
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        ages.insert((ns, name), claims::age(svc));
        let mut ctx = Compilation {
            warnings: &mut warnings,
            reserved: &reserved,
            conflicts: &mut conflicts,
        };
        service_frontends(state, node, svc, &mut ctx, &mut out);
    }
    let held: BTreeMap<FrontendKey, (&str, &str)> = node
        .previous
        .iter()
        .map(|f| (f.key(), (f.namespace.as_str(), f.service.as_str())))
        .collect();
    // Per key, the owner first: the oldest Service, then the one that held it, then by name.
    let owner_order = |f: &Frontend| {
        let id = (f.namespace.clone(), f.service.clone());
        let age = ages.get(&id).copied();
        let held_before = held.get(&f.key()) == Some(&(f.namespace.as_str(), f.service.as_str()));
        (f.key(), age, !held_before, id, f.kind, f.port_name.clone())
    };
    out.sort_by_cached_key(owner_order);
    out.dedup_by(|later, kept| {
        if later.key() != kept.key() {
            return false;
        }
        if (&later.namespace, &later.service) != (&kept.namespace, &kept.service) {
            conflicts.insert(Conflict {
                kind: ConflictKind::Taken,
                object: format!("{}/{}", later.namespace, later.service),
                address: format!("{}:{}/{}", later.addr, later.port, later.proto.as_str()),
                holder: format!("Service {}/{} (older)", kept.namespace, kept.service),
            });
        }
        true
    });
    warnings.emit();
    Compiled {
        frontends: out,
        conflicts: conflicts.into_iter().collect(),
    }
}

/// What one compilation accumulates while it walks the Services.
struct Compilation<'c, 'r> {
    warnings: &'c mut Warnings,
    reserved: &'c Reserved<'r>,
    conflicts: &'c mut BTreeSet<Conflict>,
}

/// The ClusterIPs a spec lists: `clusterIPs`, else `clusterIP` (may hold `None` or `""`).
fn cluster_ip_strings(spec: &ServiceSpec) -> Vec<&str> {
    match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    }
}

/// The frontends added or changed from `old` to `new` (in `new`'s order), and those removed
/// (in `old`'s order), keyed by (addr, port, proto, scope).
pub fn diff<'a>(
    old: &'a [Frontend],
    new: &'a [Frontend],
) -> (Vec<&'a Frontend>, Vec<&'a Frontend>) {
    let mut old_by_key: BTreeMap<FrontendKey, &Frontend> = BTreeMap::new();
    for f in old {
        old_by_key.entry(f.key()).or_insert(f);
    }
    let new_keys: BTreeSet<FrontendKey> = new.iter().map(Frontend::key).collect();
    let changed = new
        .iter()
        .filter(|f| old_by_key.get(&f.key()) != Some(f))
        .collect();
    let removed = old
        .iter()
        .filter(|f| !new_keys.contains(&f.key()))
        .collect();
    (changed, removed)
}

/// The settings every frontend of one Service shares.
struct ServiceFrontends<'a> {
    namespace: &'a str,
    service: &'a str,
    affinity_timeout: Option<u32>,
    maglev: bool,
    internal_local: bool,
    external_local: bool,
}

/// One service port, parsed.
struct PortFrontends<'a> {
    name: &'a str,
    proto: Proto,
    candidates: Vec<Candidate>,
}

impl ServiceFrontends<'_> {
    /// The frontend of `port` on `addr:listen`, with the backends its traffic policy allows.
    fn frontend(
        &self,
        port: &PortFrontends,
        kind: FrontendKind,
        addr: IpAddr,
        listen: u16,
        scope: Scope,
    ) -> Frontend {
        let local_only = match (kind, scope) {
            (FrontendKind::ClusterIp, _) => self.internal_local,
            (_, Scope::Internal) => false,
            (_, Scope::External) => self.external_local,
        };
        Frontend {
            namespace: self.namespace.to_owned(),
            service: self.service.to_owned(),
            port_name: port.name.to_owned(),
            kind,
            addr,
            port: listen,
            proto: port.proto,
            scope,
            backends: select_backends(&port.candidates, addr, local_only),
            affinity_timeout: self.affinity_timeout,
            maglev: self.maglev,
            snat: scope == Scope::External && !self.external_local,
        }
    }
}

/// Appends the frontends of `svc` to `out`.
fn service_frontends(
    state: &ClusterState,
    node: &NodeInfo,
    svc: &Service,
    ctx: &mut Compilation,
    out: &mut Vec<Frontend>,
) {
    let warnings = &mut *ctx.warnings;
    let namespace = svc
        .metadata
        .namespace
        .as_deref()
        .filter(|ns| !ns.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE);
    let Some(name) = svc.metadata.name.as_deref() else {
        return;
    };
    let Some(spec) = svc.spec.as_ref() else {
        return;
    };
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    let cluster_ips = cluster_ip_strings(spec);
    // Headless and ExternalName services are not proxied (kube-proxy's ShouldSkipService),
    // whatever else they list.
    if type_ == "ExternalName" || cluster_ips.contains(&"None") {
        return;
    }
    let object = format!("{namespace}/{name}");
    let mut parse_ip = |field: &'static str, value: &str| -> Option<IpAddr> {
        let ip = value.parse().ok();
        if ip.is_none() {
            warnings.add(object.clone(), field, value, "not an IP address, ignored");
        }
        ip
    };

    let cluster_ips: Vec<IpAddr> = cluster_ips
        .into_iter()
        .filter(|ip| !ip.is_empty())
        .filter_map(|ip| parse_ip("spec.clusterIPs", ip))
        .collect();
    let external_ips: Vec<IpAddr> = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|ip| parse_ip("spec.externalIPs", ip))
        .collect();
    let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref());
    let lb_ips: Vec<IpAddr> = ingress
        .and_then(|lb| lb.ingress.as_ref())
        .filter(|_| type_ == "LoadBalancer")
        .into_iter()
        .flatten()
        .filter(|ing| ing.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|ing| ing.ip.as_deref().filter(|ip| !ip.is_empty()))
        .filter_map(|ip| parse_ip("status.loadBalancer.ingress.ip", ip))
        .collect();
    let node_ports = matches!(type_, "NodePort" | "LoadBalancer");
    let node_ips: BTreeSet<IpAddr> = node.node_ips.iter().copied().collect();

    let shared = ServiceFrontends {
        namespace,
        service: name,
        affinity_timeout: affinity_timeout(spec, &object, warnings),
        maglev: maglev(svc, node.default_maglev, &object, warnings),
        internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
        external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
    };
    let endpoints = ServiceEndpoints::new(state, node, svc, namespace, name, warnings);

    for port in spec.ports.iter().flatten() {
        let port_name = port.name.as_deref().unwrap_or_default();
        let Some(proto) = Proto::from_k8s(port.protocol.as_deref()) else {
            let value = port.protocol.clone().unwrap_or_default();
            warnings.add(
                object.clone(),
                "spec.ports.protocol",
                value,
                "unknown protocol, port ignored",
            );
            continue;
        };
        let Some(service_port) = port_number(port.port) else {
            warnings.add(
                object.clone(),
                "spec.ports.port",
                port.port.to_string(),
                "not a port number, port ignored",
            );
            continue;
        };
        let parsed = PortFrontends {
            name: port_name,
            proto,
            candidates: endpoints.candidates(&object, port, proto, warnings),
        };
        let mut listeners: Vec<(FrontendKind, IpAddr, u16)> = cluster_ips
            .iter()
            .map(|&addr| (FrontendKind::ClusterIp, addr, service_port))
            .collect();
        match port.node_port.filter(|_| node_ports) {
            None | Some(0) => {}
            Some(node_port) => match port_number(node_port) {
                Some(listen) => listeners.extend(
                    node_ips
                        .iter()
                        .map(|&addr| (FrontendKind::NodePort, addr, listen)),
                ),
                None => warnings.add(
                    object.clone(),
                    "spec.ports.nodePort",
                    node_port.to_string(),
                    "not a port number, node port ignored",
                ),
            },
        }
        listeners.extend(
            external_ips
                .iter()
                .map(|&addr| (FrontendKind::ExternalIp, addr, service_port)),
        );
        listeners.extend(
            lb_ips
                .iter()
                .map(|&addr| (FrontendKind::LoadBalancer, addr, service_port)),
        );
        for (kind, addr, listen) in listeners {
            if let Some((why, holder)) = ctx.reserved.refuse(kind, addr) {
                ctx.conflicts.insert(Conflict {
                    kind: why,
                    object: object.clone(),
                    address: addr.to_string(),
                    holder,
                });
                continue;
            }
            // A ClusterIP is reachable from inside the cluster only.
            let scopes: &[Scope] = match kind {
                FrontendKind::ClusterIp => &[Scope::Internal],
                _ => &[Scope::Internal, Scope::External],
            };
            for &scope in scopes {
                out.push(shared.frontend(&parsed, kind, addr, listen, scope));
            }
        }
    }
}

/// The backends of a frontend on `addr`: candidates of the same address family (and on this
/// node if `local_only`) that are ready and not terminating, or if there are none, those that
/// are serving and terminating (KEP-1669). Sorted by (addr, port) and deduplicated.
fn select_backends(candidates: &[Candidate], addr: IpAddr, local_only: bool) -> Vec<Backend> {
    let in_scope = |c: &&Candidate| {
        c.backend.addr.is_ipv4() == addr.is_ipv4() && (!local_only || c.backend.local)
    };
    let pick = |usable: fn(&Candidate) -> bool| -> Vec<Backend> {
        candidates
            .iter()
            .filter(in_scope)
            .filter(|c| usable(c))
            .map(|c| c.backend.clone())
            .collect()
    };
    let mut backends = pick(Candidate::usable);
    if backends.is_empty() {
        backends = pick(Candidate::serving_terminating);
    }
    backends.sort();
    backends.dedup_by_key(|b| (b.addr, b.port));
    backends
}

/// `sessionAffinityConfig.clientIP.timeoutSeconds` under `sessionAffinity: ClientIP`.
fn affinity_timeout(spec: &ServiceSpec, object: &str, warnings: &mut Warnings) -> Option<u32> {
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return None;
    }
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    Some(match timeout {
        None => DEFAULT_AFFINITY_TIMEOUT,
        Some(t @ 1..=MAX_AFFINITY_TIMEOUT) => t.unsigned_abs(),
        Some(t) => {
            warnings.add(
                object.to_owned(),
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                t.to_string(),
                "out of range (1..=86400), using the default",
            );
            DEFAULT_AFFINITY_TIMEOUT
        }
    })
}

/// Whether the Service balances with Maglev: its [`LB_ALGORITHM_ANNOTATION`], else the
/// agent default.
fn maglev(svc: &Service, default: bool, object: &str, warnings: &mut Warnings) -> bool {
    let annotations = svc.metadata.annotations.as_ref();
    match annotations.and_then(|a| a.get(LB_ALGORITHM_ANNOTATION)) {
        None => default,
        Some(v) if v.eq_ignore_ascii_case("maglev") => true,
        Some(v) if v.eq_ignore_ascii_case("random") => false,
        Some(v) => {
            warnings.add(
                object.to_owned(),
                LB_ALGORITHM_ANNOTATION,
                v.as_str(),
                "unknown algorithm (random, maglev), using the agent default",
            );
            default
        }
    }
}

/// A port number from the API's `i32`, if it is one (1..=65535).
fn port_number(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p != 0)
}

/// Problems found while compiling, each logged once per [`frontends`] call however many
/// frontends it touches.
#[derive(Default)]
struct Warnings {
    /// (object, field, value) -> what was done about it.
    seen: BTreeMap<(String, &'static str, String), String>,
}

impl Warnings {
    fn add(
        &mut self,
        object: String,
        field: &'static str,
        value: impl Into<String>,
        problem: impl Into<String>,
    ) {
        self.seen
            .entry((object, field, value.into()))
            .or_insert_with(|| problem.into());
    }

    fn emit(self) {
        for ((object, field, value), problem) in self.seen {
            warn!(object, field, value, "service: {problem}");
        }
    }
}
