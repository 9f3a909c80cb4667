//! The lifetime of per-flow state, shared by every flow map (masquerade `SL_SNAT_V2` /
//! `SL_RSNAT_V2`, Service translation `SL_LBCT_V2`, policy tracking `SL_CT_V2`, socket reverse
//! translation `SL_SKREV_V2`), as the kernel's conntrack gives its entries one: each entry
//! carries a [`Life`] (when a packet last used it, what TCP flags it saw), the programs keep
//! it current, and the agent's collector deletes what [`expired`] says is over, both
//! directions of a flow together. LRU eviction is only the safety net for a full map.
//!
//! What the programs record, per direction of a flow: [`SEEN_PKT`] for any packet, and the
//! TCP flags [`SEEN_SYN`], [`SEEN_FIN`], [`SEEN_RST`]. Maps that keep one entry per direction
//! (masquerade, Service translation) record in their own entry; the policy tracker keeps both
//! directions in one entry, the reply's bits shifted by [`REPLY_SHIFT`].
//!
//! Timeouts are idle times, from the last packet ([`Timeouts::default`] are production values,
//! close to Cilium's and the kernel's conntrack): a closed TCP connection (RST, or FIN both
//! ways) goes after 10 s, a half-closed one after 120 s idle, one never answered after 60 s,
//! an established one after 6 h idle (longer than TCP keepalive's 2 h default); UDP after 30 s
//! (120 s once answered), ICMP echo after 30 s.
//!
//! "Last seen" is written at most once per [`REFRESH_NS`] per entry (and whenever a new flag
//! appears), so a busy flow costs a map write per second, not per packet.

/// The kernel names the flow maps had before they carried a [`Life`]: an agent removes these
/// pins after loading (their layout is not this one; the programs that read them are replaced).
pub const RETIRED_MAPS: &[&str] = &[
    "SL_SNAT_V1",
    "SL_RSNAT_V1",
    "SL_LBCT_V1",
    "SL_CT_V1",
    "SL_SKREV_V1",
    // Not a flow map: the node configuration before it carried the routing mode.
    "SL_CFG_V1",
];

/// When a flow was last used and what it saw.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Life {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last packet that refreshed it.
    pub last_ns: u64,
    /// `SEEN_*` bits (the reply direction's `<< REPLY_SHIFT` in two-way entries).
    pub seen: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Life>() == 16);

/// A packet went this way.
pub const SEEN_PKT: u32 = 1 << 0;
/// A TCP SYN (without ACK) went this way: the connection was opened from this side.
pub const SEEN_SYN: u32 = 1 << 1;
pub const SEEN_FIN: u32 = 1 << 2;
pub const SEEN_RST: u32 = 1 << 3;
/// The entry was written without following its packets (policy's record of who opened a
/// connection between unisolated pods): its idle time is unknown, so only TCP's end or the
/// established timeout ends it.
pub const SEEN_UNFOLLOWED: u32 = 1 << 4;
/// In two-way entries, the reply direction's bits are the same bits shifted by this.
pub const REPLY_SHIFT: u32 = 8;
/// A connection's state changed through `mark_stale`: a new connection reuses the tuple and
/// the entry must not apply to it (collected as closed).
pub const SEEN_STALE: u32 = 1 << 5;

/// "Last seen" is rewritten at most this often per entry (1 s).
pub const REFRESH_NS: u64 = 1_000_000_000;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// The `SEEN_*` bits one packet adds (`tcp_flags` 0 for other protocols).
#[inline(always)]
pub const fn seen_of(tcp_flags: u8) -> u32 {
    let mut s = SEEN_PKT;
    if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        s |= SEEN_SYN;
    }
    if tcp_flags & TCP_FIN != 0 {
        s |= SEEN_FIN;
    }
    if tcp_flags & TCP_RST != 0 {
        s |= SEEN_RST;
    }
    s
}

