//! Service load balancing shared by the socket hooks ([`crate::sock_lb`]) and the TC programs:
//! the frontend lookup, the backend choice (ClientIP affinity, then Maglev or random), the
//! per-service counters, and the TC translation of packets that did not pass a hooked socket.
//!
//! TC translation keeps both directions in one map (`SL_LBCT_V2`, lifetime in its doc), keyed by the tuple as
//! the packet arrives: the forward entry (client → frontend) says which backend (and, for
//! external traffic with `externalTrafficPolicy: Cluster`, which node address and port the
//! client is translated to); the reverse entry (backend → client, or → node) says how to put
//! the frontend back. Connections a hooked socket made never touch this map: the socket was
//! connected to the backend itself.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, TC_ACT_SHOT},
    helpers::generated::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    programs::TcContext,
};
use datapath_common::{
    config, flow, metrics, nat,
    svc::{self, Backend, BackendKey},
};

use crate::{
    l4::{rewrite, tcp_flags, L4},
    maps::{AFFINITY, BACKENDS, LB_CT, LB_SCRATCH, MAGLEV, SERVICES, SVC_COUNTERS},
    skb::{drop, Ipv4Hdr, ETH_HLEN, IPPROTO_TCP, IP_DST_OFF, IP_SRC_OFF},
};

/// Ports tried when external traffic needs a node port of its own (`FLAG_SNAT`).
const SNAT_TRIES: u32 = 16;

/// The frontend for an IPv4 destination, if it is a Service.
#[inline(always)]
pub fn frontend(daddr: [u8; 4], dport: u16, proto: u8, scope: u8) -> Option<svc::Value> {
    let key = svc::Key::v4(daddr, dport, proto, scope);
    // SAFETY: map values outlive the run (freed after an RCU grace period).
    unsafe { SERVICES.get(&key) }.copied()
}

/// Adds one connection or packet of `len` bytes to service `id`'s counter.
#[inline(always)]
pub fn count_service(id: u32, len: u32) {
    if let Some(c) = SVC_COUNTERS.get_ptr_mut(id) {
        // SAFETY: per-CPU slot: valid for the run and no other CPU writes it.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len as u64;
        }
    }
}

/// Chooses a backend of `fe`. With affinity, a client (`aff`) keeps the backend it had while
/// it returns within the timeout and that backend still holds its slot; otherwise Maglev
/// (`hash` into the service's table) or a uniformly random slot. `None` when the service has
/// no backend.
#[inline(always)]
/// `fresh` is space for a new affinity entry (scratch memory in TC, where the stack is short).
pub fn select(
    fe: &svc::Value,
    hash: u32,
    aff: &svc::AffinityKey,
    fresh: &mut svc::Affinity,
) -> Option<&'static Backend> {
    if fe.count == 0 {
        return None;
    }
    let affinity = fe.flags & svc::FLAG_AFFINITY != 0;
    let now = if affinity {
        // SAFETY: a BPF helper with no memory preconditions.
        unsafe { bpf_ktime_get_ns() }
    } else {
        0
    };
    if affinity {
        if let Some(a) = AFFINITY.get_ptr_mut(aff) {
            // SAFETY: a map value, valid for the whole run; in place: the entry is the client's
            // own; a racing update only renews it too.
            let (last, slot) = unsafe { ((*a).last_ns, (*a).slot) };
            let fresh = now.wrapping_sub(last) < fe.affinity_timeout as u64 * 1_000_000_000;
            if fresh && slot <= fe.count {
                let key = BackendKey { id: fe.id, slot };
                // SAFETY: map values outlive the run (freed after an RCU grace period).
                if let Some(b) = unsafe { BACKENDS.get(&key) } {
                    // SAFETY: a map value, valid for the whole run.
                    if *b == unsafe { (*a).backend } {
                        // SAFETY: a map value, valid for the whole run.
                        unsafe { (*a).last_ns = now };
                        return Some(b);
                    }
                }
            }
        }
    }
    let slot = if fe.flags & svc::FLAG_MAGLEV != 0 {
        // SAFETY: map values outlive the run (freed after an RCU grace period).
        match unsafe { MAGLEV.get(&fe.id) } {
            Some(table) => {
                // Read back through a volatile so the bound check stays in the program: the
                // compiler knows `% M < M` and would drop it; the verifier does not.
                let idx = svc::maglev_index(hash);
                // SAFETY: volatile reads of live, aligned locals.
                let idx = unsafe { core::ptr::read_volatile(&idx) };
                if idx >= svc::MAGLEV_M {
                    return None;
                }
                *table.get(idx)? as u32
            }
            None => random_slot(fe.count)?,
        }
    } else {
        random_slot(fe.count)?
    };
    let mut key = BackendKey { id: fe.id, slot };
    // SAFETY: map values outlive the run (freed after an RCU grace period).
    let b = match unsafe { BACKENDS.get(&key) } {
        Some(b) => b,
        None => {
            // The set shrank between reading the count and the slot (the agent removes
            // trailing slots last): slot 1 is always part of a non-empty set.
            key.slot = 1;
            // SAFETY: map values outlive the run (freed after an RCU grace period).
            unsafe { BACKENDS.get(&key) }?
        }
    };
    if affinity {
        fresh.last_ns = now;
        fresh.slot = key.slot;
        fresh._pad = 0;
        fresh.backend = *b;
        let _ = AFFINITY.insert(aff, fresh, BPF_ANY as u64);
    }
    Some(b)
}

