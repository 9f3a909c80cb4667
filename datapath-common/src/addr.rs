//! Family-tagged addresses: the one key shape every address-keyed map uses.

/// IPv4 (the value of the IP header's version field).
pub const FAMILY_V4: u8 = 4;
/// IPv6.
pub const FAMILY_V6: u8 = 6;

/// An IP address as a map key: 20 bytes, IPv4 in the first four bytes of `addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpKey {
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    pub _pad: [u8; 3],
    /// Network order; IPv4 uses bytes 0..4, the rest stay zero.
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<IpKey>() == 20);

impl IpKey {
    /// The key of an IPv4 address given in network order (as it sits in a packet).
    #[inline(always)]
    pub const fn v4(octets: [u8; 4]) -> Self {
        let mut addr = [0u8; 16];
        addr[0] = octets[0];
        addr[1] = octets[1];
        addr[2] = octets[2];
        addr[3] = octets[3];
        Self {
            family: FAMILY_V4,
            _pad: [0; 3],
            addr,
        }
    }

    /// The key of an IPv6 address given in network order.
    #[inline(always)]
    pub const fn v6(octets: [u8; 16]) -> Self {
        Self {
            family: FAMILY_V6,
            _pad: [0; 3],
            addr: octets,
        }
    }

    /// The IPv4 octets, if this is an IPv4 key.
    #[inline(always)]
    pub const fn as_v4(&self) -> Option<[u8; 4]> {
        if self.family == FAMILY_V4 {
            Some([self.addr[0], self.addr[1], self.addr[2], self.addr[3]])
        } else {
            None
        }
    }
}

/// Copies a name into a fixed, NUL-padded byte array (cut at `N` bytes); used for the
/// pod names and ids kept in map values.
pub fn fixed_bytes<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = if s.len() < N { s.len() } else { N };
    let mut i = 0;
    while i < n {
        out[i] = s[i];
        i += 1;
    }
    out
}

/// The bytes of a NUL-padded array up to the first NUL.
pub fn trim_fixed(b: &[u8]) -> &[u8] {
    let mut end = 0;
    while end < b.len() && b[end] != 0 {
        end += 1;
    }
    &b[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that an IPv4 key keeps its octets in order and zeroes the rest.
    #[test]
    fn ipkey_v4_layout() {
        let k = IpKey::v4([10, 244, 1, 7]);
        assert_eq!(k.family, FAMILY_V4);
        assert_eq!(&k.addr[..4], &[10, 244, 1, 7]);
        assert!(k.addr[4..].iter().all(|b| *b == 0));
        assert_eq!(k.as_v4(), Some([10, 244, 1, 7]));
        assert_eq!(IpKey::v6([1; 16]).as_v4(), None);
    }

    /// Test that names are cut and padded, and trimmed back.
    #[test]
    fn fixed_bytes_roundtrip() {
        let b: [u8; 8] = fixed_bytes(b"default");
        assert_eq!(trim_fixed(&b), b"default");
        let c: [u8; 4] = fixed_bytes(b"toolong");
        assert_eq!(&c, b"tool");
        assert_eq!(trim_fixed(&c), b"tool");
    }
}
