//! Unit tests of where backends come from: EndpointSlice conditions and port matching, and
//! endpoints derived from selected pods when no EndpointSlice exists (named target ports,
//! CNI addresses, excluded pods). Expected values from the Kubernetes API reference for
//! EndpointSlice, the EndpointSlice controller and kube-proxy (KEP-1669).

use super::tests::{addrs, backend, find, state, web_two_nodes, TestNode};
use super::{Proto, Scope};
use crate::model::Object;

/// Test that a named targetPort resolves per pod to the containerPort of that name, so two
/// pods with different numbers for the same name get different backend ports.
#[test]
fn derived_named_target_port_per_pod() {
    let state = state(
        "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.11
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: web}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec:
  nodeName: node-a
  containers: [{name: app, ports: [{name: web, containerPort: 8080}]}]
status: {podIP: 10.244.1.5}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: shop, labels: {app: web, tier: front}}
spec:
  nodeName: node-b
  containers: [{name: app, ports: [{name: web, containerPort: 9090}]}]
status: {podIP: 10.244.2.7}
---
apiVersion: v1
kind: Pod
metadata: {name: api-1, namespace: shop, labels: {app: api}}
spec:
  containers: [{name: app, ports: [{name: web, containerPort: 7070}]}]
status: {podIP: 10.244.2.8}
",
    );
    let fs = TestNode::new().compile(&state);
    assert_eq!(fs.len(), 1);
    assert_eq!(
        fs[0].backends,
        [
            backend("10.244.1.5", 8080, true, Some(("shop", "web-1"))),
            backend("10.244.2.7", 9090, false, Some(("shop", "web-2"))),
        ]
    );
}

/// Test that a pod with no containerPort of the targetPort's name and protocol is not a
/// backend of that port, while sidecars (restartPolicy Always init containers) count.
#[test]
fn derived_pod_without_named_port_excluded() {
    let state = state(
        "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.11
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: web}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec:
  containers: [{name: app, ports: [{name: web, containerPort: 8080}]}]
status: {podIP: 10.244.1.5}
---
apiVersion: v1
kind: Pod
metadata: {name: metrics-only, namespace: shop, labels: {app: web}}
spec:
  containers: [{name: app, ports: [{name: metrics, containerPort: 9100}]}]
status: {podIP: 10.244.1.6}
---
apiVersion: v1
kind: Pod
metadata: {name: udp-web, namespace: shop, labels: {app: web}}
spec:
  containers: [{name: app, ports: [{name: web, containerPort: 8080, protocol: UDP}]}]
status: {podIP: 10.244.1.7}
---
apiVersion: v1
kind: Pod
metadata: {name: sidecar, namespace: shop, labels: {app: web}}
spec:
  initContainers: [{name: proxy, restartPolicy: Always, ports: [{name: web, containerPort: 15001}]}]
  containers: [{name: app}]
status: {podIP: 10.244.1.8}
---
apiVersion: v1
kind: Pod
metadata: {name: init-only, namespace: shop, labels: {app: web}}
spec:
  initContainers: [{name: setup, ports: [{name: web, containerPort: 8080}]}]
  containers: [{name: app}]
status: {podIP: 10.244.1.9}
",
    );
    let fs = TestNode::new().compile(&state);
    assert_eq!(fs.len(), 1);
    assert_eq!(
        fs[0].backends,
        [
            backend("10.244.1.5", 8080, false, Some(("shop", "web-1"))),
            backend("10.244.1.8", 15001, false, Some(("shop", "sidecar"))),
        ]
    );
}

/// Test that when an EndpointSlice exists for a service its selector is not used, even if
/// the slice lists no endpoint at all.
#[test]
fn endpoint_slice_preferred_over_selector() {
    let state = state(
        "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.12
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  clusterIP: 10.96.0.13
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {containers: [{name: app}]}
status: {podIP: 10.244.1.5}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-x, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: '', port: 8080, protocol: TCP}]
endpoints: [{addresses: [10.244.9.9]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-x, namespace: shop, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
endpoints: []
",
    );
    let fs = TestNode::new().compile(&state);
    assert_eq!(
        addrs(find(&fs, "10.96.0.12", 80, Scope::Internal)),
        ["10.244.9.9"]
    );
    assert!(find(&fs, "10.96.0.13", 80, Scope::Internal)
        .backends
        .is_empty());
}