#[inline(always)]
fn random_slot(count: u32) -> Option<u32> {
    // checked_rem: a plain `%` keeps a divide-by-zero panic path the verifier rejects.
    // SAFETY: a BPF helper with no memory preconditions.
    Some(unsafe { bpf_get_prandom_u32() }.checked_rem(count)? + 1)
}

#[inline(always)]
fn v4(a: &[u8; 16]) -> [u8; 4] {
    [a[0], a[1], a[2], a[3]]
}

#[inline(always)]
fn wide(a: [u8; 4]) -> [u8; 16] {
    datapath_common::addr::IpKey::v4(a).addr
}

/// Rewrites the packet's tuple to `x` (only the fields that change), fixing checksums. A BPF
/// subprogram, to keep the rewrite's temporaries off [`forward`]'s frame.
#[inline(never)]
pub fn apply(ctx: &TcContext, ip: &Ipv4Hdr, l4: &L4, x: &svc::Xlate) -> Result<(), i32> {
    let (ns, nd) = (v4(&x.saddr), v4(&x.daddr));
    let fail = |_| drop(ctx, metrics::DROP_REWRITE_FAILED);
    if ns != ip.saddr || x.sport != l4.sport {
        rewrite(
            ctx,
            l4,
            ETH_HLEN + IP_SRC_OFF,
            ip.saddr,
            ns,
            l4.sport_off(),
            l4.sport,
            x.sport,
        )
        .map_err(fail)?;
    }
    if nd != ip.daddr || x.dport != l4.dport {
        rewrite(
            ctx,
            l4,
            ETH_HLEN + IP_DST_OFF,
            ip.daddr,
            nd,
            l4.dport_off(),
            l4.dport,
            x.dport,
        )
        .map_err(fail)?;
    }
    Ok(())
}

/// [`forward`] and [`reply`] run as BPF subprograms (`inline(never)`) so each gets its own
/// stack frame beside the caller's; they return a small code instead of a struct (a BPF call
/// takes at most five registers and no hidden return pointer): the new destination address
/// (`u32` from network-order bytes, plus [`TO_UPLINK`] for replies) or one of these.
pub const MISS: i64 = -1;
/// A service with no backend: the caller refuses the packet.
pub const NO_BACKEND: i64 = -2;
/// Dropped (already counted): the caller returns `TC_ACT_SHOT`.
pub const DROPPED: i64 = -3;
/// In [`reply`]'s result: the reply leaves from a node address and must go out the uplink.
pub const TO_UPLINK: i64 = 1 << 32;

/// The destination address in a non-negative result of [`forward`] or [`reply`].
#[inline(always)]
pub fn daddr_of(code: i64) -> [u8; 4] {
    (code as u32).to_ne_bytes()
}

#[inline(always)]
fn done(x: &svc::Xlate) -> i64 {
    u32::from_ne_bytes(v4(&x.daddr)) as i64
}

/// Chooses the translation of a packet addressed to a frontend of `scope` (forward direction):
/// reuses the flow's entry or chooses a backend and records both directions. The packet is
/// not rewritten yet: on a non-negative result the caller applies it with [`apply_chosen`]
/// (a separate call keeps the two frames off one call chain).
#[inline(never)]
pub fn forward(ctx: &TcContext, cfg: &config::NodeConfig, ip: &Ipv4Hdr, l4: &L4, scope: u8) -> i64 {
    match try_forward(ctx, cfg, ip, l4, scope) {
        Ok(v) => v,
        Err(_) => DROPPED,
    }
}

