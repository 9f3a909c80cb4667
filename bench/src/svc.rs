//! The Service scenarios (issue 4): a pod connects to ClusterIPs of 10, 1,000 or 10,000
//! Services, **Sluice against kube-proxy's iptables mode**, in the same run as the others.
//!
//! ```text
//! sluice    client pod ─veth─ node (agent --manifests: socket LB, TC, sockmap) ─veth─ 3 backends
//! iptables  client pod ─veth─ node (cni0, kube-proxy's nat rules, conntrack) ──veth─ 3 backends
//! ```
//! Every Service (`default/s{i}`, ClusterIP 10.96.0.10 + i, port 80 → 7000) selects the same
//! three backend pods, each running the load server; the client opens every connection to a
//! Service picked uniformly at random among the N (`sluice-load --spread N`), so iptables'
//! linear walk of `KUBE-SERVICES` costs what it costs on average, not its best case.
//!
//! [`sluice::SluiceSvc`] is a fixture node whose agent runs its defaults and `--manifests`;
//! [`iptables::IptablesSvc`] is the reference bridge CNI node with the rules kube-proxy writes
//! ([`kubeproxy`]). Each round checks that its connections really went through the system's
//! Service translation: the socket LB's counter for Sluice, DNATed entries in the node's
//! conntrack for iptables; and before any Service is programmed, a ClusterIP must not answer.
//!
//! Programming time (`svc-program-10000`): Sluice, from the rename that makes the manifest of
//! 10,000 Services visible (none programmed before) until the frontends map holds all 10,000
//! with their backends; iptables, the `iptables-restore` of kube-proxy's full rule set for
//! them into a freshly built bridge CNI node (kube-proxy's first sync on a node).

pub mod iptables;
pub mod kubeproxy;
pub mod sluice;

use std::{
    ffi::OsStr,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use super::{
    check_interrupted,
    load::{ClientReport, Mode, ServerReport},
    measure::{self, Guarded, Timing, LOAD_PORT},
    report::{num, Results},
    run::{rounds, Config, Named},
    Context as _, Error, Result,
};
use iptables::IptablesSvc;
use kubeproxy::Services;
use sluice::SluiceSvc;

pub const SCENARIOS: [&str; 5] = [
    "svc-crr-10",
    "svc-crr-1000",
    "svc-crr-10000",
    "svc-rr-10000",
    "svc-program-10000",
];
const BACKENDS: usize = 3;
const FIRST_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const SERVICE_PORT: u16 = 80;
/// The agent re-reads a manifest modified less than 2 s ago on every rescan
/// (`daemon::manifests::dir::RACY_WINDOW`), and the kernel frees a deleted namespace's rules
/// in the background: measurements start after either has settled.
const SETTLE: Duration = Duration::from_millis(2500);

/// A pod of a Service system.
#[derive(Clone, Copy, Debug)]
pub enum PodRef {
    Client,
    /// The i-th backend, in the order of [`SvcSystem::backends`].
    Backend(usize),
}

/// A system of the Service scenarios.
pub trait SvcSystem {
    /// `sluice` or `iptables`.
    fn name(&self) -> &'static str;
    /// The backend pods' addresses.
    fn backends(&self) -> Vec<Ipv4Addr>;
    /// `program` run as a process of `pod` (exec'd, nothing between, so its rusage is its own).
    fn pod_command(&self, pod: PodRef, program: &OsStr) -> Command;
    /// Makes Services `0..n` exactly the programmed set; returns once they are live.
    fn program(&self, n: usize) -> Result<()>;
    /// Seconds to program `n` Services where none were (see the module documentation); `n`
    /// are programmed afterwards.
    fn time_program(&self, n: usize) -> Result<f64>;
    /// Makes the system ready for a measurement that must not inherit the previous one's
    /// state.
    fn prepare(&self) -> Result<()>;
    /// A counter taken before a run, for [`SvcSystem::translated`].
    fn snapshot(&self) -> Result<u64>;
    /// Checks that the `connections` of the run since `before` went through the system's
    /// Service translation; says how, for the round line.
    fn translated(&self, before: u64, connections: u64) -> Result<String>;
    /// A line on the system for the run's summary.
    fn summary(&self) -> String;
}

impl Named for dyn SvcSystem + '_ {
    fn name(&self) -> &'static str {
        SvcSystem::name(self)
    }
}

