//! The rules kube-proxy's iptables mode writes for ClusterIP Services, reproduced for the
//! `iptables` system of the Service scenarios (`svc-*`): what a node running the bridge CNI and
//! kube-proxy (`--proxy-mode=iptables`, kubeadm defaults) carries for N Services that all
//! select the same backend pods.
//!
//! Reproduced from `pkg/proxy/iptables/proxier.go` of recent Kubernetes releases
//! (`syncProxyRules` and `writeServiceToEndpointRules`), in the order it writes them:
//! - the jump rules it ensures with `iptables -I` before any restore ([`jumps`]): nat
//!   PREROUTING and OUTPUT to `KUBE-SERVICES`, POSTROUTING to `KUBE-POSTROUTING`, and the filter
//!   jumps (`KUBE-SERVICES`, `KUBE-EXTERNAL-SERVICES`, `KUBE-NODEPORTS`, `KUBE-FORWARD`,
//!   `KUBE-PROXY-FIREWALL`) from INPUT, FORWARD and OUTPUT;
//! - one `iptables-restore --noflush --counters` of both tables ([`restore_input`]): in nat,
//!   `KUBE-POSTROUTING` (return unless marked, clear the mark, MASQUERADE `--random-fully`),
//!   `KUBE-MARK-MASQ` (`--or-mark 0x004000`, masqueradeBit 14); per service port a
//!   `KUBE-SERVICES` rule `-m comment --comment "ns/name:port cluster IP" -m tcp -p tcp
//!   -d CLUSTERIP --dport PORT -j KUBE-SVC-…`, and a `KUBE-SVC-…` chain whose first rule marks
//!   traffic from outside the cluster CIDR for masquerade (kubeadm sets `clusterCIDR`, so the
//!   local-traffic detector is implemented), then one rule per endpoint with
//!   `-m statistic --mode random --probability 1/(n-i)` (`%0.10f`) for the i-th of n and the last
//!   unconditional, jumping to a `KUBE-SEP-…` chain per endpoint that marks hairpin traffic
//!   (`-s POD/32 -j KUBE-MARK-MASQ`) and DNATs (`-m tcp -p tcp -j DNAT --to-destination
//!   POD:PORT`); the `KUBE-NODEPORTS` tail rule last in `KUBE-SERVICES`; in filter, the
//!   kube-proxy chains (empty for Services with endpoints) and `KUBE-FORWARD`. Above 1,000
//!   endpoints in all ("large cluster mode") the `KUBE-SVC`→`KUBE-SEP` and `KUBE-SEP` rules carry
//!   no comment, as kube-proxy drops them there; the `KUBE-SERVICES` rules keep theirs. Chains
//!   that are no longer used are flushed and deleted (`-X`) in the same restore, as kube-proxy's
//!   full sync does.
//!
//! Left out: chain names are `KUBE-SVC-`/`KUBE-SEP-` and 16 base32 characters as kube-proxy's,
//! but from an 80-bit FNV-1a hash rather than SHA-256 (this crate has no SHA-256; a name costs
//! nothing per packet, and these are as random as kube-proxy's, which matters to how long
//! iptables-nft takes to restore them: sequential names go faster); kube-proxy walks a Go map, so its `KUBE-SERVICES` order is random
//! where this one is by index (clients pick Services uniformly at random, so the expected scan
//! is N/2 either way); NodePort, external IP, load-balancer, `Local` traffic policy, session
//! affinity and no-endpoint (REJECT) rules, which these Services do not need; the
//! `KUBE-PROXY-CANARY` monitor chains and kubelet's `KUBE-FIREWALL` (never traversed by
//! forwarded pod traffic); the partial syncs kube-proxy does after its first full one.

use std::{fmt::Write as _, net::Ipv4Addr};

/// kubeadm's pod network, kube-proxy's `clusterCIDR` (the bridge node's pods are in it).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// `1 << masqueradeBit` (14, the default) as kube-proxy formats it (`%#08x`).
const MASQ_MARK: &str = "0x004000";
/// Total endpoints above which kube-proxy leaves out per-endpoint comments.
const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// N Services `default/s0` … `default/s{N-1}`, each with one TCP port named `http`, ClusterIPs
/// `first_ip` + index, all selecting the same endpoints.
#[derive(Clone, Debug)]
pub struct Services<'a> {
    pub first_ip: Ipv4Addr,
    pub port: u16,
    pub endpoints: &'a [Ipv4Addr],
    pub target_port: u16,
}

impl Services<'_> {
    pub fn cluster_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.first_ip) + i as u32)
    }

    /// `ns/name:port`, kube-proxy's `ServicePortName.String()`.
    fn port_name(i: usize) -> String {
        format!("default/s{i}:http")
    }

    fn svc_chain(i: usize) -> String {
        format!("KUBE-SVC-{}", hash16(&format!("{}tcp", Self::port_name(i))))
    }

    fn sep_chain(&self, i: usize, ep: Ipv4Addr) -> String {
        let endpoint = format!("{ep}:{}", self.target_port);
        format!(
            "KUBE-SEP-{}",
            hash16(&format!("{}tcp{endpoint}", Self::port_name(i)))
        )
    }
}

