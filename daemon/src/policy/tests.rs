//! Unit tests of policy compilation and verdicts, and the matrix harness the other test
//! files share, after the upstream network policy e2e suite (`test/e2e/network/netpol`):
//! namespaces x, y, z labelled `ns: x|y|z`, pods a, b, c in each labelled `pod: a|b|c`, each
//! serving 80 and 81 over TCP, UDP and SCTP on container ports named `serve-80-tcp` and so
//! on. Every pair is probed and the result compared with a truth table written from the API
//! reference. Pod `x/a` is 10.0.1.1, `y/b` 10.0.2.2 and so on: 10.0.1.0/24 is namespace x.
//!
//! Unlike upstream, which ignores a pod's connections to itself because plugins differ,
//! every table expects them allowed ("a pod cannot block access to itself").

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;
use serde_json::json;

use super::*;
use crate::model::{ClusterState, Kind, Object};

pub(super) const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub(super) const PODS: [&str; 3] = ["a", "b", "c"];
pub(super) const NODE: &str = "node-a";

/// A protocol and destination port to probe every pair on.
pub(super) type Probe = (Proto, u16);
pub(super) const TCP80: Probe = (Proto::Tcp, 80);
pub(super) const TCP81: Probe = (Proto::Tcp, 81);
pub(super) const UDP80: Probe = (Proto::Udp, 80);
pub(super) const UDP81: Probe = (Proto::Udp, 81);
pub(super) const EVERY_PROBE: [Probe; 4] = [TCP80, TCP81, UDP80, UDP81];

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// The address of matrix pod `ns/pod`: 10.0.<namespace 1..3>.<pod 1..3>.
pub(super) fn addr_of(pod: &str) -> IpAddr {
    let (ns, name) = pod.split_once('/').expect("ns/pod");
    let i = NAMESPACES
        .iter()
        .position(|n| *n == ns)
        .expect("matrix namespace");
    let j = PODS.iter().position(|p| *p == name).expect("matrix pod");
    ip(&format!("10.0.{}.{}", i + 1, j + 1))
}

pub(super) fn pod_ref(pod: &str) -> PodRef {
    let (ns, name) = pod.split_once('/').expect("ns/pod");
    PodRef::new(ns, name)
}

/// Matrix pod `ns/name` on node `node-a`, its address in its status.
fn matrix_pod(ns: &str, name: &str) -> Object {
    let mut containers = Vec::new();
    for port in [80, 81] {
        for proto in ["TCP", "UDP", "SCTP"] {
            let lower = proto.to_lowercase();
            containers.push(json!({
                "name": format!("cont-{port}-{lower}"),
                "image": "registry.k8s.io/e2e-test-images/agnhost:2.53",
                "ports": [{"containerPort": port, "name": format!("serve-{port}-{lower}"),
                           "protocol": proto}],
            }));
        }
    }
    let addr = addr_of(&format!("{ns}/{name}")).to_string();
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"pod": name}},
        "spec": {"nodeName": NODE, "containers": containers},
        "status": {"phase": "Running", "podIP": addr, "podIPs": [{"ip": addr}]},
    });
    Object::Pod(serde_json::from_value(pod).expect("valid pod"))
}

/// The matrix: namespaces x, y, z and pods a, b, c in each, no policy.
pub(super) fn world() -> ClusterState {
    let mut state = ClusterState::new();
    for ns in NAMESPACES {
        let namespace = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"ns": ns}}});
        let namespace = serde_json::from_value(namespace).expect("valid namespace");
        state.apply(Object::Namespace(namespace)).expect("apply");
        for pod in PODS {
            state.apply(matrix_pod(ns, pod)).expect("apply");
        }
    }
    state
}

/// Applies the objects of a multi-document YAML string.
pub(super) fn apply(state: &mut ClusterState, yaml: &str) {
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value = serde_json::Value::deserialize(doc).expect("valid YAML");
        let api_version = value["apiVersion"].as_str().unwrap_or_default().to_owned();
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        let obj = match Kind::from_api(&api_version, &kind) {
            Some(Kind::NetworkPolicy) => Object::NetworkPolicy(from(value)),
            Some(Kind::Pod) => Object::Pod(from(value)),
            Some(Kind::Namespace) => Object::Namespace(from(value)),
            Some(Kind::Node) => Object::Node(from(value)),
            _ => panic!("unexpected kind {api_version} {kind}"),
        };
        state.apply(obj).expect("apply");
    }
}

fn from<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("valid object")
}

/// The matrix with the objects of `yaml` added.
pub(super) fn with(yaml: &str) -> ClusterState {
    let mut state = world();
    apply(&mut state, yaml);
    state
}

