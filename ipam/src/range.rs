//! Address arithmetic for one configured range: which addresses of an `IpNetwork` may be handed
//! out, how many there are, and which one comes after another (with wrap-around). Every address
//! is handled as a `u128` plus its family, so IPv4 and IPv6 share one code path and nothing
//! assumes IPv4.
//!
//! Usable addresses of a range:
//! - IPv4 with prefix ≤ 30: every address except the network and the broadcast address
//!   (a /30 gives 2, a /24 gives 254).
//! - IPv4 /31: both addresses (RFC 3021 point-to-point links have no network or broadcast).
//! - IPv4 /32: the single address.
//! - IPv6 with prefix ≤ 126: every address except the subnet-router anycast address (the
//!   network address); there is no broadcast in IPv6.
//! - IPv6 /127: both addresses (RFC 6164 point-to-point links disable subnet-router anycast).
//! - IPv6 /128: the single address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// The numeric value of an address (IPv4 in the low 32 bits).
pub(crate) fn to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// One configured range with its bounds precomputed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Range {
    /// The range in canonical form (host bits cleared).
    net: IpNetwork,
    /// First address of the network (the network address).
    start: u128,
    /// Last address of the network (the IPv4 broadcast address).
    end: u128,
    /// First usable address.
    first: u128,
    /// Last usable address (inclusive).
    last: u128,
}

impl Range {
    /// Builds a range from a network, clearing any host bits (`10.244.1.5/24` becomes
    /// `10.244.1.0/24`).
    pub(crate) fn new(net: IpNetwork) -> Range {
        let (bits, v6) = if net.is_ipv4() {
            (32, false)
        } else {
            (128, true)
        };
        let host_bits = u32::from(bits - net.prefix());
        let host_mask = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        let start = to_u128(net.ip()) & !host_mask;
        let end = start | host_mask;
        let (first, last) = match (v6, net.prefix()) {
            (false, p) if p <= 30 => (start + 1, end - 1),
            (true, p) if p <= 126 => (start + 1, end),
            _ => (start, end),
        };
        let canonical = IpNetwork::new(from_u128(start, v6), net.prefix())
            .expect("prefix came from a valid network of the same family");
        Range {
            net: canonical,
            start,
            end,
            first,
            last,
        }
    }

    /// The range in canonical form.
    pub(crate) fn network(&self) -> IpNetwork {
        self.net
    }

    fn is_v6(&self) -> bool {
        self.net.is_ipv6()
    }

    fn same_family(&self, addr: IpAddr) -> bool {
        addr.is_ipv6() == self.is_v6()
    }

    /// Whether `addr` lies anywhere in the network, including addresses that are not usable.
    pub(crate) fn contains(&self, addr: IpAddr) -> bool {
        let v = to_u128(addr);
        self.same_family(addr) && self.start <= v && v <= self.end
    }

    /// Whether `addr` may be handed out (ignoring configured reserved addresses).
    pub(crate) fn is_usable(&self, addr: IpAddr) -> bool {
        let v = to_u128(addr);
        self.same_family(addr) && self.first <= v && v <= self.last
    }

    /// Number of usable addresses. An IPv6 /0 has 2^128 - 1 usable addresses, so this fits.
    pub(crate) fn usable_count(&self) -> u128 {
        self.last - self.first + 1
    }

    /// The first usable address.
    pub(crate) fn first(&self) -> IpAddr {
        from_u128(self.first, self.is_v6())
    }

    /// The usable address after `addr`, wrapping from the last usable address to the first.
    /// An address outside the usable span restarts at the first usable address.
    pub(crate) fn next(&self, addr: IpAddr) -> IpAddr {
        if !self.is_usable(addr) {
            return self.first();
        }
        let v = to_u128(addr);
        let n = if v == self.last { self.first } else { v + 1 };
        from_u128(n, self.is_v6())
    }

    /// Whether two ranges share at least one address.
    pub(crate) fn overlaps(&self, other: &Range) -> bool {
        self.is_v6() == other.is_v6() && self.start <= other.end && other.start <= self.end
    }
}

