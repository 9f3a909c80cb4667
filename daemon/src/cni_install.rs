//! Installing the CNI plugin on the node once the datapath is ready: the binary into the CNI
//! bin dir and `05-sluice.conflist` into the conf dir, each written to a temporary file and
//! renamed into place, so a runtime never execs a half-copied binary or reads a half-written
//! config (libcni retries "text file busy", not a truncated file).

use std::{
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use ipnetwork::IpNetwork;
use serde_json::json;

/// Name of the network and of the plugin binary in the bin dir.
pub const NETWORK_NAME: &str = "sluice";
pub const PLUGIN_TYPE: &str = "sluice";
/// Sorts before other configs: containerd uses the first file in the conf dir.
pub const CONFLIST_NAME: &str = "05-sluice.conflist";
/// Every version the plugin speaks.
pub const CNI_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// What the plugin needs to know, carried in the conflist so the plugin takes no flags.
pub struct PluginConfig<'a> {
    pub pod_cidrs: &'a [IpNetwork],
    pub mtu: u32,
    pub state_dir: &'a Path,
    pub bpffs: &'a Path,
}

/// The conflist. `cniVersion` is 1.0.0 because podman 4.3 (libcni 1.1) cannot parse 1.1.0
/// results; `cniVersions` offers 1.1.0 to runtimes that know it (libcni ≥ 1.2).
pub fn conflist(cfg: &PluginConfig<'_>) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0",
        "cniVersions": CNI_VERSIONS,
        "name": NETWORK_NAME,
        "plugins": [{
            "type": PLUGIN_TYPE,
            "mtu": cfg.mtu,
            "podCIDRs": cfg.pod_cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "stateDir": cfg.state_dir,
            "bpffs": cfg.bpffs,
            // Runtimes pass `runtimeConfig.portMappings` (hostPort) only when it is declared.
            "capabilities": {"portMappings": true},
        }]
    })
}

/// The reference `loopback` plugin, which containerd and CRI-O exec for every sandbox.
pub const LOOPBACK: &str = "loopback";

/// Whether `bin_dir` holds the `loopback` plugin; without it every sandbox of containerd fails
/// (`failed to find plugin "loopback"`). On nodes it comes with kubernetes-cni.
pub fn has_loopback(bin_dir: &Path) -> bool {
    bin_dir.join(LOOPBACK).is_file()
}

/// Writes `bytes` to `dest` through a temporary file in the same directory and a rename.
pub fn write_atomic(dest: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = dest.parent().context("destination has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let name = dest
        .file_name()
        .context("destination has no file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.with_context(|| format!("write {}", dest.display()))
}

/// Installs the plugin binary as `<bin_dir>/sluice`.
pub fn install_binary(src: &Path, bin_dir: &Path) -> anyhow::Result<PathBuf> {
    let bytes =
        std::fs::read(src).with_context(|| format!("read plugin binary {}", src.display()))?;
    let dest = bin_dir.join(PLUGIN_TYPE);
    write_atomic(&dest, &bytes, 0o755)?;
    Ok(dest)
}

/// Writes the conflist into `conf_dir`.
pub fn write_conflist(conf_dir: &Path, cfg: &PluginConfig<'_>) -> anyhow::Result<PathBuf> {
    let dest = conf_dir.join(CONFLIST_NAME);
    let mut text = serde_json::to_vec_pretty(&conflist(cfg)).context("encode conflist")?;
    text.push(b'\n');
    write_atomic(&dest, &text, 0o644)?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that the conflist carries what kubelet/podman need and what the plugin reads.
    #[test]
    fn conflist_shape() {
        let cidrs = ["10.244.1.0/24".parse().unwrap()];
        let v = conflist(&PluginConfig {
            pod_cidrs: &cidrs,
            mtu: 1450,
            state_dir: Path::new("/run/sluice"),
            bpffs: Path::new("/sys/fs/bpf"),
        });
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v["cniVersions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x == "1.1.0"));
        assert_eq!(v["name"], "sluice");
        let p = &v["plugins"][0];
        assert_eq!(p["type"], "sluice");
        assert_eq!(p["mtu"], 1450);
        assert_eq!(p["podCIDRs"][0], "10.244.1.0/24");
        assert_eq!(p["stateDir"], "/run/sluice");
        assert_eq!(p["capabilities"]["portMappings"], true);
    }

    /// Test that an atomic write leaves exactly the destination file, with its mode.
    #[test]
    fn write_atomic_leaves_one_file() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("x.conflist");
        write_atomic(&dest, b"{}", 0o644).unwrap();
        write_atomic(&dest, b"{\"a\":1}", 0o644).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"{\"a\":1}");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "temporary files left: {names:?}");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }
}
