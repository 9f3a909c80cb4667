//! Masquerade on the node's uplink: `sl_up_egress` (TC egress) gives pod traffic leaving
//! for the outside the node's address and a port from the masquerade range; `sl_up_ingress`
//! (TC ingress) maps replies back to the pod, which the stack then routes to the pod's veth.
//!
//! Why in eBPF and not an iptables MASQUERADE rule: no netfilter rule on the path, and the
//! translation state lives in pinned maps, so it survives an agent restart and can be read by
//! `sluicectl`. The ports come from a range outside the kernel's ephemeral range (see
//! `datapath_common::nat`), so a translated flow never collides with a socket of the node.
//! A port is claimed by inserting the reply tuple with `BPF_NOEXIST`: whoever inserts first
//! owns it, which makes concurrent allocation on several CPUs safe without locks.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST},
    helpers::generated::bpf_get_prandom_u32,
    macros::classifier,
    programs::TcContext,
};
use datapath_common::{config, metrics, nat};

use crate::{
    maps::{CONFIG, REV_SNAT, SNAT},
    skb::{
        count, drop, ptr_at, EthHdr, Ipv4Hdr, ETH_HLEN, ETH_P_IP, IPPROTO_ICMP, IPPROTO_TCP,
        IPPROTO_UDP, IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF, TC_ACT_UNSPEC,
    },
};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
/// Ports tried before giving up on a flow (the drop is counted as `drop:nat-no-port`).
const PORT_TRIES: u32 = 32;

/// Where a flow's "ports" sit: TCP/UDP ports, or the ICMP echo identifier.
struct L4 {
    /// Offset of the L4 header.
    off: usize,
    /// Offset of the L4 checksum.
    csum_off: usize,
    /// Whether the checksum covers the IP pseudo-header (TCP, UDP).
    pseudo: bool,
    /// Extra checksum flags (UDP: a zero checksum means "none" and must stay zero).
    csum_flags: u64,
    /// Network order.
    sport: u16,
    dport: u16,
}

/// Reads the L4 identifiers of an IPv4 packet; `None` for what masquerade leaves alone.
#[inline(always)]
fn l4_of(ctx: &TcContext, ip: &Ipv4Hdr, icmp_type: u8) -> Option<L4> {
    let off = ETH_HLEN + ip.header_len();
    match ip.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let ports: [u16; 2] = ctx.load(off).ok()?;
            let tcp = ip.proto == IPPROTO_TCP;
            Some(L4 {
                off,
                csum_off: off + if tcp { 16 } else { 6 },
                pseudo: true,
                csum_flags: if tcp { 0 } else { BPF_F_MARK_MANGLED_0 as u64 },
                sport: ports[0],
                dport: ports[1],
            })
        }
        IPPROTO_ICMP => {
            let ty: u8 = ctx.load(off).ok()?;
            if ty != icmp_type {
                return None;
            }
            let id: u16 = ctx.load(off + 4).ok()?;
            // Egress: the id plays the source port; replies carry it as the destination port.
            let (sport, dport) = if icmp_type == ICMP_ECHO_REQUEST {
                (id, 0)
            } else {
                (0, id)
            };
            Some(L4 {
                off,
                csum_off: off + 2,
                pseudo: false,
                csum_flags: 0,
                sport,
                dport,
            })
        }
        _ => None,
    }
}

/// Rewrites one address (at `addr_off`) and one port (at `port_off`) with checksum fixes.
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    l4: &L4,
    addr_off: usize,
    old_addr: [u8; 4],
    new_addr: [u8; 4],
    port_off: usize,
    old_port: u16,
    new_port: u16,
) -> Result<(), i64> {
    let (oa, na) = (
        u32::from_ne_bytes(old_addr) as u64,
        u32::from_ne_bytes(new_addr) as u64,
    );
    ctx.l3_csum_replace(ETH_HLEN + IP_CSUM_OFF, oa, na, 4)?;
    if l4.pseudo {
        ctx.l4_csum_replace(
            l4.csum_off,
            oa,
            na,
            BPF_F_PSEUDO_HDR as u64 | l4.csum_flags | 4,
        )?;
    }
    ctx.l4_csum_replace(
        l4.csum_off,
        old_port as u64,
        new_port as u64,
        l4.csum_flags | 2,
    )?;
    ctx.store(addr_off, &new_addr, 0)?;
    ctx.store(port_off, &new_port, 0)?;
    Ok(())
}

