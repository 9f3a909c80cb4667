//! `sluicectl`: the operator's view of a Sluice node, through the agent's local API.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Parser, Subcommand};
use daemon::api::{self, Reply, Request};

/// Inspect a Sluice node: datapath status and local endpoints (pods).
///
/// Talks to sluice-agent over <STATE_DIR>/agent.sock, which only root can open.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// The agent's state directory (same as sluice-agent --state-dir).
    #[arg(long, global = true, value_name = "DIR", default_value = "/run/sluice")]
    state_dir: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    output: Output,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Whether the datapath is loaded, the node's settings and the datapath's counters.
    Status,
    /// Local endpoints: pod, address, host veth, ifindex.
    Endpoints,
    /// Service frontends (ClusterIPs, NodePorts, external IPs) with their backends and the
    /// number of connections/packets translated.
    Services,
    /// NetworkPolicy.
    #[command(subcommand)]
    Policy(PolicyCmd),
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// The verdict for a connection and the policies and rules that decide it.
    ///
    /// Example: sluicectl policy trace --from shop/web --to shop/db --port 5432/TCP
    Trace {
        /// Source: NAMESPACE/POD or an address.
        #[arg(long)]
        from: String,
        /// Destination: NAMESPACE/POD or an address.
        #[arg(long)]
        to: String,
        /// Destination port and protocol: PORT/TCP, PORT/UDP or PORT/SCTP (default TCP).
        #[arg(long, value_name = "PORT[/PROTO]")]
        port: String,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        bail!("sluicectl must run as root (the agent's socket is root-only)");
    }
    let req = match args.command {
        Cmd::Status => Request::Status,
        Cmd::Endpoints => Request::Endpoints,
        Cmd::Services => Request::Services,
        Cmd::Policy(PolicyCmd::Trace { from, to, port }) => {
            let (port, protocol) = port.split_once('/').unwrap_or((&port, "TCP"));
            let port: u16 = port
                .parse()
                .map_err(|e| anyhow::anyhow!("--port {port:?}: {e} (PORT/PROTO, e.g. 80/TCP)"))?;
            Request::PolicyTrace {
                from,
                to,
                port,
                protocol: protocol.to_string(),
            }
        }
    };
    let reply = api::call(&args.state_dir, &req)?;
    match (reply, args.output) {
        (Reply::Error(e), _) => bail!("the agent answered: {e}"),
        (Reply::Status(s), Output::Json) => println!("{}", serde_json::to_string_pretty(&s)?),
        (Reply::Endpoints(e), Output::Json) => println!("{}", serde_json::to_string_pretty(&e)?),
        (Reply::Services(f), Output::Json) => println!("{}", serde_json::to_string_pretty(&f)?),
        (Reply::PolicyTrace(t), Output::Json) => println!("{}", serde_json::to_string_pretty(&t)?),
        (Reply::PolicyTrace(t), Output::Table) => {
            println!(
                "{} -> {}: {}",
                t.from,
                t.to,
                if t.allowed { "ALLOWED" } else { "DENIED" }
            );
            println!("  {} (policy revision {})", t.datapath, t.revision);
            for r in &t.reasons {
                println!("  {r}");
            }
        }
        (Reply::Services(fs), Output::Table) => {
            println!(
                "{:<32} {:<10} {:<26} {:<8} {:>5} {:<10} {:>10}  BACKENDS",
                "SERVICE", "KIND", "FRONTEND", "SCOPE", "ID", "LB", "CONNS/PKTS"
            );
            for f in fs {
                let mut lb = f.algorithm.clone();
                if let Some(t) = f.affinity_timeout_seconds {
                    lb = format!("{lb}+aff{t}s");
                }
                let backends = if f.backends.is_empty() {
                    "(none: refused)".to_string()
                } else {
                    f.backends.join(", ")
                };
                let name = if f.port_name.is_empty() {
                    f.service.clone()
                } else {
                    format!("{}:{}", f.service, f.port_name)
                };
                println!(
                    "{:<32} {:<10} {:<26} {:<8} {:>5} {:<10} {:>10}  {}",
                    name, f.kind, f.frontend, f.scope, f.id, lb, f.translations, backends
                );
            }
        }
        (Reply::Status(s), Output::Table) => {
            println!("Node:          {}", s.node_name);
            println!(
                "Datapath:      {}",
                if s.datapath_loaded {
                    "loaded"
                } else {
                    "NOT LOADED"
                }
            );
            println!("bpffs:         {}", s.bpffs);
            println!("Uplink:        {} ({})", s.uplink, s.node_ip);
            println!("Pod CIDRs:     {}", s.pod_cidrs.join(", "));
            println!("Masquerade:    {}", if s.masquerade { "on" } else { "off" });
            println!(
                "Sock accel:    {}",
                if s.sockmap {
                    "on (sockops + sk_msg)"
                } else {
                    "off"
                }
            );
            println!("Endpoints:     {}", s.endpoints);
            let p = &s.policy;
            println!(
                "Policy:        revision {}, {} of {} rule entries, {} isolated endpoints",
                p.revision, p.rule_entries, p.rule_capacity, p.isolated_endpoints
            );
            if p.overflowed_peers + p.failed_closed_endpoints > 0 {
                println!(
                    "  FAILED CLOSED: {} peers with too many port ranges, {} endpoints whose \
                     rules did not fit (denied; see the agent's log)",
                    p.overflowed_peers, p.failed_closed_endpoints
                );
            }
            let v = &s.services;
            println!(
                "Services:      {} frontends; refused: {} taken by an older service, {} \
                 shadowing a ClusterIP or node, {} on pod addresses, {} external IPs not \
                 allowed (--external-ips)",
                v.frontends, v.taken, v.shadowing, v.pod_address, v.external_ip_not_allowed
            );
            for c in &v.conflicts {
                println!("  {c}");
            }
            let r = &s.routing;
            match (&r.device, r.tunnel_port, r.tunnel_mtu) {
                (Some(d), Some(p), Some(m)) => println!(
                    "Routing:       {} ({d}, UDP port {p}, MTU {m}), {} peers routed",
                    r.mode,
                    r.peers.len()
                ),
                _ => println!("Routing:       {}, {} peers routed", r.mode, r.peers.len()),
            }
            for p in &r.peers {
                println!(
                    "  {:<24} {:<16} {}",
                    p.node,
                    p.address,
                    p.pod_cidrs.join(", ")
                );
            }
            for n in &r.not_routed {
                println!("  NOT ROUTED {}: {}", n.node, n.reason);
            }
            for c in &r.route_conflicts {
                println!("  NOT ROUTED {c}");
            }
            if !s.pods_outside_pod_cidr.is_empty() {
                println!(
                    "Pods outside the pod CIDR (kept until deleted): {}",
                    s.pods_outside_pod_cidr.join(", ")
                );
            }
            if s.hostport_conflicts > 0 {
                println!(
                    "HostPorts:     {} mappings not programmed (port held by an older owner; see the agent's log)",
                    s.hostport_conflicts
                );
            }
            let f = &s.flows;
            let m = &f.masquerade;
            println!(
                "Masquerade ports: {} ({} per destination), {} in use{}, {} packets dropped for \
                 want of a port",
                m.ports,
                m.ports_per_destination,
                m.ports_in_use,
                m.busiest_destination
                    .as_ref()
                    .map(|d| format!(" (most: {} to {d})", m.busiest_ports_in_use))
                    .unwrap_or_default(),
                m.no_port_drops
            );
            println!(
                "Flows:         collector every {}s, {} runs, last {} ({} ms)",
                f.gc_interval_seconds,
                f.gc_runs,
                f.last_run_seconds_ago
                    .map(|s| format!("{s}s ago"))
                    .unwrap_or_else(|| "never".into()),
                f.last_run_ms
            );
            for mp in &f.maps {
                let states: Vec<String> =
                    mp.states.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "  {:<12} {:>7} of {:>7} entries, expired {} (total {}){}  {}",
                    mp.map,
                    mp.entries,
                    mp.capacity,
                    mp.expired,
                    mp.expired_total,
                    if mp.pressure > 0 {
                        format!(", PRESSURE {}", mp.pressure)
                    } else {
                        String::new()
                    },
                    states.join(" ")
                );
            }
            print!("Manifests:     {}", s.manifests.as_deref().unwrap_or("-"));
            match &s.manifest_reader {
                Some(m) => println!(
                    " ({} files, {} objects; {} rejected files, {} duplicates)",
                    m.files, m.objects, m.rejected_files, m.duplicates
                ),
                None => println!(),
            }
            println!(
                "Agent uptime:  {}s (version {})",
                s.uptime_seconds, s.version
            );
            println!("Counters:");
            for line in counter_lines(&s.counters) {
                println!("{line}");
            }
        }
        (Reply::Endpoints(eps), Output::Table) => {
            println!(
                "{:<32} {:<16} {:<16} {:>7}  MAC",
                "POD", "ADDRESS", "HOST VETH", "IFINDEX"
            );
            for e in eps {
                let pod = if e.pod.is_empty() {
                    format!(
                        "(container {})",
                        e.container_id.chars().take(12).collect::<String>()
                    )
                } else {
                    format!("{}/{}", e.namespace, e.pod)
                };
                println!(
                    "{:<32} {:<16} {:<16} {:>7}  {}",
                    pod, e.address, e.host_veth, e.ifindex, e.mac
                );
            }
        }
    }
    Ok(())
}

