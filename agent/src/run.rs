//! The agent daemon: collect every interval, stream to the aggregators.
//!
//! Collection is blocking work (cgroupfs reads, eBPF map syscalls), so it runs
//! on its own thread on a fixed schedule that does not drift; it hands each
//! sample to the exporter through a one-slot `watch` channel.
use std::{
    sync::Arc,
    thread,
    time::{Duration, Instant, SystemTime},
};

use proto::v1::NodeMetadata;
use tokio::{runtime::Handle, sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use export::Outgoing;

use crate::{
    collector::{self, Collector, Snapshot},
    health::{Collected, Health},
    kubelet::{
        ClientError, KubeletClient, Parsed,
        check::{Comparison, CrossCheck, Tolerance},
        source,
    },
    report,
};

/// Errors starting the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Collector(#[from] collector::Error),
    #[error("spawning the collector thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the collector thread panicked: exiting, to be restarted")]
    CollectorPanicked,
}

/// The kubelet as a second source.
#[derive(Debug)]
pub struct Kubelet {
    pub client: KubeletClient,
    /// How often it is scraped while it is the source (cgroupfs unreadable).
    /// Its figures only change at cAdvisor's housekeeping, ~10 s.
    pub interval: Duration,
    /// How often our figures are checked against it; `None`: never.
    pub check_every: Option<Duration>,
    pub tolerance: Tolerance,
}

/// The daemon's settings.
#[derive(Debug)]
pub struct Config {
    pub node_name: String,
    pub interval: Duration,
    pub collector: collector::Options,
    pub export: export::Config,
    pub kubelet: Option<Kubelet>,
    /// What `/livez`, `/readyz` and `/metrics` report.
    pub health: Arc<Health>,
}

/// Runs until `cancel`. `metadata` carries the node's labels and its pods'
/// names (from the pod watcher, or fixed in tests).
pub async fn run(
    config: Config,
    metadata: watch::Receiver<Arc<NodeMetadata>>,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let sampler = Sampler::new(
        config.collector.clone(),
        config.kubelet,
        tokio::runtime::Handle::current(),
    )?;
    let (tx, rx) = watch::channel(None);
    let thread = {
        let stop = cancel.clone();
        let (node, interval) = (config.node_name.clone(), config.interval);
        let health = Arc::clone(&config.health);
        spawn_collector(&cancel, move || {
            collect_loop(sampler, &node, interval, metadata, &tx, &health, &stop)
        })
        .map_err(Error::Thread)?
    };
    let export = export::Config {
        observer: Some(config.health),
        ..config.export
    };
    export::run(export, rx, cancel.clone()).await;
    cancel.cancel();
    // The thread notices within one interval.
    match tokio::task::spawn_blocking(move || thread.join()).await {
        Ok(Err(_panicked)) => Err(Error::CollectorPanicked),
        _ => Ok(()),
    }
}

/// Runs `body` on the collector thread, which cancels `cancel` when it
/// ends, however it ends: after a panic the exporters would otherwise go on
/// with the last sample (never changing again) and the agent would look
/// alive. Cancelled, the whole agent stops and exits with an error, and the
/// kubelet restarts it.
fn spawn_collector(
    cancel: &CancellationToken,
    body: impl FnOnce() + Send + 'static,
) -> std::io::Result<thread::JoinHandle<()>> {
    let stop = cancel.clone().drop_guard();
    thread::Builder::new()
        .name("collector".into())
        .spawn(move || {
            let _stop = stop;
            body();
        })
}

