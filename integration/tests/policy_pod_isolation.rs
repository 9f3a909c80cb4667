//! The isolation the agent publishes for the CNI plugin to read at ADD (`SL_PODISO_V1`, by
//! `policy::pod_key`), read from the pinned map of a node in standalone mode: the pods a
//! policy selects that may start on this node, and not the pods that never get a pod network
//! (`hostNetwork`) or have finished (`Succeeded`, `Failed`).

use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHash, Map, MapData};
use datapath_common::policy;
use datapath_user as user;
use test_support::{Node, NodeOptions};

const BOUND: Duration = Duration::from_secs(8);

fn write(node: &Node, file: &str, text: &str) {
    let dir = node.manifests_dir();
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).expect("write manifest");
    std::fs::rename(&tmp, dir.join(file)).expect("rename manifest");
}

fn isolation(node: &Node, name: &str) -> Option<u32> {
    let path = user::map_path(&node.bpffs(), policy::POD_ISOLATION_MAP_NAME);
    let md = MapData::from_pin(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let map: BpfHash<MapData, u64, u32> =
        BpfHash::try_from(Map::HashMap(md)).expect("pod isolation map type");
    map.get(&policy::pod_key(b"x", name.as_bytes()), 0).ok()
}

/// Test that a policy isolating every pod of namespace x (ingress and egress) is published
/// for a pod not started yet, and not for a `hostNetwork` pod (its traffic is the node's, CNI
/// ADD never runs for it) nor for pods whose phase is `Succeeded` or `Failed` (the API
/// reference: their containers will not run again).
#[test]
fn published_isolation_leaves_out_host_network_and_finished_pods() {
    let node = Node::new(NodeOptions {
        manifests: true,
        ..NodeOptions::default()
    });
    let pod = |name: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x}}\n\
             spec: {{containers: [{{name: c, image: c}}]{extra}}}\n"
        )
    };
    write(
        &node,
        "objects.yaml",
        &[
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n".to_owned(),
            pod("waiting", ""),
            pod("host", ", hostNetwork: true"),
            pod("done", "") + "status: {phase: Succeeded}\n",
            pod("failed", "") + "status: {phase: Failed}\n",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: all, namespace: x}\n\
             spec: {podSelector: {}, policyTypes: [Ingress, Egress]}\n"
                .to_owned(),
        ]
        .join("---\n"),
    );
    let start = Instant::now();
    while isolation(&node, "waiting").is_none() {
        assert!(
            start.elapsed() < BOUND,
            "no isolation published for x/waiting\n{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        isolation(&node, "waiting"),
        Some(policy::ISO_INGRESS | policy::ISO_EGRESS)
    );
    assert_eq!(isolation(&node, "host"), None, "hostNetwork pod");
    assert_eq!(isolation(&node, "done"), None, "Succeeded pod");
    assert_eq!(isolation(&node, "failed"), None, "Failed pod");
}
