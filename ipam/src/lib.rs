//! Pod address allocation for Sluice: hands out addresses from the node's pod CIDR(s) to
//! container attachments and remembers them in a crash-safe, concurrency-safe directory, one
//! per network (for example `/run/sluice/ipam/sluice`). It is built for the CNI binary, a
//! short-lived process that runtimes exec in parallel and may kill at any point.
//!
//! - **Pools.** A [`Store`] has a list of non-overlapping ranges; an attachment gets one
//!   address per range (a v4 and a v6 range give a dual-stack pair). Usable addresses are
//!   described in the `range` module: IPv4 ranges up to /30 skip the network and broadcast
//!   address, /31 and /32 use every address; IPv6 ranges skip the subnet-router anycast
//!   address, /127 and /128 use every address. Configured reserved addresses are skipped.
//! - **Order.** Addresses are handed out sequentially after the last one handed out in each
//!   range, wrapping around and skipping taken ones (like the CNI host-local plugin), so a
//!   released address is not reused at once.
//! - **Identity.** An attachment is `(container_id, ifname)`. Allocating for an attachment
//!   that already holds an address fails with [`Error::AlreadyAllocated`].
//! - **Atomicity.** Every read-modify-write holds an exclusive `flock(2)`; an allocation file
//!   appears atomically with its full content (`link(2)` of a fsynced temp file). A failure in
//!   the middle of [`Store::allocate`] removes what that call created. A process killed in the
//!   middle can leave a partial allocation owned by the attachment, which the runtime's DEL
//!   or GC releases, and temp files, which the next writer removes.
//! - **Corrupt files.** An address file whose content is not valid JSON keeps its address
//!   taken (never handed out twice) and is never released by [`Store::release`] or
//!   [`Store::gc`], since its owner is unknown. [`Store::list`] fails with [`Error::Corrupt`]
//!   naming the file, so an operator notices, inspects it and deletes it.
//! - **Permissions.** The directory is created 0700 and files 0600 (root-only state).

mod disk;
mod error;
mod podcidr;
mod range;
mod store;

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

pub use error::Error;
pub use podcidr::{check_pod_cidr, check_pod_cidrs, network_of, PodCidrError};
pub use store::Store;

/// The identity of a container attachment: one interface of one container.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

impl Attachment {
    /// Builds an attachment from its two parts.
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Attachment {
        Attachment {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }
}

/// Who holds an address; this is the JSON content of an allocation file:
/// `{"containerId": "...", "ifname": "eth0", "podNamespace": "...", "podName": "..."}`
/// (the pod fields are left out when unknown).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    pub container_id: String,
    pub ifname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}

impl Owner {
    /// An owner without pod information.
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Owner {
        Owner {
            container_id: container_id.into(),
            ifname: ifname.into(),
            pod_namespace: None,
            pod_name: None,
        }
    }

    /// The attachment this owner identifies.
    pub fn attachment(&self) -> Attachment {
        Attachment::new(self.container_id.clone(), self.ifname.clone())
    }

    /// Whether this owner is the attachment `(container_id, ifname)`.
    pub fn is(&self, container_id: &str, ifname: &str) -> bool {
        self.container_id == container_id && self.ifname == ifname
    }
}

/// One allocated address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub addr: IpAddr,
    /// The configured range the address came from, in canonical form (host bits cleared).
    /// An address left over from an earlier configuration, inside no configured range, gets
    /// its host network (`/32` or `/128`).
    pub network: IpNetwork,
    pub owner: Owner,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that an owner serializes to the documented camelCase JSON without absent pod
    /// fields, and that a file with pod fields decodes.
    #[test]
    fn owner_json_format() {
        let owner = Owner::new("abc", "eth0");
        assert_eq!(
            serde_json::to_string(&owner).unwrap(),
            r#"{"containerId":"abc","ifname":"eth0"}"#
        );
        let full: Owner = serde_json::from_str(
            r#"{"containerId":"c","ifname":"eth1","podNamespace":"ns","podName":"p"}"#,
        )
        .unwrap();
        assert_eq!(full.pod_namespace.as_deref(), Some("ns"));
        assert_eq!(full.pod_name.as_deref(), Some("p"));
        assert_eq!(full.attachment(), Attachment::new("c", "eth1"));
        assert!(full.is("c", "eth1"));
        assert!(!full.is("c", "eth0"));
    }

    /// Test that an attachment serializes with the same field names as an owner.
    #[test]
    fn attachment_json_format() {
        assert_eq!(
            serde_json::to_string(&Attachment::new("abc", "eth0")).unwrap(),
            r#"{"containerId":"abc","ifname":"eth0"}"#
        );
    }
}
