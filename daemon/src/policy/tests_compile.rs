//! Unit tests of the compiled form and of verdicts outside the matrix: the per-endpoint
//! representation, ipBlock arithmetic, the reasons a verdict gives, sides that are not pods,
//! a pod's own node, which pods are endpoints at which addresses, and invalid input failing
//! closed.

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;

use super::tests::*;
use super::*;

fn net(s: &str) -> IpNetwork {
    s.parse().expect("test CIDR")
}

const ALLOW_FROM_Y: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
";

/// Test that an endpoint records the policies isolating it and one entry per (peer, ports)
/// with the rule it came from, and that unselected pods and directions stay open.
#[test]
fn compiled_endpoint_lists_isolation_and_allows() {
    let set = compile_state(&with(ALLOW_FROM_Y));
    let x_a = set.endpoint(&pod_ref("x/a")).expect("endpoint");
    assert_eq!(x_a.addrs, [addr_of("x/a")]);
    assert_eq!(
        x_a.ingress.isolated_by,
        [
            PolicyRef::new("x", "allow-from-y"),
            PolicyRef::new("x", "deny-all")
        ]
    );
    let rule = RuleRef {
        policy: PolicyRef::new("x", "allow-from-y"),
        direction: Direction::Ingress,
        index: 0,
    };
    let expected: Vec<Allow> = ["y/a", "y/b", "y/c"]
        .iter()
        .map(|p| Allow {
            rule: rule.clone(),
            peer: Peer::Pod {
                pod: pod_ref(p),
                addrs: [addr_of(p)].into(),
            },
            ports: Ports::Range {
                proto: Proto::Tcp,
                first: 80,
                last: 80,
            },
        })
        .collect();
    assert_eq!(x_a.ingress.allow, expected);
    assert_eq!(rule.to_string(), "x/allow-from-y ingress[0]");
    assert!(!x_a.egress.is_isolated() && x_a.egress.allow.is_empty());
    let x_b = set.endpoint(&pod_ref("x/b")).expect("endpoint");
    assert_eq!(x_b.ingress.isolated_by, [PolicyRef::new("x", "deny-all")]);
    assert!(x_b.ingress.allow.is_empty());
    let y_a = set.endpoint_at(addr_of("y/a")).expect("endpoint");
    assert!(!y_a.ingress.is_isolated() && !y_a.egress.is_isolated());
    assert!(set.problems().is_empty());
}

/// Test that an ipBlock contains its CIDR minus its excepts, and decomposes into the
/// fewest disjoint prefixes in address order.
#[test]
fn ip_block_contains_and_prefixes() {
    let block = IpBlock::new(net("10.0.0.7/24"), [net("10.0.0.5/32")]);
    assert_eq!(block.cidr, net("10.0.0.0/24"));
    assert!(block.contains(ip("10.0.0.6")));
    assert!(!block.contains(ip("10.0.0.5")));
    assert!(!block.contains(ip("10.0.1.1")));
    assert!(!block.contains(ip("fd00::1")));
    let expected: Vec<IpNetwork> = [
        "10.0.0.0/30",
        "10.0.0.4/32",
        "10.0.0.6/31",
        "10.0.0.8/29",
        "10.0.0.16/28",
        "10.0.0.32/27",
        "10.0.0.64/26",
        "10.0.0.128/25",
    ]
    .iter()
    .map(|s| net(s))
    .collect();
    assert_eq!(block.prefixes(), expected);

    let quarter = IpBlock::new(net("10.0.0.0/24"), [net("10.0.0.0/26")]);
    assert_eq!(
        quarter.prefixes(),
        [net("10.0.0.64/26"), net("10.0.0.128/25")]
    );
    let outside = IpBlock::new(net("10.0.0.0/24"), [net("192.168.0.0/16"), net("fd00::/8")]);
    assert_eq!(outside.prefixes(), [net("10.0.0.0/24")]);
    let covered = IpBlock::new(net("10.0.0.0/16"), [net("10.0.0.0/8")]);
    assert!(covered.prefixes().is_empty());
    assert!(!covered.contains(ip("10.0.0.1")));
    let v6 = IpBlock::new(net("fd00::/64"), [net("fd00::/65")]);
    assert_eq!(v6.prefixes(), [net("fd00::8000:0:0:0/65")]);
    assert_eq!(block.to_string(), "10.0.0.0/24 except 10.0.0.5/32");
}

