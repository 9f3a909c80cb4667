//! The load generator behind `sluice-load`: an echo server and two clients, `rr` (request and
//! response over one TCP connection, like netperf TCP_RR) and `crr` (connect, one request and
//! response, close, like TCP_CRR). Each connection has one transaction in flight at a time,
//! so with one connection the rate is the inverse of the round-trip time through the
//! datapath; with `connections` N > 1, N threads each run that loop on a connection of their
//! own (N transactions in flight, like N netperf instances) and their histograms are merged.
//! With `spread` N > 1 every new connection goes to one of N consecutive addresses (the first
//! is `to`'s), chosen uniformly at random: the Service scenarios' clients, which pick one of N
//! ClusterIPs per connection. Every run is bounded: a fixed duration, socket timeouts, at most
//! `workers` server connections, and a server lifetime cap. Each process reports its own
//! `getrusage` (all its threads), so the orchestrator can charge CPU per request.

use std::{
    io::{self, BufRead as _, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::hist::Histogram;

/// CPU time a process used, from `getrusage(RUSAGE_SELF)` (all its threads).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Rusage {
    pub user_s: f64,
    pub sys_s: f64,
}

impl Rusage {
    pub fn this_process() -> Self {
        let mut r = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage writes the struct it is given; with RUSAGE_SELF it cannot fail.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, r.as_mut_ptr()) };
        assert_eq!(rc, 0, "getrusage(RUSAGE_SELF)");
        // SAFETY: zero-initialised, then filled by the kernel.
        let r = unsafe { r.assume_init() };
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        Self {
            user_s: secs(r.ru_utime),
            sys_s: secs(r.ru_stime),
        }
    }

    pub fn total_s(&self) -> f64 {
        self.user_s + self.sys_s
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Rr,
    Crr,
}

pub struct ClientOpts {
    pub mode: Mode,
    pub to: SocketAddr,
    /// Bytes per request (the response is the same size: the server echoes).
    pub size: usize,
    /// Measured time, after the warm-up.
    pub duration: Duration,
    /// Time spent at the start whose transactions are not recorded.
    pub warmup: Duration,
    /// Bound on every connect, read and write.
    pub timeout: Duration,
    /// Connections run at once, each by a thread of its own with one transaction in flight.
    pub connections: usize,
    /// Addresses to spread connections over: `to`'s and the `spread - 1` after it (IPv4), one
    /// chosen at random for each new connection; 1 is `to` alone.
    pub spread: u32,
}

impl ClientOpts {
    /// The address of a new connection.
    fn target(&self, rng: &mut SplitMix) -> SocketAddr {
        match self.to {
            SocketAddr::V4(a) if self.spread > 1 => {
                let ip = Ipv4Addr::from(u32::from(*a.ip()).wrapping_add(rng.below(self.spread)));
                SocketAddr::V4(SocketAddrV4::new(ip, a.port()))
            }
            other => other,
        }
    }
}

/// splitmix64 (Steele, Lea, Flood 2014): uniform enough to pick addresses, and no crate.
struct SplitMix(u64);

impl SplitMix {
    /// Seeded from the clock and the connection's index, so threads and runs differ.
    fn seeded(index: usize) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self(nanos ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below 2^-32 · n).
    fn below(&mut self, n: u32) -> u32 {
        (((self.next() >> 32) * u64::from(n)) >> 32) as u32
    }
}

/// What a client prints on stdout.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClientReport {
    pub mode: Mode,
    pub size: usize,
    /// Connections run at once.
    pub connections: usize,
    /// Measured seconds (warm-up excluded).
    pub seconds: f64,
    /// Transactions in the measured window.
    pub transactions: u64,
    /// Transactions including the warm-up: what the process's CPU time was spent on.
    pub transactions_total: u64,
    /// Failed transactions (connect, read or write error or timeout).
    pub errors: u64,
    /// Transactions per second in the measured window.
    pub rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Latency of whole transactions (`rr`: write to read; `crr`: connect to close), every
    /// connection's merged.
    pub latency: Histogram,
    /// `crr` only: time for `connect` to return (the handshake through the datapath).
    pub connect: Option<Histogram>,
    /// `crr` only: first-connection latency, `connect` and the first request and response
    /// (the close that follows is not in it).
    pub first: Option<Histogram>,
    pub rusage: Rusage,
}

/// What the server prints on stdout when it stops.
#[derive(Debug, Serialize, Deserialize)]
pub struct ServerReport {
    pub connections: u64,
    pub rusage: Rusage,
}

/// The largest message, and the buffer the server echoes through.
pub const MAX_SIZE: usize = 1 << 20;
/// The most connections a client runs at once, and workers a server starts.
pub const MAX_CONNECTIONS: usize = 256;
/// More consecutive failures than this end a client run early: the path is broken, and a
/// benchmark of a broken path should say so rather than spin.
const MAX_CONSECUTIVE_ERRORS: u64 = 100;

