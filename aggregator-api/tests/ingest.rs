//! Agents' exporters streaming to two aggregator replicas, in process over
//! real loopback sockets: every replica holds the full view, a replica
//! restarted mid-stream is whole again within two intervals with correct
//! rates, unauthenticated or spoofed-node streams are refused, and metadata
//! in parts reaches new and older replicas whole.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aggregator_api::{
    api::view::{Lookup, MetricsView},
    ingest::{
        Caller, IngestAuth, IngestService, IngestStats, MAX_STREAMS_PER_CONNECTION, Unauthenticated,
    },
    kubelets::{Picked, forward::STREAMS_PER_CONNECTION},
    store::{Capacity, Store},
};
use export::{self, Outgoing, Targets};
use futures::StreamExt as _;
use prost::Message as _;
use proto::{
    unix_nanos,
    v1::{
        ContainerName, ContainerSample, NodeMetadata, NodeReport, PodMetadata, PodSample,
        ReportSummary, Usage,
        ingest_server::{Ingest, IngestServer},
    },
};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming, metadata::MetadataMap};

const INTERVAL: Duration = Duration::from_millis(300);

/// One aggregator replica: a store behind the ingest service on a loopback port.
struct Replica {
    store: Arc<Store>,
    addr: SocketAddr,
    /// Connections it accepted.
    accepted: Arc<AtomicUsize>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

async fn replica(listener: TcpListener, auth: Arc<dyn IngestAuth>) -> Replica {
    replica_of(listener, |store, stop| {
        IngestService::new(store, auth, stop, 16 << 20).into_server()
    })
    .await
}

/// A replica serving `service(store, stop)`.
async fn replica_of<T: Ingest>(
    listener: TcpListener,
    service: impl FnOnce(Arc<Store>, CancellationToken) -> IngestServer<T>,
) -> Replica {
    let store = Arc::new(Store::default());
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let service = service(Arc::clone(&store), stop.clone());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&accepted);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).inspect(move |_| {
        counted.fetch_add(1, Ordering::Relaxed);
    });
    let shutdown = stop.clone();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
            .expect("serve");
    });
    Replica {
        store,
        addr,
        accepted,
        stop,
        task,
    }
}

impl Replica {
    async fn stop(self) -> SocketAddr {
        self.stop.cancel();
        let _ = self.task.await;
        self.addr
    }
}

/// A simulated node: `pods` pods of one container each; container `i` burns
/// `(i + 1) × 100` millicores, exactly, and the node one core more than all.
struct SimNode {
    name: String,
    tx: watch::Sender<Option<Arc<Outgoing>>>,
    metadata: Arc<NodeMetadata>,
    pods: usize,
    seq: u64,
    start: SystemTime,
    /// How far ahead of the aggregator this node's clock runs.
    ahead: Duration,
    /// The origin of its counters.
    epoch: u64,
}

impl SimNode {
    fn new(name: &str, pods: usize) -> (Self, watch::Receiver<Option<Arc<Outgoing>>>) {
        let (tx, rx) = watch::channel(None);
        let metadata = Arc::new(NodeMetadata {
            labels: [("kubernetes.io/hostname".to_string(), name.to_string())].into(),
            pods: (0..pods)
                .map(|i| PodMetadata {
                    uid: format!("{name}-uid-{i}"),
                    namespace: "team".into(),
                    name: format!("{name}-pod-{i}"),
                    labels: [("app".to_string(), "sim".to_string())].into(),
                    running: true,
                    containers: vec![ContainerName {
                        id: format!("{name}-c{i}"),
                        name: "main".into(),
                    }],
                })
                .collect(),
        });
        let node = Self {
            name: name.into(),
            tx,
            metadata,
            pods,
            seq: 0,
            start: SystemTime::now(),
            ahead: Duration::ZERO,
            epoch: 1,
        };
        (node, rx)
    }

