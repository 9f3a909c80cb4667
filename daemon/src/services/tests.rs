//! Unit tests of service compilation, the frontends each kind of Service address gets, and
//! the helpers `tests_endpoints.rs` shares: cluster states written as `kubectl get -o
//! yaml` shows them (status included), expected values from the Kubernetes API reference
//! for Service and EndpointSlice and from kube-proxy's documented behaviour.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;

use super::*;
use crate::model::{ClusterState, Object};

pub(super) const NODE: &str = "node-a";

/// A state holding the objects of a multi-document YAML string.
pub(super) fn state(yaml: &str) -> ClusterState {
    let mut state = ClusterState::new();
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value = serde_json::Value::deserialize(doc).expect("valid YAML");
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        let obj = match kind.as_str() {
            "Service" => Object::Service(serde_json::from_value(value).expect("Service")),
            "EndpointSlice" => {
                Object::EndpointSlice(serde_json::from_value(value).expect("EndpointSlice"))
            }
            "Pod" => Object::Pod(serde_json::from_value(value).expect("Pod")),
            "Node" => Object::Node(serde_json::from_value(value).expect("Node")),
            other => panic!("unexpected kind {other:?}"),
        };
        state.apply(obj).expect("apply");
    }
    state
}

/// This node, as the tests describe it.
pub(super) struct TestNode {
    pub(super) ips: Vec<IpAddr>,
    pub(super) local_pods: BTreeMap<(String, String), IpAddr>,
    pub(super) maglev: bool,
    pub(super) pod_cidrs: Vec<ipnetwork::IpNetwork>,
    pub(super) external_ips: Vec<ipnetwork::IpNetwork>,
}

impl TestNode {
    /// Node `node-a` with address 192.168.1.10, no CNI pods, random balancing.
    pub(super) fn new() -> Self {
        TestNode {
            ips: vec![ip("192.168.1.10")],
            local_pods: BTreeMap::new(),
            maglev: false,
            pod_cidrs: Vec::new(),
            external_ips: vec![cidr("0.0.0.0/0"), cidr("::/0")],
        }
    }

    pub(super) fn pod_cidrs(mut self, cidrs: &[&str]) -> Self {
        self.pod_cidrs = cidrs.iter().map(|s| cidr(s)).collect();
        self
    }

    pub(super) fn external_ips(mut self, cidrs: &[&str]) -> Self {
        self.external_ips = cidrs.iter().map(|s| cidr(s)).collect();
        self
    }

    pub(super) fn ips(mut self, ips: &[&str]) -> Self {
        self.ips = ips.iter().map(|s| ip(s)).collect();
        self
    }

    pub(super) fn cni_pod(mut self, ns: &str, name: &str, addr: &str) -> Self {
        self.local_pods
            .insert((ns.to_owned(), name.to_owned()), ip(addr));
        self
    }

    pub(super) fn compile(&self, state: &ClusterState) -> Vec<Frontend> {
        self.compile_after(state, &[]).frontends
    }

    /// The compilation that follows one that produced `previous`.
    pub(super) fn compile_after(&self, state: &ClusterState, previous: &[Frontend]) -> Compiled {
        compile(
            state,
            &NodeInfo {
                node_name: NODE,
                node_ips: &self.ips,
                local_pods: &self.local_pods,
                default_maglev: self.maglev,
                pod_cidrs: &self.pod_cidrs,
                external_ips: &self.external_ips,
                previous,
            },
        )
    }
}

pub(super) fn cidr(s: &str) -> ipnetwork::IpNetwork {
    s.parse().expect("test CIDR")
}

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

pub(super) fn backend(addr: &str, port: u16, local: bool, pod: Option<(&str, &str)>) -> Backend {
    Backend {
        addr: ip(addr),
        port,
        local,
        pod: pod.map(|(ns, name)| (ns.to_owned(), name.to_owned())),
    }
}

/// (kind, addr, port, proto, scope) of each frontend, in order.
pub(super) fn keys(fs: &[Frontend]) -> Vec<(FrontendKind, IpAddr, u16, Proto, Scope)> {
    fs.iter()
        .map(|f| (f.kind, f.addr, f.port, f.proto, f.scope))
        .collect()
}

/// The frontend on `addr:port` in `scope`.
pub(super) fn find<'a>(fs: &'a [Frontend], addr: &str, port: u16, scope: Scope) -> &'a Frontend {
    fs.iter()
        .find(|f| f.addr == ip(addr) && f.port == port && f.scope == scope)
        .unwrap_or_else(|| panic!("no frontend {addr}:{port} {scope:?} in {fs:#?}"))
}

/// The backend addresses of a frontend.
pub(super) fn addrs(f: &Frontend) -> Vec<String> {
    f.backends.iter().map(|b| b.addr.to_string()).collect()
}