fn collect_loop(
    mut sampler: Sampler,
    node: &str,
    interval: Duration,
    mut metadata: watch::Receiver<Arc<NodeMetadata>>,
    tx: &watch::Sender<Option<Arc<Outgoing>>>,
    health: &Health,
    cancel: &CancellationToken,
) {
    let mut next = Instant::now();
    let mut seq = 0u64;
    // This process's counters: the aggregators restart the node's series
    // when it (or the CPU source) changes rather than read a new agent's
    // counters against the last one's.
    let epoch = report::new_epoch();
    let mut version = 0u64;
    let mut errors_logged = Instant::now() - Duration::from_secs(3600);
    let (mut checks, mut scrape_errors) = (0, 0);
    while !cancel.is_cancelled() {
        if metadata.has_changed().unwrap_or(false) {
            version += 1;
        }
        let meta = Arc::clone(&metadata.borrow_and_update());
        let started = Instant::now();
        let sample = sampler.sample(&meta);
        health.collected(
            started.elapsed(),
            sample.as_ref().map(|s| Collected {
                source: s.source.name(),
                containers: s.pods.values().map(|p| p.containers.len() as u64).sum(),
                lost_charges: sampler.lost_charges(),
            }),
        );
        if sampler.checks() > checks {
            checks = sampler.checks();
            let agree = sampler
                .last_comparison()
                .is_some_and(|c| c.disagreements.is_empty());
            health.kubelet_check(agree);
        }
        for _ in scrape_errors..sampler.scrape_errors() {
            health.kubelet_scrape_failed();
        }
        scrape_errors = sampler.scrape_errors();
        if let Some(mut snapshot) = sample {
            // Unnamed containers (pod sandboxes, containers the kubelet has
            // not reported yet) are nothing the aggregators could serve.
            snapshot.retain_named(&meta);
            if !snapshot.errors.is_empty() && errors_logged.elapsed() > Duration::from_secs(60) {
                warn!(source = %snapshot.source, count = snapshot.errors.len(), first = %snapshot.errors[0], "skipped");
                errors_logged = Instant::now();
            }
            seq += 1;
            tx.send_replace(Some(Arc::new(Outgoing {
                report: report::build(node, seq, epoch, &snapshot),
                metadata: meta,
                metadata_version: version,
            })));
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

/// Why the kubelet is being scraped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    /// It is the source: cgroupfs could not be read.
    Source,
    /// Checking our figures against it.
    Check,
}

type Scrape = JoinHandle<Result<Parsed, ClientError>>;

/// The kubelet side of [`Sampler`]: at most one scrape in flight, run on the
/// async runtime so a slow kubelet never delays our own collection.
struct KubeletSide {
    client: Arc<KubeletClient>,
    runtime: Handle,
    interval: Duration,
    check_every: Option<Duration>,
    inflight: Option<(Purpose, Scrape)>,
    /// When the last scrape as the source started.
    sourced: Option<Instant>,
    next_check: Instant,
    check: CrossCheck,
    /// A check's scrape, compared at the next sample (ours then include a
    /// reading taken after every one of the kubelet's).
    pending: Option<Parsed>,
    /// The last scrape failed (logged once per failure streak).
    failing: bool,
    last_comparison: Option<Comparison>,
    checks: u64,
    scrape_errors: u64,
}

impl KubeletSide {
    fn start(&mut self, purpose: Purpose) {
        if self.inflight.is_none() {
            let client = Arc::clone(&self.client);
            let task = self.runtime.spawn(async move { client.scrape().await });
            self.inflight = Some((purpose, task));
        }
    }

    /// The finished scrape, if one finished; `wait`: block until it does.
    fn finished(&mut self, wait: bool) -> Option<(Purpose, Option<Parsed>)> {
        if !wait && !self.inflight.as_ref()?.1.is_finished() {
            return None;
        }
        let (purpose, task) = self.inflight.take()?;
        let parsed = match self.runtime.block_on(task) {
            Ok(Ok(parsed)) => {
                if self.failing {
                    info!(url = %self.client.url(), "kubelet reachable again");
                    self.failing = false;
                }
                Some(parsed)
            }
            Ok(Err(e)) => {
                self.scrape_errors += 1;
                if !self.failing {
                    warn!(error = %e, ?purpose, "scraping the kubelet failed");
                    self.failing = true;
                }
                None
            }
            Err(e) => {
                warn!(error = %e, "kubelet scrape task failed");
                None
            }
        };
        Some((purpose, parsed))
    }

    /// With our own `snapshot` in hand: record it when a check is near,
    /// start the check when due, compare when its scrape is back.
    fn cross_check(&mut self, snapshot: &Snapshot, meta: &NodeMetadata, wait: bool) {
        let Some(every) = self.check_every else {
            return;
        };
        let now = Instant::now();
        let busy = self.inflight.is_some() || self.pending.is_some();
        if busy || now + self.check.lookback() >= self.next_check {
            self.check.record(snapshot);
        }
        if let Some(parsed) = self.pending.take() {
            self.compare(&parsed, meta);
        }
        if now >= self.next_check && !busy {
            self.next_check = now + every;
            self.start(Purpose::Check);
        }
        if let Some((Purpose::Check, parsed)) = self.finished(wait) {
            self.pending = parsed;
        }
    }

    fn compare(&mut self, parsed: &Parsed, meta: &NodeMetadata) {
        let c = self.check.compare(&parsed.stats, meta);
        if c.disagreements.is_empty() {
            // Said once, when CPU is first compared and when agreement
            // returns; then only at debug (it runs every minute).
            let cpu_compared_before = self
                .last_comparison
                .as_ref()
                .is_some_and(|l| l.cpu_worst.is_some() && l.disagreements.is_empty());
            let pct =
                |f: Option<f64>| f.map_or_else(|| "-".into(), |f| format!("{:.2}%", f * 100.0));
            if c.cpu_worst.is_some() && !cpu_compared_before {
                info!(
                    compared = c.compared,
                    unpaired = c.unpaired,
                    cpu_max_diff = %pct(c.cpu_worst),
                    memory_max_diff = %pct(c.memory_worst),
                    "kubelet cross-check: agree"
                );
            } else {
                debug!(
                    compared = c.compared,
                    unpaired = c.unpaired,
                    cpu_max_diff = %pct(c.cpu_worst),
                    memory_max_diff = %pct(c.memory_worst),
                    "kubelet cross-check: agree"
                );
            }
        } else {
            let shown: Vec<String> = c
                .disagreements
                .iter()
                .take(5)
                .map(ToString::to_string)
                .collect();
            warn!(
                compared = c.compared,
                disagreements = c.disagreements.len(),
                first = %shown.join("; "),
                "kubelet cross-check: our figures differ from the kubelet's"
            );
        }
        self.last_comparison = Some(c);
        self.checks += 1;
    }

    /// As the source: a snapshot when a scrape came back; a new scrape when
    /// the last is `interval` old.
    fn source(&mut self, meta: &NodeMetadata, wait: bool) -> Option<Snapshot> {
        if self.sourced.is_none_or(|t| t.elapsed() >= self.interval) {
            self.sourced = Some(Instant::now());
            self.start(Purpose::Source);
        }
        let (_, parsed) = self.finished(wait)?;
        match source::snapshot(&parsed?.stats, meta, SystemTime::now()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "kubelet stats unusable");
                None
            }
        }
    }
}

