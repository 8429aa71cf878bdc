//! metrics.k8s.io serving benchmark (issue: metrics.k8s.io server).
//!
//! ```sh
//! cargo bench -p aggregator-api --bench serve -- --pods 300000
//! ```
//!
//! The real [`Store`] is filled through its ingest entry point (`apply`, the
//! same call the gRPC ingest makes) with two reports 15 s apart from
//! `pods / 30` simulated nodes of 30 pods (1–2 containers, 3 labels each);
//! every namespace holds 30 pods spread over 30 nodes. The real HTTPS server
//! (rustls, hyper, authentication by bearer token with a TokenReview double,
//! authorization by a SubjectAccessReview double — both behind the server's
//! own caches, as in production after the first request) serves it on
//! 127.0.0.1. Three measurements:
//!
//! 1. list all pods, JSON vs protobuf, interleaved rounds, median: in
//!    process, the server's path (`api::list`: read straight from the store
//!    and encoded on every core; `--threads N` to change that) next to the
//!    one-thread path through `PodUsage` values it replaced (store read,
//!    sort, encode, drop; asserted to give the same bytes), and the whole
//!    HTTPS GET with the body read by the client (`--list-only` stops after
//!    the in-process list, for profiling);
//! 2. one 30-pod namespace under concurrent load (`--clients` keep-alive
//!    HTTP/1.1 connections, protobuf as client-go asks, random namespace per
//!    request): latency p50/p99/max;
//! 3. requests per second per core: requests served / CPU seconds used by
//!    the server's runtime threads (read from /proc/self/task, so the client's
//!    own CPU is not counted).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use testkit::stats::median;

use aggregator_api::api::list::{self, Format, PodList};
use aggregator_api::api::view::MetricsView;
use aggregator_api::api::view::PodRef;
use aggregator_api::api::{ApiVersion, json, protobuf};
use aggregator_api::auth::config::{AuthConfig, AuthConfigHandle};
use aggregator_api::auth::review::{
    AccessReviewer, AccessVerdict, ReviewError, SubjectAccessReviewSpec, TokenReviewer,
    TokenVerdict,
};
use aggregator_api::auth::{Authenticator, Authorizer, User};
use aggregator_api::server::{self, App};
use aggregator_api::store::{Config, Freshness, Store};
use aggregator_api::tls::{self, ServingCert};
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use proto::v1::{
    ContainerName, ContainerSample, NodeMetadata, NodeReport, PodMetadata, PodSample, Usage,
};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

const PODS_PER_NODE: usize = 30;
const TOKEN: &str = "bench-token";
const SERVER_THREAD: &str = "np-bench-server";

struct Args {
    pods: usize,
    rounds: usize,
    clients: usize,
    seconds: u64,
    /// Only the in-process list rounds (for profiling).
    list_only: bool,
    /// Threads for the in-process list (default: as the server).
    threads: Option<usize>,
}

fn parse_args() -> Args {
    let mut args = Args {
        pods: 300_000,
        rounds: 5,
        clients: 16,
        seconds: 10,
        list_only: false,
        threads: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} takes a number"))
        };
        match flag.as_str() {
            "--pods" => args.pods = value("--pods"),
            "--rounds" => args.rounds = value("--rounds").max(1),
            "--clients" => args.clients = value("--clients").max(1),
            "--seconds" => args.seconds = value("--seconds").max(1) as u64,
            "--list-only" => args.list_only = true,
            "--threads" => args.threads = Some(value("--threads").max(1)),
            // cargo bench passes --bench; ignore anything else cargo adds.
            _ => {}
        }
    }
    args
}

// ---------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------

