//! The datapath's maps. Kernel names carry a layout version (`_V1`): a change of key or value
//! layout gets a new name, so an agent never adopts a pin of the wrong shape. All are pinned by
//! name under the agent's `<bpffs>/sluice/` so they survive agent restarts and are shared with
//! the CNI plugin.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, SockHash},
};
use datapath_common::{addr::IpKey, config, endpoint, metrics, nat, sock};

#[map(name = "SL_CFG_V1")]
pub static CONFIG: Array<config::NodeConfig> = Array::pinned(config::MAX_ENTRIES, 0);

#[map(name = "SL_EP_V1")]
pub static ENDPOINTS: HashMap<IpKey, endpoint::Value> = HashMap::pinned(endpoint::MAX_ENTRIES, 0);

/// Not read by programs: kept beside the endpoint map for the agent, CLI and GC.
#[map(name = "SL_EPMETA_V2")]
pub static ENDPOINT_META: HashMap<IpKey, endpoint::Meta> =
    HashMap::pinned(endpoint::MAX_ENTRIES, 0);

#[map(name = "SL_METRIC_V1")]
pub static METRICS: PerCpuArray<metrics::Counter> = PerCpuArray::pinned(metrics::MAX_ENTRIES, 0);

#[map(name = "SL_SNAT_V1")]
pub static SNAT: LruHashMap<nat::Tuple, nat::Binding> = LruHashMap::pinned(nat::MAX_ENTRIES, 0);

#[map(name = "SL_RSNAT_V1")]
pub static REV_SNAT: LruHashMap<nat::Tuple, nat::Binding> = LruHashMap::pinned(nat::MAX_ENTRIES, 0);

#[map(name = "SL_SOCK_V1")]
pub static SOCKHASH: SockHash<sock::SockKey> = SockHash::pinned(sock::MAX_ENTRIES, 0);

#[map(name = "SL_PODNS_V1")]
pub static POD_NAMESPACES: HashMap<u64, u32> = HashMap::pinned(sock::PODNS_MAX_ENTRIES, 0);
