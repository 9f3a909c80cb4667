//! Following a manifest directory while the agent runs: inotify on the directory, a tokio
//! task that gathers the events, re-reads only the files they name (on the blocking pool),
//! and publishes each new [`ClusterState`] on a `tokio::sync::watch` channel.
//!
//! inotify directly, through nix (already a dependency), rather than the `notify` crate: one
//! watch on one directory needs no backend abstraction, thread or debouncer of its own;
//! the descriptor goes straight into tokio's reactor ([`AsyncFd`]), and the events that
//! matter here stay visible: `IN_Q_OVERFLOW` (the kernel dropped events: rescan),
//! `IN_DELETE_SELF`/`IN_MOVE_SELF` (the directory went away).
//!
//! - A file created, written, truncated, renamed in or out, or deleted is named by an event
//!   and re-read; events are gathered until [`SETTLE`] passes without one (at most
//!   [`MAX_DELAY`] after the first), so a writer's create-write-close is read once. Editors'
//!   and `kubectl`'s temporary files are dotfiles or have other extensions: their rename into
//!   place is the event that counts.
//! - A queue overflow, or a change to a name starting with `..` (a ConfigMap volume swaps
//!   its `..data` link), rescans the directory: every file `stat`ed, the changed ones read.
//! - The directory removed or moved away: one warning, the last state kept, and every
//!   [`DIR_RETRY`] a new watch tried; when the directory is back it is rescanned.
//! - Subdirectories are not read. A manifest that is a symlink is read through it, but a
//!   change to a target outside the directory is seen only with the link's own change (or a
//!   rescan), since inotify reports events of the directory's entries.
//!
//! An idle agent does nothing here (no timer runs while the directory is there). After many
//! objects entered or left the state, freed memory is given back to the system ([`trim`]).

