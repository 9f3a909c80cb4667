//! Kubernetes NetworkPolicy (`networking.k8s.io/v1`) compiled per endpoint: the pure
//! function from the cluster model ([`ClusterState`]) and this node's facts ([`LocalNode`])
//! to a [`PolicySet`], the per-pod form the datapath's policy maps will be generated from,
//! and [`verdict`], which answers for one connection whether the policies allow it and why
//! (`sluicectl policy trace` explains the datapath's own verdict with it).
//!
//! # Representation
//!
//! An [`Endpoint`] is a pod with a known address. For each direction it has [`Rules`]: the
//! policies that isolate it in that direction (`isolated_by`; empty means not isolated,
//! everything allowed) and the flat union of what their rules allow (`allow`), one [`Allow`]
//! per (peer, ports, rule):
//! - the peer is [`Peer::Any`] (a rule without `from`/`to`), [`Peer::Pod`] (one pod picked
//!   by the rule's selectors, with its addresses) or [`Peer::Block`] (an `ipBlock`, whose
//!   [`IpBlock::prefixes`] are the disjoint prefixes a longest-prefix-match map wants);
//! - the ports are [`Ports::All`] (a rule without `ports`: every protocol and port) or one
//!   protocol and an inclusive port range, with named ports already resolved to numbers:
//!   for ingress on the endpoint itself, for egress on each destination pod, so a named
//!   egress port gives one `Allow` per destination pod that has the name (with that pod's
//!   number) and none for a destination without it.
//!
//! Every entry keeps the [`RuleRef`] it came from, so a datapath can count per rule and a
//! trace can name it. A datapath needs only (peer address or prefix, protocol, port range)
//! per endpoint and direction, plus [`Endpoint::node_addrs`], which are always allowed.
//!
//! # Semantics
//!
//! As the API reference defines them: a pod is isolated in a direction when some policy of
//! its namespace selects it (`spec.podSelector`) and has that direction in its
//! `policyTypes`; then a connection is allowed only if some rule of those policies allows it
//! (rules add up across policies, there is no deny rule). `policyTypes` absent or empty
//! means `Ingress`, plus `Egress` when the policy has at least one egress rule (the API
//! server's defaulting, `len(spec.egress) != 0`, so `egress: []` alone does not isolate
//! egress). `ingress: []` (or none) under `Ingress` allows nothing; a rule with no or empty
//! `from`/`to` allows every peer, with no or empty `ports` every port and protocol. A
//! connection needs the source's egress and the destination's ingress; a side that is not
//! a known pod (an address outside the cluster, a node) is not checked.
//!
//! Decisions where the reference leaves room:
//! - `ipBlock` matches by address, pod addresses included (Cilium and Calico do the same):
//!   an `ipBlock` covering the pod network allows pods as well. A named port in an egress
//!   rule towards `ipBlock` or towards every peer resolves on each pod in that block (every
//!   pod) and matches no address outside the cluster, which has no port names.
//! - A pod never blocks itself ("a pod cannot block access to itself"): pod-to-own-address
//!   traffic stays inside the pod's network namespace and is always allowed.
//! - Traffic between a pod and the node it runs on is always allowed in both directions
//!   ("traffic to and from the node where a Pod is running is always allowed"): the node's
//!   addresses are those of its Node object, and for this node also [`LocalNode::node_ips`].
//! - `hostNetwork` pods are no endpoints and no selector picks them: their traffic is the
//!   node's, as the reference allows for plugins that cannot tell them apart. Pods that
//!   finished (`Succeeded`, `Failed`) are left out too, their address may be reused.
//! - A named port matches a container port (of a container or a sidecar: an init container
//!   with `restartPolicy: Always`) with the same name and protocol; the policy port's
//!   protocol defaults to TCP like any other.
//! - What the API server would reject, possible only in standalone manifests, fails closed
//!   and is reported in [`PolicySet::problems`]: a peer with `ipBlock` and a selector, with
//!   nothing set, with an unparsable CIDR or `except`, or with an invalid selector matches
//!   nothing; a port with an unknown protocol, a number out of range, an `endPort` without
//!   a numeric `port` or below it allows nothing. The rule itself stays, so isolation does.
//!   A policy whose own `podSelector` is invalid selects no pod.

mod cidr;
mod compile;
mod ports;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_compile;
#[cfg(test)]
mod tests_egress;
#[cfg(test)]
mod tests_ingress;
#[cfg(test)]
mod tests_ports;
#[cfg(test)]
mod tests_updates;
mod verdict;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::model::ClusterState;
pub use crate::services::Proto;
pub use cidr::IpBlock;
pub use verdict::{verdict, Connection, Decision, SideVerdict, Verdict};

/// A namespaced object by namespace and name, shown as `namespace/name`. The strings are
/// shared: a compiled policy set names the same pods and policies in every one of its (peer,
/// ports) pairs, so a copy must cost a count, not an allocation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ObjectRef {
    pub fn new(namespace: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        ObjectRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A pod.
pub type PodRef = ObjectRef;
/// A NetworkPolicy.
pub type PolicyRef = ObjectRef;

/// The direction of a connection as seen from an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Connections to the endpoint.
    Ingress,
    /// Connections from the endpoint.
    Egress,
}

impl Direction {
    /// The `policyTypes` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "Ingress",
            Direction::Egress => "Egress",
        }
    }
}

/// One rule of one policy: `spec.ingress[index]` or `spec.egress[index]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleRef {
    pub policy: PolicyRef,
    pub direction: Direction,
    pub index: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = match self.direction {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        };
        write!(f, "{} {field}[{}]", self.policy, self.index)
    }
}

