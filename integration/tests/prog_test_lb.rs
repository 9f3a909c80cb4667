//! Tier-2 tests of Service translation in TC through `BPF_PROG_TEST_RUN`: packets to a
//! frontend that did not pass a hooked socket, from a pod (`sl_from_pod`, internal scope) or
//! from outside (`sl_up_ingress`, external scope: NodePorts), the backends' replies translated
//! back, resets for connections nobody can take, Maglev and ClientIP affinity. The maps are
//! programmed as `datapath_common::svc` documents them; expected frames, translation entries
//! and counters come from that design and the RFCs (RFC 9293 §3.10.7.1 for resets, RFC 768 for
//! a UDP checksum of zero, RFC 1812 §5.3.1 for the TTL of a routed hop), and checksums from the
//! harness's own RFC 1071 implementation ([`test_support::progtest`], whose doc says what
//! test_run does).
//!
//! In test_run the sending pod's veth is the loopback (ifindex 1), so a backend's reply is run
//! with the backend's endpoint moved onto it ([`b_sends`]); the redirects the programs return
//! (`bpf_redirect_peer` into a pod, `bpf_redirect_neigh` out of the uplink) are recorded as
//! `TC_ACT_REDIRECT` and not carried out, so the frame is what the program left.

use datapath_common::{
    config::{self, NodeConfig},
    svc,
};
use test_support::progtest::*;

const A: LocalPod = LocalPod::A;
const B: LocalPod = LocalPod::B;

/// A ClusterIP.
const VIP: [u8; 4] = [10, 96, 0, 10];
const SVC_ID: u32 = 7;
const NODE_PORT: u16 = 30080;
/// An address of this node's pod CIDR with no pod behind it (a removed backend).
const GONE: [u8; 4] = [10, 244, 1, 99];
/// Pods of another node: backends the node's stack routes to.
const REMOTE: [[u8; 4]; 4] = [
    [10, 244, 2, 11],
    [10, 244, 2, 12],
    [10, 244, 2, 13],
    [10, 244, 2, 14],
];

/// [`node_config`] (pod CIDR 10.244.1.0/24, node 192.0.2.2, uplink ifindex 1) with `flags`.
fn config_with(flags: u32) -> NodeConfig {
    NodeConfig {
        flags,
        ..node_config(false)
    }
}

/// Pods A (on the loopback: the sender) and B, services on, no frontend yet.
fn services_on() -> Datapath {
    let mut dp = two_pods();
    dp.set_config(&config_with(config::FLAG_SERVICES));
    dp
}

/// Service [`SVC_ID`] with `count` backends and `flags`.
fn value(count: usize, flags: u32) -> svc::Value {
    svc::Value {
        id: SVC_ID,
        count: count as u32,
        flags,
        affinity_timeout: 0,
    }
}

/// Frontend 10.96.0.10:`port` (internal scope) of service [`SVC_ID`] with `backends`.
fn cluster_ip(dp: &mut Datapath, proto: u8, port: u16, flags: u32, backends: &[Addr]) {
    let key = frontend(VIP, port, proto, svc::SCOPE_INTERNAL);
    dp.add_service(key, value(backends.len(), flags), backends);
}

/// NodePort 192.0.2.2:30080/TCP (external scope) of service [`SVC_ID`] with backend B:8080.
fn node_port(dp: &mut Datapath, flags: u32) {
    let key = frontend(NODE_IP, NODE_PORT, IPPROTO_TCP, svc::SCOPE_EXTERNAL);
    dp.add_service(key, value(1, flags), &[(POD_B, 8080)]);
}

/// Moves pod B's endpoint onto the loopback, where test_run runs every frame: B's replies
/// then pass the source check as they do on B's own veth.
fn b_sends(dp: &mut Datapath) {
    dp.add_endpoint(POD_B, LO_IFINDEX, POD_B_MAC, HOST_B_MAC);
}

// ---------------------------------------------------------------------------------------------
// sl_from_pod: ClusterIP

