//! The CNI contract of the real `sluice-cni` binary, exec'd as a runtime execs it against a
//! node built in network namespaces: every spec version's ADD/CHECK/DEL, VERSION, STATUS, GC,
//! the error codes of bad input, and that nothing (IPAM address, endpoint, host veth, pod
//! interface) is left behind on any path. Expected values come from the CNI checklist
//! (the CNI specification 1.1.0, §0, §2, §5, §6, §11–12), never from running Sluice.

use std::net::Ipv4Addr;

use datapath_user::{EndpointRecord, Endpoints};
use serde_json::{json, Value};
use test_support::{
    node::{NODE_IP, OUTSIDE_IP},
    unique, CniCall, CniOutput, Netns, Node, NodeOptions, Pod,
};

/// Every version the plugin must speak (§0.2).
const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The pods' next hop (link-local, answered by the host veth).
const GATEWAY: &str = "169.254.1.1";
const POD_CIDR_PREFIX: &str = "10.244.1.";
/// The GC key of attachments still in use (§2.6).
const VALID: &str = "cni.dev/valid-attachments";

fn node() -> Node {
    Node::new(NodeOptions::default())
}

/// A node whose pool is a /30: exactly two usable addresses.
fn tiny_node() -> Node {
    Node::new(NodeOptions {
        pod_cidr: Some("10.244.1.0/30".into()),
        ..Default::default()
    })
}

/// A container id shaped like a runtime's (64 characters).
fn container_id() -> String {
    format!("{:0>64}", unique("c"))
}

fn pod_ns() -> Netns {
    Netns::new(&unique("slp"))
}

/// An ADD/DEL/CHECK for `cid` in `ns` with Kubernetes' CNI_ARGS for pod `web`.
fn call(command: &str, version: &str, cid: &str, ns: &Netns) -> CniCall {
    CniCall::attachment(command, version, cid, &ns.path(), "web")
}

fn with_prev(mut c: CniCall, prev: &Value) -> CniCall {
    c.extra = json!({ "prevResult": prev });
    c
}

/// A STATUS or GC call: libcni sets no attachment variables for these (§2.4, §2.6).
fn network_call(command: &str, version: &str) -> CniCall {
    let mut c = CniCall::new(command, version);
    c.ifname = None;
    c
}

/// Asserts a failed call with `code`, stdout holding the one error object of §6.
fn expect_error(out: &CniOutput, code: u64) -> Value {
    assert_ne!(out.status, 0, "expected code {code}, got success: {out:?}");
    let v = out.json();
    assert_eq!(v["code"], code, "wrong code: {v}, stderr: {}", out.stderr);
    assert!(v["msg"].is_string(), "error without msg: {v}");
    v
}

/// Asserts a failed call (the code is Sluice's own, not the spec's) with an error object.
fn expect_failure(out: &CniOutput) {
    assert_ne!(out.status, 0, "expected a failure, got success: {out:?}");
    assert!(out.json()["code"].is_u64(), "no error code: {}", out.stdout);
}

fn msg(e: &Value) -> &str {
    e["msg"].as_str().unwrap_or_default()
}

/// Asserts a successful call whose stdout is empty (CHECK, STATUS, GC: §2.3, §2.4, §2.6).
fn expect_silent_ok(out: &CniOutput) {
    out.assert_ok();
    assert!(out.stdout.is_empty(), "unexpected stdout: {}", out.stdout);
}

/// Asserts the node holds nothing for any attachment: no IPAM address, endpoint, host veth
/// or host route.
fn assert_node_clean(node: &Node) {
    let (ips, eps, veths) = (node.ipam_addresses(), node.endpoints(), node.host_veths());
    assert!(ips.is_empty(), "IPAM addresses left: {ips:?}");
    assert!(eps.is_empty(), "endpoints left: {eps:?}");
    assert!(veths.is_empty(), "host veths left: {veths:?}");
    let routes = node.node.sh("ip -4 route show");
    let pod_routes: Vec<&str> = routes
        .lines()
        .filter(|l| l.starts_with(POD_CIDR_PREFIX))
        .collect();
    assert!(
        pod_routes.is_empty(),
        "host routes to pods left: {pod_routes:?}"
    );
}

/// The interfaces of a namespace other than `lo`.
fn links(ns: &Netns) -> Vec<String> {
    let v: Value = serde_json::from_str(&ns.sh("ip -j link show")).expect("ip -j link");
    v.as_array()
        .expect("link list")
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| *n != "lo")
        .map(str::to_owned)
        .collect()
}

fn assert_no_pod_interface(ns: &Netns) {
    let left = links(ns);
    assert!(left.is_empty(), "interfaces left in {}: {left:?}", ns.name);
}

/// `ip -j link show dev NAME` in `ns`: the link's JSON object.
fn link(ns: &Netns, name: &str) -> Value {
    let v: Value =
        serde_json::from_str(&ns.sh(&format!("ip -j link show dev {name}"))).expect("ip -j");
    v[0].clone()
}

/// Whether `s` is a 17-character unicast MAC `xx:xx:xx:xx:xx:xx` (podman parses it, §5.3).
fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    s.len() == 17
        && parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0)
        && s != "00:00:00:00:00:00"
}

