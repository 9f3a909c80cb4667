//! Functional tests of [`Store`] on a temp directory: ordering, pool bounds, requests,
//! identity, release, gc, corrupt files and permissions. Expected addresses come from the
//! range arithmetic (a /24 starts at .1, a /30 has .1 and .2, an IPv6 /120 has ::1..::ff).

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use tempfile::TempDir;

use crate::{Allocation, Attachment, Error, Owner, Store};

pub(super) fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(super) fn owner(container_id: &str) -> Owner {
    Owner::new(container_id, "eth0")
}

/// A fresh temp dir and the (not yet existing) store directory inside it.
pub(super) fn store_dir() -> (TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ipam").join("sluice");
    (tmp, dir)
}

pub(super) fn open(dir: &Path, ranges: &[&str]) -> Store {
    Store::open(dir, ranges.iter().map(|r| net(r)).collect(), Vec::new()).unwrap()
}

fn addrs(allocs: &[Allocation]) -> Vec<IpAddr> {
    allocs.iter().map(|a| a.addr).collect()
}

/// Allocates for `container_id` and returns the single address (one-range stores).
fn alloc_one(store: &Store, container_id: &str) -> IpAddr {
    let got = store.allocate(&owner(container_id), &[]).unwrap();
    assert_eq!(got.len(), 1);
    got[0].addr
}

/// Test that addresses are handed out sequentially from the first usable one, with the
/// range and owner in each allocation.
#[test]
fn allocate_sequential_from_first_usable() {
    let (_tmp, dir) = store_dir();
    let store = open(&dir, &["10.244.1.0/24"]);
    let got = store.allocate(&owner("c1"), &[]).unwrap();
    assert_eq!(
        got,
        vec![Allocation {
            addr: ip("10.244.1.1"),
            network: net("10.244.1.0/24"),
            owner: owner("c1"),
        }]
    );
    assert_eq!(alloc_one(&store, "c2"), ip("10.244.1.2"));
    assert_eq!(alloc_one(&store, "c3"), ip("10.244.1.3"));
}

/// Test that a released address is not reused at once: the cursor moves on.
#[test]
fn released_address_not_reused_immediately() {
    let (_tmp, dir) = store_dir();
    let store = open(&dir, &["10.244.1.0/29"]);
    assert_eq!(alloc_one(&store, "c1"), ip("10.244.1.1"));
    assert_eq!(alloc_one(&store, "c2"), ip("10.244.1.2"));
    assert_eq!(store.release("c1", "eth0").unwrap(), vec![ip("10.244.1.1")]);
    assert_eq!(alloc_one(&store, "c3"), ip("10.244.1.3"));
}

/// Test that allocation wraps around after the last usable address and skips taken ones:
/// a /29 has .1-.6; with .2 and .4 released after filling it, the next two are .2 and .4.
#[test]
fn allocate_wraps_around_skipping_taken() {
    let (_tmp, dir) = store_dir();
    let store = open(&dir, &["10.244.1.0/29"]);
    for i in 1..=6 {
        assert_eq!(
            alloc_one(&store, &format!("c{i}")),
            ip(&format!("10.244.1.{i}"))
        );
    }
    store.release("c2", "eth0").unwrap();
    store.release("c4", "eth0").unwrap();
    assert_eq!(alloc_one(&store, "c7"), ip("10.244.1.2"));
    assert_eq!(alloc_one(&store, "c8"), ip("10.244.1.4"));
    let err = store.allocate(&owner("c9"), &[]).unwrap_err();
    assert!(err.is_exhausted(), "{err}");
}

