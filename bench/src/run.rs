//! One benchmark run: build the four systems once (when a scenario needs them), then for each
//! scenario run rounds in which every system is measured once, the order rotated each round
//! (S N V B, N V B S, …; A/B/A/B for the socket acceleration scenarios, which measure only the
//! two Sluice systems) so that drift on the machine hits every system alike; then the Service
//! scenarios on their own two systems ([`super::svc`], S I, I S, …), then the NetworkPolicy
//! scenarios on theirs ([`super::policy`]), then the cross-node ones ([`super::xnode`]); then
//! print and write the results. A run `--only`
//! some scenarios merges its records into the existing results ([`super::saved::write`]).

use std::{path::PathBuf, time::Instant};

use super::{
    check_interrupted, cni,
    load::Mode,
    manifests,
    measure::{self, Cpus, Load, Peers, Timing},
    policy, remote_pods,
    report::{num, Results},
    svc,
    topo::{Bridge, Sluice, System, Veth},
    xnode, Context as _, Error, Result,
};

pub const SCENARIOS: [&str; 29] = [
    "pod-pod-rr-1b",
    "pod-pod-rr-1k",
    "pod-pod-crr",
    "pod-pod-stream",
    "sockmap-rr-1b-1conn",
    "sockmap-rr-1k-1conn",
    "sockmap-rr-1b-64conn",
    "sockmap-rr-1k-64conn",
    "sockmap-loopback-rr-1b",
    "sockmap-rr-1b-1conn-unpinned",
    "sockmap-loopback-rr-1b-unpinned",
    "sockmap-stream",
    "cni-add",
    "cni-del",
    "cni-add-parallel-100",
    "svc-crr-10",
    "svc-crr-1000",
    "svc-crr-10000",
    "svc-rr-10000",
    "svc-program-10000",
    "policy-rr-1b",
    "policy-stream",
    "policy-apply",
    "agent-rss-policies",
    "manifests-idle-10k",
    "agent-rss-remote-pods",
    "xnode-rr-1b",
    "xnode-crr",
    "xnode-stream",
];

/// A `sluice-load` scenario.
struct LoadScenario {
    name: &'static str,
    /// A socket acceleration scenario that is the same measurement for the two Sluice systems:
    /// their runs are recorded under this name too, rather than measured twice.
    alias: Option<&'static str>,
    load: Load,
    /// Measured on `sluice` and `sluice-nosockmap` only (A/B).
    sluice_only: bool,
    title: &'static str,
}

const fn rr(size: usize, connections: usize, peers: Peers, cpus: Cpus) -> Load {
    Load {
        mode: Mode::Rr,
        size,
        connections,
        peers,
        cpus,
    }
}

/// Pod to pod on the four systems; the first two are also socket acceleration scenarios. The
/// one-connection round trips run client and server on one core ([`Cpus::OneCore`], as
/// netperf TCP_RR with `-T`); the same unpinned are in [`SOCKMAP`].
const POD_POD: [LoadScenario; 3] = [
    LoadScenario {
        name: "pod-pod-rr-1b",
        alias: Some("sockmap-rr-1b-1conn"),
        load: rr(1, 1, Peers::PodToPod, Cpus::OneCore),
        sluice_only: false,
        title: "request/response latency, 1 B",
    },
    LoadScenario {
        name: "pod-pod-rr-1k",
        alias: Some("sockmap-rr-1k-1conn"),
        load: rr(1024, 1, Peers::PodToPod, Cpus::OneCore),
        sluice_only: false,
        title: "request/response latency, 1 KiB",
    },
    LoadScenario {
        name: "pod-pod-crr",
        alias: None,
        load: Load {
            mode: Mode::Crr,
            size: 1,
            connections: 1,
            peers: Peers::PodToPod,
            cpus: Cpus::Any,
        },
        sluice_only: false,
        title: "connect time",
    },
];

