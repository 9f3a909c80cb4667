//! One benchmark run: build the three systems once, then for each scenario run rounds in which
//! every system is measured once, the order rotated each round (S V B, V B S, B S V, …) so
//! that drift on the machine hits every system alike; then print and write the results.

use std::{path::PathBuf, time::Instant};

use super::{
    check_interrupted, cni,
    load::Mode,
    measure::{self, Timing},
    report::{num, Results},
    svg,
    topo::{Bridge, Sluice, System, Veth},
    Context as _, Error, Result,
};

pub const SCENARIOS: [&str; 7] = [
    "pod-pod-rr-1b",
    "pod-pod-rr-1k",
    "pod-pod-crr",
    "pod-pod-stream",
    "cni-add",
    "cni-del",
    "cni-add-parallel-100",
];

pub struct Config {
    pub quick: bool,
    pub rounds: usize,
    pub timing: Timing,
    /// Pods ADDed then DELed one by one per round (`cni-add`, `cni-del`).
    pub cni_pods: usize,
    /// Pods ADDed at once per round (`cni-add-parallel-100`).
    pub parallel_pods: usize,
    /// Scenarios to run (all when empty).
    pub only: Vec<String>,
    pub results_dir: PathBuf,
    /// Extra flags for Sluice's agent (`--agent-arg --sockmap=false`).
    pub agent_args: Vec<String>,
    /// File name of the outputs: `latest` for a full run, `quick` for the smoke mode, so a
    /// smoke run never overwrites the committed full results.
    pub stem: &'static str,
}