/// Test that a /30 hands out exactly .1 and .2 (never network .0 or broadcast .3), then
/// fails with the exhausted error naming the range and leaves nothing for the loser.
#[test]
fn slash30_gives_exactly_two_then_exhausted() {
    let (_tmp, dir) = store_dir();
    let store = open(&dir, &["10.244.1.0/30"]);
    assert_eq!(alloc_one(&store, "c1"), ip("10.244.1.1"));
    assert_eq!(alloc_one(&store, "c2"), ip("10.244.1.2"));
    let err = store.allocate(&owner("c3"), &[]).unwrap_err();
    assert!(
        matches!(err, Error::Exhausted { range, size: 2 } if range == net("10.244.1.0/30")),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "address pool 10.244.1.0/30 is exhausted (2 addresses, all allocated)"
    );
    assert!(store.get("c3", "eth0").unwrap().is_empty());
    assert_eq!(
        addrs(&store.list().unwrap()),
        vec![ip("10.244.1.1"), ip("10.244.1.2")]
    );
    assert!(!dir.join("10.244.1.0").exists());
    assert!(!dir.join("10.244.1.3").exists());
    assert_eq!(store.free_count().unwrap(), vec![(net("10.244.1.0/30"), 0)]);
}

/// Test that a /31 hands out both of its addresses and a /32 its single address.
#[test]
fn slash31_and_slash32_use_every_address() {
    let (_tmp, dir31) = store_dir();
    let s31 = open(&dir31, &["10.0.0.4/31"]);
    assert_eq!(alloc_one(&s31, "a"), ip("10.0.0.4"));
    assert_eq!(alloc_one(&s31, "b"), ip("10.0.0.5"));
    assert!(s31.allocate(&owner("c"), &[]).unwrap_err().is_exhausted());

    let (_tmp, dir32) = store_dir();
    let s32 = open(&dir32, &["10.0.0.9/32"]);
    assert_eq!(alloc_one(&s32, "a"), ip("10.0.0.9"));
    let err = s32.allocate(&owner("b"), &[]).unwrap_err();
    assert!(matches!(err, Error::Exhausted { size: 1, .. }), "{err:?}");
}

