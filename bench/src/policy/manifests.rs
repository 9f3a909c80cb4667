//! The manifests of the NetworkPolicy scenarios, as the agent's standalone mode reads them:
//! Namespaces, Pods and 1,000 NetworkPolicies written as block YAML (the form `kubectl get -o
//! yaml` prints), generated deterministically so every node of a run, and every run, gets the
//! same set.
//!
//! ```text
//! shop/db             the server (CNI pod on this node): every policy selects it
//! frontend/web-client the client (CNI pod): in the peer set, allowed on 7000 and 5201
//! intruder/scanner    a CNI pod in no peer set: must be refused on the server's ports
//! probe/target        a CNI pod only the `policy-apply` toggle policy selects
//! peer pods           the rest of the peer set, in frontend, api, jobs, monitoring, shop
//! ```
//! Where the peer pods run depends on the scenario. For the traffic scenarios they are CNI
//! pods of the node under test (99 of them, 103 pods on the node), so the policies' peers are
//! on the same node as the server. For `agent-rss-policies` (998 of them) they are Pods of
//! other nodes (node-2 …, their CIDRs 10.244.2.0/24 …, `status.podIP` included, as the API
//! server would list them): the agent compiles them as peers of its pods' rules, and compiles
//! nothing onto them (their own nodes do).
//!
//! The 1,000 policies are ten kinds in turn (`i % 10`), each kind in variants (`i / 10`): the
//! server picked by `app`, by `tier`, by `In`, by `Exists` or by the empty selector; peers by
//! podSelector, namespaceSelector (by label and by `kubernetes.io/metadata.name`), both in one
//! peer, `matchExpressions` (In, NotIn, Exists), ipBlock with `except`, rules without peers;
//! ports numeric, named (the server's container ports), `endPort` ranges, TCP and UDP; some
//! policies also isolate the server's egress, some only that. Every port comes from one
//! catalogue of 10 TCP ranges and 2 UDP ports, so however the rules add up, no peer prefix of
//! the server's rule trie needs more than 16 ranges (`daemon::enforce` would write such a peer
//! empty, denied). The unit tests compile the set with the agent's own compiler and check the
//! verdicts, the peer set and the range counts.

use serde_json::{json, Map, Value};

/// The load generator's and iperf3's ports: the client must be allowed on both.
pub const LOAD_PORT: u16 = super::super::measure::LOAD_PORT;
pub const IPERF_PORT: u16 = 5201;

/// A pod made by the CNI plugin on the node under test, and its Pod manifest's contents.
pub struct CniPod {
    pub namespace: &'static str,
    pub name: &'static str,
    pub labels: &'static [(&'static str, &'static str)],
    /// Named container ports (name, port), TCP.
    pub ports: &'static [(&'static str, u16)],
}

pub const SERVER: CniPod = CniPod {
    namespace: "shop",
    name: "db",
    labels: &[("app", "db"), ("tier", "data"), ("role", "primary")],
    ports: &[
        ("load", LOAD_PORT),
        ("iperf", IPERF_PORT),
        ("pg", 5432),
        ("metrics", 9187),
    ],
};

pub const CLIENT: CniPod = CniPod {
    namespace: "frontend",
    name: "web-client",
    labels: &[
        ("app", "web"),
        ("role", "client"),
        ("version", "v1"),
        ("id", "client"),
    ],
    ports: &[],
};

pub const OUTSIDER: CniPod = CniPod {
    namespace: "intruder",
    name: "scanner",
    labels: &[("app", "scanner")],
    ports: &[],
};

pub const PROBE: CniPod = CniPod {
    namespace: "probe",
    name: "target",
    labels: &[("app", "probe-target")],
    ports: &[("load", LOAD_PORT)],
};

/// Namespaces and their labels (`kubernetes.io/metadata.name` is added by the agent, as the
/// API server adds it).
const NAMESPACES: [(&str, &[(&str, &str)]); 7] = [
    ("shop", &[("team", "shop"), ("tier", "data")]),
    ("frontend", &[("team", "web"), ("env", "prod")]),
    ("api", &[("team", "api"), ("env", "prod")]),
    ("jobs", &[("team", "data"), ("env", "batch")]),
    ("monitoring", &[("team", "obs"), ("purpose", "monitoring")]),
    ("intruder", &[("team", "qa"), ("env", "dev")]),
    ("probe", &[("team", "bench")]),
];

/// Peer pods per other node (addresses .1 to .250 of its /24) when they run elsewhere.
const PODS_PER_NODE: usize = 250;

