//! Embeds the eBPF object that `cargo xtask build-ebpf` builds.
use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=AGENT_EBPF_OBJECT");
    let object = match env::var_os("AGENT_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => {
            let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
            manifest.join("../target/bpf/bpfel-unknown-none/release/agent-ebpf")
        }
    };
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.is_file() {
        panic!(
            "\n\nThe agent embeds its eBPF object, which is not built yet ({}).\n\
             Run `cargo xtask build-ebpf` (after `scripts/setup.sh` on a fresh machine), \
             or point AGENT_EBPF_OBJECT at a built object.\n",
            object.display()
        );
    }
    println!("cargo:rustc-env=AGENT_EBPF_OBJECT={}", object.display());
}
