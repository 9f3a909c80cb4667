//! Compilation of every NetworkPolicy in the model onto the endpoints of this node it
//! selects: which pods are endpoints and at which addresses (every pod with one: the peers),
//! what each policy's selectors and peers pick, and which (peer, ports) pairs that makes per
//! endpoint of this node and direction.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use tracing::warn;

use super::ports::{port_specs, resolve, resolve_named, PortSpec};
use super::{
    Allow, Direction, Endpoint, IpBlock, Isolation, LocalNode, Peer, PodRef, PolicyRef, PolicySet,
    Ports, Problem, RuleRef, Rules,
};
use crate::model::{selector_matches, ClusterState, PodLife, DEFAULT_NAMESPACE};

/// One pod that is an endpoint, with what selectors and named ports look at.
struct PodInfo<'a> {
    key: PodRef,
    pod: &'a Pod,
    labels: BTreeMap<String, String>,
    /// Shared by every (peer, ports) pair that names this pod.
    addrs: Arc<[IpAddr]>,
    /// A pod of this node: the policies that select it are compiled onto it. A pod of
    /// another node is only a peer (its own node enforces its rules), which keeps the work
    /// and memory of a compilation to this node's pods × the policies, not the cluster's.
    on_node: bool,
}

/// Everything compilation reads, indexed once.
struct Cluster<'a> {
    /// Endpoints by (namespace, name), at the indices of the [`Endpoint`]s being compiled.
    pods: Vec<PodInfo<'a>>,
    /// Namespace -> labels, for every namespace with an endpoint.
    ns_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// The pods on the pod network that may start on this node, address or not: the CNI
    /// plugin asks for their isolation at ADD, before they have one.
    starting: Vec<(PodRef, BTreeMap<String, String>)>,
}

/// What one peer of a rule picks.
enum Picked {
    /// Every address (no `from`/`to`).
    Any,
    /// These endpoints (indices into [`Cluster::pods`]).
    Pods(Vec<usize>),
    Block(IpBlock),
}

/// Problems found while compiling, kept sorted and logged once each.
#[derive(Default)]
pub(super) struct Problems(BTreeSet<Problem>);

impl Problems {
    pub(super) fn add(&mut self, object: &str, field: &'static str, value: &str, problem: &str) {
        self.0.insert(Problem {
            object: object.to_owned(),
            field,
            value: value.to_owned(),
            problem: problem.to_owned(),
        });
    }
}

pub(super) fn compile(state: &ClusterState, node: &LocalNode) -> PolicySet {
    let mut problems = Problems::default();
    let node_addrs = node_addresses(state, node);
    let mut pods = Vec::new();
    let mut endpoints = Vec::new();
    for pod in state.pods() {
        if let Some((mut info, node_name)) = pod_info(pod, node, &mut problems) {
            info.on_node = node_name == node.node_name;
            endpoints.push(Endpoint {
                pod: info.key.clone(),
                addrs: info.addrs.to_vec(),
                node_addrs: match node_name.as_str() {
                    "" => Vec::new(),
                    name => node_addrs.get(name).cloned().unwrap_or_default(),
                },
                on_node: info.on_node,
                node: node_name,
                ingress: Rules::default(),
                egress: Rules::default(),
            });
            pods.push(info);
        }
    }
    let ns_labels = pods
        .iter()
        .map(|p| p.key.namespace.to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|ns| {
            let labels = state.namespace_labels(&ns);
            (ns, labels)
        })
        .collect();
    let starting = state
        .pods()
        .filter(|p| may_start_here(p, node))
        .filter_map(|p| {
            let ns = p.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
            let key = PodRef::new(ns, p.metadata.name.clone()?);
            Some((key, p.metadata.labels.clone().unwrap_or_default()))
        })
        .collect();
    let cluster = Cluster {
        pods,
        ns_labels,
        starting,
    };
    let mut set = PolicySet::default();
    for policy in state.network_policies() {
        compile_policy(
            &cluster,
            policy,
            &mut endpoints,
            &mut set.isolation,
            &mut problems,
        );
    }

    for mut ep in endpoints {
        for rules in [&mut ep.ingress, &mut ep.egress] {
            rules.isolated_by.sort();
            rules.isolated_by.dedup();
            rules.allow.sort();
            rules.allow.dedup();
        }
        for addr in &ep.addrs {
            set.by_addr.entry(*addr).or_insert_with(|| ep.pod.clone());
        }
        set.endpoints.insert(ep.pod.clone(), ep);
    }
    for p in &problems.0 {
        warn!(
            object = p.object,
            field = p.field,
            value = p.value,
            "networkpolicy: {}",
            p.problem
        );
    }
    set.problems = problems.0.into_iter().collect();
    set
}

