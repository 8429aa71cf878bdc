//! `nodepulse-aggregator`: flags, tracing and process limits; then the
//! [`Aggregator`] the library assembles, until SIGTERM or Ctrl-C.

use aggregator_api::{
    app::Aggregator, config::Args, ingest::config::IngestArgs, kubelets::KubeletArgs,
};
use anyhow::Context as _;
use clap::Parser as _;

#[derive(clap::Parser)]
#[command(
    name = "nodepulse-aggregator",
    version,
    // As Go's flag parsing: a flag given twice takes the last value, so a
    // metrics-server Deployment's args can be extended rather than edited.
    args_override_self = true,
    about = "Serves metrics.k8s.io from agent-reported usage, as a drop-in for metrics-server"
)]
struct Cli {
    #[command(flatten)]
    api: Args,
    #[command(flatten)]
    ingest: IngestArgs,
    #[command(flatten)]
    kubelets: KubeletArgs,
    #[command(flatten)]
    log: support::logging::LogArgs,
}

/// Resolves on SIGTERM (how the kubelet stops a pod) or Ctrl-C.
/// Connections cost a descriptor each, and container runtimes hand out a
/// soft limit of 1024: raise it to the hard limit (nothing here uses
/// `select(2)`, the reason the soft default is low).
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (limit.current, limit.maximum)
        && soft < hard
    {
        let raised = rustix::process::Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-file limit"),
            Err(error) => tracing::warn!(%error, soft, hard, "could not raise the open-file limit"),
        }
    }
    if let Some(soft) = getrlimit(Resource::Nofile).current
        && soft < 4096
    {
        tracing::warn!(
            soft,
            "the open-file limit holds few connections: raise the container's LimitNOFILE"
        );
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown signal received");
}

/// jemalloc returns memory freed after a burst (a flood of connections, a
/// fleet reconnecting) to the system within seconds (its decay); glibc's
/// allocator keeps most of it in its per-thread arenas, so RSS would stay at
/// the burst's peak. Measured side by side in BENCHMARKS.md (the soak).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`. Its decay runs only when the
/// arena that holds the freed pages allocates again; the threads that hold
/// start-up's transients (binding checks, token reviews) go quiet while the
/// ingest thread works, so without a background thread those pages would
/// stay resident (+20 % RSS at 1,000 nodes, BENCHMARKS.md).
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; JEMALLOC_OPTIONS.len()] = JEMALLOC_OPTIONS.first_chunk().unwrap();
/// A C string: jemalloc reads `_rjem_malloc_conf` as `const char *`.
const JEMALLOC_OPTIONS: &[u8] = b"background_thread:true\0";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.log.init().context("setting up logging")?;
    cli.api.ignored.warn();
    let config = cli.api.into_config().context("invalid flags")?;
    let kubelets = cli
        .kubelets
        .settings(config.metric_resolution)
        .context("invalid flags")?;
    raise_open_file_limit();
    Aggregator::build(config, cli.ingest, kubelets)
        .await
        .context("starting")?
        .run(shutdown_signal())
        .await
        .context("running")?;
    Ok(())
}
