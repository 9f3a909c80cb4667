//! Following a manifest directory while the agent runs: a tokio task rescans a
//! [`ManifestDir`] every interval and publishes each new [`ClusterState`] on a
//! `tokio::sync::watch` channel.
//!
//! Polling rather than inotify: it sees creation, in-place rewrites, replacement by rename
//! and deletion the same way, survives the directory itself being replaced, and needs no
//! watch descriptors. Rescans touch the file system, so they run on the blocking pool.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

use super::{error_chain, ManifestDir, ManifestError, Rescan};
use crate::model::ClusterState;

/// Loads the manifests of `dir`, then follows every change on a tokio task, rescanning
/// every `interval` (about 200 ms is right for people editing files).
///
/// The initial load runs on the calling thread, before this returns, so the receiver starts
/// with the full state; it is updated only when the state actually changed. Must be called
/// within a tokio runtime. The task runs until every receiver is dropped or it is aborted.
/// A missing `dir` at start is an error; problems later (unparsable files, the directory
/// disappearing) are logged as warnings and leave the state as it was.
pub fn watch(
    dir: PathBuf,
    interval: Duration,
) -> Result<(watch::Receiver<Arc<ClusterState>>, JoinHandle<()>), ManifestError> {
    let mut manifests = ManifestDir::open(dir)?;
    log_problems(&manifests.rescan());
    let (tx, rx) = watch::channel(Arc::clone(manifests.state()));
    let handle = tokio::spawn(run(manifests, tx, interval));
    Ok((rx, handle))
}

async fn run(mut manifests: ManifestDir, tx: watch::Sender<Arc<ClusterState>>, interval: Duration) {
    let dir = manifests.dir().display().to_string();
    let objects = manifests.state().len();
    info!(%dir, objects, ?interval, "loaded manifests, watching for changes");
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await; // The first tick is immediate; the initial load is done.
    loop {
        tokio::select! {
            () = tx.closed() => {
                debug!(%dir, "no one follows the cluster state any more, stopping");
                return;
            }
            _ = ticker.tick() => {}
        }
        let Some((back, rescan)) = blocking(move || {
            let rescan = manifests.rescan();
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
    }
}

/// Runs `f` on the blocking pool; `None` if the runtime cancelled it (shutting down).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => Some(value),
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(_) => None,
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
            ManifestError::Duplicate { .. } | ManifestError::Rejected { .. } => {
                warn!(%path, %error, "conflicting manifests");
            }
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

    const INTERVAL: Duration = Duration::from_millis(50);
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
        let (mut rx, _task) = watch(dir.path().to_owned(), INTERVAL).expect("watch");
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
        let (mut rx, _task) = watch(dir.path().to_owned(), INTERVAL).expect("watch");
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
        let (mut rx, _task) = watch(dir.path().to_owned(), INTERVAL).expect("watch");
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
        let err = watch(dir.path().join("missing"), INTERVAL).expect_err("no dir");
        assert!(matches!(err, ManifestError::ReadDir { .. }), "{err}");
    }

    /// Test that the watcher task ends once every receiver is dropped.
    #[tokio::test]
    async fn watch_stops_when_receivers_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (rx, task) = watch(dir.path().to_owned(), INTERVAL).expect("watch");
        drop(rx);
        tokio::time::timeout(DEADLINE, task)
            .await
            .expect("task ends")
            .expect("task does not panic");
    }
}