/// Test that a TCP SYN from a pod to a ClusterIP whose backend is a local pod is redirected
/// into that pod with the destination rewritten to the backend, the source kept, the TTL
/// decremented and valid checksums; that SL_LBCT_V1 holds the forward entry (the tuple as it
/// arrived) and the reverse entry (backend → client, back to the frontend); and that
/// svc:tc-dnat and the service's counter moved by one.
#[test]
fn from_pod_svc_tcp_syn_dnat_to_local_backend() {
    let mut dp = services_on();
    let (client, fe, be) = ((POD_A, 40000), (VIP, 80), (POD_B, 8080));
    cluster_ip(&mut dp, IPPROTO_TCP, 80, 0, &[be]);
    let before = dp.counters();
    let frame = sent(&A, VIP, IPPROTO_TCP, &syn(client, fe));
    let r = dp.run(FROM_POD, &frame, LO_IFINDEX);
    assert_out(
        &r,
        TC_ACT_REDIRECT,
        &delivered(&B, POD_A, IPPROTO_TCP, &syn(client, be)),
    );

    let ct = dp.lb_ct();
    let fwd = tuple(IPPROTO_TCP, client, fe);
    let rev = tuple(IPPROTO_TCP, be, client);
    assert_eq!(ct.get(&fwd), Some(&xlate(client, be, SVC_ID, 0)), "forward");
    let back = xlate(fe, client, SVC_ID, svc::XLATE_REPLY);
    assert_eq!(ct.get(&rev), Some(&back), "reverse");
    assert_eq!(ct.len(), 2, "{ct:?}");
    let n = frame.len();
    dp.assert_counted(&before, &[("svc:tc-dnat", 1, n), ("fwd:local-pod", 1, n)]);
    assert_eq!(dp.svc_counter(SVC_ID), (1, n as u64));
}

/// Test that the backend's reply to a translated TCP flow leaves with the frontend as its
/// source, is delivered to the client pod and is counted as svc:tc-revnat.
#[test]
fn from_pod_svc_tcp_reply_translated_back_to_frontend() {
    let mut dp = services_on();
    let (client, fe, be) = ((POD_A, 40000), (VIP, 80), (POD_B, 8080));
    cluster_ip(&mut dp, IPPROTO_TCP, 80, 0, &[be]);
    let r = dp.run(
        FROM_POD,
        &sent(&A, VIP, IPPROTO_TCP, &syn(client, fe)),
        LO_IFINDEX,
    );
    assert_eq!(r.verdict, TC_ACT_REDIRECT);

    b_sends(&mut dp);
    let before = dp.counters();
    let reply = sent(&B, POD_A, IPPROTO_TCP, &syn_ack(be, client));
    let r = dp.run(FROM_POD, &reply, LO_IFINDEX);
    assert_out(
        &r,
        TC_ACT_REDIRECT,
        &delivered(&A, VIP, IPPROTO_TCP, &syn_ack(fe, client)),
    );
    let n = reply.len();
    dp.assert_counted(&before, &[("svc:tc-revnat", 1, n), ("fwd:local-pod", 1, n)]);
}

/// Test that UDP to a ClusterIP is translated to the backend and the backend's answer back to
/// the frontend with valid checksums, and that a datagram without checksum (0) keeps 0 both
/// ways (RFC 768).
#[test]
fn from_pod_svc_udp_both_ways_keeps_zero_checksum() {
    let mut dp = services_on();
    let (fe, be) = ((VIP, 53), (POD_B, 5353));
    cluster_ip(&mut dp, IPPROTO_UDP, 53, 0, &[be]);
    let before = dp.counters();
    let flows = [((POD_A, 40001), true), ((POD_A, 40002), false)];
    let mut n = 0;
    for (client, csum) in flows {
        let frame = sent(&A, VIP, IPPROTO_UDP, &datagram(client, fe, csum));
        let r = dp.run(FROM_POD, &frame, LO_IFINDEX);
        let expected = delivered(&B, POD_A, IPPROTO_UDP, &datagram(client, be, csum));
        assert_out(&r, TC_ACT_REDIRECT, &expected);
        n += frame.len();
    }
    b_sends(&mut dp);
    for (client, csum) in flows {
        let reply = sent(&B, POD_A, IPPROTO_UDP, &datagram(be, client, csum));
        let r = dp.run(FROM_POD, &reply, LO_IFINDEX);
        let expected = delivered(&A, VIP, IPPROTO_UDP, &datagram(fe, client, csum));
        assert_out(&r, TC_ACT_REDIRECT, &expected);
    }
    dp.assert_counted(
        &before,
        &[
            ("svc:tc-dnat", 2, n),
            ("svc:tc-revnat", 2, n),
            ("fwd:local-pod", 4, 2 * n),
        ],
    );
}

