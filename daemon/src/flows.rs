//! The flow collector: the end of per-flow state, as the kernel's conntrack garbage collector
//! gives one. Every `--flow-gc-interval` the agent reads the flow maps (masquerade
//! `SL_SNAT_V2` + `SL_RSNAT_V2`, Service translation `SL_LBCT_V2`, policy tracking `SL_CT_V2`,
//! the socket reverse map `SL_SKREV_V2`), classifies each flow from what its entries saw
//! (`datapath_common::flow::state`) and deletes the flows idle past their state's timeout, both
//! directions together: a masqueraded flow's port is free again seconds after its connection
//! closed. A map more than half full is collected with shorter timeouts (÷4 past 1/2, ÷16 past
//! 3/4, ÷64 past 7/8), so it stays far from the LRU eviction that is only the safety net.
//!
//! An entry whose other direction is missing (evicted) is useless to its flow (the next packet
//! claims anew) and goes after the closed timeout. A policy entry of a connection accelerated
//! by sockops (its data no longer passes TC, so its "last seen" stands still) is kept while the
//! socket is in the sockhash.
//!
//! Races with the datapath: an entry is deleted only if its "last seen" is still the one read
//! in this run (a flow that came back to life in between is kept).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use aya::maps::{HashMap as BpfHash, Map, MapData};
use datapath_common::{
    flow::{self, Life, Timeouts, STATES, STATE_NAMES, STATE_TCP_CLOSED},
    nat::{self, Binding, Tuple},
    policy, svc,
};

use crate::api;

/// What one run did to one map.
#[derive(Clone, Debug, Default)]
pub struct MapStats {
    pub entries: u64,
    pub capacity: u32,
    pub by_state: [u64; STATES],
    pub scanned: u64,
    pub expired: u64,
    pub expired_total: u64,
    pub pressure: u32,
}

/// Port use of masquerade, from the last run.
#[derive(Clone, Debug, Default)]
pub struct MasqStats {
    /// Reply entries (ports in use across all destinations).
    pub ports_in_use: u64,
    /// The destination (`addr:port/proto`) with the most ports in use, and how many.
    pub busiest: Option<(String, u64)>,
}

pub struct Collector {
    bpffs: PathBuf,
    pub timeouts: Timeouts,
    pub interval: Duration,
    /// The masquerade port range, for status.
    pub ports: (u16, u16),
    pub maps: BTreeMap<&'static str, MapStats>,
    pub masq: MasqStats,
    pub runs: u64,
    pub last_run: Option<(SystemTime, Instant, Duration)>,
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Collection pressure of a map `entries` of `capacity` full.
fn pressure(entries: u64, capacity: u32) -> u32 {
    let c = capacity.max(1) as u64;
    match entries * 8 / c {
        0..=3 => 0,
        4..=5 => 1,
        6 => 2,
        _ => 3,
    }
}

fn open_hash<V: aya::Pod>(bpffs: &Path, name: &str) -> anyhow::Result<BpfHash<MapData, Tuple, V>> {
    let md = crate::pins::open(bpffs, name)?;
    BpfHash::try_from(Map::LruHashMap(md)).with_context(|| format!("{name} map type"))
}

/// Every entry of a map, read once (a bounded walk: deletions by the datapath can restart the
/// kernel's key iteration).
fn snapshot<V: aya::Pod>(m: &BpfHash<MapData, Tuple, V>, capacity: u32) -> Vec<(Tuple, V)> {
    m.iter()
        .take(2 * capacity as usize)
        .filter_map(Result::ok)
        .collect::<HashMap<_, _>>()
        .into_iter()
        .collect()
}

/// The verdict on a flow with both directions known, or only one (`partner` None: an orphan,
/// collected as closed).
#[expect(
    clippy::too_many_arguments,
    reason = "the flow's fields and the run's clock, as `flow::expired` takes them"
)]
fn judge(
    proto: u8,
    fwd: u32,
    rev: u32,
    last: u64,
    orphan: bool,
    now: u64,
    t: &Timeouts,
    pressure: u32,
) -> (u8, bool) {
    if orphan {
        let timeout = t.0[STATE_TCP_CLOSED as usize] >> (2 * pressure.min(3));
        return (STATE_TCP_CLOSED, now.saturating_sub(last) >= timeout);
    }
    flow::expired(proto, fwd, rev, last, now, t, pressure)
}