/// Test that an IPv6 range starts at ::1 (not the subnet-router anycast ::), names the file
/// by the address and wraps: a /126 has ::1, ::2, ::3.
#[test]
fn ipv6_range_allocates_and_wraps() {
    let (_tmp, dir) = store_dir();
    let store = open(&dir, &["fd00:10:244:1::/126"]);
    assert_eq!(alloc_one(&store, "c1"), ip("fd00:10:244:1::1"));
    assert_eq!(alloc_one(&store, "c2"), ip("fd00:10:244:1::2"));
    assert_eq!(alloc_one(&store, "c3"), ip("fd00:10:244:1::3"));
    let content = fs::read_to_string(dir.join("fd00:10:244:1::1")).unwrap();
    assert_eq!(content, r#"{"containerId":"c1","ifname":"eth0"}"#);
    let err = store.allocate(&owner("c4"), &[]).unwrap_err();
    assert!(matches!(err, Error::Exhausted { size: 3, .. }), "{err:?}");
    store.release("c1", "eth0").unwrap();
    assert_eq!(alloc_one(&store, "c4"), ip("fd00:10:244:1::1"));
}

/// Test that a dual-stack store gives one address per range, in range order.
#[test]
fn dual_stack_gives_one_address_per_range() {
    let (_tmp, dir) = store_dir();
    let store = open(&dir, &["10.244.1.0/24", "fd00:10:244:1::/64"]);
    let got = store.allocate(&owner("c1"), &[]).unwrap();
    assert_eq!(addrs(&got), vec![ip("10.244.1.1"), ip("fd00:10:244:1::1")]);
    assert_eq!(got[0].network, net("10.244.1.0/24"));
    assert_eq!(got[1].network, net("fd00:10:244:1::/64"));
    assert_eq!(store.get("c1", "eth0").unwrap(), got);
    let got2 = store.allocate(&owner("c2"), &[]).unwrap();
    assert_eq!(addrs(&got2), vec![ip("10.244.1.2"), ip("fd00:10:244:1::2")]);
    assert_eq!(
        store.release("c1", "eth0").unwrap(),
        vec![ip("10.244.1.1"), ip("fd00:10:244:1::1")]
    );
}

/// Test that when the second range is exhausted after the first succeeded, the first
/// range's address is rolled back and its cursor does not move.
#[test]
fn partial_failure_rolls_back() {
    let (_tmp, dir) = store_dir();
    let store = open(&dir, &["fd00::/120", "10.244.1.0/30"]);
    store.allocate(&owner("c1"), &[]).unwrap(); // fd00::1, .1
    store.allocate(&owner("c2"), &[]).unwrap(); // fd00::2, .2
    let err = store.allocate(&owner("c3"), &[]).unwrap_err();
    assert!(
        matches!(err, Error::Exhausted { range, .. } if range == net("10.244.1.0/30")),
        "{err:?}"
    );
    assert!(store.get("c3", "eth0").unwrap().is_empty());
    assert!(!dir.join("fd00::3").exists());
    assert_eq!(
        store.free_count().unwrap(),
        vec![(net("fd00::/120"), 255 - 2), (net("10.244.1.0/30"), 0)]
    );
    store.release("c1", "eth0").unwrap();
    // The v6 cursor is still fd00::2, so the rolled-back fd00::3 comes next.
    let got = store.allocate(&owner("c3"), &[]).unwrap();
    assert_eq!(addrs(&got), vec![ip("fd00::3"), ip("10.244.1.1")]);
}

/// Test that a requested address is granted, does not move the sequential cursor, and that
/// other ranges still get their next sequential address.
#[test]
fn requested_address_is_granted() {
    let (_tmp, dir) = store_dir();
    let store = open(&dir, &["10.244.1.0/24", "fd00::/120"]);
    let got = store.allocate(&owner("c1"), &[ip("10.244.1.50")]).unwrap();
    assert_eq!(addrs(&got), vec![ip("10.244.1.50"), ip("fd00::1")]);
    let got = store
        .allocate(&owner("c2"), &[ip("fd00::80"), ip("10.244.1.51")])
        .unwrap();
    assert_eq!(addrs(&got), vec![ip("10.244.1.51"), ip("fd00::80")]);
    let got = store.allocate(&owner("c3"), &[]).unwrap();
    assert_eq!(addrs(&got), vec![ip("10.244.1.1"), ip("fd00::2")]);
}

/// Test that a requested address held by someone else fails with Unavailable and allocates
/// nothing for the requester (not even in the other range).
#[test]
fn requested_address_taken_is_unavailable() {
    let (_tmp, dir) = store_dir();
    let store = open(&dir, &["fd00::/120", "10.244.1.0/24"]);
    store.allocate(&owner("c1"), &[]).unwrap(); // fd00::1, .1
    let err = store
        .allocate(&owner("c2"), &[ip("10.244.1.1")])
        .unwrap_err();
    assert!(
        matches!(err, Error::Unavailable { addr } if addr == ip("10.244.1.1")),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "requested address 10.244.1.1 is already allocated"
    );
    assert!(store.get("c2", "eth0").unwrap().is_empty());
    assert_eq!(store.list().unwrap().len(), 2);
}

/// Test that invalid requests (outside every range, network, broadcast, anycast, reserved,
/// two in one range) fail before anything is written: the directory is not even created.
#[test]
fn invalid_requests_fail_without_touching_disk() {
    let (_tmp, dir) = store_dir();
    let store = Store::open(
        &dir,
        vec![net("10.244.1.0/24"), net("fd00::/120")],
        vec![ip("10.244.1.10")],
    )
    .unwrap();
    let o = owner("c1");
    let err = store.allocate(&o, &[ip("10.244.2.1")]).unwrap_err();
    assert!(
        matches!(err, Error::OutOfRange { addr } if addr == ip("10.244.2.1")),
        "{err:?}"
    );
    let err = store.allocate(&o, &[ip("::ffff:10.244.1.5")]).unwrap_err();
    assert!(matches!(err, Error::OutOfRange { .. }), "{err:?}");
    for bad in ["10.244.1.0", "10.244.1.255", "fd00::", "10.244.1.10"] {
        let err = store.allocate(&o, &[ip(bad)]).unwrap_err();
        assert!(
            matches!(&err, Error::Reserved { addr, .. } if *addr == ip(bad)),
            "{bad}: {err:?}"
        );
    }
    let err = store
        .allocate(&o, &[ip("10.244.1.5"), ip("10.244.1.6")])
        .unwrap_err();
    assert!(
        matches!(err, Error::ConflictingRequests { first, second, range }
            if first == ip("10.244.1.5") && second == ip("10.244.1.6")
                && range == net("10.244.1.0/24")),
        "{err:?}"
    );
    assert!(!dir.exists());
}

/// Test that an attachment holding an address cannot allocate again, while the same
/// container with another interface can.
#[test]
fn second_allocation_for_attachment_is_already_allocated() {
    let (_tmp, dir) = store_dir();
    let store = open(&dir, &["10.244.1.0/24"]);
    assert_eq!(alloc_one(&store, "c1"), ip("10.244.1.1"));
    let err = store.allocate(&owner("c1"), &[]).unwrap_err();
    assert!(
        matches!(&err, Error::AlreadyAllocated { container_id, ifname, addr }
            if container_id == "c1" && ifname == "eth0" && *addr == ip("10.244.1.1")),
        "{err:?}"
    );
    let err = store
        .allocate(&owner("c1"), &[ip("10.244.1.1")])
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyAllocated { .. }), "{err:?}");
    let got = store.allocate(&Owner::new("c1", "net1"), &[]).unwrap();
    assert_eq!(addrs(&got), vec![ip("10.244.1.2")]);
    assert_eq!(store.list().unwrap().len(), 2);
}

