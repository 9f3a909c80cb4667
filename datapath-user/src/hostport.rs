//! hostPort records: the `portMappings` a runtime gave the CNI plugin at ADD,
//! kept in `<stateDir>/hostports/<containerId>@<ifname>` until DEL, for the agent to program
//! as frontends. The one place the plugin writes and the agent reads them, so both agree on
//! the path and the format: `key=value` lines, one `map=` line per mapping
//! (`map=<proto> <hostPort> <containerPort> <hostIP or ->`, proto `tcp`, `udp` or `sctp`).
//!
//! A container id is `[A-Za-z0-9_.-]+` (the plugin checks it), so the first `@` of a file name
//! ends it. Files are written to a temporary name and renamed, so a reader never sees half a
//! record.

use std::{
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

/// The directory under the state dir.
pub const DIR: &str = "hostports";

/// One mapping: `host_ip:host_port` (every node address when `host_ip` is `None`) to the
/// pod's `container_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mapping {
    /// IP protocol number: 6 (TCP), 17 (UDP) or 132 (SCTP).
    pub proto: u8,
    pub host_port: u16,
    pub container_port: u16,
    pub host_ip: Option<IpAddr>,
}

/// The hostPorts of one attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub container_id: String,
    pub ifname: String,
    pub namespace: String,
    pub name: String,
    /// When ADD recorded it, nanoseconds since the Unix epoch: the owner of a contested port
    /// is the oldest record (then the smallest container id).
    pub created_ns: u128,
    pub pod_ips: Vec<IpAddr>,
    pub mappings: Vec<Mapping>,
}

/// `<state_dir>/hostports`.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join(DIR)
}

/// The record file of one attachment. A container id has no length limit in the CNI spec and a
/// file name has 255 bytes, so the name holds the id in the endpoint records' form (verbatim up
/// to 120 bytes, else a prefix and its hash: `crate::meta_container_id`); the record
/// inside keeps the whole id.
pub fn path(state_dir: &Path, container_id: &str, ifname: &str) -> PathBuf {
    let id = crate::meta_container_id(container_id);
    dir(state_dir).join(format!("{id}@{ifname}"))
}

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        132 => "sctp",
        _ => "?",
    }
}

fn proto_number(s: &str) -> Option<u8> {
    match s {
        "tcp" => Some(6),
        "udp" => Some(17),
        "sctp" => Some(132),
        _ => None,
    }
}

impl Record {
    /// The file's text.
    pub fn encode(&self) -> String {
        let mut s = format!(
            "container_id={}\nifname={}\nnamespace={}\nname={}\ncreated_ns={}\n",
            self.container_id, self.ifname, self.namespace, self.name, self.created_ns
        );
        for ip in &self.pod_ips {
            s.push_str(&format!("ip={ip}\n"));
        }
        for m in &self.mappings {
            let host_ip = m
                .host_ip
                .map_or_else(|| "-".to_string(), |ip| ip.to_string());
            s.push_str(&format!(
                "map={} {} {} {host_ip}\n",
                proto_name(m.proto),
                m.host_port,
                m.container_port
            ));
        }
        s
    }

    /// Parses a file's text; the error names the offending line.
    pub fn decode(text: &str) -> Result<Record, String> {
        let mut r = Record {
            container_id: String::new(),
            ifname: String::new(),
            namespace: String::new(),
            name: String::new(),
            created_ns: 0,
            pod_ips: Vec::new(),
            mappings: Vec::new(),
        };
        for line in text.lines().filter(|l| !l.is_empty()) {
            let bad = || format!("bad line {line:?}");
            let (k, v) = line.split_once('=').ok_or_else(bad)?;
            match k {
                "container_id" => r.container_id = v.into(),
                "ifname" => r.ifname = v.into(),
                "namespace" => r.namespace = v.into(),
                "name" => r.name = v.into(),
                "created_ns" => r.created_ns = v.parse().map_err(|_| bad())?,
                "ip" => r.pod_ips.push(v.parse().map_err(|_| bad())?),
                "map" => {
                    let f: Vec<&str> = v.split(' ').collect();
                    let [proto, host, container, host_ip] = f[..] else {
                        return Err(bad());
                    };
                    r.mappings.push(Mapping {
                        proto: proto_number(proto).ok_or_else(bad)?,
                        host_port: host.parse().map_err(|_| bad())?,
                        container_port: container.parse().map_err(|_| bad())?,
                        host_ip: match host_ip {
                            "-" => None,
                            ip => Some(ip.parse().map_err(|_| bad())?),
                        },
                    });
                }
                _ => {} // newer keys are ignored
            }
        }
        if r.container_id.is_empty() {
            return Err("no container_id".into());
        }
        Ok(r)
    }
}

/// Writes `rec` (temporary file, then rename).
pub fn write(state_dir: &Path, rec: &Record) -> std::io::Result<()> {
    let d = dir(state_dir);
    std::fs::create_dir_all(&d)?;
    let dest = path(state_dir, &rec.container_id, &rec.ifname);
    let tmp = d.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        crate::meta_container_id(&rec.container_id)
    ));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(rec.encode().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &dest)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Removes the record of one attachment; a missing record is success.
pub fn remove(state_dir: &Path, container_id: &str, ifname: &str) -> std::io::Result<()> {
    match std::fs::remove_file(path(state_dir, container_id, ifname)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Every record, sorted oldest first (then by container id), and the files that could not be
/// read or parsed. No directory means no records.
pub fn read_all(state_dir: &Path) -> (Vec<Record>, Vec<(PathBuf, String)>) {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir(state_dir)) else {
        return (out, bad);
    };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        match std::fs::read_to_string(&p) {
            Ok(t) => match Record::decode(&t) {
                Ok(r) => out.push(r),
                Err(why) => bad.push((p, why)),
            },
            Err(e) => bad.push((p, e.to_string())),
        }
    }
    out.sort_by(|a, b| (a.created_ns, &a.container_id).cmp(&(b.created_ns, &b.container_id)));
    (out, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that a record survives encoding and decoding, with and without a host IP.
    #[test]
    fn record_round_trip() {
        let r = Record {
            container_id: "abc".into(),
            ifname: "eth0".into(),
            namespace: "default".into(),
            name: "web".into(),
            created_ns: 1_700_000_000_123_456_789,
            pod_ips: std::vec!["10.244.1.3".parse().unwrap()],
            mappings: std::vec![
                Mapping {
                    proto: 6,
                    host_port: 8080,
                    container_port: 80,
                    host_ip: None
                },
                Mapping {
                    proto: 17,
                    host_port: 5353,
                    container_port: 53,
                    host_ip: Some("192.0.2.2".parse().unwrap())
                },
            ],
        };
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        assert!(Record::decode("map=icmp 1 2 -\ncontainer_id=x").is_err());
        assert!(Record::decode("ifname=eth0").is_err());
    }
}
