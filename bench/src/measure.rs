//! One traffic measurement in one system: `sluice-load` (RR, CRR) or iperf3 (stream) between
//! its two pods, or between two processes of one pod over 127.0.0.1 ([`Peers::Loopback`]).
//! Servers are started fresh for each measurement, so their rusage is that
//! measurement's; every process runs inside its pod ([`System::pod_command`]: `nsenter`, which
//! execs the program, so the rusage is the program's own) under a wall-clock bound, and is killed by its
//! guard if anything goes wrong. Softirq time is read from /proc/stat around the client: it is
//! machine-wide (other processes' interrupts count too), so it is a hint, not an exact charge.

use std::{
    ffi::OsStr,
    io::{BufRead as _, BufReader, Read as _},
    net::SocketAddr,
    process::{Child, ChildStdout, Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;

use super::{
    load::{ClientReport, Mode, ServerReport},
    topo::System,
    Context as _, Error, Result,
};

pub(super) const LOAD_PORT: u16 = 7000;
const IPERF_PORT: u16 = 5201;
/// How long a server may take to say it is listening.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Margin over a client's nominal run time before it is killed.
const SLACK: Duration = Duration::from_secs(20);

#[derive(Clone, Copy)]
pub struct Timing {
    /// Measured seconds per run.
    pub seconds: f64,
    /// Warm-up seconds before each run (not measured).
    pub warmup: f64,
}

impl Timing {
    pub(super) fn bound(&self) -> Duration {
        Duration::from_secs_f64(self.seconds + self.warmup) + SLACK
    }
}

/// A load run: the client's report, the server's, and machine-wide softirq seconds.
pub struct LoadSample {
    pub client: ClientReport,
    pub server: ServerReport,
    pub softirq_s: f64,
}

impl LoadSample {
    /// CPU seconds of both load processes per transaction (the warm-up's included, as
    /// their rusage covers it), in µs.
    pub fn cpu_us_per_req(&self) -> f64 {
        let cpu = self.client.rusage.total_s() + self.server.rusage.total_s();
        cpu * 1e6 / self.client.transactions_total.max(1) as f64
    }

    pub fn softirq_us_per_req(&self) -> f64 {
        self.softirq_s * 1e6 / self.client.transactions_total.max(1) as f64
    }
}

/// Where the two ends of a measurement run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peers {
    /// The client in the client pod, the server in the server pod: pod to pod on the node.
    PodToPod,
    /// Both in the server pod, over 127.0.0.1: an application and its sidecar.
    Loopback,
}

/// Which CPUs the two ends of a measurement may run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cpus {
    /// Wherever the scheduler puts them.
    Any,
    /// Client and server both on one CPU (the last this harness may use), as netperf `-T`
    /// pins TCP_RR: each round trip is then the CPU work of the path, not the cost of waking
    /// the other end on another CPU (which in a VM is an inter-processor interrupt through
    /// the hypervisor and can outweigh the path itself).
    OneCore,
}

impl Cpus {
    /// `--cpu N` for `sluice-load`, if pinned.
    fn args(self) -> Result<Vec<String>> {
        match self {
            Self::Any => Ok(Vec::new()),
            Self::OneCore => Ok(vec!["--cpu".into(), last_cpu()?.to_string()]),
        }
    }
}

/// The highest-numbered CPU this process may run on.
fn last_cpu() -> Result<usize> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .context("read the harness's CPU affinity")?;
    (0..nix::sched::CpuSet::count())
        .rev()
        .find(|&c| set.is_set(c).unwrap_or(false))
        .ok_or_else(|| Error::msg("the harness may run on no CPU"))
}

/// What a `sluice-load` run does.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub mode: Mode,
    /// Bytes per request and per response.
    pub size: usize,
    /// Connections at once, each with one transaction in flight.
    pub connections: usize,
    pub peers: Peers,
    pub cpus: Cpus,
}

