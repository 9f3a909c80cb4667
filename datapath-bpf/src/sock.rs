//! Socket acceleration: `sl_sockops` (on the agent's cgroup) puts every established TCP socket
//! whose two ends are on this node — pod to pod, or loopback inside a pod — into the sockhash;
//! `sl_sk_msg` (attached to the sockhash) then hands each send straight to the peer socket's
//! receive queue, skipping TCP/IP, qdiscs, veths and the TC programs on the way.
//!
//! Only sockets of namespaces Sluice created (registered in `SL_PODNS_V1` by the CNI plugin)
//! are accelerated, so host processes and other nodes' peers keep the normal path, and a pod
//! can opt out (`NS_FLAG_NO_SOCKMAP`). A connection of a pod that NetworkPolicy isolates is
//! accelerated only once the TC programs judged it allowed, so the redirect never skips policy. A socket leaves the sockhash when it closes (the kernel
//! unlinks it), so a later socket reusing the ports starts from a clean entry.

use aya_ebpf::{
    bindings::{
        sk_action::SK_PASS, BPF_ANY, BPF_F_INGRESS, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
    },
    helpers::generated::bpf_get_netns_cookie,
    macros::{sk_msg, sock_ops},
    programs::{SkMsgContext, SockOpsContext},
};
use datapath_common::{addr::IpKey, endpoint, metrics, sock};

use crate::{
    maps::{ENDPOINTS, POD_NAMESPACES, SOCKHASH},
    policy,
    skb::count,
};

const AF_INET: u32 = 2;

/// The endpoint flags of a local pod's address, when it takes part (did not opt out).
#[inline(always)]
fn taking_part(ip: [u8; 4]) -> Option<u32> {
    match unsafe { ENDPOINTS.get(IpKey::v4(ip)) } {
        Some(ep) if ep.flags & endpoint::FLAG_NO_SOCKMAP == 0 => Some(ep.flags),
        _ => None,
    }
}

/// Whether a socket is accelerated: loopback, or both ends are pods of this node that take
/// part and policy allows their connection (an isolated pod's connection must be tracked as
/// allowed under the current revision, see `policy::socket_allowed`; the agent takes an
/// accelerated socket back to the packet path when a policy change denies its connection).
/// Both ends are checked on both sides: a socket in the sockhash whose peer never joins is
/// only slowed down (its reads go through the sockmap receive path).
#[inline(always)]
fn accelerate(local: [u8; 4], lport: u16, remote: [u8; 4], rport: u16) -> bool {
    if sock::is_loopback4(local) && sock::is_loopback4(remote) {
        return true;
    }
    let (Some(lflags), Some(rflags)) = (taking_part(local), taking_part(remote)) else {
        return false;
    };
    let end = |addr, port, flags| datapath_common::policy::SockEnd { addr, port, flags };
    policy::socket_allowed(end(local, lport, lflags), end(remote, rport, rflags))
}

#[sock_ops]
pub fn sl_sockops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        return 0;
    }
    if ctx.family() != AF_INET {
        return 0;
    }
    let cookie = unsafe { bpf_get_netns_cookie(ctx.ops.cast()) };
    match unsafe { POD_NAMESPACES.get(cookie) } {
        Some(flags) if flags & sock::NS_FLAG_NO_SOCKMAP == 0 => {}
        _ => return 0,
    }
    let local = ctx.local_ip4().to_ne_bytes();
    let remote = ctx.remote_ip4().to_ne_bytes();
    let (lport, rport) = sock::ports_from_ctx(ctx.local_port(), ctx.remote_port());
    if !accelerate(local, lport, remote, rport) {
        return 0;
    }
    let key = sock::SockKey::of_socket(local, lport, remote, rport, cookie);
    let ops = unsafe { &mut *ctx.ops };
    if SOCKHASH.update(key, ops, BPF_ANY as u64).is_ok() {
        count(metrics::SOCK_ACCELERATED, 1);
    }
    0
}

#[sk_msg]
pub fn sl_sk_msg(ctx: SkMsgContext) -> u32 {
    let md = unsafe { &*ctx.msg };
    if md.family != AF_INET {
        return SK_PASS;
    }
    let local = md.local_ip4.to_ne_bytes();
    let remote = md.remote_ip4.to_ne_bytes();
    let (lport, rport) = sock::ports_from_ctx(md.local_port, md.remote_port);
    let cookie = unsafe { bpf_get_netns_cookie(ctx.msg.cast()) };
    let size = md.size;
    let key = sock::SockKey::peer_of_socket(local, lport, remote, rport, cookie);
    // The helper answers SK_DROP when the peer is not in the map (e.g. it opted out): then the
    // message simply takes the normal path.
    if SOCKHASH.redirect_msg(&ctx, key, BPF_F_INGRESS as u64) == SK_PASS as i64 {
        count(metrics::SOCK_REDIRECTED, size);
    }
    SK_PASS
}
