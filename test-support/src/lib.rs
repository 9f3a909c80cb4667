//! Test support for Sluice's privileged tests (integration/) and its benchmark (bench/): a whole node built from network namespaces on
//! the real kernel (README.md, Tests), the real binaries exec'd the way a container
//! runtime and an operator exec them, and guards that release every namespace, mount, process
//! and file on every exit path (panics included).
//!
//! Topology of a [`Node`]:
//! ```text
//!   pod netns (eth0 10.244.1.x/32) ──veth── node netns ──up0 192.0.2.2/24── outside netns
//!                                            (agent, CNI)     out0 192.0.2.1, lo 203.0.113.10
//! ```
//! [`cluster::Cluster`] puts several such nodes on one underlay bridge, sharing one manifests
//! directory. Nothing touches the machine's own interfaces or cgroups; traffic stays inside these
//! namespaces. Addresses are documentation ranges.

pub mod cluster;
pub mod cnirun;
pub mod kube_fake;
pub mod netns;
pub mod node;
pub mod progtest;
pub mod sockcheck;

pub use netns::{in_netns, Netns};
pub use node::{CniCall, CniOutput, Node, NodeOptions, Pod};

use std::path::PathBuf;

/// Directory of the built binaries (`sluice-agent`, `sluice-cni`, `sluicectl`): `SLUICE_BIN_DIR`,
/// else `target/debug` of this workspace. The README's test command builds them first.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SLUICE_BIN_DIR") {
        return PathBuf::from(d);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug")
}

/// Path of one built binary, with a clear panic when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not found: build the binaries first (cargo build -p cni-plugin -p daemon), \
         or set SLUICE_BIN_DIR",
        p.display()
    );
    p
}

/// Panics unless running as root: these tests need CAP_NET_ADMIN and CAP_BPF. CI runs as root,
/// so there they run; a developer without root gets this message instead of a confusing error.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, eBPF): run the suite as root"
    );
}

/// A name unique to this process and call, short enough for netns and interface names.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}
