//! Where Sluice pins things in a bpffs: every path is `<bpffs>/` + one of these, so the agent,
//! the CNI plugin and the CLI agree. Maps are pinned by their kernel name (which carries the
//! layout version) under [`MAPS_DIR`]; programs by their function name under [`PROGS_DIR`].

/// Project directory in the bpffs.
pub const ROOT_DIR: &str = "sluice";
/// Maps: `<bpffs>/sluice/maps/<MAP_NAME>`.
pub const MAPS_DIR: &str = "sluice/maps";
/// Programs: `<bpffs>/sluice/progs/<program>`.
pub const PROGS_DIR: &str = "sluice/progs";

// Program names are kernel object names: at most 15 characters, or the kernel cuts them and
// tc shows (and detaches by) a name that differs from the pin.
/// TC ingress of a pod's host-side veth (packets from the pod).
pub const PROG_FROM_POD: &str = "sl_from_pod";
/// TC egress of the node's uplink (masquerade).
pub const PROG_UPLINK_EGRESS: &str = "sl_up_egress";
/// TC ingress of the node's uplink (reverse masquerade).
pub const PROG_UPLINK_INGRESS: &str = "sl_up_ingress";

/// TC egress of a pod's host-side veth: packets the node's stack delivers to the pod (ingress
/// policy for traffic that did not come straight from another local pod).
pub const PROG_TO_POD: &str = "sl_to_pod";

/// TC ingress of the tunnel device: decapsulated packets from other nodes.
pub const PROG_TUNNEL_INGRESS: &str = "sl_tun_ingress";
/// TC egress of the tunnel device: the tunnel key of what the node's stack routes into it.
pub const PROG_TUNNEL_EGRESS: &str = "sl_tun_egress";

/// All TC programs the agent loads and pins.
pub const PROGRAMS: &[&str] = &[
    PROG_FROM_POD,
    PROG_TO_POD,
    PROG_UPLINK_EGRESS,
    PROG_UPLINK_INGRESS,
    PROG_TUNNEL_INGRESS,
    PROG_TUNNEL_EGRESS,
];
/// sockops on the agent's cgroup: records same-node TCP sockets in the sockhash.
pub const PROG_SOCKOPS: &str = "sl_sockops";
/// sk_msg on the sockhash: hands each send to the peer socket.
pub const PROG_SK_MSG: &str = "sl_sk_msg";
/// Links: `<bpffs>/sluice/links/<name>` (a cgroup link dies with its last fd unless pinned).
pub const LINKS_DIR: &str = "sluice/links";
pub const LINK_SOCKOPS: &str = "sockops";

/// Socket-level service load balancing on the agent's cgroup: (program, link pin name).
pub const SOCK_LB_PROGRAMS: &[(&str, &str)] = &[
    ("sl_sock4_conn", "sock4_connect"),
    ("sl_sock4_send", "sock4_sendmsg"),
    ("sl_sock4_recv", "sock4_recvmsg"),
    ("sl_sock4_peer", "sock4_getpeername"),
];

/// Socket release on the agent's cgroup (cgroup `sock_release`): ends the socket's reverse
/// translation entry. (program, link pin name).
pub const SOCK_RELEASE_PROGRAM: (&str, &str) = ("sl_sock_rel", "sock_release");

/// cls_bpf priority and handle of Sluice's filters (netlink attachment: the filter lives as long
/// as the interface, with no process or pin holding it, so it survives agent restarts and goes
/// away with the pod's veth).
pub const TC_PRIORITY: u16 = 1;
pub const TC_HANDLE: u16 = 1;

#[cfg(test)]
mod tests {
    /// Test that every program name fits the kernel's 15-character object names.
    #[test]
    fn program_names_fit_kernel_limit() {
        for p in super::PROGRAMS
            .iter()
            .chain(&[super::PROG_SOCKOPS, super::PROG_SK_MSG])
            .chain(super::SOCK_LB_PROGRAMS.iter().map(|(p, _)| p))
            .chain([&super::SOCK_RELEASE_PROGRAM.0])
        {
            assert!(p.len() <= 15, "{p} is longer than 15 characters");
        }
        for m in [
            crate::config::MAP_NAME,
            crate::endpoint::MAP_NAME,
            crate::endpoint::META_MAP_NAME,
            crate::metrics::MAP_NAME,
            crate::peers::MAP_NAME,
            crate::nat::MAP_NAME,
            crate::nat::REV_MAP_NAME,
            crate::sock::MAP_NAME,
            crate::sock::PODNS_MAP_NAME,
            crate::sock::JOIN_MAP_NAME,
            crate::svc::MAP_NAME,
            crate::svc::BACKEND_MAP_NAME,
            crate::svc::MAGLEV_MAP_NAME,
            crate::svc::AFFINITY_MAP_NAME,
            crate::svc::SOCK_REV_MAP_NAME,
            crate::svc::COUNTER_MAP_NAME,
            crate::svc::CT_MAP_NAME,
            crate::policy::MAP_NAME,
            crate::policy::CT_MAP_NAME,
            crate::policy::REVISION_MAP_NAME,
            crate::policy::POD_ISOLATION_MAP_NAME,
        ] {
            assert!(m.len() <= 15, "{m} is longer than 15 characters");
        }
    }
}
