//! Streams a node's samples to every aggregator replica: the agent's
//! exporter, and the simulated agents' in the tests and benches.
//!
//! One task per replica holds a long-lived client stream. Samples reach the
//! tasks through a `watch` channel: a buffer of one where the newest sample
//! wins, so a slow or absent replica never grows memory — and since counters
//! are cumulative, a skipped sample costs resolution, never correctness. A
//! broken stream is re-opened with exponential backoff and jitter; the first
//! report of every stream carries the full metadata, in bounded parts
//! (`ReportInParts`) where the aggregator takes them, else in one message.

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::Stream;
use proto::v1::{NodeMetadata, NodeReport, ReportSummary, ingest_client::IngestClient};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Uri};
use tracing::{Instrument, debug, info, info_span, warn};

use support::{backoff::Backoff, token::TokenFile};

mod pool;
pub use pool::Pool;

/// How a stream to an aggregator ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The aggregator ended it cleanly (it shuts down, or rebalances).
    Closed,
    /// The aggregator refused it (credentials, node name, metadata).
    Refused,
    /// Connecting failed or the connection broke.
    Failed,
}

/// Told of every stream and report, by replica address: the agent's probes
/// and metrics.
pub trait Observer: Send + Sync + std::fmt::Debug {
    fn stream_opened(&self, replica: &str);
    fn report_sent(&self, replica: &str);
    fn stream_ended(&self, replica: &str, end: StreamEnd);
    /// The replica left the resolved set: nothing more will be said of it.
    fn replica_gone(&self, replica: &str);
}

/// Longest wait between reconnect attempts to one replica.
pub const RECONNECT_CAP: Duration = Duration::from_secs(5);

/// Errors of one stream attempt.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to {uri}: {source}")]
    Connect {
        uri: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("stream to {uri} ended: {status}")]
    Stream { uri: String, status: tonic::Status },
    #[error(transparent)]
    Token(#[from] support::token::Error),
    #[error("reading the CA file {path}: {source}")]
    Ca {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid aggregator address {0:?}: {1}")]
    BadUri(String, String),
    #[error("resolving {0}: {1}")]
    Resolve(String, #[source] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// How a stream that failed with this error ended: refused by the
    /// aggregator, or failed on the way.
    fn end(&self) -> StreamEnd {
        use tonic::Code;
        match self {
            Error::Stream { status, .. }
                if matches!(
                    status.code(),
                    Code::Unauthenticated
                        | Code::PermissionDenied
                        | Code::InvalidArgument
                        | Code::FailedPrecondition
                        | Code::ResourceExhausted
                ) =>
            {
                StreamEnd::Refused
            }
            _ => StreamEnd::Failed,
        }
    }
}

/// What the collector hands to the exporter: a report without metadata, and
/// the node's current metadata with a version that changes when it does.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub report: NodeReport,
    pub metadata: Arc<NodeMetadata>,
    pub metadata_version: u64,
}

/// Where the aggregator replicas are.
#[derive(Clone, Debug)]
pub enum Targets {
    /// Fixed addresses (`https://host:port`).
    Static(Vec<String>),
    /// A headless Service's DNS name, resolved to every replica's address and
    /// re-resolved every `refresh`.
    Dns {
        host: String,
        port: u16,
        refresh: Duration,
    },
}

/// How to reach and authenticate to the aggregators.
#[derive(Clone, Debug)]
pub struct Config {
    pub targets: Targets,
    /// CA bundle for the aggregators' serving certificates; `None`: plain HTTP/2
    /// (tests and the local demo only).
    pub ca_file: Option<PathBuf>,
    /// Server name to verify in the aggregators' certificates (default: the host).
    pub tls_server_name: Option<String>,
    /// The projected ServiceAccount token, checked for every stream (it rotates).
    pub token_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub keepalive: Duration,
    pub max_message_bytes: usize,
    /// Told of every stream and report.
    pub observer: Option<Arc<dyn Observer>>,
    /// Connections shared with other exporters' streams to the same
    /// replicas; `None`: each stream opens its own.
    pub pool: Option<Arc<Pool>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            targets: Targets::Static(Vec::new()),
            ca_file: None,
            tls_server_name: None,
            token_file: None,
            connect_timeout: Duration::from_secs(5),
            keepalive: Duration::from_secs(20),
            max_message_bytes: 16 << 20,
            observer: None,
            pool: None,
        }
    }
}

