//! Service load balancing (kube-proxy replacement): the frontend, backend, Maglev, affinity and
//! reverse-translation maps the socket hooks (`sl_sock4_*`) and the TC programs read, and the
//! agent writes from the cluster's Services and EndpointSlices.
//!
//! A frontend is (address, port, protocol, scope): a ClusterIP port, a NodePort on one node
//! address, an external or load-balancer IP. Its [`Value`] names a stable service id and the
//! number of backends; backend `n` of service `id` is the [`BACKEND_MAP_NAME`] entry
//! `BackendKey { id, slot: n }` for `n` in `1..=count` (slot 0 is never used, so a zeroed key
//! never matches). Lookups are O(1) whatever the number of services: one hash lookup for the
//! frontend and one for the chosen backend.
//!
//! Updates are ordered so a reader never picks a backend that is not in the old or the new
//! set: new slots are written first, then the count, then slots past the new count go.

use crate::addr::IpKey;

/// Frontends: [`Key`] → [`Value`].
pub const MAP_NAME: &str = "SL_SVC_V1";
/// Backends: [`BackendKey`] → [`Backend`].
pub const BACKEND_MAP_NAME: &str = "SL_BE_V1";
/// Maglev lookup tables: service id → `[u16; MAGLEV_M]` of backend slots.
pub const MAGLEV_MAP_NAME: &str = "SL_MAGLEV_V1";
/// ClientIP affinity (LRU): [`AffinityKey`] → [`Affinity`].
pub const AFFINITY_MAP_NAME: &str = "SL_AFF_V1";
/// Socket reverse translation: [`SockRevKey`] → [`SockRev`] (the frontend), so that `recvmsg`
/// and `getpeername` show the address the application dialled. Socket cookies are never
/// reused, so an entry cannot apply to another socket; its end: the entry of a connected socket
/// (TCP, connected UDP) is deleted when the socket is released (`sl_sock_rel`, cgroup
/// `sock_release`, kernel ≥ 5.9); one of an unconnected UDP socket (`sendmsg`) goes after the
/// `udp-replied` idle timeout (120 s), refreshed by every send and receive; the collector also
/// ends a connected entry left idle past the TCP established timeout (a socket connected again
/// elsewhere). LRU only as a safety net.
pub const SOCK_REV_MAP_NAME: &str = "SL_SKREV_V2";
/// Per-service counters (per CPU), indexed by service id: connections (socket hooks) or
/// packets (TC) in `packets`.
pub const COUNTER_MAP_NAME: &str = "SL_SVCCNT_V1";
/// TC-level translation state, both directions: the tuple as a packet arrives → the tuple to
/// rewrite it to ([`Xlate`]). Lifetime as conntrack's (see [`crate::flow`]): each entry
/// records its direction's packets; the agent's collector deletes both entries of a flow
/// together 10 s after a TCP close (FIN both ways or RST), UDP after 30 s idle (120 s once
/// answered), TCP after 6 h idle. A client's SYN on a closed flow chooses again; a SYN that
/// is not the translated connection (from the backend, or straight from the client to the
/// backend on the reply tuple's ports) is never translated and makes the entry stale. LRU
/// only as a safety net.
pub const CT_MAP_NAME: &str = "SL_LBCT_V2";

pub const MAX_ENTRIES: u32 = 65536;
pub const BACKEND_MAX_ENTRIES: u32 = 262144;
/// Service ids are `1..MAX_IDS` (0 is "none"); they index the counter array.
pub const MAX_IDS: u32 = 65536;
pub const MAGLEV_MAX_ENTRIES: u32 = 4096;
pub const AFFINITY_MAX_ENTRIES: u32 = 65536;
pub const SOCK_REV_MAX_ENTRIES: u32 = 262144;
pub const CT_MAX_ENTRIES: u32 = 131072;
/// Maglev table size: a prime well above the backend count (Maglev's paper suggests M ≥ 100·N
/// for ≤ 1% imbalance; 1021 keeps that for up to ~10 backends and stays fair far beyond).
pub const MAGLEV_M: usize = 1021;
/// The most backends one frontend can have (slots are u16 in the Maglev table).
pub const MAX_BACKENDS: u32 = 65535;