/// Test that release is idempotent and only touches the given attachment.
#[test]
fn release_is_idempotent() {
    let (_tmp, dir) = store_dir();
    let store = open(&dir, &["10.244.1.0/24"]);
    alloc_one(&store, "c1");
    alloc_one(&store, "c2");
    assert_eq!(store.release("c1", "eth0").unwrap(), vec![ip("10.244.1.1")]);
    assert_eq!(store.release("c1", "eth0").unwrap(), Vec::<IpAddr>::new());
    assert_eq!(store.release("c2", "eth1").unwrap(), Vec::<IpAddr>::new());
    assert_eq!(addrs(&store.list().unwrap()), vec![ip("10.244.1.2")]);
}

/// Test that every read and release works on a store whose directory does not exist yet,
/// and creates nothing.
#[test]
fn missing_directory_reads_empty_and_creates_nothing() {
    let (tmp, dir) = store_dir();
    let store = open(&dir, &["10.244.1.0/24", "fd00::/64"]);
    assert!(store.release("c1", "eth0").unwrap().is_empty());
    assert!(store.get("c1", "eth0").unwrap().is_empty());
    assert!(store.list().unwrap().is_empty());
    assert!(store.gc(|_| false).unwrap().is_empty());
    assert_eq!(
        store.free_count().unwrap(),
        vec![
            (net("10.244.1.0/24"), 254),
            (net("fd00::/64"), (1u128 << 64) - 1)
        ]
    );
    assert!(!dir.exists());
    assert!(!tmp.path().join("ipam").exists());
}

/// Test that an attachment can allocate again after release and gets the next address.
#[test]
fn release_then_reallocate() {
    let (_tmp, dir) = store_dir();
    let store = open(&dir, &["10.244.1.0/24"]);
    assert_eq!(alloc_one(&store, "c1"), ip("10.244.1.1"));
    store.release("c1", "eth0").unwrap();
    assert_eq!(alloc_one(&store, "c1"), ip("10.244.1.2"));
    assert_eq!(store.get("c1", "eth0").unwrap()[0].addr, ip("10.244.1.2"));
}

