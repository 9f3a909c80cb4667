//! The agent's life on a node: a `kill -9` in the middle of a TCP stream between two pods (the
//! datapath keeps forwarding on its pins and netlink filters, the restarted agent adopts them),
//! a clean SIGTERM, `--uninstall`, bad flags, `--help`, and `sluicectl` with and without an
//! agent to talk to.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    path::Path,
    process::{Command, Output, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;
use test_support::{
    bin,
    node::{DEFAULT_POD_CIDR, NODE_IP, WORLD_IP},
    Node, NodeOptions, Pod,
};

/// How long a test waits for something that should happen at once (a bound against hanging).
const DEADLINE: Duration = Duration::from_secs(20);

/// Runs `cmd` to completion with its output captured; panics if it runs longer than 30 s (an
/// agent that should have refused to start but did not would otherwise hang the test).
fn output_bounded(mut cmd: Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(out) => out.expect("wait for the command"),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGKILL);
            panic!("{cmd:?} still running after 30 s");
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Pod names listed by `sluicectl endpoints`, sorted.
fn endpoint_pods(node: &Node) -> Vec<String> {
    let v = node.sluicectl_json(&["endpoints"]);
    let mut names: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("endpoints is not a list: {v}"))
        .iter()
        .map(|e| e["pod"].as_str().unwrap_or_default().to_string())
        .collect();
    names.sort();
    names
}

