//! `SL_CFG_V2`: the node's datapath configuration, one entry, written by the agent. (`_V1`
//! had no routing fields; an agent removes its pin after loading, see `flow::RETIRED_MAPS`.)

use crate::addr::IpKey;

pub const MAP_NAME: &str = "SL_CFG_V2";
pub const MAX_ENTRIES: u32 = 1;

/// Masquerade traffic from pods to addresses outside the cluster.
pub const FLAG_MASQUERADE: u32 = 1 << 0;
/// Services are programmed: `sl_from_pod` looks up replies to translate back (skipped, with
/// its map lookup, on a node without services).
pub const FLAG_SERVICES: u32 = 1 << 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// The node's IPv4 pod CIDR (network order) and its prefix length.
    pub pod_cidr4: [u8; 4],
    pub pod_prefix4: u8,
    pub _pad0: [u8; 3],
    /// The node's uplink address, the source of masqueraded traffic (network order).
    pub node_ip4: [u8; 4],
    /// The uplink's ifindex (in the node's network namespace).
    pub uplink_ifindex: u32,
    /// Source ports for masquerade, host order, inclusive. Kept outside the kernel's
    /// ephemeral range so they never collide with the node's own sockets.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// `FLAG_*`.
    pub flags: u32,
    /// Room for the IPv6 pod CIDR and node address (dual-stack).
    pub pod_cidr6: IpKey,
    pub pod_prefix6: u8,
    pub _pad1: [u8; 3],
    pub node_ip6: IpKey,
    /// How pod traffic reaches other nodes' pods: `peers::ROUTING_*`.
    pub routing: u8,
    pub _pad2: [u8; 3],
    /// The tunnel device's ifindex (tunnel mode).
    pub tunnel_ifindex: u32,
    /// The tunnel device's MTU: a bigger packet is left to the stack, which answers
    /// "fragmentation needed" (or fragments it when DF is clear).
    pub tunnel_mtu: u32,
}
const _: () = assert!(core::mem::size_of::<NodeConfig>() == 80);

impl NodeConfig {
    pub const fn zeroed() -> Self {
        Self {
            pod_cidr4: [0; 4],
            pod_prefix4: 0,
            _pad0: [0; 3],
            node_ip4: [0; 4],
            uplink_ifindex: 0,
            snat_port_min: 0,
            snat_port_max: 0,
            flags: 0,
            pod_cidr6: IpKey {
                family: 0,
                _pad: [0; 3],
                addr: [0; 16],
            },
            pod_prefix6: 0,
            _pad1: [0; 3],
            node_ip6: IpKey {
                family: 0,
                _pad: [0; 3],
                addr: [0; 16],
            },
            routing: 0,
            _pad2: [0; 3],
            tunnel_ifindex: 0,
            tunnel_mtu: 0,
        }
    }

    /// Whether `ip` (network order) lies in the node's IPv4 pod CIDR.
    #[inline(always)]
    pub fn in_pod_cidr4(&self, ip: [u8; 4]) -> bool {
        if self.pod_prefix4 == 0 || self.pod_prefix4 > 32 {
            return false;
        }
        let mask = u32::MAX << (32 - self.pod_prefix4 as u32);
        (u32::from_be_bytes(ip) & mask) == (u32::from_be_bytes(self.pod_cidr4) & mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that the pod-CIDR check follows prefix arithmetic at the edges.
    #[test]
    fn pod_cidr_membership() {
        let mut c = NodeConfig::zeroed();
        assert!(!c.in_pod_cidr4([10, 0, 0, 1]), "unset CIDR matches nothing");
        c.pod_cidr4 = [10, 244, 1, 0];
        c.pod_prefix4 = 24;
        assert!(c.in_pod_cidr4([10, 244, 1, 0]));
        assert!(c.in_pod_cidr4([10, 244, 1, 255]));
        assert!(!c.in_pod_cidr4([10, 244, 2, 1]));
        c.pod_prefix4 = 32;
        assert!(c.in_pod_cidr4([10, 244, 1, 0]));
        assert!(!c.in_pod_cidr4([10, 244, 1, 1]));
    }
}
