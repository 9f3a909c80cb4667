//! The plugin's one error type and its wire form (spec §6). Every failure maps to a spec code
//! (1–99) or a Sluice code (≥ 100) and is printed on stdout as
//! `{"cniVersion","code","msg","details"}`; `msg` is the short `Display` text and `details` the
//! chain of underlying causes, so nothing is lost when a runtime logs only the JSON.

use std::error::Error as StdError;
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::env::Command;

/// The boxed cause carried by errors that wrap another library's error.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// How many bytes of a value an error message quotes. Values come from stdin and the
/// environment, which a runtime (or a fuzzer) may fill with megabytes; an error must stay a
/// line an operator can read, so longer values are cut and their length given.
pub const MAX_QUOTED: usize = 128;

/// The first `MAX_QUOTED` bytes of `s` (at a character boundary) and whether it was cut.
fn head(s: &str) -> (&str, bool) {
    if s.len() <= MAX_QUOTED {
        return (s, false);
    }
    let mut end = MAX_QUOTED;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], true)
}

/// A string quoted for an error message, as `{s:?}` would, but bounded:
/// `"abc…" (67108864 bytes)` when longer than [`MAX_QUOTED`].
pub fn quote(s: &str) -> String {
    match head(s) {
        (h, false) => format!("{h:?}"),
        (h, true) => format!("{h:?}… ({} bytes)", s.len()),
    }
}

/// `s` as is when short, else its first [`MAX_QUOTED`] bytes, `…` and its length (for log
/// lines, where values are not quoted).
pub fn clip(s: &str) -> String {
    match head(s) {
        (h, false) => h.to_owned(),
        (h, true) => format!("{h}…({} bytes)", s.len()),
    }
}

/// A JSON value for an error message (its compact text), bounded like [`quote`].
pub fn shown(v: &Value) -> String {
    let text = v.to_string();
    match head(&text) {
        (h, false) => h.to_owned(),
        (h, true) => format!("{h}… ({} bytes)", text.len()),
    }
}

/// Everything that can make a CNI command fail.
///
/// Codes 1–51 are the spec's; 100 and up are Sluice's own (documented per variant).
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// Code 1: the config's `cniVersion` is not one we speak.
    #[error("incompatible CNI versions")]
    IncompatibleVersion {
        version: String,
        supported: &'static [&'static str],
    },
    /// Code 1: the config's version is too old for this command (CHECK < 0.4.0, GC/STATUS < 1.1.0).
    #[error("config version does not allow {command}")]
    CommandNotAllowed { command: Command, version: String },
    /// Code 2: a config field has a value we do not implement.
    #[error("unsupported value {} for field {field}", quote(value))]
    UnsupportedField { field: String, value: String },
    /// Code 3: the container is unknown; the runtime need not clean up.
    #[error("container {} is unknown", quote(container_id))]
    ContainerUnknown { container_id: String },
    /// Code 4: required environment variables are missing or empty (Go skel wording).
    #[error("required env variables [{}] missing", vars.join(","))]
    InvalidEnv { vars: Vec<String> },
    /// Code 4: an environment variable is set but invalid.
    #[error("invalid {var}: {reason}")]
    InvalidEnvValue { var: String, reason: String },
    /// Code 4: `CNI_COMMAND` is not one of the six commands (Go skel wording).
    #[error("unknown CNI_COMMAND: {}", clip(command))]
    UnknownCommand { command: String },
    /// Code 5: an I/O operation failed; `what` is a verb phrase ("read stdin").
    #[error("failed to {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Code 6: JSON that does not decode; `what` names the document ("network config").
    #[error("failed to decode {what}")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// Code 6: JSON that decodes but has the wrong shape (bad version string, bad prevResult).
    #[error("failed to decode {what}: {reason}")]
    Malformed { what: String, reason: String },
    /// Code 7: stdin is larger than the plugin reads (see `MAX_STDIN`).
    #[error("invalid network config: stdin is larger than {limit} bytes")]
    InputTooLarge { limit: usize },
    /// Code 7: the network config fails validation.
    #[error("invalid network config: {reason}")]
    InvalidConfig { reason: String },
    /// Code 11: transient failure, the runtime should retry.
    #[error("try again later: {reason}")]
    TryAgain { reason: String },
    /// Code 50 (STATUS): the plugin cannot service ADD now.
    #[error("plugin not available: {reason}")]
    NotAvailable { reason: String },
    /// Code 51 (STATUS): cannot service ADD and existing pods may have limited connectivity.
    #[error("plugin not available, existing containers may have limited connectivity: {reason}")]
    Degraded { reason: String },
    /// Code 100: a netlink request failed; `target` is the link, address or route.
    #[error("netlink {op} {target} failed")]
    Netlink {
        op: &'static str,
        target: String,
        #[source]
        source: BoxError,
    },
    /// Code 101: address allocation failed. An exhausted pool says so in the message (it is
    /// what a runtime shows in pod events); the details name the range.
    #[error("{}", if source.is_exhausted() { "ip address pool exhausted" } else { "ipam failed" })]
    Ipam {
        #[from]
        source: ipam::Error,
    },
    /// Code 102: programming BPF maps or programs failed.
    #[error("datapath {op} failed")]
    Datapath {
        op: String,
        #[source]
        source: BoxError,
    },
    /// Code 103: `CNI_NETNS` cannot be opened.
    #[error("cannot open network namespace {}", path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Code 104: ADD found `CNI_IFNAME` already present in the netns (spec MUST).
    #[error("{} is the plugin's own network namespace", path.display())]
    OwnNetns { path: PathBuf },
    #[error("interface {ifname} already exists in {}", netns.display())]
    InterfaceExists { ifname: String, netns: PathBuf },
    /// Code 105: CHECK found the attachment differs from what ADD set up.
    #[error("check failed: {reason}")]
    Check { reason: String },
    /// Several independent failures (GC and best-effort DEL report them all); the code is the
    /// first error's. Build with [`CniError::from_many`].
    #[error("{} errors, first: {}", errors.len(), first_msg(errors))]
    Multiple { errors: Vec<CniError> },
}

