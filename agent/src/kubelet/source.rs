//! The kubelet's stats as a [`Snapshot`], for when cgroupfs cannot be read:
//! the shared join ([`kubelet::join`]) in the collector's terms.
use std::{collections::BTreeMap, time::SystemTime};

use ::kubelet::join::{self, Reading};
use proto::v1::NodeMetadata;

use super::parse::KubeletStats;
use crate::{
    cgroup::stats::Memory,
    collector::{ContainerSample, CpuSource, NodeSample, PodSample, Snapshot},
};

pub use join::Error;

fn memory(r: &Reading) -> Memory {
    Memory {
        usage: r.working_set_bytes,
        working_set: r.working_set_bytes,
        swap: r.swap_bytes,
    }
}

/// The kubelet's `stats` as a snapshot taken at `scraped` (when the scrape
/// answered), joined to `meta`.
pub fn snapshot(
    stats: &KubeletStats,
    meta: &NodeMetadata,
    scraped: SystemTime,
) -> Result<Snapshot, Error> {
    let joined = join::join(stats, meta, scraped)?;
    let pods = joined
        .pods
        .into_iter()
        .map(|p| {
            let containers = p
                .containers
                .into_iter()
                .map(|c| ContainerSample {
                    id: c.id,
                    runtime: None,
                    cgroup: None,
                    cpu_ns: c.reading.cpu_ns,
                    memory: memory(&c.reading),
                    started: c.started,
                    read_at: Some(c.reading.read_at),
                })
                .collect();
            let sample = PodSample {
                uid: p.uid.clone(),
                qos: None,
                containers,
            };
            (p.uid, sample)
        })
        .collect::<BTreeMap<_, _>>();
    Ok(Snapshot {
        timestamp: scraped,
        source: CpuSource::Kubelet,
        node: NodeSample {
            cpu_ns: joined.node.cpu_ns,
            memory: memory(&joined.node),
            read_at: Some(joined.node.read_at),
        },
        pods,
        errors: joined.errors,
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use proto::v1::{ContainerName, PodMetadata};

    use super::*;
    use crate::kubelet::parse;

    fn meta() -> NodeMetadata {
        let pod = |uid: &str, ns: &str, name: &str, containers: &[(&str, &str)]| PodMetadata {
            uid: uid.into(),
            namespace: ns.into(),
            name: name.into(),
            running: true,
            containers: containers
                .iter()
                .map(|(id, name)| ContainerName {
                    id: (*id).into(),
                    name: (*name).into(),
                })
                .collect(),
            ..Default::default()
        };
        NodeMetadata {
            labels: Default::default(),
            pods: vec![
                pod(
                    "uid-web",
                    "shop",
                    "web",
                    &[("aaa", "app"), ("bbb", "sidecar")],
                ),
                // Known pod, container not started yet (no id in its status).
                pod("uid-db", "shop", "db", &[]),
            ],
        }
    }

    /// In the kubelet's exposition format, as `/metrics/resource` serves it.
    const BODY: &str = "\
# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{container=\"app\",namespace=\"shop\",pod=\"web\"} 12.5 1700000010000
container_cpu_usage_seconds_total{container=\"sidecar\",namespace=\"shop\",pod=\"web\"} 0.25 1700000011000
container_cpu_usage_seconds_total{container=\"main\",namespace=\"shop\",pod=\"db\"} 3 1700000010000
container_cpu_usage_seconds_total{container=\"x\",namespace=\"other\",pod=\"stranger\"} 1 1700000010000
# HELP container_memory_working_set_bytes [STABLE] Current working set of the container in bytes
# TYPE container_memory_working_set_bytes gauge
container_memory_working_set_bytes{container=\"app\",namespace=\"shop\",pod=\"web\"} 1.048576e+07 1700000010000
container_memory_working_set_bytes{container=\"sidecar\",namespace=\"shop\",pod=\"web\"} 2.097152e+06 1700000011000
container_memory_working_set_bytes{container=\"main\",namespace=\"shop\",pod=\"db\"} 4096 1700000010000
container_memory_working_set_bytes{container=\"x\",namespace=\"other\",pod=\"stranger\"} 4096 1700000010000
# HELP container_start_time_seconds [STABLE] Start time of the container since unix epoch in seconds
# TYPE container_start_time_seconds gauge
container_start_time_seconds{container=\"app\",namespace=\"shop\",pod=\"web\"} 1.7e+09
# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds
# TYPE node_cpu_usage_seconds_total counter
node_cpu_usage_seconds_total 1234.5 1700000009000
# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes
# TYPE node_memory_working_set_bytes gauge
node_memory_working_set_bytes 2.147483648e+09 1700000009000
# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise
# TYPE resource_scrape_error gauge
resource_scrape_error 0
";

    fn at_ms(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn kubelet_names_become_uids_and_container_ids() {
        let scraped = at_ms(1_700_000_012_000);
        let parsed = parse::parse(BODY.as_bytes(), scraped);
        assert_eq!(parsed.error_count, 0, "{:?}", parsed.errors);
        let s = snapshot(&parsed.stats, &meta(), scraped).expect("snapshot");
        assert_eq!(s.source, CpuSource::Kubelet);
        assert_eq!(s.timestamp, scraped);
        assert_eq!(s.node.cpu_ns, 1_234_500_000_000);
        assert_eq!(s.node.memory.working_set, 2 << 30);
        assert_eq!(s.node.read_at, Some(at_ms(1_700_000_009_000)));

        assert_eq!(s.pods.keys().collect::<Vec<_>>(), ["uid-web"]);
        let web = &s.pods["uid-web"];
        let got: Vec<_> = web
            .containers
            .iter()
            .map(|c| (c.id.as_str(), c.cpu_ns, c.memory.working_set, c.read_at))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "aaa",
                    12_500_000_000,
                    10 << 20,
                    Some(at_ms(1_700_000_010_000))
                ),
                ("bbb", 250_000_000, 2 << 20, Some(at_ms(1_700_000_011_000))),
            ]
        );
        assert_eq!(
            web.containers[0].started,
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        // What could not be joined is said, not guessed.
        assert_eq!(s.errors.len(), 2, "{:?}", s.errors);
        assert!(s.errors.iter().any(|e| e.contains("shop/db/main")));
        assert!(s.errors.iter().any(|e| e.contains("other/stranger")));
    }

    #[test]
    fn read_times_never_postdate_the_scrape() {
        // A kubelet clock slightly ahead of ours (same node, but a proxy or a
        // test double may differ): clamped to the scrape time.
        let scraped = at_ms(1_700_000_009_500);
        let parsed = parse::parse(BODY.as_bytes(), scraped);
        let s = snapshot(&parsed.stats, &meta(), scraped).expect("snapshot");
        assert!(
            s.pods["uid-web"]
                .containers
                .iter()
                .all(|c| c.read_at == Some(scraped))
        );
        assert_eq!(s.node.read_at, Some(at_ms(1_700_000_009_000)));
    }

    #[test]
    fn no_node_totals_is_an_error() {
        let body = BODY
            .lines()
            .filter(|l| !l.starts_with("node_"))
            .collect::<Vec<_>>()
            .join("\n");
        let parsed = parse::parse(body.as_bytes(), at_ms(1_700_000_012_000));
        assert_eq!(
            snapshot(&parsed.stats, &meta(), at_ms(1_700_000_012_000)).expect_err("no node"),
            Error::NoNode
        );
    }
}
