//! The `sluice` system of the Service scenarios: a fixture node whose agent runs its default
//! flags (socket LB and socket acceleration on) in standalone mode (`--manifests`). The
//! Services (with `clusterIP` and a selector) and the Pods (with labels) are manifests in its
//! directory; a Service set counts as programmed once the frontends map (`SL_SVC_V1`, read
//! from the pin) holds exactly those Services, each with its three backends, and
//! `sluicectl services` lists the same. Client and servers run in the node's cgroup, as pods'
//! processes do, so connections are balanced at `connect()` and then go socket to socket.

use std::{
    cell::Cell,
    ffi::OsStr,
    net::Ipv4Addr,
    process::Command,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHash, Map, MapData};
use datapath_common::svc;

use test_support::{Node, NodeOptions, Pod};

use super::{
    super::{
        check_interrupted,
        measure::LOAD_PORT,
        topo::{prepare_pods, Pods},
        Context as _, Error, Result,
    },
    services, unreachable_without_services, PodRef, SvcSystem, BACKENDS, SERVICE_PORT, SETTLE,
};

/// Bound on the agent programming (or removing) a Service set.
const PROGRAM_DEADLINE: Duration = Duration::from_secs(120);

pub struct SluiceSvc {
    // Pods first: fields drop in order, pods before their node.
    backends: Vec<Pod>,
    client: Pod,
    node: Node,
    /// Services programmed now.
    programmed: Cell<usize>,
}

impl SluiceSvc {
    pub fn new(agent_args: &[String]) -> Result<Self> {
        let node = Node::new(NodeOptions {
            manifests: true,
            agent_args: crate::topo::one_node_args(agent_args),
            ..NodeOptions::default()
        });
        let client = node.add_pod("svc-client");
        let backends: Vec<Pod> = (0..BACKENDS)
            .map(|i| node.add_pod(&format!("svc-backend-{i}")))
            .collect();
        let mut pods = pod_yaml(&client.name, "bench-client");
        for b in &backends {
            pods += &pod_yaml(&b.name, "bench-backend");
        }
        std::fs::write(node.manifests_dir().join("pods.yaml"), pods).context("write pods.yaml")?;
        let s = Self {
            backends,
            client,
            node,
            programmed: Cell::new(0),
        };
        let on = s.status().and_then(|v| v["sockmap"].as_bool());
        if on != Some(true) {
            return Err(Error::msg(format!(
                "sluice (Services): the agent says socket acceleration is {on:?}, expected on"
            )));
        }
        prepare_pods(Pods {
            client: &s.client.ns,
            server: &s.backends[0].ns,
            server_ip: s.backends[0].ip,
        })?;
        unreachable_without_services("sluice", s.client.ns.path())?;
        Ok(s)
    }

    fn status(&self) -> Option<serde_json::Value> {
        let out = self.node.sluicectl(&["status", "-o", "json"]);
        serde_json::from_slice(&out.stdout).ok()
    }

    /// A datapath counter's packets (`sluicectl status`); absent is zero.
    fn counter(&self, reason: &str) -> Result<u64> {
        let v = self
            .status()
            .ok_or_else(|| Error::msg("sluicectl status failed"))?;
        let counters = v["counters"]
            .as_array()
            .ok_or_else(|| Error::msg(format!("no counters in {v}")))?;
        Ok(counters
            .iter()
            .find(|c| c["reason"] == reason)
            .map_or(0, |c| c["packets"].as_u64().unwrap_or(0)))
    }

    /// (frontends, frontends with all their backends) in the datapath's frontends map.
    fn in_maps(&self) -> Result<(usize, usize)> {
        let path = datapath_user::map_path(&self.node.bpffs(), svc::MAP_NAME);
        let data = MapData::from_pin(&path)
            .with_context(|| format!("open the pinned map {}", path.display()))?;
        let map: BpfHash<MapData, svc::Key, svc::Value> =
            BpfHash::try_from(Map::HashMap(data)).context("open the frontends map")?;
        let (mut total, mut ready) = (0, 0);
        // An entry removed while the walk passes it is skipped; the next walk sees the truth.
        for (_, v) in map.iter().filter_map(Result::ok) {
            total += 1;
            ready += usize::from(v.count == BACKENDS as u32);
        }
        Ok((total, ready))
    }

