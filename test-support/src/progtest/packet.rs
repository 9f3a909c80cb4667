//! Packets built from the specifications, and readers of the frames that come out: every
//! builder computes its checksums with [`internet_checksum`], an RFC 1071 implementation of
//! the harness's own, never with anything of the datapath's.

use super::{
    ETH_P_IP, GATEWAY_MAC, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_SYN, UPLINK_MAC,
};

/// RFC 1071: the one's complement of the one's complement sum of 16-bit big-endian words (an
/// odd last byte is padded with zero).
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for w in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The TCP or UDP checksum of `segment`: RFC 1071 over the pseudo-header (RFC 793 §3.1,
/// RFC 768: source, destination, zero, protocol, length) and the segment.
pub fn l4_checksum(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> u16 {
    let mut d = [&src[..], &dst[..], &[0, proto]].concat();
    d.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    d.extend_from_slice(segment);
    internet_checksum(&d)
}

/// An IPv4 header's variable fields; IHL is 5 (no options).
#[derive(Clone, Copy)]
pub struct Ip {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    pub ttl: u8,
    /// Flags (DF 0x4000, MF 0x2000) and fragment offset in 8-byte units.
    pub frag: u16,
}

impl Ip {
    /// TTL 64, DF set.
    pub fn new(src: [u8; 4], dst: [u8; 4], proto: u8) -> Self {
        Self {
            src,
            dst,
            proto,
            ttl: 64,
            frag: 0x4000,
        }
    }
}

/// RFC 791 datagram: header with its checksum, then `payload`.
pub fn ipv4(h: Ip, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&0x1c46u16.to_be_bytes()); // identification
    p.extend_from_slice(&h.frag.to_be_bytes());
    p.extend_from_slice(&[h.ttl, h.proto, 0, 0]);
    p.extend_from_slice(&h.src);
    p.extend_from_slice(&h.dst);
    let c = internet_checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// RFC 793 segment (data offset 5) with its checksum over the pseudo-header; with ACK set it
/// carries 18 bytes of HTTP request.
pub fn tcp(
    src: [u8; 4],
    dst: [u8; 4],
    ports: (u16, u16),
    seq_ack: (u32, u32),
    flags: u8,
) -> Vec<u8> {
    let data: &[u8] = if flags & TCP_ACK != 0 {
        b"GET / HTTP/1.0\r\n\r\n"
    } else {
        b""
    };
    tcp_segment(src, dst, ports, seq_ack, flags, data)
}

/// RFC 793 segment (data offset 5) carrying `data`, with its checksum over the pseudo-header.
pub fn tcp_segment(
    src: [u8; 4],
    dst: [u8; 4],
    ports: (u16, u16),
    seq_ack: (u32, u32),
    flags: u8,
    data: &[u8],
) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&ports.0.to_be_bytes());
    s.extend_from_slice(&ports.1.to_be_bytes());
    s.extend_from_slice(&seq_ack.0.to_be_bytes());
    s.extend_from_slice(&seq_ack.1.to_be_bytes());
    s.extend_from_slice(&[5 << 4, flags]);
    s.extend_from_slice(&64240u16.to_be_bytes()); // window
    s.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    s.extend_from_slice(data);
    let c = l4_checksum(src, dst, IPPROTO_TCP, &s);
    s[16..18].copy_from_slice(&c.to_be_bytes());
    s
}

/// RFC 768 datagram; without `checksum` the field is 0 ("no checksum"), and a computed 0 is
/// sent as 0xffff.
pub fn udp(
    src: [u8; 4],
    dst: [u8; 4],
    ports: (u16, u16),
    payload: &[u8],
    checksum: bool,
) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&ports.0.to_be_bytes());
    s.extend_from_slice(&ports.1.to_be_bytes());
    s.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    s.extend_from_slice(&[0, 0]);
    s.extend_from_slice(payload);
    if checksum {
        let c = match l4_checksum(src, dst, IPPROTO_UDP, &s) {
            0 => 0xffff,
            c => c,
        };
        s[6..8].copy_from_slice(&c.to_be_bytes());
    }
    s
}

