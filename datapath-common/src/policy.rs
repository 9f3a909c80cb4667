//! NetworkPolicy enforcement: the rule trie, the connection tracker and the policy revision,
//! written by the agent from the policies it compiles and read by the TC programs.
//!
//! **Rules** (`SL_POL_V1`, an LPM trie): for one local pod (the *subject*, by address), one
//! direction and one IP protocol, the trie maps peer address prefixes to the destination port
//! ranges allowed. Every key fixes the subject, direction and protocol fully and leaves the
//! peer address as the variable-length part, so a lookup is "the most specific peer prefix
//! holding this address". The agent makes each entry hold the union of the ranges of every
//! entry containing it, so the most specific match alone is the answer; an `except` becomes
//! a more specific entry with fewer ranges. Protocol 0 entries hold rules that name no port
//! (all protocols, all ports): a packet is checked against its protocol and against 0.
//!
//! **Isolation** is two endpoint flags (`endpoint::FLAG_ISOLATED_*`): a pod no policy selects
//! in a direction is not checked at all in that direction.
//!
//! **Connection tracking** (`SL_CT_V2`): every TCP connection is recorded at its SYN
//! (so the direction it was opened in is known), and every connection judged against rules is
//! recorded with the verdict; packets of either direction that find it follow that verdict
//! without a rule lookup while its `revision` is the current one (`SL_POLREV_V1`). The agent
//! bumps the revision on every policy change, so the next packet of each tracked connection is
//! judged again, in its opening direction, and a connection that became denied stops.
//! Lifetime (see [`crate::flow`]): a tracked entry records both directions' packets in its
//! [`CtEntry::life`] (the reply's bits shifted); the agent's collector deletes it 10 s after a
//! TCP close (FIN both ways or RST), UDP after 30 s idle (120 s once answered), TCP after
//! 6 h idle. The record of who opened a connection between unisolated pods is written at its
//! SYN and then only at FIN or RST (no per-packet write), so it ends at the close or after the
//! established timeout. A SYN on a closed connection's tuple records a new connection. LRU only
//! as a safety net.

use crate::addr::IpKey;

pub const MAP_NAME: &str = "SL_POL_V1";
pub const CT_MAP_NAME: &str = "SL_CT_V2";
pub const REVISION_MAP_NAME: &str = "SL_POLREV_V1";
/// Isolation per pod before its address is known (`pod_key` of namespace/name → `ISO_*`),
/// written by the agent and read by the CNI plugin at ADD, so a new pod starts isolated.
pub const POD_ISOLATION_MAP_NAME: &str = "SL_PODISO_V1";

pub const MAX_ENTRIES: u32 = 262144;
pub const CT_MAX_ENTRIES: u32 = 262144;
pub const POD_ISOLATION_MAX_ENTRIES: u32 = 65536;
/// Port ranges one rule entry can hold; a subject whose rules need more fails closed.
pub const MAX_RANGES: usize = 16;

/// Traffic into the subject (ingress rules; the peer is the source).
pub const DIR_INGRESS: u8 = 0;
/// Traffic from the subject (egress rules; the peer is the destination).
pub const DIR_EGRESS: u8 = 1;

/// "Any protocol" in a rule key: rules that name no port.
pub const PROTO_ANY: u8 = 0;

/// The variable part of a rule key. The prefix length of a [`RuleKey`] counts bits from the
/// start of this struct: [`fixed_bits`] for subject, direction and protocol, plus the peer's
/// family header and address prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleData {
    pub subject: IpKey,
    pub dir: u8,
    pub proto: u8,
    pub _pad: [u8; 2],
    /// The peer; its `family` and `_pad` are matched fully, its address by the prefix.
    pub peer: IpKey,
}
const _: () = assert!(core::mem::size_of::<RuleData>() == 44);

/// Bits of a rule key that are always matched: subject, direction, protocol, padding and the
/// peer's family header (everything before the peer's address bytes).
pub const fn fixed_bits() -> u32 {
    (20 + 4 + 4) * 8
}

impl RuleData {
    #[inline(always)]
    pub const fn v4(subject: [u8; 4], dir: u8, proto: u8, peer: [u8; 4]) -> Self {
        Self {
            subject: IpKey::v4(subject),
            dir,
            proto,
            _pad: [0; 2],
            peer: IpKey::v4(peer),
        }
    }
}

/// A port range, host order, inclusive.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

/// The destination ports a rule entry allows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleValue {
    /// Ranges in use (`..count`).
    pub count: u32,
    pub ranges: [PortRange; MAX_RANGES],
}
const _: () = assert!(core::mem::size_of::<RuleValue>() == 4 + 4 * MAX_RANGES);

