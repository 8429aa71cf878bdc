//! A [`Snapshot`] as the wire's [`NodeReport`] (without metadata, which the
//! exporter attaches when it changed).
use std::time::SystemTime;

use proto::{
    unix_nanos,
    v1::{ContainerSample, CpuSource as WireSource, NodeReport, PodSample, Usage},
};

use crate::{
    cgroup::stats::Memory,
    collector::{CpuSource, Snapshot},
};

/// `read_at`: when the figures were read, where that differs from the
/// snapshot's time (kubelet source; never later than it, see
/// [`crate::collector::ContainerSample::read_at`]).
fn usage(cpu_ns: u64, m: &Memory, read_at: Option<SystemTime>) -> Usage {
    Usage {
        cpu_ns,
        memory_working_set_bytes: m.working_set,
        swap_bytes: m.swap,
        read_unix_nanos: read_at.map(unix_nanos).filter(|&n| n > 0),
    }
}

pub use proto::new_epoch;

/// Builds report number `seq` of `node`, whose counters count from
/// `epoch` (see [`new_epoch`]), from a snapshot.
pub fn build(node: &str, seq: u64, epoch: u64, s: &Snapshot) -> NodeReport {
    NodeReport {
        node: node.to_string(),
        sample_unix_nanos: unix_nanos(s.timestamp),
        node_usage: Some(usage(s.node.cpu_ns, &s.node.memory, s.node.read_at)),
        pods: s
            .pods
            .values()
            .map(|p| PodSample {
                uid: p.uid.clone(),
                containers: p
                    .containers
                    .iter()
                    .map(|c| ContainerSample {
                        id: c.id.clone(),
                        usage: Some(usage(c.cpu_ns, &c.memory, c.read_at)),
                        start_unix_nanos: c.started.map_or(0, unix_nanos),
                    })
                    .collect(),
            })
            .collect(),
        metadata: None,
        cpu_source: match s.source {
            CpuSource::Iterator => WireSource::EbpfIterator,
            CpuSource::Switch => WireSource::Ebpf,
            CpuSource::Cgroupfs => WireSource::Cgroupfs,
            CpuSource::Kubelet => WireSource::Kubelet,
        } as i32,
        seq,
        agent_epoch: epoch,
        metadata_continues: false,
    }
}
