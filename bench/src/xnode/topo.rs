//! The cross-node baselines: two node namespaces joined by an underlay namespace that plays
//! the switch (a Linux bridge, `br0`), one pod on each node, MTU 1500 on the underlay.
//!
//! ```text
//!  client pod ──veth── node 1 (198.51.100.1) ──up0── underlay (br0) ──up0── node 2 (198.51.100.2) ──veth── server pod
//!  10.244.1.0/24                                                                      10.244.2.0/24
//! ```
//! - `routed` (the limit): pods with a /32 on a veth, their gateway a link-local address
//!   resolved by a permanent neighbour entry, as Sluice wires them; each node routes its pod's
//!   /32 to the veth and the other node's pod CIDR via that node's address. Nothing else: no
//!   program, no rule, no encapsulation.
//! - `flannel` (the usual overlay): what flanneld's `vxlan` backend programs on each node —
//!   `flannel.1` (VXLAN id 1, UDP 8472, `nolearning`, MTU 50 below the uplink's), the node's
//!   subnet `.0/32` on it, and per other node a route `via <its .0> onlink`, a permanent
//!   neighbour entry (its `.0` → its VTEP MAC) and an FDB entry (its VTEP MAC → its address);
//!   flanneld's masquerade and forward rules and kube-proxy's FORWARD rules; pods wired by
//!   the real `bridge` CNI plugin + `host-local` with the delegate config flannel's CNI plugin
//!   hands it (bridge `cni0`, gateway, `hairpinMode`, `ipMasq: false` as flanneld masquerades,
//!   MTU 1450, a route to the cluster CIDR). br_netfilter is on in every namespace here, so
//!   bridged pod traffic crosses the node's iptables and conntrack, as on a flannel node.
//!
//! The underlay's bridge does not call iptables (`bridge-nf-call-iptables=0` in its
//! namespace): it is the wire between the nodes, the same for every system. Every namespace
//! is made here and removed by its guard; nothing is added to the root one.

use std::{net::Ipv4Addr, path::PathBuf};

use serde_json::json;
use test_support::{unique, Netns};

use super::super::{
    cni::CniPlugin,
    topo::{sh, Pods, System, CNI_BIN_DIR, FORWARD_RULES, MTU},
    Context as _, Error, Result,
};

/// The cluster's pod CIDR; node `i` (1 or 2) has `10.244.i.0/24`.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// VXLAN's overhead on IPv4 (outer IP 20, UDP 8, VXLAN 8, inner Ethernet 14): flannel sets
/// its device's MTU this much below the uplink's, and its pods' to the same.
pub const VXLAN_OVERHEAD: u32 = 50;
/// Both overlays' UDP port (the Linux default, flannel's).
pub const VXLAN_PORT: u16 = 8472;

/// Node `i`'s address on the underlay.
pub fn node_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, i)
}

/// Node `i`'s pod CIDR.
pub fn pod_cidr(i: u8) -> String {
    format!("10.244.{i}.0/24")
}

/// The switch between the nodes: a namespace with a bridge.
pub struct Underlay {
    pub ns: Netns,
}

impl Underlay {
    pub fn new() -> Result<Self> {
        let u = Self {
            ns: Netns::new(&unique("slxu")),
        };
        sh(
            &u.ns,
            "ip link add br0 type bridge && ip link set br0 up && \
             sysctl -qw net.bridge.bridge-nf-call-iptables=0 && \
             sysctl -qw net.bridge.bridge-nf-call-ip6tables=0 && \
             sysctl -qw net.bridge.bridge-nf-call-arptables=0",
        )?;
        Ok(u)
    }

    /// Plugs `node` into the switch as node `i`: its `up0` with [`node_ip`], forwarding on.
    pub fn join(&self, node: &Netns, i: u8) -> Result<()> {
        let port = format!("port{i}");
        let out = std::process::Command::new("ip")
            .args(["link", "add", "up0", "netns", &node.name, "mtu"])
            .arg(MTU.to_string())
            .args([
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &self.ns.name,
            ])
            .output()
            .context("run ip link add")?;
        if !out.status.success() {
            return Err(Error::msg(format!(
                "ip link add (underlay port of node {i}): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        sh(
            &self.ns,
            &format!("ip link set {port} mtu {MTU} master br0 && ip link set {port} up"),
        )?;
        sh(
            node,
            &format!(
                "ip addr add {}/24 dev up0 && ip link set up0 up && \
                 sysctl -qw net.ipv4.ip_forward=1",
                node_ip(i)
            ),
        )?;
        Ok(())
    }
}

/// `routed`: plain routes between the nodes, veth pods with /32s, no program.
pub struct Routed {
    // Pods first: fields drop in order.
    client: Netns,
    server: Netns,
    nodes: [Netns; 2],
    underlay: Underlay,
}

/// The routed pods' gateway, as Sluice's.
const GATEWAY: &str = "169.254.1.1";

/// The address of the routed system's pod on node `i`.
fn routed_pod_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, i, 2)
}

impl Routed {
    pub fn new() -> Result<Self> {
        let underlay = Underlay::new()?;
        let nodes = [Netns::new(&unique("slxn")), Netns::new(&unique("slxn"))];
        let r = Self {
            client: Netns::new(&unique("slxp")),
            server: Netns::new(&unique("slxp")),
            nodes,
            underlay,
        };
        for (i, (node, pod)) in [(&r.nodes[0], &r.client), (&r.nodes[1], &r.server)]
            .into_iter()
            .enumerate()
        {
            let (i, peer) = (i as u8 + 1, 2 - i as u8);
            r.underlay.join(node, i)?;
            r.wire_pod(node, pod, i)?;
            sh(
                node,
                &format!("ip route add {} via {}", pod_cidr(peer), node_ip(peer)),
            )?;
        }
        Ok(r)
    }

