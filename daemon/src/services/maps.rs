//! Programs the service maps (`SL_SVC_V1`, `SL_BE_V1`, `SL_MAGLEV_V1`) from the frontends
//! [`crate::services`] compiles, writing only what changed.
//!
//! Each frontend keeps a stable id for its life (its counters, affinity entries and Maglev table
//! hang off it); ids and backend slots are recovered from the pinned maps when the agent
//! starts, so a restart rewrites nothing. Backends keep their slot while they stay (a ClientIP
//! affinity entry remembers its slot); a backend that leaves is replaced in place by a new one
//! or by the last slot's backend. Writes are ordered so the datapath never reads a slot outside
//! the old or the new set: new slots, then the count, then the slots past the new count.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::Path;

use anyhow::Context as _;
use aya::maps::{HashMap as BpfHash, Map, MapData, PerCpuArray, PerCpuValues};
use datapath_common::{metrics, svc};

use crate::maglev;
use crate::services::{Frontend, Proto, Scope};

/// One programmed frontend: its map value and backends in slot order (slot = index + 1).
#[derive(Debug, Clone, PartialEq)]
struct Programmed {
    value: svc::Value,
    slots: Vec<svc::Backend>,
}

/// What one [`ServiceMaps::sync`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncStats {
    pub frontends: usize,
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    /// Frontends left out (IPv6, SCTP, duplicates, too many backends), logged.
    pub skipped: usize,
}

/// The service maps of one bpffs and what is programmed in them.
pub struct ServiceMaps {
    frontends: BpfHash<MapData, svc::Key, svc::Value>,
    backends: BpfHash<MapData, svc::BackendKey, svc::Backend>,
    maglev: BpfHash<MapData, u32, [u16; svc::MAGLEV_M]>,
    counters: PerCpuArray<MapData, metrics::Counter>,
    programmed: HashMap<svc::Key, Programmed>,
    used_ids: BTreeSet<u32>,
}

fn open_map(bpffs: &Path, name: &str) -> anyhow::Result<MapData> {
    Ok(crate::pins::open(bpffs, name)?)
}

/// The datapath's protocol number, or `None` for what it does not balance (SCTP).
fn proto_number(p: Proto) -> Option<u8> {
    match p {
        Proto::Tcp => Some(6),
        Proto::Udp => Some(17),
        Proto::Sctp => None,
    }
}

/// The map key of a frontend, `None` for what the datapath does not handle yet.
pub fn key_of(f: &Frontend) -> Option<svc::Key> {
    let IpAddr::V4(a) = f.addr else { return None };
    let scope = match f.scope {
        Scope::Internal => svc::SCOPE_INTERNAL,
        Scope::External => svc::SCOPE_EXTERNAL,
    };
    Some(svc::Key::v4(
        a.octets(),
        f.port.to_be(),
        proto_number(f.proto)?,
        scope,
    ))
}

fn backend_name(b: &svc::Backend) -> String {
    format!("{:?}:{}", b.addr.addr, u16::from_be(b.port))
}

/// Slot order for `want` given the `old` slots: a backend that stays keeps its slot when it
/// fits in the new count; the holes take new backends, then backends from past the new end.
fn assign_slots(old: &[svc::Backend], want: &[svc::Backend]) -> Vec<svc::Backend> {
    let wanted: BTreeSet<_> = want.iter().map(backend_name).collect();
    let mut out: Vec<Option<svc::Backend>> = vec![None; want.len()];
    let mut placed = BTreeSet::new();
    for (i, b) in old.iter().enumerate().take(want.len()) {
        let n = backend_name(b);
        if wanted.contains(&n) && placed.insert(n) {
            out[i] = Some(*b);
        }
    }
    let mut rest = want.iter().filter(|b| !placed.contains(&backend_name(b)));
    out.into_iter()
        .map(|s| s.or_else(|| rest.next().copied()))
        .collect::<Option<Vec<_>>>()
        .unwrap_or_else(|| want.to_vec())
}