/// Node name -> addresses: every address a Node object lists, and `node.node_ips` for this
/// node.
fn node_addresses(state: &ClusterState, node: &LocalNode) -> BTreeMap<String, Vec<IpAddr>> {
    let mut out: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for n in state.nodes() {
        let Some(name) = n.metadata.name.clone() else {
            continue;
        };
        let addrs = n
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|a| a.address.parse::<IpAddr>().ok());
        out.entry(name).or_default().extend(addrs);
    }
    out.entry(node.node_name.to_owned())
        .or_default()
        .extend(node.node_ips);
    for addrs in out.values_mut() {
        addrs.sort();
        addrs.dedup();
    }
    out
}

/// Whether `pod` is on the pod network and may start on this node: CNI ADD gave it an
/// address here, or it is scheduled here, or it is not scheduled (standalone manifests often
/// name no node). The CNI plugin of another node never asks for it.
fn may_start_here(pod: &Pod, node: &LocalNode) -> bool {
    if !PodLife::of(pod).on_pod_network() {
        return false;
    }
    let ns = pod
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(DEFAULT_NAMESPACE);
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    node.local_pods
        .contains_key(&(ns.to_owned(), name.to_owned()))
        || pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_none_or(|n| n.is_empty() || n == node.node_name)
}

/// `pod` as an endpoint, with the name of its node (`""` if unknown), or `None` if it is
/// not one: a
/// `hostNetwork` pod, a finished one, or one without an address. The address is the one
/// CNI ADD gave on this node, else `status.podIPs` (`status.podIP`).
fn pod_info<'a>(
    pod: &'a Pod,
    node: &LocalNode,
    problems: &mut Problems,
) -> Option<(PodInfo<'a>, String)> {
    if !PodLife::of(pod).on_pod_network() {
        return None;
    }
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let namespace = pod
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(DEFAULT_NAMESPACE);
    let key = PodRef::new(namespace, pod.metadata.name.clone()?);
    let local = node
        .local_pods
        .get(&(key.namespace.to_string(), key.name.to_string()));
    let addrs: Vec<IpAddr> = match local {
        Some(addr) => vec![*addr],
        None => {
            let ips: Vec<&str> = match status.and_then(|s| s.pod_ips.as_ref()) {
                Some(ips) if !ips.is_empty() => ips.iter().map(|ip| ip.ip.as_str()).collect(),
                _ => status
                    .and_then(|s| s.pod_ip.as_deref())
                    .into_iter()
                    .collect(),
            };
            ips.into_iter()
                .filter(|ip| !ip.is_empty())
                .filter_map(|ip| {
                    let addr = ip.parse().ok();
                    if addr.is_none() {
                        let object = key.to_string();
                        problems.add(&object, "status.podIPs", ip, "not an IP address, ignored");
                    }
                    addr
                })
                .collect()
        }
    };
    if addrs.is_empty() {
        return None;
    }
    let node_name = match local {
        Some(_) => node.node_name,
        None => spec
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or_default(),
    };
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    Some((
        PodInfo {
            key,
            pod,
            labels,
            addrs: addrs.into(),
            on_node: false,
        },
        node_name.to_owned(),
    ))
}

