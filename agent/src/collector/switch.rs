//! CPU from the context-switch program: per-cgroup totals the kernel side
//! charged, turned into per-container and node totals that survive
//! cgroups going away.
use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};

use super::{
    CpuSource, Walked,
    source::{Source, Walk},
};
use crate::{
    cgroup::{Cgroup, Identity},
    ebpf::CpuAccounting,
};

pub(super) struct Switch {
    acc: CpuAccounting,
    /// This collection's read, taken before the walk.
    raw: Option<HashMap<u64, u64>>,
    /// Cgroup ids in the counters that were not in the tree at the last
    /// walk (outside the node's subtree, or removed): not a reason to walk again.
    foreign: HashSet<u64>,
    /// Last raw counter per cgroup id, to turn the kernel's per-cgroup totals
    /// into deltas that survive cgroups going away.
    last_raw: HashMap<u64, u64>,
    /// Identity of each cgroup id seen in the previous scan.
    known: HashMap<u64, Option<Identity>>,
    /// Cumulative ns for the node.
    charged_node: u64,
    /// Cumulative ns per container id.
    charged_containers: HashMap<String, u64>,
}

impl Switch {
    pub fn new(acc: CpuAccounting) -> Self {
        Self {
            acc,
            raw: None,
            foreign: HashSet::new(),
            last_raw: HashMap::new(),
            known: HashMap::new(),
            charged_node: 0,
            charged_containers: HashMap::new(),
        }
    }

    /// Turns the kernel's per-cgroup totals into per-container and node totals.
    fn attribute(&mut self, raw: HashMap<u64, u64>, walk: &Walk<'_>) {
        let whole_host = walk.whole_host();
        let walked = walk.walked;
        let scan = &walked.scan;
        let current = |id: &u64| walked.by_id.get(id).map(|&i| &scan.cgroups[i].identity);
        for (&cgroup, &value) in &raw {
            let last = self.last_raw.insert(cgroup, value).unwrap_or(0);
            // A smaller value: the id was reused by a new cgroup after we forgot it.
            let delta = if value >= last { value - last } else { value };
            if delta == 0 {
                continue;
            }
            let identity = current(&cgroup).or_else(|| self.known.get(&cgroup));
            // On a whole host every cgroup is the node's, even one that came and
            // went between two scans; in a subtree only those seen in it.
            if whole_host || identity.is_some() {
                self.charged_node += delta;
            }
            if let Some(Some(Identity::Container { id, .. })) = identity {
                match self.charged_containers.get_mut(id) {
                    Some(total) => *total += delta,
                    None => {
                        self.charged_containers.insert(id.clone(), delta);
                    }
                }
            }
        }
        // Cgroups gone since the read: their last counts are in; drop their
        // state. After an incomplete walk an unseen one may still be there.
        let complete = scan.is_complete();
        let gone: Vec<u64> = raw
            .keys()
            .copied()
            .filter(|id| complete && !walked.by_id.contains_key(id))
            .collect();
        for id in &gone {
            self.last_raw.remove(id);
        }
        self.acc.forget(gone);
        if !walk.prune {
            // Same tree as last time (`known` is it already), or an incomplete
            // walk: `known` still names what it missed.
            return;
        }
        let live: HashSet<&String> = scan
            .cgroups
            .iter()
            .filter_map(|c| match &c.identity {
                Some(Identity::Container { id, .. }) => Some(id),
                _ => None,
            })
            .collect();
        self.charged_containers.retain(|id, _| live.contains(id));
        self.known = scan
            .cgroups
            .iter()
            .map(|c| (c.id, c.identity.clone()))
            .collect();
    }
}

impl Source for Switch {
    fn kind(&self) -> CpuSource {
        CpuSource::Switch
    }

    fn before_walk(&mut self) -> Result<(), String> {
        // Counters first, then the tree: every id read then either appears
        // in the walk (one made since the last walk, being an id the walk
        // has not seen, makes us walk again) or was removed before it, so
        // nothing is forgotten too early.
        let raw = self
            .acc
            .read()
            .map_err(|e| format!("reading eBPF counters failed: {e}"))?;
        self.raw = Some(raw);
        Ok(())
    }

    fn reads_before_walk(&self) -> bool {
        true
    }

    fn sees_unwalked(&self, walked: &Walked) -> bool {
        self.raw.as_ref().is_some_and(|raw| {
            raw.keys()
                .any(|id| !walked.by_id.contains_key(id) && !self.foreign.contains(id))
        })
    }

    fn walked(&mut self, walked: &Walked) {
        self.foreign = if walked.scan.is_complete() {
            self.raw
                .iter()
                .flat_map(HashMap::keys)
                .copied()
                .filter(|id| !walked.by_id.contains_key(id))
                .collect()
        } else {
            // Part of the tree could not be read: what it left out may still
            // exist, so nothing is taken as outside the node.
            HashSet::new()
        };
    }

    fn after_walk(&mut self, walk: &Walk<'_>) -> Result<(), String> {
        if let Some(raw) = self.raw.take() {
            self.attribute(raw, walk);
        }
        Ok(())
    }

    fn container_cpu(&self, _cg: &Cgroup, id: &str) -> Option<u64> {
        Some(self.charged_containers.get(id).copied().unwrap_or(0))
    }

    fn node_cpu(&self) -> Option<u64> {
        Some(self.charged_node)
    }

    fn switch_program(&self) -> Option<&CpuAccounting> {
        Some(&self.acc)
    }
}
