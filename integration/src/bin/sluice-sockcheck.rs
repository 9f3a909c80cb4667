//! `sluice-sockcheck`: a TCP server and clients that check every byte they receive, for the
//! socket acceleration tests (`integration/tests/sockmap.rs`). Socket-to-socket redirection
//! replaces the whole TCP receive path, so what matters is that data arrives complete, in order,
//! on the right socket, whatever the message sizes, read sizes, peeks and shutdowns.
//!
//! ```text
//! sluice-sockcheck server --listen IP:PORT      (IP may be `[::]`: dual-stack, IPV6_V6ONLY=0)
//! sluice-sockcheck echo --to IP:PORT [--conns 1] [--parallel 1] [--msgs 8] [--max-size 65536]
//!                       [--bind IP:PORT] [--seed N]
//! sluice-sockcheck stream|duplex --to IP:PORT --bytes N [--window 16777216] [--seed N]
//! sluice-sockcheck halfclose --to IP:PORT --send BYTES --recv BYTES [--think-ms 0]
//!                            [--early-reader false] [--poll-reads false] [--seed N]
//! sluice-sockcheck stall --to IP:PORT --cap BYTES
//! sluice-sockcheck peek --to IP:PORT --recv BYTES [--seed N]
//! sluice-sockcheck hold --to IP:PORT [--conns 1] [--msgs 8] [--max-size 65536] [--seed N]
//! ```
//! One server serves every kind of client: a connection opens with a hello naming its mode.
//! - `echo`: framed messages (length, connection nonce, checksum) the server verifies and
//!   echoes; the client compares each echo with what it sent, then says bye and the server
//!   closes first. `--bind` reuses one local port for every (sequential) connection.
//! - `stream`: a pattern stream checked byte for byte, acknowledged by the server every MiB;
//!   `duplex`: the same, echoed back at once and checked again (both directions at the same
//!   time). The sender stays within `--window` bytes of what came back, so a slow reader
//!   cannot pile the transfer up in kernel memory. A status byte ends it; the client closes.
//! - `halfclose`: the client sends everything and shuts down its write side; only then (and
//!   after `--think-ms`) does the server reply, and the client reads the reply to EOF — after
//!   the shutdown, or with `--early-reader` on a thread already waiting for it. With
//!   `--poll-reads` both ends read as an event loop does (nginx, Envoy, Go's runtime): wait
//!   in `poll()` until the socket is readable, then read, and go back to waiting on `EAGAIN`.
//! - `stall`: the server reads nothing until a line arrives on its stdin; the client writes
//!   without blocking until EAGAIN (or `--cap`) and prints `queued N`; when its stdin closes
//!   it closes the connection, and the server then reads and checks everything.
//! - `peek`: the server sends a pattern; the client peeks (`MSG_PEEK`) twice, then reads the
//!   peeked bytes in small chunks, and checks that all three agree with the pattern.
//! - `hold`: connections stay open; each line on stdin runs one round of echoes on all of
//!   them (`ok N` or `error …` on stdout), and EOF on stdin closes them.
//!
//! A server on `[::]:PORT` is one AF_INET6 socket with `IPV6_V6ONLY` cleared, as Go's `:port`,
//! Java and Node.js listen: it accepts IPv4 clients as IPv4-mapped AF_INET6 sockets. A client
//! given `--to [::ffff:IP]:PORT` connects from an AF_INET6 socket the same way, and `--to
//! [::1]:PORT` over IPv6 loopback.
//!
//! Every mode takes `--io-timeout-ms` (default 30000; 0 leaves sockets plainly blocking).
//! The server prints `ready` once listening and, when its stdin closes, a JSON report. Clients
//! print a JSON report; both exit non-zero if anything was wrong. Every socket operation has a
//! timeout, so lost data becomes an error, never a hang.

use std::{
    io::{self, BufRead as _, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::ExitCode,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc, Arc, Condvar, Mutex,
    },
    time::{Duration, Instant},
};

use serde_json::{json, Value};

const MAGIC: [u8; 4] = *b"SLCK";
const HELLO_LEN: usize = 32;
const FRAME_HEADER_LEN: usize = 24;
const MODE_ECHO: u8 = b'E';
const MODE_STREAM: u8 = b'T';
const MODE_DUPLEX: u8 = b'D';
const MODE_STALL: u8 = b'S';
const MODE_HALFCLOSE: u8 = b'H';
/// `halfclose` with `--poll-reads`: the server reads that connection through `poll()` too.
const MODE_HALFCLOSE_POLLED: u8 = b'h';
const MODE_PEEK: u8 = b'P';
const STATUS_OK: u8 = b'K';
const STATUS_BAD: u8 = b'X';
/// A `stream` receiver acknowledges (cumulative count, 8 bytes) every this many bytes.
const ACK_EVERY: u64 = 1 << 20;
/// Largest echo message accepted (a corrupt length must not make the server allocate GiBs).
const MAX_FRAME: usize = 16 << 20;
/// Pattern streams repeat a block of this (prime) length, with the block number in its first
/// eight bytes: a lost, repeated or reordered piece cannot line up with the expected bytes.
const BLOCK: usize = 1_048_573;
/// Seeds of the two pattern streams: client to server, server to client.
const SEED_UP: u64 = 0x5eed_0001;
const SEED_DOWN: u64 = 0x5eed_0002;
/// Timeout of every socket operation (`--io-timeout-ms`; 0 makes plain blocking sockets).
static IO_TIMEOUT_MS: AtomicU64 = AtomicU64::new(30_000);
/// `EAGAIN`s a polled read got from a socket `poll()` had just called readable, in this
/// process (the wake-ups an event loop absorbs; see [`read_some`]).
static SPURIOUS_EAGAIN: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Whether this thread's reads wait in `poll()` first (`--poll-reads`).
    static POLL_READS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// How many error messages a report keeps (all are counted).
