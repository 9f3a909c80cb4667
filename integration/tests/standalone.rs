//! The agent in standalone mode (`--manifests DIR`): the pod CIDR comes from the Node object in
//! the directory, pod labels from Pod objects in YAML or JSON files, and the agent follows the
//! files as they are rewritten, replaced and deleted, and survives broken ones.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    os::unix::fs::MetadataExt as _,
    time::{Duration, Instant},
};

use serde_json::Value;
use test_support::{unique, CniCall, Netns, Node, NodeOptions, Pod};

/// The pod CIDR the Node manifest gives node-1.
const POD_CIDR: &str = "10.250.0.0/24";

/// How long to wait for the agent to pick up a change. The spec says within a second; this is
/// a bound against hanging, the observed latency is printed.
const FOLLOW_DEADLINE: Duration = Duration::from_secs(5);

const NODE_YAML: &str = "\
apiVersion: v1
kind: Node
metadata:
  name: node-1
  labels:
    kubernetes.io/hostname: node-1
    kubernetes.io/os: linux
spec:
  podCIDR: 10.250.0.0/24
";

/// A namespace and two pods, as `kubectl get -o yaml` would give them (trimmed).
const SHOP_YAML: &str = "\
# The shop: a web frontend and its database.
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    team: storefront
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  labels:
    app.kubernetes.io/name: web
    tier: frontend
  annotations:
    kubernetes.io/description: storefront
spec:
  containers:
  - name: nginx
    image: nginx:1.27
    ports:
    - containerPort: 80
      protocol: TCP
    resources:
      requests:
        cpu: 100m
        memory: 64Mi
---
apiVersion: v1
kind: Pod
metadata:
  name: db
  namespace: shop
  labels:
    app.kubernetes.io/name: postgres
    tier: backend
spec:
  containers:
  - name: postgres
    image: postgres:16
    env:
    - name: POSTGRES_PASSWORD
      value: example
    ports:
    - containerPort: 5432
";

fn standalone_node() -> Node {
    Node::new(NodeOptions {
        pod_cidr: None,
        manifests: true,
        start_agent: false,
        ..NodeOptions::default()
    })
}

fn write_manifest(node: &Node, name: &str, contents: &str) {
    std::fs::write(node.manifests_dir().join(name), contents)
        .unwrap_or_else(|e| panic!("write manifest {name}: {e}"));
}

/// ADDs a pod of namespace `ns` (`Node::add_pod` always says `default`).
fn add_pod_in(node: &Node, ns: &str, name: &str) -> Pod {
    let netns = Netns::new(&unique("slp"));
    let cid = unique("c");
    let mut call = CniCall::attachment("ADD", "1.0.0", &cid, &netns.path(), name);
    call.args = Some(format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={cid}"
    ));
    let out = node.cni(&call);
    out.assert_ok();
    let result = out.json();
    let ip: Ipv4Addr = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no IPv4 address in {result}"));
    Pod {
        ns: netns,
        name: name.into(),
        cid,
        ip,
        result,
    }
}

fn in_pod_cidr(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    (a, b, c) == (10, 250, 0)
}