    /// Publishes the sample for "now".
    fn tick(&mut self) {
        self.seq += 1;
        let now = SystemTime::now() + self.ahead;
        let elapsed = now.duration_since(self.start).expect("clock").as_nanos() as u64;
        let usage = |millicores: u64| Usage {
            cpu_ns: elapsed * millicores / 1000,
            memory_working_set_bytes: 64 << 20,
            swap_bytes: None,
            read_unix_nanos: None,
        };
        let report = NodeReport {
            node: self.name.clone(),
            sample_unix_nanos: now.duration_since(UNIX_EPOCH).expect("clock").as_nanos() as i64,
            // The node: its containers and one core more.
            node_usage: Some(usage(self.pods as u64 * (self.pods as u64 + 1) * 50 + 1000)),
            pods: (0..self.pods)
                .map(|i| PodSample {
                    uid: format!("{}-uid-{i}", self.name),
                    containers: vec![ContainerSample {
                        id: format!("{}-c{i}", self.name),
                        usage: Some(usage((i as u64 + 1) * 100)),
                        start_unix_nanos: 1,
                    }],
                })
                .collect(),
            metadata: None,
            cpu_source: 1,
            seq: self.seq,
            agent_epoch: self.epoch,
            metadata_continues: false,
        };
        self.tx.send_replace(Some(Arc::new(Outgoing {
            report,
            metadata: Arc::clone(&self.metadata),
            metadata_version: 1,
        })));
    }
}

/// The exporter's defaults, sending in plain text to `targets`.
fn config(targets: &[SocketAddr]) -> export::Config {
    export::Config {
        targets: Targets::Static(targets.iter().map(|a| format!("http://{a}")).collect()),
        ..export::Config::default()
    }
}

fn exporter(
    config: export::Config,
    rx: watch::Receiver<Option<Arc<Outgoing>>>,
    cancel: &CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(export::run(config, rx, cancel.clone()))
}

/// Waits (bounded) until `check` holds, re-checking whenever the store changes.
async fn until(store: &Store, what: &str, deadline: Duration, check: impl Fn(&Store) -> bool) {
    let mut changes = store.subscribe();
    let wait = async {
        while !check(store) {
            if changes.changed().await.is_err() {
                return;
            }
        }
    };
    if tokio::time::timeout(deadline, wait).await.is_err() {
        panic!("{what}: not within {deadline:?}");
    }
}

/// Every simulated pod has metrics, with the exact rate it burns (±1 %).
fn full_and_correct(store: &Store, nodes: &[(&str, usize)]) -> bool {
    nodes.iter().all(|(node, pods)| {
        matches!(store.node(node), Lookup::Found(_))
            && (0..*pods).all(|i| match store.pod("team", &format!("{node}-pod-{i}")) {
                Lookup::Found(p) => {
                    let want = (i as f64 + 1.0) * 100e6;
                    let got = p.containers[0].cpu_nanocores as f64;
                    assert!(
                        (got - want).abs() <= want * 0.01,
                        "{node} pod {i}: {got} nanocores, want {want}"
                    );
                    true
                }
                _ => false,
            })
    })
}

