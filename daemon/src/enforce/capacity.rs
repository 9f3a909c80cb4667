//! Room in the rule map (`SL_POL_V1`, `policy::MAX_ENTRIES` entries): what to leave out when
//! the wanted rules do not fit (whole endpoints, fail closed), and what to clear first when
//! the old and the new rules do not fit side by side while the map changes over.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use anyhow::Context as _;
use aya::maps::lpm_trie::Key;
use datapath_common::{addr::IpKey, policy};

use super::{PolicyMaps, RuleKey};

/// The subject of a rule key for an address (IPv4 only: IPv6 is not enforced yet).
pub(super) fn policy_key_addr(a: &IpAddr) -> Option<[u8; 16]> {
    match a {
        IpAddr::V4(v4) => Some(IpKey::v4(v4.octets()).addr),
        IpAddr::V6(_) => None,
    }
}

/// The subjects to take out so that `held` entries come down to `capacity`, when taking out a
/// subject saves its count: the largest counts first (they are the ones that need so much),
/// ties by address; none when `held` already fits.
fn largest_until_fits(
    counts: BTreeMap<[u8; 16], usize>,
    mut held: usize,
    capacity: usize,
) -> Vec<[u8; 16]> {
    let mut order: Vec<([u8; 16], usize)> = counts.into_iter().collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut out = Vec::new();
    for (subject, n) in order {
        if held <= capacity {
            break;
        }
        held -= n;
        out.push(subject);
    }
    out
}

/// Leaves out of `want` every entry of the subjects that must go so the rest fits in
/// `capacity` entries (see [`largest_until_fits`]). Returns the subjects left out (their
/// addresses); with no entry, an isolated direction of theirs denies everything but their
/// node (fail closed, never open).
pub(super) fn fit(
    want: &mut HashMap<RuleKey, policy::RuleValue>,
    capacity: usize,
) -> Vec<[u8; 16]> {
    if want.len() <= capacity {
        return Vec::new();
    }
    let mut per_subject: BTreeMap<[u8; 16], usize> = BTreeMap::new();
    for (_, data) in want.keys() {
        *per_subject.entry(data.subject.addr).or_default() += 1;
    }
    let out = largest_until_fits(per_subject, want.len(), capacity);
    want.retain(|(_, d), _| !out.contains(&d.subject.addr));
    out
}

/// The subjects whose programmed entries to clear before writing `want`, so that the map never
/// has to hold more than `capacity` entries on the way (old and new side by side): none when
/// both fit, else subjects whose entries change, most room freed first. Clearing a subject
/// removes its entries shortest prefix first, so each removal only denies more (an address
/// whose entry goes falls back to a shorter prefix, already gone): for that moment the subject
/// is more closed than both the old and the new policy.
fn subjects_to_clear(
    programmed: &HashMap<RuleKey, policy::RuleValue>,
    want: &HashMap<RuleKey, policy::RuleValue>,
    capacity: usize,
) -> Vec<[u8; 16]> {
    let new = want.keys().filter(|k| !programmed.contains_key(k)).count();
    if programmed.len() + new <= capacity {
        return Vec::new();
    }
    // Room freed by clearing a subject: its old entries the new policy does not keep.
    let mut freed: BTreeMap<[u8; 16], usize> = BTreeMap::new();
    for k in programmed.keys().filter(|k| !want.contains_key(k)) {
        *freed.entry(k.1.subject.addr).or_default() += 1;
    }
    largest_until_fits(freed, programmed.len() + new, capacity)
}

/// The programmed entries of `subjects`, in the order that only ever denies more: shortest
/// prefix first.
fn clear_order(
    programmed: &HashMap<RuleKey, policy::RuleValue>,
    subjects: &[[u8; 16]],
) -> Vec<RuleKey> {
    let mut keys: Vec<RuleKey> = programmed
        .keys()
        .filter(|k| subjects.contains(&k.1.subject.addr))
        .copied()
        .collect();
    keys.sort_by_key(|k| (k.0, k.1.peer.addr));
    keys
}

