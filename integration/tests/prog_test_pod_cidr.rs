//! Tier-2 test (`BPF_PROG_TEST_RUN`) of masquerade across a pod CIDR change: `sl_up_egress`
//! masquerades a source that is a local endpoint even when it lies outside the configured pod
//! CIDR (a pod made under an earlier CIDR keeps its address until it is deleted), and still
//! leaves alone a source outside the CIDR that is no endpoint (the node's own traffic).
//! Expected frames come from the harness ([`test_support::progtest`]), never from Sluice.

use datapath_common::nat;
use test_support::progtest::*;

/// A pod address outside `node_config`'s pod CIDR (10.244.1.0/24): the CIDR it was made in.
const OLD_POD: [u8; 4] = [10, 250, 0, 9];
/// Also outside the CIDR, and no endpoint.
const STRANGER: [u8; 4] = [10, 250, 0, 10];

/// Test that a TCP SYN from a local endpoint outside the pod CIDR is masqueraded to the node
/// address and a port of the range, with both NAT entries, while the same SYN from an address
/// outside the CIDR that is no endpoint leaves unchanged and untracked.
#[test]
fn uplink_egress_masquerades_endpoint_outside_pod_cidr() {
    let mut dp = Datapath::load();
    dp.set_config(&node_config(true));
    dp.add_endpoint(OLD_POD, POD_B_IFINDEX, POD_B_MAC, HOST_B_MAC);

    let stranger = tcp_frame(true, (STRANGER, 40000), (WORLD, 80), TCP_SYN);
    let r = dp.run(UPLINK_EGRESS, &stranger, LO_IFINDEX);
    assert_eq!(r.verdict, TC_ACT_UNSPEC);
    assert_eq!(r.frame, stranger, "a non-endpoint source was translated");
    assert!(dp.nat(nat::MAP_NAME).is_empty());

    let syn = tcp_frame(true, (OLD_POD, 40000), (WORLD, 80), TCP_SYN);
    let r = dp.run(UPLINK_EGRESS, &syn, LO_IFINDEX);
    assert_eq!(r.verdict, TC_ACT_UNSPEC);
    assert_eq!(src_ip(&r.frame), NODE_IP, "old pod not masqueraded");
    let port = sport(&r.frame);
    assert!((PORT_MIN..=PORT_MAX).contains(&port), "port {port}");
    assert_checksums(&r.frame);
    assert_eq!(
        r.frame,
        tcp_frame(true, (NODE_IP, port), (WORLD, 80), TCP_SYN)
    );
    let fwd = tuple(IPPROTO_TCP, (OLD_POD, 40000), (WORLD, 80));
    let rev = tuple(IPPROTO_TCP, (WORLD, 80), (NODE_IP, port));
    assert_eq!(dp.nat(nat::MAP_NAME), [(fwd, binding(NODE_IP, port))]);
    assert_eq!(dp.nat(nat::REV_MAP_NAME), [(rev, binding(OLD_POD, 40000))]);
}