/// Socket acceleration on and off, on the two Sluice systems only. The 64-connection runs keep
/// both CPUs busy and are not pinned; the one-connection ones are measured both ways.
const SOCKMAP: [LoadScenario; 5] = [
    LoadScenario {
        name: "sockmap-rr-1b-64conn",
        alias: None,
        load: rr(1, 64, Peers::PodToPod, Cpus::Any),
        sluice_only: true,
        title: "request/response latency, 1 B, 64 connections",
    },
    LoadScenario {
        name: "sockmap-rr-1k-64conn",
        alias: None,
        load: rr(1024, 64, Peers::PodToPod, Cpus::Any),
        sluice_only: true,
        title: "request/response latency, 1 KiB, 64 connections",
    },
    LoadScenario {
        name: "sockmap-loopback-rr-1b",
        alias: None,
        load: rr(1, 1, Peers::Loopback, Cpus::OneCore),
        sluice_only: true,
        title: "in-pod loopback (127.0.0.1) latency, 1 B",
    },
    LoadScenario {
        name: "sockmap-rr-1b-1conn-unpinned",
        alias: None,
        load: rr(1, 1, Peers::PodToPod, Cpus::Any),
        sluice_only: true,
        title: "request/response latency, 1 B, client and server on any CPU",
    },
    LoadScenario {
        name: "sockmap-loopback-rr-1b-unpinned",
        alias: None,
        load: rr(1, 1, Peers::Loopback, Cpus::Any),
        sluice_only: true,
        title: "in-pod loopback (127.0.0.1) latency, 1 B, client and server on any CPU",
    },
];

pub struct Config {
    pub quick: bool,
    pub rounds: usize,
    pub timing: Timing,
    /// Pods ADDed then DELed one by one per round (`cni-add`, `cni-del`).
    pub cni_pods: usize,
    /// Pods ADDed at once per round (`cni-add-parallel-100`).
    pub parallel_pods: usize,
    /// Policy changes timed by `policy-apply`.
    pub policy_changes: usize,
    /// Scenarios to run (all when empty).
    pub only: Vec<String>,
    pub results_dir: PathBuf,
    /// Extra flags for Sluice's agent (`--agent-arg --sockmap=false`).
    pub agent_args: Vec<String>,
    /// The Service scenarios' kube-proxy rules go through iptables-legacy instead of the
    /// system's `iptables-restore` (iptables-nft on Debian 12).
    pub iptables_legacy: bool,
    /// File name of the outputs: `latest` for a full run, `quick` for the smoke mode, so a
    /// smoke run never overwrites the committed full results.
    pub stem: &'static str,
}

pub const USAGE: &str = "usage: sluice-bench [--quick] [--rounds N] [--seconds S] \
[--only SCENARIO,...] [--results-dir DIR] [--agent-arg A]... [--iptables-legacy]
  --quick        smoke mode: 3 rounds of ~1 s per measurement, 20 pods for cni-add/cni-del,
                 1 round of svc-program-10000 and of agent-rss-policies, 20 policy-apply
                 changes, 1 round of manifests-idle-10k with a 2 s idle window and of
                 agent-rss-remote-pods
                 (writes quick.json/quick.svg/quick.md, not latest.*)
  --rounds N     rounds per scenario (default 5; each figure is the median of N runs)
  --seconds S    measured seconds per traffic run (default 5)
  --only LIST    comma-separated scenarios among: pod-pod-rr-1b pod-pod-rr-1k pod-pod-crr
                 pod-pod-stream sockmap-rr-1b-1conn sockmap-rr-1k-1conn sockmap-rr-1b-64conn
                 sockmap-rr-1k-64conn sockmap-loopback-rr-1b sockmap-rr-1b-1conn-unpinned
                 sockmap-loopback-rr-1b-unpinned sockmap-stream cni-add cni-del cni-add-parallel-100 svc-crr-10 svc-crr-1000 svc-crr-10000 svc-rr-10000
                 svc-program-10000 policy-rr-1b policy-stream policy-apply agent-rss-policies
                 manifests-idle-10k agent-rss-remote-pods xnode-rr-1b xnode-crr xnode-stream;
                 the records measured replace those of the same scenarios in the existing
                 results, the others are kept
  --results-dir  where the JSON, SVG and Markdown go (default bench/results)
  --agent-arg A  pass A to both Sluice agents (repeatable), e.g. --agent-arg --no-masquerade;
                 not --sockmap: the run measures Sluice with and without it
  --iptables-legacy  the svc-* scenarios' kube-proxy rules through iptables-legacy-restore
                 instead of the system's iptables-restore (iptables-nft on Debian 12)";

