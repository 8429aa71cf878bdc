//! Which nodes have a loop reading their kubelet, and why: picked by a
//! selector, or fallen back to because their agent has gone silent.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use http::Uri;
use k8s_openapi::api::core::v1::Node;
use kubelet::KubeletClient;
use tokio::{sync::watch, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::{Picked, Settings, scrape};
use crate::{binding::parse_capacity, store::Capacity};

/// A node being read.
struct Reading {
    url: Uri,
    /// The selectors that pick it (by index).
    picked_by: Vec<bool>,
    /// Read because its agent is silent (`--kubelet-fallback-after`).
    fallback: bool,
    /// The Node's labels, for its pod metadata.
    labels: watch::Sender<BTreeMap<String, String>>,
    capacity: watch::Sender<Option<Capacity>>,
    cancel: CancellationToken,
}

impl Reading {
    /// The Node changed: its loop sees the new labels and capacity, and so
    /// does ingest, for the reads other replicas forward.
    fn update(&self, name: &Arc<str>, facts: Facts, picked: &Picked) {
        picked.insert(name.clone(), facts.capacity);
        self.labels.send_if_modified(|l| replace(l, facts.labels));
        self.capacity
            .send_if_modified(|c| replace(c, facts.capacity));
    }

    fn picked(&self) -> bool {
        self.picked_by.iter().any(|&p| p)
    }
}

/// A node the fallback may read: where its kubelet is, and when it was
/// first seen (a node never reported counts as silent since then).
struct Candidate {
    url: Result<Uri, String>,
    facts: Facts,
    seen: Instant,
}

/// What a node's loop takes from its Node object.
#[derive(Clone)]
struct Facts {
    labels: BTreeMap<String, String>,
    /// None where the Node says none: its figures are then bounded by their
    /// own consistency only, as with an agent when the Node cannot be read.
    capacity: Option<Capacity>,
}

fn facts_of(node: &Node) -> Facts {
    Facts {
        labels: node.metadata.labels.clone().unwrap_or_default(),
        capacity: parse_capacity(node).ok(),
    }
}

/// The loops, by node, and what they share.
pub(super) struct Loops<'a> {
    reading: HashMap<Arc<str>, Reading>,
    /// Nodes to read but unreadable, with why (logged once per cause).
    unreadable: HashMap<Arc<str>, String>,
    /// Every node, with `--kubelet-fallback-after`.
    all: HashMap<Arc<str>, Candidate>,
    tasks: JoinSet<()>,
    settings: &'a Settings,
    shared: Arc<scrape::Shared>,
    cancel: CancellationToken,
}

/// For `send_if_modified`: whether `new` differs from what `current` held.
fn replace<T: PartialEq>(current: &mut T, new: T) -> bool {
    if *current == new {
        return false;
    }
    *current = new;
    true
}

fn name_of(node: &Node) -> Option<Arc<str>> {
    node.metadata.name.as_deref().map(Arc::from)
}

