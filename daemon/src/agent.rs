//! The node agent's life: set up the datapath, install the CNI plugin, serve the local API and
//! follow cluster state until asked to stop. Kept out of the binary's `main` so its pieces can
//! be read in one place.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use datapath_common::{config, nat, user};
use ipnetwork::IpNetwork;

use crate::{
    api, cni_install, datapath, enforce, lb, manifests, model::ClusterState, node, policy, services,
};

/// Everything the agent was told on its command line, resolved to concrete values.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_name: String,
    pub manifests: Option<PathBuf>,
    /// Follow a Kubernetes API server with this kubeconfig (else in-cluster config when the
    /// agent runs in a pod).
    pub kubeconfig: Option<PathBuf>,
    pub pod_cidrs: Vec<IpNetwork>,
    pub uplink: Option<String>,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    pub cgroup_root: Option<PathBuf>,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
    pub cni_plugin: PathBuf,
    pub masquerade: bool,
    pub mtu: Option<u32>,
    /// Accelerate same-node TCP with sockops + sk_msg on `cgroup_root`.
    pub sockmap: bool,
    /// Choose Service backends by Maglev consistent hashing unless a Service's
    /// `sluice.dev/lb-algorithm` annotation says otherwise (default: random).
    pub maglev: bool,
}

struct Shared {
    settings: Settings,
    uplink: String,
    node_ip: Ipv4Addr,
    pod_cidrs: Vec<IpNetwork>,
    adopted_maps: usize,
    started: Instant,
    cluster: RwLock<Arc<ClusterState>>,
    lb: Mutex<LbState>,
    policy: Mutex<PolicyState>,
}

/// What services and policy are computed from: the cluster state and this node's pods
/// (namespace, name) → address, from the endpoint map. Read once per reconciliation.
struct Inputs {
    cluster: Arc<ClusterState>,
    pods: BTreeMap<(String, String), IpAddr>,
}

impl Inputs {
    fn read(shared: &Shared) -> anyhow::Result<Self> {
        let cluster = shared
            .cluster
            .read()
            .map_err(|_| anyhow::anyhow!("state lock poisoned"))?
            .clone();
        let pods = user::Endpoints::open(&shared.settings.bpffs)?
            .list()?
            .into_iter()
            .filter(|e| !e.name.is_empty())
            .map(|e| ((e.namespace, e.name), e.addr))
            .collect();
        Ok(Self { cluster, pods })
    }
}

/// The inputs of the last computation: recompute only when one changes.
#[derive(Default)]
struct Seen {
    cluster: Option<Arc<ClusterState>>,
    pods: BTreeMap<(String, String), IpAddr>,
}

impl Seen {
    /// Whether `inputs` differ from those last recorded with [`Seen::record`].
    fn changed(&self, inputs: &Inputs) -> bool {
        !(self
            .cluster
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, &inputs.cluster))
            && self.pods == inputs.pods)
    }

    fn record(&mut self, inputs: &Inputs) {
        self.cluster = Some(inputs.cluster.clone());
        self.pods = inputs.pods.clone();
    }
}

/// NetworkPolicy: the maps, the last compiled set, and its inputs.
struct PolicyState {
    maps: enforce::PolicyMaps,
    set: policy::PolicySet,
    seen: Seen,
    /// Accelerated sockets are to be judged again at the next tick (after a revision bump).
    recheck: bool,
}

/// The service load balancer's state: the maps, what was last computed, and from what.
struct LbState {
    maps: lb::ServiceMaps,
    frontends: Vec<services::Frontend>,
    seen: Seen,
    cfg: config::NodeConfig,
}

