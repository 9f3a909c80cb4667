//! containerd's CRI as the client, the path kubelet takes (installed by scripts/setup):
//! a small CRI client (runtime.v1 over gRPC on a unix socket) asks a private containerd for
//! pod sandboxes, containerd execs the Sluice plugin from the agent's bin dir with the conflist
//! the agent wrote, and the sandboxes get Sluice addresses, reach each other and the outside,
//! and leave nothing behind when stopped and removed.
//!
//! containerd runs inside the node's namespace (the plugin it execs makes the host veths there)
//! and in the node's test cgroup; its root, state, sockets and the sandboxes' network namespaces
//! live in the test's directory, the sandboxes in a cgroup below the node's. A guard stops and
//! removes the sandboxes, containerd and its shims, and releases cgroups, mounts, shim sockets
//! and libcni cache entries on every exit path.
//!
//! Expected values come from the CRI and CNI contracts: RunPodSandbox gives an address of the
//! node's pod CIDR, the pod's name reaches the plugin in `CNI_ARGS` (`K8S_POD_NAME`), Stop and
//! Remove release the address and the interfaces, and the runtime reports `NetworkReady` only
//! once a network config exists. A sandbox's `port_mappings` reach the plugin as
//! `runtimeConfig.portMappings` because the conflist declares the capability (hostPort).

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    runtime_service_client::RuntimeServiceClient, LinuxPodSandboxConfig, PodSandboxConfig,
    PodSandboxMetadata, PodSandboxStatusRequest, PortMapping, RemovePodSandboxRequest,
    RunPodSandboxRequest, StatusRequest, StopPodSandboxRequest,
};
use serde_json::Value;
use test_support::{
    bin,
    node::{DEFAULT_POD_CIDR, NODE_IP, OUTSIDE_IP, WORLD_IP},
    unique, Node, NodeOptions,
};
use tonic::transport::{Channel, Endpoint, Uri};

const CONTAINERD: &str = "/usr/bin/containerd";
const CTR: &str = "/usr/bin/ctr";
const RUNC: &str = "/usr/sbin/runc";
const BUSYBOX: &str = "/bin/busybox";
/// The reference loopback plugin (containernetworking-plugins); kubernetes-cni on real nodes.
const LOOPBACK: &str = "/usr/lib/cni/loopback";
/// containerd 1.6 puts shim sockets here whatever its state dir.
const SHIM_SOCKETS: &str = "/run/containerd/s";
/// libcni's cache (containerd does not move it).
const CNI_CACHE: &str = "/var/lib/cni/results";
const SANDBOX_IMAGE: &str = "sluice.test/pause:1";
const NAMESPACE: &str = "k8s.io";
/// A bound against hanging (containerd and the agent act within a second or two).
const DEADLINE: Duration = Duration::from_secs(60);

/// Panics with what to install when containerd's pieces are missing: CI installs them through
/// scripts/setup, so there this test must run, not skip.
fn require_containerd() {
    test_support::require_root();
    for (p, pkg) in [
        (CONTAINERD, "containerd"),
        (CTR, "containerd"),
        (RUNC, "runc"),
        (BUSYBOX, "busybox-static"),
        (LOOPBACK, "containernetworking-plugins"),
    ] {
        assert!(
            Path::new(p).exists(),
            "{p} missing: install {pkg} (scripts/setup does)"
        );
    }
}

