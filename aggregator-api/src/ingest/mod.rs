//! The gRPC ingest service: agents' report streams into the store.
//!
//! One stream reports one node. The caller is authenticated once per stream
//! ([`IngestAuth`]); when its credential names a node, every report must be
//! about that node — a node can only report itself. A refused report is
//! counted and logged (rate-limited) and the stream goes on, except when the
//! store has no metadata for the node: metadata comes on a stream's first
//! report, so that stream is ended (FAILED_PRECONDITION) for the agent to
//! start a new one. Another replica of the aggregator may forward a node it
//! reads from its kubelet, and only such a node ([`Picked`]). Both methods take metadata in parts
//! ([`proto::parts`]); `ReportInParts` only tells an agent that this
//! aggregator does. A stream that breaks the rules is ended with a clear
//! status, and no other stream notices. [`listener`] is the port's TLS.
pub mod auth;
pub mod config;
pub mod listener;
pub mod window;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};
use support::{log_gate::LogGate, process::family_values};

use proto::{
    parts::{PartError, Parts},
    v1::{NodeReport, ReportSummary, ingest_server::Ingest},
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming, metadata::MetadataMap};
use tracing::{info, warn};

use crate::{
    kubelets::Picked,
    store::{Reject, Source, Store, limits},
    untrusted::shown,
};

/// Who is on the other end of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The authenticated user (for logs).
    pub user: String,
    /// The node the credential is bound to; `None` for credentials that may
    /// report any node (only with authentication switched off).
    pub node: Option<String>,
    /// Another replica of this aggregator, forwarding nodes it reads from
    /// their kubelets: taken only for the nodes this replica reads too.
    pub replica: bool,
}

/// Authenticates a stream from its request metadata.
#[tonic::async_trait]
pub trait IngestAuth: Send + Sync + 'static {
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status>;
}

/// Accepts every stream, for any node. Only for development and tests:
/// `--ingest-auth=none` says so loudly at start.
pub struct Unauthenticated;

#[tonic::async_trait]
impl IngestAuth for Unauthenticated {
    async fn authenticate(&self, _: &MetadataMap) -> Result<Caller, Status> {
        Ok(Caller {
            user: "anonymous".into(),
            node: None,
            replica: false,
        })
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Streams open now (agents connected).
    pub open: AtomicU64,
    pub streams: AtomicU64,
    pub streams_rejected: AtomicU64,
    pub spoofed: AtomicU64,
    /// Reports forwarded by other replicas, by what became of them.
    pub forwarded: [AtomicU64; Forwarded::ALL.len()],
}

/// What became of a report another replica forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarded {
    /// Taken as this replica's own read of the node's kubelet.
    Applied,
    /// Another origin of the node's counters is fresh (its agent, or
    /// another replica's read): it stands.
    Superseded,
    /// This replica does not serve the node from its kubelet (its agent
    /// reports, or no selector picks it): not the forwarder's to say.
    NotReadHere,
}

impl Forwarded {
    const ALL: [Forwarded; 3] = [
        Forwarded::Applied,
        Forwarded::Superseded,
        Forwarded::NotReadHere,
    ];

    fn label(self) -> &'static str {
        match self {
            Forwarded::Applied => "applied",
            Forwarded::Superseded => "superseded",
            Forwarded::NotReadHere => "not_read_here",
        }
    }
}

impl IngestStats {
    /// Prometheus text of these counters (appended to `/metrics`).
    pub fn render(&self, out: &mut String) {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        family_values(
            out,
            "nodepulse_ingest_open_streams",
            "gauge",
            "Agent streams open now: one per connected agent.",
            [("", n(&self.open))],
        );
        family_values(
            out,
            "nodepulse_ingest_streams_total",
            "counter",
            "Agent streams by authentication result.",
            [
                ("{result=\"accepted\"}", n(&self.streams)),
                ("{result=\"rejected\"}", n(&self.streams_rejected)),
            ],
        );
        family_values(
            out,
            "nodepulse_ingest_spoofed_reports_total",
            "counter",
            "Reports for a node other than the one the stream's token is bound to.",
            [("", n(&self.spoofed))],
        );
        family_values(
            out,
            "nodepulse_ingest_forwarded_reports_total",
            "counter",
            "Reports other replicas forwarded (nodes read from their kubelets), by what became of them.",
            Forwarded::ALL.map(|what| {
                (
                    format!("{{result=\"{}\"}}", what.label()),
                    n(&self.forwarded[what as usize]),
                )
            }),
        );
    }

