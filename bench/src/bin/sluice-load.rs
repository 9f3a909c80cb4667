//! `sluice-load`: the benchmark's load generator (logic in `bench::load`).
//!
//! ```text
//! sluice-load server --listen IP:PORT [--workers 4] [--max-seconds 600] [--cpu N]
//! sluice-load rr|crr --to IP:PORT [--size 1] [--seconds 5] [--warmup 0.5] [--timeout-ms 2000]
//!                    [--connections 1] [--spread 1] [--cpu N]
//! ```
//! The server prints `ready`, echoes until its stdin closes, then prints its report; a client
//! runs for a fixed time and prints its report (JSON, with its own getrusage) on stdout. A
//! server serves at most `--workers` connections at once, so give it at least a client's
//! `--connections`. `--spread N` sends each new connection to one of N consecutive IPv4
//! addresses from `--to`'s (same port), chosen uniformly at random: one of N Services.
//! `--cpu N` runs the process (all its threads) on CPU N only, before it opens any socket:
//! a client and a server given the same CPU measure "on one core", as netperf's `-T`.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use bench::{
    load::{self, ClientOpts, Mode, ServerOpts},
    Context as _, Error, Result,
};

const USAGE: &str =
    "usage: sluice-load server --listen IP:PORT [--workers N] [--max-seconds S] [--cpu N]
       sluice-load rr|crr --to IP:PORT [--size BYTES] [--seconds S] [--warmup S] [--timeout-ms MS]
                          [--connections N] [--spread N] [--cpu N]";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-load: {}\n{USAGE}", e.chain());
            ExitCode::FAILURE
        }
    }
}

/// `--flag value` pairs after the mode.
struct Flags(Vec<(String, String)>);

impl Flags {
    fn parse(args: &[String], known: &[&str]) -> Result<Self> {
        let mut v = Vec::new();
        let mut it = args.iter();
        while let Some(k) = it.next() {
            if !known.contains(&k.as_str()) {
                return Err(Error::msg(format!("unknown argument {k:?}")));
            }
            let val = it
                .next()
                .ok_or_else(|| Error::msg(format!("{k} needs a value")))?;
            v.push((k.clone(), val.clone()));
        }
        Ok(Self(v))
    }

    /// `--cpu N`, if given: pins this process (the threads it starts inherit it) to CPU N.
    fn pin(&self) -> Result<()> {
        if !self.0.iter().any(|(k, _)| k == "--cpu") {
            return Ok(());
        }
        let cpu: usize = self.get("--cpu", None)?;
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu)
            .map_err(|_| Error::msg(format!("--cpu {cpu}: past the largest CPU number")))?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
            .map_err(|e| Error::msg(format!("--cpu {cpu}: {e} (is CPU {cpu} online?)")))
    }

    fn get<T: std::str::FromStr>(&self, k: &str, default: Option<T>) -> Result<T> {
        match self.0.iter().rev().find(|(key, _)| key == k) {
            Some((_, v)) => v
                .parse()
                .map_err(|_| Error::msg(format!("bad value for {k}: {v:?}"))),
            None => default.ok_or_else(|| Error::msg(format!("{k} is required"))),
        }
    }

    /// A number of seconds in `0..=max`.
    fn seconds(&self, k: &str, default: f64, max: f64) -> Result<Duration> {
        let s: f64 = self.get(k, Some(default))?;
        if !(0.0..=max).contains(&s) {
            return Err(Error::msg(format!("{k} must be within 0..={max}")));
        }
        Ok(Duration::from_secs_f64(s))
    }
}

/// The most addresses `--spread` covers (a /16: more Services than any scenario has).
const MAX_SPREAD: u32 = 1 << 16;

/// `--spread N`: within 1..=MAX_SPREAD, and more than one address only from an IPv4 `--to`
/// whose range does not wrap past 255.255.255.255.
fn check_spread(to: SocketAddr, spread: u32) -> Result<()> {
    if !(1..=MAX_SPREAD).contains(&spread) {
        return Err(Error::msg(format!(
            "--spread must be within 1..={MAX_SPREAD}"
        )));
    }
    match to {
        _ if spread == 1 => Ok(()),
        SocketAddr::V4(a) if u32::from(*a.ip()).checked_add(spread - 1).is_some() => Ok(()),
        SocketAddr::V4(_) => Err(Error::msg("--spread runs past 255.255.255.255")),
        SocketAddr::V6(_) => Err(Error::msg("--spread needs an IPv4 --to")),
    }
}

fn run(args: Vec<String>) -> Result<()> {
    let (mode, rest) = args
        .split_first()
        .ok_or_else(|| Error::msg("no mode given"))?;
    let json = match mode.as_str() {
        "server" => {
            let f = Flags::parse(rest, &["--listen", "--workers", "--max-seconds", "--cpu"])?;
            f.pin()?;
            let o = ServerOpts {
                listen: f.get::<SocketAddr>("--listen", None)?,
                workers: f
                    .get("--workers", Some(4usize))?
                    .clamp(1, load::MAX_CONNECTIONS),
                max_lifetime: f.seconds("--max-seconds", 600.0, 3600.0)?,
            };
            let r = load::serve(&o).with_context(|| format!("serve on {}", o.listen))?;
            serde_json::to_string(&r)
        }
        "rr" | "crr" => {
            let f = Flags::parse(
                rest,
                &[
                    "--to",
                    "--size",
                    "--seconds",
                    "--warmup",
                    "--timeout-ms",
                    "--connections",
                    "--spread",
                    "--cpu",
                ],
            )?;
            f.pin()?;
            let size: usize = f.get("--size", Some(1))?;
            if !(1..=load::MAX_SIZE).contains(&size) {
                return Err(Error::msg(format!(
                    "--size must be within 1..={}",
                    load::MAX_SIZE
                )));
            }
            let connections: usize = f.get("--connections", Some(1))?;
            if !(1..=load::MAX_CONNECTIONS).contains(&connections) {
                return Err(Error::msg(format!(
                    "--connections must be within 1..={}",
                    load::MAX_CONNECTIONS
                )));
            }
            let to: SocketAddr = f.get("--to", None)?;
            let spread: u32 = f.get("--spread", Some(1))?;
            check_spread(to, spread)?;
            let o = ClientOpts {
                mode: if mode == "rr" { Mode::Rr } else { Mode::Crr },
                to,
                size,
                duration: f.seconds("--seconds", 5.0, 600.0)?,
                warmup: f.seconds("--warmup", 0.5, 60.0)?,
                timeout: Duration::from_millis(f.get::<u64>("--timeout-ms", Some(2000))?.max(1)),
                connections,
                spread,
            };
            let r = load::run_client(&o).with_context(|| format!("{mode} to {}", o.to))?;
            serde_json::to_string(&r)
        }
        other => return Err(Error::msg(format!("unknown mode {other:?}"))),
    };
    println!("{}", json.context("encode the report")?);
    Ok(())
}
