//! Objects as the API server serves them, in real Kubernetes JSON. List items carry no
//! `kind`/`apiVersion` (the list does); watch events' objects carry both, added by [`typed`].

use daemon::model::{ClusterState, Object};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};

use super::fake::{Res, NODE};

pub fn namespace(name: &str, rv: &str) -> Value {
    json!({
        "metadata": {
            "name": name,
            "uid": format!("0b6f3c1e-{name}"),
            "resourceVersion": rv,
            "creationTimestamp": "2025-06-01T10:00:00Z",
            "labels": {"kubernetes.io/metadata.name": name},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

pub fn pod(ns: &str, name: &str, ip: &str, app: &str, rv: &str) -> Value {
    json!({
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": format!("5d1a7e2c-{name}"),
            "resourceVersion": rv,
            "creationTimestamp": "2025-06-01T10:05:00Z",
            "labels": {"app": app},
        },
        "spec": {
            "nodeName": NODE,
            "containers": [{
                "name": "app",
                "image": "nginx:1.27",
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
            }],
        },
        "status": {
            "phase": "Running",
            "hostIP": "192.168.50.10",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
        },
    })
}

pub fn service(ns: &str, name: &str, cluster_ip: &str, port: u16, rv: &str) -> Value {
    json!({
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": format!("9c2e4b7a-{name}"),
            "resourceVersion": rv,
            "creationTimestamp": "2025-06-01T10:01:00Z",
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "ipFamilies": ["IPv4"],
            "selector": {"app": name},
            "ports": [{"name": "http", "protocol": "TCP", "port": port, "targetPort": 8080}],
        },
        "status": {"loadBalancer": {}},
    })
}

pub fn endpoint_slice(ns: &str, name: &str, svc: &str, ips: &[&str], rv: &str) -> Value {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| {
            json!({
                "addresses": [ip],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": NODE,
            })
        })
        .collect();
    json!({
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": format!("3f8d6a1b-{name}"),
            "resourceVersion": rv,
            "generateName": format!("{svc}-"),
            "labels": {
                "kubernetes.io/service-name": svc,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
    })
}

pub fn network_policy(ns: &str, name: &str, app: &str, from_app: &str, rv: &str) -> Value {
    json!({
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": format!("7e4c2d9f-{name}"),
            "resourceVersion": rv,
            "generation": 1,
        },
        "spec": {
            "podSelector": {"matchLabels": {"app": app}},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": {"app": from_app}}}],
                "ports": [{"protocol": "TCP", "port": 8080}],
            }],
        },
    })
}

pub fn node(name: &str, cidr: &str, ip: &str, rv: &str) -> Value {
    json!({
        "metadata": {
            "name": name,
            "uid": format!("1a2b3c4d-{name}"),
            "resourceVersion": rv,
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
            ],
        },
    })
}

/// `object` with the `kind` and `apiVersion` a watch event's object carries.
pub fn typed(res: Res, mut object: Value) -> Value {
    let kind = res.list_kind().trim_end_matches("List");
    object["kind"] = json!(kind);
    object["apiVersion"] = json!(res.api_version());
    object
}

pub fn bookmark(res: Res, rv: &str) -> Value {
    typed(
        res,
        json!({"metadata": {"resourceVersion": rv, "creationTimestamp": null}}),
    )
}

/// The model object for a served item, decoded as a client of the API would, and a Pod cut
/// down as the watcher stores it (`daemon::kube::trim`, whose own tests say what it keeps).
pub fn model_object(res: Res, value: &Value) -> Object {
    let v = value.clone();
    let decoded = match res {
        Res::Namespaces => serde_json::from_value::<Namespace>(v).map(Object::from),
        Res::Pods => {
            serde_json::from_value::<Pod>(v).map(|p| Object::from(daemon::kube::trim::pod(p)))
        }
        Res::Services => serde_json::from_value::<Service>(v).map(Object::from),
        Res::EndpointSlices => serde_json::from_value::<EndpointSlice>(v).map(Object::from),
        Res::NetworkPolicies => serde_json::from_value::<NetworkPolicy>(v).map(Object::from),
        Res::Nodes => serde_json::from_value::<Node>(v).map(Object::from),
    };
    decoded.expect("test objects are valid")
}

/// The state holding exactly `served`.
pub fn state_of(served: &[(Res, Vec<Value>)]) -> ClusterState {
    let mut state = ClusterState::new();
    for (res, items) in served {
        for item in items {
            state.apply(model_object(*res, item)).expect("named");
        }
    }
    state
}

/// A cluster with objects of every kind.
pub fn cluster() -> Vec<(Res, Vec<Value>)> {
    vec![
        (
            Res::Namespaces,
            vec![namespace("default", "11"), namespace("shop", "12")],
        ),
        (
            Res::Pods,
            vec![
                pod("shop", "web-1", "10.244.1.5", "web", "40"),
                pod("shop", "db-0", "10.244.1.6", "db", "41"),
            ],
        ),
        (
            Res::Services,
            vec![
                service("default", "kubernetes", "10.96.0.1", 443, "20"),
                service("shop", "web", "10.96.12.7", 80, "21"),
            ],
        ),
        (
            Res::EndpointSlices,
            vec![endpoint_slice(
                "shop",
                "web-x7k2p",
                "web",
                &["10.244.1.5"],
                "30",
            )],
        ),
        (
            Res::NetworkPolicies,
            vec![network_policy("shop", "db-from-web", "db", "web", "50")],
        ),
        (
            Res::Nodes,
            vec![
                node(NODE, "10.244.1.0/24", "192.168.50.10", "60"),
                node("node-b", "10.244.2.0/24", "192.168.50.11", "61"),
            ],
        ),
    ]
}