/// One sample per call: from cgroupfs (CPU from eBPF or cgroupfs counters)
/// while that can be read, else from the kubelet when one is configured.
/// Checks our figures against the kubelet's now and then.
pub struct Sampler {
    collector: Option<Collector>,
    kubelet: Option<KubeletSide>,
    /// The reason cgroupfs is not the source, while it is not.
    unreadable: Option<String>,
    /// Block on kubelet scrapes instead of picking them up at a later call
    /// (tests: every call then sees what its scrape returned).
    wait: bool,
}

impl Sampler {
    /// Opens cgroupfs (and eBPF). When that fails and a kubelet is
    /// configured, the kubelet is the source from the start.
    pub fn new(
        opts: collector::Options,
        kubelet: Option<Kubelet>,
        runtime: Handle,
    ) -> Result<Self, Error> {
        let (collector, unreadable) = match Collector::new(opts) {
            Ok(c) => {
                match c.fallback_reason() {
                    None => info!(source = %c.source(), "collecting"),
                    Some(reason) => warn!(source = %c.source(), %reason, "collecting without eBPF"),
                }
                (Some(c), None)
            }
            Err(e) if kubelet.is_some() => {
                warn!(error = %e, "cgroupfs unreadable: the kubelet is the source");
                (None, Some(e.to_string()))
            }
            Err(e) => return Err(e.into()),
        };
        let kubelet = kubelet.map(|k| KubeletSide {
            client: Arc::new(k.client),
            runtime,
            interval: k.interval,
            check_every: k.check_every,
            inflight: None,
            sourced: None,
            // The first check one period in: until then the agent warms up.
            next_check: Instant::now() + k.check_every.unwrap_or_default(),
            check: CrossCheck::new(k.tolerance, CHECK_LOOKBACK),
            pending: None,
            failing: false,
            last_comparison: None,
            checks: 0,
            scrape_errors: 0,
        });
        Ok(Self {
            collector,
            kubelet,
            unreadable,
            wait: false,
        })
    }

