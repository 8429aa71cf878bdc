//! One sample of the node: every pod's containers with cumulative CPU time,
//! memory working set and swap, and the node's totals.
//!
//! CPU comes, where the pods live in the v2 tree (eBPF results are keyed by
//! v2 cgroup id), from the kernel's own per-cgroup accounting read by a BPF
//! cgroup iterator (Linux 6.1), else from the context-switch program, else
//! from cgroupfs counters. Why a source was passed over is logged once (the
//! reason for cgroupfs is kept in [`Collector::fallback_reason`]); the active
//! source is in every [`Snapshot`].
use std::{
    collections::BTreeMap,
    fmt, io,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use proto::v1::{NodeMetadata, PodMetadata};
use tracing::{info, warn};

use crate::{
    cgroup::{
        self, CounterFiles, Hierarchy, Identity, QosClass, Runtime, Tree, TreeWatch, stats::Memory,
    },
    ebpf::{self, CpuAccounting, Kernel, iter::CgroupTotals},
};

mod iterator;
mod source;
mod switch;

use iterator::CgroupIterator;
use source::{Cgroupfs, Source, Walk};
use switch::Switch;

/// Errors that stop a collection (a single unreadable container does not).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Cgroup(#[from] cgroup::Error),
    #[error("--cpu-source={choice} was required but is unavailable: {reason}")]
    SourceRequired {
        choice: &'static str,
        reason: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Failed reads of the cgroup iterator in a row after which it is given up
/// for cgroupfs.
const ITERATOR_FAILURES: u32 = 3;

/// Where CPU time comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CpuSourceChoice {
    /// The cgroup iterator, else the switch program, else cgroupfs: the
    /// first that loads and identifies pods.
    Auto,
    /// An eBPF source (the iterator, else the switch program) or fail.
    Ebpf,
    /// The cgroup iterator (Linux 6.1) or fail.
    Iterator,
    /// The context-switch program or fail.
    Switch,
    /// cgroupfs counters only.
    Cgroupfs,
}

impl CpuSourceChoice {
    fn name(self) -> &'static str {
        match self {
            CpuSourceChoice::Auto => "auto",
            CpuSourceChoice::Ebpf => "ebpf",
            CpuSourceChoice::Iterator => "iterator",
            CpuSourceChoice::Switch => "switch",
            CpuSourceChoice::Cgroupfs => "cgroupfs",
        }
    }

    fn allows(self, source: CpuSource) -> bool {
        match self {
            CpuSourceChoice::Auto => true,
            CpuSourceChoice::Ebpf => matches!(source, CpuSource::Iterator | CpuSource::Switch),
            CpuSourceChoice::Iterator => source == CpuSource::Iterator,
            CpuSourceChoice::Switch => source == CpuSource::Switch,
            CpuSourceChoice::Cgroupfs => source == CpuSource::Cgroupfs,
        }
    }
}

/// The source a snapshot's CPU figures came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuSource {
    /// The kernel's per-cgroup accounting, read by a BPF cgroup iterator.
    Iterator,
    /// The eBPF program charging at every context switch.
    Switch,
    Cgroupfs,
    /// The kubelet's `/metrics/resource`: where cgroupfs cannot be read.
    Kubelet,
}

impl CpuSource {
    /// Its name in logs, flags and metrics.
    pub fn name(self) -> &'static str {
        match self {
            CpuSource::Iterator => "iterator",
            CpuSource::Switch => "switch",
            CpuSource::Cgroupfs => "cgroupfs",
            CpuSource::Kubelet => "kubelet",
        }
    }
}

