//! The NetworkPolicy scenarios (issue 5), after the others, on systems of their own:
//!
//! - `policy-rr-1b`, `policy-stream`: pod → pod on one node, the same two pods, with 1,000
//!   policies selecting the server (and 100 pods in their peer set, the client one of them)
//!   against no policy at all, on both of Sluice's paths: `sluice` / `sluice-nopolicy` with
//!   the agent's defaults (socket acceleration on), `sluice-nosockmap` /
//!   `sluice-nosockmap-nopolicy` with `--sockmap=false` (the TC path). Four nodes, rotated
//!   every round ([`system`]); every node is first checked to enforce what its manifests say,
//!   and every round line says how much of the payload sk_msg carried.
//! - `policy-apply`: on `sluice`, on top of its 1,000 policies, the time from the rename of a
//!   policy file into the manifests directory to the verdict seen by real connections, over
//!   100 changes (20 in `--quick`) that alternately open and close a port ([`probe`]).
//! - `agent-rss-policies`: the agent's resident memory on a fresh node once 1,000 policies and
//!   1,000 pods are compiled and programmed (`sluice`), and on the same agent just before,
//!   with its two CNI pods and no manifest (`sluice-empty`). As the agent's standalone mode
//!   compiles no pod of another node as a peer ([`manifests`]), the same is measured on a
//!   fresh node like the traffic scenarios' (1,000 policies, 103 CNI pods, 100 peers), and
//!   on one without the policies (`sluice-nopolicy`): `mib-103-local-pods`.
//!
//! The manifests are [`manifests`]'; what they mean is checked in its unit tests with the
//! agent's own compiler.

pub mod manifests;
pub mod probe;
pub mod system;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use test_support::{Node, NodeOptions};

use super::{
    check_interrupted,
    hist::Histogram,
    load::Mode,
    measure::{self, Cpus, Guarded, Load, Peers, LOAD_PORT},
    report::{num, Results},
    run::{pct, rounds, Config},
    topo::System,
    Context as _, Error, Result,
};
use manifests::{CLIENT, SERVER};
use probe::{monotonic_ns, Prober};
use system::{
    add_pod, agent_memory, field, last_programmed, trace, wait_until, write_manifest, PolicyNode,
};

pub const SCENARIOS: [&str; 4] = [
    "policy-rr-1b",
    "policy-stream",
    "policy-apply",
    "agent-rss-policies",
];
/// Policies and pods of `agent-rss-policies`: 1,000 policies, 2 CNI pods and 998 remote ones.
const RSS_POLICIES: usize = 1000;
const RSS_PODS: usize = 1000;
/// `agent-rss-policies`' figure on the traffic scenarios' node (103 CNI pods, 100 of them
/// peers the agent compiles; the remote pods it does not, see [`manifests`]).
const LOCAL_METRIC: &str = "mib-103-local-pods";
/// Memory is read once the agent has settled after a change (its reconciliation and, after
/// large changes, the manifest reader giving freed memory back 2 s later).
const SETTLE: Duration = Duration::from_millis(3000);
/// Connect timeout of the `policy-apply` probe: the resolution of a denial's detection.
const PROBE_TIMEOUT_MS: u64 = 15;

/// Runs the wanted NetworkPolicy scenarios on systems built here and released before it
/// returns; returns lines for the run's summary.
pub fn run(cfg: &Config, res: &mut Results) -> Result<Vec<String>> {
    let mut summary = Vec::new();
    let traffic = ["policy-rr-1b", "policy-stream"]
        .iter()
        .any(|s| cfg.wants(s));
    if traffic || cfg.wants("policy-apply") {
        summary.extend(traffic_scenarios(cfg, traffic, res)?);
    }
    if cfg.wants("agent-rss-policies") {
        summary.push(rss(cfg, res)?);
    }
    Ok(summary)
}

