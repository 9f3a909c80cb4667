//! The routing programmer: makes this node reach other nodes' pods, from the peers that
//! [`crate::nodes::peers`] derives from Node objects. It owns three things, all found again
//! after an agent restart and changed only where they differ:
//!
//! * the tunnel device ([`TUNNEL_DEVICE`], tunnel mode): a collect-metadata (`external`)
//!   VXLAN device on `--tunnel-port`, no learning, `NOARP`, with the MAC derived from the
//!   node's address ([`peers::tunnel_mac`]) and the uplink's MTU less [`peers::TUNNEL_OVERHEAD`]. The datapath
//!   sets each packet's tunnel key (remote node, VNI); the kernel does UDP/IP, checksums and
//!   GSO. Removed when the agent runs in native mode, and by `--uninstall`;
//! * the peers map (`SL_PEERS_V1`): each peer pod CIDR and each peer's own address (/32),
//!   to the node's address;
//! * one route per peer pod CIDR, with protocol [`RTPROT_SLUICE`] so the agent recognises its
//!   own: `dev sluice_vxlan` (tunnel: the stack's packets, and the MTU the stack answers
//!   "fragmentation needed" from) or `via InternalIP dev <uplink>` (native). Routes of other
//!   protocols are never touched: a CIDR someone else already routes is logged and skipped.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
};

use anyhow::Context as _;
use aya::maps::{lpm_trie::Key, LpmTrie, Map, MapData};
use datapath_common::{addr::IpKey, peers};
use futures::TryStreamExt as _;
use ipnetwork::Ipv4Network;
use netlink_packet_route::{
    link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope},
};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::nodes::{NodeProblem, Peer, Peers, RoutingMode};

/// The tunnel device's name.
pub const TUNNEL_DEVICE: &str = "sluice_vxlan";
/// The route protocol of Sluice's routes (`ip route show proto 83`); not one of iproute2's
/// named protocols (`/etc/iproute2/rt_protos`).
pub const RTPROT_SLUICE: u8 = 83;
/// The main routing table.
const RT_TABLE_MAIN: u8 = 254;

/// What `sluicectl status` shows of routing.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub peers: Vec<Peer>,
    pub problems: Vec<NodeProblem>,
    /// Peer CIDRs not routed, with the reason (another route covers them, or the kernel
    /// refused the route, e.g. a native-mode next hop off the uplink's network).
    pub route_conflicts: Vec<String>,
}

/// The routing programmer of one agent.
pub struct Routing {
    handle: Handle,
    pub mode: RoutingMode,
    pub tunnel_port: u16,
    uplink_ifindex: u32,
    /// The tunnel device's ifindex (0 in native mode) and MTU.
    pub tunnel_ifindex: u32,
    pub tunnel_mtu: u32,
    map: LpmTrie<MapData, IpKey, peers::Value>,
    /// What the peers map holds: CIDR → node address.
    written: BTreeMap<Ipv4Network, Ipv4Addr>,
    /// Node problems already logged (logged once when they appear).
    logged: BTreeSet<NodeProblem>,
    pub status: Status,
}

async fn connect() -> anyhow::Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("open a netlink socket")?;
    tokio::spawn(conn);
    Ok(handle)
}

