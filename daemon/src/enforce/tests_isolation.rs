//! The isolation published to the CNI plugin (`SL_PODISO`) is the compiled policy set's: the
//! same pods, the same selection, the same `policyTypes` defaulting.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use datapath_common::policy;

use super::pod_isolation;
use crate::model::ClusterState;
use crate::policy::{compile, Direction, LocalNode, PolicySet};

fn state(docs: &str) -> ClusterState {
    let mut state = ClusterState::new();
    for o in crate::manifests::parse_bytes(Path::new("t.yaml"), docs.as_bytes()).unwrap() {
        state.apply(o).unwrap();
    }
    state
}

fn compiled(state: &ClusterState, local_pods: &BTreeMap<(String, String), IpAddr>) -> PolicySet {
    compile(
        state,
        &LocalNode {
            node_name: "node-a",
            node_ips: &[],
            local_pods,
        },
    )
}

fn key(ns: &str, name: &str) -> u64 {
    policy::pod_key(ns.as_bytes(), name.as_bytes())
}

/// Every endpoint of this node is published with exactly the directions its compiled rules
/// isolate (one derivation, whatever the pod).
fn assert_matches_endpoints(set: &PolicySet, iso: &BTreeMap<u64, u32>) {
    for e in set.endpoints().filter(|e| e.on_node) {
        let mut want = 0;
        if e.rules(Direction::Ingress).is_isolated() {
            want |= policy::ISO_INGRESS;
        }
        if e.rules(Direction::Egress).is_isolated() {
            want |= policy::ISO_EGRESS;
        }
        let got = iso
            .get(&key(&e.pod.namespace, &e.pod.name))
            .copied()
            .unwrap_or(0);
        assert_eq!(got, want, "{}", e.pod);
    }
}

/// Test that isolation before a pod has an address follows the API server's defaulting of
/// policyTypes: Ingress always, Egress only with at least one egress rule or when named;
/// and that it is published for the pods this node may start (scheduled here or not
/// scheduled), not for another node's.
#[test]
fn pod_isolation_follows_policy_types_defaulting() {
    let docs = "\
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: here, namespace: x, labels: {pod: a}}
spec: {nodeName: node-a, containers: [{name: c, image: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: there, namespace: x, labels: {pod: a}}
spec: {nodeName: node-b, containers: [{name: c, image: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {pod: c}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: empty-egress, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  egress: []
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: with-egress, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  egress: [{}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-only, namespace: x}
spec:
  podSelector: {matchLabels: {pod: c}}
  policyTypes: [Egress]
";
    let set = compiled(&state(docs), &BTreeMap::new());
    let iso = pod_isolation(&set);
    assert_matches_endpoints(&set, &iso);
    let key = |n: &str| key("x", n);
    assert_eq!(iso[&key("a")], policy::ISO_INGRESS);
    assert_eq!(iso[&key("b")], policy::ISO_INGRESS | policy::ISO_EGRESS);
    assert_eq!(iso[&key("c")], policy::ISO_EGRESS);
    assert_eq!(iso[&key("here")], policy::ISO_INGRESS);
    assert!(!iso.contains_key(&key("there")), "a pod of node-b");
    assert_eq!(iso.len(), 4);
}

/// Test that a pod on the host network, a pod that has finished (`Succeeded`), and a pod
/// whose manifest names no namespace are published as the compiled set judges them: a
/// policy selecting a `hostNetwork` pod does not isolate it (its traffic is the node's: no
/// CNI ADD, no endpoint), nor a `Succeeded` pod ("all containers in the Pod have terminated
/// in success, and will not be restarted", its address may be another pod's), while a pod
/// and a policy without `metadata.namespace` are both in `default` (the namespace the API
/// server and `kubectl` give them), so the policy isolates the pod.
#[test]
fn pod_isolation_is_the_compiled_sets_for_drift_cases() {
    let docs = "\
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: x, labels: {app: a}}
spec: {hostNetwork: true, nodeName: node-a, containers: [{name: c, image: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: x, labels: {app: a}}
spec: {nodeName: node-a, containers: [{name: c, image: c}]}
status: {phase: Succeeded, podIP: 10.244.0.9}
---
apiVersion: v1
kind: Pod
metadata: {name: failed, namespace: x, labels: {app: a}}
spec: {containers: [{name: c, image: c}]}
status: {phase: Failed}
---
apiVersion: v1
kind: Pod
metadata: {name: runs, namespace: x, labels: {app: a}}
spec: {nodeName: node-a, containers: [{name: c, image: c}]}
status: {phase: Running, podIP: 10.244.0.7}
---
apiVersion: v1
kind: Pod
metadata: {name: nons, labels: {app: a}}
spec: {containers: [{name: c, image: c}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Ingress, Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: d}
spec:
  podSelector: {}
";
    let local = BTreeMap::from([(
        ("x".to_owned(), "runs".to_owned()),
        "10.244.0.7".parse().unwrap(),
    )]);
    let set = compiled(&state(docs), &local);
    let iso = pod_isolation(&set);
    assert_matches_endpoints(&set, &iso);
    assert!(!iso.contains_key(&key("x", "host")), "hostNetwork pod");
    assert!(!iso.contains_key(&key("x", "done")), "Succeeded pod");
    assert!(!iso.contains_key(&key("x", "failed")), "Failed pod");
    assert_eq!(
        iso[&key("x", "runs")],
        policy::ISO_INGRESS | policy::ISO_EGRESS
    );
    assert_eq!(iso[&key("default", "nons")], policy::ISO_INGRESS);
    assert_eq!(iso.len(), 2);
}