/// Test that gc releases exactly the attachments `keep` rejects and returns them.
#[test]
fn gc_keeps_listed_and_releases_others() {
    let (_tmp, dir) = store_dir();
    let store = open(&dir, &["10.244.1.0/24"]);
    for c in ["c1", "c2", "c3"] {
        alloc_one(&store, c);
    }
    let keep = [Attachment::new("c1", "eth0"), Attachment::new("c3", "eth0")];
    let released = store.gc(|a| keep.contains(a)).unwrap();
    assert_eq!(
        released,
        vec![Allocation {
            addr: ip("10.244.1.2"),
            network: net("10.244.1.0/24"),
            owner: owner("c2"),
        }]
    );
    let left: Vec<String> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|a| a.owner.container_id)
        .collect();
    assert_eq!(left, vec!["c1", "c3"]);
    assert!(store.gc(|a| keep.contains(a)).unwrap().is_empty());
}

/// Test that configured reserved addresses are skipped and not counted as free.
#[test]
fn reserved_addresses_are_skipped() {
    let (_tmp, dir) = store_dir();
    let store = Store::open(
        &dir,
        vec![net("10.244.1.0/24")],
        vec![ip("10.244.1.1"), ip("10.244.1.3"), ip("192.168.0.1")],
    )
    .unwrap();
    assert_eq!(
        store.free_count().unwrap(),
        vec![(net("10.244.1.0/24"), 252)]
    );
    assert_eq!(alloc_one(&store, "c1"), ip("10.244.1.2"));
    assert_eq!(alloc_one(&store, "c2"), ip("10.244.1.4"));
    assert_eq!(
        store.free_count().unwrap(),
        vec![(net("10.244.1.0/24"), 250)]
    );
}

/// Test that free_count follows allocations and releases per range.
#[test]
fn free_count_tracks_allocations() {
    let (_tmp, dir) = store_dir();
    let store = open(&dir, &["10.244.1.0/24", "fd00::/120"]);
    for c in ["c1", "c2", "c3"] {
        store.allocate(&owner(c), &[]).unwrap();
    }
    assert_eq!(
        store.free_count().unwrap(),
        vec![(net("10.244.1.0/24"), 251), (net("fd00::/120"), 252)]
    );
    store.release("c2", "eth0").unwrap();
    assert_eq!(
        store.free_count().unwrap(),
        vec![(net("10.244.1.0/24"), 252), (net("fd00::/120"), 253)]
    );
}

/// Test that a corrupt allocation file keeps its address taken, is never released by
/// release or gc, is counted as taken, and makes list fail with an error naming the file.
#[test]
fn corrupt_file_stays_taken_and_list_names_it() {
    let (_tmp, dir) = store_dir();
    let store = open(&dir, &["10.244.1.0/24"]);
    fs::create_dir_all(&dir).unwrap();
    let corrupt = dir.join("10.244.1.1");
    fs::write(&corrupt, b"{\"containerId\": \"c0\", \"ifn").unwrap();
    assert_eq!(alloc_one(&store, "c1"), ip("10.244.1.2"));
    let err = store
        .allocate(&owner("c2"), &[ip("10.244.1.1")])
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    match store.list().unwrap_err() {
        Error::Corrupt { path, .. } => assert_eq!(path, corrupt),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(
        store.free_count().unwrap(),
        vec![(net("10.244.1.0/24"), 252)]
    );
    assert_eq!(
        addrs(&store.get("c1", "eth0").unwrap()),
        vec![ip("10.244.1.2")]
    );
    assert!(store.release("c0", "eth0").unwrap().is_empty());
    assert_eq!(addrs(&store.gc(|_| false).unwrap()), vec![ip("10.244.1.2")]);
    assert!(corrupt.exists());
    fs::remove_file(&corrupt).unwrap();
    assert!(store.list().unwrap().is_empty());
}

/// Test that files whose names are not addresses are ignored and that an address left from
/// an earlier configuration is listed with its host network and can be released.
#[test]
fn foreign_files_and_leftover_addresses() {
    let (_tmp, dir) = store_dir();
    let store = open(&dir, &["10.244.1.0/24"]);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("README"), b"not an allocation").unwrap();
    fs::write(
        dir.join("192.168.7.5"),
        br#"{"containerId":"old","ifname":"eth0"}"#,
    )
    .unwrap();
    assert_eq!(alloc_one(&store, "c1"), ip("10.244.1.1"));
    let list = store.list().unwrap();
    assert_eq!(addrs(&list), vec![ip("10.244.1.1"), ip("192.168.7.5")]);
    assert_eq!(list[1].network, net("192.168.7.5/32"));
    assert_eq!(
        store.release("old", "eth0").unwrap(),
        vec![ip("192.168.7.5")]
    );
    assert!(dir.join("README").exists());
}

