//! The `iptables` system of the Service scenarios: kube-proxy's iptables mode on the reference
//! bridge CNI node ([`Bridge`]), its rules ([`super::kubeproxy`]) restored with
//! `iptables-restore` in the node namespace — the system's `iptables-restore` (iptables-nft
//! on Debian 12, as the bridge plugin's own rules), or iptables-legacy with `--iptables-legacy`.
//!
//! A pod reaches a ClusterIP through its default gateway (cni0), so the nat PREROUTING hook
//! DNATs it and the node routes it back onto the bridge. The backend's reply, though, is
//! bridged straight to the client (same L2): only br_netfilter (`bridge-nf-call-iptables=1`,
//! on by default in every namespace here, and required by kubeadm) lets conntrack see it and
//! reverse the DNAT; without it the client gets a SYN-ACK from the pod's own address and the
//! connection never opens. So the node is checked for it, and every round checks that the
//! connections to the ClusterIPs are in the node's conntrack with a backend as the reply's
//! source: DNATed.
//!
//! Every measurement starts with the node's conntrack table flushed (`flush_conntrack`): the
//! table keeps each connection for the 120 s of TIME_WAIT, so without it each round would
//! inherit the entries of the rounds before (up to 200,000 after five rounds, at which the
//! lookups themselves slow down, and a few more fill `nf_conntrack_max` and drop SYNs): the
//! rounds would measure the run's history, not the rules.

use std::{
    cell::{Cell, RefCell},
    ffi::OsStr,
    io::{self, Write as _},
    mem::{size_of, MaybeUninit},
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use test_support::Netns;

use super::{
    super::{
        check_interrupted, interrupted,
        topo::{sh, Bridge, System as _},
        Context as _, Error, Result,
    },
    kubeproxy, services, unreachable_without_services, PodRef, SvcSystem, BACKENDS,
    FIRST_CLUSTER_IP, SETTLE,
};

/// Bound on one `iptables-restore` (iptables-nft takes minutes for 10,000 Services).
const RESTORE_DEADLINE: Duration = Duration::from_secs(900);
/// `IPCTNL_MSG_CT_DELETE` (linux/netfilter/nfnetlink_conntrack.h; libc does not have it).
const IPCTNL_MSG_CT_DELETE: u16 = 2;

/// The `iptables-restore` the rules go through.
pub fn restore_program(legacy: bool) -> &'static str {
    if legacy {
        "iptables-legacy-restore"
    } else {
        "iptables-restore"
    }
}

fn iptables_program(legacy: bool) -> &'static str {
    if legacy {
        "iptables-legacy"
    } else {
        "iptables"
    }
}

pub struct IptablesSvc {
    node: RefCell<KubeProxyNode>,
    legacy: bool,
    /// Nodes built so far (the summary says how many).
    built: Cell<usize>,
}

/// One bridge CNI node with kube-proxy's jump rules, its client and backend pods.
struct KubeProxyNode {
    // Pod namespaces first: they go before the node.
    extra: Vec<(Netns, Ipv4Addr)>,
    bridge: Bridge,
    /// The backends: the bridge system's server pod, then `extra`.
    endpoints: Vec<Ipv4Addr>,
    /// Services whose rules are in the node.
    programmed: usize,
}

impl KubeProxyNode {
    fn new(legacy: bool) -> Result<Self> {
        let bridge = Bridge::new()?;
        let mut extra = Vec::new();
        for i in 1..BACKENDS {
            extra.push(bridge.new_pod(&format!("svc-backend-{i}"))?);
        }
        let mut endpoints = vec![bridge.pods().server_ip];
        endpoints.extend(extra.iter().map(|(_, ip)| *ip));
        let n = Self {
            extra,
            bridge,
            endpoints,
            programmed: 0,
        };
        let call = sh(
            n.bridge.node(),
            "cat /proc/sys/net/bridge/bridge-nf-call-iptables",
        )?;
        if call.trim() != "1" {
            return Err(Error::msg(format!(
                "iptables: bridge-nf-call-iptables is {:?} in the node namespace; kube-proxy \
                 on a bridge needs 1",
                call.trim()
            )));
        }
        ensure_jumps(n.bridge.node(), legacy)?;
        unreachable_without_services("iptables", n.bridge.pods().client.path())?;
        Ok(n)
    }

    fn restore(&self, legacy: bool, n: usize, stale: usize) -> Result<Duration> {
        let input = kubeproxy::restore_input(&services(&self.endpoints), n, stale);
        restore(self.bridge.node(), legacy, input)
    }