/// The Services of every scenario, with `endpoints` as backends.
fn services(endpoints: &[Ipv4Addr]) -> Services<'_> {
    Services {
        first_ip: FIRST_CLUSTER_IP,
        port: SERVICE_PORT,
        endpoints,
        target_port: LOAD_PORT,
    }
}

/// Runs the wanted Service scenarios on both systems, built here and released before it
/// returns; returns lines for the run's summary. `svc-program-10000` goes before
/// `svc-crr-10000`: its last round leaves the 10,000 Services programmed on both systems.
pub fn run(cfg: &Config, res: &mut Results) -> Result<Vec<String>> {
    if !SCENARIOS.iter().any(|s| cfg.wants(s)) {
        return Ok(Vec::new());
    }
    eprintln!(
        "\nsluice-bench: building the Service systems: sluice (agent --manifests) and iptables \
         (bridge CNI + kube-proxy's rules through {}), {BACKENDS} backend pods each",
        iptables::restore_program(cfg.iptables_legacy)
    );
    let sluice = SluiceSvc::new(&cfg.agent_args)?;
    let iptables = IptablesSvc::new(cfg.iptables_legacy)?;
    let systems: [&dyn SvcSystem; 2] = [&sluice, &iptables];
    for n in [10, 1_000] {
        let crr = format!("svc-crr-{n}");
        if cfg.wants(&crr) {
            program(&systems, n)?;
            crr_rounds(cfg, &systems, n, res)?;
        }
    }
    let program_10k = "svc-program-10000";
    if cfg.wants(program_10k) {
        // iptables-nft takes minutes for this one: the smoke run does it once.
        let n_rounds = if cfg.quick { 1 } else { cfg.rounds };
        rounds(n_rounds, &systems, program_10k, |sys| {
            let s = sys.time_program(10_000)?;
            res.add(program_10k, "seconds", "s", false, SvcSystem::name(sys), s);
            Ok(format!("{} s", num(s)))
        })?;
    }
    let rr = "svc-rr-10000";
    if cfg.wants("svc-crr-10000") || cfg.wants(rr) {
        program(&systems, 10_000)?;
        if cfg.wants("svc-crr-10000") {
            crr_rounds(cfg, &systems, 10_000, res)?;
        }
        if cfg.wants(rr) {
            let title = "request/response latency, 10000 Services";
            rounds(cfg.rounds, &systems, rr, |sys| {
                let (c, line) = load(sys, Mode::Rr, 10_000, cfg.timing)?;
                let name = SvcSystem::name(sys);
                res.add(rr, "rate", "req/s", true, name, c.rate);
                res.add_dist(rr, title, name, &c.latency);
                Ok(format!(
                    "{} req/s, p99 {} µs, {line}",
                    num(c.rate),
                    num(c.p99_us)
                ))
            })?;
        }
    }
    Ok(systems.iter().map(|s| s.summary()).collect())
}

