//! Socket acceleration: `sl_sockops` (on the agent's cgroup) puts both sockets of every
//! established TCP connection whose two ends are on this node — pod to pod, or loopback inside
//! a pod — into the sockhash; `sl_sk_msg` (attached to the sockhash) then hands each send
//! straight to the peer socket's receive queue, skipping TCP/IP, qdiscs, veths and the TC
//! programs on the way.
//!
//! Only sockets of namespaces Sluice created (registered in `SL_PODNS_V1` by the CNI plugin)
//! are accelerated, so host processes and other nodes' peers keep the normal path, and a pod
//! can opt out (`NS_FLAG_NO_SOCKMAP`). A connection of a pod that NetworkPolicy isolates is
//! accelerated only once the TC programs judged it allowed, so the redirect never skips
//! policy. A socket leaves the sockhash when it closes (the kernel unlinks it), so a later
//! socket reusing the ports starts from a clean entry.
//!
//! **Families.** Both programs read a socket through `SockEnds::from_ctx`: an AF_INET socket
//! and an AF_INET6 socket with IPv4-mapped addresses (a server listening on `[::]`, as Go's
//! `:port`, Java and Node.js do by default, accepts IPv4 connections as such sockets) are the
//! same IPv4 connection with the same keys, so a `[::]` server joins like an AF_INET one.
//! Other IPv6 sockets (`::1`, pure IPv6 peers) are not accelerated, on either end.
//!
//! **Both ends or neither.** A socket alone in the sockhash gets nothing redirected (its peer's
//! sends take TCP), but all its reads go through the sockmap receive path, which returns
//! spurious `EAGAIN`s to blocking reads (Linux 6.18 `tcp_bpf_recvmsg`, see the README): a
//! connection must never be accelerated on one end only. The two ends decide in the order TCP
//! establishes them: the opening end at `ACTIVE_ESTABLISHED` (on the SYN-ACK, before it sends
//! the last ACK), the accepting end at `PASSIVE_ESTABLISHED` (on that ACK), always after.
//! - The opener joins if it qualifies, and then records that in `SL_SOCKJN_V1` under its own
//!   key with its sequence numbers (if it cannot record, it leaves again at once). If it does
//!   not join, it clears any entry a closed socket with the same key left there.
//! - The acceptor takes the opener's record (its delete must be the one that removes it) and
//!   joins only if the record was there with this handshake's sequence numbers (the opener's
//!   ISN + 1 is the acceptor's `rcv_nxt`, and the reverse), it qualifies itself, and its
//!   insert succeeds. Otherwise it removes the opener's entry, found by the peer key.
//!
//! This covers an opener that does not qualify or whose insert fails (no record: the acceptor
//! stays out), an opener outside the cgroup (it never records), and an acceptor that does not
//! qualify, disagrees (its pod's opt-out or policy verdict changed in between), or finds the
//! sockhash full (it removes the opener). Removing the opener's entry there loses nothing: a
//! socket receives redirected data only from a peer in the sockhash, and the acceptor never
//! was (the kernel purges unread redirected data when a socket leaves the sockhash,
//! `sk_psock_drop`). A simultaneous open establishes both ends as acceptors: neither finds a
//! record, neither joins. Left open: an acceptor that never runs sockops (the server process
//! outside `--cgroup-root`) leaves the opener alone in the sockhash; and a TCP Fast Open server
//! establishes its end before the client's (the child in SYN_RECV cannot join and removes
//! nothing yet), so the client then joins alone.

use core::ptr;

use aya_ebpf::{
    bindings::{
        sk_action::SK_PASS, BPF_ANY, BPF_F_INGRESS, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
    },
    helpers::generated::{bpf_get_netns_cookie, bpf_map_delete_elem},
    macros::{sk_msg, sock_ops},
    programs::{SkMsgContext, SockOpsContext},
};
use datapath_common::{addr::IpKey, endpoint, metrics, sock};

use crate::{
    maps::{ENDPOINTS, POD_NAMESPACES, SOCKHASH, SOCK_JOINED},
    policy,
    skb::count,
};

/// The endpoint flags of a local pod's address, when it takes part (did not opt out).
#[inline(always)]
fn taking_part(ip: [u8; 4]) -> Option<u32> {
    // SAFETY: map values outlive the run (freed after an RCU grace period).
    match unsafe { ENDPOINTS.get(IpKey::v4(ip)) } {
        Some(ep) if ep.flags & endpoint::FLAG_NO_SOCKMAP == 0 => Some(ep.flags),
        _ => None,
    }
}

/// Whether a socket of a pod namespace that did not opt out qualifies: it is loopback, or
/// both ends are pods of this node that take part and policy allows their connection (an
/// isolated pod's connection must be tracked as allowed under the current revision, see
/// `policy::socket_allowed`; the agent takes an accelerated socket back to the packet path
/// when a policy change denies its connection). Both ends are checked on both sides, which
/// then agree unless a flag or the policy changes between their two calls.
#[inline(always)]
fn qualifies(local: [u8; 4], lport: u16, remote: [u8; 4], rport: u16) -> bool {
    if sock::is_loopback4(local) && sock::is_loopback4(remote) {
        return true;
    }
    let (Some(lflags), Some(rflags)) = (taking_part(local), taking_part(remote)) else {
        return false;
    };
    let end = |addr, port, flags| datapath_common::policy::SockEnd { addr, port, flags };
    policy::socket_allowed(end(local, lport, lflags), end(remote, rport, rflags))
}