/// Labels of every endpoint, by `namespace/pod`, from `sluicectl endpoints -o json`.
fn endpoint_labels(node: &Node) -> BTreeMap<String, BTreeMap<String, String>> {
    let v = node.sluicectl_json(&["endpoints"]);
    v.as_array()
        .unwrap_or_else(|| panic!("endpoints is not a list: {v}"))
        .iter()
        .map(|e| {
            let key = format!(
                "{}/{}",
                e["namespace"].as_str().unwrap_or_default(),
                e["pod"].as_str().unwrap_or_default()
            );
            let labels = serde_json::from_value(e["labels"].clone())
                .unwrap_or_else(|err| panic!("bad labels in {e}: {err}"));
            (key, labels)
        })
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Waits until every `namespace/pod` in `want` is listed with exactly those labels; prints
/// how long that took after `since`.
fn wait_for_labels(
    node: &Node,
    what: &str,
    since: Instant,
    want: &[(&str, BTreeMap<String, String>)],
) {
    let deadline = since + FOLLOW_DEADLINE;
    loop {
        let have = endpoint_labels(node);
        if want.iter().all(|(k, l)| have.get(*k) == Some(l)) {
            println!(
                "{what}: reflected in sluicectl endpoints after {:?}",
                since.elapsed()
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reflected within {FOLLOW_DEADLINE:?}; want {want:?}, have {have:?}\n{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Test that without --pod-cidr the agent takes the pod CIDR from the Node object in the
/// manifests directory: pods get addresses in it and reach each other.
#[test]
fn standalone_pod_cidr_from_node_manifest() {
    let mut node = standalone_node();
    write_manifest(&node, "node.yaml", NODE_YAML);
    node.start_agent();
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    for p in [&a, &b] {
        assert!(
            in_pod_cidr(p.ip),
            "pod {} got {} outside {POD_CIDR}",
            p.name,
            p.ip
        );
    }
    assert!(a.ping(b.ip), "a cannot ping b");
    let conf: Value =
        serde_json::from_str(&std::fs::read_to_string(node.conflist_path()).unwrap()).unwrap();
    assert_eq!(
        conf["plugins"][0]["podCIDRs"],
        serde_json::json!([POD_CIDR])
    );
    let s = node.sluicectl_json(&["status"]);
    assert_eq!(s["podCidrs"], serde_json::json!([POD_CIDR]), "{s}");
    assert_eq!(
        s["manifests"],
        node.manifests_dir().display().to_string(),
        "{s}"
    );
}

/// Test that pod labels from a multi-document YAML file show up in `sluicectl endpoints`, and
/// follow the file rewritten in place, replaced by a rename and deleted.
#[test]
fn standalone_labels_follow_yaml_rewrite_rename_delete() {
    let mut node = standalone_node();
    write_manifest(&node, "node.yaml", NODE_YAML);
    write_manifest(&node, "shop.yaml", SHOP_YAML);
    node.start_agent();
    let web = add_pod_in(&node, "shop", "web");
    let _db = add_pod_in(&node, "shop", "db");
    let _other = node.add_pod("other");
    assert!(in_pod_cidr(web.ip));

    let web_v1 = labels(&[("app.kubernetes.io/name", "web"), ("tier", "frontend")]);
    let db_v1 = labels(&[("app.kubernetes.io/name", "postgres"), ("tier", "backend")]);
    wait_for_labels(
        &node,
        "initial manifests",
        Instant::now(),
        &[
            ("shop/web", web_v1),
            ("shop/db", db_v1.clone()),
            ("default/other", labels(&[])),
        ],
    );

    // In place: same inode, new contents.
    let path = node.manifests_dir().join("shop.yaml");
    let inode = std::fs::metadata(&path).unwrap().ino();
    let v2 = SHOP_YAML.replace(
        "    tier: frontend\n",
        "    tier: frontend\n    version: v2\n",
    );
    let t = Instant::now();
    std::fs::write(&path, &v2).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
    let web_v2 = labels(&[
        ("app.kubernetes.io/name", "web"),
        ("tier", "frontend"),
        ("version", "v2"),
    ]);
    wait_for_labels(
        &node,
        "rewrite in place",
        t,
        &[("shop/web", web_v2), ("shop/db", db_v1)],
    );

    // Replaced by a rename, as editors and ConfigMap volumes do.
    let v3 = SHOP_YAML
        .replace("    tier: frontend\n", "    tier: edge\n    version: v3\n")
        .replace("    tier: backend\n", "    tier: data\n");
    let tmp = node.manifests_dir().join(".shop.yaml.new");
    std::fs::write(&tmp, v3).unwrap();
    let t = Instant::now();
    std::fs::rename(&tmp, &path).unwrap();
    assert_ne!(std::fs::metadata(&path).unwrap().ino(), inode);
    wait_for_labels(
        &node,
        "replace by rename",
        t,
        &[
            (
                "shop/web",
                labels(&[
                    ("app.kubernetes.io/name", "web"),
                    ("tier", "edge"),
                    ("version", "v3"),
                ]),
            ),
            (
                "shop/db",
                labels(&[("app.kubernetes.io/name", "postgres"), ("tier", "data")]),
            ),
        ],
    );

    // Deleted: the pods stay (they are in the datapath) but lose their labels.
    let t = Instant::now();
    std::fs::remove_file(&path).unwrap();
    wait_for_labels(
        &node,
        "delete",
        t,
        &[("shop/web", labels(&[])), ("shop/db", labels(&[]))],
    );
    let all = endpoint_labels(&node);
    assert_eq!(
        all.keys().collect::<Vec<_>>(),
        ["default/other", "shop/db", "shop/web"]
    );
}

/// Test that JSON manifests work like YAML ones: a Node giving the pod CIDR, and a `List` of
/// pods whose labels show up in `sluicectl endpoints`.
#[test]
fn standalone_json_manifests() {
    let mut node = standalone_node();
    let node_json = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "node-1"},
        "spec": {"podCIDR": POD_CIDR, "podCIDRs": [POD_CIDR]}
    });
    let pods_json = serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": ""},
        "items": [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "cache", "namespace": "default",
                             "labels": {"app": "redis", "role": "cache"}},
                "spec": {"containers": [{"name": "redis", "image": "redis:7"}]}
            },
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "queue", "labels": {"app": "rabbitmq"}},
                "spec": {"containers": [{"name": "rabbitmq", "image": "rabbitmq:3"}]}
            }
        ]
    });
    write_manifest(
        &node,
        "node.json",
        &serde_json::to_string_pretty(&node_json).unwrap(),
    );
    write_manifest(
        &node,
        "pods.json",
        &serde_json::to_string_pretty(&pods_json).unwrap(),
    );
    node.start_agent();
    let cache = node.add_pod("cache");
    let queue = node.add_pod("queue");
    assert!(in_pod_cidr(cache.ip) && in_pod_cidr(queue.ip));
    wait_for_labels(
        &node,
        "JSON list",
        Instant::now(),
        &[
            (
                "default/cache",
                labels(&[("app", "redis"), ("role", "cache")]),
            ),
            // No namespace in the manifest means `default`, as with kubectl apply.
            ("default/queue", labels(&[("app", "rabbitmq")])),
        ],
    );
}

