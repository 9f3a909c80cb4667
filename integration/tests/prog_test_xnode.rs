//! Tier-2 tests of the cross-node datapath through `BPF_PROG_TEST_RUN`: a pod's packet to
//! another node's pod (`SL_PEERS_V1`) in tunnel and native mode, the tunnel MTU, masquerade
//! exemption for cluster pod CIDRs, delivery of packets from other nodes (tunnel device
//! ingress, uplink ingress in native mode), and a NodePort (`externalTrafficPolicy: Cluster`)
//! forwarded to a backend on another node with its reply put back. Expectations come from the
//! design in `datapath_common::peers` and RFC 1812 §5.3.1 (a routed hop decrements the TTL).
//!
//! test_run does not carry out redirects (see [`test_support::progtest`]): a redirect is
//! `TC_ACT_REDIRECT` and the frame is what the program left.

use datapath_common::{
    config::{self, NodeConfig},
    endpoint, peers, svc,
};
use test_support::progtest::*;

const A: LocalPod = LocalPod::A;
const B: LocalPod = LocalPod::B;

/// Another node's pod CIDR and address, and a pod there.
const PEER_CIDR: [u8; 4] = [10, 244, 2, 0];
const PEER_NODE: [u8; 4] = [192, 0, 2, 3];
const REMOTE_POD: [u8; 4] = [10, 244, 2, 9];
/// Any ifindex: test_run records the redirect target and does not use it.
const TUNNEL_IFINDEX: u32 = 77;
const TUNNEL_MTU: u32 = 1450;
const NODE_PORT: u16 = 30080;
const SVC_ID: u32 = 9;

fn config(routing: u8, flags: u32) -> NodeConfig {
    NodeConfig {
        routing,
        tunnel_ifindex: TUNNEL_IFINDEX,
        tunnel_mtu: TUNNEL_MTU,
        flags,
        ..node_config(false)
    }
}

/// Pods A (the sender, on the loopback) and B, one peer node, `routing`, `flags`.
fn cluster(routing: u8, flags: u32) -> Datapath {
    let mut dp = two_pods();
    dp.set_config(&config(routing, flags));
    dp.add_peer(PEER_CIDR, 24, PEER_NODE);
    dp
}

/// An ICMP echo request from pod A to `dst`, with `extra` bytes of data beyond the usual 32.
fn echo_from_a(dst: [u8; 4], extra: usize) -> Vec<u8> {
    let mut icmp = icmp_echo(ICMP_ECHO_REQUEST, 7, 1);
    icmp.extend(std::iter::repeat_n(0x5a, extra));
    // Fix the ICMP checksum over the grown message.
    icmp[2..4].copy_from_slice(&[0, 0]);
    let c = internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    sent(&A, dst, IPPROTO_ICMP, &icmp)
}

/// `frame` as it leaves after one routed hop: TTL 63, IP checksum fixed, MACs `dst`/`src`.
fn hop(frame: &[u8], dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let ip = &frame[14..];
    let h = Ip {
        ttl: 63,
        frag: u16::from_be_bytes([ip[6], ip[7]]),
        ..Ip::new(src_ip(frame), dst_ip(frame), ip[9])
    };
    ethernet(dst, src, ETH_P_IP, &ipv4(h, &ip[20..]))
}

/// Test that in tunnel mode a pod's packet to another node's pod is redirected (into the
/// tunnel device) with the TTL decremented, the inner MACs set to the two nodes' tunnel
/// devices' (to the peer's, from this node's), and counted
/// as fwd:remote-node.
#[test]
fn from_pod_remote_pod_tunnel_redirects_with_ttl_minus_one() {
    let dp = cluster(peers::ROUTING_TUNNEL, 0);
    let frame = echo_from_a(REMOTE_POD, 0);
    let before = dp.counters();
    let r = dp.run(FROM_POD, &frame, LO_IFINDEX);
    assert_out(
        &r,
        TC_ACT_REDIRECT,
        &hop(
            &frame,
            peers::tunnel_mac(PEER_NODE),
            peers::tunnel_mac(NODE_IP),
        ),
    );
    dp.assert_counted(&before, &[("fwd:remote-node", 1, frame.len())]);
}

