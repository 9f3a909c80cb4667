//! `policy-apply`'s probe: TCP connects in a tight loop from a pod to a port a policy change
//! opens or closes, reporting when the new verdict is first seen. It runs as a process of
//! the client pod (`sluice-bench probe`, in the node's cgroup like any pod process) and talks
//! to the harness over its stdin and stdout:
//!
//! ```text
//! harness → probe   allowed | denied        the verdict to wait for
//! probe → harness   armed                   one connect still shows the old verdict
//! (harness takes the time and renames the policy file into the manifests directory)
//! probe → harness   seen <ns> <connects>    CLOCK_MONOTONIC when the new verdict showed
//! ```
//! An allowed connect completes the handshake; a denied one times out after `--timeout-ms`
//! (the datapath drops the SYN; the kernel's first SYN retransmission is 1 s away). Each
//! connection is closed with a reset (`SO_LINGER` 0), so a run of thousands leaves no
//! TIME_WAIT behind. The instant reported is when the connect that showed the new verdict
//! ended: a newly allowed port is seen up to one timeout late (the connect in flight when the
//! rule changed had its SYN dropped already), a newly denied one exactly one timeout late
//! (plus the one connect before it, about 0.1 ms). Nothing is subtracted.
//!
//! Both processes read CLOCK_MONOTONIC, the same clock across processes of a machine.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use super::super::{Context as _, Error, Result};

/// How long the probe looks for a new verdict before it gives up.
const GIVE_UP: Duration = Duration::from_secs(20);
/// Pause between connects that succeed (the timeout paces the others): bounds the load at a
/// few thousand connections a second and adds at most this to a newly denied port's time.
const PAUSE: Duration = Duration::from_micros(200);
/// How long the harness waits for a line from the probe.
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// CLOCK_MONOTONIC in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct it is given; CLOCK_MONOTONIC always exists.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One connect: `Ok(true)` if it completed (then reset), `Ok(false)` if it timed out.
fn attempt(to: &SocketAddr, timeout: Duration) -> std::io::Result<bool> {
    match TcpStream::connect_timeout(to, timeout) {
        Ok(s) => {
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: a valid socket and a linger struct of the size given.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
            Ok(true)
        }
        Err(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `sluice-bench probe --to IP:PORT [--timeout-ms 15]`: the probe's side, until stdin ends.
pub fn main(args: &[String]) -> Result<()> {
    let mut to = None;
    let mut timeout = Duration::from_millis(15);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| Error::msg(format!("{a} needs a value")))
        };
        match a.as_str() {
            "--to" => to = Some(value()?.parse::<SocketAddr>().context("--to IP:PORT")?),
            "--timeout-ms" => {
                timeout = Duration::from_millis(value()?.parse().context("--timeout-ms")?)
            }
            other => return Err(Error::msg(format!("unknown argument {other:?}"))),
        }
    }
    let to = to.ok_or_else(|| Error::msg("--to is required"))?;
    let mut out = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let want = match line.context("read stdin")?.trim() {
            "allowed" => true,
            "denied" => false,
            other => return Err(Error::msg(format!("unknown command {other:?}"))),
        };
        if attempt(&to, timeout).context("connect")? == want {
            writeln!(out, "early").context("write stdout")?;
            continue;
        }
        writeln!(out, "armed").context("write stdout")?;
        out.flush().context("flush stdout")?;
        let start = Instant::now();
        let mut connects = 0u64;
        let reply = loop {
            connects += 1;
            let now = attempt(&to, timeout).context("connect")?;
            if now == want {
                break format!("seen {} {connects}", monotonic_ns());
            }
            if start.elapsed() > GIVE_UP {
                break "gave-up".to_string();
            }
            if now {
                std::thread::sleep(PAUSE);
            }
        };
        writeln!(out, "{reply}").context("write stdout")?;
        out.flush().context("flush stdout")?;
    }
    Ok(())
}

/// The harness's end of a running probe; killed when dropped.
pub struct Prober {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Prober {
    pub fn spawn(cmd: &mut Command) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start the probe")?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in stdout.lines().map_while(std::result::Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            lines,
        })
    }

    fn line(&self) -> Result<String> {
        self.lines
            .recv_timeout(LINE_TIMEOUT)
            .map_err(|_| Error::msg("the probe stopped answering"))
    }

    /// Asks the probe to wait for `allowed` (or denied); returns once it has seen the old
    /// verdict still in force.
    pub fn arm(&mut self, allowed: bool) -> Result<()> {
        let want = if allowed { "allowed" } else { "denied" };
        writeln!(self.stdin, "{want}").context("write to the probe")?;
        match self.line()?.as_str() {
            "armed" => Ok(()),
            "early" => Err(Error::msg(format!(
                "the probe saw {want} before the policy changed"
            ))),
            other => Err(Error::msg(format!("the probe said {other:?}"))),
        }
    }

    /// When the verdict asked for was seen (CLOCK_MONOTONIC ns), and after how many connects.
    pub fn seen(&mut self) -> Result<(u64, u64)> {
        let l = self.line()?;
        let mut w = l.split_whitespace();
        match (w.next(), w.next(), w.next()) {
            (Some("seen"), Some(ns), Some(n)) => Ok((
                ns.parse().context("the probe's time")?,
                n.parse().context("the probe's count")?,
            )),
            _ => Err(Error::msg(format!(
                "the probe did not see the new verdict within {GIVE_UP:?} ({l})"
            ))),
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
