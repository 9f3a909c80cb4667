//! The cluster's other nodes, as this node routes to them: every Node object but this node's
//! own, with its pod CIDRs (`spec.podCIDRs`, else `spec.podCIDR`) and its `InternalIP`
//! (`status.addresses`). [`peers`] is the one place a Node becomes a route; the agent hands
//! its result to the routing programmer on every cluster change.

use std::net::Ipv4Addr;

use ipnetwork::{IpNetwork, Ipv4Network};

use crate::model::ClusterState;

/// How pod traffic reaches the pod CIDRs of other nodes (`--routing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoutingMode {
    /// VXLAN to the peer's InternalIP (UDP `--tunnel-port`): works on any underlay that
    /// carries UDP between nodes.
    Tunnel,
    /// No encapsulation: each peer's pod CIDRs are routed via its InternalIP (nodes on one L2
    /// segment, or an underlay that routes pod CIDRs).
    Native,
}

/// The VXLAN UDP port by default (the Linux kernel's and flannel's, not IANA's 4789).
pub const DEFAULT_TUNNEL_PORT: u16 = 8472;

/// Another node of the cluster that this node routes pod traffic to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    /// The Node object's name.
    pub name: String,
    /// Its `InternalIP`: where tunnelled or natively routed pod traffic is sent.
    pub address: Ipv4Addr,
    /// Its IPv4 pod CIDRs.
    pub pod_cidrs: Vec<Ipv4Network>,
}

/// Why a Node is not routed (logged, and shown by `sluicectl status`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeProblem {
    pub node: String,
    pub reason: String,
}

/// The peers to route, sorted by name, and the Nodes left out with the reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peers {
    pub peers: Vec<Peer>,
    pub problems: Vec<NodeProblem>,
}

/// The peers of node `own` in `state`. `own_cidrs` are this node's pod CIDRs and
/// `reserved` other ranges no peer's pod CIDR may overlap (the Service range).
pub fn peers(
    state: &ClusterState,
    own: &str,
    own_cidrs: &[IpNetwork],
    reserved: &[IpNetwork],
) -> Peers {
    let _ = (own_cidrs, reserved);
    let mut out = Peers::default();
    for node in state.nodes() {
        let Some(name) = node.metadata.name.as_deref() else {
            continue;
        };
        if name == own {
            continue;
        }
        let address = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .find_map(|a| a.address.parse::<Ipv4Addr>().ok());
        let pod_cidrs: Vec<Ipv4Network> = state
            .pod_cidrs(name)
            .into_iter()
            .filter_map(|c| match c {
                IpNetwork::V4(n) => Some(n),
                IpNetwork::V6(_) => None,
            })
            .collect();
        match address {
            Some(address) if !pod_cidrs.is_empty() => out.peers.push(Peer {
                name: name.to_owned(),
                address,
                pod_cidrs,
            }),
            _ => out.problems.push(NodeProblem {
                node: name.to_owned(),
                reason: "no InternalIP or no pod CIDR yet".into(),
            }),
        }
    }
    out.peers.sort();
    out
}