impl Config {
    pub fn from_args(args: &[String]) -> Result<Self> {
        let quick = args.iter().any(|a| a == "--quick");
        let mut c = Config {
            quick,
            rounds: if quick { 3 } else { 5 },
            timing: Timing {
                seconds: if quick { 1.0 } else { 5.0 },
                warmup: if quick { 0.2 } else { 0.5 },
            },
            cni_pods: if quick { 20 } else { 100 },
            parallel_pods: 100,
            policy_changes: if quick { 20 } else { 100 },
            only: Vec::new(),
            results_dir: PathBuf::from("bench/results"),
            agent_args: Vec::new(),
            iptables_legacy: false,
            stem: if quick { "quick" } else { "latest" },
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| Error::msg(format!("{a} needs a value")))
            };
            match a.as_str() {
                "--quick" => {}
                "--rounds" => {
                    c.rounds = value()?
                        .parse()
                        .ok()
                        .filter(|n| (1..=50).contains(n))
                        .ok_or_else(|| Error::msg("--rounds must be within 1..=50"))?;
                }
                "--seconds" => {
                    c.timing.seconds = value()?
                        .parse()
                        .ok()
                        .filter(|s: &f64| (0.5..=60.0).contains(s))
                        .ok_or_else(|| Error::msg("--seconds must be within 0.5..=60"))?;
                }
                "--only" => {
                    c.only = value()?.split(',').map(str::to_string).collect();
                    if let Some(bad) = c.only.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
                        return Err(Error::msg(format!("unknown scenario {bad:?}")));
                    }
                }
                "--results-dir" => c.results_dir = PathBuf::from(value()?),
                "--iptables-legacy" => c.iptables_legacy = true,
                "--agent-arg" => {
                    let arg = value()?;
                    if arg.starts_with("--sockmap") {
                        return Err(Error::msg(
                            "--agent-arg --sockmap: the run measures Sluice with and without it",
                        ));
                    }
                    c.agent_args.push(arg);
                }
                other => return Err(Error::msg(format!("unknown argument {other:?}"))),
            }
        }
        Ok(c)
    }

    pub(super) fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }
}