/// Whether the agent process is alive (not exited, not a zombie waiting to be reaped).
fn agent_alive(node: &Node) -> bool {
    let Some(pid) = node.agent_pid() else {
        return false;
    };
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(String::from))
        })
        .is_some_and(|state| state != "Z" && state != "X")
}

/// Waits until the agent log mentions `needle`.
fn wait_for_log(node: &Node, needle: &str) {
    let deadline = Instant::now() + FOLLOW_DEADLINE;
    while !node.agent_log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "agent log never mentioned {needle}:\n{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Test that invalid YAML, present at start or written later, does not crash the agent: it
/// warns about the file, keeps the objects of the other files (and the last good ones of a
/// file that breaks), and keeps following changes and serving pods.
#[test]
fn standalone_broken_manifest_does_not_crash_agent() {
    let mut node = standalone_node();
    write_manifest(&node, "node.yaml", NODE_YAML);
    write_manifest(&node, "shop.yaml", SHOP_YAML);
    write_manifest(
        &node,
        "broken.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: [unclosed\n  labels: {app: x\n",
    );
    node.start_agent();
    wait_for_log(&node, "broken.yaml");
    let web = add_pod_in(&node, "shop", "web");
    let web_v1 = labels(&[("app.kubernetes.io/name", "web"), ("tier", "frontend")]);
    wait_for_labels(
        &node,
        "good file next to a broken one",
        Instant::now(),
        &[("shop/web", web_v1.clone())],
    );

    // Breaks while the agent runs: a new broken file, and the good file half-written.
    write_manifest(&node, "later.yml", ":\n  - ]]] {{\n\t- not yaml: [\n");
    let half = &SHOP_YAML[..SHOP_YAML.find("spec:").unwrap() - 3];
    write_manifest(&node, "shop.yaml", &format!("{half}\n  labels: [oops\n"));
    wait_for_log(&node, "later.yml");
    // A file written after the broken ones: a rescan that sees it has read them too.
    write_manifest(
        &node,
        "late.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: late\n  namespace: default\n  labels:\n    app: late\nspec:\n  containers:\n  - name: app\n    image: busybox:1.36\n",
    );
    let late = node.add_pod("late");
    wait_for_labels(
        &node,
        "new file after broken ones",
        Instant::now(),
        &[
            ("default/late", labels(&[("app", "late")])),
            ("shop/web", web_v1),
        ],
    );
    assert!(agent_alive(&node), "agent died:\n{}", node.agent_log());
    let s = node.sluicectl_json(&["status"]);
    assert_eq!(s["datapathLoaded"], true, "{s}");
    assert!(late.ping(web.ip), "pods cannot reach each other");
}

/// A pod of namespace `ns` named `name` with one label.
fn pod_yaml(ns: &str, name: &str, key: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    \
         {key}: {value}\nspec:\n  containers:\n  - name: app\n    image: busybox:1.36\n"
    )
}

/// The agent log's lines that mention `needle`.
fn log_lines_with(node: &Node, needle: &str) -> Vec<String> {
    node.agent_log()
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect()
}

/// The manifest reader's counts in `sluicectl status -o json`.
fn reader_status(node: &Node) -> Value {
    let s = node.sluicectl_json(&["status"]);
    s["manifestReader"].clone()
}