use std::collections::BTreeSet;
use std::os::fd::{AsFd as _, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::{error_chain, manifest_format, ManifestDir, ManifestError, ReaderStatus, Rescan};
use crate::model::ClusterState;

/// Events are gathered until none came for this long…
pub const SETTLE: Duration = Duration::from_millis(20);
/// …or for this long after the first of a batch.
pub const MAX_DELAY: Duration = Duration::from_millis(200);
/// How often a removed directory is looked for.
pub const DIR_RETRY: Duration = Duration::from_millis(500);
/// After this many objects entered or left the state, freed memory is given back…
const TRIM_AFTER_MOVED: usize = 1000;
/// …this long after the last change, once the agent dropped the old state and what it
/// derived from it.
const TRIM_DELAY: Duration = Duration::from_secs(2);

/// What the directory's entries are watched for.
fn dir_events() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

/// A followed manifest directory.
pub struct Watch {
    /// The cluster state, updated only when it changed.
    pub state: watch::Receiver<Arc<ClusterState>>,
    /// What the reader holds and refused, after every change.
    pub status: watch::Receiver<ReaderStatus>,
    /// The task; it ends once every `state` receiver is dropped.
    pub task: JoinHandle<()>,
}

/// Loads the manifests of `dir`, then follows every change on a tokio task.
///
/// The watch is set before the initial load, so no change is lost between them; the load
/// runs on the calling thread, before this returns, so the receiver starts with the full
/// state. Must be called within a tokio runtime. A missing `dir` at start, or no inotify
/// watch to be had, is an error; problems later (bad files, the directory disappearing) are
/// logged and leave the state as it was.
pub fn watch(dir: PathBuf) -> Result<Watch, ManifestError> {
    let mut manifests = ManifestDir::open(dir)?;
    let mut notify = Notify::new(manifests.dir())?;
    notify.rewatch().map_err(|source| ManifestError::Watch {
        path: manifests.dir().to_owned(),
        source,
    })?;
    log_problems(&manifests.rescan());
    let (tx, state) = watch::channel(Arc::clone(manifests.state()));
    let (status_tx, status) = watch::channel(manifests.status());
    let task = tokio::spawn(run(manifests, notify, tx, status_tx));
    Ok(Watch {
        state,
        status,
        task,
    })
}

async fn run(
    mut manifests: ManifestDir,
    mut notify: Notify,
    tx: watch::Sender<Arc<ClusterState>>,
    status: watch::Sender<ReaderStatus>,
) {
    let dir = manifests.dir().display().to_string();
    info!(%dir, objects = manifests.state().len(), "loaded manifests, watching for changes");
    let mut moved = 0;
    let mut trim_at: Option<Instant> = None;
    loop {
        let mut batch = tokio::select! {
            () = tx.closed() => {
                debug!(%dir, "no one follows the cluster state any more, stopping");
                return;
            }
            batch = notify.next_batch() => batch,
            () = tokio::time::sleep(DIR_RETRY), if notify.wd.is_none() => Batch::default(),
            () = sleep_until(trim_at) => {
                trim_at = None;
                moved = 0;
                if blocking(|| trim("many manifest objects added or removed")).await.is_none() {
                    return;
                }
                continue;
            }
        };
        if batch.dir_gone {
            notify.lost();
            warn!(%dir, "manifest directory removed or moved away: keeping the last state, \
                and following the directory again when it is back");
        }
        if notify.wd.is_none() {
            if notify.rewatch().is_err() {
                continue;
            }
            info!(%dir, "manifest directory is back, rescanning it");
            batch.rescan = true;
            batch.names.clear();
        }
        let Some((back, rescan)) = blocking(move || {
            let mut rescan = if batch.rescan {
                manifests.rescan()
            } else {
                Rescan::default()
            };
            if !batch.names.is_empty() {
                let more = manifests.refresh(batch.names);
                rescan.changed |= more.changed;
                rescan.moved += more.moved;
                rescan.errors.extend(more.errors);
            }
            (manifests, rescan)
        })
        .await
        else {
            return;
        };
        manifests = back;
        log_problems(&rescan);
        if rescan.changed {
            let state = Arc::clone(manifests.state());
            info!(%dir, objects = state.len(), "manifests changed, publishing cluster state");
            tx.send_replace(state);
        }
        let now = manifests.status();
        status.send_if_modified(|s| std::mem::replace(s, now) != now);
        moved += rescan.moved;
        if moved >= TRIM_AFTER_MOVED {
            trim_at = Some(Instant::now() + TRIM_DELAY);
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Gives the memory glibc's allocator holds free back to the system, in every arena: after
/// the objects of 10,000 removed files are freed it would otherwise keep most of it (freed
/// chunks below the top of a heap are not returned by `free`, and each thread of the
/// blocking pool that parsed files has an arena of its own). The API watcher calls it too,
/// after a large list (`why` says which).
pub(crate) fn trim(why: &str) {
    #[cfg(target_env = "gnu")]
    {
        let before = rss_mib();
        // SAFETY: malloc_trim only walks the allocator's own free lists; no pointer is passed.
        unsafe { libc::malloc_trim(0) };
        info!(
            rss_mib_before = before,
            rss_mib_after = rss_mib(),
            "{why}: gave freed memory back to the system"
        );
    }
}

/// This process's resident memory in MiB (`/proc/self/statm`), 0 if unknown.
#[cfg(target_env = "gnu")]
fn rss_mib() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    (pages * page) >> 20
}

/// Runs `f` on the blocking pool; `None` if the runtime cancelled it (shutting down).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => Some(value),
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(_) => None,
    }
}

/// What a batch of events asks for.
#[derive(Debug, Default)]
struct Batch {
    /// Manifest files named by an event.
    names: BTreeSet<PathBuf>,
    /// Rescan the whole directory.
    rescan: bool,
    /// The directory itself went away.
    dir_gone: bool,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.names.is_empty() && !self.rescan && !self.dir_gone
    }
}

