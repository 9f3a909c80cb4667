//! `sluice-cni`: the CNI plugin a container runtime execs for every pod (installed as
//! `/opt/cni/bin/sluice`). The protocol (environment, config, results, errors) follows the CNI
//! spec up to 1.1.0; the commands wire pods into Sluice's eBPF datapath. Stdout carries only
//! the protocol: one result or error JSON document. Diagnostics go to stderr.

pub mod commands;
pub mod config;
pub mod env;
pub mod error;
pub mod netlink;
pub mod result;

use std::io::{Read, Write};

use env::{Command, Env};
use error::CniError;

/// The version used for error JSON when the config's own cannot be read.
const FALLBACK_VERSION: &str = "1.1.0";

/// The most stdin the plugin reads. A network config is a few hundred bytes; with a
/// prevResult listing many interfaces and addresses, or runtimeConfig port mappings, a few
/// tens of KiB. 1 MiB is far above any real config and bounds what a bad or hostile runtime
/// can make the plugin parse and hold (a 64 MiB `name` used to take seconds and come back in
/// the error).
pub const MAX_STDIN: usize = 1 << 20;

/// Oversized stdin is drained up to this much more so a writer that treats EPIPE as fatal
/// still sees its write complete; past it the plugin stops reading (it never blocks forever).
const MAX_DRAIN: u64 = 1 << 30;

/// The most of one message (error `msg`/`details`, a stderr line) the plugin prints.
const MAX_MESSAGE: usize = 4096;

/// Runs one CNI invocation with the process's environment, stdin and stdout; returns the
/// exit code.
///
/// Rust starts with SIGPIPE ignored, so a closed stdout is an `EPIPE` error here, not a
/// signal that kills the plugin after it wired a pod: every write to stdout goes through
/// [`emit`] and a failure is handled like any other error (an ADD is undone).
pub fn run() -> i32 {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    run_with(&mut stdin.lock(), &mut stdout.lock())
}

/// [`run`] on the given stdin and stdout. A panic (a bug: no input should cause one) is
/// caught and answered with the Go library's "internal error" code 999, never exit code 101.
pub fn run_with(stdin: &mut dyn Read, stdout: &mut dyn Write) -> i32 {
    let env = Env::from_process();
    let input = read_stdin(stdin);
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        dispatch(env, input, &mut *stdout)
    }));
    match out {
        Ok(code) => code,
        Err(_) => {
            let reply = serde_json::json!({
                "cniVersion": FALLBACK_VERSION,
                "code": 999,
                "msg": "internal error in sluice-cni (a bug: please report it with its stderr)",
            });
            log_stderr("internal error: the plugin panicked");
            let _ = emit(stdout, &reply);
            1
        }
    }
}

/// Reads stdin up to [`MAX_STDIN`] bytes; more is an error (and is drained, not kept).
fn read_stdin(stdin: &mut dyn Read) -> Result<Vec<u8>, CniError> {
    let mut buf = Vec::new();
    let io = |source| CniError::Io {
        what: "read the network config from stdin".into(),
        source,
    };
    stdin
        .take(MAX_STDIN as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(io)?;
    if buf.len() > MAX_STDIN {
        drop(buf);
        let _ = std::io::copy(&mut stdin.take(MAX_DRAIN), &mut std::io::sink());
        return Err(CniError::InputTooLarge { limit: MAX_STDIN });
    }
    Ok(buf)
}

/// Writes one protocol document (result or error JSON) and flushes it.
pub fn emit(out: &mut dyn Write, v: &serde_json::Value) -> std::io::Result<()> {
    let mut text = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    text.push(b'\n');
    out.write_all(&text)?;
    out.flush()
}

/// One diagnostic line on stderr; a stderr that cannot be written is ignored (stderr is
/// never the protocol, and nothing else is left to report it on).
fn log_stderr(msg: &str) {
    let line = format!("sluice-cni: {}\n", bounded(msg));
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `s` cut to [`MAX_MESSAGE`] bytes, with an ellipsis and the original length.
fn bounded(s: &str) -> std::borrow::Cow<'_, str> {
    if s.len() <= MAX_MESSAGE {
        return s.into();
    }
    let mut end = MAX_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len()).into()
}

/// The `cniVersion` of a config, for error replies, if it can be read at all.
fn loose_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        })
        .filter(|v| config::SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| FALLBACK_VERSION.into())
}

