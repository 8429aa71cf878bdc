//! The node's own pods, as kube-apiserver knows them: names, namespaces,
//! labels, phase, and which container id is which container. The agent joins
//! these to the cgroups it measures and sends them to the aggregators, so the
//! aggregators need no pod informer of their own.
//!
//! A kube-runtime watcher (list, then watch; relist after a 410; backoff
//! after errors, and watches that end at once paced by the client) selects
//! the node's pods by `spec.nodeName` as the kubelet does (kube-apiserver's
//! watch cache indexes that field) and leaves out pods that have terminated
//! (Succeeded, Failed): they are never served, and on a node that runs many
//! Jobs with no TTL they pile up past what an aggregator takes in one report.
//! The Node's labels are re-read every minute, beside the watch.
use std::{
    collections::{BTreeMap, HashMap},
    pin::pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use proto::v1::{ContainerName, NodeMetadata, PodMetadata};
use support::{
    backoff::WatchBackoff,
    changes::{Change, changes},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A pod as the wire carries it. Container ids lose their runtime scheme
/// (`containerd://…`): cgroups name containers by the bare id.
///
/// Init containers are listed too, with any id they have: a native sidecar
/// (`restartPolicy: Always`, e.g. istio-proxy) runs beside the others for
/// the pod's life, with a cgroup of its own, and the kubelet's
/// `/metrics/resource` (so metrics-server) reports it; a running init
/// container has a cgroup to measure. One that has finished has no cgroup
/// left, so no samples, and is not reported.
fn to_wire(pod: &Pod) -> PodMetadata {
    let meta = &pod.metadata;
    let status = pod.status.as_ref();
    let statuses = status.into_iter().flat_map(|s| {
        s.container_statuses
            .iter()
            .flatten()
            .chain(s.init_container_statuses.iter().flatten())
    });
    PodMetadata {
        uid: meta.uid.clone().unwrap_or_default(),
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        labels: meta
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        running: status.and_then(|s| s.phase.as_deref()) == Some("Running"),
        containers: statuses
            .filter_map(|c| {
                let id = c.container_id.as_deref().unwrap_or_default();
                let id = id.rsplit_once("://").map_or(id, |(_, id)| id);
                (!id.is_empty()).then(|| ContainerName {
                    id: id.to_string(),
                    name: c.name.clone(),
                })
            })
            .collect(),
    }
}

#[derive(Default)]
struct State {
    node_labels: BTreeMap<String, String>,
    pods: HashMap<String, PodMetadata>,
    /// The pods were listed at least once: until then there is nothing worth
    /// publishing (an empty pod list would read as "no pods").
    listed: bool,
}

impl State {
    fn publish(&self, tx: &watch::Sender<Arc<NodeMetadata>>) {
        if !self.listed {
            return;
        }
        let mut pods: Vec<PodMetadata> = self.pods.values().cloned().collect();
        pods.sort_by(|a, b| a.uid.cmp(&b.uid));
        let next = NodeMetadata {
            labels: self.node_labels.clone().into_iter().collect(),
            pods,
        };
        tx.send_if_modified(|current| {
            if **current == next {
                false
            } else {
                *current = Arc::new(next);
                true
            }
        });
    }
}

/// The state is shared by the pod watch and the label refresh, which run
/// side by side; neither holds the lock across an await.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// This node's pods that have not terminated.
fn field_selector(node: &str) -> String {
    format!("spec.nodeName={node},status.phase!=Succeeded,status.phase!=Failed")
}

/// How the watcher paces itself (tests shorten it).
#[derive(Clone, Copy, Debug)]
struct Timing {
    /// How often the Node's labels are read again.
    labels_every: Duration,
    /// Pauses before the watcher tries again after a failed list or watch.
    backoff_base: Duration,
    backoff_max: Duration,
}

const TIMING: Timing = Timing {
    labels_every: Duration::from_secs(60),
    backoff_base: Duration::from_millis(500),
    backoff_max: Duration::from_secs(30),
};

/// Where the Node's labels come from.
enum Labels {
    /// Read from kube-apiserver, then every `labels_every`.
    Read,
    /// Given by a caller that watches the Node already.
    Given(watch::Receiver<BTreeMap<String, String>>),
}

/// Keeps `tx` holding this node's metadata until `cancel`.
pub async fn run(
    client: Client,
    node: String,
    tx: watch::Sender<Arc<NodeMetadata>>,
    cancel: CancellationToken,
) {
    watch_node(client, &node, &TIMING, Labels::Read, &tx, &cancel).await;
}

/// [`run`], with the Node's labels from `labels` rather than read from
/// kube-apiserver every minute: for a caller that watches the Node already.
pub async fn run_with_labels(
    client: Client,
    node: String,
    labels: watch::Receiver<BTreeMap<String, String>>,
    tx: watch::Sender<Arc<NodeMetadata>>,
    cancel: CancellationToken,
) {
    watch_node(client, &node, &TIMING, Labels::Given(labels), &tx, &cancel).await;
}

/// [`run`] at any pace: the pod watch and the labels side by side, until
/// `cancel`.
async fn watch_node(
    client: Client,
    node: &str,
    timing: &Timing,
    labels: Labels,
    tx: &watch::Sender<Arc<NodeMetadata>>,
    cancel: &CancellationToken,
) {
    let pods: Api<Pod> = Api::all(client.clone());
    let state = Mutex::new(State::default());
    match labels {
        Labels::Read => {
            let nodes: Api<Node> = Api::all(client);
            // Read once before the first list, so the first publish carries them.
            tokio::select! {
                () = refresh_labels(&nodes, node, &state, tx) => {}
                () = cancel.cancelled() => return,
            }
            tokio::join!(
                keep_labels(&nodes, node, timing, &state, tx, cancel),
                keep_pods(pods, node, timing, &state, tx, cancel),
            );
        }
        Labels::Given(labels) => {
            tokio::join!(
                follow_labels(labels, &state, tx, cancel),
                keep_pods(pods, node, timing, &state, tx, cancel),
            );
        }
    }
}

/// Takes the labels `labels` gives, as they change.
async fn follow_labels(
    mut labels: watch::Receiver<BTreeMap<String, String>>,
    state: &Mutex<State>,
    tx: &watch::Sender<Arc<NodeMetadata>>,
    cancel: &CancellationToken,
) {
    loop {
        {
            let mut state = lock(state);
            state.node_labels = labels.borrow_and_update().clone();
            state.publish(tx);
        }
        tokio::select! {
            changed = labels.changed() => if changed.is_err() {
                // The caller is gone: the last labels stand.
                return cancel.cancelled().await;
            },
            () = cancel.cancelled() => return,
        }
    }
}

/// Reads the Node's labels every `labels_every`, whatever the pod watch is
/// doing (a healthy watch lasts five minutes).
async fn keep_labels(
    nodes: &Api<Node>,
    node: &str,
    timing: &Timing,
    state: &Mutex<State>,
    tx: &watch::Sender<Arc<NodeMetadata>>,
    cancel: &CancellationToken,
) {
    let mut every = tokio::time::interval_at(
        tokio::time::Instant::now() + timing.labels_every,
        timing.labels_every,
    );
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = async {
                every.tick().await;
                refresh_labels(nodes, node, state, tx).await;
            } => {}
            () = cancel.cancelled() => return,
        }
    }
}