/// The inotify descriptor, as tokio's reactor needs it.
struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// The inotify instance, its watch on the directory and the events gathered so far (kept
/// here so that waiting for them can be cancelled without losing any).
struct Notify {
    fd: AsyncFd<Fd>,
    dir: PathBuf,
    wd: Option<WatchDescriptor>,
    pending: Batch,
}

impl Notify {
    fn new(dir: &Path) -> Result<Self, ManifestError> {
        let watch_error = |source: std::io::Error| ManifestError::Watch {
            path: dir.to_owned(),
            source,
        };
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| watch_error(e.into()))?;
        // SAFETY: `Fd` owns the inotify descriptor and always returns that same descriptor;
        // it is closed only when the `AsyncFd` (its only owner) is dropped.
        let fd = unsafe { AsyncFd::register(Fd(inotify)) }.map_err(|e| watch_error(e.into()))?;
        Ok(Notify {
            fd,
            dir: dir.to_owned(),
            wd: None,
            pending: Batch::default(),
        })
    }

    /// Watches the directory (again).
    fn rewatch(&mut self) -> std::io::Result<()> {
        let wd = self.fd.get_ref().0.add_watch(&self.dir, dir_events())?;
        self.wd = Some(wd);
        Ok(())
    }

    /// The directory went away: its watch is dropped.
    fn lost(&mut self) {
        if let Some(wd) = self.wd.take() {
            // Already gone if the directory was deleted (IN_IGNORED); not if it was moved.
            let _ = self.fd.get_ref().0.rm_watch(wd);
        }
    }

    /// Waits for events, then gathers those that follow within [`SETTLE`] of each other
    /// (for at most [`MAX_DELAY`]). Cancel-safe.
    async fn next_batch(&mut self) -> Batch {
        while self.pending.is_empty() {
            self.read().await;
        }
        let deadline = Instant::now() + MAX_DELAY;
        loop {
            let quiet = (Instant::now() + SETTLE).min(deadline);
            match tokio::time::timeout_at(quiet, self.read()).await {
                Ok(()) if Instant::now() < deadline => {}
                _ => break,
            }
        }
        std::mem::take(&mut self.pending)
    }

    /// Reads the events there are (waiting for some) into `pending`.
    async fn read(&mut self) {
        let mut guard = match self.fd.readable().await {
            Ok(guard) => guard,
            Err(err) => {
                error!(error = %err, "cannot wait for inotify events; rescanning in a second");
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.pending.rescan = true;
                return;
            }
        };
        let events = match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(Into::into)) {
            Ok(Ok(events)) => events,
            Ok(Err(err)) => {
                warn!(error = %err, "cannot read inotify events; rescanning");
                self.pending.rescan = true;
                return;
            }
            Err(_would_block) => return,
        };
        for event in events {
            self.add(event);
        }
    }

    fn add(&mut self, event: InotifyEvent) {
        let mask = event.mask;
        if mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            warn!(dir = %self.dir.display(), "inotify event queue overflowed, rescanning");
            self.pending.rescan = true;
            return;
        }
        if Some(event.wd) != self.wd {
            return; // A watch already dropped.
        }
        if mask.intersects(
            AddWatchFlags::IN_DELETE_SELF
                | AddWatchFlags::IN_MOVE_SELF
                | AddWatchFlags::IN_IGNORED
                | AddWatchFlags::IN_UNMOUNT,
        ) {
            self.pending.dir_gone = true;
            return;
        }
        let Some(name) = event.name else { return };
        let path = self.dir.join(&name);
        if name.as_encoded_bytes().starts_with(b"..") {
            // A ConfigMap volume's `..data` swapped (or its timestamped directory).
            self.pending.rescan = true;
        } else if !mask.contains(AddWatchFlags::IN_ISDIR) && manifest_format(&path).is_some() {
            self.pending.names.insert(path);
        }
    }
}

