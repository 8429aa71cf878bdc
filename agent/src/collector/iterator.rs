//! CPU, and memory usage where the kernel's BTF allows, from the kernel's
//! own per-cgroup accounting, read in one pass by a BPF cgroup iterator
//! after the walk: a container the walk saw that is missing was removed
//! since; one made since is left for the next walk, which the tree's watch
//! brings.
//!
//! Memory usage is the memory controller's page counter, read in the same
//! pass where the controller is on the v2 tree, else by a second walk of
//! the v1 memory hierarchy (cgroup v1 and v2 ids differ: containers are
//! matched there by their directories' inode numbers). It is what the usage
//! file shows, always current. The inactive file pages subtracted from it
//! (and swap) still come from `memory.stat`, on the files' own schedule
//! (see [`crate::cgroup::files::STAT_MAX_AGE`]): those are statistics the
//! kernel brings up to date only when a reader of that cgroup's (or an
//! ancestor's) files asks and enough updates are pending, which a BPF
//! program on this kernel cannot ask for.
use std::{os::unix::fs::MetadataExt as _, path::Path, time::SystemTime};

use foldhash::{HashMap, HashMapExt as _};

use tracing::{info, warn};

use super::{
    CpuSource, ITERATOR_FAILURES, common_ancestor,
    source::{Source, Walk},
};
use crate::{
    cgroup::{Cgroup, Identity},
    ebpf::iter::{CgroupTotals, Pass, Readings},
};

pub(super) struct CgroupIterator {
    totals: CgroupTotals,
    /// Failed CPU reads in a row.
    failures: u32,
    /// This collection's read of the v2 tree.
    cpu: Option<Pass>,
    node_cpu: Option<u64>,
    /// This collection's start of the walks, relative to a hierarchy's
    /// root (see [`Self::start`]).
    start: Option<String>,
    memory: MemoryState,
}

impl CgroupIterator {
    pub fn new(totals: CgroupTotals) -> Self {
        let memory = MemoryState::new(totals.no_memory());
        Self {
            totals,
            failures: 0,
            cpu: None,
            node_cpu: None,
            start: None,
            memory,
        }
    }

    pub fn flush_function(&self) -> &'static str {
        self.totals.flush_function()
    }

    /// Why memory comes from the files, where it does.
    pub fn memory_from_files(&self) -> Option<&str> {
        self.memory.off.as_deref()
    }

    /// Where the walk starts, relative to the hierarchy's root: the node's
    /// own cgroup, or on a whole host the pods root (the v2 root's own time
    /// is kept elsewhere in the kernel, and the rest of the host is not the
    /// pods'); `None`: no pods root yet.
    fn start(walk: &Walk<'_>) -> Option<String> {
        if !walk.whole_host() {
            return Some(walk.node_cgroup.to_string());
        }
        let roots = walk
            .walked
            .scan
            .cgroups
            .iter()
            .filter(|c| c.identity == Some(Identity::PodsRoot))
            .map(|c| c.path.as_str());
        common_ancestor(roots)
    }

    /// One read, or after a tolerated failure `None` (this collection's
    /// figures then come from the files): a pods root going away mid-read,
    /// say. Only a failure that persists ends the iterator.
    fn read_tolerating(&mut self, start: &Path) -> Result<Option<Pass>, String> {
        match self.totals.read(start) {
            Ok(pass) => {
                self.failures = 0;
                Ok(Some(pass))
            }
            Err(e) if self.failures + 1 < ITERATOR_FAILURES => {
                self.failures += 1;
                warn!(error = %e, "reading the cgroup iterator failed: CPU from cgroupfs this time");
                Ok(None)
            }
            Err(e) => Err(format!(
                "reading the cgroup iterator failed {ITERATOR_FAILURES} times in a row: {e}"
            )),
        }
    }
}

impl Source for CgroupIterator {
    fn kind(&self) -> CpuSource {
        CpuSource::Iterator
    }

    fn after_walk(&mut self, walk: &Walk<'_>) -> Result<(), String> {
        self.cpu = None;
        self.node_cpu = None;
        self.memory.usage.clear();
        self.start = Self::start(walk);
        let Some(rel) = self.start.as_deref() else {
            // No pods root yet: no pods to read, and no read to time.
            return Ok(());
        };
        let Some(v2) = walk.hierarchy.v2.as_ref() else {
            return Err("no cgroup v2 hierarchy".into());
        };
        let start = v2.join(rel.trim_start_matches('/'));
        let Some(pass) = self.read_tolerating(&start)? else {
            return Ok(());
        };
        if !walk.whole_host() {
            self.node_cpu = pass.cgroups.get(&walk.walked.node_id()).map(|r| r.cpu_ns);
        }
        self.cpu = Some(pass);
        Ok(())
    }