pub fn run_client(o: &ClientOpts) -> io::Result<ClientReport> {
    let start = Instant::now();
    let window = Window {
        measure_from: start + o.warmup,
        end: start + o.warmup + o.duration,
    };
    // Set by a connection that gives up: the others stop too, and the run fails.
    let failed = AtomicBool::new(false);
    let parts: Vec<io::Result<Part>> = if o.connections <= 1 {
        vec![drive(o, 0, window, &failed)]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..o.connections)
                .map(|i| {
                    let failed = &failed;
                    std::thread::Builder::new()
                        .spawn_scoped(s, move || drive(o, i, window, failed))
                        .inspect_err(|_| failed.store(true, Ordering::Relaxed))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h?.join()
                        .unwrap_or_else(|_| Err(io::Error::other("a connection's thread panicked")))
                })
                .collect()
        })
    };
    let mut latency = Histogram::default();
    let mut connect = (o.mode == Mode::Crr).then(Histogram::default);
    let mut first = (o.mode == Mode::Crr).then(Histogram::default);
    let (mut total, mut errors) = (0u64, 0u64);
    for part in parts {
        let part = part?;
        latency.merge(&part.latency);
        for (h, p) in [(&mut connect, &part.connect), (&mut first, &part.first)] {
            if let (Some(h), Some(p)) = (h.as_mut(), p.as_ref()) {
                h.merge(p);
            }
        }
        total += part.total;
        errors += part.errors;
    }
    let seconds = Instant::now()
        .saturating_duration_since(window.measure_from)
        .as_secs_f64();
    let us = |ns: u64| ns as f64 / 1e3;
    let headline = connect.as_ref().unwrap_or(&latency);
    Ok(ClientReport {
        mode: o.mode,
        size: o.size,
        connections: o.connections.max(1),
        seconds,
        transactions: latency.count(),
        transactions_total: total,
        errors,
        rate: latency.count() as f64 / seconds.max(1e-9),
        p50_us: us(headline.quantile_ns(0.5)),
        p99_us: us(headline.quantile_ns(0.99)),
        max_us: us(headline.max_ns()),
        latency,
        connect,
        first,
        rusage: Rusage::this_process(),
    })
}

/// When transactions start being recorded, and when no new one starts.
#[derive(Clone, Copy)]
struct Window {
    measure_from: Instant,
    end: Instant,
}

/// What one connection's loop measured.
struct Part {
    latency: Histogram,
    connect: Option<Histogram>,
    first: Option<Histogram>,
    /// Transactions including the warm-up.
    total: u64,
    errors: u64,
}

/// One connection's loop (the `index`th): transactions one after the other until the window
/// ends, another connection gave up (`failed`), or this one fails too often in a row.
fn drive(o: &ClientOpts, index: usize, w: Window, failed: &AtomicBool) -> io::Result<Part> {
    let mut p = Part {
        latency: Histogram::default(),
        connect: (o.mode == Mode::Crr).then(Histogram::default),
        first: (o.mode == Mode::Crr).then(Histogram::default),
        total: 0,
        errors: 0,
    };
    let mut rng = SplitMix::seeded(index);
    let req = vec![b'r'; o.size];
    let mut resp = vec![0u8; o.size];
    let mut consecutive = 0u64;
    let mut rr_conn: Option<TcpStream> = None;
    loop {
        let t0 = Instant::now();
        if t0 >= w.end || failed.load(Ordering::Relaxed) {
            break;
        }
        let result = match o.mode {
            Mode::Rr => {
                // The one connection, reopened after a failure.
                let conn = match rr_conn.take() {
                    Some(s) => Ok(s),
                    None => open(o, o.target(&mut rng)),
                };
                conn.and_then(|mut s| {
                    transact(&mut s, &req, &mut resp)?;
                    rr_conn = Some(s);
                    Ok(None)
                })
            }
            Mode::Crr => open(o, o.target(&mut rng)).and_then(|mut s| {
                let connected = t0.elapsed();
                transact(&mut s, &req, &mut resp)?;
                Ok(Some((connected, t0.elapsed())))
            }),
        };
        let t1 = Instant::now();
        match result {
            Ok(connected) => {
                consecutive = 0;
                p.total += 1;
                if t0 >= w.measure_from {
                    p.latency.record((t1 - t0).as_nanos() as u64);
                    if let Some((c, f)) = connected {
                        for (h, d) in [(&mut p.connect, c), (&mut p.first, f)] {
                            if let Some(h) = h.as_mut() {
                                h.record(d.as_nanos() as u64);
                            }
                        }
                    }
                }
            }
            Err(e) => {
                p.errors += 1;
                consecutive += 1;
                if consecutive > MAX_CONSECUTIVE_ERRORS {
                    failed.store(true, Ordering::Relaxed);
                    return Err(io::Error::new(
                        e.kind(),
                        format!("{consecutive} transactions in a row failed, the last: {e}"),
                    ));
                }
            }
        }
    }
    Ok(p)
}

