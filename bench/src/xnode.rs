//! The cross-node scenarios (issue 18): pod → pod between two simulated nodes (node
//! namespaces joined by an underlay namespace with a bridge), on systems of their own:
//!
//! - `routed` (the limit) and `flannel` (the usual overlay), [`topo`];
//! - `sluice-tunnel` and `sluice-native`: the real agents with `--routing tunnel|native`, pods
//!   made by the Sluice CNI, [`sluice`].
//!
//! `xnode-rr-1b` (one connection, 1 B each way, client and server on one core as
//! `pod-pod-rr-1b`), `xnode-crr` (connect, 1 B, close; any CPU) and `xnode-stream` (one iperf3
//! stream; any CPU), the order of the systems rotated every round. Every system is first
//! checked for its pods' MTU and to carry a ping from the client pod to the server pod; one
//! that does not fails the run (with its agents' logs for a Sluice system).

pub mod sluice;
pub mod topo;

use super::{
    load::Mode,
    measure::{self, Cpus, Load, Peers},
    report::{num, Results},
    run::{rounds, Config},
    topo::{prepare_pods_at, sh, System, MTU},
    Context as _, Result,
};

pub const SCENARIOS: [&str; 3] = ["xnode-rr-1b", "xnode-crr", "xnode-stream"];

/// Runs the wanted cross-node scenarios on systems built here and released before it
/// returns; returns lines for the run's summary.
pub fn run(cfg: &Config, res: &mut Results) -> Result<Vec<String>> {
    if !SCENARIOS.iter().any(|s| cfg.wants(s)) {
        return Ok(Vec::new());
    }
    eprintln!(
        "\nsluice-bench: building the cross-node systems: sluice-tunnel, sluice-native, routed \
         and flannel, two nodes each on an underlay bridge"
    );
    let tunnel = sluice::SluicePair::new(sluice::Routing::Tunnel, &cfg.agent_args)?;
    let native = sluice::SluicePair::new(sluice::Routing::Native, &cfg.agent_args)?;
    let routed = topo::Routed::new()?;
    let flannel = topo::Flannel::new()?;
    let systems: [&dyn System; 4] = [&tunnel, &native, &routed, &flannel];
    for (s, pod_mtu, pair) in [
        (systems[0], tunnel.routing.pod_mtu(), Some(&tunnel)),
        (systems[1], native.routing.pod_mtu(), Some(&native)),
        (systems[2], MTU, None),
        (systems[3], MTU - topo::VXLAN_OVERHEAD, None),
    ] {
        if let Err(e) = ready(s, pod_mtu) {
            // A Sluice system's agents say why (routes, peers); a baseline is the harness's.
            if let Some(pair) = pair {
                eprintln!("{}", pair.agent_logs());
            }
            return Err(e);
        }
    }

    for (name, mode, cpus, unit) in [
        ("xnode-rr-1b", Mode::Rr, Cpus::OneCore, "req/s"),
        ("xnode-crr", Mode::Crr, Cpus::Any, "conn/s"),
    ] {
        if !cfg.wants(name) {
            continue;
        }
        let l = Load {
            mode,
            size: 1,
            connections: 1,
            peers: Peers::PodToPod,
            cpus,
        };
        rounds(cfg.rounds, &systems, name, |sys| {
            let s = measure::load(sys, l, cfg.timing)?;
            let (c, sys_name) = (&s.client, sys.name());
            let cpu = s.cpu_us_per_req();
            res.add(name, "rate", unit, true, sys_name, c.rate);
            if mode == Mode::Rr {
                res.add(name, "p50", "us", false, sys_name, c.p50_us);
            }
            res.add(name, "p99", "us", false, sys_name, c.p99_us);
            res.add(name, "cpu-per-req", "us", false, sys_name, cpu);
            let title = match mode {
                Mode::Rr => "cross-node request/response latency, 1 B",
                Mode::Crr => "cross-node connect time",
            };
            res.add_dist(
                name,
                title,
                sys_name,
                c.connect.as_ref().unwrap_or(&c.latency),
            );
            Ok(format!(
                "{} {unit}, p50 {} µs, p99 {} µs, cpu {} µs/req, {} errors",
                num(c.rate),
                num(c.p50_us),
                num(c.p99_us),
                num(cpu),
                c.errors
            ))
        })?;
    }

    let stream = "xnode-stream";
    if cfg.wants(stream) {
        rounds(cfg.rounds, &systems, stream, |sys| {
            let s = measure::stream(sys, cfg.timing)?;
            let (name, cpu) = (sys.name(), s.cpu_ms_per_gb());
            res.add(stream, "throughput", "Gbit/s", true, name, s.gbit_s);
            res.add(stream, "cpu-per-gb", "ms", false, name, cpu);
            Ok(format!("{} Gbit/s, cpu {} ms/GB", num(s.gbit_s), num(cpu)))
        })?;
    }

    let mut summary = Vec::new();
    for pair in [&tunnel, &native] {
        summary.push(format!(
            "{} datapath counters after the run: {}",
            pair.name(),
            pair.path_report().unwrap_or_else(|| "?".into())
        ));
    }
    Ok(summary)
}

/// Checks a system before it is measured: its pods' MTU is `mtu` (and readies them for the
/// load, [`prepare_pods_at`]) and the client pod reaches the server pod on the other node
/// (within 10 s).
fn ready(s: &dyn System, mtu: u32) -> Result<()> {
    prepare_pods_at(s.pods(), mtu)
        .and_then(|()| {
            let p = s.pods();
            // Up to 10 s: an agent routes a peer within 2 s of its Node object appearing.
            let ping = format!(
                "for i in $(seq 10); do ping -c 1 -W 1 {} >/dev/null && exit 0; done; exit 1",
                p.server_ip
            );
            sh(p.client, &ping)
                .context("the client pod does not reach the server pod on the other node")
        })
        .with_context(|| s.name().to_string())?;
    Ok(())
}
