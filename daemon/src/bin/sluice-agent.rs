//! `sluice-agent`: Sluice's node agent. Loads and pins the eBPF datapath, installs the CNI
//! plugin and its config once the datapath is ready, follows cluster state and serves the
//! local API that `sluicectl` uses.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use daemon::{agent, datapath, node};
use ipnetwork::IpNetwork;

/// Sluice node agent: eBPF pod networking for Kubernetes.
///
/// Loads the datapath once (pinning maps and programs under <BPFFS>/sluice), then installs the
/// CNI plugin into --cni-bin-dir and 05-sluice.conflist into --cni-conf-dir. The datapath keeps
/// forwarding while the agent is stopped or restarted; `--uninstall` removes it.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// This node's name (the Node object whose podCIDR to use).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Standalone mode: read Kubernetes objects (YAML/JSON, several per file) from DIR and
    /// follow its changes, instead of an API server.
    #[arg(long, value_name = "DIR", conflicts_with = "kubeconfig")]
    manifests: Option<PathBuf>,
    /// Follow the Kubernetes API server of this kubeconfig (Services, EndpointSlices, this
    /// node's Pods, Namespaces, NetworkPolicies, Nodes). In a pod, the in-cluster config is
    /// used without it. With neither this, a pod's config nor --manifests, the agent knows no
    /// cluster state and needs --pod-cidr.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Pod CIDR of this node (repeat for dual-stack). Default: the Node object's spec.podCIDRs.
    #[arg(long = "pod-cidr", value_name = "CIDR")]
    pod_cidr: Vec<IpNetwork>,
    /// Interface to the outside, used for masquerade. Default: the default route's interface.
    #[arg(long, value_name = "IFACE")]
    uplink: Option<String>,
    /// Agent state: IPAM store, API socket.
    #[arg(long, value_name = "DIR", default_value = "/run/sluice")]
    state_dir: PathBuf,
    /// bpffs to pin into (mounted if none is mounted there).
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf")]
    bpffs: PathBuf,
    /// cgroup v2 directory for socket programs (Service load balancing at connect time, socket
    /// acceleration); processes outside it reach Services through the TC path. Default: the
    /// cgroup v2 mount.
    #[arg(long, value_name = "DIR")]
    cgroup_root: Option<PathBuf>,
    /// Where the runtime reads CNI configs.
    #[arg(long, value_name = "DIR", default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// Where the runtime finds CNI plugins.
    #[arg(long, value_name = "DIR", default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// The plugin binary to install. Default: sluice-cni next to this executable.
    #[arg(long, value_name = "PATH")]
    cni_plugin: Option<PathBuf>,
    /// Accelerate same-node TCP (pod to pod, loopback inside a pod) by handing data from
    /// socket to socket with sockops + sk_msg on --cgroup-root. A pod opts out with the
    /// annotation `sluice.dev/sockmap: "off"`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    sockmap: bool,
    /// How Service backends are chosen for a new connection: `random` (uniform), or `maglev`
    /// (consistent hashing: a backend change moves only ~1/N of the choices). A Service can
    /// override it with the annotation `sluice.dev/lb-algorithm`.
    #[arg(long, value_enum, default_value = "random")]
    lb_algorithm: LbAlgorithm,
    /// Honour Service `spec.externalIPs` only inside these ranges (comma-separated CIDRs,
    /// e.g. `198.51.100.0/24`; `0.0.0.0/0,::/0` honours all, as kube-proxy does). Default:
    /// none. Anyone who may create a Service can list any address in externalIPs and take
    /// the traffic of every pod to it (CVE-2020-8554); Kubernetes leaves the fix to the
    /// DenyServiceExternalIPs admission plugin, which is off by default, so Sluice refuses
    /// them unless the operator names the ranges it owns (each refusal is logged and counted
    /// in `sluicectl status`). Whatever this says, an external IP never shadows a ClusterIP,
    /// a node address or a pod address.
    #[arg(long, value_name = "CIDR[,CIDR...]", value_delimiter = ',')]
    external_ips: Vec<IpNetwork>,
    /// Do not masquerade pod traffic leaving for the outside.
    #[arg(long)]
    no_masquerade: bool,
    /// Node ports masqueraded flows are translated to (MIN-MAX, inclusive; a port is taken per
    /// destination address, port and protocol, so this bounds the node's connections to one
    /// destination). Refused if it overlaps the node's ephemeral ports
    /// (net.ipv4.ip_local_port_range, where the node's own connections take their ports) or the
    /// NodePort range 30000-32767. Default: the widest range of 1024-65535 outside both
    /// (1024-29999 with Linux's default 32768-60999).
    #[arg(long, value_name = "MIN-MAX", value_parser = parse_ports)]
    masquerade_ports: Option<std::ops::RangeInclusive<u16>>,
    /// Idle timeouts of flow state (masquerade, TC Service translation, policy tracking), as
    /// STATE=SECONDS,… over the defaults: tcp-syn=60 (never answered), tcp-established=21600,
    /// tcp-half-closed=120 (FIN one way), tcp-closed=10 (FIN both ways or RST), udp=30,
    /// udp-replied=120, icmp=30, other=30. A map more than half full is collected with
    /// shorter ones.
    #[arg(long, value_name = "STATE=SECONDS,...", value_parser = daemon::flows::parse_timeouts, default_value = "")]
    flow_timeouts: datapath_common::flow::Timeouts,
    /// How often expired flows are collected, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0, value_parser = parse_seconds)]
    flow_gc_interval: f64,
    /// How pod traffic reaches pods of other nodes: `tunnel` (VXLAN to the Node's InternalIP,
    /// UDP --tunnel-port; any underlay that carries UDP between nodes; pod MTU lowered by the
    /// 50-byte overhead) or `native` (no encapsulation: each Node's pod CIDRs are routed via
    /// its InternalIP; nodes on one L2 segment, or an underlay that routes pod CIDRs).
    #[arg(long, value_enum, default_value = "tunnel")]
    routing: daemon::nodes::RoutingMode,
    /// UDP port of the VXLAN tunnel between nodes (every node must use the same).
    #[arg(long, value_name = "PORT", default_value_t = daemon::nodes::DEFAULT_TUNNEL_PORT)]
    tunnel_port: u16,
    /// The cluster's Service ClusterIP ranges (kube-apiserver --service-cluster-ip-range;
    /// comma-separated). A Node whose pod CIDR overlaps one is not routed. Default: none known.
    #[arg(long, value_name = "CIDR[,CIDR...]", value_delimiter = ',')]
    service_cidr: Vec<IpNetwork>,
    /// Pod interface MTU. Default: the uplink's MTU.
    #[arg(long)]
    mtu: Option<u32>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Remove Sluice from this node (uplink programs, pins, CNI config and binary) and exit.
    #[arg(long)]
    uninstall: bool,
    /// Testing only: use at most this many entries of the policy rule map (default: all), so
    /// tests can fill it with a few rules.
    #[arg(long, hide = true, value_name = "ENTRIES")]
    policy_rule_capacity: Option<usize>,
}

