//! The node's own pods, as kube-apiserver knows them: names, namespaces,
//! labels, phase, and which container id is which container. The agent joins
//! these to the cgroups it measures and sends them to the aggregators, so the
//! aggregators need no pod informer of their own.
//!
//! List, then watch from the list's resourceVersion (the kubelet does the same
//! with the same field selector, so kube-apiserver serves it from its watch
//! cache); relist when the watch ends with an error. The Node's labels are
//! re-read every minute.
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use kube_lite::{KubeClient, WatchEvent};
use proto::v1::{ContainerName, NodeMetadata, PodMetadata};
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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

struct State {
    node_labels: BTreeMap<String, String>,
    pods: HashMap<String, PodMetadata>,
}

impl State {
    fn publish(&self, tx: &watch::Sender<Arc<NodeMetadata>>) {
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

/// Keeps `tx` holding this node's metadata until `cancel`.
pub async fn run(
    client: KubeClient,
    node: String,
    tx: watch::Sender<Arc<NodeMetadata>>,
    cancel: CancellationToken,
) {
    let selector = percent_encode(&format!("spec.nodeName={node}"));
    let mut state = State {
        node_labels: BTreeMap::new(),
        pods: HashMap::new(),
    };
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut labels_read = None::<tokio::time::Instant>;
    loop {
        if labels_read.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
            match client
                .get_json::<Node>(&format!("/api/v1/nodes/{}", percent_encode(&node)))
                .await
            {
                Ok(n) => {
                    state.node_labels = n.metadata.labels;
                    labels_read = Some(tokio::time::Instant::now());
                }
                Err(e) => warn!(%node, error = %e, "reading the Node's labels"),
            }
        }
        let list = client
            .get_json::<PodList>(&format!(
                "/api/v1/pods?fieldSelector={selector}&resourceVersion=0"
            ))
            .await;
        let version = match list {
            Ok(list) => {
                state.pods = list
                    .items
                    .iter()
                    .map(|p| (p.metadata.uid.clone(), to_wire(p)))
                    .collect();
                state.publish(&tx);
                info!(pods = state.pods.len(), "listed this node's pods");
                backoff.reset();
                list.metadata.resource_version
            }
            Err(e) => {
                warn!(error = %e, "listing this node's pods");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => continue,
                    _ = cancel.cancelled() => return,
                }
            }
        };
        // Watch until it ends (timeoutSeconds, idle, error), then relist.
        let path = format!(
            "/api/v1/pods?fieldSelector={selector}&watch=1&allowWatchBookmarks=true&timeoutSeconds=300&resourceVersion={}",
            percent_encode(&version)
        );
        let watched = client.watch::<Pod>(&path, Duration::from_secs(90), |event| {
            match event {
                WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                    state.pods.insert(p.metadata.uid.clone(), to_wire(&p));
                }
                WatchEvent::Deleted(p) => {
                    state.pods.remove(&p.metadata.uid);
                }
                WatchEvent::Bookmark(_) => return !cancel.is_cancelled(),
            }
            state.publish(&tx);
            !cancel.is_cancelled()
        });
        tokio::select! {
            result = watched => if let Err(e) = result {
                warn!(error = %e, "pod watch ended; listing again");
            },
            _ = cancel.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn selectors_are_escaped() {
        assert_eq!(
            percent_encode("spec.nodeName=node-1"),
            "spec.nodeName%3Dnode-1"
        );
    }
}
