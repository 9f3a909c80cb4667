//! `sluicectl policy trace` reports what the datapath does, read back from its maps, and says
//! so when that differs from what the policies mean: a peer whose rules need more port
//! ranges than a rule entry holds (`policy::MAX_RANGES`) is written empty and denied (fail
//! closed), so a trace the policies allow must say "denied by the datapath", and real
//! traffic must be dropped as the trace says.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use datapath_common::policy::MAX_RANGES;
use serde_json::Value;
use test_support::{bin, Node, NodeOptions, Pod};

const BOUND: Duration = Duration::from_secs(8);

fn write(node: &Node, file: &str, text: &str) {
    let dir = node.manifests_dir();
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).expect("write manifest");
    std::fs::rename(&tmp, dir.join(file)).expect("rename manifest");
}

fn trace(node: &Node, from: &str) -> Value {
    node.sluicectl_json(&[
        "policy",
        "trace",
        "--from",
        from,
        "--to",
        "default/b",
        "--port",
        "80/TCP",
    ])
}

/// The trace, or `None` while the agent does not know the pods yet.
fn try_trace(node: &Node, from: &str) -> Option<Value> {
    let out = node.sluicectl(&[
        "policy",
        "trace",
        "--from",
        from,
        "--to",
        "default/b",
        "--port",
        "80/TCP",
        "-o",
        "json",
    ]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("trace JSON"))
}

