//! A directory of manifest files and the cluster state they make up.
//!
//! Two ways to bring the state up to date: [`ManifestDir::refresh`] re-reads the files an
//! inotify event named (the watcher knows they changed), [`ManifestDir::rescan`] lists the
//! directory and `stat`s every manifest file, following symlinks, and re-reads those whose
//! (device, inode, size, mtime, ctime) changed: at start, after the event queue overflowed,
//! and when the directory (or a ConfigMap volume's `..data` link) was replaced. A file is
//! re-parsed only when its contents hash differently.
//!
//! Timestamps are coarse (a kernel tick on most file systems), so a same-size rewrite within
//! one tick of a read leaves the stamp unchanged: as git does for its index, a rescan
//! re-reads a file that was modified less than [`RACY_WINDOW`] before it was last read. Only
//! a rescan needs this; an event says the file changed.
//!
//! The reader holds the state (each object once), each file's keys and stamp, and the
//! duplicates waiting ([`super::claims`]); never file contents. Subdirectories are not read.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, Metadata};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{debug, debug_span, info};

use super::claims::{Claims, Key};
use super::{bounds, error_chain, manifest_format, parse_bytes, ManifestError, ReaderStatus};
use crate::model::ClusterState;

/// How long after its last modification a file's stamp is not trusted to reveal a rewrite.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// The manifest files of a directory, and the state made of them.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileEntry>,
    claims: Claims,
    state: Arc<ClusterState>,
    /// Whether the last listing failed (reported once, until the directory is back).
    dir_failed: bool,
}

/// What a rescan or refresh found.
#[derive(Debug, Default)]
pub struct Rescan {
    /// Whether the cluster state differs from the one before.
    pub changed: bool,
    /// How many objects more or fewer the state holds (the watcher gives freed memory back
    /// after large changes).
    pub moved: usize,
    /// Problems found. Each is reported once: a file that stays broken the same way, or a
    /// directory that stays missing, is not reported again.
    pub errors: Vec<ManifestError>,
}

#[derive(Debug, Default)]
struct FileEntry {
    /// The stamp of the last read, `None` before the first.
    stamp: Option<Stamp>,
    /// When it was last read.
    read_at: Option<SystemTime>,
    /// The hash of the contents last read, `None` if never read.
    hash: Option<u64>,
    /// The objects its last good contents define, in file order.
    keys: Vec<Key>,
    /// What is wrong with it now (its error, as logged), `None` when it is good.
    problem: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &Metadata) -> Self {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// The state being changed by one rescan or refresh: cloned from the published one at the
/// first change only.
struct Draft<'a> {
    base: &'a ClusterState,
    next: Option<ClusterState>,
}

impl Draft<'_> {
    fn get(&mut self) -> &mut ClusterState {
        self.next.get_or_insert_with(|| self.base.clone())
    }
}

impl ManifestDir {
    /// Opens `dir`, which must be an existing directory, with no file read yet: the first
    /// [`rescan`](Self::rescan) loads them all.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, ManifestError> {
        let dir = dir.into();
        let meta = fs::metadata(&dir).map_err(|source| ManifestError::ReadDir {
            path: dir.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(ManifestError::NotADirectory { path: dir });
        }
        Ok(ManifestDir {
            dir,
            files: BTreeMap::new(),
            claims: Claims::default(),
            state: Arc::default(),
            dir_failed: false,
        })
    }