/// Traffic from pods and processes on this node (socket hooks, `sl_from_pod`).
pub const SCOPE_INTERNAL: u8 = 0;
/// Traffic arriving from outside the node (`sl_up_ingress`).
pub const SCOPE_EXTERNAL: u8 = 1;

/// The source a pod's packets get when TC translation sends them back to the pod itself
/// (hairpin): with its own address as the source, the pod would answer itself over loopback
/// and the reply would never be translated back. Link-local, never a pod's or node's address;
/// the pod routes it through its default gateway, i.e. back into `sl_from_pod`.
pub const HAIRPIN_SOURCE4: [u8; 4] = [169, 254, 42, 1];

/// Stick a client to its backend for `affinity_timeout` seconds (`sessionAffinity: ClientIP`).
pub const FLAG_AFFINITY: u32 = 1 << 0;
/// Choose by Maglev consistent hashing instead of at random.
pub const FLAG_MAGLEV: u32 = 1 << 1;
/// External traffic (externalTrafficPolicy: Cluster): translate the client's source to the
/// node's address so replies come back through this node.
pub const FLAG_SNAT: u32 = 1 << 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub addr: IpKey,
    /// Network order.
    pub port: u16,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP).
    pub proto: u8,
    /// [`SCOPE_INTERNAL`] or [`SCOPE_EXTERNAL`].
    pub scope: u8,
}
const _: () = assert!(core::mem::size_of::<Key>() == 24);

impl Key {
    /// The one constructor for IPv4 frontends, used by every program and the agent.
    #[inline(always)]
    pub const fn v4(addr: [u8; 4], port_be: u16, proto: u8, scope: u8) -> Self {
        Self {
            addr: IpKey::v4(addr),
            port: port_be,
            proto,
            scope,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Value {
    /// Stable id of this frontend: backend slots, Maglev table, affinity and counters.
    pub id: u32,
    /// Backends in slots `1..=count`; 0 means "no ready endpoint": refuse.
    pub count: u32,
    /// `FLAG_*`.
    pub flags: u32,
    /// Affinity timeout in seconds (with [`FLAG_AFFINITY`]).
    pub affinity_timeout: u32,
}
const _: () = assert!(core::mem::size_of::<Value>() == 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub id: u32,
    /// `1..=count`.
    pub slot: u32,
}
const _: () = assert!(core::mem::size_of::<BackendKey>() == 8);

/// An address and port: a backend, or (in reverse maps) the frontend it stands behind.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    pub addr: IpKey,
    /// Network order.
    pub port: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<Backend>() == 24);

impl Backend {
    #[inline(always)]
    pub const fn v4(addr: [u8; 4], port_be: u16) -> Self {
        Self {
            addr: IpKey::v4(addr),
            port: port_be,
            _pad: [0; 2],
        }
    }
}

/// Who a client is for affinity: pods and node processes (socket hooks) by their network
/// namespace cookie (one pod = one namespace = one address), traffic seen in TC by its source
/// address with cookie 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub netns_cookie: u64,
    pub id: u32,
    pub _pad: u32,
    pub client: IpKey,
    pub _pad2: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 40);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Affinity {
    /// `bpf_ktime_get_ns` of the last connection that used it.
    pub last_ns: u64,
    /// The slot chosen, and the backend it held then: the entry is used only while that slot
    /// still holds that backend.
    pub slot: u32,
    pub _pad: u32,
    pub backend: Backend,
}
const _: () = assert!(core::mem::size_of::<Affinity>() == 40);

/// A translated socket: its cookie and the backend it was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevKey {
    pub cookie: u64,
    pub backend: Backend,
}
const _: () = assert!(core::mem::size_of::<SockRevKey>() == 32);

/// A socket's reverse translation: the frontend it dialled, and the entry's life.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockRev {
    pub frontend: Backend,
    /// [`SOCKREV_CONNECTED`] when set at `connect` (deleted at release).
    pub flags: u32,
    pub _pad: u32,
    pub life: crate::flow::Life,
}
const _: () = assert!(core::mem::size_of::<SockRev>() == 48);

/// The socket was connected to the backend (TCP, connected UDP).
pub const SOCKREV_CONNECTED: u32 = 1 << 0;

