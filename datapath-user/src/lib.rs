//! User-space access to Sluice's pinned maps and programs: the one place the CNI plugin, the
//! agent and the CLI open, read and write them, so all three agree on paths and types. The
//! map layouts themselves are `datapath-common`'s (`no_std`, shared with the kernel side);
//! this crate holds what only user space does: pin paths, map handles, TC attachment, socket
//! options and the hostPort records of the state dir ([`hostport`]).

pub mod hostport;

use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray};
use datapath_common::{addr::IpKey, endpoint, metrics, pins};

/// `<bpffs>/sluice/maps/<name>`.
pub fn map_path(bpffs: &Path, name: &str) -> PathBuf {
    bpffs.join(pins::MAPS_DIR).join(name)
}

/// `<bpffs>/sluice/progs/<name>`.
pub fn prog_path(bpffs: &Path, name: &str) -> PathBuf {
    bpffs.join(pins::PROGS_DIR).join(name)
}

/// An error opening or using a pinned map, with the path it concerns.
#[derive(Debug, thiserror::Error)]
#[error("pinned map {}", path.display())]
pub struct PinError {
    pub path: PathBuf,
    #[source]
    pub source: MapError,
}

impl PinError {
    /// Whether the pin does not exist (the datapath was never loaded on this bpffs).
    pub fn is_not_found(&self) -> bool {
        match &self.source {
            MapError::SyscallError(e) => e.io_error.kind() == std::io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

fn open(bpffs: &Path, name: &str) -> Result<MapData, PinError> {
    let path = map_path(bpffs, name);
    MapData::from_pin(&path).map_err(|source| PinError { path, source })
}

fn open_hash<K: aya::Pod, V: aya::Pod>(
    bpffs: &Path,
    name: &str,
) -> Result<HashMap<MapData, K, V>, PinError> {
    HashMap::try_from(Map::HashMap(open(bpffs, name)?)).map_err(|source| PinError {
        path: map_path(bpffs, name),
        source,
    })
}

/// `BPF_EXIST` of `include/uapi/linux/bpf.h`: update only an entry that exists (libc does
/// not carry the bpf(2) flags).
const BPF_EXIST: u64 = 2;

/// FNV-1a 64 offset basis and prime.
const FNV_BASIS: u64 = 0xcbf29ce484222325;
const FNV_PRIME: u64 = 0x100000001b3;

fn fnv1a(mut h: u64, bytes: impl IntoIterator<Item = u8>) -> u64 {
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// The host-side veth name of an attachment: `sl` + 13 hex digits of a 64-bit FNV-1a hash of
/// `container_id/ifname` — deterministic (DEL and GC find it from the attachment alone) and
/// exactly 15 characters, the kernel's limit.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    veth_name_from(fnv1a(FNV_BASIS, container_id.bytes()), ifname)
}

/// [`host_veth_name`] from the FNV-1a state after the container id.
fn veth_name_from(id_hash: u64, ifname: &str) -> String {
    let h = fnv1a(id_hash, std::iter::once(b'/').chain(ifname.bytes()));
    format!("sl{:013x}", h >> 12)
}

/// Bytes of a long container id kept verbatim in its digest form.
const ID_DIGEST_PREFIX: usize = 120 - 1 - 16;

/// How an endpoint record stores a container id: verbatim when it fits the record's 120
/// bytes, else its first 103 bytes, `~` and the 16 hex digits of the id's FNV-1a 64 hash.
/// CNI ids match `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$` with no length limit, so `~` never occurs
/// in one: a digest is never mistaken for an id, two ids compare equal in this form only if
/// they are equal (or collide in 64 bits and share 103 bytes), and the hash is the state
/// [`host_veth_name`] continues from, so the veth name follows from the record alone.
pub fn meta_container_id(container_id: &str) -> String {
    if container_id.len() <= 120 {
        return container_id.into();
    }
    let mut end = ID_DIGEST_PREFIX;
    while !container_id.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}~{:016x}",
        &container_id[..end],
        fnv1a(FNV_BASIS, container_id.bytes())
    )
}

/// One local endpoint as recorded in the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointRecord {
    pub addr: std::net::IpAddr,
    pub value: endpoint::Value,
    pub container_id: String,
    pub ifname: String,
    pub namespace: String,
    pub name: String,
    pub netns_cookie: u64,
}

impl EndpointRecord {
    /// Whether this endpoint belongs to the attachment `(container_id, ifname)` (compared in
    /// the record's form, [`meta_container_id`]).
    pub fn is_for(&self, container_id: &str, ifname: &str) -> bool {
        self.ifname == ifname && self.container_id == meta_container_id(container_id)
    }

