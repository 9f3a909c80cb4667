//! `ipBlock` peers: a CIDR minus its `except` CIDRs, the membership test a trace needs, and
//! the decomposition into disjoint prefixes a longest-prefix-match map needs (such a map
//! has no "minus").

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// The addresses of `cidr` that are in none of `except`. Both are normalised to their
/// network address (`10.0.0.1/24` is `10.0.0.0/24`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpBlock {
    pub cidr: IpNetwork,
    pub except: Vec<IpNetwork>,
}

impl IpBlock {
    /// The block `cidr` minus `except`, normalised.
    pub fn new(cidr: IpNetwork, except: impl IntoIterator<Item = IpNetwork>) -> Self {
        IpBlock {
            cidr: normalise(cidr),
            except: except.into_iter().map(normalise).collect(),
        }
    }

    /// Whether `addr` is in the block.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.cidr.contains(addr) && !self.except.iter().any(|e| e.contains(addr))
    }

    /// The block as disjoint prefixes, in address order, the fewest that cover it exactly.
    /// Excepts outside the CIDR or of the other family change nothing; an except covering
    /// the whole CIDR leaves nothing.
    pub fn prefixes(&self) -> Vec<IpNetwork> {
        let mut out = Vec::new();
        subtract(self.cidr, &self.except, &mut out);
        out
    }
}

impl fmt::Display for IpBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cidr)?;
        if !self.except.is_empty() {
            let except: Vec<String> = self.except.iter().map(ToString::to_string).collect();
            write!(f, " except {}", except.join(", "))?;
        }
        Ok(())
    }
}

/// `net` with the host bits cleared.
fn normalise(net: IpNetwork) -> IpNetwork {
    IpNetwork::new(net.network(), net.prefix()).unwrap_or(net)
}

/// Appends to `out` the prefixes of `net` that no except covers: `net` itself when no
/// except overlaps it, nothing when one covers it, else both halves in turn. Each except
/// splits at most one path from `net` down to its own length.
fn subtract(net: IpNetwork, except: &[IpNetwork], out: &mut Vec<IpNetwork>) {
    let overlapping: Vec<IpNetwork> = except
        .iter()
        .copied()
        .filter(|e| e.is_ipv4() == net.is_ipv4())
        .filter(|e| e.contains(net.network()) || net.contains(e.network()))
        .collect();
    if overlapping.is_empty() {
        out.push(net);
        return;
    }
    if overlapping.iter().any(|e| e.prefix() <= net.prefix()) {
        return;
    }
    let (low, high) = halves(net);
    subtract(low, &overlapping, out);
    subtract(high, &overlapping, out);
}

/// The two halves of `net`, which is not a single address (an except inside it is longer).
fn halves(net: IpNetwork) -> (IpNetwork, IpNetwork) {
    let prefix = net.prefix() + 1;
    let half = |ip: IpAddr| IpNetwork::new(ip, prefix).unwrap_or(net);
    match net.network() {
        IpAddr::V4(base) => {
            let high = u32::from(base) | (1u32 << (32 - u32::from(prefix)));
            (half(base.into()), half(Ipv4Addr::from(high).into()))
        }
        IpAddr::V6(base) => {
            let high = u128::from(base) | (1u128 << (128 - u32::from(prefix)));
            (half(base.into()), half(Ipv6Addr::from(high).into()))
        }
    }
}