    fn forwarded(&self, what: Forwarded) {
        self.forwarded[what as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts a stream in [`IngestStats::open`] for as long as it lives.
struct OpenStream<'a>(&'a IngestStats);

impl<'a> OpenStream<'a> {
    fn new(stats: &'a IngestStats) -> Self {
        stats.open.fetch_add(1, Ordering::Relaxed);
        OpenStream(stats)
    }
}

impl Drop for OpenStream<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Streams the ingest takes at once on one connection: an agent opens one;
/// a replica forwarding nodes opens several (see
/// [`crate::kubelets::forward::STREAMS_PER_CONNECTION`]).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;

/// What a replica's stream has fed into the store: at its end (the replica
/// no longer reads the node, or is gone), the store is told, so the node's
/// next reader need not wait until these figures are stale.
struct Forwarding<'a> {
    store: &'a Store,
    /// The node and the origin (epoch) of the reports applied.
    fed: Option<(String, u64)>,
}

impl Forwarding<'_> {
    fn applied(&mut self, node: &str, epoch: u64) {
        if self.fed.as_ref().is_none_or(|(_, e)| *e != epoch) {
            self.fed = Some((node.to_owned(), epoch));
        }
    }
}

impl Drop for Forwarding<'_> {
    fn drop(&mut self) {
        if let Some((node, epoch)) = &self.fed {
            self.store.origin_ended(node, *epoch);
        }
    }
}

/// The `nodepulse.v1.Ingest` service.
pub struct IngestService {
    store: Arc<Store>,
    auth: Arc<dyn IngestAuth>,
    stats: Arc<IngestStats>,
    /// Refused streams.
    reject_log: Arc<LogGate>,
    /// Refused reports: one gate per reason, so each cause is logged.
    report_logs: Arc<[LogGate; Reject::REASONS.len()]>,
    shutdown: CancellationToken,
    /// The largest message taken, and so the most one metadata's parts may
    /// add up to.
    max_message_bytes: usize,
    /// The nodes this replica reads from their kubelets: what other
    /// replicas may forward. None: nothing is taken from them.
    picked: Option<Arc<Picked>>,
}

impl IngestService {
    /// `shutdown` ends every open stream (agents reconnect to another replica
    /// or to this one restarted); a graceful server shutdown would otherwise
    /// wait for streams that never end on their own. `max_message_bytes`:
    /// the largest report taken.
    pub fn new(
        store: Arc<Store>,
        auth: Arc<dyn IngestAuth>,
        shutdown: CancellationToken,
        max_message_bytes: usize,
    ) -> Self {
        Self {
            store,
            auth,
            stats: Arc::default(),
            reject_log: Arc::new(LogGate::new(Duration::from_secs(10))),
            report_logs: Arc::new(std::array::from_fn(|_| {
                LogGate::new(Duration::from_secs(60))
            })),
            shutdown,
            max_message_bytes,
            picked: None,
        }
    }

    /// Takes reports from other replicas for the nodes in `picked`, as
    /// this replica's own reads of their kubelets.
    pub fn forwarded_for(mut self, picked: Arc<Picked>) -> Self {
        self.picked = Some(picked);
        self
    }

    pub fn stats(&self) -> Arc<IngestStats> {
        Arc::clone(&self.stats)
    }

    /// The tonic server for this service, with limits set explicitly.
    pub fn into_server(self) -> proto::v1::ingest_server::IngestServer<Self> {
        let max_message_bytes = self.max_message_bytes;
        proto::v1::ingest_server::IngestServer::new(self)
            .max_decoding_message_size(max_message_bytes)
    }
}

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn report(
        &self,
        request: Request<Streaming<NodeReport>>,
    ) -> Result<Response<ReportSummary>, Status> {
        self.stream(request).await
    }

    async fn report_in_parts(
        &self,
        request: Request<Streaming<NodeReport>>,
    ) -> Result<Response<ReportSummary>, Status> {
        self.stream(request).await
    }
}