/// Publishes a sample of every node each interval until `cancel`.
fn ticking(mut nodes: Vec<SimNode>, cancel: &CancellationToken) -> JoinHandle<()> {
    let cancel = cancel.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(INTERVAL);
        loop {
            tokio::select! {
                _ = every.tick() => nodes.iter_mut().for_each(SimNode::tick),
                _ = cancel.cancelled() => return,
            }
        }
    })
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_holds_the_full_view_and_a_restarted_one_recovers() {
    let a = replica(bind().await, Arc::new(Unauthenticated)).await;
    let b = replica(bind().await, Arc::new(Unauthenticated)).await;
    let targets = vec![a.addr, b.addr];
    let cancel = CancellationToken::new();
    let layout = [("node-1", 3usize), ("node-2", 5), ("node-3", 1)];
    let mut nodes = Vec::new();
    let mut exporters = Vec::new();
    for (name, pods) in layout {
        let (node, rx) = SimNode::new(name, pods);
        exporters.push(exporter(config(&targets), rx, &cancel));
        nodes.push(node);
    }
    let ticker = ticking(nodes, &cancel);
    let deadline = INTERVAL * 10;
    until(&a.store, "replica A full", deadline, |s| {
        full_and_correct(s, &layout)
    })
    .await;
    until(&b.store, "replica B full", deadline, |s| {
        full_and_correct(s, &layout)
    })
    .await;
    assert_eq!(a.store.pods(None).len(), 9);
    assert_eq!(b.store.pods(None).len(), 9);

    // Restart B on the same address, mid-stream.
    let addr = b.stop().await;
    let b2 = replica(
        TcpListener::bind(addr).await.expect("rebind"),
        Arc::new(Unauthenticated),
    )
    .await;
    let restarted = tokio::time::Instant::now();
    // Two intervals, plus the exporter's first reconnect delay (≤ 200 ms).
    until(
        &b2.store,
        "restarted replica full",
        INTERVAL * 2 + Duration::from_millis(400),
        |s| full_and_correct(s, &layout),
    )
    .await;
    let took = restarted.elapsed();
    assert_eq!(
        b2.store
            .stats()
            .resets
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(
        b2.store
            .stats()
            .rejected
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    eprintln!("restarted replica whole again after {took:?} (interval {INTERVAL:?})");
    // A kept serving throughout.
    assert!(full_and_correct(&a.store, &layout));

    cancel.cancel();
    let _ = ticker.await;
    for e in exporters {
        let _ = e.await;
    }
    a.stop().await;
    b2.stop().await;
}

/// Tokens of the form `token-for-<node>` authenticate as that node;
/// `replica`, as another replica of the aggregator.
struct NodeTokens;

#[tonic::async_trait]
impl IngestAuth for NodeTokens {
    async fn authenticate(&self, md: &MetadataMap) -> Result<Caller, Status> {
        let header = md
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated("no bearer token"))?;
        if header == "Bearer replica" {
            return Ok(Caller {
                user: "system:serviceaccount:kube-system:nodepulse-aggregator".into(),
                node: None,
                replica: true,
            });
        }
        let node = header
            .strip_prefix("Bearer token-for-")
            .ok_or_else(|| Status::unauthenticated("token not recognised"))?;
        Ok(Caller {
            user: format!("system:serviceaccount:kube-system:agent ({node})"),
            node: Some(node.to_string()),
            replica: false,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_and_spoofed_streams_are_refused_others_unaffected() {
    let r = replica(bind().await, Arc::new(NodeTokens)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = |name: &str, content: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).expect("token file");
        p
    };
    let cancel = CancellationToken::new();
    // Honest node-1; node-2 without a token; node-3 claiming to be node-1's neighbour.
    let (honest, rx1) = SimNode::new("node-1", 2);
    let (anonymous, rx2) = SimNode::new("node-2", 2);
    let (spoofer, rx3) = SimNode::new("node-9", 2);
    let exporters = [
        exporter(
            export::Config {
                token_file: Some(token("t1", "token-for-node-1")),
                ..config(&[r.addr])
            },
            rx1,
            &cancel,
        ),
        exporter(config(&[r.addr]), rx2, &cancel),
        exporter(
            export::Config {
                token_file: Some(token("t3", "token-for-node-3\n")),
                ..config(&[r.addr])
            },
            rx3,
            &cancel,
        ),
    ];
    let ticker = ticking(vec![honest, anonymous, spoofer], &cancel);
    until(&r.store, "honest node served", INTERVAL * 10, |s| {
        full_and_correct(s, &[("node-1", 2)])
    })
    .await;
    // Let the refused ones retry a few times.
    let mut changes = r.store.subscribe();
    for _ in 0..3 {
        changes.changed().await.expect("store alive");
    }
    assert_eq!(r.store.node("node-2"), Lookup::Unknown, "no token: refused");
    assert_eq!(
        r.store.node("node-9"),
        Lookup::Unknown,
        "spoofed node: refused"
    );
    assert_eq!(r.store.node_names(), vec!["node-1".to_string()]);
    cancel.cancel();
    let _ = ticker.await;
    for e in exporters {
        let _ = e.await;
    }
    r.stop().await;
    let _ = BTreeMap::<String, String>::new();
}

/// Another replica forwards the nodes it reads from their kubelets: taken
/// for the nodes this replica reads from their kubelets too (with their
/// Node's capacity), refused for any other, and passed over while another
/// origin of the node's counters (its agent) is fresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_forwards_only_nodes_read_from_their_kubelets() {
    let picked = Arc::new(Picked::default());
    let capacity = Capacity {
        cpu_nanocores: 64_000_000_000,
        memory_bytes: 256 << 30,
    };
    picked.insert("windows-1".into(), Some(capacity));
    picked.insert("fallback-1".into(), Some(capacity));
    let (r, stats) = forwarded_to(picked).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = |name: &str, content: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).expect("token file");
        Some(p)
    };
    let cancel = CancellationToken::new();
    // fallback-1's agent reports (it came back, say) while the replica still
    // forwards its kubelet's figures, of another origin.
    let (agent, agent_rx) = SimNode::new("fallback-1", 2);
    let agent_export = exporter(
        export::Config {
            token_file: token("agent", "token-for-fallback-1"),
            ..config(&[r.addr])
        },
        agent_rx,
        &cancel,
    );
    let agent_ticker = ticking(vec![agent], &cancel);
    until(&r.store, "the agent's node served", INTERVAL * 10, |s| {
        full_and_correct(s, &[("fallback-1", 2)])
    })
    .await;
    let mut forwarded = Vec::new();
    let mut exporters = Vec::new();
    for name in ["windows-1", "fallback-1", "linux-1"] {
        let (mut node, rx) = SimNode::new(name, 2);
        node.epoch = 2;
        exporters.push(exporter(
            export::Config {
                token_file: token(&format!("replica-{name}"), "replica"),
                ..config(&[r.addr])
            },
            rx,
            &cancel,
        ));
        forwarded.push(node);
    }
    let ticker = ticking(forwarded, &cancel);
    until(&r.store, "the forwarded node served", INTERVAL * 10, |s| {
        full_and_correct(s, &[("windows-1", 2)])
    })
    .await;
    assert!(r.store.has_capacity("windows-1"), "its Node's capacity");
    let count = |result: &str| forwarded_reports(&stats, result);
    until(
        &r.store,
        "linux-1 refused and fallback-1's forwarded reports passed over, each counted",
        INTERVAL * 10,
        |_| count("not_read_here") >= 2 && count("superseded") >= 3,
    )
    .await;
    assert_eq!(r.store.node("linux-1"), Lookup::Unknown, "not read here");
    assert!(full_and_correct(&r.store, &[("fallback-1", 2)]));
    assert_eq!(
        r.store
            .stats()
            .restarts
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the agent's series stood"
    );
    assert!(count("applied") >= 2);
    cancel.cancel();
    for task in exporters
        .into_iter()
        .chain([agent_export, ticker, agent_ticker])
    {
        let _ = task.await;
    }
    r.stop().await;
}

/// A replica that takes other replicas' reads of the `picked` nodes.
async fn forwarded_to(picked: Arc<Picked>) -> (Replica, Arc<IngestStats>) {
    let mut stats: Option<Arc<IngestStats>> = None;
    let r = replica_of(bind().await, |store, stop| {
        let service =
            IngestService::new(store, Arc::new(NodeTokens), stop, 16 << 20).forwarded_for(picked);
        stats = Some(service.stats());
        service.into_server()
    })
    .await;
    (r, stats.expect("built"))
}

/// `nodepulse_ingest_forwarded_reports_total{result}` in `stats`.
fn forwarded_reports(stats: &IngestStats, result: &str) -> u64 {
    let mut text = String::new();
    stats.render(&mut text);
    let line = format!("nodepulse_ingest_forwarded_reports_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("counted")
}

/// A node's reader changes (the replicas' membership moved): the new
/// reader's forwarded reads are passed over while the old reader forwards,
/// and taken as soon as its stream ends, not once its figures are stale
/// (the store's default freshness is 10 s, the bound here 3 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_reader_takes_over_when_the_last_one_stops_forwarding() {
    let picked = Arc::new(Picked::default());
    picked.insert("windows-1".into(), None);
    let (r, stats) = forwarded_to(picked).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("replica");
    std::fs::write(&token, "replica").expect("token file");
    let forwarder = |epoch: u64, cancel: &CancellationToken| {
        let (mut node, rx) = SimNode::new("windows-1", 2);
        node.epoch = epoch;
        let config = export::Config {
            token_file: Some(token.clone()),
            ..config(&[r.addr])
        };
        (exporter(config, rx, cancel), ticking(vec![node], cancel))
    };
    let (old_reader, new_reader) = (CancellationToken::new(), CancellationToken::new());
    let old = forwarder(2, &old_reader);
    until(
        &r.store,
        "the old reader's figures served",
        INTERVAL * 10,
        |s| full_and_correct(s, &[("windows-1", 2)]),
    )
    .await;
    let new = forwarder(3, &new_reader);
    until(
        &r.store,
        "the new reader's reads passed over while the old one forwards",
        INTERVAL * 10,
        |_| forwarded_reports(&stats, "superseded") >= 2,
    )
    .await;
    let restarts = |s: &Store| s.stats().restarts.load(Ordering::Relaxed);
    assert_eq!(restarts(&r.store), 0);
    old_reader.cancel();
    let _ = tokio::join!(old.0, old.1);
    until(
        &r.store,
        "the new reader's series started once the old stream ended",
        INTERVAL * 10,
        |s| restarts(s) > 0,
    )
    .await;
    until(
        &r.store,
        "the new reader's figures served",
        INTERVAL * 10,
        |s| full_and_correct(s, &[("windows-1", 2)]),
    )
    .await;
    new_reader.cancel();
    let _ = tokio::join!(new.0, new.1);
    r.stop().await;
}

/// A replica forwarding many nodes shares its connections to another: a
/// hundred nodes' streams arrive over four connections (32 streams each),
/// not a hundred (the ingest takes 64 from one address by default), and
/// each closes with its last stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_nodes_share_connections() {
    const NODES: usize = 100;
    let names: Vec<String> = (0..NODES).map(|i| format!("windows-{i}")).collect();
    let picked = Arc::new(Picked::default());
    for name in &names {
        picked.insert(name.as_str().into(), None);
    }
    let (r, stats) = forwarded_to(picked).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("replica");
    std::fs::write(&token, "replica").expect("token file");
    let pool = export::Pool::new(STREAMS_PER_CONNECTION);
    let cancel = CancellationToken::new();
    let (mut nodes, mut exporters) = (Vec::new(), Vec::new());
    for name in &names {
        let (node, rx) = SimNode::new(name, 1);
        let config = export::Config {
            token_file: Some(token.clone()),
            pool: Some(Arc::clone(&pool)),
            ..config(&[r.addr])
        };
        exporters.push(exporter(config, rx, &cancel));
        nodes.push(node);
    }
    let ticker = ticking(nodes, &cancel);
    let all: Vec<(&str, usize)> = names.iter().map(|n| (n.as_str(), 1)).collect();
    until(
        &r.store,
        "every forwarded node served",
        INTERVAL * 30,
        |s| full_and_correct(s, &all),
    )
    .await;
    let want = NODES.div_ceil(STREAMS_PER_CONNECTION);
    assert_eq!(pool.connections(), want, "connections held");
    assert_eq!(
        r.accepted.load(Ordering::Relaxed),
        want,
        "connections the replica accepted"
    );
    assert!(forwarded_reports(&stats, "applied") >= NODES as u64);
    cancel.cancel();
    for task in exporters.into_iter().chain([ticker]) {
        let _ = task.await;
    }
    assert_eq!(pool.connections(), 0, "closed with their last stream");
    r.stop().await;
}

