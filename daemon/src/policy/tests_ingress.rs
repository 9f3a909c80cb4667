//! Matrix tests of ingress isolation and peers: default deny, allow-all, peers by pod and
//! namespace selectors alone and combined, label expressions, and policies that select no
//! pod or pods of another namespace. Expected tables come from the API reference and the
//! upstream netpol e2e scenarios of the same names.

use super::tests::*;

/// Test that a policy selecting every pod of x with no ingress rule (policyTypes implied)
/// denies all ingress to x, and that `ingress: []` under explicit policyTypes does the same.
#[test]
fn default_deny_ingress_isolates_namespace() {
    let expected = Table::all().set("*", "x/*", false);
    check_every(
        &with(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec:
  podSelector: {}
",
        ),
        &expected,
    );
    check_every(
        &with(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress: []
",
        ),
        &expected,
    );
}

/// Test that an ingress rule with no `from` and no `ports` (or empty lists of both) allows
/// everything, pods and outside addresses alike.
#[test]
fn allow_all_ingress_rule_allows_everything() {
    for rule in ["{}", "{from: [], ports: []}"] {
        let state = with(&format!(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: allow-all, namespace: x}}
spec:
  podSelector: {{}}
  ingress: [{rule}]
"
        ));
        check_every(&state, &Table::all());
        let set = compile_state(&state);
        assert!(judge(&set, "192.168.7.7", "x/a", TCP80).allowed);
        assert!(judge(&set, "192.168.7.7", "x/a", UDP81).allowed);
    }
}

/// Test that a policy whose podSelector matches no pod isolates nothing.
#[test]
fn policy_selecting_no_pod_changes_nothing() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-d, namespace: x}
spec:
  podSelector: {matchLabels: {pod: d}}
  policyTypes: [Ingress, Egress]
",
    );
    check_every(&state, &Table::all());
}

/// Test that a policy only selects pods of its own namespace: one in y selecting `pod: a`
/// isolates y/a, not x/a or z/a.
#[test]
fn policy_selects_only_its_own_namespace() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-a, namespace: y}
spec:
  podSelector: {matchLabels: {pod: a}}
",
    );
    check_every(&state, &Table::all().set("*", "y/a", false));
}

/// Test that a namespaceSelector alone allows every pod of the matching namespaces, by a
/// label of the namespace object or by the automatic `kubernetes.io/metadata.name`.
#[test]
fn namespace_selector_allows_pods_of_matching_namespaces() {
    let expected = Table::all().set("*", "x/a", false).set("y/*", "x/a", true);
    for selector in ["{ns: y}", "{kubernetes.io/metadata.name: y}"] {
        let state = with(&format!(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: allow-from-y, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress:
  - from: [{{namespaceSelector: {{matchLabels: {selector}}}}}]
"
        ));
        check_every(&state, &expected);
    }
}

/// Test that an empty namespaceSelector allows every pod of every namespace, but no address
/// outside the cluster, while pods the policy does not select stay open to it.
#[test]
fn empty_namespace_selector_allows_every_pod_only() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-all-ns, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {}}]
",
    );
    check_every(&state, &Table::all());
    let set = compile_state(&state);
    assert!(!judge(&set, "192.168.7.7", "x/a", TCP80).allowed);
    assert!(judge(&set, "192.168.7.7", "x/b", TCP80).allowed);
}

/// Test that a podSelector alone picks pods of the policy's namespace only: `pod: b` lets
/// x/b reach x/a, not y/b or z/b.
#[test]
fn pod_selector_alone_is_the_policy_namespace() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x-a-allows-x-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
",
    );
    let expected = Table::all().set("*", "x/a", false).set("x/b", "x/a", true);
    check_every(&state, &expected);
}

/// Test that an empty podSelector peer allows every pod of the policy's namespace and no
/// other ("should deny ingress from pods on other namespaces").
#[test]
fn empty_pod_selector_allows_own_namespace() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-other-ns, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from: [{podSelector: {}}]
",
    );
    let expected = Table::all()
        .set("y/*", "x/*", false)
        .set("z/*", "x/*", false);
    check_every(&state, &expected);
}

