//! Builds the eBPF datapath (`datapath-bpf`) for `bpfel-unknown-none` with the nightly
//! toolchain through aya-build; the loader embeds it from `OUT_DIR`.
//!
//! With `AYA_BUILD_SKIP=1` (host-only work, e.g. unit tests of the agent's logic) an empty
//! object is written instead, and loading the datapath fails with a clear error.

use anyhow::{anyhow, Context as _};

const OBJECT: &str = "sluice-datapath";

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("daemon crate has no parent directory"))?
        .join("datapath-bpf");
    let root_dir = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {root:?}"))?;
    // Rebuild when the shared types change too (aya-build tracks the eBPF crate itself).
    println!("cargo:rerun-if-changed=../datapath-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "datapath-bpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?).join(OBJECT);
    if !out.exists() {
        std::fs::write(&out, b"").with_context(|| format!("write {}", out.display()))?;
    }
    Ok(())
}
