//! The generated manifests compiled by the agent's own parser and compiler
//! (`daemon::manifests`, `daemon::policy`), checked against what the API reference says they
//! mean: who is selected, who is allowed, and that no rule trie entry overflows. The layout
//! of the traffic scenarios goes through the manifest parser, as the agent reads it; the
//! remote pods of `agent-rss-policies` go through it too, their `status.podIP` kept.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use daemon::model::{ClusterState, Object};
use daemon::policy::{self, Connection, Direction, Peer, PodRef, PolicySet, Ports, Proto};

use super::*;

const PEERS: usize = 99;
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const FOUR: [&CniPod; 4] = [&SERVER, &CLIENT, &OUTSIDER, &PROBE];

/// The CNI pods of a policy node, the four and `peers` peer pods, and the addresses this
/// node's IPAM would give them.
fn local_pods(peers: usize) -> BTreeMap<(String, String), IpAddr> {
    let four = FOUR
        .iter()
        .map(|p| (p.namespace.to_string(), p.name.to_string()));
    let peers = (0..peers).map(|i| {
        let p = peer_pod(i);
        (p.namespace.to_string(), p.name)
    });
    four.chain(peers)
        .enumerate()
        .map(|(i, k)| (k, IpAddr::V4(Ipv4Addr::from(0x0af4_0102 + i as u32))))
        .collect()
}

/// Compiles the objects of `files` (as the agent's manifest parser reads them) and `docs`
/// (decoded as the API server's objects) with `local` as this node's CNI pods.
fn compile_with(
    files: &[&str],
    docs: &[Value],
    local: &BTreeMap<(String, String), IpAddr>,
) -> (ClusterState, PolicySet) {
    let mut state = ClusterState::new();
    for text in files {
        let objects = daemon::manifests::parse_bytes(Path::new("bench.yaml"), text.as_bytes())
            .unwrap_or_else(|e| panic!("the generated manifests do not parse: {e}"));
        for o in objects {
            state.apply(o).expect("apply an object");
        }
    }
    for d in docs {
        let o = match d["kind"].as_str() {
            Some("Pod") => Object::Pod(serde_json::from_value(d.clone()).expect("a pod")),
            Some("Namespace") => {
                Object::Namespace(serde_json::from_value(d.clone()).expect("a namespace"))
            }
            Some("NetworkPolicy") => {
                Object::NetworkPolicy(serde_json::from_value(d.clone()).expect("a policy"))
            }
            other => panic!("unexpected kind {other:?}"),
        };
        state.apply(o).expect("apply an object");
    }
    let node_ips = [IpAddr::V4(NODE_IP)];
    let set = policy::compile(
        &state,
        &policy::LocalNode {
            node_name: "node-1",
            node_ips: &node_ips,
            local_pods: local,
        },
    );
    (state, set)
}

/// The traffic scenarios' layout: the four and the peer pods on this node.
fn compile(files: &[&str]) -> (ClusterState, PolicySet) {
    compile_with(files, &[], &local_pods(PEERS))
}

fn pod_ref(p: &CniPod) -> PodRef {
    PodRef::new(p.namespace, p.name)
}

fn addr_of(p: &CniPod) -> IpAddr {
    local_pods(0)[&(p.namespace.to_string(), p.name.to_string())]
}

fn allowed(set: &PolicySet, from: &CniPod, to: &CniPod, proto: Proto, port: u16) -> bool {
    policy::verdict(
        set,
        &Connection {
            src: addr_of(from),
            src_pod: Some(pod_ref(from)),
            dst: addr_of(to),
            dst_pod: Some(pod_ref(to)),
            proto,
            port,
        },
    )
    .allowed
}

fn full_set() -> (ClusterState, PolicySet) {
    compile(&[&objects(PEERS, Peers::Local, &FOUR), &policies(1000, PEERS)])
}

/// An IPv4 prefix (network, length).
type Prefix = (u32, u8);

fn contains(outer: Prefix, inner: Prefix) -> bool {
    let mask = |len: u8| if len == 0 { 0 } else { u32::MAX << (32 - len) };
    inner.1 >= outer.1 && inner.0 & mask(outer.1) == outer.0
}

