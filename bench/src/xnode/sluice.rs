//! `sluice-tunnel` and `sluice-native`: the integration fixture's simulated cluster
//! ([`test_support::cluster`]) with two nodes, each its own node namespace with the real
//! `sluice-agent` (`--routing tunnel|native`), bpffs, cgroup, state and CNI dirs, both agents
//! in standalone mode on one manifests directory (the Node objects, the Pods), their uplinks on
//! the fixture's underlay bridge. One pod per node, made as kubelet makes it (the Pod object,
//! then the node's CNI binary exec'd, then the Pod's status), its processes in its node's
//! cgroup, so socket programs apply as in a cluster (acceleration on by default, same-node only).
//!
//! The fixture's underlay bridge is set like the baselines' ([`super::topo::Underlay`]): it
//! does not call iptables, so the wire between the nodes is the same for every system.

use std::{ffi::OsStr, process::Command};

use test_support::{
    cluster::{Cluster, ClusterOptions, ClusterPod, Routing as FixtureRouting},
    Netns,
};

use super::{
    super::{
        cni::CniPlugin,
        topo::{path_report, sh, Pods, System, MTU},
        Result,
    },
    topo::VXLAN_OVERHEAD,
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Routing {
    Tunnel,
    Native,
}

impl Routing {
    /// The pods' MTU: the uplink's, less VXLAN's overhead in tunnel mode.
    pub fn pod_mtu(self) -> u32 {
        match self {
            Self::Tunnel => MTU - VXLAN_OVERHEAD,
            Self::Native => MTU,
        }
    }
}

/// Two Sluice nodes, a client pod on node 1 and a server pod on node 2.
pub struct SluicePair {
    // Pods first, then the cluster (agents, namespaces, mounts, cgroups).
    client: ClusterPod,
    server: ClusterPod,
    cluster: Cluster,
    pub routing: Routing,
    name: &'static str,
}

impl SluicePair {
    pub fn new(routing: Routing, agent_args: &[String]) -> Result<Self> {
        let (name, fixture) = match routing {
            Routing::Tunnel => ("sluice-tunnel", FixtureRouting::Tunnel),
            Routing::Native => ("sluice-native", FixtureRouting::Native),
        };
        let cluster = Cluster::new(ClusterOptions {
            routing: fixture,
            nodes: 2,
            agent_args: agent_args.to_vec(),
        });
        sh(
            &cluster.underlay,
            "sysctl -qw net.bridge.bridge-nf-call-iptables=0 && \
             sysctl -qw net.bridge.bridge-nf-call-ip6tables=0 && \
             sysctl -qw net.bridge.bridge-nf-call-arptables=0",
        )?;
        let client = cluster.add_pod(1, "bench-client", &[("app", "bench-client")]);
        let server = cluster.add_pod(2, "bench-server", &[("app", "bench-server")]);
        Ok(Self {
            client,
            server,
            cluster,
            routing,
            name,
        })
    }

    /// The pod whose namespace is `ns`.
    fn pod_of(&self, ns: &Netns) -> &ClusterPod {
        if ns.name == self.client.ns.name {
            &self.client
        } else {
            &self.server
        }
    }

    /// Both nodes' agent logs, for an error.
    pub fn agent_logs(&self) -> String {
        self.cluster.agent_logs()
    }
}

impl System for SluicePair {
    fn name(&self) -> &'static str {
        self.name
    }

    fn pods(&self) -> Pods<'_> {
        Pods {
            client: &self.client.ns,
            server: &self.server.ns,
            server_ip: self.server.ip,
        }
    }

    /// In its node's cgroup, as a pod's containers are.
    fn pod_command(&self, ns: &Netns, program: &OsStr) -> Command {
        self.pod_of(ns).command(program)
    }

    /// Both nodes' non-zero datapath counters.
    fn path_report(&self) -> Option<String> {
        let status = |i: usize| {
            let out = self.cluster.node(i).sluicectl(&["status", "-o", "json"]);
            serde_json::from_slice::<serde_json::Value>(&out.stdout).ok()
        };
        let a = path_report(&status(1)?)?;
        let b = path_report(&status(2)?)?;
        Some(format!("node1: {a}; node2: {b}"))
    }

    fn cni(&self) -> Option<CniPlugin<'_>> {
        None
    }
}
