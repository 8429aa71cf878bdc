//! The node's own pods, as kube-apiserver knows them: names, namespaces,
//! labels, phase, and which container id is which container. The agent joins
//! these to the cgroups it measures and sends them to the aggregators, so the
//! aggregators need no pod informer of their own.
//!
//! List, then watch from the list's resourceVersion, selecting the node's
//! pods by `spec.nodeName` as the kubelet does (kube-apiserver's watch cache
//! indexes that field) and leaving out pods that have terminated (Succeeded,
//! Failed): they are never served, and on a node that runs many Jobs with no
//! TTL they pile up past what an aggregator takes in one report; list again when the watch ends: at once after a watch that lived
//! (they end every five minutes), after a growing, jittered pause after one
//! that failed or ended at once. The Node's labels are re-read every minute,
//! beside the watch.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use kube_lite::{KubeClient, WatchEvent};
use proto::v1::{ContainerName, NodeMetadata, PodMetadata};
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::export::backoff::Backoff;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectMeta {
    #[serde(default)]
    uid: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    resource_version: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerStatus {
    name: String,
    #[serde(rename = "containerID", default)]
    container_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodStatus {
    #[serde(default)]
    phase: String,
    #[serde(default)]
    container_statuses: Vec<ContainerStatus>,
    /// Init containers: native sidecars (`restartPolicy: Always`, e.g.
    /// istio-proxy) run beside the others for the pod's life, with cgroups
    /// of their own, and the kubelet's `/metrics/resource` (so
    /// metrics-server) reports them.
    #[serde(default)]
    init_container_statuses: Vec<ContainerStatus>,
}

#[derive(Debug, Deserialize)]
struct Pod {
    metadata: ObjectMeta,
    #[serde(default)]
    status: PodStatus,
}

#[derive(Debug, Deserialize)]
struct PodList {
    metadata: ObjectMeta,
    items: Vec<Pod>,
}

#[derive(Debug, Deserialize)]
struct Node {
    metadata: ObjectMeta,
}

/// A pod as the wire carries it. Container ids lose their runtime scheme
/// (`containerd://…`): cgroups name containers by the bare id.
///
/// Init containers are listed too, with any id they have: a native sidecar
/// or a running init container has a cgroup to measure. One that has
/// finished has no cgroup left, so no samples, and is not reported.
fn to_wire(pod: &Pod) -> PodMetadata {
    PodMetadata {
        uid: pod.metadata.uid.clone(),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        labels: pod.metadata.labels.clone().into_iter().collect(),
        running: pod.status.phase == "Running",
        containers: pod
            .status
            .container_statuses
            .iter()
            .chain(&pod.status.init_container_statuses)
            .filter_map(|c| {
                let id = c
                    .container_id
                    .rsplit_once("://")
                    .map_or(c.container_id.as_str(), |(_, id)| id);
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

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The calls the watcher makes: kube-apiserver's in production, a fake's in
/// tests.
trait Api {
    /// The Node's labels.
    fn node_labels(
        &self,
    ) -> impl Future<Output = kube_lite::Result<BTreeMap<String, String>>> + Send;
    /// This node's pods, and the version to watch from.
    fn list_pods(&self) -> impl Future<Output = kube_lite::Result<PodList>> + Send;
    /// Watches this node's pods from `version` until the watch ends, nothing
    /// arrives for `idle`, or `on_event` returns false.
    fn watch_pods(
        &self,
        version: &str,
        idle: Duration,
        on_event: impl FnMut(WatchEvent<Pod>) -> bool + Send,
    ) -> impl Future<Output = kube_lite::Result<()>> + Send;
}

struct Kube {
    client: KubeClient,
    node: String,
    /// [`field_selector`], escaped for a query.
    selector: String,
}

impl Api for Kube {
    async fn node_labels(&self) -> kube_lite::Result<BTreeMap<String, String>> {
        let path = format!("/api/v1/nodes/{}", percent_encode(&self.node));
        Ok(self.client.get_json::<Node>(&path).await?.metadata.labels)
    }

    async fn list_pods(&self) -> kube_lite::Result<PodList> {
        self.client
            .get_json(&format!(
                "/api/v1/pods?fieldSelector={}&resourceVersion=0",
                self.selector
            ))
            .await
    }

    async fn watch_pods(
        &self,
        version: &str,
        idle: Duration,
        on_event: impl FnMut(WatchEvent<Pod>) -> bool + Send,
    ) -> kube_lite::Result<()> {
        let path = format!(
            "/api/v1/pods?fieldSelector={}&watch=1&allowWatchBookmarks=true&timeoutSeconds=300&resourceVersion={}",
            self.selector,
            percent_encode(version)
        );
        self.client.watch(&path, idle, on_event).await
    }
}

/// How the watcher paces itself (tests shorten it).
#[derive(Clone, Copy, Debug)]
struct Timing {
    /// How often the Node's labels are read again.
    labels_every: Duration,
    /// A watch that lived this long was healthy: the next list is at once,
    /// and the backoff starts over. kube-apiserver ends a healthy watch
    /// after `timeoutSeconds` (300), or once the resource version it
    /// started from is compacted away (410), minutes later.
    healthy_watch: Duration,
    /// Pauses before listing again after a failed list, or a watch that
    /// failed or ended before `healthy_watch`.
    backoff_base: Duration,
    backoff_max: Duration,
    /// A watch silent for this long is dead (bookmarks keep a live one talking).
    idle: Duration,
}

const TIMING: Timing = Timing {
    labels_every: Duration::from_secs(60),
    healthy_watch: Duration::from_secs(30),
    backoff_base: Duration::from_millis(500),
    backoff_max: Duration::from_secs(30),
    idle: Duration::from_secs(90),
};

/// Keeps `tx` holding this node's metadata until `cancel`.
pub async fn run(
    client: KubeClient,
    node: String,
    tx: watch::Sender<Arc<NodeMetadata>>,
    cancel: CancellationToken,
) {
    let selector = percent_encode(&field_selector(&node));
    let api = Kube {
        client,
        node,
        selector,
    };
    watch_node(&api, &TIMING, &tx, &cancel).await;
}

/// [`run`] over any [`Api`], at any pace: the pod watch and the label
/// refresh side by side, until `cancel`.
async fn watch_node(
    api: &impl Api,
    timing: &Timing,
    tx: &watch::Sender<Arc<NodeMetadata>>,
    cancel: &CancellationToken,
) {
    let state = Mutex::new(State::default());
    // Read once before the first list, so the first publish carries them.
    tokio::select! {
        () = refresh_labels(api, &state, tx) => {}
        () = cancel.cancelled() => return,
    }
    tokio::join!(
        keep_labels(api, timing, &state, tx, cancel),
        keep_pods(api, timing, &state, tx, cancel),
    );
}

/// Reads the Node's labels every `labels_every`, whatever the pod watch is
/// doing (a healthy watch lasts five minutes).
async fn keep_labels(
    api: &impl Api,
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
                refresh_labels(api, state, tx).await;
            } => {}
            () = cancel.cancelled() => return,
        }
    }
}

async fn refresh_labels(
    api: &impl Api,
    state: &Mutex<State>,
    tx: &watch::Sender<Arc<NodeMetadata>>,
) {
    match api.node_labels().await {
        Ok(labels) => {
            let mut state = lock(state);
            state.node_labels = labels;
            state.publish(tx);
        }
        Err(e) => warn!(error = %e, "reading the Node's labels (read again in a minute)"),
    }
}

/// Lists the pods, then watches from the list's version; lists again when
/// the watch ends.
async fn keep_pods(
    api: &impl Api,
    timing: &Timing,
    state: &Mutex<State>,
    tx: &watch::Sender<Arc<NodeMetadata>>,
    cancel: &CancellationToken,
) {
    let mut backoff = Backoff::new(timing.backoff_base, timing.backoff_max);
    loop {
        let list = tokio::select! {
            list = api.list_pods() => list,
            () = cancel.cancelled() => return,
        };
        let version = match list {
            Ok(list) => {
                let mut state = lock(state);
                state.pods = list
                    .items
                    .iter()
                    .map(|p| (p.metadata.uid.clone(), to_wire(p)))
                    .collect();
                state.listed = true;
                state.publish(tx);
                info!(pods = state.pods.len(), "listed this node's pods");
                list.metadata.resource_version
            }
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in = ?delay, "listing this node's pods");
                if !pause(delay, cancel).await {
                    return;
                }
                continue;
            }
        };
        let started = tokio::time::Instant::now();
        let watched = api.watch_pods(&version, timing.idle, |event| {
            let mut state = lock(state);
            match event {
                WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                    state.pods.insert(p.metadata.uid.clone(), to_wire(&p));
                }
                WatchEvent::Deleted(p) => {
                    state.pods.remove(&p.metadata.uid);
                }
                WatchEvent::Bookmark(_) => return !cancel.is_cancelled(),
            }
            state.publish(tx);
            !cancel.is_cancelled()
        });
        let result = tokio::select! {
            result = watched => result,
            () = cancel.cancelled() => return,
        };
        let lived = started.elapsed();
        let delay = relist_delay(lived, timing.healthy_watch, &mut backoff);
        match result {
            Ok(()) if delay.is_zero() => debug!(?lived, "pod watch ended; listing again"),
            Ok(()) => warn!(
                ?lived,
                retry_in = ?delay,
                "pod watch ended at once; listing again after a pause"
            ),
            Err(e) => warn!(
                error = %e,
                ?lived,
                retry_in = ?delay,
                "pod watch ended; listing again"
            ),
        }
        if !pause(delay, cancel).await {
            return;
        }
    }
}

