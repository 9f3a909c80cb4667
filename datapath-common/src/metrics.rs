//! `SL_METRIC_V1`: per-CPU packet and byte counters, indexed by reason. Drops use indices
//! below [`FWD_BASE`], forwarding decisions use the rest.

pub const MAP_NAME: &str = "SL_METRIC_V1";
pub const MAX_ENTRIES: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<Counter>() == 16);

/// A packet too short or malformed for the headers it claims.
pub const DROP_INVALID: u32 = 1;
/// A pod sent a packet with a source address that is not its own.
pub const DROP_SPOOFED_SOURCE: u32 = 2;
/// The IP TTL ran out on the routed hop to another pod.
pub const DROP_TTL_EXCEEDED: u32 = 3;
/// Rewriting a header failed (checksum or store helper error).
pub const DROP_REWRITE_FAILED: u32 = 4;
/// No masquerade port was free for this destination.
pub const DROP_NAT_NO_PORT: u32 = 5;
/// The datapath has no configuration yet (agent never started).
pub const DROP_NO_CONFIG: u32 = 6;
/// IP fragments from a pod to a masqueraded destination (no L4 ports to translate).
pub const DROP_FRAGMENT: u32 = 7;

/// First index of the forwarding counters.
pub const FWD_BASE: u32 = 32;
/// Delivered pod to pod on this node straight into the peer's veth.
pub const FWD_LOCAL_POD: u32 = 32;
/// Passed to the node's stack (to the node or routed out).
pub const FWD_STACK: u32 = 33;
/// Source-NATed to the node address on the way out.
pub const FWD_SNAT: u32 = 34;
/// Reply un-NATed and delivered to the pod.
pub const FWD_REV_SNAT: u32 = 35;

/// A same-node TCP socket was put in the sockhash (accelerated).
pub const SOCK_ACCELERATED: u32 = 36;
/// Messages and bytes handed from socket to socket by sk_msg.
pub const SOCK_REDIRECTED: u32 = 37;

/// Human names of the reasons, for the CLI: (index, name).
pub const NAMES: &[(u32, &str)] = &[
    (DROP_INVALID, "drop:invalid-packet"),
    (DROP_SPOOFED_SOURCE, "drop:spoofed-source"),
    (DROP_TTL_EXCEEDED, "drop:ttl-exceeded"),
    (DROP_REWRITE_FAILED, "drop:rewrite-failed"),
    (DROP_NAT_NO_PORT, "drop:nat-no-port"),
    (DROP_NO_CONFIG, "drop:no-config"),
    (DROP_FRAGMENT, "drop:fragment"),
    (FWD_LOCAL_POD, "fwd:local-pod"),
    (FWD_STACK, "fwd:stack"),
    (FWD_SNAT, "fwd:snat"),
    (FWD_REV_SNAT, "fwd:rev-snat"),
    (SOCK_ACCELERATED, "sock:accelerated"),
    (SOCK_REDIRECTED, "sock:redirected"),
];