impl Collector {
    pub fn new(bpffs: &Path, timeouts: Timeouts, interval: Duration, ports: (u16, u16)) -> Self {
        Self {
            bpffs: bpffs.to_path_buf(),
            timeouts,
            interval,
            ports,
            maps: BTreeMap::new(),
            masq: MasqStats::default(),
            runs: 0,
            last_run: None,
        }
    }

    /// One pass over every flow map. `accelerated` are the policy tracker's keys of sockets
    /// in the sockhash (kept: their packets bypass TC).
    pub fn run(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let now = monotonic_ns();
        self.collect_masquerade(now)?;
        self.collect_lb(now)?;
        let keep = self.accelerated_keys();
        self.collect_policy(now, &keep)?;
        self.collect_sock_rev(now)?;
        self.runs += 1;
        self.last_run = Some((SystemTime::now(), started, started.elapsed()));
        Ok(())
    }

    fn stats(&mut self, name: &'static str, capacity: u32) -> &mut MapStats {
        let s = self.maps.entry(name).or_default();
        let total = s.expired_total;
        *s = MapStats {
            capacity,
            expired_total: total,
            ..MapStats::default()
        };
        s
    }

    fn collect_masquerade(&mut self, now: u64) -> anyhow::Result<()> {
        let mut fwd_map: BpfHash<MapData, Tuple, Binding> = open_hash(&self.bpffs, nat::MAP_NAME)?;
        let mut rev_map: BpfHash<MapData, Tuple, Binding> =
            open_hash(&self.bpffs, nat::REV_MAP_NAME)?;
        let fwd = snapshot(&fwd_map, nat::MAX_ENTRIES);
        let rev: HashMap<Tuple, Binding> =
            snapshot(&rev_map, nat::MAX_ENTRIES).into_iter().collect();
        let p = pressure(fwd.len().max(rev.len()) as u64, nat::MAX_ENTRIES);
        let t = self.timeouts;
        // Reply keys are (destination, node): ports are used per destination address, port
        // (ICMP: none) and protocol.
        let mut per_dst: HashMap<([u8; 16], u16, u8), u64> = HashMap::new();
        for k in rev.keys() {
            *per_dst.entry((k.saddr, k.sport, k.proto)).or_default() += 1;
        }
        self.masq = MasqStats {
            ports_in_use: rev.len() as u64,
            busiest: per_dst
                .into_iter()
                .max_by_key(|(_, n)| *n)
                .map(|((a, port, proto), n)| {
                    let a = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                    let proto = match proto {
                        6 => "TCP",
                        17 => "UDP",
                        1 => "ICMP",
                        _ => "?",
                    };
                    (format!("{a}:{}/{proto}", u16::from_be(port)), n)
                }),
        };
        let (mut scanned, mut expired, mut states) = (0u64, 0u64, [0u64; STATES]);
        let mut paired: HashSet<Tuple> = HashSet::new();
        for (k, b) in &fwd {
            scanned += 1;
            let rk = k.masq_reply(b);
            let partner = rev
                .get(&rk)
                .filter(|r| r.points_at(&k.saddr, k.sport))
                .copied();
            if partner.is_some() {
                paired.insert(rk);
            }
            let rl = partner.map(|r| r.life).unwrap_or_default();
            let last = b.life.last_ns.max(rl.last_ns);
            let (st, gone) = judge(
                k.proto,
                b.life.seen,
                rl.seen,
                last,
                partner.is_none(),
                now,
                &t,
                p,
            );
            states[st as usize] += 1;
            if gone && still(&fwd_map, k, b.life) {
                let _ = fwd_map.remove(k);
                if partner.is_some() {
                    let _ = rev_map.remove(&rk);
                }
                expired += 1;
            }
        }
        for (rk, r) in &rev {
            if paired.contains(rk) {
                continue;
            }
            scanned += 1;
            // An orphan: its egress entry is gone or bound elsewhere.
            let (st, gone) = judge(rk.proto, 0, r.life.seen, r.life.last_ns, true, now, &t, p);
            states[st as usize] += 1;
            if gone && still(&rev_map, rk, r.life) {
                let _ = rev_map.remove(rk);
                expired += 1;
            }
        }
        let s = self.stats(nat::MAP_NAME, nat::MAX_ENTRIES);
        s.entries = (fwd.len() + rev.len()) as u64;
        s.capacity = 2 * nat::MAX_ENTRIES;
        s.by_state = states;
        s.scanned = scanned;
        s.expired = expired;
        s.expired_total += expired;
        s.pressure = p;
        Ok(())
    }