impl fmt::Display for CpuSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the collector reads from.
#[derive(Clone, Debug)]
pub struct Options {
    pub cgroup_root: PathBuf,
    pub proc_root: PathBuf,
    pub btf_path: PathBuf,
    pub cpu_source: CpuSourceChoice,
    /// Charge running tasks from a per-CPU clock instead of flush-on-read.
    pub force_tick: bool,
    /// Charge at switches from the raw tracepoint even where the BTF one attaches.
    pub force_raw_tracepoint: bool,
    /// Slots per CPU of the kernel side's cache of pending charges (see
    /// [`ebpf::Options::pending_slots`]; fewer than the default only in tests).
    pub pending_slots: u32,
    /// How many cgroups the kernel side counts at once (see
    /// [`ebpf::Options::max_cgroups`]).
    pub max_cgroups: u32,
    /// The node's own cgroup, relative to the hierarchy root: `/` for a whole
    /// host; a subtree where the node is nested in a larger hierarchy (a
    /// kubelet `--cgroup-root`, a simulated node). Pods are looked for below
    /// it and the node's totals are its totals.
    pub node_cgroup: String,
    /// How old the inactive file pages subtracted from memory usage may get
    /// while usage holds steady (see [`cgroup::files::STAT_MAX_AGE`]); zero:
    /// `memory.stat` is read at every collection.
    pub memory_stat_max_age: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            cgroup_root: "/sys/fs/cgroup".into(),
            proc_root: "/proc".into(),
            btf_path: "/sys/kernel/btf/vmlinux".into(),
            cpu_source: CpuSourceChoice::Auto,
            force_tick: false,
            force_raw_tracepoint: false,
            pending_slots: agent_common::PENDING_SLOTS,
            max_cgroups: agent_common::CGROUP_CPU_MAX_ENTRIES,
            node_cgroup: "/".into(),
            memory_stat_max_age: cgroup::files::STAT_MAX_AGE,
        }
    }
}

/// One container at one instant.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerSample {
    pub id: String,
    /// `None` from the kubelet source, which does not say.
    pub runtime: Option<Runtime>,
    /// The container's cgroup path, relative to the tree root (`None` from
    /// the kubelet source).
    pub cgroup: Option<String>,
    /// Cumulative on-CPU ns. From eBPF: since the agent first saw the container;
    /// from cgroupfs: since the cgroup was created. Only differences mean anything.
    pub cpu_ns: u64,
    pub memory: Memory,
    /// Approximate start: its cgroup's mtime when first seen (cgroupfs sets it
    /// at creation); constant while the container lives.
    pub started: Option<SystemTime>,
    /// When these figures were read, where that is not the snapshot's
    /// timestamp (the kubelet's per-container read time); never later than
    /// it (the aggregator refuses a reading that postdates its report);
    /// `None`: at it.
    pub read_at: Option<SystemTime>,
}

/// One pod: its containers.
#[derive(Clone, Debug, PartialEq)]
pub struct PodSample {
    pub uid: String,
    /// `None` from the kubelet source, which does not say.
    pub qos: Option<QosClass>,
    pub containers: Vec<ContainerSample>,
}

impl PodSample {
    /// The pod's CPU: the sum of its containers'.
    pub fn cpu_ns(&self) -> u64 {
        self.containers.iter().map(|c| c.cpu_ns).sum()
    }

    /// The pod's working set: the sum of its containers'.
    pub fn working_set(&self) -> u64 {
        self.containers.iter().map(|c| c.memory.working_set).sum()
    }
}

/// The node's totals.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NodeSample {
    pub cpu_ns: u64,
    pub memory: Memory,
    /// As [`ContainerSample::read_at`].
    pub read_at: Option<SystemTime>,
}

/// Everything read in one collection.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// When the CPU counters were read.
    pub timestamp: SystemTime,
    pub source: CpuSource,
    pub node: NodeSample,
    /// By pod UID.
    pub pods: BTreeMap<String, PodSample>,
    /// Cgroups that could not be read or parsed this time (skipped, not fatal).
    pub errors: Vec<String>,
}

impl Snapshot {
    /// Keeps only the containers `meta` names (by pod UID and container id)
    /// and the pods left with any; returns how many containers went.
    ///
    /// What goes is what no pod's status lists: a pod's sandbox (`pause`,
    /// which the kubelet and metrics-server never count as a container), or a
    /// container so new that the kubelet has not reported its id yet (it is
    /// kept from the next sample on, once its pod says what it is).
    pub fn retain_named(&mut self, meta: &NodeMetadata) -> usize {
        let named = Named::new(meta);
        let mut dropped = 0;
        self.pods.retain(|uid, pod| {
            let names = named.pod(uid);
            let before = pod.containers.len();
            pod.containers.retain(|c| Named::names(names, &c.id));
            dropped += before - pod.containers.len();
            !pod.containers.is_empty()
        });
        dropped
    }
}

/// The node's pods as kube-apiserver names them, by UID (a search of the
/// list for each pod would cost pods² string comparisons every interval).
pub struct Named<'a>(foldhash::HashMap<&'a str, &'a PodMetadata>);