impl Routing {
    /// Sets up routing for `mode`: the tunnel device created or adopted (tunnel mode) or
    /// removed (native mode), the peers map opened with what it holds.
    pub async fn setup(
        mode: RoutingMode,
        tunnel_port: u16,
        uplink_ifindex: u32,
        uplink_mtu: u32,
        node_ip: Ipv4Addr,
        bpffs: &Path,
    ) -> anyhow::Result<Self> {
        let handle = connect().await?;
        let (tunnel_ifindex, tunnel_mtu) = match mode {
            RoutingMode::Tunnel => {
                let mtu = uplink_mtu.saturating_sub(peers::TUNNEL_OVERHEAD);
                (
                    ensure_tunnel(&handle, tunnel_port, mtu, node_ip).await?,
                    mtu,
                )
            }
            RoutingMode::Native => {
                remove_tunnel(&handle).await?;
                (0, 0)
            }
        };
        let md = crate::pins::open(bpffs, peers::MAP_NAME)?;
        let map: LpmTrie<MapData, IpKey, peers::Value> =
            LpmTrie::try_from(Map::LpmTrie(md)).context("peers map type")?;
        let mut written = BTreeMap::new();
        for k in map.keys() {
            let k = k.context("read the peers map")?;
            let v = map.get(&k, 0).context("read the peers map")?;
            let (Some(net), Some(node)) = (cidr_of(&k), v.node.as_v4()) else {
                continue;
            };
            written.insert(net, Ipv4Addr::from(node));
        }
        Ok(Self {
            handle,
            mode,
            tunnel_port,
            uplink_ifindex,
            tunnel_ifindex,
            tunnel_mtu,
            map,
            written,
            logged: BTreeSet::new(),
            status: Status::default(),
        })
    }

    /// The datapath's routing mode (`peers::ROUTING_*`).
    pub fn datapath_mode(&self) -> u8 {
        match self.mode {
            RoutingMode::Tunnel => peers::ROUTING_TUNNEL,
            RoutingMode::Native => peers::ROUTING_NATIVE,
        }
    }

    /// Brings the peers map and the routes in line with `p`; logs each Node problem once when
    /// it appears.
    pub async fn sync(&mut self, p: &Peers) -> anyhow::Result<()> {
        for problem in &p.problems {
            if !self.logged.contains(problem) {
                tracing::warn!(node = %problem.node, reason = %problem.reason, "node not routed");
            }
        }
        self.logged = p.problems.iter().cloned().collect();
        let want: BTreeMap<Ipv4Network, Ipv4Addr> = p
            .peers
            .iter()
            .flat_map(|peer| peer.pod_cidrs.iter().map(|c| (*c, peer.address)))
            .collect();
        // The map also holds each peer's own address (/32, to itself): a pod's packet to
        // another node (e.g. a NodePort backend's reply to the node that translated the
        // client to itself) keeps the pod's address and takes the same path as pod traffic.
        let mut want_map = want.clone();
        for peer in &p.peers {
            want_map
                .entry(Ipv4Network::from(peer.address))
                .or_insert(peer.address);
        }

        // Routes first for a new peer (its packets need the map only once it routes), map
        // first for a removed one: either order leaves no packet without both.
        let stale: Vec<Ipv4Network> = self
            .written
            .iter()
            .filter(|(c, a)| want_map.get(c) != Some(a))
            .map(|(c, _)| *c)
            .collect();
        for c in stale {
            match self.map.remove(&key_of(&c)) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e).with_context(|| format!("remove peer {c}")),
            }
            self.written.remove(&c);
            tracing::info!(cidr = %c, "peer pod CIDR removed");
        }
        let conflicts = self.sync_routes(&want).await?;
        for c in &conflicts {
            if !self.status.route_conflicts.contains(c) {
                tracing::warn!(problem = %c, "peer pod CIDR not routed");
            }
        }
        for (c, a) in &want_map {
            if self.written.get(c) == Some(a) {
                continue;
            }
            self.map
                .insert(&key_of(c), peers::Value::v4(a.octets()), 0)
                .with_context(|| format!("write peer {c} via {a}"))?;
            self.written.insert(*c, *a);
            tracing::info!(cidr = %c, node = %a, "peer pod CIDR routed");
        }
        self.status = Status {
            peers: p.peers.clone(),
            problems: p.problems.clone(),
            route_conflicts: conflicts,
        };
        Ok(())
    }

    /// Makes the routes of protocol [`RTPROT_SLUICE`] exactly `want`; returns the CIDRs left
    /// unrouted and why (another route holds them, or the kernel refused ours).
    async fn sync_routes(
        &self,
        want: &BTreeMap<Ipv4Network, Ipv4Addr>,
    ) -> anyhow::Result<Vec<String>> {
        let ours = own_routes(&self.handle).await?;
        let mut have = BTreeSet::new();
        for (net, msg) in ours {
            let right = want
                .get(&net)
                .is_some_and(|a| route_matches(&msg, self.oif(), self.gateway(*a)));
            if right {
                have.insert(net);
                continue;
            }
            self.handle
                .route()
                .del(msg)
                .execute()
                .await
                .with_context(|| format!("delete route {net}"))?;
        }
        let mut conflicts = Vec::new();
        for (net, addr) in want {
            if have.contains(net) {
                continue;
            }
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(net.network(), net.prefix())
                .output_interface(self.oif())
                .protocol(RouteProtocol::Other(RTPROT_SLUICE));
            b = match self.gateway(*addr) {
                Some(gw) => b.gateway(gw),
                None => b.scope(RouteScope::Link),
            };
            // A route the kernel refuses is this peer's problem, not every peer's: it is
            // reported (logged once) and the others are still routed.
            match self.handle.route().add(b.build()).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(m))
                    if m.code.map(|c| -c.get()) == Some(libc::EEXIST) =>
                {
                    conflicts.push(format!(
                        "{net}: a route that is not Sluice's already covers it (left alone)"
                    ));
                }
                Err(e) => conflicts.push(format!("{net} via node {addr}: {e}")),
            }
        }
        Ok(conflicts)
    }

    /// What `sluicectl status` shows of routing.
    pub fn api_status(&self) -> crate::api::RoutingStatus {
        let tunnel = self.mode == RoutingMode::Tunnel;
        crate::api::RoutingStatus {
            mode: if tunnel { "tunnel" } else { "native" }.into(),
            device: tunnel.then(|| TUNNEL_DEVICE.to_string()),
            tunnel_port: tunnel.then_some(self.tunnel_port),
            tunnel_mtu: tunnel.then_some(self.tunnel_mtu),
            peers: self
                .status
                .peers
                .iter()
                .map(|p| crate::api::RoutedPeer {
                    node: p.name.clone(),
                    address: p.address.to_string(),
                    pod_cidrs: p.pod_cidrs.iter().map(ToString::to_string).collect(),
                })
                .collect(),
            not_routed: self
                .status
                .problems
                .iter()
                .map(|p| crate::api::NotRouted {
                    node: p.node.clone(),
                    reason: p.reason.clone(),
                })
                .collect(),
            route_conflicts: self.status.route_conflicts.clone(),
        }
    }

    fn oif(&self) -> u32 {
        match self.mode {
            RoutingMode::Tunnel => self.tunnel_ifindex,
            RoutingMode::Native => self.uplink_ifindex,
        }
    }

    fn gateway(&self, node: Ipv4Addr) -> Option<Ipv4Addr> {
        match self.mode {
            RoutingMode::Tunnel => None,
            RoutingMode::Native => Some(node),
        }
    }
}

