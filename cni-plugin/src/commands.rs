//! What the plugin does for each CNI command. ADD wires a pod: address from IPAM, a veth pair
//! created in one netlink message with its peer born inside the pod's namespace, the pod side
//! configured (address, a link-scope route to the gateway, a default route and a permanent
//! neighbour entry for the gateway, so the pod never ARPs), a host route to the pod, the
//! datapath's TC program on the host side and the endpoint in the datapath's maps. Any failure
//! after allocation undoes all of it.
//!
//! Why a link-local gateway (169.254.1.1 by default) and a /32 pod address: there is no bridge
//! to own a gateway address. The pod sends everything to the host-side veth's MAC (the
//! permanent neighbour entry), and the TC program or the node's routing takes it from there —
//! the same address works for every pod, and no address of the pod CIDR is spent on gateways.
//!
//! DEL needs nothing but the attachment's identity: the host veth name is derived from it and
//! the addresses come from IPAM, so it works with the netns gone, without prevResult and with
//! the agent down.
//!
//! hostPort: the `runtimeConfig.portMappings` of an ADD are recorded in `<stateDir>/hostports`
//! (`datapath_user::hostport`) and removed at DEL; the agent programs them as frontends.

use std::{
    collections::{BTreeSet, HashSet},
    fs::File,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use datapath_common::{endpoint, pins};
use datapath_user::hostport;
use ipnetwork::IpNetwork;

use crate::{
    config::{NetConf, Protocol},
    env::Env,
    error::CniError,
    netlink::{host_veth_name, in_netns, mac_string, Netlink, NlError},
    result::{CniResult, Interface, IpConfig, Route},
};

fn nl_err(e: NlError) -> CniError {
    CniError::Netlink {
        op: e.op,
        target: e.target.clone(),
        source: Box::new(e),
    }
}

fn dp_err(op: impl Into<String>, e: impl std::error::Error + Send + Sync + 'static) -> CniError {
    CniError::Datapath {
        op: op.into(),
        source: Box::new(e),
    }
}

/// The directory of this network's IPAM store: `<stateDir>/ipam/<network name>`.
fn ipam_dir(conf: &NetConf) -> PathBuf {
    conf.state_dir.join("ipam").join(&conf.name)
}

/// The IPAM store with the config's pod CIDRs, to allocate from (ADD) or count (STATUS).
fn ipam_store(conf: &NetConf) -> Result<ipam::Store, CniError> {
    Ok(ipam::Store::open(
        ipam_dir(conf),
        conf.pod_cidrs.clone(),
        Vec::new(),
    )?)
}

/// The IPAM store for finding and releasing what exists (DEL, CHECK, GC): it needs no pod
/// CIDR, so a config without one, or with one that changed, still releases every address.
fn ipam_records(conf: &NetConf) -> Result<ipam::Store, CniError> {
    Ok(ipam::Store::open_unranged(ipam_dir(conf))?)
}

/// Refuses pod CIDRs that overlap a network of the node (e.g. its uplink's): pods would take
/// addresses the node reaches on the wire. The agent refuses them too; this catches a config
/// written by hand or left from another node.
fn refuse_node_overlap(cidrs: &[IpNetwork]) -> Result<(), CniError> {
    let nets = Netlink::new()
        .and_then(|nl| nl.networks())
        .map_err(nl_err)?;
    ipam::check_pod_cidrs(cidrs, &nets).map_err(|e| CniError::InvalidConfig {
        reason: format!("podCIDRs: {e}"),
    })
}

/// The endpoint maps; a datapath that was never loaded is "try again later".
fn open_endpoints(bpffs: &Path) -> Result<datapath_user::Endpoints, CniError> {
    datapath_user::Endpoints::open(bpffs).map_err(|e| {
        if e.is_not_found() {
            CniError::TryAgain {
                reason: format!(
                    "the Sluice datapath is not loaded in {} (is sluice-agent running?)",
                    bpffs.display()
                ),
            }
        } else {
            dp_err("open endpoint maps", e)
        }
    })
}

fn ids(env: &Env) -> (&str, &str) {
    (
        env.container_id.as_deref().unwrap_or_default(),
        env.ifname.as_deref().unwrap_or_default(),
    )
}

fn open_netns(path: &Path) -> Result<File, CniError> {
    File::open(path).map_err(|source| CniError::Netns {
        path: path.to_path_buf(),
        source,
    })
}

/// Refuses the plugin's own network namespace as a pod's: wiring a pod interface, address and
/// default route there would take over the node's routing (the Go skel refuses it too).
fn refuse_own_netns(netns: &File, path: &Path) -> Result<(), CniError> {
    use std::os::unix::fs::MetadataExt as _;
    let io = |source| CniError::Netns {
        path: path.to_path_buf(),
        source,
    };
    let theirs = netns.metadata().map_err(io)?;
    let ours = std::fs::metadata("/proc/self/ns/net").map_err(io)?;
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        return Err(CniError::OwnNetns {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// What ADD created so far, undone in reverse order if a later step fails.
struct Undo<'a> {
    conf: &'a NetConf,
    store: &'a ipam::Store,
    cid: &'a str,
    ifname: &'a str,
    host_veth: Option<String>,
    endpoints: Vec<IpAddr>,
    netns_cookie: Option<u64>,
}

impl Undo<'_> {
    fn run(self, eps: &mut datapath_user::Endpoints) {
        for ip in &self.endpoints {
            let _ = eps.remove(*ip);
        }
        if let (Some(c), Ok(mut ns)) = (
            self.netns_cookie,
            datapath_user::PodNamespaces::open(&self.conf.bpffs),
        ) {
            let _ = ns.remove(c);
        }
        if let Some(name) = &self.host_veth {
            if let Ok(nl) = Netlink::new() {
                if let Ok(Some(l)) = nl.link(name) {
                    let _ = nl.delete_link(l.index, name);
                }
            }
        }
        let _ = self.store.release(self.cid, self.ifname);
    }
}

pub fn add(env: &Env, conf: &NetConf) -> Result<CniResult, CniError> {
    let (cid, ifname) = ids(env);
    let netns_path = env.netns.clone().unwrap_or_default();
    let cidrs = conf.require_pod_cidrs()?;
    if cidrs.iter().any(|c| c.is_ipv6()) {
        return Err(CniError::InvalidConfig {
            reason: "IPv6 pod CIDRs are not supported by this datapath yet".into(),
        });
    }
    refuse_node_overlap(cidrs)?;
    let IpAddr::V4(gateway) = conf.gateway else {
        return Err(CniError::InvalidConfig {
            reason: "gateway must be an IPv4 address".into(),
        });
    };
    // Fail before allocating anything when the datapath or the namespace is missing.
    let mut eps = open_endpoints(&conf.bpffs)?;
    if !datapath_user::prog_path(&conf.bpffs, pins::PROG_FROM_POD).exists() {
        return Err(CniError::TryAgain {
            reason: format!(
                "program {} is not pinned (is sluice-agent running?)",
                pins::PROG_FROM_POD
            ),
        });
    }
    let netns = open_netns(&netns_path)?;
    refuse_own_netns(&netns, &netns_path)?;
    let taken = in_netns(&netns, &netns_path, || {
        Netlink::new()
            .and_then(|nl| nl.link(ifname))
            .map_err(nl_err)
    })?;
    if taken.is_some() {
        return Err(CniError::InterfaceExists {
            ifname: ifname.into(),
            netns: netns_path,
        });
    }

    let store = ipam_store(conf)?;
    let owner = ipam::Owner {
        container_id: cid.into(),
        ifname: ifname.into(),
        pod_namespace: env.args.k8s_pod_namespace.clone(),
        pod_name: env.args.k8s_pod_name.clone(),
    };
    let allocs = store.allocate(&owner, conf.requested_ips(&env.args))?;
    let mut undo = Undo {
        conf,
        store: &store,
        cid,
        ifname,
        host_veth: None,
        endpoints: Vec::new(),
        netns_cookie: None,
    };
    match wire(env, conf, &netns, gateway, &allocs, &mut eps, &mut undo)
        .and_then(|r| record_host_ports(env, conf, &allocs).map(|()| r))
    {
        Ok(r) => Ok(r),
        Err(e) => {
            undo.run(&mut eps);
            Err(e)
        }
    }
}

/// Records the `portMappings` (hostPort) of the attachment for the agent, which programs them
/// as frontends on the node's addresses; nothing is written when there are none.
fn record_host_ports(
    env: &Env,
    conf: &NetConf,
    allocs: &[ipam::Allocation],
) -> Result<(), CniError> {
    let maps = &conf.runtime_config.port_mappings;
    if maps.is_empty() {
        return Ok(());
    }
    let (cid, ifname) = ids(env);
    let created_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let rec = hostport::Record {
        container_id: cid.into(),
        ifname: ifname.into(),
        namespace: env.args.k8s_pod_namespace.clone().unwrap_or_default(),
        name: env.args.k8s_pod_name.clone().unwrap_or_default(),
        created_ns,
        pod_ips: allocs.iter().map(|a| a.addr).collect(),
        mappings: maps
            .iter()
            .map(|m| hostport::Mapping {
                proto: match m.protocol {
                    Protocol::Tcp => 6,
                    Protocol::Udp => 17,
                    Protocol::Sctp => 132,
                },
                host_port: m.host_port,
                container_port: m.container_port,
                host_ip: m.host_ip.filter(|ip| !ip.is_unspecified()),
            })
            .collect(),
    };
    hostport::write(&conf.state_dir, &rec).map_err(|source| CniError::Io {
        what: "record the hostPorts".into(),
        source,
    })
}

fn wire(
    env: &Env,
    conf: &NetConf,
    netns: &File,
    gateway: Ipv4Addr,
    allocs: &[ipam::Allocation],
    eps: &mut datapath_user::Endpoints,
    undo: &mut Undo<'_>,
) -> Result<CniResult, CniError> {
    let (cid, ifname) = ids(env);
    let netns_path = &env.netns.clone().unwrap_or_default();
    let host = host_veth_name(cid, ifname);
    let nl = Netlink::new().map_err(nl_err)?;
    let mac = conf.requested_mac(&env.args).map(|m| m.0);
    nl.create_veth(&host, ifname, netns, conf.mtu, mac)
        .map_err(|e| {
            if e.errno() == Some(libc::EEXIST) {
                // Our deterministic name is taken: this attachment was added before without a DEL.
                CniError::InterfaceExists {
                    ifname: host.clone(),
                    netns: PathBuf::from("(host)"),
                }
            } else {
                nl_err(e)
            }
        })?;
    undo.host_veth = Some(host.clone());
    let host_link = nl
        .link(&host)
        .map_err(nl_err)?
        .ok_or_else(|| CniError::Check {
            reason: format!("host veth {host} vanished after creation"),
        })?;
    nl.set_up(host_link.index, &host).map_err(nl_err)?;

    // Pod side.
    let pod_ips: Vec<IpAddr> = allocs.iter().map(|a| a.addr).collect();
    let host_mac = host_link.mac;
    let pod_link = in_netns(netns, netns_path, || {
        let nl = Netlink::new().map_err(nl_err)?;
        let l = nl
            .link(ifname)
            .map_err(nl_err)?
            .ok_or_else(|| CniError::Check {
                reason: format!("{ifname} missing in the pod namespace after creation"),
            })?;
        for ip in &pod_ips {
            let prefix = if ip.is_ipv4() { 32 } else { 128 };
            nl.add_address(l.index, *ip, prefix).map_err(nl_err)?;
        }
        nl.set_up(l.index, ifname).map_err(nl_err)?;
        nl.add_route_v4(gateway, 32, None, l.index)
            .map_err(nl_err)?;
        nl.add_route_v4(Ipv4Addr::UNSPECIFIED, 0, Some(gateway), l.index)
            .map_err(nl_err)?;
        nl.add_permanent_neighbour(l.index, IpAddr::V4(gateway), host_mac)
            .map_err(nl_err)?;
        let cookie = datapath_user::current_netns_cookie().map_err(|source| CniError::Netns {
            path: PathBuf::from("(read SO_NETNS_COOKIE)"),
            source,
        })?;
        Ok((l, cookie))
    })?;
    let (pod_link, netns_cookie) = pod_link;

    // Host side: route to the pod, datapath program, endpoint record.
    for ip in &pod_ips {
        if let IpAddr::V4(v4) = ip {
            nl.add_route_v4(*v4, 32, None, host_link.index)
                .map_err(nl_err)?;
        }
    }
    datapath_user::attach_pinned_tc(&conf.bpffs, pins::PROG_FROM_POD, &host, true)
        .map_err(|e| dp_err(format!("attach to {host}"), e))?;
    datapath_user::attach_pinned_tc(&conf.bpffs, pins::PROG_TO_POD, &host, false)
        .map_err(|e| dp_err(format!("attach to {host} (egress)"), e))?;
    // A pod some NetworkPolicy selects starts isolated: its rules follow from the agent.
    let isolation = datapath_user::pod_isolation_flags(
        &conf.bpffs,
        env.args.k8s_pod_namespace.as_deref().unwrap_or_default(),
        env.args.k8s_pod_name.as_deref().unwrap_or_default(),
    );
    let value = endpoint::Value {
        ifindex: host_link.index,
        flags: isolation,
        pod_mac: pod_link.mac,
        host_mac,
    };
    let meta = datapath_user::endpoint_meta(
        cid,
        ifname,
        env.args.k8s_pod_namespace.as_deref().unwrap_or_default(),
        env.args.k8s_pod_name.as_deref().unwrap_or_default(),
        netns_cookie,
    );
    // Register the pod's namespace for socket acceleration (the agent may turn it off per pod).
    let mut podns = datapath_user::PodNamespaces::open(&conf.bpffs)
        .map_err(|e| dp_err("open pod namespaces", e))?;
    podns
        .set(netns_cookie, 0)
        .map_err(|e| dp_err("register pod namespace", e))?;
    undo.netns_cookie = Some(netns_cookie);
    for ip in &pod_ips {
        undo.endpoints.push(*ip);
        eps.insert(*ip, &value, &meta)
            .map_err(|e| dp_err("record endpoint", e))?;
    }

    let netns_str = env.netns.as_ref().map(|p| p.display().to_string());
    let v11 = conf.version_at_least("1.1.0");
    Ok(CniResult {
        interfaces: vec![
            Interface {
                name: host,
                mac: Some(mac_string(host_mac)),
                sandbox: None,
                mtu: v11.then_some(conf.mtu),
            },
            Interface {
                name: ifname.into(),
                mac: Some(mac_string(pod_link.mac)),
                sandbox: netns_str,
                mtu: v11.then_some(conf.mtu),
            },
        ],
        ips: pod_ips
            .iter()
            .map(|ip| IpConfig {
                address: IpNetwork::new(*ip, if ip.is_ipv4() { 32 } else { 128 })
                    .expect("full-length prefix is valid"),
                gateway: Some(IpAddr::V4(gateway)),
                interface: Some(1),
            })
            .collect(),
        routes: vec![Route {
            dst: "0.0.0.0/0".parse().expect("literal CIDR"),
            gw: Some(IpAddr::V4(gateway)),
        }],
        dns: conf.dns.clone(),
    })
}

/// Tears down one attachment; every step is best-effort and a missing piece is success.
fn teardown(conf: &NetConf, cid: &str, ifname: &str, errors: &mut Vec<CniError>) {
    let store = match ipam_records(conf) {
        Ok(s) => Some(s),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    // Its endpoints: those at the addresses IPAM holds for it, and any whose record names it
    // (an address IPAM no longer holds, e.g. after an interrupted DEL).
    let mut addrs: BTreeSet<IpAddr> = match store.as_ref().map(|s| s.get(cid, ifname)) {
        Some(Ok(a)) => a.into_iter().map(|a| a.addr).collect(),
        Some(Err(e)) => {
            errors.push(e.into());
            BTreeSet::new()
        }
        None => BTreeSet::new(),
    };
    match datapath_user::Endpoints::open(&conf.bpffs) {
        Ok(mut eps) => {
            match eps.list() {
                Ok(list) => addrs.extend(
                    list.iter()
                        .filter(|e| e.is_for(cid, ifname))
                        .map(|e| e.addr),
                ),
                Err(e) => errors.push(dp_err("list endpoints", e)),
            }
            for ip in &addrs {
                remove_endpoint(conf, &mut eps, *ip, errors);
            }
        }
        // No datapath was ever loaded here: nothing to remove.
        Err(e) if e.is_not_found() => {}
        Err(e) => errors.push(dp_err("open endpoint maps", e)),
    }
    delete_host_veth(&host_veth_name(cid, ifname), errors);
    if let Some(store) = store {
        if let Err(e) = store.release(cid, ifname) {
            errors.push(e.into());
        }
    }
}

/// Removes the endpoint at `ip` and its pod namespace's registration.
fn remove_endpoint(
    conf: &NetConf,
    eps: &mut datapath_user::Endpoints,
    ip: IpAddr,
    errors: &mut Vec<CniError>,
) {
    let cookie = eps.get_meta(ip).map(|m| m.netns_cookie).filter(|c| *c != 0);
    if let (Some(c), Ok(mut ns)) = (cookie, datapath_user::PodNamespaces::open(&conf.bpffs)) {
        if let Err(e) = ns.remove(c) {
            errors.push(dp_err("remove pod namespace", e));
        }
    }
    if let Err(e) = eps.remove(ip) {
        errors.push(dp_err("remove endpoint", e));
    }
}

/// Deletes the host veth `name` if it exists.
fn delete_host_veth(name: &str, errors: &mut Vec<CniError>) {
    match Netlink::new().and_then(|nl| {
        if let Some(l) = nl.link(name)? {
            match nl.delete_link(l.index, name) {
                Err(e) if e.errno() == Some(libc::ENODEV) => {}
                other => other?,
            }
        }
        Ok(())
    }) {
        Ok(()) => {}
        Err(e) => errors.push(nl_err(e)),
    }
}

pub fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let (cid, ifname) = ids(env);
    let mut errors = Vec::new();
    teardown(conf, cid, ifname, &mut errors);
    if let Err(source) = hostport::remove(&conf.state_dir, cid, ifname) {
        errors.push(CniError::Io {
            what: "remove the hostPort record".into(),
            source,
        });
    }
    CniError::from_many(errors).map_or(Ok(()), Err)
}

pub fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let (cid, ifname) = ids(env);
    let fail = |reason: String| CniError::Check { reason };
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| fail("required prevResult missing".into()))?;
    let netns_path = env.netns.clone().unwrap_or_default();
    let netns_str = netns_path.display().to_string();
    let (idx, iface) = prev
        .interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| i.name == ifname && i.sandbox.as_deref() == Some(netns_str.as_str()))
        .ok_or_else(|| {
            fail(format!(
                "prevResult has no interface {ifname} in {netns_str}"
            ))
        })?;
    let want_ips: Vec<IpAddr> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(idx as u32))
        .map(|ip| ip.address.ip())
        .collect();

    // IPAM still holds the addresses for this attachment.
    let held: Vec<IpAddr> = ipam_records(conf)?
        .get(cid, ifname)?
        .into_iter()
        .map(|a| a.addr)
        .collect();
    for ip in &want_ips {
        if !held.contains(ip) {
            return Err(fail(format!(
                "address {ip} is not reserved for {cid}/{ifname}"
            )));
        }
    }
    // Host side: the veth, and the datapath's record of each address pointing at it.
    let host = host_veth_name(cid, ifname);
    let nl = Netlink::new().map_err(nl_err)?;
    let host_link = nl
        .link(&host)
        .map_err(nl_err)?
        .ok_or_else(|| fail(format!("host veth {host} is missing")))?;
    let eps = open_endpoints(&conf.bpffs).map_err(|e| fail(format!("{e}")))?;
    if !nl.has_bpf_ingress_filter(host_link.index).map_err(nl_err)? {
        return Err(fail(format!(
            "the datapath program is not attached to {host}"
        )));
    }
    // The datapath keeps forwarding without the agent, but nothing reconciles it then.
    let sock = conf.state_dir.join("agent.sock");
    if std::os::unix::net::UnixStream::connect(&sock).is_err() {
        return Err(fail(format!(
            "sluice-agent is not running (no answer on {})",
            sock.display()
        )));
    }
    for ip in &want_ips {
        match eps.get(*ip) {
            Some(v) if v.ifindex == host_link.index => {}
            Some(_) => {
                return Err(fail(format!(
                    "datapath entry for {ip} points at another interface"
                )))
            }
            None => return Err(fail(format!("datapath has no entry for {ip}"))),
        }
    }
    // Pod side.
    let netns = open_netns(&netns_path)?;
    let want_mac = iface.mac.clone();
    let gw = conf.gateway;
    in_netns(&netns, &netns_path, || {
        let nl = Netlink::new().map_err(nl_err)?;
        let l = nl
            .link(ifname)
            .map_err(nl_err)?
            .ok_or_else(|| fail(format!("{ifname} is missing in {netns_str}")))?;
        if !l.is_veth {
            return Err(fail(format!("{ifname} is not a veth")));
        }
        if let Some(m) = &want_mac {
            if !m.eq_ignore_ascii_case(&mac_string(l.mac)) {
                return Err(fail(format!(
                    "{ifname} has MAC {}, expected {}",
                    mac_string(l.mac),
                    crate::error::quote(m)
                )));
            }
        }
        let have = nl.addresses(l.index).map_err(nl_err)?;
        for ip in &want_ips {
            if !have.contains(ip) {
                return Err(fail(format!("{ifname} lacks address {ip}")));
            }
        }
        if let IpAddr::V4(g) = gw {
            if !nl.has_default_route_v4(g).map_err(nl_err)? {
                return Err(fail(format!("no default route via {g}")));
            }
        }
        Ok(())
    })
}

