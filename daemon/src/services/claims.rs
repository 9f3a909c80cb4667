//! Who may hold a frontend: the rules that keep one object from taking an address another
//! object, a node or a pod already holds.
//!
//! - A frontend (address, port, protocol, scope) claimed by two Services goes to the older
//!   one: `metadata.creationTimestamp`, then `metadata.uid` (so every node picks the same),
//!   then the Service that held it at the last compilation on this node (manifests often carry
//!   neither field), and only then the name, as a last deterministic resort.
//! - No frontend on a pod's address: not inside any pod CIDR (this node's, and every Node
//!   object's `spec.podCIDRs`) and not on any address a pod is known to hold. The API server
//!   never allocates a ClusterIP there, and a frontend there would take that pod's traffic.
//! - An external or load-balancer IP may not shadow a ClusterIP (of any Service) or a node
//!   address (where NodePorts, and the node itself, listen): the class of CVE-2020-8554, where
//!   anyone allowed to create a Service could take another's traffic.
//! - `spec.externalIPs` are honoured only inside the agent's `--external-ips` ranges.
//!
//! Each refusal is a [`Conflict`] naming both sides, logged and counted by the agent.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{FrontendKind, NodeInfo};
use crate::model::ClusterState;

/// Why a frontend was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConflictKind {
    /// An older Service holds the same (address, port, protocol, scope).
    Taken,
    /// An external or load-balancer IP on a ClusterIP or a node address.
    Shadowing,
    /// An address inside a pod CIDR or held by a pod.
    PodAddress,
    /// An external IP outside the agent's `--external-ips`.
    ExternalIpNotAllowed,
}

impl ConflictKind {
    /// A short name, as in logs and `sluicectl status -o json`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictKind::Taken => "taken",
            ConflictKind::Shadowing => "shadowing",
            ConflictKind::PodAddress => "pod-address",
            ConflictKind::ExternalIpNotAllowed => "external-ip-not-allowed",
        }
    }
}

/// One refused frontend address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Conflict {
    pub kind: ConflictKind,
    /// `namespace/name` of the Service refused.
    pub object: String,
    /// The address refused: `addr` for an address-wide refusal, `addr:port/PROTO` when only
    /// that frontend is taken.
    pub address: String,
    /// What holds it: `Service ns/name`, `Pod ns/name`, `pod CIDR … of node …`, `address of
    /// node …`, or the `--external-ips` ranges.
    pub holder: String,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: Service {} refused {} (held by {})",
            self.kind.as_str(),
            self.object,
            self.address,
            self.holder
        )
    }
}

/// How old a Service is, for ownership: older sorts first; a missing timestamp or uid sorts
/// after every present one.
pub(super) type Age<'a> = (bool, Option<&'a Time>, bool, Option<&'a str>);

pub(super) fn age(svc: &Service) -> Age<'_> {
    let ts = svc.metadata.creation_timestamp.as_ref();
    let uid = svc.metadata.uid.as_deref().filter(|u| !u.is_empty());
    (ts.is_none(), ts, uid.is_none(), uid)
}

/// The addresses frontends may not take, gathered once per compilation.
pub(super) struct Reserved<'a> {
    /// ClusterIP -> `namespace/name` of the Service holding it (the first one listed).
    cluster_ips: BTreeMap<IpAddr, String>,
    /// Node address -> `node NAME`: this node's, and every Node object's InternalIP and
    /// ExternalIP (NodePorts listen there, and so do kubelets).
    node_ips: BTreeMap<IpAddr, String>,
    /// (CIDR, whose): this node's and every Node object's pod CIDRs.
    pod_cidrs: Vec<(IpNetwork, String)>,
    /// Pod address -> `namespace/name`.
    pod_ips: BTreeMap<IpAddr, String>,
    external_ips: &'a [IpNetwork],
}