/// Test that a Pod defined a second time, in a later file, does not replace the first
/// definition (whose labels keep serving); the duplicate is an error in the log naming both
/// files and is counted in `sluicectl status`; once the first file is removed the duplicate
/// takes over.
#[test]
fn standalone_duplicate_pod_keeps_first_definition() {
    let mut node = standalone_node();
    write_manifest(&node, "node.yaml", NODE_YAML);
    write_manifest(&node, "shop.yaml", SHOP_YAML);
    node.start_agent();
    let _web = add_pod_in(&node, "shop", "web");
    let _other = node.add_pod("other");
    let web_v1 = labels(&[("app.kubernetes.io/name", "web"), ("tier", "frontend")]);
    wait_for_labels(
        &node,
        "initial manifests",
        Instant::now(),
        &[("shop/web", web_v1.clone())],
    );

    // Later in path order, and later in time: a duplicate either way.
    write_manifest(
        &node,
        "zz-dup.yaml",
        &pod_yaml("shop", "web", "app.kubernetes.io/name", "impostor"),
    );
    // Written after the duplicate: whatever has read this file has read the duplicate.
    write_manifest(
        &node,
        "other.yaml",
        &pod_yaml("default", "other", "seen", "yes"),
    );
    wait_for_labels(
        &node,
        "a duplicate next to the first definition",
        Instant::now(),
        &[
            ("default/other", labels(&[("seen", "yes")])),
            ("shop/web", web_v1),
        ],
    );
    let dup = log_lines_with(&node, "zz-dup.yaml");
    assert!(
        dup.iter()
            .any(|l| l.contains("ERROR") && l.contains("shop.yaml") && l.contains("shop/web")),
        "no error naming both files:\n{}",
        node.agent_log()
    );
    let r = reader_status(&node);
    assert_eq!(r["duplicates"], 1, "{r}");
    assert_eq!(r["rejectedFiles"], 0, "{r}");

    std::fs::remove_file(node.manifests_dir().join("shop.yaml")).unwrap();
    wait_for_labels(
        &node,
        "the first definition removed",
        Instant::now(),
        &[(
            "shop/web",
            labels(&[("app.kubernetes.io/name", "impostor")]),
        )],
    );
    assert_eq!(reader_status(&node)["duplicates"], 0);
}

/// Test that manifests nested 100,000 deep (200 KB) and a 1 GiB sparse file do not hold up
/// a change in another file: they are refused before parsing (each logged with its reason)
/// and the change is applied as usual.
#[test]
fn standalone_deep_or_huge_manifest_does_not_stall_others() {
    let mut node = standalone_node();
    write_manifest(&node, "node.yaml", NODE_YAML);
    node.start_agent();
    let _other = node.add_pod("other");
    let head = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: deep\nspec:\n  x:\n";
    write_manifest(
        &node,
        "deep-block.yaml",
        &format!("{head}{}1\n", "- ".repeat(100_000)),
    );
    write_manifest(
        &node,
        "deep-flow.yaml",
        &format!("{head}    {}\n", "[".repeat(200_000)),
    );
    let huge = std::fs::File::create(node.manifests_dir().join("huge.yaml")).unwrap();
    huge.set_len(1 << 30).unwrap();
    drop(huge);
    let t = Instant::now();
    write_manifest(
        &node,
        "other.yaml",
        &pod_yaml("default", "other", "app", "other"),
    );
    wait_for_labels(
        &node,
        "a change next to deep and huge files",
        t,
        &[("default/other", labels(&[("app", "other")]))],
    );
    for (file, reason) in [
        ("deep-block.yaml", "nests deeper than 100 levels"),
        ("deep-flow.yaml", "nests deeper than 100 levels"),
        ("huge.yaml", "larger than 3145728 bytes"),
    ] {
        wait_for_log(&node, file);
        let lines = log_lines_with(&node, file);
        assert!(
            lines.iter().any(|l| l.contains(reason)),
            "{file}: no {reason:?} in {lines:?}"
        );
    }
    let r = reader_status(&node);
    assert_eq!(r["rejectedFiles"], 3, "{r}");
}