fn sh(script: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", script])
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{script}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256_file(p: &Path) -> String {
    sh(&format!("sha256sum '{}'", p.display()))
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string()
}

/// Builds the sandbox ("pause") image as a docker-archive tarball: one layer with
/// busybox-static, entrypoint `sleep`. No registry is reachable here.
fn build_pause_image(dir: &Path) -> PathBuf {
    let img = dir.join("image");
    let layer = img.join("layer");
    std::fs::create_dir_all(layer.join("bin")).expect("mkdir");
    std::fs::copy(BUSYBOX, layer.join("bin/busybox")).expect("copy busybox");
    for tool in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", layer.join("bin").join(tool)).expect("symlink");
    }
    sh(&format!(
        "tar -C '{0}/layer' -cf '{0}/layer.tar' . && rm -rf '{0}/layer'",
        img.display()
    ));
    let diff_id = sha256_file(&img.join("layer.tar"));
    let config = serde_json::json!({
        "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        "os": "linux",
        "config": {"Entrypoint": ["/bin/sleep"], "Cmd": ["2147483647"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
    });
    let cfg_tmp = img.join("config.json");
    std::fs::write(&cfg_tmp, serde_json::to_vec(&config).unwrap()).expect("write config");
    let cfg_name = format!("{}.json", sha256_file(&cfg_tmp));
    std::fs::rename(&cfg_tmp, img.join(&cfg_name)).expect("rename config");
    let manifest = serde_json::json!([{
        "Config": cfg_name, "RepoTags": [SANDBOX_IMAGE], "Layers": ["layer.tar"]
    }]);
    std::fs::write(
        img.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .expect("write manifest");
    let tar = dir.join("pause.tar");
    sh(&format!(
        "tar -C '{}' -cf '{}' manifest.json '{cfg_name}' layer.tar",
        img.display(),
        tar.display()
    ));
    tar
}

/// One sandbox as the test sees it.
struct Sandbox {
    id: String,
    name: String,
    ip: Ipv4Addr,
    netns: PathBuf,
}

/// A private containerd in a node's namespace and cgroup, its CRI client, and what it made.
struct Containerd {
    dir: tempfile::TempDir,
    sock: PathBuf,
    child: Option<Child>,
    /// The sandboxes' cgroup, relative to every hierarchy's root (below the node's cgroup in
    /// the v2 hierarchy).
    cgroup: String,
    /// Every sandbox id ever returned, removed or not.
    ids: Vec<String>,
    /// Directories containerd makes outside its own that did not exist before it started.
    made_dirs: Vec<PathBuf>,
    rt: tokio::runtime::Runtime,
    client: Option<RuntimeServiceClient<Channel>>,
}

impl Containerd {
    /// Starts containerd with the node's CNI dirs (the loopback plugin is copied to the bin
    /// dir, as kubernetes-cni provides it) and imports the sandbox image.
    fn start(node: &Node) -> Self {
        require_containerd();
        let dir = tempfile::Builder::new()
            .prefix("sluice-cri-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path().to_path_buf();
        std::fs::copy(LOOPBACK, node.path("bin").join("loopback")).expect("copy loopback");
        let v2 = daemon::node::cgroup2_mount().expect("cgroup v2 mount");
        let node_cg = node
            .cgroup
            .strip_prefix(&v2)
            .expect("node cgroup below the v2 mount")
            .display()
            .to_string();
        let cgroup = format!("/{node_cg}/{}", unique("cri"));
        let sock = d.join("containerd.sock");
        let conf = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  level = "info"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{RUNC}"
        Root = "{d}/runc"
"#,
            d = d.display(),
            sock = sock.display(),
            bin = node.path("bin").display(),
            conf = node.path("conf").display(),
        );
        std::fs::write(d.join("config.toml"), conf).expect("write config.toml");
        let tar = build_pause_image(&d);
        // Taken once per process: tests run in parallel and each removes them when empty.
        static MADE: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();
        let made_dirs = MADE
            .get_or_init(|| {
                [Path::new("/run/containerd"), Path::new(SHIM_SOCKETS)]
                    .into_iter()
                    .filter(|p| !p.exists())
                    .map(Path::to_path_buf)
                    .collect()
            })
            .clone();
        let log = std::fs::File::create(d.join("containerd.log")).expect("log");
        let child = node
            .pod_command(&node.node, CONTAINERD)
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mut c = Self {
            dir,
            sock,
            child: Some(child),
            cgroup,
            ids: Vec::new(),
            made_dirs,
            rt,
            client: None,
        };
        let t = Instant::now();
        while !c.sock.exists() {
            c.assert_running();
            assert!(
                t.elapsed() < DEADLINE,
                "containerd socket not up\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = Command::new(CTR)
            .arg("-a")
            .arg(&c.sock)
            .args(["-n", NAMESPACE, "images", "import"])
            .arg(&tar)
            .output()
            .expect("run ctr");
        assert!(
            out.status.success(),
            "ctr images import: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let path = c.sock.clone();
        let channel =
            c.rt.block_on(
                Endpoint::try_from("http://[::]:50051")
                    .expect("endpoint")
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(path).await?,
                            ))
                        }
                    })),
            )
            .expect("connect to the CRI");
        c.client = Some(RuntimeServiceClient::new(channel));
        c
    }

    /// The shim socket of sandbox `id`: containerd 1.6 names it
    /// `/run/containerd/s/<sha256 of "<address>/<namespace>/<id>">`.
    fn shim_socket(&self, id: &str) -> Option<PathBuf> {
        let key = format!("{}/{NAMESPACE}/{id}", self.sock.display());
        let out = Command::new("sh")
            .args(["-c", "printf %s \"$0\" | sha256sum", &key])
            .output()
            .ok()?;
        let hash = String::from_utf8_lossy(&out.stdout);
        Some(Path::new(SHIM_SOCKETS).join(hash.split_whitespace().next()?))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Some(st) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            panic!("containerd exited ({st}):\n{}", self.log());
        }
    }

    fn client(&self) -> RuntimeServiceClient<Channel> {
        self.client.clone().expect("CRI client")
    }

    /// CRI `Status`: whether the `NetworkReady` condition is true.
    fn network_ready(&self) -> bool {
        let st = self
            .rt
            .block_on(self.client().status(StatusRequest { verbose: false }))
            .expect("CRI Status")
            .into_inner();
        st.status
            .expect("runtime status")
            .conditions
            .iter()
            .any(|c| c.r#type == "NetworkReady" && c.status)
    }

    fn sandbox_config(&self, name: &str, ports: &[(u16, u16)]) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: unique("uid"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: self.dir.path().join("logs").display().to_string(),
            port_mappings: ports
                .iter()
                .map(|&(host, container)| PortMapping {
                    protocol: k8s_cri::v1::Protocol::Tcp as i32,
                    container_port: container.into(),
                    host_port: host.into(),
                    host_ip: String::new(),
                })
                .collect(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Runs sandboxes `names` in parallel (each with `ports` as hostPort → containerPort) and
    /// returns them in `names` order.
    fn run(&mut self, names: &[&str], ports: &[(u16, u16)]) -> Vec<Sandbox> {
        let configs: Vec<PodSandboxConfig> = names
            .iter()
            .map(|n| self.sandbox_config(n, ports))
            .collect();
        let client = self.client();
        let results = self.rt.block_on(async move {
            let mut set = tokio::task::JoinSet::new();
            for (i, config) in configs.into_iter().enumerate() {
                let mut c = client.clone();
                set.spawn(async move {
                    let r = c
                        .run_pod_sandbox(RunPodSandboxRequest {
                            config: Some(config),
                            runtime_handler: String::new(),
                        })
                        .await;
                    (i, r.map(|r| r.into_inner().pod_sandbox_id))
                });
            }
            let mut out = Vec::new();
            while let Some(r) = set.join_next().await {
                out.push(r.expect("join"));
            }
            out.sort_by_key(|(i, _)| *i);
            out
        });
        let mut failed = Vec::new();
        let mut ids = Vec::new();
        for (i, r) in results {
            match r {
                Ok(id) => {
                    self.ids.push(id.clone());
                    ids.push(id);
                }
                Err(e) => failed.push(format!("{}: {e}", names[i])),
            }
        }
        assert!(
            failed.is_empty(),
            "RunPodSandbox failed: {failed:#?}\n{}",
            self.log()
        );
        ids.into_iter()
            .zip(names)
            .map(|(id, name)| self.status(&id, name))
            .collect()
    }

    /// A sandbox's address and network namespace, from `PodSandboxStatus` (verbose).
    fn status(&self, id: &str, name: &str) -> Sandbox {
        let r = self
            .rt
            .block_on(self.client().pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: true,
            }))
            .expect("PodSandboxStatus")
            .into_inner();
        let ip = r
            .status
            .as_ref()
            .and_then(|s| s.network.as_ref())
            .map(|n| n.ip.clone())
            .unwrap_or_default();
        let info: Value =
            serde_json::from_str(r.info.get("info").expect("verbose info")).expect("info is JSON");
        let netns = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["type"] == "network"))
            .and_then(|n| n["path"].as_str())
            .unwrap_or_else(|| panic!("no network namespace in {info:#}"));
        Sandbox {
            id: id.into(),
            name: name.into(),
            ip: ip
                .parse()
                .unwrap_or_else(|_| panic!("sandbox {name} has no IPv4 address: {ip:?}")),
            netns: netns.into(),
        }
    }

    /// StopPodSandbox then RemovePodSandbox for each, in parallel, as kubelet does.
    fn stop_and_remove(&self, ids: &[String]) -> Vec<String> {
        let client = self.client();
        let ids = ids.to_vec();
        self.rt.block_on(async move {
            let mut set = tokio::task::JoinSet::new();
            for id in ids {
                let mut c = client.clone();
                set.spawn(async move {
                    let stop = c
                        .stop_pod_sandbox(StopPodSandboxRequest {
                            pod_sandbox_id: id.clone(),
                        })
                        .await;
                    let rm = c
                        .remove_pod_sandbox(RemovePodSandboxRequest {
                            pod_sandbox_id: id.clone(),
                        })
                        .await;
                    [stop.err(), rm.err()]
                        .into_iter()
                        .flatten()
                        .map(|e| format!("{id}: {e}"))
                        .collect::<Vec<_>>()
                });
            }
            let mut errors = Vec::new();
            let all = async {
                while let Some(r) = set.join_next().await {
                    errors.extend(r.unwrap_or_else(|e| vec![format!("join: {e}")]));
                }
            };
            if tokio::time::timeout(DEADLINE, all).await.is_err() {
                errors.push("StopPodSandbox/RemovePodSandbox did not finish".into());
            }
            errors
        })
    }

    fn remove(&self, sandboxes: &[Sandbox]) {
        let ids: Vec<String> = sandboxes.iter().map(|s| s.id.clone()).collect();
        let errors = self.stop_and_remove(&ids);
        assert!(errors.is_empty(), "{errors:#?}\n{}", self.log());
    }
}

