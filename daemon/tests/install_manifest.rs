//! `manifests/sluice.yaml`, how a cluster installs Sluice, checked against what it must be: valid
//! Kubernetes objects (parsed into the API's own types), RBAC that lets
//! the agent list and watch every kind its watchers follow, and a DaemonSet whose agent flags
//! all exist in this build's `sluice-agent`.

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Namespace, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use serde::Deserialize as _;

fn documents() -> Vec<serde_yaml_ng::Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/sluice.yaml");
    let text = std::fs::read_to_string(path).expect("read manifests/sluice.yaml");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde_yaml_ng::Value::deserialize(d).expect("valid YAML"))
        .collect()
}

fn of_kind<T: serde::de::DeserializeOwned>(kind: &str) -> Vec<T> {
    documents()
        .into_iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .map(|d| {
            let json = serde_json::to_value(&d).unwrap();
            serde_json::from_value(json).unwrap_or_else(|e| panic!("{kind}: {e}"))
        })
        .collect()
}

/// Test that every document is an object of the kind it claims, in the agent's namespace.
#[test]
fn install_manifest_objects_parse() {
    assert_eq!(of_kind::<Namespace>("Namespace").len(), 1);
    assert_eq!(of_kind::<ServiceAccount>("ServiceAccount").len(), 1);
    assert_eq!(of_kind::<ClusterRole>("ClusterRole").len(), 1);
    assert_eq!(of_kind::<ClusterRoleBinding>("ClusterRoleBinding").len(), 1);
    let ds = of_kind::<DaemonSet>("DaemonSet");
    assert_eq!(ds.len(), 1);
    assert_eq!(documents().len(), 5, "unexpected extra documents");
    let pod = ds[0].spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(
        pod.host_network,
        Some(true),
        "the agent programs the node's network"
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("sluice-agent"));
    let env = pod.containers[0].env.as_ref().unwrap();
    let node = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME");
    assert_eq!(
        node.value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "spec.nodeName"
    );
}

/// Test that the ClusterRole grants list and watch on every kind the agent's watchers follow
/// (Services, Pods, Namespaces, Nodes, EndpointSlices, NetworkPolicies) and writes nothing.
#[test]
fn install_manifest_rbac_covers_watchers() {
    let role = &of_kind::<ClusterRole>("ClusterRole")[0];
    let rules = role.rules.as_ref().unwrap();
    for (group, resource) in [
        ("", "services"),
        ("", "pods"),
        ("", "namespaces"),
        ("", "nodes"),
        ("discovery.k8s.io", "endpointslices"),
        ("networking.k8s.io", "networkpolicies"),
    ] {
        let ok = rules.iter().any(|r| {
            r.api_groups
                .as_ref()
                .is_some_and(|g| g.iter().any(|x| x == group))
                && r.resources
                    .as_ref()
                    .is_some_and(|rs| rs.iter().any(|x| x == resource))
                && ["list", "watch"]
                    .iter()
                    .all(|v| r.verbs.iter().any(|x| x == v))
        });
        assert!(ok, "no list+watch on {group}/{resource}");
    }
    for r in rules {
        for v in &r.verbs {
            assert!(
                ["get", "list", "watch"].contains(&v.as_str()),
                "writes: {v}"
            );
        }
    }
}

/// Test that every flag the DaemonSet passes is one this build's sluice-agent accepts.
#[test]
fn install_manifest_flags_exist() {
    let ds = &of_kind::<DaemonSet>("DaemonSet")[0];
    let c = &ds
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-agent"))
        .arg("--help")
        .output()
        .expect("run sluice-agent --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for a in c.args.as_ref().unwrap() {
        let flag = a.split('=').next().unwrap();
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "sluice-agent has no flag {flag}"
        );
    }
}