/// `policy-rr-1b`, `policy-stream` (when `traffic`) and `policy-apply`.
fn traffic_scenarios(cfg: &Config, traffic: bool, res: &mut Results) -> Result<Vec<String>> {
    eprintln!(
        "\nsluice-bench: building the NetworkPolicy systems: {}",
        if traffic {
            "sluice and sluice-nosockmap with 1,000 policies, sluice-nopolicy and \
             sluice-nosockmap-nopolicy without"
        } else {
            "sluice with 1,000 policies"
        }
    );
    let mut nodes = vec![PolicyNode::new("sluice", &cfg.agent_args, true, true)?];
    if traffic {
        nodes.push(PolicyNode::new(
            "sluice-nopolicy",
            &cfg.agent_args,
            true,
            false,
        )?);
        nodes.push(PolicyNode::new(
            "sluice-nosockmap",
            &cfg.agent_args,
            false,
            true,
        )?);
        nodes.push(PolicyNode::new(
            "sluice-nosockmap-nopolicy",
            &cfg.agent_args,
            false,
            false,
        )?);
    }
    for n in &nodes {
        eprintln!("  {}", n.check_enforcement()?);
    }
    let systems: Vec<&dyn System> = nodes.iter().map(|n| n as &dyn System).collect();

    let rr = "policy-rr-1b";
    if cfg.wants(rr) {
        let l = Load {
            mode: Mode::Rr,
            size: 1,
            connections: 1,
            peers: Peers::PodToPod,
            cpus: Cpus::Any,
        };
        rounds(cfg.rounds, &systems, rr, |sys| {
            let r0 = sys.redirected_bytes();
            let busy = Busy::start()?;
            let s = measure::load(sys, l, cfg.timing)?;
            let others = busy.others(s.client.rusage.total_s() + s.server.rusage.total_s())?;
            let redirected = sys.redirected_bytes().zip(r0).map(|(b, a)| b - a);
            let (c, name) = (&s.client, sys.name());
            let cpu = s.cpu_us_per_req();
            res.add(rr, "rate", "req/s", true, name, c.rate);
            res.add(rr, "p50", "us", false, name, c.p50_us);
            res.add(rr, "p99", "us", false, name, c.p99_us);
            res.add(rr, "cpu-per-req", "us", false, name, cpu);
            res.add_dist(
                rr,
                "request/response latency, 1 B, 1,000 policies or none",
                name,
                &c.latency,
            );
            // Every transaction sends 1 byte each way (the warm-up's included, as the
            // counter's are): the share of that payload sk_msg carried.
            let payload = 2.0 * c.transactions_total.max(1) as f64;
            let share = redirected.map_or(0.0, |b| b as f64 * 100.0 / payload);
            Ok(format!(
                "{} req/s, p50 {} µs, p99 {} µs, cpu {} µs/req, {} errors, sk_msg {share:.0} % \
                 of payload, others' cpu {others:.0} %",
                num(c.rate),
                num(c.p50_us),
                num(c.p99_us),
                num(cpu),
                c.errors
            ))
        })?;
    }

    let stream = "policy-stream";
    if cfg.wants(stream) {
        rounds(cfg.rounds, &systems, stream, |sys| {
            let r0 = sys.redirected_bytes();
            let busy = Busy::start()?;
            let s = measure::stream(sys, cfg.timing)?;
            let others = busy.others(s.cpu_s)?;
            let redirected = sys.redirected_bytes().zip(r0).map_or(0, |(b, a)| b - a);
            let name = sys.name();
            let cpu = s.cpu_ms_per_gb();
            res.add(stream, "throughput", "Gbit/s", true, name, s.gbit_s);
            res.add(stream, "cpu-per-gb", "ms", false, name, cpu);
            // The counter covers iperf3's omitted first second too, its bytes do not.
            let path = if redirected as f64 >= 0.5 * s.bytes {
                "sk_msg"
            } else {
                "TC"
            };
            Ok(format!(
                "{} Gbit/s, cpu {} ms/GB, sk_msg {} GB of {} GB received: payload via {path}, \
                 others' cpu {others:.0} %",
                num(s.gbit_s),
                num(cpu),
                num(redirected as f64 / 1e9),
                num(s.bytes / 1e9)
            ))
        })?;
    }

    if cfg.wants("policy-apply") {
        apply(cfg, &nodes[0], res)?;
    }

    // After the runs: every policy system still programmed as it was, nothing overflowed.
    Ok(nodes
        .iter()
        .map(|n| {
            format!(
                "{} (NetworkPolicy node) datapath counters after the run: {}",
                n.name(),
                n.path_report().unwrap_or_else(|| "?".into())
            )
        })
        .collect())
}

/// The machine's busy CPU time around a measurement (/proc/stat, every core), to tell how much
/// of it was other processes': the round lines show it, since a run on a shared machine can
/// be slowed by others at any time.
struct Busy {
    busy: f64,
    total: f64,
}

