//! The plugin's rtnetlink work, synchronous on the outside: each [`Netlink`] owns a
//! current-thread tokio runtime and a netlink socket opened in the network namespace of the
//! thread that created it. Work inside a pod's namespace runs through [`in_netns`], on a
//! dedicated OS thread that enters the namespace and ends with the work (it never returns to a
//! pool, so no other code ever runs in the wrong namespace).

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd as _,
};

use futures::TryStreamExt as _;
use netlink_packet_route::{
    link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage},
    neighbour::NeighbourState,
    route::RouteScope,
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// A failed netlink operation: what was attempted, on what, and the kernel's answer.
#[derive(Debug, thiserror::Error)]
#[error("{op} {target}")]
pub struct NlError {
    pub op: &'static str,
    pub target: String,
    #[source]
    pub source: NlCause,
}

#[derive(Debug, thiserror::Error)]
pub enum NlCause {
    #[error(transparent)]
    Netlink(#[from] rtnetlink::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl NlError {
    /// The errno the kernel answered with, if any.
    pub fn errno(&self) -> Option<i32> {
        match &self.source {
            NlCause::Netlink(rtnetlink::Error::NetlinkError(m)) => m.code.map(|c| -c.get()),
            NlCause::Io(e) => e.raw_os_error(),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, NlError>;

fn err(op: &'static str, target: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NlError {
    let target = target.into();
    move |e| NlError {
        op,
        target,
        source: e.into(),
    }
}

/// A link as the plugin needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub is_veth: bool,
}

pub struct Netlink {
    rt: tokio::runtime::Runtime,
    handle: Handle,
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's network namespace.
    pub fn new() -> std::result::Result<Self, NlError> {
        let io = |e: std::io::Error| NlError {
            op: "open",
            target: "netlink socket".into(),
            source: e.into(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io)?;
        let handle = rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(conn);
            Ok::<_, std::io::Error>(handle)
        });
        Ok(Self {
            rt,
            handle: handle.map_err(io)?,
        })
    }

    /// The link called `name`, or `None` if there is none.
    pub fn link(&self, name: &str) -> Result<Option<Link>> {
        let h = self.handle.clone();
        let res = self.rt.block_on(async move {
            h.link()
                .get()
                .match_name(name.to_string())
                .execute()
                .try_next()
                .await
        });
        match res {
            Ok(Some(m)) => Ok(Some(to_link(&m))),
            Ok(None) => Ok(None),
            // ENODEV: no such link.
            Err(rtnetlink::Error::NetlinkError(m))
                if m.code.map(|c| -c.get()) == Some(libc::ENODEV) =>
            {
                Ok(None)
            }
            Err(e) => Err(err("get link", name)(e)),
        }
    }

    /// Creates a veth pair in one message: `host` here, and its peer `peer` directly inside the
    /// namespace `peer_netns`, both with `mtu`, the peer with `peer_mac` if given.
    pub fn create_veth(
        &self,
        host: &str,
        peer: &str,
        peer_netns: &File,
        mtu: u32,
        peer_mac: Option<[u8; 6]>,
    ) -> Result<()> {
        let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .mtu(mtu)
            .setns_by_fd(peer_netns.as_raw_fd());
        if let Some(mac) = peer_mac {
            peer_msg = peer_msg.address(mac.to_vec());
        }
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_string())
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())))
            .build();
        let h = self.handle.clone();
        self.rt
            .block_on(async move { h.link().add(msg).execute().await })
            .map_err(err("create veth", host))
    }

    pub fn set_up(&self, index: u32, name: &str) -> Result<()> {
        let h = self.handle.clone();
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.rt
            .block_on(async move { h.link().set(msg).execute().await })
            .map_err(err("set up", name))
    }

    pub fn delete_link(&self, index: u32, name: &str) -> Result<()> {
        let h = self.handle.clone();
        self.rt
            .block_on(async move { h.link().del(index).execute().await })
            .map_err(err("delete link", name))
    }

    pub fn add_address(&self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
        let h = self.handle.clone();
        self.rt
            .block_on(async move { h.address().add(index, addr, prefix).execute().await })
            .map_err(err("add address", addr.to_string()))
    }

    /// The addresses on link `index`.
    pub fn addresses(&self, index: u32) -> Result<Vec<IpAddr>> {
        use netlink_packet_route::address::AddressAttribute;
        let h = self.handle.clone();
        self.rt
            .block_on(async move {
                let msgs: Vec<_> = h
                    .address()
                    .get()
                    .set_link_index_filter(index)
                    .execute()
                    .try_collect()
                    .await?;
                Ok(msgs
                    .iter()
                    .flat_map(|m| {
                        m.attributes.iter().filter_map(|a| match a {
                            AddressAttribute::Address(ip) => Some(*ip),
                            _ => None,
                        })
                    })
                    .collect())
            })
            .map_err(err("list addresses", index.to_string()))
    }

    /// The networks of every address in this namespace, with the interface holding each
    /// (`192.0.2.2/24` on `up0` is `("up0", 192.0.2.0/24)`).
    pub fn networks(&self) -> Result<Vec<(String, ipnetwork::IpNetwork)>> {
        use netlink_packet_route::address::AddressAttribute;
        let h = self.handle.clone();
        let msgs: Vec<_> = self
            .rt
            .block_on(async move { h.address().get().execute().try_collect().await })
            .map_err(err("list addresses", "(all links)"))?;
        Ok(msgs
            .iter()
            .flat_map(|m| {
                let iface = nix::net::if_::if_indextoname(m.header.index)
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| format!("ifindex {}", m.header.index));
                m.attributes.iter().filter_map(move |a| match a {
                    AddressAttribute::Address(ip) => {
                        ipam::network_of(*ip, m.header.prefix_len).map(|n| (iface.clone(), n))
                    }
                    _ => None,
                })
            })
            .collect())
    }

    /// `ip route add DST/PREFIX [via GW] dev INDEX [scope link]`.
    pub fn add_route_v4(
        &self,
        dst: Ipv4Addr,
        prefix: u8,
        gw: Option<Ipv4Addr>,
        index: u32,
    ) -> Result<()> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix)
            .output_interface(index);
        b = match gw {
            Some(gw) => b.gateway(gw),
            None => b.scope(RouteScope::Link),
        };
        let msg = b.build();
        let h = self.handle.clone();
        self.rt
            .block_on(async move { h.route().add(msg).execute().await })
            .map_err(err("add route", format!("{dst}/{prefix}")))
    }

    /// Whether an IPv4 default route via `gw` exists.
    pub fn has_default_route_v4(&self, gw: Ipv4Addr) -> Result<bool> {
        use netlink_packet_route::route::{RouteAddress, RouteAttribute};
        let h = self.handle.clone();
        let msg = RouteMessageBuilder::<Ipv4Addr>::new().build();
        self.rt
            .block_on(async move {
                let routes: Vec<_> = h.route().get(msg).execute().try_collect().await?;
                Ok(routes.iter().any(|r| {
                    r.header.destination_prefix_length == 0
                        && r.attributes.iter().any(|a| {
                            matches!(a, RouteAttribute::Gateway(RouteAddress::Inet(g)) if *g == gw)
                        })
                }))
            })
            .map_err(err("list routes", "ipv4"))
    }

    /// Whether link `index` has a cls_bpf filter on its TC ingress hook.
    pub fn has_bpf_ingress_filter(&self, index: u32) -> Result<bool> {
        use netlink_packet_route::tc::TcAttribute;
        let h = self.handle.clone();
        self.rt
            .block_on(async move {
                let msgs: Vec<_> = h
                    .traffic_filter(index as i32)
                    .get()
                    .ingress()
                    .execute()
                    .try_collect()
                    .await?;
                Ok(msgs.iter().any(|m| {
                    m.attributes
                        .iter()
                        .any(|a| matches!(a, TcAttribute::Kind(k) if k == "bpf"))
                }))
            })
            .map_err(err("list tc filters", index.to_string()))
    }

    /// A permanent neighbour entry (no ARP ever needed for `ip`).
    pub fn add_permanent_neighbour(&self, index: u32, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        let h = self.handle.clone();
        self.rt
            .block_on(async move {
                h.neighbours()
                    .add(index, ip)
                    .link_layer_address(&mac)
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute()
                    .await
            })
            .map_err(err("add neighbour", ip.to_string()))
    }
}