fn v4(a: IpAddr) -> u32 {
    match a {
        IpAddr::V4(a) => u32::from(a),
        IpAddr::V6(_) => panic!("no IPv6 in the generated manifests"),
    }
}

/// The largest number of coalesced port ranges any (protocol, peer prefix) entry of these
/// allows needs, worked out as `daemon::enforce` builds the rule trie: every prefix that
/// appears (pod /32s, ipBlock CIDRs and excepts, /0 for any peer) gets the union of the
/// ranges of every allow whose peer contains the whole prefix.
fn max_ranges(allows: &[policy::Allow]) -> usize {
    let prefixes = |peer: &Peer| -> Vec<Prefix> {
        match peer {
            Peer::Any => vec![(0, 0)],
            Peer::Pod { addrs, .. } => addrs.iter().map(|a| (v4(*a), 32)).collect(),
            Peer::Block(b) => std::iter::once(&b.cidr)
                .chain(&b.except)
                .map(|n| (v4(n.network()), n.prefix()))
                .collect(),
        }
    };
    let peer_contains = |peer: &Peer, p: Prefix| match peer {
        Peer::Any => true,
        Peer::Pod { addrs, .. } => p.1 == 32 && addrs.iter().any(|a| v4(*a) == p.0),
        Peer::Block(b) => {
            contains((v4(b.cidr.network()), b.cidr.prefix()), p)
                && !b
                    .except
                    .iter()
                    .any(|e| contains((v4(e.network()), e.prefix()), p))
        }
    };
    let key = |ports: &Ports| match *ports {
        Ports::All => (0u8, 0u16, u16::MAX),
        Ports::Range { proto, first, last } => (proto as u8 + 1, first, last),
    };
    let mut worst = 0;
    let protos: BTreeSet<u8> = allows.iter().map(|a| key(&a.ports).0).collect();
    for proto in protos {
        let of_proto: Vec<&policy::Allow> =
            allows.iter().filter(|a| key(&a.ports).0 == proto).collect();
        let all: BTreeSet<Prefix> = of_proto.iter().flat_map(|a| prefixes(&a.peer)).collect();
        for p in all {
            let mut r: Vec<(u16, u16)> = of_proto
                .iter()
                .filter(|a| peer_contains(&a.peer, p))
                .map(|a| (key(&a.ports).1, key(&a.ports).2))
                .collect();
            r.sort_unstable();
            let mut merged: Vec<(u16, u16)> = Vec::new();
            for (lo, hi) in r {
                match merged.last_mut() {
                    Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
                    _ => merged.push((lo, hi)),
                }
            }
            worst = worst.max(merged.len());
        }
    }
    worst
}

/// Test that the generated manifests parse as the agent parses them and compile without a
/// problem: 1,000 policies, every one selecting the server (for ingress, egress or both); on
/// the node nothing else is isolated but the peer pods of the server's namespace (by the
/// policies with the empty podSelector).
#[test]
fn policies_all_select_the_server_and_nothing_else_local() {
    let (state, set) = full_set();
    assert_eq!(state.network_policies().count(), 1000);
    assert!(set.problems().is_empty(), "{:?}", set.problems());
    let server = set.endpoint(&pod_ref(&SERVER)).expect("the server");
    let by: BTreeSet<&PodRef> = server
        .ingress
        .isolated_by
        .iter()
        .chain(&server.egress.isolated_by)
        .collect();
    assert_eq!(by.len(), 1000, "every policy selects the server");
    assert!(server.ingress.is_isolated() && server.egress.is_isolated());
    for p in [&CLIENT, &OUTSIDER, &PROBE] {
        let ep = set.endpoint(&pod_ref(p)).expect("a local pod");
        assert!(
            !ep.ingress.is_isolated() && !ep.egress.is_isolated(),
            "{} is isolated",
            p.name
        );
    }
    let isolated = set
        .endpoints()
        .filter(|e| e.ingress.is_isolated() || e.egress.is_isolated())
        .count();
    assert_eq!(isolated, 1 + peers_in_server_namespace(PEERS));
    assert_eq!(set.endpoints().count(), 4 + PEERS);
}