    /// The node's conntrack table: (entries whose original destination is a programmed
    /// ClusterIP, those of them whose reply comes from a backend, i.e. DNATed).
    fn dnat_entries(&self) -> Result<(u64, u64)> {
        let table = sh(self.bridge.node(), "cat /proc/net/nf_conntrack")?;
        let first = u32::from(FIRST_CLUSTER_IP);
        let range = first..first + self.programmed as u32;
        let (mut to_service, mut dnat) = (0, 0);
        for line in table.lines() {
            // `src=… dst=…` of the original direction, then of the reply.
            let field = |key: &str, nth: usize| {
                line.split_whitespace()
                    .filter_map(|w| w.strip_prefix(key))
                    .nth(nth)
                    .and_then(|v| v.parse::<Ipv4Addr>().ok())
            };
            if !field("dst=", 0).is_some_and(|d| range.contains(&u32::from(d))) {
                continue;
            }
            to_service += 1;
            if field("src=", 1).is_some_and(|r| self.endpoints.contains(&r)) {
                dnat += 1;
            }
        }
        Ok((to_service, dnat))
    }
}

/// Runs `iptables-restore` in `ns` with `input` on stdin, with kube-proxy's flags; returns
/// the time from spawn to exit.
fn restore(ns: &Netns, legacy: bool, input: String) -> Result<Duration> {
    let mut cmd = ns.command(restore_program(legacy));
    cmd.args(["-w", "5", "-W", "100000", "--noflush", "--counters"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("start {}", restore_program(legacy)))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // From a thread: the input is megabytes, more than a pipe holds.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    // Minutes with iptables-nft: a stop signal must not wait for it.
    let out = loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(out) => break out.context("wait for iptables-restore")?,
            Err(_) if start.elapsed() < RESTORE_DEADLINE && !interrupted() => {}
            Err(_) => {
                // Not reaped yet (the waiter is still in wait): the pid is still this child's.
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGKILL);
                let _ = rx.recv();
                check_interrupted()?;
                return Err(Error::msg(format!(
                    "iptables-restore ran over {RESTORE_DEADLINE:?} and was killed"
                )));
            }
        }
    };
    let took = start.elapsed();
    // A write error means the restore stopped reading: its status says why.
    let _ = writer.join();
    if !out.status.success() {
        return Err(Error::msg(format!(
            "iptables-restore in {} failed ({}): {}",
            ns.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(took)
}

/// Empties the conntrack table of `ns` as `conntrack -F` does, without the tool: one
/// ctnetlink DELETE carrying no tuple, which the kernel takes as a flush of the family.
fn flush_conntrack(ns: &Netns) -> Result<()> {
    #[repr(C)]
    struct Request {
        hdr: libc::nlmsghdr,
        // struct nfgenmsg
        family: u8,
        version: u8,
        res_id: u16,
    }
    #[repr(C)]
    struct Ack {
        hdr: libc::nlmsghdr,
        // struct nlmsgerr, then the request echoed back
        error: i32,
        _echo: [u8; 64],
    }
    ns.run(|| -> io::Result<()> {
        // SAFETY: socket(2) with constant arguments; the descriptor is owned just below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let req = Request {
            hdr: libc::nlmsghdr {
                nlmsg_len: size_of::<Request>() as u32,
                nlmsg_type: ((libc::NFNL_SUBSYS_CTNETLINK as u16) << 8) | IPCTNL_MSG_CT_DELETE,
                nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
                nlmsg_seq: 1,
                nlmsg_pid: 0,
            },
            family: libc::AF_INET as u8,
            version: libc::NFNETLINK_V0 as u8,
            res_id: 0,
        };
        // SAFETY: `req` is a live repr(C) value of the length given.
        let sent = unsafe {
            libc::send(
                fd.as_raw_fd(),
                (&req as *const Request).cast(),
                size_of::<Request>(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut ack = MaybeUninit::<Ack>::zeroed();
        // SAFETY: recv writes at most the length given into `ack`.
        let got =
            unsafe { libc::recv(fd.as_raw_fd(), ack.as_mut_ptr().cast(), size_of::<Ack>(), 0) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: zero-initialised, then (partly) filled by the kernel: every bit pattern is
        // valid for these integer fields.
        let ack = unsafe { ack.assume_init() };
        if ack.hdr.nlmsg_type != libc::NLMSG_ERROR as u16 {
            return Err(io::Error::other(format!(
                "unexpected netlink reply of type {}",
                ack.hdr.nlmsg_type
            )));
        }
        match ack.error {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(-e)),
        }
    })
    .with_context(|| format!("flush the conntrack table of {}", ns.name))
}

/// kube-proxy's chains and jump rules, as it ensures them at start: the chain created if
/// missing, the rule inserted first unless it is there (`-C`).
fn ensure_jumps(ns: &Netns, legacy: bool) -> Result<()> {
    let ipt = iptables_program(legacy);
    let mut script = String::from("set -e\n");
    for (table, chain, args) in kubeproxy::jumps() {
        let args: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
        let args = args.join(" ");
        script += &format!(
            "{ipt} -w -t {table} -S {chain} >/dev/null 2>&1 || {ipt} -w -t {table} -N {chain}\n\
             {ipt} -w -t {table} -C {args} 2>/dev/null || {ipt} -w -t {table} -I {args}\n"
        );
    }
    sh(ns, &script).map(drop)
}

impl IptablesSvc {
    pub fn new(legacy: bool) -> Result<Self> {
        Ok(Self {
            node: RefCell::new(KubeProxyNode::new(legacy)?),
            legacy,
            built: Cell::new(1),
        })
    }

    fn replace(&self, fresh: KubeProxyNode) {
        drop(self.node.replace(fresh));
        self.built.set(self.built.get() + 1);
        // The kernel frees the old namespace's rules and conntrack entries in the background.
        std::thread::sleep(SETTLE);
    }
}

impl SvcSystem for IptablesSvc {
    fn name(&self) -> &'static str {
        "iptables"
    }

    fn backends(&self) -> Vec<Ipv4Addr> {
        self.node.borrow().endpoints.clone()
    }

    fn pod_command(&self, pod: PodRef, program: &OsStr) -> Command {
        let node = self.node.borrow();
        let pods = node.bridge.pods();
        match pod {
            PodRef::Client => pods.client.command(program),
            PodRef::Backend(0) => pods.server.command(program),
            PodRef::Backend(i) => node.extra[i - 1].0.command(program),
        }
    }

    fn program(&self, n: usize) -> Result<()> {
        let mut node = self.node.borrow_mut();
        let current = node.programmed;
        if current == n && n > 0 {
            return Ok(());
        }
        node.restore(self.legacy, n, current)?;
        node.programmed = n;
        Ok(())
    }

    /// kube-proxy's first sync: the restore into a node that has none of its Service rules
    /// yet, freshly built (its pods ADDed, kube-proxy's jump rules in place). The node then
    /// replaces this system's, Services programmed and conntrack empty.
    fn time_program(&self, n: usize) -> Result<f64> {
        let mut fresh = KubeProxyNode::new(self.legacy)?;
        let took = fresh.restore(self.legacy, n, 0)?;
        fresh.programmed = n;
        self.replace(fresh);
        Ok(took.as_secs_f64())
    }

    /// An empty conntrack table (see the module documentation).
    fn prepare(&self) -> Result<()> {
        flush_conntrack(self.node.borrow().bridge.node())
    }

    fn snapshot(&self) -> Result<u64> {
        Ok(0)
    }

    /// The node's conntrack holds the connections to the ClusterIPs with a backend as the
    /// reply's source: kube-proxy's rules DNATed them.
    fn translated(&self, _before: u64, connections: u64) -> Result<String> {
        let node = self.node.borrow();
        let (to_service, dnat) = node.dnat_entries()?;
        if connections > 0 && (dnat == 0 || dnat != to_service) {
            return Err(Error::msg(format!(
                "iptables: {to_service} conntrack entries to the ClusterIPs, {dnat} of them \
                 DNATed to a backend: the Service rules did not translate every connection"
            )));
        }
        // A full table drops new connections: the figures would measure that, not the rules.
        let read = |f: &str| -> Result<u64> {
            let v = sh(
                node.bridge.node(),
                &format!("cat /proc/sys/net/netfilter/{f}"),
            )?;
            v.trim()
                .parse()
                .map_err(|_| Error::msg(format!("{f} is not a number: {v:?}")))
        };
        let (count, max) = (read("nf_conntrack_count")?, read("nf_conntrack_max")?);
        if count + 1000 >= max {
            return Err(Error::msg(format!(
                "iptables: the node's conntrack table is full ({count} of {max} entries): \
                 fewer or shorter rounds (--rounds, --seconds)"
            )));
        }
        Ok(format!(
            "conntrack {dnat} entries, all DNATed ({:.0} % full)",
            count as f64 * 100.0 / max as f64
        ))
    }

    fn summary(&self) -> String {
        let version = Command::new(iptables_program(self.legacy))
            .arg("-V")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|_| "?".into());
        format!(
            "iptables: kube-proxy's rules through {} ({version}), {BACKENDS} endpoints per \
             Service, {} nodes built",
            restore_program(self.legacy),
            self.built.get()
        )
    }
}
