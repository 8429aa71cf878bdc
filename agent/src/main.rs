//! `nodepulse-agent`: the per-node agent.
use std::{path::PathBuf, time::Duration};

use std::sync::Arc;

use agent::{
    cgroup::files,
    collector::{Collector, CpuSourceChoice, Options},
    kubelet::{KubeletClient, KubeletConfig, check::Tolerance, resource_url},
    run, top,
};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use export::Targets;
use kubelet::pods;
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
    /// The running kernel's BTF (on a DaemonSet: the host's, mounted), for the
    /// struct offsets and the switch tracepoint's BTF id. BTF of another
    /// kernel build would point the programs at the wrong fields.
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
    /// How long the inactive file pages subtracted from memory usage (for the
    /// working set) may be reused while usage holds steady (within 1 MiB or
    /// 1 %); `0`: read `memory.stat` at every interval (exact, and the
    /// kernel's largest per-container cost).
    #[arg(
        long,
        env = "NODEPULSE_MEMORY_STAT_MAX_AGE",
        default_value = "10s",
        value_parser = parse_period,
        global = true
    )]
    memory_stat_max_age: Duration,
    /// How many cgroups the eBPF accounting counts at once: every live cgroup
    /// that has run since the agent started (a node's 110 pods make ~400 with
    /// the host's own). Kernel memory, charged to the agent: 8 bytes ×
    /// possible CPUs per cgroup. Beyond it CPU time is lost, and the agent
    /// warns.
    #[arg(
        long,
        env = "NODEPULSE_MAX_CGROUPS",
        default_value_t = agent_common::CGROUP_CPU_MAX_ENTRIES,
        value_parser = clap::value_parser!(u32).range(1..),
        global = true
    )]
    max_cgroups: u32,
    #[command(flatten)]
    log: support::logging::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: sample this node every interval and stream to every
    /// aggregator replica.
    Run(Box<RunArgs>),
    /// Print a live table of this node's pods and containers. No cluster is
    /// needed; given this node's name and credentials (as in the agent's pod:
    /// `kubectl exec ds/nodepulse-agent -- nodepulse-agent top`) it names
    /// pods and containers and leaves out pod sandboxes.
    Top {
        /// Refresh interval (`1s`, `500ms`, or seconds).
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
        /// Stop after this many refreshes (default: until Ctrl-C).
        #[arg(long)]
        count: Option<u64>,
        /// This node's name, to read its pods from kube-apiserver.
        #[arg(long, env = "NODE_NAME")]
        node_name: Option<String>,
        /// kubeconfig for reading this node's pods (default: in-cluster).
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
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
    /// This node's kubelet, by address (the DaemonSet passes status.hostIP):
    /// the source when cgroupfs cannot be read, and a periodic cross-check of
    /// our figures. Unset (and no --kubelet-url): neither.
    #[arg(
        long,
        env = "NODEPULSE_KUBELET_ADDRESS",
        conflicts_with = "kubelet_url"
    )]
    kubelet_address: Option<String>,
    /// The kubelet's port, with --kubelet-address.
    #[arg(long, env = "NODEPULSE_KUBELET_PORT", default_value_t = 10250)]
    kubelet_port: u16,
    /// The kubelet's full URL instead (`https://host:port/metrics/resource`).
    #[arg(long, env = "NODEPULSE_KUBELET_URL")]
    kubelet_url: Option<String>,
    /// CA bundle that signs the kubelet's serving certificate.
    #[arg(long, env = "NODEPULSE_KUBELET_CA_FILE")]
    kubelet_ca_file: Option<PathBuf>,
    /// Do not verify the kubelet's serving certificate (as metrics-server's
    /// flag of the same name; for self-signed kubelet certificates).
    #[arg(long, env = "NODEPULSE_KUBELET_INSECURE_TLS")]
    kubelet_insecure_tls: bool,
    /// Bearer token for the kubelet (the ServiceAccount's; re-read each scrape).
    #[arg(long, env = "NODEPULSE_KUBELET_TOKEN_FILE")]
    kubelet_token_file: Option<PathBuf>,
    /// How often the kubelet is scraped while it is the source.
    #[arg(long, default_value = "10s", value_parser = parse_interval)]
    kubelet_interval: Duration,
    /// How often our figures are compared with the kubelet's (`0`: never).
    #[arg(long, default_value = "60s", value_parser = parse_period)]
    kubelet_check_interval: Duration,
    /// Where to serve `/livez`, `/readyz` and Prometheus `/metrics` over
    /// plain HTTP (`0.0.0.0:8080` in the DaemonSet: the pod's IP; a loopback
    /// address keeps them inside the pod). Unset: not served.
    #[arg(long, env = "NODEPULSE_HEALTH_ADDRESS")]
    health_address: Option<std::net::SocketAddr>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    args.log.init().context("setting up logging")?;
    raise_open_file_limit();
    let opts = Options {
        cgroup_root: args.cgroup_root,
        proc_root: args.proc_root,
        btf_path: args.btf,
        cpu_source: args.cpu_source,
        force_tick: false,
        force_raw_tracepoint: false,
        pending_slots: agent_common::PENDING_SLOTS,
        max_cgroups: args.max_cgroups,
        node_cgroup: args.node_cgroup,
        memory_stat_max_age: args.memory_stat_max_age,
    };
    match args.command {
        Command::Top {
            interval,
            count,
            node_name,
            kubeconfig,
        } => {
            let names = node_name.map(|node| watch_pods(node, kubeconfig.as_deref()));
            run_top(opts, interval, count, names)
        }
        Command::Run(run) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(run_agent(opts, *run)),
    }
}

