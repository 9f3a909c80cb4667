//! `SL_EP_V1`: local endpoints (pods) by address, read by the TC programs to deliver traffic
//! straight into a pod; `SL_EPMETA_V2`: who each endpoint is (pod, container, interface), kept
//! beside it for the agent, the CLI and GC. Both are written by the CNI plugin on ADD and
//! removed on DEL.

use crate::addr::IpKey;

pub const MAP_NAME: &str = "SL_EP_V1";
pub const META_MAP_NAME: &str = "SL_EPMETA_V2";
pub const MAX_ENTRIES: u32 = 16384;

pub type Key = IpKey;

/// The pod opted out of socket acceleration (`sluice.dev/sockmap: "off"`): a connection to or
/// from it is not put in the sockhash on either end, so neither end is left half-accelerated.
pub const FLAG_NO_SOCKMAP: u32 = 1 << 0;
/// Some NetworkPolicy selects the pod for ingress: only what a rule allows comes in.
pub const FLAG_ISOLATED_INGRESS: u32 = 1 << 1;
/// Some NetworkPolicy selects the pod for egress: only what a rule allows goes out.
pub const FLAG_ISOLATED_EGRESS: u32 = 1 << 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Value {
    /// ifindex of the host-side veth (in the node's network namespace).
    pub ifindex: u32,
    /// `FLAG_*`.
    pub flags: u32,
    /// MAC of the pod's interface (destination MAC of delivered frames).
    pub pod_mac: [u8; 6],
    /// MAC of the host-side veth (source MAC of delivered frames).
    pub host_mac: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<Value>() == 20);

/// Pod identity of an endpoint. Names are NUL-padded and cut at the field size; a container
/// id longer than 120 bytes is stored as a digest (`datapath_user::meta_container_id`), so it still
/// identifies its attachment exactly.
/// (V2: the netns cookie was added.)
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Cookie of the pod's network namespace (`SO_NETNS_COOKIE`), the key of its
    /// `SL_PODNS_V1` entry.
    pub netns_cookie: u64,
    pub container_id: [u8; 120],
    pub ifname: [u8; 16],
    pub namespace: [u8; 64],
    /// Pod names may be 253 bytes long.
    pub name: [u8; 256],
}
const _: () = assert!(core::mem::size_of::<Meta>() == 464);
