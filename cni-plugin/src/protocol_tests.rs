//! Unit tests of `config` (kept apart so config.rs stays readable): network config parsing and
//! its error codes, `runtimeConfig`/`args` decoding, GC attachment keys, version gates and
//! VERSION answers, each case taken from the CNI spec checklist.

use super::*;
use crate::result::{Interface, IpConfig};
use serde_json::json;

fn conf(v: Value) -> Result<NetConf, CniError> {
    NetConf::parse(v.to_string().as_bytes())
}

fn base() -> Value {
    json!({"cniVersion": "1.0.0", "name": "sluice", "type": "sluice-cni"})
}

/// `base()` with `extra`'s members added.
fn with(extra: Value) -> Value {
    let mut v = base();
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    v
}

fn code(v: Value) -> u32 {
    conf(v).expect_err("expected an error").code()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Test that a minimal config parses with every documented default.
#[test]
fn config_minimal_gets_defaults() {
    let c = conf(base()).unwrap();
    assert_eq!(c.cni_version, "1.0.0");
    assert_eq!(c.name, "sluice");
    assert_eq!(c.plugin_type, "sluice-cni");
    assert_eq!(c.mtu, 1500);
    assert!(c.pod_cidrs.is_empty());
    assert_eq!(c.state_dir, PathBuf::from("/run/sluice"));
    assert_eq!(c.bpffs, PathBuf::from("/sys/fs/bpf"));
    assert_eq!(c.log_file, None);
    assert_eq!(c.gateway, ip("169.254.1.1"));
    assert!(c.dns.is_empty());
    assert_eq!(c.runtime_config, RuntimeConfig::default());
    assert_eq!(c.args, ConfArgs::default());
    assert_eq!(c.prev_result, None);
    assert_eq!(c.valid_attachments, None);
    assert_eq!(c.raw, base());
}

/// Test that every plugin-specific key the agent writes is read.
#[test]
fn config_plugin_keys_parse() {
    let c = conf(with(json!({
        "mtu": 1450,
        "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"],
        "stateDir": "/var/run/sluice-test",
        "bpffs": "/tmp/bpffs",
        "logFile": "/var/log/sluice-cni.log",
        "gateway": "169.254.1.2",
        "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}
    })))
    .unwrap();
    assert_eq!(c.mtu, 1450);
    assert_eq!(
        c.pod_cidrs,
        vec![
            "10.244.1.0/24".parse::<IpNetwork>().unwrap(),
            "fd00:10:244:1::/64".parse().unwrap()
        ]
    );
    assert_eq!(c.require_pod_cidrs().unwrap().len(), 2);
    assert_eq!(c.state_dir, PathBuf::from("/var/run/sluice-test"));
    assert_eq!(c.bpffs, PathBuf::from("/tmp/bpffs"));
    assert_eq!(c.log_file, Some(PathBuf::from("/var/log/sluice-cni.log")));
    assert_eq!(c.gateway, ip("169.254.1.2"));
    assert_eq!(c.dns.nameservers, vec!["10.96.0.10"]);
    assert_eq!(c.dns.search, vec!["svc.cluster.local"]);
}

/// Test that unknown and reserved keys are accepted and ignored (spec MUST 11).
#[test]
fn config_unknown_keys_accepted() {
    let c = conf(with(json!({
        "cniVersions": ["0.4.0", "1.0.0", "1.1.0"],
        "capabilities": {"portMappings": true, "bandwidth": true},
        "ipam": {"type": "host-local"},
        "ipMasq": true,
        "disableCheck": "true",
        "cni.dev/something": {"x": 1},
        "args": {"org.example": {"y": 2}, "cni": {"labels": [{"key": "a", "value": "b"}]}},
        "runtimeConfig": {
            "bandwidth": {"IngressRate": 1, "EgressRate": 2},
            "io.kubernetes.cri.pod-annotations": {"a": "b"},
            "cgroupPath": "/kubepods.slice/pod1",
            "dns": {"Servers": ["10.96.0.10"]}
        },
        "futureKey": [1, 2, 3]
    })))
    .unwrap();
    assert_eq!(c.runtime_config, RuntimeConfig::default());
    assert_eq!(c.args, ConfArgs::default());
    assert_eq!(c.raw["futureKey"], json!([1, 2, 3]));
}

