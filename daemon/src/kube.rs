//! Following the Kubernetes API server: one kube-rs watcher per kind the model holds
//! (namespaces, pods, services, endpoint slices, network policies, nodes, all cluster-wide),
//! all folded into one [`ClusterState`] on one tokio task, which publishes it on a
//! `tokio::sync::watch` channel, the same shape as [`crate::manifests::watch`].
//!
//! Pods of every node are watched, not only this node's: NetworkPolicy peers and Service
//! endpoints on other nodes are known by their labels and addresses, as in standalone mode.
//! Each Pod is cut down to what the agent reads before it is stored ([`trim`]), so the
//! state costs little per remote pod (`agent-rss-remote-pods` in bench/README.md).
//!
//! Each watcher lists, then watches from the list's resourceVersion, moving on with every
//! bookmark. A relist (at start, after a 410 Gone, after a failed list) arrives as `Init`,
//! `InitApply`…, `InitDone`: the listed objects are buffered and replace that kind's set in
//! the model only at `InitDone`, so objects deleted while we were not watching disappear
//! and no one ever sees a half-listed kind. kube's watcher relists after a 410 sent as a
//! watch `ERROR` event, but retries a watch answered with an HTTP 410 forever with the same
//! expired resourceVersion; [`relisting`] starts such a watcher afresh instead. Errors are
//! logged and retried with kube's default backoff (0.8 s doubling to 30 s).
//!
//! Changes are coalesced: the first change after a publish opens a [`COALESCE`] window, and
//! everything that arrives in it goes out as one new state, so a burst (a relist, a rollout)
//! reaches the agent as one update and a single change within [`COALESCE`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ::kube::config::{InClusterError, KubeConfigOptions, Kubeconfig, KubeconfigError};
use ::kube::runtime::watcher::{self, Event};
use ::kube::runtime::WatchStreamExt as _;
use ::kube::{Api, Client, Config, Resource};
use futures::stream::{self, BoxStream, SelectAll};
use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::model::{ClusterState, Kind, Object};

pub mod trim;

/// How long [`watch`] waits by default for every kind's initial list.
pub const DEFAULT_SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// How long changes are gathered before a new state is published.
pub const COALESCE: Duration = Duration::from_millis(50);

/// Where to find the API server, and which node this agent runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSource {
    /// A kubeconfig file to use instead of the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (for the log; every node's pods are watched).
    pub node_name: String,
    /// How long [`watch`] waits for every kind's initial list before failing.
    pub sync_timeout: Duration,
}

impl KubeSource {
    /// A source with the [`DEFAULT_SYNC_TIMEOUT`].
    pub fn new(kubeconfig: Option<PathBuf>, node_name: impl Into<String>) -> Self {
        Self {
            kubeconfig,
            node_name: node_name.into(),
            sync_timeout: DEFAULT_SYNC_TIMEOUT,
        }
    }
}

/// Errors starting to follow the API server.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The kubeconfig given explicitly cannot be read or used.
    #[error("cannot use kubeconfig {}", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: KubeconfigError,
    },
    /// Neither the in-cluster service account nor `KUBECONFIG`/`~/.kube/config` works. Two
    /// causes, so both are in the message rather than one in the source chain.
    #[error(
        "no kubernetes api config: not in a cluster ({in_cluster}), and no usable kubeconfig \
         in KUBECONFIG or ~/.kube/config ({kubeconfig}); pass --kubeconfig"
    )]
    NoConfig {
        in_cluster: InClusterError,
        kubeconfig: KubeconfigError,
    },
    /// The client cannot be built from the config (bad TLS material, for instance).
    #[error("cannot build a kubernetes api client")]
    Client {
        #[source]
        source: ::kube::Error,
    },
    /// Some kinds were still not listed when the timeout ran out; `last_error` is the last
    /// watcher error of the first of them that had one.
    #[error("initial list of {} not complete after {timeout:?}", kind_list(.pending))]
    SyncTimeout {
        timeout: Duration,
        pending: Vec<Kind>,
        #[source]
        last_error: Option<watcher::Error>,
    },
}

