//! Smoke test of socket acceleration: a TCP transfer between two pods whose processes are in
//! the agent's cgroup goes socket to socket (sockops + sk_msg), and arrives intact.

use std::process::Stdio;

use test_support::{Node, NodeOptions};

/// Test that a 1 MiB transfer between two pods in the agent's cgroup is accelerated (both
/// sockets enter the sockhash, the payload is redirected by sk_msg) and arrives byte for byte.
#[test]
fn pod_to_pod_transfer_is_accelerated_and_intact() {
    let node = Node::new(NodeOptions::default());
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    let data: Vec<u8> = (0..1_048_576u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let out_file = node.dir.path().join("received");
    let mut server = node
        .pod_command(&b.ns, "sh")
        .arg("-c")
        .arg(format!(
            "nc -n -l -s {} -p 9000 > {}",
            b.ip,
            out_file.display()
        ))
        .spawn()
        .expect("start server");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut client = node
        .pod_command(&a.ns, "nc")
        .args(["-n", "-q", "1", "-w", "5", &b.ip.to_string(), "9000"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("start client");
    use std::io::Write as _;
    client.stdin.take().unwrap().write_all(&data).unwrap();
    assert!(client.wait().unwrap().success(), "client failed");
    assert!(server.wait().unwrap().success(), "server failed");
    let got = std::fs::read(&out_file).unwrap();
    assert_eq!(got.len(), data.len(), "length differs");
    assert!(got == data, "payload differs");
    let (accelerated, _) = node.counter("sock:accelerated");
    let (_, redirected_bytes) = node.counter("sock:redirected");
    assert!(accelerated >= 2, "sockets not accelerated: {accelerated}");
    assert!(
        redirected_bytes >= data.len() as u64,
        "only {redirected_bytes} bytes redirected"
    );
}
