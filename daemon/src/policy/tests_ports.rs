//! Matrix tests of ports: numeric, protocol only, ranges with `endPort`, named ports on
//! ingress (the destination pod's own) and on egress (each destination's, possibly a
//! different number per pod), and rules for one protocol isolating without opening the
//! others (SCTP, UDP). Expected tables come from the API reference and the upstream netpol
//! e2e scenarios of the same names.

use serde_json::json;

use super::tests::*;
use super::*;
use crate::model::{ClusterState, Object};

const SCTP80: Probe = (Proto::Sctp, 80);
const SCTP81: Probe = (Proto::Sctp, 81);

/// Adds to pod `ns/name` a container serving `port`/`proto` under port name `name`.
fn add_named_port(state: &mut ClusterState, pod: &str, name: &str, port: u16, proto: &str) {
    let (ns, pod_name) = pod.split_once('/').expect("ns/pod");
    let mut pod = state.pod(ns, pod_name).expect("pod").clone();
    let container = json!({"name": format!("extra-{name}"), "image": "nginx:1.27",
        "ports": [{"containerPort": port, "name": name, "protocol": proto}]});
    let spec = pod.spec.as_mut().expect("spec");
    spec.containers
        .push(serde_json::from_value(container).expect("container"));
    state.apply(Object::Pod(pod)).expect("apply");
}

/// Test that a numeric port opens that port and protocol only, for the allowed peers
/// ("should enforce policy based on Ports").
#[test]
fn numeric_port_from_namespace() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-81-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{port: 81, protocol: TCP}]
",
    );
    let closed = Table::all().set("*", "x/a", false);
    let open = closed.clone().set("y/*", "x/a", true);
    check(
        &state,
        &[
            (TCP80, &closed),
            (TCP81, &open),
            (UDP80, &closed),
            (UDP81, &closed),
        ],
    );
}

/// Test that two policies on one pod, one per port, add up, and that an allow-all policy
/// next to a port-limited one opens every port ("should enforce multiple, stacked
/// policies with overlapping podSelectors", "... with ingress allow-all policy taking
/// precedence").
#[test]
fn stacked_port_policies_add_up() {
    let mut state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-81-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{port: 81}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-80-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{port: 80}]
",
    );
    let closed = Table::all().set("*", "x/a", false);
    let open = closed.clone().set("y/*", "x/a", true);
    check(
        &state,
        &[
            (TCP80, &open),
            (TCP81, &open),
            (UDP80, &closed),
            (UDP81, &closed),
        ],
    );
    apply(
        &mut state,
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec:
  podSelector: {}
  ingress: [{}]
",
    );
    check_every(&state, &Table::all());
}

/// Test that a port entry with a protocol and no port opens every port of that protocol
/// only ("should enforce ingress policy allowing any port traffic to a server on a
/// specific protocol").
#[test]
fn protocol_without_port_opens_every_port_of_it() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-tcp, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{protocol: TCP}]
",
    );
    let closed = Table::all().set("*", "x/a", false);
    let open = Table::all();
    check(
        &state,
        &[
            (TCP80, &open),
            (TCP81, &open),
            (UDP80, &closed),
            (UDP81, &closed),
        ],
    );
}

/// Test that a UDP-only rule isolates a pod without opening TCP on the same port ("should
/// not allow access by TCP when a policy specifies only UDP").
#[test]
fn udp_only_rule_does_not_open_tcp() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-udp-81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{port: 81, protocol: UDP}]
",
    );
    let closed = Table::all().set("*", "x/a", false);
    check(
        &state,
        &[
            (TCP80, &closed),
            (TCP81, &closed),
            (UDP80, &closed),
            (UDP81, &Table::all()),
        ],
    );
}

/// Test that an SCTP-only rule isolates its pod for TCP and UDP and opens only SCTP on its
/// port, alone or next to a default deny ("should properly isolate pods that are selected
/// by a policy allowing SCTP", "should not mistakenly treat 'protocol: SCTP' as 'protocol:
/// TCP'").
#[test]
fn sctp_only_rule_isolates_without_opening_tcp() {
    let alone = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-sctp-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{port: 80, protocol: SCTP}]
",
    );
    let closed = Table::all().set("*", "x/a", false);
    check(
        &alone,
        &[
            (TCP80, &closed),
            (TCP81, &closed),
            (UDP80, &closed),
            (UDP81, &closed),
            (SCTP80, &Table::all()),
            (SCTP81, &closed),
        ],
    );

    let with_deny = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec:
  podSelector: {}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-sctp-81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{port: 81, protocol: SCTP}]
",
    );
    let closed = Table::all().set("*", "x/*", false);
    let sctp81 = closed.clone().set("*", "x/a", true);
    check(
        &with_deny,
        &[
            (TCP80, &closed),
            (TCP81, &closed),
            (UDP80, &closed),
            (UDP81, &closed),
            (SCTP80, &closed),
            (SCTP81, &sctp81),
        ],
    );
}