fn kind_list(kinds: &[Kind]) -> String {
    kinds
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Connects to the API server, lists every kind, then follows every change on a tokio task.
///
/// Returns once every kind's initial list is in the model, so the receiver starts with the
/// complete state, or fails after `src.sync_timeout` naming the kinds that were not listed.
/// Later the receiver is updated only when the state actually changed. The task runs until
/// every receiver is dropped or it is aborted; API errors while it runs are logged and
/// retried, leaving the state as it was.
pub async fn watch(
    src: KubeSource,
) -> Result<(watch::Receiver<Arc<ClusterState>>, JoinHandle<()>), KubeError> {
    let client = client(&src).await?;
    let mut follower = Follower::new(&client, &src.node_name);
    follower.sync(src.sync_timeout).await?;
    info!(
        node = %src.node_name,
        objects = follower.state.len(),
        "listed every kind from the kubernetes api, watching for changes"
    );
    let (tx, rx) = watch::channel(Arc::clone(&follower.state));
    let handle = tokio::spawn(follower.run(tx));
    Ok((rx, handle))
}

/// The client for `src`: its kubeconfig if it names one, else the in-cluster service
/// account, else `KUBECONFIG` or `~/.kube/config`. In-cluster comes first, unlike kube's
/// `Config::infer`, because the agent runs as a DaemonSet: a stray kubeconfig on the node
/// must not redirect it to another cluster.
async fn client(src: &KubeSource) -> Result<Client, KubeError> {
    let options = KubeConfigOptions::default();
    let config = match &src.kubeconfig {
        Some(path) => {
            let loaded = match Kubeconfig::read_from(path) {
                Ok(kubeconfig) => Config::from_custom_kubeconfig(kubeconfig, &options).await,
                Err(err) => Err(err),
            };
            loaded.map_err(|source| KubeError::Kubeconfig {
                path: path.clone(),
                source,
            })?
        }
        None => match Config::incluster() {
            Ok(config) => config,
            Err(in_cluster) => Config::from_kubeconfig(&options)
                .await
                .map_err(|kubeconfig| KubeError::NoConfig {
                    in_cluster,
                    kubeconfig,
                })?,
        },
    };
    info!(server = %config.cluster_url, "kubernetes api client configured");
    Client::try_from(config).map_err(|source| KubeError::Client { source })
}

/// One watcher's output, tagged with its kind.
type Update = (Kind, Result<Event<Object>, watcher::Error>);

/// Where one kind stands.
#[derive(Debug, Default)]
struct KindSync {
    /// An initial list has completed at least once.
    synced: bool,
    /// The objects of a relist in progress (between `Init` and `InitDone`).
    relist: Option<Vec<Object>>,
    /// The last error since the last completed list.
    last_error: Option<watcher::Error>,
}

/// The watchers and the model they feed.
struct Follower {
    updates: SelectAll<BoxStream<'static, Update>>,
    /// The working state. Shared with the channel right after a publish; the next change
    /// copies it ([`Arc::make_mut`]), so a publish costs one clone per batch.
    state: Arc<ClusterState>,
    kinds: BTreeMap<Kind, KindSync>,
}

impl Follower {
    fn new(client: &Client, node_name: &str) -> Self {
        // Default list semantic (most recent): a relist after a 410 must not go back in time
        // to an older watch-cache snapshot, and since Kubernetes 1.31 consistent lists are
        // served from the watch cache anyway. Bookmarks are on by default.
        let all = watcher::Config::default();
        debug!(node = node_name, "watching every kind cluster-wide");
        let updates = stream::select_all([
            follow::<Namespace>(Kind::Namespace, client, all.clone()),
            // Every pod, not only this node's: remote pods are policy peers and endpoints.
            follow::<Pod>(Kind::Pod, client, all.clone()),
            follow::<Service>(Kind::Service, client, all.clone()),
            follow::<EndpointSlice>(Kind::EndpointSlice, client, all.clone()),
            follow::<NetworkPolicy>(Kind::NetworkPolicy, client, all.clone()),
            // Every node, not only this one: other nodes' pod CIDRs are routes.
            follow::<Node>(Kind::Node, client, all),
        ]);
        Self {
            updates,
            state: Arc::new(ClusterState::new()),
            kinds: Kind::ALL.map(|k| (k, KindSync::default())).into(),
        }
    }

    /// Handles updates until every kind has been listed once, or fails at `timeout`.
    async fn sync(&mut self, timeout: Duration) -> Result<(), KubeError> {
        let deadline = Instant::now() + timeout;
        while self.kinds.values().any(|k| !k.synced) {
            match tokio::time::timeout_at(deadline, self.updates.next()).await {
                Ok(Some((kind, update))) => {
                    self.handle(kind, update);
                }
                // Watchers never end; if they did, waiting longer would not help.
                Ok(None) | Err(_) => return Err(self.timeout_error(timeout)),
            }
        }
        Ok(())
    }

    fn timeout_error(&mut self, timeout: Duration) -> KubeError {
        let pending: Vec<Kind> = self
            .kinds
            .iter()
            .filter(|(_, k)| !k.synced)
            .map(|(&kind, _)| kind)
            .collect();
        let last_error = pending
            .iter()
            .find_map(|kind| self.kinds.get_mut(kind)?.last_error.take());
        KubeError::SyncTimeout {
            timeout,
            pending,
            last_error,
        }
    }

    /// Follows updates and publishes the state until every receiver is gone.
    async fn run(mut self, tx: watch::Sender<Arc<ClusterState>>) {
        let mut publish_at: Option<Instant> = None;
        loop {
            tokio::select! {
                () = tx.closed() => {
                    debug!("no one follows the cluster state any more, stopping the watchers");
                    return;
                }
                () = sleep_until(publish_at) => {
                    publish_at = None;
                    self.publish(&tx);
                }
                update = self.updates.next() => {
                    let Some((kind, update)) = update else {
                        warn!("every kubernetes watcher ended, the cluster state is frozen");
                        return;
                    };
                    if self.handle(kind, update) && publish_at.is_none() {
                        publish_at = Some(Instant::now() + COALESCE);
                    }
                }
            }
        }
    }

    /// Publishes the working state if it differs from the published one.
    fn publish(&self, tx: &watch::Sender<Arc<ClusterState>>) {
        tx.send_if_modified(|published| {
            // A relist usually brings back what we had: compare before waking the agent.
            if Arc::ptr_eq(published, &self.state) || **published == *self.state {
                return false;
            }
            *published = Arc::clone(&self.state);
            debug!(objects = self.state.len(), "published cluster state");
            true
        });
    }

    /// Applies one watcher update to the model; returns whether the model may have changed.
    fn handle(&mut self, kind: Kind, update: Result<Event<Object>, watcher::Error>) -> bool {
        let sync = self.kinds.entry(kind).or_default();
        match update {
            Err(err) => {
                warn!(%kind, error = %err, "kubernetes watch failed, retrying after backoff");
                sync.last_error = Some(err);
                false
            }
            Ok(Event::Init) => {
                debug!(%kind, "listing");
                sync.relist = Some(Vec::new());
                false
            }
            Ok(Event::InitApply(obj)) => {
                sync.relist.get_or_insert_with(Vec::new).push(obj);
                false
            }
            Ok(Event::InitDone) => {
                let listed = sync.relist.take().unwrap_or_default();
                let objects = listed.len();
                sync.synced = true;
                sync.last_error = None;
                let removed = replace_kind(Arc::make_mut(&mut self.state), kind, listed);
                info!(%kind, objects, removed, "listed");
                true
            }
            Ok(Event::Apply(obj)) => {
                debug!(%kind, namespace = obj.namespace(), name = obj.name(), "applied");
                apply(Arc::make_mut(&mut self.state), obj);
                true
            }
            Ok(Event::Delete(obj)) => {
                let (namespace, name) = (obj.namespace(), obj.name().unwrap_or_default());
                debug!(%kind, namespace, name, "deleted");
                Arc::make_mut(&mut self.state).delete(kind, namespace, name)
            }
        }
    }
}

/// Sleeps until `at`, or forever if `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A backed-off, relisting watcher of every `K` matching `config`, as model objects.
fn follow<K>(kind: Kind, client: &Client, config: watcher::Config) -> BoxStream<'static, Update>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    Object: From<K>,
{
    let api: Api<K> = Api::all(client.clone());
    relisting(api, config)
        .default_backoff()
        .map(move |update| (kind, update.map(into_model)))
        .boxed()
}

/// kube's watcher, started afresh (so relisting) after a watch answered with HTTP 410.
///
/// kube relists after a 410 that comes as a watch `ERROR` event, but a 410 status on the
/// watch request itself leaves it retrying the expired resourceVersion forever. The error
/// is still passed on, so the backoff applies before the relist.
fn relisting<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    type Watcher<K> = BoxStream<'static, Result<Event<K>, watcher::Error>>;
    stream::unfold(None, move |current: Option<Watcher<K>>| {
        let mut events =
            current.unwrap_or_else(|| watcher::watcher(api.clone(), config.clone()).boxed());
        async move {
            let update = events.next().await?;
            let gone = matches!(
                &update,
                Err(watcher::Error::WatchStartFailed(::kube::Error::Api(status)))
                    if status.code == 410
            );
            Some((update, (!gone).then_some(events)))
        }
    })
}