/// A stream's first report carries the node's metadata. When the replica
/// refuses it (here the node's clock is a minute ahead until NTP steps it
/// back), the later reports alone could never be served: the replica ends
/// that stream, and the agent's next one starts with the metadata again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_metadata_was_refused_is_served_after_a_new_stream() {
    let r = replica(bind().await, Arc::new(Unauthenticated)).await;
    let cancel = CancellationToken::new();
    let (mut node, rx) = SimNode::new("node-1", 2);
    node.ahead = Duration::from_secs(60);
    node.tick();
    let export = exporter(config(&[r.addr]), rx, &cancel);
    let rejected = || {
        r.store
            .stats()
            .rejected
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let refused = async {
        while rejected() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(INTERVAL * 10, refused)
        .await
        .expect("the report from the future is refused");
    node.ahead = Duration::ZERO;
    let ticker = ticking(vec![node], &cancel);
    until(&r.store, "node served", INTERVAL * 10, |s| {
        full_and_correct(s, &[("node-1", 2)])
    })
    .await;
    assert!(
        rejected() >= 2,
        "the clock-skewed report, then one without metadata: {}",
        rejected()
    );
    cancel.cancel();
    let _ = ticker.await;
    let _ = export.await;
    r.stop().await;
}

/// Every line the aggregator logs in this test binary (a global subscriber:
/// the server's tasks run on the runtime's threads).
fn captured_logs() -> Arc<std::sync::Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    Arc::clone(LOGS.get_or_init(|| {
        let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&buf);
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Sink(Arc::clone(&sink)))
            .try_init();
        buf
    }))
}

