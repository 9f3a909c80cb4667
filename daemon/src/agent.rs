//! The node agent's life: set up the datapath, install the CNI plugin, serve the local API and
//! follow cluster state until asked to stop. Kept out of the binary's `main` so its pieces can
//! be read in one place: [`reconcile`] brings what is derived from cluster state (pod flags,
//! Services, NetworkPolicy) in line every tick, [`handler`] answers `sluicectl`.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use datapath_common::config;
use ipnetwork::IpNetwork;

use crate::{
    api, cni_install, datapath, enforce, flows, manifests, masq, model::ClusterState, node, nodes,
    policy, routing, services,
};

mod handler;
mod reconcile;

use reconcile::{reconcile_pod_flags, sync_derived, LbState, PolicyState, Seen};

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
    /// `--external-ips`: the ranges whose Service external IPs are honoured (empty: none).
    pub external_ips: Vec<IpNetwork>,
    /// `--masquerade-ports`; `None`: the widest range clear of the node's sockets.
    pub masquerade_ports: Option<std::ops::RangeInclusive<u16>>,
    /// Idle timeouts of flow state, and how often the collector runs.
    pub flow_timeouts: datapath_common::flow::Timeouts,
    pub flow_gc_interval: Duration,
    /// `--routing`: how pod traffic reaches other nodes' pods.
    pub routing: crate::nodes::RoutingMode,
    /// `--tunnel-port`: the VXLAN UDP port in tunnel mode.
    pub tunnel_port: u16,
    /// `--service-cidr`: the Service ClusterIP ranges (no Node's pod CIDR may overlap them).
    pub service_cidrs: Vec<IpNetwork>,
    /// Testing only: entries of the policy rule map to use at most (`None`: all).
    pub policy_rule_capacity: Option<usize>,
}

struct Shared {
    settings: Settings,
    uplink: String,
    node_ip: Ipv4Addr,
    pod_cidrs: Vec<IpNetwork>,
    adopted_maps: usize,
    started: Instant,
    cluster: RwLock<Arc<ClusterState>>,
    /// Standalone mode: what the manifest reader holds and refused.
    manifest_status: Option<tokio::sync::watch::Receiver<manifests::ReaderStatus>>,
    lb: Mutex<LbState>,
    policy: Mutex<PolicyState>,
    /// Local pods whose address is outside `pod_cidrs` (`ns/name address`).
    outside_cidr: Mutex<std::collections::BTreeSet<String>>,
    flows: Mutex<flows::Collector>,
    /// Routing to other nodes' pods as the last sync left it (`sluicectl status`).
    routing: Mutex<api::RoutingStatus>,
}

