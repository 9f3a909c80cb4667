//! `SL_SNAT_V1` and `SL_RSNAT_V1`: masquerade state. The egress map binds a pod's flow to the
//! node address and port it was given; the reverse map binds the reply tuple back to the pod.
//! Both are LRU maps so an idle flow ages out instead of filling the table.
//!
//! For ICMP echo the identifier stands in for the ports: egress keys carry it as `sport`
//! (dport 0), reply keys as `dport` (sport 0).

pub const MAP_NAME: &str = "SL_SNAT_V1";
pub const REV_MAP_NAME: &str = "SL_RSNAT_V1";
pub const MAX_ENTRIES: u32 = 65536;

/// Default masquerade port range (inclusive): above Linux's default ephemeral range
/// (32768–60999), so translated flows never take a port a node socket may use.
pub const DEFAULT_PORT_MIN: u16 = 61000;
pub const DEFAULT_PORT_MAX: u16 = 65535;

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

/// The address and port a tuple is translated to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    /// Network order.
    pub addr: [u8; 16],
    /// Network order.
    pub port: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<Binding>() == 20);

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