    /// Reads every manifest file of `dir` once. Problems, a missing directory included,
    /// are collected; every file that parses contributes its objects.
    pub fn load(dir: impl Into<PathBuf>) -> (ClusterState, Vec<ManifestError>) {
        match Self::open(dir) {
            Ok(mut manifests) => {
                let rescan = manifests.rescan();
                (Arc::unwrap_or_clone(manifests.state), rescan.errors)
            }
            Err(err) => (ClusterState::default(), vec![err]),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cluster state made of every file's last good objects.
    pub fn state(&self) -> &Arc<ClusterState> {
        &self.state
    }

    /// Counts of what the reader holds and refused.
    pub fn status(&self) -> ReaderStatus {
        ReaderStatus {
            files: self.files.len(),
            objects: self.state.len(),
            rejected_files: self.files.values().filter(|f| f.problem.is_some()).count(),
            duplicates: self.claims.duplicates(),
        }
    }

    /// Brings the state up to date with the whole directory. A file that no longer parses
    /// keeps its last good objects (it may be half-written); a deleted file loses its
    /// objects; a directory that cannot be listed leaves the state as it is.
    pub fn rescan(&mut self) -> Rescan {
        let mut errors = Vec::new();
        let paths = match self.list() {
            Ok(paths) => paths,
            Err(err) => {
                if !std::mem::replace(&mut self.dir_failed, true) {
                    errors.push(err);
                }
                return Rescan {
                    errors,
                    ..Rescan::default()
                };
            }
        };
        if std::mem::replace(&mut self.dir_failed, false) {
            info!(dir = %self.dir.display(), "manifest directory is readable again");
        }
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !paths.contains(*p))
            .cloned()
            .collect();
        self.update(gone.into_iter().chain(paths), false, errors)
    }

    /// Re-reads the files `paths` of the directory (named by events: each changed, was
    /// created or removed). Paths that are not manifest files are ignored.
    pub fn refresh(&mut self, paths: impl IntoIterator<Item = PathBuf>) -> Rescan {
        let paths: Vec<PathBuf> = paths
            .into_iter()
            .filter(|p| manifest_format(p).is_some() && p.parent() == Some(&self.dir))
            .collect();
        self.update(paths, true, Vec::new())
    }

    fn update(
        &mut self,
        paths: impl IntoIterator<Item = PathBuf>,
        changed: bool,
        mut errors: Vec<ManifestError>,
    ) -> Rescan {
        let base = Arc::clone(&self.state);
        let mut draft = Draft {
            base: &base,
            next: None,
        };
        let now = SystemTime::now();
        for path in paths {
            self.file(path, changed, now, &mut draft, &mut errors);
        }
        let Some(next) = draft.next else {
            return Rescan {
                errors,
                ..Rescan::default()
            };
        };
        let moved = base.len().abs_diff(next.len());
        let changed = next != *base;
        if changed {
            self.state = Arc::new(next);
        }
        Rescan {
            changed,
            moved,
            errors,
        }
    }

    /// Brings one file up to date: re-read if `changed` (an event said so), if its stamp
    /// changed, or if its last read was racy.
    fn file(
        &mut self,
        path: PathBuf,
        changed: bool,
        now: SystemTime,
        draft: &mut Draft<'_>,
        errors: &mut Vec<ManifestError>,
    ) {
        let meta = match bounds::stat(&path) {
            Ok(Some(meta)) => Some(meta),
            Ok(None) => return self.removed(&path, draft, errors),
            Err(err) => return self.failed(path, err, draft, errors),
        };
        let entry = self.files.entry(path.clone()).or_default();
        if let (false, Some(meta), Some(stamp), Some(read_at)) =
            (changed, &meta, entry.stamp, entry.read_at)
        {
            let racy = meta
                .modified()
                .ok()
                .and_then(|mtime| read_at.duration_since(mtime).ok())
                .is_none_or(|age| age < RACY_WINDOW);
            if stamp == Stamp::of(meta) && !racy {
                return;
            }
        }
        let _span = debug_span!("manifest_file", path = %path.display()).entered();
        let bytes = match bounds::read(&path) {
            Ok(Some((bytes, meta))) => {
                entry.stamp = Some(Stamp::of(&meta));
                entry.read_at = Some(now);
                bytes
            }
            Ok(None) => return self.removed(&path, draft, errors),
            Err(err) => return self.failed(path, err, draft, errors),
        };
        let mut hasher = DefaultHasher::new();
        bytes.hash(&mut hasher);
        let hash = hasher.finish();
        if entry.hash == Some(hash) {
            return;
        }
        entry.hash = Some(hash);
        let parsed = parse_bytes(&path, &bytes);
        drop(bytes);
        match parsed {
            Ok(objects) => {
                debug!(objects = objects.len(), "parsed manifest file");
                if entry.problem.take().is_some() {
                    info!(path = %path.display(), "manifest file is good again");
                }
                let old = std::mem::take(&mut entry.keys);
                let state = draft.get();
                entry.keys = self.claims.set_file(&path, &old, objects, state, errors);
            }
            Err(err) => {
                let entry = self.files.get_mut(&path).expect("entry just made");
                report(entry, err, errors);
            }
        }
    }

    /// `path` is gone: its objects leave the state (or go to their duplicates).
    fn removed(&mut self, path: &Path, draft: &mut Draft<'_>, errors: &mut Vec<ManifestError>) {
        if let Some(entry) = self.files.remove(path) {
            info!(path = %path.display(), "manifest file removed");
            if !entry.keys.is_empty() {
                let state = draft.get();
                self.claims.remove_file(path, &entry.keys, state, errors);
            }
        }
    }

    /// `path` cannot be used: `err` is reported once. An entry that is not a regular file
    /// (a dangling symlink, a FIFO, …) defines nothing; a file that cannot be read or is
    /// too large keeps its last good objects.
    fn failed(
        &mut self,
        path: PathBuf,
        err: ManifestError,
        draft: &mut Draft<'_>,
        errors: &mut Vec<ManifestError>,
    ) {
        let not_a_file = matches!(err, ManifestError::NotAFile { .. });
        let entry = self.files.entry(path.clone()).or_default();
        if not_a_file {
            entry.stamp = None;
            entry.hash = None;
            if !entry.keys.is_empty() {
                let keys = std::mem::take(&mut entry.keys);
                let state = draft.get();
                self.claims.remove_file(&path, &keys, state, errors);
            }
        }
        let entry = self.files.get_mut(&path).expect("entry just made");
        report(entry, err, errors);
    }

    /// The manifest files of the directory, by path.
    fn list(&self) -> Result<BTreeSet<PathBuf>, ManifestError> {
        let read_dir = |source| ManifestError::ReadDir {
            path: self.dir.clone(),
            source,
        };
        let mut paths = BTreeSet::new();
        for entry in fs::read_dir(&self.dir).map_err(read_dir)? {
            // An entry that vanished while listing is simply not there.
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            // Subdirectories are not read (nor reported).
            if manifest_format(&path).is_some() && !entry.file_type().is_ok_and(|t| t.is_dir()) {
                paths.insert(path);
            }
        }
        Ok(paths)
    }
}

/// Records `err` as the file's problem, and reports it unless it is the one already known.
fn report(entry: &mut FileEntry, err: ManifestError, errors: &mut Vec<ManifestError>) {
    let text = error_chain(&err);
    if entry.problem.as_deref() != Some(text.as_str()) {
        entry.problem = Some(text);
        errors.push(err);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;

    const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  labels:
    app: APP
spec:
  containers:
  - name: nginx
    image: nginx:1.27
";

    fn pod_yaml(app: &str) -> String {
        POD.replace("APP", app)
    }

    fn app_label(state: &ClusterState) -> Option<String> {
        let pod = state.pod("shop", "web")?;
        pod.metadata.labels.as_ref()?.get("app").cloned()
    }

    /// Test that load reads every manifest file, skips others and collects the errors of
    /// broken files without failing.
    #[test]
    fn load_collects_errors_and_loads_good_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("pod.yaml"), pod_yaml("web")).expect("write");
        fs::write(dir.path().join("broken.yaml"), "kind: [").expect("write");
        fs::write(dir.path().join("notes.txt"), "kind: [").expect("write");
        fs::create_dir(dir.path().join("sub.yaml")).expect("mkdir");
        let (state, errors) = ManifestDir::load(dir.path());
        assert_eq!(app_label(&state).as_deref(), Some("web"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path(), dir.path().join("broken.yaml"));
    }

    /// Test that opening or loading a missing directory is an error.
    #[test]
    fn missing_dir_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        assert!(matches!(
            ManifestDir::open(&missing),
            Err(ManifestError::ReadDir { .. })
        ));
        let (state, errors) = ManifestDir::load(&missing);
        assert!(state.is_empty());
        assert!(matches!(errors[..], [ManifestError::ReadDir { .. }]));
        let file = dir.path().join("file.yaml");
        fs::write(&file, "").expect("write");
        assert!(matches!(
            ManifestDir::open(&file),
            Err(ManifestError::NotADirectory { .. })
        ));
    }

