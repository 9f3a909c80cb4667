//! The CNI plugin under load on one node: a burst of parallel ADDs (as a runtime starting many
//! pods at once) and long ADD/DEL churn, checking that concurrency gives every pod its own
//! address and working datapath, and that churn leaks no address, endpoint, host veth or pin.
//! Counts and concurrency are bounded for a 2-core machine (README.md, Tests);
//! times are printed, never asserted.

use std::{
    collections::{BTreeSet, HashSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Barrier,
    },
    time::{Duration, Instant},
};

use datapath_common::{config, endpoint, metrics, nat, pins, policy, sock, svc};
use serde_json::json;
use test_support::{node::NODE_IP, unique, CniCall, CniOutput, Netns, Node, NodeOptions};

/// Pods ADDed at once.
const BURST: usize = 100;
/// ADD/DEL cycles of the churn test, and how many workers run them.
const CYCLES: usize = 500;
const WORKERS: usize = 6;
/// Pings in flight at once.
const PING_BATCH: usize = 10;

/// A container id shaped like a runtime's (64 characters).
fn container_id() -> String {
    format!("{:0>64}", unique("c"))
}

fn ip_of(out: &CniOutput) -> Ipv4Addr {
    let r = out.json();
    let addr = r["ips"][0]["address"].as_str().expect("ips[0].address");
    addr.split('/').next().unwrap().parse().expect("IPv4")
}

/// Runs `f` on every item, at most `batch` at a time, and returns the items it failed for.
fn failing_in_batches<T: Sync>(
    items: &[T],
    batch: usize,
    f: impl Fn(&T) -> bool + Sync,
) -> Vec<usize> {
    let mut failed = Vec::new();
    for (b, chunk) in items.chunks(batch).enumerate() {
        std::thread::scope(|s| {
            let hs: Vec<_> = chunk.iter().map(|it| s.spawn(|| f(it))).collect();
            for (i, h) in hs.into_iter().enumerate() {
                if !h.join().expect("ping thread") {
                    failed.push(b * batch + i);
                }
            }
        });
    }
    failed
}

/// Every file (pin) under `dir`, recursively.
fn pins_under(dir: &Path, out: &mut BTreeSet<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let e = e.expect("dir entry");
        if e.file_type().expect("file type").is_dir() {
            pins_under(&e.path(), out);
        } else {
            out.insert(e.path());
        }
    }
}

/// The pins the datapath is made of: its maps, its TC programs, and the cgroup links of socket
/// acceleration and socket load balancing (the fixture gives every agent a cgroup).
fn expected_pins(bpffs: &Path) -> BTreeSet<PathBuf> {
    let maps = [
        config::MAP_NAME,
        datapath_common::peers::MAP_NAME,
        endpoint::MAP_NAME,
        endpoint::META_MAP_NAME,
        metrics::MAP_NAME,
        nat::MAP_NAME,
        nat::REV_MAP_NAME,
        sock::MAP_NAME,
        sock::PODNS_MAP_NAME,
        sock::JOIN_MAP_NAME,
        svc::MAP_NAME,
        svc::BACKEND_MAP_NAME,
        svc::MAGLEV_MAP_NAME,
        svc::AFFINITY_MAP_NAME,
        svc::SOCK_REV_MAP_NAME,
        svc::COUNTER_MAP_NAME,
        svc::CT_MAP_NAME,
        policy::MAP_NAME,
        policy::CT_MAP_NAME,
        policy::REVISION_MAP_NAME,
        policy::POD_ISOLATION_MAP_NAME,
    ];
    let maps = maps.iter().map(|m| datapath_user::map_path(bpffs, m));
    let progs = pins::PROGRAMS
        .iter()
        .map(|p| datapath_user::prog_path(bpffs, p));
    let links = [
        pins::LINK_SOCKOPS,
        "sock4_connect",
        "sock4_sendmsg",
        "sock4_recvmsg",
        "sock4_getpeername",
        pins::SOCK_RELEASE_PROGRAM.1,
    ]
    .map(|l| bpffs.join(pins::LINKS_DIR).join(l));
    maps.chain(progs).chain(links).collect()
}

