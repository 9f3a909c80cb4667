//! TCP resets sent back into a pod in place of a packet that cannot be delivered: a connection
//! to a Service with no endpoint that did not pass a hooked socket (the client sees
//! `ECONNREFUSED` at once), and any segment to a pod address of this node that no longer
//! exists, e.g. a removed backend (the client's connection is reset instead of hanging until
//! TCP gives up, minutes later).
//!
//! The segment is turned into its own answer in place: trimmed to its headers, addresses and
//! ports swapped, the reset's sequence numbers chosen as RFC 9293 §3.10.7.1 says for a
//! connection that does not exist (`SEQ = SEG.ACK` if ACK is set, else `SEQ = 0,
//! ACK = SEG.SEQ + SEG.LEN`, with SYN and FIN counting one each), checksums computed anew,
//! and the frame handed back into the pod with `bpf_redirect_peer`. A UDP datagram gets an
//! ICMP port unreachable instead (RFC 792: the original IP header and first 8 bytes of its
//! payload follow the ICMP header), which fails the sender's connected socket with
//! `ECONNREFUSED`.

use aya_ebpf::{helpers::generated::bpf_skb_change_tail, programs::TcContext};

use crate::skb::{drop, ptr_at, EthHdr, Ipv4Hdr, ETH_HLEN, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

#[repr(C)]
#[derive(Clone, Copy)]
struct TcpHdr {
    sport: u16,
    dport: u16,
    /// Network order.
    seq: u32,
    ack: u32,
    /// Data offset (high 4 bits) and reserved bits.
    doff: u8,
    flags: u8,
    window: u16,
    check: u16,
    urg: u16,
}

/// Packed: the TCP header's 32-bit fields sit at offset 34 on the wire.
#[repr(C, packed)]
#[derive(Clone, Copy)]
struct Frame {
    eth: EthHdr,
    ip: Ipv4Hdr,
    tcp: TcpHdr,
}
const FRAME_LEN: u32 = 54;
const _: () = assert!(core::mem::size_of::<Frame>() == FRAME_LEN as usize);

/// One's-complement sum of big-endian 16-bit words.
#[inline(always)]
fn sum16(bytes: &[u8], mut acc: u32) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        acc += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    acc
}

#[inline(always)]
fn fold(mut acc: u32) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}

/// Answers the TCP segment in `ctx` with a reset from its destination, counted under `reason`,
/// sent back where the segment came from: into the pod behind host veth `ifindex` (`peer`),
/// or out of interface `ifindex` it arrived on. Anything else is dropped under `reason`.
/// A BPF subprogram: its frame (the new headers) stays off the caller's stack.
#[inline(never)]
pub fn reset_to_pod(ctx: &TcContext, ifindex: u32, peer: bool, reason: u32) -> i32 {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return drop(ctx, reason);
    };
    // SAFETY: `ptr_at` checked that the header lies within the packet.
    let ip = unsafe { *ip };
    if ip.header_len() != 20 || ip.is_fragment() {
        return drop(ctx, reason);
    }
    if ip.proto == IPPROTO_UDP {
        return unreachable(ctx, &ip, ifindex, peer, reason);
    }
    if ip.proto != IPPROTO_TCP {
        return drop(ctx, reason);
    }
    let (Some(eth), Some(tcp)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<TcpHdr>(ctx, ETH_HLEN + 20),
    ) else {
        return drop(ctx, reason);
    };
    // SAFETY: `ptr_at` checked that the header lies within the packet.
    let (eth, tcp) = unsafe { (*eth, *tcp) };
    if tcp.flags & TCP_RST != 0 {
        return drop(ctx, reason);
    }
    let (seq, ack, flags) = if tcp.flags & TCP_ACK != 0 {
        (tcp.ack, 0u32, TCP_RST)
    } else {
        let data =
            (u16::from_be(ip.tot_len) as u32).saturating_sub(20 + ((tcp.doff >> 4) as u32) * 4);
        let len = data + (tcp.flags & TCP_SYN != 0) as u32 + (tcp.flags & TCP_FIN != 0) as u32;
        (
            0,
            u32::from_be(tcp.seq).wrapping_add(len).to_be(),
            TCP_RST | TCP_ACK,
        )
    };
    let mut f = Frame {
        eth: EthHdr {
            dst: eth.src,
            src: eth.dst,
            proto: eth.proto,
        },
        ip: Ipv4Hdr {
            vihl: 0x45,
            tos: 0,
            tot_len: 40u16.to_be(),
            id: 0,
            frag_off: 0x4000u16.to_be(),
            ttl: 64,
            proto: IPPROTO_TCP,
            check: 0,
            saddr: ip.daddr,
            daddr: ip.saddr,
        },
        tcp: TcpHdr {
            sport: tcp.dport,
            dport: tcp.sport,
            seq,
            ack,
            doff: 5 << 4,
            flags,
            window: 0,
            check: 0,
            urg: 0,
        },
    };
    let mut iph = f.ip;
    // SAFETY: a `repr(C)` header of integers without padding: any bits are bytes.
    let ip_bytes: [u8; 20] = unsafe { core::mem::transmute(iph) };
    iph.check = fold(sum16(&ip_bytes, 0)).to_be();
    f.ip = iph;
    let mut th = f.tcp;
    // SAFETY: a `repr(C)` header of integers without padding: any bits are bytes.
    let tcp_bytes: [u8; 20] = unsafe { core::mem::transmute(th) };
    let mut pseudo = sum16(&iph.saddr, 0);
    pseudo = sum16(&iph.daddr, pseudo);
    pseudo += IPPROTO_TCP as u32 + 20;
    th.check = fold(sum16(&tcp_bytes, pseudo)).to_be();
    f.tcp = th;

    // SAFETY: the kernel's skb; no packet pointer is used after the call.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, FRAME_LEN, 0) } != 0 {
        return drop(ctx, reason);
    }
    // BPF_F_RECOMPUTE_CSUM: keeps a CHECKSUM_COMPLETE skb's csum in step with the new bytes.
    if ctx.store(0, &f, 1).is_err() {
        return drop(ctx, reason);
    }
    crate::skb::count(reason, FRAME_LEN);
    send_back(ifindex, peer)
}