    /// A veth pod on node `i`: its /32, a link-local gateway resolved by a permanent
    /// neighbour entry to the host veth's MAC, and on the node a /32 route and a permanent
    /// neighbour entry back (no ARP either way, as Sluice's pods).
    fn wire_pod(&self, node: &Netns, pod: &Netns, i: u8) -> Result<()> {
        let (pod_mac, host_mac) = (
            format!("02:00:0a:f4:{i:02x}:02"),
            format!("02:00:0a:f4:{i:02x}:01"),
        );
        let ip = routed_pod_ip(i);
        let out = std::process::Command::new("ip")
            .args([
                "link", "add", "eth0", "netns", &pod.name, "address", &pod_mac, "mtu",
            ])
            .arg(MTU.to_string())
            .args(["type", "veth", "peer", "name", "vpod", "netns", &node.name])
            .args(["address", &host_mac])
            .output()
            .context("run ip link add")?;
        if !out.status.success() {
            return Err(Error::msg(format!(
                "ip link add (pod veth on node {i}): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        sh(
            pod,
            &format!(
                "ip addr add {ip}/32 dev eth0 && ip link set eth0 up && \
                 ip route add {GATEWAY} dev eth0 scope link && \
                 ip route add default via {GATEWAY} dev eth0 && \
                 ip neigh add {GATEWAY} lladdr {host_mac} dev eth0 nud permanent"
            ),
        )?;
        sh(
            node,
            &format!(
                "ip link set vpod up && ip route add {ip}/32 dev vpod && \
                 ip neigh add {ip} lladdr {pod_mac} dev vpod nud permanent"
            ),
        )?;
        Ok(())
    }
}

impl System for Routed {
    fn name(&self) -> &'static str {
        "routed"
    }

    fn pods(&self) -> Pods<'_> {
        Pods {
            client: &self.client,
            server: &self.server,
            server_ip: routed_pod_ip(2),
        }
    }

    fn cni(&self) -> Option<CniPlugin<'_>> {
        None
    }
}

/// `flannel`: flanneld's VXLAN backend as it programs a node, and the bridge CNI.
pub struct Flannel {
    // Pods first: fields drop in order.
    client: Netns,
    server: Netns,
    server_ip: Ipv4Addr,
    nodes: [Netns; 2],
    underlay: Underlay,
    /// host-local's dataDir per node (so no state lands in /var/lib/cni).
    dir: tempfile::TempDir,
}

/// Node `i`'s VTEP MAC (flanneld publishes it in the Node's `flannel.alpha.coreos.com/
/// backend-data` annotation; the other nodes program it).
fn vtep_mac(i: u8) -> String {
    format!("02:fa:00:00:00:{i:02x}")
}

/// What flanneld (`--ip-masq`) puts in a node's iptables: pod traffic within the cluster is
/// not masqueraded, the rest is; forwarding of pod traffic is accepted. `{subnet}` is the
/// node's pod CIDR.
const FLANNEL_RULES: &[&str] = &[
    "-t nat -N FLANNEL-POSTRTG",
    "-t nat -A POSTROUTING -m comment --comment 'flanneld masq' -j FLANNEL-POSTRTG",
    "-t nat -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment 'flanneld masq' -j RETURN",
    "-t nat -A FLANNEL-POSTRTG -s {subnet} -d {cluster} -m comment --comment 'flanneld masq' -j RETURN",
    "-t nat -A FLANNEL-POSTRTG -s {cluster} -d {subnet} -m comment --comment 'flanneld masq' -j RETURN",
    "-t nat -A FLANNEL-POSTRTG ! -s {cluster} -d {subnet} -m comment --comment 'flanneld masq' -j RETURN",
    "-t nat -A FLANNEL-POSTRTG -s {cluster} ! -d 224.0.0.0/4 -m comment --comment 'flanneld masq' -j MASQUERADE --random-fully",
    "-t nat -A FLANNEL-POSTRTG ! -s {cluster} -d {cluster} -m comment --comment 'flanneld masq' -j MASQUERADE --random-fully",
    "-N FLANNEL-FWD",
    "-A FORWARD -m comment --comment 'flanneld forward' -j FLANNEL-FWD",
    "-A FLANNEL-FWD -s {cluster} -m comment --comment 'flanneld forward' -j ACCEPT",
    "-A FLANNEL-FWD -d {cluster} -m comment --comment 'flanneld forward' -j ACCEPT",
];

impl Flannel {
    pub fn new() -> Result<Self> {
        for p in ["bridge", "host-local"] {
            let path = PathBuf::from(CNI_BIN_DIR).join(p);
            if !path.exists() {
                return Err(Error::msg(format!(
                    "{} not found: install containernetworking-plugins (scripts/setup does)",
                    path.display()
                )));
            }
        }
        let underlay = Underlay::new()?;
        let nodes = [Netns::new(&unique("slxn")), Netns::new(&unique("slxn"))];
        let dir = tempfile::Builder::new()
            .prefix("sluice-bench-")
            .tempdir()
            .context("make a temporary directory")?;
        let mut f = Self {
            client: Netns::new(&unique("slxp")),
            server: Netns::new(&unique("slxp")),
            server_ip: Ipv4Addr::UNSPECIFIED,
            nodes,
            underlay,
            dir,
        };
        for i in [1u8, 2] {
            let node = &f.nodes[usize::from(i - 1)];
            f.underlay.join(node, i)?;
            f.program_node(node, i)?;
        }
        f.add_pod(0, &f.client, "bench-client")?;
        f.server_ip = f.add_pod(1, &f.server, "bench-server")?;
        Ok(f)
    }