impl IngestService {
    async fn stream(
        &self,
        request: Request<Streaming<NodeReport>>,
    ) -> Result<Response<ReportSummary>, Status> {
        let caller = match self.auth.authenticate(request.metadata()).await {
            Ok(c) => c,
            Err(status) => {
                self.stats.streams_rejected.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.reject_log.open() {
                    warn!(code = ?status.code(), message = status.message(), suppressed, "ingest stream refused");
                }
                return Err(status);
            }
        };
        self.stats.streams.fetch_add(1, Ordering::Relaxed);
        let _open = OpenStream::new(&self.stats);
        let mut forwarding = Forwarding {
            store: &self.store,
            fed: None,
        };
        let mut stream = request.into_inner();
        let mut node: Option<String> = None;
        let mut parts = Parts::new(self.max_message_bytes);
        let mut accepted = 0u64;
        loop {
            let report = tokio::select! {
                next = stream.message() => match next? {
                    Some(report) => report,
                    None => break,
                },
                _ = self.shutdown.cancelled() => {
                    return Err(Status::unavailable("aggregator shutting down; reconnect"));
                }
            };
            if let Some(bound) = &caller.node
                && &report.node != bound
            {
                self.stats.spoofed.fetch_add(1, Ordering::Relaxed);
                let claimed = shown(&report.node);
                warn!(user = %shown(&caller.user), bound, %claimed, "stream reported another node");
                return Err(Status::permission_denied(format!(
                    "credential is bound to node \"{bound}\"; a node can only report itself (got \"{claimed}\")"
                )));
            }
            match &node {
                None if !limits::node_name(&report.node) => {
                    let reject = Reject::BadNodeName(shown(&report.node));
                    self.stats.streams_rejected.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = self.reject_log.open() {
                        warn!(user = %shown(&caller.user), %reject, suppressed, "ingest stream refused");
                    }
                    return Err(Status::invalid_argument(reject.to_string()));
                }
                None => {
                    if caller.replica && self.read_here(&report.node).is_none() {
                        self.stats.forwarded(Forwarded::NotReadHere);
                        return Err(Status::permission_denied(format!(
                            "a replica may forward only nodes read from their kubelets; this replica does not read \"{}\"'s",
                            report.node
                        )));
                    }
                    let who = if caller.replica { "replica" } else { "agent" };
                    info!(node = %report.node, user = %shown(&caller.user), "{who} stream opened");
                    node = Some(report.node.clone());
                }
                Some(n) if n != &report.node => {
                    return Err(Status::invalid_argument(format!(
                        "a stream reports one node: started with \"{n}\", got \"{}\"",
                        shown(&report.node)
                    )));
                }
                Some(_) => {}
            }
            let report = match parts.take(report) {
                Ok(Some(report)) => report,
                Ok(None) => continue,
                Err(e) => {
                    if let Some(suppressed) = self.reject_log.open() {
                        warn!(node = node.as_deref().unwrap_or_default(), error = %e, suppressed, "ingest stream ended: metadata parts");
                    }
                    return Err(match e {
                        PartError::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
                        PartError::NotOnlyMetadata | PartError::NoMetadata => {
                            Status::invalid_argument(e.to_string())
                        }
                    });
                }
            };
            let source = if caller.replica {
                // Checked for every report: the node may since be read
                // from its agent, or have left the selectors.
                let Some(capacity) = self.read_here(&report.node) else {
                    self.stats.forwarded(Forwarded::NotReadHere);
                    continue;
                };
                if self.store.fed_elsewhere(&report.node, report.agent_epoch) {
                    self.stats.forwarded(Forwarded::Superseded);
                    continue;
                }
                // The forwarder watched the node's pods as this replica
                // would have: nothing to ask kube-apiserver.
                Source::Watched(capacity)
            } else {
                Source::Agent
            };
            match self.store.apply_from(&report, SystemTime::now(), source) {
                Ok(()) => {
                    accepted += 1;
                    if caller.replica {
                        self.stats.forwarded(Forwarded::Applied);
                        forwarding.applied(&report.node, report.agent_epoch);
                    }
                }
                Err(reject @ Reject::NoMetadata(_)) => {
                    // The agent sends full metadata first on a new stream.
                    info!(node = %report.node, "no metadata for this node; asking the agent to reconnect");
                    return Err(Status::failed_precondition(reject.to_string()));
                }
                Err(reject) => {
                    if let Some(suppressed) = self.report_logs[reject.index()].open() {
                        warn!(node = %report.node, reason = reject.reason(), %reject, suppressed, "report refused");
                    }
                }
            }
        }
        Ok(Response::new(ReportSummary { accepted }))
    }

    /// `Some(capacity)` when this replica reads `node` from its kubelet.
    fn read_here(&self, node: &str) -> Option<Option<crate::store::Capacity>> {
        self.picked.as_ref()?.capacity(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_render_as_prometheus_counters() {
        let stats = IngestStats::default();
        stats.streams.fetch_add(3, Ordering::Relaxed);
        stats.streams_rejected.fetch_add(2, Ordering::Relaxed);
        stats.spoofed.fetch_add(1, Ordering::Relaxed);
        stats.forwarded(Forwarded::Superseded);
        let mut text = String::new();
        stats.render(&mut text);
        for line in [
            "# TYPE nodepulse_ingest_streams_total counter",
            "nodepulse_ingest_streams_total{result=\"accepted\"} 3",
            "nodepulse_ingest_streams_total{result=\"rejected\"} 2",
            "nodepulse_ingest_spoofed_reports_total 1",
            "nodepulse_ingest_forwarded_reports_total{result=\"superseded\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }
}
