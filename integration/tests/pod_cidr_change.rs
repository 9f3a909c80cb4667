//! A node whose pod CIDR changes under live pods: the agent restarted with another
//! `--pod-cidr`. Pods keep their addresses until deleted (a pod's address does not change
//! in Kubernetes), so the old pods must keep reaching pods and the outside, new pods get
//! addresses of the new CIDR, and the agent names the old pods in its log and status.

use test_support::{node::WORLD_IP, Node, NodeOptions};

const CIDR_A: &str = "10.244.1.0/24";
const CIDR_B: &str = "10.244.7.0/24";

/// Test that after the agent restarts with pod CIDR B, a pod made under CIDR A still reaches
/// the outside (masqueraded) and the pods of B, a new pod gets a B address, and the agent
/// names the old pod in a warning and in `sluicectl status` until it is deleted.
#[test]
fn pod_of_an_old_cidr_keeps_the_outside_after_a_cidr_change() {
    let mut node = Node::new(NodeOptions {
        pod_cidr: Some(CIDR_A.into()),
        ..Default::default()
    });
    let old = node.add_pod("old");
    assert!(cidr_contains(CIDR_A, old.ip), "{} not in {CIDR_A}", old.ip);
    assert!(
        old.ping(WORLD_IP),
        "the old pod cannot reach the outside under A"
    );

    node.stop_agent(false);
    node.options_mut().pod_cidr = Some(CIDR_B.into());
    node.start_agent();

    let new = node.add_pod("new");
    assert!(
        cidr_contains(CIDR_B, new.ip),
        "new pod got {} outside {CIDR_B}",
        new.ip
    );
    assert!(new.ping(WORLD_IP), "the new pod cannot reach the outside");
    assert!(old.ping(new.ip), "old pod cannot reach the new pod");
    assert!(new.ping(old.ip), "new pod cannot reach the old pod");
    assert!(
        old.ping(WORLD_IP),
        "the old pod lost the outside after the CIDR change:\n{}",
        node.agent_log()
    );

    let want = format!("default/old {}", old.ip);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = node.sluicectl_json(&["status"]);
        let listed: Vec<&str> = status["podsOutsidePodCidr"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        if listed == [want.as_str()] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status does not list exactly the old pod: {status:#}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let log = node.agent_log();
    assert!(
        log.lines()
            .any(|l| l.contains("outside the pod CIDR") && l.contains(&want)),
        "no warning naming the old pod:\n{log}"
    );

    // Deleted, the old pod's address leaves the node and the status.
    node.del_pod(&old);
    assert!(
        !node.ipam_addresses().contains(&old.ip.to_string()),
        "{:?}",
        node.ipam_addresses()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !node.sluicectl_json(&["status"])["podsOutsidePodCidr"]
        .as_array()
        .is_some_and(Vec::is_empty)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the deleted pod is still listed"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn cidr_contains(cidr: &str, ip: std::net::Ipv4Addr) -> bool {
    let (net, len) = cidr.split_once('/').expect("cidr");
    let net: std::net::Ipv4Addr = net.parse().expect("network");
    let mask = u32::MAX << (32 - len.parse::<u32>().expect("prefix"));
    u32::from(ip) & mask == u32::from(net) & mask
}
