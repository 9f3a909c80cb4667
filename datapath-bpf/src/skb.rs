//! Packet helpers shared by every TC program: bounds-checked header access, the IPv4 header
//! view, counters and local delivery.

use aya_ebpf::{bindings::TC_ACT_SHOT, helpers::generated::bpf_redirect_peer, programs::TcContext};
use datapath_common::{endpoint, metrics};

use crate::maps::METRICS;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// The pass verdict of every program here: `TC_ACT_UNSPEC` lets the next program (or the
/// stack) decide, in a cls_bpf chain as under TCX (where `TC_ACT_PIPE` would end the chain).
pub const TC_ACT_UNSPEC: i32 = -1;

/// Offset of fields in the IPv4 header.
pub const IP_CSUM_OFF: usize = 10;
pub const IP_SRC_OFF: usize = 12;
pub const IP_DST_OFF: usize = 16;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Network order.
    pub proto: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

impl Ipv4Hdr {
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        ((self.vihl & 0x0f) as usize) * 4
    }

    /// Whether this is a fragment other than a whole datagram (MF set or offset non-zero).
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        u16::from_be(self.frag_off) & 0x3fff != 0
    }
}

/// A bounds-checked pointer to a `T` at `off` bytes into the packet, or `None` if the packet is
/// shorter. The one place that reads packet memory directly.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Adds one packet of `len` bytes to counter `idx`.
#[inline(always)]
pub fn count(idx: u32, len: u32) {
    if let Some(c) = METRICS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot: valid for the run and no other CPU writes it.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len as u64;
        }
    }
}

/// Counts a drop and returns the verdict that drops.
#[inline(always)]
pub fn drop(ctx: &TcContext, reason: u32) -> i32 {
    count(reason, ctx.len());
    TC_ACT_SHOT
}

/// Decrements the IPv4 TTL (Ethernet header at 0) as a router hop does, fixing the header
/// checksum; a packet whose TTL would reach 0 is dropped (counted, `Err(TC_ACT_SHOT)`).
#[inline(always)]
pub fn dec_ttl(ctx: &TcContext) -> Result<(), i32> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN).ok_or_else(|| drop(ctx, metrics::DROP_INVALID))?;
    // SAFETY: `ptr_at` checked that the header lies within the packet.
    let (ttl, proto) = unsafe { ((*ip).ttl, (*ip).proto) };
    if ttl <= 1 {
        return Err(drop(ctx, metrics::DROP_TTL_EXCEEDED));
    }
    // TTL shares a 16-bit checksum word with the protocol byte.
    let old = u16::from_be_bytes([ttl, proto]);
    let new = u16::from_be_bytes([ttl - 1, proto]);
    ctx.l3_csum_replace(
        ETH_HLEN + IP_CSUM_OFF,
        old.to_be() as u64,
        new.to_be() as u64,
        2,
    )
    .map_err(|_| drop(ctx, metrics::DROP_REWRITE_FAILED))?;
    // The helper may have moved packet data: re-derive the pointer.
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN).ok_or_else(|| drop(ctx, metrics::DROP_INVALID))?;
    // SAFETY: `ptr_at` checked that the header lies within the packet.
    unsafe { (*ip).ttl = ttl - 1 };
    Ok(())
}

/// Delivers an IPv4 packet (Ethernet header at 0) into the local pod `ep`: decrements the TTL
/// as a router hop does, rewrites the MACs to host-veth → pod, and hands it to the pod's
/// namespace with `bpf_redirect_peer` (kernel ≥ 5.10): the packet enters the pod's eth0
/// ingress directly, without a pass through the node's stack or backlog queue.
#[inline(always)]
pub fn deliver_local(ctx: &TcContext, ep: &endpoint::Value) -> i32 {
    if let Err(v) = dec_ttl(ctx) {
        return v;
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return drop(ctx, metrics::DROP_INVALID);
    };
    // SAFETY: `ptr_at` checked that the header lies within the packet.
    unsafe {
        (*eth).dst = ep.pod_mac;
        (*eth).src = ep.host_mac;
    }
    count(metrics::FWD_LOCAL_POD, ctx.len());
    // SAFETY: a BPF helper with no memory preconditions.
    unsafe { bpf_redirect_peer(ep.ifindex, 0) as i32 }
}

/// Delivers to the local pod at `daddr`, sends to the node whose pod CIDR holds `daddr`
/// ([`crate::remote::to_peer`]), or passes the packet to the node's stack.
#[inline(always)]
pub fn deliver_or_stack(ctx: &TcContext, daddr: [u8; 4]) -> i32 {
    if let Some(dst) =
        // SAFETY: map values outlive the run (freed after an RCU grace period).
        unsafe { crate::maps::ENDPOINTS.get(datapath_common::addr::IpKey::v4(daddr)) }
    {
        let ep = *dst;
        return deliver_local(ctx, &ep);
    }
    let v = crate::remote::to_peer(ctx, u32::from_ne_bytes(daddr));
    if v != crate::remote::NOT_PEER {
        return v;
    }
    count(metrics::FWD_STACK, ctx.len());
    TC_ACT_UNSPEC
}