    /// Makes every call wait for a kubelet scrape it started or found in
    /// flight (for tests; the daemon never waits on the kubelet).
    pub fn wait_for_kubelet(&mut self, wait: bool) {
        self.wait = wait;
    }

    /// The next sample, if there is one now: `None` while neither cgroupfs
    /// nor the kubelet has given one.
    pub fn sample(&mut self, meta: &NodeMetadata) -> Option<Snapshot> {
        let own = match self.collector.as_mut().map(Collector::collect) {
            Some(Ok(s)) => {
                if let Some(reason) = self.unreadable.take() {
                    info!(%reason, "cgroupfs readable again");
                }
                Some(s)
            }
            Some(Err(e)) => {
                let reason = e.to_string();
                if self.unreadable.as_ref() != Some(&reason) {
                    match self.kubelet {
                        Some(_) => warn!(%reason, "collection failed: the kubelet is the source"),
                        None => warn!(%reason, "collection failed"),
                    }
                }
                self.unreadable = Some(reason);
                None
            }
            None => None,
        };
        let wait = self.wait;
        match (own, self.kubelet.as_mut()) {
            (Some(s), Some(k)) => {
                k.cross_check(&s, meta, wait);
                Some(s)
            }
            (Some(s), None) => Some(s),
            (None, Some(k)) => k.source(meta, wait),
            (None, None) => None,
        }
    }

    /// The outcome of the last cross-check, if there was one.
    pub fn last_comparison(&self) -> Option<&Comparison> {
        self.kubelet.as_ref()?.last_comparison.as_ref()
    }

    /// How many cross-checks were made.
    pub fn checks(&self) -> u64 {
        self.kubelet.as_ref().map_or(0, |k| k.checks)
    }

    /// How many kubelet scrapes failed.
    pub fn scrape_errors(&self) -> u64 {
        self.kubelet.as_ref().map_or(0, |k| k.scrape_errors)
    }

    /// Charges the eBPF program lost, while it is the CPU source.
    pub fn lost_charges(&self) -> Option<u64> {
        Some(self.collector.as_ref()?.ebpf()?.lost_charges())
    }
}

/// How much of our history is kept before a cross-check: the kubelet's
/// readings lag its scrape by cAdvisor's housekeeping (at most 15 s by
/// default), plus the scrape.
const CHECK_LOOKBACK: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collector_thread_that_panics_stops_the_agent() {
        let cancel = CancellationToken::new();
        let thread = spawn_collector(&cancel, || panic!("a bug in collection")).expect("spawn");
        assert!(thread.join().is_err(), "the panic reaches the join");
        assert!(
            cancel.is_cancelled(),
            "exporters and watchers are told to stop"
        );
    }

    #[test]
    fn a_collector_thread_runs_until_cancelled_and_ends_cleanly() {
        let cancel = CancellationToken::new();
        let seen = cancel.clone();
        let thread = spawn_collector(&cancel, move || {
            while !seen.is_cancelled() {
                thread::park_timeout(Duration::from_millis(10));
            }
        })
        .expect("spawn");
        assert!(!cancel.is_cancelled(), "running: nothing stops");
        cancel.cancel();
        thread.join().expect("ends without a panic");
    }
}
