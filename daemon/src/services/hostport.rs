//! hostPort frontends: the `portMappings` the CNI plugin recorded at ADD
//! (`datapath_user::hostport`), added to the Service frontends as NodePorts are: on every
//! node address (or the mapping's `hostIP`, when it is one of them), an external frontend for
//! traffic arriving from outside (TC) and an internal one for this node's pods (socket LB), both
//! to the one pod's `containerPort`. As the reference `portmap` plugin does, the client address
//! is kept (no SNAT): replies leave through this node, where they are translated back.
//!
//! A port has one owner. Of two pods claiming the same (address, hostPort, protocol) the older
//! record keeps it (ADD time, then container id); a hostPort equal to a Service's NodePort (or
//! external IP port) on a node address goes to the older of the pod's record and the Service
//! (`creationTimestamp`; a Service without one counts as older). Each lost claim is returned as
//! a [`Conflict`] for the caller to log and count. A `hostIP` that is not a node address, and a
//! pod without an IPv4 address, are conflicts too (nothing is programmed for them).

use std::collections::BTreeMap;
use std::net::IpAddr;

use datapath_user::hostport::Record;

use super::{Backend, Frontend, FrontendKind, Proto, Scope};
use crate::model::ClusterState;

/// One hostPort mapping that is not programmed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// `namespace/pod` of the mapping's pod.
    pub pod: String,
    /// `addr:port/PROTO` (`*` for every node address).
    pub port: String,
    pub reason: String,
}

/// Who holds an (address, port, protocol): its age and a name for the logs.
struct Owner {
    created_ns: i128,
    name: String,
    service: bool,
}

fn proto(n: u8) -> Option<Proto> {
    match n {
        6 => Some(Proto::Tcp),
        17 => Some(Proto::Udp),
        132 => Some(Proto::Sctp),
        _ => None,
    }
}

/// Adds the hostPort frontends of `records` (live attachments, any order) to `out` (the
/// Service frontends of `state`), taking a port from a younger Service, and returns the
/// mappings left out. `out` stays sorted by key.
pub fn apply(
    out: &mut Vec<Frontend>,
    records: &[Record],
    state: &ClusterState,
    node_ips: &[IpAddr],
) -> Vec<Conflict> {
    let mut owners: BTreeMap<(IpAddr, u16, Proto), Owner> = BTreeMap::new();
    for f in out.iter() {
        let created_ns = state
            .service(&f.namespace, &f.service)
            .and_then(|s| s.metadata.creation_timestamp.as_ref())
            .map_or(i128::MIN, |t| t.0.as_nanosecond());
        owners
            .entry((f.addr, f.port, f.proto))
            .or_insert_with(|| Owner {
                created_ns,
                name: format!("service {}/{}", f.namespace, f.service),
                service: true,
            });
    }
    let mut records: Vec<&Record> = records.iter().collect();
    records.sort_by(|a, b| (a.created_ns, &a.container_id).cmp(&(b.created_ns, &b.container_id)));

    let mut conflicts = Vec::new();
    for rec in records {
        let pod = format!("{}/{}", rec.namespace, rec.name);
        let created_ns = i128::try_from(rec.created_ns).unwrap_or(i128::MAX);
        for m in &rec.mappings {
            let Some(p) = proto(m.proto) else { continue };
            let label = |addr: Option<IpAddr>| {
                let a = addr.map_or_else(|| "*".to_string(), |a| a.to_string());
                format!("{a}:{}/{}", m.host_port, p.as_str())
            };
            let lost = |addr: Option<IpAddr>, reason: String| Conflict {
                pod: pod.clone(),
                port: label(addr),
                reason,
            };
            let addrs: Vec<IpAddr> = match m.host_ip {
                None => node_ips.to_vec(),
                Some(ip) if node_ips.contains(&ip) => vec![ip],
                Some(ip) => {
                    conflicts.push(lost(
                        Some(ip),
                        "hostIP is not an address of this node".into(),
                    ));
                    continue;
                }
            };
            for addr in addrs {
                let Some(backend) = rec
                    .pod_ips
                    .iter()
                    .copied()
                    .find(|b| b.is_ipv4() == addr.is_ipv4())
                else {
                    conflicts.push(lost(
                        Some(addr),
                        "the pod has no address of this family".into(),
                    ));
                    continue;
                };
                let key = (addr, m.host_port, p);
                if let Some(o) = owners.get(&key) {
                    if !(o.service && o.created_ns > created_ns) {
                        conflicts
                            .push(lost(Some(addr), format!("port already held by {}", o.name)));
                        continue;
                    }
                    // The Service is younger: the pod's hostPort keeps the port.
                    let name = o.name.clone();
                    out.retain(|f| (f.addr, f.port, f.proto) != key);
                    conflicts.push(Conflict {
                        pod: name,
                        port: label(Some(addr)),
                        reason: format!("port already held by the older hostPort of pod {pod}"),
                    });
                }
                owners.insert(
                    key,
                    Owner {
                        created_ns,
                        name: format!("the hostPort of pod {pod}"),
                        service: false,
                    },
                );
                for scope in [Scope::Internal, Scope::External] {
                    out.push(Frontend {
                        namespace: rec.namespace.clone(),
                        service: rec.name.clone(),
                        port_name: String::new(),
                        kind: FrontendKind::HostPort,
                        addr,
                        port: m.host_port,
                        proto: p,
                        scope,
                        backends: vec![Backend {
                            addr: backend,
                            port: m.container_port,
                            local: true,
                            pod: Some((rec.namespace.clone(), rec.name.clone())),
                        }],
                        affinity_timeout: None,
                        maglev: false,
                        snat: false,
                    });
                }
            }
        }
    }
    out.sort_by_key(Frontend::key);
    conflicts
}

