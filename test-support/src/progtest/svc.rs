//! The service maps of the datapath under test, filled the way the agent fills them
//! (`datapath_common::svc`: frontend → id and count, backends in slots `1..=count`, Maglev
//! tables by id) and read back: the TC translation table, affinity and per-service counters.

use std::collections::HashMap as StdHashMap;

use aya::maps::{HashMap, PerCpuArray};
use datapath_common::{
    addr::IpKey,
    metrics, nat,
    svc::{self, Backend, BackendKey},
};

use super::{ip_key, Datapath};

impl Datapath {
    /// Programs frontend `key` as `value`, with `backends` (address, port in host order) in
    /// slots 1, 2, … ; `value.count` is taken as given, so a test can program a frontend with
    /// no ready backend.
    pub fn add_service(&mut self, key: svc::Key, value: svc::Value, backends: &[([u8; 4], u16)]) {
        let mut be: HashMap<_, BackendKey, Backend> =
            HashMap::try_from(self.ebpf.map_mut(svc::BACKEND_MAP_NAME).unwrap()).unwrap();
        for (slot, (addr, port)) in (1..).zip(backends) {
            let k = BackendKey { id: value.id, slot };
            be.insert(k, backend(*addr, *port), 0)
                .expect("insert backend");
        }
        let mut fe: HashMap<_, svc::Key, svc::Value> =
            HashMap::try_from(self.ebpf.map_mut(svc::MAP_NAME).unwrap()).unwrap();
        fe.insert(key, value, 0).expect("insert frontend");
    }

    /// Writes service `id`'s Maglev table (backend slot per entry).
    pub fn set_maglev(&mut self, id: u32, table: &[u16; svc::MAGLEV_M]) {
        let mut m: HashMap<_, u32, [u16; svc::MAGLEV_M]> =
            HashMap::try_from(self.ebpf.map_mut(svc::MAGLEV_MAP_NAME).unwrap()).unwrap();
        m.insert(id, table, 0).expect("insert Maglev table");
    }

    /// Every entry of the TC translation table (`SL_LBCT_V2`), lives left out.
    pub fn lb_ct(&self) -> StdHashMap<nat::Tuple, svc::Xlate> {
        let mut m = self.lb_ct_raw();
        for x in m.values_mut() {
            x.life = Default::default();
        }
        m
    }

    /// Every entry of the TC translation table with its life as the programs wrote it.
    pub fn lb_ct_raw(&self) -> StdHashMap<nat::Tuple, svc::Xlate> {
        let m: HashMap<_, nat::Tuple, svc::Xlate> =
            HashMap::try_from(self.ebpf.map(svc::CT_MAP_NAME).unwrap()).unwrap();
        m.iter()
            .map(|e| e.expect("read translation entry"))
            .collect()
    }

    /// Every entry of the affinity table (`SL_AFF_V1`).
    pub fn affinity(&self) -> Vec<(svc::AffinityKey, svc::Affinity)> {
        let m: HashMap<_, svc::AffinityKey, svc::Affinity> =
            HashMap::try_from(self.ebpf.map(svc::AFFINITY_MAP_NAME).unwrap()).unwrap();
        m.iter().map(|e| e.expect("read affinity entry")).collect()
    }

    /// (packets, bytes) of service `id` in `SL_SVCCNT_V1`, summed over CPUs.
    pub fn svc_counter(&self, id: u32) -> (u64, u64) {
        let a: PerCpuArray<_, metrics::Counter> =
            PerCpuArray::try_from(self.ebpf.map(svc::COUNTER_MAP_NAME).unwrap()).unwrap();
        a.get(&id, 0)
            .expect("read service counter")
            .iter()
            .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes))
    }
}

/// A frontend key; port in host order here, network order in the map.
pub fn frontend(addr: [u8; 4], port: u16, proto: u8, scope: u8) -> svc::Key {
    svc::Key::v4(addr, port.to_be(), proto, scope)
}

/// A backend (or, in reverse maps, a frontend); port in host order here.
pub fn backend(addr: [u8; 4], port: u16) -> Backend {
    Backend::v4(addr, port.to_be())
}

/// A translation to source `src` and destination `dst` (ports in host order here) for
/// service `id`, with `svc::XLATE_*` flags.
pub fn xlate(src: ([u8; 4], u16), dst: ([u8; 4], u16), id: u32, flags: u32) -> svc::Xlate {
    svc::Xlate {
        saddr: ip_key(src.0).addr,
        daddr: ip_key(dst.0).addr,
        sport: src.1.to_be(),
        dport: dst.1.to_be(),
        id,
        flags,
        _pad: 0,
        life: datapath_common::flow::Life::default(),
    }
}

/// The affinity key of a client seen in TC (by address, netns cookie 0).
pub fn tc_affinity_key(id: u32, client: [u8; 4]) -> svc::AffinityKey {
    svc::AffinityKey {
        netns_cookie: 0,
        id,
        _pad: 0,
        client: IpKey::v4(client),
        _pad2: [0; 4],
    }
}
