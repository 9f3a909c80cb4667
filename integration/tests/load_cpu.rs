//! The benchmark's load generator pins itself where `--cpu` says (the one-core round-trip
//! scenarios depend on it), and refuses a CPU it cannot run on. Runs the real `sluice-load`
//! binary; needs no privilege and no namespace (it listens on 127.0.0.1 only).

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

/// The CPUs this test may run on, from its own `/proc/self/status`.
fn allowed_list(pid: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list in status")
        .trim()
        .to_string()
}

/// The last CPU of a list such as `0-1` or `0,2-3`.
fn last_of(list: &str) -> usize {
    let last = list.rsplit([',', '-']).next().expect("a CPU in the list");
    last.parse().expect("a CPU number")
}

/// Test that `sluice-load server --cpu N` runs on CPU N only (its status says so once it is
/// listening) and still serves and reports when its stdin closes.
#[test]
fn server_runs_on_the_cpu_it_is_given() {
    let cpu = last_of(&allowed_list("self"));
    let mut child = Command::new(test_support::bin("sluice-load"))
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--cpu",
            &cpu.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice-load");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read ready");
    assert_eq!(line.trim(), "ready");
    let pinned = allowed_list(&child.id().to_string());
    drop(child.stdin.take()); // the server stops when its stdin closes
    line.clear();
    out.read_line(&mut line).expect("read the report");
    let status = child.wait().expect("wait for sluice-load");
    assert_eq!(pinned, cpu.to_string(), "the server's allowed CPUs");
    assert!(status.success(), "server exit: {status}");
    assert!(line.contains("\"connections\""), "report: {line}");
}

/// Test that a CPU past the machine's or not a number is refused with a clear message and a
/// failed exit, before anything is opened.
#[test]
fn an_impossible_cpu_is_refused() {
    for (cpu, says) in [("4095", "--cpu 4095"), ("two", "bad value for --cpu")] {
        let out = Command::new(test_support::bin("sluice-load"))
            .args(["rr", "--to", "127.0.0.1:9", "--cpu", cpu])
            .output()
            .expect("run sluice-load");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--cpu {cpu} accepted");
        assert!(err.contains(says), "--cpu {cpu}: {err}");
        assert!(
            out.stdout.is_empty(),
            "--cpu {cpu} reported: {:?}",
            out.stdout
        );
    }
}