/// Whether a TCP connection from `from` to `to` port 80 opens and the server greets it.
fn connects(node: &Node, from: &Pod, to: &Pod) -> bool {
    let script = format!("exec 3<>/dev/tcp/{}/80 && head -c1 <&3 | grep -q b", to.ip);
    let mut c: Command = node.pod_command(&from.ns, "timeout");
    c.args(["3", "bash", "-c", &script]);
    let out = c.output().expect("run client");
    eprintln!(
        "client {} -> {}: {} {}",
        from.name,
        to.name,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.success()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Test that a peer whose rules need more than `MAX_RANGES` port ranges, which the datapath
/// writes empty (fail closed), is traced as denied by the datapath with that reason although
/// the policy allows it, that real traffic from it is dropped by ingress policy as the trace
/// says, and that a peer whose rules fit is traced and carried as allowed.
#[test]
fn trace_reports_a_failed_closed_peer_as_the_datapath_drops_it() {
    let node = Node::new(NodeOptions {
        manifests: true,
        ..NodeOptions::default()
    });
    write(
        &node,
        "pods.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: default, labels: {app: a}}\n\
         spec: {containers: [{name: c, image: c}]}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: default, labels: {app: b}}\n\
         spec: {containers: [{name: c, image: c}]}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: default, labels: {app: c}}\n\
         spec: {containers: [{name: c, image: c}]}\n---\n",
    );
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    let c = node.add_pod("c");
    let mut server = node
        .pod_command(&b.ns, bin("sluice-svcprobe"))
        .args(["serve", "--name", "b", "--tcp", "80"])
        // It serves until its stdin closes.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("server");
    let mut line = String::new();
    BufReader::new(server.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let _server = Server(server);

    // a may reach b on MAX_RANGES + 1 disjoint ports (80, 82, …): one range too many for
    // a's entry. c may reach b on port 80 only.
    let ports: Vec<String> = (0..=MAX_RANGES as u16)
        .map(|i| format!("{{protocol: TCP, port: {}}}", 80 + 2 * i))
        .collect();
    write(
        &node,
        "policy.yaml",
        &format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {{name: to-b, namespace: default}}\nspec:\n  podSelector: {{matchLabels: {{app: b}}}}\n  \
             ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: a}}}}}}]\n    ports: [{}]\n  \
             - from: [{{podSelector: {{matchLabels: {{app: c}}}}}}]\n    ports: [{{protocol: TCP, port: 80}}]\n",
            ports.join(", ")
        ),
    );
    // Programmed once c's trace is allowed by both (the set and the maps change together).
    let start = Instant::now();
    loop {
        let t = try_trace(&node, "default/c").unwrap_or_default();
        if t["allowed"] == true && t["policyAllowed"] == true && t["revision"] != 0 {
            break;
        }
        assert!(
            start.elapsed() < BOUND,
            "policy not programmed: {t:#}\n{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let t = trace(&node, "default/a");
    assert_eq!(t["policyAllowed"], true, "the policy allows a on 80: {t:#}");
    assert_eq!(t["allowed"], false, "the datapath denies a: {t:#}");
    let datapath = t["datapath"].as_str().unwrap_or_default();
    assert!(
        datapath.starts_with("denied by the datapath") && datapath.contains("failed closed"),
        "{t:#}"
    );
    assert!(
        t["reasons"].to_string().contains("default/to-b ingress[0]"),
        "the policy's explanation stays: {t:#}"
    );
    let text = node.sluicectl(&[
        "policy",
        "trace",
        "--from",
        "default/a",
        "--to",
        "default/b",
        "--port",
        "80/TCP",
    ]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("DENIED") && text.contains("failed closed"),
        "{text}"
    );

    // The datapath agrees: c gets through, a is dropped by b's ingress policy.
    assert!(connects(&node, &c, &b), "c to b:80\n{}", node.agent_log());
    let before = node.counter("drop:policy-ingress").0;
    assert!(!connects(&node, &a, &b), "a to b:80 must be dropped");
    let after = node.counter("drop:policy-ingress").0;
    assert!(
        after > before,
        "a's SYN dropped by ingress policy ({before} -> {after})"
    );
}

/// Test that when a pod's rules do not fit in the rule map (made one entry small for the
/// test: `--policy-rule-capacity 1`, while b needs two), the pod is programmed with none and
/// fails closed, and that the trace says exactly that although the policy allows the
/// connection, while real traffic into it is dropped by ingress policy.
#[test]
fn trace_reports_an_endpoint_failed_closed_when_the_rule_map_is_full() {
    let node = Node::new(NodeOptions {
        manifests: true,
        agent_args: vec!["--policy-rule-capacity".into(), "1".into()],
        ..NodeOptions::default()
    });
    write(
        &node,
        "pods.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: default, labels: {app: a}}\n\
         spec: {containers: [{name: c, image: c}]}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: default, labels: {app: b}}\n\
         spec: {containers: [{name: c, image: c}]}\n---\n",
    );
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    let mut server = node
        .pod_command(&b.ns, bin("sluice-svcprobe"))
        .args(["serve", "--name", "b", "--tcp", "80"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("server");
    let mut line = String::new();
    BufReader::new(server.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let _server = Server(server);
    // Two trie entries for b: pod a's /32 and 192.0.2.0/24.
    write(
        &node,
        "policy.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: to-b, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  \
         ingress:\n  - from: [{podSelector: {matchLabels: {app: a}}}, {ipBlock: {cidr: 192.0.2.0/24}}]\n    \
         ports: [{protocol: TCP, port: 80}]\n",
    );
    let start = Instant::now();
    let t = loop {
        let t = try_trace(&node, "default/a").unwrap_or_default();
        if t["policyAllowed"] == true && t["revision"] != 0 {
            break t;
        }
        assert!(
            start.elapsed() < BOUND,
            "policy not programmed: {t:#}\n{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(t["allowed"], false, "the datapath denies a: {t:#}");
    assert_eq!(
        t["datapath"], "denied by the datapath: endpoint failed closed (rule map full)",
        "{t:#}"
    );
    let before = node.counter("drop:policy-ingress").0;
    assert!(!connects(&node, &a, &b), "a to b:80 must be dropped");
    let after = node.counter("drop:policy-ingress").0;
    assert!(
        after > before,
        "a's SYN dropped by ingress policy ({before} -> {after})"
    );
}
