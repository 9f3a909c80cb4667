//! `sl_from_pod`: TC ingress of a pod's host-side veth, i.e. every packet a pod sends.
//!
//! A packet for another pod on this node is delivered straight into that pod (see
//! [`crate::skb::deliver_local`]); anything else (the node itself, other nodes, the outside)
//! goes to the node's stack, which routes it and, for the outside, the uplink program
//! masquerades it. A packet whose source address is not the sending pod's own is dropped, so a
//! pod cannot impersonate another.

use aya_ebpf::{macros::classifier, programs::TcContext};
use datapath_common::{addr::IpKey, metrics};

use crate::{
    maps::ENDPOINTS,
    skb::{count, deliver_local, drop, ptr_at, EthHdr, Ipv4Hdr, ETH_HLEN, ETH_P_IP, TC_ACT_UNSPEC},
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
    if unsafe { (*eth).proto } != ETH_P_IP.to_be() {
        // ARP, IPv6 neighbour discovery and other non-IPv4 frames go to the stack as before.
        return Ok(TC_ACT_UNSPEC);
    }
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN).ok_or_else(|| drop(ctx, metrics::DROP_INVALID))?;
    let (saddr, daddr) = unsafe { ((*ip).saddr, (*ip).daddr) };

    // Source check: the sender must be the endpoint that owns this veth.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    match unsafe { ENDPOINTS.get(IpKey::v4(saddr)) } {
        Some(src) if src.ifindex == ifindex => {}
        _ => return Err(drop(ctx, metrics::DROP_SPOOFED_SOURCE)),
    }

    if let Some(dst) = unsafe { ENDPOINTS.get(IpKey::v4(daddr)) } {
        let ep = *dst;
        return Ok(deliver_local(ctx, &ep));
    }
    count(metrics::FWD_STACK, ctx.len());
    Ok(TC_ACT_UNSPEC)
}