impl ServiceMaps {
    /// Opens the pinned maps and reads back what an earlier agent programmed.
    pub fn open(bpffs: &Path) -> anyhow::Result<Self> {
        let frontends: BpfHash<MapData, svc::Key, svc::Value> =
            BpfHash::try_from(Map::HashMap(open_map(bpffs, svc::MAP_NAME)?))?;
        let backends: BpfHash<MapData, svc::BackendKey, svc::Backend> =
            BpfHash::try_from(Map::HashMap(open_map(bpffs, svc::BACKEND_MAP_NAME)?))?;
        let maglev = BpfHash::try_from(Map::HashMap(open_map(bpffs, svc::MAGLEV_MAP_NAME)?))?;
        let counters =
            PerCpuArray::try_from(Map::PerCpuArray(open_map(bpffs, svc::COUNTER_MAP_NAME)?))?;
        let mut programmed = HashMap::new();
        let mut used_ids = BTreeSet::new();
        for entry in frontends.iter() {
            let (k, v) = entry.context("read the frontend map")?;
            let slots = (1..=v.count)
                .filter_map(|slot| backends.get(&svc::BackendKey { id: v.id, slot }, 0).ok())
                .collect();
            used_ids.insert(v.id);
            programmed.insert(k, Programmed { value: v, slots });
        }
        Ok(Self {
            frontends,
            backends,
            maglev,
            counters,
            programmed,
            used_ids,
        })
    }

    /// How many frontends are programmed.
    pub fn len(&self) -> usize {
        self.programmed.len()
    }

    /// Whether no frontend is programmed.
    pub fn is_empty(&self) -> bool {
        self.programmed.is_empty()
    }

    /// The id a frontend is programmed under.
    pub fn id_of(&self, f: &Frontend) -> Option<u32> {
        key_of(f)
            .and_then(|k| self.programmed.get(&k))
            .map(|p| p.value.id)
    }

    /// Connections (socket hooks) plus packets (TC) counted for service `id`, all CPUs.
    pub fn counter(&self, id: u32) -> u64 {
        self.counters
            .get(&id, 0)
            .map(|v: PerCpuValues<metrics::Counter>| v.iter().map(|c| c.packets).sum())
            .unwrap_or(0)
    }

    fn allocate_id(&mut self) -> anyhow::Result<u32> {
        // Smallest free id; ids are few and dense.
        let mut id = 1;
        for used in &self.used_ids {
            if *used != id {
                break;
            }
            id += 1;
        }
        anyhow::ensure!(
            id < svc::MAX_IDS,
            "no free service id (at most {})",
            svc::MAX_IDS - 1
        );
        self.used_ids.insert(id);
        // A recycled id starts from zero.
        let zero = PerCpuValues::try_from(vec![
            metrics::Counter::default();
            aya::util::nr_cpus().map_err(|(_, e)| e)?
        ])?;
        self.counters
            .set(id, zero, 0)
            .context("reset a service counter")?;
        Ok(id)
    }

    /// Makes the maps hold exactly `want`.
    pub fn sync(&mut self, want: &[Frontend], default_flags: u32) -> anyhow::Result<SyncStats> {
        let mut stats = SyncStats::default();
        let mut desired: BTreeMap<svc::Key, &Frontend> = BTreeMap::new();
        for f in want {
            let Some(k) = key_of(f) else {
                stats.skipped += 1;
                tracing::debug!(service = %format!("{}/{}", f.namespace, f.service), addr = %f.addr, "frontend not handled by the datapath (IPv6 or SCTP)");
                continue;
            };
            if f.backends.len() > svc::MAX_BACKENDS as usize {
                stats.skipped += 1;
                tracing::warn!(service = %format!("{}/{}", f.namespace, f.service), backends = f.backends.len(), "too many backends, frontend left out");
                continue;
            }
            if desired.insert(k, f).is_some() {
                stats.skipped += 1;
                tracing::warn!(service = %format!("{}/{}", f.namespace, f.service), addr = %f.addr, port = f.port, "two services claim the same frontend; keeping one");
            }
        }
        let gone: Vec<svc::Key> = self
            .programmed
            .keys()
            .filter(|k| !desired.contains_key(k))
            .copied()
            .collect();
        for k in gone {
            self.remove(&k)?;
            stats.removed += 1;
        }
        for (k, f) in desired {
            let want_slots: Vec<svc::Backend> = f
                .backends
                .iter()
                .filter_map(|b| match b.addr {
                    IpAddr::V4(a) => Some(svc::Backend::v4(a.octets(), b.port.to_be())),
                    IpAddr::V6(_) => None,
                })
                .collect();
            let mut flags = default_flags;
            if f.affinity_timeout.is_some() {
                flags |= svc::FLAG_AFFINITY;
            }
            if f.maglev {
                flags |= svc::FLAG_MAGLEV;
            }
            if f.snat {
                flags |= svc::FLAG_SNAT;
            }
            let old = self.programmed.get(&k).cloned();
            let (id, old_slots) = match &old {
                Some(p) => (p.value.id, p.slots.clone()),
                None => (self.allocate_id()?, Vec::new()),
            };
            let slots = assign_slots(&old_slots, &want_slots);
            let value = svc::Value {
                id,
                count: slots.len() as u32,
                flags,
                affinity_timeout: f.affinity_timeout.unwrap_or(0),
            };
            let next = Programmed { value, slots };
            if old.as_ref() == Some(&next) {
                continue;
            }
            self.write(&k, old.as_ref(), &next)?;
            if old.is_some() {
                stats.updated += 1;
            } else {
                stats.added += 1;
            }
            self.programmed.insert(k, next);
        }
        stats.frontends = self.programmed.len();
        Ok(stats)
    }

