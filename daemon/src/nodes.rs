//! The cluster's other nodes, as this node routes to them: every Node object but this node's
//! own, with its pod CIDRs (`spec.podCIDRs`, else `spec.podCIDR`) and its `InternalIP`
//! (`status.addresses`). [`peers`] is the one place a Node becomes a route; the agent hands
//! its result to the routing programmer on every cluster change.

use std::net::Ipv4Addr;

use ipnetwork::{IpNetwork, Ipv4Network};
use k8s_openapi::api::core::v1::Node;

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
///
/// A Node is routed only when nothing about it is in doubt, since a wrong route sends a pod's
/// traffic to the wrong node; every Node left out is a [`NodeProblem`] naming it and why:
/// - no IPv4 pod CIDR or no IPv4 `InternalIP` yet (skipped until it has them, as a booting
///   node has neither until the node IPAM controller and the kubelet fill them in);
/// - a pod CIDR that cannot be a pod network ([`ipam::check_pod_cidr`]: host bits,
///   loopback, `0.0.0.0/8`, link-local, multicast, class E, too small);
/// - a pod CIDR overlapping this node's own, or a reserved (Service) range;
/// - an `InternalIP` that is not an ordinary unicast address, or lies inside a pod CIDR
///   (this node's, its own or another Node's): tunnelled traffic to it would loop;
/// - a pod CIDR overlapping another Node's, or the same InternalIP as another Node's: neither
///   is routed (which one is right cannot be told from here), and each names the other.
///
/// IPv6 pod CIDRs and addresses are ignored (dual-stack is not routed yet), without a problem.
/// The output is sorted: peers by name, problems by node then reason.
pub fn peers(
    state: &ClusterState,
    own: &str,
    own_cidrs: &[IpNetwork],
    reserved: &[IpNetwork],
) -> Peers {
    let own4: Vec<Ipv4Network> = own_cidrs.iter().filter_map(v4).collect();
    let reserved4: Vec<Ipv4Network> = reserved.iter().filter_map(v4).collect();
    let mut out = Peers::default();
    let mut problem = |node: &str, reason: String| {
        out.problems.push(NodeProblem {
            node: node.to_owned(),
            reason,
        })
    };

    // Each Node on its own.
    let mut candidates = Vec::new();
    for node in state.nodes() {
        let Some(name) = node.metadata.name.as_deref() else {
            continue;
        };
        if name == own {
            continue;
        }
        match candidate(state, name, node, &own4, &reserved4) {
            Ok(peer) => candidates.push(peer),
            Err(reason) => problem(name, reason),
        }
    }

    // Then against each other: overlapping pod CIDRs refuse both Nodes; an InternalIP inside
    // another Node's pod CIDR refuses the Node with that address. Pairwise, as clusters have
    // hundreds of Nodes, not millions.
    let mut refused = vec![Vec::<String>::new(); candidates.len()];
    for (i, a) in candidates.iter().enumerate() {
        for (j, b) in candidates.iter().enumerate().skip(i + 1) {
            let clash = a.pod_cidrs.iter().find_map(|x| {
                b.pod_cidrs
                    .iter()
                    .find(|y| overlap(*x, **y))
                    .map(|y| (*x, *y))
            });
            if let Some((x, y)) = clash {
                refused[i].push(format!(
                    "pod CIDR {x} overlaps pod CIDR {y} of node {:?}: neither is routed",
                    b.name
                ));
                refused[j].push(format!(
                    "pod CIDR {y} overlaps pod CIDR {x} of node {:?}: neither is routed",
                    a.name
                ));
            }
            if a.address == b.address {
                // One of them is stale or wrong, and which cannot be told from here: routing
                // both CIDRs to one host would send one Node's pods to the other's.
                refused[i].push(format!(
                    "InternalIP {} is also node {:?}'s: neither is routed",
                    a.address, b.name
                ));
                refused[j].push(format!(
                    "InternalIP {} is also node {:?}'s: neither is routed",
                    b.address, a.name
                ));
            }
            for (p, q, k) in [(a, b, i), (b, a, j)] {
                if let Some(c) = q.pod_cidrs.iter().find(|c| c.contains(p.address)) {
                    refused[k].push(format!(
                        "InternalIP {} is inside pod CIDR {c} of node {:?}",
                        p.address, q.name
                    ));
                }
            }
        }
    }
    for (peer, reasons) in candidates.into_iter().zip(refused) {
        if reasons.is_empty() {
            out.peers.push(peer);
        } else {
            for reason in reasons {
                out.problems.push(NodeProblem {
                    node: peer.name.clone(),
                    reason,
                });
            }
        }
    }
    out.peers.sort();
    out.problems.sort();
    out
}

/// Node `name` as a peer, judged on its own, or why it is not one.
fn candidate(
    state: &ClusterState,
    name: &str,
    node: &Node,
    own4: &[Ipv4Network],
    reserved4: &[Ipv4Network],
) -> Result<Peer, String> {
    let address = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse::<Ipv4Addr>().ok());
    let mut pod_cidrs: Vec<Ipv4Network> = state.pod_cidrs(name).iter().filter_map(v4).collect();
    pod_cidrs.sort();
    pod_cidrs.dedup();
    let address = match (address, pod_cidrs.is_empty()) {
        (Some(a), false) => a,
        (None, true) => {
            return Err("no IPv4 pod CIDR (spec.podCIDRs) and no IPv4 InternalIP \
                        (status.addresses) yet"
                .into())
        }
        (None, false) => return Err("no IPv4 InternalIP (status.addresses) yet".into()),
        (Some(_), true) => return Err("no IPv4 pod CIDR (spec.podCIDRs) yet".into()),
    };
    if address.is_unspecified()
        || address.is_loopback()
        || address.is_multicast()
        || address.is_broadcast()
        || address.is_link_local()
        || address.octets()[0] == 0
    {
        return Err(format!(
            "InternalIP {address} is not a unicast address another node can reach"
        ));
    }
    for &cidr in &pod_cidrs {
        if let Err(e) = ipam::check_pod_cidr(IpNetwork::V4(cidr)) {
            return Err(e.to_string());
        }
        if let Some(o) = own4.iter().find(|o| overlap(cidr, **o)) {
            return Err(format!("pod CIDR {cidr} overlaps this node's pod CIDR {o}"));
        }
        if let Some(r) = reserved4.iter().find(|r| overlap(cidr, **r)) {
            return Err(format!(
                "pod CIDR {cidr} overlaps the Service range {r} (--service-cidr)"
            ));
        }
        if cidr.contains(address) {
            return Err(format!(
                "InternalIP {address} is inside its own pod CIDR {cidr}"
            ));
        }
    }
    if let Some(o) = own4.iter().find(|o| o.contains(address)) {
        return Err(format!(
            "InternalIP {address} is inside this node's pod CIDR {o}"
        ));
    }
    Ok(Peer {
        name: name.to_owned(),
        address,
        pod_cidrs,
    })
}

fn v4(n: &IpNetwork) -> Option<Ipv4Network> {
    match n {
        IpNetwork::V4(n) => Some(*n),
        IpNetwork::V6(_) => None,
    }
}

/// Whether two IPv4 networks share an address (one holds the other's network address).
fn overlap(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

#[cfg(test)]
mod tests;