    /// The host veth name of this endpoint's attachment ([`host_veth_name`]), also when the
    /// record holds a long id's digest.
    pub fn host_veth_name(&self) -> String {
        let digest = self
            .container_id
            .split_once('~')
            .and_then(|(_, h)| u64::from_str_radix(h, 16).ok());
        match digest {
            Some(h) => veth_name_from(h, &self.ifname),
            None => host_veth_name(&self.container_id, &self.ifname),
        }
    }
}

/// The endpoint maps (`SL_EP_V1` + `SL_EPMETA_V1`).
pub struct Endpoints {
    eps: HashMap<MapData, IpKey, endpoint::Value>,
    meta: HashMap<MapData, IpKey, endpoint::Meta>,
    bpffs: PathBuf,
}

/// The key of an address.
pub fn ip_key(addr: std::net::IpAddr) -> IpKey {
    match addr {
        std::net::IpAddr::V4(a) => IpKey::v4(a.octets()),
        std::net::IpAddr::V6(a) => IpKey::v6(a.octets()),
    }
}

fn key_addr(k: &IpKey) -> std::net::IpAddr {
    match k.as_v4() {
        Some(o) => std::net::IpAddr::from(o),
        None => std::net::IpAddr::from(k.addr),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(datapath_common::addr::trim_fixed(b)).into_owned()
}

impl Endpoints {
    pub fn open(bpffs: &Path) -> Result<Self, PinError> {
        Ok(Self {
            eps: open_hash(bpffs, endpoint::MAP_NAME)?,
            meta: open_hash(bpffs, endpoint::META_MAP_NAME)?,
            bpffs: bpffs.to_path_buf(),
        })
    }

    fn err(&self, name: &str, source: MapError) -> PinError {
        PinError {
            path: map_path(&self.bpffs, name),
            source,
        }
    }

    /// Records an endpoint: metadata first, so a reader that sees the datapath entry always
    /// finds who it belongs to.
    pub fn insert(
        &mut self,
        addr: std::net::IpAddr,
        value: &endpoint::Value,
        meta: &endpoint::Meta,
    ) -> Result<(), PinError> {
        let k = ip_key(addr);
        self.meta
            .insert(k, meta, 0)
            .map_err(|e| self.err(endpoint::META_MAP_NAME, e))?;
        self.eps
            .insert(k, value, 0)
            .map_err(|e| self.err(endpoint::MAP_NAME, e))
    }

    /// Removes an endpoint; a missing entry is not an error (DEL is idempotent).
    pub fn remove(&mut self, addr: std::net::IpAddr) -> Result<(), PinError> {
        let k = ip_key(addr);
        for (name, r) in [
            (endpoint::MAP_NAME, self.eps.remove(&k)),
            (endpoint::META_MAP_NAME, self.meta.remove(&k)),
        ] {
            absent_is_ok(r).map_err(|e| self.err(name, e))?;
        }
        Ok(())
    }

    pub fn get(&self, addr: std::net::IpAddr) -> Option<endpoint::Value> {
        self.eps.get(&ip_key(addr), 0).ok()
    }

    /// Sets an endpoint's `FLAG_*` bits (the entry must exist).
    pub fn set_flags(&mut self, addr: std::net::IpAddr, flags: u32) -> Result<(), PinError> {
        let k = ip_key(addr);
        let mut v = self
            .eps
            .get(&k, 0)
            .map_err(|e| self.err(endpoint::MAP_NAME, e))?;
        v.flags = flags;
        // BPF_EXIST: never resurrect an entry a concurrent DEL just removed.
        self.eps
            .insert(k, v, BPF_EXIST)
            .map_err(|e| self.err(endpoint::MAP_NAME, e))
    }

    pub fn get_meta(&self, addr: std::net::IpAddr) -> Option<endpoint::Meta> {
        self.meta.get(&ip_key(addr), 0).ok()
    }

    /// Every endpoint, with its metadata where present.
    pub fn list(&self) -> Result<Vec<EndpointRecord>, PinError> {
        let mut out = Vec::new();
        for item in self.eps.iter() {
            let (k, value) = item.map_err(|e| self.err(endpoint::MAP_NAME, e))?;
            let m = self.meta.get(&k, 0).ok();
            out.push(EndpointRecord {
                addr: key_addr(&k),
                value,
                container_id: m.map(|m| text(&m.container_id)).unwrap_or_default(),
                ifname: m.map(|m| text(&m.ifname)).unwrap_or_default(),
                namespace: m.map(|m| text(&m.namespace)).unwrap_or_default(),
                name: m.map(|m| text(&m.name)).unwrap_or_default(),
                netns_cookie: m.map(|m| m.netns_cookie).unwrap_or_default(),
            });
        }
        out.sort_by_key(|e| e.addr);
        Ok(out)
    }
}

/// A map delete whose key was already gone counts as done (DEL and GC are idempotent).
pub fn absent_is_ok(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Builds an endpoint's metadata record (a container id longer than the record's field is
/// stored in the form of [`meta_container_id`]).
pub fn endpoint_meta(
    container_id: &str,
    ifname: &str,
    namespace: &str,
    name: &str,
    netns_cookie: u64,
) -> endpoint::Meta {
    endpoint::Meta {
        netns_cookie,
        container_id: datapath_common::addr::fixed_bytes(
            meta_container_id(container_id).as_bytes(),
        ),
        ifname: datapath_common::addr::fixed_bytes(ifname.as_bytes()),
        namespace: datapath_common::addr::fixed_bytes(namespace.as_bytes()),
        name: datapath_common::addr::fixed_bytes(name.as_bytes()),
    }
}

/// The pod network namespaces map (`SL_PODNS_V1`): netns cookie → `NS_FLAG_*`.
pub struct PodNamespaces {
    map: HashMap<MapData, u64, u32>,
    path: PathBuf,
}

impl PodNamespaces {
    pub fn open(bpffs: &Path) -> Result<Self, PinError> {
        Ok(Self {
            map: open_hash(bpffs, datapath_common::sock::PODNS_MAP_NAME)?,
            path: map_path(bpffs, datapath_common::sock::PODNS_MAP_NAME),
        })
    }

    pub fn set(&mut self, cookie: u64, flags: u32) -> Result<(), PinError> {
        self.map
            .insert(cookie, flags, 0)
            .map_err(|source| PinError {
                path: self.path.clone(),
                source,
            })
    }

    pub fn get(&self, cookie: u64) -> Option<u32> {
        self.map.get(&cookie, 0).ok()
    }

    /// Removes an entry; a missing one is not an error.
    pub fn remove(&mut self, cookie: u64) -> Result<(), PinError> {
        absent_is_ok(self.map.remove(&cookie)).map_err(|source| PinError {
            path: self.path.clone(),
            source,
        })
    }
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`, Linux ≥ 5.14).
pub fn current_netns_cookie() -> std::io::Result<u64> {
    use std::os::fd::AsRawFd as _;
    let sock =
        std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` lives across the call and getsockopt writes at most `len` bytes to it.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Sums the per-CPU counters: `(reason name, packets, bytes)` for every non-zero counter.
pub fn read_metrics(bpffs: &Path) -> Result<Vec<(&'static str, u64, u64)>, PinError> {
    let md = open(bpffs, metrics::MAP_NAME)?;
    let path = map_path(bpffs, metrics::MAP_NAME);
    let arr: PerCpuArray<MapData, metrics::Counter> = PerCpuArray::try_from(Map::PerCpuArray(md))
        .map_err(|source| PinError {
        path: path.clone(),
        source,
    })?;
    let mut out = Vec::new();
    for (idx, name) in metrics::NAMES {
        let vals = arr.get(idx, 0).map_err(|source| PinError {
            path: path.clone(),
            source,
        })?;
        let (p, b) = vals
            .iter()
            .fold((0u64, 0u64), |(p, b), c| (p + c.packets, b + c.bytes));
        out.push((*name, p, b));
    }
    Ok(out)
}

/// An error attaching a pinned TC program to an interface.
#[derive(Debug, thiserror::Error)]
#[error("attach program {prog} to {ifname}")]
pub struct AttachError {
    pub prog: String,
    pub ifname: String,
    /// Boxed: aya's error is large and this travels up through `Result`s.
    #[source]
    pub source: Box<aya::programs::ProgramError>,
}

/// Attaches the pinned program `prog` to `ifname` (TC ingress or egress) as Sluice's cls_bpf
/// filter, replacing a filter already there in one netlink operation (no window without a
/// program). Netlink attachments belong to the interface, not to this process: they persist
/// after it exits and vanish with the interface, so nothing is left to clean up.
pub fn attach_pinned_tc(
    bpffs: &Path,
    prog: &str,
    ifname: &str,
    ingress: bool,
) -> Result<(), AttachError> {
    use aya::programs::{
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        SchedClassifier, TcAttachType,
    };
    let err = |source: aya::programs::ProgramError| AttachError {
        prog: prog.into(),
        ifname: ifname.into(),
        source: Box::new(source),
    };
    let mut p = SchedClassifier::from_pin(prog_path(bpffs, prog)).map_err(err)?;
    if let Err(e) = aya::programs::tc::qdisc_add_clsact(ifname) {
        // EEXIST: the clsact qdisc is already there, which is what we want.
        let exists = matches!(&e, aya::programs::tc::TcError::NetlinkError(n)
            if n.raw_os_error() == Some(libc::EEXIST));
        if !exists {
            return Err(err(e.into()));
        }
    }
    let kind = if ingress {
        TcAttachType::Ingress
    } else {
        TcAttachType::Egress
    };
    let handle = TcHandle::new(0, pins::TC_HANDLE);
    let opts = || {
        TcAttachOptions::Netlink(NlOptions {
            priority: pins::TC_PRIORITY,
            handle,
            classid: None,
        })
    };
    let id = match p.attach_with_options(ifname, kind, opts()) {
        Ok(id) => id,
        Err(_) => {
            // A filter is already there (agent restart, upgrade): replace it in place.
            let old = SchedClassifierLink::attached(ifname, kind, pins::TC_PRIORITY, handle, None)
                .map_err(|e| err(aya::programs::tc::TcError::IoError(e).into()))?;
            p.attach_to_link(old).map_err(err)?
        }
    };
    // Dropping the link would detach it: the attachment must outlive this process.
    let link = p.take_link(id).map_err(err)?;
    std::mem::forget(link);
    Ok(())
}

/// The endpoint isolation flags (`endpoint::FLAG_ISOLATED_*`) the agent published for pod
/// `namespace/name` in `SL_PODISO_V1`; 0 when it published none (or the map is missing).
pub fn pod_isolation_flags(bpffs: &Path, namespace: &str, name: &str) -> u32 {
    let Ok(map) = open_hash::<u64, u32>(bpffs, datapath_common::policy::POD_ISOLATION_MAP_NAME)
    else {
        return 0;
    };
    let key = datapath_common::policy::pod_key(namespace.as_bytes(), name.as_bytes());
    let iso = map.get(&key, 0).unwrap_or(0);
    let mut flags = 0;
    if iso & datapath_common::policy::ISO_INGRESS != 0 {
        flags |= endpoint::FLAG_ISOLATED_INGRESS;
    }
    if iso & datapath_common::policy::ISO_EGRESS != 0 {
        flags |= endpoint::FLAG_ISOLATED_EGRESS;
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(container_id: &str) -> EndpointRecord {
        let meta = endpoint_meta(container_id, "eth0", "default", "web", 7);
        EndpointRecord {
            addr: std::net::IpAddr::from([10, 244, 1, 2]),
            value: endpoint::Value {
                ifindex: 1,
                flags: 0,
                pod_mac: [0; 6],
                host_mac: [0; 6],
            },
            container_id: text(&meta.container_id),
            ifname: text(&meta.ifname),
            namespace: text(&meta.namespace),
            name: text(&meta.name),
            netns_cookie: meta.netns_cookie,
        }
    }

    /// Test that an endpoint record identifies its attachment exactly for container ids of
    /// every length the CNI spec allows (no limit): short ids verbatim, ids past the 120-byte
    /// field by digest, two long ids sharing 120 bytes told apart, and the host veth name
    /// recovered from the record alone.
    #[test]
    fn endpoint_record_identifies_ids_of_any_length() {
        let base = "a0_.-Z".repeat(40);
        for len in [1, 64, 119, 120, 121, 200, 4096, 131_000] {
            let id: String = base.chars().cycle().take(len).collect();
            let r = record(&id);
            assert!(r.is_for(&id, "eth0"), "len {len}");
            assert!(!r.is_for(&id, "eth1"), "len {len}");
            assert_eq!(r.host_veth_name(), host_veth_name(&id, "eth0"), "len {len}");
            let other = format!("{id}x");
            assert!(!r.is_for(&other, "eth0"), "len {len}");
            if len <= 120 {
                assert_eq!(r.container_id, id);
            } else {
                assert_eq!(r.container_id.len(), 120);
                assert!(!r.is_for(&id[..120], "eth0"), "len {len}");
            }
        }
        let a = format!("{}{}", "b".repeat(120), "1");
        let b = format!("{}{}", "b".repeat(120), "2");
        assert!(record(&a).is_for(&a, "eth0") && !record(&a).is_for(&b, "eth0"));
        assert_ne!(record(&a).host_veth_name(), record(&b).host_veth_name());
        assert_eq!(meta_container_id("abc"), "abc".to_string());
    }
}
