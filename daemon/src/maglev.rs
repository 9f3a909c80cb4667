//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016, §3.4): a lookup table of `M` entries (M prime) filled by each
//! backend in turn following its own permutation of the table, so every backend owns ⌊M/N⌋ or
//! ⌈M/N⌉ entries and removing one backend moves little more than the entries it owned.
//!
//! The table is computed here and written to `SL_MAGLEV_V1`; the datapath only indexes it.
//! Backends are identified by name (address and port), so every node computes the same table
//! for the same backend set whatever order the backends arrive in.

/// 64-bit FNV-1a of `bytes` from `seed` (the offset basis for seed 0).
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV's low bits mix poorly for short inputs; one round of a 64-bit finaliser
    // (MurmurHash3's fmix64) spreads them.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// The Maglev table of size `m` (a prime) for `names`: entry `i` is the index into `names` of
/// the backend that owns it. Empty when there are no backends.
pub fn table(names: &[String], m: usize) -> Vec<usize> {
    let n = names.len();
    if n == 0 || m == 0 {
        return Vec::new();
    }
    // Backends take turns in name order, so the table does not depend on the order given.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|a, b| names[*a].cmp(&names[*b]));
    let perm: Vec<(usize, usize)> = order
        .iter()
        .map(|i| &names[*i])
        .map(|name| {
            let offset = (fnv1a(0x5eed_0001, name.as_bytes()) % m as u64) as usize;
            let skip = (fnv1a(0x5eed_0002, name.as_bytes()) % (m as u64 - 1)) as usize + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0usize; n];
    let mut entry = vec![usize::MAX; m];
    let mut filled = 0;
    'fill: loop {
        for i in 0..n {
            let (offset, skip) = perm[i];
            let mut c = (offset + next[i] * skip) % m;
            while entry[c] != usize::MAX {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            entry[c] = order[i];
            next[i] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.244.1.{}:8080", i + 2)).collect()
    }

    /// Test that every entry is owned and each backend owns ⌊M/N⌋ or ⌈M/N⌉ entries, as the
    /// turn-by-turn population of the paper guarantees.
    #[test]
    fn table_is_balanced() {
        for n in [1, 2, 3, 7, 10, 100] {
            let t = table(&names(n), 1021);
            assert_eq!(t.len(), 1021);
            let mut counts = vec![0usize; n];
            for e in &t {
                counts[*e] += 1;
            }
            let (lo, hi) = (1021 / n, 1021_usize.div_ceil(n));
            assert!(
                counts.iter().all(|c| *c == lo || *c == hi),
                "n={n}: counts {counts:?} not all in {lo}..={hi}"
            );
        }
    }

    /// Test that removing one backend of ten keeps most entries of the others where they were
    /// (the paper's minimal disruption: only the removed backend's share, plus a little, moves).
    #[test]
    fn removal_moves_little() {
        let all = names(10);
        let before = table(&all, 1021);
        let rest: Vec<String> = all[..9].to_vec();
        let after = table(&rest, 1021);
        let kept = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != 9 && all[**b] == rest[**a])
            .count();
        let owned_by_survivors = before.iter().filter(|b| **b != 9).count();
        // Entries of surviving backends that stay with the same backend.
        assert!(
            kept * 100 >= owned_by_survivors * 85,
            "only {kept} of {owned_by_survivors} entries stayed"
        );
    }

    /// Test that the table depends on the backends' names, not their order.
    #[test]
    fn order_independent_by_name() {
        let a = names(5);
        let mut b = a.clone();
        b.reverse();
        let ta: Vec<&String> = table(&a, 1021).iter().map(|i| &a[*i]).collect();
        let tb: Vec<&String> = table(&b, 1021).iter().map(|i| &b[*i]).collect();
        assert_eq!(ta, tb);
        assert!(table(&[], 1021).is_empty());
    }
}