#[cfg(test)]
mod tests {
    use super::*;
    use datapath_user::hostport::Mapping;

    const NODE: &str = "192.0.2.2";

    fn rec(cid: &str, name: &str, created_ns: u128, ip: &str, maps: &[(u16, u16)]) -> Record {
        Record {
            container_id: cid.into(),
            ifname: "eth0".into(),
            namespace: "default".into(),
            name: name.into(),
            created_ns,
            pod_ips: vec![ip.parse().unwrap()],
            mappings: maps
                .iter()
                .map(|&(h, c)| Mapping {
                    proto: 6,
                    host_port: h,
                    container_port: c,
                    host_ip: None,
                })
                .collect(),
        }
    }

    fn nodeport_state(created: Option<&str>) -> ClusterState {
        let ts = created.map_or(String::new(), |t| format!("\n  creationTimestamp: \"{t}\""));
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: np\n  namespace: default{ts}\n\
             spec:\n  type: NodePort\n  clusterIP: 10.96.0.10\n  ports:\n  - port: 80\n    nodePort: 30080\n"
        );
        let mut state = ClusterState::new();
        let svc = serde_yaml_ng::from_str(&yaml).expect("Service YAML");
        state
            .apply(crate::model::Object::Service(svc))
            .expect("apply");
        state
    }

    fn nodeport(state: &ClusterState) -> Vec<Frontend> {
        let ips = [NODE.parse().unwrap()];
        let pods = BTreeMap::new();
        super::super::frontends(
            state,
            &super::super::NodeInfo {
                node_name: "node-1",
                node_ips: &ips,
                local_pods: &pods,
                default_maglev: false,
                pod_cidrs: &[],
                external_ips: &[],
                previous: &[],
            },
        )
    }

    /// Test that a hostPort without hostIP becomes an internal and an external frontend on
    /// each node address, to the pod's containerPort, without SNAT (as portmap does).
    #[test]
    fn hostport_frontends_on_every_node_address() {
        let ips: Vec<IpAddr> = vec![NODE.parse().unwrap(), "198.51.100.7".parse().unwrap()];
        let mut out = Vec::new();
        let c = apply(
            &mut out,
            &[rec("a", "web", 1, "10.244.1.3", &[(8080, 80)])],
            &ClusterState::default(),
            &ips,
        );
        assert!(c.is_empty(), "{c:?}");
        assert_eq!(out.len(), 4);
        for f in &out {
            assert_eq!(f.kind, FrontendKind::HostPort);
            assert_eq!(f.port, 8080);
            assert!(!f.snat);
            assert_eq!(f.backends.len(), 1);
            assert_eq!(f.backends[0].addr, "10.244.1.3".parse::<IpAddr>().unwrap());
            assert_eq!(f.backends[0].port, 80);
        }
        let keys: Vec<_> = out.iter().map(|f| (f.addr, f.scope)).collect();
        assert!(keys.contains(&(ips[1], Scope::External)));
        assert!(keys.contains(&(ips[0], Scope::Internal)));
    }

    /// Test that of two pods claiming one hostPort the older keeps it whatever the input
    /// order, and that a hostIP which is not a node address is refused.
    #[test]
    fn hostport_conflict_goes_to_the_older_pod() {
        let ips: Vec<IpAddr> = vec![NODE.parse().unwrap()];
        let young = rec("a", "young", 20, "10.244.1.4", &[(8080, 81)]);
        let old = rec("z", "old", 10, "10.244.1.3", &[(8080, 80)]);
        let mut out = Vec::new();
        let c = apply(&mut out, &[young, old], &ClusterState::default(), &ips);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|f| f.service == "old"));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].pod, "default/young");

        let mut other = rec("b", "b", 1, "10.244.1.5", &[(9090, 90)]);
        other.mappings[0].host_ip = Some("203.0.113.9".parse().unwrap());
        let mut out = Vec::new();
        let c = apply(&mut out, &[other], &ClusterState::default(), &ips);
        assert!(out.is_empty());
        assert_eq!(c.len(), 1);
    }

    /// Test that a hostPort equal to a NodePort goes to the older of the Service and the pod.
    #[test]
    fn hostport_nodeport_conflict_settled_by_age() {
        let ips: Vec<IpAddr> = vec![NODE.parse().unwrap()];
        // Service created 2020: older than a pod recorded at t = 2021.
        let state = nodeport_state(Some("2020-01-01T00:00:00Z"));
        let pod_2021 = 1_609_459_200_000_000_000u128;
        let mut out = nodeport(&state);
        let before = out.clone();
        let c = apply(
            &mut out,
            &[rec("a", "web", pod_2021, "10.244.1.3", &[(30080, 80)])],
            &state,
            &ips,
        );
        assert_eq!(out, before, "the older NodePort keeps its port");
        assert_eq!(c.len(), 1);

        // Service created 2022: the pod is older and takes the port.
        let state = nodeport_state(Some("2022-01-01T00:00:00Z"));
        let mut out = nodeport(&state);
        let c = apply(
            &mut out,
            &[rec("a", "web", pod_2021, "10.244.1.3", &[(30080, 80)])],
            &state,
            &ips,
        );
        let on_port: Vec<_> = out.iter().filter(|f| f.port == 30080).collect();
        assert_eq!(on_port.len(), 2);
        assert!(on_port.iter().all(|f| f.kind == FrontendKind::HostPort));
        assert!(out.iter().any(|f| f.kind == FrontendKind::ClusterIp));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].pod, "service default/np");
    }
}