/// Test that `endPort` opens the inclusive range `port..=endPort` of its protocol, on
/// ingress and egress.
#[test]
fn end_port_opens_inclusive_range() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: udp-80-81, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: 80, endPort: 81, protocol: UDP}]
",
    );
    let closed = Table::all().set("*", "x/*", false);
    let open = Table::all();
    check(
        &state,
        &[
            (TCP80, &closed),
            (TCP81, &closed),
            (UDP80, &open),
            (UDP81, &open),
        ],
    );

    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: tcp-81-90, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: 81, endPort: 90}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-tcp-79-80, namespace: y}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - ports: [{port: 79, endPort: 80, protocol: TCP}]
",
    );
    let tcp80 = Table::all().set("*", "x/*", false);
    let tcp81 = Table::all().set("y/a", "*", false);
    let udp = Table::all().set("*", "x/*", false).set("y/a", "*", false);
    check(
        &state,
        &[
            (TCP80, &tcp80),
            (TCP81, &tcp81),
            (UDP80, &udp),
            (UDP81, &udp),
        ],
    );
}

/// Test that a named ingress port resolves on the destination pod with its protocol
/// ("should allow ingress access on one named port"), and that a name whose container port
/// has another protocol than the policy port's opens nothing.
#[test]
fn named_ingress_port_resolves_on_destination() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-serve-81-tcp, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: serve-81-tcp}]
",
    );
    let closed = Table::all().set("*", "x/*", false);
    check(
        &state,
        &[
            (TCP80, &closed),
            (TCP81, &Table::all()),
            (UDP80, &closed),
            (UDP81, &closed),
        ],
    );

    // serve-81-udp is a UDP port; the policy port defaults to TCP: no match.
    let wrong_proto = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-serve-81-udp-as-tcp, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: serve-81-udp}]
",
    );
    check_every(&wrong_proto, &closed);

    let udp = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-serve-81-udp, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: serve-81-udp, protocol: UDP}]
",
    );
    check(
        &udp,
        &[
            (TCP80, &closed),
            (TCP81, &closed),
            (UDP80, &closed),
            (UDP81, &Table::all()),
        ],
    );
}

/// Test a named ingress port with a namespace peer ("should allow ingress access from
/// namespace on one named port").
#[test]
fn named_ingress_port_from_namespace() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-y-serve-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{port: serve-80-tcp, protocol: TCP}]
",
    );
    let closed = Table::all().set("*", "x/a", false);
    let open = closed.clone().set("y/*", "x/a", true);
    check(
        &state,
        &[
            (TCP80, &open),
            (TCP81, &closed),
            (UDP80, &closed),
            (UDP81, &closed),
        ],
    );
}

/// Test that a named egress port resolves on each destination pod ("should allow egress
/// access on one named port").
#[test]
fn named_egress_port_to_every_destination() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-egress-serve-80, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - ports: [{port: serve-80-tcp}]
",
    );
    let closed = Table::all().set("x/*", "*", false);
    check(
        &state,
        &[
            (TCP80, &Table::all()),
            (TCP81, &closed),
            (UDP80, &closed),
            (UDP81, &closed),
        ],
    );
    let set = compile_state(&state);
    assert!(!judge(&set, "x/a", "192.168.0.1", TCP80).allowed);
}

/// Test that a named egress port resolves to each destination's own number: `web` is 80 on
/// y/a and 81 on y/b and absent elsewhere, so x/a reaches y/a on 80, y/b on 81 and nothing
/// else, towards every peer, a namespace, or an ipBlock holding them (an ipBlock without
/// them allows nothing).
#[test]
fn named_egress_port_differs_per_destination() {
    let policy = |to: &str| {
        let mut state = with(&format!(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: allow-web, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  policyTypes: [Egress]
  egress:
  - to: {to}
    ports: [{{port: web}}]
"
        ));
        add_named_port(&mut state, "y/a", "web", 80, "TCP");
        add_named_port(&mut state, "y/b", "web", 81, "TCP");
        state
    };
    let closed = Table::all().set("x/a", "*", false);
    let tcp80 = closed.clone().set("x/a", "y/a", true);
    let tcp81 = closed.clone().set("x/a", "y/b", true);
    for to in [
        "[]",
        "[{namespaceSelector: {matchLabels: {ns: y}}}]",
        "[{ipBlock: {cidr: 10.0.2.0/24}}]",
    ] {
        let state = policy(to);
        check(
            &state,
            &[
                (TCP80, &tcp80),
                (TCP81, &tcp81),
                (UDP80, &closed),
                (UDP81, &closed),
            ],
        );
        let set = compile_state(&state);
        let x_a = set.endpoint(&pod_ref("x/a")).expect("endpoint");
        let allowed: Vec<(&Peer, &Ports)> = x_a
            .egress
            .allow
            .iter()
            .map(|a| (&a.peer, &a.ports))
            .collect();
        let pod = |p: &str| Peer::Pod {
            pod: pod_ref(p),
            addrs: [addr_of(p)].into(),
        };
        let tcp = |port| Ports::Range {
            proto: Proto::Tcp,
            first: port,
            last: port,
        };
        assert_eq!(
            allowed,
            [(&pod("y/a"), &tcp(80)), (&pod("y/b"), &tcp(81))],
            "to: {to}"
        );
    }
    check_every(
        &policy("[{ipBlock: {cidr: 10.0.3.0/24}}]"),
        &Table::all().set("x/a", "*", false),
    );
}