/// Before anything opens files: the counter files kept open per container
/// outgrow the soft limit of 1024 that container runtimes hand out (see
/// [`files::raise_open_file_limit`]). Not fatal: a small node fits, and on a
/// large one the cgroups whose files could not be opened are reported as
/// skipped.
fn raise_open_file_limit() {
    match files::raise_open_file_limit() {
        Ok(limit) if limit.was < limit.soft => tracing::debug!(
            from = limit.was,
            to = limit.soft,
            "raised the open-file limit (RLIMIT_NOFILE) to its hard limit"
        ),
        Ok(limit) => tracing::debug!(
            soft = limit.soft,
            hard = limit.hard,
            "open-file limit (RLIMIT_NOFILE) already at its hard limit"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "could not raise the open-file limit (RLIMIT_NOFILE) to its hard limit: \
             a node of many pods may run out of descriptors (the agent keeps 3-4 files \
             open per container); raise the container's limit (the runtime's \
             LimitNOFILE, or `ulimit -n` before starting the agent)"
        ),
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
    let kubelet = match kubelet_url(&args)? {
        None => None,
        Some(url) => {
            let mut config = KubeletConfig::new(url);
            config.ca_file = args.kubelet_ca_file.clone();
            config.insecure = args.kubelet_insecure_tls;
            if config.insecure {
                ::kubelet::client::warn_insecure(&config.url.to_string());
            }
            config.token_file = args.kubelet_token_file.clone();
            Some(run::Kubelet {
                client: KubeletClient::new(config).context("--kubelet-url")?,
                interval: args.kubelet_interval,
                check_every: Some(args.kubelet_check_interval).filter(|d| !d.is_zero()),
                tolerance: Tolerance::default(),
            })
        }
    };
    let client = support::kube::client(args.kubeconfig.as_deref())
        .await
        .context("kube-apiserver credentials")?;
    let cancel = CancellationToken::new();
    let health = agent::health::Health::new(args.interval);
    let health_server = match args.health_address {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--health-address {addr}"))?;
            tracing::info!(%addr, "serving /livez, /readyz and /metrics");
            Some(tokio::spawn(agent::health::serve(
                listener,
                Arc::clone(&health),
                cancel.clone(),
            )))
        }
        None => None,
    };
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
        kubelet,
        export: export::Config {
            targets,
            ca_file: args.aggregator_ca,
            tls_server_name: args.aggregator_server_name,
            token_file: args.token_file,
            ..export::Config::default()
        },
        health,
    };
    let result = run::run(config, meta_rx, cancel.clone()).await;
    cancel.cancel();
    let _ = pods.await;
    if let Some(server) = health_server {
        let _ = server.await;
    }
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

/// The kubelet's `/metrics/resource` URL from --kubelet-url, or from
/// --kubelet-address and --kubelet-port (IPv6 addresses get brackets).
fn kubelet_url(args: &RunArgs) -> Result<Option<http::Uri>> {
    if let Some(url) = &args.kubelet_url {
        return url
            .parse()
            .map(Some)
            .with_context(|| format!("--kubelet-url {url:?}: not a URL"));
    }
    let Some(address) = &args.kubelet_address else {
        return Ok(None);
    };
    let url = match address.parse::<std::net::IpAddr>() {
        Ok(ip) => resource_url((ip, args.kubelet_port).into())?,
        Err(_) => format!("https://{address}:{}/metrics/resource", args.kubelet_port)
            .parse()
            .with_context(|| format!("--kubelet-address {address:?}: not a host name or IP"))?,
    };
    Ok(Some(url))
}

/// A period like [`parse_interval`], or `0` (zero: never).
fn parse_period(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    parse_interval(s)
}

