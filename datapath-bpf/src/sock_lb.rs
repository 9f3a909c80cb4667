//! Socket-level Service load balancing (cgroup hooks on the agent's `--cgroup-root`):
//! `connect` (TCP and connected UDP) and `sendmsg` (unconnected UDP) are pointed at a backend
//! before the first packet exists, so a connected socket talks to its backend directly: no
//! per-packet NAT, no conntrack, and the cost is one hash lookup per connection whatever the
//! number of services. `recvmsg` and `getpeername` put the Service address back, so the
//! application sees the address it dialled.
//!
//! A Service without a ready endpoint refuses at once: the hook fails `connect`/`sendmsg` with
//! `ECONNREFUSED` through `bpf_set_retval` (kernel ≥ 5.18; without it the caller would see
//! `EPERM`).

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_set_retval,
    },
    macros::{cgroup_sock, cgroup_sock_addr},
    programs::{SockAddrContext, SockContext},
};
use datapath_common::{addr::IpKey, flow, metrics, svc};

use crate::{
    lb::{count_service, frontend, select},
    maps::SOCK_REV,
    skb::{count, IPPROTO_TCP, IPPROTO_UDP},
};

const ECONNREFUSED: i32 = 111;
/// Verdicts of cgroup sock_addr programs.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn sl_sock4_conn(ctx: SockAddrContext) -> i32 {
    translate(&ctx, svc::SOCKREV_CONNECTED)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sl_sock4_send(ctx: SockAddrContext) -> i32 {
    translate(&ctx, 0)
}

/// A socket of the cgroup is released: its reverse translation ends with it (the entry of
/// the backend it is connected to; an unconnected socket's entries age out in the collector).
#[cgroup_sock(sock_release)]
pub fn sl_sock_rel(ctx: SockContext) -> i32 {
    // SAFETY: the kernel's context pointer, valid for the whole run.
    let sk = unsafe { &*ctx.sock };
    if sk.family != AF_INET || sk.dst_ip4 == 0 {
        return ALLOW;
    }
    // SAFETY: the kernel's context pointer, valid for the whole run.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock.cast()) };
    let key = svc::SockRevKey {
        cookie,
        backend: svc::Backend::v4(sk.dst_ip4.to_ne_bytes(), sk.dst_port),
    };
    let _ = SOCK_REV.remove(&key);
    ALLOW
}

const AF_INET: u32 = 2;

#[cgroup_sock_addr(recvmsg4)]
pub fn sl_sock4_recv(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn sl_sock4_peer(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    ALLOW
}

/// Points a connect or send to a Service at one of its backends; `flags` (`SOCKREV_*`) say
/// which.
#[inline(always)]
fn translate(ctx: &SockAddrContext, flags: u32) -> i32 {
    // SAFETY: the kernel's context pointer, valid for the whole run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let proto = sa.protocol as u8;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return ALLOW;
    }
    // user_ip4 and user_port hold network-order bytes.
    let daddr = sa.user_ip4.to_ne_bytes();
    let dport = sa.user_port as u16;
    let Some(fe) = frontend(daddr, dport, proto, svc::SCOPE_INTERNAL) else {
        return ALLOW;
    };
    // SAFETY: the kernel's context pointer, valid for the whole run.
    let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    // SAFETY: the kernel's context pointer, valid for the whole run.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let aff = svc::AffinityKey {
        netns_cookie: netns,
        id: fe.id,
        _pad: 0,
        client: IpKey {
            family: 0,
            _pad: [0; 3],
            addr: [0; 16],
        },
        _pad2: [0; 4],
    };
    // No source port exists yet: the socket cookie stands for the flow in the Maglev hash.
    let c = cookie.to_ne_bytes();
    let hash = svc::flow_hash(
        [c[0], c[1], c[2], c[3]],
        u16::from_ne_bytes([c[4], c[5]]),
        daddr,
        u16::from_be(dport),
        proto,
    );
    let mut fresh = svc::Affinity {
        last_ns: 0,
        slot: 0,
        _pad: 0,
        backend: svc::Backend::v4([0; 4], 0),
    };
    let Some(b) = select(&fe, hash, &aff, &mut fresh) else {
        count(metrics::DROP_NO_BACKEND, 0);
        // SAFETY: a BPF helper with no memory preconditions.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return REJECT;
    };
    let Some(baddr) = b.addr.as_v4() else {
        return ALLOW;
    };
    let key = svc::SockRevKey {
        cookie,
        backend: *b,
    };
    let orig = svc::SockRev {
        frontend: svc::Backend::v4(daddr, dport),
        flags,
        _pad: 0,
        // SAFETY: a BPF helper with no memory preconditions.
        life: flow::Life::new(unsafe { bpf_ktime_get_ns() }, flow::SEEN_PKT),
    };
    // Best effort: without it only recvmsg/getpeername would show the backend.
    let _ = SOCK_REV.insert(&key, &orig, BPF_ANY as u64);
    sa.user_ip4 = u32::from_ne_bytes(baddr);
    sa.user_port = b.port as u32;
    count(metrics::SVC_SOCK_LB, 0);
    count_service(fe.id, 0);
    ALLOW
}

/// Shows the Service address in place of the backend a socket was translated to.
#[inline(always)]
fn reverse(ctx: &SockAddrContext) {
    // SAFETY: the kernel's context pointer, valid for the whole run.
    let sa = unsafe { &mut *ctx.sock_addr };
    // SAFETY: the kernel's context pointer, valid for the whole run.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let key = svc::SockRevKey {
        cookie,
        backend: svc::Backend::v4(sa.user_ip4.to_ne_bytes(), sa.user_port as u16),
    };
    if let Some(e) = SOCK_REV.get_ptr_mut(&key) {
        // SAFETY: a map value, valid for the whole run; in place: the entry is this socket's own.
        let e = unsafe { &mut *e };
        e.life.touch(
            // SAFETY: a BPF helper with no memory preconditions.
            unsafe { bpf_ktime_get_ns() },
            flow::SEEN_PKT << flow::REPLY_SHIFT,
        );
        if let Some(a) = e.frontend.addr.as_v4() {
            sa.user_ip4 = u32::from_ne_bytes(a);
            sa.user_port = e.frontend.port as u32;
        }
    }
}