/// The namespace of peer pod `i`: 30 % frontend, 25 % api, 20 % jobs, 10 % monitoring,
/// 15 % shop.
fn peer_namespace(i: usize) -> &'static str {
    match i % 20 {
        0..=5 => "frontend",
        6..=10 => "api",
        11..=14 => "jobs",
        15..=16 => "monitoring",
        _ => "shop",
    }
}

/// Peer pod `i`: where it is and what it is labelled, and, run on another node, its address
/// and node.
pub struct PeerPod {
    pub namespace: &'static str,
    pub name: String,
    pub labels: Vec<(&'static str, String)>,
    pub remote_ip: String,
    pub remote_node: String,
}

pub fn peer_pod(i: usize) -> PeerPod {
    let namespace = peer_namespace(i);
    let variant = i / 20;
    let pick = |apps: &[&'static str]| apps[variant % apps.len()];
    let mut labels: Vec<(&'static str, String)> = Vec::new();
    match namespace {
        "frontend" => {
            let app = pick(&["web", "bff", "web"]);
            labels.push(("app", app.into()));
            if app == "web" {
                labels.push(("role", "client".into()));
            }
        }
        "api" => {
            labels.push(("app", pick(&["api", "api-worker"]).into()));
            labels.push(("tier", "backend".into()));
        }
        "jobs" => {
            labels.push(("app", pick(&["etl", "report"]).into()));
            labels.push(("tier", "batch".into()));
        }
        "monitoring" => labels.push(("app", pick(&["prometheus", "alertmanager"]).into())),
        _ => {
            labels.push(("app", pick(&["orders", "cart", "checkout"]).into()));
            labels.push(("tier", "app".into()));
        }
    }
    labels.push(("version", format!("v{}", i % 3)));
    labels.push(("id", format!("p{i}")));
    let node = 2 + i / PODS_PER_NODE;
    PeerPod {
        namespace,
        name: format!("{}-{i}", labels[0].1),
        labels,
        remote_ip: format!("10.244.{node}.{}", 1 + i % PODS_PER_NODE),
        remote_node: format!("node-{node}"),
    }
}

fn labels_of<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Value {
    Value::Object(
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect(),
    )
}

/// Where the peer pods of [`objects`] run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peers {
    /// CNI pods of this node: Pod manifests without status (the endpoint map has them).
    Local,
    /// Pods of other nodes, with `spec.nodeName` and `status.podIP` as the API server has them.
    Remote,
}

/// The Namespaces, the Pod manifests of `cni` (no status: their addresses are the endpoint
/// map's) and of `peers` peer pods, each a document.
pub fn object_docs(peers: usize, at: Peers, cni: &[&CniPod]) -> Vec<Value> {
    let mut docs = Vec::new();
    for (name, labels) in NAMESPACES {
        docs.push(json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": labels_of(labels.iter().copied())},
        }));
    }
    let pod = |namespace: &str, name: &str, labels: Value, ports: Vec<Value>, node: &str| {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "app", "image": "app", "ports": ports}],
            },
        })
    };
    for p in cni {
        let ports: Vec<Value> = p
            .ports
            .iter()
            .map(|(name, port)| json!({"name": name, "containerPort": port, "protocol": "TCP"}))
            .collect();
        let labels = labels_of(p.labels.iter().copied());
        docs.push(pod(p.namespace, p.name, labels, ports, "node-1"));
    }
    for i in 0..peers {
        let p = peer_pod(i);
        let labels = labels_of(p.labels.iter().map(|(k, v)| (*k, v.as_str())));
        let ports = vec![json!({"name": "http", "containerPort": 8080, "protocol": "TCP"})];
        let mut doc = match at {
            Peers::Local => pod(p.namespace, &p.name, labels, ports, "node-1"),
            Peers::Remote => pod(p.namespace, &p.name, labels, ports, &p.remote_node),
        };
        if at == Peers::Remote {
            doc["status"] = json!({
                "phase": "Running",
                "podIP": p.remote_ip,
                "podIPs": [{"ip": p.remote_ip}],
            });
        }
        docs.push(doc);
    }
    docs
}

/// [`object_docs`] as one YAML stream.
pub fn objects(peers: usize, at: Peers, cni: &[&CniPod]) -> String {
    stream(&object_docs(peers, at, cni))
}

fn port(p: u16) -> Value {
    json!({"protocol": "TCP", "port": p})
}

fn port_range(p: u16, end: u16) -> Value {
    json!({"protocol": "TCP", "port": p, "endPort": end})
}