/// Test that the packets of one flow keep the backend its first packet got, among several:
/// the SYN retransmitted ten times and the data that follows all go to it, through one
/// forward entry.
#[test]
fn from_pod_svc_flow_keeps_its_backend() {
    let mut dp = services_on();
    let backends: Vec<Addr> = REMOTE.iter().map(|a| (*a, 8080)).collect();
    cluster_ip(&mut dp, IPPROTO_TCP, 80, 0, &backends);
    let (client, fe) = ((POD_A, 40000), (VIP, 80));
    let to_vip = |l4: &[u8]| dp.run(FROM_POD, &sent(&A, VIP, IPPROTO_TCP, l4), LO_IFINDEX);
    let first = to_vip(&syn(client, fe));
    let be = (dst_ip(&first.frame), dport(&first.frame));
    assert!(backends.contains(&be), "{be:?} is no backend");
    // A backend on another node: to the stack, which routes it (and decrements the TTL).
    let to_be = |l4: &[u8]| sent(&A, be.0, IPPROTO_TCP, l4);
    assert_out(&first, TC_ACT_UNSPEC, &to_be(&syn(client, be)));
    for _ in 0..10 {
        assert_out(
            &to_vip(&syn(client, fe)),
            TC_ACT_UNSPEC,
            &to_be(&syn(client, be)),
        );
    }
    let data = |dst: Addr| tcp(POD_A, dst.0, (40000, dst.1), (ISN + 1, 1), TCP_ACK);
    assert_out(&to_vip(&data(fe)), TC_ACT_UNSPEC, &to_be(&data(be)));
    assert_eq!(dp.lb_ct().len(), 2, "one forward and one reverse entry");
    assert_eq!(dp.svc_counter(SVC_ID).0, 12);
}

/// Test that a TCP SYN to a ClusterIP with no ready backend is answered with a reset into the
/// client pod, as RFC 9293 §3.10.7.1 says for a segment without ACK (SEQ=0,
/// ACK=SEG.SEQ+SEG.LEN, SYN counting one; RST|ACK), from the frontend's address and port, and
/// counted as drop:service-no-backend.
#[test]
fn from_pod_svc_no_backend_tcp_refused_with_reset() {
    let mut dp = services_on();
    cluster_ip(&mut dp, IPPROTO_TCP, 80, 0, &[]);
    let before = dp.counters();
    let frame = sent(&A, VIP, IPPROTO_TCP, &syn((POD_A, 40000), (VIP, 80)));
    let r = dp.run(FROM_POD, &frame, LO_IFINDEX);
    assert_reset(&r, &A, (VIP, 80), 40000, 0, ISN + 1, TCP_RST | TCP_ACK);
    assert!(dp.lb_ct().is_empty());
    // The SYN and the reset are both 54 bytes.
    dp.assert_counted(&before, &[("drop:service-no-backend", 1, 54)]);
}

/// Test that a UDP datagram to a ClusterIP with no ready backend is answered with an ICMP
/// port unreachable into the client pod (RFC 792: type 3 code 3, quoting the IPv4 header and
/// the first 8 bytes of the datagram), from the frontend's address, and counted as
/// drop:service-no-backend.
#[test]
fn from_pod_svc_no_backend_udp_port_unreachable() {
    let mut dp = services_on();
    cluster_ip(&mut dp, IPPROTO_UDP, 53, 0, &[]);
    let before = dp.counters();
    let frame = sent(
        &A,
        VIP,
        IPPROTO_UDP,
        &datagram((POD_A, 40001), (VIP, 53), true),
    );
    let r = dp.run(FROM_POD, &frame, LO_IFINDEX);
    assert_port_unreachable(&r, &A, VIP, &frame);
    assert!(dp.lb_ct().is_empty());
    dp.assert_packets_counted(&before, &[("drop:service-no-backend", 1)]);
}

/// Test that a TCP segment with ACK (ack N) to a pod address of this node with no pod behind
/// it is answered with a reset with SEQ=N and RST alone (RFC 9293 §3.10.7.1), whether services
/// are on or off, and counted as drop:dead-endpoint-reset.
#[test]
fn from_pod_tcp_to_gone_pod_reset() {
    let mut dp = two_pods();
    let n = 0x5000_0001;
    // A pure ACK (54 bytes, as the reset): no question which length the counter takes.
    let ack = tcp_segment(POD_A, GONE, (40000, 8080), (ISN + 1, n), TCP_ACK, &[]);
    let frame = sent(&A, GONE, IPPROTO_TCP, &ack);
    for flags in [config::FLAG_SERVICES, 0] {
        dp.set_config(&config_with(flags));
        let before = dp.counters();
        let r = dp.run(FROM_POD, &frame, LO_IFINDEX);
        assert_reset(&r, &A, (GONE, 8080), 40000, n, 0, TCP_RST);
        dp.assert_counted(&before, &[("drop:dead-endpoint-reset", 1, 54)]);
    }
}

