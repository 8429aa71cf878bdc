//! The fleet's latest state: for every node and container the last and
//! previous points of its counters, the node's and pods' names and labels as
//! the node's agent reported them, and the rates the metrics API serves.
//!
//! Sharded by node: ingest of one node's report locks only that node, and
//! readers lock one node at a time, so a reader listing 300,000 pods never
//! holds up ingest for longer than one node's copy. A global index maps
//! namespace/name to the node a pod runs on; it changes only with metadata.
pub mod rate;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use proto::v1::{NodeReport, Usage};
use tokio::sync::watch;

use crate::api::{ContainerUsage, NodeUsage, PodUsage, view};
use rate::{Outcome, Point, Series};

/// Why a report was refused. Nothing of a refused report is applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Reject {
    #[error("report has no node name")]
    NoNode,
    #[error("node name {0:?} is not a valid Kubernetes object name")]
    BadNodeName(String),
    #[error("sample time {0} ns is before 1970 or not set")]
    NoTime(i64),
    #[error(
        "sample time is {ahead:?} ahead of this aggregator's clock (more than {limit:?}); check the node's clock"
    )]
    Future { ahead: Duration, limit: Duration },
    #[error("report has {count} pods, more than the limit of {limit}")]
    TooManyPods { count: usize, limit: usize },
    #[error("report has no node usage")]
    NoUsage,
}

/// Store limits and policies.
#[derive(Clone, Debug)]
pub struct Config {
    /// How far ahead of our clock a sample may be (node clock skew).
    pub max_future: Duration,
    /// Most pods one report may carry.
    pub max_pods: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_future: Duration::from_secs(30),
            max_pods: 2000,
        }
    }
}

/// Counters for `/metrics`: what ingest saw.
#[derive(Debug, Default)]
pub struct Stats {
    pub reports: AtomicU64,
    pub rejected: AtomicU64,
    pub resets: AtomicU64,
    pub absurd: AtomicU64,
    pub stale: AtomicU64,
    pub too_soon: AtomicU64,
    pub duplicates: AtomicU64,
    pub evicted_nodes: AtomicU64,
}

#[derive(Clone, Debug, Default)]
struct PodMeta {
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    running: bool,
    /// (container id, container name)
    containers: Vec<(String, String)>,
}

#[derive(Debug)]
struct NodeState {
    /// Metadata received: the node's labels, its pods' names.
    known: bool,
    labels: BTreeMap<String, String>,
    pods: HashMap<String, PodMeta>,
    usage: Option<Series>,
    containers: HashMap<String, Series>,
    last_report: Instant,
}

type PodKey = (String, String);

/// The store. Cheap to share behind an `Arc`.
pub struct Store {
    config: Config,
    nodes: RwLock<HashMap<String, Arc<Mutex<NodeState>>>>,
    /// namespace/name → (node, uid)
    pods: RwLock<HashMap<PodKey, (String, String)>>,
    stats: Stats,
    /// Bumped after every applied report, for watchers.
    changed: watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a node's lock cannot leave a series half-written
    // (every update is a whole-value assignment), so keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn point(time: SystemTime, u: &Usage) -> Point {
    Point {
        time,
        cpu_ns: u.cpu_ns,
        memory_bytes: u.memory_working_set_bytes,
        swap_bytes: u.swap_bytes,
    }
}

/// A DNS subdomain, as Kubernetes requires of node names.
fn valid_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl Default for Store {
    fn default() -> Self {
        Self::new(Config::default())
    }
}

