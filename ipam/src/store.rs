//! [`Store`]: the allocation API over one network's store directory. It validates the
//! configured ranges, matches requested addresses to ranges, picks the next sequential free
//! address per range, and makes each operation atomic under the directory's `flock(2)`:
//! writers (allocate, release, gc) take it exclusive, readers (get, list, free_count) shared.
//! Readers and `release` never create the directory; only `allocate` does.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;

use crate::disk::{self, Entry, Lock};
use crate::range::Range;
use crate::{Allocation, Attachment, Error, Owner};

/// A file-backed address store for one network. Cheap to open; every method is one atomic
/// operation, and any number of `Store`s (threads or processes) may share a directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    ranges: Vec<Range>,
    /// Allocatable addresses per range: usable minus reserved.
    allocatable: Vec<u128>,
    reserved: BTreeSet<IpAddr>,
}

/// An address this call picked for one range.
struct Picked {
    addr: IpAddr,
    range: usize,
    /// Picked by the sequential cursor (not requested), so the cursor moves to it.
    sequential: bool,
}

impl Store {
    /// Opens the store in `dir` for `ranges`, skipping `reserved` addresses. Fails with
    /// [`Error::InvalidRanges`] if the list is empty, two ranges overlap, or a range has no
    /// allocatable address. The directory is not created here (see [`Store::allocate`]); if it
    /// exists, temp files left by crashed writers are removed.
    pub fn open(
        dir: impl Into<PathBuf>,
        ranges: Vec<IpNetwork>,
        reserved: Vec<IpAddr>,
    ) -> Result<Store, Error> {
        let dir = dir.into();
        if ranges.is_empty() {
            return Err(Error::InvalidRanges {
                reason: "no range configured".to_string(),
            });
        }
        let ranges: Vec<Range> = ranges.into_iter().map(Range::new).collect();
        for (i, a) in ranges.iter().enumerate() {
            if let Some(b) = ranges[..i].iter().find(|b| b.overlaps(a)) {
                return Err(Error::InvalidRanges {
                    reason: format!("{} overlaps {}", a.network(), b.network()),
                });
            }
        }
        let reserved: BTreeSet<IpAddr> = reserved.into_iter().collect();
        let mut allocatable = Vec::with_capacity(ranges.len());
        for r in &ranges {
            let held = reserved.iter().filter(|a| r.is_usable(**a)).count() as u128;
            let n = r.usable_count() - held;
            if n == 0 {
                return Err(Error::InvalidRanges {
                    reason: format!(
                        "{} has no allocatable address left after reserved ones",
                        r.network()
                    ),
                });
            }
            allocatable.push(n);
        }
        let store = Store {
            dir,
            ranges,
            allocatable,
            reserved,
        };
        store.remove_leftover_temps()?;
        Ok(store)
    }

    /// Opens the store in `dir` without ranges, for what needs only the allocation files:
    /// [`Store::release`], [`Store::get`], [`Store::list`] and [`Store::gc`] (CNI DEL must
    /// work whatever the configured ranges are, even none). [`Store::allocate`] fails.
    pub fn open_unranged(dir: impl Into<PathBuf>) -> Result<Store, Error> {
        let store = Store {
            dir: dir.into(),
            ranges: Vec::new(),
            allocatable: Vec::new(),
            reserved: BTreeSet::new(),
        };
        store.remove_leftover_temps()?;
        Ok(store)
    }

    /// Allocates one address per range to `owner`. `requested` lists addresses the caller wants
    /// (at most one per range, each usable and free); the other ranges get the next free
    /// address after the last one handed out, wrapping around. Creates the directory (0700)
    /// if needed. On any error nothing allocated by this call stays allocated.
    pub fn allocate(&self, owner: &Owner, requested: &[IpAddr]) -> Result<Vec<Allocation>, Error> {
        if self.ranges.is_empty() {
            return Err(Error::InvalidRanges {
                reason: "no range configured".to_string(),
            });
        }
        let wanted = self.match_requests(requested)?;
        disk::ensure_dir(&self.dir)?;
        let lock = disk::lock(&self.dir, true)?;
        let entries = disk::scan(&self.dir, &lock)?;
        if let Some(e) = entries
            .iter()
            .find(|e| owned_by(e, &owner.container_id, &owner.ifname))
        {
            return Err(Error::AlreadyAllocated {
                container_id: owner.container_id.clone(),
                ifname: owner.ifname.clone(),
                addr: e.addr,
            });
        }
        let mut taken: HashSet<IpAddr> = entries.iter().map(|e| e.addr).collect();
        let mut picked = Vec::with_capacity(self.ranges.len());
        match self.allocate_locked(&lock, owner, &wanted, &mut taken, &mut picked) {
            Ok(()) => Ok(picked
                .iter()
                .map(|p| Allocation {
                    addr: p.addr,
                    network: self.ranges[p.range].network(),
                    owner: owner.clone(),
                })
                .collect()),
            Err(e) => {
                // Best effort: an address that cannot be removed now still names its owner,
                // so the runtime's DEL after this failed ADD releases it.
                for p in &picked {
                    let _ = disk::remove(&self.dir, &lock, p.addr);
                }
                let _ = disk::sync_dir(&self.dir);
                Err(e)
            }
        }
    }