/// Test that in native mode a pod's packet to another node's pod is redirected (out of the
/// uplink, next hop the peer) with the TTL decremented and counted as fwd:remote-node.
#[test]
fn from_pod_remote_pod_native_redirects_with_ttl_minus_one() {
    let dp = cluster(peers::ROUTING_NATIVE, 0);
    let frame = echo_from_a(REMOTE_POD, 0);
    let before = dp.counters();
    let r = dp.run(FROM_POD, &frame, LO_IFINDEX);
    // bpf_redirect_neigh fills the MACs when it transmits.
    assert_out(&r, TC_ACT_REDIRECT, &hop(&frame, HOST_A_MAC, POD_A_MAC));
    dp.assert_counted(&before, &[("fwd:remote-node", 1, frame.len())]);
}

/// Test that a packet to an address in no peer's CIDR (the outside) still goes to the stack
/// untouched in tunnel mode.
#[test]
fn from_pod_outside_still_goes_to_stack() {
    let dp = cluster(peers::ROUTING_TUNNEL, 0);
    let frame = echo_from_a(WORLD, 0);
    let r = dp.run(FROM_POD, &frame, LO_IFINDEX);
    assert_out(&r, TC_ACT_UNSPEC, &frame);
}

/// Test that a packet one byte over the tunnel MTU is left to the stack unchanged (which
/// answers "fragmentation needed" for its route through the tunnel device), never dropped,
/// and that one of exactly the MTU is tunnelled.
#[test]
fn from_pod_too_large_for_tunnel_goes_to_stack() {
    let dp = cluster(peers::ROUTING_TUNNEL, 0);
    // IPv4 20 + ICMP 8 + 32 bytes of data = 60; grow to the MTU and one over it.
    let fits = echo_from_a(REMOTE_POD, TUNNEL_MTU as usize - 60);
    assert_eq!(fits.len() - 14, TUNNEL_MTU as usize);
    let over = echo_from_a(REMOTE_POD, TUNNEL_MTU as usize - 59);
    let before = dp.counters();
    let r = dp.run(FROM_POD, &over, LO_IFINDEX);
    assert_out(&r, TC_ACT_UNSPEC, &over);
    dp.assert_counted(&before, &[("fwd:tunnel-too-big", 1, over.len())]);
    let r = dp.run(FROM_POD, &fits, LO_IFINDEX);
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
}

/// Test that the uplink does not masquerade a pod's packet to another node's pod CIDR, and
/// still masquerades one to the outside.
#[test]
fn uplink_egress_never_masquerades_to_peer_cidr() {
    let dp = cluster(peers::ROUTING_NATIVE, config::FLAG_MASQUERADE);
    let to_peer = tcp_frame(true, (POD_A, 40000), (REMOTE_POD, 80), TCP_SYN);
    let r = dp.run(UPLINK_EGRESS, &to_peer, LO_IFINDEX);
    assert_out(&r, TC_ACT_UNSPEC, &to_peer);
    assert!(dp.nat(datapath_common::nat::MAP_NAME).is_empty());
    let out = tcp_frame(true, (POD_A, 40000), (WORLD, 80), TCP_SYN);
    let r = dp.run(UPLINK_EGRESS, &out, LO_IFINDEX);
    assert_eq!(r.verdict, TC_ACT_UNSPEC);
    assert_eq!(src_ip(&r.frame), NODE_IP, "the outside sees the node");
}