/// The ICMP answer: Ethernet, IPv4, ICMP destination unreachable, and the original IPv4 header
/// with the first 8 bytes of its datagram.
#[repr(C, packed)]
#[derive(Clone, Copy)]
struct Unreachable {
    eth: EthHdr,
    ip: Ipv4Hdr,
    icmp_type: u8,
    icmp_code: u8,
    icmp_check: u16,
    unused: u32,
    orig_ip: Ipv4Hdr,
    orig_l4: [u8; 8],
}
const UNREACHABLE_LEN: u32 = 70;
const _: () = assert!(core::mem::size_of::<Unreachable>() == UNREACHABLE_LEN as usize);
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;

/// Answers the UDP datagram in `ctx` (IPv4 header `ip`, 20 bytes) with an ICMP port
/// unreachable from its destination, sent back as [`reset_to_pod`] sends resets.
#[inline(always)]
fn unreachable(ctx: &TcContext, ip: &Ipv4Hdr, ifindex: u32, peer: bool, reason: u32) -> i32 {
    let (Some(eth), Some(l4)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<[u8; 8]>(ctx, ETH_HLEN + 20),
    ) else {
        return drop(ctx, reason);
    };
    // SAFETY: `ptr_at` checked that the header lies within the packet.
    let (eth, l4) = unsafe { (*eth, *l4) };
    let mut f = Unreachable {
        eth: EthHdr {
            dst: eth.src,
            src: eth.dst,
            proto: eth.proto,
        },
        ip: Ipv4Hdr {
            vihl: 0x45,
            tos: 0,
            tot_len: ((UNREACHABLE_LEN - ETH_HLEN as u32) as u16).to_be(),
            id: 0,
            frag_off: 0,
            ttl: 64,
            proto: IPPROTO_ICMP,
            check: 0,
            saddr: ip.daddr,
            daddr: ip.saddr,
        },
        icmp_type: ICMP_DEST_UNREACH,
        icmp_code: ICMP_PORT_UNREACH,
        icmp_check: 0,
        unused: 0,
        orig_ip: *ip,
        orig_l4: l4,
    };
    let mut iph = f.ip;
    // SAFETY: a `repr(C)` header of integers without padding: any bits are bytes.
    let ip_bytes: [u8; 20] = unsafe { core::mem::transmute(iph) };
    iph.check = fold(sum16(&ip_bytes, 0)).to_be();
    f.ip = iph;
    // The ICMP checksum covers the ICMP header and everything after it (36 bytes here).
    // SAFETY: a `repr(C)` header of integers without padding: any bits are bytes.
    let all: [u8; UNREACHABLE_LEN as usize] = unsafe { core::mem::transmute(f) };
    let icmp_off = ETH_HLEN + 20;
    f.icmp_check = fold(sum16(&all[icmp_off..], 0)).to_be();

    // SAFETY: the kernel's skb; no packet pointer is used after the call.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, UNREACHABLE_LEN, 0) } != 0 {
        return drop(ctx, reason);
    }
    if ctx.store(0, &f, 1).is_err() {
        return drop(ctx, reason);
    }
    crate::skb::count(reason, UNREACHABLE_LEN);
    send_back(ifindex, peer)
}

/// Sends an answer back where its packet came from: into the pod behind host veth `ifindex`
/// (`peer`), or out of the interface `ifindex` it arrived on.
#[inline(always)]
fn send_back(ifindex: u32, peer: bool) -> i32 {
    if peer {
        // SAFETY: a BPF helper with no memory preconditions.
        unsafe { aya_ebpf::helpers::generated::bpf_redirect_peer(ifindex, 0) as i32 }
    } else {
        // SAFETY: a BPF helper with no memory preconditions.
        unsafe { aya_ebpf::helpers::generated::bpf_redirect(ifindex, 0) as i32 }
    }
}
