//! Matrix tests of change: a policy updated or deleted, pods and namespaces relabelled, a
//! pod added. Compilation is a pure function of the state, so each step recompiles and
//! must give the table of the new state alone.

use super::tests::*;
use crate::model::Kind;

/// Test that updating a policy from allow-all to deny-all closes x ("should enforce
/// updated policy").
#[test]
fn policy_update_allow_all_to_deny_all() {
    let mut state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all-mutate-to-deny-all, namespace: x}
spec:
  podSelector: {}
  ingress: [{}]
",
    );
    check_every(&state, &Table::all());
    apply(
        &mut state,
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all-mutate-to-deny-all, namespace: x}
spec:
  podSelector: {}
  ingress: []
",
    );
    check_every(&state, &Table::all().set("*", "x/*", false));
}

/// Test that deleting a deny-all policy restores every connection ("should stop enforcing
/// policies after they are deleted").
#[test]
fn policy_delete_restores_everything() {
    let mut state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
",
    );
    let denied = Table::all().set("x/*", "*", false).set("*", "x/*", false);
    check_every(&state, &denied);
    assert!(state.delete(Kind::NetworkPolicy, Some("x"), "deny-all"));
    check_every(&state, &Table::all());
}

/// Test that a pod relabelled to match a peer selector gains access ("should allow ingress
/// access from updated pod").
#[test]
fn pod_relabel_gains_access() {
    let mut state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-updated-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b, pod2: updated}}}]
",
    );
    let isolated = Table::all().set("*", "x/a", false);
    check_every(&state, &isolated);
    relabel_pod(&mut state, "x/b", &[("pod", "b"), ("pod2", "updated")]);
    check_every(&state, &isolated.set("x/b", "x/a", true));
}

/// Test that a pod relabelled to match a policy's podSelector becomes isolated, and free
/// again when the label goes ("should deny ingress access to updated pod").
#[test]
fn pod_relabel_becomes_isolated() {
    let mut state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-isolated, namespace: x}
spec:
  podSelector: {matchLabels: {target: isolated}}
",
    );
    check_every(&state, &Table::all());
    relabel_pod(&mut state, "x/a", &[("pod", "a"), ("target", "isolated")]);
    check_every(&state, &Table::all().set("*", "x/a", false));
    relabel_pod(&mut state, "x/a", &[("pod", "a")]);
    check_every(&state, &Table::all());
}

/// Test that a namespace relabelled to match a namespaceSelector gains access for all its
/// pods, and loses it when relabelled away ("should allow ingress access from updated
/// namespace").
#[test]
fn namespace_relabel_gains_and_loses_access() {
    let mut state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-updated-ns, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns2: updated}}}]
",
    );
    let isolated = Table::all().set("*", "x/a", false);
    check_every(&state, &isolated);
    relabel_namespace(&mut state, "y", &[("ns", "y"), ("ns2", "updated")]);
    check_every(&state, &isolated.clone().set("y/*", "x/a", true));
    relabel_namespace(&mut state, "y", &[("ns", "y")]);
    check_every(&state, &isolated);
}

/// Test that a pod created after a policy is picked by its peer selector, and that a pod
/// deleted leaves no rule behind.
#[test]
fn pod_added_and_deleted_follow_selectors() {
    let mut state = with(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
",
    );
    apply(
        &mut state,
        "
apiVersion: v1
kind: Pod
metadata: {name: b2, namespace: x, labels: {pod: b}}
spec: {containers: [{name: app, image: nginx:1.27}]}
status: {podIP: 10.0.1.4}
",
    );
    let set = compile_state(&state);
    assert!(judge(&set, "10.0.1.4", "x/a", TCP80).allowed);
    let x_a = set.endpoint(&pod_ref("x/a")).expect("endpoint");
    assert_eq!(x_a.ingress.allow.len(), 2, "x/b and x/b2");

    assert!(state.delete(Kind::Pod, Some("x"), "b2"));
    let set = compile_state(&state);
    assert!(!judge(&set, "10.0.1.4", "x/a", TCP80).allowed);
    let x_a = set.endpoint(&pod_ref("x/a")).expect("endpoint");
    assert_eq!(x_a.ingress.allow.len(), 1, "x/b only");
}
