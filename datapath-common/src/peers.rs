//! `SL_PEERS_V1`: the pod CIDRs of the cluster's other nodes, an LPM trie written by the agent
//! (from `daemon::nodes::peers`) and read by the TC programs: a destination in a peer's pod
//! CIDR is sent to that node (VXLAN to its address in tunnel mode, routed via it in native
//! mode) and is never masqueraded. Each peer's own address is an entry too (a /32 to
//! itself): a pod's traffic to another node keeps the pod's address and the same path.
//!
//! Key: the LPM header's prefix length, then an [`IpKey`] (family tag and padding, then the
//! address), so a CIDR of prefix `p` has prefix length `32 + p` ([`KEY_PREFIX_BIAS`]) and an
//! IPv6 CIDR fits the same layout. No lifetime: entries live as long as the Node object.

use crate::addr::IpKey;

pub const MAP_NAME: &str = "SL_PEERS_V1";
/// Pod CIDRs of all other nodes (a 5,000-node cluster with dual-stack fits).
pub const MAX_ENTRIES: u32 = 16384;
/// Bits of the key before the address: the family byte and its padding.
pub const KEY_PREFIX_BIAS: u32 = 32;

/// The fixed VXLAN network identifier of the tunnel (one overlay per cluster).
pub const TUNNEL_VNI: u32 = 1;
/// The MAC address of the tunnel device of the node at `node` (IPv4, network order):
/// locally administered, `02:53:` and the address. Every node knows every peer's: a frame
/// sent into the tunnel carries the receiving device's own address as its inner destination
/// (so the kernel takes it as `PACKET_HOST`) and the sending device's as its source (the
/// receiver drops a frame from its own address as a loop).
pub const fn tunnel_mac(node: [u8; 4]) -> [u8; 6] {
    [0x02, 0x53, node[0], node[1], node[2], node[3]]
}
/// The VXLAN overhead the tunnel MTU leaves for: outer IPv4 (20) + UDP (8) + VXLAN (8) +
/// inner Ethernet (14).
pub const TUNNEL_OVERHEAD: u32 = 50;

/// Routing mode in `NodeConfig::routing`: no route to other nodes' pods (one node).
pub const ROUTING_NONE: u8 = 0;
/// VXLAN through the tunnel device (`NodeConfig::tunnel_ifindex`).
pub const ROUTING_TUNNEL: u8 = 1;
/// Straight out of the uplink, the peer's address as the next hop.
pub const ROUTING_NATIVE: u8 = 2;

/// The LPM trie key data (the prefix length is the trie's own header).
pub type Key = IpKey;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Value {
    /// The peer node's address (its `InternalIP`): the tunnel's remote end or the next hop.
    pub node: IpKey,
    /// Reserved (zero).
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<Value>() == 24);

impl Value {
    /// The entry of a peer at IPv4 `node` (network order).
    pub const fn v4(node: [u8; 4]) -> Self {
        Self {
            node: IpKey::v4(node),
            flags: 0,
        }
    }
}

/// The trie prefix length of an IPv4 CIDR of prefix `prefix`.
pub const fn prefix_len_v4(prefix: u8) -> u32 {
    KEY_PREFIX_BIAS + prefix as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that a /24's trie key covers the family tag and the 24 address bits.
    #[test]
    fn prefix_covers_family_and_address() {
        assert_eq!(prefix_len_v4(24), 56);
        assert_eq!(prefix_len_v4(32), 64);
        assert_eq!(Value::v4([192, 0, 2, 3]).node.as_v4(), Some([192, 0, 2, 3]));
        assert_eq!(tunnel_mac([192, 0, 2, 3]), [2, 0x53, 192, 0, 2, 3]);
    }
}
