//! The network configuration a runtime writes to stdin (spec §3), version negotiation (§7) and
//! the Go skel's per-command version gates (§2).
//!
//! Parsing is liberal where runtimes differ (unknown keys, `runtimeConfig` members in Go's
//! PascalCase or CONVENTIONS' camelCase, both GC attachment keys) and strict about the
//! values Sluice acts on, with the spec's error codes: undecodable JSON or a bad version
//! string is 6, an unsupported version 1, a bad network name or plugin value 7.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde_json::{json, Map, Value};

use crate::env::{is_valid_id, parse_requested_ip, CniArgs, Command, MacAddr};
use crate::error::{quote, shown, CniError};
use crate::result::{decode_result, parse_cidr, CniResult, Dns};

/// The config versions we accept and answer VERSION with (no legacy 0.1.0/0.2.0 results).
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest version, answered to VERSION when stdin names none we support.
pub const LATEST_VERSION: &str = "1.1.0";

const DEFAULT_MTU: u32 = 1500;
const DEFAULT_STATE_DIR: &str = "/run/sluice";
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
/// The link-local next hop every pod routes through (answered by the host veth).
const DEFAULT_GATEWAY: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 1, 1));

/// A parsed request configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    /// The network name (state key together with container id and ifname).
    pub name: String,
    /// `type`: the plugin binary name.
    pub plugin_type: String,
    /// `mtu`, 68..=65535 (≥ 1280 with an IPv6 pod CIDR); default 1500.
    pub mtu: u32,
    /// `podCIDRs`, networks that can hold pods (`ipam::check_pod_cidrs`); empty unless the
    /// agent wrote them (ADD needs them: see [`NetConf::require_pod_cidrs`]) and for a DEL
    /// whose config holds invalid ones (DEL needs none).
    pub pod_cidrs: Vec<IpNetwork>,
    /// `stateDir`, default `/run/sluice`.
    pub state_dir: PathBuf,
    /// `bpffs`, default `/sys/fs/bpf`.
    pub bpffs: PathBuf,
    /// `logFile`; logs go to stderr when unset.
    pub log_file: Option<PathBuf>,
    /// `gateway`, default `169.254.1.1`.
    pub gateway: IpAddr,
    /// `dns`, copied into the ADD result.
    pub dns: Dns,
    pub runtime_config: RuntimeConfig,
    /// `args.cni` (CONVENTIONS).
    pub args: ConfArgs,
    pub prev_result: Option<CniResult>,
    /// GC only: `None` when the runtime sent no list (delete nothing), `Some(vec![])` when it
    /// says every attachment is stale.
    pub valid_attachments: Option<Vec<Attachment>>,
    /// The whole document, for keys not modelled here.
    pub raw: Value,
}

/// The `runtimeConfig` members we use (spec §3.5); other capabilities are ignored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeConfig {
    /// `ips` capability: requested addresses (a given prefix is checked and dropped).
    pub ips: Vec<IpAddr>,
    /// `mac` capability.
    pub mac: Option<MacAddr>,
    /// `portMappings` capability (hostPort).
    pub port_mappings: Vec<PortMapping>,
}

/// One `portMappings` entry, decoded from either containerd's or podman's key spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
    /// `None` for all host addresses (containerd sends `""`).
    pub host_ip: Option<IpAddr>,
}

/// Transport protocol of a port mapping; absent or empty means TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        })
    }
}

/// `args.cni` members we use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfArgs {
    pub ips: Vec<IpAddr>,
    pub mac: Option<MacAddr>,
}

/// One still-valid attachment named by GC.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

fn invalid(reason: impl Into<String>) -> CniError {
    CniError::InvalidConfig {
        reason: reason.into(),
    }
}

fn malformed(reason: impl Into<String>) -> CniError {
    CniError::Malformed {
        what: "network config".into(),
        reason: reason.into(),
    }
}