/// Test that empty, garbage or non-object stdin is code 6 (§12.8).
#[test]
fn config_garbage_is_code_6() {
    for bad in [
        &b""[..],
        b"garbage",
        b"{",
        b"[1,2]",
        b"\"x\"",
        b"null",
        b"\xff\xfe",
    ] {
        let err = NetConf::parse(bad).unwrap_err();
        assert_eq!(err.code(), 6, "{:?}", String::from_utf8_lossy(bad));
    }
    let out = NetConf::parse(b"{").unwrap_err().to_json("1.1.0");
    assert_eq!(out["msg"], "failed to decode network config");
    assert!(out["details"].as_str().unwrap().contains("EOF"), "{out}");
}

/// Test that unsupported versions are code 1 with the skel's message and a missing one counts
/// as 0.1.0, while a non-string or non-numeric version is code 6.
#[test]
fn config_version_errors() {
    for v in ["0.1.0", "0.2.0", "1.2.0", "2.0.0", "1.0"] {
        let err = conf(with(json!({"cniVersion": v}))).unwrap_err();
        assert_eq!(err.code(), 1, "{v}");
        assert_eq!(err.to_string(), "incompatible CNI versions");
        assert!(err
            .details()
            .unwrap()
            .starts_with(&format!("config is {v:?}")));
    }
    for missing in [json!(null), json!("")] {
        let err = conf(with(json!({ "cniVersion": missing }))).unwrap_err();
        assert_eq!(err.code(), 1);
        assert!(err.details().unwrap().starts_with("config is \"0.1.0\""));
    }
    let mut no_version = base();
    no_version.as_object_mut().unwrap().remove("cniVersion");
    assert_eq!(code(no_version), 1);
    for bad in [
        json!(1),
        json!(["1.0.0"]),
        json!("abc"),
        json!("1.0.0.0"),
        json!("v1.0.0"),
        json!("1..0"),
    ] {
        assert_eq!(code(with(json!({ "cniVersion": bad }))), 6, "{bad}");
    }
}

/// Test that every supported version parses.
#[test]
fn config_every_supported_version_parses() {
    for v in SUPPORTED_VERSIONS {
        assert_eq!(conf(with(json!({"cniVersion": v}))).unwrap().cni_version, v);
    }
}

/// Test that a missing or invalid network name is code 7 (a non-string one does not decode).
#[test]
fn config_name_errors() {
    let mut no_name = base();
    no_name.as_object_mut().unwrap().remove("name");
    let err = conf(no_name).unwrap_err();
    assert_eq!(err.code(), 7);
    assert!(err.to_string().contains("missing network name"), "{err}");
    for bad in ["", "-net", ".net", "my net", "net/1", "net:1"] {
        assert_eq!(code(with(json!({"name": bad}))), 7, "{bad}");
    }
    assert_eq!(code(with(json!({"name": 5}))), 6);
    assert!(conf(with(json!({"name": "k8s-pod-network_v1.2"}))).is_ok());
}

/// Test that the name is checked before the version, as the Go skel does.
#[test]
fn config_name_checked_before_version() {
    assert_eq!(code(json!({"cniVersion": "9.9.9", "type": "x"})), 7);
}

/// Test that `type` is required, non-empty and a bare binary name.
#[test]
fn config_type_required() {
    let mut no_type = base();
    no_type.as_object_mut().unwrap().remove("type");
    assert_eq!(code(no_type), 7);
    for bad in [json!(""), json!("../bin/x"), json!(3)] {
        assert_eq!(code(with(json!({ "type": bad }))), 7, "{bad}");
    }
}