const KEEP_ERRORS: usize = 10;

type Res<T> = Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((mode, rest)) = args.split_first() else {
        eprintln!("sluice-sockcheck: no mode given (server, echo, stream, duplex, halfclose, stall, peek, hold)");
        return ExitCode::FAILURE;
    };
    let result = Flags::parse(rest).and_then(|f| {
        let ms = f.get(
            "--io-timeout-ms",
            Some(IO_TIMEOUT_MS.load(Ordering::Relaxed)),
        )?;
        IO_TIMEOUT_MS.store(ms, Ordering::Relaxed);
        Ok(f)
    });
    let result = result.and_then(|f| match mode.as_str() {
        "server" => server(&f),
        "echo" => echo(&f),
        "stream" => transfer(&f, MODE_STREAM),
        "duplex" => transfer(&f, MODE_DUPLEX),
        "halfclose" => half_close(&f),
        "stall" => stall(&f),
        "peek" => peek(&f),
        "hold" => hold(&f),
        other => Err(format!("unknown mode {other:?}")),
    });
    match result {
        Ok(report) => {
            let ok = report["error_count"].as_u64() == Some(0);
            println!("{report}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("sluice-sockcheck {mode}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--flag value` pairs.
struct Flags(Vec<(String, String)>);

impl Flags {
    fn parse(args: &[String]) -> Res<Self> {
        let mut v = Vec::new();
        let mut it = args.iter();
        while let Some(k) = it.next() {
            let val = it.next().ok_or_else(|| format!("{k} needs a value"))?;
            v.push((k.clone(), val.clone()));
        }
        Ok(Self(v))
    }

    fn get<T: std::str::FromStr>(&self, k: &str, default: Option<T>) -> Res<T> {
        match self.0.iter().rev().find(|(key, _)| key == k) {
            Some((_, v)) => v.parse().map_err(|_| format!("bad value for {k}: {v:?}")),
            None => default.ok_or_else(|| format!("{k} is required")),
        }
    }

    fn opt<T: std::str::FromStr>(&self, k: &str) -> Res<Option<T>> {
        match self.0.iter().rev().find(|(key, _)| key == k) {
            Some((_, v)) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("bad value for {k}: {v:?}")),
            None => Ok(None),
        }
    }

    fn seed(&self) -> Res<u64> {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        self.get("--seed", Some(clock ^ u64::from(std::process::id())))
    }
}

/// xorshift64*: fast, and reproducible from the seed a report prints.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self((seed ^ 0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    /// A message or write size: mostly small, some up to 64 KiB, a few up to `max`.
    fn size(&mut self, max: usize) -> usize {
        match self.next() % 100 {
            0..60 => self.range(1, max.min(1024)),
            60..90 => self.range(1, max.min(65536)),
            _ => self.range(1, max),
        }
    }
}

/// A deterministic byte stream (see [`BLOCK`]).
struct Pattern {
    base: Vec<u8>,
    seed: u64,
}

impl Pattern {
    fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut base = vec![0u8; BLOCK];
        for c in base.chunks_mut(8) {
            c.copy_from_slice(&rng.next().to_le_bytes()[..c.len()]);
        }
        Self { base, seed }
    }

    /// The stream's bytes at `off..off + out.len()`.
    fn fill(&self, off: u64, out: &mut [u8]) {
        let mut pos = 0;
        while pos < out.len() {
            let o = off + pos as u64;
            let (block, r) = (o / BLOCK as u64, (o % BLOCK as u64) as usize);
            let n = (BLOCK - r).min(out.len() - pos);
            out[pos..pos + n].copy_from_slice(&self.base[r..r + n]);
            let header = (block ^ self.seed).to_le_bytes();
            for j in r..(r + n).min(8) {
                out[pos + j - r] = header[j];
            }
            pos += n;
        }
    }

    /// Checks that `got` is the stream at `off`.
    fn check(&self, off: u64, got: &[u8], scratch: &mut Vec<u8>) -> Res<()> {
        scratch.resize(got.len(), 0);
        self.fill(off, scratch);
        if scratch[..] == got[..] {
            return Ok(());
        }
        let i = got.iter().zip(scratch.iter()).position(|(a, b)| a != b);
        Err(format!(
            "data differs at stream offset {} (read of {} bytes at {off})",
            off + i.unwrap_or(0) as u64,
            got.len()
        ))
    }
}

fn checksum(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(0x0000_0100_0000_01b3);
        h ^= h >> 29;
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ data.len() as u64
}

/// A connection's first bytes: magic, mode and three parameters whose meaning depends on it.
fn hello(mode: u8, a: u64, b: u64, c: u64) -> [u8; HELLO_LEN] {
    let mut h = [0u8; HELLO_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4] = mode;
    h[8..16].copy_from_slice(&a.to_le_bytes());
    h[16..24].copy_from_slice(&b.to_le_bytes());
    h[24..32].copy_from_slice(&c.to_le_bytes());
    h
}

/// One echo message: header (length, sequence number, connection nonce, checksum) + payload.
fn frame(seq: u32, nonce: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(&seq.to_le_bytes());
    f.extend_from_slice(&nonce.to_le_bytes());
    f.extend_from_slice(&checksum(payload).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn io_err(what: &str) -> impl FnOnce(io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Writes `data` in one to three pieces, so message boundaries differ from frame boundaries.
fn write_pieces(s: &mut TcpStream, data: &[u8], rng: &mut Rng) -> Res<()> {
    let mut rest = data;
    for _ in 0..2 {
        if rest.len() > 1 && rng.next().is_multiple_of(2) {
            let n = rng.range(1, rest.len() - 1);
            s.write_all(&rest[..n]).map_err(io_err("write"))?;
            rest = &rest[n..];
        }
    }
    s.write_all(rest).map_err(io_err("write"))
}

/// Reads one more byte and expects none: the peer closed after exactly what was expected.
fn expect_eof(s: &mut TcpStream) -> Res<()> {
    let mut b = [0u8; 64];
    match read_some(s, &mut b) {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!("{n} unexpected bytes where EOF was expected")),
        Err(e) => Err(format!("read where EOF was expected: {e}")),
    }
}

/// Sends `total` bytes of `pat` in writes of random sizes; with `window`, never more than that
/// many bytes ahead of what the peer has confirmed.
fn send_pattern(
    s: &mut TcpStream,
    pat: &Pattern,
    total: u64,
    rng: &mut Rng,
    window: Option<(&Progress, u64)>,
) -> Res<()> {
    let mut buf = vec![0u8; 256 << 10];
    let mut off = 0u64;
    while off < total {
        let n = if rng.next().is_multiple_of(8) {
            rng.range(1, 512)
        } else {
            rng.range(4096, buf.len())
        };
        let n = n.min((total - off) as usize);
        if let Some((p, w)) = window {
            p.wait_room(off + n as u64, w)?;
        }
        pat.fill(off, &mut buf[..n]);
        s.write_all(&buf[..n])
            .map_err(|e| format!("write at stream offset {off}: {e}"))?;
        off += n as u64;
    }
    Ok(())
}

/// Reads exactly `total` bytes of `pat` in reads of random sizes, reporting progress.
fn recv_pattern(
    s: &mut TcpStream,
    pat: &Pattern,
    total: u64,
    rng: &mut Rng,
    progress: Option<&Progress>,
) -> Res<()> {
    let mut buf = vec![0u8; 256 << 10];
    let mut scratch = Vec::new();
    let mut off = 0u64;
    while off < total {
        let n = rng.range(1, buf.len()).min((total - off) as usize);
        let k = read_some(s, &mut buf[..n])
            .map_err(|e| format!("read at stream offset {off} of {total}: {e}"))?;
        if k == 0 {
            return Err(format!("EOF after {off} of {total} bytes"));
        }
        pat.check(off, &buf[..k], &mut scratch)?;
        off += k as u64;
        if let Some(p) = progress {
            p.set(off);
        }
    }
    Ok(())
}

/// Bytes the other side has confirmed (acknowledged or echoed), for a sender's window.
#[derive(Default)]
struct Progress {
    /// (confirmed bytes, aborted)
    state: Mutex<(u64, bool)>,
    cv: Condvar,
}

impl Progress {
    fn set(&self, confirmed: u64) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0 = confirmed;
        self.cv.notify_all();
    }

    fn abort(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.cv.notify_all();
    }

    /// Waits until sending up to stream offset `upto` stays within `window` of the confirmed
    /// bytes.
    fn wait_room(&self, upto: u64, window: u64) -> Res<()> {
        let bound = io_timeout().unwrap_or(Duration::MAX);
        let start = Instant::now();
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while upto > g.0 + window && !g.1 {
            let left = bound.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(format!("window stuck at {} confirmed bytes", g.0));
            }
            g = self
                .cv
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        if g.1 {
            return Err("receiving side failed".into());
        }
        Ok(())
    }
}

/// The generation of the server's "release stalled connections" signal (a line on stdin).
#[derive(Default)]
struct Release {
    generation: Mutex<u64>,
    cv: Condvar,
}

impl Release {
    fn bump(&self) {
        *self.generation.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.cv.notify_all();
    }

    fn now(&self) -> u64 {
        *self.generation.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait_after(&self, seen: u64) {
        let mut g = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        while *g == seen {
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}

fn io_timeout() -> Option<Duration> {
    match IO_TIMEOUT_MS.load(Ordering::Relaxed) {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    }
}

fn timeouts(s: &TcpStream) -> Res<()> {
    s.set_read_timeout(io_timeout())
        .and_then(|()| s.set_write_timeout(io_timeout()))
        .map_err(io_err("set socket timeouts"))
}

/// Waits until `s` is readable (data, EOF or an error), at most the I/O timeout.
fn wait_readable(s: &TcpStream) -> io::Result<()> {
    let ms = io_timeout().map_or(-1, |d| d.as_millis().min(i32::MAX as u128) as i32);
    let mut fd = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd, for the duration of the call.
        match unsafe { libc::poll(&mut fd, 1, ms) } {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("not readable within {ms} ms"),
                ))
            }
            n if n > 0 => return Ok(()),
            _ => match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::Interrupted => continue,
                e => return Err(e),
            },
        }
    }
}

/// `read` on a blocking socket. EAGAIN there means the timeout expired; the error says how long
/// the call actually waited, so an EAGAIN long before the timeout shows as what it is. A
/// thread with [`POLL_READS`] waits in `poll()` before each read and, as an event loop would,
/// goes back to waiting when the read says EAGAIN anyway (counted in [`SPURIOUS_EAGAIN`]).
fn read_some(s: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let start = Instant::now();
    let polled = POLL_READS.with(|p| p.get());
    loop {
        if polled {
            wait_readable(s)?;
        }
        match s.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if polled && e.kind() == io::ErrorKind::WouldBlock => {
                SPURIOUS_EAGAIN.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "{e} from a blocking read after {:?} (socket timeout {:?})",
                        start.elapsed(),
                        io_timeout()
                    ),
                ))
            }
            r => return r,
        }
    }
}

/// Fills `buf` with [`read_some`].
fn read_full(s: &mut TcpStream, buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match read_some(s, &mut buf[got..])? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF after {got} of {} bytes", buf.len()),
                ))
            }
            n => got += n,
        }
    }
    Ok(())
}

/// Errors and totals of one process, shared by its threads.
#[derive(Default)]
struct Stats {
    connections: AtomicU64,
    messages: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    error_count: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Stats {
    fn error(&self, e: String) {
        eprintln!("sluice-sockcheck: {e}");
        self.error_count.fetch_add(1, Ordering::Relaxed);
        let mut v = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() < KEEP_ERRORS {
            v.push(e);
        }
    }

    fn add(&self, messages: u64, bytes_in: u64, bytes_out: u64) {
        self.messages.fetch_add(messages, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
    }

    fn report(&self, extra: Value) -> Value {
        let mut v = json!({
            "connections": self.connections.load(Ordering::Relaxed),
            "messages": self.messages.load(Ordering::Relaxed),
            "bytes_in": self.bytes_in.load(Ordering::Relaxed),
            "bytes_out": self.bytes_out.load(Ordering::Relaxed),
            "error_count": self.error_count.load(Ordering::Relaxed),
            "errors": *self.errors.lock().unwrap_or_else(|p| p.into_inner()),
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        v
    }
}

fn server(f: &Flags) -> Res<Value> {
    let listen: SocketAddr = f.get("--listen", None)?;
    let l = listen_on(listen).map_err(|e| format!("listen on {listen}: {e}"))?;
    println!("ready");
    io::stdout().flush().map_err(io_err("stdout"))?;
    let stats = Arc::new(Stats::default());
    let active = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Release::default());
    {
        let (stats, active, release) = (stats.clone(), active.clone(), release.clone());
        std::thread::spawn(move || {
            for (n, s) in l.incoming().enumerate() {
                let s = match s {
                    Ok(s) => s,
                    Err(e) => {
                        stats.error(format!("accept: {e}"));
                        continue;
                    }
                };
                active.fetch_add(1, Ordering::SeqCst);
                stats.connections.fetch_add(1, Ordering::Relaxed);
                let (stats, active, release) = (stats.clone(), active.clone(), release.clone());
                // A stalled connection waits for the next release after its accept.
                let seen = release.now();
                std::thread::spawn(move || {
                    let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                    if let Err(e) = serve_one(s, n as u64, &stats, || release.wait_after(seen)) {
                        stats.error(format!("connection from {peer}: {e}"));
                    }
                    active.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
    }
    // Each line on stdin releases the stalled connections; EOF ends the server once the
    // connections in progress (released too) have finished.
    for line in io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
        release.bump();
    }
    release.bump();
    let deadline = Instant::now() + Duration::from_secs(30);
    while active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let left = active.load(Ordering::SeqCst);
    if left > 0 {
        stats.error(format!("{left} connections still open at exit"));
    }
    let spurious = SPURIOUS_EAGAIN.load(Ordering::Relaxed);
    Ok(stats.report(json!({ "spurious_eagain": spurious })))
}

/// A listening socket on `addr` with `SO_REUSEADDR` (a new server can take the port while old
/// connections linger, as std does); an IPv6 one with `IPV6_V6ONLY` cleared explicitly, so it
/// takes IPv4 connections whatever `net.ipv6.bindv6only` says.
fn listen_on(addr: SocketAddr) -> io::Result<TcpListener> {
    let SocketAddr::V6(a) = addr else {
        return TcpListener::bind(addr);
    };
    let sin6 = libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: a.port().to_be(),
        sin6_flowinfo: a.flowinfo(),
        sin6_addr: libc::in6_addr {
            s6_addr: a.ip().octets(),
        },
        sin6_scope_id: a.scope_id(),
    };
    let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: plain socket syscalls on a descriptor owned by `fd`, with correctly sized
    // arguments.
    unsafe {
        let raw = libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(raw);
        let (one, zero): (libc::c_int, libc::c_int) = (1, 0);
        if libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            size,
        ) != 0
            || libc::setsockopt(
                raw,
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                (&zero as *const libc::c_int).cast(),
                size,
            ) != 0
            || libc::bind(
                raw,
                (&sin6 as *const libc::sockaddr_in6).cast(),
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            ) != 0
            || libc::listen(raw, 128) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(TcpListener::from(fd))
    }
}

fn serve_one(mut s: TcpStream, n: u64, stats: &Stats, released: impl FnOnce()) -> Res<()> {
    timeouts(&s)?;
    let _ = s.set_nodelay(true);
    let mut h = [0u8; HELLO_LEN];
    read_full(&mut s, &mut h).map_err(io_err("read hello"))?;
    if h[..4] != MAGIC {
        return Err(format!("bad hello {h:02x?}"));
    }
    let (a, b, c) = (u64_at(&h, 8), u64_at(&h, 16), u64_at(&h, 24));
    let mut rng = Rng::new(a ^ n.rotate_left(32));
    match h[4] {
        MODE_ECHO => serve_echo(&mut s, a, stats, &mut rng),
        MODE_HALFCLOSE | MODE_HALFCLOSE_POLLED => {
            // The request ends with the client's FIN; then `c` ms of "work", the reply, close.
            POLL_READS.with(|p| p.set(h[4] == MODE_HALFCLOSE_POLLED));
            let (up, down) = (Pattern::new(SEED_UP), Pattern::new(SEED_DOWN));
            let received =
                recv_pattern(&mut s, &up, b, &mut rng, None).and_then(|()| expect_eof(&mut s));
            std::thread::sleep(Duration::from_millis(c));
            let sent = send_pattern(&mut s, &down, a, &mut rng, None);
            let ok = received.is_ok() && sent.is_ok();
            let status = s.write_all(&[if ok { STATUS_OK } else { STATUS_BAD }]);
            received.map_err(|e| format!("receiving: {e}"))?;
            sent.map_err(|e| format!("sending: {e}"))?;
            status.map_err(io_err("write status"))?;
            stats.add(1, b, a + 1);
            Ok(())
        }
        MODE_STREAM | MODE_DUPLEX => {
            // Stream: acknowledge every ACK_EVERY bytes. Duplex: echo every byte at once.
            let echo = h[4] == MODE_DUPLEX;
            let up = Pattern::new(SEED_UP);
            let (mut buf, mut scratch) = (vec![0u8; 256 << 10], Vec::new());
            let mut off = 0u64;
            while off < a {
                let n = rng.range(1, buf.len()).min((a - off) as usize);
                let k = read_some(&mut s, &mut buf[..n])
                    .map_err(|e| format!("read at stream offset {off} of {a}: {e}"))?;
                if k == 0 {
                    return Err(format!("EOF after {off} of {a} bytes"));
                }
                up.check(off, &buf[..k], &mut scratch)?;
                if echo {
                    write_pieces(&mut s, &buf[..k], &mut rng)?;
                } else if (off + k as u64) / ACK_EVERY > off / ACK_EVERY || off + k as u64 == a {
                    s.write_all(&(off + k as u64).to_le_bytes())
                        .map_err(io_err("write ack"))?;
                }
                off += k as u64;
            }
            s.write_all(&[STATUS_OK]).map_err(io_err("write status"))?;
            expect_eof(&mut s).map_err(|e| format!("after the status: {e}"))?;
            stats.add(1, a, if echo { a + 1 } else { a / ACK_EVERY * 8 + 9 });
            Ok(())
        }
        MODE_STALL => {
            // Read nothing until released, then everything, to EOF.
            released();
            let up = Pattern::new(SEED_UP);
            let (mut buf, mut scratch) = (vec![0u8; 256 << 10], Vec::new());
            let mut off = 0u64;
            loop {
                let k = read_some(&mut s, &mut buf)
                    .map_err(|e| format!("read at stream offset {off}: {e}"))?;
                if k == 0 {
                    break;
                }
                up.check(off, &buf[..k], &mut scratch)?;
                off += k as u64;
            }
            stats.add(1, off, 0);
            Ok(())
        }
        MODE_PEEK => {
            send_pattern(&mut s, &Pattern::new(SEED_DOWN), a, &mut rng, None)?;
            stats.add(1, 0, a);
            Ok(())
        }
        m => Err(format!("unknown mode {m}")),
    }
}

/// Verifies and echoes messages until the bye (an empty message), then closes first.
fn serve_echo(s: &mut TcpStream, nonce: u64, stats: &Stats, rng: &mut Rng) -> Res<()> {
    let mut buf = Vec::new();
    for seq in 0u32.. {
        buf.resize(FRAME_HEADER_LEN, 0);
        read_full(s, &mut buf).map_err(|e| format!("read header of message {seq}: {e}"))?;
        let (len, got_seq, got_nonce) =
            (u32_at(&buf, 0) as usize, u32_at(&buf, 4), u64_at(&buf, 8));
        if got_nonce != nonce || got_seq != seq || len > MAX_FRAME {
            return Err(format!(
                "message {seq}: header of another stream (nonce {got_nonce:#x}, expected \
                 {nonce:#x}; seq {got_seq}; length {len})"
            ));
        }
        if len == 0 {
            stats.add(u64::from(seq), 0, 0);
            return Ok(());
        }
        buf.resize(FRAME_HEADER_LEN + len, 0);
        read_full(s, &mut buf[FRAME_HEADER_LEN..])
            .map_err(|e| format!("read {len} bytes of message {seq}: {e}"))?;
        if checksum(&buf[FRAME_HEADER_LEN..]) != u64_at(&buf, 16) {
            return Err(format!("message {seq} ({len} bytes): checksum mismatch"));
        }
        write_pieces(s, &buf, rng)?;
        stats.add(0, buf.len() as u64, buf.len() as u64);
    }
    unreachable!("u32 sequence numbers exhausted")
}

/// Connects, from `bind` if given (retrying while the previous connection from that port is
/// still going away).
fn connect(to: SocketAddr, bind: Option<SocketAddr>) -> Res<TcpStream> {
    let s = match bind {
        None => TcpStream::connect_timeout(&to, Duration::from_secs(30))
            .map_err(|e| format!("connect to {to}: {e}"))?,
        Some(local) => {
            let mut tries = 0;
            loop {
                match connect_from(local, to) {
                    Ok(s) => break s,
                    Err(e)
                        if tries < 250
                            && matches!(
                                e.raw_os_error(),
                                Some(libc::EADDRINUSE | libc::EADDRNOTAVAIL)
                            ) =>
                    {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(format!("connect {local} -> {to}: {e}")),
                }
            }
        }
    };
    timeouts(&s)?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

fn connect_from(local: SocketAddr, to: SocketAddr) -> io::Result<TcpStream> {
    fn sin(a: SocketAddr) -> io::Result<libc::sockaddr_in> {
        let SocketAddr::V4(a) = a else {
            return Err(io::Error::other("--bind supports IPv4 only"));
        };
        Ok(libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            },
            sin_zero: [0; 8],
        })
    }
    let (l, r) = (sin(local)?, sin(to)?);
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket syscalls on a descriptor owned by `fd`, with correctly sized
    // arguments.
    unsafe {
        let raw = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(raw);
        let one: libc::c_int = 1;
        let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        if libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            size,
        ) != 0
            || libc::bind(raw, (&l as *const libc::sockaddr_in).cast(), len) != 0
            || libc::connect(raw, (&r as *const libc::sockaddr_in).cast(), len) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(TcpStream::from(fd))
    }
}

/// Echo parameters shared by `echo` and `hold`.
struct EchoOpts {
    msgs: usize,
    max_size: usize,
    pool: Arc<Pattern>,
}

fn echo_opts(f: &Flags, seed: u64) -> Res<EchoOpts> {
    let max_size: usize = f.get("--max-size", Some(65536))?;
    if !(1..=MAX_FRAME).contains(&max_size) || max_size > BLOCK {
        return Err(format!("--max-size must be within 1..={BLOCK}"));
    }
    Ok(EchoOpts {
        msgs: f.get("--msgs", Some(8))?,
        max_size,
        pool: Arc::new(Pattern::new(seed)),
    })
}

fn echo(f: &Flags) -> Res<Value> {
    let to: SocketAddr = f.get("--to", None)?;
    let bind: Option<SocketAddr> = f.opt("--bind")?;
    let conns: u64 = f.get("--conns", Some(1))?;
    let parallel: usize = f.get("--parallel", Some(1))?;
    if bind.is_some() && parallel != 1 {
        return Err("--bind needs --parallel 1 (one local port)".into());
    }
    let seed = f.seed()?;
    let o = Arc::new(echo_opts(f, seed)?);
    let stats = Arc::new(Stats::default());
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..parallel.max(1))
        .map(|_| {
            let (o, stats, next) = (o.clone(), stats.clone(), next.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= conns {
                    break;
                }
                let mut rng = Rng::new(seed ^ i.wrapping_mul(0x9e37_79b9));
                match echo_connection(to, bind, &o, &mut rng, &stats) {
                    Ok(()) => {
                        stats.connections.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => stats.error(format!("connection {i}: {e}")),
                }
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| "worker panicked".to_string())?;
    }
    Ok(stats.report(json!({ "seed": seed, "seconds": start.elapsed().as_secs_f64() })))
}

/// One echo connection: a writer thread sends every message at once (pipelined), this thread
/// reads and compares the echoes, then the bye, and the server's close.
fn echo_connection(
    to: SocketAddr,
    bind: Option<SocketAddr>,
    o: &Arc<EchoOpts>,
    rng: &mut Rng,
    stats: &Stats,
) -> Res<()> {
    let mut s = connect(to, bind)?;
    let nonce = rng.next();
    let mut w = s.try_clone().map_err(io_err("clone socket"))?;
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let (o2, mut wrng) = (o.clone(), Rng::new(rng.next()));
    let writer = std::thread::spawn(move || -> Res<u64> {
        w.write_all(&hello(MODE_ECHO, nonce, 0, 0))
            .map_err(io_err("write hello"))?;
        let mut sent = HELLO_LEN as u64;
        for seq in 0..o2.msgs {
            let len = wrng.size(o2.max_size);
            let at = wrng.range(0, BLOCK - len);
            let f = frame(seq as u32, nonce, &o2.pool.base[at..at + len]);
            write_pieces(&mut w, &f, &mut wrng).map_err(|e| format!("message {seq}: {e}"))?;
            sent += f.len() as u64;
            let _ = tx.send(f);
        }
        let bye = frame(o2.msgs as u32, nonce, &[]);
        w.write_all(&bye).map_err(io_err("write bye"))?;
        Ok(sent + bye.len() as u64)
    });
    let mut buf = Vec::new();
    let mut received = 0u64;
    let mut result = Ok(());
    for (seq, f) in rx.iter().enumerate() {
        buf.resize(f.len(), 0);
        if let Err(e) = read_full(&mut s, &mut buf) {
            result = Err(format!(
                "read echo of message {seq} ({} bytes): {e}",
                f.len()
            ));
            break;
        }
        if buf != f {
            let i = buf.iter().zip(&f).position(|(a, b)| a != b).unwrap_or(0);
            result = Err(format!(
                "echo of message {seq} differs at byte {i} of {}",
                f.len()
            ));
            break;
        }
        received += f.len() as u64;
    }
    if result.is_err() {
        // Unblock the writer (it may be stuck on a full socket).
        let _ = s.shutdown(Shutdown::Both);
    }
    let sent = writer.join().map_err(|_| "writer panicked".to_string())?;
    result?;
    let sent = sent?;
    expect_eof(&mut s).map_err(|e| format!("after the bye: {e}"))?;
    stats.add(o.msgs as u64, received, sent);
    Ok(())
}

/// `stream` (one way, acknowledged) and `duplex` (echoed): `--bytes` of pattern out, never more
/// than `--window` ahead of what the server confirmed, so a slow reader cannot make the
/// transfer pile up in kernel memory.
fn transfer(f: &Flags, mode: u8) -> Res<Value> {
    let to: SocketAddr = f.get("--to", None)?;
    let total: u64 = f.get("--bytes", None)?;
    let window: u64 = f.get("--window", Some(16 << 20))?;
    let seed = f.seed()?;
    let mut rng = Rng::new(seed);
    let stats = Stats::default();
    let start = Instant::now();
    let mut s = connect(to, None)?;
    s.write_all(&hello(mode, total, 0, 0))
        .map_err(io_err("write hello"))?;
    let up = Arc::new(Pattern::new(SEED_UP));
    let progress = Arc::new(Progress::default());
    let mut w = s.try_clone().map_err(io_err("clone socket"))?;
    let (up2, progress2, mut wrng) = (up.clone(), progress.clone(), Rng::new(rng.next()));
    let sender = std::thread::spawn(move || {
        send_pattern(&mut w, &up2, total, &mut wrng, Some((&progress2, window)))
    });
    let received = if mode == MODE_DUPLEX {
        recv_pattern(&mut s, &up, total, &mut rng, Some(&progress))
    } else {
        read_acks(&mut s, total, &progress)
    };
    let received = received.and_then(|()| {
        let mut st = [0u8; 1];
        read_full(&mut s, &mut st).map_err(io_err("read the status"))?;
        match st[0] {
            STATUS_OK => Ok(()),
            _ => Err("the server saw wrong data".into()),
        }
    });
    if received.is_err() {
        progress.abort();
        let _ = s.shutdown(Shutdown::Both);
    }
    let sent = sender
        .join()
        .unwrap_or_else(|_| Err("sender panicked".into()));
    // The receiving side's error first: a failed receiver also stops the sender.
    match received
        .map_err(|e| format!("receiving: {e}"))
        .and(sent.map_err(|e| format!("sending: {e}")))
    {
        Ok(()) => {
            stats.connections.fetch_add(1, Ordering::Relaxed);
            let back = if mode == MODE_DUPLEX { total } else { 0 };
            stats.add(1, back, total);
        }
        Err(e) => stats.error(e),
    }
    // Closing (no half-close) tells the server we are done.
    let secs = start.elapsed().as_secs_f64();
    let both = if mode == MODE_DUPLEX { 2 } else { 1 };
    let mib = (total * both) as f64 / f64::from(1 << 20);
    Ok(stats.report(json!({ "seed": seed, "seconds": secs, "mib_per_s": mib / secs })))
}

/// Reads the server's cumulative acknowledgements until all `total` bytes are confirmed.
fn read_acks(s: &mut TcpStream, total: u64, progress: &Progress) -> Res<()> {
    let mut acked = 0u64;
    while acked < total {
        let mut a = [0u8; 8];
        read_full(s, &mut a).map_err(|e| format!("read ack after {acked}: {e}"))?;
        let n = u64::from_le_bytes(a);
        if n <= acked || n > total {
            return Err(format!("bad ack {n} after {acked} of {total}"));
        }
        acked = n;
        progress.set(acked);
    }
    Ok(())
}

fn half_close(f: &Flags) -> Res<Value> {
    let to: SocketAddr = f.get("--to", None)?;
    let send: u64 = f.get("--send", None)?;
    let recv: u64 = f.get("--recv", None)?;
    let think_ms: u64 = f.get("--think-ms", Some(0))?;
    let early: bool = f.get("--early-reader", Some(false))?;
    let polled: bool = f.get("--poll-reads", Some(false))?;
    let seed = f.seed()?;
    let mut rng = Rng::new(seed);
    let stats = Stats::default();
    let mut s = connect(to, None)?;
    let mode = if polled {
        MODE_HALFCLOSE_POLLED
    } else {
        MODE_HALFCLOSE
    };
    s.write_all(&hello(mode, recv, send, think_ms))
        .map_err(io_err("write hello"))?;
    let mut r = s.try_clone().map_err(io_err("clone socket"))?;
    let mut rrng = Rng::new(rng.next());
    let reader = move || -> Res<()> {
        POLL_READS.with(|p| p.set(polled));
        recv_pattern(&mut r, &Pattern::new(SEED_DOWN), recv, &mut rrng, None)
            .map_err(|e| format!("receiving the reply: {e}"))?;
        let mut st = [0u8; 1];
        read_full(&mut r, &mut st).map_err(io_err("read the status"))?;
        if st[0] != STATUS_OK {
            return Err("the server saw wrong data".into());
        }
        expect_eof(&mut r)
    };
    // The reply is read after the shutdown, or (early) by a thread already waiting for it
    // while this one sends and shuts down, as a proxy's two pumps do.
    let (early_reader, late_reader) = if early {
        let t = std::thread::spawn(reader);
        // Let it block in its read first.
        std::thread::sleep(Duration::from_millis(50));
        (Some(t), None)
    } else {
        (None, Some(reader))
    };
    let sent = send_pattern(&mut s, &Pattern::new(SEED_UP), send, &mut rng, None)
        .and_then(|()| {
            s.shutdown(Shutdown::Write)
                .map_err(io_err("shutdown(SHUT_WR)"))
        })
        .map_err(|e| format!("sending: {e}"));
    let received = match (early_reader, late_reader) {
        (Some(t), _) => t.join().unwrap_or_else(|_| Err("reader panicked".into())),
        (None, Some(mut read)) if sent.is_ok() => read(),
        _ => Ok(()),
    };
    match sent.and(received) {
        Ok(()) => {
            stats.connections.fetch_add(1, Ordering::Relaxed);
            stats.add(1, recv, send);
        }
        Err(e) => stats.error(e),
    }
    let spurious = SPURIOUS_EAGAIN.load(Ordering::Relaxed);
    Ok(stats.report(json!({ "seed": seed, "spurious_eagain": spurious })))
}

/// Writes without blocking to a server that does not read (until released) and reports how
/// much the kernel accepted before saying EAGAIN, at most `--cap`; then, when stdin closes,
/// closes the connection.
fn stall(f: &Flags) -> Res<Value> {
    let to: SocketAddr = f.get("--to", None)?;
    let cap: u64 = f.get("--cap", None)?;
    let stats = Stats::default();
    let mut s = connect(to, None)?;
    s.write_all(&hello(MODE_STALL, 0, 0, 0))
        .map_err(io_err("write hello"))?;
    s.set_nonblocking(true).map_err(io_err("set O_NONBLOCK"))?;
    let pat = Pattern::new(SEED_UP);
    let mut buf = vec![0u8; 64 << 10];
    let mut queued = 0u64;
    while queued < cap {
        let n = buf.len().min((cap - queued) as usize);
        pat.fill(queued, &mut buf[..n]);
        match s.write(&buf[..n]) {
            Ok(k) => queued += k as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => {
                stats.error(format!("write at {queued}: {e}"));
                break;
            }
        }
    }
    println!("queued {queued}");
    io::stdout().flush().map_err(io_err("stdout"))?;
    let _ = io::copy(&mut io::stdin(), &mut io::sink());
    stats.add(1, 0, queued);
    Ok(stats.report(json!({ "queued": queued, "capped": queued == cap })))
}

fn peek(f: &Flags) -> Res<Value> {
    let to: SocketAddr = f.get("--to", None)?;
    let total: u64 = f.get("--recv", None)?;
    let seed = f.seed()?;
    let mut rng = Rng::new(seed);
    let stats = Stats::default();
    let mut s = connect(to, None)?;
    s.write_all(&hello(MODE_PEEK, total, 0, 0))
        .map_err(io_err("write hello"))?;
    let (peeks, reads) = match peek_stream(&mut s, total, &mut rng) {
        Ok(n) => {
            stats.connections.fetch_add(1, Ordering::Relaxed);
            stats.add(1, total, HELLO_LEN as u64);
            n
        }
        Err(e) => {
            stats.error(e);
            (0, 0)
        }
    };
    Ok(stats.report(json!({ "seed": seed, "peeks": peeks, "reads": reads })))
}

fn peek_stream(s: &mut TcpStream, total: u64, rng: &mut Rng) -> Res<(u64, u64)> {
    let pat = Pattern::new(SEED_DOWN);
    let (mut p1, mut p2, mut chunk) = (vec![0u8; 65536], vec![0u8; 65536], vec![0u8; 4096]);
    let mut scratch = Vec::new();
    let (mut off, mut peeks, mut reads) = (0u64, 0u64, 0u64);
    let fd = s.as_raw_fd();
    let peek_into = |buf: &mut [u8]| -> Res<usize> {
        // SAFETY: recv writes at most buf.len() bytes into buf.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK) };
        usize::try_from(n).map_err(|_| format!("recv(MSG_PEEK): {}", io::Error::last_os_error()))
    };
    loop {
        let want = rng.range(1, p1.len());
        let k = peek_into(&mut p1[..want])?;
        peeks += 1;
        if k == 0 {
            break;
        }
        // A second peek of what the first one saw returns the same bytes: nothing was consumed.
        let k2 = peek_into(&mut p2[..k])?;
        peeks += 1;
        if k2 != k || p1[..k] != p2[..k] {
            return Err(format!(
                "at offset {off}: second peek gave {k2} other bytes than the first ({k})"
            ));
        }
        pat.check(off, &p1[..k], &mut scratch)
            .map_err(|e| format!("peeked {e}"))?;
        // Now consume exactly the peeked bytes, in small reads.
        let mut got = 0;
        while got < k {
            let n = rng.range(1, chunk.len()).min(k - got);
            let r = read_some(s, &mut chunk[..n])
                .map_err(|e| format!("read after peek at offset {}: {e}", off + got as u64))?;
            reads += 1;
            if r == 0 {
                return Err(format!(
                    "EOF at offset {} inside peeked data",
                    off + got as u64
                ));
            }
            if chunk[..r] != p1[got..got + r] {
                return Err(format!(
                    "read at offset {} differs from what was peeked",
                    off + got as u64
                ));
            }
            got += r;
        }
        off += k as u64;
    }
    if off != total {
        return Err(format!("stream ended after {off} of {total} bytes"));
    }
    expect_eof(s)?;
    Ok((peeks, reads))
}

fn hold(f: &Flags) -> Res<Value> {
    let to: SocketAddr = f.get("--to", None)?;
    let conns: usize = f.get("--conns", Some(1))?;
    let seed = f.seed()?;
    let o = echo_opts(f, seed)?;
    let mut rng = Rng::new(seed);
    let stats = Stats::default();
    let mut socks = Vec::new();
    for _ in 0..conns {
        let mut s = connect(to, None)?;
        let nonce = rng.next();
        s.write_all(&hello(MODE_ECHO, nonce, 0, 0))
            .map_err(io_err("write hello"))?;
        socks.push((s, nonce, 0u32));
    }
    println!("connected");
    io::stdout().flush().map_err(io_err("stdout"))?;
    let mut buf = Vec::new();
    for (round, line) in io::stdin().lock().lines().enumerate() {
        line.map_err(io_err("stdin"))?;
        let r = (|| -> Res<()> {
            for (i, (s, nonce, seq)) in socks.iter_mut().enumerate() {
                for _ in 0..o.msgs {
                    let len = rng.size(o.max_size);
                    let at = rng.range(0, BLOCK - len);
                    let f = frame(*seq, *nonce, &o.pool.base[at..at + len]);
                    write_pieces(s, &f, &mut rng).map_err(|e| format!("connection {i}: {e}"))?;
                    buf.resize(f.len(), 0);
                    read_full(s, &mut buf)
                        .map_err(|e| format!("connection {i}: read echo of message {seq}: {e}"))?;
                    if buf != f {
                        return Err(format!("connection {i}: echo of message {seq} differs"));
                    }
                    *seq += 1;
                    stats.add(1, f.len() as u64, f.len() as u64);
                }
            }
            Ok(())
        })();
        match r {
            Ok(()) => println!("ok {round}"),
            Err(e) => {
                println!("error {e}");
                stats.error(e);
            }
        }
        io::stdout().flush().map_err(io_err("stdout"))?;
    }
    for (i, (mut s, nonce, seq)) in socks.into_iter().enumerate() {
        match s
            .write_all(&frame(seq, nonce, &[]))
            .map_err(io_err("write bye"))
            .and_then(|()| expect_eof(&mut s))
        {
            Ok(()) => {
                stats.connections.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => stats.error(format!("connection {i}: {e}")),
        }
    }
    Ok(stats.report(json!({ "seed": seed })))
}
