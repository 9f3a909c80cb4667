//! The masquerade port range (`--masquerade-ports`): which node ports pods' flows to the
//! outside are translated to. A masquerade port is claimed per destination (address, port,
//! protocol), so the range bounds the connections of the whole node to one destination.
//!
//! It must never collide with the node's own sockets: the node's outgoing connections take
//! their local port from `net.ipv4.ip_local_port_range` (per network namespace; Linux's
//! default 32768–60999), and a reply to node:port from outside is taken for a NodePort
//! connection when the port is a NodePort (Kubernetes' default 30000–32767). A range that
//! overlaps either is refused. The default is the widest range of 1024–65535 outside both:
//! with Linux's defaults 1024–29999 (28,976 ports per destination; before, 61000–65535).
//! Ports of the node's listening sockets in the range are logged: a reply tuple can only
//! meet such a socket when the remote host connects to it from the very port the pod dialled.

use std::ops::RangeInclusive;

use anyhow::{bail, Context as _};
use datapath_common::nat;

/// Reads `net.ipv4.ip_local_port_range` of the calling thread's network namespace.
pub fn local_port_range() -> anyhow::Result<RangeInclusive<u16>> {
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    parse_local_port_range(&text).with_context(|| format!("parse {path}: {text:?}"))
}

fn parse_local_port_range(text: &str) -> Option<RangeInclusive<u16>> {
    let mut it = text.split_whitespace().map(|w| w.parse::<u16>().ok());
    let (lo, hi) = (it.next()??, it.next()??);
    (lo <= hi).then_some(lo..=hi)
}

/// Parses `MIN-MAX` (inclusive).
pub fn parse_range(s: &str) -> anyhow::Result<RangeInclusive<u16>> {
    let (lo, hi) = s
        .split_once('-')
        .with_context(|| format!("{s:?} is not MIN-MAX"))?;
    let lo: u16 = lo.trim().parse().with_context(|| format!("port {lo:?}"))?;
    let hi: u16 = hi.trim().parse().with_context(|| format!("port {hi:?}"))?;
    if lo == 0 || lo > hi {
        bail!("{s:?} is not a port range MIN-MAX with 1 <= MIN <= MAX");
    }
    Ok(lo..=hi)
}

fn overlaps(a: &RangeInclusive<u16>, b: &RangeInclusive<u16>) -> bool {
    a.start() <= b.end() && b.start() <= a.end()
}

/// The masquerade range: `wanted` if it collides with neither the node's ephemeral range
/// (`ephemeral`) nor the NodePort range, else an error saying which; without `wanted`, the
/// widest range of `PORT_FLOOR..=65535` outside both.
pub fn resolve(
    wanted: Option<RangeInclusive<u16>>,
    ephemeral: &RangeInclusive<u16>,
) -> anyhow::Result<RangeInclusive<u16>> {
    let nodeports = nat::NODEPORT_MIN..=nat::NODEPORT_MAX;
    if let Some(r) = wanted {
        if overlaps(&r, ephemeral) {
            bail!(
                "--masquerade-ports {}-{} overlaps the node's ephemeral ports {}-{} \
                 (net.ipv4.ip_local_port_range): masqueraded flows would take ports of the \
                 node's own connections",
                r.start(),
                r.end(),
                ephemeral.start(),
                ephemeral.end()
            );
        }
        if overlaps(&r, &nodeports) {
            bail!(
                "--masquerade-ports {}-{} overlaps the NodePort range {}-{}: replies would be \
                 taken for NodePort connections",
                r.start(),
                r.end(),
                nodeports.start(),
                nodeports.end()
            );
        }
        return Ok(r);
    }
    // Free stretches of 1024..=65535 between the two reserved ranges; keep the widest.
    let mut taken = [ephemeral.clone(), nodeports];
    taken.sort_by_key(|r| *r.start());
    let mut best: Option<RangeInclusive<u16>> = None;
    let mut from = nat::PORT_FLOOR as u32;
    let mut consider = |lo: u32, hi: u32| {
        if lo <= hi && hi <= 65535 {
            let r = lo as u16..=hi as u16;
            if best
                .as_ref()
                .is_none_or(|b| (b.end() - b.start()) < (r.end() - r.start()))
            {
                best = Some(r);
            }
        }
    };
    for t in &taken {
        let (lo, hi) = (*t.start() as u32, *t.end() as u32);
        if lo > from {
            consider(from, lo - 1);
        }
        from = from.max(hi + 1);
    }
    consider(from, 65535);
    best.context("no port range is left outside the ephemeral and NodePort ranges")
}