/// The pod watch for `top`, on a thread of its own; its first listing is
/// awaited (up to 5 s) so that the first table already has names. `Err`:
/// why there are no names.
fn watch_pods(
    node: String,
    kubeconfig: Option<&std::path::Path>,
) -> Result<watch::Receiver<Arc<NodeMetadata>>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?;
    // Built on the runtime that will drive it: the client's tasks live there.
    let client = runtime
        .block_on(support::kube::client(kubeconfig))
        .map_err(|e| format!("no kube-apiserver credentials: {e}"))?;
    let (tx, mut rx) = watch::channel(Arc::new(NodeMetadata::default()));
    std::thread::Builder::new()
        .name("pods".into())
        .spawn(move || runtime.block_on(pods::run(client, node, tx, CancellationToken::new())))
        .map_err(|e| format!("starting the pod watch: {e}"))?;
    let listed = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), rx.changed()).await });
    match listed {
        Ok(Ok(())) => Ok(rx),
        _ => Err("this node's pods could not be listed within 5 s".into()),
    }
}

fn run_top(
    opts: Options,
    interval: Duration,
    count: Option<u64>,
    names: Option<Result<watch::Receiver<Arc<NodeMetadata>>, String>>,
) -> Result<()> {
    let mut collector = Collector::new(opts).context("starting the collector")?;
    if let Some(reason) = collector.fallback_reason() {
        eprintln!("cpu source: cgroupfs ({reason})");
    }
    let names = match names {
        Some(Ok(rx)) => Some(rx),
        Some(Err(why)) => {
            eprintln!("pods by UID, containers by id, pod sandboxes included: {why}");
            None
        }
        None => {
            eprintln!(
                "pods by UID, containers by id, pod sandboxes included \
                 (--node-name and cluster credentials give names)"
            );
            None
        }
    };
    let mut prev = collector.collect()?;
    let mut shown = 0u64;
    while count.is_none_or(|c| shown < c) {
        std::thread::sleep(interval);
        let cur = collector.collect()?;
        let meta = names.as_ref().map(|rx| Arc::clone(&rx.borrow()));
        let table = top::render(&prev, &cur, meta.as_deref());
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

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    fn run_args(extra: &[&str]) -> RunArgs {
        let mut argv = vec![
            "nodepulse-agent",
            "run",
            "--node-name=n1",
            "--aggregator=https://127.0.0.1:8443",
        ];
        argv.extend_from_slice(extra);
        match Args::try_parse_from(argv).expect("parses").command {
            Command::Run(run) => *run,
            Command::Top { .. } => panic!("run expected"),
        }
    }

    #[test]
    fn flags_parse_with_their_defaults() {
        Args::command().debug_assert();
        let run = run_args(&[]);
        assert_eq!(run.interval, Duration::from_secs(1));
        assert_eq!(run.kubelet_url, None);
        assert_eq!(run.kubelet_interval, Duration::from_secs(10));
        assert_eq!(run.kubelet_check_interval, Duration::from_secs(60));
        let run = run_args(&[
            "--kubelet-url=https://10.0.0.7:10250/metrics/resource",
            "--kubelet-insecure-tls",
            "--kubelet-check-interval=0",
            "--kubelet-interval=15s",
        ]);
        assert!(run.kubelet_insecure_tls);
        assert_eq!(
            kubelet_url(&run).expect("url").map(|u| u.to_string()),
            Some("https://10.0.0.7:10250/metrics/resource".into())
        );
        let url = |address: &str| {
            kubelet_url(&run_args(&[&format!("--kubelet-address={address}")]))
                .map(|u| u.map(|u| u.to_string()))
        };
        assert_eq!(
            url("fd00::7").expect("v6"),
            Some("https://[fd00::7]:10250/metrics/resource".into())
        );
        assert_eq!(
            url("node-1.example").expect("name"),
            Some("https://node-1.example:10250/metrics/resource".into())
        );
        assert!(url("not a host").is_err());
        assert_eq!(kubelet_url(&run_args(&[])).expect("none"), None);
        assert!(
            Args::try_parse_from([
                "nodepulse-agent",
                "run",
                "--node-name=n1",
                "--kubelet-address=10.0.0.7",
                "--kubelet-url=https://10.0.0.7:10250/metrics/resource",
            ])
            .is_err()
        );
        assert_eq!(run.kubelet_check_interval, Duration::ZERO);
        assert_eq!(run.kubelet_interval, Duration::from_secs(15));
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
        assert!(parse_interval("50ms").is_err());
        assert!(parse_interval("1h").is_err());
        assert_eq!(parse_period("0"), Ok(Duration::ZERO));
        assert_eq!(parse_period("2m"), Ok(Duration::from_secs(120)));
    }
}
