//! Unit tests of who may hold a frontend (`claims.rs`): the older Service keeps a frontend
//! whatever the names, external and load-balancer IPs never shadow a ClusterIP, a node or a
//! pod, nothing sits in a pod CIDR, and `--external-ips` bounds what is honoured. Expected
//! values follow the Kubernetes API (creationTimestamp, uid, podCIDRs) and the CVE-2020-8554
//! advisory (kubernetes/kubernetes#97076).

use std::path::Path;

use super::tests::{find, ip, state, web_two_nodes, TestNode};
use super::*;
use crate::model::Object;

fn service(v: serde_json::Value) -> Object {
    Object::Service(serde_json::from_value(v).expect("service"))
}

/// Who holds each frontend on `addr`: (namespace/service, scope).
fn holders(fs: &[Frontend], addr: &str) -> Vec<(String, Scope)> {
    fs.iter()
        .filter(|f| f.addr == ip(addr))
        .map(|f| (format!("{}/{}", f.namespace, f.service), f.scope))
        .collect()
}

fn conflict(kind: ConflictKind, object: &str, address: &str, holder: &str) -> Conflict {
    Conflict {
        kind,
        object: object.to_owned(),
        address: address.to_owned(),
        holder: holder.to_owned(),
    }
}

/// Test that of two Services claiming the same external IP and port, the one created first
/// keeps it even when the newer one's name sorts first, and that the conflict names both.
#[test]
fn older_service_keeps_frontend_whatever_the_names() {
    let mut state = web_two_nodes("  externalIPs: [203.0.113.5]\n");
    let web = state.service("shop", "web").expect("web").clone();
    let mut web = serde_json::to_value(web).expect("json");
    web["metadata"]["creationTimestamp"] = "2024-01-01T00:00:00Z".into();
    state.apply(service(web)).expect("apply");
    state
        .apply(service(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "aaa", "namespace": "shop",
                "creationTimestamp": "2025-06-01T00:00:00Z"},
            "spec": {"clusterIP": "10.96.0.50", "externalIPs": ["203.0.113.5"],
                "ports": [{"port": 80}]},
        })))
        .expect("apply");
    let out = TestNode::new().compile_after(&state, &[]);
    assert_eq!(
        holders(&out.frontends, "203.0.113.5"),
        [
            ("shop/web".to_owned(), Scope::Internal),
            ("shop/web".to_owned(), Scope::External)
        ]
    );
    assert_eq!(
        out.conflicts,
        [conflict(
            ConflictKind::Taken,
            "shop/aaa",
            "203.0.113.5:80/TCP",
            "Service shop/web (older)"
        )]
    );
}

/// Test that two Services created in the same second are told apart by uid, the same way on
/// every node, not by name.
#[test]
fn same_second_services_ordered_by_uid() {
    let mk = |name: &str, uid: &str| {
        service(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "shop", "uid": uid,
                "creationTimestamp": "2025-06-01T00:00:00Z"},
            "spec": {"clusterIP": "10.96.0.50", "ports": [{"port": 80}]},
        }))
    };
    let mut state = ClusterState::new();
    state
        .apply(mk("aaa", "f0000000-0000-0000-0000-000000000000"))
        .expect("apply");
    state
        .apply(mk("zzz", "10000000-0000-0000-0000-000000000000"))
        .expect("apply");
    let fs = TestNode::new().compile(&state);
    assert_eq!(
        holders(&fs, "10.96.0.50"),
        [("shop/zzz".to_owned(), Scope::Internal)]
    );
}

/// Test that when neither Service has a creationTimestamp or uid (manifests), the one that
/// held the frontend at the last compilation keeps it when a new one, sorting first by name,
/// claims it.
#[test]
fn holder_keeps_frontend_without_timestamps() {
    let mut state = ClusterState::new();
    let mk = |name: &str| {
        service(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.50", "ports": [{"port": 80}]},
        }))
    };
    state.apply(mk("zzz")).expect("apply");
    let node = TestNode::new();
    let first = node.compile_after(&state, &[]);
    state.apply(mk("aaa")).expect("apply");
    let second = node.compile_after(&state, &first.frontends);
    assert_eq!(
        holders(&second.frontends, "10.96.0.50"),
        [("shop/zzz".to_owned(), Scope::Internal)]
    );
    assert_eq!(second.conflicts.len(), 1, "{:?}", second.conflicts);
    assert_eq!(second.conflicts[0].object, "shop/aaa");
}

/// Test that a Service in another namespace listing an existing ClusterIP, this node's
/// address or another Node's InternalIP in externalIPs (CVE-2020-8554) gets no frontend
/// there, and the ClusterIP keeps its own backends; a load-balancer ingress IP on a
/// ClusterIP is refused the same way.
#[test]
fn external_and_lb_ips_never_shadow_cluster_ips_or_nodes() {
    let mut state = web_two_nodes("");
    let node_b = serde_json::json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-b"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.11"},
            {"type": "Hostname", "address": "node-b"}]}});
    state
        .apply(Object::Node(serde_json::from_value(node_b).expect("node")))
        .expect("apply");
    state
        .apply(service(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "evil", "namespace": "aaa"},
            "spec": {"clusterIP": "10.96.0.66",
                "externalIPs": ["10.96.0.20", "192.168.1.10", "192.168.1.11"],
                "ports": [{"port": 80}, {"port": 22}]},
        })))
        .expect("apply");
    state
        .apply(service(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "lb", "namespace": "aaa"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.67", "ports": [{"port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.96.0.20"}]}},
        })))
        .expect("apply");
    let out = TestNode::new().compile_after(&state, &[]);
    assert_eq!(
        holders(&out.frontends, "10.96.0.20"),
        [("shop/web".to_owned(), Scope::Internal)]
    );
    assert_eq!(
        find(&out.frontends, "10.96.0.20", 80, Scope::Internal)
            .backends
            .len(),
        2
    );
    assert!(holders(&out.frontends, "192.168.1.10").is_empty());
    assert!(holders(&out.frontends, "192.168.1.11").is_empty());
    assert_eq!(
        out.conflicts,
        [
            conflict(
                ConflictKind::Shadowing,
                "aaa/evil",
                "10.96.0.20",
                "ClusterIP of Service shop/web"
            ),
            conflict(
                ConflictKind::Shadowing,
                "aaa/evil",
                "192.168.1.10",
                "address of node node-a"
            ),
            conflict(
                ConflictKind::Shadowing,
                "aaa/evil",
                "192.168.1.11",
                "address of node node-b"
            ),
            conflict(
                ConflictKind::Shadowing,
                "aaa/lb",
                "10.96.0.20",
                "ClusterIP of Service shop/web"
            ),
        ]
    );
}

