//! `SL_SOCK_V1`: the sockhash of accelerated same-node TCP sockets, `SL_SOCKJN_V1`: the
//! connections whose opening end joined it and whose accepting end has not decided yet, and
//! `SL_PODNS_V1`: the network namespaces of this node's pods (by netns cookie) with their
//! acceleration flags.
//!
//! Both programs read a socket's addresses through [`SockEnds::from_ctx`], the one place that
//! knows the families: an AF_INET socket, and an AF_INET6 socket whose two addresses are
//! IPv4-mapped (`::ffff:a.b.c.d`: an IPv4 connection accepted by, or made from, a socket of a
//! server or client bound to `[::]`) are the same IPv4 connection and get the same key; any
//! other IPv6 socket gets none (pods are IPv4-only), on both ends alike.
//!
//! The sockops program stores each established socket under the key of the socket itself
//! ([`SockEnds::key`]); the sk_msg program looks up the socket at the other end of the
//! connection ([`SockEnds::peer_key`]). Both go through [`SockKey::new`], so the two
//! programs cannot build keys that differ. Addresses of two pods are unique on the node; a
//! loopback connection is only unique within its namespace, so its key carries the netns
//! cookie (0 for pod-to-pod keys).

pub const MAP_NAME: &str = "SL_SOCK_V1";
pub const MAX_ENTRIES: u32 = 65536;
pub const PODNS_MAP_NAME: &str = "SL_PODNS_V1";
pub const JOIN_MAP_NAME: &str = "SL_SOCKJN_V1";
/// Handshakes between the opening end's and the accepting end's establishment: microseconds
/// each, so this only has to hold the ones whose accepting end never decides.
pub const JOIN_MAX_ENTRIES: u32 = 16384;
pub const PODNS_MAX_ENTRIES: u32 = 16384;

/// `SL_PODNS_V1` value flag: do not accelerate sockets of this pod
/// (annotation `sluice.dev/sockmap: "off"`).
pub const NS_FLAG_NO_SOCKMAP: u32 = 1 << 0;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub family: u8,
    pub _pad: [u8; 3],
    /// Host order.
    pub local_port: u32,
    pub remote_port: u32,
    pub _pad2: u32,
    /// Network order; IPv4 in the first four bytes.
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    /// Network namespace cookie for loopback connections, 0 otherwise.
    pub netns: u64,
}
const _: () = assert!(core::mem::size_of::<SockKey>() == 56);

/// `SL_SOCKJN_V1` value: the opening end of a connection joined the sockhash. Keyed by the
/// opening socket's own [`SockKey`]; written by its sockops at `ACTIVE_ESTABLISHED` and taken
/// (deleted) by the accepting end's sockops at `PASSIVE_ESTABLISHED`, which joins only if it
/// finds the entry and the sequence numbers show it is this very handshake's. Lifetime: one
/// handshake; an entry whose accepting end never runs the sockops program (a process outside
/// the cgroup, a handshake that never completes) stays until a later opener with the same key
/// overwrites or clears it, or the LRU evicts it, and cannot match another connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Joined {
    /// The opener's `snd_nxt` at establishment (its ISN + 1), the acceptor's `rcv_nxt`.
    pub seq: u32,
    /// The opener's `rcv_nxt` at establishment (the acceptor's ISN + 1), its `snd_nxt`.
    pub ack: u32,
}
const _: () = assert!(core::mem::size_of::<Joined>() == 8);

/// Whether an IPv4 address (network order) is in 127.0.0.0/8.
#[inline(always)]
pub const fn is_loopback4(addr: [u8; 4]) -> bool {
    addr[0] == 127
}

/// The `family` values of `bpf_sock_ops` and `sk_msg_md`.
pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;

/// The IPv4 address inside an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, RFC 4291 2.5.5.2),
/// given as the kernel's four 32-bit words in network order (`local_ip6`, `remote_ip6`).
#[inline(always)]
pub const fn v4_mapped(ip6: [u32; 4]) -> Option<[u8; 4]> {
    if ip6[0] == 0 && ip6[1] == 0 && ip6[2] == 0xffffu32.to_be() {
        Some(ip6[3].to_ne_bytes())
    } else {
        None
    }
}

/// The two ends of a TCP socket as acceleration sees them: IPv4 addresses (network order)
/// and ports (host order), from `local` towards `remote`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockEnds {
    pub local: [u8; 4],
    pub local_port: u16,
    pub remote: [u8; 4],
    pub remote_port: u16,
}