impl<'a> Named<'a> {
    pub fn new(meta: &'a NodeMetadata) -> Self {
        Self(meta.pods.iter().map(|p| (p.uid.as_str(), p)).collect())
    }

    /// Pod `uid`, where it is named.
    pub fn pod(&self, uid: &str) -> Option<&'a PodMetadata> {
        self.0.get(uid).copied()
    }

    /// Whether `pod` (from [`Named::pod`]) names container `id`.
    pub fn names(pod: Option<&PodMetadata>, id: &str) -> bool {
        pod.is_some_and(|p| p.containers.iter().any(|n| n.id == id))
    }
}

/// The last walk of the tree, kept until the tree changes.
pub(crate) struct Walked {
    scan: cgroup::Scan,
    /// Cgroup id → index into `scan.cgroups`.
    by_id: foldhash::HashMap<u64, usize>,
}

impl Walked {
    /// The node's own cgroup's id: the walk's first (0 before it exists).
    fn node_id(&self) -> u64 {
        self.scan.cgroups.first().map_or(0, |c| c.id)
    }
}

/// Reads samples through one CPU source, files for what it does not give.
pub struct Collector {
    hierarchy: Hierarchy,
    opts: Options,
    /// The tree as last walked; walked again only when `watch` reports a
    /// change (or the source reads a cgroup the walk did not see).
    walked: Option<Walked>,
    /// Watches on the walked directories; `None` where inotify is unavailable
    /// (then every collection walks).
    watch: Option<TreeWatch>,
    walks: u64,
    /// Counter files of the sampled cgroups, kept open.
    files: CounterFiles,
    cpu: Chosen,
    /// The walk the source's and `started`'s state was last pruned to
    /// (they change only when the tree does).
    pruned_at_walk: u64,
    /// When each live container was first seen (its cgroup's mtime then), by
    /// cgroup id: a start time that stays put while the container lives.
    started: foldhash::HashMap<u64, SystemTime>,
}

impl Collector {
    /// Detects the hierarchy and, unless told otherwise, loads the eBPF programs.
    pub fn new(opts: Options) -> Result<Self> {
        let hierarchy = Hierarchy::detect(&opts.cgroup_root)?;
        let files = CounterFiles::with_stat_max_age(opts.memory_stat_max_age);
        let choice = opts.cpu_source;
        let mut passed_over = Vec::new();
        let mut source: Option<Box<dyn Source>> = None;
        if choice == CpuSourceChoice::Cgroupfs {
            passed_over.push("cgroupfs counters requested (--cpu-source=cgroupfs)".to_string());
        } else if hierarchy.v2.is_none() {
            passed_over
                .push("no cgroup v2 hierarchy: eBPF cgroup ids cannot identify pods".to_string());
        } else {
            // The kernel's BTF, read once for both eBPF sources.
            match Kernel::from_file(&opts.btf_path) {
                Err(e) => passed_over.push(format!("eBPF unavailable: {e}")),
                Ok(kernel) => {
                    source = ebpf_source(&opts, kernel, &mut passed_over);
                }
            }
        }
        let mut this = Self {
            hierarchy,
            opts,
            walked: None,
            watch: None,
            walks: 0,
            files,
            cpu: Chosen {
                source: Box::new(Cgroupfs),
                passed_over: Vec::new(),
                fallback_reason: None,
            },
            pruned_at_walk: 0,
            started: foldhash::HashMap::default(),
        };
        match source {
            Some(source) => this.cpu.source = source,
            None => {
                let reason = passed_over.join("; ");
                if !choice.allows(CpuSource::Cgroupfs) {
                    return Err(Error::SourceRequired {
                        choice: choice.name(),
                        reason,
                    });
                }
                this.cpu.fall_back(reason);
            }
        }
        this.cpu.passed_over = passed_over;
        Ok(this)
    }

    /// The active CPU source.
    pub fn source(&self) -> CpuSource {
        self.cpu.source.kind()
    }