/// The pod address of an ADD result.
fn result_ip(r: &Value) -> Ipv4Addr {
    let addr = r["ips"][0]["address"].as_str().expect("ips[0].address");
    addr.split('/').next().unwrap().parse().expect("IPv4")
}

fn ping_from(ns: &Netns, dst: Ipv4Addr) -> bool {
    let out = ns.sh_output(&format!("ping -c1 -W2 {dst}"));
    out.status.success()
}

/// Asserts that the node records exactly the pods `(cid, ip)` in IPAM and the endpoint map.
fn assert_attachments(node: &Node, want: &[(&str, Ipv4Addr)]) {
    let mut ips: Vec<String> = want.iter().map(|(_, ip)| ip.to_string()).collect();
    ips.sort();
    assert_eq!(node.ipam_addresses(), ips, "IPAM addresses");
    let eps = node.endpoints();
    assert_eq!(eps.len(), want.len(), "endpoints: {eps:?}");
    for (cid, ip) in want {
        assert!(
            eps.iter()
                .any(|e| e.container_id == *cid && e.addr == std::net::IpAddr::V4(*ip)),
            "no endpoint for {cid} {ip}: {eps:?}"
        );
    }
}

/// ADD, CHECK and DEL in `version`, checking the result's shape (§5) against the real pod.
fn lifecycle(version: &str) {
    let node = node();
    let ns = pod_ns();
    let cid = container_id();
    let add = node.cni(&call("ADD", version, &cid, &ns));
    add.assert_ok();
    let r = add.json();
    assert_eq!(r["cniVersion"], version, "result version: {r}");

    // interfaces: [0] host veth without sandbox, [1] the pod's eth0 in CNI_NETNS.
    let ifs = r["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifs.len(), 2, "interfaces: {r}");
    let (host, pod) = (&ifs[0], &ifs[1]);
    let host_name = host["name"].as_str().expect("host name");
    assert!(host["sandbox"].as_str().unwrap_or("").is_empty(), "{r}");
    assert_eq!(node.host_veths(), vec![host_name.to_string()]);
    assert_eq!(pod["name"], "eth0");
    assert_eq!(pod["sandbox"], json!(ns.path().to_str().unwrap()));
    for i in ifs {
        let mac = i["mac"].as_str().unwrap_or_default();
        assert!(is_mac(mac), "bad MAC {mac:?} in {r}");
    }
    let eth0 = link(&ns, "eth0");
    assert_eq!(pod["mac"], eth0["address"], "reported MAC is not eth0's");
    assert_eq!(host["mac"], link(&node.node, host_name)["address"]);
    let conf_mtu = node.plugin_config(version)["mtu"].clone();
    assert_eq!(eth0["mtu"], conf_mtu, "eth0 mtu");
    if version == "1.1.0" {
        assert_eq!(pod["mtu"], conf_mtu, "1.1.0 interface mtu: {r}");
    } else {
        let no_mtu = ifs.iter().all(|i| i.get("mtu").is_none());
        assert!(no_mtu, "mtu before 1.1.0: {r}");
    }

    // ips: one /32 from the pod CIDR, on interface 1.
    let ips = r["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 1, "{r}");
    assert_eq!(ips[0]["interface"], 1);
    // ips[].version exists in the 0.3.x/0.4.0 shape only.
    let family = version.starts_with("0.").then(|| json!("4"));
    assert_eq!(ips[0].get("version").cloned(), family, "{r}");
    let addr = ips[0]["address"].as_str().expect("address");
    let in_cidr = addr.starts_with(POD_CIDR_PREFIX) && addr.ends_with("/32");
    assert!(in_cidr, "{addr}");
    assert_eq!(ips[0]["gateway"], GATEWAY);
    assert!(
        r["routes"]
            .as_array()
            .expect("routes")
            .contains(&json!({"dst": "0.0.0.0/0", "gw": GATEWAY})),
        "no default route: {r}"
    );
    let ip = result_ip(&r);

    // The pod really has it all, and reaches the node.
    let addrs: Value = serde_json::from_str(&ns.sh("ip -j -4 addr show dev eth0")).unwrap();
    assert_eq!(addrs[0]["addr_info"][0]["local"], ip.to_string(), "{addrs}");
    assert_eq!(addrs[0]["addr_info"][0]["prefixlen"], 32, "{addrs}");
    let routes: Value = serde_json::from_str(&ns.sh("ip -j -4 route show default")).unwrap();
    assert_eq!(routes[0]["gateway"], GATEWAY, "{routes}");
    assert_eq!(routes[0]["dev"], "eth0", "{routes}");
    // The gateway is a permanent neighbour: the host veth's MAC, never resolved by ARP.
    let neigh: Value =
        serde_json::from_str(&ns.sh(&format!("ip -j neigh show {GATEWAY} dev eth0"))).unwrap();
    assert_eq!(neigh[0]["lladdr"], host["mac"], "{neigh}");
    assert_eq!(neigh[0]["state"], json!(["PERMANENT"]), "{neigh}");
    assert!(ping_from(&ns, NODE_IP), "pod cannot ping the node");
    assert_attachments(&node, &[(cid.as_str(), ip)]);
    let ep = &node.endpoints()[0];
    let who = (ep.ifname.as_str(), ep.namespace.as_str(), ep.name.as_str());
    assert_eq!(who, ("eth0", "default", "web"));

    // CHECK exists from 0.4.0 (§2 gates).
    let check = node.cni(&with_prev(call("CHECK", version, &cid, &ns), &r));
    if matches!(version, "0.3.0" | "0.3.1") {
        let e = expect_error(&check, 1);
        assert_eq!(e["msg"], "config version does not allow CHECK");
        assert_eq!(
            e["cniVersion"], version,
            "error not in the config's version"
        );
    } else {
        expect_silent_ok(&check);
    }

    // DEL, with prevResult as libcni sends it (≥ 0.4.0 only).
    let mut del = call("DEL", version, &cid, &ns);
    if !matches!(version, "0.3.0" | "0.3.1") {
        del = with_prev(del, &r);
    }
    node.cni(&del).assert_ok();
    assert_node_clean(&node);
    assert_no_pod_interface(&ns);
}

/// Test that a 0.3.0 config gets a 0.3.0-shaped ADD result matching the pod, CHECK is refused
/// with code 1, and DEL frees everything.
#[test]
fn lifecycle_0_3_0() {
    lifecycle("0.3.0");
}

/// Test that a 0.3.1 config gets a 0.3.1-shaped ADD result matching the pod, CHECK is refused
/// with code 1, and DEL frees everything.
#[test]
fn lifecycle_0_3_1() {
    lifecycle("0.3.1");
}

/// Test that a 0.4.0 config gets a 0.4.0-shaped ADD result matching the pod, CHECK passes,
/// and DEL frees everything.
#[test]
fn lifecycle_0_4_0() {
    lifecycle("0.4.0");
}

/// Test that a 1.0.0 config gets a 1.0.0-shaped ADD result (no ips[].version) matching the
/// pod, CHECK passes, and DEL frees everything.
#[test]
fn lifecycle_1_0_0() {
    lifecycle("1.0.0");
}

/// Test that a 1.1.0 config gets a 1.1.0-shaped ADD result (interface mtu) matching the pod,
/// CHECK passes, and DEL frees everything.
#[test]
fn lifecycle_1_1_0() {
    lifecycle("1.1.0");
}

/// Test that VERSION answers empty or garbage stdin and libcni's probe with a cniVersion and
/// exactly the five supported versions, ignoring libcni's dummy variables (§2.5).
#[test]
fn version_lists_supported_versions() {
    let node = node();
    for (stdin, want) in [
        (&b""[..], "1.1.0"),
        (&br#"{"cniVersion":"1.1.0"}"#[..], "1.1.0"),
        (&br#"{"cniVersion":"0.4.0"}"#[..], "0.4.0"),
        (&b"not json"[..], "1.1.0"),
    ] {
        let mut c = CniCall::new("VERSION", "1.1.0");
        c.stdin = Some(stdin.to_vec());
        c.netns = Some("dummy".into());
        c.ifname = Some("dummy".into());
        let out = node.cni(&c);
        out.assert_ok();
        let v = out.json();
        assert_eq!(v["cniVersion"], want, "{v}");
        let mut got: Vec<&str> = v["supportedVersions"]
            .as_array()
            .expect("supportedVersions")
            .iter()
            .map(|s| s.as_str().expect("version string"))
            .collect();
        got.sort();
        assert_eq!(got, VERSIONS, "{v}");
    }
}

/// Test that stdin that is not JSON fails ADD with code 6 and creates nothing.
#[test]
fn add_malformed_json_is_code_6_and_leaves_nothing() {
    let node = node();
    let ns = pod_ns();
    let mut c = call("ADD", "1.0.0", &container_id(), &ns);
    c.stdin = Some(br#"{"cniVersion": "1.0.0", "name": "#.to_vec());
    expect_error(&node.cni(&c), 6);
    assert_node_clean(&node);
    assert_no_pod_interface(&ns);
}

/// Test that ADD without CNI_CONTAINERID, CNI_IFNAME or CNI_NETNS fails with code 4 naming
/// the variable, and creates nothing.
#[test]
fn add_missing_env_is_code_4_naming_the_variable() {
    let node = node();
    for var in ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS"] {
        let ns = pod_ns();
        let mut c = call("ADD", "1.0.0", &container_id(), &ns);
        c.unset = vec![var.into()];
        let e = expect_error(&node.cni(&c), 4);
        assert!(msg(&e).contains(var), "{var}: {e}");
        assert_node_clean(&node);
        assert_no_pod_interface(&ns);
    }
}

/// Test that an unknown CNI_COMMAND (matched exactly, like the Go skel) is code 4.
#[test]
fn unknown_command_is_code_4() {
    let node = node();
    let ns = pod_ns();
    for cmd in ["FOO", "add"] {
        expect_error(&node.cni(&call(cmd, "1.0.0", &container_id(), &ns)), 4);
    }
    assert_node_clean(&node);
    assert_no_pod_interface(&ns);
}

/// Test that a config cniVersion outside the supported five fails with code 1 and
/// "incompatible CNI versions" (§7), creating nothing.
#[test]
fn add_unsupported_version_is_code_1() {
    let node = node();
    let ns = pod_ns();
    for version in ["0.2.0", "9.9.9"] {
        let e = expect_error(&node.cni(&call("ADD", version, &container_id(), &ns)), 1);
        assert_eq!(e["msg"], "incompatible CNI versions", "{version}: {e}");
    }
    assert_node_clean(&node);
    assert_no_pod_interface(&ns);
}

/// Test that a config without a network name fails with code 7 (§1.2) and creates nothing.
#[test]
fn add_missing_network_name_is_code_7() {
    let node = node();
    let ns = pod_ns();
    let mut conf = node.plugin_config("1.0.0");
    conf.as_object_mut().unwrap().remove("name");
    let mut c = call("ADD", "1.0.0", &container_id(), &ns);
    c.stdin = Some(serde_json::to_vec(&conf).unwrap());
    let e = expect_error(&node.cni(&c), 7);
    assert!(msg(&e).contains("missing network name"), "{e}");
    assert_node_clean(&node);
    assert_no_pod_interface(&ns);
}

/// Test that an interface name of 16 bytes or containing '/' is code 4 naming CNI_IFNAME.
#[test]
fn add_invalid_ifname_is_code_4() {
    let node = node();
    let ns = pod_ns();
    for ifname in ["abcdefghijklmnop", "eth/0"] {
        let mut c = call("ADD", "1.0.0", &container_id(), &ns);
        c.ifname = Some(ifname.into());
        let e = expect_error(&node.cni(&c), 4);
        assert!(msg(&e).contains("CNI_IFNAME"), "{e}");
    }
    assert_node_clean(&node);
    assert_no_pod_interface(&ns);
}

/// Test that a container id outside `^[a-zA-Z0-9][a-zA-Z0-9_.-]*$` is code 4 naming
/// CNI_CONTAINERID.
#[test]
fn add_invalid_container_id_is_code_4() {
    let node = node();
    let ns = pod_ns();
    for cid in ["-leading-dash", "has space", "a/b"] {
        let e = expect_error(&node.cni(&call("ADD", "1.0.0", cid, &ns)), 4);
        assert!(msg(&e).contains("CNI_CONTAINERID"), "{e}");
    }
    assert_node_clean(&node);
    assert_no_pod_interface(&ns);
}

/// Test that ADD fails with code 104 when CNI_IFNAME already exists in the pod namespace,
/// leaving that interface alone and allocating nothing (§2.1 MUST).
#[test]
fn add_existing_ifname_is_code_104_and_leaves_nothing() {
    let node = node();
    let ns = pod_ns();
    // A bridge, not a dummy: this kernel has no dummy driver.
    ns.sh("ip link add eth0 type bridge");
    expect_error(&node.cni(&call("ADD", "1.0.0", &container_id(), &ns)), 104);
    assert_node_clean(&node);
    assert_eq!(links(&ns), vec!["eth0".to_string()]);
    let kind = ns.sh("ip -d -o link show dev eth0");
    assert!(kind.contains("bridge"), "eth0 was replaced: {kind}");
}

/// Test that an ADD failing after its address was allocated (here: the pod namespace already
/// has a default route) releases the address and removes everything it created (§2.1).
#[test]
fn add_failing_after_allocation_releases_everything() {
    let node = node();
    let ns = pod_ns();
    ns.sh("ip route add blackhole default");
    let cid = container_id();
    expect_failure(&node.cni(&call("ADD", "1.0.0", &cid, &ns)));
    assert_node_clean(&node);
    assert_no_pod_interface(&ns);
    // The runtime's DEL after the failed ADD, then a clean retry, work.
    node.cni(&call("DEL", "1.0.0", &cid, &ns)).assert_ok();
    ns.sh("ip route del blackhole default");
    node.cni(&call("ADD", "1.0.0", &cid, &ns)).assert_ok();
    assert!(ping_from(&ns, NODE_IP));
}

/// Test that ADD into a namespace path that does not exist fails with code 103.
#[test]
fn add_missing_netns_is_code_103() {
    let node = node();
    let gone = std::path::PathBuf::from(format!("/run/netns/{}", unique("gone")));
    let c = CniCall::attachment("ADD", "1.0.0", &container_id(), &gone, "web");
    expect_error(&node.cni(&c), 103);
    assert_node_clean(&node);
}

/// Test that a CNI_NETNS that is not a network namespace (a regular file) fails with code 103
/// and allocates nothing.
#[test]
fn add_netns_not_a_namespace_is_code_103() {
    let node = node();
    let file = node.path("agent.log");
    let c = CniCall::attachment("ADD", "1.0.0", &container_id(), &file, "web");
    expect_error(&node.cni(&c), 103);
    assert_node_clean(&node);
}

/// Test that ADD refuses a CNI_NETNS that is the plugin's own namespace (Go skel code 8,
/// which §1.2 says to mirror) and leaves the node's interfaces, addresses and routes alone.
#[test]
fn add_into_own_netns_is_refused() {
    let node = node();
    let state = || node.node.sh("ip -o link; ip -o addr; ip route");
    let before = state();
    // Without its default route the node would end up routing through the "pod" gateway.
    node.node.sh("ip route del default");
    let c = CniCall::attachment("ADD", "1.0.0", &container_id(), &node.node.path(), "web");
    let out = node.cni(&c);
    node.node
        .sh(&format!("ip route replace default via {OUTSIDE_IP}"));
    expect_error(&out, 8);
    assert_node_clean(&node);
    assert_eq!(state(), before, "the node's own networking changed");
}

/// Test that with a /30 pool the third ADD fails with code 101 saying the pool is exhausted,
/// leaks nothing, and succeeds after one pod is deleted.
#[test]
fn add_exhausted_pool_is_code_101_until_a_del() {
    let node = tiny_node();
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    assert_ne!(a.ip, b.ip);
    let ns = pod_ns();
    let cid = container_id();
    let e = expect_error(&node.cni(&call("ADD", "1.0.0", &cid, &ns)), 101);
    assert!(msg(&e).contains("exhausted"), "{e}");
    assert_attachments(&node, &[(a.cid.as_str(), a.ip), (b.cid.as_str(), b.ip)]);
    assert_eq!(node.host_veths().len(), 2);
    assert_no_pod_interface(&ns);
    // The runtime DELs the failed attachment: that must not touch the others.
    node.cni(&call("DEL", "1.0.0", &cid, &ns)).assert_ok();
    assert_attachments(&node, &[(a.cid.as_str(), a.ip), (b.cid.as_str(), b.ip)]);

    node.del_pod(&a);
    let out = node.cni(&call("ADD", "1.0.0", &cid, &ns));
    out.assert_ok();
    let ip = result_ip(&out.json());
    assert_eq!(ip, a.ip, "the freed address is the only one");
    assert!(ping_from(&ns, NODE_IP));
    assert!(b.ping(NODE_IP));
}

/// Test that ADDing the same container again without DEL fails (interface exists, §12.3),
/// in its own or another namespace, and that the first attachment keeps working.
#[test]
fn add_same_container_twice_fails_and_first_survives() {
    let node = node();
    let pod = node.add_pod("a");
    let again = CniCall::attachment("ADD", "1.0.0", &pod.cid, &pod.ns.path(), &pod.name);
    expect_error(&node.cni(&again), 104);
    let other = pod_ns();
    expect_failure(&node.cni(&call("ADD", "1.0.0", &pod.cid, &other)));
    assert_no_pod_interface(&other);

    assert_attachments(&node, &[(pod.cid.as_str(), pod.ip)]);
    assert_eq!(node.host_veths().len(), 1);
    assert!(pod.ping(NODE_IP), "first attachment broken");
    let check = CniCall::attachment("CHECK", "1.0.0", &pod.cid, &pod.ns.path(), &pod.name);
    expect_silent_ok(&node.cni(&with_prev(check, &pod.result)));
}

fn del_of(pod: &Pod) -> CniCall {
    CniCall::attachment("DEL", "1.0.0", &pod.cid, &pod.ns.path(), &pod.name)
}

/// Test that a second DEL of the same attachment succeeds and everything stays freed.
#[test]
fn del_twice_succeeds() {
    let node = node();
    let pod = node.add_pod("a");
    let del = with_prev(del_of(&pod), &pod.result);
    node.cni(&del).assert_ok();
    assert_node_clean(&node);
    node.cni(&del).assert_ok();
    assert_node_clean(&node);
    assert_no_pod_interface(&pod.ns);
}

/// Test that DEL of a container that was never added succeeds and creates nothing.
#[test]
fn del_never_added_succeeds() {
    let node = node();
    let ns = pod_ns();
    let del = call("DEL", "1.0.0", &container_id(), &ns);
    node.cni(&del).assert_ok();
    assert_node_clean(&node);
    assert_no_pod_interface(&ns);
}

/// Test that DEL after the pod's namespace was deleted succeeds and frees the host veth, the
/// address and the endpoint (§2.2).
#[test]
fn del_with_netns_deleted_frees_everything() {
    let node = node();
    let Pod {
        ns, cid, result, ..
    } = node.add_pod("a");
    let path = ns.path();
    drop(ns);
    assert!(!path.exists());
    let del = CniCall::attachment("DEL", "1.0.0", &cid, &path, "a");
    node.cni(&with_prev(del, &result)).assert_ok();
    assert_node_clean(&node);
}

/// Test that DEL with CNI_NETNS unset (the runtime lost it) succeeds and frees everything.
#[test]
fn del_without_netns_frees_everything() {
    let node = node();
    let pod = node.add_pod("a");
    let mut del = with_prev(del_of(&pod), &pod.result);
    del.netns = None;
    node.cni(&del).assert_ok();
    assert_node_clean(&node);
    assert_no_pod_interface(&pod.ns);
}

/// Test that DEL without prevResult (lost cache) succeeds and frees everything.
#[test]
fn del_without_prev_result_frees_everything() {
    let node = node();
    let pod = node.add_pod("a");
    node.cni(&del_of(&pod)).assert_ok();
    assert_node_clean(&node);
    assert_no_pod_interface(&pod.ns);
}

/// Test that DEL accepts a prevResult in another version than its config (§7) and frees
/// everything.
#[test]
fn del_with_prev_result_of_another_version_succeeds() {
    let node = node();
    for (add_version, del_version) in [("0.3.1", "1.1.0"), ("1.1.0", "0.4.0"), ("0.4.0", "1.0.0")] {
        let pod = node.add_pod_version("a", add_version);
        assert_eq!(pod.result["cniVersion"], add_version);
        let del = CniCall::attachment("DEL", del_version, &pod.cid, &pod.ns.path(), "a");
        node.cni(&with_prev(del, &pod.result)).assert_ok();
        assert_node_clean(&node);
        assert_no_pod_interface(&pod.ns);
    }
}

/// Test that DEL works with the agent stopped (a failing DEL leaks pods in kubelet's retry
/// loop, STYLE) and frees everything.
#[test]
fn del_with_agent_stopped_frees_everything() {
    let mut node = node();
    let pod = node.add_pod("a");
    node.stop_agent(false);
    node.cni(&with_prev(del_of(&pod), &pod.result)).assert_ok();
    assert_node_clean(&node);
    assert_no_pod_interface(&pod.ns);
}

fn check_of(pod: &Pod) -> CniCall {
    CniCall::attachment("CHECK", "1.0.0", &pod.cid, &pod.ns.path(), &pod.name)
}

/// Test that CHECK without prevResult fails with code 105 (§2.3: prevResult is required).
#[test]
fn check_without_prev_result_fails() {
    let node = node();
    let pod = node.add_pod("a");
    expect_error(&node.cni(&check_of(&pod)), 105);
}

/// Test that CHECK fails with code 105 once the pod's eth0 was deleted.
#[test]
fn check_after_pod_interface_deleted_fails() {
    let node = node();
    let pod = node.add_pod("a");
    pod.sh("ip link del eth0");
    expect_error(&node.cni(&with_prev(check_of(&pod), &pod.result)), 105);
}

/// Test that CHECK fails with code 105 once eth0's MAC differs from the ADD result.
#[test]
fn check_after_mac_changed_fails() {
    let node = node();
    let pod = node.add_pod("a");
    expect_silent_ok(&node.cni(&with_prev(check_of(&pod), &pod.result)));
    pod.sh("ip link set dev eth0 address 02:42:ac:11:00:99");
    expect_error(&node.cni(&with_prev(check_of(&pod), &pod.result)), 105);
}

/// Test that CHECK fails with code 105 once the pod's address was removed from eth0.
#[test]
fn check_after_address_removed_fails() {
    let node = node();
    let pod = node.add_pod("a");
    pod.sh(&format!("ip addr del {}/32 dev eth0", pod.ip));
    expect_error(&node.cni(&with_prev(check_of(&pod), &pod.result)), 105);
}

/// Test that CHECK fails with code 105 once the pod's entry is gone from the endpoint map
/// (hidden state, §2.3).
#[test]
fn check_after_endpoint_entry_removed_fails() {
    let node = node();
    let pod = node.add_pod("a");
    Endpoints::open(&node.bpffs())
        .expect("open endpoint maps")
        .remove(std::net::IpAddr::V4(pod.ip))
        .expect("remove endpoint");
    expect_error(&node.cni(&with_prev(check_of(&pod), &pod.result)), 105);
}

/// Test that CHECK fails once the datapath program is detached from the pod's host veth
/// (§0.6 and §12.5: our BPF programs are hidden state CHECK verifies).
#[test]
fn check_after_datapath_program_detached_fails() {
    let node = node();
    let pod = node.add_pod("a");
    let host = pod.result["interfaces"][0]["name"].as_str().unwrap();
    node.node.sh(&format!("tc qdisc del dev {host} clsact"));
    expect_error(&node.cni(&with_prev(check_of(&pod), &pod.result)), 105);
}

/// Test that CHECK fails once the agent is stopped (§0.6 "daemon reachable", §12.5).
#[test]
fn check_with_agent_stopped_fails() {
    let mut node = node();
    let pod = node.add_pod("a");
    node.stop_agent(false);
    expect_error(&node.cni(&with_prev(check_of(&pod), &pod.result)), 105);
}

/// Test that STATUS with a 1.1.0 config succeeds silently while the agent is up (§2.4).
#[test]
fn status_ok_with_agent_up() {
    let node = node();
    expect_silent_ok(&node.cni(&network_call("STATUS", "1.1.0")));
}

/// Test that STATUS fails with code 50 once the agent is stopped, that DEL is still served
/// (§2.4: STATUS is informational), and that STATUS succeeds again once the agent is back.
#[test]
fn status_agent_stopped_is_code_50() {
    let mut node = node();
    let pod = node.add_pod("a");
    node.stop_agent(false);
    expect_error(&node.cni(&network_call("STATUS", "1.1.0")), 50);
    node.del_pod(&pod);
    assert_node_clean(&node);
    node.start_agent();
    expect_silent_ok(&node.cni(&network_call("STATUS", "1.1.0")));
}

/// Test that STATUS fails with code 50 after the agent crashed (SIGKILL leaves its socket
/// file behind).
#[test]
fn status_agent_killed_is_code_50() {
    let mut node = node();
    node.stop_agent(true);
    expect_error(&node.cni(&network_call("STATUS", "1.1.0")), 50);
}

/// Test that STATUS with a 1.0.0 config is refused with code 1 (§2 gates).
#[test]
fn status_with_1_0_0_config_is_code_1() {
    let node = node();
    let e = expect_error(&node.cni(&network_call("STATUS", "1.0.0")), 1);
    assert_eq!(e["msg"], "config version does not allow STATUS");
}

/// Test that STATUS fails with code 50 while a /30 pool is exhausted and succeeds again once
/// an address is freed.
#[test]
fn status_pool_exhausted_is_code_50() {
    let node = tiny_node();
    let a = node.add_pod("a");
    let _b = node.add_pod("b");
    expect_error(&node.cni(&network_call("STATUS", "1.1.0")), 50);
    node.del_pod(&a);
    expect_silent_ok(&node.cni(&network_call("STATUS", "1.1.0")));
}

/// A GC call listing `keep` under `key` (`None`: no list at all).
fn gc_call(version: &str, key: Option<&str>, keep: &[&Pod]) -> CniCall {
    let mut c = network_call("GC", version);
    if let Some(key) = key {
        let list: Vec<Value> = keep
            .iter()
            .map(|p| json!({"containerID": p.cid, "ifname": "eth0"}))
            .collect();
        c.extra = json!({ key: list });
    }
    c
}

/// Asserts that `a` is untouched and working after GC, and `b` is entirely gone.
fn assert_gc_kept_only(node: &Node, a: &Pod, b: &Pod) {
    assert_attachments(node, &[(a.cid.as_str(), a.ip)]);
    assert_eq!(
        node.host_veths(),
        vec![a.result["interfaces"][0]["name"].clone()]
    );
    assert_no_pod_interface(&b.ns);
    assert!(a.ping(NODE_IP), "kept pod lost connectivity");
    expect_silent_ok(&node.cni(&with_prev(check_of(a), &a.result)));
}

/// Test that GC with `cni.dev/valid-attachments` = [A] removes B's address, endpoint and host
/// veth and leaves A untouched and reachable (§2.6).
#[test]
fn gc_removes_attachments_not_listed() {
    let node = node();
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    let gc = gc_call("1.1.0", Some(VALID), &[&a]);
    expect_silent_ok(&node.cni(&gc));
    assert_gc_kept_only(&node, &a, &b);
}

/// Test that GC honours the legacy key `cni.dev/attachments` (§2.6).
#[test]
fn gc_honours_legacy_attachments_key() {
    let node = node();
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    expect_silent_ok(&node.cni(&gc_call("1.1.0", Some("cni.dev/attachments"), &[&a])));
    assert_gc_kept_only(&node, &a, &b);
}

/// Test that GC without any attachment list deletes nothing ("no information", §2.6).
#[test]
fn gc_without_attachment_list_deletes_nothing() {
    let node = node();
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    expect_silent_ok(&node.cni(&gc_call("1.1.0", None, &[])));
    assert_attachments(&node, &[(a.cid.as_str(), a.ip), (b.cid.as_str(), b.ip)]);
    assert_eq!(node.host_veths().len(), 2);
    assert!(a.ping(NODE_IP) && b.ping(NODE_IP));
}

/// Test that GC with an explicit empty list removes every attachment (§2.6).
#[test]
fn gc_with_empty_list_removes_everything() {
    let node = node();
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    expect_silent_ok(&node.cni(&gc_call("1.1.0", Some(VALID), &[])));
    assert_node_clean(&node);
    assert_no_pod_interface(&a.ns);
    assert_no_pod_interface(&b.ns);
}

/// Test that GC with a 1.0.0 config is refused with code 1 and deletes nothing (§2 gates).
#[test]
fn gc_with_1_0_0_config_is_code_1() {
    let node = node();
    let a = node.add_pod("a");
    let gc = gc_call("1.0.0", Some(VALID), &[]);
    let e = expect_error(&node.cni(&gc), 1);
    assert_eq!(e["msg"], "config version does not allow GC");
    assert_attachments(&node, &[(a.cid.as_str(), a.ip)]);
}

/// ADDs with `args` as CNI_ARGS and returns the endpoint the node recorded.
fn add_with_args(node: &Node, ns: &Netns, cid: &str, args: &str) -> EndpointRecord {
    let mut c = call("ADD", "1.0.0", cid, ns);
    c.args = Some(args.into());
    let out = node.cni(&c);
    out.assert_ok();
    assert!(ping_from(ns, NODE_IP));
    let eps = node.endpoints();
    assert_eq!(eps.len(), 1, "{eps:?}");
    eps[0].clone()
}

/// Test that CNI_ARGS with unknown keys and IgnoreUnknown=1 (containerd, CRI-O) are accepted
/// and the pod namespace and name reach the endpoint record (§1.2, §12.9).
#[test]
fn cni_args_unknown_keys_accepted_and_pod_recorded() {
    let node = node();
    let ns = pod_ns();
    let cid = container_id();
    let args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=web-0;\
         K8S_POD_INFRA_CONTAINER_ID={cid};K8S_POD_UID=0d1e-77;FOO=bar;TRACEPARENT=00-1-2-01"
    );
    let ep = add_with_args(&node, &ns, &cid, &args);
    let who = (ep.namespace.as_str(), ep.name.as_str(), ep.ifname.as_str());
    assert_eq!(who, ("team-a", "web-0", "eth0"));
    assert_eq!(ep.container_id, cid);
}

/// Test that podman's CNI_ARGS (`IgnoreUnknown=1;K8S_POD_NAME=x` only) are accepted (§10).
#[test]
fn cni_args_podman_style_accepted() {
    let node = node();
    let ns = pod_ns();
    let args = "IgnoreUnknown=1;K8S_POD_NAME=x";
    let ep = add_with_args(&node, &ns, &container_id(), args);
    assert_eq!((ep.namespace.as_str(), ep.name.as_str()), ("", "x"));
}

/// Test that the well-known CNI_ARGS keys `IP` and `MAC` (podman, CRI-O) give the pod that
/// address and MAC, and that an address already taken or outside the pool is an error that
/// allocates nothing (§1.2, §8 host-local behaviour).
#[test]
fn cni_args_ip_and_mac_are_honoured() {
    let node = node();
    let ns = pod_ns();
    let cid = container_id();
    let mut c = call("ADD", "1.0.0", &cid, &ns);
    c.args = Some("IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.244.1.50;MAC=c2:11:22:33:44:55".into());
    let out = node.cni(&c);
    out.assert_ok();
    let r = out.json();
    assert_eq!(r["ips"][0]["address"], "10.244.1.50/32", "{r}");
    assert_eq!(r["interfaces"][1]["mac"], "c2:11:22:33:44:55", "{r}");
    assert_eq!(link(&ns, "eth0")["address"], "c2:11:22:33:44:55");
    assert!(ping_from(&ns, NODE_IP));
    for ip in ["10.244.1.50", "10.99.0.1"] {
        let other = pod_ns();
        let mut c = call("ADD", "1.0.0", &container_id(), &other);
        c.args = Some(format!("IgnoreUnknown=1;K8S_POD_NAME=y;IP={ip}"));
        expect_failure(&node.cni(&c));
        assert_no_pod_interface(&other);
        assert_attachments(&node, &[(cid.as_str(), "10.244.1.50".parse().unwrap())]);
        assert_eq!(node.host_veths().len(), 1);
    }
}

/// Whether `s` is exactly one JSON document (whitespace around it allowed).
fn one_json_document(s: &str) -> bool {
    let mut it = serde_json::Deserializer::from_str(s).into_iter::<Value>();
    matches!(it.next(), Some(Ok(_))) && it.next().is_none()
}

/// Test that stdout carries only the protocol: one JSON document for an ADD result or an
/// error, nothing for CHECK, STATUS and GC, and diagnostics only on stderr (§0.1).
#[test]
fn stdout_carries_only_the_protocol() {
    let node = node();
    let ns = pod_ns();
    let cid = container_id();
    let add = node.cni(&call("ADD", "1.1.0", &cid, &ns));
    add.assert_ok();
    let out = &add.stdout;
    assert!(one_json_document(out), "ADD stdout: {out:?}");
    let r = add.json();
    let failed = node.cni(&call("ADD", "1.1.0", &cid, &ns));
    assert_ne!(failed.status, 0);
    let out = &failed.stdout;
    assert!(one_json_document(out), "error stdout: {out:?}");
    expect_silent_ok(&node.cni(&with_prev(call("CHECK", "1.1.0", &cid, &ns), &r)));
    expect_silent_ok(&node.cni(&network_call("STATUS", "1.1.0")));
    expect_silent_ok(&node.cni(&gc_call("1.1.0", None, &[])));
    let del = node.cni(&with_prev(call("DEL", "1.1.0", &cid, &ns), &r));
    del.assert_ok();
    let out = &del.stdout;
    assert!(
        out.is_empty() || one_json_document(out),
        "DEL stdout: {out:?}"
    );
    assert_node_clean(&node);
}

/// Test that a `logFile` in the config gets one line per invocation, with the outcome, and
/// that stdout still carries only the protocol.
#[test]
fn log_file_records_each_invocation() {
    let node = node();
    let ns = pod_ns();
    let log = node.dir.path().join("cni.log");
    let mut add = CniCall::attachment("ADD", "1.0.0", "logged1", &ns.path(), "logged");
    add.extra = json!({ "logFile": log });
    node.cni(&add).assert_ok();
    let mut del = CniCall::attachment("DEL", "1.0.0", "logged1", &ns.path(), "logged");
    del.extra = json!({ "logFile": log });
    node.cni(&del).assert_ok();
    let text = std::fs::read_to_string(&log).expect("log file written");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains("ADD container=logged1 ifname=eth0 pod=default/logged ok"),
        "{text}"
    );
    assert!(
        lines[1].contains("DEL container=logged1") && lines[1].ends_with(" ok"),
        "{text}"
    );
}
