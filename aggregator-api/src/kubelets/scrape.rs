//! One node's kubelet, read every interval into the store as the node's
//! report: the shared parser, the shared join to the node's pods (watched
//! as the agent watches them), and the store's own checks and rate rules.
use std::{
    collections::BTreeMap,
    hash::{Hash, Hasher},
    sync::{Arc, atomic::Ordering},
    time::{Duration, SystemTime},
};

use kube::Client;
use kubelet::{ClientError, KubeletClient, join};
use proto::v1::NodeMetadata;
use tokio::{
    sync::{Semaphore, watch},
    time::{Instant, MissedTickBehavior},
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    forward::{Forwarder, Peers},
    picked::Picked,
    stats::{Outcome, ScrapeStats},
};
use crate::store::{Capacity, Reject, Source, Store};

/// What every node's loop shares.
pub struct Shared {
    pub store: Arc<Store>,
    pub client: Client,
    pub permits: Semaphore,
    pub stats: Arc<ScrapeStats>,
    pub interval: Duration,
    /// The nodes being read, for ingest to know what a peer may forward.
    pub picked: Arc<Picked>,
    /// With reads split across replicas: the replicas, to share the reads
    /// with and forward them to.
    pub peers: Option<Peers>,
}

impl Shared {
    /// Whether this replica reads `node`'s kubelet now.
    fn reads(&self, node: &str) -> bool {
        (self.peers.as_ref()).is_none_or(|p| p.members.borrow().reads(node))
    }
}

/// Where in the interval `node` is read, the same on every replica and
/// every restart, so a thousand kubelets are not read in one burst.
pub fn offset(node: &str, interval: Duration) -> Duration {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    node.hash(&mut h);
    interval.mul_f64((h.finish() % 1000) as f64 / 1000.0)
}

/// What a failed read is, for the count and the log line, and what fixes it.
fn outcome(error: &ClientError) -> Outcome {
    match error {
        ClientError::Connect { .. } => Outcome::Unreachable,
        ClientError::CertificateRejected { .. } => Outcome::Certificate,
        ClientError::Tls { .. } => Outcome::Tls,
        ClientError::Timeout { .. } => Outcome::Timeout,
        ClientError::Status { status, .. } if status.as_u16() == 401 => Outcome::Unauthorized,
        ClientError::Status { status, .. } if status.as_u16() == 403 => Outcome::Forbidden,
        ClientError::Status { .. } => Outcome::Status,
        _ => Outcome::Other,
    }
}

/// How a node's loop starts.
pub struct Start {
    /// The origin of its counters: a new loop has a new one, so the store
    /// starts the node's series again rather than join counters of another
    /// origin.
    pub epoch: u64,
    /// When the first read is.
    pub first: Duration,
    /// The Node's labels, from the caller's own watch of it.
    pub labels: watch::Receiver<BTreeMap<String, String>>,
    /// The Node's capacity, from the same watch.
    pub capacity: watch::Receiver<Option<Capacity>>,
}

/// One node's loop, until `cancel`: its own pod watch, then a read every
/// interval.
pub async fn run(
    shared: Arc<Shared>,
    node: Arc<str>,
    kubelet: KubeletClient,
    start: Start,
    cancel: CancellationToken,
) {
    let (tx, mut meta) = watch::channel(Arc::new(NodeMetadata::default()));
    let pods = tokio::spawn(kubelet::pods::run_with_labels(
        shared.client.clone(),
        node.to_string(),
        start.labels,
        tx,
        cancel.child_token(),
    ));
    // Nothing can be joined before the pods are listed.
    tokio::select! {
        changed = meta.changed() => if changed.is_err() { return },
        () = cancel.cancelled() => return,
    }
    let mut node_loop = NodeLoop {
        shared: &shared,
        node: &node,
        epoch: start.epoch,
        capacity: start.capacity,
        seq: 0,
        reading: false,
        sent: None,
        held: None,
        forward: shared.peers.clone().map(Forwarder::new),
        cancel: &cancel,
    };
    let mut failing: Option<Outcome> = None;
    let mut ticks = tokio::time::interval_at(Instant::now() + start.first, shared.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = cancel.cancelled() => break,
        }
        if !shared.reads(&node) {
            node_loop.pass();
            continue;
        }
        node_loop.set_reading(true);
        let result = {
            let Ok(_permit) = shared.permits.acquire().await else {
                break;
            };
            kubelet.scrape().await
        };
        let scraped = SystemTime::now();
        // One version for the join and the report: the watch may move on.
        let current = Arc::clone(&meta.borrow());
        let result = result
            .map_err(|e| (outcome(&e), e.to_string()))
            .and_then(|parsed| {
                join::join(&parsed.stats, &current, scraped).map_err(|e| {
                    let first = parsed.errors.first().map(ToString::to_string);
                    (
                        Outcome::Garbage,
                        format!(
                            "{e} ({} lines did not parse; first: {})",
                            parsed.error_count,
                            first.unwrap_or_default()
                        ),
                    )
                })
            })
            .and_then(|joined| node_loop.offer(joined, &current));
        match result {
            Ok(outcome) => {
                shared.stats.count(outcome);
                if let Some(cause) = failing.take() {
                    info!(node = %node, after = cause.label(), "the kubelet is read again");
                }
            }
            Err((cause, error)) => {
                shared.stats.count(cause);
                // Once per cause: a kubelet down for an hour is one line.
                if failing.replace(cause) != Some(cause) {
                    warn!(node = %node, reason = cause.label(), %error, fix = cause.fix(), "cannot read the node's kubelet");
                }
            }
        }
    }
    pods.abort();
}

