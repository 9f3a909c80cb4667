//! The `CNI_*` environment (spec §1.2): which command runs, on which attachment, and the
//! `CNI_ARGS` key/value list. Validation mirrors the Go skel every runtime's plugins use, so
//! the same mistakes give the same code-4 errors, but stays liberal where a runtime's quirk
//! would otherwise break a pod (unknown `CNI_ARGS` keys, DEL without a netns).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::{quote, CniError};

/// The six CNI operations (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    /// The wire spelling (`"ADD"`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Command {
    type Err = CniError;

    /// Exact, upper-case match like the Go skel; anything else is code 4.
    fn from_str(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => {
                return Err(CniError::UnknownCommand {
                    command: s.to_owned(),
                })
            }
        })
    }
}

/// A validated environment.
///
/// `container_id` and `ifname` are `Some` for ADD, CHECK and DEL; `netns` is `Some` for ADD
/// and CHECK and for DEL only when the runtime still had one. All three are `None` for STATUS,
/// GC and VERSION, whatever the runtime set (libcni sets them empty or to "dummy").
#[derive(Debug, Clone, PartialEq)]
pub struct Env {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    pub args: CniArgs,
    /// `CNI_PATH` split on `:`, empty segments dropped.
    pub path: Vec<PathBuf>,
}

const VARS: [&str; 6] = [
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
];

/// Linux `IFNAMSIZ` minus the NUL.
const MAX_IFNAME_LEN: usize = 15;

impl Env {
    /// Read the `CNI_*` variables of this process.
    pub fn from_process() -> Result<Env, CniError> {
        // A non-UTF-8 value would otherwise reach validation as replacement characters.
        // VERSION reads nothing else, so it must answer whatever else is set.
        let version = std::env::var_os("CNI_COMMAND").is_some_and(|c| c == "VERSION");
        for var in VARS.iter().filter(|_| !version) {
            if let Some(v) = std::env::var_os(var) {
                if v.to_str().is_none() {
                    return Err(CniError::InvalidEnvValue {
                        var: (*var).to_owned(),
                        reason: "value is not valid UTF-8".to_owned(),
                    });
                }
            }
        }
        Env::from_vars(|name| std::env::var(name).ok())
    }

    /// Build and validate from a variable lookup (`None` and `""` both mean unset).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let var = |name: &str| get(name).filter(|v| !v.is_empty());
        let command: Command = match var("CNI_COMMAND") {
            Some(c) => c.parse()?,
            None => {
                return Err(CniError::InvalidEnv {
                    vars: vec!["CNI_COMMAND".to_owned()],
                })
            }
        };
        let mut env = Env {
            command,
            container_id: None,
            netns: None,
            ifname: None,
            args: CniArgs::default(),
            path: Vec::new(),
        };
        let required: &[&str] = match command {
            // libcni sets dummy values for old skels; none of them mean anything here.
            Command::Version => return Ok(env),
            // The Go skel wants CNI_PATH for these; we do not delegate, so be liberal.
            Command::Status | Command::Gc => &[],
            Command::Add | Command::Check => {
                &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
            }
            // No CNI_NETNS (the runtime may have lost it) and no CNI_PATH: a DEL that fails
            // leaks the pod in kubelet's retry loop.
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
        };
        let missing: Vec<String> = required
            .iter()
            .filter(|name| var(name).is_none())
            .map(|name| (*name).to_owned())
            .collect();
        if !missing.is_empty() {
            return Err(CniError::InvalidEnv { vars: missing });
        }
        env.path = var("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        let raw_args = var("CNI_ARGS").unwrap_or_default();
        if matches!(command, Command::Status | Command::Gc) {
            env.args = CniArgs::parse_lossy(&raw_args);
            return Ok(env);
        }

        let container_id = var("CNI_CONTAINERID").unwrap_or_default();
        validate_container_id(&container_id)?;
        let ifname = var("CNI_IFNAME").unwrap_or_default();
        validate_ifname(&ifname)?;
        env.container_id = Some(container_id);
        env.ifname = Some(ifname);
        env.netns = var("CNI_NETNS").map(PathBuf::from);
        env.args = match command {
            Command::Del => CniArgs::parse_lossy(&raw_args),
            _ => CniArgs::parse(&raw_args)?,
        };
        Ok(env)
    }
}