/// Test that a FIFO, a dangling symlink and a socket named like manifests, present at start
/// or made later, each get one log line however many changes follow, and that the agent
/// (which must never open the FIFO blocking) keeps following changes.
#[test]
fn standalone_special_entries_logged_once() {
    let mut node = standalone_node();
    write_manifest(&node, "node.yaml", NODE_YAML);
    let dir = node.manifests_dir();
    let fifo = nix::sys::stat::Mode::from_bits_truncate(0o600);
    nix::unistd::mkfifo(&dir.join("fifo.yaml"), fifo).unwrap();
    std::os::unix::fs::symlink(dir.join("nowhere.yaml"), dir.join("dangling.yaml")).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(dir.join("socket.yaml")).unwrap();
    node.start_agent();
    let _other = node.add_pod("other");
    nix::unistd::mkfifo(&dir.join("late-fifo.yml"), fifo).unwrap();
    for version in ["v1", "v2", "v3"] {
        write_manifest(
            &node,
            "other.yaml",
            &pod_yaml("default", "other", "version", version),
        );
        wait_for_labels(
            &node,
            &format!("version {version}"),
            Instant::now(),
            &[("default/other", labels(&[("version", version)]))],
        );
    }
    for (name, what) in [
        ("fifo.yaml", "a FIFO"),
        ("dangling.yaml", "a dangling symlink"),
        ("socket.yaml", "a socket"),
        ("late-fifo.yml", "a FIFO"),
    ] {
        let lines = log_lines_with(&node, &format!("/{name}"));
        assert_eq!(lines.len(), 1, "{name}: {lines:#?}");
        assert!(lines[0].contains(what), "{name}: {}", lines[0]);
    }
    let r = reader_status(&node);
    assert_eq!(r["rejectedFiles"], 4, "{r}");
    assert!(agent_alive(&node), "agent died:\n{}", node.agent_log());
}

/// Waits until the log file at `path` mentions `needle` (for a thread that cannot hold the
/// node), or panics after `FOLLOW_DEADLINE` with the log.
fn wait_for_log_at(path: &std::path::Path, needle: &str) {
    let deadline = Instant::now() + FOLLOW_DEADLINE;
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "agent log never mentioned {needle}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The Node manifest of node-1 without `spec.podCIDR`, as on a cluster whose node IPAM
/// controller has not got to it yet.
const NODE_YAML_NO_CIDR: &str = "\
apiVersion: v1
kind: Node
metadata:
  name: node-1
spec: {}
";

/// Test that without --pod-cidr an agent whose Node does not exist yet, then exists without
/// a pod CIDR, waits (one log line naming the Node and what it waits for, each time that
/// changes; no CNI config offered to the runtime) instead of exiting, and gets ready with the
/// Node's pod CIDR once the Node has one, as a node booting into a cluster does.
#[test]
fn standalone_agent_waits_for_its_node() {
    let mut node = standalone_node();
    let log = node.path("agent.log");
    let conflist = node.conflist_path();
    let dir = node.manifests_dir();
    // The fixture's start_agent returns once the agent is ready, so the Node is written from
    // here, each step only after the agent said it waits for it.
    let writer = std::thread::spawn(move || {
        wait_for_log_at(&log, "waiting for Node \"node-1\" to exist");
        let early_conflist = conflist.exists();
        std::fs::write(dir.join("node.yaml"), NODE_YAML_NO_CIDR).expect("write node.yaml");
        wait_for_log_at(&log, "waiting for Node \"node-1\" to get a pod CIDR");
        let early_conflist = early_conflist || conflist.exists();
        std::fs::write(dir.join("node.yaml"), NODE_YAML).expect("write node.yaml");
        early_conflist
    });
    node.start_agent();
    let early_conflist = writer.join().expect("the manifest writer");
    assert!(
        !early_conflist,
        "the CNI config was written before the Node had a pod CIDR"
    );
    assert!(agent_alive(&node), "{}", node.agent_log());
    assert_eq!(
        log_lines_with(&node, "waiting for Node").len(),
        2,
        "one line per thing waited for:\n{}",
        node.agent_log()
    );
    let s = node.sluicectl_json(&["status"]);
    assert_eq!(s["podCidrs"], serde_json::json!([POD_CIDR]), "{s}");
    let a = node.add_pod("a");
    assert!(in_pod_cidr(a.ip), "pod a got {} outside {POD_CIDR}", a.ip);
}

/// Test that SIGTERM while the agent waits for its Node ends it cleanly (exit status 0),
/// leaving no CNI config and no API socket behind.
#[test]
fn standalone_sigterm_while_waiting_for_node() {
    let node = standalone_node();
    let log = node.path("agent.log");
    let mut child = node
        .agent_command()
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&log).expect("create agent log"))
        .stderr(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&log)
                .expect("open agent log"),
        )
        .spawn()
        .expect("spawn sluice-agent");
    wait_for_log_at(&log, "waiting for Node \"node-1\" to exist");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .expect("signal the agent");
    let status = child.wait().expect("wait for the agent");
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "agent exited with {status}:\n{log}");
    assert!(
        !node.conflist_path().exists(),
        "a CNI config was left behind"
    );
    assert!(
        !node.state_dir().join("agent.sock").exists(),
        "an API socket was left behind"
    );
}