    /// Writes the manifest of Services `0..n` (none: removes it) in one rename, and waits
    /// until the frontends map holds exactly them; returns the time from the rename.
    fn write_and_wait(&self, n: usize) -> Result<Duration> {
        let dir = self.node.manifests_dir();
        let path = dir.join("services.yaml");
        let start = if n == 0 {
            let start = Instant::now();
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).context("remove services.yaml")
                }
                _ => start,
            }
        } else {
            // A dotfile is not a manifest: the agent never sees it half-written.
            let tmp = dir.join(".services.yaml.tmp");
            std::fs::write(&tmp, services_yaml(n)).context("write the Services manifest")?;
            let start = Instant::now();
            std::fs::rename(&tmp, &path).context("rename the Services manifest")?;
            start
        };
        loop {
            let (total, ready) = self.in_maps()?;
            if total == n && ready == n {
                let took = start.elapsed();
                self.programmed.set(n);
                return Ok(took);
            }
            check_interrupted()?;
            if start.elapsed() > PROGRAM_DEADLINE {
                let log = self.node.agent_log();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                return Err(Error::msg(format!(
                    "sluice: {n} Services not programmed in {PROGRAM_DEADLINE:?} ({total} \
                     frontends, {ready} with {BACKENDS} backends); the agent's log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// What `sluicectl services` lists: internal frontends with all their backends.
    fn listed(&self) -> Result<usize> {
        let out = self.node.sluicectl(&["services", "-o", "json"]);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parse sluicectl services")?;
        let all = v
            .as_array()
            .ok_or_else(|| Error::msg("sluicectl services: not a list"))?;
        Ok(all
            .iter()
            .filter(|f| {
                f["scope"] == "internal" && f["backends"].as_array().map_or(0, Vec::len) == BACKENDS
            })
            .count())
    }
}

/// A Pod manifest in `default` labelled `app: {app}`, its container port 7000 named `http`.
fn pod_yaml(name: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  \
         labels: {{app: {app}}}\nspec:\n  containers:\n  - name: app\n    image: app\n    \
         ports:\n    - {{name: http, containerPort: {LOAD_PORT}, protocol: TCP}}\n---\n"
    )
}

/// Services `default/s0` … `s{n-1}`, each a ClusterIP port 80 onto the backend pods' 7000.
fn services_yaml(n: usize) -> String {
    let s = services(&[]);
    let mut y = String::with_capacity(n * 220);
    for i in 0..n {
        y += &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default}}\n\
             spec:\n  clusterIP: {}\n  selector: {{app: bench-backend}}\n  ports:\n  \
             - {{name: http, port: {SERVICE_PORT}, targetPort: {LOAD_PORT}}}\n---\n",
            s.cluster_ip(i)
        );
    }
    y
}

impl SvcSystem for SluiceSvc {
    fn name(&self) -> &'static str {
        "sluice"
    }

    fn backends(&self) -> Vec<Ipv4Addr> {
        self.backends.iter().map(|p| p.ip).collect()
    }

    /// In the node's cgroup, as a pod's containers are: the socket LB applies to them.
    fn pod_command(&self, pod: PodRef, program: &OsStr) -> Command {
        let ns = match pod {
            PodRef::Client => &self.client.ns,
            PodRef::Backend(i) => &self.backends[i].ns,
        };
        self.node.pod_command(ns, program)
    }

    fn program(&self, n: usize) -> Result<()> {
        if self.programmed.get() == n && n > 0 {
            return Ok(());
        }
        self.write_and_wait(n)?;
        let listed = self.listed()?;
        if listed != n {
            return Err(Error::msg(format!(
                "sluice: the maps hold {n} Services but sluicectl services lists {listed}"
            )));
        }
        std::thread::sleep(SETTLE);
        Ok(())
    }

    fn time_program(&self, n: usize) -> Result<f64> {
        self.write_and_wait(0)?;
        std::thread::sleep(SETTLE);
        let took = self.write_and_wait(n)?;
        let listed = self.listed()?;
        if listed != n {
            return Err(Error::msg(format!(
                "sluice: the maps hold {n} Services but sluicectl services lists {listed}"
            )));
        }
        std::thread::sleep(SETTLE);
        Ok(took.as_secs_f64())
    }

    /// Nothing to reset: Sluice's socket LB keeps no per-connection state.
    fn prepare(&self) -> Result<()> {
        Ok(())
    }

    fn snapshot(&self) -> Result<u64> {
        self.counter("svc:socket-lb")
    }

    /// Every connection was balanced by the socket LB at `connect()` (`svc:socket-lb` counts
    /// the connects it translated).
    fn translated(&self, before: u64, connections: u64) -> Result<String> {
        let lb = self.counter("svc:socket-lb")?.saturating_sub(before);
        if lb < connections {
            return Err(Error::msg(format!(
                "sluice: the servers saw {connections} connections but the socket LB \
                 translated {lb} connects: some bypassed it"
            )));
        }
        Ok(format!("socket LB {lb} connects"))
    }

    fn summary(&self) -> String {
        let counters = self
            .status()
            .and_then(|v| {
                let parts: Vec<String> = v["counters"]
                    .as_array()?
                    .iter()
                    .filter(|c| c["packets"].as_u64().unwrap_or(0) > 0)
                    .map(|c| format!("{} {}", c["reason"].as_str().unwrap_or("?"), c["packets"]))
                    .collect();
                Some(parts.join(", "))
            })
            .unwrap_or_else(|| "?".into());
        format!("sluice (Services) datapath counters after the run, packets: {counters}")
    }
}