/// Test that pod namespace and name are stored and read back.
#[test]
fn pod_fields_round_trip() {
    let (_tmp, dir) = store_dir();
    let store = open(&dir, &["10.244.1.0/24"]);
    let o = Owner {
        pod_namespace: Some("kube-system".to_string()),
        pod_name: Some("coredns-1".to_string()),
        ..Owner::new("c1", "eth0")
    };
    store.allocate(&o, &[]).unwrap();
    assert_eq!(store.get("c1", "eth0").unwrap()[0].owner, o);
    let json = fs::read_to_string(dir.join("10.244.1.1")).unwrap();
    assert!(json.contains(r#""podNamespace":"kube-system""#), "{json}");
}

/// Test that open rejects an empty list, overlapping ranges and a range left with no
/// allocatable address, and canonicalizes host bits.
#[test]
fn open_validates_ranges() {
    let (_tmp, dir) = store_dir();
    let err = Store::open(&dir, vec![], vec![]).unwrap_err();
    assert!(matches!(err, Error::InvalidRanges { .. }), "{err:?}");
    let err = Store::open(
        &dir,
        vec![net("10.244.0.0/16"), net("10.244.1.0/24")],
        vec![],
    )
    .unwrap_err();
    match err {
        Error::InvalidRanges { reason } => {
            assert_eq!(reason, "10.244.1.0/24 overlaps 10.244.0.0/16");
        }
        other => panic!("expected InvalidRanges, got {other:?}"),
    }
    let err = Store::open(&dir, vec![net("10.0.0.9/32")], vec![ip("10.0.0.9")]).unwrap_err();
    assert!(matches!(err, Error::InvalidRanges { .. }), "{err:?}");
    // A v4 and a v6 range with the same numeric bits do not overlap.
    let store = Store::open(
        &dir,
        vec![net("10.244.1.77/24"), net("::af4:100/120")],
        vec![],
    );
    let got = store.unwrap().allocate(&owner("c1"), &[]).unwrap();
    assert_eq!(got[0].network, net("10.244.1.0/24"));
    assert_eq!(got[1].network, net("::af4:100/120"));
}

/// Test that the store directory is created 0700 and its files 0600.
#[test]
fn directory_and_files_are_root_only() {
    let (_tmp, dir) = store_dir();
    let store = open(&dir, &["10.244.1.0/24"]);
    alloc_one(&store, "c1");
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for name in ["10.244.1.1", "lock", "last_reserved.0"] {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
    }
}

/// Test that a store opened without ranges finds, lists and releases what a ranged store
/// allocated (CNI DEL needs no pod CIDR), and refuses to allocate.
#[test]
fn unranged_store_releases_but_never_allocates() {
    let (_tmp, dir) = store_dir();
    let long_id = format!("a{}", "b.-_9".repeat(2000));
    let a = open(&dir, &["10.244.1.0/24"])
        .allocate(&owner(&long_id), &[])
        .unwrap();
    let bare = Store::open_unranged(&dir).unwrap();
    assert_eq!(addrs(&bare.get(&long_id, "eth0").unwrap()), addrs(&a));
    assert_eq!(bare.list().unwrap()[0].owner.container_id, long_id);
    assert!(matches!(
        bare.allocate(&owner("c2"), &[]),
        Err(Error::InvalidRanges { .. })
    ));
    assert_eq!(bare.release(&long_id, "eth0").unwrap(), addrs(&a));
    assert!(bare.list().unwrap().is_empty());
}
