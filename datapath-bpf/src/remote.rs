//! Traffic to and from other nodes' pods.
//!
//! [`to_peer`] sends a packet whose destination lies in another node's pod CIDR (`SL_PEERS_V1`)
//! to that node, as a router hop (TTL-1): in tunnel mode it sets the VXLAN tunnel key (remote =
//! the peer's address, VNI [`peers::TUNNEL_VNI`]) and the inner MACs ([`peers::tunnel_mac`]),
//! and redirects into the node's collect-metadata VXLAN device, which adds the outer headers; in native mode it redirects
//! out of the uplink with the peer's address as next hop (`bpf_redirect_neigh`, kernel ≥
//! 5.11), the kernel resolving its MAC. A packet bigger than the tunnel MTU is left to the
//! stack: its route through the tunnel device has that MTU, so the sender gets ICMP
//! "fragmentation needed" rather than a silent drop.
//!
//! On the tunnel device: `sl_tun_ingress` (what other nodes sent us, decapsulated) puts
//! replies of translated Service flows back, delivers a local pod's packets straight into it
//! ([`to_local_pod`]; an isolated pod's through the stack and `sl_to_pod`, which applies its
//! ingress policy), and leaves the rest to the stack; `sl_tun_egress` gives what the
//! node's stack routes into the device (the node's own traffic, too-large packets, fragments)
//! its tunnel key from the peers map.

use aya_ebpf::{
    bindings::{bpf_redir_neigh, bpf_tunnel_key},
    helpers::generated::{bpf_redirect, bpf_redirect_neigh, bpf_skb_set_tunnel_key},
    macros::classifier,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use datapath_common::{addr::IpKey, config, endpoint, metrics, peers};

use crate::{
    l4::{l4_of, ICMP_ECHO_REPLY},
    lb,
    maps::{CONFIG, ENDPOINTS, PEERS},
    skb::{
        count, dec_ttl, deliver_local, deliver_or_stack, drop, ptr_at, EthHdr, Ipv4Hdr, ETH_HLEN,
        ETH_P_IP, IPPROTO_TCP, IPPROTO_UDP, TC_ACT_UNSPEC,
    },
};

/// [`to_peer`]'s answer for a destination in no peer's pod CIDR (not a TC verdict).
pub const NOT_PEER: i32 = -1000;

const AF_INET: u32 = 2;
/// The outer header's TTL.
const TUNNEL_TTL: u8 = 64;

/// The address of the node whose pod CIDR holds `daddr`, if any.
#[inline(always)]
pub fn peer_of(daddr: [u8; 4]) -> Option<[u8; 4]> {
    let key = Key::new(peers::prefix_len_v4(32), IpKey::v4(daddr));
    PEERS.get(&key)?.node.as_v4()
}

/// Sends the packet to the node whose pod CIDR holds `daddr` (`u32` of network-order bytes),
/// or returns [`NOT_PEER`]. A BPF subprogram: its frame stays off its callers'.
#[inline(never)]
pub fn to_peer(ctx: &TcContext, daddr: u32) -> i32 {
    match try_to_peer(ctx, daddr.to_ne_bytes()) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn try_to_peer(ctx: &TcContext, daddr: [u8; 4]) -> Result<i32, i32> {
    let cfg = CONFIG.get(0).ok_or(NOT_PEER)?;
    if cfg.routing == peers::ROUTING_NONE {
        return Ok(NOT_PEER);
    }
    let node = peer_of(daddr).ok_or(NOT_PEER)?;
    if cfg.routing == peers::ROUTING_TUNNEL {
        if too_big(ctx, cfg.tunnel_mtu) {
            count(metrics::FWD_TUNNEL_TOO_BIG, ctx.len());
            return Ok(TC_ACT_UNSPEC);
        }
        dec_ttl(ctx)?;
        set_tunnel_key(ctx, node)?;
        let eth = ptr_at::<EthHdr>(ctx, 0).ok_or_else(|| drop(ctx, metrics::DROP_INVALID))?;
        // SAFETY: `ptr_at` checked that the header lies within the packet.
        unsafe {
            (*eth).dst = peers::tunnel_mac(node);
            (*eth).src = peers::tunnel_mac(cfg.node_ip4);
        }
        count(metrics::FWD_REMOTE_NODE, ctx.len());
        // SAFETY: a BPF helper with no memory preconditions.
        return Ok(unsafe { bpf_redirect(cfg.tunnel_ifindex, 0) } as i32);
    }
    dec_ttl(ctx)?;
    let mut nh = bpf_redir_neigh {
        nh_family: AF_INET,
        __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 {
            ipv4_nh: u32::from_ne_bytes(node),
        },
    };
    count(metrics::FWD_REMOTE_NODE, ctx.len());
    // SAFETY: `nh` is a live local of the size given.
    Ok(unsafe {
        bpf_redirect_neigh(
            cfg.uplink_ifindex,
            &mut nh,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        )
    } as i32)
}

/// Whether the packet's IP datagram (or, for a GSO packet, each of its segments, at least
/// its payload plus minimal IPv4 and TCP headers) exceeds `mtu` (0: no limit).
#[inline(always)]
fn too_big(ctx: &TcContext, mtu: u32) -> bool {
    if mtu == 0 {
        return false;
    }
    // SAFETY: the kernel's context pointer, valid for the whole run.
    let gso = unsafe { (*ctx.skb.skb).gso_size };
    let len = if gso != 0 {
        gso + 40
    } else {
        ctx.len().saturating_sub(ETH_HLEN as u32)
    };
    len > mtu
}

/// Sets the VXLAN tunnel key: remote `node`, VNI [`peers::TUNNEL_VNI`].
#[inline(always)]
fn set_tunnel_key(ctx: &TcContext, node: [u8; 4]) -> Result<(), i32> {
    // SAFETY: a plain C struct of integers; all-zero is its "unset" value.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = peers::TUNNEL_VNI;
    // The helper takes the remote IPv4 address in host order.
    key.__bindgen_anon_1.remote_ipv4 = u32::from_be_bytes(node);
    key.tunnel_ttl = TUNNEL_TTL;
    // SAFETY: `key` is a live local of the size given.
    let rc = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb,
            &mut key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            0,
        )
    };
    if rc != 0 {
        return Err(drop(ctx, metrics::DROP_REWRITE_FAILED));
    }
    Ok(())
}

