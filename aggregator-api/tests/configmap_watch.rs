//! The authentication ConfigMap reloader against a fake kube-apiserver that
//! serves the ConfigMap's list and a watch stream the test writes events to.
//!
//! The reloader's period is an hour, so every change it picks up came through
//! the watch (or a re-list the watch's end caused), never a poll. Nothing
//! sleeps for readiness: each step waits for an observable condition (a
//! watch opened, the stored config changed) under a deadline.

#[path = "apiserver/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aggregator_api::auth::config::AuthConfigHandle;
use aggregator_api::auth::configmap::{AuthConfigReloader, LIST_PATH};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;

use support::{Pki, configmap_data, default_flags, kube_client, serve_https};

type Body = BoxBody<Bytes, Infallible>;
/// The client and the kubeconfig files it re-reads.
type Client = (kube::Client, tempfile::TempDir);

/// An open watch: its path and query, and the sender of its event lines.
struct OpenWatch {
    query: String,
    events: mpsc::Sender<Bytes>,
}

/// State of the fake kube-apiserver.
struct Fake {
    data: Mutex<BTreeMap<String, String>>,
    resource_version: AtomicUsize,
    lists: AtomicUsize,
    watches: Mutex<Vec<OpenWatch>>,
    /// Watches opened so far.
    opened: watch::Sender<usize>,
}

impl Fake {
    fn object(&self) -> Value {
        json!({
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": {
                "name": "extension-apiserver-authentication",
                "namespace": "kube-system",
                "resourceVersion": self.resource_version.load(Ordering::SeqCst).to_string(),
            },
            "data": *self.data.lock().expect("lock"),
        })
    }

    /// Changes the ConfigMap (as the next list shows it) and returns it.
    fn update(&self, key: &str, value: &str) -> Value {
        self.data
            .lock()
            .expect("lock")
            .insert(key.to_owned(), value.to_owned());
        self.resource_version.fetch_add(1, Ordering::SeqCst);
        self.object()
    }

    /// Sends one event line on the newest open watch.
    async fn send(&self, kind: &str, object: Value) {
        let line = format!("{}\n", json!({ "type": kind, "object": object }));
        let events = self
            .watches
            .lock()
            .expect("lock")
            .last()
            .expect("a watch is open")
            .events
            .clone();
        events
            .send(Bytes::from(line))
            .await
            .expect("the watcher reads");
    }

    /// Ends every open watch stream (the server's timeout).
    fn end_watches(&self) {
        self.watches.lock().expect("lock").clear();
    }
}

fn full(status: StatusCode, body: Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *response.status_mut() = status;
    response
}

