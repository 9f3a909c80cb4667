//! Socket acceleration under policy: after a policy change, every accelerated connection of
//! an isolated pod is judged again, as the datapath judges it, and the sockets of those now
//! denied go back to the packet path.

use std::collections::HashMap;
use std::net::IpAddr;

use anyhow::Context as _;
use aya::maps::{lpm_trie::Key, HashMap as BpfHash, Map, MapData};
use datapath_common::policy;

use super::{open_map, PolicyMaps};

impl PolicyMaps {
    /// Takes every accelerated socket whose connection the current rules deny out of the
    /// socket acceleration map, so its data goes back through TCP and the TC programs, which
    /// drop it (sockops accelerates an isolated pod's connection only while it is allowed, but
    /// a policy change can deny it later). Judged as the datapath judges
    /// (`datapath_common::policy::judge` on the same trie), in the direction the connection was
    /// opened (from the connection tracker); an untracked one is taken back to be safe. Allowed
    /// connections stay accelerated: dropping a socket from the sockhash discards data
    /// redirected to it and not read yet (Linux 6.18 `sk_psock_drop` purges its ingress queue),
    /// which is acceptable only for a connection that stops anyway. Returns how many it took.
    pub fn recheck_accelerated(&self, node: std::net::Ipv4Addr) -> anyhow::Result<usize> {
        use aya::maps::SockHash;
        use datapath_common::{nat::Tuple, sock::SockKey};

        let Ok(md) = crate::pins::open(&self.bpffs, datapath_common::sock::MAP_NAME) else {
            return Ok(0); // acceleration is off
        };
        let mut hash: SockHash<MapData, SockKey> =
            SockHash::try_from(Map::SockHash(md)).context("sockhash map type")?;
        let keys: Vec<SockKey> = hash.keys().filter_map(Result::ok).collect();
        if keys.is_empty() {
            return Ok(0);
        }
        let ct: BpfHash<MapData, Tuple, policy::CtEntry> =
            BpfHash::try_from(Map::LruHashMap(open_map(&self.bpffs, policy::CT_MAP_NAME)?))
                .context("connection tracker map type")?;
        let flags: HashMap<[u8; 4], u32> = datapath_user::Endpoints::open(&self.bpffs)?
            .list()?
            .into_iter()
            .filter_map(|r| match r.addr {
                IpAddr::V4(a) => Some((a.octets(), r.value.flags)),
                IpAddr::V6(_) => None,
            })
            .collect();
        let allows = |d: &policy::RuleData, port: u16| {
            let key = Key::new(policy::fixed_bits() + 32, *d);
            self.rules.get(&key, 0).is_ok_and(|v| v.allows(port))
        };
        let mut taken = 0;
        for k in keys {
            if k.family != datapath_common::addr::FAMILY_V4 || k.netns != 0 {
                continue; // loopback inside a pod: not policy's business
            }
            let v4 = |a: &[u8; 16]| [a[0], a[1], a[2], a[3]];
            let (local, remote) = (v4(&k.local_addr), v4(&k.remote_addr));
            let (lport, rport) = (k.local_port as u16, k.remote_port as u16);
            let lflags = flags.get(&local).copied().unwrap_or(0);
            let rflags = flags.get(&remote).copied().unwrap_or(0);
            if !policy::any_isolated(lflags, rflags) {
                continue;
            }
            let end = |addr, port, flags| policy::SockEnd { addr, port, flags };
            let opened =
                policy::socket_directions(end(local, lport, lflags), end(remote, rport, rflags))
                    .into_iter()
                    .find(|(tracked, _)| ct.get(tracked, 0).is_ok())
                    .map(|(_, c)| c);
            let allowed =
                opened.is_some_and(|c| policy::judge(&c, node.octets(), &allows).is_none());
            if !allowed {
                datapath_user::absent_is_ok(hash.remove(&k))
                    .context("take back an accelerated socket")?;
                taken += 1;
            }
        }
        Ok(taken)
    }
}
