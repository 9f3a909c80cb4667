//! The endpoints of one Service, before a frontend's traffic policy picks among them: from
//! the Service's EndpointSlices, or, when the state holds none and the Service has a
//! selector, derived from the pods it selects as the EndpointSlice controller would
//! (standalone mode has no controller writing slices).
//!
//! Every address is parsed once per Service, and each port of the Service then resolves to
//! [`Candidate`]s: a backend with the conditions the selection in [`super`] needs.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Container, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{port_number, Backend, NodeInfo, Proto, Warnings};
use crate::model::{ClusterState, PodLife};

/// One endpoint of one service port, with its EndpointSlice conditions.
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    pub backend: Backend,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Candidate {
    /// Ready and not terminating: receives traffic.
    pub fn usable(&self) -> bool {
        self.ready && !self.terminating
    }

    /// Still serving while it terminates: receives traffic only when no endpoint is usable.
    pub fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }
}

/// The endpoints of one Service, parsed.
pub(super) enum ServiceEndpoints<'a> {
    /// From the Service's EndpointSlices (there is at least one).
    Slices(Vec<Slice<'a>>),
    /// Derived from the pods the selector picks (no EndpointSlice exists).
    Pods(Vec<PodEndpoint<'a>>),
    /// Neither: no slice and no selector.
    None,
}

/// One EndpointSlice with its endpoints parsed.
pub(super) struct Slice<'a> {
    /// `namespace/name`, for logs.
    object: String,
    ports: &'a [EndpointPort],
    endpoints: Vec<Candidate>,
}

/// One selected pod with its addresses.
pub(super) struct PodEndpoint<'a> {
    pod: &'a Pod,
    key: (String, String),
    addrs: Vec<IpAddr>,
    local: bool,
    ready: bool,
}

impl<'a> ServiceEndpoints<'a> {
    /// The endpoints of service `namespace/name`.
    pub fn new(
        state: &'a ClusterState,
        node: &NodeInfo,
        svc: &'a Service,
        namespace: &str,
        name: &str,
        warnings: &mut Warnings,
    ) -> Self {
        let by_addr: BTreeMap<IpAddr, &(String, String)> =
            node.local_pods.iter().map(|(k, a)| (*a, k)).collect();
        let slices: Vec<&EndpointSlice> =
            state.endpoint_slices_for_service(namespace, name).collect();
        if !slices.is_empty() {
            return ServiceEndpoints::Slices(
                slices
                    .into_iter()
                    .filter_map(|s| slice(s, namespace, node, &by_addr, warnings))
                    .collect(),
            );
        }
        let spec = svc.spec.as_ref();
        let Some(selector) = spec
            .and_then(|s| s.selector.as_ref())
            .filter(|s| !s.is_empty())
        else {
            return ServiceEndpoints::None;
        };
        let publish_not_ready = spec.and_then(|s| s.publish_not_ready_addresses) == Some(true);
        let empty = BTreeMap::new();
        let pods = state
            .pods_in(namespace)
            .filter(|p| {
                let labels = p.metadata.labels.as_ref().unwrap_or(&empty);
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .filter_map(|p| pod_endpoint(p, namespace, node, &by_addr, publish_not_ready, warnings))
            .collect();
        ServiceEndpoints::Pods(pods)
    }

    /// The candidates of service port `port` (protocol `proto`) of service `object`.
    pub fn candidates(
        &self,
        object: &str,
        port: &ServicePort,
        proto: Proto,
        warnings: &mut Warnings,
    ) -> Vec<Candidate> {
        let port_name = port.name.as_deref().unwrap_or_default();
        if let (ServiceEndpoints::Pods(_), Some(IntOrString::Int(p))) = (self, &port.target_port) {
            if port_number(*p).is_none() {
                warnings.add(
                    object.to_owned(),
                    "spec.ports.targetPort",
                    p.to_string(),
                    "not a port number, port has no backends",
                );
            }
        }
        match self {
            ServiceEndpoints::None => Vec::new(),
            ServiceEndpoints::Slices(slices) => slices
                .iter()
                .filter_map(|s| Some((s, s.port(port_name, proto, warnings)?)))
                .flat_map(|(s, backend_port)| {
                    s.endpoints.iter().map(move |c| {
                        let mut c = c.clone();
                        c.backend.port = backend_port;
                        c
                    })
                })
                .collect(),
            ServiceEndpoints::Pods(pods) => pods
                .iter()
                .filter_map(|p| Some((p, target_port(p.pod, port, proto)?)))
                .flat_map(|(p, backend_port)| {
                    p.addrs.iter().map(move |&addr| Candidate {
                        backend: Backend {
                            addr,
                            port: backend_port,
                            local: p.local,
                            pod: Some(p.key.clone()),
                        },
                        ready: p.ready,
                        serving: p.ready,
                        terminating: false,
                    })
                })
                .collect(),
        }
    }
}

impl Slice<'_> {
    /// The backend port of service port `name`/`proto` in this slice: the slice port with the
    /// same name (unset and `""` are the same) and protocol.
    fn port(&self, name: &str, proto: Proto, warnings: &mut Warnings) -> Option<u16> {
        let found = self.ports.iter().find(|p| {
            p.name.as_deref().unwrap_or_default() == name
                && Proto::from_k8s(p.protocol.as_deref()) == Some(proto)
        })?;
        let port = found.port.and_then(port_number);
        if port.is_none() {
            let value = found.port.map(|p| p.to_string()).unwrap_or_default();
            warnings.add(
                self.object.clone(),
                "ports.port",
                value,
                "not a port number, slice port ignored",
            );
        }
        port
    }
}

/// The endpoints of `slice` (in `namespace`), their port still to be resolved; `None` for
/// an FQDN slice, which no proxy programs.
fn slice<'a>(
    slice: &'a EndpointSlice,
    namespace: &str,
    node: &NodeInfo,
    by_addr: &BTreeMap<IpAddr, &(String, String)>,
    warnings: &mut Warnings,
) -> Option<Slice<'a>> {
    if slice.address_type == "FQDN" {
        return None;
    }
    let name = slice.metadata.name.as_deref().unwrap_or_default();
    let object = format!("{namespace}/{name}");
    let endpoints = slice
        .endpoints
        .iter()
        .filter_map(|ep| {
            // The addresses of an endpoint are fungible; proxies use the first (API reference).
            let first = ep.addresses.first()?;
            let Ok(addr) = first.parse::<IpAddr>() else {
                warnings.add(
                    object.clone(),
                    "endpoints.addresses",
                    first.as_str(),
                    "not an IP address, endpoint ignored",
                );
                return None;
            };
            let pod = ep
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| {
                    let ns = r.namespace.as_deref().filter(|ns| !ns.is_empty());
                    Some((ns.unwrap_or(namespace).to_owned(), r.name.clone()?))
                })
                .or_else(|| by_addr.get(&addr).map(|k| (*k).clone()));
            let local =
                ep.node_name.as_deref() == Some(node.node_name) || by_addr.contains_key(&addr);
            // Unset conditions: ready and not terminating; serving defers to ready (API reference).
            let conditions = ep.conditions.clone().unwrap_or_default();
            let ready = conditions.ready.unwrap_or(true);
            Some(Candidate {
                backend: Backend {
                    addr,
                    port: 0,
                    local,
                    pod,
                },
                ready,
                serving: conditions.serving.unwrap_or(ready),
                terminating: conditions.terminating.unwrap_or(false),
            })
        })
        .collect();
    Some(Slice {
        object,
        ports: slice.ports.as_deref().unwrap_or_default(),
        endpoints,
    })
}