async fn answer(fake: Arc<Fake>, request: Request<Incoming>) -> Response<Body> {
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let query = request.uri().query().unwrap_or_default();
    if request.uri().path() != LIST_PATH {
        return full(
            StatusCode::NOT_FOUND,
            json!({"kind": "Status", "code": 404}),
        );
    }
    let pairs: Vec<&str> = query.split('&').collect();
    if !pairs.contains(&"watch=true") {
        fake.lists.fetch_add(1, Ordering::SeqCst);
        let version = fake.resource_version.load(Ordering::SeqCst).to_string();
        return full(
            StatusCode::OK,
            json!({
                "kind": "ConfigMapList",
                "apiVersion": "v1",
                "metadata": { "resourceVersion": version },
                "items": [fake.object()],
            }),
        );
    }
    let (events, stream) = mpsc::channel::<Bytes>(16);
    // As kube-apiserver does, a watch from an older version first sends
    // what changed since.
    let from: usize = pairs
        .iter()
        .find_map(|p| p.strip_prefix("resourceVersion="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if from < fake.resource_version.load(Ordering::SeqCst) {
        let line = format!(
            "{}\n",
            json!({ "type": "MODIFIED", "object": fake.object() })
        );
        events
            .try_send(Bytes::from(line))
            .expect("room for one event");
    }
    fake.watches.lock().expect("lock").push(OpenWatch {
        query: path_and_query.clone(),
        events,
    });
    fake.opened.send_modify(|n| *n += 1);
    let body = StreamBody::new(ReceiverStream::new(stream).map(|b| Ok(Frame::data(b))));
    Response::new(BodyExt::boxed(body))
}

async fn start_fake(data: BTreeMap<String, String>) -> (Arc<Fake>, Client, oneshot::Sender<()>) {
    let fake = Arc::new(Fake {
        data: Mutex::new(data),
        resource_version: AtomicUsize::new(100),
        lists: AtomicUsize::new(0),
        watches: Mutex::new(Vec::new()),
        opened: watch::channel(0).0,
    });
    let served = fake.clone();
    let (addr, ca, stop) = serve_https(move |request| answer(served.clone(), request)).await;
    let client = kube_client(addr, &ca.pem(), "sa-token").await;
    (fake, client, stop)
}

fn allowed_names(handle: &AuthConfigHandle) -> Vec<String> {
    handle
        .current()
        .and_then(|c| c.request_header.clone())
        .map(|rh| rh.allowed_names)
        .unwrap_or_default()
}

const DEADLINE: Duration = Duration::from_secs(20);

/// Waits until `condition` holds, checking every 10 ms, for at most
/// [`DEADLINE`].
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(DEADLINE, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

/// Waits until `n` watches have been opened.
async fn watches_opened(fake: &Fake, n: usize) {
    let mut opened = fake.opened.subscribe();
    tokio::time::timeout(DEADLINE, opened.wait_for(|count| *count >= n))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for watch #{n}"))
        .expect("fake alive");
}

#[tokio::test]
async fn configmap_changes_arrive_through_the_watch() {
    let pki = Pki::new();
    let (fake, client, _stop) = start_fake(configmap_data(&pki)).await;
    let handle = AuthConfigHandle::new();
    let reloader = AuthConfigReloader::new(Some(client.0.clone()), default_flags(), handle.clone())
        .with_period(Duration::from_secs(3600));
    let (shutdown, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(reloader.run(async {
        let _ = stopped.await;
    }));

    // List, load, then watch from the list's version, narrowed to the name.
    watches_opened(&fake, 1).await;
    assert_eq!(allowed_names(&handle), ["front-proxy-client"]);
    let query = fake.watches.lock().expect("lock")[0].query.clone();
    let pairs: Vec<&str> = query.split(['?', '&']).collect();
    for part in [
        "fieldSelector=metadata.name%3Dextension-apiserver-authentication",
        "watch=true",
        "resourceVersion=100",
    ] {
        assert!(pairs.contains(&part), "{query} lacks {part}");
    }
    assert_eq!(fake.lists.load(Ordering::SeqCst), 1);

    // A change is applied from the event alone: no second list.
    let changed = fake.update(
        "requestheader-allowed-names",
        r#"["front-proxy-client","aggregator"]"#,
    );
    fake.send("MODIFIED", changed).await;
    until("the watched change", || {
        allowed_names(&handle) == ["front-proxy-client", "aggregator"]
    })
    .await;
    assert_eq!(fake.lists.load(Ordering::SeqCst), 1, "no list, no poll");

    // An unusable ConfigMap, then its deletion, keep the last good config:
    // of the three events only the last good one changes what is stored.
    let generation = handle.generation();
    let mut bad = fake.object();
    bad["data"]["client-ca-file"] = json!("garbage");
    fake.send("MODIFIED", bad).await;
    fake.send("DELETED", fake.object()).await;
    let good = fake.update("requestheader-allowed-names", r#"["aggregator"]"#);
    fake.send("MODIFIED", good).await;
    until("the good config after the bad ones", || {
        allowed_names(&handle) == ["aggregator"]
    })
    .await;
    assert_eq!(handle.generation(), generation + 1);
    assert!(handle.current().is_some_and(|c| c.client_ca.is_some()));

    // 410 Gone: list again (seeing a change made meanwhile), watch again
    // from the new version.
    fake.update("requestheader-allowed-names", r#"["after-gone"]"#);
    fake.send(
        "ERROR",
        json!({"kind": "Status", "status": "Failure", "code": 410, "reason": "Expired"}),
    )
    .await;
    watches_opened(&fake, 2).await;
    until("the re-listed config", || {
        allowed_names(&handle) == ["after-gone"]
    })
    .await;
    assert_eq!(fake.lists.load(Ordering::SeqCst), 2);
    let query = fake
        .watches
        .lock()
        .expect("lock")
        .last()
        .expect("watch")
        .query
        .clone();
    let listed = fake.resource_version.load(Ordering::SeqCst);
    assert!(
        query
            .split(['?', '&'])
            .any(|pair| pair == format!("resourceVersion={listed}")),
        "{query}"
    );

    // The stream ends (the server's timeoutSeconds): the watch resumes from
    // the last version seen, and what changed meanwhile arrives through it.
    fake.update("requestheader-allowed-names", r#"["after-end"]"#);
    fake.end_watches();
    watches_opened(&fake, 3).await;
    until("the change made while no watch was open", || {
        allowed_names(&handle) == ["after-end"]
    })
    .await;
    assert_eq!(fake.lists.load(Ordering::SeqCst), 2, "resumed, not listed");

    let _ = shutdown.send(());
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("the reloader stops on shutdown")
        .expect("no panic");
}
