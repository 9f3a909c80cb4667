//! The rules by which a Node becomes a peer (issue 18, "Nodes"), each from the text
//! and the Kubernetes Node API (`spec.podCIDRs`, `status.addresses` of type `InternalIP`).

use ipnetwork::{IpNetwork, Ipv4Network};
use k8s_openapi::api::core::v1::Node;

use super::{peers, NodeProblem, Peer, Peers};
use crate::model::{ClusterState, Object};

/// A Node object as the API server serves it; `None` leaves the field out.
fn node(name: &str, cidrs: &[&str], addresses: &[(&str, &str)]) -> Node {
    let mut spec = serde_json::json!({});
    if !cidrs.is_empty() {
        spec = serde_json::json!({ "podCIDR": cidrs[0], "podCIDRs": cidrs });
    }
    let addresses: Vec<_> = addresses
        .iter()
        .map(|(t, a)| serde_json::json!({ "type": t, "address": a }))
        .collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": name },
        "spec": spec,
        "status": { "addresses": addresses },
    }))
    .expect("a valid Node")
}

fn state(nodes: Vec<Node>) -> ClusterState {
    let mut s = ClusterState::new();
    for n in nodes {
        s.apply(Object::Node(n)).expect("a named Node");
    }
    s
}

fn net(s: &str) -> IpNetwork {
    s.parse().expect("a CIDR")
}

fn net4(s: &str) -> Ipv4Network {
    s.parse().expect("a CIDR")
}

const OWN: &str = "node-a";
const OWN_CIDR: &str = "10.244.0.0/24";
const SERVICES: &str = "10.96.0.0/12";

/// The peers of a cluster whose node `node-a` has `10.244.0.0/24`, with Services in
/// `10.96.0.0/12`.
fn of(nodes: Vec<Node>) -> Peers {
    peers(&state(nodes), OWN, &[net(OWN_CIDR)], &[net(SERVICES)])
}

fn own_node() -> Node {
    node(OWN, &[OWN_CIDR], &[("InternalIP", "192.0.2.1")])
}

/// The names of the Nodes with a problem, in order, each once.
fn problem_nodes(p: &Peers) -> Vec<&str> {
    let mut v: Vec<&str> = p.problems.iter().map(|x| x.node.as_str()).collect();
    v.dedup();
    v
}

fn assert_refused(p: &Peers, node: &str, needle: &str) {
    assert!(
        p.problems
            .iter()
            .any(|x| x.node == node && x.reason.contains(needle)),
        "expected a problem for {node} mentioning {needle:?}, got {:?}",
        p.problems
    );
    assert!(
        p.peers.iter().all(|x| x.name != node),
        "{node} must not be routed: {:?}",
        p.peers
    );
}

/// Test that every other Node with an IPv4 pod CIDR and InternalIP is a peer, this node is
/// not, and other address types (ExternalIP, Hostname) are not taken for the InternalIP.
#[test]
fn peers_every_other_complete_node() {
    let p = of(vec![
        own_node(),
        node(
            "node-b",
            &["10.244.1.0/24"],
            &[
                ("Hostname", "node-b"),
                ("ExternalIP", "203.0.113.7"),
                ("InternalIP", "192.0.2.2"),
            ],
        ),
    ]);
    assert_eq!(
        p,
        Peers {
            peers: vec![Peer {
                name: "node-b".into(),
                address: "192.0.2.2".parse().unwrap(),
                pod_cidrs: vec![net4("10.244.1.0/24")],
            }],
            problems: vec![],
        }
    );
}

