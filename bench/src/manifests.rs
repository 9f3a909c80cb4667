//! The standalone manifest reader's scenario, on a node of its own:
//!
//! - `manifests-idle-10k`: per round a fresh node whose agent follows an empty manifests
//!   directory; its CPU (fraction of one core, from `/proc/PID/stat` over a window of
//!   [`window`] seconds) and VmRSS idle (`sluice-empty`); then 10,000 small Pod files are
//!   written and, once the agent published all of them and they settled, the same idle
//!   figures (`sluice`); then the files are removed and, once the agent published an empty
//!   state and it settled, its VmRSS again (`mib-removed`). `load-s` is the time from the first
//!   file written to the state with all 10,000 pods published (from the agent's log line,
//!   which the old polling reader writes too, so the same scenario measures it).

use std::time::{Duration, Instant};

use test_support::{Node, NodeOptions};

use super::{
    check_interrupted,
    policy::system::{agent_memory, wait_until},
    report::{num, Results},
    run::Config,
    Context as _, Error, Result,
};

pub const SCENARIOS: [&str; 1] = ["manifests-idle-10k"];
const FILES: usize = 10_000;
/// After the state is published: the agent reconciles it, the old polling reader's racy
/// window (2 s) passes, and the new reader gives freed memory back (2 s after a removal).
const SETTLE: Duration = Duration::from_secs(4);

/// The idle window: 10 s, 2 s in `--quick`.
fn window(cfg: &Config) -> Duration {
    Duration::from_secs(if cfg.quick { 2 } else { 10 })
}

/// Runs `manifests-idle-10k` if wanted; returns a line for the run's summary.
pub fn run(cfg: &Config, res: &mut Results) -> Result<Vec<String>> {
    let scenario = SCENARIOS[0];
    if !cfg.wants(scenario) {
        return Ok(Vec::new());
    }
    let n_rounds = if cfg.quick { 1 } else { cfg.rounds };
    let window = window(cfg);
    eprintln!(
        "\n{scenario} ({FILES} Pod files; idle CPU over {} s; a fresh node and agent per round)",
        window.as_secs()
    );
    let mut line = String::new();
    for round in 0..n_rounds {
        check_interrupted()?;
        let t = Instant::now();
        let node = Node::new(NodeOptions {
            manifests: true,
            agent_args: crate::topo::one_node_args(&cfg.agent_args),
            ..NodeOptions::default()
        });
        std::thread::sleep(SETTLE);
        let empty_cpu = idle_cpu(&node, window)?;
        let (empty_mib, _) = agent_memory(&node)?;

        let dir = node.manifests_dir();
        let written = Instant::now();
        for i in 0..FILES {
            std::fs::write(dir.join(format!("pod-{i:05}.yaml")), pod(i))
                .with_context(|| format!("write pod file {i}"))?;
        }
        wait_until(
            &node,
            "the agent publishes 10,000 pods",
            Duration::from_secs(300),
            || Ok(published(&node) == Some(FILES)),
        )?;
        let load = written.elapsed().as_secs_f64();
        std::thread::sleep(SETTLE);
        let cpu = idle_cpu(&node, window)?;
        let (mib, peak) = agent_memory(&node)?;

        for i in 0..FILES {
            std::fs::remove_file(dir.join(format!("pod-{i:05}.yaml")))
                .with_context(|| format!("remove pod file {i}"))?;
        }
        wait_until(
            &node,
            "the agent publishes the empty state",
            Duration::from_secs(300),
            || Ok(published(&node) == Some(0)),
        )?;
        std::thread::sleep(SETTLE);
        let (removed_mib, _) = agent_memory(&node)?;

        res.add(scenario, "cpu", "core", false, "sluice", cpu);
        res.add(scenario, "cpu", "core", false, "sluice-empty", empty_cpu);
        res.add(scenario, "mib", "MiB", false, "sluice", mib);
        res.add(scenario, "mib", "MiB", false, "sluice-empty", empty_mib);
        res.add(scenario, "mib-removed", "MiB", false, "sluice", removed_mib);
        res.add(scenario, "peak-mib", "MiB", false, "sluice", peak);
        res.add(scenario, "load-s", "s", false, "sluice", load);
        line = format!(
            "idle with {FILES} files: cpu {} of a core, VmRSS {} MiB (peak {}); empty: cpu {}, \
             {} MiB; after removing them {} MiB; loaded in {} s",
            num(cpu),
            num(mib),
            num(peak),
            num(empty_cpu),
            num(empty_mib),
            num(removed_mib),
            num(load)
        );
        eprintln!(
            "  round {}/{n_rounds} {:<16} {line}  ({:.1} s)",
            round + 1,
            "sluice",
            t.elapsed().as_secs_f64()
        );
    }
    Ok(vec![format!("{scenario}, last round: {line}")])
}

/// A small Pod of another node, as `kubectl get pod -o yaml` would give it (trimmed).
fn pod(i: usize) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: pod-{i}
  namespace: bench
  labels:
    app: app-{}
spec:
  nodeName: node-2
  containers:
  - name: app
    image: registry.example/app:1.0
    ports:
    - containerPort: 8080
status:
  phase: Running
  podIP: 10.245.{}.{}
",
        i % 100,
        i / 250,
        i % 250 + 1
    )
}

/// The object count of the last state the agent published (its log line).
fn published(node: &Node) -> Option<usize> {
    let log = node.agent_log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("publishing cluster state"))?;
    let (_, rest) = line.split_once("objects=")?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The agent's CPU time over `window`, as a fraction of one core (user + system, in the
/// kernel's clock ticks of 10 ms: a resolution of 0.001 core over 10 s).
fn idle_cpu(node: &Node, window: Duration) -> Result<f64> {
    let pid = node
        .agent_pid()
        .ok_or_else(|| Error::msg("the agent is not running"))?;
    let ticks = || -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("read /proc/{pid}/stat"))?;
        // Fields after the command (which may hold spaces): state is field 3, utime 14.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or_else(|| Error::msg("no command in /proc/PID/stat"))?;
        let f: Vec<f64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|v| v.parse().ok())
            .collect();
        match f[..] {
            [utime, stime] => Ok(utime + stime),
            _ => Err(Error::msg("no utime/stime in /proc/PID/stat")),
        }
    };
    let (t0, c0) = (Instant::now(), ticks()?);
    std::thread::sleep(window);
    let c1 = ticks()?;
    Ok((c1 - c0) / 100.0 / t0.elapsed().as_secs_f64())
}