/// Test that with a peer's own address in the peers map (as the agent writes it), a pod's
/// packet to that node (a NodePort backend answering the node that translated the client to
/// itself) is not masqueraded.
#[test]
fn uplink_egress_never_masquerades_to_peer_node() {
    let mut dp = cluster(peers::ROUTING_NATIVE, config::FLAG_MASQUERADE);
    dp.add_peer(PEER_NODE, 32, PEER_NODE);
    let reply = tcp_frame(true, (POD_B, 8080), (PEER_NODE, 1500), TCP_SYN | TCP_ACK);
    let r = dp.run(UPLINK_EGRESS, &reply, LO_IFINDEX);
    assert_out(&r, TC_ACT_UNSPEC, &reply);
    assert!(dp.nat(datapath_common::nat::MAP_NAME).is_empty());
}

/// A frame as the tunnel device hands it up after decapsulation: the inner MACs the sender
/// set (to this node's device, from the peer's), from another node's pod to `dst`.
fn from_tunnel(dst: [u8; 4], l4: &[u8], proto: u8) -> Vec<u8> {
    let ip = ipv4(Ip::new(REMOTE_POD, dst, proto), l4);
    let (to, from) = (peers::tunnel_mac(NODE_IP), peers::tunnel_mac(PEER_NODE));
    ethernet(to, from, ETH_P_IP, &ip)
}

/// Test that the tunnel device's ingress delivers another node's pod's packet into the local
/// pod (redirect, pod B's MACs, TTL-1), counted as fwd:local-pod.
#[test]
fn tunnel_ingress_delivers_to_local_pod() {
    let dp = cluster(peers::ROUTING_TUNNEL, 0);
    let seg = syn((REMOTE_POD, 40000), (POD_B, 80));
    let frame = from_tunnel(POD_B, &seg, IPPROTO_TCP);
    let before = dp.counters();
    let r = dp.run(TUNNEL_INGRESS, &frame, LO_IFINDEX);
    assert_out(
        &r,
        TC_ACT_REDIRECT,
        &delivered(&B, REMOTE_POD, IPPROTO_TCP, &seg),
    );
    dp.assert_counted(&before, &[("fwd:local-pod", 1, frame.len())]);
}

/// Test that a packet for a pod isolated by an ingress policy is not handed into the pod by
/// the tunnel ingress but left unchanged to the stack, which routes it through the pod's
/// veth where `sl_to_pod` applies the policy.
#[test]
fn tunnel_ingress_isolated_pod_goes_through_policy() {
    let mut dp = cluster(peers::ROUTING_TUNNEL, 0);
    dp.set_endpoint_flags(POD_B, endpoint::FLAG_ISOLATED_INGRESS);
    let seg = syn((REMOTE_POD, 40000), (POD_B, 80));
    let frame = from_tunnel(POD_B, &seg, IPPROTO_TCP);
    let r = dp.run(TUNNEL_INGRESS, &frame, LO_IFINDEX);
    assert_out(&r, TC_ACT_UNSPEC, &frame);
}

/// Test that in native mode the uplink's ingress delivers another node's pod's packet into
/// the local pod (redirect, TTL-1).
#[test]
fn uplink_ingress_native_delivers_to_local_pod() {
    let dp = cluster(peers::ROUTING_NATIVE, 0);
    let frame = tcp_frame(false, (REMOTE_POD, 40000), (POD_B, 80), TCP_SYN);
    let r = dp.run(UPLINK_INGRESS, &frame, LO_IFINDEX);
    let seg = syn((REMOTE_POD, 40000), (POD_B, 80));
    // tcp_frame's SYN is syn()'s segment.
    assert_out(
        &r,
        TC_ACT_REDIRECT,
        &delivered(&B, REMOTE_POD, IPPROTO_TCP, &seg),
    );
}

