//! Loading the eBPF datapath: mounts a bpffs if needed, loads the object once, adopts the maps
//! already pinned under `<bpffs>/sluice/maps` (after checking their layout) or creates and pins
//! them, pins the programs under `<bpffs>/sluice/progs` (replacing older ones by rename, so a
//! CNI ADD never sees a missing pin), writes the node configuration and attaches the uplink
//! programs. Everything it sets up outlives the agent process: pins and netlink filters keep
//! forwarding while the agent restarts.

use std::{
    mem::size_of,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use aya::{
    maps::{Array, Map, MapData},
    programs::SchedClassifier,
    EbpfLoader,
};
use datapath_common::{
    addr::IpKey, config, endpoint, metrics, nat, peers, pins, policy, sock, svc,
};

/// The datapath object, built by build.rs through aya-build.
pub static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice-datapath"));

/// `statfs` magic of a bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// The layout every pinned map must have: (name, key size, value size, max entries).
pub const MAP_LAYOUTS: &[(&str, usize, usize, u32)] = &[
    (
        config::MAP_NAME,
        size_of::<u32>(),
        size_of::<config::NodeConfig>(),
        config::MAX_ENTRIES,
    ),
    (
        endpoint::MAP_NAME,
        size_of::<IpKey>(),
        size_of::<endpoint::Value>(),
        endpoint::MAX_ENTRIES,
    ),
    (
        endpoint::META_MAP_NAME,
        size_of::<IpKey>(),
        size_of::<endpoint::Meta>(),
        endpoint::MAX_ENTRIES,
    ),
    (
        metrics::MAP_NAME,
        size_of::<u32>(),
        size_of::<metrics::Counter>(),
        metrics::MAX_ENTRIES,
    ),
    (
        nat::MAP_NAME,
        size_of::<nat::Tuple>(),
        size_of::<nat::Binding>(),
        nat::MAX_ENTRIES,
    ),
    (
        nat::REV_MAP_NAME,
        size_of::<nat::Tuple>(),
        size_of::<nat::Binding>(),
        nat::MAX_ENTRIES,
    ),
    (
        sock::MAP_NAME,
        size_of::<sock::SockKey>(),
        size_of::<u32>(),
        sock::MAX_ENTRIES,
    ),
    (
        sock::JOIN_MAP_NAME,
        size_of::<sock::SockKey>(),
        size_of::<sock::Joined>(),
        sock::JOIN_MAX_ENTRIES,
    ),
    (
        sock::PODNS_MAP_NAME,
        size_of::<u64>(),
        size_of::<u32>(),
        sock::PODNS_MAX_ENTRIES,
    ),
    (
        svc::MAP_NAME,
        size_of::<svc::Key>(),
        size_of::<svc::Value>(),
        svc::MAX_ENTRIES,
    ),
    (
        svc::BACKEND_MAP_NAME,
        size_of::<svc::BackendKey>(),
        size_of::<svc::Backend>(),
        svc::BACKEND_MAX_ENTRIES,
    ),
    (
        svc::MAGLEV_MAP_NAME,
        size_of::<u32>(),
        size_of::<[u16; svc::MAGLEV_M]>(),
        svc::MAGLEV_MAX_ENTRIES,
    ),
    (
        svc::AFFINITY_MAP_NAME,
        size_of::<svc::AffinityKey>(),
        size_of::<svc::Affinity>(),
        svc::AFFINITY_MAX_ENTRIES,
    ),
    (
        svc::SOCK_REV_MAP_NAME,
        size_of::<svc::SockRevKey>(),
        size_of::<svc::SockRev>(),
        svc::SOCK_REV_MAX_ENTRIES,
    ),
    (
        svc::COUNTER_MAP_NAME,
        size_of::<u32>(),
        size_of::<metrics::Counter>(),
        svc::MAX_IDS,
    ),
    (
        svc::CT_MAP_NAME,
        size_of::<nat::Tuple>(),
        size_of::<svc::Xlate>(),
        svc::CT_MAX_ENTRIES,
    ),
    (
        policy::MAP_NAME,
        size_of::<u32>() + size_of::<policy::RuleData>(),
        size_of::<policy::RuleValue>(),
        policy::MAX_ENTRIES,
    ),
    (
        policy::CT_MAP_NAME,
        size_of::<nat::Tuple>(),
        size_of::<policy::CtEntry>(),
        policy::CT_MAX_ENTRIES,
    ),
    (
        policy::REVISION_MAP_NAME,
        size_of::<u32>(),
        size_of::<u32>(),
        1,
    ),
    (
        peers::MAP_NAME,
        size_of::<u32>() + size_of::<peers::Key>(),
        size_of::<peers::Value>(),
        peers::MAX_ENTRIES,
    ),
    (
        policy::POD_ISOLATION_MAP_NAME,
        size_of::<u64>(),
        size_of::<u32>(),
        policy::POD_ISOLATION_MAX_ENTRIES,
    ),
];

/// Whether `dir` is a mounted bpffs.
pub fn is_bpffs(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Mounts a bpffs at `dir` unless one is mounted there; returns whether it mounted one.
pub fn ensure_bpffs(dir: &Path) -> anyhow::Result<bool> {
    if is_bpffs(dir) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    nix::mount::mount(
        Some("bpf"),
        dir,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mount a bpffs at {}", dir.display()))?;
    Ok(true)
}

/// Checks that every map already pinned has the layout this agent was built for
/// ([`crate::pins::check_pinned_layouts`]). A mismatch means a pin from an incompatible build
/// under the same versioned name: refuse rather than let programs read the wrong bytes.
pub fn check_pinned_layouts(bpffs: &Path) -> anyhow::Result<usize> {
    Ok(crate::pins::check_pinned_layouts(bpffs)?)
}

/// The loaded datapath.
pub struct Datapath {
    pub bpffs: PathBuf,
    /// How many maps were adopted from earlier pins (0 on a fresh node).
    pub adopted_maps: usize,
}

impl Datapath {
    /// Loads the object, adopting or pinning maps, and pins every program. With `sockops_cgroup`
    /// the socket acceleration programs are attached to that cgroup (v2 directory); without
    /// it, any earlier attachment is removed (`--sockmap=false`). With `lb_cgroup` the
    /// socket-level service load balancer is attached to that cgroup; without it, Services are
    /// translated in TC only.
    pub fn load(
        bpffs: &Path,
        sockops_cgroup: Option<&Path>,
        lb_cgroup: Option<&Path>,
    ) -> anyhow::Result<Self> {
        if OBJECT.is_empty() {
            bail!("this agent was built without its eBPF object (AYA_BUILD_SKIP); rebuild it");
        }
        let maps_dir = bpffs.join(pins::MAPS_DIR);
        let progs_dir = bpffs.join(pins::PROGS_DIR);
        let links_dir = bpffs.join(pins::LINKS_DIR);
        for d in [&maps_dir, &progs_dir, &links_dir] {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        }
        let adopted_maps = check_pinned_layouts(bpffs)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(OBJECT)
            .context("load the eBPF object")?;
        for name in pins::PROGRAMS {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()
                .with_context(|| format!("program {name} is not a TC classifier"))?;
            prog.load()
                .with_context(|| format!("verify and load {name}"))?;
            let pin = datapath_user::prog_path(bpffs, name);
            // bpffs refuses names with dots.
            let tmp = progs_dir.join(format!("{name}_new"));
            let _ = std::fs::remove_file(&tmp);
            prog.pin(&tmp)
                .with_context(|| format!("pin {name} at {}", tmp.display()))?;
            // rename(2) on bpffs replaces the old pin atomically.
            std::fs::rename(&tmp, &pin)
                .with_context(|| format!("move {} to {}", tmp.display(), pin.display()))?;
        }
        attach_sockmap(&mut ebpf, bpffs, sockops_cgroup)?;
        attach_sock_lb(&mut ebpf, bpffs, lb_cgroup)?;
        remove_retired_maps(&maps_dir)?;
        // Maps and programs stay alive through their pins; the loader's fds can go.
        drop(ebpf);
        Ok(Self {
            bpffs: bpffs.to_path_buf(),
            adopted_maps,
        })
    }

    /// Writes the node configuration the programs read.
    pub fn configure(&self, cfg: &config::NodeConfig) -> anyhow::Result<()> {
        write_config(&self.bpffs, cfg)
    }

    /// Attaches the masquerade programs to the uplink (replacing earlier ones in place).
    pub fn attach_uplink(&self, uplink: &str) -> anyhow::Result<()> {
        datapath_user::attach_pinned_tc(&self.bpffs, pins::PROG_UPLINK_EGRESS, uplink, false)?;
        datapath_user::attach_pinned_tc(&self.bpffs, pins::PROG_UPLINK_INGRESS, uplink, true)?;
        Ok(())
    }

    /// Attaches the tunnel device's programs (replacing earlier ones in place).
    pub fn attach_tunnel(&self, device: &str) -> anyhow::Result<()> {
        datapath_user::attach_pinned_tc(&self.bpffs, pins::PROG_TUNNEL_INGRESS, device, true)?;
        datapath_user::attach_pinned_tc(&self.bpffs, pins::PROG_TUNNEL_EGRESS, device, false)?;
        Ok(())
    }

    /// Re-attaches the current `sl_from_pod` to every endpoint's host veth, so pods created by
    /// an older agent run the programs of this one. Returns (re-attached, missing veths). An
    /// ifindex can be reused by another interface after a pod is gone, so the interface must
    /// also carry the name derived from the endpoint's attachment before anything is attached.
    pub fn reattach_endpoints(&self) -> anyhow::Result<(usize, usize)> {
        let eps = datapath_user::Endpoints::open(&self.bpffs)?;
        let (mut ok, mut missing) = (0, 0);
        for ep in eps.list()? {
            let expected = ep.host_veth_name();
            match nix::net::if_::if_indextoname(ep.value.ifindex) {
                Ok(name) if name.to_string_lossy() == expected => {
                    datapath_user::attach_pinned_tc(
                        &self.bpffs,
                        pins::PROG_FROM_POD,
                        &expected,
                        true,
                    )?;
                    datapath_user::attach_pinned_tc(
                        &self.bpffs,
                        pins::PROG_TO_POD,
                        &expected,
                        false,
                    )?;
                    ok += 1;
                }
                _ => missing += 1,
            }
        }
        Ok((ok, missing))
    }
}

/// Removes the pins of maps whose layout this agent replaced (`flow::RETIRED_MAPS`): the
/// programs pinned now use the new maps, and the old maps live only as long as a program of
/// the old agent still attached to a veth (until `reattach_endpoints` replaces it). Their flows
/// are not carried over: connections through masquerade or TC Service translation open at the
/// upgrade start again (as after a conntrack flush).
fn remove_retired_maps(maps_dir: &Path) -> anyhow::Result<()> {
    for name in datapath_common::flow::RETIRED_MAPS {
        let pin = maps_dir.join(name);
        match std::fs::remove_file(&pin) {
            Ok(()) => tracing::info!(map = name, "removed the pin of a retired map layout"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("remove {}", pin.display())),
        }
    }
    Ok(())
}

/// Writes the node configuration into the pinned `SL_CFG_V2` of `bpffs` (at load, and when
/// the agent turns a datapath feature on or off).
pub fn write_config(bpffs: &Path, cfg: &config::NodeConfig) -> anyhow::Result<()> {
    let md = crate::pins::open(bpffs, config::MAP_NAME)?;
    let mut arr: Array<MapData, config::NodeConfig> =
        Array::try_from(Map::Array(md)).context("config map type")?;
    arr.set(0, cfg, 0).context("write the node configuration")?;
    Ok(())
}

/// Loads the socket acceleration programs: sk_msg onto the sockhash (that attachment lives
/// with the pinned map), sockops onto the cgroup through a pinned link. The new link is attached
/// beside the old one and only then does the old pin go, so there is no moment without a
/// sockops program; established accelerated sockets keep their programs either way.
fn attach_sockmap(ebpf: &mut aya::Ebpf, bpffs: &Path, cgroup: Option<&Path>) -> anyhow::Result<()> {
    use aya::{
        maps::SockHash,
        programs::{links::FdLink, CgroupAttachMode, SkMsg, SockOps},
    };
    let link_pin = bpffs.join(pins::LINKS_DIR).join(pins::LINK_SOCKOPS);
    let Some(cgroup) = cgroup else {
        match std::fs::remove_file(&link_pin) {
            Ok(()) => tracing::info!("socket acceleration turned off"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("remove {}", link_pin.display())),
        }
        return Ok(());
    };
    let map_fd = {
        let map = ebpf
            .map(sock::MAP_NAME)
            .context("sockhash missing from the object")?;
        let hash: SockHash<&aya::maps::MapData, sock::SockKey> =
            SockHash::try_from(map).context("sockhash map type")?;
        hash.fd().try_clone().context("dup the sockhash fd")?
    };
    let msg: &mut SkMsg = ebpf
        .program_mut(pins::PROG_SK_MSG)
        .context("sk_msg program missing")?
        .try_into()
        .context("sk_msg program type")?;
    msg.load().context("verify and load sl_sk_msg")?;
    let id = msg
        .attach(&map_fd)
        .context("attach sl_sk_msg to the sockhash")?;
    // The attachment belongs to the map; dropping aya's handle would detach it.
    std::mem::forget(msg.take_link(id)?);

    let cg = std::fs::File::open(cgroup)
        .with_context(|| format!("open cgroup {} (--cgroup-root)", cgroup.display()))?;
    let ops: &mut SockOps = ebpf
        .program_mut(pins::PROG_SOCKOPS)
        .context("sockops program missing")?
        .try_into()
        .context("sockops program type")?;
    ops.load().context("verify and load sl_sockops")?;
    let id = ops
        // Through bpf_link (kernel ≥ 5.7) the attachment is always "multi": links coexist, and
        // link_create refuses the ALLOW_MULTI flag itself, so pass none.
        .attach(&cg, CgroupAttachMode::Single)
        .with_context(|| format!("attach sl_sockops to cgroup {}", cgroup.display()))?;
    let link: FdLink = ops
        .take_link(id)?
        .try_into()
        .context("sockops link is not an fd link")?;
    let tmp = link_pin.with_file_name(format!("{}_new", pins::LINK_SOCKOPS));
    let _ = std::fs::remove_file(&tmp);
    link.pin(&tmp)
        .with_context(|| format!("pin {}", tmp.display()))?;
    // Replacing the pin drops the old link: the old program leaves the cgroup now.
    std::fs::rename(&tmp, &link_pin)
        .with_context(|| format!("move {} to {}", tmp.display(), link_pin.display()))?;
    Ok(())
}

/// Attaches the socket-level load balancer (connect4, sendmsg4, recvmsg4, getpeername4) to
/// `cgroup` through pinned links, each new link beside the old one before the old pin goes (as
/// for sockops). Without a cgroup, earlier links are removed.
fn attach_sock_lb(ebpf: &mut aya::Ebpf, bpffs: &Path, cgroup: Option<&Path>) -> anyhow::Result<()> {
    use aya::programs::{links::FdLink, CgroupAttachMode, CgroupSockAddr};
    let links = bpffs.join(pins::LINKS_DIR);
    let Some(cgroup) = cgroup else {
        for (_, pin) in pins::SOCK_LB_PROGRAMS
            .iter()
            .chain([&pins::SOCK_RELEASE_PROGRAM])
        {
            match std::fs::remove_file(links.join(pin)) {
                Ok(()) => tracing::info!(link = pin, "socket load balancing detached"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("remove link pin {pin}")),
            }
        }
        return Ok(());
    };
    let cg = std::fs::File::open(cgroup)
        .with_context(|| format!("open cgroup {} (--cgroup-root)", cgroup.display()))?;
    for (name, pin) in pins::SOCK_LB_PROGRAMS {
        let prog: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the object"))?
            .try_into()
            .with_context(|| format!("program {name} is not a cgroup sock_addr program"))?;
        prog.load()
            .with_context(|| format!("verify and load {name}"))?;
        let id = prog
            .attach(&cg, CgroupAttachMode::Single)
            .with_context(|| format!("attach {name} to cgroup {}", cgroup.display()))?;
        let link: FdLink = prog
            .take_link(id)?
            .try_into()
            .with_context(|| format!("{name} link is not an fd link"))?;
        pin_link(link, &links, pin)?;
    }
    // The end of each socket's reverse translation entry (see `svc::SOCK_REV_MAP_NAME`).
    let (name, pin) = pins::SOCK_RELEASE_PROGRAM;
    let prog: &mut aya::programs::CgroupSock = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a cgroup sock program"))?;
    prog.load()
        .with_context(|| format!("verify and load {name}"))?;
    let id = prog
        .attach(&cg, CgroupAttachMode::Single)
        .with_context(|| format!("attach {name} to cgroup {}", cgroup.display()))?;
    let link: FdLink = prog
        .take_link(id)?
        .try_into()
        .with_context(|| format!("{name} link is not an fd link"))?;
    pin_link(link, &links, pin)
}

/// Pins a cgroup link as `<links>/<pin>`, replacing an earlier agent's pin in one rename, so
/// the hook is never left without a pinned link.
fn pin_link(link: aya::programs::links::FdLink, links: &Path, pin: &str) -> anyhow::Result<()> {
    let final_pin = links.join(pin);
    let tmp = links.join(format!("{pin}_new"));
    let _ = std::fs::remove_file(&tmp);
    link.pin(&tmp)
        .with_context(|| format!("pin {}", tmp.display()))?;
    std::fs::rename(&tmp, &final_pin)
        .with_context(|| format!("move {} to {}", tmp.display(), final_pin.display()))?;
    Ok(())
}

/// Removes Sluice from a node: detaches the uplink programs and removes every pin. Pods' veth
/// filters go with their veths (DEL); their programs stay loaded only while attached.
pub fn uninstall(bpffs: &Path, uplink: Option<&str>) -> anyhow::Result<()> {
    if let Some(uplink) = uplink {
        for (prog, kind) in [
            (
                pins::PROG_UPLINK_EGRESS,
                aya::programs::TcAttachType::Egress,
            ),
            (
                pins::PROG_UPLINK_INGRESS,
                aya::programs::TcAttachType::Ingress,
            ),
        ] {
            match aya::programs::tc::qdisc_detach_program(uplink, kind, prog) {
                Ok(()) => {}
                Err(aya::programs::tc::TcError::IoError(e))
                    if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("detach {prog} from {uplink}")),
            }
        }
    }
    let root = bpffs.join(pins::ROOT_DIR);
    if root.exists() {
        std::fs::remove_dir_all(&root).with_context(|| format!("remove {}", root.display()))?;
    }
    Ok(())
}
