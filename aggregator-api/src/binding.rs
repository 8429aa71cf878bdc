//! The binding check: which of the pods an agent reports kube-apiserver
//! binds to that agent's node. Only those are served (see
//! [`Store::record_bindings`]): a node can report its own pods, never stand
//! in for another node's.
//!
//! One question per node, not per pod: the list of the node's pods
//! (`fieldSelector=spec.nodeName=<node>`, the index every kubelet's own watch
//! uses, answered from kube-apiserver's watch cache with `resourceVersion=0`)
//! as metadata only. A pod's UID is bound once, to one node, for good
//! (`spec.nodeName` cannot change), so each is confirmed once; a node is asked
//! again only when it reports pods not yet confirmed. At 10,000 nodes that is
//! 10,000 small lists when the aggregator starts, then one per node whose
//! pods change — nothing like a watch of 300,000 pods per replica.
//!
//! Each node's capacity (its Node object's `status.capacity`) is read once,
//! with its first question: no report may then claim more memory than the
//! node has, nor a CPU rate beyond its CPUs.
//!
//! A pod the answer leaves out may be too new for the watch cache: its node
//! is asked again a second later, up to [`crate::store::BINDING_ATTEMPTS`]
//! answers, then the claim is refused and counted. When kube-apiserver
//! cannot be asked, nothing is decided: the node is asked again with a
//! growing pause, and its unconfirmed pods wait.
use std::{collections::HashSet, sync::Arc, time::Duration};

use kube_lite::KubeClient;
use serde::Deserialize;
use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    api::quantity::parse_quantity,
    server::metrics::LogGate,
    store::{Capacity, Store},
};

/// Nodes asked about at once.
const CONCURRENCY: usize = 8;
/// Pause before asking about a node again: its pods were left out.
const AGAIN: Duration = Duration::from_secs(1);
/// Longest pause after kube-apiserver could not be asked.
const MOST: Duration = Duration::from_secs(30);

/// Only the objects' metadata: the UIDs are all the check needs.
pub const METADATA_ONLY: &str = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";

#[derive(Deserialize)]
struct List {
    /// `null` when the node has no pods.
    #[serde(default)]
    items: Option<Vec<Item>>,
}

#[derive(Deserialize)]
struct Item {
    metadata: Meta,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(default)]
    uid: String,
}

/// The path of `node`'s pods, metadata only, from the watch cache.
pub fn list_path(node: &str) -> String {
    let mut selector = String::from("spec.nodeName%3D");
    for b in node.bytes() {
        // Node names are DNS subdomains (checked at ingest): a-z 0-9 - .
        selector.push(b as char);
    }
    format!("/api/v1/pods?fieldSelector={selector}&resourceVersion=0")
}

/// Answers the store's binding questions until `cancel`: `queue` brings the
/// nodes to ask about (the store sends each once until it is answered).
pub async fn run(
    store: Arc<Store>,
    client: KubeClient,
    mut queue: mpsc::UnboundedReceiver<Arc<str>>,
    cancel: CancellationToken,
) {
    let failures = Arc::new(LogGate::new(Duration::from_secs(60)));
    let mut asking: JoinSet<()> = JoinSet::new();
    loop {
        while asking.len() >= CONCURRENCY {
            tokio::select! {
                _ = asking.join_next() => {}
                () = cancel.cancelled() => return,
            }
        }
        let node = tokio::select! {
            node = queue.recv() => match node {
                Some(n) => n,
                None => return,
            },
            () = cancel.cancelled() => return,
            Some(_) = asking.join_next(), if !asking.is_empty() => continue,
        };
        let (store, client, failures, cancel) = (
            Arc::clone(&store),
            client.clone(),
            Arc::clone(&failures),
            cancel.clone(),
        );
        asking.spawn(async move {
            let mut pause = AGAIN;
            if !store.has_capacity(&node) {
                match capacity_of(&client, &node).await {
                    Ok(capacity) => store.record_capacity(&node, capacity),
                    Err(e) => {
                        if let Some(suppressed) = failures.open() {
                            warn!(node = %node, error = %e, suppressed, "cannot read a node's capacity: its figures are bounded by their own consistency only (the aggregator needs get on nodes)");
                        }
                    }
                }
            }
            loop {
                let answer = bound_to(&client, &node).await;
                let asked = answer.is_ok();
                if let Err(e) = &answer
                    && let Some(suppressed) = failures.open()
                {
                    warn!(
                        node = %node,
                        error = %e,
                        suppressed,
                        "cannot ask kube-apiserver which pods are bound to a node: its pods are not served until it answers (the aggregator needs list on pods)"
                    );
                }
                let recorded = store.record_bindings(&node, answer.as_ref().ok());
                for (pod, uid) in recorded.refused {
                    info!(node = %node, pod, uid, "a pod its agent reports is not bound to the node: not served");
                }
                if !recorded.pending {
                    return;
                }
                pause = if asked { AGAIN } else { (pause * 2).min(MOST) };
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = cancel.cancelled() => return,
                }
            }
        });
    }
}