impl NetConf {
    /// Parse and validate stdin, in the Go skel's order: JSON (6), `name` (7), `cniVersion`
    /// (6 if not a version string, 1 if unsupported; absent means "0.1.0" as in libcni),
    /// then everything else.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        Self::parse_inner(bytes, false)
    }

    /// [`NetConf::parse`] for `command`. DEL needs only the network name, `cniVersion`,
    /// `stateDir` and `bpffs` (with the attachment's identity from the environment): a runtime
    /// retries a failing DEL forever, so a value DEL does not use (`podCIDRs` missing, empty or
    /// invalid, a bad `mtu`, `prevResult`, …) falls back to its default instead of failing it.
    pub fn parse_for(bytes: &[u8], command: Command) -> Result<NetConf, CniError> {
        Self::parse_inner(bytes, command == Command::Del)
    }

    fn parse_inner(bytes: &[u8], lenient: bool) -> Result<NetConf, CniError> {
        // A value only some commands use: its error counts unless `lenient`.
        fn unused<T>(lenient: bool, r: Result<T, CniError>, default: T) -> Result<T, CniError> {
            match r {
                Err(_) if lenient => Ok(default),
                r => r,
            }
        }
        let raw: Value = serde_json::from_slice(bytes).map_err(|source| CniError::Decode {
            what: "network config".into(),
            source,
        })?;
        let obj = raw
            .as_object()
            .ok_or_else(|| malformed("not a JSON object"))?;

        let name = match obj.get("name") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(malformed(format!(
                    "name must be a string, got {}",
                    shown(other)
                )))
            }
        };
        if name.is_empty() {
            return Err(invalid("missing network name"));
        }
        if !is_valid_id(&name) {
            return Err(invalid(format!(
                "invalid characters found in network name {}",
                quote(&name)
            )));
        }

        let cni_version = match obj.get("cniVersion") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(malformed(format!(
                    "cniVersion must be a string, got {}",
                    shown(other)
                )))
            }
        };
        let cni_version = if cni_version.is_empty() {
            "0.1.0".to_owned()
        } else {
            cni_version
        };
        if parse_version(&cni_version).is_none() {
            return Err(malformed(format!(
                "invalid cniVersion {}",
                quote(&cni_version)
            )));
        }
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::IncompatibleVersion {
                version: cni_version,
                supported: &SUPPORTED_VERSIONS,
            });
        }

        let plugin_type = match obj.get("type") {
            Some(Value::String(t)) if !t.is_empty() && !t.contains('/') => Ok(t.clone()),
            None | Some(Value::Null) => Err(invalid("missing plugin type")),
            Some(other) => Err(invalid(format!("invalid plugin type {}", shown(other)))),
        };
        let plugin_type = unused(lenient, plugin_type, String::new())?;

        let pod_cidrs = unused(lenient, parse_pod_cidrs(obj.get("podCIDRs")), Vec::new())?;
        let mtu = unused(lenient, parse_mtu(obj.get("mtu"), &pod_cidrs), DEFAULT_MTU)?;
        let gateway = match obj.get("gateway") {
            None | Some(Value::Null) => Ok(DEFAULT_GATEWAY),
            Some(Value::String(s)) => s
                .parse()
                .map_err(|_| invalid(format!("gateway: invalid address {}", quote(s)))),
            Some(other) => Err(invalid(format!(
                "gateway must be a string, got {}",
                shown(other)
            ))),
        };
        let gateway = unused(lenient, gateway, DEFAULT_GATEWAY)?;
        if let Some(c) = pod_cidrs.iter().find(|c| c.contains(gateway)) {
            return Err(invalid(format!(
                "the gateway {gateway} is inside pod CIDR {c}: it must be an address no pod gets"
            )));
        }
        let dns = Dns::from_json(obj.get("dns").unwrap_or(&Value::Null)).map_err(invalid);
        let dns = unused(lenient, dns, Dns::default())?;

        let prev_result = match obj.get("prevResult") {
            None | Some(Value::Null) => Ok(None),
            Some(v) => decode_result(v)
                .map(Some)
                .map_err(|reason| CniError::Malformed {
                    what: "prevResult".into(),
                    reason,
                }),
        };
        let prev_result = unused(lenient, prev_result, None)?;

        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            mtu,
            pod_cidrs,
            state_dir: abs_path(obj, "stateDir")?.unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            bpffs: abs_path(obj, "bpffs")?.unwrap_or_else(|| DEFAULT_BPFFS.into()),
            log_file: unused(lenient, abs_path(obj, "logFile"), None)?,
            gateway,
            dns,
            runtime_config: unused(
                lenient,
                parse_runtime_config(obj.get("runtimeConfig")),
                RuntimeConfig::default(),
            )?,
            args: unused(
                lenient,
                parse_conf_args(obj.get("args")),
                ConfArgs::default(),
            )?,
            prev_result,
            valid_attachments: unused(lenient, parse_attachments(obj), None)?,
            raw,
        })
    }

    /// Whether the config's `cniVersion` is at least `min` (numeric compare).
    pub fn version_at_least(&self, min: &str) -> bool {
        version_ge(&self.cni_version, min)
    }

    /// The Go skel's version gates: CHECK needs ≥ 0.4.0, GC and STATUS ≥ 1.1.0 (code 1).
    pub fn check_allowed(&self, command: Command) -> Result<(), CniError> {
        let min = match command {
            Command::Check => "0.4.0",
            Command::Gc | Command::Status => "1.1.0",
            Command::Add | Command::Del | Command::Version => return Ok(()),
        };
        if self.version_at_least(min) {
            return Ok(());
        }
        Err(CniError::CommandNotAllowed {
            command,
            version: self.cni_version.clone(),
        })
    }

    /// The pod CIDRs, or code 7 when the agent has not written them yet (ADD cannot proceed).
    pub fn require_pod_cidrs(&self) -> Result<&[IpNetwork], CniError> {
        if self.pod_cidrs.is_empty() {
            return Err(invalid("podCIDRs is required for ADD"));
        }
        Ok(&self.pod_cidrs)
    }

    /// Requested addresses: `runtimeConfig.ips`, else `args.cni.ips`, else `CNI_ARGS` `IP`
    /// (CONVENTIONS: `args` wins over `CNI_ARGS`).
    pub fn requested_ips<'a>(&'a self, env_args: &'a CniArgs) -> &'a [IpAddr] {
        [&self.runtime_config.ips, &self.args.ips, &env_args.ips]
            .into_iter()
            .find(|ips| !ips.is_empty())
            .map_or(&[], Vec::as_slice)
    }

    /// Requested container MAC: `runtimeConfig.mac`, else `args.cni.mac`, else `CNI_ARGS` `MAC`
    /// (the precedence the bridge plugin's tests pin down).
    pub fn requested_mac(&self, env_args: &CniArgs) -> Option<MacAddr> {
        self.runtime_config.mac.or(self.args.mac).or(env_args.mac)
    }
}

