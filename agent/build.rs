//! Embeds the eBPF object that `cargo xtask build-ebpf` builds.
//!
//! When it is not built yet the agent still compiles (the xtask that builds
//! it depends on this crate) with an empty object: loading eBPF then fails
//! with an error naming the command, and the agent falls back to cgroupfs.
use std::{env, fs, path::PathBuf};

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
    let embedded = if object.is_file() {
        object
    } else {
        println!(
            "cargo:warning=eBPF object not built ({}): this agent will fall back to cgroupfs. \
             Run `cargo xtask build-ebpf` (after `scripts/setup.sh`).",
            object.display()
        );
        let empty =
            PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default()).join("no-ebpf-object");
        if let Err(e) = fs::write(&empty, b"") {
            panic!("writing {}: {e}", empty.display());
        }
        empty
    };
    println!("cargo:rustc-env=AGENT_EBPF_OBJECT={}", embedded.display());
}
