//! The consumer watch stream over a real loopback socket: snapshot then
//! changes, filters, a slow consumer that skips to the latest state, and
//! authorization through (test double) Token/SubjectAccess reviews.
use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aggregator_api::{
    auth::{
        User,
        review::{
            AccessReviewer, AccessVerdict, ReviewError, SubjectAccessReviewSpec, TokenReviewer,
            TokenVerdict,
        },
    },
    store::Store,
    stream::{WatchAuth, WatchService},
};
use futures::future::BoxFuture;
use proto::v1::{
    ContainerName, ContainerSample, NodeMetadata, NodeReport, PodMetadata, PodSample, Usage,
    WatchEvent, WatchRequest, metrics_client::MetricsClient,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn report(node: &str, second: u64, with_meta: bool) -> NodeReport {
    // One base for the whole test binary, so windows are exact seconds.
    static BASE: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| {
        SystemTime::now().duration_since(UNIX_EPOCH).expect("clock") - Duration::from_secs(100)
    });
    let t = base + Duration::from_secs(second);
    let usage = |cores: u64| Usage {
        cpu_ns: second * cores * 1_000_000_000,
        memory_working_set_bytes: 1 << 20,
        swap_bytes: None,
        read_unix_nanos: None,
    };
    let ns = if node == "node-1" { "red" } else { "blue" };
    NodeReport {
        node: node.into(),
        sample_unix_nanos: t.as_nanos() as i64,
        node_usage: Some(usage(2)),
        pods: vec![PodSample {
            uid: format!("{node}-u"),
            containers: vec![ContainerSample {
                id: format!("{node}-c"),
                usage: Some(usage(1)),
                start_unix_nanos: 1,
            }],
        }],
        metadata: with_meta.then(|| NodeMetadata {
            labels: BTreeMap::from([("pool".to_string(), ns.to_string())])
                .into_iter()
                .collect(),
            pods: vec![PodMetadata {
                uid: format!("{node}-u"),
                namespace: ns.into(),
                name: format!("{node}-pod"),
                labels: [("team".to_string(), ns.to_string())].into(),
                running: true,
                containers: vec![ContainerName {
                    id: format!("{node}-c"),
                    name: "main".into(),
                }],
            }],
        }),
        cpu_source: 1,
        seq: second,
        agent_epoch: 1,
        metadata_continues: false,
    }
}

async fn serve(
    store: Arc<Store>,
    auth: Option<WatchAuth>,
) -> (MetricsClient<tonic::transport::Channel>, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let service = WatchService::new(store, auth, stop.clone()).into_server();
    let shutdown = stop.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown.cancelled_owned(),
            )
            .await
            .expect("serve");
    });
    let client = MetricsClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    (client, stop)
}

fn filled_store() -> Arc<Store> {
    let store = Arc::new(Store::default());
    for node in ["node-1", "node-2"] {
        store
            .apply(&report(node, 1, true), SystemTime::now())
            .expect("apply");
        store
            .apply(&report(node, 2, false), SystemTime::now())
            .expect("apply");
    }
    store
}

async fn next(stream: &mut tonic::Streaming<WatchEvent>) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("an event within 5 s")
        .expect("stream ok")
        .expect("stream open")
}

