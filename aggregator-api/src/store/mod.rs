//! The fleet's latest state: for every node and container the last and
//! previous points of its counters, the node's and pods' names and labels as
//! the node's agent reported them, and the rates the metrics API serves.
//!
//! Sharded by node: ingest of one node's report locks only that node, and
//! readers lock one node at a time, so a reader listing 300,000 pods never
//! holds up ingest for longer than one node's copy. A global index maps
//! namespace/name to the node a pod runs on; it changes only with metadata.
//!
//! Memory per node is kept small: strings that repeat across the fleet
//! (namespaces, label keys and values, container names) are interned once,
//! standard 64-hex container ids are kept as 32 bytes inline, and applying a
//! report's counters allocates nothing unless a container is new.
mod containers;
mod intern;
pub mod limits;
pub mod rate;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use std::fmt::Write as _;

use proto::v1::{NodeReport, Usage};
use support::process::family_values;
use tokio::sync::watch;

use crate::api::{ContainerUsage, NodeUsage, PodUsage, selector::LabelSelector, view};
use containers::{ContainerId, Containers};
use intern::{Interner, Labels};
use rate::{Outcome, Point, Series};

/// Why a report was refused. Nothing of a refused report is applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Reject {
    #[error("report has no node name")]
    NoNode,
    /// The name, escaped and cut (see [`crate::untrusted::shown`]).
    #[error(
        "node name \"{0}\" is not a valid Kubernetes node name (a lowercase RFC 1123 subdomain)"
    )]
    BadNodeName(String),
    #[error("sample time {0} ns is before 1970 or not set")]
    NoTime(i64),
    #[error(
        "sample time is {ahead:?} ahead of this aggregator's clock (more than {limit:?}); check the node's clock"
    )]
    Future { ahead: Duration, limit: Duration },
    #[error(
        "sample time is {behind:?} behind this aggregator's clock (more than {limit:?}); check the node's clock"
    )]
    Past { behind: Duration, limit: Duration },
    #[error("node working set of {bytes} bytes is more than any machine has ({limit} bytes)")]
    AbsurdMemory { bytes: u64, limit: u64 },
    #[error(
        "node working set of {bytes} bytes is more than the node's memory capacity ({capacity} bytes)"
    )]
    OverCapacity { bytes: u64, capacity: u64 },
    #[error("report has {count} pods, more than the limit of {limit}")]
    TooManyPods { count: usize, limit: usize },
    #[error("report has no node usage")]
    NoUsage,
    #[error(
        "a read time of {read} ns is after the report's sample time {sample} ns or older than the oldest sample time taken: readings cannot postdate their report"
    )]
    ReadTime { read: i64, sample: i64 },
    /// Labels or names beyond Kubernetes' own limits, or too many of them.
    #[error("report metadata: {0}")]
    Metadata(#[from] limits::Problem),
    /// Samples of the wrong shape or number.
    #[error("report samples: {0}")]
    Samples(limits::Problem),
    /// A report without metadata for a node this store has none of: it was
    /// on a refused report, or the node was evicted while its stream stayed
    /// open. Only a new stream (whose first report carries it) mends that.
    #[error("no metadata known for node {0:?}: reconnect, the first report of a stream carries it")]
    NoMetadata(String),
}

/// More memory than any one machine has (64 TiB): a working set beyond it is
/// corrupt or a lie.
pub const MAX_MEMORY_BYTES: u64 = 64 << 40;

/// How much a container may seem to exceed its node within one report (the
/// two are read a few microseconds apart): CPU by this fraction of the node's
/// rate plus [`CONTAINER_SLACK_NANOCORES`], memory by this fraction of the
/// node's working set plus [`CONTAINER_SLACK_BYTES`].
const CONTAINER_SLACK: f64 = 0.05;
const CONTAINER_SLACK_NANOCORES: u64 = 50_000_000;
const CONTAINER_SLACK_BYTES: u64 = 64 << 20;

impl Reject {
    /// Every reason, as [`Reject::reason`] names them.
    pub const REASONS: [&'static str; 13] = [
        "no_node",
        "bad_node_name",
        "no_time",
        "future",
        "past",
        "absurd_memory",
        "too_many_pods",
        "no_usage",
        "read_time",
        "metadata",
        "samples",
        "no_metadata",
        "over_capacity",
    ];

    /// A short name of the cause, for metrics and one log line per cause.
    pub fn reason(&self) -> &'static str {
        Self::REASONS[self.index()]
    }

    /// Where [`Reject::reason`] is in [`Reject::REASONS`].
    pub fn index(&self) -> usize {
        match self {
            Reject::NoNode => 0,
            Reject::BadNodeName(_) => 1,
            Reject::NoTime(_) => 2,
            Reject::Future { .. } => 3,
            Reject::Past { .. } => 4,
            Reject::AbsurdMemory { .. } => 5,
            Reject::TooManyPods { .. } => 6,
            Reject::NoUsage => 7,
            Reject::ReadTime { .. } => 8,
            Reject::Metadata(_) => 9,
            Reject::Samples(_) => 10,
            Reject::NoMetadata(_) => 11,
            Reject::OverCapacity { .. } => 12,
        }
    }
}

/// Store limits and policies.
#[derive(Clone, Debug)]
pub struct Config {
    /// How far ahead of our clock a sample may be (node clock skew).
    pub max_future: Duration,
    /// How far behind it (skew, and the kubelet source's older readings).
    pub max_past: Duration,
    /// Most pods one report may carry (samples, and pods in metadata).
    pub max_pods: usize,
    /// Label and container counts per object.
    pub limits: limits::Limits,
    /// Only nodes whose labels match are kept and served, with their pods
    /// (`--node-selector`, as metrics-server scrapes only matching nodes).
    /// Other nodes' agents may stream; their reports are taken and dropped.
    pub node_selector: LabelSelector,
    /// How long a node's metrics are served after its last report.
    pub freshness: Freshness,
    /// Where nodes whose pods need their binding checked are sent (see
    /// [`Store::record_bindings`]); `None`: every pod an agent reports is
    /// taken as bound to its node (development, tests).
    pub bindings: Option<tokio::sync::mpsc::UnboundedSender<Arc<str>>>,
}