/// Test that a reset to a pod address with no pod behind it is dropped without an answer
/// (RFC 9293: a reset is never answered) and counted as drop:dead-endpoint-reset.
#[test]
fn from_pod_rst_to_gone_pod_drops_silently() {
    let dp = services_on();
    let rst = tcp_segment(POD_A, GONE, (40000, 8080), (ISN + 1, 0), TCP_RST, &[]);
    let frame = sent(&A, GONE, IPPROTO_TCP, &rst);
    let before = dp.counters();
    let r = dp.run(FROM_POD, &frame, LO_IFINDEX);
    assert_eq!(r.verdict, TC_ACT_SHOT);
    assert_eq!(r.frame, frame, "no reset written");
    dp.assert_counted(&before, &[("drop:dead-endpoint-reset", 1, frame.len())]);
}

/// Test that a UDP datagram to a pod address with no pod behind it is answered with an ICMP
/// port unreachable from that address (RFC 792), counted as drop:dead-endpoint-reset.
#[test]
fn from_pod_udp_to_gone_pod_port_unreachable() {
    let dp = services_on();
    let frame = sent(
        &A,
        GONE,
        IPPROTO_UDP,
        &datagram((POD_A, 40001), (GONE, 5353), true),
    );
    let before = dp.counters();
    let r = dp.run(FROM_POD, &frame, LO_IFINDEX);
    assert_port_unreachable(&r, &A, GONE, &frame);
    dp.assert_packets_counted(&before, &[("drop:dead-endpoint-reset", 1)]);
}