#[tokio::test]
async fn snapshot_then_only_what_changed() {
    let store = filled_store();
    let (mut client, stop) = serve(Arc::clone(&store), None).await;
    let mut stream = client
        .watch(WatchRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let first = next(&mut stream).await;
    assert!(first.snapshot);
    assert_eq!(
        first
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>(),
        ["node-1", "node-2"]
    );
    assert_eq!(first.pods.len(), 2);
    assert_eq!(
        first.pods[0].node, "node-2",
        "sorted by namespace: blue first"
    );
    assert_eq!(
        first.pods[1].containers[0]
            .usage
            .expect("usage")
            .cpu_nanocores,
        1_000_000_000
    );

    store
        .apply(&report("node-1", 3, false), SystemTime::now())
        .expect("apply");
    let update = next(&mut stream).await;
    assert!(!update.snapshot);
    assert_eq!(
        update
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>(),
        ["node-1"]
    );
    assert_eq!(
        update
            .pods
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["node-1-pod"]
    );
    stop.cancel();
}

#[tokio::test]
async fn filters_and_bad_selectors() {
    let store = filled_store();
    let (mut client, stop) = serve(store, None).await;
    let mut by_ns = client
        .watch(WatchRequest {
            namespace: "red".into(),
            pods: true,
            ..WatchRequest::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let e = next(&mut by_ns).await;
    assert!(e.nodes.is_empty());
    assert_eq!(
        e.pods.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["node-1-pod"]
    );
    let mut by_label = client
        .watch(WatchRequest {
            label_selector: "team in (blue)".into(),
            pods: true,
            ..WatchRequest::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let e = next(&mut by_label).await;
    assert_eq!(
        e.pods.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["node-2-pod"]
    );
    let bad = client
        .watch(WatchRequest {
            label_selector: "a in (".into(),
            ..WatchRequest::default()
        })
        .await
        .expect_err("bad selector");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    stop.cancel();
}

#[tokio::test]
async fn a_slow_consumer_skips_to_the_latest_state() {
    let store = filled_store();
    let (mut client, stop) = serve(Arc::clone(&store), None).await;
    let mut stream = client
        .watch(WatchRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let _snapshot = next(&mut stream).await;
    // 30 reports while the consumer reads nothing.
    for s in 3..33 {
        store
            .apply(&report("node-2", s, false), SystemTime::now())
            .expect("apply");
    }
    let latest = store
        .pods_by_node(Some("node-2"), None)
        .into_iter()
        .map(|(_, p)| p.timestamp)
        .next()
        .expect("pod");
    let latest = latest.duration_since(UNIX_EPOCH).expect("clock").as_nanos() as i64;
    // At most one stale event was buffered; the one after it is the latest.
    let mut events = 0;
    loop {
        let e = next(&mut stream).await;
        events += 1;
        if e.pods.iter().any(|p| p.timestamp_unix_nanos == latest) {
            break;
        }
        assert!(
            events < 3,
            "more than one stale event: the consumer did not skip"
        );
    }
    stop.cancel();
}

struct Tokens;
impl TokenReviewer for Tokens {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenVerdict, ReviewError>> {
        let verdict = match token {
            "alice" | "bob" => TokenVerdict::Authenticated(User {
                name: token.into(),
                uid: String::new(),
                groups: vec!["system:authenticated".into()],
                extra: BTreeMap::new(),
            }),
            _ => TokenVerdict::Rejected("unknown".into()),
        };
        Box::pin(async move { Ok(verdict) })
    }
}

/// alice may watch everything; bob only pods in "red".
struct Rbac;
impl AccessReviewer for Rbac {
    fn review<'a>(
        &'a self,
        spec: &'a SubjectAccessReviewSpec,
    ) -> BoxFuture<'a, Result<AccessVerdict, ReviewError>> {
        let attrs = spec.resource_attributes.clone().unwrap_or_default();
        let allowed = attrs.verb == "watch"
            && attrs.group == "metrics.k8s.io"
            && (spec.user == "alice" || (attrs.resource == "pods" && attrs.namespace == "red"));
        Box::pin(async move {
            Ok(AccessVerdict {
                allowed,
                reason: String::new(),
            })
        })
    }
}

#[tokio::test]
async fn watchers_are_authenticated_and_authorized() {
    let store = filled_store();
    let auth = WatchAuth {
        tokens: Arc::new(Tokens),
        access: Arc::new(Rbac),
    };
    let (mut client, stop) = serve(store, Some(auth)).await;
    let ask = |token: Option<&str>, req: WatchRequest| {
        let mut r = tonic::Request::new(req);
        if let Some(t) = token {
            r.metadata_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("ascii"),
            );
        }
        r
    };
    let code = |r: Result<tonic::Response<tonic::Streaming<WatchEvent>>, tonic::Status>| {
        r.err().map(|s| s.code())
    };
    assert_eq!(
        code(client.watch(ask(None, WatchRequest::default())).await),
        Some(tonic::Code::Unauthenticated)
    );
    assert_eq!(
        code(
            client
                .watch(ask(Some("mallory"), WatchRequest::default()))
                .await
        ),
        Some(tonic::Code::Unauthenticated)
    );
    assert_eq!(
        code(
            client
                .watch(ask(Some("bob"), WatchRequest::default()))
                .await
        ),
        Some(tonic::Code::PermissionDenied)
    );
    let red = WatchRequest {
        namespace: "red".into(),
        pods: true,
        ..WatchRequest::default()
    };
    assert_eq!(code(client.watch(ask(Some("bob"), red)).await), None);
    assert_eq!(
        code(
            client
                .watch(ask(Some("alice"), WatchRequest::default()))
                .await
        ),
        None
    );
    stop.cancel();
}

/// Nothing costly happens for a caller that is not authenticated: a huge,
/// invalid selector without a token is answered UNAUTHENTICATED (it was
/// never parsed); an authenticated caller's selector has a size limit, and a
/// request too large to be a watch request is not even decoded.
#[tokio::test]
async fn selectors_are_parsed_after_authentication_and_bounded() {
    let store = filled_store();
    let auth = WatchAuth {
        tokens: Arc::new(Tokens),
        access: Arc::new(Rbac),
    };
    let (mut client, stop) = serve(store, Some(auth)).await;
    let client_big = client.clone().max_encoding_message_size(16 << 20);
    let ask = |token: Option<&str>, selector: String| {
        let mut r = tonic::Request::new(WatchRequest {
            label_selector: selector,
            ..WatchRequest::default()
        });
        if let Some(t) = token {
            r.metadata_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("ascii"),
            );
        }
        r
    };
    // A selector just under the request limit, and invalid ("(" never closes).
    let values: Vec<String> = (0..6_000).map(|i| format!("v{i}")).collect();
    let huge = format!("k in ({}", values.join(","));
    assert!(huge.len() > aggregator_api::stream::MAX_SELECTOR_BYTES);
    assert!(huge.len() < aggregator_api::stream::MAX_REQUEST_BYTES);
    let status = client
        .watch(ask(None, huge.clone()))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let status = client
        .watch(ask(Some("alice"), huge))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("limit"), "{}", status.message());
    // 3.3 MiB, as the probe sent it: not decoded at all.
    let values: Vec<String> = (0..450_000).map(|i| format!("v{i}")).collect();
    let probe = format!("k in ({})", values.join(","));
    let status = client_big
        .clone()
        .watch(ask(None, probe))
        .await
        .expect_err("refused");
    assert!(
        matches!(
            status.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{status:?}"
    );
    stop.cancel();
}
