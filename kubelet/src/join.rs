//! The kubelet's stats joined to the node's pods.
//!
//! The kubelet names pods by namespace and name and containers by name; the
//! wire names them by pod UID and container id. The node's pod metadata
//! (its pods from kube-apiserver, with `status.containerStatuses`, as
//! [`crate::pods`] keeps it) joins the two. What cannot be joined yet (a pod
//! the watch has not delivered, a container without an id in its status) is
//! left out and listed in [`Joined::errors`]; the aggregator serves a pod
//! only when all of its containers have data, as metrics-server does.
//!
//! Each figure keeps the time the kubelet says it was read (cAdvisor's
//! housekeeping or the runtime's), never later than the scrape, so rates are
//! computed between true read times even when the kubelet serves the same
//! cached reading twice.
use std::{collections::HashMap, time::SystemTime};

use proto::{
    unix_nanos,
    v1::{ContainerSample, CpuSource, NodeMetadata, NodeReport, PodMetadata, PodSample, Usage},
};

use crate::parse::{CpuUsage, KubeletStats};

/// A node's pods by namespace and name: the join from the kubelet's names to
/// the wire's UIDs and container ids.
pub struct Names<'m>(HashMap<(&'m str, &'m str), &'m PodMetadata>);

impl<'m> Names<'m> {
    pub fn new(meta: &'m NodeMetadata) -> Self {
        Self(
            meta.pods
                .iter()
                .map(|p| ((p.namespace.as_str(), p.name.as_str()), p))
                .collect(),
        )
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&'m PodMetadata> {
        self.0.get(&(namespace, name)).copied()
    }

    /// The id of `pod`'s container `name`, once its status names one.
    pub fn container_id(pod: &'m PodMetadata, name: &str) -> Option<&'m str> {
        pod.containers
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.id.as_str())
    }
}

/// Why kubelet stats could not be joined at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(
        "the kubelet reported no node totals (node_cpu_usage_seconds_total and node_memory_working_set_bytes)"
    )]
    NoNode,
}

/// One cgroup's counters as the kubelet read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// Cumulative core-nanoseconds.
    pub cpu_ns: u64,
    pub working_set_bytes: u64,
    pub swap_bytes: Option<u64>,
    /// When the kubelet read the CPU counter, never later than the scrape.
    pub read_at: SystemTime,
}

impl Reading {
    fn new(
        cpu: CpuUsage,
        working_set_bytes: u64,
        swap_bytes: Option<u64>,
        scraped: SystemTime,
    ) -> Self {
        Self {
            cpu_ns: cpu.cumulative_ns,
            working_set_bytes,
            swap_bytes,
            read_at: cpu.time.min(scraped),
        }
    }