    /// What flanneld does on node `i` at start and for the other node's lease.
    fn program_node(&self, node: &Netns, i: u8) -> Result<()> {
        let peer = 3 - i;
        let subnet = pod_cidr(i);
        sh(
            node,
            &format!(
                "ip link add flannel.1 address {mac} mtu {mtu} type vxlan id 1 local {ip} \
                 dev up0 dstport {VXLAN_PORT} nolearning && \
                 ip addr add 10.244.{i}.0/32 dev flannel.1 && ip link set flannel.1 up",
                mac = vtep_mac(i),
                mtu = MTU - VXLAN_OVERHEAD,
                ip = node_ip(i),
            ),
        )?;
        sh(
            node,
            &format!(
                "ip neigh replace 10.244.{peer}.0 lladdr {mac} dev flannel.1 nud permanent && \
                 bridge fdb replace {mac} dev flannel.1 dst {ip} self permanent && \
                 ip route replace {cidr} via 10.244.{peer}.0 dev flannel.1 onlink",
                mac = vtep_mac(peer),
                ip = node_ip(peer),
                cidr = pod_cidr(peer),
            ),
        )?;
        for rule in FLANNEL_RULES.iter().chain(FORWARD_RULES) {
            let rule = rule
                .replace("{subnet}", &subnet)
                .replace("{cluster}", CLUSTER_CIDR);
            sh(node, &format!("iptables -w {rule}"))?;
        }
        Ok(())
    }

    /// ADDs the pod in `ns` on node `n` (0 or 1) through the bridge plugin; its address.
    fn add_pod(&self, n: usize, ns: &Netns, name: &str) -> Result<Ipv4Addr> {
        let result = self
            .plugin(n)
            .call("ADD", &unique("c"), &ns.path(), name)?
            .result()
            .with_context(|| format!("bridge ADD of {name} (flannel, node {})", n + 1))?;
        result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| Error::msg(format!("no IPv4 address in the result: {result}")))
    }

    /// The config flannel's CNI plugin delegates to `bridge` on node `n` (what it writes to
    /// `/var/lib/cni/flannel/<id>` with kube-flannel's conflist: `hairpinMode` and
    /// `isDefaultGateway` from its `delegate`, the rest from `subnet.env`).
    fn plugin(&self, n: usize) -> CniPlugin<'_> {
        let i = n as u8 + 1;
        let conf = json!({
            "cniVersion": "0.3.1",
            "name": "cbr0",
            "type": "bridge",
            "hairpinMode": true,
            "isDefaultGateway": true,
            "isGateway": true,
            "ipMasq": false,
            "mtu": MTU - VXLAN_OVERHEAD,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": pod_cidr(i) }]],
                "routes": [{ "dst": CLUSTER_CIDR }],
                "dataDir": self.dir.path().join(format!("ipam-{i}")),
            },
        });
        CniPlugin {
            node: &self.nodes[n],
            program: PathBuf::from(CNI_BIN_DIR).join("bridge"),
            cni_path: PathBuf::from(CNI_BIN_DIR),
            config: serde_json::to_vec(&conf).expect("encode JSON"),
        }
    }
}

impl System for Flannel {
    fn name(&self) -> &'static str {
        "flannel"
    }

    fn pods(&self) -> Pods<'_> {
        Pods {
            client: &self.client,
            server: &self.server,
            server_ip: self.server_ip,
        }
    }

    fn cni(&self) -> Option<CniPlugin<'_>> {
        Some(self.plugin(0))
    }
}
