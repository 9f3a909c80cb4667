//! The real `sluice-cni` binary fed malformed and oversized input, as fuzzed CNI invocations
//! did: every field of the network config and every `CNI_*` variable with values of the wrong
//! type, out of range, huge or missing, and stdin far past any real config. Whatever the
//! input, the plugin answers with success or one spec error object (§6) and a non-zero exit
//! that is not a panic (101), and never echoes a huge value back.

use serde_json::{json, Value};
use test_support::{
    bin,
    cnirun::{
        assert_no_panic, assert_node_clean, exec_in, expect_error_object, pod_links, run, spec_id,
    },
    unique, CniCall, Netns, Node, NodeOptions,
};

/// The GC key of attachments still in use (§2.6).
const VALID: &str = "cni.dev/valid-attachments";

fn node() -> Node {
    Node::new(NodeOptions::default())
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
    test_support::require_root();
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
            let netns = pod.path().display().to_string();
            let path = tmp.path().join("bin").display().to_string();
            let env = [
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_NETNS", netns.as_str()),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", path.as_str()),
                (
                    "CNI_ARGS",
                    "IgnoreUnknown=1;K8S_POD_NAME=p;K8S_POD_NAMESPACE=d",
                ),
            ];
            let out = exec_in(&ns, &bin("sluice-cni"), &env, stdin);
            let label = format!("{command} {what}");
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
    test_support::require_root();
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
                let mut env: Vec<(&str, &str)> = vec![("CNI_COMMAND", command)];
                env.extend(
                    good.iter()
                        .filter(|(k, _)| k != var)
                        .map(|(k, v)| (*k, v.as_str())),
                );
                if let Some(v) = value {
                    env.push((var, v.as_str()));
                }
                let out = exec_in(&ns, &bin("sluice-cni"), &env, &stdin);
                let shown: String = format!("{value:?}").chars().take(40).collect();
                let label = format!("{command} {var}={shown}");
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