    fn usage(&self) -> Usage {
        Usage {
            cpu_ns: self.cpu_ns,
            memory_working_set_bytes: self.working_set_bytes,
            swap_bytes: self.swap_bytes,
            read_unix_nanos: Some(unix_nanos(self.read_at)).filter(|&n| n > 0),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub reading: Reading,
    pub started: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub uid: String,
    /// Sorted by id.
    pub containers: Vec<Container>,
}

/// One scrape, in the wire's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// When the scrape answered.
    pub scraped: SystemTime,
    pub node: Reading,
    /// Sorted by UID; a pod none of whose containers could be joined is left out.
    pub pods: Vec<Pod>,
    /// What could not be joined, and the kubelet's own collection failure.
    pub errors: Vec<String>,
}

/// The kubelet's `stats`, scraped at `scraped`, joined to `meta`.
pub fn join(
    stats: &KubeletStats,
    meta: &NodeMetadata,
    scraped: SystemTime,
) -> Result<Joined, Error> {
    let node = stats.node.as_ref().ok_or(Error::NoNode)?;
    let names = Names::new(meta);
    let mut errors = Vec::new();
    if stats.scrape_error {
        errors.push("the kubelet says it failed to collect some container stats".to_string());
    }
    let mut pods = Vec::with_capacity(stats.pods.len());
    for pod in &stats.pods {
        let Some(pm) = names.pod(&pod.namespace, &pod.name) else {
            errors.push(format!(
                "kubelet pod {}/{}: not among this node's pods (yet)",
                pod.namespace, pod.name
            ));
            continue;
        };
        let mut containers = Vec::with_capacity(pod.containers.len());
        for c in &pod.containers {
            let Some(id) = Names::container_id(pm, &c.name) else {
                errors.push(format!(
                    "kubelet container {}/{}/{}: no container id in the pod's status (yet)",
                    pod.namespace, pod.name, c.name
                ));
                continue;
            };
            containers.push(Container {
                id: id.to_string(),
                reading: Reading::new(c.cpu, c.memory.working_set_bytes, c.swap_bytes, scraped),
                started: c.start_time,
            });
        }
        if containers.is_empty() {
            continue;
        }
        containers.sort_by(|a, b| a.id.cmp(&b.id));
        pods.push(Pod {
            uid: pm.uid.clone(),
            containers,
        });
    }
    pods.sort_by(|a, b| a.uid.cmp(&b.uid));
    Ok(Joined {
        scraped,
        node: Reading::new(
            node.cpu,
            node.memory.working_set_bytes,
            node.swap_bytes,
            scraped,
        ),
        pods,
        errors,
    })
}

impl Joined {
    /// Report number `seq` of `node`, whose counters count from `epoch`
    /// (a new epoch: no rate across it), without metadata.
    pub fn report(&self, node: &str, seq: u64, epoch: u64) -> NodeReport {
        NodeReport {
            node: node.to_string(),
            sample_unix_nanos: unix_nanos(self.scraped),
            node_usage: Some(self.node.usage()),
            pods: self
                .pods
                .iter()
                .map(|p| PodSample {
                    uid: p.uid.clone(),
                    containers: p
                        .containers
                        .iter()
                        .map(|c| ContainerSample {
                            id: c.id.clone(),
                            usage: Some(c.reading.usage()),
                            start_unix_nanos: c.started.map_or(0, unix_nanos),
                        })
                        .collect(),
                })
                .collect(),
            metadata: None,
            cpu_source: CpuSource::Kubelet as i32,
            seq,
            agent_epoch: epoch,
            metadata_continues: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use proto::v1::ContainerName;

    use super::*;

    fn meta() -> NodeMetadata {
        NodeMetadata {
            labels: Default::default(),
            pods: vec![PodMetadata {
                uid: "uid-web".into(),
                namespace: "shop".into(),
                name: "web".into(),
                running: true,
                containers: vec![ContainerName {
                    id: "aaa".into(),
                    name: "app".into(),
                }],
                ..Default::default()
            }],
        }
    }

    const BODY: &str = "\
container_cpu_usage_seconds_total{container=\"app\",namespace=\"shop\",pod=\"web\"} 12.5 1700000010000
container_memory_working_set_bytes{container=\"app\",namespace=\"shop\",pod=\"web\"} 1.048576e+07 1700000010000
container_start_time_seconds{container=\"app\",namespace=\"shop\",pod=\"web\"} 1.7e+09
container_cpu_usage_seconds_total{container=\"x\",namespace=\"other\",pod=\"stranger\"} 1 1700000010000
container_memory_working_set_bytes{container=\"x\",namespace=\"other\",pod=\"stranger\"} 4096 1700000010000
node_cpu_usage_seconds_total 1234.5 1700000009000
node_memory_working_set_bytes 2.147483648e+09 1700000009000
";

    #[test]
    fn a_scrape_becomes_the_wire_report_a_kubelet_sourced_agent_sends() {
        let scraped = UNIX_EPOCH + Duration::from_millis(1_700_000_012_000);
        let parsed = crate::parse(BODY.as_bytes(), scraped);
        let joined = join(&parsed.stats, &meta(), scraped).expect("joins");
        assert_eq!(joined.errors.len(), 1, "{:?}", joined.errors);
        let report = joined.report("node-a", 7, 42);
        assert_eq!(report.node, "node-a");
        assert_eq!((report.seq, report.agent_epoch), (7, 42));
        assert_eq!(report.cpu_source, CpuSource::Kubelet as i32);
        assert_eq!(report.sample_unix_nanos, 1_700_000_012_000_000_000);
        assert!(report.metadata.is_none());
        let node = report.node_usage.expect("node usage");
        assert_eq!(node.cpu_ns, 1_234_500_000_000);
        assert_eq!(node.read_unix_nanos, Some(1_700_000_009_000_000_000));
        let [pod] = report.pods.as_slice() else {
            panic!("one pod: {:?}", report.pods)
        };
        assert_eq!(pod.uid, "uid-web");
        let c = &pod.containers[0];
        assert_eq!(c.id, "aaa");
        assert_eq!(c.start_unix_nanos, 1_700_000_000_000_000_000);
        let usage = c.usage.expect("usage");
        assert_eq!(usage.cpu_ns, 12_500_000_000);
        assert_eq!(usage.memory_working_set_bytes, 10 << 20);
        assert_eq!(usage.read_unix_nanos, Some(1_700_000_010_000_000_000));
    }
}
