//! The verdict on one connection: the source's egress and the destination's ingress, each
//! checked when that side is a known pod, each with its reason, for `sluicectl policy
//! trace` and for tests that compare the compiled form with the API's semantics.

use std::fmt;
use std::net::IpAddr;

use super::{Direction, Endpoint, PodRef, PolicyRef, PolicySet, Proto, RuleRef};

/// A connection to judge: from `src` to `dst` port `port` over `proto`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub src: IpAddr,
    /// The pod `src` belongs to; `None`: the endpoint at `src`, if any.
    pub src_pod: Option<PodRef>,
    pub dst: IpAddr,
    /// The pod `dst` belongs to; `None`: the endpoint at `dst`, if any.
    pub dst_pod: Option<PodRef>,
    pub proto: Proto,
    /// The destination port.
    pub port: u16,
}

/// Why one side lets a connection through or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No policy selects the pod for this direction.
    NotIsolated,
    /// The connection is between the pod and itself, which no policy blocks.
    SamePod,
    /// The other end is the node the pod runs on, which no policy blocks.
    OwnNode,
    /// These rules allow it (at least one).
    AllowedBy(Vec<RuleRef>),
    /// These policies isolate the pod and none of their rules allows the connection.
    Denied { isolated_by: Vec<PolicyRef> },
    /// A pod of another node (named, "" when unknown): its own node enforces its policy;
    /// this one lets the traffic through.
    OtherNode(String),
}

impl Decision {
    /// Whether this side lets the connection through.
    pub fn allows(&self) -> bool {
        !matches!(self, Decision::Denied { .. })
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::NotIsolated => f.write_str("not isolated"),
            Decision::SamePod => f.write_str("allowed: a pod cannot block itself"),
            Decision::OwnNode => f.write_str("allowed: traffic with its own node"),
            Decision::AllowedBy(rules) => write!(f, "allowed by {}", join(rules)),
            Decision::Denied { isolated_by } => {
                write!(f, "isolated by {}, no rule allows", join(isolated_by))
            }
            Decision::OtherNode(node) if node.is_empty() => {
                f.write_str("a pod of another node: enforced there, not here")
            }
            Decision::OtherNode(node) => {
                write!(f, "a pod of node {node}: enforced there, not here")
            }
        }
    }
}

/// One side's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideVerdict {
    pub pod: PodRef,
    pub direction: Direction,
    pub decision: Decision,
}

/// The verdict on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Both checked sides let it through.
    pub allowed: bool,
    /// The source pod's egress; `None` when the source is not a known pod.
    pub egress: Option<SideVerdict>,
    /// The destination pod's ingress; `None` when the destination is not a known pod.
    pub ingress: Option<SideVerdict>,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.allowed { "allowed" } else { "denied" })?;
        match &self.egress {
            Some(side) => write!(f, "; egress of {}: {}", side.pod, side.decision)?,
            None => f.write_str("; source is not a pod, no egress policy")?,
        }
        match &self.ingress {
            Some(side) => write!(f, "; ingress of {}: {}", side.pod, side.decision),
            None => f.write_str("; destination is not a pod, no ingress policy"),
        }
    }
}

/// Whether `conn` is allowed by the policies compiled in `set`, and why: the source pod's
/// egress must allow it towards the destination, and the destination pod's ingress from
/// the source; a side that is not a known endpoint is not checked.
pub fn verdict(set: &PolicySet, conn: &Connection) -> Verdict {
    let endpoint = |addr: IpAddr, pod: &Option<PodRef>| match pod {
        Some(pod) => set.endpoint(pod),
        None => set.endpoint_at(addr),
    };
    let src = endpoint(conn.src, &conn.src_pod);
    let dst = endpoint(conn.dst, &conn.dst_pod);
    let same_pod = matches!((src, dst), (Some(s), Some(d)) if s.pod == d.pod);
    let side = |ep: &Endpoint, direction: Direction, peer: IpAddr, peer_pod: Option<&PodRef>| {
        let decision = if same_pod {
            Decision::SamePod
        } else {
            decide(ep, direction, peer, peer_pod, conn)
        };
        SideVerdict {
            pod: ep.pod.clone(),
            direction,
            decision,
        }
    };
    let egress = src.map(|ep| side(ep, Direction::Egress, conn.dst, dst.map(|d| &d.pod)));
    let ingress = dst.map(|ep| side(ep, Direction::Ingress, conn.src, src.map(|s| &s.pod)));
    let allows = |s: &Option<SideVerdict>| s.as_ref().is_none_or(|s| s.decision.allows());
    Verdict {
        allowed: allows(&egress) && allows(&ingress),
        egress,
        ingress,
    }
}

/// `ep`'s decision in `direction` on a connection whose other end is `peer` (pod
/// `peer_pod`, if it is one).
fn decide(
    ep: &Endpoint,
    direction: Direction,
    peer: IpAddr,
    peer_pod: Option<&PodRef>,
    conn: &Connection,
) -> Decision {
    if !ep.on_node {
        return Decision::OtherNode(ep.node.clone());
    }
    let rules = ep.rules(direction);
    if !rules.is_isolated() {
        return Decision::NotIsolated;
    }
    if ep.node_addrs.contains(&peer) {
        return Decision::OwnNode;
    }
    let mut by: Vec<RuleRef> = rules
        .allow
        .iter()
        .filter(|a| a.peer.matches(peer, peer_pod) && a.ports.matches(conn.proto, conn.port))
        .map(|a| a.rule.clone())
        .collect();
    by.dedup();
    if by.is_empty() {
        Decision::Denied {
            isolated_by: rules.isolated_by.clone(),
        }
    } else {
        Decision::AllowedBy(by)
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    let items: Vec<String> = items.iter().map(ToString::to_string).collect();
    items.join(", ")
}