    /// Where the last collection's container memory usage came from:
    /// `iterator` (the cgroup iterator's walk) or `cgroupfs` (the files;
    /// the inactive file pages and swap always do).
    pub fn memory_source(&self) -> &'static str {
        if self.cpu.source.memory_read() {
            "iterator"
        } else {
            "cgroupfs"
        }
    }

    /// Why each CPU source before the active one was passed over, in the
    /// order tried (empty when the first choice is active).
    pub fn passed_over(&self) -> &[String] {
        &self.cpu.passed_over
    }

    /// Why CPU comes from cgroupfs, when it does.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.cpu.fallback_reason.as_deref()
    }

    /// The switch program's accounting, when active (for its statistics).
    pub fn ebpf(&self) -> Option<&CpuAccounting> {
        self.cpu.source.switch_program()
    }

    /// The detected hierarchy.
    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// How many times the cgroup tree was walked (once at the start, then only
    /// when it changed).
    pub fn walks(&self) -> u64 {
        self.walks
    }

    /// Whether the cached walk is out of date: the watch saw a change (or
    /// there is no watch), or the source read a cgroup the walk did not see.
    fn tree_changed(&mut self, walked: &Walked) -> bool {
        let watched_change = self.watch.as_mut().is_none_or(TreeWatch::changed);
        watched_change || self.cpu.source.sees_unwalked(walked)
    }

    /// Walks the tree, watching every directory walked.
    fn walk(&mut self) -> Result<Walked> {
        let mut watch = match TreeWatch::new() {
            Ok(watch) => Some(watch),
            Err(e) => {
                if self.watch.is_some() || self.walks == 0 {
                    warn!(error = %e, "inotify unavailable: walking the cgroup tree every interval");
                }
                None
            }
        };
        // Drop the old watches before adding new ones (inotify limits are per user).
        self.watch = None;
        let scan = self
            .hierarchy
            .scan_watched(&self.opts.node_cgroup, watch.as_mut())?;
        self.watch = watch;
        self.walks += 1;
        let by_id = scan.by_id();
        // Part of the tree could not be read: what it left out may still
        // exist, so no files are closed (the watch reports a change at every
        // check: walked again next time).
        if scan.is_complete() {
            self.files
                .retain(|rel, id| by_id.get(&id).is_some_and(|&i| scan.cgroups[i].path == rel));
        }
        let walked = Walked { scan, by_id };
        self.cpu.source.walked(&walked);
        Ok(walked)
    }

    /// Reads one snapshot.
    pub fn collect(&mut self) -> Result<Snapshot> {
        if let Err(reason) = self.cpu.source.before_walk() {
            self.cpu.fall_back(reason);
        }
        let before_walk = SystemTime::now();
        let walked = match self.walked.take() {
            Some(walked) if !self.tree_changed(&walked) => walked,
            _ => self.walk()?,
        };
        let tree = walked.scan.tree.unwrap_or(Tree::V2);
        if tree != Tree::V2 && self.cpu.source.kind() != CpuSource::Cgroupfs {
            self.cpu.fall_back(
                "pods are only in v1 cgroups here: v2 cgroup ids do not identify them".into(),
            );
        }
        // State of cgroups a new walk did not see is dropped, unless the walk
        // was incomplete (they may only have been unreadable this time: their
        // counters must go on, not restart).
        let prune = self.pruned_at_walk != self.walks && walked.scan.is_complete();
        self.pruned_at_walk = self.walks;
        let timestamp = if self.cpu.source.reads_before_walk() {
            before_walk
        } else {
            SystemTime::now()
        };
        // Built from the fields, not `self`: the source and files are
        // borrowed too.
        let walk = Walk::new(&walked, &self.hierarchy, &self.opts, prune, self.walks);
        if let Err(reason) = self.cpu.source.after_walk(&walk) {
            self.cpu.fall_back(reason);
        }
        let timestamp = self.cpu.source.read_at().unwrap_or(timestamp);
        let cpu = read_cpu(&*self.cpu.source, &mut self.files, &walk);
        self.cpu.source.read_memory(&walk);
        let snapshot = self.sample(timestamp, &walked, prune, cpu);
        self.walked = Some(walked);
        Ok(snapshot)
    }

    /// The snapshot: `cpu` as read, memory read now.
    fn sample(
        &mut self,
        timestamp: SystemTime,
        walked: &Walked,
        prune: bool,
        cpu: Cpu,
    ) -> Snapshot {
        let scan = &walked.scan;
        let mut errors = Vec::new();
        let tree = scan.tree.unwrap_or(Tree::V2);
        errors.extend(scan.errors.iter().map(ToString::to_string));
        let Cpu {
            containers: cpus,
            node: node_cpu,
        } = cpu;

        let mut pods: BTreeMap<String, PodSample> = BTreeMap::new();
        for ((cg, c), cpu) in containers(scan).zip(cpus) {
            let Container {
                pod_uid,
                qos,
                id,
                runtime,
            } = c;
            // Most often: the container went away between scan and read.
            let skipped = |e: &dyn fmt::Display| format!("{}: {e}", cg.path);
            let cpu_ns = match cpu {
                Ok(cpu_ns) => cpu_ns,
                Err(e) => {
                    errors.push(skipped(&e));
                    continue;
                }
            };
            let memory = match self.cpu.source.container_memory_usage(cg) {
                Some(usage) => {
                    self.files
                        .memory_with_usage(&self.hierarchy, tree, cg.id, &cg.path, usage)
                }
                None => self.files.memory(&self.hierarchy, tree, cg.id, &cg.path),
            };
            let memory = match memory {
                Ok(memory) => memory,
                Err(e) => {
                    errors.push(skipped(&e));
                    continue;
                }
            };
            // Looked up before inserting: a pod's UID is copied only for a new pod.
            let pod = match pods.get_mut(pod_uid) {
                Some(pod) => pod,
                None => pods.entry(pod_uid.clone()).or_insert_with(|| PodSample {
                    uid: pod_uid.clone(),
                    qos: Some(qos),
                    containers: Vec::new(),
                }),
            };
            pod.containers.push(ContainerSample {
                id: id.clone(),
                runtime: Some(runtime),
                cgroup: Some(cg.path.clone()),
                cpu_ns,
                memory,
                started: Some(
                    *self
                        .started
                        .entry(cg.id)
                        .or_insert_with(|| cg.modified.unwrap_or(timestamp)),
                ),
                read_at: None,
            });
        }
        for pod in pods.values_mut() {
            pod.containers.sort_by(|a, b| a.id.cmp(&b.id));
        }
        if prune {
            // Every container the walk saw, read this time or not.
            let live: foldhash::HashSet<u64> = containers(scan).map(|(cg, _)| cg.id).collect();
            self.started.retain(|id, _| live.contains(id));
        }

        let whole_host = self.whole_host();
        let node_cpu = node_cpu.unwrap_or_else(|e| {
            errors.push(e);
            0
        });
        let node_memory = if whole_host {
            self.files
                .node_memory(&self.hierarchy, &self.opts.proc_root)
        } else {
            self.files.memory(
                &self.hierarchy,
                tree,
                walked.node_id(),
                &self.opts.node_cgroup,
            )
        }
        .unwrap_or_else(|e| {
            errors.push(format!("node memory: {e}"));
            Memory::default()
        });
        Snapshot {
            timestamp,
            source: self.source(),
            node: NodeSample {
                cpu_ns: node_cpu,
                memory: node_memory,
                read_at: None,
            },
            pods,
            errors,
        }
    }

    fn whole_host(&self) -> bool {
        source::whole_host(&self.opts.node_cgroup)
    }
}