impl<'a> Loops<'a> {
    pub(super) fn new(
        settings: &'a Settings,
        shared: Arc<scrape::Shared>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            reading: HashMap::new(),
            unreadable: HashMap::new(),
            all: HashMap::new(),
            tasks: JoinSet::new(),
            settings,
            shared,
            cancel,
        }
    }

    /// Selector `i` has listed `nodes`: it picks those, and no other.
    pub(super) fn listed(&mut self, i: usize, nodes: Vec<Node>) {
        let names: HashSet<Arc<str>> = nodes.iter().filter_map(name_of).collect();
        let gone: Vec<Arc<str>> = self
            .reading
            .iter()
            .filter(|(name, r)| r.picked_by[i] && !names.contains(*name))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.unpick(&name, i);
        }
        for node in &nodes {
            self.pick(node, i);
        }
    }

    /// Selector `i` picks `node`: start its loop, or restart it on a new
    /// address.
    pub(super) fn pick(&mut self, node: &Node, i: usize) {
        let Some(name) = name_of(node) else { return };
        let url = match self.settings.url(node) {
            Ok(url) => url,
            Err(error) => {
                self.unreadable(&name, error.to_string());
                self.stop(&name);
                return;
            }
        };
        let mut picked_by = vec![false; self.settings.selectors.len()];
        if let Some(r) = self.reading.get_mut(&name) {
            r.picked_by[i] = true;
            r.update(&name, facts_of(node), &self.shared.picked);
            if r.url == url {
                // A selector's own loop now, whatever its agent does.
                r.fallback = false;
                return;
            }
            info!(node = %name, from = %r.url, to = %url, "the node's kubelet moved");
            picked_by.clone_from(&r.picked_by);
        }
        picked_by[i] = true;
        self.start(name, url, facts_of(node), picked_by, false);
    }

    /// Selector `i` no longer picks `node`: stop its loop once none does.
    pub(super) fn unpick(&mut self, node: &str, i: usize) {
        let Some(r) = self.reading.get_mut(node) else {
            self.unreadable.remove(node);
            return;
        };
        r.picked_by[i] = false;
        if r.picked() || r.fallback {
            return;
        }
        self.stop(node);
        info!(%node, "no longer reading the node's kubelet");
    }

    /// Every node, as the fallback's watch lists them.
    pub(super) fn all_listed(&mut self, nodes: Vec<Node>) {
        let mut all = HashMap::with_capacity(nodes.len());
        for node in &nodes {
            let Some(name) = name_of(node) else { continue };
            all.insert(name.clone(), self.candidate(&name, node));
        }
        let gone: Vec<Arc<str>> = self
            .reading
            .iter()
            .filter(|(name, r)| r.fallback && !r.picked() && !all.contains_key(*name))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.stop(&name);
        }
        self.all = all;
    }

    /// A node added or changed, as the fallback's watch sees it.
    pub(super) fn seen(&mut self, node: &Node) {
        let Some(name) = name_of(node) else { return };
        let candidate = self.candidate(&name, node);
        if let Some(r) = self.reading.get(&name)
            && r.fallback
            && !r.picked()
        {
            if candidate.url.as_ref().is_ok_and(|new| new != &r.url) {
                // Read again from the new address at the next sweep.
                self.stop(&name);
            } else {
                r.update(&name, candidate.facts.clone(), &self.shared.picked);
            }
        }
        self.all.insert(name, candidate);
    }

    fn candidate(&self, name: &str, node: &Node) -> Candidate {
        Candidate {
            url: self.settings.url(node).map_err(|e| e.to_string()),
            facts: facts_of(node),
            seen: self.all.get(name).map_or_else(Instant::now, |c| c.seen),
        }
    }

    /// A node deleted, as the fallback's watch sees it.
    pub(super) fn forget(&mut self, node: &str) {
        self.all.remove(node);
        if self
            .reading
            .get(node)
            .is_some_and(|r| r.fallback && !r.picked())
        {
            self.stop(node);
        }
    }

    /// With `--kubelet-fallback-after`: reads the kubelet of every node
    /// whose agent has been silent that long (or that has never reported
    /// since it was first seen), and stops once its agent reports again.
    pub(super) fn sweep(&mut self) {
        let Some(grace) = self.settings.fallback_after else {
            return;
        };
        let store = &self.shared.store;
        let mut back = Vec::new();
        let mut silent = Vec::new();
        for (name, candidate) in &self.all {
            match self.reading.get(name) {
                // Its agent, not another replica forwarding its kubelet.
                Some(r) if r.fallback && store.agent_reports(name) => {
                    back.push(name.clone());
                }
                Some(_) => {}
                None => {
                    let quiet = store
                        .silent_for(name)
                        .unwrap_or_else(|| candidate.seen.elapsed());
                    if quiet >= grace {
                        silent.push((name.clone(), quiet));
                    }
                }
            }
        }
        for name in back {
            info!(node = %name, "its agent reports again: no longer reading the node's kubelet");
            self.stop(&name);
        }
        for (name, quiet) in silent {
            let candidate = &self.all[&name];
            match &candidate.url {
                Ok(url) => {
                    let (url, facts) = (url.clone(), candidate.facts.clone());
                    info!(node = %name, silent = ?quiet, "its agent is silent: reading the node's kubelet");
                    let picked_by = vec![false; self.settings.selectors.len()];
                    self.start(name, url, facts, picked_by, true);
                }
                Err(error) => {
                    let error = error.clone();
                    self.unreadable(&name, error);
                }
            }
        }
    }

    fn unreadable(&mut self, name: &Arc<str>, error: String) {
        if self.unreadable.get(name) != Some(&error) {
            warn!(node = %name, %error, "cannot read the node's kubelet");
            self.unreadable.insert(name.clone(), error);
        }
    }

    fn start(
        &mut self,
        name: Arc<str>,
        url: Uri,
        facts: Facts,
        picked_by: Vec<bool>,
        fallback: bool,
    ) {
        self.stop(&name);
        let client = match KubeletClient::new(self.settings.client(url.clone())) {
            Ok(client) => client,
            Err(error) => return self.unreadable(&name, error.to_string()),
        };
        self.unreadable.remove(&name);
        if !fallback {
            info!(node = %name, %url, "reading the node's kubelet: no agent runs there");
        }
        let cancel = self.cancel.child_token();
        let epoch = proto::new_epoch();
        // A fallback is late already: its first read is now.
        let first = if fallback {
            Duration::ZERO
        } else {
            scrape::offset(&name, self.settings.interval)
        };
        self.shared.picked.insert(name.clone(), facts.capacity);
        let (labels, given) = watch::channel(facts.labels);
        let (capacity, given_capacity) = watch::channel(facts.capacity);
        self.shared.stats.nodes.fetch_add(1, Ordering::Relaxed);
        self.tasks.spawn(
            scrape::run(
                Arc::clone(&self.shared),
                name.clone(),
                client,
                scrape::Start {
                    epoch,
                    first,
                    labels: given,
                    capacity: given_capacity,
                },
                cancel.clone(),
            )
            .instrument(info_span!("kubelet", node = %name)),
        );
        self.reading.insert(
            name,
            Reading {
                url,
                picked_by,
                fallback,
                labels,
                capacity,
                cancel,
            },
        );
    }

    fn stop(&mut self, node: &str) {
        if let Some(r) = self.reading.remove(node) {
            self.shared.picked.remove(node);
            r.cancel.cancel();
            self.shared.stats.nodes.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Reaps finished loops; at the end, stops them all and waits.
    pub(super) fn reap(&mut self) {
        while self.tasks.try_join_next().is_some() {}
    }

    pub(super) async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}
