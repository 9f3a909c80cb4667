//! The agent's memory in API mode with the pods of other nodes, on a node of its own:
//!
//! - `agent-rss-remote-pods`: per round a fresh node whose agent follows the fake Kubernetes
//!   API server of the tests (test-support's `kube_fake`, run in the node's namespace), which
//!   serves this node, another node and [`REMOTE_PODS`] pods of that other node in realistic
//!   Pod JSON (labels, owner, annotations, containers with ports, env, probes and volume
//!   mounts, volumes, managedFields, status with conditions and container statuses, about
//!   [`pod_json_len`] bytes each, as `kubectl get pod -o json` shows a Deployment's replica).
//!   The agent is ready once it has listed every kind; after [`SETTLE`] its VmRSS and VmHWM
//!   (`sluice`). The same with no pod served (`sluice-empty`) is the baseline. The
//!   difference divided by the pod count is what one remote pod costs (the summary line).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_support::kube_fake::{FakeApi, Res};
use test_support::node::{DEFAULT_POD_CIDR, NODE_IP};
use test_support::{Node, NodeOptions};

use super::{
    check_interrupted,
    policy::system::agent_memory,
    report::{num, Results},
    run::Config,
    Error, Result,
};

pub const SCENARIOS: [&str; 1] = ["agent-rss-remote-pods"];
/// The pods of other nodes the agent is served.
pub const REMOTE_PODS: usize = 5_000;
/// After the agent is ready: its first reconcile is done and its allocator settled.
const SETTLE: Duration = Duration::from_secs(4);
/// The fixture's `--node-name`.
const NODE_NAME: &str = "node-1";
const NS: &str = "bench";

/// Runs `agent-rss-remote-pods` if wanted; returns a line for the run's summary.
pub fn run(cfg: &Config, res: &mut Results) -> Result<Vec<String>> {
    let scenario = SCENARIOS[0];
    if !cfg.wants(scenario) {
        return Ok(Vec::new());
    }
    let n_rounds = if cfg.quick { 1 } else { cfg.rounds };
    eprintln!(
        "\n{scenario} (API mode, {REMOTE_PODS} pods of another node, {} bytes of JSON each; \
         a fresh node and agent per round)",
        pod_json_len()
    );
    let mut line = String::new();
    for round in 0..n_rounds {
        for (system, pods) in [("sluice-empty", 0), ("sluice", REMOTE_PODS)] {
            check_interrupted()?;
            let t = Instant::now();
            let (mib, peak) = measure(cfg, pods)?;
            res.add(scenario, "mib", "MiB", false, system, mib);
            res.add(scenario, "peak-mib", "MiB", false, system, peak);
            eprintln!(
                "  round {}/{n_rounds} {system:<16} VmRSS {} MiB (peak {})  ({:.1} s)",
                round + 1,
                num(mib),
                num(peak),
                t.elapsed().as_secs_f64()
            );
        }
        let median = |system: &str| res.median(scenario, "mib", system);
        if let (Some(full), Some(empty)) = (median("sluice"), median("sluice-empty")) {
            line = format!(
                "VmRSS {} MiB with {REMOTE_PODS} remote pods, {} MiB with none: {} KiB a pod",
                num(full),
                num(empty),
                num((full - empty) * 1024.0 / REMOTE_PODS as f64)
            );
        }
    }
    Ok(vec![format!("{scenario}: {line}")])
}

/// One agent served `pods` remote pods: its VmRSS and VmHWM in MiB once ready and settled.
fn measure(cfg: &Config, pods: usize) -> Result<(f64, f64)> {
    let dir = tempfile::tempdir().map_err(|e| Error::msg(format!("tempdir: {e}")))?;
    let kubeconfig = dir.path().join("kubeconfig");
    let mut agent_args = vec!["--kubeconfig".to_owned(), kubeconfig.display().to_string()];
    agent_args.extend(cfg.agent_args.iter().cloned());
    let mut node = Node::new(NodeOptions {
        pod_cidr: None,
        agent_args,
        start_agent: false,
        ..NodeOptions::default()
    });
    let served = vec![
        (
            Res::Namespaces,
            vec![json!({"metadata": {"name": NS, "labels": {"kubernetes.io/metadata.name": NS}}})],
        ),
        (
            Res::Nodes,
            vec![
                node_json(NODE_NAME, DEFAULT_POD_CIDR, &NODE_IP.to_string()),
                node_json("node-2", "10.245.0.0/16", "192.0.2.3"),
            ],
        ),
        (Res::Pods, (0..pods).map(pod_json).collect()),
    ];
    // The server listens on the node namespace's loopback (kube_agent's tests explain why).
    let (fake, rt) = node.node.run(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let fake = rt.block_on(FakeApi::start(served));
        (fake, rt)
    });
    let written = fake
        .source()
        .kubeconfig
        .ok_or_else(|| Error::msg("the fake API server wrote no kubeconfig"))?;
    std::fs::copy(&written, &kubeconfig)
        .map_err(|e| Error::msg(format!("copy the kubeconfig: {e}")))?;
    // Ready means every kind was listed: all the pods are in the agent's state.
    node.start_agent();
    let listed = node.agent_log().lines().any(|l| {
        l.contains("listed") && l.contains(&format!("objects={pods}")) && l.contains("kind=Pod")
    });
    if !listed {
        return Err(Error::msg(format!(
            "the agent did not log listing {pods} pods:\n{}",
            node.agent_log()
        )));
    }
    std::thread::sleep(SETTLE);
    let memory = agent_memory(&node)?;
    drop(node);
    drop(fake);
    drop(rt);
    Ok(memory)
}