/// A node's metrics (and its pods') are served only while its last report
/// is at most `windows` of its own report intervals old, and never less
/// than `at_least`: an agent that stopped (its node lost power, its network
/// split) leaves a gap rather than numbers that no longer hold, as
/// metrics-server drops a node whose scrape failed. The node is forgotten
/// later (`--node-eviction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Freshness {
    pub windows: u32,
    pub at_least: Duration,
}

impl Default for Freshness {
    /// Three reports missed: 10 s for agents reporting every second, 30 s
    /// for one whose source is the kubelet (every 10 s).
    fn default() -> Self {
        Self {
            windows: 3,
            at_least: Duration::from_secs(10),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_future: Duration::from_secs(30),
            max_past: Duration::from_secs(120),
            max_pods: 2000,
            limits: limits::Limits::default(),
            node_selector: LabelSelector::everything(),
            freshness: Freshness::default(),
            bindings: None,
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
    /// Reports refused for metadata over the limits (also in `rejected`).
    pub bad_metadata: AtomicU64,
    /// Refused reports by [`Reject::reason`] (in `rejected` too).
    pub rejected_by: [AtomicU64; Reject::REASONS.len()],
    /// Container samples dropped for claiming more than their node used.
    pub over_node: AtomicU64,
    /// Node and container samples dropped for a CPU rate beyond the node's
    /// capacity.
    pub over_capacity: AtomicU64,
    /// Pods an agent reported that kube-apiserver does not bind to its node.
    pub refused_pods: AtomicU64,
    /// Nodes whose series all restarted: a new agent process or CPU source.
    pub restarts: AtomicU64,
}

impl Stats {
    /// Prometheus text of these counters (appended to `/metrics`).
    pub fn render(&self, out: &mut String) {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        family_values(
            out,
            "nodepulse_store_reports_total",
            "counter",
            "Agent reports by outcome (a rejected report changes nothing).",
            [
                ("{outcome=\"applied\"}", n(&self.reports)),
                ("{outcome=\"rejected\"}", n(&self.rejected)),
            ],
        );
        family_values(
            out,
            "nodepulse_store_rejected_metadata_total",
            "counter",
            "Reports rejected for names or labels over the limits.",
            [("", n(&self.bad_metadata))],
        );
        family_values(
            out,
            "nodepulse_store_samples_total",
            "counter",
            "Counter samples not taken as a new point, by reason.",
            [
                ("{reason=\"reset\"}", n(&self.resets)),
                ("{reason=\"absurd\"}", n(&self.absurd)),
                ("{reason=\"stale\"}", n(&self.stale)),
                ("{reason=\"too_soon\"}", n(&self.too_soon)),
                ("{reason=\"duplicate\"}", n(&self.duplicates)),
            ],
        );
        family_values(
            out,
            "nodepulse_store_evicted_nodes_total",
            "counter",
            "Nodes forgotten after they stopped reporting.",
            [("", n(&self.evicted_nodes))],
        );
        family_values(
            out,
            "nodepulse_store_counter_restarts_total",
            "counter",
            "Nodes whose series all restarted: a new agent process or CPU source.",
            [("", n(&self.restarts))],
        );
        family_values(
            out,
            "nodepulse_store_samples_over_node_total",
            "counter",
            "Container samples dropped for claiming more CPU or memory than their node reported.",
            [("", n(&self.over_node))],
        );
        family_values(
            out,
            "nodepulse_store_samples_over_capacity_total",
            "counter",
            "Node and container samples dropped for a CPU rate beyond the node's capacity.",
            [("", n(&self.over_capacity))],
        );
        family_values(
            out,
            "nodepulse_store_refused_pods_total",
            "counter",
            "Pods an agent reported that kube-apiserver does not bind to that node (never served).",
            [("", n(&self.refused_pods))],
        );
        family_values(
            out,
            "nodepulse_store_rejected_reports_total",
            "counter",
            "Refused reports by reason.",
            Reject::REASONS
                .iter()
                .zip(&self.rejected_by)
                .map(|(reason, c)| (format!("{{reason=\"{reason}\"}}"), n(c))),
        );
    }
}

/// Whether a pod its node's agent reports is bound to that node, as
/// kube-apiserver says (see [`Store::record_bindings`]). Only bound pods are
/// served or indexed by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// Not yet checked, or not yet in kube-apiserver's answer (checked again,
    /// at most [`BINDING_ATTEMPTS`] times).
    Pending {
        attempts: u8,
    },
    Bound,
    /// Bound to another node, or not at all: never served.
    Refused,
}

/// Who vouches for a report's pods and for its node's capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The node's agent: its pods are served once kube-apiserver confirms
    /// them bound to the node (see [`Store::record_bindings`]), and the
    /// node's capacity is read then.
    Agent,
    /// The aggregator's own watches: the node's pods as kube-apiserver lists
    /// them by `spec.nodeName` (bound by construction, nothing to ask) and
    /// its Node object's capacity, when it has one.
    Watched(Option<Capacity>),
}

/// What a node has, as its Node object's `status.capacity` says: no report
/// of it or its containers may claim more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub cpu_nanocores: u64,
    pub memory_bytes: u64,
}

impl Capacity {
    /// The fastest rate a container or the node may be served at: the node's
    /// CPUs, plus the slack a report's readings have.
    fn cpu_ceiling(&self) -> u64 {
        (self.cpu_nanocores as f64 * (1.0 + CONTAINER_SLACK)) as u64 + CONTAINER_SLACK_NANOCORES
    }

