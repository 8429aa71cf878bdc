//! Developer commands. `cargo xtask --help` lists them.
use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

mod bench;
mod demo;
mod image;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "nodepulse developer commands")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Bench {
    /// Cost per context switch of the sched_switch program (pinned pipe
    /// ping-pong with nothing, an empty program and ours, rotating rounds).
    /// Needs root.
    Switch {
        #[arg(long, default_value_t = 21)]
        rounds: usize,
        #[arg(long, default_value_t = 60_000)]
        ops: u64,
        /// The two ends in two cgroups (every switch charges a different
        /// cgroup than the one before) instead of two threads in one.
        #[arg(long)]
        cross_cgroup: bool,
        /// Pending-charge slots per CPU for ours (1 to 64, a power of two):
        /// with 1 and --cross-cgroup every switch evicts, the costliest path.
        #[arg(long, default_value_t = agent_common::PENDING_SLOTS)]
        pending_slots: u32,
    },
    /// Agent CPU and peak RSS tracking N pods at 1 s: eBPF against cgroupfs,
    /// measured in the same run. Needs root.
    Agent {
        #[arg(long, default_value_t = 110)]
        pods: u32,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Another agent binary (say, main's) run beside this tree's build,
        /// each source in turn: rows for both and their ratio.
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// Only these CPU sources (default: all four configurations).
        #[arg(long, value_delimiter = ',')]
        sources: Vec<String>,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the kernel programs (agent-ebpf) for bpfel-unknown-none with BTF.
    BuildEbpf {
        /// Build with the dev profile instead of release.
        #[arg(long)]
        debug: bool,
    },
    /// rustfmt --check and clippy -D warnings over every crate, host and eBPF.
    Lint,
    /// The local demo: a real control plane and a real node (kubelet,
    /// containerd) running deploy/components.yaml from images built here,
    /// pods burning known CPU, and `kubectl top` refreshing. Needs root.
    /// Ctrl-C ends it and removes everything it made.
    Demo {
        /// Stop after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
        /// Two simulated nodes (Node objects, kubelet-style cgroups, burner
        /// processes) with aggregators and agents run as processes, instead
        /// of the real node.
        #[arg(long)]
        simulated: bool,
    },
    /// Container images as OCI archives (target/images/<name>.oci.tar) from
    /// the release binaries, without a Docker engine: `ctr images import`,
    /// `docker load` or `skopeo copy oci-archive:…` take them.
    Image(image::Request),
    /// Benchmarks (results go to BENCHMARKS.md).
    #[command(subcommand)]
    Bench(Bench),
    /// Internal: the body of the demo's burner processes.
    #[command(hide = true)]
    Burn,
}

fn main() -> Result<()> {
    match Args::parse().command {
        Cmd::BuildEbpf { debug } => build_ebpf(debug).map(|path| {
            eprintln!("eBPF object: {}", path.display());
        }),
        Cmd::Lint => lint(),
        Cmd::Demo { seconds, simulated } => demo::run(seconds, simulated),
        Cmd::Image(req) => image::run(req),
        Cmd::Bench(Bench::Switch {
            rounds,
            ops,
            cross_cgroup,
            pending_slots,
        }) => bench::switch_cost(rounds, ops, cross_cgroup, pending_slots),
        Cmd::Bench(Bench::Agent {
            pods,
            seconds,
            baseline,
            sources,
        }) => bench::agent_cost(
            &workspace_root(),
            &bench::AgentRuns {
                pods,
                seconds,
                baseline,
                sources,
            },
        ),
        Cmd::Burn => {
            testkit::burner_main();
            Ok(())
        }
    }
}

fn workspace_root() -> PathBuf {
    // xtask lives in <root>/xtask.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The toolchain pinned in rust-toolchain.toml, which the linker was built against.
fn pinned_toolchain(root: &Path) -> Result<String> {
    let text = std::fs::read_to_string(root.join("rust-toolchain.toml"))
        .context("reading rust-toolchain.toml")?;
    text.lines()
        .find_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix("channel")?.trim_start().strip_prefix('=')?;
            Some(rest.trim().trim_matches('"').to_string())
        })
        .context("no channel in rust-toolchain.toml")
}

/// Where scripts/setup.sh installs bpf-linker for this toolchain.
fn bpf_linker_dir(root: &Path) -> Result<PathBuf> {
    let tools = match env::var_os("NODEPULSE_TOOLS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env::var_os("HOME").context("HOME is not set")?)
            .join(".local/share/nodepulse"),
    };
    Ok(tools
        .join(format!("bpf-linker-{}", pinned_toolchain(root)?))
        .join("bin"))
}

/// A cargo command for the eBPF crate with the outer cargo's overrides removed,
/// so the pinned toolchain and its rust-src are used.
fn ebpf_cargo(root: &Path, subcommand: &str) -> Result<Command> {
    let linker_dir = bpf_linker_dir(root)?;
    if !linker_dir.join("bpf-linker").is_file() {
        bail!(
            "bpf-linker for this toolchain is not installed (looked in {}).\n\
             Run `scripts/setup.sh` first: it installs the pinned Rust toolchain with \
             rust-src and builds bpf-linker against that toolchain's LLVM.",
            linker_dir.display()
        );
    }
    let mut path = vec![linker_dir];
    path.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .arg(subcommand)
        .args(["--package", "agent-ebpf", "--target", "bpfel-unknown-none"])
        .args(["-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(root.join("target/bpf"));
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "CARGO",
        "RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("PATH", env::join_paths(path)?)
        // build-std needs nightly features; the pinned stable allows them this way.
        .env("RUSTC_BOOTSTRAP", "1")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f"),
        );
    Ok(cmd)
}

fn run(mut cmd: Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn build_ebpf(debug: bool) -> Result<PathBuf> {
    let root = workspace_root();
    let mut cmd = ebpf_cargo(&root, "build")?;
    if !debug {
        cmd.arg("--release");
    }
    run(cmd).context("building agent-ebpf")?;
    let profile = if debug { "debug" } else { "release" };
    Ok(root
        .join("target/bpf/bpfel-unknown-none")
        .join(profile)
        .join("agent-ebpf"))
}

fn lint() -> Result<()> {
    let root = workspace_root();
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut fmt = Command::new(&cargo);
    fmt.current_dir(&root).args(["fmt", "--all", "--check"]);
    run(fmt).context("rustfmt")?;
    let mut clippy = Command::new(&cargo);
    clippy.current_dir(&root).args([
        "clippy",
        "--workspace",
        "--exclude",
        "agent-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    run(clippy).context("clippy (host crates)")?;
    let mut ebpf = ebpf_cargo(&root, "clippy")?;
    ebpf.args(["--release", "--", "-D", "warnings"]);
    run(ebpf).context("clippy (agent-ebpf)")
}