/// Removes a cgroup directory and everything below it, deepest first.
fn remove_cgroup(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    for _ in 0..250 {
        match std::fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => return,
        }
    }
}

/// Processes whose command line contains `needle`.
fn pids_with(needle: &str) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Sandboxes still there go the way kubelet removes them, so the plugin's DEL runs.
        if self.client.is_some() && self.child.is_some() {
            let ids = self.ids.clone();
            let _ = self.stop_and_remove(&ids);
        }
        self.client = None;
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
            let t = Instant::now();
            while c.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Shims of this containerd (they carry its address on their command line).
        for pid in pids_with(&self.sock.display().to_string()) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
        // Whatever is left in the sandboxes' cgroup, then the cgroup in every hierarchy (and
        // the node's cgroup name in the v1 ones, which runc made; the node removes its v2 one).
        if let Some(v2) = daemon::node::cgroup2_mount() {
            let _ = std::fs::write(
                v2.join(self.cgroup.trim_start_matches('/'))
                    .join("cgroup.kill"),
                "1",
            );
        }
        let v2 = daemon::node::cgroup2_mount();
        if let Ok(hs) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hs.flatten() {
                let cg = h.path().join(self.cgroup.trim_start_matches('/'));
                remove_cgroup(&cg);
                if Some(h.path()) != v2 {
                    if let Some(parent) = cg.parent() {
                        let _ = std::fs::remove_dir(parent);
                    }
                }
            }
        }
        // Mounts under the test's directory (rootfs, shm, network namespaces), deepest first.
        let root = self.dir.path().display().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|m| m.starts_with(&root))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        // Shim sockets: containerd 1.6 names them sha256(<address>/<namespace>/<id>).
        for id in &self.ids {
            if let Some(p) = self.shim_socket(id) {
                let _ = std::fs::remove_file(p);
            }
            if let Ok(rd) = std::fs::read_dir(CNI_CACHE) {
                for e in rd.flatten() {
                    if e.file_name().to_string_lossy().contains(id.as_str()) {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
        // Deepest first; only if empty (another containerd may use them meanwhile).
        for d in self.made_dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// A TCP server in a sandbox's namespace (a process of the node's cgroup) answering with a name.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(node: &Node, netns: &Path, name: &str, port: u16) -> Server {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"echo $$ > "$0/cgroup.procs" && n="$1" && shift && exec nsenter --net="$n" -- "$@""#)
        .arg(&node.cgroup)
        .arg(netns)
        .arg(bin("sluice-svcprobe"))
        .args(["serve", "--name", name, "--tcp", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start server");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .expect("server output");
    assert_eq!(line.trim(), "ready", "server in {name}");
    Server(child)
}

fn ping(netns: &Path, dst: Ipv4Addr) -> bool {
    Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["--", "ping", "-c1", "-W2", &dst.to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn in_pod_cidr(ip: Ipv4Addr) -> bool {
    let (net, len) = DEFAULT_POD_CIDR.split_once('/').expect("a CIDR");
    let net: Ipv4Addr = net.parse().expect("network address");
    let mask = u32::MAX << (32 - len.parse::<u32>().expect("prefix length"));
    u32::from(ip) & mask == u32::from(net)
}

/// Waits until `f` holds, panicking with `what` after [`DEADLINE`].
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < DEADLINE, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts that nothing of `gone` is left on the node: no endpoint, no IPAM address, no host
/// veth, no network namespace, no hostPort record.
fn assert_released(node: &Node, gone: &[Sandbox]) {
    let eps: BTreeSet<String> = node
        .endpoints()
        .iter()
        .map(|e| e.addr.to_string())
        .collect();
    let ipam: BTreeSet<String> = node.ipam_addresses().into_iter().collect();
    for s in gone {
        let ip = s.ip.to_string();
        assert!(!eps.contains(&ip), "endpoint of {} left: {ip}", s.name);
        assert!(!ipam.contains(&ip), "IPAM address of {} left: {ip}", s.name);
        assert!(
            !s.netns.exists(),
            "network namespace of {} left: {}",
            s.name,
            s.netns.display()
        );
    }
    let records = node
        .state_dir()
        .join("hostports")
        .read_dir()
        .map_or(0, |d| d.count());
    assert_eq!(records, 0, "hostPort records left");
}

/// Test that containerd's CRI reports NetworkReady only once the agent has written the
/// conflist, that RunPodSandbox gives sandboxes addresses of the node's pod CIDR with the
/// pod's name reaching Sluice through CNI_ARGS, that sandboxes reach each other and the
/// outside, that a sandbox's port mapping (hostPort) takes traffic from outside the node, and
/// that StopPodSandbox + RemovePodSandbox release everything.
#[test]
fn cri_sandboxes_get_addresses_connect_and_release() {
    let mut node = Node::new(NodeOptions {
        start_agent: false,
        ..NodeOptions::default()
    });
    let mut ctd = Containerd::start(&node);
    assert!(
        !ctd.network_ready(),
        "NetworkReady before any network config exists"
    );
    node.start_agent();
    wait_until("the CRI reports NetworkReady", || ctd.network_ready());
    assert!(
        !node.agent_log().contains("no `loopback` plugin"),
        "the agent warned about loopback although it is installed"
    );

    let pods = ctd.run(&["cri-a", "cri-b"], &[]);
    let web = ctd.run(&["cri-web"], &[(18090, 8080)]).remove(0);
    let eps = node.sluicectl_json(&["endpoints"]);
    for s in pods.iter().chain([&web]) {
        // What the guard removes if a shim dies without removing its socket.
        let shim = ctd.shim_socket(&s.id).expect("shim socket path");
        assert!(shim.exists(), "no shim socket at {}", shim.display());
        assert!(
            in_pod_cidr(s.ip),
            "{} got {} outside {DEFAULT_POD_CIDR}",
            s.name,
            s.ip
        );
        let e = eps
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["address"] == s.ip.to_string())
            .unwrap_or_else(|| panic!("no endpoint for {}: {eps:#}", s.ip));
        assert_eq!(
            e["pod"],
            s.name.as_str(),
            "K8S_POD_NAME did not reach Sluice"
        );
        assert_eq!(e["namespace"], "default");
    }
    assert!(ping(&pods[0].netns, pods[1].ip), "cri-a cannot reach cri-b");
    assert!(ping(&pods[1].netns, pods[0].ip), "cri-b cannot reach cri-a");
    assert!(
        ping(&pods[0].netns, WORLD_IP),
        "cri-a cannot reach the outside"
    );

    // hostPort: containerd passes the sandbox's port mapping as runtimeConfig.portMappings.
    let _srv = serve(&node, &web.netns, "cri-web", 8080);
    let to = format!("{NODE_IP}:18090");
    wait_until("the hostPort is programmed", || {
        node.sluicectl_json(&["services"])
            .as_array()
            .is_some_and(|a| {
                a.iter()
                    .any(|f| f["kind"] == "HostPort" && f["frontend"] == format!("{to}/TCP"))
            })
    });
    let out = node
        .outside
        .command(bin("sluice-svcprobe"))
        .args(["probe", "--to", &to, "--count", "5"])
        .output()
        .expect("probe");
    let v: Value = serde_json::from_slice(&out.stdout).expect("probe report");
    assert_eq!(v["answers"]["cri-web"], 5, "hostPort from outside: {v:#}");
    for peer in v["peers"].as_array().unwrap() {
        assert!(peer
            .as_str()
            .unwrap()
            .starts_with(&format!("{OUTSIDE_IP}:")));
    }

    ctd.remove(&pods);
    ctd.remove(std::slice::from_ref(&web));
    assert_released(&node, &pods);
    assert_released(&node, std::slice::from_ref(&web));
    assert!(
        node.host_veths().is_empty(),
        "host veths left: {:?}",
        node.host_veths()
    );
    wait_until("the hostPort is removed", || {
        !node
            .sluicectl_json(&["services"])
            .as_array()
            .is_some_and(|a| a.iter().any(|f| f["kind"] == "HostPort"))
    });
}

/// Test that ten sandboxes asked for at once all get distinct addresses of the pod CIDR and
/// all tear down without leaving anything.
#[test]
fn cri_parallel_burst_distinct_addresses_and_teardown() {
    let node = Node::new(NodeOptions::default());
    // The agent started before the loopback plugin was there, and said so.
    assert!(
        node.agent_log().contains("no `loopback` plugin"),
        "no warning about the missing loopback plugin:\n{}",
        node.agent_log()
    );
    let mut ctd = Containerd::start(&node);
    wait_until("the CRI reports NetworkReady", || ctd.network_ready());
    let names: Vec<String> = (0..10).map(|i| format!("burst-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let pods = ctd.run(&refs, &[]);
    let ips: BTreeSet<Ipv4Addr> = pods.iter().map(|s| s.ip).collect();
    assert_eq!(ips.len(), 10, "addresses not distinct: {ips:?}");
    assert!(ips.iter().all(|ip| in_pod_cidr(*ip)), "{ips:?}");
    assert_eq!(node.endpoints().len(), 10);
    assert_eq!(node.host_veths().len(), 10);
    ctd.remove(&pods);
    assert_released(&node, &pods);
    assert!(
        node.host_veths().is_empty(),
        "host veths left: {:?}",
        node.host_veths()
    );
    assert!(node.endpoints().is_empty());
    assert!(node.ipam_addresses().is_empty());
}
