//! Concurrency and crash tests of [`Store`]: parallel threads and real processes sharing a
//! directory, a lock held by someone else, and what crashed or killed writers leave behind.
//! Processes are made by re-executing this test binary on one test
//! ([`process_child_allocates_when_spawned`]) with the `SLUICE_IPAM_CHILD_*` variables set.

use std::collections::BTreeSet;
use std::env;
use std::fs;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::tests::{ip, net, open, owner, store_dir};
use crate::{disk, Store};

const CHILD_DIR: &str = "SLUICE_IPAM_CHILD_DIR";
const CHILD_RANGE: &str = "SLUICE_IPAM_CHILD_RANGE";
const CHILD_PREFIX: &str = "SLUICE_IPAM_CHILD_PREFIX";
const CHILD_COUNT: &str = "SLUICE_IPAM_CHILD_COUNT";

/// `10.244.1.1` ..= `10.244.1.n`.
fn first_n_of_slash24(n: u8) -> BTreeSet<IpAddr> {
    (1..=n).map(|i| ip(&format!("10.244.1.{i}"))).collect()
}

fn temp_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(disk::TEMP_PREFIX))
        .collect()
}

/// Re-executes this test binary on the child test, which allocates `count` addresses for
/// containers `<prefix>-<i>` in `range`.
fn spawn_child(dir: &Path, range: &str, prefix: &str, count: usize) -> Child {
    let module = module_path!().split_once("::").unwrap().1;
    Command::new(env::current_exe().unwrap())
        .args([
            &format!("{module}::process_child_allocates_when_spawned"),
            "--exact",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(CHILD_DIR, dir)
        .env(CHILD_RANGE, range)
        .env(CHILD_PREFIX, prefix)
        .env(CHILD_COUNT, count.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Test that, when spawned by another test with `SLUICE_IPAM_CHILD_DIR` set, this process
/// allocates its addresses one by one; run normally it does nothing.
#[test]
fn process_child_allocates_when_spawned() {
    let Ok(dir) = env::var(CHILD_DIR) else {
        return;
    };
    let range = env::var(CHILD_RANGE).unwrap();
    let prefix = env::var(CHILD_PREFIX).unwrap();
    let count: usize = env::var(CHILD_COUNT).unwrap().parse().unwrap();
    let store = Store::open(dir, vec![net(&range)], Vec::new()).unwrap();
    for i in 0..count {
        store
            .allocate(&owner(&format!("{prefix}-{i}")), &[])
            .unwrap();
    }
}

/// Test that 100 threads, each with its own `Store` on one directory, get 100 distinct
/// addresses: exactly .1 to .100, since the lock serializes them behind one cursor.
#[test]
fn hundred_threads_get_distinct_addresses() {
    let (_tmp, dir) = store_dir();
    let got: Vec<IpAddr> = thread::scope(|s| {
        let handles: Vec<_> = (0..100)
            .map(|i| {
                let dir = &dir;
                s.spawn(move || {
                    let store = open(dir, &["10.244.1.0/24"]);
                    let a = store.allocate(&owner(&format!("t{i}")), &[]).unwrap();
                    a[0].addr
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: BTreeSet<IpAddr> = got.iter().copied().collect();
    assert_eq!(got.len(), 100);
    assert_eq!(distinct, first_n_of_slash24(100));
    assert_eq!(open(&dir, &["10.244.1.0/24"]).list().unwrap().len(), 100);
}

/// Test that threads sharing one `Store` can allocate, read back and release concurrently
/// without seeing each other's addresses, leaving the store empty.
#[test]
fn shared_store_allocate_release_cycles() {
    let (_tmp, dir) = store_dir();
    let store = open(&dir, &["10.244.1.0/24", "fd00::/120"]);
    thread::scope(|s| {
        for t in 0..16 {
            let store = &store;
            s.spawn(move || {
                let id = format!("t{t}");
                for _ in 0..20 {
                    let got = store.allocate(&owner(&id), &[]).unwrap();
                    assert_eq!(store.get(&id, "eth0").unwrap(), got);
                    let want: Vec<IpAddr> = got.iter().map(|a| a.addr).collect();
                    assert_eq!(store.release(&id, "eth0").unwrap(), want);
                }
            });
        }
    });
    assert!(store.list().unwrap().is_empty());
    assert_eq!(
        store.free_count().unwrap(),
        vec![(net("10.244.1.0/24"), 254), (net("fd00::/120"), 255)]
    );
}

/// Test that 8 processes allocating 12 addresses each get 96 distinct addresses, .1 to .96.
#[test]
fn parallel_processes_get_distinct_addresses() {
    let (_tmp, dir) = store_dir();
    let children: Vec<Child> = (0..8)
        .map(|p| spawn_child(&dir, "10.244.1.0/24", &format!("p{p}"), 12))
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "child failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let list = open(&dir, &["10.244.1.0/24"]).list().unwrap();
    let addrs: BTreeSet<IpAddr> = list.iter().map(|a| a.addr).collect();
    assert_eq!(addrs, first_n_of_slash24(96));
    let owners: BTreeSet<String> = list.into_iter().map(|a| a.owner.container_id).collect();
    let want: BTreeSet<String> = (0..8)
        .flat_map(|p| (0..12).map(move |i| format!("p{p}-{i}")))
        .collect();
    assert_eq!(owners, want);
}

/// Test that a process killed (SIGKILL) while allocating leaves a consistent store: every
/// file decodes, addresses are contiguous from .1, no temp file survives the next open, and
/// the next allocation gets the address after the last one.
#[test]
fn killed_process_leaves_consistent_store() {
    let (_tmp, dir) = store_dir();
    let mut child = spawn_child(&dir, "10.244.1.0/24", "crash", 250);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let started = dir.join("10.244.1.5").exists();
        if started || child.try_wait().unwrap().is_some() {
            break;
        }
        thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let store = open(&dir, &["10.244.1.0/24"]);
    assert!(temp_files(&dir).is_empty(), "{:?}", temp_files(&dir));
    let list = store.list().unwrap();
    assert!(list
        .iter()
        .all(|a| a.owner.container_id.starts_with("crash-")));
    let n = u8::try_from(list.len()).unwrap();
    assert!(n >= 5, "child allocated only {n}");
    let addrs: BTreeSet<IpAddr> = list.iter().map(|a| a.addr).collect();
    assert_eq!(addrs, first_n_of_slash24(n));
    let next = store.allocate(&owner("after"), &[]).unwrap();
    assert_eq!(next[0].addr, ip(&format!("10.244.1.{}", n + 1)));
}

/// Test that an allocation waits while another holder has the exclusive lock and proceeds
/// as soon as it is released.
#[test]
fn held_lock_blocks_allocation_until_released() {
    let (_tmp, dir) = store_dir();
    fs::create_dir_all(&dir).unwrap();
    let held = disk::lock(&dir, true).unwrap();
    let (tx, rx) = mpsc::channel();
    let worker = {
        let dir = dir.clone();
        thread::spawn(move || {
            let store = open(&dir, &["10.244.1.0/24"]);
            tx.send(store.allocate(&owner("c1"), &[])).unwrap();
        })
    };
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    drop(held);
    let got = rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    assert_eq!(got[0].addr, ip("10.244.1.1"));
    worker.join().unwrap();
}

/// Test that leftovers of a crash (a temp file of a dead pid, a stale lock file with
/// content, a garbled cursor) neither block nor corrupt: open removes the temp file, the
/// lock is free, and allocation restarts at the first address.
#[test]
fn crash_leftovers_do_not_block_or_corrupt() {
    let (_tmp, dir) = store_dir();
    fs::create_dir_all(&dir).unwrap();
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let stale_tmp = dir.join(format!("{}{dead_pid}-1f", disk::TEMP_PREFIX));
    fs::write(&stale_tmp, b"{\"containerId\":\"gho").unwrap();
    fs::write(dir.join(disk::LOCK_FILE), b"12345\n").unwrap();
    fs::write(dir.join("last_reserved.0"), b"\xff garbage").unwrap();

    let store = open(&dir, &["10.244.1.0/24"]);
    assert!(!stale_tmp.exists());
    assert_eq!(
        store.allocate(&owner("c1"), &[]).unwrap()[0].addr,
        ip("10.244.1.1")
    );

    // A temp file appearing after open (a writer dying now) is removed by the next writer.
    let late_tmp = dir.join(format!("{}{dead_pid}-2a", disk::TEMP_PREFIX));
    fs::write(&late_tmp, b"").unwrap();
    assert_eq!(
        store.allocate(&owner("c2"), &[]).unwrap()[0].addr,
        ip("10.244.1.2")
    );
    assert!(!late_tmp.exists());
    let owners: Vec<String> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|a| a.owner.container_id)
        .collect();
    assert_eq!(owners, vec!["c1", "c2"]);
}

/// Test that a cursor pointing outside the range (from an earlier configuration) restarts
/// allocation at the first address instead of failing.
#[test]
fn cursor_outside_range_restarts_at_first() {
    let (_tmp, dir) = store_dir();
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("last_reserved.0"), b"192.168.0.9").unwrap();
    let store = open(&dir, &["10.244.1.0/24"]);
    assert_eq!(
        store.allocate(&owner("c1"), &[]).unwrap()[0].addr,
        ip("10.244.1.1")
    );
    assert_eq!(
        fs::read_to_string(dir.join("last_reserved.0")).unwrap(),
        "10.244.1.1"
    );
}
