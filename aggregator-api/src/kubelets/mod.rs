//! Nodes without an agent, read from their kubelet as metrics-server reads
//! every node: Windows nodes, virtual kubelets, nodes a DaemonSet cannot
//! run on (the nodes `--kubelet-node-selector` picks).
//!
//! One Node watch per selector, filtered by kube-apiserver, finds them; on
//! a cluster where every node runs an agent the watches return nothing and
//! nothing else runs. Each picked node gets a loop ([`scrape`]) that
//! watches the node's pods as its agent would and reads the kubelet every
//! interval into the store as the node's report, so the store's checks and
//! rate rules apply unchanged. A node whose agent reports is not read
//! (never both figures), and a node that moves between the two starts its
//! series over rather than joining counters of different origins.
//!
//! Every replica reads every picked kubelet: each then holds the full view
//! without asking the others, as it does for agents' pushes. A kubelet
//! answers a read from its own cache, and these nodes are few.
pub mod config;
pub mod scrape;
pub mod stats;

use std::{
    collections::HashMap,
    pin::pin,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures::{StreamExt, stream::select_all};
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use kubelet::KubeletClient;
use support::backoff::WatchBackoff;
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

pub use config::{KubeletArgs, Settings};
use scrape::Shared;
pub use stats::ScrapeStats;

use crate::store::Store;

/// A node being read.
struct Reading {
    url: http::Uri,
    /// The selectors that pick it (by index).
    picked_by: Vec<bool>,
    cancel: CancellationToken,
}

/// Reads the kubelets of the nodes `settings` picks until `cancel`.
pub async fn run(
    store: Arc<Store>,
    client: Client,
    settings: Settings,
    stats: Arc<ScrapeStats>,
    cancel: CancellationToken,
) {
    if settings.selectors.is_empty() {
        return;
    }
    info!(selectors = ?settings.selectors, interval = ?settings.interval, "reading the kubelets of nodes without an agent");
    let shared = Arc::new(Shared {
        store,
        client: client.clone(),
        permits: Semaphore::new(settings.concurrency),
        stats,
        interval: settings.interval,
    });
    let nodes: Api<Node> = Api::all(client);
    let watches = settings.selectors.iter().enumerate().map(|(i, selector)| {
        let config = watcher::Config::default().labels(selector).any_semantic();
        watcher::watcher(nodes.clone(), config)
            .backoff(WatchBackoff::new(
                Duration::from_millis(500),
                Duration::from_secs(30),
            ))
            .map(move |event| (i, event))
            .boxed()
    });
    let mut events = pin!(select_all(watches));
    let mut loops = Loops {
        reading: HashMap::new(),
        unreadable: HashMap::new(),
        tasks: JoinSet::new(),
        settings: &settings,
        shared,
        cancel: cancel.child_token(),
    };
    // Per selector: the nodes of a list in progress.
    let mut listing: Vec<Option<Vec<Node>>> = vec![None; settings.selectors.len()];
    loop {
        let (i, event) = tokio::select! {
            event = events.next() => match event { Some(e) => e, None => break },
            () = cancel.cancelled() => break,
        };
        match event {
            Ok(watcher::Event::Init) => listing[i] = Some(Vec::new()),
            Ok(watcher::Event::InitApply(node)) => listing[i].get_or_insert_default().push(node),
            Ok(watcher::Event::InitDone) => {
                let listed = listing[i].take().unwrap_or_default();
                // Nodes this selector no longer picks.
                let gone: Vec<Arc<str>> = loops
                    .reading
                    .iter()
                    .filter(|(_, r)| r.picked_by[i])
                    .map(|(name, _)| name.clone())
                    .filter(|name| {
                        !listed
                            .iter()
                            .any(|n| n.metadata.name.as_deref() == Some(&**name))
                    })
                    .collect();
                for name in gone {
                    loops.unpick(&name, i);
                }
                for node in listed {
                    loops.pick(node, i);
                }
            }
            Ok(watcher::Event::Apply(node)) => loops.pick(node, i),
            Ok(watcher::Event::Delete(node)) => {
                if let Some(name) = node.metadata.name.as_deref() {
                    loops.unpick(name, i);
                }
            }
            Err(e) if support::kube::is_expired(&e) => {
                debug!("node watch expired (410 Gone); listing again")
            }
            Err(e) => {
                warn!(error = %e, "watching nodes without an agent (trying again after a pause)")
            }
        }
        while loops.tasks.try_join_next().is_some() {}
    }
    loops.cancel.cancel();
    while loops.tasks.join_next().await.is_some() {}
}

/// The loops, by node, and what they share.
struct Loops<'a> {
    reading: HashMap<Arc<str>, Reading>,
    /// Nodes picked but not read, with why (logged once per cause).
    unreadable: HashMap<Arc<str>, String>,
    tasks: JoinSet<()>,
    settings: &'a Settings,
    shared: Arc<Shared>,
    cancel: CancellationToken,
}

impl Loops<'_> {
    /// Selector `i` picks `node`: start its loop, or restart it on a new
    /// address.
    fn pick(&mut self, node: Node, i: usize) {
        let Some(name) = node.metadata.name.clone() else {
            return;
        };
        let name: Arc<str> = name.into();
        let client = self
            .settings
            .url(&node)
            .map_err(|e| e.to_string())
            .and_then(|url| {
                if self.reading.get(&name).is_some_and(|r| r.url == url) {
                    return Ok(None);
                }
                KubeletClient::new(self.settings.client(url.clone()))
                    .map(|c| Some((url, c)))
                    .map_err(|e| e.to_string())
            });
        let (url, client) = match client {
            Ok(Some(new)) => new,
            Ok(None) => {
                if let Some(r) = self.reading.get_mut(&name) {
                    r.picked_by[i] = true;
                }
                return;
            }
            Err(error) => {
                if self.unreadable.get(&name) != Some(&error) {
                    warn!(node = %name, %error, "cannot read the node's kubelet");
                    self.unreadable.insert(name.clone(), error);
                }
                self.stop(&name);
                return;
            }
        };
        self.unreadable.remove(&name);
        let mut picked_by = match self.reading.get(&name) {
            Some(r) => {
                info!(node = %name, from = %r.url, to = %url, "the node's kubelet moved");
                r.picked_by.clone()
            }
            None => vec![false; self.settings.selectors.len()],
        };
        self.stop(&name);
        picked_by[i] = true;
        let cancel = self.cancel.child_token();
        info!(node = %name, %url, "reading the node's kubelet: no agent runs there");
        self.shared.stats.nodes.fetch_add(1, Ordering::Relaxed);
        self.tasks.spawn(
            scrape::run(
                Arc::clone(&self.shared),
                name.clone(),
                client,
                cancel.clone(),
            )
            .instrument(info_span!("kubelet", node = %name)),
        );
        self.reading.insert(
            name,
            Reading {
                url,
                picked_by,
                cancel,
            },
        );
    }

    /// Selector `i` no longer picks `node`: stop its loop once none does.
    fn unpick(&mut self, node: &str, i: usize) {
        let Some(r) = self.reading.get_mut(node) else {
            self.unreadable.remove(node);
            return;
        };
        r.picked_by[i] = false;
        if r.picked_by.iter().any(|&p| p) {
            return;
        }
        self.stop(node);
        info!(%node, "no longer reading the node's kubelet");
    }

    fn stop(&mut self, node: &str) {
        if let Some(r) = self.reading.remove(node) {
            r.cancel.cancel();
            self.shared.stats.nodes.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