/// Adds what `policy` isolates and allows to the endpoints it selects.
fn compile_policy(
    cluster: &Cluster,
    policy: &NetworkPolicy,
    endpoints: &mut [Endpoint],
    isolation: &mut BTreeMap<PodRef, Isolation>,
    problems: &mut Problems,
) {
    let namespace = policy
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(DEFAULT_NAMESPACE);
    let Some(name) = policy.metadata.name.as_deref() else {
        return;
    };
    let policy_ref = PolicyRef::new(namespace, name);
    let object = policy_ref.to_string();
    let default_spec = NetworkPolicySpec::default();
    let spec = policy.spec.as_ref().unwrap_or(&default_spec);
    // An absent podSelector is the empty one, as Go decodes it: every pod of the namespace.
    let default_selector = LabelSelector::default();
    let selector = spec.pod_selector.as_ref().unwrap_or(&default_selector);
    if selector_matches(selector, &BTreeMap::new()).is_err() {
        let problem = "invalid selector, policy selects no pod";
        problems.add(
            &object,
            "spec.podSelector",
            &format!("{selector:?}"),
            problem,
        );
        return;
    }
    let selected: Vec<usize> = cluster
        .pods
        .iter()
        .enumerate()
        .filter(|(_, p)| p.on_node && &*p.key.namespace == namespace)
        .filter(|(_, p)| selector_matches(selector, &p.labels).unwrap_or(false))
        .map(|(i, _)| i)
        .collect();
    let (ingress, egress) = policy_types(spec, &object, problems);
    // The same selection and types, for the pods that may start here (address or not).
    for (pod, labels) in &cluster.starting {
        if &*pod.namespace == namespace && selector_matches(selector, labels).unwrap_or(false) {
            let iso = isolation.entry(pod.clone()).or_default();
            iso.ingress |= ingress;
            iso.egress |= egress;
        }
    }
    let directions = [(Direction::Ingress, ingress), (Direction::Egress, egress)];
    for direction in directions.into_iter().filter(|(_, on)| *on).map(|(d, _)| d) {
        // (peers, ports) of each rule, with the field names problems report.
        let (rules, peers_field, ports_field): (Vec<_>, _, _) = match direction {
            Direction::Ingress => (
                spec.ingress
                    .iter()
                    .flatten()
                    .map(|r| (r.from.as_deref(), r.ports.as_deref()))
                    .collect(),
                "spec.ingress.from",
                "spec.ingress.ports",
            ),
            Direction::Egress => (
                spec.egress
                    .iter()
                    .flatten()
                    .map(|r| (r.to.as_deref(), r.ports.as_deref()))
                    .collect(),
                "spec.egress.to",
                "spec.egress.ports",
            ),
        };
        for &i in &selected {
            rules_mut(&mut endpoints[i], direction)
                .isolated_by
                .push(policy_ref.clone());
        }
        for (index, (peers, ports)) in rules.into_iter().enumerate() {
            let rule = RuleRef {
                policy: policy_ref.clone(),
                direction,
                index,
            };
            let peers = pick_peers(cluster, namespace, peers, &object, peers_field, problems);
            let ports = port_specs(ports, &object, ports_field, problems);
            match direction {
                Direction::Ingress => {
                    for &i in &selected {
                        // Named ports are the destination's: this endpoint's own.
                        let ports = resolve(&ports, Some(cluster.pods[i].pod));
                        let allow = &mut endpoints[i].ingress.allow;
                        for peer in peers.iter().flat_map(|p| expand(cluster, p)) {
                            push_all(allow, &rule, &peer, &ports);
                        }
                    }
                }
                Direction::Egress => {
                    let allows = egress_allows(cluster, &rule, &peers, &ports);
                    for &i in &selected {
                        endpoints[i].egress.allow.extend(allows.iter().cloned());
                    }
                }
            }
        }
    }
}

fn rules_mut(ep: &mut Endpoint, direction: Direction) -> &mut Rules {
    match direction {
        Direction::Ingress => &mut ep.ingress,
        Direction::Egress => &mut ep.egress,
    }
}

/// Whether the policy applies to ingress and to egress: `policyTypes` if set and not empty,
/// else what the API server defaults it to (Ingress, and Egress if there is an egress rule).
fn policy_types(spec: &NetworkPolicySpec, object: &str, problems: &mut Problems) -> (bool, bool) {
    match spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => {
            let (mut ingress, mut egress) = (false, false);
            for t in types {
                match t.as_str() {
                    "Ingress" => ingress = true,
                    "Egress" => egress = true,
                    other => problems.add(
                        object,
                        "spec.policyTypes",
                        other,
                        "unknown policy type (Ingress, Egress), ignored",
                    ),
                }
            }
            (ingress, egress)
        }
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    }
}

/// What each peer of `from`/`to` picks; `[Any]` for none. Invalid peers pick nothing.
fn pick_peers(
    cluster: &Cluster,
    namespace: &str,
    list: Option<&[NetworkPolicyPeer]>,
    object: &str,
    field: &'static str,
    problems: &mut Problems,
) -> Vec<Picked> {
    let list = list.unwrap_or_default();
    if list.is_empty() {
        return vec![Picked::Any];
    }
    list.iter()
        .filter_map(|peer| pick(cluster, namespace, peer, object, field, problems))
        .collect()
}

