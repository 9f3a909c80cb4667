//! The datapath's maps. Kernel names carry a layout version (`_V1`, `_V2`): a change of key or value
//! layout gets a new name, so an agent never adopts a pin of the wrong shape. All are pinned by
//! name under the agent's `<bpffs>/sluice/` so they survive agent restarts and are shared with
//! the CNI plugin.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, SockHash},
};
use datapath_common::{addr::IpKey, config, endpoint, metrics, nat, peers, policy, sock, svc};

#[map(name = "SL_CFG_V2")]
pub static CONFIG: Array<config::NodeConfig> = Array::pinned(config::MAX_ENTRIES, 0);

#[map(name = "SL_EP_V1")]
pub static ENDPOINTS: HashMap<IpKey, endpoint::Value> = HashMap::pinned(endpoint::MAX_ENTRIES, 0);

/// Not read by programs: kept beside the endpoint map for the agent, CLI and GC.
#[map(name = "SL_EPMETA_V2")]
pub static ENDPOINT_META: HashMap<IpKey, endpoint::Meta> =
    HashMap::pinned(endpoint::MAX_ENTRIES, 0);

#[map(name = "SL_METRIC_V1")]
pub static METRICS: PerCpuArray<metrics::Counter> = PerCpuArray::pinned(metrics::MAX_ENTRIES, 0);

#[map(name = "SL_SNAT_V2")]
pub static SNAT: LruHashMap<nat::Tuple, nat::Binding> = LruHashMap::pinned(nat::MAX_ENTRIES, 0);

#[map(name = "SL_RSNAT_V2")]
pub static REV_SNAT: LruHashMap<nat::Tuple, nat::Binding> = LruHashMap::pinned(nat::MAX_ENTRIES, 0);

#[map(name = "SL_SOCK_V1")]
pub static SOCKHASH: SockHash<sock::SockKey> = SockHash::pinned(sock::MAX_ENTRIES, 0);

#[map(name = "SL_SOCKJN_V1")]
pub static SOCK_JOINED: LruHashMap<sock::SockKey, sock::Joined> =
    LruHashMap::pinned(sock::JOIN_MAX_ENTRIES, 0);

#[map(name = "SL_PODNS_V1")]
pub static POD_NAMESPACES: HashMap<u64, u32> = HashMap::pinned(sock::PODNS_MAX_ENTRIES, 0);

#[map(name = "SL_SVC_V1")]
pub static SERVICES: HashMap<svc::Key, svc::Value> = HashMap::pinned(svc::MAX_ENTRIES, 0);

#[map(name = "SL_BE_V1")]
pub static BACKENDS: HashMap<svc::BackendKey, svc::Backend> =
    HashMap::pinned(svc::BACKEND_MAX_ENTRIES, 0);

/// Allocated on use (`BPF_F_NO_PREALLOC`): most services have no Maglev table.
#[map(name = "SL_MAGLEV_V1")]
pub static MAGLEV: HashMap<u32, [u16; svc::MAGLEV_M]> =
    HashMap::pinned(svc::MAGLEV_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "SL_AFF_V1")]
pub static AFFINITY: LruHashMap<svc::AffinityKey, svc::Affinity> =
    LruHashMap::pinned(svc::AFFINITY_MAX_ENTRIES, 0);

#[map(name = "SL_SKREV_V2")]
pub static SOCK_REV: LruHashMap<svc::SockRevKey, svc::SockRev> =
    LruHashMap::pinned(svc::SOCK_REV_MAX_ENTRIES, 0);

#[map(name = "SL_SVCCNT_V1")]
pub static SVC_COUNTERS: PerCpuArray<metrics::Counter> = PerCpuArray::pinned(svc::MAX_IDS, 0);

#[map(name = "SL_LBCT_V2")]
pub static LB_CT: LruHashMap<nat::Tuple, svc::Xlate> = LruHashMap::pinned(svc::CT_MAX_ENTRIES, 0);

const BPF_F_NO_PREALLOC: u32 = 1;

/// Per-CPU scratch space for TC service translation: the structs a new flow needs would not
/// fit the 512-byte BPF stack beside the caller's frame. Not pinned: nothing outlives a packet.
#[repr(C)]
pub struct LbScratch {
    pub tuple: nat::Tuple,
    pub reply: nat::Tuple,
    pub fwd: svc::Xlate,
    pub rev: svc::Xlate,
    pub aff: svc::AffinityKey,
    pub aff_val: svc::Affinity,
}

#[map(name = "SL_LBSCR")]
pub static LB_SCRATCH: PerCpuArray<LbScratch> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "SL_POL_V1")]
pub static POLICY: LpmTrie<policy::RuleData, policy::RuleValue> =
    LpmTrie::pinned(policy::MAX_ENTRIES, 0);

#[map(name = "SL_CT_V2")]
pub static CONNTRACK: LruHashMap<nat::Tuple, policy::CtEntry> =
    LruHashMap::pinned(policy::CT_MAX_ENTRIES, 0);

#[map(name = "SL_POLREV_V1")]
pub static POLICY_REVISION: Array<u32> = Array::pinned(1, 0);

/// Not read by programs: the agent writes it, the CNI plugin reads it at ADD.
#[map(name = "SL_PODISO_V1")]
pub static POD_ISOLATION: HashMap<u64, u32> = HashMap::pinned(policy::POD_ISOLATION_MAX_ENTRIES, 0);

/// Other nodes' pod CIDRs (`datapath_common::peers`): where to send a remote pod's traffic.
#[map(name = "SL_PEERS_V1")]
pub static PEERS: LpmTrie<peers::Key, peers::Value> = LpmTrie::pinned(peers::MAX_ENTRIES, 0);
