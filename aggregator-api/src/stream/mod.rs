//! The consumer watch stream (`nodepulse.v1.Metrics/Watch`): a snapshot of
//! everything matching the request, then what changed.
//!
//! Each watcher recomputes its view when the store changes, at most once per
//! [`MIN_INTERVAL`], and sends only the nodes and pods whose sample is newer
//! than what it sent before. Its outbound buffer holds one event: while a slow
//! consumer reads, store changes coalesce (the store's change signal keeps
//! only the latest), so it skips to the latest state and never grows memory.
use std::{
    collections::HashMap,
    pin::Pin,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures::Stream;
use proto::v1::{
    ContainerMetrics, NodeMetrics, PodMetrics, Rates, WatchEvent, WatchRequest,
    metrics_server::{Metrics, MetricsServer},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    api::{NodeUsage, PodUsage, selector::LabelSelector, view::MetricsView},
    auth::review::{
        AccessReviewer, ResourceAttributes, SubjectAccessReviewSpec, TokenReviewer, TokenVerdict,
    },
    store::Store,
};

/// Fastest a watcher recomputes and sends.
pub const MIN_INTERVAL: Duration = Duration::from_millis(500);

/// Longest label selector a watcher may send (kube-apiserver's own requests
/// are bounded by its URL limits; a selector of thousands of values is a
/// mistake or an attack).
pub const MAX_SELECTOR_BYTES: usize = 16 << 10;

/// Largest `WatchRequest` decoded at all: the selector and a few names.
pub const MAX_REQUEST_BYTES: usize = 64 << 10;

/// Who may watch: the caller's bearer token is reviewed (TokenReview) and
/// the user must be allowed to `watch` `metrics.k8s.io` pods and/or nodes
/// (SubjectAccessReview), in the namespace asked for — the same permission the
/// metrics.k8s.io API would ask for.
pub struct WatchAuth {
    pub tokens: Arc<dyn TokenReviewer>,
    pub access: Arc<dyn AccessReviewer>,
}

impl WatchAuth {
    async fn check(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        scope: &Scope,
    ) -> Result<(), Status> {
        let token = crate::ingest::auth::bearer_token(metadata)?;
        let user = match self.tokens.review(token).await {
            Ok(TokenVerdict::Authenticated(user)) => user,
            Ok(TokenVerdict::Rejected(why)) => {
                return Err(Status::unauthenticated(format!("token rejected: {why}")));
            }
            Err(e) => {
                return Err(Status::unavailable(format!(
                    "cannot review the token now: {e}"
                )));
            }
        };
        let resources = [
            ("nodes", scope.nodes, String::new()),
            (
                "pods",
                scope.pods,
                scope.namespace.clone().unwrap_or_default(),
            ),
        ];
        for (resource, wanted, namespace) in resources {
            if !wanted {
                continue;
            }
            let spec = SubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: namespace.clone(),
                    verb: "watch".into(),
                    group: crate::api::GROUP.into(),
                    version: "v1".into(),
                    resource: resource.into(),
                    ..ResourceAttributes::default()
                }),
                user: user.name.clone(),
                groups: user.groups.clone(),
                extra: user.extra.clone(),
                uid: user.uid.clone(),
                ..SubjectAccessReviewSpec::default()
            };
            let verdict = self
                .access
                .review(&spec)
                .await
                .map_err(|e| Status::unavailable(format!("cannot review access now: {e}")))?;
            if !verdict.allowed {
                let scope = if namespace.is_empty() {
                    "at the cluster scope".to_string()
                } else {
                    format!("in the namespace {namespace:?}")
                };
                return Err(Status::permission_denied(format!(
                    "User {:?} cannot watch resource {resource:?} in API group \"metrics.k8s.io\" {scope}",
                    user.name
                )));
            }
        }
        Ok(())
    }
}

/// The `nodepulse.v1.Metrics` service.
pub struct WatchService {
    store: Arc<Store>,
    auth: Option<WatchAuth>,
    shutdown: CancellationToken,
}

impl WatchService {
    /// `auth: None` serves anyone (development only, with `--ingest-auth=none`).
    pub fn new(store: Arc<Store>, auth: Option<WatchAuth>, shutdown: CancellationToken) -> Self {
        Self {
            store,
            auth,
            shutdown,
        }
    }

    pub fn into_server(self) -> MetricsServer<Self> {
        MetricsServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES)
    }
}

fn nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn node_wire(n: &NodeUsage) -> NodeMetrics {
    NodeMetrics {
        name: n.name.to_string(),
        timestamp_unix_nanos: nanos(n.timestamp),
        window_nanos: i64::try_from(n.window.as_nanos()).unwrap_or(i64::MAX),
        usage: Some(Rates {
            cpu_nanocores: n.cpu_nanocores,
            memory_working_set_bytes: n.memory_bytes,
            swap_bytes: n.swap_bytes,
        }),
    }
}

