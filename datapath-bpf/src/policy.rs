//! NetworkPolicy in the datapath: one check per packet between two endpoints, of which either
//! may be an isolated local pod (see `datapath_common::policy` for the maps).
//!
//! A packet passes when no side is isolated in its direction; else when it belongs to a tracked
//! connection judged under the current policy revision; else it is judged: the source's egress
//! rules (if the source is isolated for egress) AND the destination's ingress rules (if the
//! destination is isolated for ingress) must allow it (see `datapath_common::policy` for how
//! connections are tracked). Traffic between a pod and its own node
//! is always allowed (the API reference: a pod isolated for ingress still accepts its node's
//! connections; the same for egress keeps probes' and the node's services working), and a pod
//! reaching itself through its own Service is its own business. A TCP segment that is not a bare SYN and has no tracked connection may
//! be the reply of a connection opened before its side became isolated: it passes when the
//! reverse direction would be allowed (and is tracked from then on).

use aya_ebpf::{bindings::BPF_ANY, maps::lpm_trie::Key};
use datapath_common::{
    endpoint, metrics, nat,
    policy::{self, RuleData},
    svc,
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

/// Whether `subject`'s rules in `dir` allow `peer` on `proto`/`port` (host order).
#[inline(always)]
fn rules_allow(subject: [u8; 4], dir: u8, peer: [u8; 4], proto: u8, port: u16) -> bool {
    let len = policy::fixed_bits() + 32;
    let key = Key::new(len, RuleData::v4(subject, dir, proto, peer));
    if let Some(v) = POLICY.get(&key) {
        if v.allows(port) {
            return true;
        }
    }
    let any = Key::new(len, RuleData::v4(subject, dir, policy::PROTO_ANY, peer));
    // An `except` inside a rule without ports is an entry with no range: denied.
    POLICY.get(&any).is_some_and(|v| v.allows(port))
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
    if sflags & endpoint::FLAG_ISOLATED_EGRESS != 0
        && d != node
        && !rules_allow(s, policy::DIR_EGRESS, d, proto, dport)
    {
        return Some(metrics::DROP_POLICY_EGRESS);
    }
    if dflags & endpoint::FLAG_ISOLATED_INGRESS != 0
        && s != node
        && s != svc::HAIRPIN_SOURCE4
        && !rules_allow(d, policy::DIR_INGRESS, s, proto, dport)
    {
        return Some(metrics::DROP_POLICY_INGRESS);
    }
    None
}

#[inline(always)]
fn flags_of(addr: [u8; 4]) -> u32 {
    match unsafe { ENDPOINTS.get(datapath_common::addr::IpKey::v4(addr)) } {
        Some(ep) => ep.flags,
        None => 0,
    }
}

/// The policy verdict for one packet: 0 to let it pass, else the drop reason (already counted
/// by the caller). A BPF subprogram with its own frame.
#[inline(never)]
pub fn check(f: &Flow) -> u32 {
    let isolating = endpoint::FLAG_ISOLATED_INGRESS | endpoint::FLAG_ISOLATED_EGRESS;
    let dflags = flags_of(f.daddr);
    let rev = POLICY_REVISION.get(0).copied().unwrap_or(0);
    let fwd = nat::Tuple::v4(f.proto, f.saddr, f.daddr, f.sport, f.dport);
    let syn = f.proto == IPPROTO_TCP && f.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if (f.src_flags | dflags) & isolating == 0 {
        if syn {
            // Remember who opened it, for when a side becomes isolated.
            let entry = policy::CtEntry {
                revision: rev,
                denied: 0,
            };
            let _ = CONNTRACK.insert(&fwd, &entry, BPF_ANY as u64);
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
        if let Some(e) = CONNTRACK.get_ptr_mut(&fwd) {
            let e = unsafe { &mut *e };
            if e.revision != rev {
                let v = judge(f.saddr, f.daddr, f.proto, dport, f.src_flags, dflags, node);
                e.denied = v.unwrap_or(0);
                e.revision = rev;
            }
            return e.denied;
        }
        if let Some(e) = CONNTRACK.get_ptr_mut(&back) {
            let e = unsafe { &mut *e };
            if e.revision != rev {
                let v = judge(f.daddr, f.saddr, f.proto, sport, dflags, f.src_flags, node);
                e.denied = v.unwrap_or(0);
                e.revision = rev;
            }
            return e.denied;
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
        let entry = policy::CtEntry {
            revision: rev,
            denied: 0,
        };
        let _ = CONNTRACK.insert(&back, &entry, BPF_ANY as u64);
        return 0;
    }
    if v.is_none() {
        count(metrics::POLICY_ALLOWED, 0);
    }
    let entry = policy::CtEntry {
        revision: rev,
        denied: v.unwrap_or(0),
    };
    let _ = CONNTRACK.insert(&fwd, &entry, BPF_ANY as u64);
    v.unwrap_or(0)
}