/// Test that a verdict names the rules that allow a connection, or the policies that
/// isolate the pod when none does, side by side.
#[test]
fn verdict_names_rules_and_isolating_policies() {
    let set = compile_state(&with(ALLOW_FROM_Y));
    let allowed = judge(&set, "y/b", "x/a", TCP80);
    assert!(allowed.allowed);
    let rule = RuleRef {
        policy: PolicyRef::new("x", "allow-from-y"),
        direction: Direction::Ingress,
        index: 0,
    };
    let ingress = allowed.ingress.clone().expect("destination is a pod");
    assert_eq!(ingress.pod, pod_ref("x/a"));
    assert_eq!(ingress.direction, Direction::Ingress);
    assert_eq!(ingress.decision, Decision::AllowedBy(vec![rule]));
    let egress = allowed.egress.clone().expect("source is a pod");
    assert_eq!(egress.decision, Decision::NotIsolated);
    assert_eq!(
        allowed.to_string(),
        "allowed; egress of y/b: not isolated; ingress of x/a: allowed by \
         x/allow-from-y ingress[0]"
    );

    let denied = judge(&set, "y/b", "x/a", TCP81);
    assert!(!denied.allowed);
    assert_eq!(
        denied.to_string(),
        "denied; egress of y/b: not isolated; ingress of x/a: isolated by x/allow-from-y, \
         x/deny-all, no rule allows"
    );
}

/// Test that a side that is not a pod is not checked: from outside only the destination's
/// ingress counts, towards outside only the source's egress; a named pod that is no
/// endpoint counts as no pod.
#[test]
fn verdict_checks_only_pod_sides() {
    let set = compile_state(&with(ALLOW_FROM_Y));
    let inbound = judge(&set, "192.168.1.1", "x/b", TCP80);
    assert!(!inbound.allowed);
    assert!(inbound.egress.is_none());
    assert!(inbound
        .to_string()
        .starts_with("denied; source is not a pod, no egress policy; ingress of x/b"));
    let outbound = judge(&set, "x/b", "192.168.1.1", TCP80);
    assert!(outbound.allowed && outbound.ingress.is_none());

    let named = verdict(
        &set,
        &Connection {
            src: addr_of("y/a"),
            src_pod: Some(pod_ref("y/a")),
            dst: ip("10.99.0.1"),
            dst_pod: Some(pod_ref("x/ghost")),
            proto: Proto::Udp,
            port: 53,
        },
    );
    assert!(named.allowed && named.ingress.is_none());
    assert_eq!(named.egress.expect("y/a").pod, pod_ref("y/a"));
}

/// Test that a pod reaches itself whatever isolates it.
#[test]
fn pod_reaches_itself_under_deny_all() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
",
    );
    let set = compile_state(&state);
    let v = judge(&set, "x/a", "x/a", TCP80);
    assert!(v.allowed);
    assert_eq!(v.ingress.expect("pod").decision, Decision::SamePod);
    assert_eq!(v.egress.expect("pod").decision, Decision::SamePod);
    assert!(!judge(&set, "x/a", "x/b", TCP80).allowed);
}

/// Test that traffic between a pod and the node it runs on is allowed both ways under
/// deny-all, by the Node object's addresses and this node's own, and not from another node;
/// and that a pod of another node is judged there (its own node), not here.
#[test]
fn own_node_always_allowed() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 192.168.1.10}, {type: Hostname, address: node-a}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-b}
status: {addresses: [{type: InternalIP, address: 192.168.1.20}]}
---
apiVersion: v1
kind: Pod
metadata: {name: d, namespace: x}
spec: {nodeName: node-b, containers: [{name: app, image: nginx:1.27}]}
status: {podIP: 10.0.1.9}
",
    );
    let local_pods = BTreeMap::new();
    let node_ips = [ip("192.168.1.11")];
    let set = compile(
        &state,
        &LocalNode {
            node_name: NODE,
            node_ips: &node_ips,
            local_pods: &local_pods,
        },
    );
    let x_a = set.endpoint(&pod_ref("x/a")).expect("endpoint");
    assert_eq!(x_a.node_addrs, [ip("192.168.1.10"), ip("192.168.1.11")]);
    for node_ip in ["192.168.1.10", "192.168.1.11"] {
        let inbound = judge(&set, node_ip, "x/a", TCP80);
        assert_eq!(inbound.ingress.expect("pod").decision, Decision::OwnNode);
        assert!(judge(&set, "x/a", node_ip, UDP81).allowed);
    }
    assert!(!judge(&set, "192.168.1.20", "x/a", TCP80).allowed);
    // x/d runs on node-b: node-a does not enforce its policy...
    let to_d = judge(&set, "192.168.1.10", "10.0.1.9", TCP80);
    assert_eq!(
        to_d.ingress.expect("pod").decision,
        Decision::OtherNode("node-b".into())
    );
    // ...node-b does, and there node-b is its own node and node-a is not.
    let on_b = compile(
        &state,
        &LocalNode {
            node_name: "node-b",
            node_ips: &[],
            local_pods: &local_pods,
        },
    );
    for node_ip in ["192.168.1.10", "192.168.1.11"] {
        assert!(!judge(&on_b, node_ip, "10.0.1.9", TCP80).allowed);
    }
    let from_b = judge(&on_b, "192.168.1.20", "10.0.1.9", TCP80);
    assert_eq!(from_b.ingress.expect("pod").decision, Decision::OwnNode);
}