/// Asserts that the bpffs holds exactly the datapath's pins, all under `sluice/`.
fn assert_pins_exact(node: &Node) {
    let bpffs = node.bpffs();
    // The kernel's BPF preload (CONFIG_BPF_PRELOAD) puts its iterators in every new bpffs.
    let root: Vec<String> = std::fs::read_dir(&bpffs)
        .expect("read bpffs")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n != "maps.debug" && n != "progs.debug")
        .collect();
    assert_eq!(root, [pins::ROOT_DIR], "pins outside sluice/");
    let mut got = BTreeSet::new();
    pins_under(&bpffs.join(pins::ROOT_DIR), &mut got);
    assert_eq!(got, expected_pins(&bpffs), "pins under sluice/");
}

fn assert_node_clean(node: &Node) {
    let (ips, eps, veths) = (node.ipam_addresses(), node.endpoints(), node.host_veths());
    assert!(
        ips.is_empty(),
        "{} IPAM addresses leaked: {ips:?}",
        ips.len()
    );
    assert!(eps.is_empty(), "{} endpoints leaked: {eps:?}", eps.len());
    assert!(
        veths.is_empty(),
        "{} host veths leaked: {veths:?}",
        veths.len()
    );
    let routes = node.node.sh("ip -4 route show");
    let pod_routes: Vec<&str> = routes
        .lines()
        .filter(|l| l.starts_with("10.244.1."))
        .collect();
    assert!(
        pod_routes.is_empty(),
        "host routes to pods left: {pod_routes:?}"
    );
}

fn pings(ns: &Netns, dst: Ipv4Addr) -> bool {
    let out = ns.sh_output(&format!("ping -c1 -W2 {dst}"));
    out.status.success()
}

/// The failed calls among `outs`, described.
fn failures(outs: &[CniOutput]) -> Vec<String> {
    let failed = outs.iter().enumerate().filter(|(_, o)| o.status != 0);
    failed
        .map(|(i, o)| format!("p{i}: {} {}", o.stdout, o.stderr))
        .collect()
}

/// Execs `calls` all at once: one thread each, released together by a barrier.
/// Returns the outputs and the wall time from the release to the last exit.
fn exec_together(node: &Node, calls: &[CniCall]) -> (Vec<CniOutput>, Duration) {
    let barrier = Barrier::new(calls.len());
    let timed: Vec<(Instant, CniOutput, Instant)> = std::thread::scope(|s| {
        let hs: Vec<_> = calls
            .iter()
            .map(|c| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    (Instant::now(), node.cni(c), Instant::now())
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("CNI thread"))
            .collect()
    });
    let first = timed.iter().map(|t| t.0).min().expect("calls");
    let last = timed.iter().map(|t| t.2).max().expect("calls");
    (timed.into_iter().map(|t| t.1).collect(), last - first)
}

