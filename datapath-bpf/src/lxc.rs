//! `sl_from_pod`: TC ingress of a pod's host-side veth, i.e. every packet a pod sends.
//!
//! A packet for another pod on this node is delivered straight into that pod (see
//! [`crate::skb::deliver_local`]); one for another node's pod is sent to that node
//! ([`crate::remote::to_peer`]); anything else (the node itself, other nodes, the outside)
//! goes to the node's stack, which routes it and, for the outside, the uplink program
//! masquerades it. A packet whose source address is not the sending pod's own is dropped, so a
//! pod cannot impersonate another.
//!
//! Services: a packet to a Service frontend that did not pass a hooked socket (a process
//! outside the agent's cgroup) is translated here ([`crate::lb`]); a backend's reply to such a
//! flow is translated back before it is delivered. A TCP segment to a pod address of this
//! node that no longer exists, or to a Service with no endpoint, is answered with a reset
//! ([`crate::reset`]).

use aya_ebpf::{bindings::TC_ACT_SHOT as SHOT, macros::classifier, programs::TcContext};
use datapath_common::{addr::IpKey, config, metrics, svc};

use crate::{
    l4::{l4_of, ICMP_ECHO_REQUEST},
    lb,
    maps::{CONFIG, ENDPOINTS},
    policy::{self, Flow},
    reset::reset_to_pod,
    skb::{
        count, deliver_or_stack, drop, ptr_at, EthHdr, Ipv4Hdr, ETH_HLEN, ETH_P_IP, IPPROTO_TCP,
        IPPROTO_UDP, TC_ACT_UNSPEC,
    },
};

#[classifier]
pub fn sl_from_pod(ctx: TcContext) -> i32 {
    match try_from_pod(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn try_from_pod(ctx: &TcContext) -> Result<i32, i32> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(TC_ACT_UNSPEC)?;
    // SAFETY: `ptr_at` checked that the header lies within the packet.
    if unsafe { (*eth).proto } != ETH_P_IP.to_be() {
        // ARP, IPv6 neighbour discovery and other non-IPv4 frames go to the stack as before.
        return Ok(TC_ACT_UNSPEC);
    }
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN).ok_or_else(|| drop(ctx, metrics::DROP_INVALID))?;
    // SAFETY: `ptr_at` checked that the header lies within the packet.
    let saddr = unsafe { (*ip).saddr };

    // Source check: the sender must be the endpoint that owns this veth.
    // SAFETY: the kernel's context pointer, valid for the whole run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: map values outlive the run (freed after an RCU grace period).
    let src_flags = match unsafe { ENDPOINTS.get(IpKey::v4(saddr)) } {
        Some(src) if src.ifindex == ifindex => src.flags,
        _ => return Err(drop(ctx, metrics::DROP_SPOOFED_SOURCE)),
    };
    // SAFETY: `ptr_at` checked that the header lies within the packet.
    let hdr = unsafe { *ip };
    let mut flow = flow_of(ctx, &hdr, src_flags);

    let Some(cfg) = CONFIG.get(0) else {
        return Ok(deliver_or_stack(ctx, hdr.daddr));
    };
    if cfg.flags & config::FLAG_SERVICES == 0
        || (hdr.proto != IPPROTO_TCP && hdr.proto != IPPROTO_UDP)
        || hdr.is_fragment()
    {
        enforce(ctx, &flow)?;
        return Ok(deliver_or_dead(ctx, cfg, &hdr, ifindex));
    }
    services(ctx, cfg, &hdr, ifindex, &mut flow)
}

/// SCTP (its ports are judged by policy; the datapath does not balance it).
const IPPROTO_SCTP: u8 = 132;

/// The packet's tuple for policy (ports 0 for protocols without them).
#[inline(always)]
pub fn flow_of(ctx: &TcContext, hdr: &Ipv4Hdr, src_flags: u32) -> Flow {
    let off = ETH_HLEN + hdr.header_len();
    // SCTP's common header starts with the ports too (RFC 9260 §3.1).
    let with_ports =
        (hdr.proto == IPPROTO_TCP || hdr.proto == IPPROTO_UDP || hdr.proto == IPPROTO_SCTP)
            && !hdr.is_fragment();
    let ports: [u16; 2] = if with_ports {
        ctx.load(off).unwrap_or([0, 0])
    } else {
        [0, 0]
    };
    let tcp_flags = if hdr.proto == IPPROTO_TCP && with_ports {
        ctx.load::<u8>(off + 13).unwrap_or(0)
    } else {
        0
    };
    Flow {
        saddr: hdr.saddr,
        daddr: hdr.daddr,
        sport: ports[0],
        dport: ports[1],
        proto: hdr.proto,
        tcp_flags,
        _pad: [0; 2],
        src_flags,
    }
}

