//! `nodepulse-agent top`: a live table of the node's pods and containers, for
//! seeing what the agent measures, with or without a cluster.
use std::{fmt::Write as _, time::Duration};

use proto::v1::NodeMetadata;

use crate::collector::Snapshot;

/// CPU rate between two cumulative readings, in millicores.
pub fn millicores(prev_ns: u64, cur_ns: u64, window: Duration) -> Option<f64> {
    if cur_ns < prev_ns || window.is_zero() {
        return None;
    }
    Some((cur_ns - prev_ns) as f64 / window.as_nanos() as f64 * 1000.0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn cpu_cell(m: Option<f64>) -> String {
    m.map_or_else(|| "-".into(), |m| format!("{m:.1}m"))
}

/// Renders the table for `cur`, with rates against `prev` (the same node one
/// interval earlier). Pods and containers new since `prev` show `-` for CPU.
///
/// With `names` (the node's pods as kube-apiserver knows them) pods show as
/// `namespace/name` with their UID, containers by name with their id, and
/// what no pod names — pod sandboxes, containers not yet reported — is left
/// out and counted. Without, pods show by UID and containers by id only.
pub fn render(prev: &Snapshot, cur: &Snapshot, names: Option<&NodeMetadata>) -> String {
    let window = cur
        .timestamp
        .duration_since(prev.timestamp)
        .unwrap_or_default();
    let mut shown = cur.clone();
    let hidden = names.map(|meta| shown.retain_named(meta));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cpu source: {}   window: {:.3}s   pods: {}",
        cur.source,
        window.as_secs_f64(),
        shown.pods.len()
    );
    let _ = writeln!(
        out,
        "{:<40} {:<10} {:<20} {:<36} {:>10} {:>12}",
        "POD", "QOS", "CONTAINER", "ID", "CPU", "MEMORY"
    );
    let _ = writeln!(
        out,
        "{:<40} {:<10} {:<20} {:<36} {:>10} {:>11.1}Mi",
        "(node)",
        "",
        "",
        "",
        cpu_cell(millicores(prev.node.cpu_ns, cur.node.cpu_ns, window)),
        mib(cur.node.memory.working_set)
    );
    for pod in shown.pods.values() {
        let meta = names.and_then(|m| m.pods.iter().find(|p| p.uid == pod.uid));
        let before = prev.pods.get(&pod.uid);
        let same_containers = before.is_some_and(|b| {
            pod.containers
                .iter()
                .all(|c| b.containers.iter().any(|p| p.id == c.id))
        });
        let pod_cpu = before.filter(|_| same_containers).and_then(|b| {
            let was: u64 = b
                .containers
                .iter()
                .filter(|p| pod.containers.iter().any(|c| c.id == p.id))
                .map(|p| p.cpu_ns)
                .sum();
            millicores(was, pod.cpu_ns(), window)
        });
        let (label, id) = match meta {
            Some(m) => (format!("{}/{}", m.namespace, m.name), pod.uid.as_str()),
            None => (pod.uid.clone(), ""),
        };
        let _ = writeln!(
            out,
            "{:<40} {:<10} {:<20} {:<36} {:>10} {:>11.1}Mi",
            label,
            pod.qos.map_or_else(|| "-".to_string(), |q| q.to_string()),
            "",
            id,
            cpu_cell(pod_cpu),
            mib(pod.working_set())
        );
        for c in &pod.containers {
            let was = before.and_then(|b| b.containers.iter().find(|p| p.id == c.id));
            let cpu = was.and_then(|w| millicores(w.cpu_ns, c.cpu_ns, window));
            let name = meta
                .and_then(|m| m.containers.iter().find(|n| n.id == c.id))
                .map_or("", |n| n.name.as_str());
            let _ = writeln!(
                out,
                "{:<40} {:<10} {:<20} {:<36} {:>10} {:>11.1}Mi",
                "",
                "",
                name,
                short(&c.id),
                cpu_cell(cpu),
                mib(c.memory.working_set)
            );
        }
    }
    if let Some(n) = hidden.filter(|&n| n > 0) {
        let _ = writeln!(
            out,
            "not shown: {n} container cgroup(s) no pod lists (pod sandboxes; containers not reported yet)"
        );
    }
    for e in &cur.errors {
        let _ = writeln!(out, "skipped: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        time::{Duration, SystemTime},
    };

    use super::*;
    use crate::{
        cgroup::{QosClass, Runtime, stats::Memory},
        collector::{ContainerSample, CpuSource, NodeSample, PodSample},
    };

    fn snap(at: SystemTime, node_ns: u64, c_ns: u64) -> Snapshot {
        let container = ContainerSample {
            id: "abcdef0123456789".into(),
            runtime: Some(Runtime::Containerd),
            cgroup: Some("/x".into()),
            cpu_ns: c_ns,
            memory: Memory {
                usage: 3 << 20,
                working_set: 2 << 20,
                swap: None,
            },
            started: None,
            read_at: None,
        };
        let mut pods = BTreeMap::new();
        pods.insert(
            "uid-1".into(),
            PodSample {
                uid: "uid-1".into(),
                qos: Some(QosClass::Burstable),
                containers: vec![container],
            },
        );
        Snapshot {
            timestamp: at,
            source: CpuSource::Switch,
            node: NodeSample {
                cpu_ns: node_ns,
                memory: Memory::default(),
                read_at: None,
            },
            pods,
            errors: vec![],
        }
    }

    #[test]
    fn rates_over_the_true_window() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let t1 = t0 + Duration::from_millis(2000);
        let table = render(
            &snap(t0, 0, 0),
            &snap(t1, 4_000_000_000, 1_000_000_000),
            None,
        );
        assert!(table.contains("window: 2.000s"), "{table}");
        assert!(table.contains("2000.0m"), "node at 2 cores: {table}");
        assert!(table.contains("500.0m"), "container at 0.5 core: {table}");
        assert!(table.contains("abcdef012345 "), "{table}");
        assert!(table.contains("2.0Mi"), "{table}");
    }

    #[test]
    fn with_names_pods_and_containers_are_named_and_sandboxes_left_out() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let t1 = t0 + Duration::from_secs(1);
        let with_sandbox = |at, ns| {
            let mut s = snap(at, ns, ns);
            let pod = s.pods.get_mut("uid-1").expect("pod");
            let mut sandbox = pod.containers[0].clone();
            sandbox.id = "5a4db0c0ffee0000".into();
            pod.containers.push(sandbox);
            s
        };
        let meta = NodeMetadata {
            labels: Default::default(),
            pods: vec![proto::v1::PodMetadata {
                uid: "uid-1".into(),
                namespace: "shop".into(),
                name: "web".into(),
                containers: vec![proto::v1::ContainerName {
                    id: "abcdef0123456789".into(),
                    name: "app".into(),
                }],
                ..Default::default()
            }],
        };
        let table = render(
            &with_sandbox(t0, 0),
            &with_sandbox(t1, 500_000_000),
            Some(&meta),
        );
        assert!(table.contains("shop/web"), "{table}");
        assert!(table.contains("uid-1"), "{table}");
        assert!(table.contains(" app "), "{table}");
        assert!(table.contains("abcdef012345"), "{table}");
        assert!(
            !table.contains("5a4db0c0ffee"),
            "the sandbox is not a row: {table}"
        );
        assert!(table.contains("not shown: 1 container"), "{table}");
        assert!(
            table.contains("500.0m"),
            "the pod's CPU is its named containers': {table}"
        );
    }

    #[test]
    fn counter_reset_shows_no_rate() {
        assert_eq!(millicores(10, 5, Duration::from_secs(1)), None);
        assert_eq!(millicores(0, 5, Duration::ZERO), None);
        assert_eq!(millicores(0, 1_000_000, Duration::from_secs(1)), Some(1.0));
    }
}
