//! Masquerade on the node's uplink: `sl_up_egress` (TC egress) gives pod traffic leaving
//! for the outside the node's address and a port from the masquerade range; `sl_up_ingress`
//! (TC ingress) maps replies back to the pod, which the stack then routes to the pod's veth.
//! `sl_up_ingress` also puts back replies of Service flows translated here whose backend is
//! on another node, and (native routing) delivers other nodes' pods' packets into local pods.
//!
//! Why in eBPF and not an iptables MASQUERADE rule: no netfilter rule on the path, and the
//! translation state lives in pinned maps, so it survives an agent restart and can be read by
//! `sluicectl`. The ports come from a range outside the kernel's ephemeral range (see
//! `datapath_common::nat`), so a translated flow never collides with a socket of the node.
//! A port is claimed by inserting the reply tuple with `BPF_NOEXIST`: whoever inserts first
//! owns it, which makes concurrent allocation on several CPUs safe without locks. Each entry
//! records its direction's packets (`datapath_common::flow`), so the agent's collector frees
//! a port seconds after its connection closed or its UDP/ICMP flow went idle.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::generated::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::classifier,
    programs::TcContext,
};
use datapath_common::{addr::IpKey, config, flow, metrics, nat, svc};

use crate::{
    l4::{l4_of, rewrite, tcp_flags, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, L4},
    lb,
    maps::{CONFIG, ENDPOINTS, REV_SNAT, SNAT},
    reset::reset_to_pod,
    skb::{
        count, deliver_or_stack, drop, ptr_at, EthHdr, Ipv4Hdr, ETH_HLEN, ETH_P_IP, IPPROTO_TCP,
        IPPROTO_UDP, IP_DST_OFF, IP_SRC_OFF, TC_ACT_UNSPEC,
    },
};

/// Ports tried before giving up on a flow (the drop is counted as `drop:nat-no-port`).
const PORT_TRIES: u32 = 32;

#[classifier]
pub fn sl_up_egress(ctx: TcContext) -> i32 {
    match try_egress(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn try_egress(ctx: &TcContext) -> Result<i32, i32> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(TC_ACT_UNSPEC)?;
    // SAFETY: `ptr_at` checked that the header lies within the packet.
    if unsafe { (*eth).proto } != ETH_P_IP.to_be() {
        return Ok(TC_ACT_UNSPEC);
    }
    // SAFETY: `ptr_at` checked that the header lies within the packet.
    let ip = unsafe { *ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN).ok_or(TC_ACT_UNSPEC)? };
    let cfg = CONFIG.get(0).ok_or(TC_ACT_UNSPEC)?;
    if cfg.flags & config::FLAG_MASQUERADE == 0
        || !is_pod_source(cfg, ip.saddr)
        || cfg.in_pod_cidr4(ip.daddr)
        || crate::remote::peer_of(ip.daddr).is_some()
    {
        // Another node's pod keeps seeing this pod's own address.
        // The node's own traffic, or not ours to translate.
        return Ok(TC_ACT_UNSPEC);
    }
    if ip.is_fragment() {
        return Err(drop(ctx, metrics::DROP_FRAGMENT));
    }
    let Some(l4) = l4_of(ctx, &ip, ICMP_ECHO_REQUEST) else {
        return Ok(TC_ACT_UNSPEC);
    };
    let node_ip = cfg.node_ip4;
    let orig = nat::Tuple::v4(ip.proto, ip.saddr, ip.daddr, l4.sport, l4.dport);
    let seen = flow::seen_of(tcp_flags(ctx, &ip, &l4));
    // SAFETY: a BPF helper with no memory preconditions.
    let now = unsafe { bpf_ktime_get_ns() };

    let back = binding(ip.saddr, l4.sport, now, 0);
    let known = SNAT
        .get_ptr_mut(&orig)
        .and_then(|fwd| keep_port(&orig, fwd, &back, seen, now));
    let nat_port = match known {
        Some(port) => port,
        None => {
            // A new flow, or one whose port was taken over after its reply entry was evicted
            // (the two LRU maps age out independently): claim a fresh port.
            let port = claim_port(cfg, &ip, &l4, node_ip, &back)
                .ok_or_else(|| drop(ctx, metrics::DROP_NAT_NO_PORT))?;
            let fwd = binding(node_ip, port, now, seen);
            if SNAT.insert(&orig, &fwd, BPF_ANY as u64).is_err() {
                return Err(drop(ctx, metrics::DROP_NAT_NO_PORT));
            }
            port
        }
    };

    rewrite(
        ctx,
        &l4,
        ETH_HLEN + IP_SRC_OFF,
        ip.saddr,
        node_ip,
        if l4.pseudo { l4.off } else { l4.off + 4 },
        l4.sport,
        nat_port,
    )
    .map_err(|_| drop(ctx, metrics::DROP_REWRITE_FAILED))?;
    count(metrics::FWD_SNAT, ctx.len());
    Ok(TC_ACT_UNSPEC)
}