/// Waits until `sluicectl status` gets an answer. `Node::start_agent` returns as soon as the
/// conflist and the socket file exist, which after a `kill -9` they already do (the killed
/// agent's stale socket): it does not wait for the new agent.
fn wait_until_agent_answers(node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = node.sluicectl(&["status"]);
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted agent does not answer: {}\n{}",
            text(&out.stderr),
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The agent log without ANSI colour sequences.
fn plain_log(node: &Node) -> String {
    let log = node.agent_log();
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The byte at `offset` of the stream: a big-endian u64 counter, one per 8 bytes.
fn pattern_byte(offset: u64) -> u8 {
    (offset / 8).to_be_bytes()[(offset % 8) as usize]
}

/// One TCP connection from a pod to another carrying the counter pattern without pause until
/// stopped; the receiver checks every byte as it arrives.
struct Stream {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    writer: JoinHandle<u64>,
    reader: JoinHandle<u64>,
}

impl Stream {
    fn start(from: &Pod, to: &Pod, port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = mpsc::channel();
        let dst = to.ip;
        let got = received.clone();
        let reader = to.ns.spawn(move || {
            let l = TcpListener::bind((dst, port)).expect("bind the receiver");
            ready_tx.send(()).unwrap();
            let (mut s, _) = l.accept().expect("accept the stream");
            // A stall this long means the datapath stopped forwarding.
            s.set_read_timeout(Some(DEADLINE)).unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let mut offset = 0u64;
            loop {
                let n = match s.read(&mut buf) {
                    Ok(0) => return offset,
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => panic!("stream broken after {offset} bytes: {e} ({:?})", e.kind()),
                };
                for (i, b) in buf[..n].iter().enumerate() {
                    let at = offset + i as u64;
                    assert_eq!(
                        *b,
                        pattern_byte(at),
                        "stream corrupted at byte {at}: lost, duplicated or reordered data"
                    );
                }
                offset += n as u64;
                got.store(offset, Ordering::Relaxed);
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("receiver listening");
        let halt = stop.clone();
        let writer = from.ns.spawn(move || {
            let mut s = TcpStream::connect_timeout(&(dst, port).into(), Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connect to {dst}:{port}: {e}"));
            s.set_write_timeout(Some(DEADLINE)).unwrap();
            let mut word = 0u64;
            let mut buf = Vec::with_capacity(64 * 1024);
            while !halt.load(Ordering::Relaxed) {
                buf.clear();
                for _ in 0..8 * 1024 {
                    buf.extend_from_slice(&word.to_be_bytes());
                    word += 1;
                }
                s.write_all(&buf)
                    .unwrap_or_else(|e| panic!("write after {} bytes: {e}", word * 8));
                // About 6 MB/s: continuous, without starving the other tests of CPU.
                std::thread::sleep(Duration::from_millis(10));
            }
            s.shutdown(Shutdown::Write).expect("close the stream");
            word * 8
        });
        Self {
            stop,
            received,
            writer,
            reader,
        }
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Waits until `more` bytes beyond what has arrived now have arrived.
    fn wait_for_more(&self, more: u64, what: &str) {
        let target = self.received() + more;
        let deadline = Instant::now() + DEADLINE;
        while self.received() < target {
            assert!(
                !self.reader.is_finished() && !self.writer.is_finished(),
                "stream ended {what}"
            );
            assert!(
                Instant::now() < deadline,
                "stream stalled {what}: {} bytes received, waiting for {target}",
                self.received()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the writer; returns (bytes written, bytes received in order).
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let written = self
            .writer
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        let read = self
            .reader
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (written, read)
    }
}

/// Test that a `kill -9` of the agent in the middle of a pod-to-pod TCP stream loses nothing:
/// the datapath keeps forwarding while no agent runs, the restarted agent adopts the pinned
/// maps and still lists both pods, every byte arrives in order without a reset, and a pod
/// added after the restart reaches the old ones.
#[test]
fn agent_sigkill_mid_stream_keeps_forwarding_and_restart_adopts_pins() {
    let mut node = Node::new(NodeOptions::default());
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    let stream = Stream::start(&a, &b, 5001);
    stream.wait_for_more(1 << 20, "before the kill");

    node.stop_agent(true);
    // The stream keeps going with no agent at all, for a couple of seconds.
    let down = Instant::now();
    stream.wait_for_more(1 << 20, "while the agent was dead");
    std::thread::sleep(Duration::from_secs(2).saturating_sub(down.elapsed()));
    stream.wait_for_more(64 << 10, "two seconds after the kill");
    let out = node.sluicectl(&["status"]);
    assert!(
        !out.status.success(),
        "sluicectl answered with no agent running"
    );
    assert!(
        text(&out.stderr).contains("is sluice-agent running"),
        "sluicectl does not say the agent is unreachable: {}",
        text(&out.stderr)
    );

    node.start_agent();
    wait_until_agent_answers(&node);
    // Every map the datapath pins must be adopted, none recreated.
    let maps = daemon::datapath::MAP_LAYOUTS.len();
    let log = plain_log(&node);
    assert_eq!(
        log.matches("agent ready").count(),
        2,
        "the agent did not start again:\n{log}"
    );
    assert!(
        log.contains(&format!("adopted_maps={maps}")),
        "the restarted agent did not adopt the {maps} pinned maps:\n{log}"
    );
    let status = node.sluicectl_json(&["status"]);
    assert_eq!(status["adoptedMaps"], maps, "{status}");
    assert_eq!(status["datapathLoaded"], true, "{status}");
    assert_eq!(endpoint_pods(&node), ["a", "b"]);
    stream.wait_for_more(1 << 20, "after the restart");

    let (written, read) = stream.finish();
    println!("streamed {written} bytes through a kill -9 and a restart of the agent");
    assert_eq!(
        read, written,
        "bytes lost: wrote {written}, received {read}"
    );

    let c = node.add_pod("c");
    assert!(c.ping(a.ip), "a pod added after the restart cannot reach a");
    assert!(c.ping(b.ip), "a pod added after the restart cannot reach b");
    assert!(a.ping(c.ip), "an old pod cannot reach the new one");
    assert_eq!(endpoint_pods(&node), ["a", "b", "c"]);
}

/// Test that SIGTERM stops the agent cleanly: its socket is removed, the CNI config and
/// plugin stay installed, pods keep reaching each other and the outside, and a DEL works with
/// no agent running.
#[test]
fn agent_sigterm_removes_socket_and_keeps_datapath() {
    let mut node = Node::new(NodeOptions::default());
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    let sock = node.state_dir().join("agent.sock");
    assert!(sock.exists());

    node.stop_agent(false);
    assert!(!sock.exists(), "agent socket left after SIGTERM");
    assert!(
        plain_log(&node).contains("agent stopping"),
        "no clean stop in the log:\n{}",
        node.agent_log()
    );
    assert!(node.conflist_path().exists(), "conflist removed on SIGTERM");
    assert!(
        node.path("bin/sluice").exists(),
        "plugin removed on SIGTERM"
    );
    assert!(a.ping(b.ip), "a cannot ping b after the agent stopped");
    assert!(b.ping(a.ip), "b cannot ping a after the agent stopped");
    assert!(
        a.ping(WORLD_IP),
        "a cannot reach the outside after the agent stopped"
    );

    let out = node.sluicectl(&["status"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is sluice-agent running"),
        "{}",
        text(&out.stderr)
    );

    node.del_pod(&b);
    let left: Vec<_> = node.endpoints().into_iter().map(|e| e.name).collect();
    assert_eq!(left, ["a"], "DEL with the agent stopped left an endpoint");
}

/// Test that the `log` records of the libraries the agent uses reach its `tracing` output:
/// aya reports its kernel feature detection through `log` at debug level when it loads the
/// datapath, so with `RUST_LOG=info,aya=debug` that record appears in the agent's log, under
/// its `log` target `aya::bpf`.
#[test]
fn agent_log_carries_library_log_records() {
    let mut node = Node::new(NodeOptions::default());
    node.stop_agent(false);
    let _ = std::fs::remove_file(node.state_dir().join("agent.sock"));
    let log_path = node.path("library-log.log");
    let log = std::fs::File::create(&log_path).expect("create log");
    let mut child = node
        .agent_command()
        .env("RUST_LOG", "info,aya=debug")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .expect("spawn sluice-agent");
    // The socket is bound after the datapath is loaded.
    let sock = node.state_dir().join("agent.sock");
    let deadline = Instant::now() + DEADLINE;
    while !sock.exists() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "sluice-agent exited ({st}):\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "agent socket not bound");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM).expect("SIGTERM the agent");
    child.wait().expect("wait for the agent");
    let out = std::fs::read_to_string(&log_path).expect("read the agent log");
    let line = out
        .lines()
        .find(|l| l.contains("BPF Feature Detection"))
        .unwrap_or_else(|| panic!("no aya log record in the agent log:\n{out}"));
    assert!(
        line.contains("DEBUG") && line.contains("aya::bpf"),
        "aya's record lacks its level or target: {line}"
    );
}

/// Test that a pinned map whose layout is not what this build expects (here `SL_EP_V1`
/// replaced by an array of 4 `u64`s) is refused with a typed error naming the pin, the layout
/// this build expects (the sizes of datapath-common's key and value, its max entries) and the
/// one found, and that the agent refuses to start on it, saying the same.
#[test]
fn pin_with_foreign_layout_is_refused_by_name() {
    use daemon::pins::{Layout, PinError};
    use datapath_common::{addr::IpKey, endpoint};

    let mut node = Node::new(NodeOptions::default());
    node.stop_agent(false);
    let path = datapath_user::map_path(&node.bpffs(), endpoint::MAP_NAME);
    std::fs::remove_file(&path).expect("remove the endpoint map pin");
    aya::maps::Array::<aya::maps::MapData, u64>::create(4, 0)
        .expect("create an array map")
        .pin(&path)
        .expect("pin it in place of SL_EP_V1");

    let found = Layout {
        key_size: 4,
        value_size: 8,
        max_entries: 4,
    };
    match daemon::pins::open(&node.bpffs(), endpoint::MAP_NAME) {
        Err(PinError::Layout {
            path: p,
            expected,
            found: f,
        }) => {
            assert_eq!(p, path);
            let want = Layout {
                key_size: std::mem::size_of::<IpKey>() as u32,
                value_size: std::mem::size_of::<endpoint::Value>() as u32,
                max_entries: endpoint::MAX_ENTRIES,
            };
            assert_eq!(expected, want);
            assert_eq!(f, found);
        }
        Err(e) => panic!("not a layout error: {e}"),
        Ok(_) => panic!("a pin of another layout was opened"),
    }

    let out = output_bounded(node.agent_command());
    assert!(!out.status.success(), "the agent started on a foreign pin");
    let err = text(&out.stderr);
    assert!(
        err.contains(&path.display().to_string()) && err.contains(&found.to_string()),
        "the agent's error names neither the pin nor what it found:\n{err}"
    );
}

/// `sluice-agent --uninstall` in the node namespace, with the node's directories.
fn uninstall_command(node: &Node) -> Command {
    let mut c = node.node.command(bin("sluice-agent"));
    c.args(["--uninstall", "--uplink", "up0"]);
    c.arg("--bpffs").arg(node.bpffs());
    c.arg("--cni-conf-dir").arg(node.path("conf"));
    c.arg("--cni-bin-dir").arg(node.path("bin"));
    c
}

/// TC filters of the uplink in one direction, as `tc filter show` prints them.
fn uplink_filters(node: &Node, dir: &str) -> String {
    node.node.sh(&format!("tc filter show dev up0 {dir}"))
}

/// A node whose agent ran (with a pod), was stopped by SIGTERM, and was then uninstalled
/// twice (the second run must be harmless).
fn uninstalled_node() -> Node {
    let mut node = Node::new(NodeOptions::default());
    let a = node.add_pod("a");
    assert!(a.ping(WORLD_IP), "datapath not working before --uninstall");
    for dir in ["ingress", "egress"] {
        let f = uplink_filters(&node, dir);
        assert!(f.contains("bpf"), "no datapath filter on up0 {dir}: {f}");
    }
    node.stop_agent(false);
    for round in 1..=2 {
        let out = output_bounded(uninstall_command(&node));
        assert!(
            out.status.success(),
            "--uninstall (round {round}) failed: {}",
            text(&out.stderr)
        );
    }
    node
}

/// Test that `sluice-agent --uninstall` after the agent stopped removes the pins, the CNI
/// config and the plugin binary, and that running it again is harmless.
#[test]
fn agent_uninstall_removes_pins_and_cni_files() {
    let node = uninstalled_node();
    let pins = node.bpffs().join("sluice");
    assert!(!pins.exists(), "{} left behind", pins.display());
    assert!(!node.conflist_path().exists(), "conflist left behind");
    assert!(
        !node.path("bin/sluice").exists(),
        "plugin binary left behind"
    );
}

/// Test that `sluice-agent --uninstall` detaches the datapath from the uplink: no TC filter
/// is left on up0, ingress or egress.
#[test]
fn agent_uninstall_detaches_uplink_filters() {
    let node = uninstalled_node();
    let left: Vec<String> = ["ingress", "egress"]
        .into_iter()
        .map(|dir| (dir, uplink_filters(&node, dir)))
        .filter(|(_, f)| !f.trim().is_empty())
        .map(|(dir, f)| format!("up0 {dir}:\n{f}"))
        .collect();
    assert!(
        left.is_empty(),
        "sluice filters left on the uplink after --uninstall:\n{}",
        left.join("")
    );
}

/// Asserts that a failed start left nothing a runtime or operator could pick up.
fn assert_nothing_installed(node: &Node) {
    assert!(!node.conflist_path().exists(), "conflist written");
    assert!(!node.path("bin/sluice").exists(), "plugin installed");
    assert!(!node.bpffs().join("sluice").exists(), "pins created");
    assert!(!node.state_dir().join("agent.sock").exists(), "socket left");
}

fn not_started(pod_cidr: Option<&str>) -> Node {
    Node::new(NodeOptions {
        pod_cidr: pod_cidr.map(String::from),
        start_agent: false,
        ..NodeOptions::default()
    })
}

/// Test that a pod CIDR that is not a CIDR is refused by flag parsing (exit 2, naming the
/// flag and the value) before anything is installed.
#[test]
fn agent_rejects_invalid_pod_cidr_flag() {
    let node = not_started(Some("not-a-cidr"));
    let out = output_bounded(node.agent_command());
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--pod-cidr") && err.contains("not-a-cidr"),
        "unclear error: {err}"
    );
    assert_nothing_installed(&node);
}

/// Test that an agent with no pod CIDR (no flag, no manifests) exits non-zero with a message
/// pointing at --pod-cidr, and installs nothing.
#[test]
fn agent_without_pod_cidr_exits_with_hint() {
    let node = not_started(None);
    let out = output_bounded(node.agent_command());
    let err = text(&out.stderr);
    assert!(!out.status.success(), "agent started without a pod CIDR");
    assert!(err.contains("--pod-cidr"), "no hint at --pod-cidr: {err}");
    assert_nothing_installed(&node);
}

/// Test that an uplink that does not exist makes the agent exit non-zero naming the
/// interface, and install nothing.
#[test]
fn agent_with_missing_uplink_exits_naming_it() {
    let node = not_started(Some(DEFAULT_POD_CIDR));
    // Built by hand: the fixture's command already carries `--uplink up0`.
    let mut cmd = node.node.command(bin("sluice-agent"));
    cmd.args(["--node-name", "node-1", "--uplink", "does-not-exist"]);
    cmd.args(["--pod-cidr", DEFAULT_POD_CIDR]);
    cmd.arg("--state-dir").arg(node.state_dir());
    cmd.arg("--bpffs").arg(node.bpffs());
    cmd.arg("--cni-conf-dir").arg(node.path("conf"));
    cmd.arg("--cni-bin-dir").arg(node.path("bin"));
    cmd.arg("--cni-plugin").arg(bin("sluice-cni"));
    let out = output_bounded(cmd);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "agent started on a missing uplink");
    assert!(
        err.contains("does-not-exist"),
        "error does not name the interface: {err}"
    );
    assert_nothing_installed(&node);
}

/// The long flags of a `--help` text, in order.
fn long_flags(help: &str) -> Vec<String> {
    help.lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("--") || l.starts_with("-h,") || l.starts_with("-o,"))
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("--"))
                .map(|w| w.trim_end_matches(',').to_string())
        })
        .collect()
}

/// Asserts that every flag line of a clap long help is followed by a description.
fn assert_every_flag_explained(tool: &str, help: &str) {
    let lines: Vec<&str> = help.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        if !(t.starts_with("--") || (t.starts_with('-') && t.chars().nth(2) == Some(','))) {
            continue;
        }
        let inline = t.split("  ").skip(1).any(|s| !s.trim().is_empty());
        let next = lines.get(i + 1).map(|n| n.trim()).unwrap_or_default();
        assert!(
            inline || !(next.is_empty() || next.starts_with('-')),
            "{tool} --help: flag `{t}` has no description"
        );
    }
}

/// Test that `sluice-agent --help` and `sluicectl --help` succeed and describe every flag,
/// the agent's including --manifests, --bpffs and --state-dir.
#[test]
fn help_explains_every_flag() {
    let agent = output_bounded({
        let mut c = Command::new(bin("sluice-agent"));
        c.arg("--help");
        c
    });
    assert!(agent.status.success(), "{}", text(&agent.stderr));
    let help = text(&agent.stdout);
    let flags = long_flags(&help);
    for f in [
        "--manifests",
        "--bpffs",
        "--state-dir",
        "--pod-cidr",
        "--uplink",
        "--cni-conf-dir",
        "--cni-bin-dir",
        "--uninstall",
    ] {
        assert!(flags.iter().any(|x| x == f), "{f} missing from:\n{help}");
    }
    assert_every_flag_explained("sluice-agent", &help);

    let ctl = output_bounded({
        let mut c = Command::new(bin("sluicectl"));
        c.arg("--help");
        c
    });
    assert!(ctl.status.success(), "{}", text(&ctl.stderr));
    let help = text(&ctl.stdout);
    let flags = long_flags(&help);
    for f in ["--state-dir", "--output"] {
        assert!(flags.iter().any(|x| x == f), "{f} missing from:\n{help}");
    }
    for sub in ["status", "endpoints"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(sub)),
            "subcommand {sub} not described:\n{help}"
        );
    }
    assert_every_flag_explained("sluicectl", &help);
}

/// Test that `sluicectl status -o json` reports the loaded datapath, the node's settings and
/// the number of endpoints.
#[test]
fn sluicectl_status_reports_datapath_and_endpoints() {
    let node = Node::new(NodeOptions::default());
    let s = node.sluicectl_json(&["status"]);
    assert_eq!(s["datapathLoaded"], true, "{s}");
    assert_eq!(s["endpoints"], 0, "{s}");
    assert_eq!(s["adoptedMaps"], 0, "fresh node adopted maps: {s}");
    let _a = node.add_pod("a");
    let _b = node.add_pod("b");
    let s = node.sluicectl_json(&["status"]);
    assert_eq!(s["datapathLoaded"], true, "{s}");
    assert_eq!(s["podCidrs"], serde_json::json!([DEFAULT_POD_CIDR]), "{s}");
    assert_eq!(s["endpoints"], 2, "{s}");
    assert_eq!(s["nodeName"], "node-1", "{s}");
    assert_eq!(s["uplink"], "up0", "{s}");
    assert_eq!(s["nodeIp"], NODE_IP.to_string(), "{s}");
    assert_eq!(s["manifests"], Value::Null, "{s}");
}

/// Test that `sluicectl` with a state directory where no agent runs fails with a message
/// saying the agent cannot be reached.
#[test]
fn sluicectl_without_agent_says_unreachable() {
    test_support::require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    for sub in ["status", "endpoints"] {
        let out = output_bounded({
            let mut c = Command::new(bin("sluicectl"));
            c.arg(sub).arg("--state-dir").arg(dir.path());
            c
        });
        let err = text(&out.stderr);
        assert!(!out.status.success(), "sluicectl {sub} succeeded");
        assert!(
            err.contains("connect to the agent") && err.contains("is sluice-agent running"),
            "sluicectl {sub} does not say the agent is unreachable: {err}"
        );
        assert!(
            err.contains(&dir.path().display().to_string()),
            "sluicectl {sub} does not name the socket: {err}"
        );
    }
    assert!(!Path::new(&dir.path().join("agent.sock")).exists());
}

/// Test that a second agent on the same state dir refuses to start, names the reason, and
/// leaves the running one serving.
#[test]
fn second_agent_on_same_state_dir_is_refused() {
    let node = Node::new(NodeOptions::default());
    let out = node.agent_command().output().expect("run a second agent");
    assert!(!out.status.success(), "a second agent started");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already running"), "unclear refusal: {err}");
    let st = node.sluicectl(&["status", "-o", "json"]);
    assert!(st.status.success(), "the first agent stopped answering");
}
