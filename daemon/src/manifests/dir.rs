//! A directory of manifest files and the cluster state they make up, rescanned on demand.
//!
//! Change detection is by polling: each rescan lists the directory and `stat`s every
//! manifest file, following symlinks (so a ConfigMap volume, whose files are symlinks
//! through a `..data` link swapped on update, is followed too). A file is re-read when its
//! (device, inode, size, mtime, ctime) changed, which catches in-place rewrites and
//! replacement by rename alike, and re-parsed only when its contents hash differently.
//!
//! Timestamps are coarse (a kernel tick on most file systems, seconds on some), so a rewrite
//! of the same size within one tick leaves the stamp unchanged. As git does for its index,
//! a file modified less than [`RACY_WINDOW`] ago is re-read on every rescan until its stamp
//! is old enough to be trusted; only its hash decides whether it changed.
//!
//! Subdirectories are not read.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{debug, debug_span, info};

use super::{manifest_format, parse_bytes, ManifestError};
use crate::model::{ClusterState, Kind, Object};

/// How long after its last modification a file's stamp is not trusted to reveal a rewrite.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// The manifest files of a directory, each with its last successfully parsed objects.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileEntry>,
    state: Arc<ClusterState>,
    /// Whether the last listing failed (reported once, until the directory is back).
    dir_failed: bool,
}

/// What a rescan found.
#[derive(Debug, Default)]
pub struct Rescan {
    /// Whether the cluster state differs from the one before the rescan.
    pub changed: bool,
    /// Problems found by this rescan. Each is reported once: a file that stays broken, or a
    /// directory that stays missing, is not reported again until it changes.
    pub errors: Vec<ManifestError>,
}

#[derive(Debug, Default)]
struct FileEntry {
    /// The stamp of the last read, `None` before the first or after a failed `stat`.
    stamp: Option<Stamp>,
    /// The hash of the contents last read, `None` if never read successfully.
    hash: Option<u64>,
    /// The objects of the last contents that parsed.
    objects: Vec<Object>,
    /// Whether the last `stat` failed (reported once, until it succeeds).
    stat_failed: bool,
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
    fn of(meta: &fs::Metadata) -> Self {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// What refreshing one file found.
enum Refresh {
    Unchanged,
    /// The file's objects changed.
    Changed,
    /// The file is gone (or is no longer a regular file).
    Gone,
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

    /// Brings the state up to date with the directory. A file that no longer parses keeps
    /// its last good objects (it may be half-written); a deleted file loses its objects; a
    /// directory that cannot be listed leaves the state as it is.
    pub fn rescan(&mut self) -> Rescan {
        let mut errors = Vec::new();
        let paths = match self.list() {
            Ok(paths) => paths,
            Err(err) => {
                if !std::mem::replace(&mut self.dir_failed, true) {
                    errors.push(err);
                }
                return Rescan {
                    changed: false,
                    errors,
                };
            }
        };
        if std::mem::replace(&mut self.dir_failed, false) {
            info!(dir = %self.dir.display(), "manifest directory is readable again");
        }

        let mut files_changed = false;
        self.files.retain(|path, _| {
            let keep = paths.contains(path);
            if !keep {
                info!(path = %path.display(), "manifest file removed");
                files_changed = true;
            }
            keep
        });
        let now = SystemTime::now();
        for path in paths {
            let entry = self.files.entry(path.clone()).or_default();
            match refresh(&path, entry, now, &mut errors) {
                Refresh::Unchanged => {}
                Refresh::Changed => files_changed = true,
                Refresh::Gone => {
                    self.files.remove(&path);
                    files_changed = true;
                }
            }
        }
        if !files_changed {
            return Rescan {
                changed: false,
                errors,
            };
        }
        let state = self.build(&mut errors);
        let changed = state != *self.state;
        if changed {
            self.state = Arc::new(state);
        }
        Rescan { changed, errors }
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
            if manifest_format(&path).is_some() {
                paths.insert(path);
            }
        }
        Ok(paths)
    }

    /// The state made of every file's objects, files in path order, so that an object
    /// defined twice is taken from the later file (or the later document of one file).
    fn build(&self, errors: &mut Vec<ManifestError>) -> ClusterState {
        let mut state = ClusterState::new();
        let mut origin: HashMap<(Kind, Option<&str>, &str), &Path> = HashMap::new();
        for (path, entry) in &self.files {
            for obj in &entry.objects {
                let kind = obj.kind();
                let (ns, name) = (obj.namespace(), obj.name().unwrap_or_default());
                if let Some(first) = origin.insert((kind, ns, name), path) {
                    errors.push(ManifestError::Duplicate {
                        path: path.clone(),
                        first: first.to_owned(),
                        kind,
                        key: ns.map_or_else(|| name.to_owned(), |ns| format!("{ns}/{name}")),
                    });
                }
                if let Err(source) = state.apply(obj.clone()) {
                    errors.push(ManifestError::Rejected {
                        path: path.clone(),
                        kind,
                        source,
                    });
                }
            }
        }
        state
    }
}

/// Re-reads `path` if its stamp changed or is too recent to trust, and re-parses it if its
/// contents changed. Problems are reported only when the stamp or contents changed.
fn refresh(
    path: &Path,
    entry: &mut FileEntry,
    now: SystemTime,
    errors: &mut Vec<ManifestError>,
) -> Refresh {
    let read_error = |source| ManifestError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = match fs::metadata(path) {
        Ok(meta) if meta.is_file() => meta,
        Ok(_) => return Refresh::Gone,
        Err(err) if err.kind() == ErrorKind::NotFound => return Refresh::Gone,
        Err(err) => {
            entry.stamp = None;
            if !std::mem::replace(&mut entry.stat_failed, true) {
                errors.push(read_error(err));
            }
            return Refresh::Unchanged;
        }
    };
    entry.stat_failed = false;
    let stamp = Stamp::of(&meta);
    let racy = meta
        .modified()
        .ok()
        .and_then(|mtime| now.duration_since(mtime).ok())
        .is_none_or(|age| age < RACY_WINDOW);
    let stamp_changed = entry.stamp != Some(stamp);
    if !stamp_changed && !racy {
        return Refresh::Unchanged;
    }
    entry.stamp = Some(stamp);

    let _span = debug_span!("manifest_file", path = %path.display()).entered();
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == ErrorKind::NotFound => return Refresh::Gone,
        Err(err) => {
            if stamp_changed {
                errors.push(read_error(err));
            }
            return Refresh::Unchanged;
        }
    };
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    let hash = hasher.finish();
    if entry.hash == Some(hash) {
        return Refresh::Unchanged;
    }
    entry.hash = Some(hash);
    match parse_bytes(path, &bytes) {
        Ok(objects) => {
            debug!(objects = objects.len(), "parsed manifest file");
            if entry.objects == objects {
                return Refresh::Unchanged;
            }
            entry.objects = objects;
            Refresh::Changed
        }
        Err(err) => {
            errors.push(err);
            Refresh::Unchanged
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Test that an object defined in two files is reported and taken from the later file.
    #[test]
    fn duplicate_object_takes_later_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("a.yaml"), pod_yaml("first")).expect("write");
        fs::write(dir.path().join("b.yaml"), pod_yaml("second")).expect("write");
        let (state, errors) = ManifestDir::load(dir.path());
        assert_eq!(app_label(&state).as_deref(), Some("second"));
        let [ManifestError::Duplicate { kind, key, .. }] = &errors[..] else {
            panic!("expected one duplicate, got {errors:?}");
        };
        assert_eq!((*kind, key.as_str()), (Kind::Pod, "shop/web"));
    }
}
