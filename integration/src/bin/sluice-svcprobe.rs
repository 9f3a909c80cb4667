//! `sluice-svcprobe`: servers that say who they are and clients that count who answered, for
//! the Service tests (`integration/tests/services*.rs`).
//!
//! ```text
//! sluice-svcprobe serve --name NAME [--tcp PORT]... [--udp PORT]...
//! sluice-svcprobe probe --to IP:PORT [--udp] [--count N] [--timeout-ms 2000] [--bind IP]
//! sluice-svcprobe loop --to IP:PORT --ms DURATION [--timeout-ms 2000]
//! sluice-svcprobe hold --to IP:PORT [--timeout-ms 2000]
//! sluice-svcprobe multi --target NAME=IP:PORT/tcp|udp... [--timeout-ms 2000]
//! ```
//! - `serve`: on each TCP connection writes `NAME PEER\n` (PEER: the client address it sees)
//!   and then echoes what it reads until the client closes; on each UDP datagram answers `NAME PEER`. Prints `ready` once listening.
//! - `probe`: N new connections (or datagrams), one after another; prints a JSON report:
//!   `{"answers": {NAME: n}, "peers": [PEER seen by the servers], "errors": {KIND: n},
//!   "getpeername": [address the socket says it is connected to], "first_us": [...]}`.
//! - `loop`: like probe, for a duration; also reports the longest time one attempt took.
//! - `hold`: one connection kept open; each stdin line sends a ping that must come back
//!   (`ok` or `error KIND` on stdout).
//!
//! - `multi`: one attempt per target, all at once (a thread each); prints a JSON object
//!   `{NAME: "ok SERVER" | "error KIND"}` (for the policy matrix: many pairs, one timeout).
//!
//! Errors are counted by kind (`refused`, `timeout`, `reset`, `other:<msg>`), never fatal.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use serde_json::json;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn all(args: &[String], name: &str) -> Vec<String> {
    args.windows(2)
        .filter(|w| w[0] == name)
        .map(|w| w[1].clone())
        .collect()
}

fn kind(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "refused".into(),
        K::TimedOut | K::WouldBlock => "timeout".into(),
        K::ConnectionReset => "reset".into(),
        K::PermissionDenied => "permission-denied".into(),
        _ => format!("other:{e}"),
    }
}

fn serve(args: &[String]) {
    let name = arg(args, "--name").expect("--name");
    for p in all(args, "--tcp") {
        let l = TcpListener::bind(format!("0.0.0.0:{p}")).expect("bind tcp");
        let name = name.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let name = name.clone();
                std::thread::spawn(move || {
                    let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                    let mut s = s;
                    let _ = s.write_all(format!("{name} {peer}\n").as_bytes());
                    // Then echo until the client closes (`hold` clients keep talking).
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
    for p in all(args, "--udp") {
        let u = UdpSocket::bind(format!("0.0.0.0:{p}")).expect("bind udp");
        let name = name.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((_, from)) = u.recv_from(&mut buf) {
                let _ = u.send_to(format!("{name} {from}").as_bytes(), from);
            }
        });
    }
    println!("ready");
    std::io::stdout().flush().ok();
    // Serve until stdin closes (the test drops us).
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

/// One attempt: (server name, peer it saw, getpeername) or an error kind.
fn attempt(
    to: SocketAddr,
    udp: bool,
    timeout: Duration,
) -> Result<(String, String, String), String> {
    let text = if udp {
        // Connected, as DNS clients are: an ICMP port unreachable then fails the socket with
        // ECONNREFUSED (an unconnected socket would ignore it).
        let u = UdpSocket::bind("0.0.0.0:0").map_err(|e| kind(&e))?;
        u.set_read_timeout(Some(timeout)).map_err(|e| kind(&e))?;
        u.connect(to).map_err(|e| kind(&e))?;
        u.send(b"?").map_err(|e| kind(&e))?;
        let mut buf = [0u8; 1500];
        let (n, from) = u.recv_from(&mut buf).map_err(|e| kind(&e))?;
        format!("{} {from}", String::from_utf8_lossy(&buf[..n]))
    } else {
        let mut s = TcpStream::connect_timeout(&to, timeout).map_err(|e| kind(&e))?;
        let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        s.set_read_timeout(Some(timeout)).map_err(|e| kind(&e))?;
        let line = read_line(&mut s).map_err(|e| kind(&e))?;
        format!("{} {peer}", line.trim())
    };
    let mut it = text.split_whitespace();
    match (it.next(), it.next(), it.next()) {
        (Some(n), Some(p), Some(g)) => Ok((n.into(), p.into(), g.into())),
        _ => Err(format!("other:bad answer {text:?}")),
    }
}

fn read_line(s: &mut TcpStream) -> std::io::Result<String> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b)? {
            0 => break,
            _ if b[0] == b'\n' => break,
            _ => out.push(b[0]),
        }
    }
    if out.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed",
        ));
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// `hold`: one connection; prints `connected NAME`, then for each line on stdin sends it and
/// expects it echoed, printing `ok` or `error KIND`.
fn hold(args: &[String]) {
    let to: SocketAddr = arg(args, "--to")
        .expect("--to")
        .parse()
        .expect("--to IP:PORT");
    let timeout =
        Duration::from_millis(arg(args, "--timeout-ms").map_or(2000, |t| t.parse().expect("ms")));
    let mut s = TcpStream::connect_timeout(&to, timeout).expect("connect");
    s.set_read_timeout(Some(timeout)).expect("timeout");
    let hello = read_line(&mut s).expect("greeting");
    println!(
        "connected {}",
        hello.split_whitespace().next().unwrap_or("")
    );
    std::io::stdout().flush().ok();
    let mut line = String::new();
    while std::io::stdin()
        .read_line(&mut line)
        .map(|n| n > 0)
        .unwrap_or(false)
    {
        let r = s.write_all(b"ping\n").and_then(|()| {
            let mut b = [0u8; 5];
            s.read_exact(&mut b)
        });
        match r {
            Ok(()) => println!("ok"),
            Err(e) => println!("error {}", kind(&e)),
        }
        std::io::stdout().flush().ok();
        line.clear();
    }
}