/// Whether a TCP flags byte is a connection's opening SYN (SYN without ACK).
#[inline(always)]
pub const fn is_syn(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Whether a connection whose two directions saw `fwd` and `rev` is over (RST, or FIN both
/// ways, or marked stale): a new SYN on its tuple starts a new connection.
#[inline(always)]
pub const fn closed(fwd: u32, rev: u32) -> bool {
    (fwd | rev) & (SEEN_RST | SEEN_STALE) != 0 || (fwd & rev & SEEN_FIN) != 0
}

impl Life {
    #[inline(always)]
    pub const fn new(now: u64, seen: u32) -> Self {
        Self {
            last_ns: now,
            seen,
            _pad: 0,
        }
    }

    /// Records a packet that added `bits` at `now`; returns whether anything was written.
    /// `self` is the map value in place (a racing CPU can only refresh it too).
    #[inline(always)]
    pub fn touch(&mut self, now: u64, bits: u32) -> bool {
        if bits & !self.seen == 0 && now.wrapping_sub(self.last_ns) < REFRESH_NS {
            return false;
        }
        self.seen |= bits;
        self.last_ns = now;
        true
    }
}

/// A flow's state as the collector classifies it (for its timeout and for `sluicectl`).
pub const STATE_TCP_SYN: u8 = 0;
pub const STATE_TCP_ESTABLISHED: u8 = 1;
pub const STATE_TCP_HALF_CLOSED: u8 = 2;
pub const STATE_TCP_CLOSED: u8 = 3;
pub const STATE_UDP: u8 = 4;
pub const STATE_UDP_REPLIED: u8 = 5;
pub const STATE_ICMP: u8 = 6;
pub const STATE_OTHER: u8 = 7;
pub const STATES: usize = 8;
/// Names of the states, indexed by `STATE_*`.
pub const STATE_NAMES: [&str; STATES] = [
    "tcp-syn",
    "tcp-established",
    "tcp-half-closed",
    "tcp-closed",
    "udp",
    "udp-replied",
    "icmp",
    "other",
];

/// Idle timeouts in nanoseconds, per state (`STATE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts(pub [u64; STATES]);

const S: u64 = 1_000_000_000;

impl Default for Timeouts {
    fn default() -> Self {
        Self([
            60 * S,
            6 * 3600 * S,
            120 * S,
            10 * S,
            30 * S,
            120 * S,
            30 * S,
            30 * S,
        ])
    }
}

/// The state of a flow of protocol `proto` whose opening direction saw `fwd` and whose reply
/// direction saw `rev` (`SEEN_*` bits, unshifted).
pub const fn state(proto: u8, fwd: u32, rev: u32) -> u8 {
    match proto {
        6 => {
            if closed(fwd, rev) {
                STATE_TCP_CLOSED
            } else if (fwd | rev) & SEEN_FIN != 0 {
                STATE_TCP_HALF_CLOSED
            } else if rev & SEEN_PKT != 0 || (fwd | rev) & SEEN_UNFOLLOWED != 0 {
                STATE_TCP_ESTABLISHED
            } else {
                STATE_TCP_SYN
            }
        }
        17 => {
            if rev & SEEN_PKT != 0 {
                STATE_UDP_REPLIED
            } else {
                STATE_UDP
            }
        }
        1 => STATE_ICMP,
        _ => STATE_OTHER,
    }
}

/// The collector's verdict on one flow: its state and whether it is over at `now`.
/// `pressure` (0 = none, up to 3) divides every timeout by `2^(2·pressure)` when its map fills.
pub fn expired(
    proto: u8,
    fwd: u32,
    rev: u32,
    last_ns: u64,
    now: u64,
    t: &Timeouts,
    pressure: u32,
) -> (u8, bool) {
    let st = state(proto, fwd, rev);
    let timeout = t.0[st as usize] >> (2 * pressure.min(3));
    (st, now.saturating_sub(last_ns) >= timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that TCP's flags follow RFC 9293's roles: SYN without ACK opens, SYN+ACK does not,
    /// FIN and RST are recorded whatever else is set.
    #[test]
    fn tcp_flags_to_seen_bits() {
        assert_eq!(seen_of(0x02), SEEN_PKT | SEEN_SYN);
        assert_eq!(seen_of(0x12), SEEN_PKT);
        assert_eq!(seen_of(0x11), SEEN_PKT | SEEN_FIN);
        assert_eq!(seen_of(0x14), SEEN_PKT | SEEN_RST);
        assert_eq!(seen_of(0), SEEN_PKT);
    }

    /// Test the states a TCP connection goes through and their timeouts: unanswered SYN,
    /// established, half-closed, closed by FIN both ways or by a reset from either side.
    #[test]
    fn tcp_states_and_timeouts() {
        let t = Timeouts::default();
        let syn = SEEN_PKT | SEEN_SYN;
        assert_eq!(state(6, syn, 0), STATE_TCP_SYN);
        assert_eq!(state(6, syn, SEEN_PKT), STATE_TCP_ESTABLISHED);
        assert_eq!(state(6, syn | SEEN_FIN, SEEN_PKT), STATE_TCP_HALF_CLOSED);
        assert_eq!(
            state(6, syn | SEEN_FIN, SEEN_PKT | SEEN_FIN),
            STATE_TCP_CLOSED
        );
        assert_eq!(state(6, syn, SEEN_PKT | SEEN_RST), STATE_TCP_CLOSED);
        assert_eq!(state(6, syn | SEEN_RST, 0), STATE_TCP_CLOSED);
        // Closed: gone 10 s after the last packet, not before.
        let closed = (syn | SEEN_FIN, SEEN_PKT | SEEN_FIN);
        assert!(!expired(6, closed.0, closed.1, 100 * S, 109 * S, &t, 0).1);
        assert!(expired(6, closed.0, closed.1, 100 * S, 110 * S, &t, 0).1);
        // Established: idle for hours before it goes.
        assert!(!expired(6, syn, SEEN_PKT, 0, 3600 * S, &t, 0).1);
        assert!(expired(6, syn, SEEN_PKT, 0, 6 * 3600 * S, &t, 0).1);
        // Pressure shortens every timeout.
        assert!(expired(6, syn, SEEN_PKT, 0, 6 * 3600 * S / 16, &t, 2).1);
        // A clock read before the entry was refreshed is not "expired".
        assert!(!expired(6, closed.0, closed.1, 200 * S, 100 * S, &t, 0).1);
    }

    /// Test UDP and ICMP idle timeouts (30 s; UDP 120 s once answered, as the kernel's
    /// conntrack `udp_timeout` / `udp_timeout_stream`).
    #[test]
    fn udp_and_icmp_idle() {
        let t = Timeouts::default();
        assert_eq!(
            expired(17, SEEN_PKT, 0, 0, 30 * S, &t, 0),
            (STATE_UDP, true)
        );
        assert_eq!(
            expired(17, SEEN_PKT, SEEN_PKT, 0, 30 * S, &t, 0),
            (STATE_UDP_REPLIED, false)
        );
        assert!(expired(17, SEEN_PKT, SEEN_PKT, 0, 120 * S, &t, 0).1);
        assert_eq!(
            expired(1, SEEN_PKT, 0, 0, 29 * S, &t, 0),
            (STATE_ICMP, false)
        );
    }

    /// Test that "last seen" is written once per second unless a new flag appears.
    #[test]
    fn touch_is_rate_limited() {
        let mut l = Life::new(10 * S, SEEN_PKT | SEEN_SYN);
        assert!(!l.touch(10 * S + 1, SEEN_PKT));
        assert!(l.touch(10 * S + 2, SEEN_PKT | SEEN_FIN));
        assert_eq!(l.last_ns, 10 * S + 2);
        assert!(!l.touch(10 * S + 3, SEEN_PKT | SEEN_FIN));
        assert!(l.touch(11 * S + 2, SEEN_PKT));
    }
}