/// Whether `s` matches the CNI identifier regex `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`
/// (container IDs and network names).
pub(crate) fn is_valid_id(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn validate_container_id(id: &str) -> Result<(), CniError> {
    if is_valid_id(id) {
        return Ok(());
    }
    Err(CniError::InvalidEnvValue {
        var: "CNI_CONTAINERID".to_owned(),
        reason: format!("invalid characters in containerID {}", quote(id)),
    })
}

/// Validate an interface name the way the Go skel and the kernel do.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let reason = if name.is_empty() {
        "interface name is empty".to_owned()
    } else if name.len() > MAX_IFNAME_LEN {
        format!(
            "interface name {} is longer than {MAX_IFNAME_LEN} bytes",
            quote(name)
        )
    } else if name == "." || name == ".." {
        format!("interface name {} is . or ..", quote(name))
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        format!(
            "interface name {} contains / or : or whitespace",
            quote(name)
        )
    } else {
        return Ok(());
    };
    Err(CniError::InvalidEnvValue {
        var: "CNI_IFNAME".to_owned(),
        reason,
    })
}

/// A unicast Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Parse `aa:bb:cc:dd:ee:ff` (or `-`-separated, any case). Multicast and all-zero addresses
    /// are refused: the kernel would refuse them on a veth with a less helpful error.
    pub fn parse(s: &str) -> Result<MacAddr, String> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        let mut bytes = [0u8; 6];
        let well_formed = parts.len() == 6
            && parts.iter().zip(bytes.iter_mut()).all(|(p, b)| {
                p.len() == 2
                    && p.bytes().all(|c| c.is_ascii_hexdigit())
                    && u8::from_str_radix(p, 16).map(|v| *b = v).is_ok()
            });
        if !well_formed {
            return Err(format!("invalid MAC address {}", quote(s)));
        }
        if bytes[0] & 1 == 1 || bytes == [0; 6] {
            return Err(format!("MAC address {} is not a unicast address", quote(s)));
        }
        Ok(MacAddr(bytes))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Parse a requested address, `10.1.2.3` or `10.1.2.3/24`: the prefix is checked and dropped
/// (the pod CIDR decides it), as host-local does.
pub(crate) fn parse_requested_ip(s: &str) -> Option<IpAddr> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix_ok = prefix.is_none_or(|p| {
        p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u8>().is_ok_and(|n| n <= max)
    });
    prefix_ok.then_some(addr)
}

/// `CNI_ARGS` (`K1=V1;K2=V2`), with the keys Kubernetes runtimes and podman send.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CniArgs {
    pub k8s_pod_namespace: Option<String>,
    pub k8s_pod_name: Option<String>,
    pub k8s_pod_infra_container_id: Option<String>,
    pub k8s_pod_uid: Option<String>,
    /// `IP=`: requested addresses, comma-separated, each with or without `/prefix`.
    pub ips: Vec<IpAddr>,
    /// `MAC=`: requested container MAC (podman, CRI-O).
    pub mac: Option<MacAddr>,
    pub ignore_unknown: bool,
    /// Every other key, kept for logs; never an error.
    pub unknown: BTreeMap<String, String>,
}