/// A node name is checked before anything logs it: a newline cannot forge
/// a log line and a 1 MiB name cannot write a 1 MiB line; the stream is
/// refused with an escaped, bounded message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_names_are_checked_before_they_are_logged() {
    let logs = captured_logs();
    let r = replica(bind().await, Arc::new(Unauthenticated)).await;
    let mut client = proto::v1::ingest_client::IngestClient::connect(format!("http://{}", r.addr))
        .await
        .expect("connect");
    let huge = "n".repeat(1 << 20);
    for name in ["node-1\nINFO forged line", huge.as_str(), "node\u{1b}[2J"] {
        let report = NodeReport {
            node: name.to_string(),
            sample_unix_nanos: unix_nanos(SystemTime::now()),
            node_usage: Some(Usage::default()),
            metadata: Some(NodeMetadata::default()),
            ..NodeReport::default()
        };
        let status = client
            .report(futures::stream::iter([report]))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().len() < 400, "{}", status.message().len());
        assert!(!status.message().contains('\n') && !status.message().contains('\u{1b}'));
    }
    r.stop().await;
    let text =
        String::from_utf8_lossy(&logs.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    assert!(text.contains("ingest stream refused"), "{text}");
    for line in text.lines() {
        assert!(!line.starts_with("INFO forged"), "a forged line: {line}");
        assert!(line.len() < 2000, "a {} byte log line", line.len());
        assert!(!line.contains('\u{1b}'), "an escape sequence: {line:?}");
    }
}

