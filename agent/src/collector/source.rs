//! The interface every CPU source implements, and the plainest of them.
//!
//! A collection reads the kernel-side source (if it must read before the
//! tree is looked at), walks the tree when it changed, reads the source
//! again with the walk in hand, and then asks it for each container's and
//! the node's figures. What a source does not give, the collector reads
//! from the cgroup's files.

use std::time::SystemTime;

use super::{CpuSource, Walked};
use crate::{
    cgroup::{Cgroup, Hierarchy},
    ebpf::CpuAccounting,
};

/// What a source sees of one collection's walk.
pub(super) struct Walk<'a> {
    pub walked: &'a Walked,
    pub hierarchy: &'a Hierarchy,
    /// The node's own cgroup (see [`super::Options::node_cgroup`]).
    pub node_cgroup: &'a str,
    /// The walk is new (and complete) since the last collection: state of
    /// cgroups it did not see can go.
    pub prune: bool,
    /// The walk's number (see [`super::Collector::walks`]).
    pub walks: u64,
}

impl<'a> Walk<'a> {
    pub fn new(
        walked: &'a Walked,
        hierarchy: &'a Hierarchy,
        opts: &'a super::Options,
        prune: bool,
        walks: u64,
    ) -> Self {
        Self {
            walked,
            hierarchy,
            node_cgroup: &opts.node_cgroup,
            prune,
            walks,
        }
    }

    /// The node is the whole host, not a subtree of it.
    pub fn whole_host(&self) -> bool {
        whole_host(self.node_cgroup)
    }
}

pub(super) fn whole_host(node_cgroup: &str) -> bool {
    node_cgroup.trim_matches('/').is_empty()
}

/// A source of per-cgroup CPU time (and perhaps memory). `Err` from a read
/// gives the source up for cgroupfs, with the reason.
pub(super) trait Source: Send {
    fn kind(&self) -> CpuSource;

    /// Reads what must be read before the tree is looked at.
    fn before_walk(&mut self) -> Result<(), String> {
        Ok(())
    }

    /// Whether [`Self::before_walk`] reads the counters: the snapshot's
    /// time is then taken before the walk, else just before
    /// [`Self::after_walk`] (a walk between the two would skew each rate
    /// by its length).
    fn reads_before_walk(&self) -> bool {
        false
    }

    /// Whether that read names a cgroup `walked` did not see and that is
    /// not known to be outside the node: the tree is walked again.
    fn sees_unwalked(&self, _walked: &Walked) -> bool {
        false
    }

    /// A new walk was made.
    fn walked(&mut self, _walked: &Walked) {}

    /// Reads (or takes in) this collection's CPU figures, the walk in hand.
    fn after_walk(&mut self, walk: &Walk<'_>) -> Result<(), String>;

    /// When this collection's CPU counters were read, where the source
    /// knows it exactly: the snapshot's time. Else the collector's clock
    /// is read next to the read (see [`Self::reads_before_walk`]), and a
    /// preemption between the two skews the rates by its length.
    fn read_at(&self) -> Option<SystemTime> {
        None
    }

    /// Reads this collection's memory usage, where the source gives it:
    /// after every CPU counter (the containers' and the node's) was read,
    /// so that no memory read comes between those.
    fn read_memory(&mut self, _walk: &Walk<'_>) {}

    /// Cumulative CPU ns of container `id` in cgroup `cg`.
    fn container_cpu(&self, cg: &Cgroup, id: &str) -> Option<u64>;

    /// The node's cumulative CPU ns.
    fn node_cpu(&self) -> Option<u64>;

    /// The memory usage (bytes) of container cgroup `cg`: the counter its
    /// usage file shows.
    fn container_memory_usage(&self, _cg: &Cgroup) -> Option<u64> {
        None
    }

    /// Whether the last collection's memory usage came from this source.
    fn memory_read(&self) -> bool {
        false
    }

    /// The context-switch program, for its statistics and hooks.
    fn switch_program(&self) -> Option<&CpuAccounting> {
        None
    }
}

/// Every figure from the cgroup's files.
pub(super) struct Cgroupfs;

impl Source for Cgroupfs {
    fn kind(&self) -> CpuSource {
        CpuSource::Cgroupfs
    }

    fn after_walk(&mut self, _walk: &Walk<'_>) -> Result<(), String> {
        Ok(())
    }

    fn container_cpu(&self, _cg: &Cgroup, _id: &str) -> Option<u64> {
        None
    }

    fn node_cpu(&self) -> Option<u64> {
        None
    }
}
