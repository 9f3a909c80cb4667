//! Turns the compiled NetworkPolicy ([`crate::policy::PolicySet`]) into the datapath's policy
//! maps (see `datapath_common::policy`): the rule trie per local endpoint, direction and
//! protocol, the endpoints' isolation flags, the isolation of pods not started yet (read by the
//! CNI plugin at ADD), and the revision that makes the datapath judge tracked connections again.
//!
//! The rule trie answers with its most specific match only, so each entry must already hold
//! everything that applies to its addresses: for every prefix that appears in an endpoint's
//! rules (pod /32s, ipBlock CIDRs and their `except`s, 0.0.0.0/0 for "any peer") the entry gets
//! the union of the port ranges of every rule whose peer contains the whole prefix. An `except`
//! is then an entry with fewer ranges (possibly none) inside its CIDR. An entry that would need
//! more than `MAX_RANGES` ranges is written empty: that peer is denied (fail closed), logged.
//!
//! Writes are ordered so no moment is more open than both the old and the new policy: new and
//! changed entries, then isolation flags, then removals, then the revision.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::Path;

use anyhow::Context as _;
use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, HashMap as BpfHash, Map, MapData,
};
use datapath_common::{endpoint, policy};
use ipnetwork::{IpNetwork, Ipv4Network};

use crate::policy::{Allow, Endpoint, Peer, PolicySet, Ports};
use crate::services::Proto;

mod accel;
mod capacity;
#[cfg(test)]
mod tests_isolation;
mod trace;

use capacity::{fit, policy_key_addr};
pub use trace::DatapathVerdict;

type RuleKey = (u32, policy::RuleData);
/// An inclusive port range, host order.
type PortSpan = (u16, u16);
/// One trie entry to be: (protocol, peer prefix) and its coalesced port ranges.
type TrieEntry = ((u8, Ipv4Network), Vec<PortSpan>);

/// What one [`PolicyMaps::sync`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncStats {
    pub entries: usize,
    pub written: usize,
    pub removed: usize,
    /// Entries written empty because their ranges did not fit (fail closed).
    pub overflowed: usize,
    /// Endpoints whose entries did not fit in the rule map: programmed with none, so all
    /// their isolated directions deny everything but their node (fail closed).
    pub failed_closed: usize,
    pub isolated_endpoints: usize,
    pub revision: u32,
}

/// The policy maps of one bpffs and what is programmed in them.
pub struct PolicyMaps {
    rules: LpmTrie<MapData, policy::RuleData, policy::RuleValue>,
    revision: Array<MapData, u32>,
    pod_isolation: BpfHash<MapData, u64, u32>,
    programmed: HashMap<RuleKey, policy::RuleValue>,
    isolation_keys: BTreeSet<u64>,
    bpffs: std::path::PathBuf,
    /// Overflowed entries and failed-closed endpoints over the agent's life (metrics for
    /// `sluicectl status`).
    pub overflowed_total: u64,
    pub failed_closed_total: u64,
    /// Entries the rule map holds at most (`policy::MAX_ENTRIES`).
    pub capacity: usize,
    /// What the last [`PolicyMaps::sync`] did.
    pub last: SyncStats,
    /// What the last [`PolicyMaps::sync`] left out (fail closed), for traces.
    failed_closed: trace::FailedClosed,
}

fn open_map(bpffs: &Path, name: &str) -> anyhow::Result<MapData> {
    Ok(crate::pins::open(bpffs, name)?)
}

/// The IP protocol number the policy maps key a protocol by.
pub fn proto_number(p: Proto) -> u8 {
    match p {
        Proto::Tcp => 6,
        Proto::Udp => 17,
        Proto::Sctp => 132,
    }
}

/// The IPv4 prefixes a peer stands for, and whether the peer contains a whole prefix.
fn peer_prefixes(peer: &Peer) -> Vec<Ipv4Network> {
    match peer {
        Peer::Any => vec![Ipv4Network::new([0, 0, 0, 0].into(), 0).expect("/0")],
        Peer::Pod { addrs, .. } => addrs
            .iter()
            .filter_map(|a| match a {
                IpAddr::V4(v4) => Ipv4Network::new(*v4, 32).ok(),
                IpAddr::V6(_) => None,
            })
            .collect(),
        Peer::Block(b) => std::iter::once(&b.cidr)
            .chain(&b.except)
            .filter_map(|n| match n {
                IpNetwork::V4(v4) => Some(*v4),
                IpNetwork::V6(_) => None,
            })
            .collect(),
    }
}