/// Test that a Node without a pod CIDR, or without an InternalIP, is skipped with a problem
/// naming it and what it lacks (and routed once it has both).
#[test]
fn peers_skip_node_missing_cidr_or_address() {
    let p = of(vec![
        own_node(),
        node("no-cidr", &[], &[("InternalIP", "192.0.2.3")]),
        node(
            "no-ip",
            &["10.244.4.0/24"],
            &[("ExternalIP", "203.0.113.4")],
        ),
        node("nothing", &[], &[]),
    ]);
    assert!(p.peers.is_empty(), "{:?}", p.peers);
    assert_refused(&p, "no-cidr", "no IPv4 pod CIDR");
    assert_refused(&p, "no-ip", "no IPv4 InternalIP");
    assert_refused(&p, "nothing", "no IPv4 pod CIDR");
    assert_refused(&p, "nothing", "no IPv4 InternalIP");

    let later = of(vec![
        own_node(),
        node(
            "no-cidr",
            &["10.244.3.0/24"],
            &[("InternalIP", "192.0.2.3")],
        ),
    ]);
    assert_eq!(later.problems, vec![]);
    assert_eq!(later.peers.len(), 1);
}

/// Test that two Nodes with overlapping pod CIDRs are neither routed, each problem naming the
/// other, while a third Node is still routed.
#[test]
fn peers_overlapping_nodes_neither_routed() {
    let p = of(vec![
        own_node(),
        node("node-b", &["10.244.1.0/24"], &[("InternalIP", "192.0.2.2")]),
        node(
            "node-c",
            &["10.244.1.128/25"],
            &[("InternalIP", "192.0.2.3")],
        ),
        node("node-d", &["10.244.2.0/24"], &[("InternalIP", "192.0.2.4")]),
    ]);
    assert_eq!(
        p.peers.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(),
        ["node-d"]
    );
    assert_eq!(problem_nodes(&p), ["node-b", "node-c"]);
    assert_refused(&p, "node-b", "\"node-c\"");
    assert_refused(&p, "node-c", "\"node-b\"");
}

/// Test that two Nodes claiming the same InternalIP are neither routed (one of them is stale
/// or wrong; routing both CIDRs to one host would be a wrong route), while a third Node is.
#[test]
fn peers_same_address_neither_routed() {
    let p = of(vec![
        own_node(),
        node("node-b", &["10.244.1.0/24"], &[("InternalIP", "192.0.2.2")]),
        node("node-c", &["10.244.3.0/24"], &[("InternalIP", "192.0.2.2")]),
        node("node-d", &["10.244.2.0/24"], &[("InternalIP", "192.0.2.4")]),
    ]);
    assert_eq!(
        p.peers.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(),
        ["node-d"]
    );
    assert_eq!(problem_nodes(&p), ["node-b", "node-c"]);
    assert_refused(&p, "node-b", "\"node-c\"");
    assert_refused(&p, "node-c", "\"node-b\"");
}

/// Test that a pod CIDR overlapping this node's own pod CIDR, or the Service range, is
/// refused.
#[test]
fn peers_refuse_overlap_with_own_or_services() {
    let p = of(vec![
        own_node(),
        node(
            "holds-own",
            &["10.244.0.0/16"],
            &[("InternalIP", "192.0.2.2")],
        ),
        node(
            "in-own",
            &["10.244.0.64/26"],
            &[("InternalIP", "192.0.2.3")],
        ),
        node(
            "in-services",
            &["10.100.0.0/24"],
            &[("InternalIP", "192.0.2.4")],
        ),
    ]);
    assert!(p.peers.is_empty(), "{:?}", p.peers);
    assert_refused(&p, "holds-own", "this node's pod CIDR 10.244.0.0/24");
    assert_refused(&p, "in-own", "this node's pod CIDR 10.244.0.0/24");
    assert_refused(&p, "in-services", "Service range 10.96.0.0/12");
}

/// Test that a pod CIDR that cannot be a pod network (RFC 6890 special blocks, host bits set,
/// too small, covering everything) is refused.
#[test]
fn peers_refuse_insane_pod_cidrs() {
    let cases = [
        ("loopback", "127.0.0.0/24", "loopback"),
        ("this-net", "0.0.0.0/8", "this network"),
        ("default", "0.0.0.0/0", "covers"),
        ("multicast", "224.1.0.0/24", "multicast"),
        ("class-e", "240.0.0.0/24", "class E"),
        ("link-local", "169.254.3.0/24", "link-local"),
        ("host-bits", "10.244.9.5/24", "host bits"),
        ("tiny", "10.244.9.0/31", "too small"),
    ];
    let mut nodes = vec![own_node()];
    for (i, (name, cidr, _)) in cases.iter().enumerate() {
        let ip = format!("192.0.2.{}", 10 + i);
        nodes.push(node(name, &[cidr], &[("InternalIP", ip.as_str())]));
    }
    let p = of(nodes);
    assert!(p.peers.is_empty(), "{:?}", p.peers);
    for (name, _, why) in cases {
        assert_refused(&p, name, why);
    }
}