fn key_of(c: &Ipv4Network) -> Key<IpKey> {
    Key::new(
        peers::prefix_len_v4(c.prefix()),
        IpKey::v4(c.network().octets()),
    )
}

fn cidr_of(k: &Key<IpKey>) -> Option<Ipv4Network> {
    let prefix = k.prefix_len().checked_sub(peers::KEY_PREFIX_BIAS)?;
    Ipv4Network::new(
        Ipv4Addr::from(k.data().as_v4()?),
        u8::try_from(prefix).ok()?,
    )
    .ok()
}

/// Sluice's IPv4 routes in the main table, by destination.
async fn own_routes(h: &Handle) -> anyhow::Result<Vec<(Ipv4Network, RouteMessage)>> {
    let all: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .context("list routes")?;
    Ok(all
        .into_iter()
        .filter(|m| {
            m.header.protocol == RouteProtocol::Other(RTPROT_SLUICE)
                && m.header.table == RT_TABLE_MAIN
        })
        .filter_map(|m| {
            let dst = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(*d),
                _ => None,
            })?;
            let net = Ipv4Network::new(dst, m.header.destination_prefix_length).ok()?;
            Some((net, m))
        })
        .collect())
}

fn route_matches(m: &RouteMessage, oif: u32, gw: Option<Ipv4Addr>) -> bool {
    let has_oif = m
        .attributes
        .iter()
        .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == oif));
    let got_gw = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
        _ => None,
    });
    has_oif && got_gw == gw
}

