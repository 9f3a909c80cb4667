//! Where Sluice pins things in a bpffs: every path is `<bpffs>/` + one of these, so the agent,
//! the CNI plugin and the CLI agree. Maps are pinned by their kernel name (which carries the
//! layout version) under [`MAPS_DIR`]; programs by their function name under [`PROGS_DIR`].

/// Project directory in the bpffs.
pub const ROOT_DIR: &str = "sluice";
/// Maps: `<bpffs>/sluice/maps/<MAP_NAME>`.
pub const MAPS_DIR: &str = "sluice/maps";
/// Programs: `<bpffs>/sluice/progs/<program>`.
pub const PROGS_DIR: &str = "sluice/progs";

/// TC ingress of a pod's host-side veth (packets from the pod).
pub const PROG_FROM_POD: &str = "sl_from_pod";
/// TC egress of the node's uplink (masquerade).
pub const PROG_UPLINK_EGRESS: &str = "sl_uplink_egress";
/// TC ingress of the node's uplink (reverse masquerade).
pub const PROG_UPLINK_INGRESS: &str = "sl_uplink_ingress";

/// All programs the agent loads and pins.
pub const PROGRAMS: &[&str] = &[PROG_FROM_POD, PROG_UPLINK_EGRESS, PROG_UPLINK_INGRESS];

/// cls_bpf priority and handle of Sluice's filters (netlink attachment: the filter lives as long
/// as the interface, with no process or pin holding it, so it survives agent restarts and goes
/// away with the pod's veth).
pub const TC_PRIORITY: u16 = 1;
pub const TC_HANDLE: u16 = 1;