impl<'a> Reserved<'a> {
    pub(super) fn new(state: &ClusterState, node: &NodeInfo<'a>) -> Self {
        let mut cluster_ips = BTreeMap::new();
        for svc in state.services() {
            let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
            let name = svc.metadata.name.as_deref().unwrap_or_default();
            let Some(spec) = svc.spec.as_ref() else {
                continue;
            };
            for ip in super::cluster_ip_strings(spec) {
                if let Ok(ip) = ip.parse::<IpAddr>() {
                    cluster_ips
                        .entry(ip)
                        .or_insert_with(|| format!("Service {ns}/{name}"));
                }
            }
        }
        let mut node_ips: BTreeMap<IpAddr, String> = node
            .node_ips
            .iter()
            .map(|ip| (*ip, format!("node {}", node.node_name)))
            .collect();
        for n in state.nodes() {
            let name = n.metadata.name.as_deref().unwrap_or_default();
            let addrs = n.status.as_ref().and_then(|s| s.addresses.as_ref());
            for a in addrs.into_iter().flatten() {
                if !matches!(a.type_.as_str(), "InternalIP" | "ExternalIP") {
                    continue;
                }
                if let Ok(ip) = a.address.parse::<IpAddr>() {
                    node_ips.entry(ip).or_insert_with(|| format!("node {name}"));
                }
            }
        }
        let mut pod_cidrs: Vec<(IpNetwork, String)> = node
            .pod_cidrs
            .iter()
            .map(|c| (*c, format!("node {}", node.node_name)))
            .collect();
        for n in state.nodes() {
            let Some(name) = n.metadata.name.as_deref() else {
                continue;
            };
            let spec = n.spec.as_ref();
            let cidrs = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
            let single = spec.and_then(|s| s.pod_cidr.clone());
            for c in cidrs.iter().chain(single.iter()) {
                if let Ok(net) = c.parse::<IpNetwork>() {
                    pod_cidrs.push((net, format!("node {name}")));
                }
            }
        }
        let mut pod_ips: BTreeMap<IpAddr, String> = node
            .local_pods
            .iter()
            .map(|((ns, name), ip)| (*ip, format!("Pod {ns}/{name}")))
            .collect();
        for pod in state.pods() {
            let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            let status = pod.status.as_ref();
            let listed = status.and_then(|s| s.pod_ips.as_ref());
            let ips = listed
                .into_iter()
                .flatten()
                .map(|p| p.ip.as_str())
                .chain(status.and_then(|s| s.pod_ip.as_deref()));
            for ip in ips {
                if let Ok(ip) = ip.parse::<IpAddr>() {
                    pod_ips
                        .entry(ip)
                        .or_insert_with(|| format!("Pod {ns}/{name}"));
                }
            }
        }
        Self {
            cluster_ips,
            node_ips,
            pod_cidrs,
            pod_ips,
            external_ips: node.external_ips,
        }
    }

    /// Why a frontend of `kind` on `addr` must be refused, and who holds the address; `None`
    /// when it may be programmed. NodePort frontends are the node's own addresses: never
    /// refused here.
    pub(super) fn refuse(
        &self,
        kind: FrontendKind,
        addr: IpAddr,
    ) -> Option<(ConflictKind, String)> {
        if kind == FrontendKind::NodePort {
            return None;
        }
        if kind == FrontendKind::ExternalIp && !self.external_ips.iter().any(|n| n.contains(addr)) {
            let allowed: Vec<String> = self.external_ips.iter().map(ToString::to_string).collect();
            let allowed = if allowed.is_empty() {
                "none".to_owned()
            } else {
                allowed.join(",")
            };
            return Some((
                ConflictKind::ExternalIpNotAllowed,
                format!("--external-ips ({allowed})"),
            ));
        }
        if let Some(pod) = self.pod_ips.get(&addr) {
            return Some((ConflictKind::PodAddress, pod.clone()));
        }
        if let Some((cidr, whose)) = self.pod_cidrs.iter().find(|(c, _)| c.contains(addr)) {
            return Some((
                ConflictKind::PodAddress,
                format!("pod CIDR {cidr} of {whose}"),
            ));
        }
        if let Some(whose) = self.node_ips.get(&addr) {
            return Some((ConflictKind::Shadowing, format!("address of {whose}")));
        }
        if kind != FrontendKind::ClusterIp {
            if let Some(svc) = self.cluster_ips.get(&addr) {
                return Some((ConflictKind::Shadowing, format!("ClusterIP of {svc}")));
            }
        }
        None
    }
}
