//! podman 4.3 as a real, independent CNI client (../shared/notes/podman.md): it reads the
//! conflist the agent installed, execs the plugin through the same Go CNI library containerd
//! and CRI-O use, and its containers get Sluice addresses and reach each other.
//!
//! podman runs inside the node namespace (`nsenter --net`), so the plugin it execs runs where
//! the agent and the datapath are and never touches this machine's interfaces. Its config,
//! storage, run and tmp dirs are private to the test, its containers live in a cgroup of
//! their own, and a guard removes containers, cgroups and the CNI library's cache entries on
//! every exit path.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use integration::{node::WORLD_IP, unique, Node, NodeOptions};
use serde_json::Value;

const RUNC: &str = "/usr/sbin/runc";
const BUSYBOX: &str = "/bin/busybox";
/// Where libcni (inside podman) caches ADD results; podman 4.3 cannot move it.
const CNI_CACHE: &str = "/var/lib/cni";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Panics with what to install when podman's pieces are missing: CI installs them through
/// scripts/setup, so there this test must run, not skip.
fn require_podman() {
    integration::require_root();
    for (p, pkg) in [
        ("/usr/bin/podman", "podman"),
        (RUNC, "runc"),
        (BUSYBOX, "busybox-static"),
    ] {
        assert!(
            Path::new(p).exists(),
            "{p} missing: install {pkg} (scripts/setup does)"
        );
    }
}

/// A podman with private state, running in a node's namespace, and the containers it made.
struct Podman {
    /// containers.conf, root, runroot, tmp and the busybox rootfs.
    dir: tempfile::TempDir,
    node_ns: PathBuf,
    /// The cgroup (below every hierarchy's root) that holds the containers.
    cgroup: String,
    /// Names of containers created, and their ids once known.
    containers: Vec<(String, Option<String>)>,
    cache_existed: bool,
}

impl Podman {
    fn new(node: &Node) -> Self {
        require_podman();
        let dir = tempfile::Builder::new()
            .prefix("sluice-podman-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        for sub in ["root", "runroot", "tmp", "rootfs/bin"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        std::fs::copy(BUSYBOX, d.join("rootfs/bin/busybox")).expect("copy busybox");
        for tool in ["sh", "ip", "ping", "cat", "sleep", "nc", "wget"] {
            std::os::unix::fs::symlink("busybox", d.join("rootfs/bin").join(tool))
                .expect("link busybox applet");
        }
        let conf = format!(
            r#"[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{d}/events.log"
runtime = "runc"
tmp_dir = "{d}/tmp"
lock_type = "file"

[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin}", "/usr/lib/cni"]
network_config_dir = "{conf}"
"#,
            d = d.display(),
            bin = node.path("bin").display(),
            conf = node.path("conf").display(),
        );
        std::fs::write(d.join("containers.conf"), conf).expect("write containers.conf");
        Self {
            dir,
            node_ns: node.node.path(),
            cgroup: unique("sluice-podman-"),
            containers: Vec::new(),
            cache_existed: Path::new(CNI_CACHE).exists(),
        }
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    /// `podman ARGS` in the node namespace with the private config and state.
    fn command(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.node_ns.display()))
            .arg("--")
            .arg("podman");
        c.env("CONTAINERS_CONF", d.join("containers.conf"));
        c.arg("--root").arg(d.join("root"));
        c.arg("--runroot").arg(d.join("runroot"));
        c.arg("--tmpdir").arg(d.join("tmp"));
        c.args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"]);
        c.args(["--runtime", RUNC, "--events-backend", "file"]);
        c.args(args);
        c
    }

    fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run podman")
    }

    /// `podman ARGS`, panicking with podman's stderr if it fails.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed ({}): {}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Starts a detached busybox container on the sluice network.
    fn run_detached(&mut self, name: &str) {
        self.containers.push((name.to_string(), None));
        let rootfs = self.rootfs();
        let parent = format!("/{}", self.cgroup);
        let out = self.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "sluice",
            "--cgroup-parent",
            &parent,
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--rootfs",
            rootfs.to_str().expect("utf-8 path"),
            "sleep",
            "300",
        ]);
        let id = out.trim().lines().last().unwrap_or_default().to_string();
        self.containers.last_mut().expect("just pushed").1 = Some(id);
    }

    /// Like [`Podman::run_detached`], with `podman run -p PUBLISH`.
    fn run_published(&mut self, name: &str, publish: &str) {
        self.containers.push((name.to_string(), None));
        let (rootfs, parent) = (self.rootfs(), format!("/{}", self.cgroup));
        let out = self.ok(&[
            "run",
            "-d",
            "-p",
            publish,
            "--name",
            name,
            "--network",
            "sluice",
            "--cgroup-parent",
            &parent,
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--rootfs",
            rootfs.to_str().expect("utf-8 path"),
            "sleep",
            "300",
        ]);
        let id = out.trim().lines().last().unwrap_or_default().to_string();
        self.containers.last_mut().expect("just pushed").1 = Some(id);
    }

    /// `podman inspect NAME`, the one object.
    fn inspect(&self, name: &str) -> Value {
        let v: Value =
            serde_json::from_str(&self.ok(&["inspect", name])).expect("podman inspect prints JSON");
        v[0].clone()
    }

    /// Removes containers without waiting for `sleep` to ignore SIGTERM.
    fn rm(&self, names: &[&str]) -> Output {
        let mut args = vec!["rm", "-f", "-t", "0"];
        args.extend(names);
        self.output(&args)
    }

    fn cache_entries(&self, id: &str) -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(Path::new(CNI_CACHE).join("results")) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.contains(id))
            })
            .collect()
    }
}

/// Removes a cgroup directory and everything below it, deepest first.
fn remove_cgroup(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup(&e.path())?;
        }
    }
    std::fs::remove_dir(dir)
}