/// Runs the exporter until `cancel`: keeps one stream task per replica.
pub async fn run(
    config: Config,
    samples: watch::Receiver<Option<Arc<Outgoing>>>,
    cancel: CancellationToken,
) {
    let token = config
        .token_file
        .clone()
        .map(|path| Arc::new(TokenFile::new(path)));
    let config = Arc::new(config);
    let mut tasks: HashMap<String, (CancellationToken, tokio::task::JoinHandle<()>)> =
        HashMap::new();
    loop {
        let (wanted, refresh) = match resolve(&config.targets).await {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "resolving aggregators; keeping the current set");
                (tasks.keys().cloned().collect(), Duration::from_secs(5))
            }
        };
        for uri in &wanted {
            if !tasks.contains_key(uri) {
                let child = cancel.child_token();
                let handle = tokio::spawn(
                    endpoint_loop(
                        Arc::clone(&config),
                        token.clone(),
                        uri.clone(),
                        samples.clone(),
                        child.clone(),
                    )
                    .instrument(info_span!("aggregator", %uri)),
                );
                tasks.insert(uri.clone(), (child, handle));
            }
        }
        let gone: Vec<String> = tasks
            .keys()
            .filter(|u| !wanted.contains(u))
            .cloned()
            .collect();
        for uri in gone {
            if let Some((token, handle)) = tasks.remove(&uri) {
                info!(%uri, "aggregator replica gone");
                token.cancel();
                let _ = handle.await;
                if let Some(observer) = &config.observer {
                    observer.replica_gone(&uri);
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(refresh) => {}
        }
    }
    for (_, (token, handle)) in tasks {
        token.cancel();
        let _ = handle.await;
    }
}

async fn resolve(targets: &Targets) -> Result<(Vec<String>, Duration)> {
    match targets {
        // Static targets never change: look again rarely.
        Targets::Static(uris) => Ok((uris.clone(), Duration::from_secs(3600))),
        Targets::Dns {
            host,
            port,
            refresh,
        } => {
            let addrs = tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(|e| Error::Resolve(host.clone(), e))?;
            let mut uris: Vec<String> = addrs.map(|a| format!("https://{a}")).collect();
            uris.sort();
            uris.dedup();
            Ok((uris, *refresh))
        }
    }
}

