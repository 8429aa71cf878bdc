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
//! A node the aggregator reads from its kubelet is never asked: its pods come
//! from the aggregator's own watch by `spec.nodeName`, and its capacity from
//! its own Node watch ([`crate::store::Source::Watched`]).
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

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, Client,
    api::{ListParams, PartialObjectMeta},
};
use support::log_gate::LogGate;
use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    api::quantity::parse_quantity,
    store::{Capacity, Store},
};

/// Nodes asked about at once.
const CONCURRENCY: usize = 8;
/// Pause before asking about a node again: its pods were left out.
const AGAIN: Duration = Duration::from_secs(1);
/// Longest pause after kube-apiserver could not be asked.
const MOST: Duration = Duration::from_secs(30);

/// `node`'s pods, from the watch cache (`resourceVersion=0`).
pub fn list_params(node: &str) -> ListParams {
    ListParams::default()
        .fields(&format!("spec.nodeName={node}"))
        .match_any()
}

/// Answers the store's binding questions until `cancel`: `queue` brings the
/// nodes to ask about (the store sends each once until it is answered).
pub async fn run(
    store: Arc<Store>,
    client: Client,
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

/// Why a node's capacity could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    #[error(transparent)]
    Get(#[from] kube::Error),
    #[error("status.capacity.{0} is missing or not a quantity")]
    Quantity(&'static str),
}

/// `node`'s CPU and memory capacity, from its Node object.
async fn capacity_of(client: &Client, node: &str) -> Result<Capacity, CapacityError> {
    let node = Api::<Node>::all(client.clone()).get(node).await?;
    parse_capacity(&node)
}

/// `node`'s CPU and memory, as its `status.capacity` says.
pub fn parse_capacity(node: &Node) -> Result<Capacity, CapacityError> {
    let capacity = node.status.as_ref().and_then(|s| s.capacity.as_ref());
    let quantity = |key: &'static str| {
        capacity
            .and_then(|c| c.get(key))
            .and_then(|q| parse_quantity(&q.0).ok())
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
/// Metadata only: the UIDs are all the check needs.
async fn bound_to(client: &Client, node: &str) -> Result<HashSet<String>, kube::Error> {
    let list = Api::<Pod>::all(client.clone())
        .list_metadata(&list_params(node))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|pod: PartialObjectMeta<Pod>| pod.metadata.uid)
        .collect())
}

#[cfg(test)]
mod tests {
    use kube::api::ObjectList;

    use super::*;

    #[test]
    fn capacity_from_a_node() {
        let n: Node = serde_json::from_str(
            r#"{"kind":"Node","status":{"capacity":{"cpu":"2","memory":"8145184Ki","pods":"110"}}}"#,
        )
        .expect("decodes");
        assert_eq!(
            parse_capacity(&n).expect("capacity"),
            Capacity {
                cpu_nanocores: 2_000_000_000,
                memory_bytes: 8_145_184 * 1024,
            }
        );
        let n: Node =
            serde_json::from_str(r#"{"status":{"capacity":{"cpu":"500m"}}}"#).expect("decodes");
        assert!(matches!(
            parse_capacity(&n),
            Err(CapacityError::Quantity("memory"))
        ));
    }

    #[test]
    fn an_empty_list_is_null() {
        let list: ObjectList<PartialObjectMeta<Pod>> = serde_json::from_str(
            r#"{"kind":"PartialObjectMetadataList","apiVersion":"meta.k8s.io/v1","metadata":{},"items":null}"#,
        )
        .expect("decodes");
        assert!(list.items.is_empty());
    }

    #[test]
    fn the_list_is_narrowed_to_the_node_and_served_from_the_cache() {
        let request = kube::core::Request::new("/api/v1/pods")
            .list_metadata(&list_params("node-1.example"))
            .expect("request");
        assert_eq!(
            request.uri(),
            "/api/v1/pods?&fieldSelector=spec.nodeName%3Dnode-1.example&resourceVersion=0&resourceVersionMatch=NotOlderThan"
        );
        let accept = request.headers().get(http::header::ACCEPT).expect("accept");
        assert_eq!(
            accept,
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
        );
    }
}