/// Runs the benchmark. Everything it builds is released before it returns, error or not.
pub fn run(cfg: &Config) -> Result<()> {
    preflight()?;
    let started = Instant::now();
    let machine = super::machine::describe();
    eprintln!("sluice-bench: {}", machine.replace('\n', "\n  "));
    eprintln!(
        "sluice-bench: {} mode, {} rounds, {} s per traffic run (+{} s warm-up), binaries in {}",
        if cfg.quick { "quick" } else { "full" },
        cfg.rounds,
        cfg.timing.seconds,
        cfg.timing.warmup,
        test_support::bin_dir().display()
    );
    if !cfg.agent_args.is_empty() {
        eprintln!("sluice-bench: agent flags {}", cfg.agent_args.join(" "));
    }
    let mut res = Results::default();
    let mut counters = Vec::new();
    let elsewhere = |s: &&str| {
        svc::SCENARIOS.contains(s)
            || policy::SCENARIOS.contains(s)
            || manifests::SCENARIOS.contains(s)
            || remote_pods::SCENARIOS.contains(s)
            || xnode::SCENARIOS.contains(s)
    };
    if SCENARIOS.iter().any(|s| !elsewhere(s) && cfg.wants(s)) {
        counters = pod_scenarios(cfg, &mut res)?;
    }
    counters.extend(svc::run(cfg, &mut res)?);
    counters.extend(policy::run(cfg, &mut res)?);
    counters.extend(manifests::run(cfg, &mut res)?);
    counters.extend(remote_pods::run(cfg, &mut res)?);
    counters.extend(xnode::run(cfg, &mut res)?);
    let elapsed = started.elapsed();
    let summary = format!(
        "{machine}\nsluice agent flags: {} (sluice-nosockmap: the same and --sockmap=false)\n\
         {}\n\
         mode: {}, {} rounds, {} s per traffic run; took {:.0} s, load average at end {}",
        if cfg.agent_args.is_empty() {
            "defaults".to_string()
        } else {
            cfg.agent_args.join(" ")
        },
        counters.join("\n"),
        if cfg.quick { "quick" } else { "full" },
        cfg.rounds,
        cfg.timing.seconds,
        elapsed.as_secs_f64(),
        super::machine::loadavg()
    );
    println!("\n{}", res.table());
    for line in res.targets() {
        println!("target  {line}");
    }
    super::saved::write(cfg, &mut res, &summary)?;
    println!("\n{summary}");
    Ok(())
}

/// The scenarios of the four systems (pod to pod, socket acceleration, CNI), built here and
/// released before it returns; returns the Sluice nodes' counter lines for the summary.
fn pod_scenarios(cfg: &Config, res: &mut Results) -> Result<Vec<String>> {
    eprintln!("sluice-bench: building the sluice, sluice-nosockmap, veth and bridge topologies");
    let sluice = Sluice::new(&cfg.agent_args)?;
    let nosockmap = Sluice::without_sockmap(&cfg.agent_args)?;
    let veth = Veth::new()?;
    let bridge = Bridge::new()?;
    let all: [&dyn System; 4] = [&sluice, &nosockmap, &veth, &bridge];
    let with_cni: [&dyn System; 2] = [&sluice, &bridge];
    let t = cfg.timing;

    for sc in &POD_POD {
        load_scenario(cfg, &all, sc, res)?;
    }

    let (stream, alias) = ("pod-pod-stream", "sockmap-stream");
    if cfg.wants(stream) || cfg.wants(alias) {
        let systems: Vec<&dyn System> = all
            .iter()
            .copied()
            .filter(|s| cfg.wants(stream) || is_sluice(s.name()))
            .collect();
        let label = if cfg.wants(stream) { stream } else { alias };
        rounds(cfg.rounds, &systems, label, |sys| {
            let r0 = sys.redirected_bytes();
            let s = measure::stream(sys, t)?;
            let redirected = sys.redirected_bytes().zip(r0).map(|(b, a)| b - a);
            let name = sys.name();
            let (cpu, soft) = (s.cpu_ms_per_gb(), s.softirq_ms_per_gb());
            if cfg.wants(stream) {
                res.add(stream, "throughput", "Gbit/s", true, name, s.gbit_s);
                res.add(stream, "cpu-per-gb", "ms", false, name, cpu);
                res.add(stream, "softirq-per-gb", "ms", false, name, soft);
            }
            if cfg.wants(alias) && is_sluice(name) {
                res.add(alias, "throughput", "Gbit/s", true, name, s.gbit_s);
                res.add(alias, "cpu-per-gb", "ms", false, name, cpu);
            }
            let mut line = format!("{} Gbit/s, cpu {} ms/GB", num(s.gbit_s), num(cpu));
            if let Some(b) = redirected {
                line.push_str(&format!(", sk_msg {} GB", num(b as f64 / 1e9)));
            }
            Ok(line)
        })?;
    }

    for sc in &SOCKMAP {
        load_scenario(cfg, &all, sc, res)?;
    }

    if cfg.wants("cni-add") || cfg.wants("cni-del") {
        let label = format!("cni-add/cni-del ({} pods)", cfg.cni_pods);
        rounds(cfg.rounds, &with_cni, &label, |sys| {
            let plugin = sys.cni().expect("a system with a CNI plugin");
            let s = cni::sequential(&plugin, cfg.cni_pods)?;
            let name = sys.name();
            let mut line = Vec::new();
            for (scenario, ms, h) in [
                ("cni-add", &s.add_ms, &s.add_hist),
                ("cni-del", &s.del_ms, &s.del_hist),
            ] {
                let mut sorted = ms.clone();
                sorted.sort_by(f64::total_cmp);
                let (p50, p99) = (pct(&sorted, 0.5), pct(&sorted, 0.99));
                res.add(scenario, "p50", "ms", false, name, p50);
                res.add(scenario, "p99", "ms", false, name, p99);
                res.add_dist(scenario, "plugin exec to exit", name, h);
                line.push(format!(
                    "{scenario} p50 {} ms p99 {} ms",
                    num(p50),
                    num(p99)
                ));
            }
            Ok(line.join(", "))
        })?;
    }

    if cfg.wants("cni-add-parallel-100") {
        let scenario = "cni-add-parallel-100";
        rounds(cfg.rounds, &with_cni, scenario, |sys| {
            let plugin = sys.cni().expect("a system with a CNI plugin");
            let p = cni::parallel(&plugin, cfg.parallel_pods)?;
            let name = sys.name();
            res.add(scenario, "seconds", "s", false, name, p.seconds);
            res.add(
                scenario,
                "failures",
                "count",
                false,
                name,
                p.failures as f64,
            );
            let mut line = format!("{} s, {} failures", num(p.seconds), p.failures);
            if let Some(f) = p.first_failure {
                line.push_str(&format!(" (first: {f})"));
            }
            Ok(line)
        })?;
    }

    let paths = sluice.path_report().unwrap_or_else(|| "?".into());
    let tc_paths = nosockmap.path_report().unwrap_or_else(|| "?".into());
    Ok(vec![
        format!("sluice datapath counters after the run: {paths}"),
        format!("sluice-nosockmap datapath counters after the run: {tc_paths}"),
    ])
}