async fn refresh_labels(
    nodes: &Api<Node>,
    node: &str,
    state: &Mutex<State>,
    tx: &watch::Sender<Arc<NodeMetadata>>,
) {
    match nodes.get(node).await {
        Ok(node) => {
            let mut state = lock(state);
            state.node_labels = node.metadata.labels.unwrap_or_default();
            state.publish(tx);
        }
        Err(e) => warn!(error = %e, "reading the Node's labels (read again in a minute)"),
    }
}

/// Follows the watcher's events into `state`: a listing replaces the pods
/// once it is complete, so a relist never publishes a partial node.
async fn keep_pods(
    pods: Api<Pod>,
    node: &str,
    timing: &Timing,
    state: &Mutex<State>,
    tx: &watch::Sender<Arc<NodeMetadata>>,
    cancel: &CancellationToken,
) {
    // From kube-apiserver's watch cache (resourceVersion=0), as the kubelet
    // lists; unpaged, as kube-rs only sends version 0 without a limit (one
    // node's pods are a small list).
    let config = watcher::Config {
        page_size: None,
        ..watcher::Config::default()
    }
    .fields(&field_selector(node))
    .any_semantic();
    let mut events = pin!(changes(
        watcher::watcher(pods, config)
            .backoff(WatchBackoff::new(timing.backoff_base, timing.backoff_max)),
        "pods"
    ));
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            () = cancel.cancelled() => return,
        };
        let Some(event) = event else { return };
        match event {
            Ok(Change::Listed(pods)) => {
                let pods = pods.iter().map(to_wire).map(|w| (w.uid.clone(), w));
                let mut state = lock(state);
                state.pods = pods.collect();
                state.listed = true;
                state.publish(tx);
                info!(pods = state.pods.len(), "listed this node's pods");
            }
            Ok(Change::Applied(pod)) => {
                let wire = to_wire(&pod);
                let mut state = lock(state);
                state.pods.insert(wire.uid.clone(), wire);
                state.publish(tx);
            }
            Ok(Change::Deleted(pod)) => {
                let mut state = lock(state);
                state
                    .pods
                    .remove(pod.metadata.uid.as_deref().unwrap_or_default());
                state.publish(tx);
            }
            Err(e) => warn!(error = %e, "watching this node's pods (trying again after a pause)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http::{Request, Response, StatusCode};
    use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
    use kube::client::{Body, ClientBuilder};
    use support::kube::{Pacing, paced};
    use tokio::{sync::mpsc, time::Instant};

    use super::*;

    /// How the fake's pod watches end.
    #[derive(Clone, Copy, Debug)]
    enum WatchEnds {
        /// At once with an error (a 429; a 403 where RBAC allows only list).
        WithError,
        /// At once without one (a proxy cutting the stream).
        AtOnce,
        /// Not before the test ends.
        Never,
    }

    /// What the watcher asked the fake for.
    #[derive(Debug)]
    enum Call {
        /// The pods listed, with the request's query.
        List(String),
        Watch(Instant),
    }

    /// kube-apiserver, as far as the watcher can tell: one pod on the node,
    /// watches ending as told, labels as the test sets them.
    struct Fake {
        labels: Mutex<BTreeMap<String, String>>,
        watch: WatchEnds,
        calls: mpsc::UnboundedSender<Call>,
    }

    type FakeBody = BoxBody<Bytes, Infallible>;

    impl Fake {
        fn new(watch: WatchEnds) -> (Arc<Self>, mpsc::UnboundedReceiver<Call>) {
            let (calls, seen) = mpsc::unbounded_channel();
            let fake = Fake {
                labels: Mutex::new(BTreeMap::new()),
                watch,
                calls,
            };
            fake.set_zone("a");
            (Arc::new(fake), seen)
        }

        fn set_zone(&self, zone: &str) {
            *self.labels.lock().expect("labels") = BTreeMap::from([("zone".into(), zone.into())]);
        }

        fn answer(&self, request: &Request<Body>) -> Response<FakeBody> {
            let json = |status: StatusCode, body: String| {
                let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
                *response.status_mut() = status;
                response
            };
            let query = request.uri().query().unwrap_or_default().to_string();
            if request.uri().path().starts_with("/api/v1/nodes/") {
                let labels = serde_json::to_string(&*self.labels.lock().expect("labels"))
                    .expect("labels JSON");
                return json(
                    StatusCode::OK,
                    format!(
                        r#"{{"apiVersion": "v1", "kind": "Node", "metadata": {{"name": "node-1", "labels": {labels}}}}}"#
                    ),
                );
            }
            if !query.contains("watch=true") {
                let _ = self.calls.send(Call::List(query));
                return json(
                    StatusCode::OK,
                    r#"{"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "5"}, "items": [
                         {"metadata": {"uid": "u-1", "name": "web", "namespace": "shop", "resourceVersion": "5"},
                          "status": {"phase": "Running"}}]}"#
                        .into(),
                );
            }
            let _ = self.calls.send(Call::Watch(Instant::now()));
            match self.watch {
                WatchEnds::WithError => json(
                    StatusCode::TOO_MANY_REQUESTS,
                    r#"{"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 429,
                        "reason": "TooManyRequests", "message": "too many requests, please try again later"}"#
                        .into(),
                ),
                WatchEnds::AtOnce => json(StatusCode::OK, String::new()),
                WatchEnds::Never => Response::new(BodyExt::boxed(StreamBody::new(
                    futures::stream::pending::<Result<http_body::Frame<Bytes>, Infallible>>(),
                ))),
            }
        }
    }

    fn timing(labels_every: Duration) -> Timing {
        Timing {
            labels_every,
            backoff_base: Duration::from_millis(40),
            backoff_max: Duration::from_millis(160),
        }
    }

    /// A client whose kube-apiserver is `fake`, paced as the tests' timing.
    fn client(fake: &Arc<Fake>) -> Client {
        let fake = Arc::clone(fake);
        client_answered_by(move |request| fake.answer(request))
    }

    /// A client whose every request `answer` answers.
    fn client_answered_by(
        answer: impl Fn(&Request<Body>) -> Response<FakeBody> + Send + Sync + 'static,
    ) -> Client {
        let service = tower::service_fn(move |request: Request<Body>| {
            std::future::ready(Ok::<_, Infallible>(answer(&request)))
        });
        let pacing = Pacing {
            healthy: Duration::from_secs(3600),
            base: Duration::from_millis(40),
            max: Duration::from_millis(160),
        };
        paced(ClientBuilder::new(service, "default"), pacing, None)
    }

    /// Guards a test against hanging: what it waits for did not happen.
    const PATIENCE: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_watch_that_fails_or_ends_at_once_is_not_retried_in_a_tight_loop() {
        for ends in [WatchEnds::WithError, WatchEnds::AtOnce] {
            let (fake, mut calls) = Fake::new(ends);
            let (tx, _rx) = watch::channel(Arc::<NodeMetadata>::default());
            let cancel = CancellationToken::new();
            let watches = async {
                let (mut lists, mut watches) = (0, Vec::new());
                while watches.len() < 4 {
                    match calls.recv().await {
                        Some(Call::List(_)) => lists += 1,
                        Some(Call::Watch(at)) => watches.push(at),
                        None => break,
                    }
                }
                cancel.cancel();
                (lists, watches)
            };
            let timing = timing(Duration::from_secs(3600));
            let watcher = watch_node(client(&fake), "node-1", &timing, Labels::Read, &tx, &cancel);
            let ((), (lists, watches)) =
                tokio::time::timeout(PATIENCE, async { tokio::join!(watcher, watches) })
                    .await
                    .expect("four watches");
            assert_eq!(lists, 1, "{ends:?}: the watch is retried, not the list");
            let pauses: Vec<Duration> = watches.windows(2).map(|w| w[1] - w[0]).collect();
            // Each pause is within [ceiling/2, ceiling] of a ceiling that
            // doubles: 40, 80, 160 ms.
            for (pause, floor) in pauses.iter().zip([20, 40, 80]) {
                assert!(
                    *pause >= Duration::from_millis(floor),
                    "{ends:?}: pauses {pauses:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn node_labels_are_read_again_while_a_watch_lives() {
        let (fake, mut calls) = Fake::new(WatchEnds::Never);
        let (tx, mut rx) = watch::channel(Arc::<NodeMetadata>::default());
        let cancel = CancellationToken::new();
        let zone = |m: &NodeMetadata| m.labels.get("zone").cloned();
        let test = async {
            rx.wait_for(|m| zone(m).as_deref() == Some("a") && m.pods.len() == 1)
                .await
                .expect("the first list published, with the labels");
            assert!(matches!(calls.recv().await, Some(Call::List(_))));
            assert!(matches!(calls.recv().await, Some(Call::Watch(_))));
            fake.set_zone("b");
            rx.wait_for(|m| zone(m).as_deref() == Some("b"))
                .await
                .expect("the new labels published");
            cancel.cancel();
            assert!(
                calls.try_recv().is_err(),
                "no other list or watch: the new labels came while the watch lived"
            );
        };
        let timing = timing(Duration::from_millis(20));
        let watcher = watch_node(client(&fake), "node-1", &timing, Labels::Read, &tx, &cancel);
        tokio::time::timeout(PATIENCE, async { tokio::join!(watcher, test) })
            .await
            .expect("the new labels while the watch lives");
    }

    #[tokio::test]
    async fn given_labels_are_published_as_they_change() {
        let (fake, _calls) = Fake::new(WatchEnds::Never);
        let (tx, mut rx) = watch::channel(Arc::<NodeMetadata>::default());
        let (labels, given) = watch::channel(BTreeMap::from([("zone".to_owned(), "g".to_owned())]));
        let cancel = CancellationToken::new();
        let zone = |m: &NodeMetadata| m.labels.get("zone").cloned();
        let test = async {
            rx.wait_for(|m| zone(m).as_deref() == Some("g") && m.pods.len() == 1)
                .await
                .expect("the first list published, with the given labels");
            labels.send_replace(BTreeMap::from([("zone".to_owned(), "h".to_owned())]));
            rx.wait_for(|m| zone(m).as_deref() == Some("h"))
                .await
                .expect("the new labels published");
            cancel.cancel();
        };
        let timing = timing(Duration::from_millis(20));
        let watcher = watch_node(
            client(&fake),
            "node-1",
            &timing,
            Labels::Given(given),
            &tx,
            &cancel,
        );
        tokio::time::timeout(PATIENCE, async { tokio::join!(watcher, test) })
            .await
            .expect("the given labels");
    }

    /// What the scripted kube-apiserver answers next, per kind of request.
    enum Reply {
        Json(StatusCode, &'static str),
        /// A watch stream that sends these events, then ends.
        Events(&'static [&'static str]),
        /// A watch stream that never ends.
        Hang,
    }

    fn reply(reply: Reply) -> Response<FakeBody> {
        let full = |status: StatusCode, body: String| {
            let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
            *response.status_mut() = status;
            response
        };
        match reply {
            Reply::Json(status, body) => full(status, body.into()),
            Reply::Events(events) => full(StatusCode::OK, events.concat()),
            Reply::Hang => {
                Response::new(BodyExt::boxed(StreamBody::new(futures::stream::pending::<
                    Result<http_body::Frame<Bytes>, Infallible>,
                >())))
            }
        }
    }

    const TOO_MANY: Reply = Reply::Json(
        StatusCode::TOO_MANY_REQUESTS,
        r#"{"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 429, "reason": "TooManyRequests", "message": "too many requests, please try again later"}"#,
    );

    #[tokio::test]
    async fn a_closed_watch_then_410_then_429s_keep_the_metadata_with_bounded_backoff() {
        use std::collections::VecDeque;
        // kube-apiserver's answers, in order: the watch sends a pod and is
        // closed; the next watch gets 410 Gone; the lists that follow are
        // refused (429) three times before one succeeds.
        let lists = Mutex::new(VecDeque::from([
            Reply::Json(
                StatusCode::OK,
                r#"{"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "5"}, "items": [
                     {"metadata": {"uid": "u-1", "name": "web", "namespace": "shop", "resourceVersion": "5"},
                      "status": {"phase": "Running"}}]}"#,
            ),
            TOO_MANY,
            TOO_MANY,
            TOO_MANY,
            Reply::Json(
                StatusCode::OK,
                r#"{"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "20"}, "items": [
                     {"metadata": {"uid": "u-2", "name": "db", "namespace": "shop", "resourceVersion": "6"},
                      "status": {"phase": "Running"}},
                     {"metadata": {"uid": "u-3", "name": "cache", "namespace": "shop", "resourceVersion": "19"},
                      "status": {"phase": "Running"}}]}"#,
            ),
        ]));
        let watches = Mutex::new(VecDeque::from([
            Reply::Events(&[
                r#"{"type": "ADDED", "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"uid": "u-2", "name": "db", "namespace": "shop", "resourceVersion": "6"}, "status": {"phase": "Running"}}}"#,
                "\n",
            ]),
            Reply::Events(&[
                r#"{"type": "ERROR", "object": {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 410, "reason": "Expired", "message": "too old resource version: 6 (15)"}}"#,
                "\n",
            ]),
        ]));
        let (calls, mut seen) = mpsc::unbounded_channel::<(&str, Instant)>();
        let client = client_answered_by(move |request| {
            let query = request.uri().query().unwrap_or_default();
            if request.uri().path().starts_with("/api/v1/nodes/") {
                return reply(Reply::Json(
                    StatusCode::OK,
                    r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}"#,
                ));
            }
            if query.contains("watch=true") {
                let _ = calls.send(("watch", Instant::now()));
                let next = watches.lock().expect("watches").pop_front();
                reply(next.unwrap_or(Reply::Hang))
            } else {
                let _ = calls.send(("list", Instant::now()));
                let next = lists.lock().expect("lists").pop_front();
                reply(next.unwrap_or(TOO_MANY))
            }
        });
        let (tx, mut rx) = watch::channel(Arc::<NodeMetadata>::default());
        let cancel = CancellationToken::new();
        let uids = |m: &NodeMetadata| m.pods.iter().map(|p| p.uid.clone()).collect::<Vec<_>>();
        let test = async {
            let mut published = Vec::new();
            while uids(&rx.borrow_and_update()) != ["u-2", "u-3"] {
                published.push(uids(&rx.borrow()));
                rx.changed().await.expect("published");
            }
            cancel.cancel();
            published
        };
        let timing = timing(Duration::from_secs(3600));
        let watcher = watch_node(client, "node-1", &timing, Labels::Read, &tx, &cancel);
        let ((), published) = tokio::time::timeout(PATIENCE, async { tokio::join!(watcher, test) })
            .await
            .expect("the metadata after the last list");
        // Between the first list and the last, nothing but what was known:
        // the 410 and the 429s never emptied or shrank the node's pods.
        let published: Vec<_> = published.into_iter().filter(|u| !u.is_empty()).collect();
        assert!(
            published
                .iter()
                .all(|u| u == &["u-1"] || u == &["u-1", "u-2"]),
            "{published:?}"
        );
        assert_eq!(
            published.last().map(Vec::as_slice),
            Some(&["u-1".to_string(), "u-2".to_string()][..])
        );
        let mut requests = Vec::new();
        while let Ok(call) = seen.try_recv() {
            requests.push(call);
        }
        let kinds: Vec<&str> = requests.iter().map(|(kind, _)| *kind).collect();
        assert_eq!(
            kinds.get(..7),
            Some(&["list", "watch", "watch", "list", "list", "list", "list"][..]),
            "one list; the closed watch resumed, not relisted; a list after the 410, \
             three refused, one more: {kinds:?}"
        );
        assert!(kinds.len() <= 8, "then at most the new watch: {kinds:?}");
        // The lists after the 410 wait longer and longer: each pause within
        // [ceiling/2, ceiling] of a ceiling that doubles to 160 ms.
        let lists: Vec<Instant> = requests
            .iter()
            .filter(|(kind, _)| *kind == "list")
            .map(|(_, at)| *at)
            .collect();
        let pauses: Vec<Duration> = lists[1..].windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(pauses.len(), 3);
        for (pause, floor) in pauses.iter().zip([40, 80, 80]) {
            assert!(*pause >= Duration::from_millis(floor), "pauses {pauses:?}");
        }
    }

    #[test]
    fn pods_become_wire_metadata() {
        let pod: Pod = serde_json::from_str(
            r#"{"metadata":{"uid":"u-1","name":"web","namespace":"shop","labels":{"app":"web"},"resourceVersion":"7"},
                "status":{"phase":"Running","containerStatuses":[
                  {"name":"app","containerID":"containerd://abc123"},
                  {"name":"sidecar","containerID":"cri-o://def456"},
                  {"name":"waiting"}]}}"#,
        )
        .expect("pod JSON");
        let wire = to_wire(&pod);
        assert_eq!(wire.uid, "u-1");
        assert!(wire.running);
        assert_eq!(wire.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(
            wire.containers
                .iter()
                .map(|c| (c.id.as_str(), c.name.as_str()))
                .collect::<Vec<_>>(),
            [("abc123", "app"), ("def456", "sidecar")]
        );
        let pending: Pod =
            serde_json::from_str(r#"{"metadata":{"uid":"u-2"},"status":{"phase":"Pending"}}"#)
                .expect("pod JSON");
        assert!(!to_wire(&pending).running);
    }

    #[test]
    fn native_sidecars_and_init_containers_with_an_id_are_listed() {
        // An Istio-injected pod as kube-apiserver serves it (trimmed): the
        // init container has finished, the native sidecar runs beside the app.
        let pod: Pod = serde_json::from_str(
            r#"{
              "metadata": {"uid": "7f9c-u", "name": "reviews-v1-5d8f", "namespace": "bookinfo",
                           "labels": {"app": "reviews"}, "resourceVersion": "81234"},
              "spec": {
                "initContainers": [
                  {"name": "istio-init", "image": "istio/proxyv2:1.24.0"},
                  {"name": "istio-proxy", "image": "istio/proxyv2:1.24.0", "restartPolicy": "Always"}],
                "containers": [{"name": "reviews", "image": "istio/examples-bookinfo-reviews-v1:1.20.2"}]},
              "status": {
                "phase": "Running",
                "initContainerStatuses": [
                  {"name": "istio-init", "ready": true, "restartCount": 0,
                   "containerID": "containerd://1111aaaa",
                   "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                  {"name": "istio-proxy", "ready": true, "restartCount": 0, "started": true,
                   "containerID": "containerd://2222bbbb",
                   "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}}}],
                "containerStatuses": [
                  {"name": "reviews", "ready": true, "restartCount": 0, "started": true,
                   "containerID": "containerd://3333cccc",
                   "state": {"running": {"startedAt": "2025-01-01T00:00:02Z"}}}]}
            }"#,
        )
        .expect("pod JSON");
        let names = |pod: &Pod| {
            to_wire(pod)
                .containers
                .into_iter()
                .map(|c| (c.id, c.name))
                .collect::<Vec<_>>()
        };
        let pair = |id: &str, name: &str| (id.to_string(), name.to_string());
        assert_eq!(
            names(&pod),
            [
                pair("3333cccc", "reviews"),
                pair("1111aaaa", "istio-init"),
                pair("2222bbbb", "istio-proxy"),
            ]
        );
        // Still initialising: the init container runs, nothing else has an id.
        let starting: Pod = serde_json::from_str(
            r#"{"metadata": {"uid": "u-3"}, "status": {"phase": "Pending",
                "initContainerStatuses": [
                  {"name": "migrate", "containerID": "cri-o://4444dddd",
                   "state": {"running": {}}}],
                "containerStatuses": [
                  {"name": "app", "state": {"waiting": {"reason": "PodInitializing"}}}]}}"#,
        )
        .expect("pod JSON");
        assert_eq!(names(&starting), [pair("4444dddd", "migrate")]);
    }

    #[tokio::test]
    async fn pods_are_selected_by_node_and_phase_from_the_watch_cache() {
        let (fake, mut calls) = Fake::new(WatchEnds::Never);
        let (tx, _rx) = watch::channel(Arc::<NodeMetadata>::default());
        let cancel = CancellationToken::new();
        let listed = async {
            let query = loop {
                if let Some(Call::List(query)) = calls.recv().await {
                    break query;
                }
            };
            cancel.cancel();
            query
        };
        let timing = timing(Duration::from_secs(60));
        let watcher = watch_node(client(&fake), "node-1", &timing, Labels::Read, &tx, &cancel);
        let ((), query) = tokio::time::timeout(PATIENCE, async { tokio::join!(watcher, listed) })
            .await
            .expect("a list");
        let pairs: Vec<&str> = query.split('&').collect();
        assert!(
            pairs.contains(
                &"fieldSelector=spec.nodeName%3Dnode-1%2Cstatus.phase%21%3DSucceeded%2Cstatus.phase%21%3DFailed"
            ),
            "{query}"
        );
        assert!(pairs.contains(&"resourceVersion=0"), "{query}");
    }
}
