//! Samples collected into the node, pod and container they belong to.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::line::{Metric, Sample, Value};
use super::{
    ContainerStats, CpuUsage, Error, KubeletStats, MemoryUsage, NodeStats, PodStats, Result,
};

#[derive(Default)]
pub(super) struct PartialContainer {
    cpu: Option<CpuUsage>,
    memory: Option<MemoryUsage>,
    swap: Option<u64>,
    start_time: Option<SystemTime>,
}

#[derive(Default)]
pub(super) struct PartialPod {
    cpu: Option<CpuUsage>,
    memory: Option<MemoryUsage>,
    swap: Option<u64>,
    containers: BTreeMap<String, PartialContainer>,
}

/// Collects samples into per-object slots; a slot filled twice is a
/// [`Error::DuplicateSeries`].
#[derive(Default)]
pub(super) struct Builder {
    node_cpu: Option<CpuUsage>,
    node_memory: Option<MemoryUsage>,
    node_swap: Option<u64>,
    pods: BTreeMap<(String, String), PartialPod>,
    scrape_error: Option<bool>,
    resource_scrape_error: Option<bool>,
    pub(super) samples: usize,
}

pub(super) fn fill<T>(slot: &mut Option<T>, value: T, metric: Metric, line: usize) -> Result<()> {
    if slot.is_some() {
        return Err(Error::DuplicateSeries {
            line,
            metric: metric.name(),
        });
    }
    *slot = Some(value);
    Ok(())
}

impl Builder {
    pub(super) fn add(&mut self, sample: Sample, line: usize) -> Result<()> {
        let Sample {
            metric,
            pod,
            container,
            value,
            time,
        } = sample;
        let int = match value {
            Value::Integer(v) => v,
            Value::Flag(flag) => {
                let slot = if metric == Metric::ScrapeError {
                    &mut self.scrape_error
                } else {
                    &mut self.resource_scrape_error
                };
                fill(slot, flag, metric, line)?;
                self.samples += 1;
                return Ok(());
            }
        };
        let cpu = CpuUsage {
            cumulative_ns: int,
            time,
        };
        let memory = MemoryUsage {
            working_set_bytes: int,
            time,
        };
        let pod = pod.map(|key| self.pods.entry(key).or_default());
        match (metric, pod, container) {
            (Metric::NodeCpu, _, _) => fill(&mut self.node_cpu, cpu, metric, line)?,
            (Metric::NodeMemory, _, _) => fill(&mut self.node_memory, memory, metric, line)?,
            (Metric::NodeSwap, _, _) => fill(&mut self.node_swap, int, metric, line)?,
            (Metric::PodCpu, Some(pod), _) => fill(&mut pod.cpu, cpu, metric, line)?,
            (Metric::PodMemory, Some(pod), _) => fill(&mut pod.memory, memory, metric, line)?,
            (Metric::PodSwap, Some(pod), _) => fill(&mut pod.swap, int, metric, line)?,
            (_, Some(pod), Some(name)) => {
                let c = pod.containers.entry(name).or_default();
                match metric {
                    Metric::ContainerCpu => fill(&mut c.cpu, cpu, metric, line)?,
                    Metric::ContainerMemory => fill(&mut c.memory, memory, metric, line)?,
                    Metric::ContainerSwap => fill(&mut c.swap, int, metric, line)?,
                    Metric::ContainerStartTime => {
                        let start = UNIX_EPOCH.checked_add(Duration::from_nanos(int)).ok_or(
                            Error::OutOfRange {
                                line,
                                metric: metric.name(),
                                value: int.to_string(),
                            },
                        )?;
                        fill(&mut c.start_time, start, metric, line)?;
                    }
                    // Unreachable by construction: `parse_line` gives every
                    // container metric a pod and a container name.
                    _ => return Ok(()),
                }
            }
            // Likewise unreachable: pod and container series always carry
            // their identity out of `parse_line`.
            _ => return Ok(()),
        }
        self.samples += 1;
        Ok(())
    }

    pub(super) fn finish(self) -> KubeletStats {
        let node = match (self.node_cpu, self.node_memory) {
            (Some(cpu), Some(memory)) => Some(NodeStats {
                cpu,
                memory,
                swap_bytes: self.node_swap,
            }),
            _ => None,
        };
        let pods = self
            .pods
            .into_iter()
            .map(|((namespace, name), pod)| {
                let mut containers = Vec::new();
                let mut incomplete_containers = Vec::new();
                for (name, c) in pod.containers {
                    match (c.cpu, c.memory) {
                        (Some(cpu), Some(memory)) => containers.push(ContainerStats {
                            name,
                            cpu,
                            memory,
                            swap_bytes: c.swap,
                            start_time: c.start_time,
                        }),
                        _ => incomplete_containers.push(name),
                    }
                }
                PodStats {
                    namespace,
                    name,
                    cpu: pod.cpu,
                    memory: pod.memory,
                    swap_bytes: pod.swap,
                    containers,
                    incomplete_containers,
                }
            })
            .collect();
        KubeletStats {
            node,
            pods,
            scrape_error: self.scrape_error.unwrap_or(false)
                || self.resource_scrape_error.unwrap_or(false),
        }
    }
}
