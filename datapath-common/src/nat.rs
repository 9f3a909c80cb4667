//! `SL_SNAT_V2` and `SL_RSNAT_V2`: masquerade state. The egress map binds a pod's flow to the
//! node address and port it was given; the reverse map binds the reply tuple back to the pod.
//!
//! Lifetime (see [`crate::flow`]): each entry records its direction's packets (`sl_up_egress`
//! the pod's, `sl_up_ingress` the replies); the agent's collector deletes both entries of a
//! flow together once it is over: 10 s after a TCP close (FIN both ways or RST), UDP and ICMP
//! after 30 s idle (UDP 120 s once answered), TCP after 6 h idle. A pod's SYN on a tuple
//! whose connection is closed starts it afresh. The maps are LRU only as a safety net.
//!
//! For ICMP echo the identifier stands in for the ports: egress keys carry it as `sport`
//! (dport 0), reply keys as `dport` (sport 0).

pub const MAP_NAME: &str = "SL_SNAT_V2";
pub const REV_MAP_NAME: &str = "SL_RSNAT_V2";
pub const MAX_ENTRIES: u32 = 65536;

/// The lowest port masquerade may use: ports below are privileged (some servers trust them).
pub const PORT_FLOOR: u16 = 1024;
/// Kubernetes' default NodePort range (inclusive): never a masquerade port, since a reply to
/// node:port from outside would be taken for a NodePort connection.
pub const NODEPORT_MIN: u16 = 30000;
pub const NODEPORT_MAX: u16 = 32767;

/// A flow as seen in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub family: u8,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP).
    pub proto: u8,
    pub _pad: [u8; 2],
    /// Network order.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Network order.
    pub sport: u16,
    pub dport: u16,
}
const _: () = assert!(core::mem::size_of::<Tuple>() == 40);

/// The address and port a tuple is translated to, and the life of its direction of the flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    /// Network order.
    pub addr: [u8; 16],
    /// Network order.
    pub port: u16,
    pub _pad: [u8; 6],
    pub life: crate::flow::Life,
}
const _: () = assert!(core::mem::size_of::<Binding>() == 40);

impl Binding {
    /// Whether this binding points at `addr`/`port` (the other entry of its flow).
    #[inline(always)]
    pub fn points_at(&self, addr: &[u8; 16], port: u16) -> bool {
        self.addr == *addr && self.port == port
    }
}

impl Tuple {
    /// One constructor for IPv4 tuples, used by both NAT directions.
    #[inline(always)]
    pub const fn v4(proto: u8, saddr: [u8; 4], daddr: [u8; 4], sport: u16, dport: u16) -> Self {
        let s = crate::addr::IpKey::v4(saddr).addr;
        let d = crate::addr::IpKey::v4(daddr).addr;
        Self {
            family: crate::addr::FAMILY_V4,
            proto,
            _pad: [0; 2],
            saddr: s,
            daddr: d,
            sport,
            dport,
        }
    }
}

impl Tuple {
    /// The reply tuple of a masqueraded flow `self` (egress key) translated to `b`.
    #[inline(always)]
    pub const fn masq_reply(&self, b: &Binding) -> Self {
        Self {
            family: self.family,
            proto: self.proto,
            _pad: [0; 2],
            saddr: self.daddr,
            daddr: b.addr,
            sport: self.dport,
            dport: b.port,
        }
    }

    /// The egress key of the masqueraded flow whose reply tuple is `self`, bound back to `b`.
    #[inline(always)]
    pub const fn masq_origin(&self, b: &Binding) -> Self {
        Self {
            family: self.family,
            proto: self.proto,
            _pad: [0; 2],
            saddr: b.addr,
            daddr: self.saddr,
            sport: b.port,
            dport: self.sport,
        }
    }

    /// The same flow seen the other way (addresses and ports swapped).
    #[inline(always)]
    pub const fn reversed(&self) -> Self {
        Self {
            family: self.family,
            proto: self.proto,
            _pad: [0; 2],
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that the two masquerade entries of one flow name each other (TCP, and ICMP echo
    /// where the identifier is the egress `sport` and the reply `dport`).
    #[test]
    fn masquerade_entries_pair_up() {
        let node = crate::addr::IpKey::v4([192, 0, 2, 2]).addr;
        let pod = crate::addr::IpKey::v4([10, 244, 1, 5]).addr;
        for (proto, sport, dport) in [(6u8, 40000u16, 443u16), (1, 77, 0)] {
            let orig = Tuple::v4(proto, [10, 244, 1, 5], [203, 0, 113, 10], sport, dport);
            let fwd = Binding {
                addr: node,
                port: 61001,
                _pad: [0; 6],
                life: crate::flow::Life::default(),
            };
            let reply = orig.masq_reply(&fwd);
            assert_eq!(reply.saddr, orig.daddr);
            assert_eq!((reply.sport, reply.dport), (dport, 61001));
            let back = Binding {
                addr: pod,
                port: sport,
                ..fwd
            };
            assert_eq!(reply.masq_origin(&back), orig);
        }
    }
}