/// Test that the MTU must be an integer in 68..=65535, and ≥ 1280 with an IPv6 pod CIDR.
#[test]
fn config_mtu_range() {
    for ok in [68, 1280, 9000, 65535] {
        assert_eq!(conf(with(json!({"mtu": ok}))).unwrap().mtu, ok);
    }
    for bad in [
        json!(0),
        json!(67),
        json!(65536),
        json!(-1),
        json!(1450.5),
        json!("1450"),
        json!(u64::MAX),
    ] {
        let err = conf(with(json!({ "mtu": bad }))).unwrap_err();
        assert_eq!(err.code(), 7, "{bad}");
        assert!(err.to_string().contains("mtu"), "{err}");
    }
    let v6 = json!({"mtu": 1000, "podCIDRs": ["fd00::/64"]});
    assert_eq!(code(with(v6)), 7);
    assert!(conf(with(json!({"mtu": 1000, "podCIDRs": ["10.0.0.0/24"]}))).is_ok());
}

/// Test that a bad pod CIDR is code 7 and the message names the bad value.
#[test]
fn config_pod_cidrs_errors_name_value() {
    for (bad, needle) in [
        (json!(["10.244.1.0/33"]), "10.244.1.0/33"),
        (json!(["10.244.1.5/24"]), "10.244.1.5/24"),
        (json!(["10.244.1.0"]), "10.244.1.0"),
        (json!(["10.244.1.0/24", "nope"]), "nope"),
        (json!([24]), "24"),
        (json!("10.244.1.0/24"), "10.244.1.0/24"),
    ] {
        let err = conf(with(json!({ "podCIDRs": bad }))).unwrap_err();
        assert_eq!(err.code(), 7, "{bad}");
        assert!(err.to_string().contains(needle), "{err}");
    }
}

/// Test that ADD's pod CIDR requirement is code 7 when the agent wrote none.
#[test]
fn config_require_pod_cidrs() {
    let err = conf(base()).unwrap().require_pod_cidrs().unwrap_err();
    assert_eq!(err.code(), 7);
    assert!(err.to_string().contains("podCIDRs"), "{err}");
    let empty = conf(with(json!({"podCIDRs": []}))).unwrap();
    assert!(empty.require_pod_cidrs().is_err());
}

/// Test that paths must be absolute strings and the gateway an address.
#[test]
fn config_paths_and_gateway_validated() {
    for (key, bad) in [
        ("stateDir", json!("run/sluice")),
        ("bpffs", json!("")),
        ("logFile", json!(1)),
        ("gateway", json!("169.254.1")),
        ("gateway", json!(1)),
        ("dns", json!({"nameservers": "10.0.0.10"})),
    ] {
        let mut v = base();
        v[key] = bad.clone();
        assert_eq!(code(v), 7, "{key} {bad}");
    }
    let c = conf(with(json!({"gateway": "fe80::1"}))).unwrap();
    assert_eq!(c.gateway, ip("fe80::1"));
}

/// Test that containerd's PascalCase and podman's camelCase port mappings decode identically
/// (spec MUST 13, §12.9b).
#[test]
fn runtime_config_port_mappings_both_spellings_equal() {
    let containerd = conf(with(json!({"runtimeConfig": {"portMappings": [
        {"HostPort": 8080, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""},
        {"HostPort": 5353, "ContainerPort": 53, "Protocol": "udp", "HostIP": "127.0.0.1"}
    ]}})))
    .unwrap();
    let podman = conf(with(json!({"runtimeConfig": {"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}
    ]}})))
    .unwrap();
    let want = vec![
        PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: Protocol::Tcp,
            host_ip: None,
        },
        PortMapping {
            host_port: 5353,
            container_port: 53,
            protocol: Protocol::Udp,
            host_ip: Some(ip("127.0.0.1")),
        },
    ];
    assert_eq!(containerd.runtime_config.port_mappings, want);
    assert_eq!(podman.runtime_config.port_mappings, want);
    // Any casing of keys and protocol, and of the member name itself.
    let odd = conf(with(json!({"runtimeConfig": {"PORTMAPPINGS": [
        {"hostport": 8080, "CONTAINERPORT": 80, "PROTOCOL": "TCP", "hostip": null}
    ]}})))
    .unwrap();
    assert_eq!(odd.runtime_config.port_mappings, want[..1]);
}

