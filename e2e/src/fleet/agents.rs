//! Simulated agents: for every node of a [`Fleet`], the agent's own exporter
//! (`export`, one connection and stream per aggregator replica, the
//! node's own bound ServiceAccount token) sending the fleet's counters every
//! interval. What a real agent adds — reading cgroups, eBPF, its pod watch —
//! is not simulated; the report it sends is.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Result;
use export::{self, Outgoing};
use kube::Client;
use serde_json::json;
use tokio::{sync::watch, task::JoinSet};
use tokio_util::sync::CancellationToken;

use super::{Fleet, post};
use crate::{AGENT_AUDIENCE, manifests};

/// The running agents; [`Agents::stop`] ends them.
pub struct Agents {
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl Agents {
    pub async fn stop(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Writes a token for every node's agent under `dir` (ServiceAccount
/// `kube-system/nodepulse-agent`, audience `nodepulse`, bound to the Node
/// object, as the agent's projected token is): one file per node, in order.
pub async fn node_tokens(
    client: &Client,
    fleet: &Fleet,
    dir: &std::path::Path,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let path = format!(
        "/api/v1/namespaces/{}/serviceaccounts/{}/token",
        manifests::NAMESPACE,
        manifests::AGENT_SA
    );
    let mut files = Vec::with_capacity(fleet.nodes.len());
    for node in &fleet.nodes {
        let request = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [AGENT_AUDIENCE],
                "expirationSeconds": 3600,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Node",
                                   "name": node.name, "uid": node.uid},
            },
        });
        let answer = post(client, &path, &request).await?;
        let token = answer["status"]["token"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("TokenRequest for {}: {answer}", node.name))?;
        let file = dir.join(&node.name);
        std::fs::write(&file, token)?;
        files.push(file);
    }
    Ok(files)
}

/// Starts an agent per node, node `i` with `configs[i]`, reporting every
/// `interval`; the nodes' reports are spread evenly over the interval, as a
/// fleet's agents started at different times are.
pub fn start(fleet: Arc<Fleet>, configs: Vec<export::Config>, interval: Duration) -> Agents {
    let cancel = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let n = fleet.nodes.len().max(1);
    for (i, config) in configs.into_iter().enumerate() {
        let (tx, rx) = watch::channel(None);
        tasks.spawn(export::run(config, rx, cancel.clone()));
        let (fleet, cancel) = (Arc::clone(&fleet), cancel.clone());
        let offset = interval.mul_f64(i as f64 / n as f64);
        tasks.spawn(async move {
            let node = &fleet.nodes[i];
            let metadata = Arc::new(node.metadata());
            tokio::select! {
                () = tokio::time::sleep(offset) => {}
                () = cancel.cancelled() => return,
            }
            let mut every = tokio::time::interval(interval);
            let mut seq = 0;
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    () = cancel.cancelled() => return,
                }
                seq += 1;
                let report = fleet.report(node, std::time::SystemTime::now(), seq, 1);
                tx.send_replace(Some(Arc::new(Outgoing {
                    report,
                    metadata: Arc::clone(&metadata),
                    metadata_version: 1,
                })));
            }
        });
    }
    Agents { cancel, tasks }
}
