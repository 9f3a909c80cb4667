//! The datapath under test: the object the daemon embeds, loaded with its maps pinned in a
//! bpffs mounted for the one test, programs run through `BPF_PROG_TEST_RUN`, and helpers to
//! fill and read the maps.

use std::collections::BTreeMap;

use aya::{
    maps::{Array, HashMap, PerCpuArray},
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions},
    Ebpf, EbpfLoader,
};
use datapath_common::{
    addr::IpKey,
    config::{self, NodeConfig},
    endpoint, metrics, nat, peers,
};
use nix::mount::{MntFlags, MsFlags};

use super::{
    ethernet, ETH_P_ARP, FROM_POD, GATEWAY_MAC, HOST_A_MAC, HOST_B_MAC, LO_IFINDEX, NODE_IP, POD_A,
    POD_A_MAC, POD_B, POD_B_IFINDEX, POD_B_MAC, PORT_MAX, PORT_MIN, TUNNEL_EGRESS, TUNNEL_INGRESS,
    UPLINK_EGRESS, UPLINK_INGRESS,
};

/// A bpffs mounted on a temporary directory for one test, unmounted (pins and all) on drop.
pub struct Bpffs {
    dir: tempfile::TempDir,
}

impl Bpffs {
    /// Mounts a fresh bpffs on a new temporary directory.
    pub fn mount() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sluice-prog-test-")
            .tempdir()
            .expect("create a temporary directory");
        nix::mount::mount(
            Some("bpf"),
            dir.path(),
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount a bpffs for the test");
        Self { dir }
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), MntFlags::MNT_DETACH);
    }
}

/// The output of one program run.
pub struct Run {
    /// The program's return value ([`super::TC_ACT_UNSPEC`] for -1).
    pub verdict: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
}

/// (packets, bytes) of every named counter of `SL_METRIC_V1`, summed over CPUs.
pub type Counters = BTreeMap<&'static str, (u64, u64)>;

/// The whole datapath object loaded with fresh maps pinned in a bpffs of its own.
pub struct Datapath {
    // Dropped before the bpffs is unmounted.
    pub(super) ebpf: Ebpf,
    _bpffs: Bpffs,
}