/// Test that a port mapping without protocol is TCP, bad ports are code 7 and icmp code 2.
#[test]
fn runtime_config_port_mapping_validation() {
    let pm = |entry: Value| conf(with(json!({"runtimeConfig": {"portMappings": [entry]}})));
    let sctp = pm(json!({"hostPort": 1, "containerPort": 65535, "protocol": "SCTP"})).unwrap();
    assert_eq!(
        sctp.runtime_config.port_mappings[0].protocol,
        Protocol::Sctp
    );
    let bare = pm(json!({"hostPort": 80, "containerPort": 80, "protocol": ""})).unwrap();
    assert_eq!(bare.runtime_config.port_mappings[0].protocol, Protocol::Tcp);
    assert_eq!(Protocol::Udp.to_string(), "udp");

    let err = pm(json!({"hostPort": 80, "containerPort": 80, "protocol": "icmp"})).unwrap_err();
    assert_eq!(err.code(), 2);
    assert!(
        err.to_string().contains("icmp") && err.to_string().contains("protocol"),
        "{err}"
    );
    for bad in [
        json!({"hostPort": 0, "containerPort": 80}),
        json!({"hostPort": 65536, "containerPort": 80}),
        json!({"hostPort": -1, "containerPort": 80}),
        json!({"hostPort": "80", "containerPort": 80}),
        json!({"hostPort": 80}),
        json!({"hostPort": 80, "containerPort": 80, "hostIP": "localhost"}),
        json!({"hostPort": 80, "containerPort": 80, "protocol": 6}),
        json!("80:80"),
    ] {
        assert_eq!(pm(bad.clone()).unwrap_err().code(), 7, "{bad}");
    }
    assert_eq!(
        code(with(json!({"runtimeConfig": {"portMappings": {}}}))),
        7
    );
    assert_eq!(code(with(json!({"runtimeConfig": []}))), 7);
    let none = conf(with(json!({"runtimeConfig": {"portMappings": null}}))).unwrap();
    assert!(none.runtime_config.port_mappings.is_empty());
}

/// Test that the `ips` and `mac` capabilities decode, with or without prefixes.
#[test]
fn runtime_config_ips_and_mac() {
    let c = conf(with(json!({"runtimeConfig": {
        "ips": ["10.1.2.3/24", "2001:db8::5"], "mac": "c2:11:22:33:44:55"
    }})))
    .unwrap();
    assert_eq!(
        c.runtime_config.ips,
        vec![ip("10.1.2.3"), ip("2001:db8::5")]
    );
    assert_eq!(
        c.runtime_config.mac.unwrap().to_string(),
        "c2:11:22:33:44:55"
    );
    for bad in [
        json!({"ips": ["10.1.2"]}),
        json!({"ips": "10.1.2.3"}),
        json!({"ips": [5]}),
        json!({"mac": "c2:11:22:33:44"}),
        json!({"mac": "01:00:5e:00:00:01"}),
        json!({"mac": 5}),
    ] {
        assert_eq!(code(with(json!({ "runtimeConfig": bad }))), 7, "{bad}");
    }
}