fn open(o: &ClientOpts, to: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&to, o.timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(o.timeout))?;
    s.set_write_timeout(Some(o.timeout))?;
    Ok(s)
}

fn transact(s: &mut TcpStream, req: &[u8], resp: &mut [u8]) -> io::Result<()> {
    s.write_all(req)?;
    s.read_exact(resp)
}

pub struct ServerOpts {
    pub listen: SocketAddr,
    /// Connections served at once (one thread each, started up front).
    pub workers: usize,
    /// The server exits after this long even if nobody stops it.
    pub max_lifetime: Duration,
}

/// Serves until stdin reaches EOF (the orchestrator drops its end) or `max_lifetime` passes.
/// Prints `ready` once listening, then the [`ServerReport`] as JSON when it stops. Connections
/// are echoed: whatever is read is written back, until the peer closes.
pub fn serve(o: &ServerOpts) -> io::Result<ServerReport> {
    let listener = TcpListener::bind(o.listen)?;
    let connections = Arc::new(AtomicU64::new(0));
    for _ in 0..o.workers {
        let l = listener.try_clone()?;
        let n = connections.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; MAX_SIZE];
            while let Ok((s, _)) = l.accept() {
                n.fetch_add(1, Ordering::Relaxed);
                // A failed connection ends only itself; the client counts the error.
                let _ = echo(s, &mut buf);
            }
        });
    }
    println!("ready");
    io::stdout().flush()?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Blocks until EOF or an error; either means "stop".
        let _ = io::stdin().lock().read_line(&mut String::new());
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(o.max_lifetime);
    Ok(ServerReport {
        connections: connections.load(Ordering::Relaxed),
        rusage: Rusage::this_process(),
    })
}

fn echo(mut s: TcpStream, buf: &mut [u8]) -> io::Result<()> {
    s.set_nodelay(true)?;
    // A client that goes silent must not hold a worker for ever.
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    loop {
        let n = s.read(buf)?;
        if n == 0 {
            return Ok(());
        }
        s.write_all(&buf[..n])?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that a client with several connections runs them all at once and merges their
    /// histograms: the server sees each connection, and the report's count is the sum.
    #[test]
    fn rr_with_connections_merges_every_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind on loopback");
        let to = listener.local_addr().expect("local address");
        let accepted = Arc::new(AtomicU64::new(0));
        let n = accepted.clone();
        std::thread::spawn(move || {
            while let Ok((s, _)) = listener.accept() {
                n.fetch_add(1, Ordering::Relaxed);
                std::thread::spawn(move || echo(s, &mut [0u8; 64]));
            }
        });
        let r = run_client(&ClientOpts {
            mode: Mode::Rr,
            to,
            size: 16,
            duration: Duration::from_millis(300),
            warmup: Duration::from_millis(50),
            timeout: Duration::from_secs(2),
            connections: 8,
            spread: 1,
        })
        .expect("run the client");
        assert_eq!(r.connections, 8);
        assert_eq!(r.errors, 0);
        assert_eq!(accepted.load(Ordering::Relaxed), 8);
        assert!(r.transactions > 0 && r.transactions <= r.transactions_total);
        assert_eq!(r.latency.count(), r.transactions);
    }

    /// Test that `crr` with `spread` 3 opens connections to all three consecutive addresses
    /// (127.0.0.1 to .3, all loopback) and records a first-connection latency for each
    /// transaction, at least as long as its connect.
    #[test]
    fn crr_spread_reaches_every_address_and_records_first_connection() {
        let mut counts = Vec::new();
        let mut port = 0;
        for last in 1..=3u8 {
            let ip = Ipv4Addr::new(127, 0, 0, last);
            // The first listener picks the port; the others take the same on their address.
            let listener = TcpListener::bind((ip, port)).expect("bind on loopback");
            port = listener.local_addr().expect("local address").port();
            let n = Arc::new(AtomicU64::new(0));
            counts.push(n.clone());
            std::thread::spawn(move || {
                while let Ok((s, _)) = listener.accept() {
                    n.fetch_add(1, Ordering::Relaxed);
                    std::thread::spawn(move || echo(s, &mut [0u8; 64]));
                }
            });
        }
        let r = run_client(&ClientOpts {
            mode: Mode::Crr,
            to: SocketAddr::from(([127, 0, 0, 1], port)),
            size: 1,
            duration: Duration::from_millis(300),
            warmup: Duration::ZERO,
            timeout: Duration::from_secs(2),
            connections: 1,
            spread: 3,
        })
        .expect("run the client");
        assert_eq!(r.errors, 0);
        for (i, n) in counts.iter().enumerate() {
            assert!(
                n.load(Ordering::Relaxed) > 0,
                "127.0.0.{} got nothing",
                i + 1
            );
        }
        let (first, connect) = (r.first.expect("first"), r.connect.expect("connect"));
        assert_eq!(first.count(), r.transactions);
        assert!(first.quantile_ns(0.5) >= connect.quantile_ns(0.5));
    }
}
