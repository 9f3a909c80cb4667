//! The `ports` of a policy rule: parsed once per rule (invalid entries reported and left
//! out), then resolved on the pod the ports belong to, which gives named ports their
//! numbers.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicyPort;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::compile::Problems;
use super::{Ports, Proto};

/// One entry of a rule's `ports`, parsed.
pub(super) enum PortSpec {
    /// No `ports`: every protocol and port.
    All,
    Numeric(Ports),
    Named {
        proto: Proto,
        name: String,
    },
}

/// A rule's `ports` parsed: `[All]` for none; invalid entries are reported and left out.
pub(super) fn port_specs(
    ports: Option<&[NetworkPolicyPort]>,
    object: &str,
    field: &'static str,
    problems: &mut Problems,
) -> Vec<PortSpec> {
    let ports = ports.unwrap_or_default();
    if ports.is_empty() {
        return vec![PortSpec::All];
    }
    ports
        .iter()
        .filter_map(|p| port_spec(p, object, field, problems))
        .collect()
}

fn port_spec(
    port: &NetworkPolicyPort,
    object: &str,
    field: &'static str,
    problems: &mut Problems,
) -> Option<PortSpec> {
    let Some(proto) = Proto::from_k8s(port.protocol.as_deref()) else {
        let value = port.protocol.clone().unwrap_or_default();
        problems.add(object, field, &value, "unknown protocol, port ignored");
        return None;
    };
    let mut invalid = |value: String, problem: &str| {
        problems.add(object, field, &value, problem);
        None
    };
    match (&port.port, port.end_port) {
        (None, None) => Some(PortSpec::Numeric(Ports::Range {
            proto,
            first: 0,
            last: u16::MAX,
        })),
        (None, Some(end)) => invalid(end.to_string(), "endPort without port, port ignored"),
        (Some(IntOrString::String(name)), None) => Some(PortSpec::Named {
            proto,
            name: name.clone(),
        }),
        (Some(IntOrString::String(name)), Some(_)) => {
            invalid(name.clone(), "endPort with a named port, port ignored")
        }
        (Some(IntOrString::Int(first)), end) => {
            let Some(first) = port_number(*first) else {
                return invalid(first.to_string(), "not a port number, port ignored");
            };
            let last = match end {
                None => first,
                Some(end) => match port_number(end) {
                    Some(last) if last >= first => last,
                    _ => return invalid(end.to_string(), "endPort below port, port ignored"),
                },
            };
            Some(PortSpec::Numeric(Ports::Range { proto, first, last }))
        }
    }
}

/// The ports `specs` stand for on `pod` (the pod the ports belong to): numeric ones as
/// they are, named ones resolved on `pod`, or dropped when there is none.
pub(super) fn resolve(specs: &[PortSpec], pod: Option<&Pod>) -> Vec<Ports> {
    let mut out: Vec<Ports> = specs
        .iter()
        .filter_map(|s| match s {
            PortSpec::All => Some(Ports::All),
            PortSpec::Numeric(p) => Some(*p),
            PortSpec::Named { .. } => None,
        })
        .collect();
    if let Some(pod) = pod {
        out.extend(resolve_named(specs, pod));
    }
    out
}

/// The named ports of `specs` resolved on `pod`: each container port (of a container or a
/// sidecar, an init container with `restartPolicy: Always`) with the name and protocol.
pub(super) fn resolve_named(specs: &[PortSpec], pod: &Pod) -> Vec<Ports> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    let container_ports: Vec<_> = spec
        .containers
        .iter()
        .chain(sidecars)
        .flat_map(|c| c.ports.iter().flatten())
        .collect();
    let mut out = Vec::new();
    for s in specs {
        let PortSpec::Named { proto, name } = s else {
            continue;
        };
        for cp in &container_ports {
            if cp.name.as_deref() != Some(name.as_str())
                || Proto::from_k8s(cp.protocol.as_deref()) != Some(*proto)
            {
                continue;
            }
            if let Some(port) = port_number(cp.container_port) {
                out.push(Ports::Range {
                    proto: *proto,
                    first: port,
                    last: port,
                });
            }
        }
    }
    out
}

/// A port number from the API's `i32`, if it is one (1..=65535).
fn port_number(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p != 0)
}