    fn collect_lb(&mut self, now: u64) -> anyhow::Result<()> {
        let mut map: BpfHash<MapData, Tuple, svc::Xlate> =
            open_hash(&self.bpffs, svc::CT_MAP_NAME)?;
        let all: HashMap<Tuple, svc::Xlate> =
            snapshot(&map, svc::CT_MAX_ENTRIES).into_iter().collect();
        let p = pressure(all.len() as u64, svc::CT_MAX_ENTRIES);
        let t = self.timeouts;
        let (mut scanned, mut expired, mut states) = (0u64, 0u64, [0u64; STATES]);
        let mut done: HashSet<Tuple> = HashSet::new();
        for (k, x) in &all {
            if done.contains(k) {
                continue;
            }
            scanned += 1;
            let pk = x.partner(k.proto);
            let partner = all
                .get(&pk)
                .filter(|o| {
                    o.partner(pk.proto) == *k
                        && (o.flags & svc::XLATE_REPLY) != (x.flags & svc::XLATE_REPLY)
                })
                .copied();
            let (fl, rl) = match partner {
                Some(o) if x.flags & svc::XLATE_REPLY == 0 => (x.life, o.life),
                Some(o) => (o.life, x.life),
                None => (x.life, Life::default()),
            };
            if partner.is_some() {
                done.insert(pk);
            }
            let (st, gone) = judge(
                k.proto,
                fl.seen,
                rl.seen,
                fl.last_ns.max(rl.last_ns),
                partner.is_none(),
                now,
                &t,
                p,
            );
            states[st as usize] += 1;
            if gone && still(&map, k, x.life) {
                let _ = map.remove(k);
                if partner.is_some() {
                    let _ = map.remove(&pk);
                }
                expired += 1;
            }
        }
        let s = self.stats(svc::CT_MAP_NAME, svc::CT_MAX_ENTRIES);
        s.entries = all.len() as u64;
        s.by_state = states;
        s.scanned = scanned;
        s.expired = expired;
        s.expired_total += expired;
        s.pressure = p;
        Ok(())
    }

    /// The policy tracker's keys of connections whose sockets are accelerated.
    fn accelerated_keys(&self) -> HashSet<Tuple> {
        use aya::maps::SockHash;
        use datapath_common::sock::{self, SockKey};
        let Ok(md) = crate::pins::open(&self.bpffs, sock::MAP_NAME) else {
            return HashSet::new();
        };
        let Ok(hash) = SockHash::<MapData, SockKey>::try_from(Map::SockHash(md)) else {
            return HashSet::new();
        };
        let v4 = |a: &[u8; 16]| [a[0], a[1], a[2], a[3]];
        hash.keys()
            .take(2 * sock::MAX_ENTRIES as usize)
            .filter_map(Result::ok)
            .filter(|k| k.netns == 0)
            .flat_map(|k| {
                let end = |addr, port| policy::SockEnd {
                    addr,
                    port,
                    flags: 0,
                };
                policy::socket_directions(
                    end(v4(&k.local_addr), k.local_port as u16),
                    end(v4(&k.remote_addr), k.remote_port as u16),
                )
                .map(|(t, _)| t)
            })
            .collect()
    }

