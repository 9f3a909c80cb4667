//! podman 4.3 as a real, independent CNI client (installed by scripts/setup): it reads the
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

use serde_json::Value;
use test_support::{node::WORLD_IP, unique, Node, NodeOptions};

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
    test_support::require_root();
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
    /// The node's own cgroup when the containers live below it (`Podman::in_node_cgroup`):
    /// runc creates it in the cgroup v1 hierarchies too, where it is ours to remove.
    node_cgroup: Option<String>,
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
            node_cgroup: None,
            containers: Vec::new(),
            cache_existed: Path::new(CNI_CACHE).exists(),
        }
    }

    /// A podman whose containers live below the node's cgroup (the agent's `--cgroup-root`),
    /// as a kubelet's pods live below its pods cgroup: their sockets are seen by sockops.
    fn in_node_cgroup(node: &Node) -> Self {
        let mut p = Self::new(node);
        let v2 = daemon::node::cgroup2_mount().expect("a cgroup v2 mount");
        let rel = node
            .cgroup
            .strip_prefix(&v2)
            .expect("the node's cgroup is below the v2 mount")
            .to_str()
            .expect("utf-8 cgroup name")
            .to_string();
        p.cgroup = format!("{rel}/{}", p.cgroup);
        p.node_cgroup = Some(rel);
        p
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
        self.run_detached_with(name, &[], &["sleep", "300"]);
    }

    /// Starts a detached container on the sluice network running `cmd`, with `extra`
    /// arguments to `podman run`.
    fn run_detached_with(&mut self, name: &str, extra: &[&str], cmd: &[&str]) {
        self.containers.push((name.to_string(), None));
        let rootfs = self.rootfs();
        let parent = format!("/{}", self.cgroup);
        let mut args = vec![
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
        ];
        args.extend(extra);
        args.extend(["--rootfs", rootfs.to_str().expect("utf-8 path")]);
        args.extend(cmd);
        let out = self.ok(&args);
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
        if let (Some(node_cg), Ok(hierarchies)) =
            (&self.node_cgroup, std::fs::read_dir("/sys/fs/cgroup"))
        {
            let v2 = daemon::node::cgroup2_mount();
            for h in hierarchies.flatten() {
                // The node's v2 cgroup is the node's to remove.
                if Some(h.path()) != v2 {
                    let _ = std::fs::remove_dir(h.path().join(node_cg));
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

/// The bind mounts that let the host's `sluice-sockcheck` (a dynamically linked binary) run in
/// the busybox rootfs: the binary and the C library it loads, read-only.
fn sockcheck_mounts() -> Vec<String> {
    let bin = test_support::sockcheck::sockcheck();
    vec![
        "-v".into(),
        format!("{}:/bin/sluice-sockcheck:ro", bin.display()),
        "-v".into(),
        "/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu:ro".into(),
        "-v".into(),
        "/lib64:/lib64:ro".into(),
    ]
}

/// Test, through podman as the CNI client, that a server in a container listening on `[::]`
/// (`sluice-sockcheck`, one AF_INET6 socket with `IPV6_V6ONLY` cleared, as Go's `:port`
/// listens; busybox `nc -l` binds `[::]` too) and an IPv4 client in another container are
/// accelerated on both ends: while the connection is open, both sockets are in the sockhash
/// under the connection's IPv4 addresses, each the other's peer; echoes and half-close
/// exchanges read as event loops do arrive intact, and the replies are redirected.
#[test]
fn podman_dual_stack_server_accelerated_on_both_ends() {
    use test_support::sockcheck::{sockhash_keys, Accel, Proc};

    let node = Node::new(NodeOptions::default());
    let mut podman = Podman::in_node_cgroup(&node);
    let (x, y) = (unique("px"), unique("py"));
    let mounts = sockcheck_mounts();
    let mounts: Vec<&str> = mounts.iter().map(String::as_str).collect();
    // stdin stays open (the server reports and exits at EOF) until `podman rm`.
    podman.run_detached_with(
        &x,
        &mounts,
        &[
            "sh",
            "-c",
            "sleep 300 | /bin/sluice-sockcheck server --listen [::]:9000",
        ],
    );
    podman.run_detached_with(&y, &mounts, &["sleep", "300"]);
    let ip = |name: &str| -> Ipv4Addr {
        let v = podman.inspect(name);
        v["NetworkSettings"]["Networks"]["sluice"]["IPAddress"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{name} has no sluice address"))
    };
    let (xip, yip) = (ip(&x), ip(&y));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !podman.ok(&["logs", &x]).contains("ready") {
        assert!(
            Instant::now() < deadline,
            "the server in {x} never got ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // It listens on [::] (an AF_INET6 socket: /proc/net/tcp6, port 9000 = 0x2328, LISTEN).
    let tcp6 = podman.ok(&["exec", &x, "cat", "/proc/net/tcp6"]);
    assert!(
        tcp6.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == "00000000000000000000000000000000:2328" && f[3] == "0A"
        }),
        "no [::]:9000 listener in {x}:\n{tcp6}"
    );

    let to = format!("{xip}:9000");
    let exec = |args: &[&str]| {
        let mut c = podman.command(&["exec", "-i", &y, "/bin/sluice-sockcheck"]);
        c.args(args);
        Proc::start(c, format!("sluice-sockcheck {} in {y}", args.join(" ")))
    };
    let before = Accel::read(&node);
    let mut p = exec(&["hold", "--to", &to, "--msgs", "4"]);
    assert_eq!(p.line(), "connected", "{}", p.what);
    p.say("round");
    assert_eq!(p.line(), "ok 0", "{}", p.what);
    let keys = sockhash_keys(&node);
    p.report();
    let v4 = |a: &[u8; 16]| Ipv4Addr::new(a[0], a[1], a[2], a[3]);
    let ends: Vec<(Ipv4Addr, u32, Ipv4Addr, u32)> = keys
        .iter()
        .map(|k| {
            (
                v4(&k.local_addr),
                k.local_port,
                v4(&k.remote_addr),
                k.remote_port,
            )
        })
        .collect();
    assert_eq!(ends.len(), 2, "want both ends in the sockhash: {ends:?}");
    let client = ends
        .iter()
        .find(|e| e.0 == yip)
        .unwrap_or_else(|| panic!("the client's end is not in the sockhash: {ends:?}"));
    assert_eq!((client.2, client.3), (xip, 9000), "{ends:?}");
    assert!(
        ends.contains(&(xip, 9000, yip, client.1)),
        "the server's end is not in the sockhash: {ends:?}"
    );

    const ROUNDS: u64 = 10;
    for _ in 0..ROUNDS {
        exec(&[
            "halfclose",
            "--to",
            &to,
            "--send",
            "4096",
            "--recv",
            "65536",
            "--poll-reads",
            "true",
        ])
        .report();
    }
    let d = Accel::read(&node).since(before);
    println!("podman [::] server: {d:?}");
    assert_eq!(d.sockets, 2 * (1 + ROUNDS), "{d:?}");
    assert!(d.bytes >= ROUNDS * 65536, "replies not redirected: {d:?}");
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
        .arg(test_support::bin("sluice-svcprobe"))
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
    let frontend = format!("{}:18083/TCP", test_support::node::NODE_IP);
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
        .command(test_support::bin("sluice-svcprobe"))
        .args(["probe", "--count", "3", "--to"])
        .arg(format!("{}:18083", test_support::node::NODE_IP))
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