impl RuleValue {
    /// Whether `port` (host order) is in one of the ranges.
    #[inline(always)]
    pub fn allows(&self, port: u16) -> bool {
        let mut i = 0;
        while i < MAX_RANGES {
            if (i as u32) < self.count {
                let r = self.ranges[i];
                if port >= r.lo && port <= r.hi {
                    return true;
                }
            }
            i += 1;
        }
        false
    }
}

/// A tracked connection, keyed by its tuple in the direction it was opened.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtEntry {
    /// The policy revision it was last judged under.
    pub revision: u32,
    /// 0 when allowed, else the drop reason (`metrics::DROP_POLICY_*`) it was denied with:
    /// its packets are dropped until the next revision judges it again.
    pub denied: u32,
    /// Both directions' packets (the reply's `SEEN_*` bits `<< REPLY_SHIFT`).
    pub life: crate::flow::Life,
}
const _: () = assert!(core::mem::size_of::<CtEntry>() == 24);

/// A connection as policy judges it, in the direction it was opened: IPv4 addresses in
/// network order, the destination port in host order, each end's endpoint flags
/// (`endpoint::FLAG_*`, 0 for an address that is not a local pod).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conn {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub proto: u8,
    pub dport: u16,
    pub sflags: u32,
    pub dflags: u32,
}

/// One end of a TCP socket: its IPv4 address (network order), port (host order) and
/// endpoint flags (0 when it is not a local pod).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockEnd {
    pub addr: [u8; 4],
    pub port: u16,
    pub flags: u32,
}

/// The two directions a TCP connection between `local` and `remote` may have been opened in,
/// from `local` first: each the connection tracker's key it is recorded under (ports network
/// order, as the TC programs record a SYN) and the connection [`judge`] is asked about. One
/// function for the sockops program and the agent, which find an accelerated socket's
/// connection from its two ends.
#[inline(always)]
pub fn socket_directions(local: SockEnd, remote: SockEnd) -> [(crate::nat::Tuple, Conn); 2] {
    const TCP: u8 = 6;
    let opened = |s: SockEnd, d: SockEnd| {
        let t = crate::nat::Tuple::v4(TCP, s.addr, d.addr, s.port.to_be(), d.port.to_be());
        let c = Conn {
            saddr: s.addr,
            daddr: d.addr,
            proto: TCP,
            dport: d.port,
            sflags: s.flags,
            dflags: d.flags,
        };
        (t, c)
    };
    [opened(local, remote), opened(remote, local)]
}

/// Whether `subject`'s rules in `dir` allow `peer` on `proto`/`port`: its protocol's entry or
/// the any-protocol entry. `allows(data, port)` is the trie lookup of the full /32 key of
/// `data` and [`RuleValue::allows`] on what it finds (false when nothing matches): the map
/// access of whichever side calls.
#[inline(always)]
pub fn rules_allow(
    subject: [u8; 4],
    dir: u8,
    peer: [u8; 4],
    proto: u8,
    port: u16,
    allows: &impl Fn(&RuleData, u16) -> bool,
) -> bool {
    allows(&RuleData::v4(subject, dir, proto, peer), port)
        // An `except` inside a rule without ports is an entry with no range: denied.
        || allows(&RuleData::v4(subject, dir, PROTO_ANY, peer), port)
}

/// The verdict on connection `c`: `None` when allowed, else the drop reason. The source's
/// egress rules (when it is isolated for egress) AND the destination's ingress rules (when it
/// is isolated for ingress) must allow it. Traffic between a pod and its own node (`node`) is
/// always allowed (the API reference: a pod isolated for ingress still accepts its node's
/// connections; the same for egress keeps probes and the node's services working), and so is
/// a pod reaching itself through its own Service (hairpin source). One function for the TC
/// programs, the sockops program and the agent, so they cannot judge differently.
#[inline(always)]
pub fn judge(c: &Conn, node: [u8; 4], allows: &impl Fn(&RuleData, u16) -> bool) -> Option<u32> {
    if c.sflags & crate::endpoint::FLAG_ISOLATED_EGRESS != 0
        && c.daddr != node
        && !rules_allow(c.saddr, DIR_EGRESS, c.daddr, c.proto, c.dport, allows)
    {
        return Some(crate::metrics::DROP_POLICY_EGRESS);
    }
    if c.dflags & crate::endpoint::FLAG_ISOLATED_INGRESS != 0
        && c.saddr != node
        && c.saddr != crate::svc::HAIRPIN_SOURCE4
        && !rules_allow(c.daddr, DIR_INGRESS, c.saddr, c.proto, c.dport, allows)
    {
        return Some(crate::metrics::DROP_POLICY_INGRESS);
    }
    None
}