/// Ports in `range` that listening TCP sockets or bound UDP sockets of this network namespace
/// hold (from `/proc/net/{tcp,udp}`), sorted.
pub fn listening_in(range: &RangeInclusive<u16>) -> Vec<u16> {
    let mut out = Vec::new();
    for (file, listen_only) in [("/proc/net/tcp", true), ("/proc/net/udp", false)] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        out.extend(parse_proc_net(&text, listen_only).filter(|p| range.contains(p)));
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Local ports of `/proc/net/{tcp,udp}` lines (state 0A is LISTEN; UDP sockets have 07).
fn parse_proc_net(text: &str, listen_only: bool) -> impl Iterator<Item = u16> + '_ {
    text.lines().skip(1).filter_map(move |l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let port = f.get(1)?.rsplit_once(':')?.1;
        if listen_only && *f.get(3)? != "0A" {
            return None;
        }
        u16::from_str_radix(port, 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that the default is the widest stretch outside Linux's default ephemeral range and
    /// Kubernetes' NodePort range, and follows a node whose ephemeral range differs.
    #[test]
    fn default_range_avoids_ephemeral_and_nodeports() {
        assert_eq!(resolve(None, &(32768..=60999)).unwrap(), 1024..=29999);
        assert_eq!(resolve(None, &(1024..=65000)).unwrap(), 65001..=65535);
        assert_eq!(resolve(None, &(10000..=65535)).unwrap(), 1024..=9999);
    }

    /// Test that a wanted range overlapping the ephemeral or NodePort range is refused with a
    /// message naming the conflict, and a disjoint one is kept.
    #[test]
    fn wanted_range_is_checked() {
        let e = resolve(Some(60000..=61000), &(32768..=60999)).unwrap_err();
        assert!(format!("{e:#}").contains("ip_local_port_range"), "{e:#}");
        let e = resolve(Some(29000..=30000), &(32768..=60999)).unwrap_err();
        assert!(format!("{e:#}").contains("NodePort"), "{e:#}");
        assert_eq!(
            resolve(Some(61000..=65535), &(32768..=60999)).unwrap(),
            61000..=65535
        );
    }

    /// Test the flag and sysctl formats, and bad input.
    #[test]
    fn parse_formats() {
        assert_eq!(parse_range("61000-61003").unwrap(), 61000..=61003);
        for bad in ["61000", "0-10", "10-9", "a-b", "1-70000"] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_local_port_range("32768\t60999\n"),
            Some(32768..=60999)
        );
        assert_eq!(parse_local_port_range("x"), None);
    }

    /// Test that listening TCP sockets and bound UDP sockets are read from /proc/net lines.
    #[test]
    fn proc_net_ports() {
        let tcp = "  sl  local_address rem_address   st\n   0: 00000000:2328 00000000:0000 0A\n   1: 0100007F:9C40 0100007F:2328 01\n";
        assert_eq!(parse_proc_net(tcp, true).collect::<Vec<_>>(), vec![9000]);
        let udp = "  sl  local_address rem_address   st\n   0: 00000000:0035 00000000:0000 07\n";
        assert_eq!(parse_proc_net(udp, false).collect::<Vec<_>>(), vec![53]);
    }
}