fn node_json(name: &str, cidr: &str, ip: &str) -> Value {
    json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"addresses": [
            {"type": "InternalIP", "address": ip},
            {"type": "Hostname", "address": name},
        ]},
    })
}

/// The size of one remote pod's JSON as served.
pub fn pod_json_len() -> usize {
    pod_json(0).to_string().len()
}

/// Pod `i` of node-2, a replica of one of 50 Deployments, as the API server serves it.
pub fn pod_json(i: usize) -> Value {
    let app = format!("app-{}", i % 50);
    let hash = format!("7d{:08x}", (i % 50) * 7919);
    let name = format!("{app}-{hash}-{i:05}");
    let ip = format!("10.245.{}.{}", i / 250, i % 250 + 2);
    let ts = "2026-11-30T08:00:00Z";
    json!({
        "metadata": {
            "name": name,
            "generateName": format!("{app}-{hash}-"),
            "namespace": NS,
            "uid": format!("{i:08x}-5d7e-4a43-9f1e-0d5d7c1c9a11"),
            "resourceVersion": "100",
            "creationTimestamp": ts,
            "labels": {
                "app.kubernetes.io/name": app,
                "app.kubernetes.io/part-of": "shop",
                "pod-template-hash": hash,
                "tier": if i.is_multiple_of(2) { "web" } else { "backend" },
            },
            "annotations": {
                "kubectl.kubernetes.io/restartedAt": ts,
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "9090",
            },
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-{hash}"),
                "uid": format!("{:08x}-1111-2222-3333-444455556666", i % 50),
                "controller": true, "blockOwnerDeletion": true,
            }],
            "managedFields": [
                {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                 "time": ts, "fieldsType": "FieldsV1", "fieldsV1": {
                    "f:metadata": {"f:generateName": {}, "f:labels": {".": {},
                        "f:app.kubernetes.io/name": {}, "f:pod-template-hash": {}, "f:tier": {}},
                        "f:ownerReferences": {".": {}, "k:{\"uid\":\"x\"}": {}}},
                    "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:env": {},
                        "f:image": {}, "f:ports": {}, "f:readinessProbe": {}, "f:resources": {}}},
                        "f:volumes": {}}}},
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": ts,
                 "fieldsType": "FieldsV1", "subresource": "status", "fieldsV1": {"f:status": {
                    "f:conditions": {}, "f:containerStatuses": {}, "f:hostIP": {},
                    "f:phase": {}, "f:podIP": {}, "f:podIPs": {}, "f:startTime": {}}}},
            ],
        },
        "spec": {
            "nodeName": "node-2",
            "serviceAccountName": "default",
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler",
            "containers": [{
                "name": "app",
                "image": format!("registry.example/shop/{app}:1.4.2"),
                "imagePullPolicy": "IfNotPresent",
                "args": ["--listen=:8080", "--metrics=:9090"],
                "env": [
                    {"name": "MODE", "value": "production"},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                ],
                "ports": [
                    {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                    {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
                ],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                              "limits": {"memory": "256Mi"}},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"},
                                   "periodSeconds": 10, "timeoutSeconds": 1,
                                   "successThreshold": 1, "failureThreshold": 3},
                "volumeMounts": [{"name": "kube-api-access", "readOnly": true,
                                  "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
            }],
            "volumes": [{"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt",
                               "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            ]}}],
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                 "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                 "effect": "NoExecute", "tolerationSeconds": 300},
            ],
        },
        "status": {
            "phase": "Running",
            "qosClass": "Burstable",
            "hostIP": "192.0.2.3",
            "hostIPs": [{"ip": "192.0.2.3"}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": ts,
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": ts},
                {"type": "Initialized", "status": "True", "lastTransitionTime": ts},
                {"type": "Ready", "status": "True", "lastTransitionTime": ts},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": ts},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": ts},
            ],
            "containerStatuses": [{
                "name": "app", "ready": true, "started": true, "restartCount": 0,
                "image": format!("registry.example/shop/{app}:1.4.2"),
                "imageID": format!("registry.example/shop/{app}@sha256:{:064x}", i % 50),
                "containerID": format!("containerd://{i:064x}"),
                "state": {"running": {"startedAt": ts}},
            }],
        },
    })
}