impl Busy {
    /// (busy, all) CPU seconds so far: user, nice, system, irq, softirq and steal are busy,
    /// idle and iowait not (USER_HZ ticks, 100 a second).
    fn read() -> Result<(f64, f64)> {
        let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
        let ticks: Vec<f64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|v| v.parse().ok())
            .collect();
        if ticks.len() < 8 {
            return Err(Error::msg("no cpu line in /proc/stat"));
        }
        let busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7];
        Ok((busy / 100.0, ticks.iter().sum::<f64>() / 100.0))
    }

    fn start() -> Result<Self> {
        let (busy, total) = Self::read()?;
        Ok(Self { busy, total })
    }

    /// The share of the machine's capacity (every core) busy with anything but `ours` CPU
    /// seconds since [`Busy::start`], in %. Tick-sampled: a hint, within a few %.
    fn others(&self, ours: f64) -> Result<f64> {
        let (busy, total) = Self::read()?;
        let all = (total - self.total).max(0.01);
        Ok(((busy - self.busy - ours) / all * 100.0).clamp(0.0, 100.0))
    }
}

/// `policy-apply` on `node` (`sluice`): the probe pod isolated by one more policy whose rule
/// alternately admits and refuses the outsider; each change is one rename, timed to the
/// verdict the outsider's connects see.
fn apply(cfg: &Config, node: &PolicyNode, res: &mut Results) -> Result<()> {
    let scenario = "policy-apply";
    let n = cfg.policy_changes;
    eprintln!(
        "\n{scenario} ({n} changes on top of 1,000 policies; probe connect timeout \
         {PROBE_TIMEOUT_MS} ms)"
    );
    let to = SocketAddr::from((node.probe.ip, LOAD_PORT));
    let load_bin = test_support::bin("sluice-load");
    let mut server = Guarded::spawn(
        node.node
            .pod_command(&node.probe.ns, load_bin.as_os_str())
            .args(["server", "--listen", &to.to_string()])
            .args(["--workers", "8", "--max-seconds", "900"]),
        "sluice-load server",
    )?;
    server.wait_for_line(|l| l == "ready")?;
    let me = std::env::current_exe().context("find sluice-bench's own path")?;
    let mut prober = Prober::spawn(
        node.node
            .pod_command(&node.outsider.ns, me.as_os_str())
            .args(["probe", "--to", &to.to_string()])
            .args(["--timeout-ms", &PROBE_TIMEOUT_MS.to_string()]),
    )?;
    let dir = node.node.manifests_dir();
    let (tmp, path) = (dir.join(".probe.yaml.tmp"), dir.join("probe.yaml"));
    let mut rng = monotonic_ns() | 1;
    // One change: the policy written aside, the probe armed, the rename, the verdict seen.
    let mut change = |allow: bool| -> Result<(f64, u64)> {
        std::fs::write(&tmp, manifests::probe_policy(allow)).context("write the probe policy")?;
        prober.arm(allow)?;
        let t0 = monotonic_ns();
        std::fs::rename(&tmp, &path).context("rename the probe policy")?;
        let (seen, connects) = prober.seen()?;
        Ok((seen.saturating_sub(t0) as f64 / 1e9, connects))
    };
    // Untimed: the probe pod becomes isolated (the first version refuses the outsider).
    let (first, _) = change(false)?;
    eprintln!(
        "  probe pod isolated, outsider refused {:.3} s after the first policy file (untimed)",
        first
    );
    let mut all = Vec::with_capacity(n);
    let (mut opened, mut closed) = (Vec::new(), Vec::new());
    let mut hist = Histogram::default();
    let t = Instant::now();
    for i in 0..n {
        check_interrupted()?;
        let allow = i % 2 == 0;
        let (s, _connects) =
            change(allow).with_context(|| format!("{scenario}, change {}", i + 1))?;
        all.push(s);
        hist.record((s * 1e9) as u64);
        if allow { &mut opened } else { &mut closed }.push(s);
        // A pause of 50–300 ms, uniform, so changes do not keep one phase against the
        // agent's 200 ms rescan.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(50 + rng % 251));
        if (i + 1) % 20 == 0 {
            eprintln!("  {}/{n} changes, the last {:.3} s", i + 1, s);
        }
    }
    drop(prober);
    drop(server);
    let sorted = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v
    };
    let (all, opened, closed) = (sorted(&all), sorted(&opened), sorted(&closed));
    let (p50, p99) = (pct(&all, 0.5), pct(&all, 0.99));
    res.add(scenario, "p50", "s", false, "sluice", p50);
    res.add(scenario, "p99", "s", false, "sluice", p99);
    res.add_dist(
        scenario,
        "policy file change to enforcement seen by connects",
        "sluice",
        &hist,
    );
    let prog = last_programmed(&node.node).unwrap_or_default();
    eprintln!(
        "  round 1/1 {:<16} p50 {} s, p99 {} s, max {} s; opening p50 {} s, closing p50 {} s \
         ({:.0} s; the agent's last compile {} ms)",
        "sluice",
        num(p50),
        num(p99),
        num(all[all.len() - 1]),
        num(pct(&opened, 0.5)),
        num(pct(&closed, 0.5)),
        t.elapsed().as_secs_f64(),
        field(&prog, "ms").unwrap_or(0)
    );
    Ok(())
}