/// The link called `name`, if any.
async fn link(h: &Handle, name: &str) -> anyhow::Result<Option<LinkMessage>> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(m) => Ok(m),
        Err(rtnetlink::Error::NetlinkError(m))
            if m.code.map(|c| -c.get()) == Some(libc::ENODEV) =>
        {
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("look up link {name}")),
    }
}

/// Whether `m` is a collect-metadata VXLAN device on `port`.
fn is_our_tunnel(m: &LinkMessage, port: u16) -> bool {
    let Some(infos) = m.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(i) => Some(i),
        _ => None,
    }) else {
        return false;
    };
    let vxlan = infos
        .iter()
        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan)));
    let data = infos.iter().find_map(|i| match i {
        LinkInfo::Data(InfoData::Vxlan(d)) => Some(d),
        _ => None,
    });
    vxlan
        && data.is_some_and(|d| {
            d.iter()
                .any(|x| matches!(x, InfoVxlan::Port(p) if *p == port))
                && d.iter()
                    .any(|x| matches!(x, InfoVxlan::CollectMetadata(true)))
        })
}

/// Creates the tunnel device, or adopts the one an earlier agent made (same port); returns
/// its ifindex. A device of that name that is not ours to adopt is replaced.
async fn ensure_tunnel(h: &Handle, port: u16, mtu: u32, node_ip: Ipv4Addr) -> anyhow::Result<u32> {
    let mac = peers::tunnel_mac(node_ip.octets()).to_vec();
    if let Some(m) = link(h, TUNNEL_DEVICE).await? {
        if is_our_tunnel(&m, port) {
            let idx = m.header.index;
            let msg = LinkUnspec::new_with_index(idx)
                .mtu(mtu)
                .address(mac.clone())
                .arp(false)
                .up()
                .build();
            h.link()
                .set(msg)
                .execute()
                .await
                .with_context(|| format!("configure {TUNNEL_DEVICE}"))?;
            return Ok(idx);
        }
        tracing::info!(
            device = TUNNEL_DEVICE,
            "replacing a tunnel device of another port or kind"
        );
        h.link()
            .del(m.header.index)
            .execute()
            .await
            .with_context(|| format!("delete {TUNNEL_DEVICE}"))?;
    }
    // VNI 0 on the device: with collect metadata, the kernel looks received packets up by
    // VNI 0 whatever their VNI, and the datapath chooses the VNI per packet.
    let msg = rtnetlink::LinkMessageBuilder::<LinkVxlan>::new(TUNNEL_DEVICE)
        .port(port)
        .learning(false)
        .collect_metadata(true)
        .mtu(mtu)
        .address(mac.clone())
        .arp(false)
        .up()
        .build();
    h.link()
        .add(msg)
        .execute()
        .await
        .with_context(|| format!("create {TUNNEL_DEVICE} (VXLAN, UDP port {port})"))?;
    let m = link(h, TUNNEL_DEVICE)
        .await?
        .with_context(|| format!("{TUNNEL_DEVICE} missing after creation"))?;
    Ok(m.header.index)
}

/// Removes the tunnel device if there is one (its routes go with it).
async fn remove_tunnel(h: &Handle) -> anyhow::Result<()> {
    if let Some(m) = link(h, TUNNEL_DEVICE).await? {
        h.link()
            .del(m.header.index)
            .execute()
            .await
            .with_context(|| format!("delete {TUNNEL_DEVICE}"))?;
        tracing::info!(device = TUNNEL_DEVICE, "tunnel device removed");
    }
    Ok(())
}

/// `--uninstall`: removes the tunnel device and every route of Sluice's protocol.
pub async fn uninstall() -> anyhow::Result<()> {
    let h = connect().await?;
    remove_tunnel(&h).await?;
    for (net, msg) in own_routes(&h).await? {
        h.route()
            .del(msg)
            .execute()
            .await
            .with_context(|| format!("delete route {net}"))?;
    }
    Ok(())
}
