//! Harness of the tier-2 tests of the TC programs through `BPF_PROG_TEST_RUN`
//! (`tests/prog_test_*.rs`): packets built from the protocol specifications (RFC 791 IPv4,
//! RFC 793 TCP, RFC 768 UDP, RFC 792 ICMP, RFC 826 ARP) with an RFC 1071 checksum of its own,
//! readers and checksum checks for the frames that come out ([`packet`]), frames on a pod's
//! veth and the answers a program hands back to a pod ([`pods`]); a [`Datapath`]: the
//! whole object loaded into a bpffs of its own, with helpers to fill its maps, run a frame
//! through one program and read the NAT maps and counters ([`datapath`]); and the Service maps
//! filled as the agent fills them and read back ([`svc`]). Nothing here runs Sluice to find
//! out what to expect.
//!
//! What `BPF_PROG_TEST_RUN` does with a `SCHED_CLS` program (net/bpf/test_run.c, kernel 6.18):
//! the frame becomes a linear skb on the device named by `ifindex` in the `__sk_buff` given as
//! context, looked up in the caller's network namespace (0 or 1: the loopback; a device that
//! does not exist there: ENODEV). So `__sk_buff.ifindex` as a program reads it is 1 here, and
//! the "host veth" of the sending pod is the loopback ([`LO_IFINDEX`]), unless a test runs in a
//! namespace of its own with a real device. A redirect is not carried out: `bpf_redirect_peer`
//! (and `bpf_redirect`, `bpf_redirect_neigh`) only record their target, and the run returns
//! `TC_ACT_REDIRECT` whatever the ifindex. An `ETH_P_IP` frame with less than 20 bytes after
//! the Ethernet header is refused (EINVAL). Skbs are `CHECKSUM_NONE` by default: the checksum
//! helpers then patch the checksum fields alone, and a pseudo-header fix without
//! `BPF_F_PSEUDO_HDR` gives the very same bytes. Only with `BPF_F_TEST_SKB_CHECKSUM_COMPLETE`
//! ([`Datapath::try_run_csum_complete`]) does the kernel also check `skb->csum` against the
//! output (EBADMSG when stale).
//!
//! The addresses below are one node's test topology: pods in 10.244.1.0/24, the node at
//! 192.0.2.2 on its uplink, the outside in documentation ranges.

pub mod datapath;
pub mod packet;
pub mod pods;
pub mod svc;

pub use datapath::*;
pub use packet::*;
pub use pods::*;
pub use svc::*;

use datapath_common::pins;

pub const FROM_POD: &str = pins::PROG_FROM_POD;
pub const UPLINK_EGRESS: &str = pins::PROG_UPLINK_EGRESS;
pub const UPLINK_INGRESS: &str = pins::PROG_UPLINK_INGRESS;
pub const TUNNEL_INGRESS: &str = pins::PROG_TUNNEL_INGRESS;
pub const TUNNEL_EGRESS: &str = pins::PROG_TUNNEL_EGRESS;

/// TC verdicts as `BPF_PROG_TEST_RUN` reports them (u32); `TC_ACT_UNSPEC` is -1.
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;
pub const TC_ACT_UNSPEC: u32 = u32::MAX;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;

/// The loopback's ifindex, in every network namespace.
pub const LO_IFINDEX: u32 = 1;
/// A veth that does not exist: test_run does not carry out redirects, so it never matters.
pub const POD_B_IFINDEX: u32 = 4242;

pub const POD_A: [u8; 4] = [10, 244, 1, 5];
pub const POD_B: [u8; 4] = [10, 244, 1, 6];
pub const POD_C: [u8; 4] = [10, 244, 1, 7];
pub const NODE_IP: [u8; 4] = [192, 0, 2, 2];
pub const WORLD: [u8; 4] = [203, 0, 113, 10];
pub const WORLD_2: [u8; 4] = [198, 51, 100, 7];

pub const POD_A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub const HOST_A_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0x0a];
pub const POD_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
pub const HOST_B_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0x0b];
pub const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 2, 0x02];
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 2, 0x01];

/// The masquerade port range of [`node_config`].
pub const PORT_MIN: u16 = 61000;
pub const PORT_MAX: u16 = 65535;