impl api::Handler for Shared {
    fn status(&self) -> anyhow::Result<api::Status> {
        let bpffs = &self.settings.bpffs;
        let loaded = datapath_common::pins::PROGRAMS
            .iter()
            .all(|p| user::prog_path(bpffs, p).exists());
        let endpoints = user::Endpoints::open(bpffs)
            .and_then(|e| e.list())
            .map(|l| l.len());
        let counters = user::read_metrics(bpffs)
            .map(|c| {
                c.into_iter()
                    .map(|(r, p, b)| api::Counter {
                        reason: r.into(),
                        packets: p,
                        bytes: b,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(api::Status {
            version: env!("CARGO_PKG_VERSION").into(),
            node_name: self.settings.node_name.clone(),
            datapath_loaded: loaded && endpoints.is_ok(),
            bpffs: bpffs.display().to_string(),
            uplink: self.uplink.clone(),
            node_ip: self.node_ip.to_string(),
            pod_cidrs: self.pod_cidrs.iter().map(|c| c.to_string()).collect(),
            masquerade: self.settings.masquerade,
            sockmap: bpffs
                .join(datapath_common::pins::LINKS_DIR)
                .join(datapath_common::pins::LINK_SOCKOPS)
                .exists(),
            endpoints: endpoints.unwrap_or(0),
            adopted_maps: self.adopted_maps,
            manifests: self
                .settings
                .manifests
                .as_ref()
                .map(|p| p.display().to_string()),
            uptime_seconds: self.started.elapsed().as_secs(),
            counters,
            policy: self
                .policy
                .lock()
                .map(|p| api::PolicyStatus {
                    revision: p.maps.revision(),
                    rule_entries: p.maps.last.entries,
                    rule_capacity: p.maps.capacity,
                    isolated_endpoints: p.maps.last.isolated_endpoints,
                    overflowed_peers: p.maps.last.overflowed,
                    failed_closed_endpoints: p.maps.last.failed_closed,
                    overflowed_peers_total: p.maps.overflowed_total,
                    failed_closed_total: p.maps.failed_closed_total,
                })
                .unwrap_or_default(),
        })
    }

    fn policy_trace(
        &self,
        from: &str,
        to: &str,
        port: u16,
        protocol: &str,
    ) -> anyhow::Result<api::PolicyTrace> {
        let proto = match protocol.to_ascii_uppercase().as_str() {
            "TCP" => services::Proto::Tcp,
            "UDP" => services::Proto::Udp,
            "SCTP" => services::Proto::Sctp,
            other => bail!("unknown protocol {other:?} (TCP, UDP or SCTP)"),
        };
        let st = self
            .policy
            .lock()
            .map_err(|_| anyhow::anyhow!("policy lock poisoned"))?;
        let resolve = |what: &str| -> anyhow::Result<(IpAddr, Option<policy::PodRef>)> {
            if let Ok(ip) = what.parse::<IpAddr>() {
                return Ok((ip, None));
            }
            let (ns, name) = what
                .split_once('/')
                .with_context(|| format!("{what:?} is neither NAMESPACE/POD nor an address"))?;
            let pod = policy::PodRef::new(ns, name);
            let ep = st.set.endpoint(&pod).with_context(|| {
                format!("pod {what} has no known address (not on this node, or not started)")
            })?;
            let addr = *ep.addrs.first().context("pod without address")?;
            Ok((addr, Some(pod)))
        };
        let (src, src_pod) = resolve(from)?;
        let (dst, dst_pod) = resolve(to)?;
        let v = policy::verdict(
            &st.set,
            &policy::Connection {
                src,
                src_pod,
                dst,
                dst_pod,
                proto,
                port,
            },
        );
        let mut reasons = Vec::new();
        for side in [&v.egress, &v.ingress].into_iter().flatten() {
            reasons.push(format!(
                "{} of {}: {}",
                side.direction.as_str(),
                side.pod,
                side.decision
            ));
        }
        Ok(api::PolicyTrace {
            from: from.into(),
            to: to.into(),
            allowed: v.allowed,
            reasons,
        })
    }

    fn services(&self) -> anyhow::Result<Vec<api::ServiceFrontend>> {
        let st = self
            .lb
            .lock()
            .map_err(|_| anyhow::anyhow!("lb lock poisoned"))?;
        Ok(st
            .frontends
            .iter()
            .map(|f| {
                let id = st.maps.id_of(f).unwrap_or(0);
                api::ServiceFrontend {
                    service: format!("{}/{}", f.namespace, f.service),
                    port_name: f.port_name.clone(),
                    kind: format!("{:?}", f.kind),
                    frontend: format!(
                        "{}:{}/{}",
                        f.addr,
                        f.port,
                        format!("{:?}", f.proto).to_uppercase()
                    ),
                    scope: format!("{:?}", f.scope).to_lowercase(),
                    id,
                    algorithm: if f.maglev { "maglev" } else { "random" }.into(),
                    affinity_timeout_seconds: f.affinity_timeout,
                    snat: f.snat,
                    backends: f
                        .backends
                        .iter()
                        .map(|b| {
                            let local = if b.local { " (local)" } else { "" };
                            match b.addr {
                                IpAddr::V4(a) => format!("{a}:{}{local}", b.port),
                                IpAddr::V6(a) => format!("[{a}]:{}{local}", b.port),
                            }
                        })
                        .collect(),
                    translations: if id == 0 { 0 } else { st.maps.counter(id) },
                }
            })
            .collect())
    }

    fn endpoints(&self) -> anyhow::Result<Vec<api::Endpoint>> {
        let eps = user::Endpoints::open(&self.settings.bpffs)?.list()?;
        let cluster = self
            .cluster
            .read()
            .map_err(|_| anyhow::anyhow!("state lock poisoned"))?
            .clone();
        Ok(eps
            .into_iter()
            .map(|e| {
                let labels: BTreeMap<String, String> = cluster
                    .pod(&e.namespace, &e.name)
                    .and_then(|p| p.metadata.labels.clone())
                    .unwrap_or_default();
                api::Endpoint {
                    host_veth: nix::net::if_::if_indextoname(e.value.ifindex)
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|_| "?".into()),
                    namespace: e.namespace,
                    pod: e.name,
                    address: e.addr.to_string(),
                    ifindex: e.value.ifindex,
                    mac: user::mac_string(e.value.pod_mac),
                    container_id: e.container_id,
                    ifname: e.ifname,
                    labels,
                }
            })
            .collect())
    }
}

/// The pod CIDRs: from the flag, else from this node's Node object in the manifests.
fn resolve_pod_cidrs(s: &Settings, cluster: &ClusterState) -> anyhow::Result<Vec<IpNetwork>> {
    if !s.pod_cidrs.is_empty() {
        return Ok(s.pod_cidrs.clone());
    }
    let from_node = cluster.pod_cidrs(&s.node_name);
    if from_node.is_empty() {
        bail!(
            "no pod CIDR for node {:?}: pass --pod-cidr, or add a Node named {:?} with \
             spec.podCIDR to the manifests directory",
            s.node_name,
            s.node_name
        );
    }
    Ok(from_node)
}

/// Whether to follow an API server: `--kubeconfig` given, or running in a pod (in-cluster
/// config, `KUBERNETES_SERVICE_HOST`).
fn use_api(s: &Settings) -> bool {
    s.kubeconfig.is_some() || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
}

/// Takes `<state-dir>/agent.lock` for the life of the agent, or says who holds it.
fn lock_state_dir(dir: &std::path::Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let path = dir.join("agent.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow::anyhow!(
            "another sluice-agent is already running with --state-dir {} ({}: {e})",
            dir.display(),
            path.display()
        )
    })
}

/// Runs the agent until SIGINT/SIGTERM. The datapath stays in place when it returns.
pub async fn run(s: Settings) -> anyhow::Result<()> {
    std::fs::create_dir_all(&s.state_dir)
        .with_context(|| format!("create state dir {}", s.state_dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&s.state_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod {}", s.state_dir.display()))?;
    }
    // One agent per state dir: a second one would re-pin and reconfigure under the first.
    // The kernel drops the lock when the holder dies, even by SIGKILL.
    let _lock = lock_state_dir(&s.state_dir)?;

    // Cluster state first: the Node object may carry the pod CIDR.
    let (mut updates, initial) = match (&s.manifests, use_api(&s)) {
        (Some(dir), _) => {
            let (rx, _task) = manifests::watch(dir.clone(), Duration::from_millis(200))
                .with_context(|| format!("watch manifests in {}", dir.display()))?;
            let first = rx.borrow().clone();
            (Some(rx), first)
        }
        (None, true) => {
            let src = crate::kube::KubeSource::new(s.kubeconfig.clone(), s.node_name.clone());
            let (rx, _task) = crate::kube::watch(src)
                .await
                .context("follow the Kubernetes API server")?;
            let first = rx.borrow().clone();
            tracing::info!(objects = first.len(), "following the Kubernetes API server");
            (Some(rx), first)
        }
        (None, false) => {
            tracing::warn!(
                "no cluster state source (--manifests, --kubeconfig or in-cluster config): \
                 Services and pod labels are unknown; only --pod-cidr is used"
            );
            (None, Arc::new(ClusterState::default()))
        }
    };
    let pod_cidrs = resolve_pod_cidrs(&s, &initial)?;
    let pod4 = pod_cidrs
        .iter()
        .find_map(|c| match c {
            IpNetwork::V4(n) => Some(*n),
            IpNetwork::V6(_) => None,
        })
        .context("an IPv4 pod CIDR is required (IPv6-only is not supported yet)")?;

    let uplink = match &s.uplink {
        Some(u) => u.clone(),
        None => node::default_route_iface()?,
    };
    let uplink_ifindex = node::ifindex(&uplink)?;
    let node_ip = node::iface_ipv4(&uplink)?;
    let mtu = match s.mtu {
        Some(m) => m,
        None => node::mtu(&uplink)?,
    };

    let mounted = datapath::ensure_bpffs(&s.bpffs)?;
    if mounted {
        tracing::info!(bpffs = %s.bpffs.display(), "mounted a bpffs");
    }
    let sockops_cgroup = match (s.sockmap, &s.cgroup_root) {
        (true, Some(c)) => Some(c.as_path()),
        (true, None) => bail!("socket acceleration needs a cgroup v2 directory: pass --cgroup-root or --sockmap=false"),
        (false, _) => None,
    };
    let dp = datapath::Datapath::load(&s.bpffs, sockops_cgroup, s.cgroup_root.as_deref())?;
    let mut cfg = config::NodeConfig::zeroed();
    cfg.pod_cidr4 = pod4.network().octets();
    cfg.pod_prefix4 = pod4.prefix();
    cfg.node_ip4 = node_ip.octets();
    cfg.uplink_ifindex = uplink_ifindex;
    cfg.snat_port_min = nat::DEFAULT_PORT_MIN;
    cfg.snat_port_max = nat::DEFAULT_PORT_MAX;
    cfg.flags = if s.masquerade {
        config::FLAG_MASQUERADE
    } else {
        0
    };
    let svc_maps = lb::ServiceMaps::open(&s.bpffs)?;
    if !svc_maps.is_empty() {
        // Services programmed by an earlier agent keep working while this one catches up.
        cfg.flags |= config::FLAG_SERVICES;
    }
    dp.configure(&cfg)?;
    dp.attach_uplink(&uplink)?;
    let (reattached, stale) = dp.reattach_endpoints()?;
    node::enable_forwarding()?;
    tracing::info!(
        bpffs = %s.bpffs.display(),
        adopted_maps = dp.adopted_maps,
        reattached,
        stale,
        %uplink,
        %node_ip,
        pod_cidr = %pod4,
        "datapath loaded"
    );

    // The datapath is ready: now, and only now, offer the network to the runtime.
    let bin = cni_install::install_binary(&s.cni_plugin, &s.cni_bin_dir)?;
    let conf = cni_install::write_conflist(
        &s.cni_conf_dir,
        &cni_install::PluginConfig {
            pod_cidrs: &pod_cidrs,
            mtu,
            state_dir: &s.state_dir,
            bpffs: &s.bpffs,
        },
    )?;
    tracing::info!(binary = %bin.display(), conflist = %conf.display(), "CNI plugin installed");

    let shared = Arc::new(Shared {
        settings: s.clone(),
        uplink,
        node_ip,
        pod_cidrs: pod_cidrs.clone(),
        adopted_maps: dp.adopted_maps,
        started: Instant::now(),
        cluster: RwLock::new(initial),
        policy: Mutex::new(PolicyState {
            maps: enforce::PolicyMaps::open(&s.bpffs)?,
            set: policy::PolicySet::default(),
            seen: Seen::default(),
            recheck: false,
        }),
        lb: Mutex::new(LbState {
            maps: svc_maps,
            frontends: Vec::new(),
            seen: Seen::default(),
            cfg,
        }),
    });
    for e in sync_derived(&shared) {
        tracing::warn!(error = %format!("{e:#}"), "program services and network policy");
    }
    let listener = api::bind(&s.state_dir)?;
    let server = tokio::spawn(api::serve(listener, shared.clone()));
    tracing::info!(socket = %api::socket_path(&s.state_dir).display(), "agent ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install SIGTERM handler")?;
    let mut tick = tokio::time::interval(RECONCILE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tick.tick() => {
                // Pods appear through CNI ADD, which does not tell the agent: look often.
                let sh = shared.clone();
                let res = tokio::task::spawn_blocking(move || {
                    (reconcile_pod_flags(&sh), sync_derived(&sh))
                })
                .await;
                if let Ok((flags, derived)) = res {
                    if let Err(e) = flags {
                        tracing::warn!(error = %format!("{e:#}"), "reconcile pod flags");
                    }
                    for e in derived {
                        tracing::warn!(error = %format!("{e:#}"), "program services and network policy");
                    }
                }
            }
            changed = async {
                match updates.as_mut() {
                    Some(rx) => rx.changed().await.map(|_| rx.borrow().clone()),
                    None => std::future::pending().await,
                }
            } => {
                let Ok(state) = changed else {
                    tracing::warn!("cluster state watcher stopped");
                    updates = None;
                    continue;
                };
                on_cluster_change(&shared, &state);
                *shared.cluster.write().map_err(|_| anyhow::anyhow!("state lock poisoned"))? = state;
            }
        }
    }
    server.abort();
    let _ = std::fs::remove_file(api::socket_path(&s.state_dir));
    tracing::info!("agent stopping; the datapath keeps forwarding");
    Ok(())
}

/// How often pod flags are reconciled with the cluster state (annotations take effect within it).
const RECONCILE_EVERY: Duration = Duration::from_millis(250);

/// Pod annotation that turns socket acceleration off for one pod.
pub const SOCKMAP_ANNOTATION: &str = "sluice.dev/sockmap";

/// The `SL_PODNS_V1` flags a pod should have, from its annotations.
pub fn desired_pod_flags(pod: Option<&k8s_openapi::api::core::v1::Pod>) -> u32 {
    let off = pod
        .and_then(|p| p.metadata.annotations.as_ref())
        .and_then(|a| a.get(SOCKMAP_ANNOTATION))
        .is_some_and(|v| v.eq_ignore_ascii_case("off") || v.eq_ignore_ascii_case("false"));
    if off {
        datapath_common::sock::NS_FLAG_NO_SOCKMAP
    } else {
        0
    }
}

/// Brings every local pod's namespace flags in line with its annotations.
fn reconcile_pod_flags(shared: &Shared) -> anyhow::Result<()> {
    let bpffs = &shared.settings.bpffs;
    let mut map = user::Endpoints::open(bpffs)?;
    let eps = map.list()?;
    let mut ns = user::PodNamespaces::open(bpffs)?;
    let cluster = shared
        .cluster
        .read()
        .map_err(|_| anyhow::anyhow!("state lock poisoned"))?
        .clone();
    for e in eps.iter().filter(|e| e.netns_cookie != 0) {
        let want = desired_pod_flags(cluster.pod(&e.namespace, &e.name));
        // The endpoint entry (read by the peer's sockops) before the namespace entry.
        let ep_want = if want & datapath_common::sock::NS_FLAG_NO_SOCKMAP != 0 {
            e.value.flags | datapath_common::endpoint::FLAG_NO_SOCKMAP
        } else {
            e.value.flags & !datapath_common::endpoint::FLAG_NO_SOCKMAP
        };
        if ep_want != e.value.flags {
            map.set_flags(e.addr, ep_want)?;
        }
        if let Some(have) = ns.get(e.netns_cookie) {
            if have != want {
                ns.set(e.netns_cookie, want)?;
                tracing::info!(pod = %format!("{}/{}", e.namespace, e.name), flags = want, "pod flags updated");
            }
        }
    }
    Ok(())
}

/// Services and NetworkPolicy, each brought in line with the inputs read once; the errors of
/// either (one failing does not hold back the other).
fn sync_derived(shared: &Shared) -> Vec<anyhow::Error> {
    let inputs = match Inputs::read(shared) {
        Ok(i) => i,
        Err(e) => return vec![e],
    };
    [sync_services(shared, &inputs), sync_policy(shared, &inputs)]
        .into_iter()
        .filter_map(Result::err)
        .collect()
}

/// Recomputes the service frontends when the cluster state or the local pods changed, and
/// programs the difference into the maps.
fn sync_services(shared: &Shared, inputs: &Inputs) -> anyhow::Result<()> {
    let (cluster, pods) = (&inputs.cluster, &inputs.pods);
    let mut st = shared
        .lb
        .lock()
        .map_err(|_| anyhow::anyhow!("lb lock poisoned"))?;
    if !st.seen.changed(inputs) {
        return Ok(());
    }
    let started = Instant::now();
    let node_ips = [IpAddr::V4(shared.node_ip)];
    let want = services::frontends(
        cluster,
        &services::NodeInfo {
            node_name: &shared.settings.node_name,
            node_ips: &node_ips,
            local_pods: pods,
            default_maglev: shared.settings.maglev,
        },
    );
    let stats = st.maps.sync(&want, 0)?;
    let on = !st.maps.is_empty();
    if on != (st.cfg.flags & config::FLAG_SERVICES != 0) {
        if on {
            st.cfg.flags |= config::FLAG_SERVICES;
        } else {
            st.cfg.flags &= !config::FLAG_SERVICES;
        }
        datapath::write_config(&shared.settings.bpffs, &st.cfg)?;
    }
    if stats.added + stats.updated + stats.removed > 0 {
        tracing::info!(
            frontends = stats.frontends,
            added = stats.added,
            updated = stats.updated,
            removed = stats.removed,
            skipped = stats.skipped,
            ms = started.elapsed().as_millis() as u64,
            "services programmed"
        );
    }
    st.frontends = want;
    st.seen.record(inputs);
    Ok(())
}

/// Recompiles NetworkPolicy when the cluster state or the local pods changed, and programs
/// the difference into the maps.
fn sync_policy(shared: &Shared, inputs: &Inputs) -> anyhow::Result<()> {
    let (cluster, pods) = (&inputs.cluster, &inputs.pods);
    let mut st = shared
        .policy
        .lock()
        .map_err(|_| anyhow::anyhow!("policy lock poisoned"))?;
    if !st.seen.changed(inputs) {
        if std::mem::take(&mut st.recheck) {
            take_back_denied(&st.maps, shared.node_ip)?;
        }
        return Ok(());
    }
    let started = Instant::now();
    let node_ips = [IpAddr::V4(shared.node_ip)];
    let set = policy::compile(
        cluster,
        &policy::LocalNode {
            node_name: &shared.settings.node_name,
            node_ips: &node_ips,
            local_pods: pods,
        },
    );
    let local: std::collections::BTreeSet<IpAddr> = pods.values().copied().collect();
    let revision = st.maps.revision();
    let stats = st.maps.sync(&set, cluster, &local)?;
    if stats.revision != revision {
        take_back_denied(&st.maps, shared.node_ip)?;
        // Once more at the next tick: a socket whose sockops ran under the old revision may
        // have entered the sockhash after this walk passed.
        st.recheck = true;
    }
    if stats.written + stats.removed > 0 || st.set != set {
        tracing::info!(
            entries = stats.entries,
            written = stats.written,
            removed = stats.removed,
            isolated = stats.isolated_endpoints,
            overflowed = stats.overflowed,
            failed_closed = stats.failed_closed,
            revision = stats.revision,
            ms = started.elapsed().as_millis() as u64,
            "network policy programmed"
        );
    }
    st.set = set;
    st.seen.record(inputs);
    Ok(())
}

/// Takes accelerated sockets that the policy now denies back to the packet path.
fn take_back_denied(maps: &enforce::PolicyMaps, node: Ipv4Addr) -> anyhow::Result<()> {
    let taken = maps
        .recheck_accelerated(node)
        .context("recheck accelerated connections")?;
    if taken > 0 {
        tracing::info!(
            sockets = taken,
            "accelerated sockets of connections the policy now denies taken back to the packet path"
        );
    }
    Ok(())
}

fn on_cluster_change(shared: &Shared, state: &ClusterState) {
    let _span = tracing::info_span!("reconcile", node = %shared.settings.node_name).entered();
    tracing::info!(objects = state.len(), "cluster state changed");
    if shared.settings.pod_cidrs.is_empty() {
        let now = state.pod_cidrs(&shared.settings.node_name);
        if !now.is_empty() && now != shared.pod_cidrs {
            tracing::warn!(
                old = ?shared.pod_cidrs,
                new = ?now,
                "the Node's pod CIDR changed; restart the agent to use it (existing pods keep their addresses)"
            );
        }
    }
}