impl PolicyMaps {
    /// Clears the subjects [`subjects_to_clear`] names; returns whether anything was removed.
    pub(super) fn make_room(
        &mut self,
        want: &HashMap<RuleKey, policy::RuleValue>,
    ) -> anyhow::Result<bool> {
        let clear = subjects_to_clear(&self.programmed, want, self.capacity);
        if clear.is_empty() {
            return Ok(false);
        }
        let keys = clear_order(&self.programmed, &clear);
        tracing::info!(
            subjects = clear.len(),
            entries = keys.len(),
            "rule map too full to hold the old and new rules side by side: clearing the pods \
             whose rules change first (they deny until rewritten)"
        );
        for k in keys {
            datapath_user::absent_is_ok(self.rules.remove(&Key::new(k.0, k.1)))
                .context("clear a policy rule")?;
            self.programmed.remove(&k);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 4] = [10, 244, 1, 1];
    const B: [u8; 4] = [10, 244, 1, 2];
    const C: [u8; 4] = [10, 244, 1, 3];

    fn key(subject: [u8; 4], peer: [u8; 4], prefix: u32) -> RuleKey {
        (
            policy::fixed_bits() + prefix,
            policy::RuleData::v4(subject, policy::DIR_INGRESS, 6, peer),
        )
    }

    fn value() -> policy::RuleValue {
        policy::RuleValue {
            count: 1,
            ranges: [policy::PortRange { lo: 80, hi: 80 }; policy::MAX_RANGES],
        }
    }

    /// `n` entries of `subject`, peers 10.0.0.<first>…
    fn entries(subject: [u8; 4], first: u8, n: u8) -> Vec<(RuleKey, policy::RuleValue)> {
        (first..first + n)
            .map(|i| (key(subject, [10, 0, 0, i], 32), value()))
            .collect()
    }

    fn map(parts: &[Vec<(RuleKey, policy::RuleValue)>]) -> HashMap<RuleKey, policy::RuleValue> {
        parts.iter().flatten().copied().collect()
    }

    fn subjects(want: &HashMap<RuleKey, policy::RuleValue>) -> Vec<[u8; 16]> {
        let mut s: Vec<[u8; 16]> = want.keys().map(|k| k.1.subject.addr).collect();
        s.sort();
        s.dedup();
        s
    }

    /// Test that rules that fit are all kept, and that when they do not, whole endpoints are
    /// left out, the largest first, until the rest fits: never part of an endpoint's rules
    /// (which could leave an `except` out and open what it excepts).
    #[test]
    fn fit_leaves_out_whole_endpoints_largest_first() {
        let all = map(&[entries(A, 0, 5), entries(B, 0, 3), entries(C, 0, 2)]);
        let mut want = all.clone();
        assert!(fit(&mut want, 10).is_empty());
        assert_eq!(want, all);

        let mut want = all.clone();
        assert_eq!(fit(&mut want, 6), vec![IpKey::v4(A).addr]);
        assert_eq!(want.len(), 5);
        assert_eq!(subjects(&want), vec![IpKey::v4(B).addr, IpKey::v4(C).addr]);

        let mut want = all.clone();
        assert_eq!(
            fit(&mut want, 4),
            vec![IpKey::v4(A).addr, IpKey::v4(B).addr]
        );
        assert_eq!(subjects(&want), vec![IpKey::v4(C).addr]);

        let mut want = all;
        assert_eq!(fit(&mut want, 0).len(), 3);
        assert!(want.is_empty());
    }

    /// Test that nothing is cleared while old and new rules fit side by side, and that
    /// otherwise the endpoints whose rules change are cleared, most room freed first, until
    /// the change-over fits; an endpoint whose rules stay is never cleared.
    #[test]
    fn change_over_clears_changing_endpoints_only_when_needed() {
        // A's four rules are replaced by four others; B's two stay; C's three go away.
        let programmed = map(&[entries(A, 0, 4), entries(B, 0, 2), entries(C, 0, 3)]);
        let want = map(&[entries(A, 100, 4), entries(B, 0, 2)]);
        // Held on the way: 9 programmed + 4 new = 13.
        assert!(subjects_to_clear(&programmed, &want, 13).is_empty());
        assert_eq!(
            subjects_to_clear(&programmed, &want, 12),
            vec![IpKey::v4(A).addr]
        );
        assert_eq!(
            subjects_to_clear(&programmed, &want, 6),
            vec![IpKey::v4(A).addr, IpKey::v4(C).addr]
        );
    }

    /// Test that an endpoint's entries are cleared shortest prefix first, so that an address
    /// whose entry goes never falls back to a broader entry still there (an `except` must
    /// not go before the block it is cut from).
    #[test]
    fn clearing_goes_shortest_prefix_first() {
        let block = (key(A, [10, 0, 0, 0], 8), value());
        let except = (key(A, [10, 1, 0, 0], 16), value());
        let pod = (key(A, [10, 1, 2, 3], 32), value());
        let any = (key(A, [0, 0, 0, 0], 0), value());
        let other = (key(B, [0, 0, 0, 0], 0), value());
        let programmed = map(&[vec![pod, except, block, any, other]]);
        let order = clear_order(&programmed, &[IpKey::v4(A).addr]);
        assert_eq!(order, vec![any.0, block.0, except.0, pod.0]);
    }
}
