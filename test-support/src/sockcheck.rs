//! Test support for the socket acceleration tests: `sluice-sockcheck` helper processes (a
//! server and clients that verify every byte, see `src/bin/sluice-sockcheck.rs`), run in a
//! pod's namespace inside the node's cgroup (accelerated) or outside it, and the datapath's
//! acceleration counters and sockhash as the tests read them.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::Ipv4Addr,
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Netns, Node};

/// Bound on one helper process, against hangs only (the helpers time out their own I/O).
pub const HANG_BOUND: Duration = Duration::from_secs(120);

pub fn sockcheck() -> PathBuf {
    crate::bin("sluice-sockcheck")
}

/// A helper process, killed and reaped on drop so the node's cgroup can be removed.
pub struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
    pub what: String,
}

impl Proc {
    pub fn start(mut cmd: Command, what: String) -> Self {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {what}: {e}"));
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        Self {
            child,
            stdin,
            out,
            what,
        }
    }

    /// The next line of output.
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        let n = self.out.read_line(&mut l).expect("read helper output");
        if n == 0 {
            let st = self.child.wait();
            panic!("{} exited ({st:?}) without answering", self.what);
        }
        l.trim_end().to_string()
    }

    pub fn say(&mut self, line: &str) {
        let w = self.stdin.as_mut().expect("stdin open");
        writeln!(w, "{line}").expect("write to helper");
    }

    /// Closes stdin, waits for the exit and says whether the process exited cleanly with a
    /// report of no error (for counting failures instead of stopping at the first).
    pub fn succeeded(mut self) -> bool {
        drop(self.stdin.take());
        let deadline = Instant::now() + HANG_BOUND;
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait for helper") {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "{} still running after {HANG_BOUND:?}",
                self.what
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut rest = String::new();
        let _ = self.out.read_to_string(&mut rest);
        let clean = rest
            .lines()
            .last()
            .and_then(|l| serde_json::from_str::<Value>(l).ok())
            .is_some_and(|v| v["error_count"] == 0);
        status.success() && clean
    }

    /// Closes stdin, waits for the exit and returns the JSON report, asserting that the
    /// process exited cleanly and saw no error.
    pub fn report(mut self) -> Value {
        drop(self.stdin.take());
        let deadline = Instant::now() + HANG_BOUND;
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait for helper") {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "{} still running after {HANG_BOUND:?}",
                self.what
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut rest = String::new();
        self.out.read_to_string(&mut rest).expect("read report");
        let last = rest.lines().last().unwrap_or_default();
        let v: Value = serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("{} ({status}): no report ({e}): {rest:?}", self.what));
        assert!(
            status.success() && v["error_count"] == 0,
            "{} failed ({status}): {v}",
            self.what
        );
        v
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a helper runs: in the node's cgroup (its sockets are accelerated) or outside it.
#[derive(Clone, Copy, PartialEq)]
pub enum Cg {
    In,
    Out,
}

pub fn command(node: &Node, ns: &Netns, cg: Cg, args: &[&str]) -> Command {
    let mut c = match cg {
        Cg::In => node.pod_command(ns, sockcheck()),
        Cg::Out => ns.command(sockcheck()),
    };
    c.args(args);
    c
}

/// Starts a server listening on `listen` and waits until it is.
pub fn server(node: &Node, ns: &Netns, cg: Cg, listen: &str) -> Proc {
    let mut p = Proc::start(
        command(node, ns, cg, &["server", "--listen", listen]),
        format!("server on {listen} in {}", ns.name),
    );
    assert_eq!(p.line(), "ready", "{}", p.what);
    p
}

pub fn start_client(node: &Node, ns: &Netns, cg: Cg, args: &[&str]) -> Proc {
    Proc::start(
        command(node, ns, cg, args),
        format!("sockcheck {} in {}", args.join(" "), ns.name),
    )
}

/// Runs a client to the end and returns its report (asserting it saw no error).
pub fn client(node: &Node, ns: &Netns, cg: Cg, args: &[&str]) -> Value {
    start_client(node, ns, cg, args).report()
}

pub fn num(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("no number {k} in {v}"))
}

/// The acceleration counters: sockets put into the sockhash, messages and bytes redirected.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Accel {
    pub sockets: u64,
    pub messages: u64,
    pub bytes: u64,
}

impl Accel {
    pub fn read(node: &Node) -> Self {
        let (sockets, _) = node.counter("sock:accelerated");
        let (messages, bytes) = node.counter("sock:redirected");
        Self {
            sockets,
            messages,
            bytes,
        }
    }

    /// What was counted since `before`.
    pub fn since(self, before: Self) -> Self {
        Self {
            sockets: self.sockets - before.sockets,
            messages: self.messages - before.messages,
            bytes: self.bytes - before.bytes,
        }
    }
}

/// Entries in the node's sockhash (`SL_SOCK_V1`).
pub fn sockhash_len(node: &Node) -> usize {
    sockhash_keys(node).len()
}

/// The keys of the node's sockhash: one per accelerated socket.
pub fn sockhash_keys(node: &Node) -> Vec<datapath_common::sock::SockKey> {
    use aya::maps::{Map, MapData, SockHash};
    let path = datapath_user::map_path(&node.bpffs(), datapath_common::sock::MAP_NAME);
    let md = MapData::from_pin(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let h: SockHash<MapData, datapath_common::sock::SockKey> =
        SockHash::try_from(Map::SockHash(md)).expect("sockhash map type");
    h.keys().map(|k| k.expect("iterate the sockhash")).collect()
}

/// Waits until every socket has left the sockhash (closing a socket unlinks it).
pub fn assert_sockhash_drains(node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while sockhash_len(node) != 0 {
        assert!(
            Instant::now() < deadline,
            "{} sockhash entries left after every connection closed",
            sockhash_len(node)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn addr(ip: Ipv4Addr, port: u16) -> String {
    format!("{ip}:{port}")
}