    fn write(
        &mut self,
        k: &svc::Key,
        old: Option<&Programmed>,
        next: &Programmed,
    ) -> anyhow::Result<()> {
        let id = next.value.id;
        let old_slots = old.map(|p| p.slots.as_slice()).unwrap_or(&[]);
        for (i, b) in next.slots.iter().enumerate() {
            if old_slots.get(i) != Some(b) {
                let key = svc::BackendKey {
                    id,
                    slot: i as u32 + 1,
                };
                self.backends
                    .insert(key, *b, 0)
                    .with_context(|| format!("write backend slot {} of service id {id}", i + 1))?;
            }
        }
        if next.value.flags & svc::FLAG_MAGLEV != 0 && !next.slots.is_empty() {
            let names: Vec<String> = next.slots.iter().map(backend_name).collect();
            let t = maglev::table(&names, svc::MAGLEV_M);
            let mut arr = [0u16; svc::MAGLEV_M];
            for (e, owner) in arr.iter_mut().zip(t) {
                *e = owner as u16 + 1;
            }
            self.maglev
                .insert(id, arr, 0)
                .with_context(|| format!("write the Maglev table of service id {id}"))?;
        } else if old.is_some_and(|p| p.value.flags & svc::FLAG_MAGLEV != 0) {
            datapath_user::absent_is_ok(self.maglev.remove(&id))
                .context("remove a Maglev table")?;
        }
        self.frontends
            .insert(k, next.value, 0)
            .with_context(|| format!("write frontend of service id {id}"))?;
        for slot in next.slots.len() + 1..=old_slots.len() {
            let key = svc::BackendKey {
                id,
                slot: slot as u32,
            };
            datapath_user::absent_is_ok(self.backends.remove(&key))
                .context("remove a backend slot")?;
        }
        Ok(())
    }

    fn remove(&mut self, k: &svc::Key) -> anyhow::Result<()> {
        let Some(p) = self.programmed.remove(k) else {
            return Ok(());
        };
        // The frontend first: from then on no program reads its slots.
        datapath_user::absent_is_ok(self.frontends.remove(k)).context("remove a frontend")?;
        for slot in 1..=p.slots.len() as u32 {
            let key = svc::BackendKey {
                id: p.value.id,
                slot,
            };
            datapath_user::absent_is_ok(self.backends.remove(&key))
                .context("remove a backend slot")?;
        }
        datapath_user::absent_is_ok(self.maglev.remove(&p.value.id))
            .context("remove a Maglev table")?;
        self.used_ids.remove(&p.value.id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be(last: u8) -> svc::Backend {
        svc::Backend::v4([10, 0, 0, last], 80u16.to_be())
    }

    /// Test that backends that stay keep their slots, new ones fill the holes, and a backend
    /// from past the new end moves into a hole.
    #[test]
    fn slots_are_kept() {
        assert_eq!(assign_slots(&[], &[be(1), be(2)]), vec![be(1), be(2)]);
        // 2 leaves, 4 arrives: 4 takes slot 2.
        assert_eq!(
            assign_slots(&[be(1), be(2), be(3)], &[be(1), be(3), be(4)]),
            vec![be(1), be(4), be(3)]
        );
        // 1 leaves and the set shrinks: 3 (slot 3) moves into slot 1.
        assert_eq!(
            assign_slots(&[be(1), be(2), be(3)], &[be(2), be(3)]),
            vec![be(3), be(2)]
        );
        assert_eq!(assign_slots(&[be(1)], &[]), vec![]);
    }
}