#[inline(always)]
fn try_forward(
    ctx: &TcContext,
    cfg: &config::NodeConfig,
    ip: &Ipv4Hdr,
    l4: &L4,
    scope: u8,
) -> Result<i64, i32> {
    let scratch = LB_SCRATCH.get_ptr_mut(0).ok_or(TC_ACT_SHOT as i32)?;
    // Per-CPU and used by one program run at a time (TC runs with preemption off).
    // SAFETY: per-CPU scratch slot, used by one run at a time (TC runs with preemption off).
    let sc = unsafe { &mut *scratch };
    sc.tuple = nat::Tuple::v4(ip.proto, ip.saddr, ip.daddr, l4.sport, l4.dport);
    if let Some(x) = LB_CT.get_ptr_mut(&sc.tuple) {
        // SAFETY: a map value, valid for the whole run; in place: the entry is this flow's own.
        let x = unsafe { &mut *x };
        let seen = flow::seen_of(tcp_flags(ctx, ip, l4));
        sc.reply = x.partner(ip.proto);
        if x.flags & svc::XLATE_REPLY == 0 && !restarts(x, &sc.reply, seen) {
            // SAFETY: a BPF helper with no memory preconditions.
            x.life.touch(unsafe { bpf_ktime_get_ns() }, seen);
            sc.fwd = *x;
            count_service(x.id, ctx.len());
            return Ok(done(x));
        }
    }
    let Some(fe) = frontend(ip.daddr, l4.dport, ip.proto, scope) else {
        return Ok(MISS);
    };
    sc.aff = svc::AffinityKey {
        netns_cookie: 0,
        id: fe.id,
        _pad: 0,
        client: datapath_common::addr::IpKey::v4(ip.saddr),
        _pad2: [0; 4],
    };
    let hash = svc::flow_hash(
        ip.saddr,
        u16::from_be(l4.sport),
        ip.daddr,
        u16::from_be(l4.dport),
        ip.proto,
    );
    let Some(b) = select(&fe, hash, &sc.aff, &mut sc.aff_val) else {
        return Ok(NO_BACKEND);
    };
    let back = v4(&b.addr.addr);
    // Read again rather than kept across the choice: registers are scarce, stack more so.
    let seen = flow::seen_of(tcp_flags(ctx, ip, l4));
    // SAFETY: a BPF helper with no memory preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    sc.fwd = svc::Xlate {
        saddr: wide(ip.saddr),
        daddr: b.addr.addr,
        sport: l4.sport,
        dport: b.port,
        id: fe.id,
        flags: 0,
        _pad: 0,
        life: flow::Life::new(now, seen),
    };
    sc.rev = svc::Xlate {
        saddr: wide(ip.daddr),
        daddr: wide(ip.saddr),
        sport: l4.dport,
        dport: l4.sport,
        id: fe.id,
        flags: svc::XLATE_REPLY,
        _pad: 0,
        life: flow::Life::new(now, 0),
    };
    if scope == svc::SCOPE_EXTERNAL {
        // The reply leaves from a node address: out the uplink, not through the stack.
        sc.rev.flags |= svc::XLATE_TO_UPLINK;
    }
    if fe.flags & svc::FLAG_SNAT != 0 {
        // The client becomes the node: the reverse entry is the claim of its port.
        sc.reply = nat::Tuple::v4(ip.proto, back, cfg.node_ip4, b.port, l4.sport);
        let port = claim_snat_port(cfg, &sc.reply, &sc.rev);
        if port < 0 {
            return Err(drop(ctx, metrics::DROP_NAT_NO_PORT));
        }
        sc.fwd.saddr = wide(cfg.node_ip4);
        sc.fwd.sport = port as u16;
    } else {
        // Hairpin: a client that is its own backend gets another source (see
        // `svc::HAIRPIN_SOURCE4`).
        let src = if back == ip.saddr {
            svc::HAIRPIN_SOURCE4
        } else {
            ip.saddr
        };
        sc.fwd.saddr = wide(src);
        sc.reply = nat::Tuple::v4(ip.proto, back, src, b.port, l4.sport);
        if LB_CT.insert(&sc.reply, &sc.rev, BPF_ANY as u64).is_err() {
            return Err(drop(ctx, metrics::DROP_LB_TABLE_FULL));
        }
    }
    if LB_CT.insert(&sc.tuple, &sc.fwd, BPF_ANY as u64).is_err() {
        return Err(drop(ctx, metrics::DROP_LB_TABLE_FULL));
    }
    count_service(fe.id, ctx.len());
    Ok(done(&sc.fwd))
}

/// Whether a client's packet on a known forward entry `x` opens a new connection instead:
/// a SYN when the translated connection is over (closed, stale, or its reply entry gone).
/// A SYN on a live one is a retransmission and keeps its backend.
#[inline(always)]
fn restarts(x: &svc::Xlate, partner: &nat::Tuple, seen: u32) -> bool {
    if seen & flow::SEEN_SYN == 0 {
        return false;
    }
    // SAFETY: map values outlive the run (freed after an RCU grace period).
    match unsafe { LB_CT.get(partner) } {
        Some(r) => flow::closed(x.life.seen, r.life.seen),
        None => true,
    }
}