/// What one peer picks, `None` if it is invalid (and reported).
fn pick(
    cluster: &Cluster,
    namespace: &str,
    peer: &NetworkPolicyPeer,
    object: &str,
    field: &'static str,
    problems: &mut Problems,
) -> Option<Picked> {
    let pods = peer.pod_selector.as_ref();
    let namespaces = peer.namespace_selector.as_ref();
    if let Some(block) = &peer.ip_block {
        if pods.is_some() || namespaces.is_some() {
            let problem = "ipBlock with a selector in one peer, peer ignored";
            problems.add(object, field, &block.cidr, problem);
            return None;
        }
        let Ok(cidr) = block.cidr.parse::<IpNetwork>() else {
            let problem = "ipBlock.cidr is not a CIDR, peer ignored";
            problems.add(object, field, &block.cidr, problem);
            return None;
        };
        let mut except = Vec::new();
        for e in block.except.iter().flatten() {
            let Ok(net) = e.parse::<IpNetwork>() else {
                let problem = "ipBlock.except is not a CIDR, peer ignored";
                problems.add(object, field, e, problem);
                return None;
            };
            except.push(net);
        }
        return Some(Picked::Block(IpBlock::new(cidr, except)));
    }
    if pods.is_none() && namespaces.is_none() {
        problems.add(object, field, "{}", "empty peer, ignored");
        return None;
    }
    for selector in [pods, namespaces].into_iter().flatten() {
        if selector_matches(selector, &BTreeMap::new()).is_err() {
            let problem = "invalid selector, peer ignored";
            problems.add(object, field, &format!("{selector:?}"), problem);
            return None;
        }
    }
    let empty = BTreeMap::new();
    let in_namespace = |ns: &str| match namespaces {
        // podSelector alone: the policy's own namespace.
        None => ns == namespace,
        Some(sel) => {
            selector_matches(sel, cluster.ns_labels.get(ns).unwrap_or(&empty)).unwrap_or(false)
        }
    };
    let picked = cluster
        .pods
        .iter()
        .enumerate()
        .filter(|(_, p)| in_namespace(&p.key.namespace))
        .filter(|(_, p)| pods.is_none_or(|sel| selector_matches(sel, &p.labels).unwrap_or(false)))
        .map(|(i, _)| i)
        .collect();
    Some(Picked::Pods(picked))
}

/// The peers one [`Picked`] stands for.
fn expand(cluster: &Cluster, picked: &Picked) -> Vec<Peer> {
    match picked {
        Picked::Any => vec![Peer::Any],
        Picked::Block(block) => vec![Peer::Block(block.clone())],
        Picked::Pods(ix) => ix.iter().map(|&i| pod_peer(&cluster.pods[i])).collect(),
    }
}

fn pod_peer(p: &PodInfo) -> Peer {
    Peer::Pod {
        pod: p.key.clone(),
        addrs: p.addrs.clone(),
    }
}

/// Appends an [`Allow`] of `peer` on each of `ports`.
fn push_all(allow: &mut Vec<Allow>, rule: &RuleRef, peer: &Peer, ports: &[Ports]) {
    allow.extend(ports.iter().map(|&ports| Allow {
        rule: rule.clone(),
        peer: peer.clone(),
        ports,
    }));
}

/// What one egress rule allows, the same for every endpoint it applies to: named ports are
/// the destination's, so they resolve per destination pod. Towards every address or an
/// `ipBlock`, numeric ports stay with that peer and named ones go to each pod inside it
/// that has the name (no address outside the cluster has port names).
fn egress_allows(
    cluster: &Cluster,
    rule: &RuleRef,
    peers: &[Picked],
    ports: &[PortSpec],
) -> Vec<Allow> {
    let numeric = resolve(ports, None);
    let has_named = ports.iter().any(|p| matches!(p, PortSpec::Named { .. }));
    let mut out = Vec::new();
    for picked in peers {
        match picked {
            Picked::Pods(ix) => {
                for &i in ix {
                    let p = &cluster.pods[i];
                    push_all(&mut out, rule, &pod_peer(p), &resolve(ports, Some(p.pod)));
                }
            }
            Picked::Any | Picked::Block(_) => {
                let peer = &expand(cluster, picked)[0];
                push_all(&mut out, rule, peer, &numeric);
                if !has_named {
                    continue;
                }
                for p in &cluster.pods {
                    let addrs: Arc<[IpAddr]> = match picked {
                        Picked::Block(block) => p
                            .addrs
                            .iter()
                            .copied()
                            .filter(|a| block.contains(*a))
                            .collect(),
                        _ => p.addrs.clone(),
                    };
                    if addrs.is_empty() {
                        continue;
                    }
                    let named = resolve_named(ports, p.pod);
                    let peer = Peer::Pod {
                        pod: p.key.clone(),
                        addrs,
                    };
                    push_all(&mut out, rule, &peer, &named);
                }
            }
        }
    }
    out
}