/// Whether `saddr` is a pod of this node: in the pod CIDR, or a local endpoint left from an
/// earlier pod CIDR (the agent restarted with another `--pod-cidr`, or the Node's podCIDR
/// changed), which keeps reaching the outside until it is deleted. The endpoint lookup is
/// paid only by sources outside the CIDR (the node's own traffic).
#[inline(always)]
fn is_pod_source(cfg: &config::NodeConfig, saddr: [u8; 4]) -> bool {
    // SAFETY: map values outlive the run (freed after an RCU grace period).
    cfg.in_pod_cidr4(saddr) || unsafe { ENDPOINTS.get(IpKey::v4(saddr)) }.is_some()
}

/// The port of a known flow (`fwd`, its egress entry) if it still owns it towards its
/// destination: its reply entry is there and points back at it, or is missing and can be put
/// back (`BPF_NOEXIST`, so a port another CPU just claimed is never taken over). Records the
/// packet in the flow's life; a SYN on a closed connection's tuple starts a new life for both
/// entries (the same port, a new connection).
#[inline(always)]
fn keep_port(
    orig: &nat::Tuple,
    fwd: *mut nat::Binding,
    back: &nat::Binding,
    seen: u32,
    now: u64,
) -> Option<u16> {
    // SAFETY: a map value, valid for the whole run; in place: the entry is this flow's own; a
    // racing CPU only records the same flow.
    let fwd = unsafe { &mut *fwd };
    let port = fwd.port;
    let reply = orig.masq_reply(fwd);
    match REV_SNAT.get_ptr_mut(&reply) {
        Some(r) => {
            // SAFETY: a map value, valid for the whole run.
            let r = unsafe { &mut *r };
            if !r.points_at(&back.addr, back.port) {
                return None;
            }
            if seen & flow::SEEN_SYN != 0 && flow::closed(fwd.life.seen, r.life.seen) {
                r.life = flow::Life::new(now, 0);
                fwd.life = flow::Life::new(now, seen);
            } else {
                fwd.life.touch(now, seen);
            }
        }
        None => {
            REV_SNAT.insert(&reply, back, BPF_NOEXIST as u64).ok()?;
            fwd.life.touch(now, seen);
        }
    }
    Some(port)
}

#[inline(always)]
fn binding(addr: [u8; 4], port: u16, now: u64, seen: u32) -> nat::Binding {
    nat::Binding {
        addr: datapath_common::addr::IpKey::v4(addr).addr,
        port,
        _pad: [0; 6],
        life: flow::Life::new(now, seen),
    }
}

/// Claims a free masquerade port for a new flow by inserting its reply tuple; returns it in
/// network order.
#[inline(always)]
fn claim_port(
    cfg: &config::NodeConfig,
    ip: &Ipv4Hdr,
    l4: &L4,
    node_ip: [u8; 4],
    back: &nat::Binding,
) -> Option<u16> {
    let min = cfg.snat_port_min as u32;
    let max = cfg.snat_port_max as u32;
    if min == 0 || max < min {
        return None;
    }
    let range = max - min + 1;
    // checked_rem: a plain `%` would keep a divide-by-zero panic path the verifier rejects.
    // SAFETY: a BPF helper with no memory preconditions.
    let start = unsafe { bpf_get_prandom_u32() }.checked_rem(range)?;
    for i in 0..PORT_TRIES {
        let port = ((min + (start + i).checked_rem(range)?) as u16).to_be();
        let reply = nat::Tuple::v4(ip.proto, ip.daddr, node_ip, l4.dport, port);
        if REV_SNAT.insert(&reply, back, BPF_NOEXIST as u64).is_ok() {
            return Some(port);
        }
    }
    None
}

