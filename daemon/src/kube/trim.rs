//! What the agent keeps of a Pod from the API server. API mode watches every Pod of the
//! cluster (NetworkPolicy peers and Service endpoints on other nodes are judged by their
//! labels and addresses), so each one is cut down before it is stored to the fields the
//! agent reads, and nothing else:
//! - metadata: name, namespace, uid, labels, creation and deletion timestamps, and the
//!   `sluice.dev/*` annotations (not `managedFields`, owners, other annotations);
//! - spec: `nodeName`, `hostNetwork`, and of each container (and each sidecar: an init
//!   container with `restartPolicy: Always`) its name and ports (named ports of policies and
//!   Services); not images, commands, env, resources, probes, volumes…;
//! - status: phase, `podIP(s)`, `hostIP(s)`, and the `Ready` condition's type and status.
//!
//! Who reads what: `model::PodLife` (phase, deletionTimestamp, hostNetwork),
//! `policy::compile` (labels, addresses, nodeName, container ports),
//! `services::endpoints` (addresses, nodeName, Ready, container ports), `services::claims`
//! (addresses), the agent's pod flags (`sluice.dev/sockmap`). A field read elsewhere later
//! must be kept here too.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodCondition, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The annotation prefix the agent reads (`sluice.dev/sockmap`, `sluice.dev/lb-algorithm`).
const ANNOTATION_PREFIX: &str = "sluice.dev/";

/// `pod` with only what the agent reads (see the module doc).
pub fn pod(pod: Pod) -> Pod {
    let Pod {
        metadata,
        spec,
        status,
    } = pod;
    let annotations: BTreeMap<String, String> = metadata
        .annotations
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX))
        .collect();
    Pod {
        metadata: ObjectMeta {
            name: metadata.name,
            namespace: metadata.namespace,
            uid: metadata.uid,
            labels: metadata.labels,
            annotations: (!annotations.is_empty()).then_some(annotations),
            creation_timestamp: metadata.creation_timestamp,
            deletion_timestamp: metadata.deletion_timestamp,
            ..ObjectMeta::default()
        },
        spec: spec.map(|s| PodSpec {
            node_name: s.node_name,
            host_network: s.host_network,
            containers: s.containers.into_iter().map(container).collect(),
            init_containers: s.init_containers.and_then(|list| {
                let sidecars: Vec<Container> = list
                    .into_iter()
                    .filter(|c| c.restart_policy.as_deref() == Some("Always"))
                    .map(container)
                    .collect();
                (!sidecars.is_empty()).then_some(sidecars)
            }),
            ..PodSpec::default()
        }),
        status: status.map(|s| PodStatus {
            phase: s.phase,
            pod_ip: s.pod_ip,
            pod_ips: s.pod_ips,
            host_ip: s.host_ip,
            host_ips: s.host_ips,
            conditions: s.conditions.map(|list| {
                list.into_iter()
                    .filter(|c| c.type_ == "Ready")
                    .map(|c| PodCondition {
                        type_: c.type_,
                        status: c.status,
                        ..PodCondition::default()
                    })
                    .collect()
            }),
            ..PodStatus::default()
        }),
    }
}

/// A container's name, ports and restart policy (which makes an init container a sidecar).
fn container(c: Container) -> Container {
    Container {
        name: c.name,
        ports: c.ports,
        restart_policy: c.restart_policy,
        ..Container::default()
    }
}

#[cfg(test)]
mod tests;
