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
/// A Service with no ready endpoint: the connection or packet was refused.
pub const DROP_NO_BACKEND: u32 = 8;
/// A TCP packet to a pod address of this node that no longer exists (a removed backend): a
/// reset was sent back instead of letting the connection hang.
pub const DROP_DEAD_ENDPOINT: u32 = 9;
/// The load-balancer translation table was full.
pub const DROP_LB_TABLE_FULL: u32 = 10;
/// NetworkPolicy: the source pod's egress rules do not allow the connection.
pub const DROP_POLICY_EGRESS: u32 = 11;
/// NetworkPolicy: the destination pod's ingress rules do not allow the connection.
pub const DROP_POLICY_INGRESS: u32 = 12;

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
/// Connections and datagrams sent to a Service translated at the socket (no per-packet NAT).
pub const SVC_SOCK_LB: u32 = 38;
/// Packets to a Service translated in TC (did not pass a hooked socket).
pub const SVC_TC_DNAT: u32 = 39;
/// Replies from a backend translated back to the Service address in TC.
pub const SVC_TC_REVNAT: u32 = 40;
/// NetworkPolicy: new connections judged against the rules and allowed.
pub const POLICY_ALLOWED: u32 = 41;
/// Sent to another node's pod by the datapath (into the tunnel, or out of the uplink).
pub const FWD_REMOTE_NODE: u32 = 42;
/// Bigger than the tunnel MTU: left to the stack (ICMP "fragmentation needed").
pub const FWD_TUNNEL_TOO_BIG: u32 = 43;
/// A packet routed into the tunnel device for no peer's pod CIDR.
pub const DROP_NO_PEER: u32 = 13;

/// Human names of the reasons, for the CLI: (index, name).
pub const NAMES: &[(u32, &str)] = &[
    (DROP_INVALID, "drop:invalid-packet"),
    (DROP_SPOOFED_SOURCE, "drop:spoofed-source"),
    (DROP_TTL_EXCEEDED, "drop:ttl-exceeded"),
    (DROP_REWRITE_FAILED, "drop:rewrite-failed"),
    (DROP_NAT_NO_PORT, "drop:nat-no-port"),
    (DROP_NO_CONFIG, "drop:no-config"),
    (DROP_FRAGMENT, "drop:fragment"),
    (DROP_NO_BACKEND, "drop:service-no-backend"),
    (DROP_DEAD_ENDPOINT, "drop:dead-endpoint-reset"),
    (DROP_LB_TABLE_FULL, "drop:lb-table-full"),
    (DROP_POLICY_EGRESS, "drop:policy-egress"),
    (DROP_POLICY_INGRESS, "drop:policy-ingress"),
    (DROP_NO_PEER, "drop:tunnel-no-peer"),
    (FWD_LOCAL_POD, "fwd:local-pod"),
    (FWD_STACK, "fwd:stack"),
    (FWD_SNAT, "fwd:snat"),
    (FWD_REV_SNAT, "fwd:rev-snat"),
    (SOCK_ACCELERATED, "sock:accelerated"),
    (SOCK_REDIRECTED, "sock:redirected"),
    (SVC_SOCK_LB, "svc:socket-lb"),
    (SVC_TC_DNAT, "svc:tc-dnat"),
    (SVC_TC_REVNAT, "svc:tc-revnat"),
    (POLICY_ALLOWED, "policy:allowed-new"),
    (FWD_REMOTE_NODE, "fwd:remote-node"),
    (FWD_TUNNEL_TOO_BIG, "fwd:tunnel-too-big"),
];
