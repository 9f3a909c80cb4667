//! CNI ADD and DEL latency. Both plugins (Sluice's and the reference `bridge`) are exec'd by
//! the same [`CniPlugin::call`], in their node namespace, the way a runtime execs them (config
//! on stdin, `CNI_*` in the environment), so the timed region — spawn to exit — is the same
//! code for both. The pod namespaces are made before the clock starts and removed after it
//! stops: only the plugin is timed.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Barrier,
    time::{Duration, Instant},
};

use test_support::{unique, Netns};

use super::{check_interrupted, hist::Histogram, Context as _, Error, Result};

/// One CNI plugin of one node, ready to exec.
pub struct CniPlugin<'a> {
    /// The node namespace the runtime (and so the plugin) runs in.
    pub node: &'a Netns,
    pub program: PathBuf,
    /// `CNI_PATH`: where the plugin finds delegated plugins (IPAM).
    pub cni_path: PathBuf,
    /// The network config on stdin, as libcni derives it from the conflist (the plugin's
    /// object plus the list's `name` and `cniVersion`).
    pub config: Vec<u8>,
}

/// What one exec returned.
pub struct CniReply {
    pub elapsed: Duration,
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CniReply {
    /// An error carrying the plugin's own message if it failed.
    pub fn check(&self) -> Result<()> {
        if self.success {
            return Ok(());
        }
        Err(Error::msg(format!(
            "plugin failed: {} {}",
            self.stdout.trim(),
            self.stderr.trim()
        )))
    }

    /// The result JSON of a successful ADD.
    pub fn result(&self) -> Result<serde_json::Value> {
        self.check()?;
        serde_json::from_str(&self.stdout).context("plugin result is not JSON")
    }
}

impl CniPlugin<'_> {
    /// Execs the plugin with `command` (ADD/DEL) for container `cid` in `netns`, with
    /// Kubernetes' CNI_ARGS for pod `pod`.
    pub fn call(&self, command: &str, cid: &str, netns: &Path, pod: &str) -> Result<CniReply> {
        let mut cmd = self.node.command(&self.program);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.cni_path)
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};\
                     K8S_POD_INFRA_CONTAINER_ID={cid}"
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("exec {}", self.program.display()))?;
        // The config is a few hundred bytes: it fits the pipe, so this cannot block.
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(&self.config)
            .context("write the CNI config")?;
        let out = child.wait_with_output().context("wait for the plugin")?;
        let elapsed = start.elapsed();
        Ok(CniReply {
            elapsed,
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// A pod namespace and its container id, made before the timing starts.
struct PodSlot {
    ns: Netns,
    cid: String,
    name: String,
}

/// Threads that make and tear down pods outside the timed regions (only to save wall time).
const HELPERS: usize = 8;

fn slots(n: usize) -> Vec<PodSlot> {
    let made = std::sync::Mutex::new(Vec::with_capacity(n));
    std::thread::scope(|s| {
        for h in 0..HELPERS {
            let made = &made;
            s.spawn(move || {
                for i in (h..n).step_by(HELPERS) {
                    let slot = PodSlot {
                        ns: Netns::new(&unique("slbp")),
                        cid: unique("bench"),
                        name: format!("bench-{i}"),
                    };
                    made.lock().expect("not poisoned").push(slot);
                }
            });
        }
    });
    made.into_inner().expect("not poisoned")
}

/// ADD latencies and DEL latencies (ms) of one sequential pass, and their distributions.
pub struct Sequential {
    pub add_ms: Vec<f64>,
    pub del_ms: Vec<f64>,
    pub add_hist: Histogram,
    pub del_hist: Histogram,
}

/// ADDs `pods` pods one after another, then DELs them one after another.
pub fn sequential(plugin: &CniPlugin, pods: usize) -> Result<Sequential> {
    let slots = slots(pods);
    let mut s = Sequential {
        add_ms: Vec::with_capacity(pods),
        del_ms: Vec::with_capacity(pods),
        add_hist: Histogram::default(),
        del_hist: Histogram::default(),
    };
    for (command, ms, hist) in [
        ("ADD", &mut s.add_ms, &mut s.add_hist),
        ("DEL", &mut s.del_ms, &mut s.del_hist),
    ] {
        for p in &slots {
            check_interrupted()?;
            let r = plugin.call(command, &p.cid, &p.ns.path(), &p.name)?;
            r.check()
                .with_context(|| format!("{command} of {}", p.name))?;
            ms.push(r.elapsed.as_secs_f64() * 1e3);
            hist.record(r.elapsed.as_nanos() as u64);
        }
    }
    Ok(s)
}

pub struct Parallel {
    /// From the release of all ADDs at once to the last one's exit.
    pub seconds: f64,
    pub failures: usize,
    /// The first failure's message, to print.
    pub first_failure: Option<String>,
}

/// ADDs `pods` pods all at once (one thread each, released together), then DELs them.
pub fn parallel(plugin: &CniPlugin, pods: usize) -> Result<Parallel> {
    check_interrupted()?;
    let slots = slots(pods);
    let barrier = Barrier::new(pods + 1);
    let (seconds, replies) = std::thread::scope(|s| {
        let handles: Vec<_> = slots
            .iter()
            .map(|p| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    plugin.call("ADD", &p.cid, &p.ns.path(), &p.name)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let replies: Vec<Result<CniReply>> = handles
            .into_iter()
            .map(|h| h.join().expect("a CNI thread panicked"))
            .collect();
        (start.elapsed().as_secs_f64(), replies)
    });
    let mut failures = 0;
    let mut first_failure = None;
    for r in replies {
        if let Err(e) = r.and_then(|r| r.check()) {
            failures += 1;
            first_failure.get_or_insert(e.chain());
        }
    }
    // DEL every pod, failed ADDs too (DEL is idempotent): the next round needs the addresses.
    // Not timed; a few at a time.
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..HELPERS)
            .map(|h| {
                let slots = &slots;
                s.spawn(move || -> Result<()> {
                    for p in slots.iter().skip(h).step_by(HELPERS) {
                        plugin
                            .call("DEL", &p.cid, &p.ns.path(), &p.name)?
                            .check()
                            .with_context(|| {
                                format!("DEL of {} after the parallel ADDs", p.name)
                            })?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("a DEL thread panicked"))
    })?;
    Ok(Parallel {
        seconds,
        failures,
        first_failure,
    })
}