impl Store {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            nodes: RwLock::default(),
            pods: RwLock::default(),
            stats: Stats::default(),
            changed: watch::channel(0).0,
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// A receiver that sees a new value after every applied report.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Applies one report of `node`: metadata (when present) replaces the node's
    /// labels and pod names; every series takes its new point.
    pub fn apply(&self, report: &NodeReport, now: SystemTime) -> Result<(), Reject> {
        let result = self.apply_inner(report, now);
        let counter = if result.is_ok() {
            &self.stats.reports
        } else {
            &self.stats.rejected
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if result.is_ok() {
            self.changed.send_modify(|g| *g = g.wrapping_add(1));
        }
        result
    }

    fn apply_inner(&self, report: &NodeReport, now: SystemTime) -> Result<(), Reject> {
        if report.node.is_empty() {
            return Err(Reject::NoNode);
        }
        if !valid_name(&report.node) {
            return Err(Reject::BadNodeName(report.node.chars().take(300).collect()));
        }
        let nanos = u64::try_from(report.sample_unix_nanos)
            .ok()
            .filter(|&n| n > 0)
            .ok_or(Reject::NoTime(report.sample_unix_nanos))?;
        let time = SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos);
        if let Ok(ahead) = time.duration_since(now)
            && ahead > self.config.max_future
        {
            return Err(Reject::Future {
                ahead,
                limit: self.config.max_future,
            });
        }
        if report.pods.len() > self.config.max_pods {
            return Err(Reject::TooManyPods {
                count: report.pods.len(),
                limit: self.config.max_pods,
            });
        }
        let usage = report.node_usage.as_ref().ok_or(Reject::NoUsage)?;

        let node = self.node_entry(&report.node);
        let mut state = lock(&node);
        state.last_report = Instant::now();
        if let Some(meta) = &report.metadata {
            self.replace_metadata(&report.node, &mut state, meta);
        }
        self.push(&mut state.usage, point(time, usage), 0);

        let mut seen = HashSet::with_capacity(state.containers.len());
        for pod in &report.pods {
            for c in &pod.containers {
                if !seen.insert(c.id.as_str()) {
                    self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let Some(u) = &c.usage else { continue };
                let p = point(time, u);
                match state.containers.get_mut(&c.id) {
                    Some(series) => {
                        let outcome = series.push(p, c.start_unix_nanos);
                        self.count(outcome);
                    }
                    None => {
                        state
                            .containers
                            .insert(c.id.clone(), Series::new(p, c.start_unix_nanos));
                    }
                }
            }
        }
        // Every report lists all of the node's containers: the rest are gone.
        state.containers.retain(|id, _| seen.contains(id.as_str()));
        Ok(())
    }

    fn count(&self, outcome: Outcome) {
        let c = match outcome {
            Outcome::Accepted => return,
            Outcome::Reset => &self.stats.resets,
            Outcome::Absurd => &self.stats.absurd,
            Outcome::Stale => &self.stats.stale,
            Outcome::TooSoon => &self.stats.too_soon,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn push(&self, series: &mut Option<Series>, p: Point, start: i64) {
        match series {
            Some(s) => {
                let outcome = s.push(p, start);
                self.count(outcome);
            }
            None => *series = Some(Series::new(p, start)),
        }
    }

    fn node_entry(&self, name: &str) -> Arc<Mutex<NodeState>> {
        if let Some(n) = self
            .nodes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Arc::clone(n);
        }
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(nodes.entry(name.to_string()).or_insert_with(|| {
            Arc::new(Mutex::new(NodeState {
                known: false,
                labels: BTreeMap::new(),
                pods: HashMap::new(),
                usage: None,
                containers: HashMap::new(),
                last_report: Instant::now(),
            }))
        }))
    }

    fn replace_metadata(&self, node: &str, state: &mut NodeState, meta: &proto::v1::NodeMetadata) {
        state.known = true;
        state.labels = meta
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut pods = HashMap::with_capacity(meta.pods.len());
        for p in &meta.pods {
            if pods.contains_key(&p.uid) {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            pods.insert(
                p.uid.clone(),
                PodMeta {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    labels: p
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    running: p.running,
                    containers: p
                        .containers
                        .iter()
                        .map(|c| (c.id.clone(), c.name.clone()))
                        .collect(),
                },
            );
        }
        let old = std::mem::replace(&mut state.pods, pods);
        let mut index = self.pods.write().unwrap_or_else(|e| e.into_inner());
        for (uid, p) in &old {
            let key = (p.namespace.clone(), p.name.clone());
            if index.get(&key).is_some_and(|(n, u)| n == node && u == uid) {
                index.remove(&key);
            }
        }
        for (uid, p) in &state.pods {
            index.insert(
                (p.namespace.clone(), p.name.clone()),
                (node.to_string(), uid.clone()),
            );
        }
    }

    /// Removes nodes that have not reported for `older_than`; returns how many.
    pub fn evict(&self, older_than: Duration) -> usize {
        let now = Instant::now();
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        let stale: Vec<String> = nodes
            .iter()
            .filter(|(_, n)| now.duration_since(lock(n).last_report) > older_than)
            .map(|(name, _)| name.clone())
            .collect();
        let mut index = self.pods.write().unwrap_or_else(|e| e.into_inner());
        for name in &stale {
            nodes.remove(name);
        }
        index.retain(|_, (node, _)| !stale.contains(node));
        self.stats
            .evicted_nodes
            .fetch_add(stale.len() as u64, Ordering::Relaxed);
        stale.len()
    }

    fn snapshot_nodes(&self) -> Vec<(String, Arc<Mutex<NodeState>>)> {
        self.nodes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect()
    }

    /// Running pods with complete metrics and the node each runs on, limited
    /// to one node and/or namespace when given.
    pub fn pods_by_node(
        &self,
        node: Option<&str>,
        namespace: Option<&str>,
    ) -> Vec<(String, PodUsage)> {
        let mut out = Vec::new();
        for (name, n) in self.snapshot_nodes() {
            if node.is_some_and(|want| want != name) {
                continue;
            }
            let state = lock(&n);
            out.extend(
                state
                    .pods
                    .values()
                    .filter(|p| p.running && namespace.is_none_or(|ns| p.namespace == ns))
                    .filter_map(|p| pod_usage(&state, p))
                    .map(|p| (name.clone(), p)),
            );
        }
        out
    }

    /// Names of the nodes known to the store.
    pub fn node_names(&self) -> Vec<String> {
        self.snapshot_nodes().into_iter().map(|(n, _)| n).collect()
    }
}

fn node_usage(name: &str, state: &NodeState) -> view::Lookup<NodeUsage> {
    if !state.known {
        return view::Lookup::Unknown;
    }
    match state.usage.as_ref().and_then(Series::rate) {
        Some(r) => view::Lookup::Found(NodeUsage {
            name: name.to_string(),
            labels: state.labels.clone(),
            timestamp: r.timestamp,
            window: r.window,
            cpu_nanocores: r.cpu_nanocores,
            memory_bytes: r.memory_bytes,
            swap_bytes: r.swap_bytes,
        }),
        None => view::Lookup::NoMetrics,
    }
}

/// A pod's usage when every container has a rate (metrics-server's rule: a
/// partial pod would make the HPA undercount).
fn pod_usage(state: &NodeState, pod: &PodMeta) -> Option<PodUsage> {
    if pod.containers.is_empty() {
        return None;
    }
    let mut containers = Vec::with_capacity(pod.containers.len());
    let mut earliest: Option<rate::Rate> = None;
    for (id, name) in &pod.containers {
        let r = state.containers.get(id)?.rate()?;
        if earliest.is_none_or(|e| r.timestamp < e.timestamp) {
            earliest = Some(r);
        }
        containers.push(ContainerUsage {
            name: name.clone(),
            cpu_nanocores: r.cpu_nanocores,
            memory_bytes: r.memory_bytes,
            swap_bytes: r.swap_bytes,
        });
    }
    containers.sort_by(|a, b| a.name.cmp(&b.name));
    let e = earliest?;
    Some(PodUsage {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        labels: pod.labels.clone(),
        timestamp: e.timestamp,
        window: e.window,
        containers,
    })
}

impl view::MetricsView for Store {
    fn nodes(&self) -> Vec<NodeUsage> {
        self.snapshot_nodes()
            .iter()
            .filter_map(|(name, n)| match node_usage(name, &lock(n)) {
                view::Lookup::Found(u) => Some(u),
                _ => None,
            })
            .collect()
    }

    fn node(&self, name: &str) -> view::Lookup<NodeUsage> {
        let node = self
            .nodes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned();
        match node {
            Some(n) => node_usage(name, &lock(&n)),
            None => view::Lookup::Unknown,
        }
    }

    fn pods(&self, namespace: Option<&str>) -> Vec<PodUsage> {
        self.pods_by_node(None, namespace)
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    }

    fn pod(&self, namespace: &str, name: &str) -> view::Lookup<PodUsage> {
        let key = (namespace.to_string(), name.to_string());
        let Some((node, uid)) = self
            .pods
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned()
        else {
            return view::Lookup::Unknown;
        };
        let Some(n) = self
            .nodes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&node)
            .cloned()
        else {
            return view::Lookup::Unknown;
        };
        let state = lock(&n);
        match state.pods.get(&uid) {
            Some(p) if p.running => match pod_usage(&state, p) {
                Some(u) => view::Lookup::Found(u),
                None => view::Lookup::NoMetrics,
            },
            _ => view::Lookup::Unknown,
        }
    }

    fn has_data(&self) -> bool {
        !self.nodes().is_empty()
    }
}

#[cfg(test)]
mod tests;