pub const USAGE: &str = "usage: sluice-bench [--quick] [--rounds N] [--seconds S] \
[--only SCENARIO,...] [--results-dir DIR] [--agent-arg A]...
  --quick        smoke mode: 3 rounds of ~1 s per measurement, 20 pods for cni-add/cni-del
                 (writes quick.json/quick.svg/quick.md, not latest.*)
  --rounds N     rounds per scenario (default 5; each figure is the median of N runs)
  --seconds S    measured seconds per traffic run (default 5)
  --only LIST    comma-separated scenarios among: pod-pod-rr-1b pod-pod-rr-1k pod-pod-crr
                 pod-pod-stream cni-add cni-del cni-add-parallel-100
  --results-dir  where the JSON, SVG and Markdown go (default bench/results)
  --agent-arg A  pass A to Sluice's agent (repeatable), e.g. --agent-arg --sockmap=false";

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
            only: Vec::new(),
            results_dir: PathBuf::from("bench/results"),
            agent_args: Vec::new(),
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
                "--agent-arg" => c.agent_args.push(value()?),
                other => return Err(Error::msg(format!("unknown argument {other:?}"))),
            }
        }
        Ok(c)
    }

    fn wants(&self, scenario: &str) -> bool {
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
        crate::bin_dir().display()
    );
    if !cfg.agent_args.is_empty() {
        eprintln!("sluice-bench: agent flags {}", cfg.agent_args.join(" "));
    }
    eprintln!("sluice-bench: building the sluice, veth and bridge topologies");
    let sluice = Sluice::new(&cfg.agent_args)?;
    let veth = Veth::new()?;
    let bridge = Bridge::new()?;
    let all: [&dyn System; 3] = [&sluice, &veth, &bridge];
    let with_cni: [&dyn System; 2] = [&sluice, &bridge];
    let mut res = Results::default();
    let t = cfg.timing;

    for (scenario, mode, size, title) in [
        (
            "pod-pod-rr-1b",
            Mode::Rr,
            1,
            "request/response latency, 1 B",
        ),
        (
            "pod-pod-rr-1k",
            Mode::Rr,
            1024,
            "request/response latency, 1 KiB",
        ),
        ("pod-pod-crr", Mode::Crr, 1, "connect time"),
    ] {
        if !cfg.wants(scenario) {
            continue;
        }
        let unit = if mode == Mode::Crr { "conn/s" } else { "req/s" };
        rounds(cfg, &all, scenario, |sys| {
            let s = measure::load(sys, mode, size, t)?;
            let c = &s.client;
            let name = sys.name();
            res.add(scenario, "rate", unit, true, name, c.rate);
            res.add(scenario, "p50", "us", false, name, c.p50_us);
            res.add(scenario, "p99", "us", false, name, c.p99_us);
            res.add(
                scenario,
                "cpu-per-req",
                "us",
                false,
                name,
                s.cpu_us_per_req(),
            );
            let soft = s.softirq_us_per_req();
            res.add(scenario, "softirq-per-req", "us", false, name, soft);
            res.add_dist(
                scenario,
                title,
                name,
                c.connect.as_ref().unwrap_or(&c.latency),
            );
            Ok(format!(
                "{} {unit}, p50 {} µs, p99 {} µs, cpu {} µs/req, {} errors",
                num(c.rate),
                num(c.p50_us),
                num(c.p99_us),
                num(s.cpu_us_per_req()),
                c.errors
            ))
        })?;
    }

    if cfg.wants("pod-pod-stream") {
        rounds(cfg, &all, "pod-pod-stream", |sys| {
            let s = measure::stream(sys, t)?;
            let name = sys.name();
            res.add(
                "pod-pod-stream",
                "throughput",
                "Gbit/s",
                true,
                name,
                s.gbit_s,
            );
            let (cpu, soft) = (s.cpu_ms_per_gb(), s.softirq_ms_per_gb());
            res.add("pod-pod-stream", "cpu-per-gb", "ms", false, name, cpu);
            res.add("pod-pod-stream", "softirq-per-gb", "ms", false, name, soft);
            Ok(format!("{} Gbit/s, cpu {} ms/GB", num(s.gbit_s), num(cpu)))
        })?;
    }

    if cfg.wants("cni-add") || cfg.wants("cni-del") {
        let label = format!("cni-add/cni-del ({} pods)", cfg.cni_pods);
        rounds(cfg, &with_cni, &label, |sys| {
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
        rounds(cfg, &with_cni, scenario, |sys| {
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
    drop((sluice, veth, bridge));
    let elapsed = started.elapsed();
    let summary = format!(
        "{machine}\nsluice agent flags: {}\nsluice datapath counters after the run: {paths}\n\
         mode: {}, {} rounds, {} s per traffic run; took {:.0} s, load average at end {}",
        if cfg.agent_args.is_empty() {
            "defaults".to_string()
        } else {
            cfg.agent_args.join(" ")
        },
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
    write_outputs(cfg, &res, &summary)?;
    println!("\n{summary}");
    Ok(())
}

/// `--rounds` rounds of `measure` on every system, the order rotated each round.
fn rounds(
    cfg: &Config,
    systems: &[&dyn System],
    label: &str,
    mut measure: impl FnMut(&dyn System) -> Result<String>,
) -> Result<()> {
    eprintln!("\n{label}");
    for round in 0..cfg.rounds {
        for i in 0..systems.len() {
            check_interrupted()?;
            let sys = systems[(i + round) % systems.len()];
            let t = Instant::now();
            let line = measure(sys)
                .with_context(|| format!("{label}, round {}, {}", round + 1, sys.name()))?;
            eprintln!(
                "  round {}/{} {:<7} {line}  ({:.1} s)",
                round + 1,
                cfg.rounds,
                sys.name(),
                t.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

/// The `q` quantile of sorted samples (nearest rank).
fn pct(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn preflight() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::msg(
            "run as root: the benchmark creates namespaces and loads eBPF programs",
        ));
    }
    for tool in ["iperf3", "iptables", "nsenter", "ip", "sysctl"] {
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
    for b in ["sluice-agent", "sluice-cni", "sluice-load"] {
        let p = crate::bin_dir().join(b);
        if !p.exists() {
            return Err(Error::msg(format!(
                "{} not found: build it (bench/run builds release binaries) or set SLUICE_BIN_DIR",
                p.display()
            )));
        }
    }
    Ok(())
}

/// Writes `<stem>.json`, `<stem>.svg` and `<stem>.md`, each through a `.tmp` and a rename.
fn write_outputs(cfg: &Config, res: &Results, summary: &str) -> Result<()> {
    let dir = &cfg.results_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let json = serde_json::to_string_pretty(&res.json()).context("encode the results")? + "\n";
    let title = format!(
        "Sluice vs veth vs bridge: latency by percentile ({} mode, {} rounds merged)",
        if cfg.quick { "quick" } else { "full" },
        cfg.rounds
    );
    let svg = svg::render(&title, &res.dists);
    let md = format!(
        "{}\n{}\n```text\n{summary}\n```\n",
        res.markdown(),
        res.targets()
            .iter()
            .map(|t| format!("- {t}\n"))
            .collect::<String>()
    );
    for (ext, text) in [("json", json), ("svg", svg), ("md", md)] {
        let path = dir.join(format!("{}.{ext}", cfg.stem));
        let tmp = dir.join(format!("{}.{ext}.tmp", cfg.stem));
        std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("rename to {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Namespaces this process made that still exist (the fixture's and the harness's names all
/// carry the process id, see [`crate::unique`]).
pub fn leftovers() -> Vec<String> {
    let tag = format!("{}x", std::process::id() % 100_000);
    let Ok(rd) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            ["sln", "slo", "slp", "slbv", "slbn", "slbp"]
                .iter()
                .any(|p| n.strip_prefix(p).is_some_and(|r| r.starts_with(&tag)))
        })
        .collect()
}
