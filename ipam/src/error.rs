//! The one error type of the crate. Every variant names what an operator needs to act: the
//! range, the address, the attachment or the file.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;

/// Errors from [`crate::Store`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Every allocatable address of `range` is allocated. `size` counts allocatable addresses
    /// (usable addresses minus configured reserved ones).
    #[error("address pool {range} is exhausted ({size} addresses, all allocated)")]
    Exhausted { range: IpNetwork, size: u128 },

    /// The attachment already holds an address in this store; the runtime must DEL first.
    #[error(
        "container {container_id} interface {ifname} already holds address {addr}; \
         release it before allocating again"
    )]
    AlreadyAllocated {
        container_id: String,
        ifname: String,
        addr: IpAddr,
    },

    /// A requested address is allocated to another attachment (or its file is corrupt).
    #[error("requested address {addr} is already allocated")]
    Unavailable { addr: IpAddr },

    /// A requested address is in none of the configured ranges.
    #[error("requested address {addr} is not in any configured range")]
    OutOfRange { addr: IpAddr },

    /// A requested address is in a range but may not be handed out.
    #[error(
        "requested address {addr} is reserved in range {range} \
         (network, broadcast or configured reserved address)"
    )]
    Reserved { addr: IpAddr, range: IpNetwork },

    /// Two requested addresses fall in the same range; an attachment gets one per range.
    #[error(
        "requested addresses {first} and {second} are both in range {range}; \
         an attachment gets one address per range"
    )]
    ConflictingRequests {
        first: IpAddr,
        second: IpAddr,
        range: IpNetwork,
    },

    /// The configured ranges cannot be used (empty list, overlap, nothing allocatable).
    #[error("invalid address ranges: {reason}")]
    InvalidRanges { reason: String },

    /// An allocation file does not hold valid JSON. The address stays taken; inspect the file
    /// and delete it to free the address.
    #[error(
        "allocation file {path} is corrupt; the address stays taken until the file is \
         inspected and deleted"
    )]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A file system operation on `path` failed.
    #[error("i/o error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Whether this is [`Error::Exhausted`] (the CNI STATUS and ADD "no addresses" case).
    pub fn is_exhausted(&self) -> bool {
        matches!(self, Error::Exhausted { .. })
    }

    /// Builds an [`Error::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that the exhausted message names the range and its size, as operators see it.
    #[test]
    fn exhausted_message_names_range_and_size() {
        let e = Error::Exhausted {
            range: "10.244.1.0/30".parse().unwrap(),
            size: 2,
        };
        assert_eq!(
            e.to_string(),
            "address pool 10.244.1.0/30 is exhausted (2 addresses, all allocated)"
        );
        assert!(e.is_exhausted());
        assert!(!Error::OutOfRange {
            addr: "10.0.0.1".parse().unwrap()
        }
        .is_exhausted());
    }

    /// Test that the i/o message names the path and keeps the cause as the source only.
    #[test]
    fn io_message_names_path_not_source() {
        let e = Error::io("/run/x", io::Error::from(io::ErrorKind::PermissionDenied));
        assert_eq!(e.to_string(), "i/o error on /run/x");
        assert!(std::error::Error::source(&e).is_some());
    }
}