/// The address with numeric value `v` in the given family (`v` fits the family).
fn from_u128(v: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(v))
    } else {
        let v4 = u32::try_from(v).expect("an IPv4 value fits 32 bits");
        IpAddr::V4(Ipv4Addr::from(v4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> Range {
        Range::new(s.parse().unwrap())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Test that an IPv4 /24 excludes the network and broadcast address: 256 - 2 = 254 usable.
    #[test]
    fn v4_slash24_excludes_network_and_broadcast() {
        let r = range("10.244.1.0/24");
        assert_eq!(r.usable_count(), 254);
        assert_eq!(r.first(), ip("10.244.1.1"));
        assert!(!r.is_usable(ip("10.244.1.0")));
        assert!(!r.is_usable(ip("10.244.1.255")));
        assert!(r.is_usable(ip("10.244.1.254")));
        assert!(r.contains(ip("10.244.1.255")));
        assert!(!r.contains(ip("10.244.2.0")));
    }

    /// Test that an IPv4 /30 has exactly two usable addresses, .1 and .2.
    #[test]
    fn v4_slash30_has_two_usable() {
        let r = range("10.0.0.0/30");
        assert_eq!(r.usable_count(), 2);
        assert_eq!(r.first(), ip("10.0.0.1"));
        assert_eq!(r.next(ip("10.0.0.1")), ip("10.0.0.2"));
        assert_eq!(r.next(ip("10.0.0.2")), ip("10.0.0.1"));
    }

    /// Test that an IPv4 /31 uses both addresses and a /32 its single address.
    #[test]
    fn v4_slash31_and_slash32_use_every_address() {
        let r31 = range("10.0.0.4/31");
        assert_eq!(r31.usable_count(), 2);
        assert!(r31.is_usable(ip("10.0.0.4")) && r31.is_usable(ip("10.0.0.5")));
        assert_eq!(r31.next(ip("10.0.0.5")), ip("10.0.0.4"));
        let r32 = range("10.0.0.9/32");
        assert_eq!(r32.usable_count(), 1);
        assert_eq!(r32.first(), ip("10.0.0.9"));
        assert_eq!(r32.next(ip("10.0.0.9")), ip("10.0.0.9"));
    }

    /// Test that an IPv6 range excludes only the subnet-router anycast address and keeps the
    /// last address (no broadcast): a /120 has 256 - 1 = 255 usable.
    #[test]
    fn v6_excludes_only_subnet_router_anycast() {
        let r = range("fd00:10:244:1::/120");
        assert_eq!(r.usable_count(), 255);
        assert_eq!(r.first(), ip("fd00:10:244:1::1"));
        assert!(!r.is_usable(ip("fd00:10:244:1::")));
        assert!(r.is_usable(ip("fd00:10:244:1::ff")));
        assert_eq!(r.next(ip("fd00:10:244:1::ff")), ip("fd00:10:244:1::1"));
    }

    /// Test that IPv6 /64, /127, /128 and /0 sizes follow 2^(128 - prefix) minus anycast.
    #[test]
    fn v6_sizes_from_prefix() {
        assert_eq!(range("fd00::/64").usable_count(), (1u128 << 64) - 1);
        assert_eq!(range("fd00::/127").usable_count(), 2);
        assert_eq!(range("fd00::7/128").usable_count(), 1);
        assert_eq!(range("::/0").usable_count(), u128::MAX);
        assert_eq!(
            range("::/0").next(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
            ip("::1")
        );
    }

    /// Test that host bits in a configured range are cleared.
    #[test]
    fn host_bits_are_cleared() {
        let r = range("10.244.1.77/24");
        assert_eq!(r.network(), "10.244.1.0/24".parse::<IpNetwork>().unwrap());
        assert_eq!(r.first(), ip("10.244.1.1"));
    }

    /// Test that an IPv4 address never matches an IPv6 range and the other way round, even
    /// with the same numeric value.
    #[test]
    fn families_never_mix() {
        let v6 = range("::/96");
        assert!(!v6.contains(ip("0.0.0.5")));
        assert!(!v6.is_usable(ip("0.0.0.5")));
        let v4 = range("0.0.0.0/8");
        assert!(!v4.contains(ip("::5")));
        assert!(!v4.overlaps(&v6));
    }

    /// Test that overlap detection finds nested and partial overlaps but not neighbours.
    #[test]
    fn overlap_detection() {
        assert!(range("10.0.0.0/16").overlaps(&range("10.0.3.0/24")));
        assert!(range("10.0.3.0/24").overlaps(&range("10.0.0.0/16")));
        assert!(!range("10.0.0.0/24").overlaps(&range("10.0.1.0/24")));
        assert!(range("fd00::/64").overlaps(&range("fd00::1/128")));
    }

    /// Test that `next` on an address outside the usable span restarts at the first address.
    #[test]
    fn next_outside_usable_restarts() {
        let r = range("10.0.0.0/24");
        assert_eq!(r.next(ip("10.0.0.0")), ip("10.0.0.1"));
        assert_eq!(r.next(ip("10.0.0.255")), ip("10.0.0.1"));
        assert_eq!(r.next(ip("192.168.0.1")), ip("10.0.0.1"));
    }
}