/// The other end of a connection an [`Allow`] admits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// Every address, in the cluster or outside it (a rule without `from`/`to`).
    Any,
    /// One pod, at these of its addresses (all of them, except where the entry comes from a
    /// named port resolved on the pods of an `ipBlock`: then those inside the block).
    Pod { pod: PodRef, addrs: Arc<[IpAddr]> },
    /// The addresses of an `ipBlock`.
    Block(IpBlock),
}

impl Peer {
    /// Whether the peer is `addr`, which is pod `pod` if `Some`.
    pub fn matches(&self, addr: IpAddr, pod: Option<&PodRef>) -> bool {
        match self {
            Peer::Any => true,
            Peer::Pod { pod: p, addrs } => pod == Some(p) && addrs.contains(&addr),
            Peer::Block(block) => block.contains(addr),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Any => f.write_str("any"),
            Peer::Pod { pod, .. } => write!(f, "pod {pod}"),
            Peer::Block(block) => write!(f, "{block}"),
        }
    }
}

/// The protocols and destination ports an [`Allow`] admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ports {
    /// Every protocol and port (a rule without `ports`).
    All,
    /// `proto` to ports `first..=last`; a port entry without `port` is `0..=65535`.
    Range { proto: Proto, first: u16, last: u16 },
}

impl Ports {
    /// Whether a connection with `proto` to destination port `port` is admitted.
    pub fn matches(&self, proto: Proto, port: u16) -> bool {
        match *self {
            Ports::All => true,
            Ports::Range {
                proto: p,
                first,
                last,
            } => p == proto && (first..=last).contains(&port),
        }
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Ports::All => f.write_str("all ports"),
            Ports::Range {
                proto,
                first: 0,
                last: u16::MAX,
            } => write!(f, "{}", proto.as_str()),
            Ports::Range { proto, first, last } if first == last => {
                write!(f, "{} {first}", proto.as_str())
            }
            Ports::Range { proto, first, last } => write!(f, "{} {first}-{last}", proto.as_str()),
        }
    }
}

/// One thing a rule allows an endpoint in one direction: connections with `peer` on
/// `ports` (for ingress, from the peer to these ports of the endpoint; for egress, from the
/// endpoint to these ports of the peer).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Allow {
    pub rule: RuleRef,
    pub peer: Peer,
    pub ports: Ports,
}

/// An endpoint's policy in one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// The policies that select the endpoint with this direction in their `policyTypes`,
    /// sorted. Empty: not isolated, everything is allowed and `allow` is empty.
    pub isolated_by: Vec<PolicyRef>,
    /// What the rules of those policies allow, sorted by rule, deduplicated.
    pub allow: Vec<Allow>,
}

impl Rules {
    /// Whether only what `allow` lists is allowed.
    pub fn is_isolated(&self) -> bool {
        !self.isolated_by.is_empty()
    }
}

/// A pod with a known address, and its policy in each direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub pod: PodRef,
    /// The CNI address on this node, else `status.podIPs` (`status.podIP`).
    pub addrs: Vec<IpAddr>,
    /// The addresses of the node the pod runs on: always allowed, both ways.
    pub node_addrs: Vec<IpAddr>,
    /// The node it runs on ("" when unknown), and whether that is this node: only this
    /// node's pods have their policies compiled (a pod of another node is a peer here; its
    /// own node enforces its rules).
    pub node: String,
    pub on_node: bool,
    pub ingress: Rules,
    pub egress: Rules,
}

impl Endpoint {
    /// The endpoint's policy in `direction`.
    pub fn rules(&self, direction: Direction) -> &Rules {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// The facts about this node that compilation depends on.
pub struct LocalNode<'a> {
    pub node_name: &'a str,
    /// This node's addresses (in addition to those its Node object lists).
    pub node_ips: &'a [IpAddr],
    /// (namespace, pod) -> address given by CNI ADD on this node.
    pub local_pods: &'a BTreeMap<(String, String), IpAddr>,
}

/// Something in a policy or pod that compilation could not use, and what it did instead.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// `namespace/name` of the object.
    pub object: String,
    pub field: &'static str,
    pub value: String,
    pub problem: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {:?}: {}",
            self.object, self.field, self.value, self.problem
        )
    }
}

/// In which directions a policy isolates a pod.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Isolation {
    pub ingress: bool,
    pub egress: bool,
}

/// Every endpoint's compiled policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySet {
    endpoints: BTreeMap<PodRef, Endpoint>,
    by_addr: BTreeMap<IpAddr, PodRef>,
    isolation: BTreeMap<PodRef, Isolation>,
    problems: Vec<Problem>,
}

impl PolicySet {
    /// The endpoints, by namespace then name.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.values()
    }

    /// An endpoint by pod.
    pub fn endpoint(&self, pod: &PodRef) -> Option<&Endpoint> {
        self.endpoints.get(pod)
    }

    /// The endpoint at `addr`. Should two pods claim the address, the first by namespace
    /// and name.
    pub fn endpoint_at(&self, addr: IpAddr) -> Option<&Endpoint> {
        self.by_addr.get(&addr).and_then(|p| self.endpoints.get(p))
    }

    /// The isolation of every pod on the pod network that may start on this node (CNI ADD
    /// gave it an address here, it is scheduled here, or it is not scheduled), with an
    /// address or not yet, when some policy isolates it: what the CNI plugin gives a pod at
    /// ADD. For a pod of this node with an address it is its endpoint's
    /// [`Rules::is_isolated`] in each direction, by the same selection.
    pub fn isolation(&self) -> &BTreeMap<PodRef, Isolation> {
        &self.isolation
    }

    /// What compilation could not use, sorted; each is also logged once.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
}

/// The policy of every pod in `state` with a known address, as seen from `node`.
pub fn compile(state: &ClusterState, node: &LocalNode) -> PolicySet {
    compile::compile(state, node)
}
