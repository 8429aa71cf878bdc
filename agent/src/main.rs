//! `nodepulse-agent`: the per-node agent.
use std::{path::PathBuf, time::Duration};

use std::sync::Arc;

use agent::{
    collector::{Collector, CpuSourceChoice, Options},
    export::{self, Targets},
    pods, run, top,
};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kube_lite::KubeClient;
use proto::v1::NodeMetadata;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

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
    /// Run the agent: sample this node every interval and stream to every
    /// aggregator replica.
    Run(RunArgs),
    /// Print a live table of this node's pods and containers (no cluster needed).
    Top {
        /// Refresh interval (`1s`, `500ms`, or seconds).
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
        /// Stop after this many refreshes (default: until Ctrl-C).
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// This node's name (the Downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Sampling interval (`1s`, `500ms`, or seconds).
    #[arg(long, env = "NODEPULSE_INTERVAL", default_value = "1s", value_parser = parse_interval)]
    interval: Duration,
    /// An aggregator replica (`https://host:port`); repeat for each. Exclusive
    /// with --aggregator-dns.
    #[arg(
        long = "aggregator",
        env = "NODEPULSE_AGGREGATORS",
        value_delimiter = ','
    )]
    aggregators: Vec<String>,
    /// A headless Service name and port (`name.namespace.svc:8443`) resolving
    /// to every replica.
    #[arg(long, env = "NODEPULSE_AGGREGATOR_DNS")]
    aggregator_dns: Option<String>,
    /// CA bundle for the aggregators' ingest certificates (none: plaintext, for
    /// local development only).
    #[arg(long, env = "NODEPULSE_AGGREGATOR_CA")]
    aggregator_ca: Option<PathBuf>,
    /// Name to verify in the aggregators' certificates.
    #[arg(long, env = "NODEPULSE_AGGREGATOR_SERVER_NAME")]
    aggregator_server_name: Option<String>,
    /// The projected ServiceAccount token presented to the aggregators.
    #[arg(long, env = "NODEPULSE_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// kubeconfig for reading this node's pods (default: in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
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
        Command::Run(run) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(run_agent(opts, run)),
    }
}

async fn run_agent(opts: Options, args: RunArgs) -> Result<()> {
    let targets = match (&args.aggregator_dns, args.aggregators.is_empty()) {
        (Some(_), false) => anyhow::bail!("--aggregator and --aggregator-dns are exclusive"),
        (None, true) => anyhow::bail!("name the aggregators: --aggregator or --aggregator-dns"),
        (None, false) => Targets::Static(args.aggregators.clone()),
        (Some(dns), true) => {
            let (host, port) = dns
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                .with_context(|| format!("--aggregator-dns {dns:?}: want host:port"))?;
            Targets::Dns {
                host,
                port,
                refresh: Duration::from_secs(10),
            }
        }
    };
    let client = match &args.kubeconfig {
        Some(path) => KubeClient::from_kubeconfig(path),
        None => KubeClient::in_cluster(),
    }
    .context("kube-apiserver credentials")?;
    let cancel = CancellationToken::new();
    let (meta_tx, meta_rx) = watch::channel(Arc::new(NodeMetadata::default()));
    let pods = tokio::spawn(pods::run(
        client,
        args.node_name.clone(),
        meta_tx,
        cancel.clone(),
    ));
    let signals = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            cancel.cancel();
        })
    };
    let config = run::Config {
        node_name: args.node_name,
        interval: args.interval,
        collector: opts,
        export: export::Config {
            targets,
            ca_file: args.aggregator_ca,
            tls_server_name: args.aggregator_server_name,
            token_file: args.token_file,
            ..export::Config::default()
        },
    };
    let result = run::run(config, meta_rx, cancel.clone()).await;
    cancel.cancel();
    let _ = pods.await;
    signals.abort();
    result.context("agent")
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

/// `1s`, `250ms`, `2m`, or plain seconds; at least 100 ms.
fn parse_interval(s: &str) -> Result<Duration, String> {
    let (number, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: want e.g. 1s, 500ms, 2m"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{s:?}: unit must be ms, s or m")),
    };
    let d = Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))?;
    if d < Duration::from_millis(100) {
        return Err(format!("{s:?}: at least 100ms"));
    }
    Ok(d)
}

fn run_top(opts: Options, interval: Duration, count: Option<u64>) -> Result<()> {
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
