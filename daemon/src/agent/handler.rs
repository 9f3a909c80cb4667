//! The local API (`sluicectl`) answered from the agent's state and the pinned maps.

use std::{collections::BTreeMap, net::IpAddr};

use anyhow::{bail, Context as _};

use super::Shared;
use crate::{api, policy, services};

impl api::Handler for Shared {
    fn status(&self) -> anyhow::Result<api::Status> {
        let bpffs = &self.settings.bpffs;
        let loaded = datapath_common::pins::PROGRAMS
            .iter()
            .all(|p| datapath_user::prog_path(bpffs, p).exists());
        let endpoints = datapath_user::Endpoints::open(bpffs)
            .and_then(|e| e.list())
            .map(|l| l.len());
        let counters: Vec<api::Counter> = datapath_user::read_metrics(bpffs)
            .map(|c| {
                c.into_iter()
                    .map(|(r, p, b)| api::Counter {
                        reason: r.into(),
                        packets: p,
                        bytes: b,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let no_port_drops = counters
            .iter()
            .find(|c| c.reason == "drop:nat-no-port")
            .map_or(0, |c| c.packets);
        let flows = self
            .flows
            .lock()
            .map(|f| f.status(no_port_drops))
            .unwrap_or_default();
        Ok(api::Status {
            version: env!("CARGO_PKG_VERSION").into(),
            node_name: self.settings.node_name.clone(),
            datapath_loaded: loaded && endpoints.is_ok(),
            bpffs: bpffs.display().to_string(),
            uplink: self.uplink.clone(),
            node_ip: self.node_ip.to_string(),
            pod_cidrs: self.pod_cidrs.iter().map(|c| c.to_string()).collect(),
            masquerade: self.settings.masquerade,
            sockmap: bpffs
                .join(datapath_common::pins::LINKS_DIR)
                .join(datapath_common::pins::LINK_SOCKOPS)
                .exists(),
            endpoints: endpoints.unwrap_or(0),
            adopted_maps: self.adopted_maps,
            manifests: self
                .settings
                .manifests
                .as_ref()
                .map(|p| p.display().to_string()),
            manifest_reader: self.manifest_status.as_ref().map(|rx| {
                let r = *rx.borrow();
                api::ManifestReaderStatus {
                    files: r.files,
                    objects: r.objects,
                    rejected_files: r.rejected_files,
                    duplicates: r.duplicates,
                }
            }),
            uptime_seconds: self.started.elapsed().as_secs(),
            counters,
            policy: self
                .policy
                .lock()
                .map(|p| api::PolicyStatus {
                    revision: p.maps.revision(),
                    rule_entries: p.maps.last.entries,
                    rule_capacity: p.maps.capacity,
                    isolated_endpoints: p.maps.last.isolated_endpoints,
                    overflowed_peers: p.maps.last.overflowed,
                    failed_closed_endpoints: p.maps.last.failed_closed,
                    overflowed_peers_total: p.maps.overflowed_total,
                    failed_closed_total: p.maps.failed_closed_total,
                })
                .unwrap_or_default(),
            services: self
                .lb
                .lock()
                .map(|lb| {
                    let count = |k: services::ConflictKind| {
                        lb.conflicts.iter().filter(|c| c.kind == k).count()
                    };
                    api::ServicesStatus {
                        frontends: lb.frontends.len(),
                        taken: count(services::ConflictKind::Taken),
                        shadowing: count(services::ConflictKind::Shadowing),
                        pod_address: count(services::ConflictKind::PodAddress),
                        external_ip_not_allowed: count(
                            services::ConflictKind::ExternalIpNotAllowed,
                        ),
                        conflicts: lb.conflicts.iter().map(ToString::to_string).collect(),
                    }
                })
                .unwrap_or_default(),
            pods_outside_pod_cidr: self
                .outside_cidr
                .lock()
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default(),
            hostport_conflicts: self.lb.lock().map_or(0, |l| l.hostport_conflicts.len()),
            hostport_conflicts_total: self.lb.lock().map_or(0, |l| l.hostport_conflicts_total),
            flows,
            routing: self.routing.lock().map(|r| r.clone()).unwrap_or_default(),
        })
    }

    fn policy_trace(
        &self,
        from: &str,
        to: &str,
        port: u16,
        protocol: &str,
    ) -> anyhow::Result<api::PolicyTrace> {
        let proto = match protocol.to_ascii_uppercase().as_str() {
            "TCP" => services::Proto::Tcp,
            "UDP" => services::Proto::Udp,
            "SCTP" => services::Proto::Sctp,
            other => bail!("unknown protocol {other:?} (TCP, UDP or SCTP)"),
        };
        let st = self
            .policy
            .lock()
            .map_err(|_| anyhow::anyhow!("policy lock poisoned"))?;
        let resolve = |what: &str| -> anyhow::Result<(IpAddr, Option<policy::PodRef>)> {
            if let Ok(ip) = what.parse::<IpAddr>() {
                return Ok((ip, None));
            }
            let (ns, name) = what
                .split_once('/')
                .with_context(|| format!("{what:?} is neither NAMESPACE/POD nor an address"))?;
            let pod = policy::PodRef::new(ns, name);
            let ep = st.set.endpoint(&pod).with_context(|| {
                format!("pod {what} has no known address (not on this node, or not started)")
            })?;
            let addr = *ep.addrs.first().context("pod without address")?;
            Ok((addr, Some(pod)))
        };
        let (src, src_pod) = resolve(from)?;
        let (dst, dst_pod) = resolve(to)?;
        let v = policy::verdict(
            &st.set,
            &policy::Connection {
                src,
                src_pod,
                dst,
                dst_pod,
                proto,
                port,
            },
        );
        let dp = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => Some(st.maps.judge(
                s,
                d,
                crate::enforce::proto_number(proto),
                port,
                self.node_ip,
            )?),
            _ => None, // IPv6 is not enforced by the datapath yet
        };
        let allowed = dp.as_ref().is_none_or(|d| d.drop.is_none());
        let datapath = match &dp {
            None => "allowed by the datapath: IPv6 is not enforced".to_owned(),
            Some(d) if d.drop.is_none() && v.allowed => "allowed by the datapath".to_owned(),
            Some(_) if allowed => {
                "allowed by the datapath, though the policies deny it (its maps are not in \
                 step with the policies yet)"
                    .to_owned()
            }
            Some(d) => match (d.failed_closed, v.allowed) {
                (Some(why), _) => format!("denied by the datapath: {why}"),
                (None, true) => format!(
                    "denied by the datapath ({}), though the policies allow it (its maps are \
                     not in step with the policies yet)",
                    d.reason().unwrap_or("drop")
                ),
                (None, false) => {
                    format!("denied by the datapath ({})", d.reason().unwrap_or("drop"))
                }
            },
        };
        let mut reasons = Vec::new();
        for side in [&v.egress, &v.ingress].into_iter().flatten() {
            reasons.push(format!(
                "{} of {}: {}",
                side.direction.as_str(),
                side.pod,
                side.decision
            ));
        }
        Ok(api::PolicyTrace {
            from: from.into(),
            to: to.into(),
            allowed,
            policy_allowed: v.allowed,
            datapath,
            revision: dp.map_or(st.maps.revision(), |d| d.revision),
            reasons,
        })
    }

    fn services(&self) -> anyhow::Result<Vec<api::ServiceFrontend>> {
        let st = self
            .lb
            .lock()
            .map_err(|_| anyhow::anyhow!("lb lock poisoned"))?;
        Ok(st
            .frontends
            .iter()
            .map(|f| {
                let id = st.maps.id_of(f).unwrap_or(0);
                api::ServiceFrontend {
                    service: format!("{}/{}", f.namespace, f.service),
                    port_name: f.port_name.clone(),
                    kind: format!("{:?}", f.kind),
                    frontend: format!(
                        "{}:{}/{}",
                        f.addr,
                        f.port,
                        format!("{:?}", f.proto).to_uppercase()
                    ),
                    scope: format!("{:?}", f.scope).to_lowercase(),
                    id,
                    algorithm: if f.maglev { "maglev" } else { "random" }.into(),
                    affinity_timeout_seconds: f.affinity_timeout,
                    snat: f.snat,
                    backends: f
                        .backends
                        .iter()
                        .map(|b| {
                            let local = if b.local { " (local)" } else { "" };
                            match b.addr {
                                IpAddr::V4(a) => format!("{a}:{}{local}", b.port),
                                IpAddr::V6(a) => format!("[{a}]:{}{local}", b.port),
                            }
                        })
                        .collect(),
                    translations: if id == 0 { 0 } else { st.maps.counter(id) },
                }
            })
            .collect())
    }

    fn endpoints(&self) -> anyhow::Result<Vec<api::Endpoint>> {
        let eps = datapath_user::Endpoints::open(&self.settings.bpffs)?.list()?;
        let cluster = self
            .cluster
            .read()
            .map_err(|_| anyhow::anyhow!("state lock poisoned"))?
            .clone();
        Ok(eps
            .into_iter()
            .map(|e| {
                let labels: BTreeMap<String, String> = cluster
                    .pod(&e.namespace, &e.name)
                    .and_then(|p| p.metadata.labels.clone())
                    .unwrap_or_default();
                api::Endpoint {
                    host_veth: nix::net::if_::if_indextoname(e.value.ifindex)
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|_| "?".into()),
                    namespace: e.namespace,
                    pod: e.name,
                    address: e.addr.to_string(),
                    ifindex: e.value.ifindex,
                    mac: datapath_user::mac_string(e.value.pod_mac),
                    container_id: e.container_id,
                    ifname: e.ifname,
                    labels,
                }
            })
            .collect())
    }
}
