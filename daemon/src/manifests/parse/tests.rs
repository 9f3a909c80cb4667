//! Tests of manifest parsing, on real files in a temporary directory.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use super::*;
use crate::model::{ClusterState, DEFAULT_NAMESPACE, NAMESPACE_NAME_LABEL};

/// A shop namespace with two pods, a service, its endpoint slice, a network policy (the
/// example of the Kubernetes docs) and a node, as `kubectl get -o yaml` might leave them,
/// with comments, an empty document and a pod status.
const CLUSTER_YAML: &str = r#"# Demo cluster for standalone mode.
---
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    team: payments
---
apiVersion: v1
kind: Pod
metadata:
  name: frontend-7d4b9c
  namespace: shop
  labels:
    app: frontend
    tier: web
spec:
  nodeName: node-a
  containers:
  - name: nginx
    image: nginx:1.27
    ports:
    - name: http
      containerPort: 8080
    resources:
      requests:
        cpu: 100m
        memory: 64Mi
      limits:
        cpu: 1
status:
  phase: Running
  podIP: 10.244.1.5
  podIPs:
  - ip: 10.244.1.5
---
# Nothing but a comment: an empty document.
---
apiVersion: v1
kind: Pod
metadata:
  name: db-0
  namespace: shop
  labels:
    app: db
    role: db
spec:
  nodeName: node-a
  containers:
  - name: redis
    image: redis:7.4
    ports:
    - containerPort: 6379
---
apiVersion: v1
kind: Service
metadata:
  name: frontend
  namespace: shop
spec:
  type: ClusterIP
  clusterIP: 10.96.12.34
  selector:
    app: frontend
  ports:
  - name: http
    protocol: TCP
    port: 80
    targetPort: http
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: frontend-abc12
  namespace: shop
  labels:
    kubernetes.io/service-name: frontend
addressType: IPv4
ports:
- name: http
  protocol: TCP
  port: 8080
endpoints:
- addresses:
  - 10.244.1.5
  conditions:
    ready: true
  nodeName: node-a
  targetRef:
    kind: Pod
    name: frontend-7d4b9c
    namespace: shop
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: test-network-policy
  namespace: shop
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
  - Ingress
  - Egress
  ingress:
  - from:
    - ipBlock:
        cidr: 172.17.0.0/16
        except:
        - 172.17.1.0/24
    - namespaceSelector:
        matchLabels:
          project: myproject
    - podSelector:
        matchLabels:
          role: frontend
    ports:
    - protocol: TCP
      port: 6379
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
    ports:
    - protocol: TCP
      port: 5978
---
apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels:
    kubernetes.io/hostname: node-a
spec:
  podCIDR: 10.244.1.0/24
  podCIDRs:
  - 10.244.1.0/24
  - fd00:10:244:1::/64
"#;

fn write(dir: &tempfile::TempDir, name: &str, contents: &str) -> PathBuf {
    let path = dir.path().join(name);
    fs::write(&path, contents).expect("write manifest");
    path
}

fn state_of(objects: Vec<Object>) -> ClusterState {
    let mut state = ClusterState::new();
    for obj in objects {
        state.apply(obj).expect("apply");
    }
    state
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Test that a multi-document YAML file yields every object, in order, with a Pod's
/// addresses and phase kept from its status.
#[test]
fn parse_multi_document_yaml() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(&dir, "cluster.yaml", CLUSTER_YAML);
    let objects = parse_file(&path).expect("parse");
    let kinds: Vec<Kind> = objects.iter().map(Object::kind).collect();
    assert_eq!(
        kinds,
        [
            Kind::Namespace,
            Kind::Pod,
            Kind::Pod,
            Kind::Service,
            Kind::EndpointSlice,
            Kind::NetworkPolicy,
            Kind::Node
        ]
    );
    let state = state_of(objects);

    let frontend = state.pod("shop", "frontend-7d4b9c").expect("frontend pod");
    let status = frontend.status.as_ref().expect("a pod's status is kept");
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(status.pod_ip.as_deref(), Some("10.244.1.5"));
    let ips: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|i| i.ip.as_str())
        .collect();
    assert_eq!(ips, ["10.244.1.5"]);
    let spec = frontend.spec.as_ref().expect("pod spec");
    assert_eq!(spec.node_name.as_deref(), Some("node-a"));
    let web = labels(&[("app", "frontend")]);
    assert_eq!(state.pods_by_labels(Some("shop"), &web), [frontend]);
    let db = state.pod("shop", "db-0").expect("db pod");
    assert_eq!(
        db.metadata.labels,
        Some(labels(&[("app", "db"), ("role", "db")]))
    );

    let svc = state.service("shop", "frontend").expect("service");
    let svc_spec = svc.spec.as_ref().expect("service spec");
    assert_eq!(svc_spec.cluster_ip.as_deref(), Some("10.96.12.34"));
    let slices: Vec<_> = state
        .endpoint_slices_for_service("shop", "frontend")
        .collect();
    assert_eq!(slices.len(), 1);
    assert_eq!(slices[0].endpoints[0].addresses, ["10.244.1.5"]);

    let policy = state
        .network_policy("shop", "test-network-policy")
        .expect("policy");
    let policy_spec = policy.spec.as_ref().expect("policy spec");
    let selected = state
        .pods_by_selector(
            Some("shop"),
            policy_spec.pod_selector.as_ref().expect("selector"),
        )
        .expect("valid selector");
    assert_eq!(selected, [db]);

    assert_eq!(
        state.namespace_labels("shop"),
        labels(&[(NAMESPACE_NAME_LABEL, "shop"), ("team", "payments")])
    );
    let cidrs: Vec<String> = state
        .pod_cidrs("node-a")
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(cidrs, ["10.244.1.0/24", "fd00:10:244:1::/64"]);
}