/// Test that 100 ADDs released at once all succeed with 100 distinct addresses and endpoint
/// records, that every pod then reaches another pod and the node reaches every pod, and that
/// 100 parallel DELs free everything.
#[test]
fn parallel_adds_get_distinct_addresses_and_reach_each_other() {
    let node = Node::new(NodeOptions::default());
    let barrier = Barrier::new(BURST);
    let added: Vec<(Netns, String, CniOutput, [Instant; 2])> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..BURST)
            .map(|i| {
                let (node, barrier) = (&node, &barrier);
                s.spawn(move || {
                    let cid = container_id();
                    // Reach the barrier whatever happens, or the other threads wait forever.
                    let ns = std::panic::catch_unwind(|| Netns::new(&unique("slp")));
                    barrier.wait();
                    let ns = ns.unwrap_or_else(|p| std::panic::resume_unwind(p));
                    let add =
                        CniCall::attachment("ADD", "1.0.0", &cid, &ns.path(), &format!("p{i}"));
                    let start = Instant::now();
                    let out = node.cni(&add);
                    (ns, cid, out, [start, Instant::now()])
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("ADD thread"))
            .collect()
    });
    let first = added.iter().map(|a| a.3[0]).min().expect("pods");
    let last = added.iter().map(|a| a.3[1]).max().expect("pods");
    println!("{BURST} parallel ADDs: {:?}", last - first);
    let (nss, rest): (Vec<Netns>, Vec<(String, CniOutput)>) = added
        .into_iter()
        .map(|(ns, cid, out, _)| (ns, (cid, out)))
        .unzip();
    let (cids, outs): (Vec<String>, Vec<CniOutput>) = rest.into_iter().unzip();
    let failed = failures(&outs);
    assert!(
        failed.is_empty(),
        "{} ADDs failed: {failed:#?}",
        failed.len()
    );

    let ips: Vec<Ipv4Addr> = outs.iter().map(ip_of).collect();
    let distinct: HashSet<Ipv4Addr> = ips.iter().copied().collect();
    assert_eq!(distinct.len(), BURST, "addresses handed out twice: {ips:?}");
    assert_eq!(node.ipam_addresses().len(), BURST);
    assert_eq!(node.host_veths().len(), BURST);
    let eps = node.endpoints();
    assert_eq!(eps.len(), BURST, "endpoint records");
    for (i, ip) in ips.iter().enumerate() {
        let ep = eps
            .iter()
            .find(|e| e.addr == std::net::IpAddr::V4(*ip))
            .unwrap_or_else(|| panic!("no endpoint for p{i} {ip}"));
        assert_eq!(
            (ep.container_id.as_str(), ep.name.clone()),
            (cids[i].as_str(), format!("p{i}"))
        );
    }

    // Each pod pings the next one, a batch at a time.
    let start = Instant::now();
    let pairs: Vec<(usize, Ipv4Addr)> = (0..BURST).map(|i| (i, ips[(i + 1) % BURST])).collect();
    let failed = failing_in_batches(&pairs, PING_BATCH, |(i, dst)| pings(&nss[*i], *dst));
    assert!(
        failed.is_empty(),
        "pods that cannot reach the next pod: {failed:?}"
    );
    assert!(pings(&nss[0], NODE_IP), "a pod cannot reach the node");
    // The node pings every pod.
    let failed = failing_in_batches(&ips, PING_BATCH, |ip| pings(&node.node, *ip));
    assert!(failed.is_empty(), "pods the node cannot reach: {failed:?}");
    println!("{} pings: {:?}", 2 * BURST + 1, start.elapsed());

    let dels: Vec<CniCall> = (0..BURST)
        .map(|i| {
            let mut c =
                CniCall::attachment("DEL", "1.0.0", &cids[i], &nss[i].path(), &format!("p{i}"));
            c.extra = json!({ "prevResult": outs[i].json() });
            c
        })
        .collect();
    let (outs, wall) = exec_together(&node, &dels);
    println!("{BURST} parallel DELs: {wall:?}");
    let failed = failures(&outs);
    assert!(
        failed.is_empty(),
        "{} DELs failed: {failed:#?}",
        failed.len()
    );
    assert_node_clean(&node);
    assert_pins_exact(&node);
}

/// One cycle: a new namespace, ADD, DEL, namespace gone. Odd cycles delete the namespace
/// before the DEL, as a runtime that tore the sandbox down first does. Returns the failures.
fn cycle(node: &Node, i: usize) -> Vec<String> {
    let mut ns = Some(Netns::new(&unique("slp")));
    let path = ns.as_ref().expect("netns").path();
    let (cid, name) = (container_id(), format!("c{i}"));
    let mut failed = Vec::new();
    let add = node.cni(&CniCall::attachment("ADD", "1.0.0", &cid, &path, &name));
    let mut del = CniCall::attachment("DEL", "1.0.0", &cid, &path, &name);
    if add.status == 0 {
        del.extra = json!({ "prevResult": add.json() });
    } else {
        failed.push(format!("cycle {i} ADD: {}", add.stdout));
    }
    if i % 2 == 1 {
        ns = None;
    }
    let out = node.cni(&del);
    if out.status != 0 {
        failed.push(format!("cycle {i} DEL: {}", out.stdout));
    }
    drop(ns);
    failed
}

/// Test that 500 ADD/DEL cycles on parallel workers all succeed and leave no host veth, IPAM
/// address or endpoint entry, and exactly the datapath's own pins in the bpffs.
#[test]
fn add_del_churn_leaks_nothing() {
    let node = Node::new(NodeOptions::default());
    assert_pins_exact(&node);
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    let failures: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..WORKERS)
            .map(|_| {
                s.spawn(|| {
                    let mut failures = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= CYCLES {
                            return failures;
                        }
                        failures.extend(cycle(&node, i));
                    }
                })
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().expect("worker"))
            .collect()
    });
    let elapsed = start.elapsed();
    println!(
        "{CYCLES} ADD/DEL cycles on {WORKERS} workers: {elapsed:?} ({:.1} ms per cycle)",
        elapsed.as_secs_f64() * 1000.0 / CYCLES as f64
    );
    assert!(
        failures.is_empty(),
        "{} failures: {failures:#?}",
        failures.len()
    );
    assert_node_clean(&node);
    assert_pins_exact(&node);
}