impl Drop for Podman {
    fn drop(&mut self) {
        let names: Vec<&str> = self.containers.iter().map(|(n, _)| n.as_str()).collect();
        if !names.is_empty() {
            let out = self.rm(&names);
            if !out.status.success() {
                eprintln!("podman rm -f {names:?}: {}", text(&out.stderr));
            }
        }
        // Processes leave their cgroups a moment after podman returns.
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.flatten() {
                let cg = h.path().join(&self.cgroup);
                let deadline = Instant::now() + Duration::from_secs(5);
                while cg.exists() {
                    match remove_cgroup(&cg) {
                        Ok(()) => break,
                        Err(e) if Instant::now() > deadline => {
                            eprintln!("cannot remove cgroup {}: {e}", cg.display());
                            break;
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            }
        }
        for (_, id) in &self.containers {
            if let Some(id) = id.as_deref().filter(|id| !id.is_empty()) {
                for p in self.cache_entries(id) {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
        if !self.cache_existed {
            // Only if empty: another runtime may have started using it meanwhile.
            let _ = std::fs::remove_dir(Path::new(CNI_CACHE).join("results"));
            let _ = std::fs::remove_dir(CNI_CACHE);
        }
    }
}

/// Test that podman, reading the node's CNI config dir, lists the sluice network.
#[test]
fn podman_lists_sluice_network() {
    let node = Node::new(NodeOptions::default());
    let podman = Podman::new(&node);
    let out = podman.ok(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    assert!(
        out.lines().any(|l| l.trim() == "sluice sluice"),
        "podman does not see the sluice network (a conflist it cannot parse is only a \
         warning):\n{out}"
    );
    let v: Value = serde_json::from_str(&podman.ok(&["network", "inspect", "sluice"]))
        .expect("network inspect prints JSON");
    println!("podman sees: {}", v[0]);
}

/// Test that two podman containers on the sluice network get addresses in the pod CIDR,
/// reach each other and the outside, show up as endpoints named after the containers, and
/// that `podman rm -f` DELs them leaving no endpoint, address, veth, namespace or cache entry.
#[test]
fn podman_containers_reach_each_other_and_rm_cleans_up() {
    let node = Node::new(NodeOptions::default());
    let mut podman = Podman::new(&node);
    let (x, y) = (unique("pa"), unique("pb"));
    podman.run_detached(&x);
    podman.run_detached(&y);

    let mut ips = Vec::new();
    let mut sandboxes = Vec::new();
    for name in [&x, &y] {
        let v = podman.inspect(name);
        let net = &v["NetworkSettings"]["Networks"]["sluice"];
        let ip: Ipv4Addr = net["IPAddress"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{name} has no sluice address: {}", v["NetworkSettings"]));
        assert_eq!(
            ip.octets()[..3],
            [10, 244, 1],
            "{name} got {ip}, outside the pod CIDR"
        );
        assert_eq!(net["Gateway"], "169.254.1.1", "{name}: {net}");
        sandboxes.push(PathBuf::from(
            v["NetworkSettings"]["SandboxKey"]
                .as_str()
                .unwrap_or_default(),
        ));
        ips.push(ip);
    }
    assert_ne!(ips[0], ips[1]);

    let ping = |from: &str, to: Ipv4Addr| {
        let dst = to.to_string();
        podman.output(&["exec", from, "ping", "-c1", "-W2", &dst])
    };
    let out = ping(&x, ips[1]);
    assert!(
        out.status.success(),
        "{x} cannot ping {y}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(ping(&y, ips[0]).status.success(), "{y} cannot ping {x}");
    assert!(
        ping(&x, WORLD_IP).status.success(),
        "{x} cannot reach the outside"
    );

    let mut eps: Vec<(String, Ipv4Addr)> = node
        .endpoints()
        .into_iter()
        .map(|e| match e.addr {
            std::net::IpAddr::V4(a) => (e.name, a),
            other => panic!("unexpected endpoint address {other}"),
        })
        .collect();
    eps.sort();
    let mut want = vec![(x.clone(), ips[0]), (y.clone(), ips[1])];
    want.sort();
    assert_eq!(eps, want, "endpoints are not named after the containers");
    assert_eq!(node.host_veths().len(), 2);

    let out = podman.rm(&[&x, &y]);
    assert!(out.status.success(), "podman rm -f: {}", text(&out.stderr));
    assert!(
        node.endpoints().is_empty(),
        "endpoints left: {:?}",
        node.endpoints()
    );
    assert!(
        node.ipam_addresses().is_empty(),
        "addresses left: {:?}",
        node.ipam_addresses()
    );
    assert!(
        node.host_veths().is_empty(),
        "host veths left: {:?}",
        node.host_veths()
    );
    for s in &sandboxes {
        assert!(!s.exists(), "container namespace {} left", s.display());
    }
    for (name, id) in &podman.containers {
        let id = id.as_deref().unwrap_or_default();
        assert!(
            podman.cache_entries(id).is_empty(),
            "CNI cache entry of {name} left after DEL"
        );
    }
    let left = podman.ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(left.trim().is_empty(), "containers left: {left}");
}

/// Test that `podman run -p HOST:CONTAINER` (podman passes it as `runtimeConfig.portMappings`,
/// the conflist declaring the capability) takes traffic from outside the node to
/// NODE_IP:HOST to the container's port, and that `podman rm` removes the mapping.
#[test]
fn podman_publish_port_is_a_host_port() {
    let node = Node::new(NodeOptions::default());
    let mut podman = Podman::new(&node);
    let name = unique("pw");
    podman.run_published(&name, "18083:8080");
    let v = podman.inspect(&name);
    let sandbox = v["NetworkSettings"]["SandboxKey"]
        .as_str()
        .unwrap_or_else(|| panic!("no sandbox: {}", v["NetworkSettings"]))
        .to_string();
    /// Kills the server on every exit path.
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut server = Command::new("nsenter")
        .arg(format!("--net={sandbox}"))
        .arg("--")
        .arg(integration::bin("sluice-svcprobe"))
        .args(["serve", "--name", "podman-web", "--tcp", "8080"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map(Server)
        .expect("start server");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.0.stdout.as_mut().unwrap()),
        &mut line,
    )
    .expect("server output");
    assert_eq!(line.trim(), "ready");
    let frontend = format!("{}:18083/TCP", integration::node::NODE_IP);
    let programmed = |node: &Node| {
        node.sluicectl_json(&["services"])
            .as_array()
            .is_some_and(|a| {
                a.iter()
                    .any(|f| f["kind"] == "HostPort" && f["frontend"] == frontend)
            })
    };
    let t = Instant::now();
    while !programmed(&node) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{frontend} not programmed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = node
        .outside
        .command(integration::bin("sluice-svcprobe"))
        .args(["probe", "--count", "3", "--to"])
        .arg(format!("{}:18083", integration::node::NODE_IP))
        .output()
        .expect("probe");
    drop(server);
    let report: Value = serde_json::from_slice(&out.stdout).expect("probe report");
    assert_eq!(report["answers"]["podman-web"], 3, "{report:#}");

    let out = podman.rm(&[&name]);
    assert!(out.status.success(), "podman rm -f: {}", text(&out.stderr));
    let t = Instant::now();
    while programmed(&node) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{frontend} not removed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