/// Test that the tunnel device's egress gives a packet for a peer's pod a tunnel key and the
/// peer device's MAC as destination, and drops, counted, one for no peer.
#[test]
fn tunnel_egress_keys_peer_and_drops_unknown() {
    let dp = cluster(peers::ROUTING_TUNNEL, 0);
    let own = peers::tunnel_mac(NODE_IP);
    let seg = syn((NODE_IP, 40000), (REMOTE_POD, 80));
    let ip = ipv4(Ip::new(NODE_IP, REMOTE_POD, IPPROTO_TCP), &seg);
    // The stack's frame: to and from this device's own MAC (NOARP).
    let to_peer = ethernet(own, own, ETH_P_IP, &ip);
    let r = dp.run(TUNNEL_EGRESS, &to_peer, LO_IFINDEX);
    let want = ethernet(peers::tunnel_mac(PEER_NODE), own, ETH_P_IP, &ip);
    assert_out(&r, TC_ACT_UNSPEC, &want);
    let nowhere = tcp_frame(true, (NODE_IP, 40000), (WORLD, 80), TCP_SYN);
    let before = dp.counters();
    let r = dp.run(TUNNEL_EGRESS, &nowhere, LO_IFINDEX);
    assert_eq!(r.verdict, TC_ACT_SHOT);
    dp.assert_counted(&before, &[("drop:tunnel-no-peer", 1, nowhere.len())]);
}

/// Test that a NodePort with `externalTrafficPolicy: Cluster` (FLAG_SNAT) whose backend is
/// on another node forwards the client's SYN to that node translated (destination the
/// backend, source the node), and that the backend's reply, arriving from the tunnel (tunnel
/// mode) or on the uplink (native mode), is translated back (from the NodePort to the client)
/// and sent out of the uplink with the TTL decremented.
#[test]
fn nodeport_cluster_to_remote_backend_round_trip() {
    for routing in [peers::ROUTING_TUNNEL, peers::ROUTING_NATIVE] {
        let mut dp = cluster(routing, config::FLAG_SERVICES);
        let be = (REMOTE_POD, 8080);
        let key = frontend(NODE_IP, NODE_PORT, IPPROTO_TCP, svc::SCOPE_EXTERNAL);
        let value = svc::Value {
            id: SVC_ID,
            count: 1,
            flags: svc::FLAG_SNAT,
            affinity_timeout: 0,
        };
        dp.add_service(key, value, &[be]);
        let client = (WORLD, 5555);
        let seg = syn(client, (NODE_IP, NODE_PORT));
        let frame = uplink_frame(false, Ip::new(WORLD, NODE_IP, IPPROTO_TCP), &seg);
        let r = dp.run(UPLINK_INGRESS, &frame, LO_IFINDEX);
        assert_eq!(r.verdict, TC_ACT_REDIRECT, "routing {routing}: forwarded");
        assert_eq!(dst_ip(&r.frame), REMOTE_POD);
        assert_eq!(dport(&r.frame), 8080);
        assert_eq!(src_ip(&r.frame), NODE_IP, "SNAT to the node");
        assert_eq!(r.frame[22], 63, "TTL");
        assert_checksums(&r.frame);
        let node_port = sport(&r.frame);

        let back = syn_ack(be, (NODE_IP, node_port));
        let reply = if routing == peers::ROUTING_TUNNEL {
            from_tunnel(NODE_IP, &back, IPPROTO_TCP)
        } else {
            uplink_frame(false, Ip::new(REMOTE_POD, NODE_IP, IPPROTO_TCP), &back)
        };
        let prog = if routing == peers::ROUTING_TUNNEL {
            TUNNEL_INGRESS
        } else {
            UPLINK_INGRESS
        };
        let r = dp.run(prog, &reply, LO_IFINDEX);
        assert_eq!(r.verdict, TC_ACT_REDIRECT, "routing {routing}: reply sent");
        assert_eq!((src_ip(&r.frame), sport(&r.frame)), (NODE_IP, NODE_PORT));
        assert_eq!((dst_ip(&r.frame), dport(&r.frame)), client);
        assert_eq!(r.frame[22], 63, "TTL");
        assert_checksums(&r.frame);
    }
}