fn probe(args: &[String], duration: Option<Duration>) {
    let to: SocketAddr = arg(args, "--to")
        .expect("--to")
        .parse()
        .expect("--to IP:PORT");
    let udp = args.iter().any(|a| a == "--udp");
    let count: usize = arg(args, "--count").map_or(1, |c| c.parse().expect("--count"));
    let timeout =
        Duration::from_millis(arg(args, "--timeout-ms").map_or(2000, |t| t.parse().expect("ms")));
    let mut answers: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let (mut peers, mut names, mut first_us) = (Vec::new(), Vec::new(), Vec::new());
    let mut longest = Duration::ZERO;
    let start = Instant::now();
    let mut i = 0;
    loop {
        match duration {
            Some(d) if start.elapsed() >= d => break,
            None if i >= count => break,
            _ => {}
        }
        i += 1;
        let t = Instant::now();
        match attempt(to, udp, timeout) {
            Ok((name, peer, got)) => {
                *answers.entry(name.clone()).or_default() += 1;
                if peers.len() < 64 {
                    peers.push(peer);
                    names.push(got);
                }
            }
            Err(k) => *errors.entry(k).or_default() += 1,
        }
        let took = t.elapsed();
        longest = longest.max(took);
        if first_us.len() < 64 {
            first_us.push(took.as_micros() as u64);
        }
    }
    println!(
        "{}",
        json!({"answers": answers, "peers": peers, "getpeername": names, "errors": errors,
               "attempts": i, "first_us": first_us, "longest_ms": longest.as_millis() as u64})
    );
}

fn multi(args: &[String]) {
    let timeout =
        Duration::from_millis(arg(args, "--timeout-ms").map_or(2000, |t| t.parse().expect("ms")));
    let handles: Vec<_> = all(args, "--target")
        .into_iter()
        .map(|t| {
            let (name, rest) = t.split_once('=').expect("--target NAME=IP:PORT/PROTO");
            let (addr, proto) = rest.rsplit_once('/').expect("--target NAME=IP:PORT/PROTO");
            let to: SocketAddr = addr.parse().expect("--target address");
            let udp = proto.eq_ignore_ascii_case("udp");
            let name = name.to_string();
            std::thread::spawn(move || {
                let r = match attempt(to, udp, timeout) {
                    Ok((server, _, _)) => format!("ok {server}"),
                    Err(k) => format!("error {k}"),
                };
                (name, r)
            })
        })
        .collect();
    let out: BTreeMap<String, String> = handles
        .into_iter()
        .map(|h| h.join().expect("probe thread"))
        .collect();
    println!("{}", serde_json::to_string(&out).expect("json"));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => serve(&args),
        Some("probe") => probe(&args, None),
        Some("hold") => hold(&args),
        Some("multi") => multi(&args),
        Some("loop") => {
            let ms: u64 = arg(&args, "--ms").expect("--ms").parse().expect("--ms");
            probe(&args, Some(Duration::from_millis(ms)));
        }
        _ => {
            eprintln!("usage: sluice-svcprobe serve|probe|loop (see the source's header)");
            std::process::exit(2);
        }
    }
}
