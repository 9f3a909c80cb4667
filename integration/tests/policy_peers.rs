//! NetworkPolicy peers that are not pods of this node, in standalone mode: a Pod manifest of
//! another node carries its address in `status.podIP(s)` (as `kubectl get pods -o yaml`
//! prints it), and a podSelector that matches it must admit that address, as the API
//! reference says a podSelector peer stands for the addresses of the pods it selects,
//! wherever they run. Checked in the rule trie the datapath reads (the same lookup the TC
//! programs make) and through `sluicectl policy trace`.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use aya::maps::{lpm_trie::Key, LpmTrie, Map, MapData};
use datapath_common::policy;
use test_support::{Node, NodeOptions};

const BOUND: Duration = Duration::from_secs(8);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 9);
const OTHER_REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 10);

fn write(node: &Node, file: &str, text: &str) {
    let dir = node.manifests_dir();
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).expect("write manifest");
    std::fs::rename(&tmp, dir.join(file)).expect("rename manifest");
}

/// A pod of node-2 labelled `app: {app}`, at `ip`, as the API server would list it.
fn remote_pod(name: &str, app: &str, ip: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: other, labels: {{app: {app}}}}}\n\
         spec:\n  nodeName: node-2\n  containers: [{{name: c, image: c}}]\n\
         status:\n  phase: Running\n  podIP: {ip}\n  podIPs: [{{ip: {ip}}}]\n---\n"
    )
}

/// Whether the datapath's rule trie lets `peer` into `subject` on TCP `port`: the lookup
/// `sl_to_pod` and `sl_from_pod` make (the protocol's entry, then the any-protocol entry).
fn trie_allows(node: &Node, subject: Ipv4Addr, peer: Ipv4Addr, port: u16) -> bool {
    let path = datapath_user::map_path(&node.bpffs(), policy::MAP_NAME);
    let md = MapData::from_pin(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let trie: LpmTrie<MapData, policy::RuleData, policy::RuleValue> =
        LpmTrie::try_from(Map::LpmTrie(md)).expect("rule trie type");
    [6, policy::PROTO_ANY].into_iter().any(|proto| {
        let data =
            policy::RuleData::v4(subject.octets(), policy::DIR_INGRESS, proto, peer.octets());
        trie.get(&Key::new(policy::fixed_bits() + 32, data), 0)
            .is_ok_and(|v| v.allows(port))
    })
}

fn trace(node: &Node, from: &str) -> String {
    let out = node.sluicectl(&[
        "policy",
        "trace",
        "--from",
        from,
        "--to",
        "default/b",
        "--port",
        "80/TCP",
    ]);
    assert!(
        out.status.success(),
        "trace from {from}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the trie says `want` for `peer` into pod b.
fn wait_trie(node: &Node, b: Ipv4Addr, peer: Ipv4Addr, want: bool) {
    let start = Instant::now();
    while trie_allows(node, b, peer, 80) != want {
        assert!(
            start.elapsed() < BOUND,
            "{peer} into b: not {want} after {BOUND:?}\n{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Test that a pod of another node, known from its manifest's `status.podIP`, is a peer of a
/// policy that selects it (its address admitted on the policy's port, and only that one),
/// that a pod of that node the policy does not select is not, and that the peer goes when
/// its pod does.
#[test]
fn remote_pod_from_manifest_status_is_a_peer() {
    let node = Node::new(NodeOptions {
        manifests: true,
        ..NodeOptions::default()
    });
    write(
        &node,
        "pods.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: default, labels: {app: b}}\n\
         spec:\n  containers: [{name: c, image: c}]\n---\n",
    );
    let b = node.add_pod("b");
    write(
        &node,
        "remote.yaml",
        &(remote_pod("peer", "peer", REMOTE) + &remote_pod("stranger", "stranger", OTHER_REMOTE)),
    );
    write(
        &node,
        "policy.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: from-peers, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  \
         ingress:\n  - from:\n    - namespaceSelector: {}\n      podSelector: {matchLabels: {app: peer}}\n    \
         ports: [{protocol: TCP, port: 80}]\n",
    );
    wait_trie(&node, b.ip, REMOTE, true);
    assert!(!trie_allows(&node, b.ip, REMOTE, 81), "only port 80");
    assert!(
        !trie_allows(&node, b.ip, OTHER_REMOTE, 80),
        "a pod the policy does not select"
    );
    let t = trace(&node, &REMOTE.to_string());
    assert!(
        t.contains("ALLOWED") && t.contains("default/from-peers"),
        "{t}"
    );
    let t = trace(&node, "other/peer");
    assert!(t.contains("ALLOWED"), "{t}");
    let t = trace(&node, &OTHER_REMOTE.to_string());
    assert!(t.contains("DENIED"), "{t}");

    // The remote peer's pod goes away: so does its address from b's rules.
    write(
        &node,
        "remote.yaml",
        &remote_pod("stranger", "stranger", OTHER_REMOTE),
    );
    wait_trie(&node, b.ip, REMOTE, false);
    let t = trace(&node, &REMOTE.to_string());
    assert!(t.contains("DENIED"), "{t}");
}