fn named(name: &str) -> Value {
    json!({"protocol": "TCP", "port": name})
}

fn udp(p: u16) -> Value {
    json!({"protocol": "UDP", "port": p})
}

fn match_labels(k: &str, v: &str) -> Value {
    json!({"matchLabels": {k: v}})
}

/// The server's selector in variant `v`: by `app`, by `tier`, `In`, `Exists`, or every pod of
/// the namespace.
fn server_selector(v: usize) -> Value {
    match v % 5 {
        0 => match_labels("app", "db"),
        1 => match_labels("tier", "data"),
        2 => json!({"matchExpressions": [
            {"key": "app", "operator": "In", "values": ["db", "db-replica"]}
        ]}),
        3 => json!({"matchExpressions": [{"key": "role", "operator": "Exists"}]}),
        _ => json!({}),
    }
}

/// Policy `i` when there are `peers` peer pods (some rules pick pods by `id`): a name and its
/// spec.
fn policy(i: usize, peers: usize) -> (String, Value) {
    let v = i / 10;
    let selector = server_selector(v);
    let (kind, spec) = match i % 10 {
        0 => {
            let app = ["orders", "cart", "checkout"][v % 3];
            let ports = if v.is_multiple_of(2) {
                vec![port(5432)]
            } else {
                vec![port(5432), port(6379)]
            };
            (
                format!("from-{app}"),
                json!({"ingress": [{
                    "from": [{"podSelector": match_labels("app", app)}],
                    "ports": ports,
                }]}),
            )
        }
        1 => (
            "from-frontend-clients".into(),
            json!({"ingress": [{
                "from": [{
                    "namespaceSelector": match_labels("kubernetes.io/metadata.name", "frontend"),
                    "podSelector": match_labels("role", "client"),
                }],
                "ports": [port(LOAD_PORT), port(IPERF_PORT)],
            }]}),
        ),
        2 => {
            let ports = if v.is_multiple_of(2) {
                vec![port(8080)]
            } else {
                vec![port(8080), port(8443)]
            };
            (
                "from-prod".into(),
                json!({"ingress": [{
                    "from": [{"namespaceSelector": match_labels("env", "prod")}],
                    "ports": ports,
                }]}),
            )
        }
        3 => {
            let n = peers.max(1);
            let ids: Vec<String> = [0, 31, 62]
                .iter()
                .map(|o| format!("p{}", (v * 7 + o) % n))
                .collect();
            (
                "from-listed-pods".into(),
                json!({"ingress": [{
                    "from": [{
                        "namespaceSelector": {},
                        "podSelector": {"matchExpressions": [
                            {"key": "id", "operator": "In", "values": ids},
                        ]},
                    }],
                    "ports": [port(6379)],
                }]}),
            )
        }
        4 => (
            "from-office-and-vpc".into(),
            json!({"ingress": [{
                "from": [
                    {"ipBlock": {"cidr": format!("192.168.{}.0/24", v % 256)}},
                    {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.244.0.0/16"]}},
                ],
                "ports": if v.is_multiple_of(2) {
                    vec![port(443)]
                } else {
                    vec![port(443), port(8443)]
                },
            }]}),
        ),
        5 => (
            "monitoring-and-dns".into(),
            json!({
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{
                    "from": [{
                        "namespaceSelector": match_labels("purpose", "monitoring"),
                        "podSelector": match_labels("app", "prometheus"),
                    }],
                    "ports": [port_range(9090, 9100), named("metrics")],
                }],
                "egress": [
                    {"to": [{"ipBlock": {"cidr": "10.96.0.10/32"}}], "ports": [udp(53), port(53)]},
                    {
                        "to": [{"namespaceSelector": match_labels("team", "obs")}],
                        "ports": [port(9091)],
                    },
                ],
            }),
        ),
        6 => (
            "from-web-named-ports".into(),
            json!({"ingress": [{
                "from": [{"namespaceSelector": match_labels("team", "web")}],
                "ports": [named("load"), named("iperf")],
            }]}),
        ),
        7 => (
            "from-services-not-batch".into(),
            json!({"ingress": [{
                "from": [{
                    "namespaceSelector": {"matchExpressions": [
                        {"key": "team", "operator": "Exists"},
                        {"key": "team", "operator": "NotIn", "values": ["qa", "bench", "shop"]},
                    ]},
                    "podSelector": {"matchExpressions": [
                        {"key": "tier", "operator": "NotIn", "values": ["batch"]},
                    ]},
                }],
                "ports": [port_range(15000, 15010)],
            }]}),
        ),
        8 => (
            "egress-api-and-internet".into(),
            json!({
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [{
                            "namespaceSelector": match_labels("team", "api"),
                            "podSelector": match_labels("app", "api"),
                        }],
                        "ports": [port(8080)],
                    },
                    {
                        "to": [{"ipBlock": {
                            "cidr": "0.0.0.0/0",
                            "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"],
                        }}],
                        "ports": [port(443)],
                    },
                ],
            }),
        ),
        _ => (
            "multi-rule".into(),
            json!({"ingress": [
                {"from": [{"podSelector": match_labels("app", "checkout")}], "ports": [port(5432)]},
                {
                    "from": [{"namespaceSelector": match_labels("team", "data")}],
                    "ports": [port(5432), udp(8125)],
                },
                {"ports": [port(443)]},
            ]}),
        ),
    };
    let mut spec = spec;
    spec["podSelector"] = selector;
    (format!("p{i:04}-{kind}"), spec)
}