/// `agent-rss-policies`: per round a fresh node; memory with its two CNI pods and no
/// manifest (`sluice-empty`), then with 1,000 policies and 1,000 pods compiled and
/// programmed (`sluice`); then two fresh nodes with the traffic scenarios' 103 CNI pods, with
/// and without the policies.
fn rss(cfg: &Config, res: &mut Results) -> Result<String> {
    let scenario = "agent-rss-policies";
    let n_rounds = if cfg.quick { 1 } else { cfg.rounds };
    eprintln!(
        "\n{scenario} ({RSS_POLICIES} policies, {RSS_PODS} pods; a fresh node and agent per round)"
    );
    let remote = RSS_PODS - 2;
    let objects = manifests::objects(remote, manifests::Peers::Remote, &[&SERVER, &CLIENT]);
    let policies = manifests::policies(RSS_POLICIES, remote);
    let mut line = String::new();
    for round in 0..n_rounds {
        check_interrupted()?;
        let t = Instant::now();
        let node = Node::new(NodeOptions {
            manifests: true,
            agent_args: crate::topo::one_node_args(&cfg.agent_args),
            ..NodeOptions::default()
        });
        let server = add_pod(&node, SERVER.namespace, SERVER.name)?;
        let client = add_pod(&node, CLIENT.namespace, CLIENT.name)?;
        wait_until(
            &node,
            "the agent lists its two pods",
            Duration::from_secs(30),
            || {
                let out = node.sluicectl(&["status", "-o", "json"]);
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                Ok(v["endpoints"].as_u64() == Some(2))
            },
        )?;
        std::thread::sleep(SETTLE);
        let (empty, empty_peak) = agent_memory(&node)?;
        let written = write_manifest(&node, "objects.yaml", &objects)?;
        write_manifest(&node, "policies.yaml", &policies)?;
        let programmed = wait_until(
            &node,
            "1,000 policies and 1,000 pods programmed",
            Duration::from_secs(300),
            || {
                // The server isolated means its Pod and the policies are compiled (one file
                // each, read whole); the client allowed, that the maps hold its entry.
                let isolated = last_programmed(&node).and_then(|f| field(&f, "isolated"));
                Ok(isolated == Some(1)
                    && trace(&node, &system::pod_name(&CLIENT), &SERVER, LOAD_PORT) == Some(true))
            },
        )?;
        let programmed = programmed.max(written.elapsed());
        let prog = last_programmed(&node).unwrap_or_default();
        system::nothing_failed_closed(&prog).context("agent-rss-policies")?;
        std::thread::sleep(SETTLE);
        let (mib, peak) = agent_memory(&node)?;
        res.add(scenario, "mib", "MiB", false, "sluice-empty", empty);
        res.add(scenario, "mib", "MiB", false, "sluice", mib);
        res.add(
            scenario,
            "peak-mib",
            "MiB",
            false,
            "sluice-empty",
            empty_peak,
        );
        res.add(scenario, "peak-mib", "MiB", false, "sluice", peak);
        line = format!(
            "VmRSS {} MiB with 1,000 policies and 1,000 pods (peak {} MiB), {} MiB before \
             (peak {}); programmed {:.1} s after the manifests were written ({} rule entries, \
             compile and program {} ms)",
            num(mib),
            num(peak),
            num(empty),
            num(empty_peak),
            programmed.as_secs_f64(),
            field(&prog, "entries").unwrap_or(0),
            field(&prog, "ms").unwrap_or(0)
        );
        drop((server, client, node));
        // The traffic scenarios' node, whose 99 peers are CNI pods the agent compiles as peers,
        // with the policies and without.
        let mut local = Vec::new();
        for (system, policies) in [("sluice", true), ("sluice-nopolicy", false)] {
            let n = PolicyNode::new(system, &cfg.agent_args, true, policies)?;
            std::thread::sleep(SETTLE);
            let (mib, _) = agent_memory(&n.node)?;
            res.add(scenario, LOCAL_METRIC, "MiB", false, system, mib);
            local.push(num(mib));
        }
        line.push_str(&format!(
            "; with the 103 CNI pods of the traffic scenarios {} MiB with the policies, {} \
             without",
            local[0], local[1]
        ));
        eprintln!(
            "  round {}/{n_rounds} {:<16} {line}  ({:.1} s)",
            round + 1,
            "sluice",
            t.elapsed().as_secs_f64()
        );
    }
    Ok(format!("{scenario}, last round: {line}"))
}
