//! What the datapath does with one connection, read back from the maps it reads (the pinned
//! rule trie, the endpoints' isolation flags) and judged with the one verdict function TC,
//! sockops and the agent share (`datapath_common::policy::judge`), and why it fails closed
//! where it does: `sluicectl policy trace` reports this, next to what the policies say.

use std::collections::{BTreeSet, HashSet};
use std::net::Ipv4Addr;

use aya::maps::lpm_trie::Key;
use datapath_common::{addr::IpKey, metrics, policy};
use datapath_user as user;

use super::{PolicyMaps, RuleKey};

/// The datapath's verdict on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatapathVerdict {
    /// `None` when allowed, else the drop reason (`metrics::DROP_POLICY_*`).
    pub drop: Option<u32>,
    /// The policy revision the maps are at.
    pub revision: u32,
    /// Why a denied connection fails closed, when it does (rules that did not fit).
    pub failed_closed: Option<&'static str>,
}

impl DatapathVerdict {
    /// The drop reason's name (`drop:policy-ingress`), if denied.
    pub fn reason(&self) -> Option<&'static str> {
        let d = self.drop?;
        metrics::NAMES
            .iter()
            .find(|(r, _)| *r == d)
            .map(|(_, name)| *name)
    }
}

/// What [`PolicyMaps::sync`] left out of the trie, for [`PolicyMaps::judge`] to explain.
#[derive(Debug, Default)]
pub(super) struct FailedClosed {
    /// Subjects (endpoint addresses) programmed with no entry: the rule map was full.
    pub(super) endpoints: BTreeSet<[u8; 16]>,
    /// Entries written empty: they needed more than `MAX_RANGES` port ranges.
    pub(super) entries: HashSet<RuleKey>,
}

/// Whether rule key `k` is for (`subject`, `dir`, `proto`) and its peer prefix holds `peer`.
fn key_holds(k: &RuleKey, subject: &IpKey, dir: u8, proto: u8, peer: [u8; 4]) -> bool {
    let (len, d) = k;
    if d.subject.addr != subject.addr || d.dir != dir || d.proto != proto {
        return false;
    }
    if d.peer.family != datapath_common::addr::FAMILY_V4 {
        return false;
    }
    let bits = len.saturating_sub(policy::fixed_bits()).min(32);
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    let net = u32::from_be_bytes([
        d.peer.addr[0],
        d.peer.addr[1],
        d.peer.addr[2],
        d.peer.addr[3],
    ]);
    net & mask == u32::from_be_bytes(peer) & mask
}

impl PolicyMaps {
    /// The datapath's verdict on `c`, as the TC programs reach it: the flags of the endpoint
    /// map and the pinned trie (not what this agent meant to write), with `policy::judge`.
    pub fn judge(
        &self,
        saddr: Ipv4Addr,
        daddr: Ipv4Addr,
        proto: u8,
        dport: u16,
        node: Ipv4Addr,
    ) -> anyhow::Result<DatapathVerdict> {
        let mut sflags = 0;
        let mut dflags = 0;
        for rec in user::Endpoints::open(&self.bpffs)?.list()? {
            if rec.addr == saddr {
                sflags = rec.value.flags;
            }
            if rec.addr == daddr {
                dflags = rec.value.flags;
            }
        }
        let c = policy::Conn {
            saddr: saddr.octets(),
            daddr: daddr.octets(),
            proto,
            dport,
            sflags,
            dflags,
        };
        let allows = |d: &policy::RuleData, port: u16| {
            let key = Key::new(policy::fixed_bits() + 32, *d);
            self.rules.get(&key, 0).is_ok_and(|v| v.allows(port))
        };
        let drop = policy::judge(&c, node.octets(), &allows);
        let failed_closed = drop.and_then(|d| {
            let (dir, subject, peer) = if d == metrics::DROP_POLICY_EGRESS {
                (policy::DIR_EGRESS, c.saddr, c.daddr)
            } else {
                (policy::DIR_INGRESS, c.daddr, c.saddr)
            };
            self.why_failed_closed(subject, dir, proto, peer)
        });
        Ok(DatapathVerdict {
            drop,
            revision: self.revision(),
            failed_closed,
        })
    }

    /// Why `subject`'s rules in `dir` deny `peer` on `proto` without the policies meaning it:
    /// the endpoint was left out of a full rule map, or the entry the trie answers with (the
    /// longest prefix holding `peer`, for the protocol and for any protocol) was written empty.
    fn why_failed_closed(
        &self,
        subject: [u8; 4],
        dir: u8,
        proto: u8,
        peer: [u8; 4],
    ) -> Option<&'static str> {
        let subject = IpKey::v4(subject);
        if self.failed_closed.endpoints.contains(&subject.addr) {
            return Some("endpoint failed closed (rule map full)");
        }
        let longest = |proto: u8| {
            self.programmed
                .keys()
                .filter(|k| key_holds(k, &subject, dir, proto, peer))
                .max_by_key(|k| k.0)
        };
        [proto, policy::PROTO_ANY]
            .into_iter()
            .filter_map(longest)
            .any(|k| self.failed_closed.entries.contains(k))
            .then_some("peer failed closed (its rules need more port ranges than an entry holds)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(subject: [u8; 4], proto: u8, peer: [u8; 4], prefix: u32) -> RuleKey {
        (
            policy::fixed_bits() + prefix,
            policy::RuleData::v4(subject, policy::DIR_INGRESS, proto, peer),
        )
    }

    /// Test that a rule key holds a peer exactly when subject, direction and protocol are its
    /// own and the peer is inside its prefix (as the trie's longest-prefix match reads it).
    #[test]
    fn key_holds_peers_inside_its_prefix_only() {
        let s = IpKey::v4([10, 244, 1, 2]);
        let k = key([10, 244, 1, 2], 6, [10, 1, 0, 0], 16);
        let holds = |k: &RuleKey, proto, peer| key_holds(k, &s, policy::DIR_INGRESS, proto, peer);
        assert!(holds(&k, 6, [10, 1, 200, 3]));
        assert!(!holds(&k, 6, [10, 2, 0, 1]), "outside the /16");
        assert!(!holds(&k, 17, [10, 1, 0, 1]), "another protocol");
        assert!(!key_holds(&k, &s, policy::DIR_EGRESS, 6, [10, 1, 0, 1]));
        assert!(!key_holds(
            &k,
            &IpKey::v4([10, 244, 1, 3]),
            policy::DIR_INGRESS,
            6,
            [10, 1, 0, 1]
        ));
        let any = key([10, 244, 1, 2], 6, [0, 0, 0, 0], 0);
        assert!(holds(&any, 6, [192, 0, 2, 1]), "/0 holds every address");
        let one = key([10, 244, 1, 2], 6, [10, 1, 0, 1], 32);
        assert!(holds(&one, 6, [10, 1, 0, 1]));
        assert!(!holds(&one, 6, [10, 1, 0, 2]));
    }
}