fn parse_ports(s: &str) -> anyhow::Result<std::ops::RangeInclusive<u16>> {
    daemon::masq::parse_range(s)
}

fn parse_seconds(s: &str) -> anyhow::Result<f64> {
    let v: f64 = s
        .parse()
        .with_context(|| format!("{s:?} is not a number of seconds"))?;
    if !(v >= 0.05 && v.is_finite()) {
        anyhow::bail!("{s} s: at least 0.05 s");
    }
    Ok(v)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LbAlgorithm {
    Random,
    Maglev,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a log file or journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logs(args.log_format);
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("sluice-agent must run as root (it loads eBPF programs and changes links)");
    }
    if args.uninstall {
        let uplink = args
            .uplink
            .clone()
            .or_else(|| node::default_route_iface().ok());
        datapath::uninstall(&args.bpffs, uplink.as_deref())?;
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start the async runtime")?
            .block_on(daemon::routing::uninstall())
            .context("remove the tunnel device and Sluice's routes")?;
        for p in [
            args.cni_conf_dir.join(daemon::cni_install::CONFLIST_NAME),
            args.cni_bin_dir.join(daemon::cni_install::PLUGIN_TYPE),
        ] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("remove {}", p.display())),
            }
        }
        tracing::info!("sluice removed from this node");
        return Ok(());
    }
    let node_name = match args.node_name {
        Some(n) => n,
        None => nix::unistd::gethostname()
            .context("read the hostname (pass --node-name)")?
            .to_string_lossy()
            .into_owned(),
    };
    let cni_plugin = match args.cni_plugin {
        Some(p) => p,
        None => std::env::current_exe()
            .context("locate this executable")?
            .with_file_name("sluice-cni"),
    };
    let settings = agent::Settings {
        node_name,
        manifests: args.manifests,
        kubeconfig: args.kubeconfig,
        pod_cidrs: args.pod_cidr,
        uplink: args.uplink,
        state_dir: args.state_dir,
        bpffs: args.bpffs,
        cgroup_root: args.cgroup_root.or_else(node::cgroup2_mount),
        cni_conf_dir: args.cni_conf_dir,
        cni_bin_dir: args.cni_bin_dir,
        cni_plugin,
        masquerade: !args.no_masquerade,
        sockmap: args.sockmap,
        maglev: args.lb_algorithm == LbAlgorithm::Maglev,
        external_ips: args.external_ips,
        mtu: args.mtu,
        masquerade_ports: args.masquerade_ports,
        flow_timeouts: args.flow_timeouts,
        flow_gc_interval: std::time::Duration::from_secs_f64(args.flow_gc_interval),
        policy_rule_capacity: args.policy_rule_capacity,
        routing: args.routing,
        tunnel_port: args.tunnel_port,
        service_cidrs: args.service_cidr,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(agent::run(settings))
        .inspect_err(|e| tracing::error!(error = %format!("{e:#}"), "agent failed"))
}
