//! The benchmark harness behind `bench/run`: Sluice measured against its baselines in one run,
//! on the same kernel, with the same load generator and flags. `veth` is the limit (a bare
//! veth pair between two namespaces), `bridge` is the reference CNI (containernetworking's
//! `bridge` + `host-local`, with the iptables rules a kubeadm node carries), and
//! `sluice-nosockmap` is Sluice without socket acceleration (the TC path alone). The Service
//! scenarios compare Sluice's load balancing with kube-proxy's iptables mode (`iptables`) on
//! the bridge CNI. The NetworkPolicy scenarios compare Sluice with 1,000 policies against
//! Sluice with none, on both its paths, and time policy changes. Every topology is built in
//! network namespaces this process makes and releases (README.md, Tests).
//!
//! Modules: [`hist`] latency histograms, [`load`] the `sluice-load` generator, [`topo`] the
//! four systems, [`measure`] one traffic measurement in one system, [`cni`] CNI ADD/DEL
//! timing, [`svc`] the Service scenarios, their two systems and the rules kube-proxy writes,
//! [`policy`] the NetworkPolicy scenarios, their manifests, systems and probe, [`manifests`]
//! the standalone manifest reader idle with 10,000 files, [`remote_pods`] the agent's memory
//! in API mode with 5,000 pods of other nodes, [`xnode`] pod to pod across two simulated
//! nodes (Sluice's tunnel and native routing, plain routes, flannel), [`run`] rounds
//! and rotation, [`report`] the table and JSON, [`targets`] the issues' targets judged,
//! [`saved`] the result files written, and read back for a partial run to merge into, [`svg`]
//! the picture, [`machine`] what it ran on.

pub mod cni;
pub mod hist;
pub mod load;
pub mod machine;
pub mod manifests;
pub mod measure;
pub mod policy;
pub mod remote_pods;
pub mod report;
pub mod run;
pub mod saved;
pub mod svc;
pub mod svg;
pub mod targets;
pub mod topo;
pub mod xnode;

use std::fmt;

/// An error saying what was being done, with its cause. The integration crate carries no
/// `anyhow` (its dependencies are the fixture's); this is the small part of it the harness needs.
#[derive(Debug)]
pub struct Error {
    context: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn msg(context: impl Into<String>) -> Self {
        Self {
            context: context.into(),
            source: None,
        }
    }

    /// The context and every cause, `a: b: c`, for the one line a binary prints.
    pub fn chain(&self) -> String {
        let mut s = self.context.clone();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cause = c.source();
        }
        s
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

pub trait Context<T> {
    fn context(self, what: impl Into<String>) -> Result<T>;
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error {
            context: what.into(),
            source: Some(Box::new(e)),
        })
    }

    fn with_context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error {
            context: what(),
            source: Some(Box::new(e)),
        })
    }
}

/// Set by SIGINT, SIGTERM or SIGHUP: the run stops at the next measurement boundary and
/// releases everything it made.
pub static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Fails with "interrupted" once a stop signal arrived.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        Err(Error::msg("interrupted"))
    } else {
        Ok(())
    }
}