/// The `Counters:` lines of `status`: names padded to the longest one, each with its own units
/// (a socket counter counts sockets or messages, not packets).
fn counter_lines(counters: &[daemon::api::Counter]) -> Vec<String> {
    let width = counters.iter().map(|c| c.reason.len()).max().unwrap_or(0);
    counters
        .iter()
        .map(|c| {
            let (first, second) = match c.reason.as_str() {
                // One count per socket put in the sockhash; its byte column repeats it.
                "sock:accelerated" => ("sockets", None),
                "sock:redirected" => ("msgs", Some("bytes")),
                // Counted once per connection the socket hook balanced or policy admitted.
                "svc:socket-lb" | "policy:allowed-new" => ("conns", None),
                _ => ("pkts", Some("bytes")),
            };
            let mut line = format!("  {:<width$} {:>12} {first:<7}", c.reason, c.packets);
            if let Some(unit) = second {
                line.push_str(&format!(" {:>14} {unit}", c.bytes));
            }
            line.trim_end().to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(reason: &str, packets: u64, bytes: u64) -> daemon::api::Counter {
        daemon::api::Counter {
            reason: reason.into(),
            packets,
            bytes,
        }
    }

    /// Test that counter columns line up whatever the length of the names, and that socket
    /// counters are printed in their own units.
    #[test]
    fn status_counter_columns_align_and_name_their_units() {
        let lines = counter_lines(&[
            counter("fwd:local", 10, 1000),
            counter("drop:policy-ingress-a-very-long-reason", 2, 120),
            counter("sock:accelerated", 4, 4),
            counter("sock:redirected", 7, 7000),
            counter("svc:socket-lb", 3, 0),
        ]);
        // The count column ends where its unit starts, at the same column on every line.
        let unit_at: Vec<usize> = lines
            .iter()
            .map(|l| {
                [" pkts", " msgs", " sockets", " conns"]
                    .iter()
                    .find_map(|u| l.find(u))
                    .unwrap()
            })
            .collect();
        assert!(unit_at.windows(2).all(|w| w[0] == w[1]), "{lines:#?}");
        assert!(
            lines[0].ends_with("1000 bytes") && lines[0].contains(" 10 pkts"),
            "{lines:#?}"
        );
        assert!(lines[2].ends_with(" 4 sockets"), "{lines:#?}");
        assert!(
            lines[3].contains(" 7 msgs") && lines[3].ends_with("7000 bytes"),
            "{lines:#?}"
        );
        assert!(lines[4].ends_with(" 3 conns"), "{lines:#?}");
        assert!(!lines
            .iter()
            .any(|l| l.contains("sockets") && l.contains("bytes")));
    }
}