fn pod_wire(node: &str, p: &PodUsage) -> PodMetrics {
    PodMetrics {
        namespace: p.namespace.to_string(),
        name: p.name.to_string(),
        node: node.to_string(),
        timestamp_unix_nanos: nanos(p.timestamp),
        window_nanos: i64::try_from(p.window.as_nanos()).unwrap_or(i64::MAX),
        containers: p
            .containers
            .iter()
            .map(|c| ContainerMetrics {
                name: c.name.to_string(),
                usage: Some(Rates {
                    cpu_nanocores: c.cpu_nanocores,
                    memory_working_set_bytes: c.memory_bytes,
                    swap_bytes: c.swap_bytes,
                }),
            })
            .collect(),
    }
}

/// What one watcher asked to see, as far as authorization goes: cheap to
/// read, so it is all that is read before the caller is authenticated.
struct Scope {
    node: Option<String>,
    namespace: Option<String>,
    nodes: bool,
    pods: bool,
}

impl Scope {
    fn new(req: &WatchRequest) -> Self {
        let neither = !req.nodes && !req.pods;
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Self {
            node: some(&req.node),
            namespace: some(&req.namespace),
            nodes: req.nodes || neither,
            pods: req.pods || neither,
        }
    }
}

/// What one watcher asked for, its selector parsed (after authentication).
struct Filter {
    scope: Scope,
    labels: LabelSelector,
}

impl Filter {
    fn new(scope: Scope, selector: &str) -> Result<Self, Status> {
        if selector.len() > MAX_SELECTOR_BYTES {
            return Err(Status::invalid_argument(format!(
                "label_selector: {} bytes, more than the limit of {MAX_SELECTOR_BYTES}",
                selector.len()
            )));
        }
        let labels = LabelSelector::parse(selector)
            .map_err(|e| Status::invalid_argument(format!("label_selector: {e}")))?;
        Ok(Self { scope, labels })
    }
}

/// The last sample time sent per node and per pod (`namespace/name`).
#[derive(Default)]
struct Sent {
    nodes: HashMap<Arc<str>, i64>,
    pods: HashMap<String, i64>,
}

/// The event that brings a watcher from `sent` to the store's current state;
/// `None` when nothing changed.
fn next_event(
    store: &Store,
    filter: &Filter,
    sent: &mut Sent,
    snapshot: bool,
) -> Option<WatchEvent> {
    let mut event = WatchEvent {
        snapshot,
        ..WatchEvent::default()
    };
    if filter.scope.nodes {
        let mut seen = HashMap::new();
        for n in store.nodes() {
            if filter
                .scope
                .node
                .as_deref()
                .is_some_and(|want| want != &*n.name)
                || !filter.labels.matches(&n.labels)
            {
                continue;
            }
            let t = nanos(n.timestamp);
            if sent.nodes.get(&n.name) != Some(&t) {
                event.nodes.push(node_wire(&n));
            }
            seen.insert(n.name.clone(), t);
        }
        event.removed_nodes = sent
            .nodes
            .keys()
            .filter(|k| !seen.contains_key(*k))
            .map(|k| k.to_string())
            .collect();
        sent.nodes = seen;
    }
    if filter.scope.pods {
        let mut seen = HashMap::new();
        for (node, p) in store.pods_by_node(
            filter.scope.node.as_deref(),
            filter.scope.namespace.as_deref(),
        ) {
            if !filter.labels.matches(&p.labels) {
                continue;
            }
            let key = format!("{}/{}", p.namespace, p.name);
            let t = nanos(p.timestamp);
            if sent.pods.get(&key) != Some(&t) {
                event.pods.push(pod_wire(&node, &p));
            }
            seen.insert(key, t);
        }
        event.removed_pods = sent
            .pods
            .keys()
            .filter(|k| !seen.contains_key(*k))
            .cloned()
            .collect();
        sent.pods = seen;
    }
    event.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    event
        .pods
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    event.removed_nodes.sort();
    event.removed_pods.sort();
    let empty = event.nodes.is_empty()
        && event.pods.is_empty()
        && event.removed_nodes.is_empty()
        && event.removed_pods.is_empty();
    (snapshot || !empty).then_some(event)
}

type EventStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Metrics for WatchService {
    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // Who asks first: nothing costly is done for an unauthenticated caller.
        let scope = Scope::new(request.get_ref());
        if let Some(auth) = &self.auth {
            auth.check(request.metadata(), &scope).await?;
        }
        let filter = Filter::new(scope, &request.get_ref().label_selector)?;
        let (tx, rx) = mpsc::channel(1);
        let store = Arc::clone(&self.store);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut changes = store.subscribe();
            let mut sent = Sent::default();
            let mut snapshot = true;
            loop {
                changes.borrow_and_update();
                if let Some(event) = next_event(&store, &filter, &mut sent, snapshot) {
                    snapshot = false;
                    // Waits while the consumer is slow; store changes meanwhile
                    // coalesce into the next recompute.
                    tokio::select! {
                        sent = tx.send(Ok(event)) => if sent.is_err() { return },
                        _ = shutdown.cancelled() => return,
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(MIN_INTERVAL) => {}
                    _ = tx.closed() => return,
                    _ = shutdown.cancelled() => return,
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                    _ = shutdown.cancelled() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