/// TC translation: the addresses and ports a packet's tuple is rewritten to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Xlate {
    /// Network order.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// The service id (for counters); `XLATE_*` flags.
    pub id: u32,
    pub flags: u32,
    pub _pad: u32,
    /// This direction's packets.
    pub life: crate::flow::Life,
}
const _: () = assert!(core::mem::size_of::<Xlate>() == 64);

impl Xlate {
    /// The key of the other direction's entry: the tuple a packet of the other direction
    /// arrives with is this one's rewritten tuple, reversed.
    #[inline(always)]
    pub const fn partner(&self, proto: u8) -> crate::nat::Tuple {
        crate::nat::Tuple {
            family: crate::addr::FAMILY_V4,
            proto,
            _pad: [0; 2],
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

/// The reverse direction of a translation (backend → client): after the rewrite the packet
/// leaves from a node address and must be sent out the uplink rather than routed as a packet
/// arriving from a pod (the stack would drop it as a martian with a local source).
pub const XLATE_TO_UPLINK: u32 = 1 << 0;
/// The reverse direction of a translation (for counters and `sluicectl`).
pub const XLATE_REPLY: u32 = 1 << 1;

/// The backend slot for a Maglev `hash`: `table[hash % M]`.
#[inline(always)]
pub fn maglev_index(hash: u32) -> usize {
    (hash as usize) % MAGLEV_M
}

/// A 32-bit hash of a flow for Maglev (FNV-1a over the given bytes; both the socket hooks and
/// TC use it on the same fields, so one client flow maps to one backend wherever it is seen).
#[inline(always)]
pub fn flow_hash(
    client: [u8; 4],
    client_port: u16,
    frontend: [u8; 4],
    port: u16,
    proto: u8,
) -> u32 {
    // Byte by byte without building an array: eBPF stack space is scarce.
    #[inline(always)]
    fn step(h: u32, b: u8) -> u32 {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    }
    let mut h: u32 = 0x811c_9dc5;
    h = step(h, client[0]);
    h = step(h, client[1]);
    h = step(h, client[2]);
    h = step(h, client[3]);
    h = step(h, (client_port >> 8) as u8);
    h = step(h, client_port as u8);
    h = step(h, frontend[0]);
    h = step(h, frontend[1]);
    h = step(h, frontend[2]);
    h = step(h, frontend[3]);
    h = step(h, (port >> 8) as u8);
    h = step(h, port as u8);
    step(h, proto)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that a frontend key built from network-order fields keeps them as given, so the
    /// agent and the programs build identical bytes.
    #[test]
    fn frontend_key_layout() {
        let k = Key::v4([10, 96, 0, 10], 80u16.to_be(), 6, SCOPE_INTERNAL);
        assert_eq!(k.addr.as_v4(), Some([10, 96, 0, 10]));
        assert_eq!(u16::from_be(k.port), 80);
        assert_eq!((k.proto, k.scope), (6, 0));
    }

    /// Test that the flow hash is FNV-1a 32 (reference value for the empty-prefix case computed
    /// from the published offset basis and prime) and depends on every field.
    #[test]
    fn flow_hash_fnv1a() {
        // FNV-1a of 13 zero bytes: repeatedly h = (h ^ 0) * prime from the offset basis.
        let mut expect: u32 = 0x811c_9dc5;
        for _ in 0..13 {
            expect = expect.wrapping_mul(0x0100_0193);
        }
        assert_eq!(flow_hash([0; 4], 0, [0; 4], 0, 0), expect);
        let base = flow_hash([10, 0, 0, 1], 1000, [10, 96, 0, 1], 80, 6);
        assert_ne!(base, flow_hash([10, 0, 0, 2], 1000, [10, 96, 0, 1], 80, 6));
        assert_ne!(base, flow_hash([10, 0, 0, 1], 1001, [10, 96, 0, 1], 80, 6));
        assert_ne!(base, flow_hash([10, 0, 0, 1], 1000, [10, 96, 0, 1], 81, 6));
        assert_ne!(base, flow_hash([10, 0, 0, 1], 1000, [10, 96, 0, 1], 80, 17));
        assert!(maglev_index(u32::MAX) < MAGLEV_M);
    }
}
