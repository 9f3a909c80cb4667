//! Traffic for the cluster tests: one small Python program (servers that say who they are and
//! who they saw, a client that sends a payload and checks it arrived whole) run as a pod's
//! process, in or outside its node's cgroup, or in the outside namespace.

use std::{
    io::{BufRead as _, BufReader},
    net::Ipv4Addr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use test_support::cluster::{poll_until, ClusterPod};
use test_support::Netns;

/// serve-tcp PORT NAME: every connection is read to EOF and answered with
/// "NAME PEER_IP LEN SHA256"; serve-udp PORT NAME: every datagram is answered "NAME PEER_IP".
/// tcp HOST PORT LEN PACE_MS WAIT_S: connects (given WAIT_S seconds), sends LEN pseudo-random
/// bytes (64 KiB chunks, PACE_MS apart),
/// prints the server's answer then " | LEN SHA256" of what it sent; udp HOST PORT: prints the
/// answer. Exit 1 with "error: …" when anything fails.
const TOOL: &str = r#"
import hashlib, os, socket, sys, threading, time
def serve_tcp(port, name):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(256)
    print("ready", flush=True)
    def handle(c, a):
        h = hashlib.sha256(); n = 0
        try:
            c.settimeout(120)
            while True:
                b = c.recv(65536)
                if not b: break
                h.update(b); n += len(b)
            c.sendall(f"{name} {a[0]} {n} {h.hexdigest()}\n".encode())
        except OSError:
            pass
        c.close()
    while True:
        c, a = s.accept()
        threading.Thread(target=handle, args=(c, a), daemon=True).start()
def serve_udp(port, name):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    print("ready", flush=True)
    while True:
        _, a = s.recvfrom(2048); s.sendto(f"{name} {a[0]}".encode(), a)
def tcp(host, port, n, pace, wait):
    s = socket.create_connection((host, port), timeout=wait); s.settimeout(60)
    h = hashlib.sha256(); sent = 0; rnd = os.urandom(1 << 16)
    while sent < n:
        b = rnd[: min(len(rnd), n - sent)]; s.sendall(b); h.update(b); sent += len(b)
        rnd = hashlib.sha256(rnd[:64]).digest() * 2048
        if pace: time.sleep(pace / 1000)
    s.shutdown(socket.SHUT_WR)
    r = b""
    while True:
        b = s.recv(4096)
        if not b: break
        r += b
    print(f"{r.decode().strip()} | {sent} {h.hexdigest()}")
def udp(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    for _ in range(3):
        s.sendto(b"x", (host, port))
        try:
            print(s.recv(2048).decode()); return
        except socket.timeout:
            pass
    raise OSError("no answer")
try:
    m, a = sys.argv[1], sys.argv[2:]
    if m == "serve-tcp": serve_tcp(int(a[0]), a[1])
    elif m == "serve-udp": serve_udp(int(a[0]), a[1])
    elif m == "tcp": tcp(a[0], int(a[1]), int(a[2]), int(a[3]), float(a[4]))
    elif m == "udp": udp(a[0], int(a[1]))
except Exception as e:
    print(f"error: {e!r}"); sys.exit(1)
"#;

/// A server process, killed on drop.
pub struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(ns: &Netns, mode: &str, port: u16, name: &str) -> Server {
    let mut child = ns
        .command("python3")
        .args(["-c", TOOL, mode, &port.to_string(), name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read server stdout");
    let server = Server(child);
    assert_eq!(line.trim(), "ready", "server {name} did not start");
    server
}

/// A TCP server on `port` in `ns`, answering with `name`.
pub fn serve_tcp(ns: &Netns, port: u16, name: &str) -> Server {
    serve(ns, "serve-tcp", port, name)
}

/// A UDP server on `port` in `ns`, answering with `name`.
pub fn serve_udp(ns: &Netns, port: u16, name: &str) -> Server {
    serve(ns, "serve-udp", port, name)
}

/// What a TCP exchange gave: who served it, whom it saw, and whether the bytes arrived whole.
#[derive(Debug)]
pub struct TcpAnswer {
    pub server: String,
    pub peer: Ipv4Addr,
    pub intact: bool,
    pub len: u64,
}

/// Where a client process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// A container process of the pod (its node's cgroup: socket programs see it).
    Socket,
    /// A process in the pod's namespace outside the cgroup (the TC path).
    Tc,
}

pub fn pod_cmd(pod: &ClusterPod, from: Via) -> Command {
    match from {
        Via::Socket => pod.command("python3"),
        Via::Tc => pod.ns.command("python3"),
    }
}

/// How long a client waits for a connection that should succeed (a lost SYN is resent at 1 s).
pub const CONNECT: Duration = Duration::from_secs(3);

/// Runs the TCP client `cmd` (a python3 command) sending `len` bytes to `host:port`.
pub fn tcp_with(
    cmd: Command,
    host: &str,
    port: u16,
    len: u64,
    pace_ms: u64,
) -> Result<TcpAnswer, String> {
    tcp_within(cmd, host, port, len, pace_ms, CONNECT)
}

/// [`tcp_with`], giving the connection `wait` to be made.
pub fn tcp_within(
    mut cmd: Command,
    host: &str,
    port: u16,
    len: u64,
    pace_ms: u64,
    wait: Duration,
) -> Result<TcpAnswer, String> {
    let out = cmd
        .args([
            "-c",
            TOOL,
            "tcp",
            host,
            &port.to_string(),
            &len.to_string(),
            &pace_ms.to_string(),
            &wait.as_secs_f64().to_string(),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        return Err(format!("{text} {}", String::from_utf8_lossy(&out.stderr)));
    }
    let (answer, mine) = text
        .split_once(" | ")
        .ok_or_else(|| format!("bad output {text:?}"))?;
    let a: Vec<&str> = answer.split_whitespace().collect();
    let m: Vec<&str> = mine.split_whitespace().collect();
    if a.len() != 4 || m.len() != 2 {
        return Err(format!("bad output {text:?}"));
    }
    Ok(TcpAnswer {
        server: a[0].to_string(),
        peer: a[1].parse().map_err(|e| format!("{text:?}: {e}"))?,
        intact: a[2] == m[0] && a[3] == m[1],
        len: a[2].parse().map_err(|e| format!("{text:?}: {e}"))?,
    })
}

/// One small TCP exchange from `pod` to `host:port`.
pub fn tcp(
    pod: &ClusterPod,
    from: Via,
    host: impl ToString,
    port: u16,
) -> Result<TcpAnswer, String> {
    tcp_with(pod_cmd(pod, from), &host.to_string(), port, 1000, 0)
}

/// One UDP exchange from `pod` (as a container process): (server name, peer it saw).
pub fn udp(pod: &ClusterPod, host: impl ToString, port: u16) -> Result<(String, Ipv4Addr), String> {
    let out = pod
        .command("python3")
        .args(["-c", TOOL, "udp", &host.to_string(), &port.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        return Err(text);
    }
    let (name, peer) = text
        .split_once(' ')
        .ok_or_else(|| format!("bad output {text:?}"))?;
    Ok((
        name.to_string(),
        peer.parse().map_err(|e| format!("{text:?}: {e}"))?,
    ))
}

/// Polls `f` until it answers (up to `limit`); panics with the last error and `logs()`.
pub fn eventually<T>(
    what: &str,
    limit: Duration,
    logs: impl Fn() -> String,
    mut f: impl FnMut() -> Result<T, String>,
) -> T {
    let mut last = None;
    let mut err = String::new();
    let mut tries = 0;
    let took = poll_until(limit, || {
        tries += 1;
        match f() {
            Ok(v) => {
                last = Some(v);
                true
            }
            Err(e) => {
                err = e;
                false
            }
        }
    });
    match (took, last) {
        (Some(t), Some(v)) => {
            if tries > 1 {
                println!("{what}: after {t:?}, {tries} tries, last failure: {err}");
            } else {
                println!("{what}: after {t:?}");
            }
            v
        }
        _ => panic!("{what}: not within {limit:?}: {err}\n{}", logs()),
    }
}