/// Test that podSelector and namespaceSelector in one peer pick the matching pods of the
/// matching namespaces (AND), while the same selectors as two peers add up (OR, with the
/// podSelector in the policy's own namespace).
#[test]
fn pod_and_namespace_selector_one_peer_and_vs_two_peers_or() {
    let and = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-y-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: b}}
",
    );
    let expected = Table::all().set("*", "x/a", false).set("y/b", "x/a", true);
    check_every(&and, &expected);

    let or = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-y-or-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
    - podSelector: {matchLabels: {pod: b}}
",
    );
    let expected = Table::all()
        .set("*", "x/a", false)
        .set("y/*", "x/a", true)
        .set("x/b", "x/a", true);
    check_every(&or, &expected);

    let any_ns = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-every-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: c}}
  ingress:
  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: a}}}]
",
    );
    let expected = Table::all().set("*", "x/c", false).set("*/a", "x/c", true);
    check_every(&any_ns, &expected);
}

/// Test matchExpressions `In` and `NotIn` on pods and namespaces: pods b or c of namespaces
/// other than x ("Multiple PodSelectors and NamespaceSelectors"), and namespaces other than
/// x or pod b of x ("PodSelector or NamespaceSelector").
#[test]
fn match_expressions_in_and_not_in() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-b-c-not-x, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
      podSelector:
        matchExpressions: [{key: pod, operator: In, values: [b, c]}]
",
    );
    let expected = Table::all()
        .set("*", "x/a", false)
        .set("y/b", "x/a", true)
        .set("y/c", "x/a", true)
        .set("z/b", "x/a", true)
        .set("z/c", "x/a", true);
    check_every(&state, &expected);

    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-not-x-or-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: ns, operator: NotIn, values: [x]}]
    - podSelector:
        matchExpressions: [{key: pod, operator: In, values: [b]}]
",
    );
    let expected = Table::all().set("x/c", "x/a", false);
    check_every(&state, &expected);
}

/// Test matchExpressions `Exists` and `DoesNotExist`: with x/b and y/c labelled
/// `role: client`, `role Exists` in any namespace picks those two, and `role DoesNotExist`
/// in namespaces `In [y]` picks y/a and y/b.
#[test]
fn match_expressions_exists_and_does_not_exist() {
    let policy = |name: &str, peer: &str| {
        let mut state = with(&format!(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: {name}, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress:
  - from: [{peer}]
"
        ));
        relabel_pod(&mut state, "x/b", &[("pod", "b"), ("role", "client")]);
        relabel_pod(&mut state, "y/c", &[("pod", "c"), ("role", "client")]);
        state
    };
    let exists = policy(
        "allow-clients",
        "{namespaceSelector: {}, podSelector: {matchExpressions: [{key: role, operator: Exists}]}}",
    );
    let expected = Table::all()
        .set("*", "x/a", false)
        .set("x/b", "x/a", true)
        .set("y/c", "x/a", true);
    check_every(&exists, &expected);

    let does_not_exist = policy(
        "allow-y-non-clients",
        "{namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [y]}]},
          podSelector: {matchExpressions: [{key: role, operator: DoesNotExist}]}}",
    );
    let expected = Table::all()
        .set("*", "x/a", false)
        .set("y/a", "x/a", true)
        .set("y/b", "x/a", true);
    check_every(&does_not_exist, &expected);
}

/// Test that the rules of several policies selecting the same pod add up, and that a
/// default deny next to them takes nothing away.
#[test]
fn policies_selecting_one_pod_add_up() {
    let state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-c, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: c}}}]
",
    );
    let expected = Table::all()
        .set("*", "x/*", false)
        .set("y/*", "x/a", true)
        .set("x/c", "x/a", true);
    check_every(&state, &expected);
    let set = compile_state(&state);
    let x_a = set.endpoint(&pod_ref("x/a")).expect("endpoint");
    let names: Vec<&str> = x_a.ingress.isolated_by.iter().map(|p| &*p.name).collect();
    assert_eq!(names, ["allow-from-c", "allow-from-y", "deny-all"]);
}