    /// Test that a same-size rewrite right after the previous one is seen even when the
    /// file's timestamps did not move (racy stamps are re-read).
    #[test]
    fn rescan_sees_same_size_rewrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pod.yaml");
        fs::write(&path, pod_yaml("aaa")).expect("write");
        let mut manifests = ManifestDir::open(dir.path()).expect("open");
        assert!(manifests.rescan().changed);
        fs::write(&path, pod_yaml("bbb")).expect("write");
        let rescan = manifests.rescan();
        assert!(rescan.changed && rescan.errors.is_empty(), "{rescan:?}");
        assert_eq!(app_label(manifests.state()).as_deref(), Some("bbb"));
    }

    /// Test that rewriting a file with the same contents, or unrelated files appearing, is
    /// not a change.
    #[test]
    fn rescan_without_change_reports_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pod.yaml");
        fs::write(&path, pod_yaml("web")).expect("write");
        let mut manifests = ManifestDir::open(dir.path()).expect("open");
        assert!(manifests.rescan().changed);
        let before = Arc::clone(manifests.state());
        fs::write(&path, pod_yaml("web")).expect("write");
        fs::write(dir.path().join("README.md"), "hi").expect("write");
        fs::write(dir.path().join("#pod.yaml#"), "x").expect("write");
        let rescan = manifests.rescan();
        assert!(!rescan.changed && rescan.errors.is_empty(), "{rescan:?}");
        assert!(Arc::ptr_eq(&before, manifests.state()));
    }

    /// Test that a broken rewrite keeps the last good objects and is reported once, and
    /// that a deleted file loses its objects.
    #[test]
    fn rescan_keeps_last_good_then_deletes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pod.yaml");
        fs::write(&path, pod_yaml("web")).expect("write");
        let mut manifests = ManifestDir::open(dir.path()).expect("open");
        manifests.rescan();
        fs::write(&path, &pod_yaml("web")[..40]).expect("write");
        let rescan = manifests.rescan();
        assert!(!rescan.changed);
        assert_eq!(rescan.errors.len(), 1, "{rescan:?}");
        assert!(manifests.rescan().errors.is_empty(), "reported once");
        assert_eq!(app_label(manifests.state()).as_deref(), Some("web"));
        fs::remove_file(&path).expect("rm");
        assert!(manifests.rescan().changed);
        assert!(manifests.state().is_empty());
    }

    /// Test that a directory deleted while watched is reported once and keeps the state.
    #[test]
    fn rescan_keeps_state_when_dir_deleted() {
        let parent = tempfile::tempdir().expect("tempdir");
        let dir = parent.path().join("manifests");
        fs::create_dir(&dir).expect("mkdir");
        fs::write(dir.join("pod.yaml"), pod_yaml("web")).expect("write");
        let mut manifests = ManifestDir::open(&dir).expect("open");
        manifests.rescan();
        fs::remove_dir_all(&dir).expect("rm");
        let rescan = manifests.rescan();
        assert!(!rescan.changed);
        assert!(matches!(rescan.errors[..], [ManifestError::ReadDir { .. }]));
        assert!(manifests.rescan().errors.is_empty(), "reported once");
        assert_eq!(app_label(manifests.state()).as_deref(), Some("web"));
    }

    fn dup_files(errors: &[ManifestError]) -> Vec<(PathBuf, PathBuf)> {
        errors
            .iter()
            .filter_map(|e| match e {
                ManifestError::Duplicate {
                    path,
                    first,
                    kind,
                    key,
                    ..
                } => {
                    assert_eq!((*kind, key.as_str()), (Kind::Pod, "shop/web"));
                    Some((path.clone(), first.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// Test that of an object defined in two files the first seen stays (at start: the
    /// first in path order), the duplicate is reported naming both files and counted, and
    /// takes over when the first file is removed.
    #[test]
    fn duplicate_object_keeps_first_until_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
        fs::write(&a, pod_yaml("first")).expect("write");
        fs::write(&b, pod_yaml("second")).expect("write");
        let mut manifests = ManifestDir::open(dir.path()).expect("open");
        let rescan = manifests.rescan();
        assert_eq!(app_label(manifests.state()).as_deref(), Some("first"));
        assert_eq!(dup_files(&rescan.errors), [(b.clone(), a.clone())]);
        assert_eq!(manifests.status().duplicates, 1);

        // A third definition arrives later, in a file first in path order: it waits too.
        let zero = dir.path().join("0.yaml");
        fs::write(&zero, pod_yaml("third")).expect("write");
        let rescan = manifests.refresh([zero.clone()]);
        assert!(!rescan.changed);
        assert_eq!(dup_files(&rescan.errors), [(zero.clone(), a.clone())]);
        assert_eq!(manifests.status().duplicates, 2);
        // The duplicate rewritten: still waiting, not reported again.
        fs::write(&b, pod_yaml("second-v2")).expect("write");
        let rescan = manifests.refresh([b.clone()]);
        assert!(!rescan.changed && rescan.errors.is_empty(), "{rescan:?}");

        fs::remove_file(&a).expect("rm");
        let rescan = manifests.refresh([a.clone()]);
        assert!(rescan.changed && rescan.errors.is_empty(), "{rescan:?}");
        assert_eq!(app_label(manifests.state()).as_deref(), Some("second-v2"));
        assert_eq!(manifests.status().duplicates, 1);
        fs::remove_file(&b).expect("rm");
        manifests.refresh([b]);
        assert_eq!(app_label(manifests.state()).as_deref(), Some("third"));
        assert_eq!(manifests.status().duplicates, 0);
        fs::remove_file(&zero).expect("rm");
        let rescan = manifests.refresh([zero]);
        assert_eq!(rescan.moved, 1);
        assert!(manifests.state().is_empty());
    }

    /// Test that an object defined twice in one file keeps its first document, and that a
    /// file rewritten without an object it had in place hands it to the waiting duplicate.
    #[test]
    fn duplicate_in_one_file_keeps_first_document() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.yaml");
        let b = dir.path().join("b.yaml");
        fs::write(&a, format!("{}---\n{}", pod_yaml("one"), pod_yaml("two"))).expect("write");
        let mut manifests = ManifestDir::open(dir.path()).expect("open");
        let rescan = manifests.rescan();
        assert_eq!(dup_files(&rescan.errors), [(a.clone(), a.clone())]);
        assert_eq!(app_label(manifests.state()).as_deref(), Some("one"));
        fs::write(&b, pod_yaml("other")).expect("write");
        manifests.refresh([b.clone()]);
        assert_eq!(app_label(manifests.state()).as_deref(), Some("one"));
        fs::write(&a, "").expect("write");
        let rescan = manifests.refresh([a]);
        assert!(rescan.changed, "{rescan:?}");
        assert_eq!(app_label(manifests.state()).as_deref(), Some("other"));
    }

    /// Test that a dangling symlink, a FIFO, a socket and a device named like manifests are
    /// each reported once (never opened), counted as rejected, and leave the rest loaded.
    #[test]
    fn special_entries_reported_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        fs::write(d.join("pod.yaml"), pod_yaml("web")).expect("write");
        nix::unistd::mkfifo(&d.join("fifo.yaml"), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        std::os::unix::fs::symlink(d.join("missing"), d.join("dangling.yaml")).expect("ln");
        std::os::unix::fs::symlink("/dev/null", d.join("null.yaml")).expect("ln");
        let _socket = std::os::unix::net::UnixListener::bind(d.join("socket.json")).expect("bind");
        let mut manifests = ManifestDir::open(d).expect("open");
        let rescan = manifests.rescan();
        let mut what: Vec<_> = rescan
            .errors
            .iter()
            .map(|e| match e {
                ManifestError::NotAFile { path, what } => {
                    (path.file_name().unwrap().to_owned(), *what)
                }
                other => panic!("unexpected {other}"),
            })
            .collect();
        what.sort();
        assert_eq!(
            what,
            [
                ("dangling.yaml".into(), "a dangling symlink"),
                ("fifo.yaml".into(), "a FIFO"),
                ("null.yaml".into(), "a character device"),
                ("socket.json".into(), "a socket"),
            ]
        );
        assert_eq!(app_label(manifests.state()).as_deref(), Some("web"));
        assert_eq!(manifests.status().rejected_files, 4);
        assert!(manifests.rescan().errors.is_empty(), "reported once");
        let again = manifests.refresh(["fifo.yaml", "dangling.yaml"].map(|n| d.join(n)));
        assert!(again.errors.is_empty(), "reported once: {again:?}");
        // A good file in place of the FIFO is read; the count follows.
        fs::remove_file(d.join("fifo.yaml")).expect("rm");
        fs::write(d.join("fifo.yaml"), "").expect("write");
        manifests.refresh([d.join("fifo.yaml")]);
        assert_eq!(manifests.status().rejected_files, 3);
    }

    /// Test that a file over the size bound (a sparse 1 GiB file) is refused from its size,
    /// without being read, and keeps nothing while the others load.
    #[test]
    fn huge_file_is_not_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("pod.yaml"), pod_yaml("web")).expect("write");
        let huge = fs::File::create(dir.path().join("huge.yaml")).expect("create");
        huge.set_len(1 << 30).expect("truncate");
        let (state, errors) = ManifestDir::load(dir.path());
        assert_eq!(app_label(&state).as_deref(), Some("web"));
        assert!(
            matches!(&errors[..], [ManifestError::TooLarge { limit, .. }] if *limit == 3 << 20),
            "{errors:?}"
        );
    }
}
