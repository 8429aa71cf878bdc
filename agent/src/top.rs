//! `nodepulse-agent top`: a live table of the node's pods and containers, for
//! seeing what the agent measures without a cluster.
use std::{fmt::Write as _, time::Duration};

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
pub fn render(prev: &Snapshot, cur: &Snapshot) -> String {
    let window = cur
        .timestamp
        .duration_since(prev.timestamp)
        .unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cpu source: {}   window: {:.3}s   pods: {}",
        cur.source,
        window.as_secs_f64(),
        cur.pods.len()
    );
    let _ = writeln!(
        out,
        "{:<38} {:<10} {:<14} {:>10} {:>12}",
        "POD UID", "QOS", "CONTAINER", "CPU", "MEMORY"
    );
    let _ = writeln!(
        out,
        "{:<38} {:<10} {:<14} {:>10} {:>11.1}Mi",
        "(node)",
        "",
        "",
        cpu_cell(millicores(prev.node.cpu_ns, cur.node.cpu_ns, window)),
        mib(cur.node.memory.working_set)
    );
    for pod in cur.pods.values() {
        let before = prev.pods.get(&pod.uid);
        let pod_cpu = before
            .filter(|b| b.containers.len() == pod.containers.len())
            .and_then(|b| millicores(b.cpu_ns(), pod.cpu_ns(), window));
        let _ = writeln!(
            out,
            "{:<38} {:<10} {:<14} {:>10} {:>11.1}Mi",
            pod.uid,
            pod.qos.map_or_else(|| "-".to_string(), |q| q.to_string()),
            "",
            cpu_cell(pod_cpu),
            mib(pod.working_set())
        );
        for c in &pod.containers {
            let was = before.and_then(|b| b.containers.iter().find(|p| p.id == c.id));
            let cpu = was.and_then(|w| millicores(w.cpu_ns, c.cpu_ns, window));
            let _ = writeln!(
                out,
                "{:<38} {:<10} {:<14} {:>10} {:>11.1}Mi",
                "",
                "",
                short(&c.id),
                cpu_cell(cpu),
                mib(c.memory.working_set)
            );
        }
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
            source: CpuSource::Ebpf,
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
        let table = render(&snap(t0, 0, 0), &snap(t1, 4_000_000_000, 1_000_000_000));
        assert!(table.contains("window: 2.000s"), "{table}");
        assert!(table.contains("2000.0m"), "node at 2 cores: {table}");
        assert!(table.contains("500.0m"), "container at 0.5 core: {table}");
        assert!(table.contains("abcdef012345 "), "{table}");
        assert!(table.contains("2.0Mi"), "{table}");
    }

    #[test]
    fn counter_reset_shows_no_rate() {
        assert_eq!(millicores(10, 5, Duration::from_secs(1)), None);
        assert_eq!(millicores(0, 5, Duration::ZERO), None);
        assert_eq!(millicores(0, 1_000_000, Duration::from_secs(1)), Some(1.0));
    }
}
