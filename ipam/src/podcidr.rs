//! Which networks may be a node's pod CIDR: the one check that both the CNI plugin (its
//! `podCIDRs`) and the agent (`--pod-cidr`, a Node's `spec.podCIDRs`) apply, so the two never
//! drift. A pod CIDR must be a network of ordinary unicast addresses that can hold pods, and
//! must not overlap the node's own networks (its uplink's), or pods would take addresses the
//! node reaches on the wire and traffic to them would go to the wrong side.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::range::Range;

/// Why a network cannot be a pod CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodCidrError {
    /// The address has bits set past the prefix (`10.244.1.5/24`).
    #[error("pod CIDR {cidr} has host bits set (the network is {network})")]
    HostBits { cidr: IpNetwork, network: IpNetwork },
    /// The network is (inside) a special-purpose block (RFC 6890) pods cannot use.
    #[error("pod CIDR {cidr} is inside {block} ({what}), which cannot be a pod network")]
    Special {
        cidr: IpNetwork,
        block: IpNetwork,
        what: &'static str,
    },
    /// The network covers a special-purpose block (`0.0.0.0/0`, `0.0.0.0/1`…).
    #[error("pod CIDR {cidr} covers {block} ({what}), which cannot be a pod network")]
    Covers {
        cidr: IpNetwork,
        block: IpNetwork,
        what: &'static str,
    },
    /// The prefix leaves fewer than two pod addresses (`/31`, `/32`; `/127`, `/128`).
    #[error("pod CIDR {cidr} is too small to hold pods (the longest usable prefix is /{max})")]
    TooSmall { cidr: IpNetwork, max: u8 },
    /// Two pod CIDRs overlap.
    #[error("pod CIDRs {a} and {b} overlap")]
    Overlap { a: IpNetwork, b: IpNetwork },
    /// The network overlaps one of the node's own networks (e.g. the uplink's).
    #[error("pod CIDR {cidr} overlaps the node's network {node} (on {iface})")]
    OverlapsNode {
        cidr: IpNetwork,
        node: IpNetwork,
        iface: String,
    },
}

/// The longest IPv4 prefix with at least two pod addresses (a /30: network and broadcast
/// are skipped, see the `range` module).
const MAX_PREFIX_V4: u8 = 30;
/// The longest IPv6 prefix with at least two pod addresses (a /126 minus the subnet-router
/// anycast address).
const MAX_PREFIX_V6: u8 = 126;

/// Special-purpose IPv4 blocks that cannot hold pods (RFC 6890 and its updates).
const SPECIAL_V4: [(&str, &str); 5] = [
    ("0.0.0.0/8", "\"this network\", RFC 1122"),
    ("127.0.0.0/8", "loopback, RFC 1122"),
    (
        "169.254.0.0/16",
        "link-local, RFC 3927; the pods' gateway is 169.254.1.1",
    ),
    ("224.0.0.0/4", "multicast, RFC 5771"),
    (
        "240.0.0.0/4",
        "reserved class E and limited broadcast, RFC 1112 and RFC 919",
    ),
];

/// Special-purpose IPv6 blocks that cannot hold pods (RFC 4291).
const SPECIAL_V6: [(&str, &str); 4] = [
    ("::/128", "unspecified, RFC 4291"),
    ("::1/128", "loopback, RFC 4291"),
    ("fe80::/10", "link-local, RFC 4291"),
    ("ff00::/8", "multicast, RFC 4291"),
];

/// Checks one network on its own: host bits, special-purpose blocks, and room for pods.
pub fn check_pod_cidr(cidr: IpNetwork) -> Result<(), PodCidrError> {
    let network = IpNetwork::new(cidr.network(), cidr.prefix())
        .expect("the prefix of a valid network is valid for its own address");
    if cidr.ip() != cidr.network() {
        return Err(PodCidrError::HostBits { cidr, network });
    }
    let special: &[(&str, &str)] = if cidr.is_ipv4() {
        &SPECIAL_V4
    } else {
        &SPECIAL_V6
    };
    for (block, what) in special {
        let block: IpNetwork = block.parse().expect("literal CIDR");
        if !overlaps(cidr, block) {
            continue;
        }
        return Err(if block.prefix() <= cidr.prefix() {
            PodCidrError::Special { cidr, block, what }
        } else {
            PodCidrError::Covers { cidr, block, what }
        });
    }
    let max = if cidr.is_ipv4() {
        MAX_PREFIX_V4
    } else {
        MAX_PREFIX_V6
    };
    if cidr.prefix() > max {
        return Err(PodCidrError::TooSmall { cidr, max });
    }
    Ok(())
}