/// The chains kube-proxy ensures and the jump rules it prepends to the built-in chains
/// (`iptablesJumpChains`), as `(table, chain to create, iptables arguments after -I/-C)`.
pub fn jumps() -> Vec<(&'static str, &'static str, Vec<&'static str>)> {
    let new = ["-m", "conntrack", "--ctstate", "NEW"];
    let jump = |table, dst, src, comment, extra: &[&'static str]| {
        let mut args = vec![src];
        args.extend_from_slice(extra);
        args.extend(["-m", "comment", "--comment", comment, "-j", dst]);
        (table, dst, args)
    };
    vec![
        jump(
            "filter",
            "KUBE-EXTERNAL-SERVICES",
            "INPUT",
            "kubernetes externally-visible service portals",
            &new,
        ),
        jump(
            "filter",
            "KUBE-EXTERNAL-SERVICES",
            "FORWARD",
            "kubernetes externally-visible service portals",
            &new,
        ),
        jump(
            "filter",
            "KUBE-NODEPORTS",
            "INPUT",
            "kubernetes health check service ports",
            &[],
        ),
        jump(
            "filter",
            "KUBE-SERVICES",
            "FORWARD",
            "kubernetes service portals",
            &new,
        ),
        jump(
            "filter",
            "KUBE-SERVICES",
            "OUTPUT",
            "kubernetes service portals",
            &new,
        ),
        jump(
            "filter",
            "KUBE-FORWARD",
            "FORWARD",
            "kubernetes forwarding rules",
            &[],
        ),
        jump(
            "filter",
            "KUBE-PROXY-FIREWALL",
            "INPUT",
            "kubernetes load balancer firewall",
            &new,
        ),
        jump(
            "filter",
            "KUBE-PROXY-FIREWALL",
            "OUTPUT",
            "kubernetes load balancer firewall",
            &new,
        ),
        jump(
            "filter",
            "KUBE-PROXY-FIREWALL",
            "FORWARD",
            "kubernetes load balancer firewall",
            &new,
        ),
        jump(
            "nat",
            "KUBE-SERVICES",
            "OUTPUT",
            "kubernetes service portals",
            &[],
        ),
        jump(
            "nat",
            "KUBE-SERVICES",
            "PREROUTING",
            "kubernetes service portals",
            &[],
        ),
        jump(
            "nat",
            "KUBE-POSTROUTING",
            "POSTROUTING",
            "kubernetes postrouting rules",
            &[],
        ),
    ]
}

/// The input of kube-proxy's full sync for Services `0..n` of `s`: both tables, the chains
/// of Services `n..stale` (programmed before, gone now) flushed and deleted.
pub fn restore_input(s: &Services, n: usize, stale: usize) -> String {
    let large = n * s.endpoints.len() > LARGE_CLUSTER_ENDPOINTS;
    let mut chains = String::new();
    let mut rules = String::new();
    let mut out = String::with_capacity(n * 600 + 4096);

    out.push_str("*filter\n");
    for c in [
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
    ] {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    out.push_str("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n");
    let _ = writeln!(
        out,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" \
         -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"
    );
    out.push_str(
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" \
         -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n",
    );
    out.push_str("COMMIT\n*nat\n");

    for c in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(chains, ":{c} - [0:0]");
    }
    let _ = writeln!(
        rules,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
    );
    let _ = writeln!(rules, "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}");
    rules.push_str(
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" \
         -j MASQUERADE --random-fully\n",
    );
    let _ = writeln!(rules, "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}");

    let eps = s.endpoints;
    for i in 0..n {
        let name = Services::port_name(i);
        let svc = Services::svc_chain(i);
        let ip = s.cluster_ip(i);
        let port = s.port;
        let matches = format!(
            "-m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {ip} --dport {port}"
        );
        let _ = writeln!(rules, "-A KUBE-SERVICES {matches} -j {svc}");
        let _ = writeln!(chains, ":{svc} - [0:0]");
        let _ = writeln!(
            rules,
            "-A {svc} {matches} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ"
        );
        for (k, ep) in eps.iter().enumerate() {
            let sep = s.sep_chain(i, *ep);
            let _ = write!(rules, "-A {svc}");
            if !large {
                let _ = write!(
                    rules,
                    " -m comment --comment \"{name} -> {ep}:{}\"",
                    s.target_port
                );
            }
            if k + 1 < eps.len() {
                let p = 1.0 / (eps.len() - k) as f64;
                let _ = write!(rules, " -m statistic --mode random --probability {p:.10}");
            }
            let _ = writeln!(rules, " -j {sep}");
        }
        for ep in eps {
            let sep = s.sep_chain(i, *ep);
            let _ = writeln!(chains, ":{sep} - [0:0]");
            let comment = if large {
                String::new()
            } else {
                format!(" -m comment --comment {name}")
            };
            let _ = writeln!(rules, "-A {sep}{comment} -s {ep}/32 -j KUBE-MARK-MASQ");
            let _ = writeln!(
                rules,
                "-A {sep}{comment} -m tcp -p tcp -j DNAT --to-destination {ep}:{}",
                s.target_port
            );
        }
    }
    for i in n..stale {
        let mut gone = vec![Services::svc_chain(i)];
        gone.extend(eps.iter().map(|ep| s.sep_chain(i, *ep)));
        for c in gone {
            let _ = writeln!(chains, ":{c} - [0:0]");
            let _ = writeln!(rules, "-X {c}");
        }
    }
    rules.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must \
         be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    out.push_str(&chains);
    out.push_str(&rules);
    out.push_str("COMMIT\n");
    out
}