/// The pod CIDRs: from the flag, else from this node's Node object (`spec.podCIDRs`).
///
/// On a booting cluster the agent often starts before its Node exists, or before the node
/// IPAM controller has given it a pod CIDR: then it waits on the state channel, with one log
/// line naming the Node and what it waits for (again only if that changes), as the kubelet
/// waits for the network. `state` is left at the newest state seen. `None`: SIGINT/SIGTERM
/// came while waiting, nothing was set up. Without a state source nothing will ever come, so
/// that is an error.
async fn resolve_pod_cidrs(
    s: &Settings,
    updates: Option<&mut tokio::sync::watch::Receiver<Arc<ClusterState>>>,
    state: &mut Arc<ClusterState>,
) -> anyhow::Result<Option<Vec<IpNetwork>>> {
    if !s.pod_cidrs.is_empty() {
        return Ok(Some(s.pod_cidrs.clone()));
    }
    let Some(rx) = updates else {
        bail!(
            "no pod CIDR for node {:?}: pass --pod-cidr, or --manifests with a Node named {:?} \
             with spec.podCIDR, or --kubeconfig",
            s.node_name,
            s.node_name
        );
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install SIGTERM handler")?;
    let mut said = None;
    loop {
        let from_node = state.pod_cidrs(&s.node_name);
        if !from_node.is_empty() {
            if said.is_some() {
                tracing::info!(node = %s.node_name, pod_cidrs = ?from_node, "the Node has its pod CIDR");
            }
            return Ok(Some(from_node));
        }
        let what = if state.node(&s.node_name).is_none() {
            "to exist (no Node object of that name yet)"
        } else {
            "to get a pod CIDR (spec.podCIDRs is empty)"
        };
        if said != Some(what) {
            tracing::warn!(
                node = %s.node_name,
                "waiting for Node {:?} {what}; pass --pod-cidr to not wait",
                s.node_name
            );
            said = Some(what);
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(None),
            _ = term.recv() => return Ok(None),
            changed = rx.changed() => {
                changed.context("the cluster state source stopped while waiting for the Node")?;
                *state = rx.borrow_and_update().clone();
            }
        }
    }
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
    let mut manifest_status = None;
    let (mut updates, initial) = match (&s.manifests, use_api(&s)) {
        (Some(dir), _) => {
            let w = manifests::watch(dir.clone())
                .with_context(|| format!("watch manifests in {}", dir.display()))?;
            manifest_status = Some(w.status);
            let first = w.state.borrow().clone();
            (Some(w.state), first)
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
    let mut initial = initial;
    let Some(pod_cidrs) = resolve_pod_cidrs(&s, updates.as_mut(), &mut initial).await? else {
        tracing::info!("agent stopping before its Node was ready; nothing was set up");
        return Ok(());
    };
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
    // The same check the CNI plugin makes on its podCIDRs, plus the uplink's networks.
    ipam::check_pod_cidrs(&pod_cidrs, &node::iface_networks(&uplink)?)
        .context("refusing the pod CIDR (--pod-cidr or the Node's spec.podCIDRs)")?;
    let uplink_mtu = node::mtu(&uplink)?;
    // Pods' MTU: the uplink's, less the VXLAN overhead in tunnel mode, unless --mtu says.
    let mtu = match (s.mtu, s.routing) {
        (Some(m), _) => m,
        (None, nodes::RoutingMode::Tunnel) => {
            uplink_mtu.saturating_sub(datapath_common::peers::TUNNEL_OVERHEAD)
        }
        (None, nodes::RoutingMode::Native) => uplink_mtu,
    };

    // Masquerade ports: clear of the node's own connections (read in this network namespace).
    let ephemeral = masq::local_port_range()?;
    let ports = masq::resolve(s.masquerade_ports.clone(), &ephemeral)?;
    let listening = masq::listening_in(&ports);
    if !listening.is_empty() {
        tracing::warn!(
            ports = ?listening,
            "node sockets listen on ports of the masquerade range; a remote host connecting \
             to them from the very port a pod dialled would reach the pod instead"
        );
    }
    tracing::info!(
        masquerade_ports = %format!("{}-{}", ports.start(), ports.end()),
        ephemeral = %format!("{}-{}", ephemeral.start(), ephemeral.end()),
        "masquerade port range"
    );

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
    cfg.snat_port_min = *ports.start();
    cfg.snat_port_max = *ports.end();
    cfg.flags = if s.masquerade {
        config::FLAG_MASQUERADE
    } else {
        0
    };
    let svc_maps = services::maps::ServiceMaps::open(&s.bpffs)?;
    if !svc_maps.is_empty() {
        // Services programmed by an earlier agent keep working while this one catches up.
        cfg.flags |= config::FLAG_SERVICES;
    }
    let mut routing = routing::Routing::setup(
        s.routing,
        s.tunnel_port,
        uplink_ifindex,
        uplink_mtu,
        node_ip,
        &s.bpffs,
    )
    .await
    .context("set up routing to other nodes")?;
    cfg.routing = routing.datapath_mode();
    cfg.tunnel_ifindex = routing.tunnel_ifindex;
    cfg.tunnel_mtu = routing.tunnel_mtu;
    dp.configure(&cfg)?;
    dp.attach_uplink(&uplink)?;
    if routing.tunnel_ifindex != 0 {
        dp.attach_tunnel(routing::TUNNEL_DEVICE)?;
    }
    let mut routing_failed = false;
    if let Err(e) = sync_routing(&mut routing, &s, &pod_cidrs, &initial).await {
        tracing::warn!(error = %format!("{e:#}"), "program routes to other nodes");
        routing_failed = true;
    }
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
    if !cni_install::has_loopback(&s.cni_bin_dir) {
        tracing::warn!(
            bin_dir = %s.cni_bin_dir.display(),
            "no `loopback` plugin in the CNI bin dir: containerd and CRI-O fail every pod sandbox \
             without it (install kubernetes-cni or containernetworking-plugins)"
        );
    }

    let shared = Arc::new(Shared {
        settings: s.clone(),
        uplink,
        node_ip,
        pod_cidrs: pod_cidrs.clone(),
        adopted_maps: dp.adopted_maps,
        started: Instant::now(),
        cluster: RwLock::new(initial),
        manifest_status,
        policy: Mutex::new(PolicyState {
            maps: {
                let mut m = enforce::PolicyMaps::open(&s.bpffs)?;
                if let Some(c) = s.policy_rule_capacity {
                    m.capacity = c.min(m.capacity);
                }
                m
            },
            set: policy::PolicySet::default(),
            seen: Seen::default(),
            recheck: false,
        }),
        outside_cidr: Mutex::default(),
        lb: Mutex::new(LbState {
            maps: svc_maps,
            frontends: Vec::new(),
            conflicts: Vec::new(),
            seen: Seen::default(),
            cfg,
            hostport_conflicts: Vec::new(),
            hostport_conflicts_total: 0,
        }),
        routing: Mutex::new(routing.api_status()),
        flows: Mutex::new(flows::Collector::new(
            &s.bpffs,
            s.flow_timeouts,
            s.flow_gc_interval,
            (*ports.start(), *ports.end()),
        )),
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
    let mut gc_tick = tokio::time::interval(s.flow_gc_interval);
    gc_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = gc_tick.tick() => {
                let sh = shared.clone();
                let res = tokio::task::spawn_blocking(move || collect_flows(&sh)).await;
                if let Ok(Err(e)) = res {
                    tracing::warn!(error = %format!("{e:#}"), "collect expired flows");
                }
            }
            _ = tick.tick() => {
                if routing_failed {
                    let state = shared.cluster.read().map_err(|_| anyhow::anyhow!("state lock poisoned"))?.clone();
                    routing_failed = routed(&shared, &mut routing, &pod_cidrs, &state).await;
                }
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
                routing_failed = routed(&shared, &mut routing, &pod_cidrs, &state).await;
                *shared.cluster.write().map_err(|_| anyhow::anyhow!("state lock poisoned"))? = state;
                // Program what the change implies now rather than at the next tick.
                tick.reset_immediately();
            }
        }
    }
    server.abort();
    let _ = std::fs::remove_file(api::socket_path(&s.state_dir));
    tracing::info!("agent stopping; the datapath keeps forwarding");
    Ok(())
}

/// Routes to the peers `state` names: the peers map and the routes.
async fn sync_routing(
    r: &mut routing::Routing,
    s: &Settings,
    pod_cidrs: &[IpNetwork],
    state: &ClusterState,
) -> anyhow::Result<()> {
    let peers = nodes::peers(state, &s.node_name, pod_cidrs, &s.service_cidrs);
    r.sync(&peers).await
}

/// [`sync_routing`] for the agent's loop: logs a failure and publishes the status; returns
/// whether it failed (retried at the next tick).
async fn routed(
    shared: &Shared,
    r: &mut routing::Routing,
    pod_cidrs: &[IpNetwork],
    state: &ClusterState,
) -> bool {
    let res = sync_routing(r, &shared.settings, pod_cidrs, state).await;
    if let Err(e) = &res {
        tracing::warn!(error = %format!("{e:#}"), "program routes to other nodes");
    }
    if let Ok(mut st) = shared.routing.lock() {
        *st = r.api_status();
    }
    res.is_err()
}

/// One run of the flow collector; logs what it deleted.
fn collect_flows(shared: &Shared) -> anyhow::Result<()> {
    let mut c = shared
        .flows
        .lock()
        .map_err(|_| anyhow::anyhow!("flow collector lock poisoned"))?;
    c.run()?;
    let expired: u64 = c.maps.values().map(|m| m.expired).sum();
    if expired > 0 {
        tracing::debug!(expired, "expired flows collected");
    }
    Ok(())
}

/// How often what is derived from cluster state is reconciled (pods appear through CNI ADD,
/// which does not tell the agent); a cluster state change is reconciled at once.
const RECONCILE_EVERY: Duration = Duration::from_millis(250);

/// Pod annotation that turns socket acceleration off for one pod.
pub const SOCKMAP_ANNOTATION: &str = "sluice.dev/sockmap";

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
