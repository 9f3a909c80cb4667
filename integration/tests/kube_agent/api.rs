//! The API side of the kube_agent tests: the objects the fake API server serves, in real
//! Kubernetes JSON as the API server sends it, and [`Api`], the fake server
//! (`test-support/src/kube_fake.rs`) running in a node's network namespace, whose lists
//! always agree with the watch events it has sent.

use std::{collections::BTreeMap, path::Path};

use serde_json::{json, Value};
use test_support::{
    node::{DEFAULT_POD_CIDR, NODE_IP},
    Netns, Pod,
};

use crate::fake::{FakeApi, Res};

/// The fixture's `--node-name`.
pub const NODE_NAME: &str = "node-1";
pub const NS: &str = "default";

pub fn service(name: &str, cluster_ip: &str, port: u16) -> Value {
    json!({
        "metadata": {"name": name, "namespace": NS, "uid": format!("9c2e4b7a-{name}")},
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

/// The EndpointSlice the controller writes for service `svc` with `pods` ready.
pub fn slice(svc: &str, pods: &[Pod]) -> Value {
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|p| {
            json!({
                "addresses": [p.ip.to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": NODE_NAME,
                "targetRef": {"kind": "Pod", "namespace": NS, "name": p.name},
            })
        })
        .collect();
    json!({
        "metadata": {
            "name": format!("{svc}-x7k2p"),
            "namespace": NS,
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

/// The Pod as kubelet reports it once CNI ADD gave it its address.
pub fn pod_object(p: &Pod, app: &str) -> Value {
    json!({
        "metadata": {"name": p.name, "namespace": NS, "labels": {"app": app}},
        "spec": {
            "nodeName": NODE_NAME,
            "containers": [{"name": "app", "image": "svcprobe",
                            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}],
        },
        "status": {
            "phase": "Running",
            "hostIP": NODE_IP.to_string(),
            "podIP": p.ip.to_string(),
            "podIPs": [{"ip": p.ip.to_string()}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

/// This node, with the pod CIDR the agent is not given on its command line.
pub fn node_object() -> Value {
    json!({
        "metadata": {"name": NODE_NAME, "labels": {"kubernetes.io/hostname": NODE_NAME}},
        "spec": {"podCIDR": DEFAULT_POD_CIDR, "podCIDRs": [DEFAULT_POD_CIDR]},
        "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP.to_string()}]},
    })
}

/// `namespace/name`, or `name` for a cluster-scoped object.
fn key(obj: &Value) -> String {
    let name = obj["metadata"]["name"].as_str().expect("named");
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}

/// The fake API server, running in the node namespace, and what it serves: lists always
/// agree with the events sent, as the API server's do.
pub struct Api {
    /// Dropped first: aborts the server while its runtime still runs.
    pub fake: FakeApi,
    pub rt: tokio::runtime::Runtime,
    served: BTreeMap<Res, BTreeMap<String, Value>>,
    rv: u64,
}

impl Api {
    /// Starts serving `initial` (at resourceVersion 100) on the loopback of `ns` and writes
    /// the kubeconfig for it to `kubeconfig`.
    pub fn start(ns: &Netns, kubeconfig: &Path, initial: Vec<(Res, Vec<Value>)>) -> Api {
        let mut served: BTreeMap<Res, BTreeMap<String, Value>> = BTreeMap::new();
        for (res, items) in initial {
            for mut obj in items {
                obj["metadata"]["resourceVersion"] = json!("100");
                served.entry(res).or_default().insert(key(&obj), obj);
            }
        }
        let lists = served
            .iter()
            .map(|(res, items)| (*res, items.values().cloned().collect()))
            .collect();
        let (fake, rt) = ns.run(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("tokio runtime");
            let fake = rt.block_on(FakeApi::start(lists));
            (fake, rt)
        });
        let written = fake
            .source()
            .kubeconfig
            .expect("the fake writes a kubeconfig");
        std::fs::copy(written, kubeconfig).expect("copy the kubeconfig");
        Api {
            fake,
            rt,
            served,
            rv: 100,
        }
    }

    /// Serves `obj` from now on: an ADDED or MODIFIED event, and in later lists.
    pub fn apply(&mut self, res: Res, mut obj: Value) {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let items = self.served.entry(res).or_default();
        let existed = items.insert(key(&obj), obj.clone()).is_some();
        self.update_list(res);
        self.send(res, if existed { "MODIFIED" } else { "ADDED" }, obj);
    }

    /// Deletes `name` (in [`NS`]): a DELETED event, and gone from later lists.
    pub fn delete(&mut self, res: Res, name: &str) {
        let mut obj = self.forget(res, name);
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.send(res, "DELETED", obj);
    }

    /// Deletes `name` (in [`NS`]) from later lists only, as a deletion the watcher missed.
    pub fn forget(&mut self, res: Res, name: &str) -> Value {
        let items = self.served.entry(res).or_default();
        let obj = items.remove(&format!("{NS}/{name}")).expect("served");
        self.rv += 1;
        self.update_list(res);
        obj
    }

    fn update_list(&self, res: Res) {
        let items = self.served.get(&res).map(|m| m.values().cloned().collect());
        self.fake
            .set_list(res, items.unwrap_or_default(), &self.rv.to_string());
    }

    /// One watch event; its object carries `kind` and `apiVersion`, list items do not.
    fn send(&self, res: Res, kind: &str, mut obj: Value) {
        obj["kind"] = json!(res.list_kind().trim_end_matches("List"));
        obj["apiVersion"] = json!(res.api_version());
        self.fake.send(res, kind, obj);
    }
}
