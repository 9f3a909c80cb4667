//! The on-disk format of one network's store directory and the primitives that keep it
//! consistent across crashes and concurrent processes:
//!
//! ```text
//! <dir>/                     mode 0700
//!   lock                     flock(2) target, empty; a leftover one is harmless
//!   10.244.1.7               one file per allocated address, JSON Owner, mode 0600
//!   fd00:10:244:1::7
//!   last_reserved.0          last address handed out sequentially in range 0 (text)
//!   .tmp-<pid>-<n>           in-flight write, only while its writer holds the lock
//! ```
//!
//! An allocation file is created by writing the JSON to a temp file, fsyncing it and
//! `link(2)`ing it to the address name: `link` fails with EEXIST when the address is taken, so
//! creation is atomic and a visible file always has its full content. `last_reserved.<i>` is
//! replaced with temp + `rename(2)`. Every temp file is written while holding the exclusive
//! lock, so a temp file seen by a holder of the exclusive lock belongs to a process that died
//! (flock is released when a process dies) and is removed; no pid check is needed, which also
//! keeps working when writers live in different pid namespaces.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Error, Owner};

/// Name of the lock file inside the store directory.
pub(crate) const LOCK_FILE: &str = "lock";
/// Prefix of the per-range sequential cursor files.
const LAST_RESERVED_PREFIX: &str = "last_reserved.";
/// Prefix of in-flight temp files.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

/// A held `flock(2)` on the store's lock file; released on drop (close).
pub(crate) struct Lock {
    _file: File,
    exclusive: bool,
}

impl Lock {
    /// Whether this lock allows changing the store.
    pub(crate) fn is_exclusive(&self) -> bool {
        self.exclusive
    }
}

/// One address file found in the store.
pub(crate) struct Entry {
    pub(crate) addr: IpAddr,
    pub(crate) path: PathBuf,
    /// The owner, or why the content could not be decoded.
    pub(crate) owner: Result<Owner, serde_json::Error>,
}

/// Creates the store directory (and parents) with mode 0700 if it does not exist.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), Error> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(dir, e))
}

/// Takes the store lock, shared or exclusive, waiting as long as needed. The directory must
/// exist; the lock file is created (mode 0600) if missing.
pub(crate) fn lock(dir: &Path, exclusive: bool) -> Result<Lock, Error> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    loop {
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(Error::io(&path, err));
        }
    }
    Ok(Lock {
        _file: file,
        exclusive,
    })
}

/// Lists the address files of the store and decodes their owners. Names that are not an
/// address (lock, cursors, unknown files) are ignored. With an exclusive lock, leftover temp
/// files of crashed writers are removed on the way.
pub(crate) fn scan(dir: &Path, lock: &Lock) -> Result<Vec<Entry>, Error> {
    let mut entries = Vec::new();
    let read_dir = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for dirent in read_dir {
        let dirent = dirent.map_err(|e| Error::io(dir, e))?;
        let name = dirent.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = dir.join(name);
        if name.starts_with(TEMP_PREFIX) {
            if lock.is_exclusive() {
                remove_if_exists(&path)?;
            }
            continue;
        }
        let Ok(addr) = name.parse::<IpAddr>() else {
            continue;
        };
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&path, e)),
        };
        let owner = serde_json::from_slice::<Owner>(&bytes);
        entries.push(Entry { addr, path, owner });
    }
    entries.sort_by_key(|e| e.addr);
    Ok(entries)
}

/// Removes leftover temp files of crashed writers. Needs the exclusive lock.
pub(crate) fn remove_temps(dir: &Path, lock: &Lock) -> Result<(), Error> {
    debug_assert!(lock.is_exclusive());
    let read_dir = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for dirent in read_dir {
        let dirent = dirent.map_err(|e| Error::io(dir, e))?;
        if let Some(name) = dirent.file_name().to_str() {
            if name.starts_with(TEMP_PREFIX) {
                remove_if_exists(&dir.join(name))?;
            }
        }
    }
    Ok(())
}

/// Atomically creates the file for `addr` holding `owner`. Returns `false` (and leaves nothing
/// behind) if the address file already exists. The directory is not fsynced; call
/// [`sync_dir`] once after a batch of changes.
pub(crate) fn create(dir: &Path, lock: &Lock, addr: IpAddr, owner: &Owner) -> Result<bool, Error> {
    debug_assert!(lock.is_exclusive());
    let json = serde_json::to_vec(owner).map_err(|e| Error::io(dir, e.into()))?;
    let tmp = write_temp(dir, &json)?;
    let path = dir.join(addr.to_string());
    let linked = fs::hard_link(&tmp, &path);
    // The temp name is unique to this call; removing it cannot touch anyone else's file.
    let cleanup = fs::remove_file(&tmp).map_err(|e| Error::io(&tmp, e));
    match linked {
        Ok(()) => cleanup.map(|()| true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => cleanup.map(|()| false),
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// Removes the file for `addr`; a missing file is not an error.
pub(crate) fn remove(dir: &Path, lock: &Lock, addr: IpAddr) -> Result<(), Error> {
    debug_assert!(lock.is_exclusive());
    remove_if_exists(&dir.join(addr.to_string()))
}

/// Reads the last address handed out sequentially in range `index`. A missing or unreadable
/// cursor is only a lost hint: allocation then restarts at the first address of the range.
pub(crate) fn read_last_reserved(dir: &Path, index: usize) -> Result<Option<IpAddr>, Error> {
    let path = last_reserved_path(dir, index);
    match fs::read(&path) {
        Ok(b) => Ok(std::str::from_utf8(&b)
            .ok()
            .and_then(|s| s.trim().parse().ok())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// Atomically replaces the cursor of range `index` with `addr`.
pub(crate) fn write_last_reserved(
    dir: &Path,
    lock: &Lock,
    index: usize,
    addr: IpAddr,
) -> Result<(), Error> {
    debug_assert!(lock.is_exclusive());
    let tmp = write_temp(dir, addr.to_string().as_bytes())?;
    let path = last_reserved_path(dir, index);
    if let Err(e) = fs::rename(&tmp, &path) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(&path, e));
    }
    Ok(())
}

/// Fsyncs the directory so created, linked, renamed and removed names are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

fn last_reserved_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("{LAST_RESERVED_PREFIX}{index}"))
}

fn remove_if_exists(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Writes `content` to a new, fsynced temp file (mode 0600) in `dir` and returns its path.
/// The name is `.tmp-<pid>-<n>`, `n` unique within the process; `create_new` guards against
/// any clash with a leftover file.
fn write_temp(dir: &Path, content: &[u8]) -> Result<PathBuf, Error> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(
            "{TEMP_PREFIX}{}-{nanos:08x}{n:x}",
            std::process::id()
        ));
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&path, e)),
        };
        if let Err(e) = file.write_all(content).and_then(|()| file.sync_all()) {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(Error::io(&path, e));
        }
        return Ok(path);
    }
}