/// Reports `e`: a line on stderr and the error JSON on stdout (if stdout still takes it).
fn fail(out: &mut dyn Write, e: &CniError, version: &str) -> i32 {
    log_stderr(&error_chain(e));
    let mut reply = e.to_json(version);
    for key in ["msg", "details"] {
        if let Some(text) = reply[key].as_str() {
            if text.len() > MAX_MESSAGE {
                reply[key] = bounded(text).into_owned().into();
            }
        }
    }
    if let Err(w) = emit(out, &reply) {
        log_stderr(&format!("cannot write the error to stdout: {w}"));
    }
    1
}

fn dispatch(
    env: Result<Env, CniError>,
    input: Result<Vec<u8>, CniError>,
    out: &mut dyn Write,
) -> i32 {
    let env = match env {
        Ok(env) => env,
        Err(e) => {
            let version = input
                .as_deref()
                .map_or(FALLBACK_VERSION.into(), loose_version);
            return fail(out, &e, &version);
        }
    };
    let stdin = match input {
        Ok(stdin) => stdin,
        // VERSION answers whatever stdin holds (as for garbage).
        Err(_) if env.command == Command::Version => Vec::new(),
        Err(e) => return fail(out, &e, FALLBACK_VERSION),
    };
    if env.command == Command::Version {
        return match emit(out, &config::version_response(&stdin)) {
            Ok(()) => 0,
            Err(source) => fail(
                out,
                &CniError::Io {
                    what: "write the VERSION answer to stdout".into(),
                    source,
                },
                FALLBACK_VERSION,
            ),
        };
    }
    let conf = match config::NetConf::parse_for(&stdin, env.command) {
        Ok(c) => c,
        Err(e) => return fail(out, &e, &loose_version(&stdin)),
    };
    if let Err(e) = conf.check_allowed(env.command) {
        return fail(out, &e, &conf.cni_version);
    }
    let res = run_command(&env, &conf).and_then(|reply| {
        let Some(reply) = reply else { return Ok(()) };
        emit(out, &reply).map_err(|source| {
            if env.command == Command::Add {
                // The runtime never learns of this pod, so it would never DEL it: undo the
                // ADD as a failed ADD does.
                if let Err(e) = commands::del(&env, &conf) {
                    log_stderr(&format!(
                        "undo ADD after the result could not be written: {}",
                        error_chain(&e)
                    ));
                }
            }
            CniError::Io {
                what: format!("write the {} result to stdout", env.command),
                source,
            }
        })
    });
    if let Some(path) = &conf.log_file {
        log_line(path, &env, &res);
    }
    match res {
        Ok(()) => 0,
        Err(e) => fail(out, &e, &conf.cni_version),
    }
}

fn run_command(env: &Env, conf: &config::NetConf) -> Result<Option<serde_json::Value>, CniError> {
    match env.command {
        Command::Add => commands::add(env, conf).map(|r| Some(r.to_json(&conf.cni_version))),
        Command::Del => commands::del(env, conf).map(|()| None),
        Command::Check => commands::check(env, conf).map(|()| None),
        Command::Status => commands::status(conf).map(|()| None),
        Command::Gc => commands::gc(conf).map(|()| None),
        // Answered before the config is parsed; nothing to do here.
        Command::Version => Ok(None),
    }
}

/// Appends one line about this invocation to the config's `logFile`. Best effort, and never
/// blocking: the file is opened with `O_NONBLOCK` (a FIFO without a reader fails at once
/// instead of waiting for one) and `O_NOFOLLOW`, and anything but a regular file (a FIFO with
/// a reader, a device, a socket) is refused. A log that cannot be written is a line on stderr;
/// the command carries on.
fn log_line(path: &std::path::Path, env: &Env, res: &Result<(), CniError>) {
    use std::os::unix::fs::OpenOptionsExt as _;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let outcome = match res {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("error {}: {}", e.code(), bounded(&error_chain(e))),
    };
    let short = |v: Option<&str>| error::clip(v.unwrap_or("-"));
    let line = format!(
        "{secs} {} container={} ifname={} pod={}/{} {outcome}\n",
        env.command,
        short(env.container_id.as_deref()),
        short(env.ifname.as_deref()),
        short(env.args.k8s_pod_namespace.as_deref()),
        short(env.args.k8s_pod_name.as_deref()),
    );
    let skip = |why: String| log_stderr(&format!("log file {}: {why}", path.display()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path);
    let mut file = match file {
        Ok(f) => f,
        Err(e) => return skip(format!("cannot open it ({e}); not logging")),
    };
    match file.metadata() {
        Ok(m) if m.is_file() => {}
        Ok(_) => return skip("not a regular file; not logging".into()),
        Err(e) => return skip(format!("cannot stat it ({e}); not logging")),
    }
    if let Err(e) = file.write_all(line.as_bytes()) {
        skip(format!("cannot write it ({e})"));
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