#[classifier]
pub fn sl_up_egress(ctx: TcContext) -> i32 {
    match try_egress(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn try_egress(ctx: &TcContext) -> Result<i32, i32> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(TC_ACT_UNSPEC)?;
    if unsafe { (*eth).proto } != ETH_P_IP.to_be() {
        return Ok(TC_ACT_UNSPEC);
    }
    let ip = unsafe { *ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN).ok_or(TC_ACT_UNSPEC)? };
    let cfg = CONFIG.get(0).ok_or(TC_ACT_UNSPEC)?;
    if cfg.flags & config::FLAG_MASQUERADE == 0
        || !cfg.in_pod_cidr4(ip.saddr)
        || cfg.in_pod_cidr4(ip.daddr)
    {
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

    let back = binding(ip.saddr, l4.sport);
    let known = unsafe { SNAT.get(&orig) }.map(|b| b.port);
    let nat_port = match known {
        Some(port) if owns_port(&ip, &l4, node_ip, port, &back) => port,
        _ => {
            // A new flow, or one whose port was taken over after its reply entry was evicted
            // (the two LRU maps age out independently): claim a fresh port.
            let port = claim_port(cfg, &ip, &l4, node_ip)
                .ok_or_else(|| drop(ctx, metrics::DROP_NAT_NO_PORT))?;
            let fwd = binding(node_ip, port);
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

/// Whether the flow still owns `port` towards its destination: its reply entry is there and
/// points back at it, or is missing and can be put back (`BPF_NOEXIST`, so a port another CPU
/// just claimed is never taken over).
#[inline(always)]
fn owns_port(ip: &Ipv4Hdr, l4: &L4, node_ip: [u8; 4], port: u16, back: &nat::Binding) -> bool {
    let reply = nat::Tuple::v4(ip.proto, ip.daddr, node_ip, l4.dport, port);
    match unsafe { REV_SNAT.get(&reply) } {
        Some(owner) => owner.addr == back.addr && owner.port == back.port,
        None => REV_SNAT.insert(&reply, back, BPF_NOEXIST as u64).is_ok(),
    }
}

#[inline(always)]
fn binding(addr: [u8; 4], port: u16) -> nat::Binding {
    nat::Binding {
        addr: datapath_common::addr::IpKey::v4(addr).addr,
        port,
        _pad: [0; 2],
    }
}

/// Claims a free masquerade port for a new flow by inserting its reply tuple; returns it in
/// network order.
#[inline(always)]
fn claim_port(cfg: &config::NodeConfig, ip: &Ipv4Hdr, l4: &L4, node_ip: [u8; 4]) -> Option<u16> {
    let min = cfg.snat_port_min as u32;
    let max = cfg.snat_port_max as u32;
    if min == 0 || max < min {
        return None;
    }
    let range = max - min + 1;
    // checked_rem: a plain `%` would keep a divide-by-zero panic path the verifier rejects.
    let start = unsafe { bpf_get_prandom_u32() }.checked_rem(range)?;
    let back = binding(ip.saddr, l4.sport);
    for i in 0..PORT_TRIES {
        let port = ((min + (start + i).checked_rem(range)?) as u16).to_be();
        let reply = nat::Tuple::v4(ip.proto, ip.daddr, node_ip, l4.dport, port);
        if REV_SNAT.insert(&reply, &back, BPF_NOEXIST as u64).is_ok() {
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
    if unsafe { (*eth).proto } != ETH_P_IP.to_be() {
        return Ok(TC_ACT_UNSPEC);
    }
    let ip = unsafe { *ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN).ok_or(TC_ACT_UNSPEC)? };
    let cfg = CONFIG.get(0).ok_or(TC_ACT_UNSPEC)?;
    if ip.daddr != cfg.node_ip4 || ip.is_fragment() {
        return Ok(TC_ACT_UNSPEC);
    }
    let Some(l4) = l4_of(ctx, &ip, ICMP_ECHO_REPLY) else {
        return Ok(TC_ACT_UNSPEC);
    };
    let reply = nat::Tuple::v4(ip.proto, ip.saddr, ip.daddr, l4.sport, l4.dport);
    let Some(b) = (unsafe { REV_SNAT.get(&reply) }) else {
        // Not a masqueraded flow: the node's own traffic.
        return Ok(TC_ACT_UNSPEC);
    };
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