/// `n` NetworkPolicies in the server's namespace, every one selecting the server, for
/// `peers` peer pods; each a document.
pub fn policy_docs(n: usize, peers: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let (name, spec) = policy(i, peers);
            network_policy(SERVER.namespace, &name, spec)
        })
        .collect()
}

/// [`policy_docs`] as one YAML stream.
pub fn policies(n: usize, peers: usize) -> String {
    stream(&policy_docs(n, peers))
}

/// Peer pods in the server's namespace: the policies with the empty podSelector isolate them
/// too.
pub fn peers_in_server_namespace(peers: usize) -> usize {
    (0..peers)
        .filter(|&i| peer_namespace(i) == SERVER.namespace)
        .count()
}

fn network_policy(namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
}

/// The `policy-apply` toggle: one policy selecting the probe pod, allowing the outsider on
/// the load port, or (`allow` false) some pod that does not exist, so the probe pod stays
/// isolated and the outsider is refused.
pub fn probe_policy(allow: bool) -> String {
    let from_app = if allow { "scanner" } else { "nobody" };
    stream(&[network_policy(
        PROBE.namespace,
        "probe-toggle",
        json!({
            "podSelector": match_labels("app", "probe-target"),
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{
                    "namespaceSelector":
                        match_labels("kubernetes.io/metadata.name", OUTSIDER.namespace),
                    "podSelector": match_labels("app", from_app),
                }],
                "ports": [port(LOAD_PORT)],
            }],
        }),
    )])
}

/// Documents as one YAML stream, `---` between them.
pub fn stream(docs: &[Value]) -> String {
    let mut out = String::new();
    for d in docs {
        if !out.is_empty() {
            out.push_str("---\n");
        }
        block(d, 0, &mut out);
    }
    out
}

/// A scalar, an empty map or an empty list, on one line. Strings are always double-quoted
/// (JSON's escapes are YAML's), so `"80"` stays a string and `yes` is not a boolean.
fn inline(v: &Value) -> Option<String> {
    match v {
        Value::Object(m) if m.is_empty() => Some("{}".into()),
        Value::Array(a) if a.is_empty() => Some("[]".into()),
        Value::Object(_) | Value::Array(_) => None,
        other => Some(other.to_string()),
    }
}

/// `v` in YAML's block style at `indent` spaces: maps one key a line, lists one `- ` item a
/// line at the key's indent, as `kubectl` prints them.
fn block(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => map(m, indent, out),
        Value::Array(items) => {
            for item in items {
                match inline(item) {
                    Some(s) => out.push_str(&format!("{pad}- {s}\n")),
                    None => {
                        // The item as if two deeper, its first line's indent turned into "- ".
                        let mut inner = String::new();
                        block(item, indent + 2, &mut inner);
                        out.push_str(&pad);
                        out.push_str("- ");
                        out.push_str(&inner[indent + 2..]);
                    }
                }
            }
        }
        other => out.push_str(&format!("{pad}{other}\n")),
    }
}

fn map(m: &Map<String, Value>, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    for (k, v) in m {
        let key = if k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "./-_".contains(c))
        {
            k.clone()
        } else {
            Value::String(k.clone()).to_string()
        };
        match inline(v) {
            Some(s) => out.push_str(&format!("{pad}{key}: {s}\n")),
            None => {
                out.push_str(&format!("{pad}{key}:\n"));
                // Lists at the key's indent, maps two deeper.
                let deeper = if v.is_array() { indent } else { indent + 2 };
                block(v, deeper, out);
            }
        }
    }
}

#[cfg(test)]
#[path = "manifests_tests.rs"]
mod tests;