/// The answer to VERSION (spec §2.5). Stdin is only consulted for a supported `cniVersion`;
/// empty or garbage stdin still gets an answer, as libcni probes with varying input.
pub fn version_response(stdin: &[u8]) -> Value {
    let requested = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()));
    json!({
        "cniVersion": requested.as_deref().unwrap_or(LATEST_VERSION),
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

/// `major[.minor[.patch]]` with decimal parts, as Go's `version.ParseVersion` accepts.
pub(crate) fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let mut parts = [0u64; 3];
    for (n, part) in v.split('.').enumerate() {
        if n == 3 || part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        parts[n] = part.parse().ok()?;
    }
    Some((parts[0], parts[1], parts[2]))
}

/// `version >= min`; false when either does not parse.
pub fn version_ge(version: &str, min: &str) -> bool {
    matches!((parse_version(version), parse_version(min)), (Some(v), Some(m)) if v >= m)
}

/// `podCIDRs`: CIDR strings, each one a network that can hold pods and none overlapping
/// another (the check the agent applies too: [`ipam::check_pod_cidrs`]).
fn parse_pod_cidrs(v: Option<&Value>) -> Result<Vec<IpNetwork>, CniError> {
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(invalid(format!(
                "podCIDRs must be an array, got {}",
                shown(other)
            )))
        }
    };
    let nets = items
        .iter()
        .map(|item| {
            item.as_str()
                .and_then(parse_cidr)
                .ok_or_else(|| invalid(format!("podCIDRs: invalid CIDR {}", shown(item))))
        })
        .collect::<Result<Vec<_>, _>>()?;
    ipam::check_pod_cidrs(&nets, &[]).map_err(|e| invalid(format!("podCIDRs: {e}")))?;
    Ok(nets)
}

fn parse_mtu(v: Option<&Value>, pod_cidrs: &[IpNetwork]) -> Result<u32, CniError> {
    let mtu = match v {
        None | Some(Value::Null) => return Ok(DEFAULT_MTU),
        Some(v) => v
            .as_u64()
            .and_then(|m| u32::try_from(m).ok())
            .filter(|m| (68..=65535).contains(m))
            .ok_or_else(|| invalid(format!("mtu {} out of range 68..=65535", shown(v))))?,
    };
    // IPv6 requires every link to carry 1280-byte packets (RFC 8200 §5).
    if mtu < 1280 && pod_cidrs.iter().any(IpNetwork::is_ipv6) {
        return Err(invalid(format!(
            "mtu {mtu} is below 1280, the IPv6 minimum"
        )));
    }
    Ok(mtu)
}

fn abs_path(obj: &Map<String, Value>, key: &str) -> Result<Option<PathBuf>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.starts_with('/') => Ok(Some(PathBuf::from(s))),
        Some(other) => Err(invalid(format!(
            "{key} must be an absolute path, got {}",
            shown(other)
        ))),
    }
}

/// A member looked up the way Go's `encoding/json` does: exact name first, then any
/// ASCII-case-insensitive match (containerd sends `HostPort`, podman `hostPort`).
fn get_ci<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key)
        .or_else(|| {
            obj.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v)
        })
        .filter(|v| !v.is_null())
}

/// An object member that may be absent or `null`; anything but an object is code 7.
fn opt_object<'a>(
    v: Option<&'a Value>,
    what: &str,
) -> Result<Option<&'a Map<String, Value>>, CniError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(invalid(format!(
            "{what} must be an object, got {}",
            shown(other)
        ))),
    }
}