    /// Releases every address held by `(container_id, ifname)` and returns them (sorted).
    /// Idempotent: returns an empty list if there is none, and creates nothing if the
    /// directory does not exist.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, Error> {
        if !self.dir_exists()? {
            return Ok(Vec::new());
        }
        let lock = disk::lock(&self.dir, true)?;
        let entries = disk::scan(&self.dir, &lock)?;
        let mut released = Vec::new();
        for e in entries.iter().filter(|e| owned_by(e, container_id, ifname)) {
            disk::remove(&self.dir, &lock, e.addr)?;
            released.push(e.addr);
        }
        if !released.is_empty() {
            disk::sync_dir(&self.dir)?;
        }
        Ok(released)
    }

    /// The addresses held by `(container_id, ifname)`, sorted by address.
    pub fn get(&self, container_id: &str, ifname: &str) -> Result<Vec<Allocation>, Error> {
        Ok(self
            .read_entries()?
            .into_iter()
            .filter_map(|e| match e.owner {
                Ok(owner) if owner.is(container_id, ifname) => Some(self.allocation(e.addr, owner)),
                _ => None,
            })
            .collect())
    }

    /// Every allocation in the store, sorted by address. Fails with [`Error::Corrupt`] naming
    /// the first file whose content is not valid JSON, so an operator can inspect and delete
    /// it; the other operations keep working around such a file.
    pub fn list(&self) -> Result<Vec<Allocation>, Error> {
        self.read_entries()?
            .into_iter()
            .map(|e| match e.owner {
                Ok(owner) => Ok(self.allocation(e.addr, owner)),
                Err(source) => Err(Error::Corrupt {
                    path: e.path,
                    source,
                }),
            })
            .collect()
    }

    /// Releases every allocation whose attachment `keep` rejects and returns them. Corrupt
    /// files are kept: their owner is unknown and might be a running container.
    pub fn gc(&self, keep: impl Fn(&Attachment) -> bool) -> Result<Vec<Allocation>, Error> {
        if !self.dir_exists()? {
            return Ok(Vec::new());
        }
        let lock = disk::lock(&self.dir, true)?;
        let entries = disk::scan(&self.dir, &lock)?;
        let mut released = Vec::new();
        for e in entries {
            let Ok(owner) = e.owner else { continue };
            if keep(&owner.attachment()) {
                continue;
            }
            disk::remove(&self.dir, &lock, e.addr)?;
            released.push(self.allocation(e.addr, owner));
        }
        if !released.is_empty() {
            disk::sync_dir(&self.dir)?;
        }
        Ok(released)
    }

    /// Free addresses per range, in configuration order (ranges in canonical form). Corrupt
    /// files count as taken.
    pub fn free_count(&self) -> Result<Vec<(IpNetwork, u128)>, Error> {
        let entries = self.read_entries()?;
        Ok(self
            .ranges
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let taken = self.taken_in(i, entries.iter().map(|e| &e.addr));
                (r.network(), self.allocatable[i].saturating_sub(taken))
            })
            .collect())
    }

    /// Picks and creates one address per range; `picked` holds what was created so far, so
    /// the caller can roll back on error.
    fn allocate_locked(
        &self,
        lock: &Lock,
        owner: &Owner,
        wanted: &[Option<IpAddr>],
        taken: &mut HashSet<IpAddr>,
        picked: &mut Vec<Picked>,
    ) -> Result<(), Error> {
        for (i, want) in wanted.iter().enumerate() {
            let p = match *want {
                Some(addr) => {
                    if taken.contains(&addr) || !disk::create(&self.dir, lock, addr, owner)? {
                        return Err(Error::Unavailable { addr });
                    }
                    Picked {
                        addr,
                        range: i,
                        sequential: false,
                    }
                }
                None => self.allocate_next(lock, i, owner, taken)?,
            };
            taken.insert(p.addr);
            picked.push(p);
        }
        for p in picked.iter().filter(|p| p.sequential) {
            disk::write_last_reserved(&self.dir, lock, p.range, p.addr)?;
        }
        disk::sync_dir(&self.dir)
    }

    /// Creates the next free address of range `i` after its cursor, wrapping around.
    fn allocate_next(
        &self,
        lock: &Lock,
        i: usize,
        owner: &Owner,
        taken: &mut HashSet<IpAddr>,
    ) -> Result<Picked, Error> {
        let range = &self.ranges[i];
        let exhausted = Error::Exhausted {
            range: range.network(),
            size: self.allocatable[i],
        };
        if self.taken_in(i, taken.iter()) >= self.allocatable[i] {
            return Err(exhausted);
        }
        let mut candidate = match disk::read_last_reserved(&self.dir, i)? {
            Some(last) => range.next(last),
            None => range.first(),
        };
        // At least one address is free, so this ends within (taken + reserved + 1) steps; the
        // bound only guards against a file appearing behind the lock's back.
        let mut steps: u128 = 0;
        while steps < range.usable_count() {
            if !self.reserved.contains(&candidate) && !taken.contains(&candidate) {
                if disk::create(&self.dir, lock, candidate, owner)? {
                    return Ok(Picked {
                        addr: candidate,
                        range: i,
                        sequential: true,
                    });
                }
                taken.insert(candidate);
            }
            candidate = range.next(candidate);
            steps += 1;
        }
        Err(exhausted)
    }

    /// Maps each requested address to its range: `result[i]` is the address wanted in range
    /// `i`, if any. Checks everything that does not need the disk.
    fn match_requests(&self, requested: &[IpAddr]) -> Result<Vec<Option<IpAddr>>, Error> {
        let mut wanted = vec![None; self.ranges.len()];
        for &addr in requested {
            let i = self
                .ranges
                .iter()
                .position(|r| r.contains(addr))
                .ok_or(Error::OutOfRange { addr })?;
            let range = self.ranges[i].network();
            if !self.ranges[i].is_usable(addr) || self.reserved.contains(&addr) {
                return Err(Error::Reserved { addr, range });
            }
            if let Some(first) = wanted[i] {
                return Err(Error::ConflictingRequests {
                    first,
                    second: addr,
                    range,
                });
            }
            wanted[i] = Some(addr);
        }
        Ok(wanted)
    }

    /// Number of `taken` addresses that count against range `i` (usable, not reserved).
    fn taken_in<'a>(&self, i: usize, taken: impl Iterator<Item = &'a IpAddr>) -> u128 {
        let r = &self.ranges[i];
        taken
            .filter(|a| r.is_usable(**a) && !self.reserved.contains(*a))
            .count() as u128
    }

    fn allocation(&self, addr: IpAddr, owner: Owner) -> Allocation {
        let network = self
            .ranges
            .iter()
            .find(|r| r.contains(addr))
            .map_or_else(|| IpNetwork::from(addr), Range::network);
        Allocation {
            addr,
            network,
            owner,
        }
    }

    /// All entries under a shared lock; none if the directory does not exist (not created).
    fn read_entries(&self) -> Result<Vec<Entry>, Error> {
        if !self.dir_exists()? {
            return Ok(Vec::new());
        }
        let lock = disk::lock(&self.dir, false)?;
        disk::scan(&self.dir, &lock)
    }

    fn dir_exists(&self) -> Result<bool, Error> {
        match fs::metadata(&self.dir) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(&self.dir, e)),
        }
    }

    /// Removes temp files of crashed writers, taking the exclusive lock only if there are any.
    fn remove_leftover_temps(&self) -> Result<(), Error> {
        if !has_temps(&self.dir)? {
            return Ok(());
        }
        let lock = disk::lock(&self.dir, true)?;
        disk::remove_temps(&self.dir, &lock)
    }
}

fn owned_by(e: &Entry, container_id: &str, ifname: &str) -> bool {
    matches!(&e.owner, Ok(o) if o.is(container_id, ifname))
}

/// Whether `dir` exists and holds a temp file.
fn has_temps(dir: &Path) -> Result<bool, Error> {
    let read_dir = match fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for dirent in read_dir {
        let dirent = dirent.map_err(|e| Error::io(dir, e))?;
        if dirent
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(disk::TEMP_PREFIX))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod concurrency_tests;
