//! A simulated cluster (test_support::cluster): several nodes on one underlay, each with its
//! own agent, sharing one manifests directory. Issue 18: cross-node pod networking in both
//! routing modes, Services and NetworkPolicy across nodes, nodes coming and going.

use test_support::cluster::{in_pod_cidr, Cluster, ClusterOptions, Routing};

/// Test that the fixture builds a cluster whose nodes each run their own agent and give pods
/// addresses from their own Node's pod CIDR, and that a pod reaches a pod of its own node.
#[test]
fn cluster_fixture_pods_get_their_nodes_cidr() {
    let c = Cluster::new(ClusterOptions {
        routing: Routing::Tunnel,
        nodes: 2,
        ..ClusterOptions::default()
    });
    let a = c.add_pod(1, "a", &[("app", "a")]);
    let b = c.add_pod(1, "b", &[("app", "b")]);
    let d = c.add_pod(2, "d", &[("app", "d")]);
    assert!(in_pod_cidr(a.ip, 1), "{}", a.ip);
    assert!(in_pod_cidr(b.ip, 1), "{}", b.ip);
    assert!(in_pod_cidr(d.ip, 2), "{}", d.ip);
    assert!(a.ping(b.ip), "same-node ping\n{}", c.agent_logs());
    c.del_pod(&b);
}