/// Test which pods are endpoints and where: the CNI address first, else status podIPs
/// (both families), and no hostNetwork pod, finished pod or pod without an address.
#[test]
fn endpoints_and_their_addresses() {
    let state = with(
        "
apiVersion: v1
kind: Pod
metadata: {name: dual, namespace: x}
spec: {containers: [{name: app, image: nginx:1.27}]}
status: {podIP: 10.0.1.7, podIPs: [{ip: 10.0.1.7}, {ip: 'fd00::7'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: x}
spec: {hostNetwork: true, containers: [{name: app, image: nginx:1.27}]}
status: {podIP: 192.168.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: x}
spec: {containers: [{name: app, image: nginx:1.27}]}
status: {phase: Succeeded, podIP: 10.0.1.8}
---
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: x}
spec: {containers: [{name: app, image: nginx:1.27}]}
",
    );
    let local_pods = BTreeMap::from([(("x".to_owned(), "a".to_owned()), ip("10.9.9.9"))]);
    let set = compile(
        &state,
        &LocalNode {
            node_name: NODE,
            node_ips: &[],
            local_pods: &local_pods,
        },
    );
    let names: Vec<String> = set
        .endpoints()
        .filter(|e| &*e.pod.namespace == "x")
        .map(|e| e.pod.name.to_string())
        .collect();
    assert_eq!(names, ["a", "b", "c", "dual"]);
    assert_eq!(
        set.endpoint(&pod_ref("x/a")).expect("a").addrs,
        [ip("10.9.9.9")]
    );
    let dual = set.endpoint(&pod_ref("x/dual")).expect("dual");
    assert_eq!(dual.addrs, [ip("10.0.1.7"), ip("fd00::7")]);
    assert_eq!(
        set.endpoint_at(ip("fd00::7")).map(|e| &e.pod),
        Some(&dual.pod)
    );
    assert!(set.endpoint_at(ip("10.0.1.1")).is_none());
}

/// Test that an ipBlock matches a dual-stack pod by address: an IPv6 block admits the
/// pod's IPv6 address, not its IPv4 one.
#[test]
fn ip_block_matches_dual_stack_pod_by_address() {
    let state = with(
        "
apiVersion: v1
kind: Pod
metadata: {name: dual, namespace: y}
spec: {containers: [{name: app, image: nginx:1.27}]}
status: {podIPs: [{ip: 10.0.2.7}, {ip: 'fd00::7'}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-v6, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{ipBlock: {cidr: 'fd00::/64'}}]
",
    );
    let set = compile_state(&state);
    assert!(judge(&set, "fd00::7", "x/a", TCP80).allowed);
    assert!(!judge(&set, "10.0.2.7", "x/a", TCP80).allowed);
}

/// Test that a NetworkPolicy without a spec is what the API would store for it: every pod
/// of its namespace isolated for ingress, nothing allowed.
#[test]
fn policy_without_spec_denies_ingress_to_namespace() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bare, namespace: x}
",
    );
    check_every(&state, &Table::all().set("*", "x/*", false));
}

/// Test that what the API server would reject fails closed and is reported: invalid peers
/// match nothing, invalid ports allow nothing, the rules still isolate, and a policy with
/// an invalid podSelector selects nothing.
#[test]
fn invalid_fields_fail_closed_and_are_reported() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: broken, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Sideways]
  ingress:
  - from: [{ipBlock: {cidr: bogus}}]
  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [nope]}}]
  - from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]
  - from: [{}]
  - from: [{podSelector: {matchExpressions: [{key: pod, operator: Like}]}}]
  - ports: [{port: 0}]
  - ports: [{port: 81, endPort: 80}]
  - ports: [{endPort: 80}]
  - ports: [{port: serve-80-tcp, endPort: 90}]
  - ports: [{protocol: ICMP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: broken-selector, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: Near}]}
",
    );
    check_every(&state, &Table::all().set("*", "x/a", false));
    let set = compile_state(&state);
    let problems: Vec<String> = set.problems().iter().map(ToString::to_string).collect();
    assert_eq!(problems.len(), 12, "{problems:#?}");
    assert!(problems.iter().all(|p| p.starts_with("x/broken")));
    assert!(problems.contains(
        &"x/broken spec.policyTypes \"Sideways\": unknown policy type (Ingress, Egress), ignored"
            .to_owned()
    ));
    assert!(problems.contains(
        &"x/broken spec.ingress.ports \"80\": endPort below port, port ignored".to_owned()
    ));
    let x_a = set.endpoint(&pod_ref("x/a")).expect("endpoint");
    assert_eq!(x_a.ingress.isolated_by, [PolicyRef::new("x", "broken")]);
    assert!(x_a.ingress.allow.is_empty());
}