/// Test the verdicts the benchmark relies on: the client reaches the server on the load and
/// iperf3 ports, the outsider does not (on those, nor on 5432), and UDP 7000 is not open.
#[test]
fn client_allowed_outsider_refused_on_the_servers_ports() {
    let (_, set) = full_set();
    for port in [LOAD_PORT, IPERF_PORT] {
        assert!(allowed(&set, &CLIENT, &SERVER, Proto::Tcp, port), "{port}");
        assert!(
            !allowed(&set, &OUTSIDER, &SERVER, Proto::Tcp, port),
            "{port}"
        );
    }
    assert!(!allowed(&set, &OUTSIDER, &SERVER, Proto::Tcp, 5432));
    assert!(!allowed(&set, &CLIENT, &SERVER, Proto::Udp, LOAD_PORT));
    // Any peer may use 443 (a rule without `from`), the outsider included.
    assert!(allowed(&set, &OUTSIDER, &SERVER, Proto::Tcp, 443));
}

/// Test that the policies' peers are exactly 100 pods, the client and the 99 peer pods:
/// neither the server, the outsider nor the probe pod is in any rule.
#[test]
fn peer_set_is_the_client_and_the_peer_pods() {
    let (_, set) = full_set();
    let server = set.endpoint(&pod_ref(&SERVER)).expect("the server");
    let peers: BTreeSet<PodRef> = server
        .ingress
        .allow
        .iter()
        .chain(&server.egress.allow)
        .filter_map(|a| match &a.peer {
            Peer::Pod { pod, .. } => Some(pod.clone()),
            _ => None,
        })
        .collect();
    let mut want: BTreeSet<PodRef> = (0..PEERS)
        .map(|i| {
            let p = peer_pod(i);
            PodRef::new(p.namespace, p.name)
        })
        .collect();
    want.insert(pod_ref(&CLIENT));
    assert_eq!(peers.len(), 100);
    assert_eq!(peers, want);
}

/// Test that no rule trie entry of the server needs more than the 16 port ranges an entry
/// holds (an overflowing peer would be written denied), in either direction: with the 99
/// peer pods on the node, and with 998 on other nodes as an API server would list them
/// (`agent-rss-policies`, where the client's peers are then 998 + 1 pods).
#[test]
fn no_peer_prefix_needs_more_than_16_ranges() {
    let (_, local) = full_set();
    let remote = 998;
    let mut docs = object_docs(remote, Peers::Remote, &[&SERVER, &CLIENT]);
    docs.extend(policy_docs(1000, remote));
    let (state, api) = compile_with(&[], &docs, &local_pods(0));
    assert_eq!(state.pods().count(), 1000);
    for (set, peers) in [(local, PEERS + 1), (api, remote + 1)] {
        let server = set.endpoint(&pod_ref(&SERVER)).expect("the server");
        let picked: BTreeSet<&PodRef> = server
            .ingress
            .allow
            .iter()
            .filter_map(|a| match &a.peer {
                Peer::Pod { pod, .. } => Some(pod),
                _ => None,
            })
            .collect();
        assert_eq!(picked.len(), peers);
        for d in [Direction::Ingress, Direction::Egress] {
            let n = max_ranges(&server.rules(d).allow);
            assert!((1..=16).contains(&n), "{peers} peers, {d:?}: {n} ranges");
        }
    }
}

/// Test that the remote pods of `agent-rss-policies`, as the agent's manifest parser reads
/// them (their `status.podIP` kept), are endpoints at those addresses and peers of the
/// server's rules, with nothing compiled onto them (their own nodes enforce their policies):
/// the 1,000-pod memory figure is what the agent really holds for them.
#[test]
fn manifest_remote_pods_are_peers_not_subjects() {
    let text = objects(10, Peers::Remote, &[&SERVER, &CLIENT]) + "---\n" + &policies(10, 10);
    let (state, set) = compile_with(&[&text], &[], &local_pods(0));
    assert_eq!(state.pods().count(), 12);
    assert_eq!(set.endpoints().count(), 12, "every pod with an address");
    let remote: Vec<&policy::Endpoint> = set.endpoints().filter(|e| !e.on_node).collect();
    assert_eq!(remote.len(), 10, "the peer pods run on other nodes");
    for e in &remote {
        assert!(
            !e.ingress.is_isolated() && !e.egress.is_isolated(),
            "{} has rules compiled here",
            e.pod
        );
    }
    let server = set
        .endpoint(&PodRef::new(SERVER.namespace, SERVER.name))
        .expect("the server is an endpoint");
    let peers: BTreeSet<IpAddr> = server
        .ingress
        .allow
        .iter()
        .filter_map(|a| match &a.peer {
            Peer::Pod { addrs, .. } => Some(addrs.iter().copied()),
            _ => None,
        })
        .flatten()
        .collect();
    for e in &remote {
        assert!(
            e.addrs.iter().all(|a| peers.contains(a)),
            "{} ({:?}) is not a peer of the server",
            e.pod,
            e.addrs
        );
    }
}