async fn endpoint_loop(
    config: Arc<Config>,
    token: Option<Arc<TokenFile>>,
    uri: String,
    samples: watch::Receiver<Option<Arc<Outgoing>>>,
    cancel: CancellationToken,
) {
    // Capped at 5 s: a restarted replica reports ready once any node has data,
    // so the longer an agent waits to reconnect, the longer that replica may
    // serve without its pods. Refused connects to a down replica are cheap.
    let mut backoff = Backoff::new(Duration::from_millis(200), RECONNECT_CAP);
    // Every new stream tries parts first: an older replica may since have
    // been replaced by one that takes them.
    let mut in_parts = true;
    loop {
        let started = Instant::now();
        let attempt = stream_once(
            &config,
            token.as_deref(),
            &uri,
            samples.clone(),
            cancel.clone(),
            in_parts,
        );
        let result = tokio::select! {
            r = attempt => r,
            _ = cancel.cancelled() => return,
        };
        let end = match result {
            Ok(summary) => {
                info!(
                    accepted = summary.accepted,
                    "stream closed by the aggregator"
                );
                StreamEnd::Closed
            }
            Err(Error::Stream { status, .. })
                if in_parts && status.code() == tonic::Code::Unimplemented =>
            {
                info!(
                    "the aggregator does not take metadata in parts (an older version); sending it whole"
                );
                // Not counted as a refused stream (operators alert on
                // those): the same attempt goes on, sending metadata whole.
                in_parts = false;
                continue;
            }
            Err(e) => {
                warn!(error = %e, "stream failed");
                e.end()
            }
        };
        in_parts = true;
        if let Some(observer) = &config.observer {
            observer.stream_ended(&uri, end);
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        debug!(?delay, "reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

async fn channel(config: &Config, uri: &str) -> Result<tonic::transport::Channel> {
    let parsed: Uri = uri
        .parse()
        .map_err(|e: http::uri::InvalidUri| Error::BadUri(uri.into(), e.to_string()))?;
    let mut endpoint = Endpoint::from(parsed.clone())
        .connect_timeout(config.connect_timeout)
        .http2_keep_alive_interval(config.keepalive)
        .keep_alive_timeout(config.keepalive)
        .keep_alive_while_idle(true);
    if let Some(ca) = &config.ca_file {
        let pem = tokio::fs::read(ca).await.map_err(|source| Error::Ca {
            path: ca.clone(),
            source,
        })?;
        let name = config
            .tls_server_name
            .clone()
            .or_else(|| parsed.host().map(str::to_string))
            .unwrap_or_default();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pem))
            .domain_name(name);
        endpoint = endpoint.tls_config(tls).map_err(|source| Error::Connect {
            uri: uri.into(),
            source,
        })?;
    }
    endpoint.connect().await.map_err(|source| Error::Connect {
        uri: uri.into(),
        source,
    })
}

async fn stream_once(
    config: &Config,
    token: Option<&TokenFile>,
    uri: &str,
    samples: watch::Receiver<Option<Arc<Outgoing>>>,
    cancel: CancellationToken,
    in_parts: bool,
) -> Result<ReportSummary> {
    // Held until the stream ends: the pool's count of its connection's streams.
    let (channel, _lease) = match &config.pool {
        Some(pool) => {
            let (channel, lease) = pool.lease(config, uri).await?;
            (channel, Some(lease))
        }
        None => (channel(config, uri).await?, None),
    };
    let mut client = IngestClient::new(channel).max_encoding_message_size(config.max_message_bytes);
    let sent = {
        let (observer, uri) = (config.observer.clone(), uri.to_owned());
        move || {
            if let Some(observer) = &observer {
                observer.report_sent(&uri);
            }
        }
    };
    let mut request = tonic::Request::new(outbound(samples, cancel, sent, in_parts));
    if let Some(token) = token {
        let header = token.header()?;
        let mut value =
            tonic::metadata::AsciiMetadataValue::try_from(header.as_bytes()).map_err(|_| {
                Error::Token(support::token::Error::Invalid {
                    path: token.path().to_owned(),
                })
            })?;
        value.set_sensitive(true);
        request.metadata_mut().insert("authorization", value);
    }
    info!("stream open");
    if let Some(observer) = &config.observer {
        observer.stream_opened(uri);
    }
    let call = if in_parts {
        client.report_in_parts(request).await
    } else {
        client.report(request).await
    };
    call.map(tonic::Response::into_inner)
        .map_err(|status| Error::Stream {
            uri: uri.into(),
            status,
        })
}

/// The reports of one stream: the current sample at once (with metadata),
/// then each newer one, with metadata whenever its version changed — in
/// parts before the sample when `in_parts` ([`proto::parts`]). `sent` is
/// called as each sample goes out (the transport asks for the next report
/// once it has room for it).
pub fn outbound(
    samples: watch::Receiver<Option<Arc<Outgoing>>>,
    cancel: CancellationToken,
    sent: impl Fn() + Send + 'static,
    in_parts: bool,
) -> impl Stream<Item = NodeReport> + Send + 'static {
    struct State<F> {
        rx: watch::Receiver<Option<Arc<Outgoing>>>,
        cancel: CancellationToken,
        sent_metadata: Option<u64>,
        first: bool,
        sent: F,
        in_parts: bool,
        /// Metadata parts, then their sample.
        queue: VecDeque<NodeReport>,
    }
    let state = State {
        rx: samples,
        cancel,
        sent_metadata: None,
        first: true,
        sent,
        in_parts,
        queue: VecDeque::new(),
    };
    futures::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(report) = s.queue.pop_front() {
                if !report.metadata_continues {
                    (s.sent)();
                }
                return Some((report, s));
            }
            if !s.first {
                tokio::select! {
                    changed = s.rx.changed() => changed.ok()?,
                    _ = s.cancel.cancelled() => return None,
                }
            }
            s.first = false;
            let Some(out) = s.rx.borrow_and_update().clone() else {
                continue;
            };
            let report = out.report.clone();
            if s.sent_metadata == Some(out.metadata_version) {
                s.queue.push_back(report);
            } else if s.in_parts {
                s.queue
                    .extend(proto::parts::reports_in_parts(report, &out.metadata));
            } else {
                s.queue.push_back(NodeReport {
                    metadata: Some((*out.metadata).clone()),
                    ..report
                });
            }
            s.sent_metadata = Some(out.metadata_version);
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::StreamExt as _;
    use prost::Message as _;
    use proto::{
        parts::PART_BYTES,
        v1::{ContainerName, PodMetadata},
    };

    use super::*;

    fn outgoing(pods: usize, metadata_version: u64) -> Arc<Outgoing> {
        let metadata = NodeMetadata {
            labels: [("kubernetes.io/hostname".to_string(), "n".to_string())].into(),
            pods: (0..pods)
                .map(|i| PodMetadata {
                    uid: format!("uid-{i}"),
                    namespace: "team".into(),
                    name: format!("pod-{i}"),
                    running: true,
                    containers: vec![ContainerName {
                        id: format!("{i:064x}"),
                        name: "main".into(),
                    }],
                    ..PodMetadata::default()
                })
                .collect(),
        };
        Arc::new(Outgoing {
            report: NodeReport {
                node: "n".into(),
                seq: metadata_version,
                ..NodeReport::default()
            },
            metadata: Arc::new(metadata),
            metadata_version,
        })
    }

    /// The reports of a stream over `samples`, each published once the
    /// previous one went out, and how many times it said a sample went out.
    async fn reports(samples: Vec<Arc<Outgoing>>, in_parts: bool) -> (Vec<NodeReport>, usize) {
        let (tx, rx) = watch::channel(None);
        let sent = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&sent);
        let stream = outbound(
            rx,
            CancellationToken::new(),
            move || {
                counter.fetch_add(1, Ordering::Relaxed);
            },
            in_parts,
        );
        tokio::pin!(stream);
        let mut out = Vec::new();
        for sample in samples {
            tx.send_replace(Some(sample));
            loop {
                let report = stream.next().await.expect("open");
                let done = !report.metadata_continues;
                out.push(report);
                if done {
                    break;
                }
            }
        }
        (out, sent.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn large_metadata_goes_in_bounded_parts_before_its_sample() {
        let (reports, sent) = reports(vec![outgoing(100, 1), outgoing(100, 1)], true).await;
        let whole = outgoing(100, 1).metadata.encoded_len();
        let parts = reports.iter().take_while(|r| r.metadata_continues).count();
        assert!(parts >= whole / PART_BYTES, "{whole} B in {parts} parts");
        for part in &reports[..parts] {
            assert!(
                part.encoded_len() <= PART_BYTES + 16,
                "{}",
                part.encoded_len()
            );
            assert!(part.node_usage.is_none() && part.pods.is_empty());
        }
        // The sample that completes them, then the next without metadata.
        let sample = &reports[parts];
        assert!(!sample.metadata_continues && sample.metadata.is_none());
        assert_eq!(sample.seq, 1);
        assert_eq!(reports.len(), parts + 2);
        assert_eq!(reports[parts + 1].metadata, None);
        assert_eq!(sent, 2, "one per sample, none per part");
    }

    #[tokio::test]
    async fn metadata_goes_whole_where_parts_are_not_taken_and_again_when_it_changes() {
        let (reports, sent) = reports(
            vec![outgoing(100, 1), outgoing(100, 1), outgoing(100, 2)],
            false,
        )
        .await;
        assert_eq!(reports.len(), 3);
        assert!(reports.iter().all(|r| !r.metadata_continues));
        assert_eq!(
            reports[0].metadata.as_ref(),
            Some(&*outgoing(100, 1).metadata)
        );
        assert_eq!(reports[1].metadata, None);
        assert!(reports[2].metadata.is_some(), "version 2 is sent");
        assert_eq!(sent, 3);
    }
}