fn log_problems(rescan: &Rescan) {
    for err in &rescan.errors {
        let path = err.path().display();
        let error = error_chain(err);
        match err {
            ManifestError::ReadDir { .. } | ManifestError::NotADirectory { .. } => {
                warn!(%path, %error, "cannot read manifest directory, keeping current state");
            }
            ManifestError::Duplicate { first, .. } => {
                error!(%path, first = %first.display(), %error, "duplicate manifest object");
            }
            ManifestError::Rejected { .. } => warn!(%path, %error, "conflicting manifests"),
            ManifestError::NotAFile { .. } => warn!(%path, %error, "skipping manifest entry"),
            _ => warn!(%path, %error, "cannot load manifest file, keeping its last good objects"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;
    use std::path::Path;
    use std::time::Instant;

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(5);

    fn pod_yaml(name: &str, app: &str) -> String {
        format!(
            "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: shop
  labels:
    app: {app}
spec:
  containers:
  - name: nginx
    image: nginx:1.27
    ports:
    - containerPort: 80
"
        )
    }

    /// The `app` label of pod shop/`name`, `None` if there is no such pod.
    fn app(state: &ClusterState, name: &str) -> Option<String> {
        let labels = state.pod("shop", name)?.metadata.labels.as_ref();
        Some(
            labels
                .and_then(|l| l.get("app"))
                .cloned()
                .unwrap_or_default(),
        )
    }

    /// Waits until the published state satisfies `pred`; fails after [`DEADLINE`] (a bound
    /// against hanging, not a performance assertion).
    async fn wait_for(
        rx: &mut watch::Receiver<Arc<ClusterState>>,
        what: &str,
        pred: impl Fn(&ClusterState) -> bool,
    ) -> Arc<ClusterState> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let state = Arc::clone(&rx.borrow_and_update());
            if pred(&state) {
                return state;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => panic!("watcher stopped while waiting for {what}"),
                Err(_) => panic!("no state with {what} within {DEADLINE:?}: {state:?}"),
            }
        }
    }

    fn write(dir: &Path, name: &str, contents: &str) {
        fs::write(dir.join(name), contents).expect("write manifest");
    }

    /// Test that the watcher follows a file created, rewritten in place, replaced by a
    /// rename and deleted.
    #[tokio::test]
    async fn watch_follows_create_rewrite_rename_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Watch { state: mut rx, .. } = watch(dir.path().to_owned()).expect("watch");
        assert!(rx.borrow().is_empty());

        write(dir.path(), "web.yaml", &pod_yaml("web", "v1"));
        wait_for(&mut rx, "pod created", |s| {
            app(s, "web").as_deref() == Some("v1")
        })
        .await;

        write(dir.path(), "web.yaml", &pod_yaml("web", "v2-longer"));
        wait_for(&mut rx, "labels rewritten", |s| {
            app(s, "web").as_deref() == Some("v2-longer")
        })
        .await;

        write(dir.path(), ".web.yaml.tmp", &pod_yaml("web", "v3"));
        fs::rename(
            dir.path().join(".web.yaml.tmp"),
            dir.path().join("web.yaml"),
        )
        .expect("mv");
        wait_for(&mut rx, "file renamed over", |s| {
            app(s, "web").as_deref() == Some("v3")
        })
        .await;

        fs::remove_file(dir.path().join("web.yaml")).expect("rm");
        wait_for(&mut rx, "pod deleted", |s| app(s, "web").is_none()).await;
    }

    /// Test that a broken rewrite keeps the file's last good objects until it is fixed.
    #[tokio::test]
    async fn watch_keeps_last_good_on_broken_rewrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "web.yaml", &pod_yaml("web", "good"));
        let Watch { state: mut rx, .. } = watch(dir.path().to_owned()).expect("watch");
        assert_eq!(app(&rx.borrow(), "web").as_deref(), Some("good"));

        write(
            dir.path(),
            "web.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: [",
        );
        // The sentinel is written after the broken file, so any rescan that sees the
        // sentinel has also re-read the broken file.
        write(dir.path(), "sentinel.yaml", &pod_yaml("sentinel", "x"));
        let state = wait_for(&mut rx, "sentinel", |s| app(s, "sentinel").is_some()).await;
        assert_eq!(app(&state, "web").as_deref(), Some("good"));

        write(dir.path(), "web.yaml", &pod_yaml("web", "fixed"));
        wait_for(&mut rx, "fixed labels", |s| {
            app(s, "web").as_deref() == Some("fixed")
        })
        .await;
    }

    /// Test that files that are not manifests (other extensions, dotfiles, editor backups)
    /// are ignored.
    #[tokio::test]
    async fn watch_ignores_unrelated_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Watch { state: mut rx, .. } = watch(dir.path().to_owned()).expect("watch");
        write(dir.path(), "notes.txt", &pod_yaml("txt", "x"));
        write(dir.path(), ".web.yaml.swp", &pod_yaml("swp", "x"));
        write(dir.path(), "web.yaml~", &pod_yaml("backup", "x"));
        write(dir.path(), "web.yaml", &pod_yaml("web", "x"));
        let state = wait_for(&mut rx, "pod web", |s| app(s, "web").is_some()).await;
        let names: Vec<_> = state
            .pods()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        assert_eq!(names, ["web"]);
        let labels = BTreeMap::from([("app".to_owned(), "x".to_owned())]);
        assert_eq!(state.pods_by_labels(Some("shop"), &labels).len(), 1);
    }

    /// Test that watching a missing directory fails at start.
    #[tokio::test]
    async fn watch_missing_dir_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Err(err) = watch(dir.path().join("missing")) else {
            panic!("watching a missing directory succeeded");
        };
        assert!(matches!(err, ManifestError::ReadDir { .. }), "{err}");
    }

    /// Test that the watcher task ends once every receiver is dropped.
    #[tokio::test]
    async fn watch_stops_when_receivers_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Watch { state, task, .. } = watch(dir.path().to_owned()).expect("watch");
        drop(state);
        tokio::time::timeout(DEADLINE, task)
            .await
            .expect("task ends")
            .expect("task does not panic");
    }

    /// Test that the directory removed keeps the last state, and once it is back (with other
    /// files) it is read again.
    #[tokio::test]
    async fn watch_follows_dir_removed_and_recreated() {
        let parent = tempfile::tempdir().expect("tempdir");
        let dir = parent.path().join("manifests");
        fs::create_dir(&dir).expect("mkdir");
        write(&dir, "web.yaml", &pod_yaml("web", "old"));
        let Watch { state: mut rx, .. } = watch(dir.clone()).expect("watch");
        assert_eq!(app(&rx.borrow(), "web").as_deref(), Some("old"));
        let aside = parent.path().join("aside");
        fs::rename(&dir, &aside).expect("mv away");
        fs::create_dir(&dir).expect("mkdir again");
        write(&dir, "db.yaml", &pod_yaml("db", "new"));
        let state = wait_for(&mut rx, "the new directory read", |s| {
            app(s, "db").is_some()
        })
        .await;
        assert_eq!(
            app(&state, "web"),
            None,
            "the old directory's files are gone"
        );
        // Changes in the directory moved away are not followed; those in the new one are.
        write(&aside, "aside.yaml", &pod_yaml("aside", "x"));
        write(&dir, "db.yaml", &pod_yaml("db", "v2"));
        let state = wait_for(&mut rx, "db rewritten", |s| {
            app(s, "db").as_deref() == Some("v2")
        })
        .await;
        assert_eq!(app(&state, "aside"), None);
        fs::remove_dir_all(&dir).expect("rm -r");
        fs::create_dir(&dir).expect("mkdir again");
        write(&dir, "web.yaml", &pod_yaml("web", "back"));
        wait_for(&mut rx, "the recreated directory read", |s| {
            app(s, "web").as_deref() == Some("back") && app(s, "db").is_none()
        })
        .await;
    }

    /// Test that a ConfigMap volume's update (a new timestamped directory, the `..data` link
    /// swapped by a rename; the manifests are links through `..data`) is followed.
    #[tokio::test]
    async fn watch_follows_configmap_volume_swap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let version = |n: &str, app_label: &str| {
            let sub = d.join(format!("..2026_{n}"));
            fs::create_dir(&sub).expect("mkdir");
            write(&sub, "web.yaml", &pod_yaml("web", app_label));
            std::os::unix::fs::symlink(format!("..2026_{n}"), d.join("..data_tmp")).expect("ln");
            fs::rename(d.join("..data_tmp"), d.join("..data")).expect("swap ..data");
        };
        version("1", "v1");
        std::os::unix::fs::symlink("..data/web.yaml", d.join("web.yaml")).expect("ln");
        let Watch { state: mut rx, .. } = watch(d.to_owned()).expect("watch");
        assert_eq!(app(&rx.borrow(), "web").as_deref(), Some("v1"));
        version("2", "v2");
        wait_for(&mut rx, "the swapped version", |s| {
            app(s, "web").as_deref() == Some("v2")
        })
        .await;
    }

    /// Test that the reader's status counts files, objects, rejected files and duplicates.
    #[tokio::test]
    async fn watch_status_counts_rejected_and_duplicates() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "a.yaml", &pod_yaml("web", "a"));
        let Watch {
            state: mut rx,
            mut status,
            ..
        } = watch(dir.path().to_owned()).expect("watch");
        write(dir.path(), "b.yaml", &pod_yaml("web", "b"));
        write(dir.path(), "bad.yaml", "kind: [");
        write(dir.path(), "c.yaml", &pod_yaml("c", "c"));
        wait_for(&mut rx, "pod c", |s| app(s, "c").is_some()).await;
        let want = ReaderStatus {
            files: 4,
            objects: 2,
            rejected_files: 1,
            duplicates: 1,
        };
        let deadline = Instant::now() + DEADLINE;
        while *status.borrow_and_update() != want {
            let left = deadline.saturating_duration_since(Instant::now());
            let changed = tokio::time::timeout(left, status.changed()).await;
            assert!(
                changed.is_ok(),
                "status {:?}, want {want:?}",
                *status.borrow()
            );
        }
        assert_eq!(app(&rx.borrow(), "web").as_deref(), Some("a"));
    }

    /// Test that a file renamed out of the directory (or to a name that is not a manifest)
    /// loses its objects, and one renamed in from elsewhere brings them; a subdirectory
    /// named like a manifest is not read.
    #[tokio::test]
    async fn watch_follows_renames_in_and_out() {
        let outside = tempfile::tempdir().expect("tempdir");
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "web.yaml", &pod_yaml("web", "x"));
        let Watch { state: mut rx, .. } = watch(dir.path().to_owned()).expect("watch");
        assert!(app(&rx.borrow(), "web").is_some());
        fs::rename(dir.path().join("web.yaml"), outside.path().join("web.yaml")).expect("mv out");
        wait_for(&mut rx, "web renamed out", |s| app(s, "web").is_none()).await;
        write(outside.path(), "db.yaml", &pod_yaml("db", "y"));
        fs::rename(outside.path().join("db.yaml"), dir.path().join("db.yaml")).expect("mv in");
        wait_for(&mut rx, "db renamed in", |s| app(s, "db").is_some()).await;
        fs::rename(dir.path().join("db.yaml"), dir.path().join("db.yaml.bak")).expect("mv");
        fs::create_dir(dir.path().join("sub.yaml")).expect("mkdir");
        write(
            &dir.path().join("sub.yaml"),
            "inner.yaml",
            &pod_yaml("inner", "z"),
        );
        write(dir.path(), "sentinel.yaml", &pod_yaml("sentinel", "s"));
        let state = wait_for(&mut rx, "sentinel", |s| app(s, "sentinel").is_some()).await;
        assert!(app(&state, "db").is_none() && app(&state, "inner").is_none());
    }
}