fn report(node: usize, namespaces: usize, at: SystemTime, cpu_scale: u64) -> NodeReport {
    let nanos = at
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as i64;
    let mut pods = Vec::with_capacity(PODS_PER_NODE);
    let mut metas = Vec::with_capacity(PODS_PER_NODE);
    for j in 0..PODS_PER_NODE {
        let g = node * PODS_PER_NODE + j;
        let uid = format!("{:08x}-0000-4000-8000-{g:012x}", node);
        let containers = 1 + g % 2;
        let ids: Vec<String> = (0..containers)
            .map(|c| format!("{g:060x}{c:04x}"))
            .collect();
        pods.push(PodSample {
            uid: uid.clone(),
            containers: ids
                .iter()
                .map(|id| ContainerSample {
                    id: id.clone(),
                    usage: Some(Usage {
                        cpu_ns: cpu_scale * (1_000_000 + (g as u64 % 997) * 7_919),
                        memory_working_set_bytes: (64 << 20) + (g as u64 % 4096) * 4096,
                        swap_bytes: None,
                        read_unix_nanos: None,
                    }),
                    start_unix_nanos: 1_700_000_000_000_000_000,
                })
                .collect(),
        });
        let app = format!("app-{}", g % 500);
        metas.push(PodMetadata {
            uid,
            namespace: format!("ns-{}", g % namespaces),
            name: format!("{app}-7d4b9c8f5-{g:05x}"),
            labels: BTreeMap::from([
                ("app".to_owned(), app),
                ("pod-template-hash".to_owned(), "7d4b9c8f5".to_owned()),
                ("tier".to_owned(), ["web", "api", "db"][g % 3].to_owned()),
            ])
            .into_iter()
            .collect(),
            running: true,
            containers: ids
                .iter()
                .zip(["app", "sidecar"])
                .map(|(id, name)| ContainerName {
                    id: id.clone(),
                    name: name.to_owned(),
                })
                .collect(),
        });
    }
    NodeReport {
        node: format!("node-{node:05}"),
        sample_unix_nanos: nanos,
        node_usage: Some(Usage {
            cpu_ns: cpu_scale * 40_000_000,
            memory_working_set_bytes: 8 << 30,
            swap_bytes: None,
            read_unix_nanos: None,
        }),
        pods,
        metadata: Some(NodeMetadata {
            labels: [
                (
                    "kubernetes.io/hostname".to_owned(),
                    format!("node-{node:05}"),
                ),
                (
                    "topology.kubernetes.io/zone".to_owned(),
                    format!("zone-{}", node % 3),
                ),
            ]
            .into_iter()
            .collect(),
            pods: metas,
        }),
        cpu_source: 1,
        seq: cpu_scale,
        agent_epoch: 1,
        metadata_continues: false,
    }
}

fn fill(store: &Store, pods: usize) -> usize {
    let nodes = pods.div_ceil(PODS_PER_NODE);
    let namespaces = (nodes * PODS_PER_NODE / 30).max(1);
    let now = SystemTime::now();
    for (round, at) in [now - Duration::from_secs(15), now].into_iter().enumerate() {
        for node in 0..nodes {
            store
                .apply(&report(node, namespaces, at, round as u64 + 1), at)
                .expect("report applies");
        }
    }
    namespaces
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

struct BenchTokens;
impl TokenReviewer for BenchTokens {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenVerdict, ReviewError>> {
        let verdict = if token == TOKEN {
            TokenVerdict::Authenticated(User {
                name: "system:serviceaccount:kube-system:horizontal-pod-autoscaler".to_owned(),
                ..User::default()
            })
        } else {
            TokenVerdict::Rejected(String::new())
        };
        Box::pin(async move { Ok(verdict) })
    }
}

struct AllowAll;
impl AccessReviewer for AllowAll {
    fn review<'a>(
        &'a self,
        _spec: &'a SubjectAccessReviewSpec,
    ) -> BoxFuture<'a, Result<AccessVerdict, ReviewError>> {
        Box::pin(async {
            Ok(AccessVerdict {
                allowed: true,
                reason: String::new(),
            })
        })
    }
}

/// Starts the server on its own runtime (threads named [`SERVER_THREAD`]).
fn start_server(view: Arc<dyn MetricsView>) -> (SocketAddr, String, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name(SERVER_THREAD)
        .enable_all()
        .build()
        .expect("server runtime");
    let (cert_pem, key_pem) = tls::generate_self_signed(&[]).expect("certificate");
    let serving = ServingCert::from_pem(cert_pem.as_bytes(), key_pem.as_bytes()).expect("cert");
    let auth = AuthConfigHandle::loaded(AuthConfig::default());
    let tls_config = tls::build(Arc::new(serving), auth.clone(), &Default::default()).expect("tls");
    let app = App::builder(
        view,
        Authenticator::new(auth, Some(Arc::new(BenchTokens))),
        Authorizer::new(Arc::new(AllowAll)),
    )
    .build();
    let listener = runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    runtime.spawn(server::serve(
        listener,
        tls_config,
        app,
        std::future::pending(),
    ));
    (addr, cert_pem, runtime)
}

/// CPU seconds used so far by threads whose name is `name`.
fn thread_cpu_seconds(name: &str) -> f64 {
    let mut total = 0.0;
    for task in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.trim_end().starts_with(name.get(..15).unwrap_or(name)) {
            continue;
        }
        total += testkit::stat_cpu_seconds(&task.path().join("stat")).unwrap_or(0.0);
    }
    total
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

async fn connect(addr: SocketAddr, tls: &TlsConnector) -> Connection {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let stream = tls
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    Connection { sender }
}