/// A service `web` in `shop` on 10.96.0.20 port 80 -> 8080, with `spec_extra` added to its
/// spec, and one EndpointSlice: 10.244.1.5 on this node (pod web-1), 10.244.2.7 on node-b
/// (pod web-2).
pub(super) fn web_two_nodes(spec_extra: &str) -> ClusterState {
    state(&format!(
        "
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  clusterIP: 10.96.0.20
  ports: [{{port: 80, targetPort: 8080, nodePort: 30080}}]
{spec_extra}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1x, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{port: 8080, protocol: TCP}}]
endpoints:
- {{addresses: [10.244.2.7], nodeName: node-b, targetRef: {{kind: Pod, name: web-2}}}}
- {{addresses: [10.244.1.5], nodeName: node-a, targetRef: {{kind: Pod, name: web-1}}}}
"
    ))
}

/// Test that a ClusterIP service gets one Internal frontend per port, backends from its
/// EndpointSlice's port of the same name, locality from nodeName and pods from targetRef.
#[test]
fn cluster_ip_one_frontend_per_port() {
    let state = state(
        "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: https, port: 443, targetPort: 8443}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {name: https, port: 8443, protocol: TCP}
- {name: http, port: 8080, protocol: TCP}
endpoints:
- addresses: [10.244.2.7]
  nodeName: node-b
  targetRef: {kind: Pod, namespace: shop, name: web-2}
- addresses: [10.244.1.5]
  nodeName: node-a
  targetRef: {kind: Pod, namespace: shop, name: web-1}
",
    );
    let fs = TestNode::new().compile(&state);
    let expected = |port_name: &str, port, backend_port| Frontend {
        namespace: "shop".to_owned(),
        service: "web".to_owned(),
        port_name: port_name.to_owned(),
        kind: FrontendKind::ClusterIp,
        addr: ip("10.96.0.10"),
        port,
        proto: Proto::Tcp,
        scope: Scope::Internal,
        backends: vec![
            backend("10.244.1.5", backend_port, true, Some(("shop", "web-1"))),
            backend("10.244.2.7", backend_port, false, Some(("shop", "web-2"))),
        ],
        affinity_timeout: None,
        maglev: false,
        snat: false,
    };
    assert_eq!(
        fs,
        [expected("http", 80, 8080), expected("https", 443, 8443)]
    );
}

/// Test that a NodePort service with externalTrafficPolicy Cluster gets, per node address,
/// an Internal and an External frontend with every backend, the External one with SNAT.
#[test]
fn node_port_etp_cluster_both_scopes_snat() {
    let state = web_two_nodes("  type: NodePort");
    let fs = TestNode::new()
        .ips(&["192.168.1.10", "10.0.0.10"])
        .compile(&state);
    use FrontendKind::*;
    use Scope::*;
    let tcp = Proto::Tcp;
    assert_eq!(
        keys(&fs),
        [
            (NodePort, ip("10.0.0.10"), 30080, tcp, Internal),
            (NodePort, ip("10.0.0.10"), 30080, tcp, External),
            (ClusterIp, ip("10.96.0.20"), 80, tcp, Internal),
            (NodePort, ip("192.168.1.10"), 30080, tcp, Internal),
            (NodePort, ip("192.168.1.10"), 30080, tcp, External),
        ]
    );
    let both = ["10.244.1.5", "10.244.2.7"];
    for f in &fs {
        assert_eq!(addrs(f), both, "{f:?}");
        assert_eq!(f.snat, f.scope == External, "{f:?}");
    }
}

/// Test that externalTrafficPolicy Local keeps External NodePort traffic on local backends
/// without SNAT, while Internal NodePort and ClusterIP traffic still reach every backend.
#[test]
fn node_port_etp_local_local_backends_no_snat() {
    let state = web_two_nodes("  type: NodePort\n  externalTrafficPolicy: Local");
    let fs = TestNode::new().compile(&state);
    let external = find(&fs, "192.168.1.10", 30080, Scope::External);
    assert_eq!(
        external.backends,
        [backend("10.244.1.5", 8080, true, Some(("shop", "web-1")))]
    );
    assert!(!external.snat);
    let internal = find(&fs, "192.168.1.10", 30080, Scope::Internal);
    assert_eq!(addrs(internal), ["10.244.1.5", "10.244.2.7"]);
    assert!(!internal.snat);
    assert_eq!(
        addrs(find(&fs, "10.96.0.20", 80, Scope::Internal)),
        ["10.244.1.5", "10.244.2.7"]
    );
}

