//! The Success result (spec §5): one version-independent model, printed in the exact shape of
//! the config's `cniVersion` (runtimes parse stdout with that version and fail otherwise) and
//! read back from any shape ≥ 0.3.0 (a `prevResult` may come from an older cache).
//!
//! Shapes: 0.3.x/0.4.0 carry `ips[].version` and always a `dns` object; 1.x drop both when
//! empty (Go `types100` deletes an empty `dns`); only 1.1.0 carries `interfaces[].mtu`.
//! Empty lists and unset fields are omitted, as Go's `omitempty` does. The 1.1.0 route extras
//! (`mtu`, `table`, …) and `socketPath`/`pciID` are not modelled: we are the first plugin of
//! the chain, so no `prevResult` we receive carries them.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::{Map, Value};

use crate::config::parse_version;
use crate::error::CniError;

/// A Success result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

/// `interfaces[]`: host-side interfaces have no `sandbox`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Interface {
    pub name: String,
    /// Lower-case `aa:bb:cc:dd:ee:ff`; podman fails on a container interface without one.
    pub mac: Option<String>,
    /// The netns path (`CNI_NETNS`) for the container interface.
    pub sandbox: Option<String>,
    /// Printed for 1.1.0 only.
    pub mtu: Option<u32>,
}

/// `ips[]`.
#[derive(Debug, Clone, PartialEq)]
pub struct IpConfig {
    /// Address with its prefix length, e.g. `10.244.1.7/24`.
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces` (containerd attributes an IP without it to `eth0`).
    pub interface: Option<u32>,
}

/// `routes[]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
}

/// `dns`, also the shape of the config's `dns` key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        put_list(&mut m, "nameservers", &self.nameservers);
        if let Some(d) = &self.domain {
            m.insert("domain".into(), d.as_str().into());
        }
        put_list(&mut m, "search", &self.search);
        put_list(&mut m, "options", &self.options);
        Value::Object(m)
    }

    /// Decode a `dns` object; `null` is empty. `Err` is a reason for the caller's error.
    pub(crate) fn from_json(v: &Value) -> Result<Dns, String> {
        if v.is_null() {
            return Ok(Dns::default());
        }
        let obj = v.as_object().ok_or("dns must be an object")?;
        Ok(Dns {
            nameservers: str_list(obj, "nameservers")?,
            domain: opt_str(obj, "domain")?,
            search: str_list(obj, "search")?,
            options: str_list(obj, "options")?,
        })
    }
}

impl CniResult {
    /// The result in the shape of `version`; a version that does not parse gets the newest
    /// shape (configs are validated before this is called).
    pub fn to_json(&self, version: &str) -> Value {
        let v = parse_version(version);
        let legacy = v.is_some_and(|v| v < (1, 0, 0));
        let with_mtu = v.is_none_or(|v| v >= (1, 1, 0));

        let mut out = Map::new();
        out.insert("cniVersion".into(), version.into());
        if !self.interfaces.is_empty() {
            let list = self.interfaces.iter().map(|i| {
                let mut m = Map::new();
                m.insert("name".into(), i.name.as_str().into());
                put_opt_str(&mut m, "mac", i.mac.as_deref());
                put_opt_str(&mut m, "sandbox", i.sandbox.as_deref());
                if let Some(mtu) = i.mtu.filter(|_| with_mtu) {
                    m.insert("mtu".into(), mtu.into());
                }
                Value::Object(m)
            });
            out.insert("interfaces".into(), list.collect());
        }
        if !self.ips.is_empty() {
            let list = self.ips.iter().map(|ip| {
                let mut m = Map::new();
                if legacy {
                    let family = if ip.address.is_ipv4() { "4" } else { "6" };
                    m.insert("version".into(), family.into());
                }
                if let Some(idx) = ip.interface {
                    m.insert("interface".into(), idx.into());
                }
                m.insert("address".into(), ip.address.to_string().into());
                if let Some(gw) = ip.gateway {
                    m.insert("gateway".into(), gw.to_string().into());
                }
                Value::Object(m)
            });
            out.insert("ips".into(), list.collect());
        }
        if !self.routes.is_empty() {
            let list = self.routes.iter().map(|r| {
                let mut m = Map::new();
                m.insert("dst".into(), r.dst.to_string().into());
                if let Some(gw) = r.gw {
                    m.insert("gw".into(), gw.to_string().into());
                }
                Value::Object(m)
            });
            out.insert("routes".into(), list.collect());
        }
        if legacy || !self.dns.is_empty() {
            out.insert("dns".into(), self.dns.to_json());
        }
        Value::Object(out)
    }

