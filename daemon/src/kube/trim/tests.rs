use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

/// A Pod as the API server serves it for a Deployment's replica on another node (the shape of
/// `kubectl get pod -o json`, shortened).
fn served() -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-6d4cf56db6-x7k2p",
            "generateName": "web-6d4cf56db6-",
            "namespace": "shop",
            "uid": "2b0c2f7e-5d7e-4a43-9f1e-0d5d7c1c9a11",
            "resourceVersion": "48213",
            "creationTimestamp": "2026-12-01T10:00:00Z",
            "deletionTimestamp": "2026-12-01T11:00:00Z",
            "deletionGracePeriodSeconds": 30,
            "labels": {"app": "web", "pod-template-hash": "6d4cf56db6"},
            "annotations": {
                "kubectl.kubernetes.io/restartedAt": "2026-12-01T09:59:00Z",
                "sluice.dev/sockmap": "off",
            },
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": "web-6d4cf56db6", "uid": "a1", "controller": true}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                               "apiVersion": "v1", "fieldsType": "FieldsV1",
                               "fieldsV1": {"f:metadata": {"f:labels": {}}}}],
        },
        "spec": {
            "nodeName": "node-b",
            "serviceAccountName": "default",
            "initContainers": [
                {"name": "migrate", "image": "web:1.2", "command": ["migrate"]},
                {"name": "proxy", "image": "envoy:1.30", "restartPolicy": "Always",
                 "ports": [{"name": "admin", "containerPort": 9901, "protocol": "TCP"}]},
            ],
            "containers": [{
                "name": "web",
                "image": "web:1.2",
                "args": ["--port", "8080"],
                "env": [{"name": "MODE", "value": "prod"}],
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
                "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets"}],
            }],
            "volumes": [{"name": "kube-api-access", "projected": {"sources": []}}],
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}],
        },
        "status": {
            "phase": "Running",
            "hostIP": "192.0.2.2",
            "hostIPs": [{"ip": "192.0.2.2"}],
            "podIP": "10.244.1.7",
            "podIPs": [{"ip": "10.244.1.7"}],
            "qosClass": "Burstable",
            "startTime": "2026-12-01T10:00:01Z",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                 "lastTransitionTime": "2026-12-01T10:00:02Z"},
            ],
            "containerStatuses": [{"name": "web", "ready": false, "restartCount": 0,
                                   "image": "web:1.2", "imageID": "sha256:ab",
                                   "state": {"running": {"startedAt": "2026-12-01T10:00:02Z"}}}],
        },
    })
}

/// Test that a served Pod is cut down to exactly what the agent reads: identity, labels,
/// `sluice.dev/*` annotations, timestamps of life, nodeName, hostNetwork, container and
/// sidecar names and ports, phase, addresses and the Ready condition; everything else
/// (managedFields, owners, other annotations, images, env, probes, volumes, other
/// conditions, container statuses, plain init containers) is gone.
#[test]
fn trim_pod_keeps_only_what_the_agent_reads() {
    let pod: Pod = serde_json::from_value(served()).expect("a valid Pod");
    let trimmed = super::pod(pod);
    let got = serde_json::to_value(&trimmed).expect("serialize");
    let want = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-6d4cf56db6-x7k2p",
            "namespace": "shop",
            "uid": "2b0c2f7e-5d7e-4a43-9f1e-0d5d7c1c9a11",
            "creationTimestamp": "2026-12-01T10:00:00Z",
            "deletionTimestamp": "2026-12-01T11:00:00Z",
            "labels": {"app": "web", "pod-template-hash": "6d4cf56db6"},
            "annotations": {"sluice.dev/sockmap": "off"},
        },
        "spec": {
            "nodeName": "node-b",
            "initContainers": [
                {"name": "proxy", "restartPolicy": "Always",
                 "ports": [{"name": "admin", "containerPort": 9901, "protocol": "TCP"}]},
            ],
            "containers": [{
                "name": "web",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
            }],
        },
        "status": {
            "phase": "Running",
            "hostIP": "192.0.2.2",
            "hostIPs": [{"ip": "192.0.2.2"}],
            "podIP": "10.244.1.7",
            "podIPs": [{"ip": "10.244.1.7"}],
            "conditions": [{"type": "Ready", "status": "False"}],
        },
    });
    assert_eq!(got, want);
}