/// Runs `sluice-load` as `l` says, the client and server as `l.peers` places them.
pub fn load(sys: &dyn System, l: Load, t: Timing) -> Result<LoadSample> {
    let pods = sys.pods();
    let (client_ns, to) = match l.peers {
        Peers::PodToPod => (pods.client, SocketAddr::from((pods.server_ip, LOAD_PORT))),
        Peers::Loopback => (pods.server, SocketAddr::from(([127, 0, 0, 1], LOAD_PORT))),
    };
    let to = to.to_string();
    let load_bin = test_support::bin("sluice-load");
    // A worker per connection (a worker serves one connection until it closes).
    let workers = l.connections.max(4).to_string();
    let pin = l.cpus.args()?;
    let mut server = Guarded::spawn(
        sys.pod_command(pods.server, load_bin.as_os_str())
            .args([
                "server",
                "--listen",
                &to,
                "--workers",
                &workers,
                "--max-seconds",
            ])
            .arg(format!("{:.0}", t.bound().as_secs_f64() + 10.0))
            .args(&pin),
        "sluice-load server",
    )?;
    server.wait_for_line(|l| l == "ready")?;
    let mode_arg = match l.mode {
        Mode::Rr => "rr",
        Mode::Crr => "crr",
    };
    let soft0 = softirq_seconds()?;
    let out = run_bounded(
        sys.pod_command(client_ns, load_bin.as_os_str())
            .args([mode_arg, "--to", &to, "--size", &l.size.to_string()])
            .args(["--connections", &l.connections.to_string()])
            .args(["--seconds", &t.seconds.to_string()])
            .args(["--warmup", &t.warmup.to_string()])
            .args(&pin),
        t.bound(),
        "sluice-load client",
    )?;
    let softirq_s = softirq_seconds()? - soft0;
    let client: ClientReport =
        serde_json::from_slice(&out.stdout).context("parse the load client's report")?;
    let server: ServerReport =
        serde_json::from_str(&server.stop()?).context("parse the load server's report")?;
    if client.transactions == 0 {
        return Err(Error::msg(format!(
            "no transaction completed ({} errors)",
            client.errors
        )));
    }
    Ok(LoadSample {
        client,
        server,
        softirq_s,
    })
}

/// An iperf3 run: received throughput and the CPU both ends used.
pub struct StreamSample {
    pub gbit_s: f64,
    pub bytes: f64,
    /// CPU seconds of the iperf3 client and server (their own getrusage, as iperf3 reports).
    pub cpu_s: f64,
    pub softirq_s: f64,
}

impl StreamSample {
    /// CPU ms per GB received.
    pub fn cpu_ms_per_gb(&self) -> f64 {
        self.cpu_s * 1e3 / (self.bytes / 1e9).max(1e-9)
    }

    pub fn softirq_ms_per_gb(&self) -> f64 {
        self.softirq_s * 1e3 / (self.bytes / 1e9).max(1e-9)
    }
}

/// One iperf3 TCP stream from the client pod to the server pod.
pub fn stream(sys: &dyn System, t: Timing) -> Result<StreamSample> {
    let pods = sys.pods();
    let ip = pods.server_ip.to_string();
    let port = IPERF_PORT.to_string();
    let iperf3 = OsStr::new("iperf3");
    let mut server = Guarded::spawn(
        sys.pod_command(pods.server, iperf3).args([
            "--server",
            "--one-off",
            "--forceflush",
            "--bind",
            &ip,
            "--port",
            &port,
            "--idle-timeout",
            "30",
        ]),
        "iperf3 server",
    )?;
    server.wait_for_line(|l| l.contains("listening"))?;
    // iperf3 takes whole seconds; the warm-up is its --omit.
    let secs = t.seconds.round().max(1.0).to_string();
    let omit = t.warmup.ceil().to_string();
    let soft0 = softirq_seconds()?;
    let out = run_bounded(
        sys.pod_command(pods.client, iperf3).args([
            "--client",
            &ip,
            "--port",
            &port,
            "--time",
            &secs,
            "--omit",
            &omit,
            "--parallel",
            "1",
            "--connect-timeout",
            "2000",
            "--json",
        ]),
        t.bound() + Duration::from_secs(2),
        "iperf3 client",
    )?;
    let softirq_s = softirq_seconds()? - soft0;
    drop(server);
    let v: Value = serde_json::from_slice(&out.stdout).context("parse iperf3's JSON")?;
    if let Some(e) = v["error"].as_str() {
        return Err(Error::msg(format!("iperf3: {e}")));
    }
    let end = &v["end"];
    let num = |x: &Value, what: &str| {
        x.as_f64()
            .ok_or_else(|| Error::msg(format!("iperf3 JSON has no {what}")))
    };
    let rx = &end["sum_received"];
    let seconds = num(&rx["seconds"], "end.sum_received.seconds")?;
    let cpu = &end["cpu_utilization_percent"];
    let cpu_pct =
        num(&cpu["host_total"], "host_total")? + num(&cpu["remote_total"], "remote_total")?;
    Ok(StreamSample {
        gbit_s: num(&rx["bits_per_second"], "end.sum_received.bits_per_second")? / 1e9,
        bytes: num(&rx["bytes"], "end.sum_received.bytes")?,
        cpu_s: cpu_pct / 100.0 * seconds,
        softirq_s,
    })
}