/// Test that `args.cni` ips/mac decode and that runtimeConfig > args > CNI_ARGS.
#[test]
fn args_precedence_over_cni_args() {
    let env_args = CniArgs::parse("IgnoreUnknown=1;IP=10.0.0.9;MAC=c2:00:00:00:00:09").unwrap();
    let only_env = conf(base()).unwrap();
    assert_eq!(only_env.requested_ips(&env_args), [ip("10.0.0.9")]);
    assert_eq!(only_env.requested_mac(&env_args), env_args.mac);

    let args = conf(with(
        json!({"args": {"cni": {"ips": ["10.0.0.8/24"], "mac": "c2:00:00:00:00:08"}}}),
    ))
    .unwrap();
    assert_eq!(args.args.ips, vec![ip("10.0.0.8")]);
    assert_eq!(args.requested_ips(&env_args), [ip("10.0.0.8")]);
    assert_eq!(
        args.requested_mac(&env_args).unwrap().to_string(),
        "c2:00:00:00:00:08"
    );

    let rc = conf(with(json!({
        "args": {"cni": {"ips": ["10.0.0.8"], "mac": "c2:00:00:00:00:08"}},
        "runtimeConfig": {"ips": ["10.0.0.7"], "mac": "c2:00:00:00:00:07"}
    })))
    .unwrap();
    assert_eq!(rc.requested_ips(&env_args), [ip("10.0.0.7")]);
    assert_eq!(
        rc.requested_mac(&env_args).unwrap().to_string(),
        "c2:00:00:00:00:07"
    );

    assert!(conf(base())
        .unwrap()
        .requested_ips(&CniArgs::default())
        .is_empty());
    for bad in [
        json!({"cni": {"ips": ["x"]}}),
        json!({"cni": {"mac": "x"}}),
        json!({"cni": 1}),
        json!(1),
    ] {
        assert_eq!(code(with(json!({ "args": bad }))), 7, "{bad}");
    }
}

/// Test that a prevResult of any supported version parses into the config (§7).
#[test]
fn config_prev_result_any_version() {
    let result = CniResult {
        interfaces: vec![Interface {
            name: "eth0".into(),
            mac: Some("aa:bb:cc:00:00:02".into()),
            sandbox: Some("/var/run/netns/cni-1".into()),
            mtu: None,
        }],
        ips: vec![IpConfig {
            address: "10.244.1.7/24".parse().unwrap(),
            gateway: Some(ip("169.254.1.1")),
            interface: Some(0),
        }],
        ..CniResult::default()
    };
    for (config_version, prev_version) in
        [("1.0.0", "0.4.0"), ("0.4.0", "1.0.0"), ("1.1.0", "1.1.0")]
    {
        let c = conf(with(json!({
            "cniVersion": config_version,
            "prevResult": result.to_json(prev_version)
        })))
        .unwrap();
        assert_eq!(
            c.prev_result.as_ref(),
            Some(&result),
            "{prev_version} in {config_version}"
        );
    }
    let mut no_version = result.to_json("1.0.0");
    no_version.as_object_mut().unwrap().remove("cniVersion");
    assert_eq!(
        conf(with(json!({"prevResult": no_version})))
            .unwrap()
            .prev_result,
        Some(result)
    );
}

/// Test that an absent, null or empty prevResult is fine (DEL after a lost cache) and a
/// malformed one is code 6 naming prevResult.
#[test]
fn config_prev_result_absent_empty_malformed() {
    assert_eq!(
        conf(with(json!({"prevResult": null}))).unwrap().prev_result,
        None
    );
    assert_eq!(
        conf(with(json!({"prevResult": {}}))).unwrap().prev_result,
        Some(CniResult::default())
    );
    let err = conf(with(json!({"prevResult": {"ips": [{"address": "bogus"}]}}))).unwrap_err();
    assert_eq!(err.code(), 6);
    assert!(err.to_string().contains("prevResult"), "{err}");
    assert_eq!(code(with(json!({"prevResult": "x"}))), 6);
}

fn attachments(v: Value) -> Option<Vec<(String, String)>> {
    let c = conf(with(v)).unwrap();
    c.valid_attachments.map(|list| {
        list.into_iter()
            .map(|a| (a.container_id, a.ifname))
            .collect()
    })
}

fn pair(c: &str, i: &str) -> (String, String) {
    (c.to_owned(), i.to_owned())
}