impl SockEnds {
    /// A socket's ends from the context fields of `bpf_sock_ops` or `sk_msg_md`, as the
    /// kernel exposes them (addresses in network order, ports as in [`ports_from_ctx`]):
    /// an AF_INET socket, or an AF_INET6 socket whose two addresses are IPv4-mapped, which
    /// yields exactly what its AF_INET twin would. `None` for any other socket.
    #[inline(always)]
    pub const fn from_ctx(
        family: u32,
        (local_ip4, local_ip6, local_port): (u32, [u32; 4], u32),
        (remote_ip4, remote_ip6, remote_port): (u32, [u32; 4], u32),
    ) -> Option<Self> {
        let (local, remote) = match family {
            AF_INET => (local_ip4.to_ne_bytes(), remote_ip4.to_ne_bytes()),
            AF_INET6 => match (v4_mapped(local_ip6), v4_mapped(remote_ip6)) {
                (Some(l), Some(r)) => (l, r),
                _ => return None,
            },
            _ => return None,
        };
        let (local_port, remote_port) = ports_from_ctx(local_port, remote_port);
        Some(Self {
            local,
            local_port,
            remote,
            remote_port,
        })
    }

    /// Whether both ends are loopback addresses (a connection inside one namespace).
    #[inline(always)]
    pub const fn loopback(&self) -> bool {
        is_loopback4(self.local) && is_loopback4(self.remote)
    }

    /// The key under which the sockops program stores this socket.
    #[inline(always)]
    pub const fn key(&self, netns: u64) -> SockKey {
        SockKey::new(
            self.local,
            self.local_port,
            self.remote,
            self.remote_port,
            netns,
        )
    }

    /// The key of the socket at the other end of the connection (sk_msg's redirect target,
    /// and the opener's entry the accepting end looks for).
    #[inline(always)]
    pub const fn peer_key(&self, netns: u64) -> SockKey {
        SockKey::new(
            self.remote,
            self.remote_port,
            self.local,
            self.local_port,
            netns,
        )
    }
}

impl SockKey {
    /// The one constructor: a socket seen from `local` towards `remote` (ports in host order).
    #[inline(always)]
    pub const fn new(
        local: [u8; 4],
        local_port: u16,
        remote: [u8; 4],
        remote_port: u16,
        netns: u64,
    ) -> Self {
        let l = crate::addr::IpKey::v4(local).addr;
        let r = crate::addr::IpKey::v4(remote).addr;
        Self {
            family: crate::addr::FAMILY_V4,
            _pad: [0; 3],
            local_port: local_port as u32,
            remote_port: remote_port as u32,
            _pad2: 0,
            local_addr: l,
            remote_addr: r,
            netns: if is_loopback4(local) && is_loopback4(remote) {
                netns
            } else {
                0
            },
        }
    }
}

