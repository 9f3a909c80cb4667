//! Frames on a pod's veth: as a local pod sends them and as the node delivers them into it
//! (one routed hop), the TCP and UDP packets of a connection, and checks of what a program
//! hands back to a pod: a rewritten frame, a TCP reset (RFC 9293 §3.10.7.1) or an ICMP port
//! unreachable (RFC 792).

use super::{
    assert_checksums, assert_ip_checksum, assert_l4_checksum, be16, be32, dport, dst_ip, ethernet,
    internet_checksum, ipv4, sport, src_ip, tcp_segment, udp, Ip, Run, ETH_P_IP, HOST_A_MAC,
    HOST_B_MAC, IPPROTO_ICMP, IPPROTO_TCP, POD_A, POD_A_MAC, POD_B, POD_B_MAC, TCP_ACK, TCP_SYN,
    TC_ACT_REDIRECT,
};

/// An IPv4 address and a port (host order).
pub type Addr = ([u8; 4], u16);

/// The initial sequence number of every [`syn`].
pub const ISN: u32 = 0x1000_0000;

/// A local pod as frames see it: its address, its eth0 MAC and its host veth's MAC.
pub struct LocalPod {
    pub ip: [u8; 4],
    pub mac: [u8; 6],
    pub host_mac: [u8; 6],
}

impl LocalPod {
    pub const A: Self = Self {
        ip: POD_A,
        mac: POD_A_MAC,
        host_mac: HOST_A_MAC,
    };
    pub const B: Self = Self {
        ip: POD_B,
        mac: POD_B_MAC,
        host_mac: HOST_B_MAC,
    };
}

/// A frame pod `p` sends to `dst`, as its host veth receives it (TTL 64).
pub fn sent(p: &LocalPod, dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let ip = ipv4(Ip::new(p.ip, dst, proto), l4);
    ethernet(p.host_mac, p.mac, ETH_P_IP, &ip)
}

/// A frame from `src` delivered into pod `p` by the node: host veth → pod MACs, one routed
/// hop (TTL 63).
pub fn delivered(p: &LocalPod, src: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let ip = Ip {
        ttl: 63,
        ..Ip::new(src, p.ip, proto)
    };
    ethernet(p.mac, p.host_mac, ETH_P_IP, &ipv4(ip, l4))
}

/// A SYN opening a connection from `src` to `dst`.
pub fn syn(src: Addr, dst: Addr) -> Vec<u8> {
    tcp_segment(src.0, dst.0, (src.1, dst.1), (ISN, 0), TCP_SYN, &[])
}

/// The SYN-ACK answering [`syn`].
pub fn syn_ack(src: Addr, dst: Addr) -> Vec<u8> {
    let seq_ack = (0x5000_0000, ISN + 1);
    let flags = TCP_SYN | TCP_ACK;
    tcp_segment(src.0, dst.0, (src.1, dst.1), seq_ack, flags, &[])
}

/// A UDP datagram, with its checksum or with 0 ("no checksum").
pub fn datagram(src: Addr, dst: Addr, checksum: bool) -> Vec<u8> {
    udp(src.0, dst.0, (src.1, dst.1), b"\x12\x34 query", checksum)
}

/// Checks the verdict, the checksums and the whole frame.
pub fn assert_out(r: &Run, verdict: u32, expected: &[u8]) {
    assert_eq!(r.verdict, verdict, "verdict");
    assert_checksums(&r.frame);
    assert_eq!(r.frame, expected, "frame");
}

/// Checks that `r` is a TCP reset handed back into pod `to`: a 54-byte frame with the MACs
/// of the segment swapped, from `from` to `to`:`to_port`, with `seq`, `ack` (when the ACK
/// flag says the field counts) and `flags`, and valid checksums.
pub fn assert_reset(
    r: &Run,
    to: &LocalPod,
    from: Addr,
    to_port: u16,
    seq: u32,
    ack: u32,
    flags: u8,
) {
    let f = &r.frame;
    assert_eq!(r.verdict, TC_ACT_REDIRECT, "verdict");
    assert_eq!(
        f.len(),
        54,
        "Ethernet + IPv4 + TCP headers, no data: {f:02x?}"
    );
    assert_eq!(
        (&f[..6], &f[6..12]),
        (&to.mac[..], &to.host_mac[..]),
        "MACs"
    );
    assert_eq!(be16(f, 12), ETH_P_IP);
    assert_eq!((f[14], be16(f, 16), f[23]), (0x45, 40, IPPROTO_TCP));
    assert_eq!(be16(f, 20) & 0x3fff, 0, "not a fragment");
    assert_ne!(f[22], 0, "TTL");
    assert_eq!((src_ip(f), sport(f)), from, "source");
    assert_eq!((dst_ip(f), dport(f)), (to.ip, to_port), "destination");
    assert_eq!(be32(f, 38), seq, "sequence number");
    if flags & TCP_ACK != 0 {
        assert_eq!(be32(f, 42), ack, "acknowledgment number");
    }
    assert_eq!((f[46] >> 4, f[47]), (5, flags), "data offset, flags");
    assert_ip_checksum(f);
    assert_l4_checksum(f);
}

/// Checks that `r` is an ICMP port unreachable (RFC 792: type 3, code 3, 4 unused bytes, then
/// the IPv4 header and first 8 bytes of the datagram in `orig`, as it arrived) handed back
/// into pod `to` from `from`, with the MACs of `orig` swapped and valid checksums.
pub fn assert_port_unreachable(r: &Run, to: &LocalPod, from: [u8; 4], orig: &[u8]) {
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&orig[14..14 + 20 + 8]);
    let c = internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let f = &r.frame;
    assert_eq!(r.verdict, TC_ACT_REDIRECT, "verdict");
    assert_eq!(f.len(), 14 + 20 + icmp.len(), "frame length: {f:02x?}");
    assert_eq!(
        (&f[..6], &f[6..12]),
        (&to.mac[..], &to.host_mac[..]),
        "MACs"
    );
    assert_eq!(be16(f, 12), ETH_P_IP);
    let total = (20 + icmp.len()) as u16;
    assert_eq!((f[14], be16(f, 16), f[23]), (0x45, total, IPPROTO_ICMP));
    assert_eq!(be16(f, 20) & 0x3fff, 0, "not a fragment");
    assert_ne!(f[22], 0, "TTL");
    assert_eq!((src_ip(f), dst_ip(f)), (from, to.ip), "addresses");
    assert_eq!(&f[34..], &icmp[..], "ICMP message");
    assert_ip_checksum(f);
    assert_l4_checksum(f);
}