impl Datapath {
    /// Loads and verifies the TC programs with every map fresh; panics unless root.
    pub fn load() -> Self {
        crate::require_root();
        assert!(
            !daemon::datapath::OBJECT.is_empty(),
            "the daemon was built without its eBPF object (AYA_BUILD_SKIP)"
        );
        let bpffs = Bpffs::mount();
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(bpffs.dir.path())
            .load(daemon::datapath::OBJECT)
            .expect("load the datapath object");
        for name in [
            FROM_POD,
            UPLINK_EGRESS,
            UPLINK_INGRESS,
            TUNNEL_INGRESS,
            TUNNEL_EGRESS,
        ] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("{name} missing from the object"))
                .try_into()
                .unwrap_or_else(|e| panic!("{name} is not a classifier: {e}"));
            prog.load()
                .unwrap_or_else(|e| panic!("verify and load {name}: {e:?}"));
        }
        Self {
            ebpf,
            _bpffs: bpffs,
        }
    }

    /// Runs `frame` through `prog` on the device `ifindex` of this thread's network namespace.
    pub fn run(&self, prog: &str, frame: &[u8], ifindex: u32) -> Run {
        self.try_run(prog, frame, ifindex)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN {prog}: {e:?}"))
    }

    /// [`Self::run`], with the kernel's refusal to run as an error.
    pub fn try_run(&self, prog: &str, frame: &[u8], ifindex: u32) -> Result<Run, ProgramError> {
        let p: &SchedClassifier = self.ebpf.program(prog).unwrap().try_into().unwrap();
        // struct __sk_buff (192 bytes): only ifindex (offset 40) set; test_run refuses
        // non-zero fields it does not take from user space.
        let mut ctx = [0u8; 192];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 64];
        let r = p.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..Default::default()
        })?;
        out.truncate(r.data_size_out as usize);
        Ok(Run {
            verdict: r.return_value,
            frame: out,
        })
    }

    /// Runs `frame` through `prog` as a `CHECKSUM_COMPLETE` skb
    /// (`BPF_F_TEST_SKB_CHECKSUM_COMPLETE`): the kernel seeds `skb->csum` from the input and
    /// refuses the run if the program left it inconsistent with the output. aya 0.14 has no
    /// option for the flag, hence the raw `bpf(BPF_PROG_TEST_RUN)`.
    pub fn try_run_csum_complete(&self, prog: &str, frame: &[u8]) -> std::io::Result<Run> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        /// `union bpf_attr`'s `test` member (include/uapi/linux/bpf.h).
        #[repr(C)]
        #[derive(Default)]
        struct TestAttr {
            prog_fd: u32,
            retval: u32,
            data_size_in: u32,
            data_size_out: u32,
            data_in: u64,
            data_out: u64,
            repeat: u32,
            duration: u32,
            ctx_size_in: u32,
            ctx_size_out: u32,
            ctx_in: u64,
            ctx_out: u64,
            flags: u32,
            cpu: u32,
            batch_size: u32,
            _pad: u32,
        }
        const BPF_PROG_TEST_RUN: libc::c_long = 10;
        const BPF_F_TEST_SKB_CHECKSUM_COMPLETE: u32 = 1 << 2;
        let p: &SchedClassifier = self.ebpf.program(prog).unwrap().try_into().unwrap();
        let fd = p.fd().expect("program fd");
        let mut out = vec![0u8; frame.len() + 64];
        let mut attr = TestAttr {
            prog_fd: fd.as_fd().as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_size_out: out.len() as u32,
            data_in: frame.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat: 1,
            flags: BPF_F_TEST_SKB_CHECKSUM_COMPLETE,
            ..Default::default()
        };
        // SAFETY: attr and the buffers it points to outlive the call; the kernel writes only
        // within the sizes given.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestAttr,
                std::mem::size_of::<TestAttr>(),
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        out.truncate(attr.data_size_out as usize);
        Ok(Run {
            verdict: attr.retval,
            frame: out,
        })
    }

    /// Writes the node configuration (`SL_CFG_V2`).
    pub fn set_config(&mut self, cfg: &NodeConfig) {
        let mut a: Array<_, NodeConfig> =
            Array::try_from(self.ebpf.map_mut(config::MAP_NAME).unwrap()).unwrap();
        a.set(0, cfg, 0).expect("write the node configuration");
    }

    /// Adds (or replaces) the local endpoint `ip` behind host veth `ifindex`.
    pub fn add_endpoint(&mut self, ip: [u8; 4], ifindex: u32, pod_mac: [u8; 6], host_mac: [u8; 6]) {
        let mut m: HashMap<_, IpKey, endpoint::Value> =
            HashMap::try_from(self.ebpf.map_mut(endpoint::MAP_NAME).unwrap()).unwrap();
        let v = endpoint::Value {
            ifindex,
            flags: 0,
            pod_mac,
            host_mac,
        };
        m.insert(ip_key(ip), v, 0).expect("insert endpoint");
    }

    /// Sets the `endpoint::FLAG_*` of the local endpoint `ip` (e.g. its policy isolation).
    pub fn set_endpoint_flags(&mut self, ip: [u8; 4], flags: u32) {
        let mut m: HashMap<_, IpKey, endpoint::Value> =
            HashMap::try_from(self.ebpf.map_mut(endpoint::MAP_NAME).unwrap()).unwrap();
        let mut v = m.get(&ip_key(ip), 0).expect("endpoint to flag");
        v.flags = flags;
        m.insert(ip_key(ip), v, 0).expect("update endpoint");
    }

    /// Routes the IPv4 pod CIDR `cidr`/`prefix` of another node to that node's address `node`.
    pub fn add_peer(&mut self, cidr: [u8; 4], prefix: u8, node: [u8; 4]) {
        let mut m: aya::maps::LpmTrie<_, IpKey, peers::Value> =
            aya::maps::LpmTrie::try_from(self.ebpf.map_mut(peers::MAP_NAME).unwrap()).unwrap();
        let key = aya::maps::lpm_trie::Key::new(peers::prefix_len_v4(prefix), ip_key(cidr));
        m.insert(&key, peers::Value::v4(node), 0)
            .expect("insert peer");
    }

    /// Every entry of a NAT map, sorted.
    pub fn nat(&self, map: &str) -> Vec<(nat::Tuple, nat::Binding)> {
        let mut v = self.nat_raw(map);
        for (_, b) in &mut v {
            b.life = Default::default();
        }
        v
    }

    /// [`Self::nat`] with each entry's life (timestamps, flags seen) as the programs wrote it.
    pub fn nat_raw(&self, map: &str) -> Vec<(nat::Tuple, nat::Binding)> {
        let m: HashMap<_, nat::Tuple, nat::Binding> =
            HashMap::try_from(self.ebpf.map(map).unwrap()).unwrap();
        let mut v: Vec<_> = m.iter().map(|e| e.expect("read NAT entry")).collect();
        v.sort_by_key(|(k, _)| (k.proto, k.saddr, k.daddr, k.sport, k.dport));
        v
    }

    /// Removes one entry of a NAT map, as LRU eviction would.
    pub fn remove_nat(&mut self, map: &str, key: &nat::Tuple) {
        let mut m: HashMap<_, nat::Tuple, nat::Binding> =
            HashMap::try_from(self.ebpf.map_mut(map).unwrap()).unwrap();
        m.remove(key).expect("remove NAT entry");
    }

    /// (packets, bytes) of every named counter, summed over CPUs.
    pub fn counters(&self) -> Counters {
        let a: PerCpuArray<_, metrics::Counter> =
            PerCpuArray::try_from(self.ebpf.map(metrics::MAP_NAME).unwrap()).unwrap();
        metrics::NAMES
            .iter()
            .map(|(idx, name)| {
                let v = a.get(idx, 0).expect("read counter");
                let sum = v
                    .iter()
                    .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
                (*name, sum)
            })
            .collect()
    }

    /// Asserts that since `before` exactly the counters in `moved` went up, by (packets, bytes).
    pub fn assert_counted(&self, before: &Counters, moved: &[(&str, u64, usize)]) {
        let mut want = before.clone();
        for (name, packets, bytes) in moved {
            let c = want
                .get_mut(name)
                .unwrap_or_else(|| panic!("no counter {name}"));
            c.0 += packets;
            c.1 += *bytes as u64;
        }
        assert_eq!(self.counters(), want, "counters (packets, bytes)");
    }

    /// [`Self::assert_counted`] by packets alone, for a refusal answered with a packet of
    /// another length (a reset, a port unreachable), where the design does not say whose length
    /// the bytes take: the refused packet's, as for every other drop, or the answer's.
    pub fn assert_packets_counted(&self, before: &Counters, moved: &[(&str, u64)]) {
        let packets =
            |c: &Counters| -> Counters { c.iter().map(|(k, v)| (*k, (v.0, 0))).collect() };
        let mut want = packets(before);
        for (name, n) in moved {
            let c = want
                .get_mut(name)
                .unwrap_or_else(|| panic!("no counter {name}"));
            c.0 += n;
        }
        assert_eq!(packets(&self.counters()), want, "counters (packets)");
    }

    /// Whether this kernel takes `BPF_F_TEST_SKB_CHECKSUM_COMPLETE` (6.18 does; older kernels
    /// refuse the flag with EINVAL); probed with a frame no program rewrites.
    pub fn csum_complete_supported(&self) -> bool {
        let arp = ethernet([0xff; 6], GATEWAY_MAC, ETH_P_ARP, &[0; 28]);
        match self.try_run_csum_complete(UPLINK_EGRESS, &arp) {
            Ok(_) => true,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                eprintln!(
                    "skipped: BPF_PROG_TEST_RUN has no BPF_F_TEST_SKB_CHECKSUM_COMPLETE here"
                );
                false
            }
            Err(e) => panic!("BPF_PROG_TEST_RUN with CHECKSUM_COMPLETE: {e}"),
        }
    }

    /// Runs `frame` as a `CHECKSUM_COMPLETE` skb, checks the verdict and returns the output
    /// frame, failing the test if the program left `skb->csum` stale (EBADMSG).
    pub fn run_csum_complete(&self, prog: &str, frame: &[u8], verdict: u32) -> Vec<u8> {
        let r = self
            .try_run_csum_complete(prog, frame)
            .unwrap_or_else(|e| panic!("{prog} on a CHECKSUM_COMPLETE skb: {e}"));
        assert_eq!(r.verdict, verdict, "{prog} verdict");
        r.frame
    }
}

