//! `nodepulse-agent`: the per-node agent.
use std::{path::PathBuf, time::Duration};

use agent::{
    collector::{Collector, CpuSourceChoice, Options},
    top,
};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "nodepulse node agent")]
struct Args {
    /// The host's cgroup mount (a DaemonSet mounts it somewhere of its own).
    #[arg(
        long,
        env = "NODEPULSE_CGROUP_ROOT",
        default_value = "/sys/fs/cgroup",
        global = true
    )]
    cgroup_root: PathBuf,
    /// The host's procfs.
    #[arg(
        long,
        env = "NODEPULSE_PROC_ROOT",
        default_value = "/proc",
        global = true
    )]
    proc_root: PathBuf,
    /// The kernel's BTF, for task_struct offsets.
    #[arg(
        long,
        env = "NODEPULSE_BTF",
        default_value = "/sys/kernel/btf/vmlinux",
        global = true
    )]
    btf: PathBuf,
    /// Where CPU time comes from.
    #[arg(
        long,
        value_enum,
        env = "NODEPULSE_CPU_SOURCE",
        default_value = "auto",
        global = true
    )]
    cpu_source: CpuSourceChoice,
    /// The node's own cgroup below the hierarchy root (`/`: the whole host).
    #[arg(
        long,
        env = "NODEPULSE_NODE_CGROUP",
        default_value = "/",
        global = true
    )]
    node_cgroup: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a live table of this node's pods and containers (no cluster needed).
    Top {
        /// Refresh interval, seconds.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many refreshes (default: until Ctrl-C).
        #[arg(long)]
        count: Option<u64>,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let opts = Options {
        cgroup_root: args.cgroup_root,
        proc_root: args.proc_root,
        btf_path: args.btf,
        cpu_source: args.cpu_source,
        force_tick: false,
        node_cgroup: args.node_cgroup,
    };
    match args.command {
        Command::Top { interval, count } => run_top(opts, interval, count),
    }
}

fn run_top(opts: Options, interval: f64, count: Option<u64>) -> Result<()> {
    anyhow::ensure!(
        interval.is_finite() && interval >= 0.05,
        "--interval must be at least 0.05 seconds"
    );
    let interval = Duration::from_secs_f64(interval);
    let mut collector = Collector::new(opts).context("starting the collector")?;
    if let Some(reason) = collector.fallback_reason() {
        eprintln!("cpu source: cgroupfs ({reason})");
    }
    let mut prev = collector.collect()?;
    let mut shown = 0u64;
    while count.is_none_or(|c| shown < c) {
        std::thread::sleep(interval);
        let cur = collector.collect()?;
        let table = top::render(&prev, &cur);
        // Clear the screen only on a terminal; piped output stays a plain log.
        #[allow(clippy::print_stdout)]
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            print!("\x1b[2J\x1b[H{table}");
        } else {
            println!("{table}");
        }
        prev = cur;
        shown += 1;
    }
    Ok(())
}