    fn collect_policy(&mut self, now: u64, keep: &HashSet<Tuple>) -> anyhow::Result<()> {
        let mut map: BpfHash<MapData, Tuple, policy::CtEntry> =
            open_hash(&self.bpffs, policy::CT_MAP_NAME)?;
        let all = snapshot(&map, policy::CT_MAX_ENTRIES);
        let p = pressure(all.len() as u64, policy::CT_MAX_ENTRIES);
        let t = self.timeouts;
        let (mut scanned, mut expired, mut states) = (0u64, 0u64, [0u64; STATES]);
        for (k, e) in &all {
            scanned += 1;
            let fwd = e.life.seen & 0xff;
            let rev = (e.life.seen >> flow::REPLY_SHIFT) & 0xff;
            let (st, gone) = judge(k.proto, fwd, rev, e.life.last_ns, false, now, &t, p);
            states[st as usize] += 1;
            if gone && !keep.contains(k) && still(&map, k, e.life) {
                let _ = map.remove(k);
                expired += 1;
            }
        }
        let s = self.stats(policy::CT_MAP_NAME, policy::CT_MAX_ENTRIES);
        s.entries = all.len() as u64;
        s.by_state = states;
        s.scanned = scanned;
        s.expired = expired;
        s.expired_total += expired;
        s.pressure = p;
        Ok(())
    }

    /// Socket reverse translation: entries of connected sockets end at release (in the
    /// datapath); here unconnected UDP sockets' entries idle past `udp-replied`, and any idle
    /// past the TCP established timeout.
    fn collect_sock_rev(&mut self, now: u64) -> anyhow::Result<()> {
        let md = crate::pins::open(&self.bpffs, svc::SOCK_REV_MAP_NAME)?;
        let mut map: BpfHash<MapData, svc::SockRevKey, svc::SockRev> =
            BpfHash::try_from(Map::LruHashMap(md)).context("socket reverse map type")?;
        let all: Vec<(svc::SockRevKey, svc::SockRev)> = map
            .iter()
            .take(2 * svc::SOCK_REV_MAX_ENTRIES as usize)
            .filter_map(Result::ok)
            .collect();
        let p = pressure(all.len() as u64, svc::SOCK_REV_MAX_ENTRIES);
        let t = self.timeouts;
        let (mut expired, mut states) = (0u64, [0u64; STATES]);
        for (k, e) in &all {
            let (proto, fwd, rev) = if e.flags & svc::SOCKREV_CONNECTED != 0 {
                // Ends at release: judged as an established TCP connection.
                (6, flow::SEEN_PKT, flow::SEEN_PKT)
            } else {
                (17, flow::SEEN_PKT, flow::SEEN_PKT)
            };
            let (st, gone) = flow::expired(proto, fwd, rev, e.life.last_ns, now, &t, p);
            states[st as usize] += 1;
            if gone
                && map
                    .get(k, 0)
                    .is_ok_and(|v| v.life.last_ns == e.life.last_ns)
            {
                let _ = map.remove(k);
                expired += 1;
            }
        }
        let s = self.stats(svc::SOCK_REV_MAP_NAME, svc::SOCK_REV_MAX_ENTRIES);
        s.entries = all.len() as u64;
        s.by_state = states;
        s.scanned = all.len() as u64;
        s.expired = expired;
        s.expired_total += expired;
        s.pressure = p;
        Ok(())
    }

    /// The collector's part of `sluicectl status`.
    pub fn status(&self, no_port_drops: u64) -> api::FlowsStatus {
        let secs = |ns: u64| ns / 1_000_000_000;
        api::FlowsStatus {
            gc_runs: self.runs,
            gc_interval_seconds: self.interval.as_secs_f64(),
            last_run_seconds_ago: self.last_run.map(|(_, at, _)| at.elapsed().as_secs()),
            last_run_ms: self
                .last_run
                .map(|(_, _, took)| took.as_millis() as u64)
                .unwrap_or(0),
            timeouts_seconds: STATE_NAMES
                .iter()
                .zip(self.timeouts.0)
                .map(|(n, t)| (n.to_string(), secs(t)))
                .collect(),
            maps: self
                .maps
                .iter()
                .map(|(name, s)| api::FlowMapStatus {
                    map: name.to_string(),
                    entries: s.entries,
                    capacity: s.capacity,
                    states: STATE_NAMES
                        .iter()
                        .zip(s.by_state)
                        .filter(|(_, n)| *n > 0)
                        .map(|(k, n)| (k.to_string(), n))
                        .collect(),
                    scanned: s.scanned,
                    expired: s.expired,
                    expired_total: s.expired_total,
                    pressure: s.pressure,
                })
                .collect(),
            masquerade: api::MasqueradeStatus {
                ports: format!("{}-{}", self.ports.0, self.ports.1),
                ports_per_destination: u32::from(self.ports.1 - self.ports.0) + 1,
                ports_in_use: self.masq.ports_in_use,
                busiest_destination: self.masq.busiest.as_ref().map(|(d, _)| d.clone()),
                busiest_ports_in_use: self.masq.busiest.as_ref().map_or(0, |(_, n)| *n),
                no_port_drops,
            },
        }
    }
}