/// Test that ClusterIPs, external IPs and load-balancer IPs inside this node's pod CIDR,
/// another Node's podCIDRs, or on a known pod's address are refused, and that other
/// frontends of the same Services stay.
#[test]
fn frontends_on_pod_addresses_are_refused() {
    let state = state(
        "
apiVersion: v1
kind: Node
metadata: {name: node-b}
spec: {podCIDRs: [10.244.2.0/24]}
---
apiVersion: v1
kind: Pod
metadata: {name: far, namespace: shop}
spec: {nodeName: node-c, containers: [{name: app, image: app}]}
status: {podIP: 172.16.0.9}
---
apiVersion: v1
kind: Service
metadata: {name: mine, namespace: shop}
spec: {clusterIP: 10.244.1.5, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: theirs, namespace: shop}
spec: {clusterIP: 10.96.0.30, externalIPs: [10.244.2.9, 172.16.0.9, 203.0.113.9], ports: [{port: 80}]}
",
    );
    let out = TestNode::new()
        .pod_cidrs(&["10.244.1.0/24"])
        .compile_after(&state, &[]);
    let addrs: BTreeSet<IpAddr> = out.frontends.iter().map(|f| f.addr).collect();
    assert_eq!(
        addrs,
        [ip("10.96.0.30"), ip("203.0.113.9")].into_iter().collect()
    );
    assert_eq!(
        out.conflicts,
        [
            conflict(
                ConflictKind::PodAddress,
                "shop/mine",
                "10.244.1.5",
                "pod CIDR 10.244.1.0/24 of node node-a"
            ),
            conflict(
                ConflictKind::PodAddress,
                "shop/theirs",
                "10.244.2.9",
                "pod CIDR 10.244.2.0/24 of node node-b"
            ),
            conflict(
                ConflictKind::PodAddress,
                "shop/theirs",
                "172.16.0.9",
                "Pod shop/far"
            ),
        ]
    );
}

/// Test that external IPs are honoured only inside the --external-ips ranges, and none when
/// the list is empty.
#[test]
fn external_ips_honoured_only_inside_the_allowed_ranges() {
    let state = web_two_nodes("  externalIPs: [203.0.113.5, 198.51.100.5]");
    let none = TestNode::new().external_ips(&[]).compile_after(&state, &[]);
    let ext: Vec<_> = none
        .frontends
        .iter()
        .filter(|f| f.kind == FrontendKind::ExternalIp)
        .collect();
    assert!(ext.is_empty(), "{ext:?}");
    assert_eq!(none.conflicts.len(), 2, "{:?}", none.conflicts);
    assert!(none
        .conflicts
        .iter()
        .all(|c| c.kind == ConflictKind::ExternalIpNotAllowed));
    let some = TestNode::new()
        .external_ips(&["203.0.113.0/24"])
        .compile_after(&state, &[]);
    let ext: BTreeSet<IpAddr> = some
        .frontends
        .iter()
        .filter(|f| f.kind == FrontendKind::ExternalIp)
        .map(|f| f.addr)
        .collect();
    assert_eq!(ext, [ip("203.0.113.5")].into_iter().collect());
    assert_eq!(
        some.conflicts,
        [conflict(
            ConflictKind::ExternalIpNotAllowed,
            "shop/web",
            "198.51.100.5",
            "--external-ips (203.0.113.0/24)"
        )]
    );
}

/// Test that creationTimestamp and uid survive manifest parsing and the API's JSON (what
/// ownership is decided on).
#[test]
fn creation_timestamp_and_uid_are_read() {
    let yaml = b"apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  namespace: shop\n  uid: 6f1c9c8e-1d2b-4c1a-9a57-2a3c4d5e6f70\n  creationTimestamp: \"2025-06-01T12:00:00Z\"\nspec: {clusterIP: 10.96.0.50, ports: [{port: 80}]}\n";
    let objs = crate::manifests::parse_bytes(Path::new("svc.yaml"), yaml).expect("parse");
    let Object::Service(svc) = &objs[0] else {
        panic!("not a service: {objs:?}")
    };
    let ts = svc.metadata.creation_timestamp.as_ref().expect("timestamp");
    assert_eq!(ts.0.to_string(), "2025-06-01T12:00:00Z");
    assert_eq!(
        svc.metadata.uid.as_deref(),
        Some("6f1c9c8e-1d2b-4c1a-9a57-2a3c4d5e6f70")
    );
    let json = serde_json::json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "a", "uid": "u-1", "creationTimestamp": "2025-06-01T12:00:00Z",
            "managedFields": []}});
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(json).expect("api json");
    assert!(svc.metadata.creation_timestamp.is_some());
    assert_eq!(svc.metadata.uid.as_deref(), Some("u-1"));
}