    fn memory_ceiling(&self) -> u64 {
        (self.memory_bytes as f64 * (1.0 + CONTAINER_SLACK)) as u64 + CONTAINER_SLACK_BYTES
    }
}

/// What [`Store::record_bindings`] made of an answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Pods of the node are still pending: ask again a little later.
    pub pending: bool,
    /// Refused now: `(namespace/name, uid)`.
    pub refused: Vec<(String, String)>,
}

/// How many answers from kube-apiserver may leave out a pod an agent
/// reports before the claim is refused (its watch cache may lag the agent's
/// own watch by a moment).
pub const BINDING_ATTEMPTS: u8 = 5;

/// A pod as its node's agent described it. Strings that repeat across the
/// fleet (namespaces, label keys and values, container names) are shared.
#[derive(Debug)]
struct PodMeta {
    uid: Box<str>,
    namespace: Arc<str>,
    name: Arc<str>,
    labels: Labels,
    running: bool,
    /// Whether kube-apiserver says the pod is bound to this node.
    binding: Binding,
    /// (container id, container name)
    containers: Box<[(ContainerId, Arc<str>)]>,
}

#[derive(Debug)]
struct NodeState {
    /// Metadata received: the node's labels, its pods' names.
    known: bool,
    /// Its labels match the store's node selector (as of its metadata):
    /// otherwise nothing of it is kept or served.
    selected: bool,
    labels: Labels,
    pods: Vec<PodMeta>,
    usage: Option<Series>,
    containers: Containers,
    /// The origin of the counters in `usage` and `containers`: the agent's
    /// `(agent_epoch, cpu_source)`; `None` until the first report.
    counters: Option<(u64, i32)>,
    /// Those counters are its agent's (not a kubelet's, read by any replica).
    by_agent: bool,
    /// The stream that brought those counters has ended: they are served
    /// until stale, but another origin need not wait for that.
    origin_ended: bool,
    last_report: Instant,
    /// Counted in [`Store::with_data`].
    counted: bool,
    /// Removed from the store; a report that raced the eviction goes to a
    /// new entry instead.
    evicted: bool,
    /// Handed to the binding check and not yet answered.
    binding_queued: bool,
    /// From the node's Node object, once the binding check has read it.
    capacity: Option<Capacity>,
}

impl NodeState {
    fn new() -> Self {
        Self {
            known: false,
            selected: false,
            labels: Labels::default(),
            pods: Vec::new(),
            usage: None,
            containers: Containers::default(),
            counters: None,
            by_agent: false,
            origin_ended: false,
            last_report: Instant::now(),
            counted: false,
            evicted: false,
            binding_queued: false,
            capacity: None,
        }
    }

    /// Whether its metrics are recent enough to serve (see [`Freshness`]).
    fn fresh(&self, f: &Freshness) -> bool {
        let window = self
            .usage
            .as_ref()
            .and_then(Series::window)
            .unwrap_or_default();
        self.last_report.elapsed() <= window.saturating_mul(f.windows).max(f.at_least)
    }

    /// Forgets every counter of the node: they are from another origin
    /// (`counters`), or the node is not selected.
    fn restart_series(&mut self) {
        self.usage = None;
        self.containers = Containers::default();
    }

    /// What the node-level metrics API would serve for this node.
    fn has_data(&self) -> bool {
        self.known && self.selected && self.usage.as_ref().and_then(Series::rate).is_some()
    }
}

type Shared = Arc<Mutex<NodeState>>;
/// namespace → pod name → node.
type PodIndex = HashMap<Arc<str>, HashMap<Arc<str>, Arc<str>>>;