/// Test that endpoints with ready false or terminating true are left out, and unset
/// conditions mean ready and not terminating.
#[test]
fn not_ready_and_terminating_endpoints_excluded() {
    let mut state = web_two_nodes("");
    let slice = serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1x", "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.244.1.1"], "conditions": {}},
            {"addresses": ["10.244.1.2"], "conditions": {"ready": false}},
            {"addresses": ["10.244.1.3"],
                "conditions": {"ready": true, "serving": true, "terminating": true}},
            {"addresses": ["10.244.1.4"],
                "conditions": {"ready": false, "serving": true, "terminating": true}},
            {"addresses": ["10.244.1.5"], "conditions": {"ready": true, "terminating": false}},
        ],
    });
    let slice = Object::EndpointSlice(serde_json::from_value(slice).expect("slice"));
    state.apply(slice).expect("apply");
    let fs = TestNode::new().compile(&state);
    let cluster_ip = find(&fs, "10.96.0.20", 80, Scope::Internal);
    assert_eq!(addrs(cluster_ip), ["10.244.1.1", "10.244.1.5"]);
}

/// Test that a frontend with no ready endpoint within its traffic policy falls back to the
/// serving, terminating ones (KEP-1669), never to not-serving ones, per scope.
#[test]
fn terminating_fallback_per_traffic_policy() {
    let state = state(
        "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.20
  externalTrafficPolicy: Local
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1x, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.2.7], nodeName: node-b, conditions: {ready: true}}
- addresses: [10.244.1.6]
  nodeName: node-a
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.244.1.7]
  nodeName: node-a
  conditions: {ready: false, serving: false, terminating: true}
",
    );
    let fs = TestNode::new().compile(&state);
    // Cluster-wide there is a ready endpoint: no fallback.
    assert_eq!(
        addrs(find(&fs, "10.96.0.20", 80, Scope::Internal)),
        ["10.244.2.7"]
    );
    // Locally none is ready: the serving terminating one, not the one that stopped serving.
    let external = find(&fs, "192.168.1.10", 30080, Scope::External);
    assert_eq!(addrs(external), ["10.244.1.6"]);
}

/// Test that a UDP port matches only the slice port of the same name and protocol UDP.
#[test]
fn udp_port_matches_udp_slice_port() {
    let state = state(
        "
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.53
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-a, namespace: kube-system, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
ports: [{name: dns, port: 1053, protocol: UDP}, {name: dns-tcp, port: 1054, protocol: TCP}]
endpoints: [{addresses: [10.244.1.5]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-b, namespace: kube-system, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
ports: [{name: dns, port: 5353, protocol: TCP}]
endpoints: [{addresses: [10.244.2.7]}]
",
    );
    let fs = TestNode::new().compile(&state);
    let got: Vec<_> = fs
        .iter()
        .map(|f| (f.port_name.as_str(), f.proto, f.backends.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "dns-tcp",
                Proto::Tcp,
                vec![backend("10.244.1.5", 1054, false, None)]
            ),
            (
                "dns",
                Proto::Udp,
                vec![backend("10.244.1.5", 1053, false, None)]
            ),
        ]
    );
}

/// Test that without an EndpointSlice the backends are the selected pods at the address CNI
/// ADD gave (else status.podIP), leaving out terminating, finished, not-ready and
/// address-less pods.
#[test]
fn derived_endpoints_use_cni_addresses() {
    // A selected pod with extra metadata fields and a status.
    let pod = |name: &str, meta: &str, status: &str| {
        format!(
            "---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: shop, labels: {{app: web}}{meta}}}
spec: {{containers: [{{name: app}}]}}
status: {{{status}}}
"
        )
    };
    let yaml = [
        "apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.30
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"
        .to_owned(),
        pod("web-1", "", ""),
        pod("web-2", "", ""),
        pod("web-3", "", "podIP: 10.244.2.7"),
        pod("web-4", "", "podIP: 10.244.9.9"),
        pod("web-5", ", deletionTimestamp: '2025-01-01T00:00:00Z'", ""),
        pod("web-6", "", "phase: Succeeded, podIP: 10.244.2.8"),
        pod(
            "web-7",
            "",
            "podIP: 10.244.2.9, conditions: [{type: Ready, status: 'False'}]",
        ),
    ]
    .concat();
    let state = state(&yaml);
    let fs = TestNode::new()
        .cni_pod("shop", "web-1", "10.244.1.5")
        .cni_pod("shop", "web-4", "10.244.1.6")
        .cni_pod("shop", "web-5", "10.244.1.7")
        .compile(&state);
    assert_eq!(fs.len(), 1);
    assert_eq!(
        fs[0].backends,
        [
            backend("10.244.1.5", 8080, true, Some(("shop", "web-1"))),
            backend("10.244.1.6", 8080, true, Some(("shop", "web-4"))),
            backend("10.244.2.7", 8080, false, Some(("shop", "web-3"))),
        ]
    );
}
