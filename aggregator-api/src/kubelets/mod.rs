//! Nodes without an agent, read from their kubelet as metrics-server reads
//! every node: Windows nodes, virtual kubelets, nodes a DaemonSet cannot
//! run on (the nodes `--kubelet-node-selector` picks), and, with
//! `--kubelet-fallback-after`, any node whose agent has gone silent.
//!
//! One Node watch per selector, filtered by kube-apiserver, finds them; on
//! a cluster where every node runs an agent the watches return nothing and
//! nothing else runs. The fallback adds one watch of every Node (as
//! metrics-server holds) and reads no kubelet while agents report. Each
//! node read gets a loop ([`scrape`]) that watches the node's pods as its
//! agent would and reads the kubelet every interval into the store as the
//! node's report, so the store's checks and rate rules apply unchanged (its
//! pods, from that watch, need no binding check; its capacity comes from the
//! Node watch). A node whose agent reports is not served from its kubelet
//! (never both figures), and a node that moves between the two starts its
//! series over rather than joining counters of different origins.
//!
//! By default every replica reads every such kubelet, as each replica of
//! metrics-server's HA deployment does. With `--kubelet-replicas-service`
//! the reads are split ([`replicas`]: rendezvous hashing over the replicas
//! the Service lists ready) and the reader forwards each read to the others
//! ([`forward`]), which take it for the nodes they pick too: each kubelet
//! is read once per interval and every replica still holds the full view.
pub mod config;
pub mod forward;
mod loops;
pub mod picked;
pub mod replicas;
pub mod scrape;
pub mod stats;

use std::{pin::pin, sync::Arc, time::Duration};

use futures::{StreamExt, stream::select_all};
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use support::{
    backoff::WatchBackoff,
    changes::{Change, changes},
};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::{KubeletArgs, Settings};
use forward::Peers;
use loops::Loops;
pub use picked::Picked;
use replicas::Members;
use scrape::Shared;
pub use stats::ScrapeStats;

use crate::store::Store;

/// Reads the kubelets of the nodes `settings` picks until `cancel`.
pub async fn run(
    store: Arc<Store>,
    client: Client,
    settings: Settings,
    stats: Arc<ScrapeStats>,
    picked: Arc<Picked>,
    ingest_port: u16,
    cancel: CancellationToken,
) {
    if settings.selectors.is_empty() && settings.fallback_after.is_none() {
        return;
    }
    info!(
        selectors = ?settings.selectors,
        fallback_after = ?settings.fallback_after,
        interval = ?settings.interval,
        "reading the kubelets of nodes without an agent"
    );
    let peers = settings.split.as_ref().map(|split| {
        info!(service = %split.service, me = %split.me, "kubelet reads split across the replicas the Service lists ready");
        let (tx, rx) = watch::channel(Members::new(split.me, []));
        tokio::spawn(replicas::watch_members(
            client.clone(),
            split.namespace.clone(),
            split.service.clone(),
            tx,
            cancel.child_token(),
        ));
        let observer: Arc<dyn export::Observer> = stats.clone();
        Peers {
            members: rx,
            export: export::Config {
                observer: Some(observer),
                // Every forwarded node's stream to a replica: few connections.
                pool: Some(export::Pool::new(forward::STREAMS_PER_CONNECTION)),
                ..split.export.clone()
            },
            port: ingest_port,
        }
    });
    let shared = Arc::new(Shared {
        store,
        client: client.clone(),
        permits: Semaphore::new(settings.concurrency),
        stats,
        interval: settings.interval,
        picked,
        peers,
    });
    let nodes: Api<Node> = Api::all(client);
    // Watch `i` < selectors: selector `i`; the last, with the fallback: all.
    let all = settings.selectors.len();
    let selectors = settings
        .selectors
        .iter()
        .map(String::as_str)
        .chain(settings.fallback_after.map(|_| ""));
    let watches = selectors.enumerate().map(|(i, selector)| {
        let config = watcher::Config::default().labels(selector).any_semantic();
        let events = watcher::watcher(nodes.clone(), config).backoff(WatchBackoff::new(
            Duration::from_millis(500),
            Duration::from_secs(30),
        ));
        changes(events, "nodes")
            .map(move |change| (i, change))
            .boxed()
    });
    let mut events = pin!(select_all(watches));
    let mut loops = Loops::new(&settings, shared, cancel.child_token());
    let mut sweep = tokio::time::interval(settings.interval);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (i, change) = tokio::select! {
            change = events.next() => match change { Some(c) => c, None => break },
            _ = sweep.tick() => {
                loops.sweep();
                loops.reap();
                continue;
            }
            () = cancel.cancelled() => break,
        };
        match change {
            Ok(Change::Listed(listed)) if i == all => loops.all_listed(listed),
            Ok(Change::Listed(listed)) => loops.listed(i, listed),
            Ok(Change::Applied(node)) if i == all => loops.seen(&node),
            Ok(Change::Applied(node)) => loops.pick(&node, i),
            Ok(Change::Deleted(node)) => {
                if let Some(name) = node.metadata.name.as_deref() {
                    if i == all {
                        loops.forget(name);
                    } else {
                        loops.unpick(name, i);
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "watching nodes without an agent (trying again after a pause)")
            }
        }
        loops.reap();
    }
    loops.shutdown().await;
}