fn is_sluice(system: &str) -> bool {
    system == "sluice" || system == "sluice-nosockmap"
}

/// Rounds of one `sluice-load` scenario on `systems` (on the two Sluice systems only when
/// the scenario is `sluice_only`, or when only its alias is wanted).
fn load_scenario(
    cfg: &Config,
    systems: &[&dyn System],
    sc: &LoadScenario,
    res: &mut Results,
) -> Result<()> {
    let primary = cfg.wants(sc.name);
    let alias = sc.alias.filter(|a| cfg.wants(a));
    if !primary && alias.is_none() {
        return Ok(());
    }
    let systems: Vec<&dyn System> = systems
        .iter()
        .copied()
        .filter(|s| primary && !sc.sluice_only || is_sluice(s.name()))
        .collect();
    // Named for what is recorded: the alias alone when only it is wanted.
    let label = if primary {
        sc.name
    } else {
        alias.unwrap_or(sc.name)
    };
    let l = sc.load;
    let unit = if l.mode == Mode::Crr {
        "conn/s"
    } else {
        "req/s"
    };
    rounds(cfg.rounds, &systems, label, |sys| {
        let r0 = sys.redirected_bytes();
        let s = measure::load(sys, l, cfg.timing)?;
        let redirected = sys.redirected_bytes().zip(r0).map(|(b, a)| b - a);
        let c = &s.client;
        let name = sys.name();
        let (cpu, soft) = (s.cpu_us_per_req(), s.softirq_us_per_req());
        // The socket acceleration records: the three figures and the CPU behind them.
        let sockmap = sc.name.starts_with("sockmap-");
        let names = [
            primary.then_some(sc.name),
            alias.filter(|_| is_sluice(name)),
        ];
        for scenario in names.into_iter().flatten() {
            res.add(scenario, "rate", unit, true, name, c.rate);
            res.add(scenario, "p50", "us", false, name, c.p50_us);
            res.add(scenario, "p99", "us", false, name, c.p99_us);
            res.add(scenario, "cpu-per-req", "us", false, name, cpu);
            if !sockmap && scenario == sc.name {
                res.add(scenario, "softirq-per-req", "us", false, name, soft);
            }
        }
        res.add_dist(
            label,
            sc.title,
            name,
            c.connect.as_ref().unwrap_or(&c.latency),
        );
        let mut line = format!(
            "{} {unit}, p50 {} µs, p99 {} µs, cpu {} µs/req, {} errors",
            num(c.rate),
            num(c.p50_us),
            num(c.p99_us),
            num(cpu),
            c.errors
        );
        if let Some(b) = redirected {
            // Every transaction sends `size` bytes each way (the warm-up's included, as the
            // counter's are): the share of that payload sk_msg carried.
            let payload = 2.0 * l.size as f64 * c.transactions_total.max(1) as f64;
            line.push_str(&format!(
                ", sk_msg {:.0} % of payload",
                b as f64 * 100.0 / payload
            ));
        }
        Ok(line)
    })
}

