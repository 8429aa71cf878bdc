//! `cargo xtask image`: nodepulse's images as OCI archives, from the release
//! binaries, without a Docker engine (see the `images` crate).
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use images::catalog::{self, Spec};

use crate::{build_ebpf, workspace_root};

/// What `cargo xtask image` is asked for.
#[derive(clap::Args)]
pub struct Request {
    /// Which images (agent, aggregator, burner, pause); default: all.
    names: Vec<String>,
    /// Where the archives go (default: target/images).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Registry of the published images (agent, aggregator); the test images
    /// (burner, pause) are always nodepulse.local/….
    #[arg(long, default_value = catalog::REGISTRY)]
    registry: String,
    /// Tag (default: the workspace version, which deploy/ names); pause
    /// carries the pinned Kubernetes version.
    #[arg(long)]
    tag: Option<String>,
    /// Write the one named image's root filesystem into this directory
    /// instead of an archive (what deploy/Dockerfile.* copy into scratch).
    #[arg(long)]
    rootfs: Option<PathBuf>,
    /// Use the binaries already in target/release.
    #[arg(long)]
    no_build: bool,
}

/// Prints one line per archive (reference, path, size, manifest digest) on
/// stdout, for scripts.
#[allow(clippy::print_stdout)]
pub fn run(req: Request) -> Result<()> {
    let specs: Vec<Spec> = if req.names.is_empty() {
        catalog::ALL.to_vec()
    } else {
        req.names
            .iter()
            .map(|n| {
                catalog::find(n).with_context(|| {
                    let known: Vec<&str> = catalog::ALL.iter().map(|s| s.name).collect();
                    format!("no image {n:?}; known: {}", known.join(", "))
                })
            })
            .collect::<Result<_>>()?
    };
    if req.rootfs.is_some() && specs.len() != 1 {
        bail!("--rootfs writes one image's filesystem: name exactly one image");
    }
    let root = workspace_root();
    if !req.no_build {
        build(&root, &specs)?;
    }
    let tag = req
        .tag
        .clone()
        .unwrap_or_else(|| catalog::VERSION.to_string());
    let out = req
        .out
        .clone()
        .unwrap_or_else(|| e2e::binaries::target_dir().join("images"));
    for spec in specs {
        let binary = binary_of(&spec)?;
        let fs = spec
            .rootfs(&binary)
            .with_context(|| format!("assembling the {} image", spec.name))?;
        if let Some(dir) = &req.rootfs {
            fs.write_to(dir)
                .with_context(|| format!("writing {}", dir.display()))?;
            eprintln!(
                "{}: root filesystem written to {}",
                spec.name,
                dir.display()
            );
            continue;
        }
        let reference = spec.reference(&req.registry, &image_tag(&spec, &tag)?);
        let path = out.join(format!("{}.oci.tar", spec.name));
        let written = images::oci::write_archive(&path, &reference, &spec.config(), &fs)
            .with_context(|| format!("writing {}", path.display()))?;
        println!(
            "{reference}\t{}\t{:.1} MiB\t{}",
            path.display(),
            written.bytes as f64 / (1 << 20) as f64,
            written.manifest
        );
    }
    Ok(())
}

/// The pause image carries the Kubernetes version its source came from.
fn image_tag(spec: &Spec, tag: &str) -> Result<String> {
    if spec.name == catalog::PAUSE.name {
        return e2e::binaries::upstream_kube_version();
    }
    Ok(tag.to_string())
}

/// The built program for `spec`: target/release, or the upstream bin dir for
/// pause.
fn binary_of(spec: &Spec) -> Result<PathBuf> {
    let path = if spec.name == catalog::PAUSE.name {
        e2e::binaries::upstream_bin_dir()?.join(spec.binary)
    } else {
        e2e::binaries::target_dir()
            .join("release")
            .join(spec.binary)
    };
    if !path.is_file() {
        bail!("{} does not exist: build it first", path.display());
    }
    Ok(path)
}

/// Builds what `specs` need: the eBPF object (embedded by the agent), then
/// the release binaries in one cargo run.
fn build(root: &Path, specs: &[Spec]) -> Result<()> {
    let mut packages: Vec<&str> = Vec::new();
    for spec in specs {
        match spec.name {
            "agent" => {
                build_ebpf(false)?;
                packages.extend(["-p", "agent", "--bin", "nodepulse-agent"]);
            }
            "aggregator" => {
                packages.extend(["-p", "aggregator-api", "--bin", "nodepulse-aggregator"])
            }
            "burner" => packages.extend(["-p", "testkit", "--bin", "nodepulse-burner"]),
            _ => {}
        }
    }
    if packages.is_empty() {
        return Ok(());
    }
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--locked"])
        .args(&packages)
        .current_dir(root)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release {} failed", packages.join(" "));
    }
    Ok(())
}