/// Cumulative CPU of each container the walk saw, in the walk's order,
/// then the node's: every counter is read before any memory file, so
/// that all are read as near the snapshot's time as they can be (a
/// counter read after slow memory reads would skew its rate).
fn read_cpu(source: &dyn Source, files: &mut CounterFiles, walk: &Walk<'_>) -> Cpu {
    let scan = &walk.walked.scan;
    let tree = scan.tree.unwrap_or(Tree::V2);
    let containers = containers(scan)
        .map(|(cg, c)| {
            // What the source does not give (all, from cgroupfs; a
            // cgroup the iterator's walk left out: beyond its results'
            // capacity, counted and warned of, or removed since the
            // scan, when this fails too) the files hold, the same
            // counters.
            match source.container_cpu(cg, c.id) {
                Some(cpu) => Ok(cpu),
                None => files.cpu_usage_ns(walk.hierarchy, tree, cg.id, &cg.path),
            }
        })
        .collect();
    let node = match source.node_cpu() {
        Some(cpu) => Ok(cpu),
        None => {
            // The whole host's CPU: the v2 root's `cpu.stat` is the
            // scheduler tick's sampling, the v1 cpuacct root's counter
            // is exact: that, where the host has one.
            let node_tree = if walk.whole_host() && walk.hierarchy.v1_cpuacct.is_some() {
                Tree::V1
            } else {
                tree
            };
            files
                .cpu_usage_ns(
                    walk.hierarchy,
                    node_tree,
                    walk.walked.node_id(),
                    walk.node_cgroup,
                )
                .map_err(|e| format!("node cpu: {e}"))
        }
    };
    Cpu { containers, node }
}