/// Sends on a reply that [`lb::reply`] put back (its non-negative result `r`): to the client
/// outside (out of the uplink, TTL-1: e.g. `externalTrafficPolicy: Cluster` forwarded to a
/// backend on another node) or to the client pod, local or remote.
#[inline(always)]
pub fn send_reply(ctx: &TcContext, cfg: &config::NodeConfig, r: i64) -> i32 {
    count(metrics::SVC_TC_REVNAT, ctx.len());
    if r & lb::TO_UPLINK != 0 {
        return to_uplink(ctx, cfg.uplink_ifindex);
    }
    deliver_or_stack(ctx, lb::daddr_of(r))
}

/// Sends a packet whose source is now a node address out of the uplink as a router hop
/// (TTL-1; the stack would drop it as a martian), the neighbour resolved by the kernel
/// (`bpf_redirect_neigh`, ≥ 5.10).
#[inline(always)]
pub fn to_uplink(ctx: &TcContext, uplink_ifindex: u32) -> i32 {
    if let Err(v) = dec_ttl(ctx) {
        return v;
    }
    // SAFETY: a BPF helper with no memory preconditions.
    unsafe { bpf_redirect_neigh(uplink_ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

/// A packet from another node for a local pod: straight into the pod (`bpf_redirect_peer`)
/// when no policy isolates it; an isolated pod's packet goes through the stack to its veth,
/// where `sl_to_pod` judges it (the policy check's frame does not fit beside this hook's
/// call chain in the 512-byte BPF stack). [`NOT_PEER`] when `daddr` is no local pod.
#[inline(never)]
pub fn to_local_pod(ctx: &TcContext, daddr: u32) -> i32 {
    // SAFETY: map values outlive the run (freed after an RCU grace period).
    let Some(ep) = (unsafe { ENDPOINTS.get(IpKey::v4(daddr.to_ne_bytes())) }) else {
        return NOT_PEER;
    };
    let ep = *ep;
    if ep.flags & (endpoint::FLAG_ISOLATED_INGRESS | endpoint::FLAG_ISOLATED_EGRESS) != 0 {
        count(metrics::FWD_STACK, ctx.len());
        return TC_ACT_UNSPEC;
    }
    deliver_local(ctx, &ep)
}

#[classifier]
pub fn sl_tun_ingress(ctx: TcContext) -> i32 {
    match try_tun_ingress(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn try_tun_ingress(ctx: &TcContext) -> Result<i32, i32> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(TC_ACT_UNSPEC)?;
    // SAFETY: `ptr_at` checked that the header lies within the packet.
    if unsafe { (*eth).proto } != ETH_P_IP.to_be() {
        return Ok(TC_ACT_UNSPEC);
    }
    // SAFETY: `ptr_at` checked that the header lies within the packet.
    let ip = unsafe { *ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN).ok_or(TC_ACT_UNSPEC)? };
    let cfg = CONFIG.get(0).ok_or(TC_ACT_UNSPEC)?;
    if cfg.flags & config::FLAG_SERVICES != 0
        && (ip.proto == IPPROTO_TCP || ip.proto == IPPROTO_UDP)
        && !ip.is_fragment()
    {
        if let Some(l4) = l4_of(ctx, &ip, ICMP_ECHO_REPLY) {
            // A backend of this node's translated flow answering from another node.
            let r = lb::reply(ctx, &ip, &l4);
            if r == lb::DROPPED {
                return Err(aya_ebpf::bindings::TC_ACT_SHOT as i32);
            }
            if r >= 0 {
                return Ok(send_reply(ctx, cfg, r));
            }
        }
    }
    let v = to_local_pod(ctx, u32::from_ne_bytes(ip.daddr));
    if v != NOT_PEER {
        return Ok(v);
    }
    count(metrics::FWD_STACK, ctx.len());
    Ok(TC_ACT_UNSPEC)
}

#[classifier]
pub fn sl_tun_egress(ctx: TcContext) -> i32 {
    match try_tun_egress(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn try_tun_egress(ctx: &TcContext) -> Result<i32, i32> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(TC_ACT_UNSPEC)?;
    // SAFETY: `ptr_at` checked that the header lies within the packet.
    if unsafe { (*eth).proto } != ETH_P_IP.to_be() {
        return Ok(TC_ACT_UNSPEC);
    }
    // SAFETY: `ptr_at` checked that the header lies within the packet.
    let daddr = unsafe { (*ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN).ok_or(TC_ACT_UNSPEC)?).daddr };
    let Some(node) = peer_of(daddr) else {
        // A collect-metadata device drops a packet without a key anyway: count it here.
        return Err(drop(ctx, metrics::DROP_NO_PEER));
    };
    set_tunnel_key(ctx, node)?;
    // The stack addressed the frame to this device's own MAC (the neighbour of a NOARP
    // device): address it to the receiving node's device instead.
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(TC_ACT_UNSPEC)?;
    // SAFETY: `ptr_at` checked that the header lies within the packet.
    unsafe { (*eth).dst = peers::tunnel_mac(node) };
    Ok(TC_ACT_UNSPEC)
}