/// Test that an InternalIP inside a pod CIDR (its own, this node's or another Node's) or not
/// a unicast address is refused (traffic tunnelled to it would loop into the pod network).
#[test]
fn peers_refuse_address_inside_pod_cidrs() {
    let p = of(vec![
        own_node(),
        node(
            "in-itself",
            &["10.244.1.0/24"],
            &[("InternalIP", "10.244.1.9")],
        ),
        node(
            "in-own",
            &["10.244.2.0/24"],
            &[("InternalIP", "10.244.0.9")],
        ),
        node(
            "in-other",
            &["10.244.3.0/24"],
            &[("InternalIP", "10.244.4.9")],
        ),
        node("other", &["10.244.4.0/24"], &[("InternalIP", "192.0.2.4")]),
        node(
            "loopback",
            &["10.244.5.0/24"],
            &[("InternalIP", "127.0.0.1")],
        ),
        node(
            "multicast",
            &["10.244.6.0/24"],
            &[("InternalIP", "224.0.0.1")],
        ),
    ]);
    assert_refused(&p, "in-itself", "inside its own pod CIDR 10.244.1.0/24");
    assert_refused(&p, "in-own", "inside this node's pod CIDR 10.244.0.0/24");
    assert_refused(
        &p,
        "in-other",
        "inside pod CIDR 10.244.4.0/24 of node \"other\"",
    );
    assert_refused(&p, "loopback", "not a unicast address");
    assert_refused(&p, "multicast", "not a unicast address");
    // The Node whose pod CIDR holds another's address is itself fine.
    assert_eq!(
        p.peers.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(),
        ["other"]
    );
}

/// Test that IPv6 pod CIDRs and addresses are ignored without a problem: a dual-stack Node is
/// routed by its IPv4 half, an IPv6-only one is "missing" its IPv4 parts.
#[test]
fn peers_ignore_ipv6() {
    let p = of(vec![
        own_node(),
        node(
            "dual",
            &["10.244.1.0/24", "fd00:10:244:1::/64"],
            &[("InternalIP", "2001:db8::2"), ("InternalIP", "192.0.2.2")],
        ),
    ]);
    assert_eq!(p.problems, vec![]);
    assert_eq!(
        p.peers,
        vec![Peer {
            name: "dual".into(),
            address: "192.0.2.2".parse().unwrap(),
            pod_cidrs: vec![net4("10.244.1.0/24")],
        }]
    );
}

/// Test that the output is sorted whatever order the Nodes come in (peers by name, problems
/// by node), so the routing programmer sees no change where there is none.
#[test]
fn peers_output_sorted() {
    let nodes = vec![
        node("zeta", &["10.244.9.0/24"], &[("InternalIP", "192.0.2.9")]),
        node("beta", &[], &[]),
        node("alpha", &["10.244.1.0/24"], &[("InternalIP", "192.0.2.1")]),
        node(
            "alpha2",
            &["10.244.1.0/24"],
            &[("InternalIP", "192.0.2.11")],
        ),
        node("mid", &["10.244.5.0/24"], &[("InternalIP", "192.0.2.5")]),
    ];
    let mut rev = nodes.clone();
    rev.reverse();
    let p = of(nodes);
    assert_eq!(p, of(rev));
    assert_eq!(
        p.peers.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(),
        ["mid", "zeta"]
    );
    let names: Vec<&NodeProblem> = p.problems.iter().collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(problem_nodes(&p), ["alpha", "alpha2", "beta"]);
}