/// Test that a JSON file with a single object parses.
#[test]
fn parse_json_single_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        &dir,
        "svc.json",
        r#"{
  "apiVersion": "v1",
  "kind": "Service",
  "metadata": {"name": "my-service", "namespace": "shop"},
  "spec": {
    "selector": {"app.kubernetes.io/name": "MyApp"},
    "ports": [{"protocol": "TCP", "port": 80, "targetPort": 9376}]
  }
}"#,
    );
    let objects = parse_file(&path).expect("parse");
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0].kind(), Kind::Service);
    assert_eq!(objects[0].namespace(), Some("shop"));
    assert_eq!(objects[0].name(), Some("my-service"));
}

/// Test that a JSON `List`, as `kubectl get -o json` prints, and a typed `PodList` whose
/// items leave out kind and apiVersion, are expanded, skipping kinds the model ignores.
#[test]
fn parse_json_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        &dir,
        "list.json",
        r#"{
  "apiVersion": "v1",
  "kind": "List",
  "metadata": {"resourceVersion": ""},
  "items": [
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "shop"},
     "spec": {"containers": [{"name": "c", "image": "busybox"}]}},
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"k": "v"}},
    {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-b"},
     "spec": {"podCIDR": "10.244.2.0/24"}}
  ]
}
{"apiVersion": "v1", "kind": "PodList", "items": [
  {"metadata": {"name": "b", "namespace": "shop"}, "spec": {"containers": []}}
]}"#,
    );
    let objects = parse_file(&path).expect("parse");
    let names: Vec<_> = objects.iter().map(|o| (o.kind(), o.name())).collect();
    assert_eq!(
        names,
        [
            (Kind::Pod, Some("a")),
            (Kind::Node, Some("node-b")),
            (Kind::Pod, Some("b"))
        ]
    );
}

/// Test that kinds the model does not hold, and unsupported API versions, are skipped.
#[test]
fn parse_skips_unknown_kinds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        &dir,
        "app.yml",
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx-deployment
spec:
  replicas: 3
  selector:
    matchLabels:
      app: nginx
  template:
    metadata:
      labels:
        app: nginx
    spec:
      containers:
      - name: nginx
        image: nginx:1.27
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  level: debug
---
apiVersion: extensions/v1beta1
kind: NetworkPolicy
metadata:
  name: legacy
",
    );
    assert_eq!(parse_file(&path).expect("parse"), []);
}

/// Test that invalid YAML is an error naming the file, the document and the file's line.
#[test]
fn parse_bad_yaml_names_file_and_document() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = "apiVersion: v1
kind: Namespace
metadata:
  name: ok
---
apiVersion: v1
kind: Pod
metadata:
  name: broken
  labels: {app: [web
spec: {}
";
    let path = write(&dir, "bad.yaml", text);
    let err = parse_file(&path).expect_err("bad yaml");
    let ManifestError::Yaml { position, line, .. } = &err else {
        panic!("expected a YAML error, got {err:?}");
    };
    assert_eq!(position.document, 2);
    let line = line.expect("a line");
    assert!((10..=12).contains(&line), "line {line}");
    let msg = err.to_string();
    assert!(
        msg.contains("bad.yaml") && msg.contains("document 2"),
        "{msg}"
    );
    assert!(msg.contains(&format!("line {line}")), "{msg}");
}

/// Test that a missing kind, apiVersion or name is an error saying which.
#[test]
fn parse_missing_fields_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("metadata: {name: x}\n", "has no kind"),
        ("kind: Pod\nmetadata: {name: x}\n", "Pod has no apiVersion"),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {}\n",
            "Pod has no metadata.name",
        ),
        ("apiVersion: v1\nkind: Pod\n", "Pod has no metadata.name"),
        ("- a\n- b\n", "found a list"),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: x, labels: [a]}\n",
            "invalid Pod",
        ),
    ];
    for (text, want) in cases {
        let path = write(&dir, "case.yaml", &format!("---\n{text}"));
        let msg = parse_file(&path).expect_err(text).to_string();
        assert!(
            msg.contains("case.yaml, document 1") && msg.contains(want),
            "{msg}"
        );
    }
    let path = write(
        &dir,
        "items.json",
        r#"{"apiVersion":"v1","kind":"List","items":[{}]}"#,
    );
    let msg = parse_file(&path)
        .expect_err("item without kind")
        .to_string();
    assert!(
        msg.contains("document 1, item 1: object has no kind"),
        "{msg}"
    );
}