fn to_link(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        mac: [0; 6],
        is_veth: false,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Address(a) if a.len() == 6 => l.mac.copy_from_slice(a),
            LinkAttribute::LinkInfo(infos) => {
                l.is_veth = infos.iter().any(|i| {
                    matches!(
                        i,
                        netlink_packet_route::link::LinkInfo::Kind(InfoKind::Veth)
                    )
                })
            }
            _ => {}
        }
    }
    l
}

/// Runs `f` on a new OS thread inside the network namespace `netns`; the thread ends with `f`.
pub fn in_netns<T: Send>(
    netns: &File,
    path: &std::path::Path,
    f: impl FnOnce() -> std::result::Result<T, crate::error::CniError> + Send,
) -> std::result::Result<T, crate::error::CniError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                crate::error::CniError::Netns {
                    path: path.to_path_buf(),
                    source: std::io::Error::from(e),
                }
            })?;
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

pub use datapath_user::mac_string;

pub use datapath_user::host_veth_name;

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that host veth names are deterministic, distinct per attachment and 15 characters.
    #[test]
    fn host_veth_names() {
        let a = host_veth_name("abc123", "eth0");
        assert_eq!(a, host_veth_name("abc123", "eth0"));
        assert_ne!(a, host_veth_name("abc123", "eth1"));
        assert_ne!(a, host_veth_name("abc124", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("sl"));
        let long = "f".repeat(64);
        assert_eq!(host_veth_name(&long, "eth0").len(), 15);
    }

    /// Test that MACs print in the canonical lower-case colon form.
    #[test]
    fn mac_format() {
        assert_eq!(mac_string([0x0a, 0, 0xff, 1, 2, 0xab]), "0a:00:ff:01:02:ab");
    }
}
