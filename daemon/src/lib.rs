//! The node agent (`sluice-agent`) and operator CLI (`sluicectl`): loading and pinning the
//! datapath, following cluster state, installing the CNI plugin, and the local API the CLI
//! talks to.

pub mod agent;
pub mod api;
pub mod cni_install;
pub mod datapath;
pub mod enforce;
pub mod flows;
pub mod kube;
pub mod maglev;
pub mod manifests;
pub mod masq;
pub mod model;
pub mod node;
pub mod nodes;
pub mod pins;
pub mod policy;
pub mod routing;
pub mod services;