    /// Decode a result of any version ≥ 0.3.0, with or without `ips[].version` and
    /// `cniVersion`. Unknown keys are ignored; a wrong shape is code 6.
    pub fn from_json(v: &Value) -> Result<CniResult, CniError> {
        decode_result(v).map_err(|reason| CniError::Malformed {
            what: "CNI result".into(),
            reason,
        })
    }
}

/// [`CniResult::from_json`] with the bare reason, for callers that name the document.
pub(crate) fn decode_result(v: &Value) -> Result<CniResult, String> {
    let obj = v.as_object().ok_or("result must be a JSON object")?;
    if let Some(version) = opt_str(obj, "cniVersion")? {
        match parse_version(&version) {
            Some(p) if p >= (0, 3, 0) => {}
            _ => {
                return Err(format!(
                    "unsupported result version {}",
                    crate::error::quote(&version)
                ))
            }
        }
    }
    let interfaces = list(obj, "interfaces")?
        .iter()
        .map(|i| {
            let i = i.as_object().ok_or("interfaces[] must be objects")?;
            Ok(Interface {
                name: opt_str(i, "name")?.unwrap_or_default(),
                mac: opt_str(i, "mac")?,
                sandbox: opt_str(i, "sandbox")?,
                mtu: opt_u32(i, "mtu")?.filter(|m| *m != 0),
            })
        })
        .collect::<Result<_, String>>()?;
    let ips = list(obj, "ips")?
        .iter()
        .map(|ip| {
            let ip = ip.as_object().ok_or("ips[] must be objects")?;
            Ok(IpConfig {
                address: req_cidr(ip, "address")?,
                gateway: opt_ip(ip, "gateway")?,
                interface: opt_u32(ip, "interface")?,
            })
        })
        .collect::<Result<_, String>>()?;
    let routes = list(obj, "routes")?
        .iter()
        .map(|r| {
            let r = r.as_object().ok_or("routes[] must be objects")?;
            Ok(Route {
                dst: req_cidr(r, "dst")?,
                gw: opt_ip(r, "gw")?,
            })
        })
        .collect::<Result<_, String>>()?;
    let dns = Dns::from_json(obj.get("dns").unwrap_or(&Value::Null))?;
    Ok(CniResult {
        interfaces,
        ips,
        routes,
        dns,
    })
}

/// Parse `addr/prefix` strictly (like Go's `net.ParseCIDR`): the prefix is required and
/// decimal, the address keeps its host bits (`10.244.1.7/24`).
pub(crate) fn parse_cidr(s: &str) -> Option<IpNetwork> {
    let (addr, prefix) = s.split_once('/')?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    IpNetwork::new(addr.parse().ok()?, prefix.parse().ok()?).ok()
}

fn put_list(m: &mut Map<String, Value>, key: &str, items: &[String]) {
    if !items.is_empty() {
        m.insert(key.into(), items.iter().map(String::as_str).collect());
    }
}

fn put_opt_str(m: &mut Map<String, Value>, key: &str, v: Option<&str>) {
    if let Some(v) = v.filter(|v| !v.is_empty()) {
        m.insert(key.into(), v.into());
    }
}