/// Replaces the labels of pod `ns/name`.
pub(super) fn relabel_pod(state: &mut ClusterState, pod: &str, labels: &[(&str, &str)]) {
    let (ns, name) = pod.split_once('/').expect("ns/pod");
    let mut pod = state.pod(ns, name).expect("pod").clone();
    pod.metadata.labels = Some(owned(labels));
    state.apply(Object::Pod(pod)).expect("apply");
}

/// Replaces the labels of namespace `ns` (the API server adds its name label regardless).
pub(super) fn relabel_namespace(state: &mut ClusterState, ns: &str, labels: &[(&str, &str)]) {
    let mut namespace = state.namespace(ns).expect("namespace").clone();
    namespace.metadata.labels = Some(owned(labels));
    state.apply(Object::Namespace(namespace)).expect("apply");
}

fn owned(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// `state` compiled on node `node-a` with no CNI address and no node address.
pub(super) fn compile_state(state: &ClusterState) -> PolicySet {
    let local_pods = BTreeMap::new();
    compile(
        state,
        &LocalNode {
            node_name: NODE,
            node_ips: &[],
            local_pods: &local_pods,
        },
    )
}

/// The verdict on `proto` to `port` from `src` to `dst`, each a matrix pod (`x/a`) or an
/// address, pods found by address.
pub(super) fn judge(set: &PolicySet, src: &str, dst: &str, (proto, port): Probe) -> Verdict {
    let addr = |s: &str| if s.contains('/') { addr_of(s) } else { ip(s) };
    verdict(
        set,
        &Connection {
            src: addr(src),
            src_pod: None,
            dst: addr(dst),
            dst_pod: None,
            proto,
            port,
        },
    )
}

/// Who reaches whom in the matrix: `self.0[from][to]`, pods in (namespace, pod) order.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Table([[bool; 9]; 9]);

impl Table {
    /// Every pair allowed.
    pub(super) fn all() -> Self {
        Table([[true; 9]; 9])
    }

    /// Every pair matching `from` -> `to` set to `allowed`. A pattern is a pod (`x/a`),
    /// every pod of a namespace (`x/*`), a pod name in every namespace (`*/a`) or `*`.
    pub(super) fn set(mut self, from: &str, to: &str, allowed: bool) -> Self {
        for i in matching(from) {
            for j in matching(to) {
                self.0[i][j] = allowed;
            }
        }
        self
    }

    /// The table a compiled state gives for `probe`.
    fn probe(set: &PolicySet, probe: Probe) -> Self {
        let mut t = Table([[false; 9]; 9]);
        for (i, from) in matrix().iter().enumerate() {
            for (j, to) in matrix().iter().enumerate() {
                t.0[i][j] = judge(set, from, to, probe).allowed;
            }
        }
        t
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "from\\to")?;
        for to in matrix() {
            write!(f, " {to}")?;
        }
        writeln!(f)?;
        for (i, from) in matrix().iter().enumerate() {
            write!(f, "{from:>7}")?;
            for allowed in self.0[i] {
                write!(f, "  {} ", if allowed { '.' } else { 'X' })?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// The matrix pods, `x/a` to `z/c`.
fn matrix() -> Vec<String> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect()
}

fn matching(pattern: &str) -> Vec<usize> {
    let (ns, pod) = pattern.split_once('/').unwrap_or(("*", "*"));
    matrix()
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            let (pns, ppod) = p.split_once('/').expect("ns/pod");
            (ns == "*" || ns == pns) && (pod == "*" || pod == ppod)
        })
        .map(|(i, _)| i)
        .collect()
}

/// Compiles `state`, probes every pair for each probe and compares with its table (each
/// pod allowed to itself), failing with both grids for every probe that differs.
#[track_caller]
pub(super) fn check(state: &ClusterState, cases: &[(Probe, &Table)]) {
    let set = compile_state(state);
    let mut failures = String::new();
    for ((proto, port), expected) in cases {
        let mut expected = (*expected).clone();
        for i in 0..9 {
            expected.0[i][i] = true;
        }
        let actual = Table::probe(&set, (*proto, *port));
        if actual != expected {
            failures += &format!(
                "\n{} {port}: expected\n{expected}actual\n{actual}",
                proto.as_str()
            );
        }
    }
    assert!(failures.is_empty(), "truth tables differ:{failures}");
}

/// [`check`] with the same table for TCP and UDP on 80 and 81.
#[track_caller]
pub(super) fn check_every(state: &ClusterState, table: &Table) {
    let cases: Vec<(Probe, &Table)> = EVERY_PROBE.iter().map(|p| (*p, table)).collect();
    check(state, &cases);
}

/// Test that with no policy every pod reaches every pod on every probe.
#[test]
fn matrix_no_policies_allow_everything() {
    check_every(&world(), &Table::all());
    let set = compile_state(&world());
    assert_eq!(set.endpoints().count(), 9);
    assert!(set
        .endpoints()
        .all(|ep| !ep.ingress.is_isolated() && !ep.egress.is_isolated()));
}