fn ip_list(v: Option<&Value>, what: &str) -> Result<Vec<IpAddr>, CniError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let items = v
        .as_array()
        .ok_or_else(|| invalid(format!("{what} must be an array, got {}", shown(v))))?;
    items
        .iter()
        .map(|item| {
            item.as_str()
                .and_then(parse_requested_ip)
                .ok_or_else(|| invalid(format!("{what}: invalid address {}", shown(item))))
        })
        .collect()
}

fn mac(v: Option<&Value>, what: &str) -> Result<Option<MacAddr>, CniError> {
    match v {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => MacAddr::parse(s)
            .map(Some)
            .map_err(|e| invalid(format!("{what}: {e}"))),
        Some(other) => Err(invalid(format!(
            "{what} must be a string, got {}",
            shown(other)
        ))),
    }
}

fn parse_runtime_config(v: Option<&Value>) -> Result<RuntimeConfig, CniError> {
    let Some(rc) = opt_object(v, "runtimeConfig")? else {
        return Ok(RuntimeConfig::default());
    };
    let port_mappings = match get_ci(rc, "portMappings") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(parse_port_mapping)
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(invalid(format!(
                "runtimeConfig.portMappings must be an array, got {}",
                shown(other)
            )))
        }
    };
    Ok(RuntimeConfig {
        ips: ip_list(get_ci(rc, "ips"), "runtimeConfig.ips")?,
        mac: mac(get_ci(rc, "mac"), "runtimeConfig.mac")?,
        port_mappings,
    })
}

fn parse_port_mapping(v: &Value) -> Result<PortMapping, CniError> {
    let m = v.as_object().ok_or_else(|| {
        invalid(format!(
            "runtimeConfig.portMappings[]: not an object: {}",
            shown(v)
        ))
    })?;
    let port = |key: &str| {
        get_ci(m, key)
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                invalid(format!(
                    "runtimeConfig.portMappings[]: {key} must be 1-65535 in {}",
                    shown(v)
                ))
            })
    };
    let protocol = match get_ci(m, "protocol") {
        None => Protocol::Tcp,
        Some(Value::String(p)) => match p.to_ascii_lowercase().as_str() {
            "" | "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            _ => {
                return Err(CniError::UnsupportedField {
                    field: "runtimeConfig.portMappings[].protocol".into(),
                    value: p.clone(),
                })
            }
        },
        Some(other) => {
            return Err(invalid(format!(
                "runtimeConfig.portMappings[]: protocol must be a string, got {}",
                shown(other)
            )))
        }
    };
    let host_ip = match get_ci(m, "hostIP") {
        None => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.parse().map_err(|_| {
            invalid(format!(
                "runtimeConfig.portMappings[]: invalid hostIP {}",
                quote(s)
            ))
        })?),
        Some(other) => {
            return Err(invalid(format!(
                "runtimeConfig.portMappings[]: hostIP must be a string, got {}",
                shown(other)
            )))
        }
    };
    Ok(PortMapping {
        host_port: port("hostPort")?,
        container_port: port("containerPort")?,
        protocol,
        host_ip,
    })
}

fn parse_conf_args(v: Option<&Value>) -> Result<ConfArgs, CniError> {
    let Some(args) = opt_object(v, "args")? else {
        return Ok(ConfArgs::default());
    };
    let Some(cni) = opt_object(get_ci(args, "cni"), "args.cni")? else {
        return Ok(ConfArgs::default());
    };
    Ok(ConfArgs {
        ips: ip_list(get_ci(cni, "ips"), "args.cni.ips")?,
        mac: mac(get_ci(cni, "mac"), "args.cni.mac")?,
    })
}

/// Both GC keys, merged: libcni sends the same list under both, and if they ever differ the
/// union keeps more attachments alive, the safe direction for a garbage collector.
fn parse_attachments(obj: &Map<String, Value>) -> Result<Option<Vec<Attachment>>, CniError> {
    let mut found: Option<BTreeSet<Attachment>> = None;
    for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
        let items = match obj.get(key) {
            None | Some(Value::Null) => continue,
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(invalid(format!(
                    "{key} must be an array, got {}",
                    shown(other)
                )))
            }
        };
        let set = found.get_or_insert_with(BTreeSet::new);
        for item in items {
            let field = |name: &str| {
                item.as_object()
                    .and_then(|m| get_ci(m, name))
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
            };
            match (field("containerID"), field("ifname")) {
                (Some(container_id), Some(ifname)) => {
                    set.insert(Attachment {
                        container_id,
                        ifname,
                    });
                }
                _ => {
                    return Err(invalid(format!(
                        "{key}: invalid attachment {}",
                        shown(item)
                    )))
                }
            }
        }
    }
    Ok(found.map(|set| set.into_iter().collect()))
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