/// `pod` as an endpoint, as the EndpointSlice controller would list it, or `None` when the
/// controller leaves it out: terminating (`deletionTimestamp` set), finished (`Succeeded` or
/// `Failed`), or without an address. The address is the one CNI ADD gave on this node, else
/// `status.podIPs` (`status.podIP`). A pod whose `Ready` condition is `False` is not ready
/// unless the service publishes not-ready addresses; a pod with no status (standalone
/// manifests carry none) counts as ready.
fn pod_endpoint<'a>(
    pod: &'a Pod,
    namespace: &str,
    node: &NodeInfo,
    by_addr: &BTreeMap<IpAddr, &(String, String)>,
    publish_not_ready: bool,
    warnings: &mut Warnings,
) -> Option<PodEndpoint<'a>> {
    if !PodLife::of(pod).serves() {
        return None;
    }
    let status = pod.status.as_ref();
    let key = (namespace.to_owned(), pod.metadata.name.clone()?);
    let addrs: Vec<IpAddr> = match node.local_pods.get(&key) {
        Some(addr) => vec![*addr],
        None => {
            let ips: Vec<&str> = match status.and_then(|s| s.pod_ips.as_ref()) {
                Some(ips) if !ips.is_empty() => ips.iter().map(|ip| ip.ip.as_str()).collect(),
                _ => status
                    .and_then(|s| s.pod_ip.as_deref())
                    .into_iter()
                    .collect(),
            };
            let object = format!("{}/{}", key.0, key.1);
            ips.into_iter()
                .filter(|ip| !ip.is_empty())
                .filter_map(|ip| {
                    let addr = ip.parse().ok();
                    if addr.is_none() {
                        warnings.add(
                            object.clone(),
                            "status.podIPs",
                            ip,
                            "not an IP address, ignored",
                        );
                    }
                    addr
                })
                .collect()
        }
    };
    if addrs.is_empty() {
        return None;
    }
    let on_node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.node_name);
    let local = on_node || addrs.iter().any(|a| by_addr.contains_key(a));
    let not_ready = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "False");
    Some(PodEndpoint {
        pod,
        key,
        addrs,
        local,
        ready: publish_not_ready || !not_ready,
    })
}

/// The port `pod` serves service port `port` on, as the endpoints controller's `FindPort`:
/// a numeric `targetPort` as is, unset as `port`, a named one from the pod's containers (and
/// sidecars: init containers with `restartPolicy: Always`) with the same name and protocol.
/// `None` when the pod has no such port, which leaves it out of this service port.
fn target_port(pod: &Pod, port: &ServicePort, proto: Proto) -> Option<u16> {
    match &port.target_port {
        None => port_number(port.port),
        Some(IntOrString::Int(p)) => port_number(*p),
        Some(IntOrString::String(name)) => {
            let spec = pod.spec.as_ref()?;
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c: &Container| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && Proto::from_k8s(p.protocol.as_deref()) == Some(proto)
                })
                .and_then(|p| port_number(p.container_port))
        }
    }
}