pub fn status(conf: &NetConf) -> Result<(), CniError> {
    let na = |reason: String| CniError::NotAvailable { reason };
    for p in pins::PROGRAMS {
        if !datapath_user::prog_path(&conf.bpffs, p).exists() {
            return Err(na(format!(
                "the Sluice datapath is not loaded in {}",
                conf.bpffs.display()
            )));
        }
    }
    let sock = conf.state_dir.join("agent.sock");
    if std::os::unix::net::UnixStream::connect(&sock).is_err() {
        return Err(na(format!(
            "sluice-agent is not running (no answer on {})",
            sock.display()
        )));
    }
    if !conf.pod_cidrs.is_empty() {
        for (range, free) in ipam_store(conf)?.free_count()? {
            if free == 0 {
                return Err(na(format!("address pool {range} is exhausted")));
            }
        }
    }
    Ok(())
}

pub fn gc(conf: &NetConf) -> Result<(), CniError> {
    // No list at all means "no information": delete nothing.
    let Some(valid) = &conf.valid_attachments else {
        return Ok(());
    };
    // Attachments are compared whole: IPAM records keep the full container id, and an
    // endpoint record compares in its own form (`EndpointRecord::is_for`), so no id of any
    // length is taken for another.
    let keep: HashSet<(&str, &str)> = valid
        .iter()
        .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
        .collect();
    let mut errors = Vec::new();
    let mut stale: BTreeSet<(String, String)> = BTreeSet::new();
    let mut owned: HashSet<IpAddr> = HashSet::new();
    match ipam_records(conf).and_then(|s| s.list().map_err(CniError::from)) {
        Ok(allocs) => {
            for a in allocs {
                owned.insert(a.addr);
                if !keep.contains(&(a.owner.container_id.as_str(), a.owner.ifname.as_str())) {
                    stale.insert((a.owner.container_id, a.owner.ifname));
                }
            }
        }
        Err(e) => errors.push(e),
    }
    // Endpoints at an address IPAM holds go with its owner's teardown (or stay with it); the
    // others (an interrupted ADD or DEL) are judged by their own record.
    let mut eps = datapath_user::Endpoints::open(&conf.bpffs).ok();
    let mut orphans = Vec::new();
    if let Some(e) = &eps {
        match e.list() {
            Ok(list) => orphans.extend(list.into_iter().filter(|e| {
                !owned.contains(&e.addr)
                    && !valid.iter().any(|a| e.is_for(&a.container_id, &a.ifname))
            })),
            Err(e) => errors.push(dp_err("list endpoints", e)),
        }
    }
    for (cid, ifname) in &stale {
        teardown(conf, cid, ifname, &mut errors);
    }
    // hostPort records of attachments the runtime no longer has (an interrupted DEL, or one
    // whose IPAM record is already gone): the agent would ignore them, but they would stay.
    let (records, _unreadable) = hostport::read_all(&conf.state_dir);
    for r in records {
        if keep.contains(&(r.container_id.as_str(), r.ifname.as_str())) {
            continue;
        }
        if let Err(source) = hostport::remove(&conf.state_dir, &r.container_id, &r.ifname) {
            errors.push(CniError::Io {
                what: "remove a stale hostPort record".into(),
                source,
            });
        }
    }
    for e in &orphans {
        if let Some(eps) = eps.as_mut() {
            remove_endpoint(conf, eps, e.addr, &mut errors);
        }
        delete_host_veth(&e.host_veth_name(), &mut errors);
    }
    CniError::from_many(errors).map_or(Ok(()), Err)
}
