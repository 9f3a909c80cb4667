//! Matrix tests of egress isolation, of policyTypes implied or explicit, of ingress and
//! egress together (each side must allow), and of ipBlock peers with `except` in both
//! directions. Expected tables come from the API reference and the upstream netpol e2e
//! scenarios of the same names.

use super::tests::*;

/// Test that `policyTypes: [Egress]` with no egress rule denies all egress from x and
/// leaves ingress to x open.
#[test]
fn default_deny_egress_isolates_namespace() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
",
    );
    check_every(&state, &Table::all().set("x/*", "*", false));
}

/// Test that `policyTypes: [Ingress, Egress]` with no rules denies both directions.
#[test]
fn default_deny_both_directions() {
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
    let expected = Table::all().set("x/*", "*", false).set("*", "x/*", false);
    check_every(&state, &expected);
}

/// Test that `egress: []` without policyTypes does not isolate egress: the API server
/// defaults policyTypes to Egress only when there is at least one egress rule.
#[test]
fn empty_egress_without_policy_types_isolates_ingress_only() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: empty-egress, namespace: x}
spec:
  podSelector: {}
  egress: []
",
    );
    check_every(&state, &Table::all().set("*", "x/*", false));
}

/// Test that an egress rule without policyTypes implies both Ingress and Egress: x/a gets
/// no ingress at all and egress on TCP 80 only.
#[test]
fn egress_rule_without_policy_types_implies_both() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  egress:
  - ports: [{port: 80}]
",
    );
    let isolated = Table::all().set("*", "x/a", false);
    let both = isolated.clone().set("x/a", "*", false);
    check(
        &state,
        &[
            (TCP80, &isolated),
            (TCP81, &both),
            (UDP80, &both),
            (UDP81, &both),
        ],
    );
}

/// Test that an egress rule to a pod and namespace selector allows only that pod
/// ("should enforce egress policy allowing traffic to a server in a different namespace
/// based on PodSelector and NamespaceSelector").
#[test]
fn egress_to_selected_pod_only() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-to-y-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: a}}}]
",
    );
    let expected = Table::all().set("x/a", "*", false).set("x/a", "y/a", true);
    check_every(&state, &expected);
}

/// Test that an egress namespaceSelector `NotIn [y]` on the automatic name label denies
/// x/a only towards y.
#[test]
fn egress_namespace_not_in() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-not-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [y]}]
",
    );
    check_every(&state, &Table::all().set("x/a", "y/*", false));
}

/// Test that the client's egress denies what the server's ingress allows: x/a may only
/// reach y/a, y/a and y/b admit only x/a ("should support denying of egress traffic on the
/// client side (even if the server explicitly allows this traffic)").
#[test]
fn egress_denial_wins_over_ingress_allow() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-to-y-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: a}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-x-a, namespace: y}
spec:
  podSelector:
    matchExpressions: [{key: pod, operator: In, values: [a, b]}]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}]
",
    );
    let expected = Table::all()
        .set("x/a", "*", false)
        .set("*", "y/a", false)
        .set("*", "y/b", false)
        .set("x/a", "y/a", true);
    check_every(&state, &expected);
}

/// Test ingress and egress in one policy: x/a admits only x/b and sends only to TCP 80
/// ("should work with Ingress, Egress specified together").
#[test]
fn ingress_and_egress_in_one_policy() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-both-ways, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress, Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
  egress:
  - ports: [{port: 80}]
",
    );
    let ingress_only = Table::all().set("*", "x/a", false).set("x/b", "x/a", true);
    let both = Table::all()
        .set("*", "x/a", false)
        .set("x/a", "*", false)
        .set("x/b", "x/a", true);
    check(
        &state,
        &[
            (TCP80, &ingress_only),
            (TCP81, &both),
            (UDP80, &both),
            (UDP81, &both),
        ],
    );
}

/// Test egress to an ipBlock of one pod's address ("should allow egress access to server
/// in CIDR block"): pod addresses inside an ipBlock match.
#[test]
fn egress_to_ip_block_of_one_pod() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-to-y-b-cidr, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.2.2/32}}]
",
    );
    let expected = Table::all().set("x/a", "*", false).set("x/a", "y/b", true);
    check_every(&state, &expected);
}

/// Test that `except` carves an address out of an egress ipBlock, and that another policy
/// allowing that address adds it back ("should enforce except clause while egress access
/// to server in CIDR block", "should ensure an IP overlapping both IPBlock.CIDR and
/// IPBlock.Except is allowed").
#[test]
fn egress_ip_block_except_and_overlapping_allow() {
    let mut state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-but-x-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.1.2/32]}}]
",
    );
    check_every(&state, &Table::all().set("x/a", "x/b", false));
    let set = compile_state(&state);
    assert!(judge(&set, "x/a", "10.200.0.1", TCP80).allowed);
    assert!(!judge(&set, "x/a", "192.168.0.1", TCP80).allowed);

    apply(
        &mut state,
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-x-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.1.2/32}}]
",
    );
    check_every(&state, &Table::all());
}

/// Test egress to 10.0.0.0/16 except 10.0.3.0/24: x/a reaches x and y, not z, and of
/// outside addresses only those in the block.
#[test]
fn egress_ip_block_except_namespace_subnet() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-16-but-z, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.3.0/24]}}]
",
    );
    check_every(&state, &Table::all().set("x/a", "z/*", false));
    let set = compile_state(&state);
    assert!(judge(&set, "x/a", "10.0.200.1", UDP80).allowed);
    assert!(!judge(&set, "x/a", "10.0.3.200", UDP80).allowed);
    assert!(!judge(&set, "x/a", "8.8.8.8", UDP80).allowed);
}

/// Test egress to "the internet": 0.0.0.0/0 except the pod network lets x reach outside
/// addresses and no pod.
#[test]
fn egress_ip_block_everything_but_pods() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: internet-only, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/16]}}]
",
    );
    check_every(&state, &Table::all().set("x/*", "*", false));
    let set = compile_state(&state);
    assert!(judge(&set, "x/b", "1.1.1.1", TCP80).allowed);
    assert!(!judge(&set, "x/b", "10.0.99.1", TCP80).allowed);
}

/// Test ingress from an ipBlock with except: y/a and y/c reach x/a, y/b (excepted) and the
/// other namespaces do not; outside addresses count by the same block.
#[test]
fn ingress_from_ip_block_except() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-y-subnet, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.2.0/24, except: [10.0.2.2/32]}}]
",
    );
    let expected = Table::all()
        .set("*", "x/a", false)
        .set("y/a", "x/a", true)
        .set("y/c", "x/a", true);
    check_every(&state, &expected);
    let set = compile_state(&state);
    assert!(judge(&set, "10.0.2.9", "x/a", TCP81).allowed);
    assert!(!judge(&set, "192.168.0.1", "x/a", TCP81).allowed);
}
