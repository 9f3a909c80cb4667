//! NetworkPolicy in the datapath: one check per packet between two endpoints, of which either
//! may be an isolated local pod (see `datapath_common::policy` for the maps).
//!
//! A packet passes when no side is isolated in its direction; else when it belongs to a tracked
//! connection judged under the current policy revision; else it is judged by
//! `datapath_common::policy::judge` (the source's egress AND the destination's ingress; a pod
//! and its own node always reach each other). A TCP segment that is not a bare SYN and has no
//! tracked connection may be the reply of a connection opened before its side became isolated:
//! it passes when the reverse direction would be allowed (and is tracked from then on).
//!
//! [`socket_allowed`] is the same verdict for the sockops program: an isolated pod's socket is
//! accelerated only when its connection is tracked as allowed under the current revision.

use aya_ebpf::{bindings::BPF_ANY, helpers::generated::bpf_ktime_get_ns, maps::lpm_trie::Key};
use datapath_common::{
    flow, metrics, nat,
    policy::{self, RuleData},
};

use crate::{
    maps::{CONFIG, CONNTRACK, ENDPOINTS, POLICY, POLICY_REVISION},
    skb::{count, IPPROTO_TCP},
};

/// A packet as policy sees it: the tuple after service translation (the real endpoints).
#[repr(C)]
pub struct Flow {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    /// Network order.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    pub _pad: [u8; 2],
    /// The sending endpoint's flags (0 when the source is not a local pod).
    pub src_flags: u32,
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// The trie lookup [`policy::judge`] asks for: the entry of `data`'s full /32 key allows `port`.
#[inline(always)]
fn trie_allows(data: &RuleData, port: u16) -> bool {
    let key = Key::new(policy::fixed_bits() + 32, *data);
    POLICY.get(&key).is_some_and(|v| v.allows(port))
}

/// Judges a new connection from `s` to `d`: `None` when allowed, else the drop reason.
#[inline(always)]
fn judge(
    s: [u8; 4],
    d: [u8; 4],
    proto: u8,
    dport: u16,
    sflags: u32,
    dflags: u32,
    node: [u8; 4],
) -> Option<u32> {
    let c = policy::Conn {
        saddr: s,
        daddr: d,
        proto,
        dport,
        sflags,
        dflags,
    };
    policy::judge(&c, node, &trie_allows)
}

/// The verdict of a tracked connection (`t`, opened as `c`): `None` when it is not tracked,
/// else 0 or its drop reason, judged again first when the policy changed since. A packet
/// (`seen`, already shifted for its direction; 0 for none) is recorded in its life.
#[inline(always)]
fn tracked(t: &nat::Tuple, c: &policy::Conn, rev: u32, node: [u8; 4], seen: u32) -> Option<u32> {
    let e = CONNTRACK.get_ptr_mut(t)?;
    // SAFETY: a map value, valid for the whole run.
    let e = unsafe { &mut *e };
    if seen != 0 {
        // SAFETY: a BPF helper with no memory preconditions.
        e.life.touch(unsafe { bpf_ktime_get_ns() }, seen);
    }
    if e.revision != rev {
        e.denied = policy::judge(c, node, &trie_allows).unwrap_or(0);
        e.revision = rev;
    }
    Some(e.denied)
}

/// Whether the established TCP socket from `local` to `remote` may be accelerated as far as
/// policy goes: no end is isolated, or its connection is tracked (the TC programs recorded
/// its SYN) and allowed under the current revision. An untracked connection of an isolated
/// pod stays on the packet path, where it is judged.
#[inline(always)]
pub fn socket_allowed(local: policy::SockEnd, remote: policy::SockEnd) -> bool {
    if !policy::any_isolated(local.flags, remote.flags) {
        return true;
    }
    let rev = POLICY_REVISION.get(0).copied().unwrap_or(0);
    let node = CONFIG.get(0).map(|c| c.node_ip4).unwrap_or([0; 4]);
    let [(fwd, out), (back, inward)] = policy::socket_directions(local, remote);
    if let Some(denied) = tracked(&fwd, &out, rev, node, 0) {
        return denied == 0;
    }
    // Through memory: compared in registers, LLVM ANDs "is some" with the value register,
    // which a `None` leaves unset, and the verifier refuses that read (seen in sl_sockops).
    core::hint::black_box(tracked(&back, &inward, rev, node, 0)) == Some(0)
}

/// The endpoint flags of a local pod's address; 0 for any other address.
#[inline(always)]
pub fn flags_of(addr: [u8; 4]) -> u32 {
    // SAFETY: map values outlive the run (freed after an RCU grace period).
    match unsafe { ENDPOINTS.get(datapath_common::addr::IpKey::v4(addr)) } {
        Some(ep) => ep.flags,
        None => 0,
    }
}

/// The policy verdict for one packet: 0 to let it pass, else the drop reason (already counted
/// by the caller). A BPF subprogram with its own frame.
#[inline(never)]
pub fn check(f: &Flow) -> u32 {
    let dflags = flags_of(f.daddr);
    let rev = POLICY_REVISION.get(0).copied().unwrap_or(0);
    let fwd = nat::Tuple::v4(f.proto, f.saddr, f.daddr, f.sport, f.dport);
    let syn = f.proto == IPPROTO_TCP && f.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    // Recomputed where used rather than kept: this frame is at the verifier's limit.
    let seen = || flow::seen_of(f.tcp_flags);
    if !policy::any_isolated(f.src_flags, dflags) {
        if syn {
            // Remember who opened it, for when a side becomes isolated. Not followed packet
            // by packet (that would cost a lookup per packet): only its end is recorded.
            record(&fwd, rev, 0, seen() | flow::SEEN_UNFOLLOWED);
        } else if f.proto == IPPROTO_TCP && seen() & (flow::SEEN_FIN | flow::SEEN_RST) != 0 {
            closing(&fwd, seen());
        }
        return 0;
    }
    let node = CONFIG.get(0).map(|c| c.node_ip4).unwrap_or([0; 4]);
    let back = nat::Tuple::v4(f.proto, f.daddr, f.saddr, f.dport, f.sport);
    let dport = u16::from_be(f.dport);
    let sport = u16::from_be(f.sport);
    if !syn {
        // A tracked connection: its verdict, judged again (in the direction it was opened)
        // when the policy changed since.
        let opened = policy::Conn {
            saddr: f.saddr,
            daddr: f.daddr,
            proto: f.proto,
            dport,
            sflags: f.src_flags,
            dflags,
        };
        if let Some(denied) = tracked(&fwd, &opened, rev, node, seen()) {
            return denied;
        }
        let replied = policy::Conn {
            saddr: f.daddr,
            daddr: f.saddr,
            proto: f.proto,
            dport: sport,
            sflags: dflags,
            dflags: f.src_flags,
        };
        if let Some(denied) = tracked(&back, &replied, rev, node, seen() << flow::REPLY_SHIFT) {
            return denied;
        }
    }
    // A new connection, or one older than the tracker (opened before the agent, or evicted).
    let v = judge(f.saddr, f.daddr, f.proto, dport, f.src_flags, dflags, node);
    let mid_stream = f.proto == IPPROTO_TCP && f.tcp_flags & TCP_ACK != 0;
    if v.is_some()
        && mid_stream
        && judge(f.daddr, f.saddr, f.proto, sport, dflags, f.src_flags, node).is_none()
    {
        // Untracked mid-stream: the reply of a connection the peer may have opened; its
        // opening direction is allowed, so it is taken as that.
        record(
            &back,
            rev,
            0,
            flow::SEEN_PKT | (seen() << flow::REPLY_SHIFT),
        );
        return 0;
    }
    if v.is_none() {
        count(metrics::POLICY_ALLOWED, 0);
    }
    record(&fwd, rev, v.unwrap_or(0), seen());
    v.unwrap_or(0)
}

/// Tracks connection `t` with its verdict (`denied`, 0 when allowed) under revision `rev`, a
/// new life with `seen`. A BPF subprogram: the entry stays off [`check`]'s frame.
#[inline(never)]
fn record(t: &nat::Tuple, rev: u32, denied: u32, seen: u32) {
    let entry = policy::CtEntry {
        revision: rev,
        denied,
        // SAFETY: a BPF helper with no memory preconditions.
        life: flow::Life::new(unsafe { bpf_ktime_get_ns() }, seen),
    };
    let _ = CONNTRACK.insert(t, &entry, BPF_ANY as u64);
}

/// Records a FIN or RST of an unisolated connection (`fwd`, as the packet goes) in whichever
/// direction it was opened, so its record ends with it. A BPF subprogram with its own frame
/// (inlined, it would grow [`check`]'s frame past what its call chain can hold).
#[inline(never)]
fn closing(fwd: &nat::Tuple, seen: u32) {
    // SAFETY: a BPF helper with no memory preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(e) = CONNTRACK.get_ptr_mut(fwd) {
        // SAFETY: a map value, valid for the whole run.
        unsafe { (*e).life.touch(now, seen) };
        return;
    }
    if let Some(e) = CONNTRACK.get_ptr_mut(&fwd.reversed()) {
        // SAFETY: a map value, valid for the whole run.
        unsafe { (*e).life.touch(now, seen << flow::REPLY_SHIFT) };
    }
}