fn first_msg(errors: &[CniError]) -> String {
    errors.first().map(ToString::to_string).unwrap_or_default()
}

impl CniError {
    /// Fold the errors of a continue-on-error loop: none → `None`, one → itself, more → `Multiple`.
    pub fn from_many(mut errors: Vec<CniError>) -> Option<CniError> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(CniError::Multiple { errors }),
        }
    }

    /// The CNI error code (spec §6); ≥ 100 are Sluice's.
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion { .. } | CniError::CommandNotAllowed { .. } => 1,
            CniError::UnsupportedField { .. } => 2,
            CniError::ContainerUnknown { .. } => 3,
            CniError::InvalidEnv { .. }
            | CniError::InvalidEnvValue { .. }
            | CniError::UnknownCommand { .. } => 4,
            CniError::Io { .. } => 5,
            CniError::Decode { .. } | CniError::Malformed { .. } => 6,
            CniError::InvalidConfig { .. } | CniError::InputTooLarge { .. } => 7,
            CniError::TryAgain { .. } => 11,
            CniError::NotAvailable { .. } => 50,
            CniError::Degraded { .. } => 51,
            CniError::Netlink { .. } => 100,
            CniError::Ipam { .. } => 101,
            CniError::Datapath { .. } => 102,
            CniError::Netns { .. } => 103,
            // The Go skel's code for a CNI_NETNS that is the plugin's own namespace.
            CniError::OwnNetns { .. } => 8,
            CniError::InterfaceExists { .. } => 104,
            CniError::Check { .. } => 105,
            // 999 is the Go library's "internal error"; only reachable with an empty list.
            CniError::Multiple { errors } => errors.first().map_or(999, CniError::code),
        }
    }

    /// The long text: the cause chain joined with ": ", or `None` when there is none.
    pub fn details(&self) -> Option<String> {
        match self {
            // Go skel's exact text: `config is "0.2.0", plugin supports ["0.3.0" "0.3.1" …]`.
            CniError::IncompatibleVersion { version, supported } => {
                let list: Vec<String> = supported.iter().map(|v| format!("{v:?}")).collect();
                Some(format!(
                    "config is {version:?}, plugin supports [{}]",
                    list.join(" ")
                ))
            }
            CniError::Multiple { errors } => Some(
                errors
                    .iter()
                    .map(|e| match e.details() {
                        Some(d) => format!("{e}: {d}"),
                        None => e.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            _ => {
                let mut chain = Vec::new();
                let mut cause = self.source();
                while let Some(e) = cause {
                    chain.push(e.to_string());
                    cause = e.source();
                }
                (!chain.is_empty()).then(|| chain.join(": "))
            }
        }
    }

    /// The error object printed on stdout (spec §6); `details` is omitted when empty.
    ///
    /// `cni_version` is the config's version when it was readable and supported, else the
    /// newest we support.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut out = json!({
            "cniVersion": cni_version,
            "code": self.code(),
            "msg": self.to_string(),
        });
        if let Some(details) = self.details() {
            out["details"] = Value::String(details);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SUPPORTED_VERSIONS;

    fn io_err() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory")
    }

    /// Test that every variant maps to its spec (or Sluice) code.
    #[test]
    fn error_codes_match_spec_table() {
        let cases: Vec<(CniError, u32)> = vec![
            (
                CniError::IncompatibleVersion {
                    version: "0.2.0".into(),
                    supported: &SUPPORTED_VERSIONS,
                },
                1,
            ),
            (
                CniError::CommandNotAllowed {
                    command: Command::Check,
                    version: "0.3.1".into(),
                },
                1,
            ),
            (
                CniError::UnsupportedField {
                    field: "protocol".into(),
                    value: "icmp".into(),
                },
                2,
            ),
            (
                CniError::ContainerUnknown {
                    container_id: "c1".into(),
                },
                3,
            ),
            (
                CniError::InvalidEnv {
                    vars: vec!["CNI_NETNS".into()],
                },
                4,
            ),
            (
                CniError::InvalidEnvValue {
                    var: "CNI_IFNAME".into(),
                    reason: "too long".into(),
                },
                4,
            ),
            (
                CniError::UnknownCommand {
                    command: "FOO".into(),
                },
                4,
            ),
            (
                CniError::Io {
                    what: "read stdin".into(),
                    source: io_err(),
                },
                5,
            ),
            (
                CniError::Decode {
                    what: "network config".into(),
                    source: serde_json::from_str::<Value>("{").unwrap_err(),
                },
                6,
            ),
            (
                CniError::Malformed {
                    what: "prevResult".into(),
                    reason: "x".into(),
                },
                6,
            ),
            (CniError::InvalidConfig { reason: "x".into() }, 7),
            (CniError::TryAgain { reason: "x".into() }, 11),
            (CniError::NotAvailable { reason: "x".into() }, 50),
            (CniError::Degraded { reason: "x".into() }, 51),
            (
                CniError::Netlink {
                    op: "add link",
                    target: "eth0".into(),
                    source: io_err().into(),
                },
                100,
            ),
            (
                CniError::Ipam {
                    source: ipam::Error::OutOfRange {
                        addr: "10.0.0.1".parse().unwrap(),
                    },
                },
                101,
            ),
            (
                CniError::Datapath {
                    op: "insert endpoint".into(),
                    source: io_err().into(),
                },
                102,
            ),
            (
                CniError::Netns {
                    path: "/run/netns/x".into(),
                    source: io_err(),
                },
                103,
            ),
            (
                CniError::InterfaceExists {
                    ifname: "eth0".into(),
                    netns: "/run/netns/x".into(),
                },
                104,
            ),
            (CniError::Check { reason: "x".into() }, 105),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code, "{err:?}");
        }
    }

    /// Test that the incompatible-version error has the Go skel's msg and details text.
    #[test]
    fn incompatible_version_json_matches_go_skel() {
        let err = CniError::IncompatibleVersion {
            version: "0.2.0".into(),
            supported: &SUPPORTED_VERSIONS,
        };
        assert_eq!(
            err.to_json("1.1.0"),
            json!({
                "cniVersion": "1.1.0",
                "code": 1,
                "msg": "incompatible CNI versions",
                "details": r#"config is "0.2.0", plugin supports ["0.3.0" "0.3.1" "0.4.0" "1.0.0" "1.1.0"]"#,
            })
        );
    }

    /// Test that the version-gate messages are the Go skel's exact strings.
    #[test]
    fn command_not_allowed_messages_are_exact() {
        for (command, msg) in [
            (Command::Check, "config version does not allow CHECK"),
            (Command::Gc, "config version does not allow GC"),
            (Command::Status, "config version does not allow STATUS"),
        ] {
            let err = CniError::CommandNotAllowed {
                command,
                version: "0.3.1".into(),
            };
            assert_eq!(err.to_string(), msg);
        }
    }

    /// Test that missing env variables are named like the Go skel does, comma-separated.
    #[test]
    fn invalid_env_message_names_variables() {
        let one = CniError::InvalidEnv {
            vars: vec!["CNI_NETNS".into()],
        };
        assert_eq!(
            one.to_string(),
            "required env variables [CNI_NETNS] missing"
        );
        let two = CniError::InvalidEnv {
            vars: vec!["CNI_CONTAINERID".into(), "CNI_IFNAME".into()],
        };
        assert_eq!(
            two.to_string(),
            "required env variables [CNI_CONTAINERID,CNI_IFNAME] missing"
        );
    }

    /// Test that an error without a cause omits `details` from the JSON.
    #[test]
    fn to_json_omits_empty_details() {
        let err = CniError::InvalidEnv {
            vars: vec!["CNI_NETNS".into()],
        };
        assert_eq!(
            err.to_json("0.4.0"),
            json!({"cniVersion": "0.4.0", "code": 4, "msg": "required env variables [CNI_NETNS] missing"})
        );
    }

    /// Test that details carry the whole source chain, not only the first cause.
    #[test]
    fn to_json_details_carry_full_source_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("open state file")]
        struct Outer(#[source] std::io::Error);

        let err = CniError::Datapath {
            op: "insert endpoint".into(),
            source: Box::new(Outer(io_err())),
        };
        let out = err.to_json("1.0.0");
        assert_eq!(out["code"], 102);
        assert_eq!(out["msg"], "datapath insert endpoint failed");
        assert_eq!(out["details"], "open state file: no such file or directory");
    }

    /// Test that the message does not repeat the source (STYLE: `#[source]` not in the message).
    #[test]
    fn messages_do_not_repeat_source() {
        let err = CniError::Netns {
            path: "/run/netns/gone".into(),
            source: io_err(),
        };
        assert_eq!(
            err.to_string(),
            "cannot open network namespace /run/netns/gone"
        );
        assert_eq!(err.details().as_deref(), Some("no such file or directory"));
    }

    /// Test that folding errors gives none, the single error, or a list with the first's code.
    #[test]
    fn from_many_folds_and_keeps_first_code() {
        assert!(CniError::from_many(vec![]).is_none());
        let single = CniError::from_many(vec![CniError::Check { reason: "x".into() }]);
        assert!(matches!(single, Some(CniError::Check { .. })));

        let many = CniError::from_many(vec![
            CniError::Ipam {
                source: ipam::Error::InvalidRanges {
                    reason: "empty list".into(),
                },
            },
            CniError::Check {
                reason: "veth gone".into(),
            },
        ])
        .unwrap();
        assert_eq!(many.code(), 101);
        assert_eq!(many.to_string(), "2 errors, first: ipam failed");
        assert_eq!(
            many.details().as_deref(),
            Some("ipam failed: invalid address ranges: empty list; check failed: veth gone")
        );
    }

    /// Test that an exhausted pool is code 101 with "exhausted" in msg and the range in details.
    #[test]
    fn ipam_exhausted_message_says_exhausted() {
        let err = CniError::from(ipam::Error::Exhausted {
            range: "10.244.1.0/30".parse().unwrap(),
            size: 2,
        });
        assert_eq!(err.code(), 101);
        let out = err.to_json("1.0.0");
        assert_eq!(out["msg"], "ip address pool exhausted");
        assert_eq!(
            out["details"],
            "address pool 10.244.1.0/30 is exhausted (2 addresses, all allocated)"
        );
    }
}