impl CniArgs {
    /// Parse strictly: a bad `IP`/`MAC` value is code 4, and so is a pair without `=` unless
    /// `IgnoreUnknown` is set (anywhere in the list). Unknown keys are always fine.
    pub fn parse(raw: &str) -> Result<CniArgs, CniError> {
        let mut args = CniArgs::default();
        let mut malformed = None;
        for pair in raw.split(';').filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                malformed.get_or_insert(pair);
                continue;
            };
            args.set(key, value)
                .map_err(|reason| CniError::InvalidEnvValue {
                    var: "CNI_ARGS".to_owned(),
                    reason,
                })?;
        }
        match malformed {
            Some(pair) if !args.ignore_unknown => Err(CniError::InvalidEnvValue {
                var: "CNI_ARGS".to_owned(),
                reason: format!("invalid pair {}", quote(pair)),
            }),
            _ => Ok(args),
        }
    }

    /// Parse, skipping whatever does not parse (commands that must not fail on it: DEL, GC).
    pub fn parse_lossy(raw: &str) -> CniArgs {
        let mut args = CniArgs::default();
        for (key, value) in raw.split(';').filter_map(|p| p.split_once('=')) {
            // Dropping a bad IP/MAC is right here: only ADD acts on them.
            let _ = args.set(key, value);
        }
        args
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let text = || (!value.is_empty()).then(|| value.to_owned());
        match key {
            "K8S_POD_NAMESPACE" => self.k8s_pod_namespace = text(),
            "K8S_POD_NAME" => self.k8s_pod_name = text(),
            "K8S_POD_INFRA_CONTAINER_ID" => self.k8s_pod_infra_container_id = text(),
            "K8S_POD_UID" => self.k8s_pod_uid = text(),
            "IgnoreUnknown" => {
                self.ignore_unknown = value == "1" || value.eq_ignore_ascii_case("true");
            }
            "IP" => {
                self.ips = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        parse_requested_ip(s)
                            .ok_or_else(|| format!("IP: invalid address {}", quote(s)))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "MAC" => {
                self.mac = match value {
                    "" => None,
                    v => Some(MacAddr::parse(v).map_err(|e| format!("MAC: {e}"))?),
                };
            }
            _ => {
                self.unknown.insert(key.to_owned(), value.to_owned());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Runtime-like environment for `command`, with `overrides` applied (`None` removes).
    fn env_with(command: &str, overrides: &[(&str, Option<&str>)]) -> Result<Env, CniError> {
        let mut vars: HashMap<&str, &str> = HashMap::from([
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "3f4e5a6b7c8d"),
            ("CNI_NETNS", "/var/run/netns/cni-1234"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
                 K8S_POD_INFRA_CONTAINER_ID=3f4e5a6b7c8d;K8S_POD_UID=1b2c",
            ),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ]);
        for (k, v) in overrides {
            match v {
                Some(v) => vars.insert(k, v),
                None => vars.remove(k),
            };
        }
        Env::from_vars(|k| vars.get(k).map(|v| (*v).to_owned()))
    }

    fn code_of(r: Result<Env, CniError>) -> u32 {
        r.expect_err("expected an error").code()
    }

    /// Test that a complete ADD environment parses into every field.
    #[test]
    fn env_add_full_parses() {
        let env = env_with("ADD", &[]).unwrap();
        assert_eq!(env.command, Command::Add);
        assert_eq!(env.container_id.as_deref(), Some("3f4e5a6b7c8d"));
        assert_eq!(env.netns, Some(PathBuf::from("/var/run/netns/cni-1234")));
        assert_eq!(env.ifname.as_deref(), Some("eth0"));
        assert_eq!(
            env.path,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
        assert_eq!(env.args.k8s_pod_namespace.as_deref(), Some("default"));
        assert_eq!(env.args.k8s_pod_name.as_deref(), Some("web-0"));
        assert_eq!(env.args.k8s_pod_uid.as_deref(), Some("1b2c"));
        assert!(env.args.ignore_unknown);
    }

    /// Test that ADD and CHECK each require container id, netns, ifname and path (§12.8).
    #[test]
    fn env_add_check_missing_vars_code_4_named() {
        for cmd in ["ADD", "CHECK"] {
            for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"] {
                for value in [None, Some("")] {
                    let err = env_with(cmd, &[(var, value)]).unwrap_err();
                    assert_eq!(err.code(), 4, "{cmd} {var}");
                    assert_eq!(
                        err.to_string(),
                        format!("required env variables [{var}] missing")
                    );
                }
            }
        }
    }

    /// Test that all missing variables are named in one error, in skel order.
    #[test]
    fn env_missing_vars_listed_together() {
        let err = env_with("ADD", &[("CNI_IFNAME", None), ("CNI_CONTAINERID", None)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "required env variables [CNI_CONTAINERID,CNI_IFNAME] missing"
        );
    }

    /// Test that DEL needs container id and ifname but tolerates an empty or absent netns/path.
    #[test]
    fn env_del_netns_optional() {
        let env = env_with("DEL", &[("CNI_NETNS", Some("")), ("CNI_PATH", None)]).unwrap();
        assert_eq!(env.netns, None);
        assert!(env.path.is_empty());
        assert_eq!(env.ifname.as_deref(), Some("eth0"));
        assert_eq!(code_of(env_with("DEL", &[("CNI_CONTAINERID", None)])), 4);
        assert_eq!(code_of(env_with("DEL", &[("CNI_IFNAME", Some(""))])), 4);
    }

    /// Test that DEL never fails on CNI_ARGS content (a failed DEL leaks the pod).
    #[test]
    fn env_del_tolerates_bad_cni_args() {
        let env = env_with("DEL", &[("CNI_ARGS", Some("IP=bogus;junk;K8S_POD_NAME=a"))]).unwrap();
        assert!(env.args.ips.is_empty());
        assert_eq!(env.args.k8s_pod_name.as_deref(), Some("a"));
    }

    /// Test that STATUS and GC need only CNI_COMMAND and ignore libcni's empty attachment vars.
    #[test]
    fn env_status_gc_need_only_command() {
        for cmd in ["STATUS", "GC"] {
            let env = Env::from_vars(|k| (k == "CNI_COMMAND").then(|| cmd.to_owned())).unwrap();
            assert_eq!(env.command.as_str(), cmd);
            assert!(env.path.is_empty());
            let env = env_with(
                cmd,
                &[
                    ("CNI_CONTAINERID", Some("")),
                    ("CNI_NETNS", Some("")),
                    ("CNI_IFNAME", Some("")),
                    ("CNI_ARGS", Some("")),
                ],
            )
            .unwrap();
            assert_eq!(
                (env.container_id, env.netns, env.ifname),
                (None, None, None)
            );
            assert_eq!(env.path.len(), 2);
        }
    }

    /// Test that VERSION needs only CNI_COMMAND and ignores libcni's dummy values.
    #[test]
    fn env_version_ignores_dummies() {
        let env = Env::from_vars(|k| (k == "CNI_COMMAND").then(|| "VERSION".to_owned())).unwrap();
        assert_eq!(env.command, Command::Version);
        let env = env_with(
            "VERSION",
            &[
                ("CNI_NETNS", Some("dummy")),
                ("CNI_IFNAME", Some("dummy")),
                ("CNI_PATH", Some("dummy")),
                ("CNI_CONTAINERID", Some("-bad id-")),
                ("CNI_ARGS", Some("garbage")),
            ],
        )
        .unwrap();
        assert_eq!(env.command, Command::Version);
        assert_eq!(env.ifname, None);
    }

    /// Test that a missing, empty or unknown CNI_COMMAND is code 4.
    #[test]
    fn env_command_missing_or_unknown_code_4() {
        let err = Env::from_vars(|_| None).unwrap_err();
        assert_eq!(err.code(), 4);
        assert_eq!(
            err.to_string(),
            "required env variables [CNI_COMMAND] missing"
        );
        assert_eq!(code_of(env_with("", &[])), 4);
        let err = env_with("FOO", &[]).unwrap_err();
        assert_eq!(err.code(), 4);
        assert_eq!(err.to_string(), "unknown CNI_COMMAND: FOO");
        // Like the Go skel, the match is exact.
        assert_eq!(code_of(env_with("add", &[])), 4);
    }

    /// Test that every command name round-trips through its wire spelling.
    #[test]
    fn command_round_trips() {
        for c in [
            Command::Add,
            Command::Del,
            Command::Check,
            Command::Status,
            Command::Gc,
            Command::Version,
        ] {
            assert_eq!(c.to_string().parse::<Command>().unwrap(), c);
        }
    }

    /// Test that container ids follow the CNI regex (§1.2), invalid ones being code 4.
    #[test]
    fn env_container_id_validation() {
        for ok in ["a", "0", "abc-DEF_1.2", "3f4e5a6b7c8d9e0f"] {
            assert!(
                env_with("ADD", &[("CNI_CONTAINERID", Some(ok))]).is_ok(),
                "{ok}"
            );
        }
        for bad in ["-abc", "_abc", ".abc", "a b", "a/b", "a:b", "ä", "a\n"] {
            let err = env_with("ADD", &[("CNI_CONTAINERID", Some(bad))]).unwrap_err();
            assert_eq!(err.code(), 4, "{bad:?}");
            assert!(err.to_string().contains("CNI_CONTAINERID"), "{err}");
        }
        assert_eq!(
            code_of(env_with("DEL", &[("CNI_CONTAINERID", Some("a b"))])),
            4
        );
    }

    /// Test that interface names follow the skel rules: ≤ 15 bytes, not . or .., no / : space.
    #[test]
    fn env_ifname_validation() {
        for ok in ["eth0", "net1", "a", "exactly15bytes_", "vlan.100", "a-b_c"] {
            assert!(env_with("ADD", &[("CNI_IFNAME", Some(ok))]).is_ok(), "{ok}");
        }
        for bad in [
            "sixteen_bytes_16",
            ".",
            "..",
            "eth/0",
            "eth:0",
            "eth 0",
            "eth\t0",
            "ééééééééé",
        ] {
            let err = env_with("ADD", &[("CNI_IFNAME", Some(bad))]).unwrap_err();
            assert_eq!(err.code(), 4, "{bad:?}");
            assert!(err.to_string().contains("CNI_IFNAME"), "{err}");
        }
        assert_eq!(
            code_of(env_with("DEL", &[("CNI_IFNAME", Some("eth/0"))])),
            4
        );
    }

    /// Test that CNI_PATH ignores empty segments.
    #[test]
    fn env_path_splits_on_colon() {
        let env = env_with("ADD", &[("CNI_PATH", Some("::/opt/cni/bin:"))]).unwrap();
        assert_eq!(env.path, vec![PathBuf::from("/opt/cni/bin")]);
    }

    /// Test that containerd's CNI_ARGS parse with every K8S key and nothing unknown.
    #[test]
    fn cni_args_containerd() {
        let args = CniArgs::parse(
            "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1;\
             K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=0d1e;IgnoreUnknown=1",
        )
        .unwrap();
        assert_eq!(
            args,
            CniArgs {
                k8s_pod_namespace: Some("kube-system".into()),
                k8s_pod_name: Some("coredns-1".into()),
                k8s_pod_infra_container_id: Some("abc123".into()),
                k8s_pod_uid: Some("0d1e".into()),
                ignore_unknown: true,
                ..CniArgs::default()
            }
        );
    }

    /// Test that podman's CNI_ARGS (name, MAC, IP) parse.
    #[test]
    fn cni_args_podman_static_ip_and_mac() {
        let args =
            CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAME=web;MAC=C2:11:22:33:44:55;IP=10.88.0.5")
                .unwrap();
        assert_eq!(args.k8s_pod_name.as_deref(), Some("web"));
        assert_eq!(
            args.mac,
            Some(MacAddr([0xc2, 0x11, 0x22, 0x33, 0x44, 0x55]))
        );
        assert_eq!(args.ips, vec!["10.88.0.5".parse::<IpAddr>().unwrap()]);
    }

    /// Test that unknown keys are kept and never an error, with or without IgnoreUnknown.
    #[test]
    fn cni_args_unknown_keys_kept() {
        for raw in [
            "FOO=bar;K8S_POD_NAME=x",
            "IgnoreUnknown=1;FOO=bar;K8S_POD_NAME=x",
        ] {
            let args = CniArgs::parse(raw).unwrap();
            assert_eq!(args.unknown.get("FOO").map(String::as_str), Some("bar"));
            assert_eq!(args.k8s_pod_name.as_deref(), Some("x"));
        }
    }

    /// Test that a pair without '=' fails only when IgnoreUnknown is unset, wherever it appears.
    #[test]
    fn cni_args_malformed_pair_needs_ignore_unknown() {
        let err = CniArgs::parse("K8S_POD_NAME=x;junk").unwrap_err();
        assert_eq!(err.code(), 4);
        assert!(err.to_string().contains("junk"), "{err}");
        assert!(CniArgs::parse("junk;IgnoreUnknown=1").is_ok());
        assert!(CniArgs::parse("IgnoreUnknown=true;junk").is_ok());
        assert_eq!(
            CniArgs::parse("IgnoreUnknown=0;junk").unwrap_err().code(),
            4
        );
    }

    /// Test that IP accepts a comma-separated list with and without prefixes, v4 and v6.
    #[test]
    fn cni_args_ip_list() {
        let args = CniArgs::parse("IP=10.1.2.3/24, 2001:db8::5,10.1.2.4").unwrap();
        let want: Vec<IpAddr> = ["10.1.2.3", "2001:db8::5", "10.1.2.4"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(args.ips, want);
        assert!(CniArgs::parse("IP=").unwrap().ips.is_empty());
    }

    /// Test that bad IP and MAC values are code 4 naming CNI_ARGS.
    #[test]
    fn cni_args_bad_values_code_4() {
        for raw in [
            "IgnoreUnknown=1;IP=10.1.2",
            "IP=10.1.2.3/33",
            "IP=2001:db8::1/129",
            "IP=10.1.2.3/",
            "IP=10.1.2.3/+8",
            "MAC=zz:11:22:33:44:55",
            "MAC=c2:11:22:33:44",
            "MAC=01:00:5e:00:00:01",
            "MAC=00:00:00:00:00:00",
        ] {
            let err = CniArgs::parse(raw).unwrap_err();
            assert_eq!(err.code(), 4, "{raw}");
            assert!(err.to_string().contains("CNI_ARGS"), "{err}");
        }
    }

    /// Test that values may contain '=' and empty segments are skipped.
    #[test]
    fn cni_args_value_with_equals_and_empty_segments() {
        let args = CniArgs::parse(";A=b=c;;K8S_POD_NAME=x;").unwrap();
        assert_eq!(args.unknown.get("A").map(String::as_str), Some("b=c"));
        assert_eq!(args.k8s_pod_name.as_deref(), Some("x"));
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
    }

    /// Test that MAC addresses print lower-case and accept '-' separators.
    #[test]
    fn mac_parse_and_display() {
        let mac = MacAddr::parse("AA-BB-CC-00-00-02").unwrap();
        assert_eq!(mac.to_string(), "aa:bb:cc:00:00:02");
        assert!(MacAddr::parse("aa:bb:cc:00:00:0").is_err());
        assert!(MacAddr::parse("aa:bb:cc:00:00:002").is_err());
    }
}