/// Ports as the kernel exposes them in `bpf_sock_ops` and `sk_msg_md`: `local_port` in host
/// order; `remote_port` in network order as a 32-bit value (the kernel loads the 16-bit
/// `skc_dport` and, on little-endian, shifts it into the upper half), i.e. `htonl(port)`.
/// Returns both in host order. Used by both programs.
#[inline(always)]
pub const fn ports_from_ctx(local_port: u32, remote_port: u32) -> (u16, u16) {
    (local_port as u16, u32::from_be(remote_port) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 socket's ends as literal values.
    fn ends(local: [u8; 4], local_port: u16, remote: [u8; 4], remote_port: u16) -> SockEnds {
        SockEnds {
            local,
            local_port,
            remote,
            remote_port,
        }
    }

    /// Test that the key the sk_msg program computes on one end of a connection is exactly the
    /// key the sockops program stored for the other end (pod to pod and loopback).
    #[test]
    fn sk_msg_peer_key_matches_sockops_key() {
        let a = [10, 244, 1, 5];
        let b = [10, 244, 1, 9];
        // Client a:40000 -> server b:8080. Stored by sockops on the server's socket:
        let server = ends(b, 8080, a, 40000).key(77);
        // sk_msg on the client's socket looks for its peer:
        assert_eq!(ends(a, 40000, b, 8080).peer_key(77), server);
        let client = ends(a, 40000, b, 8080).key(77);
        assert_eq!(ends(b, 8080, a, 40000).peer_key(77), client);
        assert_ne!(client, server);
        // Pod-to-pod keys ignore the netns cookie (the two ends live in different namespaces).
        assert_eq!(server.netns, 0);
        // Loopback keys keep it: the same ports in two pods are two different connections.
        let lo = [127, 0, 0, 1];
        let in_pod1 = ends(lo, 8080, lo, 40000).key(1);
        let in_pod2 = ends(lo, 8080, lo, 40000).key(2);
        assert_ne!(in_pod1, in_pod2);
        assert_eq!(ends(lo, 40000, lo, 8080).peer_key(1), in_pod1);
    }

    /// The kernel's `local_ip6`/`remote_ip6` words (network order) of an IPv6 address.
    fn words(addr: core::net::Ipv6Addr) -> [u32; 4] {
        let o = addr.octets();
        core::array::from_fn(|i| {
            u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
        })
    }

    /// The kernel's `local_ip4`/`remote_ip4` word (network order) of an IPv4 address.
    fn word(addr: [u8; 4]) -> u32 {
        u32::from_ne_bytes(addr)
    }

    /// Test that an AF_INET6 socket whose addresses are IPv4-mapped (RFC 4291 2.5.5.2:
    /// `::ffff:a.b.c.d`, what a socket bound to `[::]` sees of an IPv4 peer) gets the same
    /// ends and the same keys as the AF_INET socket of the same connection, pod to pod and on
    /// loopback, and that it is the AF_INET twin's peer as well.
    #[test]
    fn v4_mapped_socket_has_the_v4_key() {
        let rport = 8080u32.to_be();
        for (local, remote) in [
            ([10, 244, 1, 5], [10, 244, 1, 9]),
            ([127, 0, 0, 1], [127, 0, 0, 1]),
            ([127, 0, 0, 1], [127, 0, 0, 7]),
        ] {
            let mapped = |a: [u8; 4]| words(core::net::Ipv4Addr::from(a).to_ipv6_mapped());
            let v4 = SockEnds::from_ctx(
                AF_INET,
                (word(local), [0; 4], 40000),
                (word(remote), [0; 4], rport),
            )
            .expect("an AF_INET socket has ends");
            assert_eq!(v4, ends(local, 40000, remote, 8080));
            // The kernel fills `local_ip4`/`remote_ip4` of a mapped socket too; only the
            // IPv6 words decide.
            for ip4 in [(0, 0), (word(local), word(remote))] {
                let v6 = SockEnds::from_ctx(
                    AF_INET6,
                    (ip4.0, mapped(local), 40000),
                    (ip4.1, mapped(remote), rport),
                )
                .expect("a v4-mapped AF_INET6 socket has ends");
                assert_eq!(v6, v4);
                assert_eq!(v6.key(3), v4.key(3));
                assert_eq!(v6.peer_key(3), v4.peer_key(3));
            }
            // The other end of the connection, AF_INET, finds the mapped socket as its peer.
            let other = SockEnds::from_ctx(
                AF_INET,
                (word(remote), [0; 4], 8080),
                (word(local), [0; 4], 40000u32.to_be()),
            )
            .expect("ends");
            assert_eq!(other.peer_key(3), v4.key(3));
        }
    }

    /// Test that IPv6 sockets other than IPv4-mapped ones get no key on either end: `::1`
    /// loopback, a global address, one mapped end against an unmapped one, and an IPv4-
    /// compatible address (`::a.b.c.d`, deprecated by RFC 4291 2.5.5.1, not a mapped one).
    #[test]
    fn pure_ipv6_sockets_have_no_key() {
        let parse = |s: &str| words(s.parse().expect("an IPv6 address"));
        let cases = [
            ("::1", "::1"),
            ("fd00::5", "fd00::9"),
            ("::ffff:10.244.1.5", "fd00::9"),
            ("fd00::5", "::ffff:10.244.1.9"),
            ("::10.244.1.5", "::10.244.1.9"),
            ("::ffff:0:10.244.1.5", "::ffff:0:10.244.1.9"),
        ];
        for (l, r) in cases {
            for (l, r) in [(l, r), (r, l)] {
                let got = SockEnds::from_ctx(
                    AF_INET6,
                    (0, parse(l), 40000),
                    (0, parse(r), 8080u32.to_be()),
                );
                assert_eq!(got, None, "{l} -> {r}");
            }
        }
        assert_eq!(SockEnds::from_ctx(1, (1, [0; 4], 1), (1, [0; 4], 1)), None);
    }

    /// Test that ports are read as the kernel stores them: local in host order, remote as
    /// the network-order 32-bit value `htonl(port)`.
    #[test]
    fn ports_from_kernel_fields() {
        // What the kernel's ctx rewrite produces on little-endian: the raw big-endian 16-bit
        // port loaded into a register and shifted left by 16.
        let raw_be16 = u16::from_ne_bytes(8080u16.to_be_bytes()) as u32;
        let remote_raw = if cfg!(target_endian = "little") {
            raw_be16 << 16
        } else {
            raw_be16
        };
        assert_eq!(remote_raw, 8080u32.to_be());
        assert_eq!(ports_from_ctx(40000, remote_raw), (40000, 8080));
    }
}