/// 16 characters of base32 (RFC 4648 alphabet) from an 80-bit FNV-1a hash of `s`: the shape of
/// kube-proxy's chain-name suffix.
fn hash16(s: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let fnv = |seed: u64| {
        s.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let bits = (u128::from(fnv(0xcbf2_9ce4_8422_2325)) << 16)
        | u128::from(fnv(0x8422_2325_cbf2_9ce4) & 0xffff);
    (0..16)
        .map(|k| ALPHABET[((bits >> (75 - 5 * k)) & 31) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPS: [Ipv4Addr; 3] = [
        Ipv4Addr::new(10, 244, 1, 3),
        Ipv4Addr::new(10, 244, 1, 4),
        Ipv4Addr::new(10, 244, 1, 5),
    ];

    fn services() -> Services<'static> {
        Services {
            first_ip: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            endpoints: &EPS,
            target_port: 7000,
        }
    }

    /// Test that one Service's rules are kube-proxy's: the KUBE-SERVICES match, the
    /// masquerade rule for off-cluster sources, probabilities 1/3 and 1/2 then an
    /// unconditional jump, and per endpoint a hairpin mark and the DNAT.
    #[test]
    fn one_service_has_kube_proxy_layout() {
        let s = services();
        let text = restore_input(&s, 1, 0);
        let svc = Services::svc_chain(0);
        let lines: Vec<&str> = text.lines().collect();
        let in_svc: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with(&format!("-A {svc} ")))
            .collect();
        assert_eq!(in_svc.len(), 4, "{text}");
        assert!(in_svc[0].ends_with("! -s 10.244.0.0/16 -j KUBE-MARK-MASQ"));
        assert!(in_svc[1].contains("--probability 0.3333333333 -j KUBE-SEP-"));
        assert!(in_svc[2].contains("--probability 0.5000000000 -j KUBE-SEP-"));
        assert!(!in_svc[3].contains("statistic") && in_svc[3].contains("-j KUBE-SEP-"));
        assert!(in_svc[1].contains("-m comment --comment \"default/s0:http -> 10.244.1.3:7000\""));
        let sep = s.sep_chain(0, EPS[2]);
        assert!(lines.contains(&format!(
            "-A {sep} -m comment --comment default/s0:http -m tcp -p tcp -j DNAT --to-destination 10.244.1.5:7000"
        )
        .as_str()));
        assert!(lines.contains(
            &format!(
                "-A {sep} -m comment --comment default/s0:http -s 10.244.1.5/32 -j KUBE-MARK-MASQ"
            )
            .as_str()
        ));
        let services: Vec<&&str> = lines
            .iter()
            .filter(|l| l.starts_with("-A KUBE-SERVICES "))
            .collect();
        assert_eq!(services.len(), 2);
        assert_eq!(
            *services[0],
            format!(
                "-A KUBE-SERVICES -m comment --comment \"default/s0:http cluster IP\" -m tcp -p tcp \
                 -d 10.96.0.10 --dport 80 -j {svc}"
            )
        );
        assert!(services[1].ends_with("-j KUBE-NODEPORTS"), "nodeports last");
        assert_eq!(svc.len(), "KUBE-SVC-".len() + 16);
    }

    /// Test that above 1,000 endpoints the per-endpoint comments go (kube-proxy's large
    /// cluster mode), the KUBE-SERVICES comments stay, and every chain is declared once.
    #[test]
    fn large_cluster_mode_drops_endpoint_comments() {
        let s = services();
        let text = restore_input(&s, 400, 0);
        let svc = Services::svc_chain(399);
        assert!(
            text.contains(&format!("-A {svc} -m statistic")),
            "no comment"
        );
        assert!(text.contains("\"default/s399:http cluster IP\""));
        let nat = text.split("*nat\n").nth(1).expect("a nat table");
        let declared: Vec<&str> = nat.lines().filter(|l| l.starts_with(':')).collect();
        let unique: std::collections::BTreeSet<&str> = declared.iter().copied().collect();
        assert_eq!(declared.len(), unique.len(), "a chain declared twice");
        // 4 nat chains, and 1 + 3 per Service.
        assert_eq!(declared.len(), 4 + 400 * 4);
    }

    /// Test that Services dropped from the set have their chains flushed and deleted.
    #[test]
    fn stale_services_are_deleted() {
        let s = services();
        let text = restore_input(&s, 1, 3);
        for i in 1..3 {
            let svc = Services::svc_chain(i);
            assert!(text.contains(&format!(":{svc} - [0:0]\n")));
            assert!(text.contains(&format!("-X {svc}\n")));
            assert!(!text.contains(&format!("-A {svc}")));
        }
    }
}