/// The store. Cheap to share behind an `Arc`.
pub struct Store {
    config: Config,
    nodes: RwLock<HashMap<Arc<str>, Shared>>,
    pods: RwLock<PodIndex>,
    strings: Interner,
    /// Nodes that have metrics (`/readyz` asks on every probe).
    with_data: AtomicUsize,
    stats: Stats,
    /// Bumped after every applied report, for watchers.
    changed: watch::Sender<u64>,
    /// The shortest interval between a node's last two points, as of the
    /// last sweep ([`Store::evict`]); 0 while no node has two.
    shortest_interval_nanos: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a node's lock cannot leave a series half-written
    // (every update is a whole-value assignment), so keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

/// `u` as a point: at its own read time where it has one (checked by
/// [`Store::check`] to lie in (0, report time]), else at the report's `time`.
fn point(time: SystemTime, u: &Usage) -> Point {
    Point {
        time: match u.read_unix_nanos {
            Some(n) => SystemTime::UNIX_EPOCH + Duration::from_nanos(n.unsigned_abs()),
            None => time,
        },
        cpu_ns: u.cpu_ns,
        memory_bytes: u.memory_working_set_bytes,
        swap_bytes: u.swap_bytes,
    }
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
            strings: Interner::default(),
            with_data: AtomicUsize::new(0),
            stats: Stats::default(),
            changed: watch::channel(0).0,
            shortest_interval_nanos: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Prometheus text of what the store holds now: nodes served and
    /// silent, pods served, and the age of each node's last report.
    pub fn render_gauges(&self, out: &mut String) {
        let nodes: Vec<(Arc<str>, Shared)> = read(&self.nodes)
            .iter()
            .map(|(name, node)| (Arc::clone(name), Arc::clone(node)))
            .collect();
        let (mut fresh, mut pods) = (0u64, 0u64);
        let mut ages = String::new();
        for (name, node) in &nodes {
            let node = lock(node);
            if node.fresh(&self.config.freshness) {
                fresh += 1;
                pods += node.pods.len() as u64;
            }
            // Node names passed `limits::node_name`: nothing to escape.
            let _ = writeln!(
                ages,
                "nodepulse_store_node_report_age_seconds{{node=\"{name}\"}} {:.3}",
                node.last_report.elapsed().as_secs_f64()
            );
        }
        let _ = write!(
            out,
            "# HELP nodepulse_store_nodes Nodes held, by whether their metrics are served (fresh) or their agent went silent (stale).\n\
             # TYPE nodepulse_store_nodes gauge\n\
             nodepulse_store_nodes{{state=\"fresh\"}} {fresh}\n\
             nodepulse_store_nodes{{state=\"stale\"}} {}\n\
             # HELP nodepulse_store_pods Pods served (those of fresh nodes).\n\
             # TYPE nodepulse_store_pods gauge\n\
             nodepulse_store_pods {pods}\n\
             # HELP nodepulse_store_node_report_age_seconds Seconds since each node's agent last reported.\n\
             # TYPE nodepulse_store_node_report_age_seconds gauge\n\
             {ages}",
            nodes.len() as u64 - fresh,
        );
    }

    /// How often the most frequently reporting node reports: the shortest
    /// interval between a node's last two points, as of the last sweep.
    /// `None` until a node has two points.
    pub fn shortest_interval(&self) -> Option<Duration> {
        match self.shortest_interval_nanos.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    /// A receiver that sees a new value after every applied report.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Applies one report of `node`: metadata (when present) replaces the node's
    /// labels and pod names; every series takes its new point.
    pub fn apply(&self, report: &NodeReport, now: SystemTime) -> Result<(), Reject> {
        self.apply_from(report, now, Source::Agent)
    }

    /// [`Store::apply`], with the pods and capacity vouched for by `source`.
    pub fn apply_from(
        &self,
        report: &NodeReport,
        now: SystemTime,
        source: Source,
    ) -> Result<(), Reject> {
        let result = self.apply_inner(report, now, source);
        let counter = match &result {
            Ok(()) => &self.stats.reports,
            Err(reject) => {
                if let Reject::Metadata(_) = reject {
                    self.stats.bad_metadata.fetch_add(1, Ordering::Relaxed);
                }
                self.stats.rejected_by[reject.index()].fetch_add(1, Ordering::Relaxed);
                &self.stats.rejected
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if result.is_ok() {
            self.changed.send_modify(|g| *g = g.wrapping_add(1));
        }
        result
    }

    /// Everything that can refuse a report, before anything is changed.
    fn check(&self, report: &NodeReport, now: SystemTime) -> Result<(SystemTime, Usage), Reject> {
        if report.node.is_empty() {
            return Err(Reject::NoNode);
        }
        if !limits::node_name(&report.node) {
            return Err(Reject::BadNodeName(crate::untrusted::shown(&report.node)));
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
        if let Ok(behind) = now.duration_since(time)
            && behind > self.config.max_past
        {
            return Err(Reject::Past {
                behind,
                limit: self.config.max_past,
            });
        }
        let pods = report
            .pods
            .len()
            .max(report.metadata.as_ref().map_or(0, |m| m.pods.len()));
        if pods > self.config.max_pods {
            return Err(Reject::TooManyPods {
                count: pods,
                limit: self.config.max_pods,
            });
        }
        limits::check_samples(&report.pods, &self.config.limits).map_err(Reject::Samples)?;
        let usage = report.node_usage.ok_or(Reject::NoUsage)?;
        if usage.memory_working_set_bytes > MAX_MEMORY_BYTES {
            return Err(Reject::AbsurdMemory {
                bytes: usage.memory_working_set_bytes,
                limit: MAX_MEMORY_BYTES,
            });
        }
        let sample = report.sample_unix_nanos;
        let read_times = std::iter::once(&usage)
            .chain(
                report
                    .pods
                    .iter()
                    .flat_map(|p| &p.containers)
                    .filter_map(|c| c.usage.as_ref()),
            )
            .filter_map(|u| u.read_unix_nanos);
        let oldest = sample
            .saturating_sub(i64::try_from(self.config.max_past.as_nanos()).unwrap_or(i64::MAX));
        for read in read_times {
            if read <= 0 || read > sample || read < oldest {
                return Err(Reject::ReadTime { read, sample });
            }
        }
        if let Some(meta) = &report.metadata {
            limits::check(&report.node, meta, &self.config.limits)?;
        }
        Ok((time, usage))
    }

    fn apply_inner(
        &self,
        report: &NodeReport,
        now: SystemTime,
        source: Source,
    ) -> Result<(), Reject> {
        let (time, usage) = self.check(report, now)?;
        // Refused before an entry is made for it (checked again under the
        // node's lock: an entry can exist without metadata).
        if report.metadata.is_none() && !read(&self.nodes).contains_key(report.node.as_str()) {
            return Err(Reject::NoMetadata(report.node.clone()));
        }
        let (name, node) = loop {
            let (name, node) = self.node_entry(&report.node);
            if !lock(&node).evicted {
                break (name, node);
            }
        };
        let mut state = lock(&node);
        if report.metadata.is_none() && !state.known {
            // Nothing applied: without names its series could never be
            // served, and the stream would never say them again.
            return Err(Reject::NoMetadata(report.node.clone()));
        }
        if let Source::Watched(Some(capacity)) = source
            && state.capacity != Some(capacity)
        {
            self.hold_to_capacity(&mut state, capacity);
        }
        if let Some(cap) = state.capacity
            && usage.memory_working_set_bytes > cap.memory_ceiling()
        {
            return Err(Reject::OverCapacity {
                bytes: usage.memory_working_set_bytes,
                capacity: cap.memory_bytes,
            });
        }
        state.last_report = Instant::now();
        if let Some(meta) = &report.metadata {
            self.replace_metadata(&name, &mut state, meta, source);
        }
        if !state.selected {
            // Kept only as labels, to notice when they come to match.
            state.restart_series();
            state.counters = None;
            self.recount(&mut state);
            return Ok(());
        }
        let counters = (report.agent_epoch, report.cpu_source);
        state.by_agent = source == Source::Agent;
        state.origin_ended = false;
        if state
            .counters
            .replace(counters)
            .is_some_and(|c| c != counters)
        {
            // Another origin: the new counters say nothing about the old.
            state.restart_series();
            self.stats.restarts.fetch_add(1, Ordering::Relaxed);
        }
        self.push(&mut state.usage, point(time, &usage), 0);
        let capacity = state.capacity;
        if let Some(cap) = capacity
            && state
                .usage
                .as_ref()
                .and_then(Series::rate)
                .is_some_and(|r| r.cpu_nanocores > cap.cpu_ceiling())
        {
            // More CPU than the node has: the point starts the series again.
            state.usage = Some(Series::new(point(time, &usage), 0));
            self.stats.over_capacity.fetch_add(1, Ordering::Relaxed);
        }
        // What no container of this node can exceed (see CONTAINER_SLACK):
        // the node's own figures in this report, and its capacity.
        let node_rate = state.usage.as_ref().and_then(Series::rate);
        let node_ceiling = node_rate.map(|r| {
            (r.cpu_nanocores as f64 * (1.0 + CONTAINER_SLACK)) as u64 + CONTAINER_SLACK_NANOCORES
        });
        let capacity_ceiling = capacity.map(|c| c.cpu_ceiling());
        let memory_ceiling = (usage.memory_working_set_bytes as f64 * (1.0 + CONTAINER_SLACK))
            as u64
            + CONTAINER_SLACK_BYTES;

        // Marks every container in the report; the rest are gone (every
        // report lists all of the node's containers). No allocation unless
        // a container is new.
        let generation = state.containers.next_generation();
        for c in report.pods.iter().flat_map(|p| &p.containers) {
            let Some(u) = &c.usage else { continue };
            let p = point(time, u);
            // Not kept: the series' next sane point starts it again. The
            // node's own figure may sit at its capacity's ceiling, so the
            // slack above it may not pass that.
            if capacity.is_some_and(|c| p.memory_bytes > c.memory_ceiling()) {
                self.stats.over_capacity.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if p.memory_bytes > memory_ceiling {
                self.stats.over_node.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match state.containers.get_mut(&c.id) {
                Some(slot) if slot.seen == generation => {
                    self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                Some(slot) => {
                    slot.seen = generation;
                    let outcome = slot.series.push(p, c.start_unix_nanos);
                    self.count(outcome);
                    let rate = slot.series.rate().map(|r| r.cpu_nanocores);
                    let beyond = |ceiling: Option<u64>| {
                        rate.zip(ceiling).is_some_and(|(r, ceiling)| r > ceiling)
                    };
                    let over = if beyond(capacity_ceiling) {
                        Some(&self.stats.over_capacity)
                    } else if beyond(node_ceiling) {
                        Some(&self.stats.over_node)
                    } else {
                        None
                    };
                    if let Some(counter) = over {
                        slot.series = Series::new(p, c.start_unix_nanos);
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => state
                    .containers
                    .insert(&c.id, Series::new(p, c.start_unix_nanos)),
            }
        }
        state.containers.retain_seen();

        self.recount(&mut state);
        Ok(())
    }

    /// Keeps [`Store::with_data`] in step with whether `state` has data.
    fn recount(&self, state: &mut NodeState) {
        let has = state.has_data();
        if has != state.counted {
            state.counted = has;
            if has {
                self.with_data.fetch_add(1, Ordering::Relaxed);
            } else {
                self.with_data.fetch_sub(1, Ordering::Relaxed);
            }
        }
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

    fn node_entry(&self, name: &str) -> (Arc<str>, Shared) {
        if let Some((k, n)) = read(&self.nodes).get_key_value(name) {
            return (Arc::clone(k), Arc::clone(n));
        }
        let mut nodes = write(&self.nodes);
        if let Some((k, n)) = nodes.get_key_value(name) {
            return (Arc::clone(k), Arc::clone(n));
        }
        let key: Arc<str> = Arc::from(name);
        let node = Arc::new(Mutex::new(NodeState::new()));
        nodes.insert(Arc::clone(&key), Arc::clone(&node));
        (key, node)
    }

    fn replace_metadata(
        &self,
        node: &Arc<str>,
        state: &mut NodeState,
        meta: &proto::v1::NodeMetadata,
        source: Source,
    ) {
        state.known = true;
        // Only an agent's claims are checked: pods the aggregator watched
        // itself were selected by their `spec.nodeName`. A checked pod keeps
        // what was found of its binding (a UID is bound once, to one node,
        // for good).
        let checked = source == Source::Agent && self.config.bindings.is_some();
        let before: HashMap<&str, Binding> = if checked {
            state.pods.iter().map(|p| (&*p.uid, p.binding)).collect()
        } else {
            HashMap::new()
        };
        let mut pods = Vec::with_capacity(meta.pods.len());
        {
            let mut strings = self.strings.lock();
            state.labels = strings.labels(&meta.labels);
            state.selected = self.config.node_selector.matches(&state.labels);
            // A node not selected keeps no pods.
            let listed: &[_] = if state.selected { &meta.pods } else { &[] };
            for p in listed {
                pods.push(PodMeta {
                    uid: p.uid.as_str().into(),
                    namespace: strings.get(&p.namespace),
                    name: p.name.as_str().into(),
                    labels: strings.labels(&p.labels),
                    running: p.running,
                    binding: if checked {
                        before
                            .get(p.uid.as_str())
                            .copied()
                            .unwrap_or(Binding::Pending { attempts: 0 })
                    } else {
                        Binding::Bound
                    },
                    containers: p
                        .containers
                        .iter()
                        .map(|c| (ContainerId::new(&c.id), strings.get(&c.name)))
                        .collect(),
                });
            }
        }
        drop(before);
        let old = std::mem::replace(&mut state.pods, pods);
        self.unindex(node, &old);
        self.index(node, &state.pods);
        self.queue_binding_check(node, state);
    }

    /// Forgets `pods` of `node` in the name index.
    fn unindex(&self, node: &Arc<str>, pods: &[PodMeta]) {
        let mut index = write(&self.pods);
        for p in pods {
            if let Some(names) = index.get_mut(&*p.namespace) {
                if names.get(&*p.name).is_some_and(|n| n == node) {
                    names.remove(&*p.name);
                }
                if names.is_empty() {
                    index.remove(&*p.namespace);
                }
            }
        }
    }

    /// Indexes the bound ones of `pods` of `node` by name. Only a pod
    /// kube-apiserver binds to `node` may take its name: a node cannot
    /// stand in for another node's pod.
    fn index(&self, node: &Arc<str>, pods: &[PodMeta]) {
        let mut index = write(&self.pods);
        for p in pods.iter().filter(|p| p.binding == Binding::Bound) {
            index
                .entry(Arc::clone(&p.namespace))
                .or_default()
                .insert(Arc::clone(&p.name), Arc::clone(node));
        }
    }

    /// Hands `node` to the binding check when a pod of it is pending and it
    /// is not already there.
    fn queue_binding_check(&self, node: &Arc<str>, state: &mut NodeState) {
        let Some(tx) = &self.config.bindings else {
            return;
        };
        let pending = state
            .pods
            .iter()
            .any(|p| matches!(p.binding, Binding::Pending { .. }));
        if pending && !state.binding_queued && tx.send(Arc::clone(node)).is_ok() {
            state.binding_queued = true;
        }
    }

    /// How long since `node` last reported, from any origin; `None` for a
    /// node the store does not hold.
    pub fn silent_for(&self, node: &str) -> Option<Duration> {
        read(&self.nodes)
            .get(node)
            .map(|n| lock(n).last_report.elapsed())
    }

    /// Whether `node` is served from counters of another origin than
    /// `epoch` that are still fresh: its agent reports (or another source
    /// does), and a report of `epoch` would start its series over.
    pub fn fed_elsewhere(&self, node: &str, epoch: u64) -> bool {
        read(&self.nodes).get(node).is_some_and(|n| {
            let n = lock(n);
            n.counters.is_some_and(|(e, _)| e != epoch)
                && !n.origin_ended
                && n.fresh(&self.config.freshness)
        })
    }

    /// The stream that brought `node`'s counters of `epoch` has ended (a
    /// replica that read its kubelet stopped forwarding it): they no longer
    /// stand in another origin's way ([`Store::fed_elsewhere`]), though they
    /// are served until the next report or until stale.
    pub fn origin_ended(&self, node: &str, epoch: u64) {
        if let Some(n) = read(&self.nodes).get(node) {
            let mut n = lock(n);
            if n.counters.is_some_and(|(e, _)| e == epoch) {
                n.origin_ended = true;
            }
        }
    }

    /// Whether `node` is served from its agent's counters, still fresh.
    pub fn agent_reports(&self, node: &str) -> bool {
        read(&self.nodes).get(node).is_some_and(|n| {
            let n = lock(n);
            n.by_agent && n.counters.is_some() && n.fresh(&self.config.freshness)
        })
    }

    /// Whether `node`'s capacity is known (see [`Store::record_capacity`]).
    pub fn has_capacity(&self, node: &str) -> bool {
        read(&self.nodes)
            .get(node)
            .is_some_and(|n| lock(n).capacity.is_some())
    }

    /// `node`'s capacity, from its Node object: from now on no report of it
    /// may claim more memory, and no rate more CPU.
    pub fn record_capacity(&self, node: &str, capacity: Capacity) {
        let Some(n) = read(&self.nodes).get(node).cloned() else {
            return;
        };
        self.hold_to_capacity(&mut lock(&n), capacity);
    }

    fn hold_to_capacity(&self, state: &mut NodeState, capacity: Capacity) {
        state.capacity = Some(capacity);
        // Rates recorded before the capacity was known are held to it too:
        // one beyond it keeps only its latest point.
        let ceiling = capacity.cpu_ceiling();
        for series in state.usage.iter_mut().chain(state.containers.series_mut()) {
            if series.rate().is_some_and(|r| r.cpu_nanocores > ceiling) {
                series.prev = None;
                self.stats.over_capacity.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.recount(state);
    }

    /// The binding check's answer for `node`: the UIDs of the pods
    /// kube-apiserver binds to it, or `None` when it could not be asked (the
    /// pods stay pending). A pending pod in the answer is bound from now on;
    /// one left out of [`BINDING_ATTEMPTS`] answers is refused, counted, and
    /// never served. Says whether the node has pods still pending (the
    /// caller asks again a little later) and which were refused now.
    pub fn record_bindings(&self, node: &str, bound: Option<&HashSet<String>>) -> Recorded {
        let Some((name, n)) = read(&self.nodes)
            .get_key_value(node)
            .map(|(k, v)| (Arc::clone(k), Arc::clone(v)))
        else {
            return Recorded::default();
        };
        let mut state = lock(&n);
        let mut newly_bound = false;
        let mut refused = Vec::new();
        if let Some(bound) = bound {
            for p in &mut state.pods {
                let Binding::Pending { attempts } = p.binding else {
                    continue;
                };
                p.binding = if bound.contains(&*p.uid) {
                    newly_bound = true;
                    Binding::Bound
                } else if attempts + 1 >= BINDING_ATTEMPTS {
                    refused.push((format!("{}/{}", p.namespace, p.name), p.uid.to_string()));
                    Binding::Refused
                } else {
                    Binding::Pending {
                        attempts: attempts + 1,
                    }
                };
            }
        }
        if newly_bound {
            self.index(&name, &state.pods);
        }
        self.stats
            .refused_pods
            .fetch_add(refused.len() as u64, Ordering::Relaxed);
        let pending = state
            .pods
            .iter()
            .any(|p| matches!(p.binding, Binding::Pending { .. }));
        state.binding_queued = pending;
        Recorded { pending, refused }
    }

    /// Evicts nodes silent for `after`, checking every quarter of it (at
    /// least every second, at most every 15 s, so that the shortest
    /// interval it notes follows the nodes), until `cancel`.
    pub async fn evict_silent(&self, after: Duration, cancel: tokio_util::sync::CancellationToken) {
        let mut every = tokio::time::interval(
            (after / 4).clamp(Duration::from_secs(1), Duration::from_secs(15)),
        );
        loop {
            tokio::select! {
                _ = every.tick() => {
                    let n = self.evict(after);
                    if n > 0 {
                        tracing::info!(nodes = n, ?after, "evicted nodes that stopped reporting");
                    }
                }
                () = cancel.cancelled() => return,
            }
        }
    }

    /// Removes nodes that have not reported for `older_than`; returns how
    /// many. Notes the shortest interval of those kept on the way.
    pub fn evict(&self, older_than: Duration) -> usize {
        let now = Instant::now();
        let mut nodes = write(&self.nodes);
        let mut stale: HashSet<Arc<str>> = HashSet::new();
        let mut shortest: Option<Duration> = None;
        for (name, n) in nodes.iter() {
            let mut state = lock(n);
            if now.duration_since(state.last_report) > older_than {
                state.evicted = true;
                if std::mem::take(&mut state.counted) {
                    self.with_data.fetch_sub(1, Ordering::Relaxed);
                }
                stale.insert(Arc::clone(name));
            } else if let Some(window) = state.usage.as_ref().and_then(Series::window)
                && !window.is_zero()
            {
                shortest = Some(shortest.map_or(window, |s| s.min(window)));
            }
        }
        let nanos = shortest.map_or(0, |s| u64::try_from(s.as_nanos()).unwrap_or(u64::MAX));
        self.shortest_interval_nanos.store(nanos, Ordering::Relaxed);
        nodes.retain(|name, _| !stale.contains(name));
        drop(nodes);
        if !stale.is_empty() {
            write(&self.pods).retain(|_, names| {
                names.retain(|_, node| !stale.contains(node));
                !names.is_empty()
            });
        }
        // Strings no pod or node uses any more (evicted, or replaced by
        // newer metadata).
        self.strings.sweep();
        self.stats
            .evicted_nodes
            .fetch_add(stale.len() as u64, Ordering::Relaxed);
        stale.len()
    }

    fn snapshot_nodes(&self) -> Vec<(Arc<str>, Shared)> {
        read(&self.nodes)
            .iter()
            .map(|(k, v)| (Arc::clone(k), Arc::clone(v)))
            .collect()
    }

    /// Running pods with complete metrics and the node each runs on, limited
    /// to one node and/or namespace when given.
    pub fn pods_by_node(
        &self,
        node: Option<&str>,
        namespace: Option<&str>,
    ) -> Vec<(Arc<str>, PodUsage)> {
        let nodes = match node {
            // One node: no copy of the whole node table.
            Some(want) => read(&self.nodes)
                .get_key_value(want)
                .map(|(k, v)| (Arc::clone(k), Arc::clone(v)))
                .into_iter()
                .collect(),
            None => self.snapshot_nodes(),
        };
        let mut out = Vec::new();
        for (name, n) in nodes {
            let state = lock(&n);
            out.extend(
                served_pods(&state, namespace, &self.config.freshness)
                    .filter_map(|p| pod_usage(&state, p))
                    .map(|p| (Arc::clone(&name), p)),
            );
        }
        out
    }

    /// The nodes to read for `namespace`'s pods: every node, or for one
    /// namespace (the HPA's and `kubectl top pod -n`'s request) only those
    /// the index says run its pods.
    fn nodes_of(&self, namespace: Option<&str>) -> Vec<(Arc<str>, Shared)> {
        let Some(ns) = namespace else {
            return self.snapshot_nodes();
        };
        let mut names: Vec<Arc<str>> = match read(&self.pods).get(ns) {
            Some(names) => names.values().cloned().collect(),
            None => return Vec::new(),
        };
        names.sort_unstable();
        names.dedup();
        let nodes = read(&self.nodes);
        names
            .iter()
            .filter_map(|name| nodes.get_key_value(name))
            .map(|(k, v)| (Arc::clone(k), Arc::clone(v)))
            .collect()
    }

    /// Names of the nodes known to the store.
    pub fn node_names(&self) -> Vec<String> {
        read(&self.nodes).keys().map(|n| n.to_string()).collect()
    }
}

fn node_usage(name: &Arc<str>, state: &NodeState, f: &Freshness) -> view::Lookup<NodeUsage> {
    if !state.known || !state.selected {
        return view::Lookup::Unknown;
    }
    if !state.fresh(f) {
        return view::Lookup::NoMetrics;
    }
    match state.usage.as_ref().and_then(Series::rate) {
        Some(r) => view::Lookup::Found(NodeUsage {
            name: Arc::clone(name),
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

/// The pods of a node that lists serve: Running, in `namespace` if given,
/// none while the node's metrics are not fresh.
fn served_pods<'s>(
    state: &'s NodeState,
    namespace: Option<&str>,
    f: &Freshness,
) -> impl Iterator<Item = &'s PodMeta> {
    let pods: &[PodMeta] = if state.fresh(f) { &state.pods } else { &[] };
    pods.iter().filter(move |p| {
        p.running && p.binding == Binding::Bound && namespace.is_none_or(|ns| *p.namespace == *ns)
    })
}

/// The rates of a pod's containers when every container in the node's
/// latest report has one (metrics-server's rule: a partial pod would make
/// the HPA undercount), as (index in `pod.containers`, rate) in response
/// order (by name; the sort is stable), into `out`; and the timestamp and
/// window of the earliest. A listed container the latest report did not
/// carry is not running (it exited, waits to restart, or is a finished init
/// container): left out, as the kubelet leaves it out for metrics-server.
fn container_rates(
    state: &NodeState,
    pod: &PodMeta,
    out: &mut Vec<(usize, rate::Rate)>,
) -> Option<(SystemTime, Duration)> {
    out.clear();
    let mut earliest: Option<rate::Rate> = None;
    for (i, (id, _)) in pod.containers.iter().enumerate() {
        let Some(c) = state.containers.get(id) else {
            continue;
        };
        let r = c.series.rate()?;
        if earliest.is_none_or(|e| r.timestamp < e.timestamp) {
            earliest = Some(r);
        }
        out.push((i, r));
    }
    out.sort_by(|a, b| pod.containers[a.0].1.cmp(&pod.containers[b.0].1));
    earliest.map(|e| (e.timestamp, e.window))
}

/// A pod's usage when every container has a rate.
fn pod_usage(state: &NodeState, pod: &PodMeta) -> Option<PodUsage> {
    let mut rates = Vec::with_capacity(pod.containers.len());
    let (timestamp, window) = container_rates(state, pod, &mut rates)?;
    Some(PodUsage {
        namespace: Arc::clone(&pod.namespace),
        name: Arc::clone(&pod.name),
        labels: pod.labels.clone(),
        timestamp,
        window,
        containers: rates
            .iter()
            .map(|&(i, r)| ContainerUsage {
                name: Arc::clone(&pod.containers[i].1),
                cpu_nanocores: r.cpu_nanocores,
                memory_bytes: r.memory_bytes,
                swap_bytes: r.swap_bytes,
            })
            .collect(),
    })
}

/// Hands `visitor` the pods of `nodes` that `pods(namespace)` would return,
/// borrowed: one node locked at a time, nothing copied.
fn visit_nodes(
    nodes: &[(Arc<str>, Shared)],
    namespace: Option<&str>,
    f: &Freshness,
    visitor: &mut dyn view::PodVisitor,
) {
    let mut rates = Vec::new();
    for (_, n) in nodes {
        let state = lock(n);
        for p in served_pods(&state, namespace, f) {
            let Some((timestamp, window)) = container_rates(&state, p, &mut rates) else {
                continue;
            };
            let container = |k: usize| {
                let (i, r) = rates[k];
                view::ContainerRef {
                    name: &p.containers[i].1,
                    cpu_nanocores: r.cpu_nanocores,
                    memory_bytes: r.memory_bytes,
                    swap_bytes: r.swap_bytes,
                }
            };
            view::with_containers(rates.len(), container, |containers| {
                visitor.visit(&view::PodRef {
                    namespace: &p.namespace,
                    name: &p.name,
                    labels: &p.labels,
                    timestamp,
                    window,
                    containers,
                });
            });
        }
    }
}

/// Fewer nodes than this are visited on the calling thread alone.
const PARALLEL_VISIT_MIN_NODES: usize = 64;

impl view::MetricsView for Store {
    fn nodes(&self) -> Vec<NodeUsage> {
        self.snapshot_nodes()
            .iter()
            .filter_map(
                |(name, n)| match node_usage(name, &lock(n), &self.config.freshness) {
                    view::Lookup::Found(u) => Some(u),
                    _ => None,
                },
            )
            .collect()
    }

    fn node(&self, name: &str) -> view::Lookup<NodeUsage> {
        let node = read(&self.nodes)
            .get_key_value(name)
            .map(|(k, v)| (Arc::clone(k), Arc::clone(v)));
        match node {
            Some((name, n)) => node_usage(&name, &lock(&n), &self.config.freshness),
            None => view::Lookup::Unknown,
        }
    }

    fn pods(&self, namespace: Option<&str>) -> Vec<PodUsage> {
        let mut out = Vec::new();
        for (_, n) in self.nodes_of(namespace) {
            let state = lock(&n);
            out.extend(
                served_pods(&state, namespace, &self.config.freshness)
                    .filter_map(|p| pod_usage(&state, p)),
            );
        }
        out
    }

    /// Each visitor gets an equal share of the nodes, on its own thread
    /// (the first on the calling one) when there are many nodes.
    fn visit_pods(&self, namespace: Option<&str>, visitors: &mut [&mut dyn view::PodVisitor]) {
        let nodes = self.nodes_of(namespace);
        let fresh = &self.config.freshness;
        match visitors {
            [] => {}
            [first, ..] if nodes.len() < PARALLEL_VISIT_MIN_NODES => {
                visit_nodes(&nodes, namespace, fresh, *first)
            }
            _ => {
                let per = nodes.len().div_ceil(visitors.len());
                std::thread::scope(|scope| {
                    let mut shares = visitors.iter_mut().zip(nodes.chunks(per));
                    let own = shares.next();
                    for (visitor, share) in shares {
                        scope.spawn(move || visit_nodes(share, namespace, fresh, *visitor));
                    }
                    if let Some((visitor, share)) = own {
                        visit_nodes(share, namespace, fresh, *visitor);
                    }
                });
            }
        }
    }

    fn pod(&self, namespace: &str, name: &str) -> view::Lookup<PodUsage> {
        let Some(node) = read(&self.pods)
            .get(namespace)
            .and_then(|names| names.get(name))
            .cloned()
        else {
            return view::Lookup::Unknown;
        };
        let Some(n) = read(&self.nodes).get(&node).cloned() else {
            return view::Lookup::Unknown;
        };
        let state = lock(&n);
        let pod = state.pods.iter().find(|p| {
            *p.namespace == *namespace && *p.name == *name && p.binding == Binding::Bound
        });
        match pod {
            Some(p) if p.running && !state.fresh(&self.config.freshness) => view::Lookup::NoMetrics,
            Some(p) if p.running => match pod_usage(&state, p) {
                Some(u) => view::Lookup::Found(u),
                None => view::Lookup::NoMetrics,
            },
            _ => view::Lookup::Unknown,
        }
    }

    /// O(1): a count kept as reports are applied and nodes evicted.
    fn has_data(&self) -> bool {
        self.with_data.load(Ordering::Relaxed) > 0
    }
}

#[cfg(test)]
mod tests;
