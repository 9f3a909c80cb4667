//! Sluice's eBPF datapath: TC programs attached by the CNI plugin to every pod's host-side
//! veth, and by the agent to the node's uplink. No bridge and no iptables rule sits on the
//! path: pod-to-pod traffic on one node is handed from one veth straight into the other pod's
//! namespace, and traffic leaving for the outside is masqueraded here.
//!
//! One module per hook: [`lxc`] (packets from a pod), [`uplink`] (masquerade and external
//! service traffic on the node's uplink), [`sock`] (same-node TCP short-circuited from socket
//! to socket), [`sock_lb`] (Services load-balanced at connect time); [`lb`] and [`reset`] are
//! the service translation and TCP resets they share; [`remote`] sends traffic to other nodes'
//! pods and holds the tunnel device's programs. Shared helpers (bounds-checked header access, counters) live in [`skb`], the maps
//! in [`maps`].
#![no_std]
#![no_main]

mod l4;
mod lb;
mod lxc;
mod maps;
mod policy;
mod remote;
mod reset;
mod skb;
mod sock;
mod sock_lb;
mod uplink;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// bpf_redirect_peer and the checksum helpers are usable under any license; GPL keeps the door
// open for GPL-only helpers later.
// SAFETY: a unique symbol in the section the loader reads the license from; nothing else uses
// the name or the section.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