/// Programs Services `0..n` on every system (untimed setup).
fn program(systems: &[&dyn SvcSystem], n: usize) -> Result<()> {
    for sys in systems {
        check_interrupted()?;
        let t = Instant::now();
        sys.program(n)?;
        eprintln!(
            "  {n} Services programmed on {} ({:.1} s, untimed setup)",
            SvcSystem::name(*sys),
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// The rounds of `svc-crr-{n}`: connection rate and first-connection latency.
fn crr_rounds(cfg: &Config, systems: &[&dyn SvcSystem], n: usize, res: &mut Results) -> Result<()> {
    let scenario = format!("svc-crr-{n}");
    let title = format!("first-connection latency, {n} Services");
    rounds(cfg.rounds, systems, &scenario, |sys| {
        let (c, line) = load(sys, Mode::Crr, n, cfg.timing)?;
        let first = c
            .first
            .as_ref()
            .ok_or_else(|| Error::msg("no first-connection histogram in the report"))?;
        let us = |q| first.quantile_ns(q) as f64 / 1e3;
        let name = SvcSystem::name(sys);
        res.add(&scenario, "rate", "conn/s", true, name, c.rate);
        res.add(&scenario, "p50", "us", false, name, us(0.5));
        res.add(&scenario, "p99", "us", false, name, us(0.99));
        res.add_dist(&scenario, &title, name, first);
        Ok(format!(
            "{} conn/s, first connection p50 {} µs, p99 {} µs, {line}",
            num(c.rate),
            num(us(0.5)),
            num(us(0.99))
        ))
    })
}

/// Fails if a ClusterIP answers from the client pod (`netns`) before any Service is
/// programmed: what answers later must be the Service translation, not some route.
fn unreachable_without_services(system: &str, netns: PathBuf) -> Result<()> {
    let to = SocketAddr::from((FIRST_CLUSTER_IP, SERVICE_PORT));
    let r = test_support::in_netns(&netns, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(1))
    });
    match r {
        Ok(_) => Err(Error::msg(format!(
            "{system}: {to} answers before any Service is programmed"
        ))),
        Err(_) => Ok(()),
    }
}

/// One `sluice-load` run from the client pod to the N Services (each new connection to one
/// picked at random), servers fresh in every backend pod: the client's report and a line on
/// errors, balance and translation.
fn load(sys: &dyn SvcSystem, mode: Mode, n: usize, t: Timing) -> Result<(ClientReport, String)> {
    sys.prepare()?;
    let load_bin = test_support::bin("sluice-load");
    let mut servers = Vec::new();
    for (i, ip) in sys.backends().into_iter().enumerate() {
        let mut g = Guarded::spawn(
            sys.pod_command(PodRef::Backend(i), load_bin.as_os_str())
                .args(["server", "--listen", &format!("{ip}:{LOAD_PORT}")])
                .args(["--workers", "4", "--max-seconds"])
                .arg(format!("{:.0}", t.bound().as_secs_f64() + 10.0)),
            "sluice-load server",
        )?;
        g.wait_for_line(|l| l == "ready")?;
        servers.push(g);
    }
    let before = sys.snapshot()?;
    let to = SocketAddr::from((FIRST_CLUSTER_IP, SERVICE_PORT)).to_string();
    let mode_arg = if mode == Mode::Crr { "crr" } else { "rr" };
    let out = measure::run_bounded(
        sys.pod_command(PodRef::Client, load_bin.as_os_str())
            .args([mode_arg, "--to", &to, "--spread", &n.to_string()])
            .args(["--size", "1", "--connections", "1"])
            .args(["--seconds", &t.seconds.to_string()])
            .args(["--warmup", &t.warmup.to_string()]),
        t.bound(),
        "sluice-load client",
    )?;
    let client: ClientReport =
        serde_json::from_slice(&out.stdout).context("parse the load client's report")?;
    let mut per_backend = Vec::new();
    for s in servers {
        let r: ServerReport =
            serde_json::from_str(&s.stop()?).context("parse a load server's report")?;
        per_backend.push(r.connections);
    }
    if client.transactions == 0 {
        return Err(Error::msg(format!(
            "no transaction completed ({} errors)",
            client.errors
        )));
    }
    let connections: u64 = per_backend.iter().sum();
    let how = sys.translated(before, connections)?;
    let shares: Vec<String> = per_backend
        .iter()
        .map(|c| format!("{:.0}", *c as f64 * 100.0 / connections.max(1) as f64))
        .collect();
    let line = format!(
        "{} errors, backends {} %, {how}",
        client.errors,
        shares.join("/")
    );
    Ok((client, line))
}
