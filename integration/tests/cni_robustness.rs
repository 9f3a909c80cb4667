//! The real `sluice-cni` binary against what outside testing (containerd's CRI, fuzzed CNI
//! invocations) found: container ids of every length the spec allows (CNI_CONTAINERID matches
//! `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, no length limit: ../shared/reference/cni-spec.md §1.2),
//! a stdout that cannot be written, pod CIDRs that cannot be pod networks, a log file that is
//! a FIFO, DEL with config it does not need (§2.2: DEL must release what it holds), malformed
//! configs and oversized input. Every failure must be an error object on stdout (§6) and a
//! non-zero exit that is not a panic (101), with nothing left behind.

use std::{
    io::{Read as _, Write as _},
    net::Ipv4Addr,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use integration::{bin, node::NODE_IP, unique, CniCall, CniOutput, Netns, Node, NodeOptions};
use serde_json::{json, Value};

/// The GC key of attachments still in use (§2.6).
const VALID: &str = "cni.dev/valid-attachments";

/// How long a plugin run may take before the test calls it hung (a guard against a test that
/// never ends, not a timing assertion: a working plugin answers in milliseconds).
const HUNG: Duration = Duration::from_secs(120);

fn node() -> Node {
    Node::new(NodeOptions::default())
}

/// A container id of the spec's form (first character alphanumeric, then any of
/// `[a-zA-Z0-9_.-]`) of exactly `len` bytes, unique per call.
fn spec_id(len: usize) -> String {
    let tag = unique("X");
    let body = "aZ9_.-".chars().cycle();
    let id: String = tag.chars().chain(body).take(len).collect();
    assert_eq!(id.len(), len);
    id
}

/// Waits for `child`, killing it and failing the test if it has not exited after [`HUNG`].
/// Its stdout and stderr (if piped) are read meanwhile, so a plugin that writes more than a
/// pipe holds is not mistaken for a hung one.
fn wait_bounded(mut child: Child, what: &str) -> Output {
    fn drain(
        pipe: Option<impl std::io::Read + Send + 'static>,
    ) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for the plugin") {
            break st;
        }
        if start.elapsed() > HUNG {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: did not exit (hung)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// The plugin command for `call` as `Node::cni` builds it, with stdin, stdout and stderr left
/// to the caller; returns it with the stdin bytes.
fn plugin_command(node: &Node, call: &CniCall) -> (Command, Vec<u8>) {
    let stdin = call.stdin.clone().unwrap_or_else(|| {
        let mut conf = node.plugin_config(&call.version);
        if let (Some(c), Some(e)) = (conf.as_object_mut(), call.extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        serde_json::to_vec(&conf).expect("encode config")
    });
    let mut cmd = node.node.command(node.path("bin").join("sluice"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CNI_COMMAND", &call.command)
        .env("CNI_PATH", node.path("bin"));
    for (k, v) in [
        ("CNI_CONTAINERID", &call.container_id),
        ("CNI_IFNAME", &call.ifname),
        ("CNI_ARGS", &call.args),
    ] {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    if let Some(n) = &call.netns {
        cmd.env("CNI_NETNS", n);
    }
    (cmd, stdin)
}

/// Runs the plugin with `stdout` as its stdout (stdin written from a thread, so a plugin that
/// stops reading early cannot block the test; stderr captured).
fn run_with_stdout(node: &Node, call: &CniCall, stdout: Stdio) -> Output {
    let (mut cmd, input) = plugin_command(node, call);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("exec the plugin");
    let mut pipe = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let out = wait_bounded(child, &call.command);
    writer.join().expect("stdin writer");
    out
}

/// Runs the plugin as `Node::cni` does, but bounded in time and tolerant of a plugin that
/// stops reading stdin early.
fn run(node: &Node, call: &CniCall) -> CniOutput {
    let out = run_with_stdout(node, call, Stdio::piped());
    CniOutput {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Asserts the plugin did not panic: no Rust panic exit code (101), no panic message.
fn assert_no_panic(status: i32, stderr: &str, what: &str) {
    assert_ne!(status, 101, "{what}: exit code 101 (a panic): {stderr}");
    assert!(
        !stderr.contains("panicked"),
        "{what}: the plugin panicked: {stderr}"
    );
}

/// Asserts a failed call with exactly one spec error object (§6) on stdout; returns it.
fn expect_error_object(out: &CniOutput, what: &str) -> Value {
    assert_no_panic(out.status, &out.stderr, what);
    assert_ne!(out.status, 0, "{what}: expected a failure, got {out:?}");
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: stdout is not one JSON document ({e}): {out:?}"));
    assert!(v["code"].is_u64(), "{what}: no code: {v}");
    assert!(v["msg"].is_string(), "{what}: no msg: {v}");
    assert!(v["cniVersion"].is_string(), "{what}: no cniVersion: {v}");
    v
}

/// Asserts the node holds nothing for any attachment: no IPAM address, endpoint or host veth.
fn assert_node_clean(node: &Node) {
    let (ips, eps, veths) = (node.ipam_addresses(), node.endpoints(), node.host_veths());
    assert!(ips.is_empty(), "IPAM addresses left: {ips:?}");
    assert!(eps.is_empty(), "endpoints left: {eps:?}");
    assert!(veths.is_empty(), "host veths left: {veths:?}");
}

/// The interfaces of a namespace other than `lo`.
fn pod_links(ns: &Netns) -> Vec<String> {
    let v: Value = serde_json::from_str(&ns.sh("ip -j link show")).expect("ip -j link");
    v.as_array()
        .expect("link list")
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| *n != "lo")
        .map(str::to_owned)
        .collect()
}

/// A pod added with container id `cid`.
struct LongPod {
    ns: Netns,
    cid: String,
    ip: Ipv4Addr,
    veth: String,
}

fn add_pod_with_id(node: &Node, cid: &str) -> LongPod {
    let ns = Netns::new(&unique("slp"));
    let out = run(
        node,
        &CniCall::attachment("ADD", "1.1.0", cid, &ns.path(), "web"),
    );
    out.assert_ok();
    let r = out.json();
    let ip = r["ips"][0]["address"]
        .as_str()
        .expect("address")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .expect("IPv4");
    let veth = r["interfaces"][0]["name"]
        .as_str()
        .expect("host veth")
        .to_owned();
    LongPod {
        ns,
        cid: cid.to_owned(),
        ip,
        veth,
    }
}

fn gc_keeping(node: &Node, keep: &[&LongPod]) -> CniOutput {
    let mut c = CniCall::new("GC", "1.1.0");
    c.ifname = None;
    let list: Vec<Value> = keep
        .iter()
        .map(|p| json!({"containerID": p.cid, "ifname": "eth0"}))
        .collect();
    c.extra = json!({ VALID: list });
    run(node, &c)
}

/// Asserts `p` is fully in place: its address in IPAM, its endpoint, its host veth, and it
/// reaches the node.
fn assert_pod_intact(node: &Node, p: &LongPod) {
    assert!(
        node.ipam_addresses().contains(&p.ip.to_string()),
        "{} bytes: address {} released",
        p.cid.len(),
        p.ip
    );
    assert!(
        node.endpoints()
            .iter()
            .any(|e| e.addr == std::net::IpAddr::V4(p.ip) && e.is_for(&p.cid, "eth0")),
        "{} bytes: endpoint of {} removed",
        p.cid.len(),
        p.ip
    );
    assert!(
        node.host_veths().contains(&p.veth),
        "{} bytes: veth gone",
        p.cid.len()
    );
    let ping = p.ns.sh_output(&format!("ping -c1 -W2 {NODE_IP}"));
    assert!(
        ping.status.success(),
        "{} bytes: pod lost traffic",
        p.cid.len()
    );
}

/// Test that GC listing pods whose container ids are of the spec's form and of any length
/// (64, 120, 121, 200 bytes, two ids equal in their first 120 bytes, and one near the kernel's
/// 128 KiB limit for an environment string) keeps exactly the listed ones (address, endpoint,
/// host veth, traffic) and removes the others entirely, and that DEL frees long ids too.
#[test]
fn gc_keeps_live_pods_with_ids_of_any_length() {
    let node = node();
    let twin = spec_id(120);
    // MAX_ARG_STRLEN (32 pages) bounds "CNI_CONTAINERID=<id>" and also the CNI_ARGS string
    // that repeats the id as K8S_POD_INFRA_CONTAINER_ID.
    let longest = 131_072 - "K8S_POD_INFRA_CONTAINER_ID=".len() - 128;
    let ids = [
        spec_id(64),
        spec_id(120),
        spec_id(121),
        spec_id(200),
        format!("{twin}a"),
        format!("{twin}b"),
        spec_id(longest),
    ];
    let pods: Vec<LongPod> = ids.iter().map(|id| add_pod_with_id(&node, id)).collect();
    // Keep every other pod, including one of the twins.
    let keep: Vec<&LongPod> = pods.iter().step_by(2).collect();
    let drop: Vec<&LongPod> = pods.iter().skip(1).step_by(2).collect();
    let out = gc_keeping(&node, &keep);
    out.assert_ok();
    assert_no_panic(out.status, &out.stderr, "GC");
    for p in &keep {
        assert_pod_intact(&node, p);
    }
    for p in &drop {
        assert!(
            !node.ipam_addresses().contains(&p.ip.to_string()),
            "{} bytes: stale address kept",
            p.cid.len()
        );
        assert!(
            !node.host_veths().contains(&p.veth),
            "{} bytes: stale veth kept",
            p.cid.len()
        );
        assert!(
            pod_links(&p.ns).is_empty(),
            "{} bytes: pod side kept",
            p.cid.len()
        );
    }
    assert_eq!(node.endpoints().len(), keep.len(), "{:?}", node.endpoints());
    for p in &keep {
        run(
            &node,
            &CniCall::attachment("DEL", "1.1.0", &p.cid, &p.ns.path(), "web"),
        )
        .assert_ok();
    }
    assert_node_clean(&node);
}

/// Test that an ADD whose result cannot be written (stdout on /dev/full, or a pipe whose
/// reader is gone) fails without a panic and undoes everything it wired, as a failed ADD
/// does (§2.1), with the failure on stderr.
#[test]
fn add_result_write_failure_undoes_the_pod() {
    let node = node();
    for target in ["/dev/full", "closed pipe"] {
        let ns = Netns::new(&unique("slp"));
        let add = CniCall::attachment("ADD", "1.0.0", &spec_id(64), &ns.path(), "web");
        let out = if target == "/dev/full" {
            let full = std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .expect("open /dev/full");
            run_with_stdout(&node, &add, Stdio::from(full))
        } else {
            let (mut cmd, input) = plugin_command(&node, &add);
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("exec the plugin");
            // The reader goes before the plugin can write: it writes only after stdin's EOF.
            drop(child.stdout.take());
            let mut pipe = child.stdin.take().expect("stdin");
            pipe.write_all(&input).expect("write stdin");
            drop(pipe);
            wait_bounded(child, "ADD")
        };
        let code = out.status.code().unwrap_or(-1);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_no_panic(code, &stderr, target);
        assert_ne!(
            code, 0,
            "{target}: ADD succeeded without delivering its result"
        );
        assert!(
            stderr.contains("stdout"),
            "{target}: stderr says nothing: {stderr}"
        );
        assert_node_clean(&node);
        assert!(pod_links(&ns).is_empty(), "{target}: pod interface left");
    }
}

/// Test that VERSION with stdout on /dev/full or a closed pipe exits non-zero without a
/// panic.
#[test]
fn version_write_failure_is_an_error_not_a_panic() {
    let node = node();
    let version = CniCall::new("VERSION", "1.1.0");
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("open /dev/full");
    let out = run_with_stdout(&node, &version, Stdio::from(full));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_no_panic(out.status.code().unwrap_or(-1), &stderr, "/dev/full");
    assert_ne!(out.status.code(), Some(0), "/dev/full: {stderr}");

    let (mut cmd, input) = plugin_command(&node, &version);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("exec the plugin");
    drop(child.stdout.take());
    let mut pipe = child.stdin.take().expect("stdin");
    pipe.write_all(&input).expect("write stdin");
    drop(pipe);
    let out = wait_bounded(child, "VERSION");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_no_panic(out.status.code().unwrap_or(-1), &stderr, "closed pipe");
    assert_ne!(out.status.code(), Some(0), "closed pipe: {stderr}");
}

/// Networks that cannot be pod networks (RFC 6890 special-purpose blocks, prefixes too long
/// to hold two pods) and the part of the message that names the reason.
const BAD_POD_CIDRS: [(&str, &str); 10] = [
    ("0.0.0.0/0", "covers"),
    ("0.0.0.0/8", "this network"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "class E"),
    ("255.255.255.255/32", "broadcast"),
    ("10.244.1.0/31", "too small"),
    ("10.244.1.7/32", "too small"),
    ("10.244.0.0/16\", \"10.244.1.0/24", "overlap"),
];

/// Test that ADD refuses, with code 7 naming the reason, pod CIDRs that cannot be pod
/// networks and one overlapping the node's uplink network (192.0.2.0/24 here), allocating
/// nothing; and that the same config's DEL still succeeds.
#[test]
fn add_refuses_pod_cidrs_that_cannot_hold_pods() {
    let node = node();
    let uplink = [
        ("192.0.2.0/24", "up0"),
        ("192.0.2.128/25", "up0"),
        ("192.0.0.0/16", "up0"),
    ];
    let cases = BAD_POD_CIDRS.iter().copied().chain(uplink);
    for (cidrs, reason) in cases {
        let ns = Netns::new(&unique("slp"));
        let list: Value = serde_json::from_str(&format!("[\"{cidrs}\"]")).expect("CIDR list");
        let mut add = CniCall::attachment("ADD", "1.0.0", &spec_id(64), &ns.path(), "web");
        add.extra = json!({ "podCIDRs": list });
        let out = run(&node, &add);
        let e = expect_error_object(&out, cidrs);
        assert_eq!(e["code"], 7, "{cidrs}: {e}");
        let text = e.to_string();
        assert!(text.contains(reason), "{cidrs}: no {reason:?} in {text}");
        assert_node_clean(&node);
        assert!(pod_links(&ns).is_empty(), "{cidrs}: pod interface created");
        let mut del = add.clone();
        del.command = "DEL".into();
        run(&node, &del).assert_ok();
    }
}

/// Runs the agent with `args` (and `--pod-cidr` if given) in `node` and returns its output
/// (it must exit on its own).
fn agent_refusal(node: &Node, pod_cidr: Option<&str>) -> Output {
    let mut cmd = node.node.command(bin("sluice-agent"));
    cmd.args([
        "--node-name",
        "node-1",
        "--uplink",
        "up0",
        "--sockmap=false",
    ]);
    cmd.arg("--state-dir").arg(node.state_dir());
    cmd.arg("--bpffs").arg(node.bpffs());
    cmd.arg("--cni-conf-dir").arg(node.path("conf"));
    cmd.arg("--cni-bin-dir").arg(node.path("bin"));
    cmd.arg("--cni-plugin").arg(bin("sluice-cni"));
    match pod_cidr {
        Some(c) => {
            cmd.args(["--pod-cidr", c]);
        }
        None => {
            cmd.arg("--manifests").arg(node.manifests_dir());
        }
    }
    let child = cmd
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice-agent");
    wait_bounded(child, "sluice-agent")
}

/// Test that the agent refuses to start, with a message naming the reason, on a pod CIDR that
/// cannot be a pod network, from `--pod-cidr` and from the Node's spec.podCIDR, and on one
/// overlapping its uplink's network (192.0.2.0/24), installing no CNI config.
#[test]
fn agent_refuses_pod_cidrs_that_cannot_hold_pods() {
    let node = Node::new(NodeOptions {
        start_agent: false,
        ..Default::default()
    });
    let flags = BAD_POD_CIDRS
        .iter()
        .filter(|(c, _)| !c.contains('"'))
        .copied()
        .chain([("192.0.2.0/24", "up0"), ("192.0.2.64/26", "up0")]);
    for (cidr, reason) in flags {
        let out = agent_refusal(&node, Some(cidr));
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{cidr}: agent accepted it: {text}");
        assert!(text.contains(reason), "{cidr}: no {reason:?} in: {text}");
        assert!(
            !node.conflist_path().exists(),
            "{cidr}: CNI config installed"
        );
    }
    for (cidr, reason) in [("127.0.0.0/8", "loopback"), ("192.0.2.0/24", "up0")] {
        std::fs::write(
            node.manifests_dir().join("node.yaml"),
            format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-1\nspec:\n  podCIDR: {cidr}\n"
            ),
        )
        .expect("write Node manifest");
        let out = agent_refusal(&node, None);
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success(),
            "Node {cidr}: agent accepted it: {text}"
        );
        assert!(
            text.contains(reason),
            "Node {cidr}: no {reason:?} in: {text}"
        );
        assert!(
            !node.conflist_path().exists(),
            "Node {cidr}: CNI config installed"
        );
    }
}

/// Test that a `logFile` that is a FIFO (without a reader, and with one), a directory or a
/// symlink never blocks or fails ADD and DEL: each command completes, says on stderr that it
/// is not logging, and writes nothing into the FIFO.
#[test]
fn log_file_that_is_not_a_regular_file_never_blocks() {
    let node = node();
    let dir = node.dir.path();
    let fifo = dir.join("cni.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let link = dir.join("cni.link");
    std::os::unix::fs::symlink(dir.join("elsewhere.log"), &link).expect("symlink");
    // A reader that never reads: opened non-blocking so the test itself does not wait.
    let reader = || {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .expect("open the FIFO for reading")
    };
    for (what, path, with_reader) in [
        ("FIFO without a reader", fifo.as_path(), false),
        ("FIFO with a reader", fifo.as_path(), true),
        ("directory", dir, false),
        ("symlink", link.as_path(), false),
    ] {
        let held = with_reader.then(reader);
        let ns = Netns::new(&unique("slp"));
        let cid = spec_id(64);
        for command in ["ADD", "DEL"] {
            let mut c = CniCall::attachment(command, "1.0.0", &cid, &ns.path(), "web");
            c.extra = json!({ "logFile": path });
            let out = run(&node, &c);
            assert_no_panic(out.status, &out.stderr, what);
            out.assert_ok();
            assert!(
                out.stderr.contains("log file") && out.stderr.contains("not logging"),
                "{what} {command}: stderr says nothing: {}",
                out.stderr
            );
        }
        if let Some(mut r) = held {
            let mut buf = [0u8; 64];
            let n = r.read(&mut buf).unwrap_or(0);
            assert_eq!(n, 0, "{what}: the plugin wrote into the FIFO");
        }
        assert!(!dir.join("elsewhere.log").exists(), "symlink followed");
        assert_node_clean(&node);
    }
}

/// Test that DEL succeeds and frees everything when the config's `podCIDRs` is missing, empty,
/// overlapping, of the wrong type or a network that cannot hold pods, and when other values
/// DEL does not use (mtu, prevResult, runtimeConfig, dns) are malformed (§2.2).
#[test]
fn del_needs_no_pod_cidrs_or_other_unused_values() {
    let node = node();
    let variants = [
        json!({ "podCIDRs": null }),
        json!({ "podCIDRs": [] }),
        json!({ "podCIDRs": ["10.244.0.0/16", "10.244.1.0/24"] }),
        json!({ "podCIDRs": "10.244.1.0/24" }),
        json!({ "podCIDRs": ["0.0.0.0/0"] }),
        json!({ "podCIDRs": [7] }),
        json!({ "mtu": "big", "prevResult": 5, "runtimeConfig": [], "dns": 1, "gateway": 3 }),
    ];
    for extra in variants {
        let ns = Netns::new(&unique("slp"));
        let cid = spec_id(64);
        let add = CniCall::attachment("ADD", "1.0.0", &cid, &ns.path(), "web");
        run(&node, &add).assert_ok();
        let mut del = CniCall::attachment("DEL", "1.0.0", &cid, &ns.path(), "web");
        let mut conf = node.plugin_config("1.0.0");
        let obj = conf.as_object_mut().expect("config object");
        for (k, v) in extra.as_object().expect("variant") {
            if v.is_null() {
                obj.remove(k);
            } else {
                obj.insert(k.clone(), v.clone());
            }
        }
        del.stdin = Some(serde_json::to_vec(&conf).expect("encode"));
        let out = run(&node, &del);
        assert_no_panic(out.status, &out.stderr, &extra.to_string());
        assert_eq!(out.status, 0, "DEL with {extra}: {out:?}");
        assert_node_clean(&node);
        assert!(pod_links(&ns).is_empty(), "DEL with {extra}: pod side left");
    }
}

/// Values of the wrong type, out of range or huge, for every field.
fn bad_values() -> Vec<Value> {
    vec![
        Value::Null,
        json!(true),
        json!(0),
        json!(-1),
        json!(1e308),
        serde_json::from_str("18446744073709551616").expect("big number"),
        json!(""),
        json!("x/y"),
        json!([]),
        json!([1, "a", null]),
        json!({}),
        json!({"a": [{"b": 1}]}),
        json!("z".repeat(100_000)),
    ]
}

/// Test that no command panics on any malformed config: for every command and every field of
/// a full config (and fields it leaves out), each value of the wrong type, out of range or
/// huge, and the field missing, gives exit code 0 with an empty or protocol stdout, or a
/// non-zero exit with one spec error object (§6) on stdout, never exit code 101, a panic
/// message, or a stdout that repeats a huge value.
#[test]
fn malformed_configs_never_panic() {
    integration::require_root();
    // No node and no agent: an empty bpffs directory, so ADD stops at "try again" and
    // nothing is wired; state in a temp dir; a throwaway namespace to run in.
    let ns = Netns::new(&unique("slf"));
    let tmp = tempfile::tempdir().expect("tempdir");
    for d in ["state", "bpf", "bin"] {
        std::fs::create_dir(tmp.path().join(d)).expect("mkdir");
    }
    let pod = Netns::new(&unique("slp"));
    let base = json!({
        "cniVersion": "1.1.0",
        "name": "fuzz",
        "type": "sluice",
        "mtu": 1500,
        "podCIDRs": ["10.244.1.0/24"],
        "gateway": "169.254.1.1",
        "stateDir": tmp.path().join("state"),
        "bpffs": tmp.path().join("bpf"),
        "logFile": tmp.path().join("cni.log"),
        "dns": {"nameservers": ["10.96.0.10"], "search": ["svc"]},
        "runtimeConfig": {
            "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
            "ips": ["10.244.1.9/24"],
            "mac": "02:00:00:00:00:01"
        },
        "args": {"cni": {"ips": ["10.244.1.9"], "mac": "02:00:00:00:00:01"}},
        "prevResult": {
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": pod.path()}],
            "ips": [{"address": "10.244.1.9/32", "gateway": "169.254.1.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
            "dns": {}
        },
        VALID: [{"containerID": "c1", "ifname": "eth0"}],
        "cni.dev/attachments": [{"containerID": "c1", "ifname": "eth0"}],
    });
    let obj = base.as_object().expect("base object");
    // stateDir and bpffs are never removed or retyped to something valid: a missing one
    // means the machine's real /run/sluice and /sys/fs/bpf, which this test must not touch.
    let keep_local = ["stateDir", "bpffs"];
    let mut configs: Vec<(String, Vec<u8>)> = Vec::new();
    for key in obj.keys() {
        if !keep_local.contains(&key.as_str()) {
            let mut c = obj.clone();
            c.remove(key);
            configs.push((format!("without {key}"), serde_json::to_vec(&c).unwrap()));
        }
        for bad in bad_values() {
            if keep_local.contains(&key.as_str()) && (bad.is_null() || bad.is_string()) {
                continue;
            }
            let mut c = obj.clone();
            c.insert(key.clone(), bad.clone());
            let shown: String = bad.to_string().chars().take(30).collect();
            configs.push((format!("{key} = {shown}"), serde_json::to_vec(&c).unwrap()));
        }
    }
    for raw in ["", "null", "[]", "\"x\"", "{", "{\"name\": \"x\"}", "1e999"] {
        configs.push((format!("stdin {raw:?}"), raw.as_bytes().to_vec()));
    }
    for command in ["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"] {
        for (what, stdin) in &configs {
            let mut cmd = ns.command(bin("sluice-cni"));
            cmd.env_clear()
                .env("CNI_COMMAND", command)
                .env("CNI_CONTAINERID", "c1")
                .env("CNI_NETNS", pod.path())
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", tmp.path().join("bin"))
                .env(
                    "CNI_ARGS",
                    "IgnoreUnknown=1;K8S_POD_NAME=p;K8S_POD_NAMESPACE=d",
                )
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = cmd.spawn().expect("exec the plugin");
            let mut pipe = child.stdin.take().expect("stdin");
            let input = stdin.clone();
            let writer = std::thread::spawn(move || {
                let _ = pipe.write_all(&input);
            });
            let out = wait_bounded(child, command);
            writer.join().expect("stdin writer");
            let label = format!("{command} {what}");
            let out = CniOutput {
                status: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            };
            assert_no_panic(out.status, &out.stderr, &label);
            assert!(
                out.stdout.len() < 16_384,
                "{label}: stdout of {} bytes",
                out.stdout.len()
            );
            assert!(
                out.stderr.len() < 16_384,
                "{label}: stderr of {} bytes",
                out.stderr.len()
            );
            if out.status != 0 {
                expect_error_object(&out, &label);
            } else if command == "VERSION" {
                assert!(
                    out.json()["supportedVersions"].is_array(),
                    "{label}: {out:?}"
                );
            } else if command == "ADD" {
                panic!("{label}: ADD succeeded without a datapath: {out:?}");
            } else {
                assert!(out.stdout.is_empty(), "{label}: {out:?}");
            }
        }
    }
    assert!(pod_links(&pod).is_empty(), "an interface was created");
}

/// Test that stdin larger than the plugin's 1 MiB bound (a 64 MiB `name`) is refused with a
/// spec error object (code 7) that does not repeat it, and that values under the bound which
/// an error quotes (a 512 KiB invalid name, a 100 KiB invalid container id) come back cut
/// with an ellipsis and their length.
#[test]
fn oversized_input_is_refused_and_never_echoed() {
    let node = node();
    let ns = Netns::new(&unique("slp"));
    let huge = format!(
        "{{\"cniVersion\":\"1.0.0\",\"type\":\"sluice\",\"name\":\"{}\"}}",
        "a".repeat(64 << 20)
    );
    for command in ["ADD", "DEL", "CHECK"] {
        let mut c = CniCall::attachment(command, "1.0.0", &spec_id(64), &ns.path(), "web");
        c.stdin = Some(huge.clone().into_bytes());
        let out = run(&node, &c);
        let e = expect_error_object(&out, command);
        assert_eq!(e["code"], 7, "{command}: {e}");
        assert!(
            out.stdout.len() < 1024,
            "{command}: stdout {} bytes",
            out.stdout.len()
        );
        assert!(
            out.stderr.len() < 1024,
            "{command}: stderr {} bytes",
            out.stderr.len()
        );
    }

    let mut conf = node.plugin_config("1.0.0");
    conf["name"] = json!(format!("bad/{}", "n".repeat(512 << 10)));
    let mut c = CniCall::attachment("ADD", "1.0.0", &spec_id(64), &ns.path(), "web");
    c.stdin = Some(serde_json::to_vec(&conf).expect("encode"));
    let out = run(&node, &c);
    let e = expect_error_object(&out, "long name");
    assert_eq!(e["code"], 7, "{e}");
    assert!(out.stdout.len() < 1024, "stdout {} bytes", out.stdout.len());
    assert!(
        out.stdout.contains(&format!("({} bytes)", (512 << 10) + 4)),
        "{}",
        out.stdout
    );

    let bad_id = format!("-{}", "c".repeat(100 << 10));
    let c = CniCall::attachment("ADD", "1.0.0", &bad_id, &ns.path(), "web");
    let out = run(&node, &c);
    let e = expect_error_object(&out, "long container id");
    assert_eq!(e["code"], 4, "{e}");
    assert!(out.stdout.len() < 1024, "stdout {} bytes", out.stdout.len());
    assert!(out.stderr.len() < 1024, "stderr {} bytes", out.stderr.len());
    assert_node_clean(&node);
}

/// Test that no command panics on malformed environment values (§1.2): each of
/// CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS, CNI_ARGS and CNI_PATH unset, empty, huge, or holding
/// separators and non-ASCII, gives a spec error object (or success with an empty stdout for
/// commands that need not read it), never exit code 101 or a panic message.
#[test]
fn malformed_environments_never_panic() {
    integration::require_root();
    let ns = Netns::new(&unique("slf"));
    let tmp = tempfile::tempdir().expect("tempdir");
    for d in ["state", "bpf"] {
        std::fs::create_dir(tmp.path().join(d)).expect("mkdir");
    }
    let pod = Netns::new(&unique("slp"));
    let conf = json!({
        "cniVersion": "1.1.0", "name": "fuzz", "type": "sluice",
        "podCIDRs": ["10.244.1.0/24"],
        "stateDir": tmp.path().join("state"), "bpffs": tmp.path().join("bpf"),
        VALID: [],
    });
    let stdin = serde_json::to_vec(&conf).expect("encode");
    let huge = "a".repeat(100_000);
    let values: Vec<Option<String>> = vec![
        None,
        Some(String::new()),
        Some(huge.clone()),
        Some("a/b:c d;e=f".into()),
        Some("é\u{1F600}\u{7f}".into()),
        Some("/dev/null".into()),
        Some("/nonexistent/x".into()),
        Some(";;==;IP=300.1.1.1;MAC=zz;K8S_POD_NAME=;IgnoreUnknown=x".into()),
        Some(format!("/{huge}")),
    ];
    let good = [
        ("CNI_CONTAINERID", "c1".to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_NETNS", pod.path().display().to_string()),
        ("CNI_ARGS", "IgnoreUnknown=1".to_string()),
        ("CNI_PATH", "/opt/cni/bin".to_string()),
    ];
    for command in ["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION", "add", ""] {
        for (var, _) in &good {
            for value in &values {
                let mut cmd = ns.command(bin("sluice-cni"));
                cmd.env_clear().env("CNI_COMMAND", command);
                for (k, v) in &good {
                    if k != var {
                        cmd.env(k, v);
                    }
                }
                if let Some(v) = value {
                    cmd.env(var, v);
                }
                let mut child = cmd
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("exec the plugin");
                let mut pipe = child.stdin.take().expect("stdin");
                let input = stdin.clone();
                let writer = std::thread::spawn(move || {
                    let _ = pipe.write_all(&input);
                });
                let out = wait_bounded(child, command);
                writer.join().expect("stdin writer");
                let shown: String = format!("{value:?}").chars().take(40).collect();
                let label = format!("{command} {var}={shown}");
                let out = CniOutput {
                    status: out.status.code().unwrap_or(-1),
                    stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                };
                assert_no_panic(out.status, &out.stderr, &label);
                assert!(
                    out.stdout.len() < 16_384,
                    "{label}: stdout {}",
                    out.stdout.len()
                );
                assert!(
                    out.stderr.len() < 16_384,
                    "{label}: stderr {}",
                    out.stderr.len()
                );
                if out.status != 0 {
                    expect_error_object(&out, &label);
                } else if command == "VERSION" {
                    assert!(out.json()["supportedVersions"].is_array(), "{label}");
                } else {
                    assert!(
                        matches!(command, "DEL" | "GC") && out.stdout.is_empty(),
                        "{label}: unexpected success {out:?}"
                    );
                }
            }
        }
    }
    assert!(pod_links(&pod).is_empty(), "an interface was created");
}