/// Whether either end of a connection with these endpoint flags is isolated (its packets and
/// sockets are judged at all).
#[inline(always)]
pub const fn any_isolated(sflags: u32, dflags: u32) -> bool {
    (sflags | dflags)
        & (crate::endpoint::FLAG_ISOLATED_INGRESS | crate::endpoint::FLAG_ISOLATED_EGRESS)
        != 0
}

/// Isolation of a pod, by `pod_key`: `ISO_*` bits.
pub const ISO_INGRESS: u32 = 1 << 0;
pub const ISO_EGRESS: u32 = 1 << 1;

/// The key of a pod in `SL_PODISO_V1`: 64-bit FNV-1a of `namespace/name`. One function for
/// the agent and the CNI plugin.
pub fn pod_key(namespace: &[u8], name: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |b: u8| {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    for b in namespace {
        feed(*b);
    }
    feed(b'/');
    for b in name {
        feed(*b);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that a rule value allows exactly the ports in its ranges, ignoring unused slots.
    #[test]
    fn ranges_allow() {
        let mut v = RuleValue {
            count: 2,
            ranges: [PortRange::default(); MAX_RANGES],
        };
        v.ranges[0] = PortRange { lo: 80, hi: 80 };
        v.ranges[1] = PortRange { lo: 8000, hi: 8080 };
        v.ranges[2] = PortRange { lo: 1, hi: 65535 }; // beyond count: ignored
        assert!(v.allows(80) && v.allows(8000) && v.allows(8080));
        assert!(!v.allows(81) && !v.allows(7999) && !v.allows(8081) && !v.allows(0));
    }

    /// Test that the fixed part of a rule key ends where the peer address starts.
    #[test]
    fn fixed_bits_cover_up_to_peer_address() {
        let d = RuleData::v4([10, 0, 0, 1], DIR_INGRESS, 6, [10, 0, 0, 2]);
        let base = &d as *const RuleData as usize;
        let addr = &d.peer.addr as *const [u8; 16] as usize;
        assert_eq!((addr - base) as u32 * 8, fixed_bits());
    }

    const A: [u8; 4] = [10, 244, 1, 1];
    const B: [u8; 4] = [10, 244, 1, 2];
    const NODE: [u8; 4] = [192, 0, 2, 2];
    const ING: u32 = crate::endpoint::FLAG_ISOLATED_INGRESS;
    const EGR: u32 = crate::endpoint::FLAG_ISOLATED_EGRESS;

    fn value(ranges: &[(u16, u16)]) -> RuleValue {
        let mut v = RuleValue {
            count: ranges.len() as u32,
            ranges: [PortRange::default(); MAX_RANGES],
        };
        for (slot, (lo, hi)) in v.ranges.iter_mut().zip(ranges) {
            *slot = PortRange { lo: *lo, hi: *hi };
        }
        v
    }

    /// A trie of exact /32 entries, enough for `judge`'s full-key lookups.
    fn trie(entries: &[(RuleData, RuleValue)]) -> impl Fn(&RuleData, u16) -> bool + '_ {
        move |d, port| entries.iter().any(|(k, v)| k == d && v.allows(port))
    }

    fn conn(sflags: u32, dflags: u32, dport: u16) -> Conn {
        Conn {
            saddr: A,
            daddr: B,
            proto: 6,
            dport,
            sflags,
            dflags,
        }
    }

    /// Test that a connection needs the source's egress AND the destination's ingress, each
    /// only where that side is isolated, as the NetworkPolicy API reference defines it.
    #[test]
    fn judge_needs_both_isolated_sides() {
        let egress_b80 = (RuleData::v4(A, DIR_EGRESS, 6, B), value(&[(80, 80)]));
        let ingress_a80 = (RuleData::v4(B, DIR_INGRESS, 6, A), value(&[(80, 80)]));
        let none = trie(&[]);
        let both = [egress_b80, ingress_a80];
        let both = trie(&both);
        let only_egress = [egress_b80];
        let only_egress = trie(&only_egress);
        // Nobody isolated: allowed, whatever the rules.
        assert_eq!(judge(&conn(0, 0, 80), NODE, &none), None);
        // Isolated without rules: denied in the isolated direction.
        assert_eq!(
            judge(&conn(EGR, 0, 80), NODE, &none),
            Some(crate::metrics::DROP_POLICY_EGRESS)
        );
        assert_eq!(
            judge(&conn(0, ING, 80), NODE, &none),
            Some(crate::metrics::DROP_POLICY_INGRESS)
        );
        // Ingress isolation of the source and egress isolation of the destination don't apply.
        assert_eq!(judge(&conn(ING, EGR, 80), NODE, &none), None);
        // Both sides isolated: egress alone is not enough.
        assert_eq!(
            judge(&conn(EGR, ING, 80), NODE, &only_egress),
            Some(crate::metrics::DROP_POLICY_INGRESS)
        );
        assert_eq!(judge(&conn(EGR, ING, 80), NODE, &both), None);
        // Only the allowed port.
        assert_eq!(
            judge(&conn(EGR, ING, 81), NODE, &both),
            Some(crate::metrics::DROP_POLICY_EGRESS)
        );
    }

    /// Test that a rule without ports (protocol 0 entry) allows every port of every protocol,
    /// and that an entry with no range (an `except`) allows nothing.
    #[test]
    fn judge_any_protocol_entry_and_empty_entry() {
        let any = [(
            RuleData::v4(B, DIR_INGRESS, PROTO_ANY, A),
            value(&[(0, u16::MAX)]),
        )];
        let any = trie(&any);
        for (proto, port) in [(6, 80), (17, 53), (132, 9999)] {
            let c = Conn {
                proto,
                ..conn(0, ING, port)
            };
            assert_eq!(judge(&c, NODE, &any), None, "proto {proto} port {port}");
        }
        let empty = [(RuleData::v4(B, DIR_INGRESS, PROTO_ANY, A), value(&[]))];
        let empty = trie(&empty);
        assert_eq!(
            judge(&conn(0, ING, 80), NODE, &empty),
            Some(crate::metrics::DROP_POLICY_INGRESS)
        );
    }

    /// Test that a pod and its own node always reach each other, and that a pod reaching
    /// itself through its Service (hairpin source) is not judged by its ingress rules.
    #[test]
    fn judge_node_and_hairpin_always_allowed() {
        let none = trie(&[]);
        let from_node = Conn {
            saddr: NODE,
            ..conn(0, ING, 80)
        };
        assert_eq!(judge(&from_node, NODE, &none), None);
        let to_node = Conn {
            daddr: NODE,
            ..conn(EGR, 0, 80)
        };
        assert_eq!(judge(&to_node, NODE, &none), None);
        let hairpin = Conn {
            saddr: crate::svc::HAIRPIN_SOURCE4,
            ..conn(0, ING, 80)
        };
        assert_eq!(judge(&hairpin, NODE, &none), None);
        // The node's address as a destination is not an exception for ingress of others.
        let other = Conn {
            saddr: [10, 244, 1, 9],
            ..conn(0, ING, 80)
        };
        assert_eq!(
            judge(&other, NODE, &none),
            Some(crate::metrics::DROP_POLICY_INGRESS)
        );
    }

    /// Test that a socket's two ends give the tracker keys the TC programs record for a SYN
    /// in each direction (ports in network order) and the connections judged, opened from
    /// the local end first, each with its destination port and both ends' flags.
    #[test]
    fn socket_directions_match_the_tracked_syn() {
        let local = SockEnd {
            addr: A,
            port: 40000,
            flags: EGR,
        };
        let remote = SockEnd {
            addr: B,
            port: 80,
            flags: ING,
        };
        let [(t_out, c_out), (t_in, c_in)] = socket_directions(local, remote);
        assert_eq!(
            t_out,
            crate::nat::Tuple::v4(6, A, B, 40000u16.to_be(), 80u16.to_be())
        );
        assert_eq!(
            t_in,
            crate::nat::Tuple::v4(6, B, A, 80u16.to_be(), 40000u16.to_be())
        );
        assert_eq!(
            c_out,
            Conn {
                saddr: A,
                daddr: B,
                proto: 6,
                dport: 80,
                sflags: EGR,
                dflags: ING
            }
        );
        assert_eq!(
            c_in,
            Conn {
                saddr: B,
                daddr: A,
                proto: 6,
                dport: 40000,
                sflags: ING,
                dflags: EGR
            }
        );
    }

    /// Test that the pod key separates namespace and name.
    #[test]
    fn pod_key_separates() {
        assert_ne!(pod_key(b"a", b"bc"), pod_key(b"ab", b"c"));
        assert_eq!(pod_key(b"x", b"a"), pod_key(b"x", b"a"));
    }
}
