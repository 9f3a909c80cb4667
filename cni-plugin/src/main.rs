//! `sluice-cni`, installed as `/opt/cni/bin/sluice`: see the library for what it does.

fn main() {
    std::process::exit(cni_plugin::run());
}