    fn read_memory(&mut self, walk: &Walk<'_>) {
        // None where this collection's CPU read failed (the files serve
        // both then).
        let (None, Some(pass)) = (&self.memory.off, &self.cpu) else {
            return;
        };
        let readings = &pass.cgroups;
        let usage = if walk.hierarchy.v2_memory {
            Ok(usage_by_id(readings, Some))
        } else if let Some(v1) = walk.hierarchy.v1_memory.as_ref()
            && let Some(rel) = self.start.as_deref()
        {
            let start = v1.join(rel.trim_start_matches('/'));
            match self.totals.read(&start) {
                Ok(pass) => {
                    let ids = self.memory.v1_ids(v1, walk);
                    Ok(usage_by_id(&pass.cgroups, |id| ids.get(&id).copied()))
                }
                Err(e) => Err(e.to_string()),
            }
        } else {
            Ok(HashMap::new())
        };
        self.memory.take(usage);
    }

    fn read_at(&self) -> Option<SystemTime> {
        self.cpu.as_ref().map(|p| p.at)
    }

    fn container_cpu(&self, cg: &Cgroup, _id: &str) -> Option<u64> {
        self.cpu.as_ref()?.cgroups.get(&cg.id).map(|r| r.cpu_ns)
    }

    /// On a whole host the walk starts below the root (whose own figure
    /// the kernel does not keep there): the host's CPU is read from files.
    fn node_cpu(&self) -> Option<u64> {
        self.node_cpu
    }

    fn container_memory_usage(&self, cg: &Cgroup) -> Option<u64> {
        self.memory.usage.get(&cg.id).copied()
    }

    fn memory_read(&self) -> bool {
        self.memory.off.is_none() && self.memory.failures == 0 && self.cpu.is_some()
    }
}

/// Each cgroup's memory usage, by its v2 id; `v2_of` maps the id a reading
/// is keyed by to that (itself on the v2 tree).
fn usage_by_id(readings: &Readings, v2_of: impl Fn(u64) -> Option<u64>) -> HashMap<u64, u64> {
    readings
        .iter()
        .filter_map(|(&id, r)| Some((v2_of(id)?, r.memory_usage?)))
        .collect()
}

struct MemoryState {
    /// Why memory usage comes from the files, where it does.
    off: Option<String>,
    /// Failed reads in a row.
    failures: u32,
    /// This collection's usage, bytes, by v2 cgroup id.
    usage: HashMap<u64, u64>,
    /// On a v1 memory hierarchy: v1 id → v2 id of each container cgroup,
    /// as of walk `ids_at_walk` (`None`: not all found yet).
    v1_ids: HashMap<u64, u64>,
    ids_at_walk: Option<u64>,
}

impl MemoryState {
    fn new(no_memory: Option<&str>) -> Self {
        let off = no_memory.map(|why| {
            let why = format!("the cgroup iterator cannot read memory here: {why}");
            info!(reason = %why, "memory usage from cgroupfs files");
            why
        });
        Self {
            off,
            failures: 0,
            usage: HashMap::new(),
            v1_ids: HashMap::new(),
            ids_at_walk: None,
        }
    }

    /// v1 id → v2 id of the walk's containers on the v1 memory hierarchy
    /// at `v1`, looked up once per walk (until all are found).
    fn v1_ids(&mut self, v1: &Path, walk: &Walk<'_>) -> &HashMap<u64, u64> {
        if self.ids_at_walk != Some(walk.walks) {
            self.v1_ids.clear();
            let mut all = true;
            for c in &walk.walked.scan.cgroups {
                if !matches!(c.identity, Some(Identity::Container { nested: false, .. })) {
                    continue;
                }
                match std::fs::metadata(v1.join(c.path.trim_start_matches('/'))) {
                    Ok(m) => {
                        self.v1_ids.insert(m.ino(), c.id);
                    }
                    // Not made yet there, or gone: from the files this time.
                    Err(_) => all = false,
                }
            }
            self.ids_at_walk = all.then_some(walk.walks);
        }
        &self.v1_ids
    }

    /// Keeps this collection's usage, or counts a failure (the files serve
    /// it); one that persists ends memory usage from the iterator.
    fn take(&mut self, read: Result<HashMap<u64, u64>, String>) {
        match read {
            Ok(usage) => {
                self.failures = 0;
                self.usage = usage;
            }
            Err(e) if self.failures + 1 < ITERATOR_FAILURES => {
                self.failures += 1;
                warn!(error = %e, "memory usage from the cgroup iterator failed: from cgroupfs files this time");
            }
            Err(e) => {
                let why = format!(
                    "memory usage from the cgroup iterator failed {ITERATOR_FAILURES} times in a row: {e}"
                );
                warn!(reason = %why, "memory usage from cgroupfs files");
                self.off = Some(why);
            }
        }
    }
}
