//! `nodepulse-agent top`: a live table of the node's pods and containers, for
//! seeing what the agent measures, with or without a cluster.
use std::{fmt::Write as _, time::Duration};

use proto::v1::NodeMetadata;

use crate::collector::{Named, Snapshot};

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

/// Column widths: pod, QoS, container, id, CPU, memory.
const WIDTHS: [usize; 6] = [40, 10, 20, 36, 10, 13];

/// One table row: text columns padded on the right, the two figures on
/// the left. Written straight into `out` (the formatter's padding writes
/// one fill character at a time, most of a 110-pod table's cost).
fn row(out: &mut String, text: [&str; 4], cpu: Option<f64>, memory: u64) {
    const SPACES: &str = "                                        ";
    let pad = |out: &mut String, n: usize| {
        for _ in 0..n / SPACES.len() {
            out.push_str(SPACES);
        }
        out.push_str(&SPACES[..n % SPACES.len()]);
    };
    for (cell, width) in text.iter().zip(WIDTHS) {
        out.push_str(cell);
        pad(out, width.saturating_sub(cell.chars().count()) + 1);
    }
    let figure = |out: &mut String, width: usize, write: &dyn Fn(&mut String)| {
        let at = out.len();
        write(out);
        let len = out.len() - at;
        if len < width {
            out.insert_str(at, &SPACES[..(width - len).min(SPACES.len())]);
        }
    };
    figure(out, WIDTHS[4], &|out| match cpu {
        Some(m) => {
            let _ = write!(out, "{m:.1}m");
        }
        None => out.push('-'),
    });
    out.push(' ');
    figure(out, WIDTHS[5], &|out| {
        let _ = write!(out, "{:.1}Mi", mib(memory));
    });
    out.push('\n');
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
    let named = names.map(Named::new);
    let mut rows = String::with_capacity(128 * (1 + cur.pods.len() * 2));
    let (mut shown, mut hidden) = (0, 0);
    let mut label = String::new();
    let mut containers = Vec::new();
    for pod in cur.pods.values() {
        let meta = named.as_ref().and_then(|n| n.pod(&pod.uid));
        containers.clear();
        containers.extend(
            pod.containers
                .iter()
                .filter(|c| named.is_none() || Named::names(meta, &c.id)),
        );
        hidden += pod.containers.len() - containers.len();
        if containers.is_empty() {
            continue;
        }
        shown += 1;
        let before = prev.pods.get(&pod.uid);
        let was = |id: &str| before.and_then(|b| b.containers.iter().find(|p| p.id == id));
        // A pod's rate only where every shown container has one.
        let pod_cpu = containers
            .iter()
            .map(|c| was(&c.id).map(|w| (w.cpu_ns, c.cpu_ns)))
            .try_fold((0, 0), |(a, b), r| r.map(|(w, c)| (a + w, b + c)))
            .and_then(|(was, now)| millicores(was, now, window));
        label.clear();
        let id = match meta {
            Some(m) => {
                let _ = write!(label, "{}/{}", m.namespace, m.name);
                pod.uid.as_str()
            }
            None => {
                label.push_str(&pod.uid);
                ""
            }
        };
        let qos = pod.qos.map_or("-", |q| q.name());
        let working_set = containers.iter().map(|c| c.memory.working_set).sum();
        row(&mut rows, [&label, qos, "", id], pod_cpu, working_set);
        for c in &containers {
            let cpu = was(&c.id).and_then(|w| millicores(w.cpu_ns, c.cpu_ns, window));
            let name = meta
                .and_then(|m| m.containers.iter().find(|n| n.id == c.id))
                .map_or("", |n| n.name.as_str());
            row(
                &mut rows,
                ["", "", name, short(&c.id)],
                cpu,
                c.memory.working_set,
            );
        }
    }
    let mut out = String::with_capacity(rows.len() + 512);
    let _ = writeln!(
        out,
        "cpu source: {}   window: {:.3}s   pods: {shown}",
        cur.source,
        window.as_secs_f64(),
    );
    let _ = writeln!(
        out,
        "{:<40} {:<10} {:<20} {:<36} {:>10} {:>13}",
        "POD", "QOS", "CONTAINER", "ID", "CPU", "MEMORY"
    );
    row(
        &mut out,
        ["(node)", "", "", ""],
        millicores(prev.node.cpu_ns, cur.node.cpu_ns, window),
        cur.node.memory.working_set,
    );
    out.push_str(&rows);
    if names.is_some() && hidden > 0 {
        let _ = writeln!(
            out,
            "not shown: {hidden} container cgroup(s) no pod lists (pod sandboxes; containers not reported yet)"
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
    fn columns_line_up() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let t1 = t0 + Duration::from_secs(1);
        let table = render(&snap(t0, 0, 0), &snap(t1, 123_456_789_012, 1), None);
        eprintln!("{table}");
        let rows: Vec<&str> = table.lines().skip(1).collect();
        assert_eq!(rows.len(), 4, "header, node, pod, container: {table}");
        let cpu_end = rows[0].find("CPU").expect("CPU header") + "CPU".len();
        for row in &rows {
            assert_eq!(row.len(), rows[0].len(), "{table}");
        }
        assert_eq!(
            rows[1].find("123456.8m").map(|at| at + "123456.8m".len()),
            Some(cpu_end),
            "figures end under their header: {table}"
        );
        assert!(rows[1].ends_with(" 0.0Mi"), "{table}");
    }

    #[test]
    fn counter_reset_shows_no_rate() {
        assert_eq!(millicores(10, 5, Duration::from_secs(1)), None);
        assert_eq!(millicores(0, 5, Duration::ZERO), None);
        assert_eq!(millicores(0, 1_000_000, Duration::from_secs(1)), Some(1.0));
    }
}