impl Connection {
    async fn get(&mut self, path: &str, accept: &str) -> (StatusCode, Bytes) {
        self.sender.ready().await.expect("connection ready");
        let request = Request::get(path)
            .header(http::header::HOST, "localhost")
            .header(http::header::ACCEPT, accept)
            .header(http::header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .body(Empty::new())
            .expect("request");
        let response = self.sender.send_request(request).await.expect("response");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, body)
    }
}

fn connector(cert_pem: &str) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

// ---------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

const JSON: &str = "application/json";
const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";
const CLIENT_GO: &str = "application/vnd.kubernetes.protobuf, */*";

// The bench is a command line tool: its result is the tables on stdout.
#[allow(clippy::print_stdout)]
fn main() {
    let args = parse_args();
    // A fleet frozen after its two reports: served for the whole run, however
    // long it takes (live agents would keep reporting).
    let store = Arc::new(Store::new(Config {
        freshness: Freshness {
            windows: 0,
            at_least: Duration::MAX,
        },
        ..Config::default()
    }));
    let started = Instant::now();
    let namespaces = fill(&store, args.pods);
    let served = store.pods(None).len();
    println!(
        "store: {served} pods with metrics ({} nodes, {namespaces} namespaces of 30), filled in {:.1} s",
        args.pods.div_ceil(PODS_PER_NODE),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(served, args.pods.div_ceil(PODS_PER_NODE) * PODS_PER_NODE);

    // 1a. Encoding alone, in process: what the server does (`list`: read
    // straight from the store and encode on every core), and the one-thread
    // path through `PodUsage` values it replaced (kept as the reference the
    // tests compare with), which must give the same bytes.
    let threads = args.threads.unwrap_or_else(list::threads);
    let everything = |_: &PodRef<'_>| true;
    let request = |format, now| PodList {
        namespace: None,
        filter: &everything,
        format,
        version: ApiVersion::V1Beta1,
        now,
        threads,
    };
    let mut ms: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let (mut json_len, mut pb_len) = (0, 0);
    let mut time = |name, f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        ms.entry(name)
            .or_default()
            .push(t.elapsed().as_secs_f64() * 1e3);
    };
    for round in 0..args.rounds {
        let now = SystemTime::now();
        let mut json = Vec::new();
        time("list JSON", &mut || {
            json = list::pod_list(&*store, &request(Format::Json, now)).expect("json");
        });
        json_len = json.len();
        let mut pb = Vec::new();
        time("list protobuf", &mut || {
            pb = list::pod_list(&*store, &request(Format::Protobuf, now)).expect("protobuf");
        });
        pb_len = pb.len();
        if args.list_only {
            continue;
        }
        let mut pods = Vec::new();
        time("one thread: store read (`pods(None)`)", &mut || {
            pods = store.pods(None)
        });
        time("one thread: sort by namespace/name", &mut || {
            assert_eq!(aggregator_api::api::sorted_pods(&pods).len(), pods.len())
        });
        let mut old_json = Vec::new();
        time("one thread: encode JSON (sort included)", &mut || {
            old_json = json::pod_list(&pods, ApiVersion::V1Beta1, now).expect("json")
        });
        let mut old_pb = Vec::new();
        time("one thread: encode protobuf (sort included)", &mut || {
            old_pb = protobuf::pod_list(&pods, ApiVersion::V1Beta1, now)
        });
        time("one thread: drop the pods", &mut || {
            drop(std::mem::take(&mut pods))
        });
        if round == 0 {
            assert!(json == old_json, "same JSON bytes both ways");
            assert!(pb == old_pb, "same protobuf bytes both ways");
        }
    }
    println!(
        "\n| list {served} pods, in process, median of {} ({threads} threads for `list`) | ms |",
        args.rounds
    );
    println!("|---|---|");
    for (name, xs) in ms {
        println!("| {name} | {:.0} |", median(xs));
    }
    println!(
        "| body JSON / protobuf | {:.1} / {:.1} MiB |",
        json_len as f64 / 1048576.0,
        pb_len as f64 / 1048576.0
    );

    // One 30-pod namespace (the HPA's request), protobuf, in process: the
    // server's path and the one it replaced, interleaved, mean per request.
    let (mut list_us, mut old_us) = (Vec::new(), Vec::new());
    let requests = 2_000;
    for round in 0..args.rounds {
        for (path, out) in [(0, &mut list_us), (1, &mut old_us)] {
            let t = Instant::now();
            for i in 0..requests {
                let ns = format!("ns-{}", (i * 7_919 + round) % namespaces);
                let now = SystemTime::now();
                let body = if path == 0 {
                    list::pod_list(
                        &*store,
                        &PodList {
                            namespace: Some(&ns),
                            threads: 1,
                            ..request(Format::Protobuf, now)
                        },
                    )
                    .expect("protobuf")
                } else {
                    protobuf::pod_list(&store.pods(Some(&ns)), ApiVersion::V1Beta1, now)
                };
                assert!(body.len() > 30 * 100, "30 pods in the body");
            }
            out.push(t.elapsed().as_secs_f64() * 1e6 / requests as f64);
        }
    }
    println!(
        "| one 30-pod namespace, protobuf: `list` / one-thread path (µs per request) | {:.1} / {:.1} |",
        median(list_us),
        median(old_us)
    );

    if args.list_only {
        return;
    }

    // 1b. Over HTTPS.
    let view: Arc<dyn MetricsView> = store.clone();
    let (addr, cert_pem, server_runtime) = start_server(view);
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("np-bench-client")
        .enable_all()
        .build()
        .expect("client runtime");
    let tls = connector(&cert_pem);
    client_runtime.block_on(async {
        let mut conn = connect(addr, &tls).await;
        let path = "/apis/metrics.k8s.io/v1beta1/pods";
        let (mut json_s, mut pb_s) = (Vec::new(), Vec::new());
        for _ in 0..args.rounds {
            for (accept, out) in [(JSON, &mut json_s), (CLIENT_GO, &mut pb_s)] {
                let t = Instant::now();
                let (status, body) = conn.get(path, accept).await;
                out.push(t.elapsed().as_secs_f64());
                assert_eq!(status, StatusCode::OK);
                if accept == PROTOBUF || accept == CLIENT_GO {
                    assert!(body.starts_with(b"k8s\0"), "protobuf body");
                }
            }
        }
        let (json, pb) = (median(json_s), median(pb_s));
        println!(
            "\n| GET all {served} pods over HTTPS (request → last body byte), median of {} | s |",
            args.rounds
        );
        println!("|---|---|");
        println!("| `Accept: {JSON}` | {json:.3} |");
        println!("| `Accept: {CLIENT_GO}` (client-go) | {pb:.3} |");
        println!("| ratio protobuf/JSON | {:.2} |", pb / json);
    });

    // 2 + 3. One namespace under concurrent load.
    let stop = Arc::new(AtomicBool::new(false));
    let (latencies, requests, wall, server_cpu) = client_runtime.block_on(async {
        let mut conns = Vec::new();
        for _ in 0..args.clients {
            conns.push(connect(addr, &tls).await);
        }
        // Warm the authentication and authorization caches.
        for c in &mut conns {
            let (status, _) = c
                .get(
                    "/apis/metrics.k8s.io/v1beta1/namespaces/ns-0/pods",
                    CLIENT_GO,
                )
                .await;
            assert_eq!(status, StatusCode::OK);
        }
        let cpu_before = thread_cpu_seconds(SERVER_THREAD);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (i, mut conn) in conns.into_iter().enumerate() {
            let stop = Arc::clone(&stop);
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut k = i as u64 * 7_919;
                while !stop.load(Ordering::Relaxed) {
                    // A cheap LCG spreads requests over namespaces.
                    k = k.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    let ns = (k >> 33) as usize % namespaces;
                    let path = format!("/apis/metrics.k8s.io/v1beta1/namespaces/ns-{ns}/pods");
                    let t = Instant::now();
                    let (status, body) = conn.get(&path, CLIENT_GO).await;
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                    assert_eq!(status, StatusCode::OK);
                    assert!(body.len() > 30 * 100, "30 pods in the body");
                }
                lat
            }));
        }
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("client task"));
        }
        let wall = started.elapsed().as_secs_f64();
        let cpu = thread_cpu_seconds(SERVER_THREAD) - cpu_before;
        let n = all.len();
        (all, n, wall, cpu)
    });
    let mut sorted = latencies;
    sorted.sort_by(f64::total_cmp);
    let rps = requests as f64 / wall;
    println!(
        "\n| one 30-pod namespace, {} concurrent keep-alive clients, {:.0} s, protobuf | value |",
        args.clients, wall
    );
    println!("|---|---|");
    println!("| requests | {requests} |");
    println!(
        "| latency p50 / p99 / max (ms) | {:.2} / {:.2} / {:.2} |",
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        sorted[sorted.len() - 1]
    );
    println!("| requests/s | {rps:.0} |");
    println!("| server CPU (cores busy) | {:.2} |", server_cpu / wall);
    println!(
        "| requests/s per core | {:.0} |",
        requests as f64 / server_cpu.max(f64::EPSILON)
    );
    println!(
        "\nload average at end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    drop(server_runtime);
}