/// Test that what the agent derives from a Pod's life is the same before and after trimming
/// (a hostNetwork pod stays one, a terminating one stays terminating).
#[test]
fn trim_pod_keeps_its_life() {
    let mut v = served();
    v["spec"]["hostNetwork"] = json!(true);
    let pod: Pod = serde_json::from_value(v).expect("a valid Pod");
    let before = crate::model::PodLife::of(&pod);
    let after = crate::model::PodLife::of(&super::pod(pod));
    assert_eq!(before, after);
    assert!(after.host_network && after.terminating);
}

/// Test that a Pod without annotations, init containers or status stays without them (no
/// empty maps or lists appear).
#[test]
fn trim_pod_minimal_stays_minimal() {
    let v = json!({
        "metadata": {"name": "p", "namespace": "default",
                     "annotations": {"other.io/x": "1"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    });
    let pod: Pod = serde_json::from_value(v).expect("a valid Pod");
    let got = serde_json::to_value(super::pod(pod)).expect("serialize");
    assert_eq!(
        got,
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "c"}]},
        })
    );
}

/// Test that NetworkPolicy compiles the same from trimmed Pods as from the Pods served: a
/// local pod isolated by a policy whose peer is the served pod of another node (by labels,
/// on its named sidecar port and a named container port), and the remote pod's address in
/// its rules either way.
#[test]
fn trim_pod_compiles_same_policy() {
    use std::collections::BTreeMap;
    use std::net::IpAddr;

    use crate::model::{ClusterState, Object};
    use crate::policy::{compile, LocalNode, PodRef};

    let mut remote = served();
    remote["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("deletionTimestamp");
    let local = json!({
        "metadata": {"name": "db-0", "namespace": "shop", "labels": {"app": "db"}},
        "spec": {"nodeName": "node-a", "containers": [{"name": "db", "image": "pg:16",
                 "ports": [{"name": "pg", "containerPort": 5432, "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "podIP": "10.244.0.5", "podIPs": [{"ip": "10.244.0.5"}]},
    });
    let policy = json!({
        "metadata": {"name": "db-from-web", "namespace": "shop"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "db"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                         "ports": [{"protocol": "TCP", "port": "pg"}]}],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                        "ports": [{"protocol": "TCP", "port": "admin"},
                                  {"protocol": "TCP", "port": "http"}]}],
        },
    });
    let state = |trim: bool| {
        let mut s = ClusterState::new();
        for pod in [remote.clone(), local.clone()] {
            let pod: Pod = serde_json::from_value(pod).expect("a valid Pod");
            let pod = if trim { super::pod(pod) } else { pod };
            s.apply(Object::Pod(pod)).expect("named");
        }
        let np = serde_json::from_value(policy.clone()).expect("a valid NetworkPolicy");
        s.apply(Object::NetworkPolicy(np)).expect("named");
        s
    };
    let local_pods: BTreeMap<(String, String), IpAddr> = BTreeMap::new();
    let node = LocalNode {
        node_name: "node-a",
        node_ips: &[],
        local_pods: &local_pods,
    };
    let served_set = compile(&state(false), &node);
    let trimmed_set = compile(&state(true), &node);
    assert_eq!(served_set, trimmed_set);
    let db = trimmed_set
        .endpoint(&PodRef::new("shop", "db-0"))
        .expect("db-0 is compiled");
    let rules = format!("{db:?}");
    assert!(
        rules.contains("10.244.1.7"),
        "the remote pod is not a peer: {rules}"
    );
}