/// What one node's loop keeps between reads.
struct NodeLoop<'a> {
    shared: &'a Shared,
    node: &'a str,
    /// The origin of this loop's counters.
    epoch: u64,
    capacity: watch::Receiver<Option<Capacity>>,
    seq: u64,
    /// This replica reads the node's kubelet (counted in `nodes_read`).
    reading: bool,
    /// The metadata the store has from this loop.
    sent: Option<Arc<NodeMetadata>>,
    /// The last read while another origin fed the node: the first point of
    /// the series when this loop takes over, so the node has a rate at once.
    held: Option<join::Joined>,
    /// With reads split across replicas: what was read goes to the others.
    forward: Option<Forwarder>,
    cancel: &'a CancellationToken,
}

impl NodeLoop<'_> {
    /// Another replica reads the node: nothing is sent, and metadata goes
    /// again with the first read once this one does.
    fn pass(&mut self) {
        self.set_reading(false);
        if let Some(forward) = &mut self.forward {
            forward.stop();
        }
        self.sent = None;
        self.held = None;
    }

    fn set_reading(&mut self, now: bool) {
        if self.reading == now {
            return;
        }
        self.reading = now;
        let nodes_read = &self.shared.stats.nodes_read;
        if now {
            nodes_read.fetch_add(1, Ordering::Relaxed);
        } else {
            nodes_read.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// One read: into the store, or held while the node's agent reports.
    fn offer(
        &mut self,
        joined: join::Joined,
        meta: &Arc<NodeMetadata>,
    ) -> Result<Outcome, (Outcome, String)> {
        // Never both: while the node's agent reports, its figures stand.
        // Another replica's reads of the kubelet give way: this replica is
        // the node's reader now.
        if self.shared.store.agent_reports(self.node) {
            self.held = Some(joined);
            self.sent = None;
            if let Some(forward) = &mut self.forward {
                forward.stop();
            }
            return Ok(Outcome::AgentReports);
        }
        if let Some(held) = self.held.take() {
            // Refused (too old by now): the read below starts the series.
            let _ = self.apply(&held, meta);
        }
        self.apply(&joined, meta)
            .map(|()| Outcome::Success)
            .map_err(|reject| (Outcome::Rejected, reject.to_string()))
    }

    fn apply(&mut self, joined: &join::Joined, meta: &Arc<NodeMetadata>) -> Result<(), Reject> {
        let mut report = joined.report(self.node, self.seq, self.epoch);
        self.seq += 1;
        if !self.sent.as_ref().is_some_and(|s| Arc::ptr_eq(s, meta)) {
            report.metadata = Some((**meta).clone());
        }
        // The pods are the loop's own watch of the node's: nothing to ask.
        let source = Source::Watched(*self.capacity.borrow());
        match self
            .shared
            .store
            .apply_from(&report, SystemTime::now(), source)
        {
            Ok(()) => {
                self.sent = Some(Arc::clone(meta));
                if let Some(forward) = &mut self.forward {
                    report.metadata = None;
                    forward.send(report, meta, self.cancel);
                }
                Ok(())
            }
            Err(reject) => {
                if matches!(reject, Reject::NoMetadata(_)) {
                    self.sent = None;
                }
                Err(reject)
            }
        }
    }
}

impl Drop for NodeLoop<'_> {
    fn drop(&mut self) {
        self.set_reading(false);
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    #[test]
    fn failures_are_counted_by_what_fixes_them() {
        let status = |code: u16| ClientError::Status {
            url: "https://10.0.0.7:10250/metrics/resource".into(),
            status: StatusCode::from_u16(code).expect("a status"),
            body: String::new(),
        };
        assert_eq!(outcome(&status(401)), Outcome::Unauthorized);
        assert_eq!(outcome(&status(403)), Outcome::Forbidden);
        assert_eq!(outcome(&status(500)), Outcome::Status);
        let timeout = ClientError::Timeout {
            url: String::new(),
            timeout: Duration::from_secs(10),
        };
        assert_eq!(outcome(&timeout), Outcome::Timeout);
        assert_eq!(
            outcome(&ClientError::BodyTooLarge {
                url: String::new(),
                limit: 1
            }),
            Outcome::Other
        );
    }

    #[test]
    fn a_node_is_read_at_the_same_point_of_every_interval() {
        let interval = Duration::from_secs(15);
        assert_eq!(offset("node-a", interval), offset("node-a", interval));
        assert!(offset("node-a", interval) < interval);
        let spread: std::collections::BTreeSet<_> = (0..100)
            .map(|i| offset(&format!("node-{i}"), interval).as_millis() / 1500)
            .collect();
        assert!(spread.len() >= 8, "100 nodes over 10 tenths: {spread:?}");
    }
}