/// For a packet from a pod that no frontend translated (e.g. straight to a backend): a TCP
/// SYN or a UDP datagram whose reply tuple is the reverse entry of an earlier translated flow
/// starts a different flow on the same ports, so that entry is stale: its replies must not be
/// turned into the frontend's. A BPF subprogram with its own frame.
#[inline(never)]
pub fn untranslated(f: &crate::policy::Flow) {
    if f.proto == IPPROTO_TCP && !flow::is_syn(f.tcp_flags) {
        return;
    }
    let reply = nat::Tuple::v4(f.proto, f.daddr, f.saddr, f.dport, f.sport);
    if let Some(x) = LB_CT.get_ptr_mut(&reply) {
        // SAFETY: a map value, valid for the whole run.
        let x = unsafe { &mut *x };
        if x.flags & svc::XLATE_REPLY != 0 && x.life.seen & flow::SEEN_STALE == 0 {
            x.life.seen |= flow::SEEN_STALE;
        }
    }
}

/// Rewrites the packet as the last successful [`forward`] on this CPU chose.
#[inline(always)]
pub fn apply_chosen(ctx: &TcContext, ip: &Ipv4Hdr, l4: &L4) -> Result<(), i32> {
    let sc = LB_SCRATCH.get_ptr(0).ok_or(TC_ACT_SHOT as i32)?;
    // SAFETY: per-CPU scratch slot, used by one run at a time (TC runs with preemption off).
    apply(ctx, ip, l4, unsafe { &(*sc).fwd })
}

/// Puts the tuple the last successful [`forward`] on this CPU chose into `flow` (for policy).
#[inline(always)]
pub fn chosen_flow(flow: &mut crate::policy::Flow) -> Result<(), i32> {
    let sc = LB_SCRATCH.get_ptr(0).ok_or(TC_ACT_SHOT as i32)?;
    // SAFETY: per-CPU scratch slot, used by one run at a time (TC runs with preemption off).
    let x = unsafe { &(*sc).fwd };
    flow.saddr = v4(&x.saddr);
    flow.daddr = v4(&x.daddr);
    flow.sport = x.sport;
    flow.dport = x.dport;
    Ok(())
}

/// Claims a node port (network order, returned as a non-negative `i32`) for external traffic
/// translated to the node's address: `first` is the reply tuple (backend → node) with the
/// client's own port, tried first; then ports from the masquerade range. The claim is the
/// insertion of the reverse entry `rev` with `BPF_NOEXIST`. -1 when every try was taken.
#[inline(never)]
fn claim_snat_port(cfg: &config::NodeConfig, first: &nat::Tuple, rev: &svc::Xlate) -> i32 {
    let min = cfg.snat_port_min as u32;
    let range = (cfg.snat_port_max as u32).saturating_sub(min) + 1;
    // SAFETY: a BPF helper with no memory preconditions.
    let start = unsafe { bpf_get_prandom_u32() }
        .checked_rem(range)
        .unwrap_or(0);
    let mut key = *first;
    for i in 0..SNAT_TRIES {
        if i > 0 {
            key.dport = ((min + (start + i).checked_rem(range).unwrap_or(0)) as u16).to_be();
        }
        if LB_CT.insert(&key, rev, BPF_NOEXIST as u64).is_ok() {
            return key.dport as i32;
        }
    }
    -1
}

/// Translates a reply from a backend back to the frontend, if the packet belongs to a
/// translated flow: [`MISS`], [`DROPPED`] or the new destination (with [`TO_UPLINK`]).
#[inline(never)]
pub fn reply(ctx: &TcContext, ip: &Ipv4Hdr, l4: &L4) -> i64 {
    let tuple = nat::Tuple::v4(ip.proto, ip.saddr, ip.daddr, l4.sport, l4.dport);
    let Some(x) = LB_CT.get_ptr_mut(&tuple) else {
        return MISS;
    };
    // SAFETY: a map value, valid for the whole run; in place: the entry is this flow's own.
    let e = unsafe { &mut *x };
    if e.flags & svc::XLATE_REPLY == 0 || e.life.seen & flow::SEEN_STALE != 0 {
        return MISS;
    }
    let flags = tcp_flags(ctx, ip, l4);
    if flow::is_syn(flags) {
        // A connection the backend opens is never a reply of the translated one.
        e.life.seen |= flow::SEEN_STALE;
        return MISS;
    }
    e.life
        // SAFETY: a BPF helper with no memory preconditions.
        .touch(unsafe { bpf_ktime_get_ns() }, flow::seen_of(flags));
    let x = &*e;
    if apply(ctx, ip, l4, x).is_err() {
        return DROPPED;
    }
    let up = if x.flags & svc::XLATE_TO_UPLINK != 0 {
        TO_UPLINK
    } else {
        0
    };
    done(x) | up
}
