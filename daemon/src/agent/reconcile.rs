//! What the agent derives from cluster state, brought in line on every tick: the pods'
//! acceleration flags, the Service frontends and the NetworkPolicy maps, each recomputed only
//! when its inputs (cluster state, this node's pods) changed, and the accelerated sockets that
//! a policy change denies taken back.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::Instant,
};

use anyhow::Context as _;
use datapath_common::config;
use datapath_user::hostport;

use super::{Shared, SOCKMAP_ANNOTATION};
use crate::{datapath, enforce, model::ClusterState, policy, services};

/// What services and policy are computed from: the cluster state and this node's pods
/// (namespace, name) → address, from the endpoint map. Read once per reconciliation.
pub(super) struct Inputs {
    cluster: Arc<ClusterState>,
    pods: BTreeMap<(String, String), IpAddr>,
    /// hostPort records of live attachments (their container id still owns their address).
    hostports: Vec<hostport::Record>,
}

impl Inputs {
    pub(super) fn read(shared: &Shared) -> anyhow::Result<Self> {
        let cluster = shared
            .cluster
            .read()
            .map_err(|_| anyhow::anyhow!("state lock poisoned"))?
            .clone();
        let eps = datapath_user::Endpoints::open(&shared.settings.bpffs)?.list()?;
        let live: BTreeSet<(&str, IpAddr)> = eps
            .iter()
            .map(|e| (e.container_id.as_str(), e.addr))
            .collect();
        let (mut hostports, unreadable) = hostport::read_all(&shared.settings.state_dir);
        for (path, why) in unreadable {
            tracing::warn!(path = %path.display(), %why, "unreadable hostPort record, ignored");
        }
        // A record whose attachment is gone (an interrupted ADD, or a DEL that never came)
        // opens nothing.
        // Endpoint records hold a long container id in digest form: compare in that form.
        hostports.retain(|r| {
            let id = datapath_user::meta_container_id(&r.container_id);
            r.pod_ips
                .iter()
                .all(|ip| live.contains(&(id.as_str(), *ip)))
        });
        let pods = eps
            .into_iter()
            .filter(|e| !e.name.is_empty())
            .map(|e| ((e.namespace, e.name), e.addr))
            .collect();
        Ok(Self {
            cluster,
            pods,
            hostports,
        })
    }
}

/// The inputs of the last computation: recompute only when one changes.
#[derive(Default)]
pub(super) struct Seen {
    cluster: Option<Arc<ClusterState>>,
    pods: BTreeMap<(String, String), IpAddr>,
    hostports: Vec<hostport::Record>,
}

impl Seen {
    /// Whether `inputs` differ from those last recorded with [`Seen::record`].
    fn changed(&self, inputs: &Inputs) -> bool {
        !(self
            .cluster
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, &inputs.cluster))
            && self.pods == inputs.pods
            && self.hostports == inputs.hostports)
    }

    fn record(&mut self, inputs: &Inputs) {
        self.cluster = Some(inputs.cluster.clone());
        self.pods = inputs.pods.clone();
        self.hostports = inputs.hostports.clone();
    }
}

/// NetworkPolicy: the maps, the last compiled set, and its inputs.
pub(super) struct PolicyState {
    pub(super) maps: enforce::PolicyMaps,
    pub(super) set: policy::PolicySet,
    pub(super) seen: Seen,
    /// Accelerated sockets are to be judged again at the next tick (after a revision bump).
    pub(super) recheck: bool,
}

/// The service load balancer's state: the maps, what was last computed, and from what.
pub(super) struct LbState {
    pub(super) maps: services::maps::ServiceMaps,
    pub(super) frontends: Vec<services::Frontend>,
    /// What the last compilation refused (each logged when it first appeared).
    pub(super) conflicts: Vec<services::Conflict>,
    pub(super) seen: Seen,
    pub(super) cfg: config::NodeConfig,
    /// hostPort mappings left out now, and how many times one was refused since start.
    pub(super) hostport_conflicts: Vec<services::hostport::Conflict>,
    pub(super) hostport_conflicts_total: u64,
}

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
pub(super) fn reconcile_pod_flags(shared: &Shared) -> anyhow::Result<()> {
    let bpffs = &shared.settings.bpffs;
    let mut map = datapath_user::Endpoints::open(bpffs)?;
    let eps = map.list()?;
    let mut ns = datapath_user::PodNamespaces::open(bpffs)?;
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
pub(super) fn sync_derived(shared: &Shared) -> Vec<anyhow::Error> {
    let inputs = match Inputs::read(shared) {
        Ok(i) => i,
        Err(e) => return vec![e],
    };
    check_pod_cidr(shared, &inputs);
    [sync_services(shared, &inputs), sync_policy(shared, &inputs)]
        .into_iter()
        .filter_map(Result::err)
        .collect()
}

/// Records the local pods whose address is outside the current pod CIDRs (the CIDR changed
/// since they were made: `--pod-cidr` or the Node's podCIDR), with a warning naming each one
/// when it is first seen. The datapath keeps serving them (masquerade follows the endpoint
/// map, not the CIDR) and IPAM hands out only the new CIDR; they go when they are deleted.
fn check_pod_cidr(shared: &Shared, inputs: &Inputs) {
    let outside: std::collections::BTreeSet<String> = inputs
        .pods
        .iter()
        .filter(|(_, ip)| !shared.pod_cidrs.iter().any(|c| c.contains(**ip)))
        .map(|((ns, name), ip)| format!("{ns}/{name} {ip}"))
        .collect();
    let Ok(mut seen) = shared.outside_cidr.lock() else {
        return;
    };
    let new: Vec<&String> = outside.difference(&seen).collect();
    if !new.is_empty() {
        let cidrs: Vec<String> = shared.pod_cidrs.iter().map(ToString::to_string).collect();
        tracing::warn!(
            pods = ?new,
            pod_cidrs = %cidrs.join(","),
            "pods hold addresses outside the pod CIDR (it changed since they were created): \
             they keep their addresses and reach pods and the outside until deleted; \
             recreate them to move them into the new CIDR"
        );
    }
    *seen = outside;
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
    let compiled = services::compile(
        cluster,
        &services::NodeInfo {
            node_name: &shared.settings.node_name,
            node_ips: &node_ips,
            local_pods: pods,
            default_maglev: shared.settings.maglev,
            pod_cidrs: &shared.pod_cidrs,
            external_ips: &shared.settings.external_ips,
            previous: &st.frontends,
        },
    );
    for c in compiled
        .conflicts
        .iter()
        .filter(|c| !st.conflicts.contains(c))
    {
        tracing::warn!(
            reason = c.kind.as_str(),
            object = %c.object,
            address = %c.address,
            holder = %c.holder,
            "service frontend refused: {c}"
        );
    }
    let mut want = compiled.frontends;
    let conflicts = services::hostport::apply(&mut want, &inputs.hostports, cluster, &node_ips);
    for c in conflicts
        .iter()
        .filter(|c| !st.hostport_conflicts.contains(c))
    {
        tracing::warn!(pod = %c.pod, port = %c.port, reason = %c.reason, "hostPort not programmed");
    }
    st.hostport_conflicts_total += conflicts
        .iter()
        .filter(|c| !st.hostport_conflicts.contains(c))
        .count() as u64;
    st.hostport_conflicts = conflicts;
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
    st.conflicts = compiled.conflicts;
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
    let stats = st.maps.sync(&set, &local)?;
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