#[classifier]
pub fn sl_up_ingress(ctx: TcContext) -> i32 {
    match try_ingress(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn try_ingress(ctx: &TcContext) -> Result<i32, i32> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(TC_ACT_UNSPEC)?;
    // SAFETY: `ptr_at` checked that the header lies within the packet.
    if unsafe { (*eth).proto } != ETH_P_IP.to_be() {
        return Ok(TC_ACT_UNSPEC);
    }
    // SAFETY: `ptr_at` checked that the header lies within the packet.
    let ip = unsafe { *ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN).ok_or(TC_ACT_UNSPEC)? };
    let cfg = CONFIG.get(0).ok_or(TC_ACT_UNSPEC)?;
    if ip.is_fragment() {
        return Ok(TC_ACT_UNSPEC);
    }
    if cfg.flags & config::FLAG_SERVICES != 0
        && (ip.proto == IPPROTO_TCP || ip.proto == IPPROTO_UDP)
    {
        if let Some(l4) = l4_of(ctx, &ip, ICMP_ECHO_REPLY) {
            // A backend on another node answering a flow translated here (a pod's ClusterIP
            // flow, or a NodePort's with `externalTrafficPolicy: Cluster`): put the frontend
            // back.
            let r = lb::reply(ctx, &ip, &l4);
            if r == lb::DROPPED {
                return Err(aya_ebpf::bindings::TC_ACT_SHOT as i32);
            }
            if r >= 0 {
                return Ok(crate::remote::send_reply(ctx, cfg, r));
            }
            // NodePorts, external and load-balancer IPs, reached from outside the node.
            match lb::forward(ctx, cfg, &ip, &l4, svc::SCOPE_EXTERNAL) {
                lb::MISS => {}
                lb::NO_BACKEND => {
                    // SAFETY: the kernel's context pointer, valid for the whole run.
                    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
                    return Ok(reset_to_pod(ctx, ifindex, false, metrics::DROP_NO_BACKEND));
                }
                lb::DROPPED => return Err(aya_ebpf::bindings::TC_ACT_SHOT as i32),
                to => {
                    let mut flow = crate::lxc::flow_of(ctx, &ip, 0);
                    lb::chosen_flow(&mut flow)?;
                    crate::lxc::enforce(ctx, &flow)?;
                    if lb::apply_chosen(ctx, &ip, &l4).is_err() {
                        return Err(aya_ebpf::bindings::TC_ACT_SHOT as i32);
                    }
                    count(metrics::SVC_TC_DNAT, ctx.len());
                    return Ok(deliver_or_stack(ctx, lb::daddr_of(to)));
                }
            }
        }
    }
    if ip.daddr != cfg.node_ip4 {
        // Native routing: another node's pod reaching a pod of this one.
        let v = crate::remote::to_local_pod(ctx, u32::from_ne_bytes(ip.daddr));
        if v != crate::remote::NOT_PEER {
            return Ok(v);
        }
        return Ok(TC_ACT_UNSPEC);
    }
    Ok(rev_masquerade(ctx, &ip))
}

/// Maps a reply to a masqueraded flow back to its pod. A BPF subprogram: its rewrite's
/// temporaries stay off the frame the service path shares its stack budget with.
#[inline(never)]
fn rev_masquerade(ctx: &TcContext, ip: &Ipv4Hdr) -> i32 {
    match try_rev_masquerade(ctx, ip) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn try_rev_masquerade(ctx: &TcContext, ip: &Ipv4Hdr) -> Result<i32, i32> {
    let Some(l4) = l4_of(ctx, ip, ICMP_ECHO_REPLY) else {
        return Ok(TC_ACT_UNSPEC);
    };
    let reply = nat::Tuple::v4(ip.proto, ip.saddr, ip.daddr, l4.sport, l4.dport);
    let Some(b) = REV_SNAT.get_ptr_mut(&reply) else {
        // Not a masqueraded flow: the node's own traffic.
        return Ok(TC_ACT_UNSPEC);
    };
    let flags = tcp_flags(ctx, ip, &l4);
    if flow::is_syn(flags) {
        // A connection opened from outside is never a reply: not the pod's.
        return Ok(TC_ACT_UNSPEC);
    }
    // SAFETY: a map value, valid for the whole run; in place: the entry is this flow's own.
    let b = unsafe { &mut *b };
    b.life
        // SAFETY: a BPF helper with no memory preconditions.
        .touch(unsafe { bpf_ktime_get_ns() }, flow::seen_of(flags));
    let pod = [b.addr[0], b.addr[1], b.addr[2], b.addr[3]];
    let pod_port = b.port;
    rewrite(
        ctx,
        &l4,
        ETH_HLEN + IP_DST_OFF,
        ip.daddr,
        pod,
        if l4.pseudo { l4.off + 2 } else { l4.off + 4 },
        l4.dport,
        pod_port,
    )
    .map_err(|_| drop(ctx, metrics::DROP_REWRITE_FAILED))?;
    count(metrics::FWD_REV_SNAT, ctx.len());
    // The stack routes the packet to the pod's veth (host route installed by the CNI plugin),
    // so netfilter conntrack, if loaded, sees both directions of the flow.
    Ok(TC_ACT_UNSPEC)
}