/// Raw sockets that never send the HTTP/2 preface, hundreds from one
/// address and more from many: the ingest port's timeouts are set far
/// beyond the test's deadline, so only admission (per-peer limits, the
/// oldest pending connection making room) lets an honest agent through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_do_not_lock_agents_out() {
    use aggregator_api::{
        connections::{Connections, Limits},
        ingest::listener::{Settings, incoming},
    };
    let listener = bind().await;
    let addr = listener.local_addr().expect("addr");
    let store = Arc::new(Store::default());
    let stop = CancellationToken::new();
    let settings = Settings {
        connections: Limits {
            max: 300,
            per_peer: 30,
            pending: 16,
        },
        handshake_timeout: Duration::from_secs(600),
        preface_timeout: Duration::from_secs(600),
    };
    let connections = Connections::new("ingest", settings.connections);
    let service = IngestService::new(
        Arc::clone(&store),
        Arc::new(Unauthenticated),
        stop.clone(),
        16 << 20,
    )
    .into_server();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                incoming(listener, None, connections.clone(), settings, stop.clone()),
                stop.clone().cancelled_owned(),
            ),
    );
    let connect_from = |from: u8| async move {
        let socket = tokio::net::TcpSocket::new_v4().ok()?;
        socket
            .bind(SocketAddr::new(
                std::net::IpAddr::from([127, 0, 0, from]),
                0,
            ))
            .ok()?;
        socket.connect(addr).await.ok()
    };
    let mut held = Vec::new();
    for _ in 0..1_100 {
        held.extend(connect_from(2).await);
    }
    for from in 3..30u8 {
        for _ in 0..25 {
            held.extend(connect_from(from).await);
        }
    }
    let cancel = CancellationToken::new();
    let (node, rx) = SimNode::new("node-1", 2);
    let agent = exporter(config(&[addr]), rx, &cancel);
    let ticker = ticking(vec![node], &cancel);
    until(
        &store,
        "the agent served despite the flood",
        Duration::from_secs(20),
        |s| full_and_correct(s, &[("node-1", 2)]),
    )
    .await;
    let stats = connections.stats();
    let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    // Of 1,775 silent connections, all but the pending budget were closed:
    // refused at the door (one address over its share) or evicted.
    assert!(
        n(&stats.refused_per_peer) + n(&stats.evicted) >= 1_775 - 16,
        "refused {}, evicted {}",
        n(&stats.refused_per_peer),
        n(&stats.evicted)
    );
    assert!(connections.open() <= 300 + 16, "{}", connections.open());
    cancel.cancel();
    let _ = ticker.await;
    let _ = agent.await;
    drop(held);
    stop.cancel();
    let _ = server.await;
}

/// The ingest service, recording which methods agents call; as an aggregator
/// from before `ReportInParts` when `takes_parts` is false (tonic answers
/// UNIMPLEMENTED for a method a server does not have).
struct Recorded {
    inner: IngestService,
    takes_parts: bool,
    calls: Arc<std::sync::Mutex<Vec<&'static str>>>,
}

