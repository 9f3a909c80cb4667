//! L4 header access and rewriting shared by masquerade ([`crate::uplink`]) and service
//! translation ([`crate::lb`]): where a flow's ports sit, and one address + port rewrite with
//! the IP and L4 checksums fixed incrementally.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};

use crate::skb::{Ipv4Hdr, ETH_HLEN, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IP_CSUM_OFF};

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;

/// Where a flow's "ports" sit: TCP/UDP ports, or the ICMP echo identifier.
pub struct L4 {
    /// Offset of the L4 header.
    pub off: usize,
    /// Offset of the L4 checksum.
    pub csum_off: usize,
    /// Whether the checksum covers the IP pseudo-header (TCP, UDP).
    pub pseudo: bool,
    /// Extra checksum flags (UDP: a zero checksum means "none" and must stay zero).
    pub csum_flags: u64,
    /// Network order.
    pub sport: u16,
    pub dport: u16,
}

/// Reads the L4 identifiers of an IPv4 packet; `None` for what masquerade leaves alone.
#[inline(always)]
pub fn l4_of(ctx: &TcContext, ip: &Ipv4Hdr, icmp_type: u8) -> Option<L4> {
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
pub fn rewrite(
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

/// The TCP flags byte of a packet whose L4 header is at `l4.off` (0 for other protocols).
#[inline(always)]
pub fn tcp_flags(ctx: &TcContext, ip: &Ipv4Hdr, l4: &L4) -> u8 {
    if ip.proto == IPPROTO_TCP {
        ctx.load::<u8>(l4.off + 13).unwrap_or(0)
    } else {
        0
    }
}

impl L4 {
    /// Offset of the source port (ICMP echo: the identifier).
    #[inline(always)]
    pub fn sport_off(&self) -> usize {
        if self.pseudo {
            self.off
        } else {
            self.off + 4
        }
    }

    /// Offset of the destination port (ICMP echo: the identifier).
    #[inline(always)]
    pub fn dport_off(&self) -> usize {
        if self.pseudo {
            self.off + 2
        } else {
            self.off + 4
        }
    }
}