/// The pause before listing again after a watch that lasted `lived`: none
/// after a healthy one (which also starts the backoff over), growing ones
/// after watches that fail or end at once (a 429, RBAC that allows list but
/// not watch, a proxy that cuts streams), so that the agent does not relist,
/// and load kube-apiserver, in a tight loop.
fn relist_delay(lived: Duration, healthy: Duration, backoff: &mut Backoff) -> Duration {
    if lived >= healthy {
        backoff.reset();
        Duration::ZERO
    } else {
        backoff.next_delay()
    }
}

/// Waits `delay`; false when cancelled first.
async fn pause(delay: Duration, cancel: &CancellationToken) -> bool {
    if delay.is_zero() {
        return !cancel.is_cancelled();
    }
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = cancel.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
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
        List(Instant),
        Watch,
    }

    /// kube-apiserver, as far as the watcher can tell: one pod on the node,
    /// watches ending as told, labels as the test sets them.
    struct Fake {
        labels: Mutex<BTreeMap<String, String>>,
        watch: WatchEnds,
        calls: mpsc::Sender<Call>,
    }

    impl Fake {
        fn new(watch: WatchEnds) -> (Self, mpsc::Receiver<Call>) {
            let (calls, seen) = mpsc::channel(64);
            let fake = Fake {
                labels: Mutex::new(BTreeMap::new()),
                watch,
                calls,
            };
            fake.set_zone("a");
            (fake, seen)
        }

        fn set_zone(&self, zone: &str) {
            *self.labels.lock().expect("labels") = BTreeMap::from([("zone".into(), zone.into())]);
        }
    }

    impl Api for Fake {
        async fn node_labels(&self) -> kube_lite::Result<BTreeMap<String, String>> {
            Ok(self.labels.lock().expect("labels").clone())
        }

        async fn list_pods(&self) -> kube_lite::Result<PodList> {
            let _ = self.calls.send(Call::List(Instant::now())).await;
            Ok(serde_json::from_str(
                r#"{"metadata": {"resourceVersion": "5"}, "items": [
                     {"metadata": {"uid": "u-1", "name": "web", "namespace": "shop"},
                      "status": {"phase": "Running"}}]}"#,
            )
            .expect("list JSON"))
        }

        async fn watch_pods(
            &self,
            _version: &str,
            _idle: Duration,
            _on_event: impl FnMut(WatchEvent<Pod>) -> bool + Send,
        ) -> kube_lite::Result<()> {
            let _ = self.calls.send(Call::Watch).await;
            match self.watch {
                WatchEnds::WithError => Err(kube_lite::Error::Status {
                    method: http::Method::GET,
                    path: "/api/v1/pods?watch=1".into(),
                    code: http::StatusCode::TOO_MANY_REQUESTS,
                    message: "too many requests, please try again later".into(),
                }),
                WatchEnds::AtOnce => Ok(()),
                WatchEnds::Never => std::future::pending().await,
            }
        }
    }

    fn timing(labels_every: Duration) -> Timing {
        Timing {
            labels_every,
            healthy_watch: Duration::from_secs(3600),
            backoff_base: Duration::from_millis(40),
            backoff_max: Duration::from_millis(160),
            idle: Duration::from_secs(90),
        }
    }

    /// Guards a test against hanging: what it waits for did not happen.
    const PATIENCE: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_watch_that_fails_or_ends_at_once_is_not_relisted_in_a_tight_loop() {
        for ends in [WatchEnds::WithError, WatchEnds::AtOnce] {
            let (fake, mut calls) = Fake::new(ends);
            let (tx, _rx) = watch::channel(Arc::<NodeMetadata>::default());
            let cancel = CancellationToken::new();
            let lists = async {
                let mut lists = Vec::new();
                while lists.len() < 4 {
                    match calls.recv().await {
                        Some(Call::List(at)) => lists.push(at),
                        Some(Call::Watch) => {}
                        None => break,
                    }
                }
                cancel.cancel();
                lists
            };
            let timing = timing(Duration::from_secs(3600));
            let watcher = watch_node(&fake, &timing, &tx, &cancel);
            let ((), lists) =
                tokio::time::timeout(PATIENCE, async { tokio::join!(watcher, lists) })
                    .await
                    .expect("four lists");
            let pauses: Vec<Duration> = lists.windows(2).map(|w| w[1] - w[0]).collect();
            // Each pause is within [ceiling/2, ceiling] of a ceiling that
            // doubles: 40, 80, 160 ms. A list that succeeds does not start
            // the backoff over; only a watch that lived would.
            for (pause, floor) in pauses.iter().zip([20, 40, 80]) {
                assert!(
                    *pause >= Duration::from_millis(floor),
                    "{ends:?}: pauses {pauses:?}"
                );
            }
        }
    }

    #[test]
    fn only_a_watch_that_lived_starts_the_backoff_over() {
        let healthy = Duration::from_secs(30);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let quick = Duration::from_millis(5);
        let first = relist_delay(quick, healthy, &mut backoff);
        assert!(first >= Duration::from_millis(50), "{first:?}");
        relist_delay(quick, healthy, &mut backoff);
        let third = relist_delay(quick, healthy, &mut backoff);
        assert!(third >= Duration::from_millis(200), "grows: {third:?}");
        assert_eq!(
            relist_delay(Duration::from_secs(300), healthy, &mut backoff),
            Duration::ZERO,
            "a watch that ran its course: list again at once"
        );
        let after = relist_delay(quick, healthy, &mut backoff);
        assert!(
            after <= Duration::from_millis(100),
            "started over: {after:?}"
        );
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
            assert!(matches!(calls.recv().await, Some(Call::Watch)));
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
        let watcher = watch_node(&fake, &timing, &tx, &cancel);
        tokio::time::timeout(PATIENCE, async { tokio::join!(watcher, test) })
            .await
            .expect("the new labels while the watch lives");
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

    #[test]
    fn selectors_are_escaped() {
        assert_eq!(
            percent_encode(&field_selector("node-1")),
            "spec.nodeName%3Dnode-1%2Cstatus.phase%21%3DSucceeded%2Cstatus.phase%21%3DFailed"
        );
    }
}