/// Test that a pod connecting to a ClusterIP whose only backend is itself (hairpin) reaches
/// itself from 169.254.42.1 with its own port, and that its reply to 169.254.42.1 comes back
/// from the frontend.
#[test]
fn from_pod_svc_hairpin_source_and_reply() {
    let mut dp = services_on();
    let (client, fe, be) = ((POD_A, 40000), (VIP, 80), (POD_A, 8080));
    let hairpin = (svc::HAIRPIN_SOURCE4, 40000);
    cluster_ip(&mut dp, IPPROTO_TCP, 80, 0, &[be]);
    let before = dp.counters();
    let frame = sent(&A, VIP, IPPROTO_TCP, &syn(client, fe));
    let r = dp.run(FROM_POD, &frame, LO_IFINDEX);
    let expected = delivered(&A, hairpin.0, IPPROTO_TCP, &syn(hairpin, be));
    assert_out(&r, TC_ACT_REDIRECT, &expected);

    let reply = sent(&A, hairpin.0, IPPROTO_TCP, &syn_ack(be, hairpin));
    let r = dp.run(FROM_POD, &reply, LO_IFINDEX);
    assert_out(
        &r,
        TC_ACT_REDIRECT,
        &delivered(&A, VIP, IPPROTO_TCP, &syn_ack(fe, client)),
    );
    let n = frame.len();
    dp.assert_counted(
        &before,
        &[
            ("svc:tc-dnat", 1, n),
            ("svc:tc-revnat", 1, n),
            ("fwd:local-pod", 2, 2 * n),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// sl_up_ingress: NodePort

/// The SYN of a client outside to the NodePort, as the uplink receives it.
fn nodeport_syn(client: Addr) -> Vec<u8> {
    let seg = syn(client, (NODE_IP, NODE_PORT));
    uplink_frame(false, Ip::new(client.0, NODE_IP, IPPROTO_TCP), &seg)
}

/// Runs backend B's reply to `to` through `sl_from_pod` and checks it leaves for the uplink
/// (`bpf_redirect_neigh`: the MACs are the kernel's to fill) from the NodePort to `client`,
/// with valid checksums, counted as svc:tc-revnat. Returns the frame.
fn assert_reply_to_uplink(dp: &Datapath, to: Addr, client: Addr) -> Vec<u8> {
    let reply = sent(&B, to.0, IPPROTO_TCP, &syn_ack((POD_B, 8080), to));
    let before = dp.counters();
    let r = dp.run(FROM_POD, &reply, LO_IFINDEX);
    // The TTL is left to its own test (from_pod_reply_to_uplink_decrements_ttl).
    let ip = Ip {
        ttl: r.frame[22],
        ..Ip::new(NODE_IP, client.0, IPPROTO_TCP)
    };
    let seg = syn_ack((NODE_IP, NODE_PORT), client);
    let expected = ethernet(HOST_B_MAC, POD_B_MAC, ETH_P_IP, &ipv4(ip, &seg));
    assert_out(&r, TC_ACT_REDIRECT, &expected);
    dp.assert_counted(&before, &[("svc:tc-revnat", 1, reply.len())]);
    r.frame
}

/// Test that a SYN from outside to a NodePort whose backend is a local pod is delivered to
/// it with the destination rewritten and the client's source kept (no FLAG_SNAT), that the
/// reverse entry sends the reply out of the uplink, and that the reply leaves from the NodePort.
#[test]
fn uplink_ingress_nodeport_to_local_backend_keeps_client() {
    let mut dp = services_on();
    node_port(&mut dp, 0);
    let (client, be) = ((WORLD, 5555), (POD_B, 8080));
    let before = dp.counters();
    let frame = nodeport_syn(client);
    let r = dp.run(UPLINK_INGRESS, &frame, LO_IFINDEX);
    assert_out(
        &r,
        TC_ACT_REDIRECT,
        &delivered(&B, WORLD, IPPROTO_TCP, &syn(client, be)),
    );
    let n = frame.len();
    dp.assert_counted(&before, &[("svc:tc-dnat", 1, n), ("fwd:local-pod", 1, n)]);
    assert_eq!(dp.svc_counter(SVC_ID), (1, n as u64));

    let ct = dp.lb_ct();
    let fwd = tuple(IPPROTO_TCP, client, (NODE_IP, NODE_PORT));
    assert_eq!(ct.get(&fwd), Some(&xlate(client, be, SVC_ID, 0)));
    let flags = svc::XLATE_REPLY | svc::XLATE_TO_UPLINK;
    let back = xlate((NODE_IP, NODE_PORT), client, SVC_ID, flags);
    assert_eq!(ct.get(&tuple(IPPROTO_TCP, be, client)), Some(&back));

    b_sends(&mut dp);
    assert_reply_to_uplink(&dp, client, client);
}

/// Test that with FLAG_SNAT (externalTrafficPolicy: Cluster) the client is hidden behind the
/// node: source 192.0.2.2 with the client's port while it is free, a port from the range when
/// another client took it; each reverse entry (backend → node:port) translates back to the
/// NodePort and its own client, and the replies leave that way.
#[test]
fn uplink_ingress_nodeport_snat_translates_through_node() {
    let mut dp = services_on();
    node_port(&mut dp, svc::FLAG_SNAT);
    let be = (POD_B, 8080);
    let flags = svc::XLATE_REPLY | svc::XLATE_TO_UPLINK;
    let mut ports = Vec::new();
    for client in [(WORLD, 5555), (WORLD_2, 5555)] {
        let r = dp.run(UPLINK_INGRESS, &nodeport_syn(client), LO_IFINDEX);
        let port = sport(&r.frame);
        if ports.is_empty() {
            assert_eq!(port, 5555, "the client's own port, free");
        } else {
            assert!(
                (PORT_MIN..=PORT_MAX).contains(&port),
                "port {port} out of range"
            );
        }
        let via = (NODE_IP, port);
        assert_out(
            &r,
            TC_ACT_REDIRECT,
            &delivered(&B, NODE_IP, IPPROTO_TCP, &syn(via, be)),
        );
        let ct = dp.lb_ct();
        let fwd = tuple(IPPROTO_TCP, client, (NODE_IP, NODE_PORT));
        assert_eq!(ct.get(&fwd), Some(&xlate(via, be, SVC_ID, 0)));
        let back = xlate((NODE_IP, NODE_PORT), client, SVC_ID, flags);
        assert_eq!(ct.get(&tuple(IPPROTO_TCP, be, via)), Some(&back));
        ports.push((via, client));
    }
    b_sends(&mut dp);
    for (via, client) in ports {
        assert_reply_to_uplink(&dp, via, client);
    }
}

/// Test that a reply sent out of the uplink by `bpf_redirect_neigh` has its TTL decremented:
/// the node routes it from the pod's veth to the uplink, a hop like local delivery, where the
/// stack's forwarding is bypassed (RFC 1812 §5.3.1).
#[test]
fn from_pod_reply_to_uplink_decrements_ttl() {
    let mut dp = services_on();
    node_port(&mut dp, 0);
    let client = (WORLD, 5555);
    let r = dp.run(UPLINK_INGRESS, &nodeport_syn(client), LO_IFINDEX);
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    b_sends(&mut dp);
    let out = assert_reply_to_uplink(&dp, client, client);
    assert_eq!(out[22], 63, "TTL");
}

/// Test that a pod's flow translated in TC to a backend on another node has the backend's
/// reply, arriving on the uplink, translated back to the frontend before it reaches the pod.
#[test]
fn uplink_ingress_remote_backend_reply_translated_back() {
    let mut dp = services_on();
    let (client, fe, be) = ((POD_A, 40000), (VIP, 80), (REMOTE[0], 8080));
    cluster_ip(&mut dp, IPPROTO_TCP, 80, 0, &[be]);
    let r = dp.run(
        FROM_POD,
        &sent(&A, VIP, IPPROTO_TCP, &syn(client, fe)),
        LO_IFINDEX,
    );
    assert_out(
        &r,
        TC_ACT_UNSPEC,
        &sent(&A, be.0, IPPROTO_TCP, &syn(client, be)),
    );

    let before = dp.counters();
    let reply = uplink_frame(
        false,
        Ip::new(be.0, POD_A, IPPROTO_TCP),
        &syn_ack(be, client),
    );
    let r = dp.run(UPLINK_INGRESS, &reply, LO_IFINDEX);
    // Delivered into the pod, or left to the stack's route to its veth: either way translated.
    assert!(
        [TC_ACT_REDIRECT, TC_ACT_UNSPEC].contains(&r.verdict),
        "verdict {}",
        r.verdict
    );
    assert_eq!((src_ip(&r.frame), sport(&r.frame)), fe, "source");
    assert_eq!((dst_ip(&r.frame), dport(&r.frame)), client, "destination");
    assert_ip_checksum(&r.frame);
    assert_l4_checksum(&r.frame);
    let revnat = dp.counters()["svc:tc-revnat"].0 - before["svc:tc-revnat"].0;
    assert_eq!(revnat, 1, "svc:tc-revnat");
}

// ---------------------------------------------------------------------------------------------
// Backend choice

/// Test that with FLAG_MAGLEV the backend is the one the service's table names: a table of
/// slot 2 only sends every flow to backend 2 of 3.
#[test]
fn from_pod_svc_maglev_table_picks_slot() {
    let mut dp = services_on();
    let backends: Vec<Addr> = REMOTE[..3].iter().map(|a| (*a, 8080)).collect();
    cluster_ip(&mut dp, IPPROTO_TCP, 80, svc::FLAG_MAGLEV, &backends);
    dp.set_maglev(SVC_ID, &[2; svc::MAGLEV_M]);
    let be = backends[1];
    for port in 40000..40020 {
        let client = (POD_A, port);
        let frame = sent(&A, VIP, IPPROTO_TCP, &syn(client, (VIP, 80)));
        let r = dp.run(FROM_POD, &frame, LO_IFINDEX);
        assert_out(
            &r,
            TC_ACT_UNSPEC,
            &sent(&A, be.0, IPPROTO_TCP, &syn(client, be)),
        );
    }
}

/// Test that with FLAG_AFFINITY (ClientIP) twenty connections of one pod from different ports
/// all go to one backend of two, recorded in SL_AFF_V1 under the client's address (cookie 0).
#[test]
fn from_pod_svc_affinity_sticks_to_one_backend() {
    let mut dp = services_on();
    let backends: Vec<Addr> = REMOTE[..2].iter().map(|a| (*a, 8080)).collect();
    let key = frontend(VIP, 80, IPPROTO_TCP, svc::SCOPE_INTERNAL);
    let v = svc::Value {
        affinity_timeout: 10800,
        ..value(2, svc::FLAG_AFFINITY)
    };
    dp.add_service(key, v, &backends);
    let mut chosen = Vec::new();
    for port in 40000..40020 {
        let frame = sent(&A, VIP, IPPROTO_TCP, &syn((POD_A, port), (VIP, 80)));
        let r = dp.run(FROM_POD, &frame, LO_IFINDEX);
        assert_eq!(r.verdict, TC_ACT_UNSPEC);
        chosen.push((dst_ip(&r.frame), dport(&r.frame)));
    }
    let be = chosen[0];
    assert!(chosen.iter().all(|c| *c == be), "{chosen:?}");
    let slot = backends.iter().position(|b| *b == be).expect("a backend") as u32 + 1;
    let aff = dp.affinity();
    assert_eq!(aff.len(), 1, "{aff:?}");
    let (k, a) = aff[0];
    assert_eq!(k, tc_affinity_key(SVC_ID, POD_A));
    assert_eq!((a.slot, a.backend), (slot, backend(be.0, be.1)));
    assert_ne!(a.last_ns, 0);
}

// ---------------------------------------------------------------------------------------------
// Services off

/// Test that without FLAG_SERVICES a packet to a programmed ClusterIP goes to the stack
/// unchanged, with no translation recorded.
#[test]
fn from_pod_services_off_frontend_passes_unchanged() {
    let mut dp = two_pods();
    dp.set_config(&config_with(0));
    cluster_ip(&mut dp, IPPROTO_TCP, 80, 0, &[(POD_B, 8080)]);
    let before = dp.counters();
    let frame = sent(&A, VIP, IPPROTO_TCP, &syn((POD_A, 40000), (VIP, 80)));
    let r = dp.run(FROM_POD, &frame, LO_IFINDEX);
    assert_eq!(r.verdict, TC_ACT_UNSPEC);
    assert_eq!(r.frame, frame);
    assert!(dp.lb_ct().is_empty());
    assert_eq!(dp.svc_counter(SVC_ID), (0, 0));
    dp.assert_counted(&before, &[("fwd:stack", 1, frame.len())]);
}

/// Test that without FLAG_SERVICES a SYN to a programmed NodePort passes unchanged.
#[test]
fn uplink_ingress_services_off_nodeport_passes_unchanged() {
    let mut dp = two_pods();
    dp.set_config(&config_with(0));
    node_port(&mut dp, 0);
    let before = dp.counters();
    let frame = nodeport_syn((WORLD, 5555));
    let r = dp.run(UPLINK_INGRESS, &frame, LO_IFINDEX);
    assert_eq!(r.verdict, TC_ACT_UNSPEC);
    assert_eq!(r.frame, frame);
    assert!(dp.lb_ct().is_empty());
    dp.assert_counted(&before, &[]);
}

// ---------------------------------------------------------------------------------------------
// CHECKSUM_COMPLETE skbs

/// Test that service translation both ways (TCP and UDP) and the reset for a service without
/// backend keep `skb->csum` of `CHECKSUM_COMPLETE` skbs consistent with the bytes.
#[test]
fn from_pod_svc_translation_keeps_checksum_complete() {
    let mut dp = services_on();
    if !dp.csum_complete_supported() {
        return;
    }
    let (client, be) = ((POD_A, 40000), (POD_B, 8080));
    cluster_ip(&mut dp, IPPROTO_TCP, 80, 0, &[be]);
    let key = frontend(VIP, 81, IPPROTO_TCP, svc::SCOPE_INTERNAL);
    dp.add_service(
        key,
        svc::Value {
            id: 8,
            ..value(0, 0)
        },
        &[],
    );
    let udp_key = frontend(VIP, 53, IPPROTO_UDP, svc::SCOPE_INTERNAL);
    dp.add_service(
        udp_key,
        svc::Value {
            id: 9,
            ..value(1, 0)
        },
        &[be],
    );
    // The sending pod is on the loopback, the device test_run uses without a context.
    b_sends(&mut dp);

    let out = dp.run_csum_complete(
        FROM_POD,
        &sent(&A, VIP, IPPROTO_TCP, &syn(client, (VIP, 80))),
        TC_ACT_REDIRECT,
    );
    assert_eq!(out, delivered(&B, POD_A, IPPROTO_TCP, &syn(client, be)));
    let out = dp.run_csum_complete(
        FROM_POD,
        &sent(&B, POD_A, IPPROTO_TCP, &syn_ack(be, client)),
        TC_ACT_REDIRECT,
    );
    assert_eq!(
        out,
        delivered(&A, VIP, IPPROTO_TCP, &syn_ack((VIP, 80), client))
    );

    let out = dp.run_csum_complete(
        FROM_POD,
        &sent(&A, VIP, IPPROTO_UDP, &datagram(client, (VIP, 53), true)),
        TC_ACT_REDIRECT,
    );
    assert_eq!(
        out,
        delivered(&B, POD_A, IPPROTO_UDP, &datagram(client, be, true))
    );
    let out = dp.run_csum_complete(
        FROM_POD,
        &sent(&B, POD_A, IPPROTO_UDP, &datagram(be, client, true)),
        TC_ACT_REDIRECT,
    );
    assert_eq!(
        out,
        delivered(&A, VIP, IPPROTO_UDP, &datagram((VIP, 53), client, true))
    );

    let out = dp.run_csum_complete(
        FROM_POD,
        &sent(&A, VIP, IPPROTO_TCP, &syn((POD_A, 40001), (VIP, 81))),
        TC_ACT_REDIRECT,
    );
    let r = Run {
        verdict: TC_ACT_REDIRECT,
        frame: out,
    };
    assert_reset(&r, &A, (VIP, 81), 40001, 0, ISN + 1, TCP_RST | TCP_ACK);
    // Not the port unreachable: growing the frame makes the skb CHECKSUM_NONE
    // (__skb_grow_rcsum, as bpf_skb_change_tail does), a state the stack handles, but test_run
    // compares skb->csum with the output whatever ip_summed says (EBADMSG).
}

/// Test that a SYN from the backend on a translated flow's reply tuple is not part of that
/// connection (RFC 9293: a SYN without ACK opens a new one) and is never turned into the
/// frontend's: it is delivered as sent, and the reverse entry is stale from then on (a later
/// SYN-ACK on those ports is not translated either).
#[test]
fn from_pod_backend_syn_is_never_reverse_translated() {
    let mut dp = services_on();
    let (client, fe, be) = ((POD_A, 40000), (VIP, 80), (POD_B, 8080));
    cluster_ip(&mut dp, IPPROTO_TCP, 80, 0, &[be]);
    let r = dp.run(
        FROM_POD,
        &sent(&A, VIP, IPPROTO_TCP, &syn(client, fe)),
        LO_IFINDEX,
    );
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    b_sends(&mut dp);
    let before = dp.counters();
    let backend_syn = sent(&B, POD_A, IPPROTO_TCP, &syn(be, client));
    let r = dp.run(FROM_POD, &backend_syn, LO_IFINDEX);
    assert_out(
        &r,
        TC_ACT_REDIRECT,
        &delivered(&A, POD_B, IPPROTO_TCP, &syn(be, client)),
    );
    let backend_syn_ack = sent(&B, POD_A, IPPROTO_TCP, &syn_ack(be, client));
    let r = dp.run(FROM_POD, &backend_syn_ack, LO_IFINDEX);
    assert_out(
        &r,
        TC_ACT_REDIRECT,
        &delivered(&A, POD_B, IPPROTO_TCP, &syn_ack(be, client)),
    );
    let n = backend_syn.len() + backend_syn_ack.len();
    dp.assert_counted(&before, &[("svc:tc-revnat", 0, 0), ("fwd:local-pod", 2, n)]);
}

/// Test that a client's SYN straight to the backend from the ports of an earlier translated
/// connection makes that connection's reverse entry stale: the backend's SYN-ACK then reaches
/// the client from the backend's own address, not the frontend's.
#[test]
fn from_pod_direct_syn_makes_old_reverse_entry_stale() {
    let mut dp = services_on();
    let (client, fe, be) = ((POD_A, 40000), (VIP, 80), (POD_B, 8080));
    cluster_ip(&mut dp, IPPROTO_TCP, 80, 0, &[be]);
    dp.run(
        FROM_POD,
        &sent(&A, VIP, IPPROTO_TCP, &syn(client, fe)),
        LO_IFINDEX,
    );
    // Straight to the backend, same source port: delivered untranslated.
    let r = dp.run(
        FROM_POD,
        &sent(&A, POD_B, IPPROTO_TCP, &syn(client, be)),
        LO_IFINDEX,
    );
    assert_out(
        &r,
        TC_ACT_REDIRECT,
        &delivered(&B, POD_A, IPPROTO_TCP, &syn(client, be)),
    );
    let rev = dp.lb_ct_raw()[&tuple(IPPROTO_TCP, be, client)];
    assert_ne!(rev.life.seen & datapath_common::flow::SEEN_STALE, 0);
    b_sends(&mut dp);
    let r = dp.run(
        FROM_POD,
        &sent(&B, POD_A, IPPROTO_TCP, &syn_ack(be, client)),
        LO_IFINDEX,
    );
    assert_out(
        &r,
        TC_ACT_REDIRECT,
        &delivered(&A, POD_B, IPPROTO_TCP, &syn_ack(be, client)),
    );
}

/// Test that each direction of a translated connection records what it saw (RFC 9293 flags):
/// the client's SYN and RST in the forward entry, the backend's answer in the reverse one,
/// with a "last seen" time; a new SYN after the reset starts a new life.
#[test]
fn from_pod_translation_records_tcp_state() {
    use datapath_common::flow::{SEEN_PKT, SEEN_RST, SEEN_SYN};
    let mut dp = services_on();
    let (client, fe, be) = ((POD_A, 40000), (VIP, 80), (POD_B, 8080));
    cluster_ip(&mut dp, IPPROTO_TCP, 80, 0, &[be]);
    let syn_frame = sent(&A, VIP, IPPROTO_TCP, &syn(client, fe));
    dp.run(FROM_POD, &syn_frame, LO_IFINDEX);
    let fwd_key = tuple(IPPROTO_TCP, client, fe);
    let rev_key = tuple(IPPROTO_TCP, be, client);
    let ct = dp.lb_ct_raw();
    assert_eq!(ct[&fwd_key].life.seen, SEEN_PKT | SEEN_SYN);
    assert_ne!(ct[&fwd_key].life.last_ns, 0);
    assert_eq!(ct[&rev_key].life.seen, 0);
    let rst = tcp(client.0, fe.0, (client.1, fe.1), (ISN + 1, 0), TCP_RST);
    dp.run(FROM_POD, &sent(&A, VIP, IPPROTO_TCP, &rst), LO_IFINDEX);
    assert_eq!(
        dp.lb_ct_raw()[&fwd_key].life.seen,
        SEEN_PKT | SEEN_SYN | SEEN_RST
    );
    // A new connection on the same ports: its forward entry starts again.
    dp.run(FROM_POD, &syn_frame, LO_IFINDEX);
    assert_eq!(dp.lb_ct_raw()[&fwd_key].life.seen, SEEN_PKT | SEEN_SYN);
}
