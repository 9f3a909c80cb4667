//! Running the real `sluice-cni` as a runtime does, for tests of bad input and broken
//! output: bounded in time (a hung plugin fails the test instead of hanging it), with stdin
//! written from a thread (a plugin may stop reading early) and stdout and stderr read while it
//! runs, plus the assertions every such test makes (no panic, one spec error object).

use std::{
    io::Write as _,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{unique, CniCall, CniOutput, Netns, Node};

/// How long a plugin run may take before the test calls it hung (a guard against a test that
/// never ends, not a timing assertion: a working plugin answers in milliseconds).
pub const HUNG: Duration = Duration::from_secs(120);

/// A container id of the spec's form (first character alphanumeric, then any of
/// `[a-zA-Z0-9_.-]`) of exactly `len` bytes, unique per call.
pub fn spec_id(len: usize) -> String {
    let tag = unique("X");
    let body = "aZ9_.-".chars().cycle();
    let id: String = tag.chars().chain(body).take(len).collect();
    assert_eq!(id.len(), len);
    id
}

/// Waits for `child`, killing it and failing the test if it has not exited after [`HUNG`].
/// Its stdout and stderr (if piped) are read meanwhile, so a plugin that writes more than a
/// pipe holds is not mistaken for a hung one.
pub fn wait_bounded(mut child: Child, what: &str) -> Output {
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
pub fn plugin_command(node: &Node, call: &CniCall) -> (Command, Vec<u8>) {
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
pub fn run_with_stdout(node: &Node, call: &CniCall, stdout: Stdio) -> Output {
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
pub fn run(node: &Node, call: &CniCall) -> CniOutput {
    to_cni_output(&run_with_stdout(node, call, Stdio::piped()))
}

/// Asserts the plugin did not panic: no Rust panic exit code (101), no panic message.
pub fn assert_no_panic(status: i32, stderr: &str, what: &str) {
    assert_ne!(status, 101, "{what}: exit code 101 (a panic): {stderr}");
    assert!(
        !stderr.contains("panicked"),
        "{what}: the plugin panicked: {stderr}"
    );
}

/// Asserts a failed call with exactly one spec error object (§6) on stdout; returns it.
pub fn expect_error_object(out: &CniOutput, what: &str) -> Value {
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
pub fn assert_node_clean(node: &Node) {
    let (ips, eps, veths) = (node.ipam_addresses(), node.endpoints(), node.host_veths());
    assert!(ips.is_empty(), "IPAM addresses left: {ips:?}");
    assert!(eps.is_empty(), "endpoints left: {eps:?}");
    assert!(veths.is_empty(), "host veths left: {veths:?}");
}

/// The interfaces of a namespace other than `lo`.
pub fn pod_links(ns: &Netns) -> Vec<String> {
    let v: Value = serde_json::from_str(&ns.sh("ip -j link show")).expect("ip -j link");
    v.as_array()
        .expect("link list")
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| *n != "lo")
        .map(str::to_owned)
        .collect()
}

/// Runs `program` in `ns` with exactly the environment `env` and `stdin`, bounded in time.
pub fn exec_in(
    ns: &Netns,
    program: &std::path::Path,
    env: &[(&str, &str)],
    stdin: &[u8],
) -> CniOutput {
    let mut cmd = ns.command(program);
    cmd.env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("exec the plugin");
    let mut pipe = child.stdin.take().expect("stdin");
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let out = wait_bounded(child, "the plugin");
    writer.join().expect("stdin writer");
    to_cni_output(&out)
}

/// A finished process's output as a [`CniOutput`].
pub fn to_cni_output(out: &Output) -> CniOutput {
    CniOutput {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
