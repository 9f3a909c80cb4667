//! The real `sluice-cni` binary against what outside testing (containerd's CRI, fuzzed CNI
//! invocations) found: container ids of every length the spec allows (CNI_CONTAINERID matches
//! `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, no length limit: CNI specification 1.1.0 §1.2),
//! a stdout that cannot be written, pod CIDRs that cannot be pod networks, a log file that is
//! a FIFO, and DEL with config it does not need (§2.2: DEL must release what it holds);
//! malformed and oversized input are in cni_fuzz.rs. Every failure must be an error object on stdout (§6) and a
//! non-zero exit that is not a panic (101), with nothing left behind.

use std::{
    io::{Read as _, Write as _},
    net::Ipv4Addr,
    process::{Output, Stdio},
};

use serde_json::{json, Value};
use test_support::{
    bin,
    cnirun::{
        assert_no_panic, assert_node_clean, expect_error_object, plugin_command, pod_links, run,
        run_with_stdout, spec_id, wait_bounded,
    },
    node::NODE_IP,
    unique, CniCall, CniOutput, Netns, Node, NodeOptions,
};

/// The GC key of attachments still in use (§2.6).
const VALID: &str = "cni.dev/valid-attachments";

fn node() -> Node {
    Node::new(NodeOptions::default())
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
