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

use std::io::Read as _;

use env::{Command, Env};
use error::CniError;

/// The version used for error JSON when the config's own cannot be read.
const FALLBACK_VERSION: &str = "1.1.0";

/// Runs one CNI invocation with the process's environment and stdin; returns the exit code.
pub fn run() -> i32 {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let (out, code) = match read {
        Err(source) => (
            Some(
                CniError::Io {
                    what: "read the network config from stdin".into(),
                    source,
                }
                .to_json(FALLBACK_VERSION),
            ),
            1,
        ),
        Ok(_) => dispatch(&stdin),
    };
    if let Some(out) = out {
        println!("{out}");
    }
    code
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

fn dispatch(stdin: &[u8]) -> (Option<serde_json::Value>, i32) {
    let fail = |e: CniError, version: &str| {
        eprintln!("sluice-cni: {}", error_chain(&e));
        (Some(e.to_json(version)), 1)
    };
    let env = match Env::from_process() {
        Ok(env) => env,
        Err(e) => return fail(e, &loose_version(stdin)),
    };
    if env.command == Command::Version {
        return (Some(config::version_response(stdin)), 0);
    }
    let conf = match config::NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return fail(e, &loose_version(stdin)),
    };
    if let Err(e) = conf.check_allowed(env.command) {
        return fail(e, &conf.cni_version);
    }
    let res = run_command(&env, &conf);
    if let Some(path) = &conf.log_file {
        log_line(path, &env, &res);
    }
    match res {
        Ok(out) => (out, 0),
        Err(e) => fail(e, &conf.cni_version),
    }
}

fn run_command(env: &Env, conf: &config::NetConf) -> Result<Option<serde_json::Value>, CniError> {
    match env.command {
        Command::Add => commands::add(env, conf).map(|r| Some(r.to_json(&conf.cni_version))),
        Command::Del => commands::del(env, conf).map(|()| None),
        Command::Check => commands::check(env, conf).map(|()| None),
        Command::Status => commands::status(conf).map(|()| None),
        Command::Gc => commands::gc(conf).map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}

/// Appends one line about this invocation to the config's `logFile` (best effort: a log that
/// cannot be written never fails the command).
fn log_line(path: &std::path::Path, env: &Env, res: &Result<Option<serde_json::Value>, CniError>) {
    use std::io::Write as _;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let outcome = match res {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("error {}: {}", e.code(), error_chain(e)),
    };
    let line = format!(
        "{secs} {} container={} ifname={} pod={}/{} {outcome}\n",
        env.command,
        env.container_id.as_deref().unwrap_or("-"),
        env.ifname.as_deref().unwrap_or("-"),
        env.args.k8s_pod_namespace.as_deref().unwrap_or("-"),
        env.args.k8s_pod_name.as_deref().unwrap_or("-"),
    );
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(line.as_bytes());
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