/// Test that the set is varied as the scenario promises: both peer selectors, combined
/// peers, the automatic namespace name label, expressions, ipBlock with except, named ports,
/// endPort, UDP, egress rules and egress-only policies.
#[test]
fn policies_are_varied() {
    let text = policies(1000, PEERS);
    for needle in [
        "namespaceSelector:",
        "podSelector:",
        "kubernetes.io/metadata.name",
        "operator: \"NotIn\"",
        "operator: \"Exists\"",
        "operator: \"In\"",
        "except:",
        "port: \"load\"",
        "endPort: 9100",
        "protocol: \"UDP\"",
        "egress:",
        "- \"Egress\"",
    ] {
        assert!(text.contains(needle), "no {needle:?} in the policies");
    }
    let egress_only = text.matches("policyTypes:\n  - \"Egress\"\n").count();
    assert_eq!(egress_only, 100, "one kind in ten isolates egress only");
}

/// Test that the toggle policy denies the outsider into the probe pod, then allows it, the
/// probe pod isolated both times, and touches nothing else.
#[test]
fn probe_policy_toggles_the_outsider() {
    let objects = objects(PEERS, Peers::Local, &FOUR);
    let policies = policies(1000, PEERS);
    for allow in [false, true] {
        let (_, set) = compile(&[&objects, &policies, &probe_policy(allow)]);
        let probe = set.endpoint(&pod_ref(&PROBE)).expect("the probe pod");
        assert!(probe.ingress.is_isolated());
        assert_eq!(
            allowed(&set, &OUTSIDER, &PROBE, Proto::Tcp, LOAD_PORT),
            allow
        );
        assert!(!allowed(&set, &CLIENT, &PROBE, Proto::Tcp, LOAD_PORT));
        assert!(allowed(&set, &CLIENT, &SERVER, Proto::Tcp, LOAD_PORT));
    }
}

/// Test that the YAML writer's block style reads back as the same value (nested lists of
/// maps, empty maps, quoted strings that look like numbers).
#[test]
fn yaml_block_style_round_trips() {
    let v = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "a", "labels": {"version": "1", "on": "yes"}},
        "spec": {
            "containers": [{
                "name": "c",
                "command": ["sleep", "1"],
                "ports": [{"containerPort": 80, "name": "http"}],
            }],
            "securityContext": {},
            "volumes": [],
        },
    });
    let text = stream(std::slice::from_ref(&v));
    let objects = daemon::manifests::parse_bytes(Path::new("t.yaml"), text.as_bytes())
        .unwrap_or_else(|e| panic!("{e}:\n{text}"));
    assert_eq!(objects.len(), 1, "{text}");
    let pod = match &objects[0] {
        daemon::model::Object::Pod(p) => p,
        _ => panic!("not a pod"),
    };
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels["version"], "1");
    assert_eq!(labels["on"], "yes");
    let c = &pod.spec.as_ref().expect("spec").containers[0];
    assert_eq!(c.ports.as_ref().expect("ports")[0].container_port, 80);
    assert_eq!(
        c.command.as_deref(),
        Some(&["sleep".to_string(), "1".to_string()][..])
    );
    assert!(
        text.contains("  containers:\n  - command:\n    - \"sleep\"\n"),
        "{text}"
    );
    assert!(
        text.contains("    ports:\n    - containerPort: 80\n"),
        "{text}"
    );
}