/// What [`rounds`] needs of a system: the name its lines carry.
pub(super) trait Named {
    fn name(&self) -> &'static str;
}

impl Named for dyn System + '_ {
    fn name(&self) -> &'static str {
        System::name(self)
    }
}

/// `n` rounds of `measure` on every system, the order rotated each round.
pub(super) fn rounds<S: Named + ?Sized>(
    n: usize,
    systems: &[&S],
    label: &str,
    mut measure: impl FnMut(&S) -> Result<String>,
) -> Result<()> {
    eprintln!("\n{label}");
    for round in 0..n {
        for i in 0..systems.len() {
            check_interrupted()?;
            let sys = systems[(i + round) % systems.len()];
            let t = Instant::now();
            let line = measure(sys)
                .with_context(|| format!("{label}, round {}, {}", round + 1, sys.name()))?;
            eprintln!(
                "  round {}/{} {:<16} {line}  ({:.1} s)",
                round + 1,
                n,
                sys.name(),
                t.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

/// The `q` quantile of sorted samples (nearest rank).
pub(super) fn pct(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn preflight() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::msg(
            "run as root: the benchmark creates namespaces and loads eBPF programs",
        ));
    }
    for tool in [
        "iperf3",
        "iptables",
        "iptables-restore",
        "nsenter",
        "ip",
        "sysctl",
    ] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return Err(Error::msg(format!(
                "{tool} not found: run scripts/setup (bench/run does)"
            )));
        }
    }
    for b in ["sluice-agent", "sluice-cni", "sluicectl", "sluice-load"] {
        let p = test_support::bin_dir().join(b);
        if !p.exists() {
            return Err(Error::msg(format!(
                "{} not found: build it (bench/run builds release binaries) or set SLUICE_BIN_DIR",
                p.display()
            )));
        }
    }
    Ok(())
}

/// Namespaces this process made that still exist (the fixture's and the harness's names all
/// carry the process id, see [`test_support::unique`]).
pub fn leftovers() -> Vec<String> {
    let tag = format!("{}x", std::process::id() % 100_000);
    let Ok(rd) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            [
                "sln", "slo", "slp", "slu", "slbv", "slbn", "slbp", "slxu", "slxn", "slxp",
            ]
            .iter()
            .any(|p| n.strip_prefix(p).is_some_and(|r| r.starts_with(&tag)))
        })
        .collect()
}