/// Test that internalTrafficPolicy Local keeps ClusterIP traffic on local backends (by
/// nodeName or by a CNI address of this node) and leaves NodePort traffic alone.
#[test]
fn internal_traffic_policy_local() {
    let mut state = web_two_nodes("  type: NodePort\n  internalTrafficPolicy: Local");
    let extra = serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-2x", "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.244.1.6"]}],
    });
    let extra = Object::EndpointSlice(serde_json::from_value(extra).expect("slice"));
    state.apply(extra).expect("apply");
    let fs = TestNode::new()
        .cni_pod("shop", "web-3", "10.244.1.6")
        .compile(&state);
    assert_eq!(
        find(&fs, "10.96.0.20", 80, Scope::Internal).backends,
        [
            backend("10.244.1.5", 8080, true, Some(("shop", "web-1"))),
            backend("10.244.1.6", 8080, true, Some(("shop", "web-3"))),
        ]
    );
    let node_port = find(&fs, "192.168.1.10", 30080, Scope::Internal);
    assert_eq!(addrs(node_port), ["10.244.1.5", "10.244.1.6", "10.244.2.7"]);
}

/// Test that each spec.externalIPs entry gets frontends on the service port in both scopes,
/// and a ClusterIP service gets no NodePort frontend.
#[test]
fn external_ips_both_scopes() {
    let state = web_two_nodes("  externalIPs: [203.0.113.5]");
    let fs = TestNode::new().compile(&state);
    use FrontendKind::*;
    use Scope::*;
    let tcp = Proto::Tcp;
    assert_eq!(
        keys(&fs),
        [
            (ClusterIp, ip("10.96.0.20"), 80, tcp, Internal),
            (ExternalIp, ip("203.0.113.5"), 80, tcp, Internal),
            (ExternalIp, ip("203.0.113.5"), 80, tcp, External),
        ]
    );
    let external = find(&fs, "203.0.113.5", 80, External);
    assert!(external.snat);
    assert_eq!(addrs(external), ["10.244.1.5", "10.244.2.7"]);
}

/// Test that a LoadBalancer service gets frontends on each status.loadBalancer.ingress IP
/// (not hostnames, not ipMode Proxy) plus its NodePorts, and a stale ingress on a service
/// that is no longer a LoadBalancer is ignored.
#[test]
fn load_balancer_ingress_ip() {
    let mut state = web_two_nodes(
        "  type: LoadBalancer
  externalTrafficPolicy: Local
status:
  loadBalancer:
    ingress: [{ip: 198.51.100.7}, {hostname: lb.example.com}, {ip: 198.51.100.8, ipMode: Proxy}]",
    );
    let stale = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "was-lb", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.21", "ports": [{"port": 80}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.9"}]}},
    });
    let stale = Object::Service(serde_json::from_value(stale).expect("service"));
    state.apply(stale).expect("apply");
    let fs = TestNode::new().compile(&state);
    use FrontendKind::*;
    use Scope::*;
    let tcp = Proto::Tcp;
    assert_eq!(
        keys(&fs),
        [
            (ClusterIp, ip("10.96.0.20"), 80, tcp, Internal),
            (ClusterIp, ip("10.96.0.21"), 80, tcp, Internal),
            (NodePort, ip("192.168.1.10"), 30080, tcp, Internal),
            (NodePort, ip("192.168.1.10"), 30080, tcp, External),
            (LoadBalancer, ip("198.51.100.7"), 80, tcp, Internal),
            (LoadBalancer, ip("198.51.100.7"), 80, tcp, External),
        ]
    );
    let lb_external = find(&fs, "198.51.100.7", 80, External);
    assert_eq!(addrs(lb_external), ["10.244.1.5"]);
    assert!(!lb_external.snat);
    assert_eq!(
        addrs(find(&fs, "198.51.100.7", 80, Internal)),
        ["10.244.1.5", "10.244.2.7"]
    );
}

/// Test that headless (clusterIP None) and ExternalName services produce no frontend, not
/// even on an external IP (kube-proxy does not proxy them).
#[test]
fn headless_and_external_name_produce_nothing() {
    let mut state = web_two_nodes("");
    let svc = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"clusterIP": "None", "clusterIPs": ["None"], "selector": {"app": "web"},
            "externalIPs": ["203.0.113.5"], "ports": [{"port": 80, "targetPort": 8080}]},
    });
    state
        .apply(Object::Service(serde_json::from_value(svc).expect("svc")))
        .expect("apply");
    let ext = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "db", "namespace": "shop"},
        "spec": {"type": "ExternalName", "externalName": "db.example.com",
            "ports": [{"port": 5432}]},
    });
    state
        .apply(Object::Service(serde_json::from_value(ext).expect("svc")))
        .expect("apply");
    assert_eq!(TestNode::new().compile(&state), []);
}