/// Test that a namespaced object without a namespace lands in `default`.
#[test]
fn parse_default_namespace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        &dir,
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: nginx\nspec:\n  containers:\n  - name: nginx\n    image: nginx:1.27\n",
    );
    let objects = parse_file(&path).expect("parse");
    assert_eq!(objects[0].namespace(), Some(DEFAULT_NAMESPACE));
    let state = state_of(objects);
    assert!(state.pod(DEFAULT_NAMESPACE, "nginx").is_some());
}

/// Test that empty files, comment-only files and empty documents yield no objects.
#[test]
fn parse_empty_documents() {
    let dir = tempfile::tempdir().expect("tempdir");
    for text in [
        "",
        "\n",
        "# nothing\n",
        "---\n---\n",
        "---\n...\n",
        "null\n",
        "%YAML 1.2\n---\n",
    ] {
        let path = write(&dir, "empty.yaml", text);
        assert_eq!(parse_file(&path).expect(text), [], "{text:?}");
    }
}

/// Test that documents are split on `---` lines only, numbering the first one 1 whether
/// or not the file starts with a marker.
#[test]
fn split_documents_on_markers() {
    let docs = split_documents("a: 1\n--- \nb: '---'\n---x: 2\n--- {c: 3}\n");
    let texts: Vec<(usize, &str)> = docs
        .iter()
        .map(|d| (d.first_line, d.text.as_str()))
        .collect();
    assert_eq!(
        texts,
        [
            (1, "a: 1\n"),
            (2, "    \nb: '---'\n---x: 2\n"),
            (5, "    {c: 3}\n")
        ]
    );
    let docs = split_documents("# header\n---\na: 1\n");
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].first_line, 2);
}

/// Test that of a status only what the agent reads is kept: a Pod's phase, addresses and
/// conditions; the rest of a Pod's status (here container statuses with fields the agent
/// never decodes) and every other kind's status are dropped, whatever they hold.
#[test]
fn parse_keeps_only_the_pod_status_the_agent_reads() {
    let text = r#"
apiVersion: v1
kind: Pod
metadata: {name: api-1, namespace: shop}
spec:
  nodeName: node-b
  containers: [{name: api, image: api}]
status:
  phase: Running
  podIP: 10.244.2.7
  conditions: [{type: Ready, status: "False"}]
  containerStatuses: [{name: api, ready: "not a boolean", restartCount: many}]
  hostIP: 192.0.2.3
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec: {selector: {app: api}, ports: [{port: 80}]}
status: {loadBalancer: {ingress: "not a list"}}
"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(&dir, "status.yaml", text);
    let state = state_of(parse_file(&path).expect("parse"));
    let pod = state.pod("shop", "api-1").expect("pod");
    let st = pod.status.as_ref().expect("status kept");
    assert_eq!(st.pod_ip.as_deref(), Some("10.244.2.7"));
    assert_eq!(st.phase.as_deref(), Some("Running"));
    let ready: Vec<(&str, &str)> = st
        .conditions
        .iter()
        .flatten()
        .map(|c| (c.type_.as_str(), c.status.as_str()))
        .collect();
    assert_eq!(ready, [("Ready", "False")]);
    assert_eq!(st.container_statuses, None);
    assert_eq!(st.host_ip, None);
    let svc = state
        .services()
        .find(|s| s.metadata.name.as_deref() == Some("api"));
    assert_eq!(svc.expect("service").status, None);
}

/// Test that a file nested 100,000 deep (200 KB, as block sequences or flow lists) is
/// refused by the pre-scan with its line, rather than handed to the parser (whose cost
/// grows with the square of the depth), and that the size bound holds for bytes given.
#[test]
fn parse_refuses_deep_nesting_and_large_contents() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in [
        (
            "block.yaml",
            format!("kind: Pod\nx:\n{}1\n", "- ".repeat(100_000)),
        ),
        (
            "flow.yaml",
            format!("kind: Pod\nx: {}\n", "[".repeat(200_000)),
        ),
        ("flow.json", format!("{{\"x\":\n{}", "[".repeat(200_000))),
    ] {
        let path = write(&dir, name, &text);
        match parse_file(&path) {
            Err(ManifestError::TooDeep { limit, line, .. }) => {
                assert_eq!(limit, 100, "{name}");
                assert_eq!(line, if name == "block.yaml" { 3 } else { 2 }, "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    let big = vec![b'#'; 3 * 1024 * 1024 + 1];
    let err = parse_bytes(std::path::Path::new("big.yaml"), &big).expect_err("too large");
    assert!(matches!(err, ManifestError::TooLarge { .. }), "{err}");
}