/// An optional string; absent, `null` and `""` are all `None` (Go's zero value).
pub(crate) fn opt_str(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "{key} must be a string, got {}",
            crate::error::shown(other)
        )),
    }
}

fn list<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a [Value], String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err(format!(
            "{key} must be an array, got {}",
            crate::error::shown(other)
        )),
    }
}

pub(crate) fn str_list(obj: &Map<String, Value>, key: &str) -> Result<Vec<String>, String> {
    list(obj, key)?
        .iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.clone()),
            other => Err(format!(
                "{key}[] must be strings, got {}",
                crate::error::shown(other)
            )),
        })
        .collect()
}

fn opt_u32(obj: &Map<String, Value>, key: &str) -> Result<Option<u32>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                format!(
                    "{key} must be an unsigned 32-bit integer, got {}",
                    crate::error::shown(v)
                )
            }),
    }
}

fn opt_ip(obj: &Map<String, Value>, key: &str) -> Result<Option<IpAddr>, String> {
    opt_str(obj, key)?
        .map(|s| {
            s.parse()
                .map_err(|_| format!("{key}: invalid address {}", crate::error::quote(&s)))
        })
        .transpose()
}

fn req_cidr(obj: &Map<String, Value>, key: &str) -> Result<IpNetwork, String> {
    let s = opt_str(obj, key)?.ok_or_else(|| format!("{key} is required"))?;
    parse_cidr(&s).ok_or_else(|| format!("{key}: invalid CIDR {}", crate::error::quote(&s)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SUPPORTED_VERSIONS;
    use serde_json::json;

    /// The ptp-style result of spec §5.2: host veth, container eth0, one IPv4, default route.
    fn spec_example() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "veth1a2b3c4d".into(),
                    mac: Some("aa:bb:cc:00:00:01".into()),
                    ..Interface::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("aa:bb:cc:00:00:02".into()),
                    sandbox: Some("/var/run/netns/cni-1234".into()),
                    mtu: None,
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.1.7/24".parse().unwrap(),
                gateway: Some("10.244.1.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.244.1.1".parse().unwrap()),
            }],
            dns: Dns::default(),
        }
    }

    /// A dual-stack result with DNS, MTU and a gateway-less IP and route.
    fn full_example() -> CniResult {
        let mut r = spec_example();
        r.interfaces[1].mtu = Some(1450);
        r.ips.push(IpConfig {
            address: "fd00:10:244:1::7/64".parse().unwrap(),
            gateway: None,
            interface: Some(1),
        });
        r.routes.push(Route {
            dst: "::/0".parse().unwrap(),
            gw: None,
        });
        r.dns = Dns {
            nameservers: vec!["10.96.0.10".into()],
            domain: Some("cluster.local".into()),
            search: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        r
    }

    /// Test that 0.4.0, 0.3.1 and 0.3.0 output equals the spec §5.2 example, `dns: {}` included.
    #[test]
    fn result_golden_0x_matches_spec_example() {
        for version in ["0.3.0", "0.3.1", "0.4.0"] {
            let golden = json!({"cniVersion": version,
             "interfaces":[{"name":"veth1a2b3c4d","mac":"aa:bb:cc:00:00:01"},
                           {"name":"eth0","mac":"aa:bb:cc:00:00:02","sandbox":"/var/run/netns/cni-1234"}],
             "ips":[{"version":"4","interface":1,"address":"10.244.1.7/24","gateway":"10.244.1.1"}],
             "routes":[{"dst":"0.0.0.0/0","gw":"10.244.1.1"}],
             "dns":{}});
            assert_eq!(spec_example().to_json(version), golden, "{version}");
        }
    }

    /// Test that 1.0.0 output is the §5.2 example without `ips[].version` (and without empty dns).
    #[test]
    fn result_golden_1_0_0_matches_spec_example() {
        let golden = json!({"cniVersion":"1.0.0",
         "interfaces":[{"name":"veth1a2b3c4d","mac":"aa:bb:cc:00:00:01"},
                       {"name":"eth0","mac":"aa:bb:cc:00:00:02","sandbox":"/var/run/netns/cni-1234"}],
         "ips":[{"interface":1,"address":"10.244.1.7/24","gateway":"10.244.1.1"}],
         "routes":[{"dst":"0.0.0.0/0","gw":"10.244.1.1"}]});
        assert_eq!(spec_example().to_json("1.0.0"), golden);
    }

    /// Test that 1.1.0 output is like 1.0.0 plus the interface MTU.
    #[test]
    fn result_golden_1_1_0_has_mtu() {
        let mut r = spec_example();
        r.interfaces[1].mtu = Some(1450);
        let golden = json!({"cniVersion":"1.1.0",
         "interfaces":[{"name":"veth1a2b3c4d","mac":"aa:bb:cc:00:00:01"},
                       {"name":"eth0","mac":"aa:bb:cc:00:00:02","sandbox":"/var/run/netns/cni-1234","mtu":1450}],
         "ips":[{"interface":1,"address":"10.244.1.7/24","gateway":"10.244.1.1"}],
         "routes":[{"dst":"0.0.0.0/0","gw":"10.244.1.1"}]});
        assert_eq!(r.to_json("1.1.0"), golden);
        assert!(r.to_json("1.0.0")["interfaces"][1].get("mtu").is_none());
        assert!(r.to_json("0.4.0")["interfaces"][1].get("mtu").is_none());
    }

    /// Test that every 0.x version has `ips[].version` ("4"/"6" by family) and no 1.x has it.
    #[test]
    fn result_ip_version_only_in_0x() {
        let r = full_example();
        for version in SUPPORTED_VERSIONS {
            let out = r.to_json(version);
            let ips = out["ips"].as_array().unwrap();
            if version.starts_with("0.") {
                assert_eq!(ips[0]["version"], "4", "{version}");
                assert_eq!(ips[1]["version"], "6", "{version}");
            } else {
                assert!(
                    ips.iter().all(|ip| ip.get("version").is_none()),
                    "{version}"
                );
            }
        }
    }

    /// Test that every supported version round-trips through JSON (mtu only where printed).
    #[test]
    fn result_round_trips_every_version() {
        for version in SUPPORTED_VERSIONS {
            let mut want = full_example();
            if version != "1.1.0" {
                want.interfaces[1].mtu = None;
            }
            let json = full_example().to_json(version);
            assert_eq!(json["cniVersion"], version);
            assert_eq!(CniResult::from_json(&json).unwrap(), want, "{version}");
            // Through text too, as a prevResult arrives.
            let text = serde_json::to_string(&json).unwrap();
            let reparsed: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(CniResult::from_json(&reparsed).unwrap(), want, "{version}");
        }
    }

    /// Test that a result converts between versions: 0.4.0 in, 1.0.0 out and back.
    #[test]
    fn result_converts_between_versions() {
        let from_04 = CniResult::from_json(&spec_example().to_json("0.4.0")).unwrap();
        assert_eq!(from_04.to_json("1.0.0"), spec_example().to_json("1.0.0"));
        let from_10 = CniResult::from_json(&spec_example().to_json("1.0.0")).unwrap();
        assert_eq!(from_10.to_json("0.3.1"), spec_example().to_json("0.3.1"));
    }

    /// Test that dns is `{}` in 0.x when empty, omitted in 1.x when empty, present when set.
    #[test]
    fn result_dns_presence_by_version() {
        let empty = CniResult::default();
        assert_eq!(
            empty.to_json("0.3.1"),
            json!({"cniVersion":"0.3.1","dns":{}})
        );
        assert_eq!(empty.to_json("1.0.0"), json!({"cniVersion":"1.0.0"}));
        assert_eq!(empty.to_json("1.1.0"), json!({"cniVersion":"1.1.0"}));
        let dns = full_example().to_json("1.0.0")["dns"].clone();
        assert_eq!(
            dns,
            json!({"nameservers":["10.96.0.10"],"domain":"cluster.local",
                   "search":["default.svc.cluster.local","svc.cluster.local"],"options":["ndots:5"]})
        );
    }

    /// Test that an IPAM-style abbreviated result (no interfaces, no interface index) is empty-free.
    #[test]
    fn result_abbreviated_ipam_shape() {
        let r = CniResult {
            ips: vec![IpConfig {
                address: "10.1.0.5/16".parse().unwrap(),
                gateway: None,
                interface: None,
            }],
            ..CniResult::default()
        };
        assert_eq!(
            r.to_json("1.0.0"),
            json!({"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5/16"}]})
        );
    }

    /// Test that decoding tolerates Go's zero values, missing cniVersion and unknown keys.
    #[test]
    fn result_from_json_liberal() {
        let v = json!({
            "interfaces":[{"name":"eth0","mac":"","sandbox":"","mtu":0,"socketPath":"/x","pciID":""}],
            "ips":[{"version":"4","address":"10.0.0.2/24","gateway":""}],
            "routes":[{"dst":"10.0.0.0/8","mtu":1400,"table":100}],
            "dns":{"nameservers":null},
            "someFutureKey": true
        });
        let r = CniResult::from_json(&v).unwrap();
        assert_eq!(
            r.interfaces,
            vec![Interface {
                name: "eth0".into(),
                ..Interface::default()
            }]
        );
        assert_eq!(r.ips[0].gateway, None);
        assert_eq!(r.routes[0].gw, None);
        assert!(r.dns.is_empty());
        assert_eq!(
            CniResult::from_json(&json!({})).unwrap(),
            CniResult::default()
        );
    }

    /// Test that malformed results are code 6: wrong types, bad CIDRs, legacy versions.
    #[test]
    fn result_from_json_rejects_malformed() {
        for bad in [
            json!([]),
            json!("x"),
            json!({"cniVersion":"0.2.0","ip4":{"ip":"10.1.0.5/16"}}),
            json!({"cniVersion":"abc"}),
            json!({"cniVersion":1}),
            json!({"interfaces":{}}),
            json!({"interfaces":["eth0"]}),
            json!({"interfaces":[{"name":"eth0","mtu":-1}]}),
            json!({"ips":[{"gateway":"10.0.0.1"}]}),
            json!({"ips":[{"address":"10.0.0.2"}]}),
            json!({"ips":[{"address":"10.0.0.2/33"}]}),
            json!({"ips":[{"address":"10.0.0.2/255.255.255.0"}]}),
            json!({"ips":[{"address":"10.0.0.2/24","gateway":"nope"}]}),
            json!({"ips":[{"address":"10.0.0.2/24","interface":"1"}]}),
            json!({"routes":[{"dst":"0.0.0.0/0","gw":5}]}),
            json!({"dns":{"nameservers":"10.0.0.10"}}),
            json!({"dns":[]}),
        ] {
            let err = CniResult::from_json(&bad).unwrap_err();
            assert_eq!(err.code(), 6, "{bad}");
        }
    }

    /// Test that CIDR parsing keeps host bits and requires a decimal prefix.
    #[test]
    fn parse_cidr_strict() {
        let n = parse_cidr("10.244.1.7/24").unwrap();
        assert_eq!(n.ip(), "10.244.1.7".parse::<IpAddr>().unwrap());
        assert_eq!(n.prefix(), 24);
        assert!(parse_cidr("2001:db8::1/64").is_some());
        for bad in [
            "10.0.0.1",
            "10.0.0.1/",
            "10.0.0.1/+8",
            "10.0.0.1/33",
            "x/8",
            "::/129",
        ] {
            assert!(parse_cidr(bad).is_none(), "{bad}");
        }
    }
}