/// Whether `k` still holds the entry read in this run (no packet refreshed it since).
fn still<V: aya::Pod + Lifed>(m: &BpfHash<MapData, Tuple, V>, k: &Tuple, life: Life) -> bool {
    m.get(k, 0).is_ok_and(|v| v.life().last_ns == life.last_ns)
}

trait Lifed {
    fn life(&self) -> Life;
}
impl Lifed for Binding {
    fn life(&self) -> Life {
        self.life
    }
}
impl Lifed for svc::Xlate {
    fn life(&self) -> Life {
        self.life
    }
}
impl Lifed for policy::CtEntry {
    fn life(&self) -> Life {
        self.life
    }
}

/// Parses `--flow-timeouts`: comma-separated `STATE=SECONDS` (states as in `sluicectl
/// status`: tcp-syn, tcp-established, tcp-half-closed, tcp-closed, udp, udp-replied, icmp,
/// other) over the defaults.
pub fn parse_timeouts(s: &str) -> anyhow::Result<Timeouts> {
    let mut t = Timeouts::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, secs) = part
            .split_once('=')
            .with_context(|| format!("{part:?} is not STATE=SECONDS"))?;
        let i = STATE_NAMES
            .iter()
            .position(|n| *n == name.trim())
            .with_context(|| {
                format!(
                    "unknown flow state {name:?} (one of {})",
                    STATE_NAMES.join(", ")
                )
            })?;
        let secs: f64 = secs
            .trim()
            .parse()
            .with_context(|| format!("seconds {secs:?} of {name}"))?;
        if !(secs > 0.0 && secs.is_finite()) {
            anyhow::bail!("timeout of {name} must be a positive number of seconds");
        }
        t.0[i] = (secs * 1e9) as u64;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that collection gets more aggressive as a map fills.
    #[test]
    fn pressure_grows_with_fill() {
        assert_eq!(pressure(0, 1000), 0);
        assert_eq!(pressure(499, 1000), 0);
        assert_eq!(pressure(500, 1000), 1);
        assert_eq!(pressure(750, 1000), 2);
        assert_eq!(pressure(875, 1000), 3);
        assert_eq!(pressure(1000, 1000), 3);
    }

    /// Test the timeout flag over the defaults, and its bad input.
    #[test]
    fn timeouts_flag() {
        let t = parse_timeouts("tcp-closed=1, udp=2.5").unwrap();
        assert_eq!(t.0[flow::STATE_TCP_CLOSED as usize], 1_000_000_000);
        assert_eq!(t.0[flow::STATE_UDP as usize], 2_500_000_000);
        assert_eq!(
            t.0[flow::STATE_TCP_ESTABLISHED as usize],
            Timeouts::default().0[flow::STATE_TCP_ESTABLISHED as usize]
        );
        for bad in ["tcp=1", "udp", "udp=0", "udp=x"] {
            assert!(parse_timeouts(bad).is_err(), "{bad}");
        }
    }

    /// Test that an orphan goes after the closed timeout whatever it saw.
    #[test]
    fn orphans_go_after_the_closed_timeout() {
        let t = Timeouts::default();
        let s = 1_000_000_000;
        assert!(!judge(6, flow::SEEN_PKT, 0, 0, true, 9 * s, &t, 0).1);
        assert!(judge(6, flow::SEEN_PKT, 0, 0, true, 10 * s, &t, 0).1);
    }
}
