//! The load generator behind `sluice-load`: an echo server and two clients, `rr` (request and
//! response over one TCP connection, like netperf TCP_RR) and `crr` (connect, one request and
//! response, close, like TCP_CRR). One transaction is in flight at a time, so the rate is the
//! inverse of the round-trip time through the datapath. Every run is bounded: a fixed
//! duration, socket timeouts, at most `workers` server connections, and a server lifetime cap.
//! Each process reports its own `getrusage`, so the orchestrator can charge CPU per request.

use std::{
    io::{self, BufRead as _, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicU64, Ordering},
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
}

/// What a client prints on stdout.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClientReport {
    pub mode: Mode,
    pub size: usize,
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
    /// Latency of whole transactions (`rr`: write to read; `crr`: connect to close).
    pub latency: Histogram,
    /// `crr` only: time for `connect` to return (the handshake through the datapath).
    pub connect: Option<Histogram>,
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
/// More consecutive failures than this end a client run early: the path is broken, and a
/// benchmark of a broken path should say so rather than spin.
const MAX_CONSECUTIVE_ERRORS: u64 = 100;

pub fn run_client(o: &ClientOpts) -> io::Result<ClientReport> {
    let mut latency = Histogram::default();
    let mut connect = (o.mode == Mode::Crr).then(Histogram::default);
    let req = vec![b'r'; o.size];
    let mut resp = vec![0u8; o.size];
    let start = Instant::now();
    let measure_from = start + o.warmup;
    let end = measure_from + o.duration;
    let (mut total, mut errors, mut consecutive) = (0u64, 0u64, 0u64);
    let mut rr_conn: Option<TcpStream> = None;
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let result = match o.mode {
            Mode::Rr => {
                // The one connection, reopened after a failure.
                let conn = match rr_conn.take() {
                    Some(s) => Ok(s),
                    None => open(o),
                };
                conn.and_then(|mut s| {
                    transact(&mut s, &req, &mut resp)?;
                    rr_conn = Some(s);
                    Ok(None)
                })
            }
            Mode::Crr => open(o).and_then(|mut s| {
                let connected = t0.elapsed();
                transact(&mut s, &req, &mut resp).map(|()| Some(connected))
            }),
        };
        let t1 = Instant::now();
        match result {
            Ok(connected) => {
                consecutive = 0;
                total += 1;
                if t0 >= measure_from {
                    latency.record((t1 - t0).as_nanos() as u64);
                    if let (Some(h), Some(c)) = (connect.as_mut(), connected) {
                        h.record(c.as_nanos() as u64);
                    }
                }
            }
            Err(e) => {
                errors += 1;
                consecutive += 1;
                if consecutive > MAX_CONSECUTIVE_ERRORS {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("{consecutive} transactions in a row failed, the last: {e}"),
                    ));
                }
            }
        }
    }
    let seconds = Instant::now()
        .saturating_duration_since(measure_from)
        .as_secs_f64();
    let us = |ns: u64| ns as f64 / 1e3;
    let headline = connect.as_ref().unwrap_or(&latency);
    Ok(ClientReport {
        mode: o.mode,
        size: o.size,
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
        rusage: Rusage::this_process(),
    })
}

fn open(o: &ClientOpts) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&o.to, o.timeout)?;
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
