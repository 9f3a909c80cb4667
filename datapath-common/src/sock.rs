//! `SL_SOCK_V1`: the sockhash of accelerated same-node TCP sockets, and `SL_PODNS_V1`: the
//! network namespaces of this node's pods (by netns cookie) with their acceleration flags.
//!
//! The sockops program stores each established socket under the key of the socket itself
//! ([`SockKey::of_socket`]); the sk_msg program looks up the socket at the other end of the
//! connection ([`SockKey::peer_of_socket`]). Both go through [`SockKey::new`], so the two
//! programs cannot build keys that differ. Addresses of two pods are unique on the node; a
//! loopback connection is only unique within its namespace, so its key carries the netns
//! cookie (0 for pod-to-pod keys).

pub const MAP_NAME: &str = "SL_SOCK_V1";
pub const MAX_ENTRIES: u32 = 65536;
pub const PODNS_MAP_NAME: &str = "SL_PODNS_V1";
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

/// Whether an IPv4 address (network order) is in 127.0.0.0/8.
#[inline(always)]
pub const fn is_loopback4(addr: [u8; 4]) -> bool {
    addr[0] == 127
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

    /// The key under which the sockops program stores a socket.
    #[inline(always)]
    pub const fn of_socket(
        local: [u8; 4],
        local_port: u16,
        remote: [u8; 4],
        remote_port: u16,
        netns: u64,
    ) -> Self {
        Self::new(local, local_port, remote, remote_port, netns)
    }

    /// The key of the socket at the other end of a socket's connection, used by sk_msg.
    #[inline(always)]
    pub const fn peer_of_socket(
        local: [u8; 4],
        local_port: u16,
        remote: [u8; 4],
        remote_port: u16,
        netns: u64,
    ) -> Self {
        Self::new(remote, remote_port, local, local_port, netns)
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

    /// Test that the key the sk_msg program computes on one end of a connection is exactly the
    /// key the sockops program stored for the other end (pod to pod and loopback).
    #[test]
    fn sk_msg_peer_key_matches_sockops_key() {
        let a = [10, 244, 1, 5];
        let b = [10, 244, 1, 9];
        // Client a:40000 -> server b:8080. Stored by sockops on the server's socket:
        let server = SockKey::of_socket(b, 8080, a, 40000, 77);
        // sk_msg on the client's socket looks for its peer:
        assert_eq!(SockKey::peer_of_socket(a, 40000, b, 8080, 77), server);
        let client = SockKey::of_socket(a, 40000, b, 8080, 77);
        assert_eq!(SockKey::peer_of_socket(b, 8080, a, 40000, 77), client);
        assert_ne!(client, server);
        // Pod-to-pod keys ignore the netns cookie (the two ends live in different namespaces).
        assert_eq!(server.netns, 0);
        // Loopback keys keep it: the same ports in two pods are two different connections.
        let lo = [127, 0, 0, 1];
        let in_pod1 = SockKey::of_socket(lo, 8080, lo, 40000, 1);
        let in_pod2 = SockKey::of_socket(lo, 8080, lo, 40000, 2);
        assert_ne!(in_pod1, in_pod2);
        assert_eq!(SockKey::peer_of_socket(lo, 40000, lo, 8080, 1), in_pod1);
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