/// Test that a NodePort service without a cluster IP (standalone manifests have no API
/// server to allocate one) still gets its NodePort frontends.
#[test]
fn node_port_without_cluster_ip() {
    let mut state = web_two_nodes("  type: NodePort");
    let mut svc = state.service("shop", "web").expect("svc").clone();
    svc.spec.as_mut().expect("spec").cluster_ip = None;
    state.apply(Object::Service(svc)).expect("apply");
    let fs = TestNode::new().compile(&state);
    let kinds: Vec<_> = fs.iter().map(|f| (f.kind, f.scope)).collect();
    assert_eq!(
        kinds,
        [
            (FrontendKind::NodePort, Scope::Internal),
            (FrontendKind::NodePort, Scope::External),
        ]
    );
}

/// Test that sessionAffinity ClientIP gives the 10800 s default or the configured timeout,
/// and None gives no affinity.
#[test]
fn session_affinity_timeout() {
    let fs = |extra: &str| TestNode::new().compile(&web_two_nodes(extra))[0].affinity_timeout;
    assert_eq!(fs(""), None);
    assert_eq!(fs("  sessionAffinity: None"), None);
    assert_eq!(fs("  sessionAffinity: ClientIP"), Some(10_800));
    let explicit = "  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}";
    assert_eq!(fs(explicit), Some(600));
}

/// Test that the lb-algorithm annotation picks maglev or random whatever the agent default,
/// and that a missing or unknown value uses the default.
#[test]
fn maglev_annotation_and_default() {
    let with_annotation = |value: Option<&str>, default: bool| {
        let mut state = web_two_nodes("");
        if let Some(value) = value {
            let mut svc = state.service("shop", "web").expect("svc").clone();
            svc.metadata.annotations =
                Some([(LB_ALGORITHM_ANNOTATION.to_owned(), value.to_owned())].into());
            state.apply(Object::Service(svc)).expect("apply");
        }
        let mut node = TestNode::new();
        node.maglev = default;
        node.compile(&state)[0].maglev
    };
    for default in [false, true] {
        assert!(with_annotation(Some("Maglev"), default));
        assert!(!with_annotation(Some("random"), default));
        assert_eq!(with_annotation(None, default), default);
        assert_eq!(with_annotation(Some("round-robin"), default), default);
    }
}

/// Test that a dual-stack service gets one frontend per family with backends of its family
/// only, and that malformed addresses, ports and protocols are skipped without a panic.
#[test]
fn dual_stack_families_and_malformed_values() {
    let state = state(
        "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.40
  clusterIPs: [10.96.0.40, 'fd00:96::40']
  externalIPs: [bogus]
  ports:
  - {name: http, port: 80}
  - {name: bad-proto, port: 81, protocol: tcp}
  - {name: bad-port, port: 70000}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v4, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.244.1.5]}, {addresses: [300.1.1.1]}, {addresses: []}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints: [{addresses: ['fd00:244::5']}]
",
    );
    let fs = TestNode::new().compile(&state);
    let got: Vec<_> = fs.iter().map(|f| (f.addr, f.port, addrs(f))).collect();
    assert_eq!(
        got,
        [
            (ip("10.96.0.40"), 80, vec!["10.244.1.5".to_owned()]),
            (ip("fd00:96::40"), 80, vec!["fd00:244::5".to_owned()]),
        ]
    );
}

/// Test that diff reports added and changed frontends from the new list and removed ones
/// from the old, by (addr, port, proto, scope).
#[test]
fn diff_added_changed_removed() {
    let f = |addr: &str, port, scope, backends: &[&str]| Frontend {
        namespace: "shop".to_owned(),
        service: "web".to_owned(),
        port_name: String::new(),
        kind: FrontendKind::ExternalIp,
        addr: ip(addr),
        port,
        proto: Proto::Tcp,
        scope,
        backends: backends
            .iter()
            .map(|b| backend(b, 8080, false, None))
            .collect(),
        affinity_timeout: None,
        maglev: false,
        snat: scope == Scope::External,
    };
    let kept = f("203.0.113.5", 80, Scope::Internal, &["10.244.1.5"]);
    let old = [
        kept.clone(),
        f("203.0.113.5", 80, Scope::External, &["10.244.1.5"]),
        f("203.0.113.5", 443, Scope::Internal, &["10.244.1.5"]),
    ];
    let changed = f(
        "203.0.113.5",
        80,
        Scope::External,
        &["10.244.1.5", "10.244.2.7"],
    );
    let added = f("203.0.113.6", 80, Scope::Internal, &["10.244.1.5"]);
    let new = [kept, changed.clone(), added.clone()];
    let (upserts, removed) = diff(&old, &new);
    assert_eq!(upserts, [&changed, &added]);
    assert_eq!(removed, [&old[2]]);
    assert_eq!(diff(&new, &new), (vec![], vec![]));
}