/// The map key of an IPv4 address.
pub fn ip_key(ip: [u8; 4]) -> IpKey {
    let mut addr = [0; 16];
    addr[..4].copy_from_slice(&ip);
    IpKey {
        family: 4,
        _pad: [0; 3],
        addr,
    }
}

/// A NAT map key; ports in host order here, network order in the map.
pub fn tuple(proto: u8, src: ([u8; 4], u16), dst: ([u8; 4], u16)) -> nat::Tuple {
    nat::Tuple {
        family: 4,
        proto,
        _pad: [0; 2],
        saddr: ip_key(src.0).addr,
        daddr: ip_key(dst.0).addr,
        sport: src.1.to_be(),
        dport: dst.1.to_be(),
    }
}

/// A NAT map value; port in host order here, network order in the map.
pub fn binding(addr: [u8; 4], port: u16) -> nat::Binding {
    nat::Binding {
        addr: ip_key(addr).addr,
        port: port.to_be(),
        _pad: [0; 6],
        life: datapath_common::flow::Life::default(),
    }
}

/// Pod CIDR 10.244.1.0/24, node 192.0.2.2, masquerade ports 61000–65535.
pub fn node_config(masquerade: bool) -> NodeConfig {
    let mut c = NodeConfig::zeroed();
    c.pod_cidr4 = [10, 244, 1, 0];
    c.pod_prefix4 = 24;
    c.node_ip4 = NODE_IP;
    c.uplink_ifindex = LO_IFINDEX;
    c.snat_port_min = PORT_MIN;
    c.snat_port_max = PORT_MAX;
    c.flags = if masquerade {
        config::FLAG_MASQUERADE
    } else {
        0
    };
    c
}

/// Pod A behind the loopback (the sender's veth in test_run) and pod B behind
/// [`POD_B_IFINDEX`], no configuration.
pub fn two_pods() -> Datapath {
    let mut dp = Datapath::load();
    dp.add_endpoint(POD_A, LO_IFINDEX, POD_A_MAC, HOST_A_MAC);
    dp.add_endpoint(POD_B, POD_B_IFINDEX, POD_B_MAC, HOST_B_MAC);
    dp
}