/// The CPU source in use, and why it is this one.
struct Chosen {
    source: Box<dyn Source>,
    /// Why each source before the active one was passed over.
    passed_over: Vec<String>,
    fallback_reason: Option<String>,
}

impl Chosen {
    /// Gives the source up for cgroupfs.
    fn fall_back(&mut self, reason: String) {
        let was_ebpf = self.source.kind() != CpuSource::Cgroupfs;
        self.source = Box::new(Cgroupfs);
        if was_ebpf || self.fallback_reason.is_none() {
            warn!(%reason, "CPU from cgroupfs counters");
        }
        self.fallback_reason = Some(reason);
    }
}

/// One collection's CPU counters, read before any memory.
struct Cpu {
    /// Each container's, in the order [`containers`] yields them.
    containers: Vec<io::Result<u64>>,
    node: Result<u64, String>,
}

/// A container cgroup's identity, as [`containers`] yields it.
struct Container<'a> {
    pod_uid: &'a String,
    qos: QosClass,
    id: &'a String,
    runtime: Runtime,
}

/// The containers among a walk's cgroups (nested cgroups inside a
/// container are the container's own business), in the walk's order.
fn containers(scan: &cgroup::Scan) -> impl Iterator<Item = (&cgroup::Cgroup, Container<'_>)> {
    scan.cgroups.iter().filter_map(|cg| match &cg.identity {
        Some(Identity::Container {
            pod_uid,
            qos,
            id,
            runtime,
            nested: false,
        }) => Some((
            cg,
            Container {
                pod_uid,
                qos: *qos,
                id,
                runtime: *runtime,
            },
        )),
        _ => None,
    })
}

/// The first eBPF source `opts` allows that loads, given the kernel's
/// BTF; why each one tried did not, in `passed_over`.
fn ebpf_source(
    opts: &Options,
    kernel: Kernel,
    passed_over: &mut Vec<String>,
) -> Option<Box<dyn Source>> {
    let choice = opts.cpu_source;
    if choice.allows(CpuSource::Iterator) {
        match CgroupTotals::load_with(kernel.cgroup_iter, opts.max_cgroups) {
            Ok(totals) => {
                let iterator = CgroupIterator::new(totals);
                info!(
                    flush = iterator.flush_function(),
                    memory_usage = if iterator.memory_from_files().is_none() {
                        "iterator"
                    } else {
                        "cgroupfs"
                    },
                    "CPU from the kernel's per-cgroup accounting (BPF cgroup iterator)"
                );
                return Some(Box::new(iterator));
            }
            Err(e) => passed_over.push(format!("cgroup iterator unavailable: {e}")),
        }
    }
    if !choice.allows(CpuSource::Switch) {
        return None;
    }
    if let Some(reason) = passed_over.first() {
        warn!(%reason, "CPU from the context-switch program");
    }
    let ebpf_opts = ebpf::Options {
        btf_path: opts.btf_path.clone(),
        force_tick: opts.force_tick,
        force_raw_tracepoint: opts.force_raw_tracepoint,
        pending_slots: opts.pending_slots,
        max_cgroups: opts.max_cgroups,
    };
    match CpuAccounting::load_with(&ebpf_opts, kernel.offsets, kernel.sched_switch_typedef) {
        Ok(acc) => Some(Box::new(Switch::new(acc))),
        Err(e) => {
            passed_over.push(format!("switch program unavailable: {e}"));
            None
        }
    }
}

/// The deepest cgroup path that all of `paths` are in (`/` at least);
/// `None` for none. One pods root is its own; a host can hold more (a
/// systemd-driver and a cgroupfs-driver kubelet's, or nested ones).
fn common_ancestor<'a>(mut paths: impl Iterator<Item = &'a str>) -> Option<String> {
    let first = paths.next()?;
    let mut common: Vec<&str> = first.split('/').filter(|p| !p.is_empty()).collect();
    for path in paths {
        let shared = common
            .iter()
            .zip(path.split('/').filter(|p| !p.is_empty()))
            .take_while(|(a, b)| *a == b)
            .count();
        common.truncate(shared);
    }
    Some(format!("/{}", common.join("/")))
}

#[cfg(test)]
mod tests {
    use proto::v1::{ContainerName, PodMetadata};