#[tonic::async_trait]
impl Ingest for Recorded {
    async fn report(
        &self,
        request: Request<Streaming<NodeReport>>,
    ) -> Result<Response<ReportSummary>, Status> {
        self.calls.lock().expect("calls").push("Report");
        self.inner.report(request).await
    }

    async fn report_in_parts(
        &self,
        request: Request<Streaming<NodeReport>>,
    ) -> Result<Response<ReportSummary>, Status> {
        self.calls.lock().expect("calls").push("ReportInParts");
        if !self.takes_parts {
            return Err(Status::unimplemented(""));
        }
        self.inner.report_in_parts(request).await
    }
}

/// A node with 150 pods (over 8 KiB of metadata: three parts) reporting to a
/// replica that takes parts and to an older one that does not: both serve
/// every pod, the new one from parts, the older one from one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_metadata_reaches_new_and_older_replicas_whole() {
    let recorded = |takes_parts: bool, calls: &Arc<std::sync::Mutex<Vec<&'static str>>>| {
        let calls = Arc::clone(calls);
        move |store, stop| {
            IngestServer::new(Recorded {
                inner: IngestService::new(store, Arc::new(Unauthenticated), stop, 16 << 20),
                takes_parts,
                calls,
            })
        }
    };
    let (new_calls, old_calls) = (Arc::default(), Arc::default());
    let new = replica_of(bind().await, recorded(true, &new_calls)).await;
    let old = replica_of(bind().await, recorded(false, &old_calls)).await;
    let cancel = CancellationToken::new();
    let layout = [("node-1", 150usize)];
    let (node, rx) = SimNode::new("node-1", 150);
    assert!(node.metadata.encoded_len() > 2 * proto::parts::PART_BYTES);
    let health = agent::health::Health::new(INTERVAL);
    let export = exporter(
        export::Config {
            observer: Some(Arc::clone(&health) as Arc<dyn export::Observer>),
            ..config(&[new.addr, old.addr])
        },
        rx,
        &cancel,
    );
    let ticker = ticking(vec![node], &cancel);
    for (replica, what) in [(&new, "new replica"), (&old, "older replica")] {
        until(&replica.store, what, INTERVAL * 10, |s| {
            full_and_correct(s, &layout)
        })
        .await;
    }
    // Sending whole to an older replica is not a refusal an operator
    // would act on.
    let metrics = health.render();
    let ended: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("nodepulse_agent_streams_ended_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(ended.is_empty(), "{ended:?}");
    assert_eq!(*new_calls.lock().expect("calls"), ["ReportInParts"]);
    assert_eq!(
        *old_calls.lock().expect("calls"),
        ["ReportInParts", "Report"]
    );
    cancel.cancel();
    let _ = ticker.await;
    let _ = export.await;
    new.stop().await;
    old.stop().await;
}

/// Parts that break the rules end their stream with a clear status; the
/// store takes nothing from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_parts_that_break_the_rules_end_the_stream() {
    let limit = 64 << 10;
    let r = replica_of(bind().await, |store, stop| {
        IngestService::new(store, Arc::new(Unauthenticated), stop, limit).into_server()
    })
    .await;
    let mut client = proto::v1::ingest_client::IngestClient::connect(format!("http://{}", r.addr))
        .await
        .expect("connect");
    let (node, _rx) = SimNode::new("node-1", 40);
    let part = NodeReport {
        node: "node-1".into(),
        metadata: Some((*node.metadata).clone()),
        metadata_continues: true,
        ..NodeReport::default()
    };
    let with_usage = NodeReport {
        sample_unix_nanos: unix_nanos(SystemTime::now()),
        node_usage: Some(Usage::default()),
        ..part.clone()
    };
    let too_many = std::iter::repeat_n(part.clone(), limit / part.encoded_len() + 1);
    for (reports, code) in [
        (vec![with_usage], tonic::Code::InvalidArgument),
        (too_many.collect(), tonic::Code::ResourceExhausted),
    ] {
        let status = client
            .report_in_parts(futures::stream::iter(reports))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), code, "{status:?}");
    }
    assert!(matches!(r.store.node("node-1"), Lookup::Unknown));
    r.stop().await;
}