/// Applies the policy verdict: `Err(TC_ACT_SHOT)` (counted) when the flow is denied.
#[inline(always)]
pub fn enforce(ctx: &TcContext, flow: &Flow) -> Result<(), i32> {
    match policy::check(flow) {
        0 => Ok(()),
        reason => Err(drop(ctx, reason)),
    }
}

/// Service translation of a TCP or UDP packet from a pod: a backend's reply put back to the
/// frontend, or a packet to a frontend sent to a backend. Policy judges the real endpoints:
/// a reply before it is translated back, a request after it is translated.
#[inline(always)]
fn services(
    ctx: &TcContext,
    cfg: &config::NodeConfig,
    hdr: &Ipv4Hdr,
    ifindex: u32,
    flow: &mut Flow,
) -> Result<i32, i32> {
    let Some(l4) = l4_of(ctx, hdr, ICMP_ECHO_REQUEST) else {
        enforce(ctx, flow)?;
        return Ok(deliver_or_dead(ctx, cfg, hdr, ifindex));
    };
    // A backend answering a translated flow: put the frontend back.
    let r = lb::reply(ctx, hdr, &l4);
    if r == lb::DROPPED {
        return Err(SHOT as i32);
    }
    if r >= 0 {
        enforce(ctx, flow)?;
        // A reply from a node address to outside goes out of the uplink as a router hop
        // (TTL-1): the stack would drop it as a martian.
        return Ok(crate::remote::send_reply(ctx, cfg, r));
    }
    // SAFETY: map values outlive the run (freed after an RCU grace period).
    if unsafe { ENDPOINTS.get(IpKey::v4(hdr.daddr)) }.is_none() {
        match lb::forward(ctx, cfg, hdr, &l4, svc::SCOPE_INTERNAL) {
            lb::MISS => {}
            lb::NO_BACKEND => {
                return Ok(reset_to_pod(ctx, ifindex, true, metrics::DROP_NO_BACKEND));
            }
            lb::DROPPED => return Err(SHOT as i32),
            to => {
                lb::chosen_flow(flow)?;
                enforce(ctx, flow)?;
                if lb::apply_chosen(ctx, hdr, &l4).is_err() {
                    return Err(SHOT as i32);
                }
                count(metrics::SVC_TC_DNAT, ctx.len());
                return Ok(deliver_or_stack(ctx, lb::daddr_of(to)));
            }
        }
    }
    lb::untranslated(flow);
    enforce(ctx, flow)?;
    Ok(deliver_or_dead(ctx, cfg, hdr, ifindex))
}

/// Like [`deliver_or_stack`], but a TCP segment (UDP datagram) to a pod address of this node
/// with no pod behind it (a removed backend) is answered with a reset (port unreachable).
#[inline(always)]
fn deliver_or_dead(ctx: &TcContext, cfg: &config::NodeConfig, ip: &Ipv4Hdr, ifindex: u32) -> i32 {
    // SAFETY: map values outlive the run (freed after an RCU grace period).
    if unsafe { ENDPOINTS.get(IpKey::v4(ip.daddr)) }.is_none()
        && (ip.proto == IPPROTO_TCP || ip.proto == IPPROTO_UDP)
        && cfg.in_pod_cidr4(ip.daddr)
    {
        return reset_to_pod(ctx, ifindex, true, metrics::DROP_DEAD_ENDPOINT);
    }
    deliver_or_stack(ctx, ip.daddr)
}

/// `sl_to_pod`: TC egress of a pod's host-side veth, i.e. what the node's stack delivers to the
/// pod (from the node, the outside, replies to masqueraded flows). Packets from another local
/// pod never pass here (they are handed over by `bpf_redirect_peer`, and judged in
/// `sl_from_pod`). Only NetworkPolicy is applied here.
#[classifier]
pub fn sl_to_pod(ctx: TcContext) -> i32 {
    match try_to_pod(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn try_to_pod(ctx: &TcContext) -> Result<i32, i32> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(TC_ACT_UNSPEC)?;
    // SAFETY: `ptr_at` checked that the header lies within the packet.
    if unsafe { (*eth).proto } != ETH_P_IP.to_be() {
        return Ok(TC_ACT_UNSPEC);
    }
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN).ok_or(TC_ACT_UNSPEC)?;
    // SAFETY: `ptr_at` checked that the header lies within the packet.
    let hdr = unsafe { *ip };
    let flow = flow_of(ctx, &hdr, policy::flags_of(hdr.saddr));
    enforce(ctx, &flow)?;
    Ok(TC_ACT_UNSPEC)
}