/// Test that GC reads `cni.dev/valid-attachments`, the legacy `cni.dev/attachments`, their
/// union when both differ, and tells absent (None) from an empty list (spec §2.6).
#[test]
fn gc_attachment_keys() {
    let list =
        json!([{"containerID": "aaa", "ifname": "eth0"}, {"containerID": "bbb", "ifname": "net1"}]);
    let want = Some(vec![pair("aaa", "eth0"), pair("bbb", "net1")]);
    assert_eq!(
        attachments(json!({"cni.dev/valid-attachments": list})),
        want
    );
    assert_eq!(attachments(json!({"cni.dev/attachments": list})), want);
    assert_eq!(
        attachments(json!({"cni.dev/valid-attachments": list, "cni.dev/attachments": list})),
        want
    );
    assert_eq!(
        attachments(json!({
            "cni.dev/valid-attachments": [{"containerID": "aaa", "ifname": "eth0"}],
            "cni.dev/attachments": [{"containerID": "ccc", "ifname": "eth0"}]
        })),
        Some(vec![pair("aaa", "eth0"), pair("ccc", "eth0")])
    );
    assert_eq!(attachments(json!({})), None);
    assert_eq!(
        attachments(json!({"cni.dev/valid-attachments": null})),
        None
    );
    assert_eq!(
        attachments(json!({"cni.dev/valid-attachments": []})),
        Some(vec![])
    );
    assert_eq!(
        attachments(json!({"cni.dev/attachments": []})),
        Some(vec![])
    );
    // Go decodes field names case-insensitively; so do we.
    assert_eq!(
        attachments(
            json!({"cni.dev/valid-attachments": [{"ContainerID": "aaa", "IfName": "eth0"}]})
        ),
        Some(vec![pair("aaa", "eth0")])
    );
}

/// Test that a malformed attachment list fails GC (code 7) instead of deleting live pods.
#[test]
fn gc_attachment_malformed_is_code_7() {
    for bad in [
        json!({"cni.dev/valid-attachments": {}}),
        json!({"cni.dev/valid-attachments": ["aaa"]}),
        json!({"cni.dev/valid-attachments": [{"containerID": "aaa"}]}),
        json!({"cni.dev/attachments": [{"containerID": "", "ifname": "eth0"}]}),
        json!({"cni.dev/attachments": [{"containerID": 1, "ifname": "eth0"}]}),
    ] {
        assert_eq!(code(with(bad.clone())), 7, "{bad}");
    }
}

/// Test that the skel's gates hold for every version × command, with exact messages.
#[test]
fn version_gates_per_command() {
    for v in SUPPORTED_VERSIONS {
        let c = conf(with(json!({"cniVersion": v}))).unwrap();
        for cmd in [Command::Add, Command::Del, Command::Version] {
            assert!(c.check_allowed(cmd).is_ok(), "{cmd} {v}");
        }
        let check = c.check_allowed(Command::Check);
        assert_eq!(check.is_ok(), v >= "0.4.0", "CHECK {v}");
        for cmd in [Command::Gc, Command::Status] {
            assert_eq!(c.check_allowed(cmd).is_ok(), v == "1.1.0", "{cmd} {v}");
        }
    }
    let old = conf(with(json!({"cniVersion": "0.3.1"}))).unwrap();
    let err = old.check_allowed(Command::Check).unwrap_err();
    assert_eq!(
        (err.code(), err.to_string()),
        (1, "config version does not allow CHECK".into())
    );
    let v1 = conf(base()).unwrap();
    for (cmd, msg) in [
        (Command::Gc, "config version does not allow GC"),
        (Command::Status, "config version does not allow STATUS"),
    ] {
        let err = v1.check_allowed(cmd).unwrap_err();
        assert_eq!((err.code(), err.to_string()), (1, msg.into()));
    }
}

/// Test that versions compare numerically, not as strings.
#[test]
fn version_compare_numeric() {
    assert!(version_ge("0.10.0", "0.4.0"));
    assert!(version_ge("1.0.0", "0.4.0"));
    assert!(version_ge("0.4.0", "0.4.0"));
    assert!(!version_ge("0.3.1", "0.4.0"));
    assert!(version_ge("1", "0.4.0"));
    assert!(!version_ge("abc", "0.1.0"));
    assert_eq!(parse_version("1.1"), Some((1, 1, 0)));
    assert_eq!(parse_version("1.1.0.0"), None);
    assert_eq!(parse_version(""), None);
    let c = conf(with(json!({"cniVersion": "0.4.0"}))).unwrap();
    assert!(c.version_at_least("0.3.0") && c.version_at_least("0.4.0"));
    assert!(!c.version_at_least("1.0.0"));
}