/// RFC 792 echo or echo reply with its checksum over the whole message.
pub fn icmp_echo(ty: u8, id: u16, seq: u16) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend((0u8..32).map(|i| b'a' + i % 23));
    let c = internet_checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An Ethernet II frame.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A frame as the uplink sends it (egress) or receives it (ingress).
pub fn uplink_frame(egress: bool, ip: Ip, l4: &[u8]) -> Vec<u8> {
    let (dst, src) = if egress {
        (GATEWAY_MAC, UPLINK_MAC)
    } else {
        (UPLINK_MAC, GATEWAY_MAC)
    };
    ethernet(dst, src, ETH_P_IP, &ipv4(ip, l4))
}

/// A TCP frame on the uplink: a SYN (seq 0x1000_0000), the SYN-ACK answering it, or a segment
/// of data of the established flow (see [`tcp`]).
pub fn tcp_frame(egress: bool, src: ([u8; 4], u16), dst: ([u8; 4], u16), flags: u8) -> Vec<u8> {
    let seq_ack = if flags & TCP_SYN != 0 && flags & TCP_ACK != 0 {
        (0x5000_0000, 0x1000_0001)
    } else if flags & TCP_SYN != 0 {
        (0x1000_0000, 0)
    } else {
        (0x1000_0001, 0x5000_0001)
    };
    let seg = tcp(src.0, dst.0, (src.1, dst.1), seq_ack, flags);
    uplink_frame(egress, Ip::new(src.0, dst.0, IPPROTO_TCP), &seg)
}

// Readers of frames with a 14-byte Ethernet and a 20-byte IPv4 header.

/// The big-endian 16-bit word at `off`.
pub fn be16(f: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([f[off], f[off + 1]])
}
/// The big-endian 32-bit word at `off`.
pub fn be32(f: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(f[off..off + 4].try_into().unwrap())
}
pub fn ip4(f: &[u8], off: usize) -> [u8; 4] {
    f[off..off + 4].try_into().unwrap()
}
pub fn src_ip(f: &[u8]) -> [u8; 4] {
    ip4(f, 26)
}
pub fn dst_ip(f: &[u8]) -> [u8; 4] {
    ip4(f, 30)
}
pub fn sport(f: &[u8]) -> u16 {
    be16(f, 34)
}
pub fn dport(f: &[u8]) -> u16 {
    be16(f, 36)
}
pub fn icmp_id(f: &[u8]) -> u16 {
    be16(f, 38)
}

/// Recomputes the IPv4 header checksum (field zeroed) and compares it with the one in `f`.
pub fn assert_ip_checksum(f: &[u8]) {
    let mut h = f[14..34].to_vec();
    h[10..12].fill(0);
    assert_eq!(be16(f, 24), internet_checksum(&h), "IPv4 header checksum");
}

/// [`assert_ip_checksum`] and [`assert_l4_checksum`], except for a UDP checksum of 0: "no
/// checksum" (RFC 768).
pub fn assert_checksums(f: &[u8]) {
    assert_ip_checksum(f);
    if !(f[23] == IPPROTO_UDP && be16(f, 40) == 0) {
        assert_l4_checksum(f);
    }
}

/// Recomputes the L4 checksum (TCP, UDP over the pseudo-header; ICMP over the message) and
/// compares it with the one in `f`.
pub fn assert_l4_checksum(f: &[u8]) {
    let proto = f[23];
    let total = usize::from(be16(f, 16));
    let mut seg = f[34..14 + total].to_vec();
    let off = match proto {
        IPPROTO_TCP => 16,
        IPPROTO_UDP => 6,
        IPPROTO_ICMP => 2,
        p => panic!("no L4 checksum for protocol {p}"),
    };
    let got = be16(&seg, off);
    seg[off..off + 2].fill(0);
    let want = match proto {
        IPPROTO_ICMP => internet_checksum(&seg),
        IPPROTO_UDP => match l4_checksum(src_ip(f), dst_ip(f), proto, &seg) {
            0 => 0xffff,
            c => c,
        },
        _ => l4_checksum(src_ip(f), dst_ip(f), proto, &seg),
    };
    assert_eq!(got, want, "L4 checksum of protocol {proto}");
}
