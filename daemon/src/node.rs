//! Facts about the node the agent runs on, read from the kernel of the agent's network
//! namespace: the uplink (the interface of the default route), its address and MTU, and the
//! cgroup v2 mount. Plus the one sysctl the datapath needs.

use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{bail, Context as _};

/// The interface of the IPv4 default route, from `/proc/net/route` (per network namespace).
pub fn default_route_iface() -> anyhow::Result<String> {
    let table = std::fs::read_to_string("/proc/net/route").context("read /proc/net/route")?;
    parse_default_route(&table)
        .context("no IPv4 default route in this network namespace: pass --uplink IFACE")
}

fn parse_default_route(table: &str) -> Option<String> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
        (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_string())
    })
}

/// The first IPv4 address of `iface`.
pub fn iface_ipv4(iface: &str) -> anyhow::Result<Ipv4Addr> {
    let addrs = nix::ifaddrs::getifaddrs().context("list interface addresses")?;
    for a in addrs {
        if a.interface_name != iface {
            continue;
        }
        if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            return Ok(sin.ip());
        }
    }
    bail!("interface {iface} has no IPv4 address (masquerade needs one)")
}

/// The networks of `iface`'s addresses (`192.0.2.2/24` → `192.0.2.0/24`), named by `iface`.
pub fn iface_networks(iface: &str) -> anyhow::Result<Vec<(String, ipnetwork::IpNetwork)>> {
    let addrs = nix::ifaddrs::getifaddrs().context("list interface addresses")?;
    let prefix = |mask: &nix::sys::socket::SockaddrStorage| {
        if let Some(m) = mask.as_sockaddr_in() {
            Some(u32::from(m.ip()).count_ones() as u8)
        } else {
            mask.as_sockaddr_in6()
                .map(|m| u128::from(m.ip()).count_ones() as u8)
        }
    };
    Ok(addrs
        .filter(|a| a.interface_name == iface)
        .filter_map(|a| {
            let addr = a.address.as_ref()?;
            let ip: std::net::IpAddr = match (addr.as_sockaddr_in(), addr.as_sockaddr_in6()) {
                (Some(v4), _) => v4.ip().into(),
                (_, Some(v6)) => v6.ip().into(),
                _ => return None,
            };
            let net = ipam::network_of(ip, prefix(a.netmask.as_ref()?)?)?;
            Some((iface.to_string(), net))
        })
        .collect())
}

/// ifindex of `iface`.
pub fn ifindex(iface: &str) -> anyhow::Result<u32> {
    nix::net::if_::if_nametoindex(iface).with_context(|| format!("interface {iface} not found"))
}

/// MTU of `iface`.
pub fn mtu(iface: &str) -> anyhow::Result<u32> {
    let p = format!("/sys/class/net/{iface}/mtu");
    // /sys shows the namespace the sysfs was mounted in; fall back to 1500 when it is not ours.
    Ok(std::fs::read_to_string(&p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1500))
}

/// The cgroup v2 mount point, from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        pre.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// Turns on IPv4 forwarding in this network namespace (pods reach the node and the outside
/// through the node's routing).
pub fn enable_forwarding() -> anyhow::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enable net.ipv4.ip_forward")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that the default route's interface is found in a /proc/net/route table.
    #[test]
    fn default_route_from_proc_table() {
        let t =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                 eth1\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                 up0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(parse_default_route(t).as_deref(), Some("up0"));
        assert_eq!(parse_default_route("Iface\tDestination\n"), None);
    }
}