/// The four words of an IPv6 address in a program's context, each loaded from the context
/// at a constant offset: the verifier refuses a load through a context pointer the compiler
/// moved ("dereference of modified ctx ptr"), which copying the array as a whole produces.
#[inline(always)]
fn ip6(words: &[u32; 4]) -> [u32; 4] {
    // SAFETY: volatile reads of live, aligned locals.
    unsafe {
        [
            ptr::read_volatile(&words[0]),
            ptr::read_volatile(&words[1]),
            ptr::read_volatile(&words[2]),
            ptr::read_volatile(&words[3]),
        ]
    }
}

/// Takes a socket out of the sockhash (aya's `SockHash` has no remove; sockops may delete
/// from a sockhash, only the dedicated helper may insert).
#[inline(always)]
fn leave(key: &sock::SockKey) {
    // SAFETY: both pointers come from references valid across the call.
    unsafe {
        bpf_map_delete_elem(
            ptr::from_ref(&SOCKHASH).cast_mut().cast(),
            ptr::from_ref(key).cast(),
        );
    }
}

#[sock_ops]
pub fn sl_sockops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    let opener = op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB;
    if !opener && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        return 0;
    }
    // SAFETY: the kernel's context pointer, valid for the whole run.
    let ops = unsafe { &mut *ctx.ops };
    let Some(ends) = sock::SockEnds::from_ctx(
        ops.family,
        (ops.local_ip4, ip6(&ops.local_ip6), ops.local_port),
        (ops.remote_ip4, ip6(&ops.remote_ip6), ops.remote_port),
    ) else {
        // Not IPv4: the other end, the same connection, gets no key either.
        return 0;
    };
    // SAFETY: the kernel's context pointer, valid for the whole run.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.ops.cast()) };
    // SAFETY: map values outlive the run (freed after an RCU grace period).
    let wants = match unsafe { POD_NAMESPACES.get(&cookie) } {
        Some(flags) if flags & sock::NS_FLAG_NO_SOCKMAP == 0 => {
            qualifies(ends.local, ends.local_port, ends.remote, ends.remote_port)
        }
        _ => false,
    };
    let key = ends.key(cookie);
    // See the module doc: the opener joins and says so, the acceptor completes the pair or
    // takes the opener back out.
    if opener {
        if !wants {
            let _ = SOCK_JOINED.remove(&key);
            return 0;
        }
        if SOCKHASH.update(key, &mut *ops, BPF_ANY as u64).is_err() {
            let _ = SOCK_JOINED.remove(&key);
            return 0;
        }
        let joined = sock::Joined {
            seq: ops.snd_nxt,
            ack: ops.rcv_nxt,
        };
        if SOCK_JOINED.insert(&key, &joined, BPF_ANY as u64).is_err() {
            leave(&key);
        }
        return 0;
    }
    let peer = ends.peer_key(cookie);
    // SAFETY: map values outlive the run (freed after an RCU grace period).
    let record = unsafe { SOCK_JOINED.get(&peer) }.copied();
    // The record counts only if this delete is the one that removes it: whoever else might
    // take it (a later sweep) then knows the acceptor did not.
    let claimed = SOCK_JOINED.remove(&peer).is_ok();
    let paired = claimed && record.is_some_and(|j| j.seq == ops.rcv_nxt && j.ack == ops.snd_nxt);
    if paired && wants && SOCKHASH.update(key, &mut *ops, BPF_ANY as u64).is_ok() {
        // Counted once both ends are in: one per socket.
        count(metrics::SOCK_ACCELERATED, 1);
        count(metrics::SOCK_ACCELERATED, 1);
    } else {
        leave(&peer);
    }
    0
}

#[sk_msg]
pub fn sl_sk_msg(ctx: SkMsgContext) -> u32 {
    // SAFETY: the kernel's context pointer, valid for the whole run.
    let md = unsafe { &*ctx.msg };
    let Some(ends) = sock::SockEnds::from_ctx(
        md.family,
        (md.local_ip4, ip6(&md.local_ip6), md.local_port),
        (md.remote_ip4, ip6(&md.remote_ip6), md.remote_port),
    ) else {
        return SK_PASS;
    };
    // SAFETY: the kernel's context pointer, valid for the whole run.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.msg.cast()) };
    let size = md.size;
    // The helper answers SK_DROP when the peer is not in the map: then the message simply
    // takes the normal path.
    if SOCKHASH.redirect_msg(&ctx, ends.peer_key(cookie), BPF_F_INGRESS as u64) == SK_PASS as i64 {
        count(metrics::SOCK_REDIRECTED, size);
    }
    SK_PASS
}
