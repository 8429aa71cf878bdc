//! The agent daemon: collect every interval, stream to the aggregators.
//!
//! Collection is blocking work (cgroupfs reads, eBPF map syscalls), so it runs
//! on its own thread on a fixed schedule that does not drift; it hands each
//! sample to the exporter through a one-slot `watch` channel.
use std::{
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use proto::v1::NodeMetadata;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    collector::{self, Collector},
    export::{self, Outgoing},
    report,
};

/// Errors starting the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Collector(#[from] collector::Error),
    #[error("spawning the collector thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The daemon's settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    pub interval: Duration,
    pub collector: collector::Options,
    pub export: export::Config,
}

/// Runs until `cancel`. `metadata` carries the node's labels and its pods'
/// names (from the pod watcher, or fixed in tests).
pub async fn run(
    config: Config,
    metadata: watch::Receiver<Arc<NodeMetadata>>,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let collector = Collector::new(config.collector.clone())?;
    match collector.fallback_reason() {
        None => info!(source = %collector.source(), "collecting"),
        Some(reason) => warn!(source = %collector.source(), %reason, "collecting without eBPF"),
    }
    let (tx, rx) = watch::channel(None);
    let thread = {
        let cancel = cancel.clone();
        let (node, interval) = (config.node_name.clone(), config.interval);
        thread::Builder::new()
            .name("collector".into())
            .spawn(move || collect_loop(collector, &node, interval, metadata, &tx, &cancel))
            .map_err(Error::Thread)?
    };
    export::run(config.export, rx, cancel.clone()).await;
    cancel.cancel();
    // The thread notices within one interval.
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    Ok(())
}

fn collect_loop(
    mut collector: Collector,
    node: &str,
    interval: Duration,
    mut metadata: watch::Receiver<Arc<NodeMetadata>>,
    tx: &watch::Sender<Option<Arc<Outgoing>>>,
    cancel: &CancellationToken,
) {
    let mut next = Instant::now();
    let mut seq = 0u64;
    let mut version = 0u64;
    let mut errors_logged = Instant::now() - Duration::from_secs(3600);
    while !cancel.is_cancelled() {
        match collector.collect() {
            Ok(snapshot) => {
                if !snapshot.errors.is_empty() && errors_logged.elapsed() > Duration::from_secs(60)
                {
                    warn!(count = snapshot.errors.len(), first = %snapshot.errors[0], "cgroups skipped");
                    errors_logged = Instant::now();
                }
                if metadata.has_changed().unwrap_or(false) {
                    version += 1;
                }
                let meta = Arc::clone(&metadata.borrow_and_update());
                seq += 1;
                tx.send_replace(Some(Arc::new(Outgoing {
                    report: report::build(node, seq, &snapshot),
                    metadata: meta,
                    metadata_version: version,
                })));
            }
            Err(e) => warn!(error = %e, "collection failed"),
        }
        next += interval;
        let now = Instant::now();
        if next <= now {
            // Fell behind (suspended, overloaded): skip missed ticks, no bursts.
            next = now + interval;
        }
        thread::sleep(next - now);
    }
}
