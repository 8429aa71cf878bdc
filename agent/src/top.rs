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

/// Writes `n` spaces (the formatter's padding writes one fill character
/// at a time, most of a 110-pod table's cost).
fn pad(out: &mut String, n: usize) {
    const SPACES: &str = "                                        ";
    for _ in 0..n / SPACES.len() {
        out.push_str(SPACES);
    }
    out.push_str(&SPACES[..n % SPACES.len()]);
}

/// One line of the table, header or row: text cells padded on the right,
/// figures on the left, to [`WIDTHS`].
fn line(out: &mut String, text: [&str; 4], figures: [&str; 2]) {
    let (text_widths, figure_widths) = WIDTHS.split_at(text.len());
    for (cell, width) in text.iter().zip(text_widths) {
        out.push_str(cell);
        pad(out, width.saturating_sub(cell.chars().count()) + 1);
    }
    for (i, (cell, width)) in figures.iter().zip(figure_widths).enumerate() {
        if i > 0 {
            out.push(' ');
        }
        pad(out, width.saturating_sub(cell.chars().count()));
        out.push_str(cell);
    }
    out.push('\n');
}

/// One row: CPU in millicores (`-` without a rate) and memory, formatted
/// in `scratch` (reused, so a row allocates nothing).
fn row(out: &mut String, scratch: &mut String, text: [&str; 4], cpu: Option<f64>, memory: u64) {
    scratch.clear();
    let _ = match cpu {
        Some(m) => write!(scratch, "{m:.1}m"),
        None => write!(scratch, "-"),
    };
    let cpu_len = scratch.len();
    let _ = write!(scratch, "{:.1}Mi", mib(memory));
    let (cpu, memory) = scratch.split_at(cpu_len);
    line(out, text, [cpu, memory]);
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
    let (mut label, mut scratch) = (String::new(), String::new());
    // Each shown container with its sample in `prev`, if it had one.
    let mut containers = Vec::new();
    for pod in cur.pods.values() {
        let meta = named.as_ref().and_then(|n| n.pod(&pod.uid));
        let before = prev.pods.get(&pod.uid);
        containers.clear();
        containers.extend(
            pod.containers
                .iter()
                .filter(|c| named.is_none() || Named::names(meta, &c.id))
                .map(|c| {
                    let was = before.and_then(|b| b.containers.iter().find(|p| p.id == c.id));
                    (c, was)
                }),
        );
        hidden += pod.containers.len() - containers.len();
        if containers.is_empty() {
            continue;
        }
        shown += 1;
        // A pod's rate only where every shown container has one.
        let pod_cpu = containers
            .iter()
            .map(|(c, was)| was.map(|w| (w.cpu_ns, c.cpu_ns)))
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
        let working_set = containers.iter().map(|(c, _)| c.memory.working_set).sum();
        row(
            &mut rows,
            &mut scratch,
            [&label, qos, "", id],
            pod_cpu,
            working_set,
        );
        for (c, was) in &containers {
            let cpu = was.and_then(|w| millicores(w.cpu_ns, c.cpu_ns, window));
            let name = meta
                .and_then(|m| m.containers.iter().find(|n| n.id == c.id))
                .map_or("", |n| n.name.as_str());
            row(
                &mut rows,
                &mut scratch,
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
    line(
        &mut out,
        ["POD", "QOS", "CONTAINER", "ID"],
        ["CPU", "MEMORY"],
    );
    row(
        &mut out,
        &mut scratch,
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