/// Checks a node's pod CIDRs: each on its own, no two overlapping, and none overlapping one
/// of the node's own networks, given as `(interface, network)`.
pub fn check_pod_cidrs(
    cidrs: &[IpNetwork],
    node_networks: &[(String, IpNetwork)],
) -> Result<(), PodCidrError> {
    for (i, &cidr) in cidrs.iter().enumerate() {
        check_pod_cidr(cidr)?;
        if let Some(&a) = cidrs[..i].iter().find(|a| overlaps(**a, cidr)) {
            return Err(PodCidrError::Overlap { a, b: cidr });
        }
        if let Some((iface, node)) = node_networks.iter().find(|(_, n)| overlaps(*n, cidr)) {
            return Err(PodCidrError::OverlapsNode {
                cidr,
                node: *node,
                iface: iface.clone(),
            });
        }
    }
    Ok(())
}

/// Whether two networks share an address (never across families).
fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    Range::new(a).overlaps(&Range::new(b))
}

/// The network an interface address with `prefix` is on (`192.0.2.2/24` → `192.0.2.0/24`).
pub fn network_of(addr: IpAddr, prefix: u8) -> Option<IpNetwork> {
    let n = IpNetwork::new(addr, prefix).ok()?;
    IpNetwork::new(n.network(), prefix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    /// Test that the networks the CNI spec's outside test and RFC 6890 rule out are refused,
    /// each with the reason an operator needs.
    #[test]
    fn special_and_tiny_networks_are_refused() {
        let special = [
            ("0.0.0.0/0", "covers"),
            ("0.0.0.0/8", "\"this network\""),
            ("127.0.0.0/8", "loopback"),
            ("127.0.0.0/16", "loopback"),
            ("169.254.0.0/16", "link-local"),
            ("169.254.1.0/24", "link-local"),
            ("224.0.0.0/4", "multicast"),
            ("239.1.0.0/16", "multicast"),
            ("240.0.0.0/4", "class E"),
            ("255.255.255.255/32", "broadcast"),
            ("128.0.0.0/1", "covers"),
            ("fe80::/64", "link-local"),
            ("ff02::/16", "multicast"),
            ("::/0", "covers"),
        ];
        for (cidr, reason) in special {
            let err = check_pod_cidr(net(cidr)).expect_err(cidr).to_string();
            assert!(err.contains(reason), "{cidr}: {err}");
        }
        for cidr in [
            "10.244.1.0/31",
            "10.244.1.1/32",
            "fd00::/127",
            "fd00::1/128",
        ] {
            assert!(
                matches!(
                    check_pod_cidr(net(cidr)),
                    Err(PodCidrError::TooSmall { .. })
                ),
                "{cidr}"
            );
        }
        assert!(matches!(
            check_pod_cidr(net("10.244.1.5/24")),
            Err(PodCidrError::HostBits { .. })
        ));
    }

    /// Test that ordinary private and public unicast networks down to a /30 are accepted.
    #[test]
    fn ordinary_networks_are_accepted() {
        for cidr in [
            "10.244.1.0/24",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "203.0.113.0/24",
            "10.244.1.0/30",
            "fd00:10:244:1::/64",
            "fd00::/126",
        ] {
            assert_eq!(check_pod_cidr(net(cidr)), Ok(()), "{cidr}");
        }
    }

    /// Test that pod CIDRs overlapping each other or a node network are refused, naming both.
    #[test]
    fn overlaps_are_refused() {
        let uplink = vec![("up0".to_string(), net("198.51.100.0/24"))];
        let err = check_pod_cidrs(&[net("198.51.100.0/24")], &uplink).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pod CIDR 198.51.100.0/24 overlaps the node's network 198.51.100.0/24 (on up0)"
        );
        assert!(check_pod_cidrs(&[net("198.51.0.0/16")], &uplink).is_err());
        assert!(check_pod_cidrs(&[net("198.51.100.128/25")], &uplink).is_err());
        assert_eq!(check_pod_cidrs(&[net("10.244.1.0/24")], &uplink), Ok(()));
        assert!(matches!(
            check_pod_cidrs(&[net("10.0.0.0/16"), net("10.0.1.0/24")], &[]),
            Err(PodCidrError::Overlap { .. })
        ));
        assert_eq!(
            check_pod_cidrs(&[net("10.0.0.0/24"), net("fd00::/64")], &[]),
            Ok(())
        );
        assert_eq!(
            network_of("192.0.2.2".parse().unwrap(), 24),
            Some(net("192.0.2.0/24"))
        );
    }
}
