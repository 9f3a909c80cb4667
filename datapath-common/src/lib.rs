//! Types shared by Sluice's eBPF programs (kernel side) and its user-space loader, CNI plugin
//! and CLI, with their constructors; user-space access to the maps is `datapath-user`'s. Everything here is `#![no_std]`, `#[repr(C)]`, made of fixed-width integers and byte
//! arrays with explicit, zeroed padding, so the kernel and user space read identical bytes.
//! One module per map: its key, its value, its kernel name and its size.
//!
//! Addresses are always 16 bytes with a family tag, so IPv6 needs no new layout.
#![no_std]

pub mod addr;
pub mod config;
pub mod endpoint;
pub mod flow;
pub mod metrics;
pub mod nat;
pub mod peers;
pub mod pins;
pub mod policy;
pub mod sock;
pub mod svc;

/// Implements `aya::Pod` for user space; the kernel side needs nothing.
#[cfg(feature = "user")]
macro_rules! user_pod {
    ($($t:ty),* $(,)?) => { $( unsafe impl aya::Pod for $t {} )* };
}
#[cfg(feature = "user")]
user_pod!(
    addr::IpKey,
    config::NodeConfig,
    endpoint::Value,
    endpoint::Meta,
    flow::Life,
    metrics::Counter,
    peers::Value,
    nat::Tuple,
    nat::Binding,
    sock::SockKey,
    sock::Joined,
    svc::Key,
    svc::Value,
    svc::BackendKey,
    svc::Backend,
    svc::AffinityKey,
    svc::Affinity,
    svc::SockRevKey,
    svc::SockRev,
    svc::Xlate,
    policy::RuleData,
    policy::RuleValue,
    policy::CtEntry,
);