/// Machine-wide softirq time so far, from the `cpu` line of /proc/stat (USER_HZ ticks, 100 a
/// second on Linux). This kernel has no IRQ_TIME_ACCOUNTING: the figure is tick-sampled.
pub(super) fn softirq_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    stat.lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(7))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ticks| ticks as f64 / 100.0)
        .ok_or_else(|| Error::msg("no softirq column in /proc/stat"))
}

/// A background process, killed and reaped when dropped.
pub(super) struct Guarded {
    child: Child,
    stdout: Option<BufReader<ChildStdout>>,
    what: &'static str,
}

impl Guarded {
    pub(super) fn spawn(cmd: &mut Command, what: &'static str) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start the {what}"))?;
        let stdout = child.stdout.take().map(BufReader::new);
        Ok(Self {
            child,
            stdout,
            what,
        })
    }

    /// Reads stdout until a line satisfies `ready`, within [`READY_TIMEOUT`].
    pub(super) fn wait_for_line(&mut self, ready: fn(&str) -> bool) -> Result<()> {
        let mut out = self.stdout.take().expect("stdout is read once");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let found = loop {
                line.clear();
                match out.read_line(&mut line) {
                    Ok(0) | Err(_) => break false,
                    Ok(_) if ready(line.trim()) => break true,
                    Ok(_) => {}
                }
            };
            let _ = tx.send((found, out));
        });
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok((true, out)) => {
                self.stdout = Some(out);
                Ok(())
            }
            Ok((false, _)) => Err(Error::msg(format!("the {} exited early", self.what))),
            Err(_) => Err(Error::msg(format!(
                "the {} did not start in {READY_TIMEOUT:?}",
                self.what
            ))),
        }
    }

    /// Closes stdin (the load server's signal to stop) and returns the rest of its stdout.
    pub(super) fn stop(mut self) -> Result<String> {
        drop(self.child.stdin.take());
        let mut rest = String::new();
        // Bounded: the server exits right after stdin closes, or at its own lifetime cap.
        self.stdout
            .take()
            .expect("stdout was kept")
            .read_to_string(&mut rest)
            .with_context(|| format!("read the {}'s report", self.what))?;
        Ok(rest)
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to completion, killing it if it outlives `limit`; fails unless it exits 0.
pub(super) fn run_bounded(cmd: &mut Command, limit: Duration, what: &str) -> Result<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start the {what}"))?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out,
        Err(_) => {
            // Not reaped yet (the waiter is still in wait), so the pid is still this child's.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGKILL);
            let _ = rx.recv();
            return Err(Error::msg(format!(
                "the {what} ran over {limit:?} and was killed"
            )));
        }
    };
    let out = out.with_context(|| format!("wait for the {what}"))?;
    if !out.status.success() {
        // iperf3 --json says why on stdout, sluice-load on stderr.
        let said = format!(
            "{} {}",
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
        let said: String = said.chars().take(600).collect();
        return Err(Error::msg(format!(
            "the {what} failed ({}): {}",
            out.status,
            said.trim()
        )));
    }
    Ok(out)
}