fn v4_is_subnet(inner: &Ipv4Network, outer: &Ipv4Network) -> bool {
    inner.prefix() >= outer.prefix() && outer.contains(inner.network())
}

/// Whether every address of `p` (that has no more specific entry) belongs to the peer.
fn peer_contains(peer: &Peer, p: &Ipv4Network) -> bool {
    match peer {
        Peer::Any => true,
        Peer::Pod { addrs, .. } => p.prefix() == 32 && addrs.contains(&IpAddr::V4(p.network())),
        Peer::Block(b) => {
            let IpNetwork::V4(cidr) = b.cidr else {
                return false;
            };
            v4_is_subnet(p, &cidr)
                && !b.except.iter().any(|e| match e {
                    IpNetwork::V4(e) => v4_is_subnet(p, e),
                    IpNetwork::V6(_) => false,
                })
        }
    }
}

/// Sorted, coalesced ranges.
fn coalesce(mut r: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    r.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::new();
    for (lo, hi) in r {
        match out.last_mut() {
            Some(last) if lo as u32 <= last.1 as u32 + 1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// The trie entries of one endpoint's allows in one direction: ((protocol, peer prefix),
/// ranges).
fn entries_for(allows: &[Allow]) -> Vec<TrieEntry> {
    // Group the allows by the protocol key they go under: (peer, port range) per protocol.
    let mut by_proto: BTreeMap<u8, Vec<(&Peer, PortSpan)>> = BTreeMap::new();
    for a in allows {
        let (proto, range) = match a.ports {
            Ports::All => (policy::PROTO_ANY, (0, u16::MAX)),
            Ports::Range { proto, first, last } => (proto_number(proto), (first, last)),
        };
        by_proto.entry(proto).or_default().push((&a.peer, range));
    }
    let mut out = Vec::new();
    for (proto, rules) in by_proto {
        // A pod peer contains only its own /32s: indexed by address, so each prefix looks at
        // the pod rules of its address and the wide rules (any peer, ipBlocks), not at every
        // rule (1,000 policies over 1,000 peer pods are a million rules).
        let mut by_addr: HashMap<std::net::Ipv4Addr, Vec<PortSpan>> = HashMap::new();
        let mut wide: Vec<(&Peer, PortSpan)> = Vec::new();
        let mut prefixes: BTreeSet<Ipv4Network> = BTreeSet::new();
        for (peer, range) in &rules {
            prefixes.extend(peer_prefixes(peer));
            match peer {
                Peer::Pod { addrs, .. } => {
                    for a in addrs.iter() {
                        if let IpAddr::V4(v4) = a {
                            by_addr.entry(*v4).or_default().push(*range);
                        }
                    }
                }
                Peer::Any | Peer::Block(_) => wide.push((peer, *range)),
            }
        }
        for p in prefixes {
            let mut ranges: Vec<PortSpan> = wide
                .iter()
                .filter(|(peer, _)| peer_contains(peer, &p))
                .map(|(_, r)| *r)
                .collect();
            if p.prefix() == 32 {
                ranges.extend(by_addr.get(&p.network()).into_iter().flatten());
            }
            out.push(((proto, p), coalesce(ranges)));
        }
    }
    out
}

/// The isolation the CNI plugin gives pods at ADD (`SL_PODISO`), by `policy::pod_key`:
/// `ISO_*` bits, straight from the compiled set ([`PolicySet::isolation`]: the pods that may
/// start on this node, address or not), so it cannot mean anything else than the rules.
pub fn pod_isolation(set: &PolicySet) -> BTreeMap<u64, u32> {
    set.isolation()
        .iter()
        .filter_map(|(pod, iso)| {
            let bits = if iso.ingress { policy::ISO_INGRESS } else { 0 }
                | if iso.egress { policy::ISO_EGRESS } else { 0 };
            let key = policy::pod_key(pod.namespace.as_bytes(), pod.name.as_bytes());
            (bits != 0).then_some((key, bits))
        })
        .collect()
}

/// The isolation flags an endpoint should carry.
pub fn isolation_flags(e: &Endpoint) -> u32 {
    let mut f = 0;
    if e.ingress.is_isolated() {
        f |= endpoint::FLAG_ISOLATED_INGRESS;
    }
    if e.egress.is_isolated() {
        f |= endpoint::FLAG_ISOLATED_EGRESS;
    }
    f
}

impl PolicyMaps {
    /// Opens the pinned maps and reads back what an earlier agent programmed.
    pub fn open(bpffs: &Path) -> anyhow::Result<Self> {
        let rules: LpmTrie<MapData, policy::RuleData, policy::RuleValue> =
            LpmTrie::try_from(Map::LpmTrie(open_map(bpffs, policy::MAP_NAME)?))?;
        let revision = Array::try_from(Map::Array(open_map(bpffs, policy::REVISION_MAP_NAME)?))?;
        let pod_isolation = BpfHash::try_from(Map::HashMap(open_map(
            bpffs,
            policy::POD_ISOLATION_MAP_NAME,
        )?))?;
        let mut programmed = HashMap::new();
        for k in rules.keys() {
            let k = k.context("read the policy trie")?;
            if let Ok(v) = rules.get(&k, 0) {
                programmed.insert((k.prefix_len(), k.data()), v);
            }
        }
        let isolation_keys = pod_isolation
            .keys()
            .collect::<Result<BTreeSet<u64>, _>>()
            .context("read pod isolation")?;
        Ok(Self {
            rules,
            revision,
            pod_isolation,
            programmed,
            isolation_keys,
            bpffs: bpffs.to_path_buf(),
            overflowed_total: 0,
            failed_closed_total: 0,
            capacity: policy::MAX_ENTRIES as usize,
            last: SyncStats::default(),
            failed_closed: trace::FailedClosed::default(),
        })
    }

    /// The current revision.
    pub fn revision(&self) -> u32 {
        self.revision.get(&0, 0).unwrap_or(0)
    }

    /// Makes the maps hold `set` for the endpoints at `local` addresses (this node's pods), and
    /// the isolation of this node's pods not started yet.
    pub fn sync(&mut self, set: &PolicySet, local: &BTreeSet<IpAddr>) -> anyhow::Result<SyncStats> {
        let mut stats = SyncStats::default();
        let mut want: HashMap<RuleKey, policy::RuleValue> = HashMap::new();
        let mut flags: BTreeMap<IpAddr, u32> = BTreeMap::new();
        let mut failed_closed = trace::FailedClosed::default();
        for e in set.endpoints() {
            for addr in e.addrs.iter().filter(|a| local.contains(a)) {
                let IpAddr::V4(subject) = addr else { continue };
                let f = isolation_flags(e);
                flags.insert(*addr, f);
                if f != 0 {
                    stats.isolated_endpoints += 1;
                }
                for (dir, rules) in [
                    (policy::DIR_INGRESS, &e.ingress),
                    (policy::DIR_EGRESS, &e.egress),
                ] {
                    if !rules.is_isolated() {
                        continue;
                    }
                    for ((proto, prefix), ranges) in entries_for(&rules.allow) {
                        let mut v = policy::RuleValue {
                            count: 0,
                            ranges: [policy::PortRange::default(); policy::MAX_RANGES],
                        };
                        if ranges.len() > policy::MAX_RANGES {
                            stats.overflowed += 1;
                            tracing::warn!(
                                pod = %e.pod,
                                peer = %prefix,
                                ranges = ranges.len(),
                                "policy needs more port ranges than fit: this peer is denied (fail closed)"
                            );
                        } else {
                            v.count = ranges.len() as u32;
                            for (slot, (lo, hi)) in v.ranges.iter_mut().zip(&ranges) {
                                *slot = policy::PortRange { lo: *lo, hi: *hi };
                            }
                        }
                        let data = policy::RuleData::v4(
                            subject.octets(),
                            dir,
                            proto,
                            prefix.network().octets(),
                        );
                        let len = policy::fixed_bits() + prefix.prefix() as u32;
                        if ranges.len() > policy::MAX_RANGES {
                            failed_closed.entries.insert((len, data));
                        }
                        want.insert((len, data), v);
                    }
                }
            }
        }
        for subject in fit(&mut want, self.capacity) {
            stats.failed_closed += 1;
            failed_closed.endpoints.insert(subject);
            let pod = set
                .endpoints()
                .find(|e| e.addrs.iter().any(|a| policy_key_addr(a) == Some(subject)))
                .map(|e| e.pod.to_string())
                .unwrap_or_default();
            tracing::warn!(
                %pod,
                capacity = self.capacity,
                "network policy rules do not fit in the rule map: this pod's isolated directions \
                 deny everything but its node (fail closed)"
            );
        }
        self.overflowed_total += stats.overflowed as u64;
        self.failed_closed_total += stats.failed_closed as u64;
        let mut changed = self.make_room(&want)?;
        // 1. New and changed entries.
        for (k, v) in &want {
            if self.programmed.get(k) != Some(v) {
                self.rules
                    .insert(&Key::new(k.0, k.1), *v, 0)
                    .context("write a policy rule")?;
                stats.written += 1;
                changed = true;
            }
        }
        // 2. Isolation of running endpoints and of pods to come.
        let mut eps = datapath_user::Endpoints::open(&self.bpffs)?;
        for rec in eps.list()? {
            let want_iso = flags.get(&rec.addr).copied().unwrap_or(0);
            let iso_bits = endpoint::FLAG_ISOLATED_INGRESS | endpoint::FLAG_ISOLATED_EGRESS;
            let next = (rec.value.flags & !iso_bits) | want_iso;
            if next != rec.value.flags {
                eps.set_flags(rec.addr, next)?;
                changed = true;
            }
        }
        let iso = pod_isolation(set);
        for (k, v) in &iso {
            if self.pod_isolation.get(k, 0).ok() != Some(*v) {
                self.pod_isolation
                    .insert(k, v, 0)
                    .context("write pod isolation")?;
            }
        }
        for k in self
            .isolation_keys
            .difference(&iso.keys().copied().collect())
        {
            datapath_user::absent_is_ok(self.pod_isolation.remove(k))
                .context("remove pod isolation")?;
        }
        self.isolation_keys = iso.keys().copied().collect();
        // 3. Entries no longer wanted.
        let gone: Vec<RuleKey> = self
            .programmed
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        for k in &gone {
            datapath_user::absent_is_ok(self.rules.remove(&Key::new(k.0, k.1)))
                .context("remove a policy rule")?;
            stats.removed += 1;
            changed = true;
        }
        stats.entries = want.len();
        failed_closed.entries.retain(|k| want.contains_key(k));
        self.failed_closed = failed_closed;
        self.programmed = want;
        // 4. Tracked connections are judged again under the new rules.
        let mut rev = self.revision();
        if changed {
            rev = rev.wrapping_add(1);
            self.revision
                .set(0, rev, 0)
                .context("bump the policy revision")?;
        }
        stats.revision = rev;
        self.last = stats;
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Direction, IpBlock, ObjectRef, RuleRef};

    fn allow(peer: Peer, ports: Ports) -> Allow {
        Allow {
            rule: RuleRef {
                policy: ObjectRef::new("x", "p"),
                direction: Direction::Ingress,
                index: 0,
            },
            peer,
            ports,
        }
    }

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn tcp(first: u16, last: u16) -> Ports {
        Ports::Range {
            proto: Proto::Tcp,
            first,
            last,
        }
    }

    /// Test that overlapping and adjacent ranges coalesce and disjoint ones stay apart.
    #[test]
    fn ranges_coalesce() {
        assert_eq!(
            coalesce(vec![(80, 80), (81, 90), (85, 100), (200, 200), (1, 1)]),
            vec![(1, 1), (80, 100), (200, 200)]
        );
    }

    /// Test that an ipBlock with an except becomes the CIDR with its ports and the except with
    /// none, and that a pod inside the except that another rule allows gets only that rule's
    /// ports: each trie entry is exactly what applies to the addresses it is the longest
    /// match for.
    #[test]
    fn except_and_pod_entries_hold_the_union_of_their_containers() {
        let block = Peer::Block(IpBlock::new(
            "10.0.0.0/8".parse().unwrap(),
            ["10.1.0.0/16".parse().unwrap()],
        ));
        let pod = Peer::Pod {
            pod: ObjectRef::new("y", "b"),
            addrs: ["10.1.2.3".parse().unwrap()].into(),
        };
        let out: BTreeMap<(u8, Ipv4Network), Vec<(u16, u16)>> = entries_for(&[
            allow(block, tcp(80, 80)),
            allow(pod, tcp(443, 443)),
            allow(Peer::Any, tcp(53, 53)),
        ])
        .into_iter()
        .collect();
        assert_eq!(out[&(6, net("0.0.0.0/0"))], vec![(53, 53)]);
        assert_eq!(out[&(6, net("10.0.0.0/8"))], vec![(53, 53), (80, 80)]);
        assert_eq!(out[&(6, net("10.1.0.0/16"))], vec![(53, 53)]);
        assert_eq!(out[&(6, net("10.1.2.3/32"))], vec![(53, 53), (443, 443)]);
        assert_eq!(out.len(), 4);
    }

    /// Test that a rule without ports goes under the any-protocol key with every port.
    #[test]
    fn all_ports_rule_goes_under_any_protocol() {
        let out = entries_for(&[allow(Peer::Any, Ports::All)]);
        assert_eq!(
            out,
            vec![((policy::PROTO_ANY, net("0.0.0.0/0")), vec![(0, u16::MAX)])]
        );
    }
}