#[derive(Deserialize)]
struct Node {
    #[serde(default)]
    status: NodeStatus,
}

#[derive(Default, Deserialize)]
struct NodeStatus {
    #[serde(default)]
    capacity: std::collections::BTreeMap<String, String>,
}

/// Why a node's capacity could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    #[error(transparent)]
    Get(#[from] kube_lite::client::Error),
    #[error("status.capacity.{0} is missing or not a quantity")]
    Quantity(&'static str),
}

/// `node`'s CPU and memory capacity, from its Node object.
async fn capacity_of(client: &KubeClient, node: &str) -> Result<Capacity, CapacityError> {
    let n: Node = client.get_json(&format!("/api/v1/nodes/{node}")).await?;
    parse_capacity(&n.status.capacity)
}

fn parse_capacity(
    capacity: &std::collections::BTreeMap<String, String>,
) -> Result<Capacity, CapacityError> {
    let quantity = |key: &'static str| {
        capacity
            .get(key)
            .and_then(|q| parse_quantity(q).ok())
            .ok_or(CapacityError::Quantity(key))
    };
    Ok(Capacity {
        cpu_nanocores: quantity("cpu")?
            .to_nanos()
            .map_err(|_| CapacityError::Quantity("cpu"))?,
        memory_bytes: quantity("memory")?
            .to_units()
            .map_err(|_| CapacityError::Quantity("memory"))?,
    })
}

/// The UIDs of the pods kube-apiserver binds to `node`.
async fn bound_to(
    client: &KubeClient,
    node: &str,
) -> Result<HashSet<String>, kube_lite::client::Error> {
    let list: List = client.get_json_as(&list_path(node), METADATA_ONLY).await?;
    Ok(list
        .items
        .into_iter()
        .flatten()
        .map(|i| i.metadata.uid)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_from_a_node() {
        let n: Node = serde_json::from_str(
            r#"{"kind":"Node","status":{"capacity":{"cpu":"2","memory":"8145184Ki","pods":"110"}}}"#,
        )
        .expect("decodes");
        assert_eq!(
            parse_capacity(&n.status.capacity).expect("capacity"),
            Capacity {
                cpu_nanocores: 2_000_000_000,
                memory_bytes: 8_145_184 * 1024,
            }
        );
        let n: Node =
            serde_json::from_str(r#"{"status":{"capacity":{"cpu":"500m"}}}"#).expect("decodes");
        assert!(matches!(
            parse_capacity(&n.status.capacity),
            Err(CapacityError::Quantity("memory"))
        ));
    }

    #[test]
    fn an_empty_list_is_null() {
        let list: List = serde_json::from_str(
            r#"{"kind":"PartialObjectMetadataList","apiVersion":"meta.k8s.io/v1","metadata":{},"items":null}"#,
        )
        .expect("decodes");
        assert!(list.items.is_none());
    }

    #[test]
    fn the_list_is_narrowed_to_the_node_and_served_from_the_cache() {
        assert_eq!(
            list_path("node-1.example"),
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1.example&resourceVersion=0"
        );
    }
}