/// Test that VERSION answers on empty, garbage and versioned stdin (§12.1).
#[test]
fn version_response_cases() {
    let all = json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
    for (stdin, want) in [
        (&b""[..], "1.1.0"),
        (b"garbage", "1.1.0"),
        (b"[]", "1.1.0"),
        (br#"{"cniVersion":"1.1.0"}"#, "1.1.0"),
        (br#"{"cniVersion":"0.4.0","name":"x"}"#, "0.4.0"),
        (br#"{"cniVersion":"0.2.0"}"#, "1.1.0"),
        (br#"{"cniVersion":5}"#, "1.1.0"),
    ] {
        assert_eq!(
            version_response(stdin),
            json!({"cniVersion": want, "supportedVersions": all}),
            "{:?}",
            String::from_utf8_lossy(stdin)
        );
    }
}

/// Test that pod CIDRs that cannot be pod networks are code 7 naming the reason, for every
/// command but DEL, which falls back to none (it needs no pod CIDR).
#[test]
fn config_pod_cidrs_that_cannot_hold_pods() {
    for (bad, needle) in [
        (json!(["0.0.0.0/0"]), "covers"),
        (json!(["127.0.0.0/8"]), "loopback"),
        (json!(["224.0.0.0/4"]), "multicast"),
        (json!(["255.255.255.255/32"]), "broadcast"),
        (json!(["169.254.0.0/16"]), "link-local"),
        (json!(["10.244.1.0/31"]), "too small"),
        (json!(["10.0.0.0/16", "10.0.1.0/24"]), "overlap"),
    ] {
        let v = with(json!({ "podCIDRs": bad }));
        let err = conf(v.clone()).unwrap_err();
        assert_eq!(err.code(), 7, "{bad}");
        assert!(err.to_string().contains(needle), "{bad}: {err}");
        let del = NetConf::parse_for(v.to_string().as_bytes(), Command::Del).unwrap();
        assert!(del.pod_cidrs.is_empty(), "{bad}");
    }
    let err = conf(with(
        json!({"podCIDRs": ["10.0.0.0/24"], "gateway": "10.0.0.1"}),
    ))
    .unwrap_err();
    assert!(err.to_string().contains("gateway"), "{err}");
}

/// Test that DEL parses a config whose values it does not use are malformed, keeping what it
/// needs, while the values it needs (name, version, state dir) stay checked.
#[test]
fn config_del_ignores_values_it_does_not_use() {
    let v = with(json!({
        "type": 5, "mtu": "x", "podCIDRs": {}, "gateway": [], "dns": 1, "prevResult": 2,
        "runtimeConfig": "x", "args": 3, "logFile": "rel", "cni.dev/valid-attachments": 4,
        "stateDir": "/tmp/s",
    }));
    assert!(conf(v.clone()).is_err());
    let del = NetConf::parse_for(v.to_string().as_bytes(), Command::Del).unwrap();
    assert_eq!(del.state_dir, PathBuf::from("/tmp/s"));
    assert_eq!(del.name, "sluice");
    for bad in [
        with(json!({"stateDir": "rel"})),
        with(json!({"name": 1})),
        with(json!({"cniVersion": "9.9.9"})),
    ] {
        assert!(NetConf::parse_for(bad.to_string().as_bytes(), Command::Del).is_err());
    }
}

/// Test that a huge value is quoted in an error cut to 128 bytes, with an ellipsis and its
/// length, never in full.
#[test]
fn config_errors_quote_huge_values_bounded() {
    let huge = "é".repeat(300_000);
    for v in [
        with(json!({ "name": format!("a/{huge}") })),
        with(json!({ "mtu": huge })),
        with(json!({ "podCIDRs": [huge] })),
    ] {
        let err = conf(v).unwrap_err();
        let text = err.to_json("1.0.0").to_string();
        assert!(text.len() < 1024, "{} bytes", text.len());
        assert!(text.contains("… ("), "{text}");
        assert!(text.contains(" bytes)"), "{text}");
    }
}