    use super::*;

    #[test]
    fn iterator_walks_from_the_deepest_cgroup_holding_every_pods_root() {
        let walk = |paths: &[&str]| common_ancestor(paths.iter().copied());
        assert_eq!(walk(&[]), None);
        assert_eq!(
            walk(&["/kubepods.slice"]).as_deref(),
            Some("/kubepods.slice")
        );
        assert_eq!(
            walk(&["/n/kubepods.slice", "/n/kubepods"]).as_deref(),
            Some("/n")
        );
        assert_eq!(
            walk(&["/kubepods.slice", "/kubepods"]).as_deref(),
            Some("/")
        );
        // Components, not characters.
        assert_eq!(walk(&["/ab/kubepods", "/a/kubepods"]).as_deref(), Some("/"));
    }

    fn container(id: &str) -> ContainerSample {
        ContainerSample {
            id: id.into(),
            runtime: Some(Runtime::Unnamed),
            cgroup: None,
            cpu_ns: 1,
            memory: Memory::default(),
            started: None,
            read_at: None,
        }
    }

    /// A source that records the collector's calls, giving nothing (the
    /// files give every figure).
    struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>);

    impl Recorder {
        fn log(&self, call: &'static str) {
            self.0.lock().expect("log").push(call);
        }
    }

    impl Source for Recorder {
        fn kind(&self) -> CpuSource {
            CpuSource::Cgroupfs
        }
        fn after_walk(&mut self, _walk: &Walk<'_>) -> Result<(), String> {
            self.log("after_walk");
            Ok(())
        }
        fn container_cpu(&self, _cg: &cgroup::Cgroup, _id: &str) -> Option<u64> {
            self.log("container_cpu");
            None
        }
        fn node_cpu(&self) -> Option<u64> {
            self.log("node_cpu");
            None
        }
        fn read_memory(&mut self, _walk: &Walk<'_>) {
            self.log("read_memory");
        }
        fn container_memory_usage(&self, _cg: &cgroup::Cgroup) -> Option<u64> {
            self.log("container_memory_usage");
            None
        }
    }

    /// Every CPU counter (each container's, then the node's) is read
    /// before any memory: a memory read between two counters would skew
    /// the later one's rate by its length.
    fn write(dir: &std::path::Path, name: &str, text: &str) {
        std::fs::create_dir_all(dir).expect("mkdir");
        std::fs::write(dir.join(name), text).expect("write fixture");
    }

    /// A v2 cgroup tree and procfs in a temporary directory, with one
    /// burstable pod and no containers yet.
    struct Fixture {
        _tmp: tempfile::TempDir,
        root: std::path::PathBuf,
        proc_root: std::path::PathBuf,
        pod: std::path::PathBuf,
    }

    impl Fixture {
        fn new() -> Self {
            let tmp = tempfile::tempdir().expect("tempdir");
            let (root, proc_root) = (tmp.path().join("cgroup"), tmp.path().join("proc"));
            write(&root, "cgroup.controllers", "cpu memory\n");
            write(&root, "cgroup.procs", "");
            write(&root, "cpu.stat", "usage_usec 9000\n");
            write(
                &proc_root,
                "meminfo",
                "MemTotal: 1000 kB\nMemFree: 400 kB\nInactive(file): 100 kB\n",
            );
            let pod = root.join(
                "kubepods.slice/kubepods-burstable.slice/\
                 kubepods-burstable-pod0c3a8ec8_6a39_4b5c_a5e3_2f0cb7a8e1d4.slice",
            );
            Self {
                _tmp: tmp,
                root,
                proc_root,
                pod,
            }
        }

        /// A container `id` of the pod, with `usage_usec` CPU; its directory.
        fn container(&self, id: &str, usage_usec: u64) -> std::path::PathBuf {
            let dir = self.pod.join(format!("cri-containerd-{id}.scope"));
            write(&dir, "cpu.stat", &format!("usage_usec {usage_usec}\n"));
            write(&dir, "memory.current", "4096\n");
            write(&dir, "memory.stat", "inactive_file 1024\n");
            dir
        }

        /// A collector reading the files (cgroupfs).
        fn collector(&self) -> Collector {
            Collector::new(Options {
                cgroup_root: self.root.clone(),
                proc_root: self.proc_root.clone(),
                cpu_source: CpuSourceChoice::Cgroupfs,
                ..Options::default()
            })
            .expect("collector")
        }
    }

    #[test]
    fn every_cpu_counter_is_read_before_any_memory() {
        let f = Fixture::new();
        f.container("4f1e0e5a6b1f", 1);
        f.container("5a4db0c0ffee", 2);
        let mut c = f.collector();
        let calls = std::sync::Arc::default();
        c.cpu.source = Box::new(Recorder(std::sync::Arc::clone(&calls)));
        let s = c.collect().expect("collect");
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        let cpu: Vec<u64> = s
            .pods
            .values()
            .flat_map(|p| p.containers.iter().map(|c| c.cpu_ns))
            .collect();
        assert_eq!(cpu, [1000, 2000]);
        assert_eq!(s.node.cpu_ns, 9_000_000);
        assert_eq!(
            *calls.lock().expect("log"),
            [
                "after_walk",
                "container_cpu",
                "container_cpu",
                "node_cpu",
                "read_memory",
                "container_memory_usage",
                "container_memory_usage"
            ]
        );
    }

    /// A container's start time is its cgroup's mtime when first seen, and
    /// stays put across later walks, whatever the mtime says then.
    #[test]
    fn a_containers_start_time_stays_put_while_it_lives() {
        use std::time::{Duration, UNIX_EPOCH};
        let set_mtime = |dir: &std::path::Path, at: SystemTime| {
            std::fs::File::open(dir)
                .and_then(|d| d.set_modified(at))
                .expect("set mtime");
        };
        let f = Fixture::new();
        let container = |id: &str, at: SystemTime| {
            let dir = f.container(id, 1);
            set_mtime(&dir, at);
            dir
        };
        let (t1, t2, t3) = (
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            UNIX_EPOCH + Duration::from_secs(1_700_000_100),
            UNIX_EPOCH + Duration::from_secs(1_700_000_200),
        );
        let first = container("4f1e0e5a6b1f", t1);
        let mut c = f.collector();
        let started = |s: &Snapshot| -> Vec<(String, Option<SystemTime>)> {
            s.pods
                .values()
                .flat_map(|p| p.containers.iter().map(|c| (c.id.clone(), c.started)))
                .collect()
        };
        let s = c.collect().expect("collect");
        assert_eq!(started(&s), [("4f1e0e5a6b1f".into(), Some(t1))]);
        // The first container's mtime moves, and a second container makes
        // the collector walk the tree again.
        set_mtime(&first, t2);
        container("5a4db0c0ffee", t3);
        let s = c.collect().expect("collect");
        assert_eq!(
            started(&s),
            [
                ("4f1e0e5a6b1f".into(), Some(t1)),
                ("5a4db0c0ffee".into(), Some(t3))
            ]
        );
    }

    #[test]
    fn only_containers_a_pod_names_are_kept() {
        let pod = |uid: &str, ids: &[&str]| PodSample {
            uid: uid.into(),
            qos: Some(QosClass::BestEffort),
            containers: ids.iter().map(|id| container(id)).collect(),
        };
        let mut s = Snapshot {
            timestamp: SystemTime::UNIX_EPOCH,
            source: CpuSource::Cgroupfs,
            node: NodeSample {
                cpu_ns: 0,
                memory: Memory::default(),
                read_at: None,
            },
            // u1: an app container and its sandbox; u2: a sandbox only (its
            // containers not started); u3: a pod the API does not know.
            pods: [
                ("u1".into(), pod("u1", &["app", "sandbox1"])),
                ("u2".into(), pod("u2", &["sandbox2"])),
                ("u3".into(), pod("u3", &["x"])),
            ]
            .into(),
            errors: vec![],
        };
        let meta = NodeMetadata {
            labels: Default::default(),
            pods: vec![
                PodMetadata {
                    uid: "u2".into(),
                    ..Default::default()
                },
                PodMetadata {
                    uid: "u1".into(),
                    containers: vec![ContainerName {
                        id: "app".into(),
                        name: "web".into(),
                    }],
                    ..Default::default()
                },
            ],
        };
        assert_eq!(s.retain_named(&meta), 3);
        let left: Vec<(&str, Vec<&str>)> = s
            .pods
            .values()
            .map(|p| {
                (
                    p.uid.as_str(),
                    p.containers.iter().map(|c| c.id.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(left, [("u1", vec!["app"])]);
    }
}