/// A watcher event on `K` as one on model objects, without `managedFields` (large, and
/// nothing the datapath reads; dropping them also keeps server-side-apply bookkeeping from
/// looking like a change), and a Pod cut down to what the agent reads ([`trim::pod`]).
fn into_model<K>(event: Event<K>) -> Event<Object>
where
    K: Resource,
    Object: From<K>,
{
    let slim = |mut obj: K| {
        obj.meta_mut().managed_fields = None;
        match Object::from(obj) {
            Object::Pod(pod) => Object::Pod(trim::pod(pod)),
            other => other,
        }
    };
    match event {
        Event::Apply(obj) => Event::Apply(slim(obj)),
        Event::Delete(obj) => Event::Delete(slim(obj)),
        Event::Init => Event::Init,
        Event::InitApply(obj) => Event::InitApply(slim(obj)),
        Event::InitDone => Event::InitDone,
    }
}

fn apply(state: &mut ClusterState, obj: Object) {
    let kind = obj.kind();
    if let Err(err) = state.apply(obj) {
        warn!(%kind, error = %err, "ignoring object from the kubernetes api");
    }
}

/// Replaces every object of `kind` in `state` with `listed`; returns how many were removed.
fn replace_kind(state: &mut ClusterState, kind: Kind, listed: Vec<Object>) -> usize {
    let keep: BTreeSet<(Option<&str>, &str)> = listed
        .iter()
        .filter_map(|o| Some((o.namespace(), o.name()?)))
        .collect();
    let gone: Vec<(Option<String>, String)> = stored_keys(state, kind)
        .into_iter()
        .filter(|(ns, name)| !keep.contains(&(ns.as_deref(), name.as_str())))
        .collect();
    for (ns, name) in &gone {
        state.delete(kind, ns.as_deref(), name);
    }
    for obj in listed {
        apply(state, obj);
    }
    gone.len()
}

/// (namespace, name) of every object of `kind` in `state`; the namespace is `None` for
/// cluster-scoped kinds, as [`Object::namespace`] has it.
fn stored_keys(state: &ClusterState, kind: Kind) -> Vec<(Option<String>, String)> {
    let metas: Vec<_> = match kind {
        Kind::Namespace => state.namespaces().map(|o| &o.metadata).collect(),
        Kind::Pod => state.pods().map(|o| &o.metadata).collect(),
        Kind::Service => state.services().map(|o| &o.metadata).collect(),
        Kind::EndpointSlice => state.endpoint_slices().map(|o| &o.metadata).collect(),
        Kind::NetworkPolicy => state.network_policies().map(|o| &o.metadata).collect(),
        Kind::Node => state.nodes().map(|o| &o.metadata).collect(),
    };
    metas
        .into_iter()
        .filter_map(|m| {
            let ns = m.namespace.clone().filter(|_| kind.is_namespaced());
            Some((ns, m.name.clone()?))
        })
        .collect()
}
