//! The periodic cross-check: our figures against the kubelet's, which are
//! what metrics-server would have served.
//!
//! The kubelet stamps every reading with the time cAdvisor (or the runtime)
//! took it, which lags the scrape by up to its housekeeping interval. So ours
//! are taken at the kubelet's instants, not at the scrape: for the few seconds
//! before a check our own readings are kept ([`CrossCheck::record`]), and ours
//! at the kubelet's read time is interpolated between the two that bracket it.
//! CPU is compared as rates between two checks, each side over the very same
//! window (our eBPF counters start when the agent first saw a container, the
//! kubelet's when the cgroup was made: only differences compare); working set
//! as the reading nearest the kubelet's.
use std::{
    collections::{HashMap, VecDeque},
    fmt,
    time::{Duration, SystemTime},
};

use ::kubelet::join::Names;
use proto::v1::NodeMetadata;

use super::parse::KubeletStats;
use crate::collector::Snapshot;

/// How far apart the two sides may be before it is called a disagreement:
/// more than `relative` of the larger figure *and* more than the absolute
/// floor (tiny figures differ by large fractions for no reason).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub relative: f64,
    pub cpu_nanocores: u64,
    pub memory_bytes: u64,
    /// CPU rates are compared over windows at least this long (shorter: the
    /// resolution of our readings dominates the error).
    pub min_window: Duration,
}

impl Default for Tolerance {
    fn default() -> Self {
        Self {
            relative: 0.10,
            cpu_nanocores: 10_000_000,
            memory_bytes: 8 << 20,
            min_window: Duration::from_secs(10),
        }
    }
}

impl Tolerance {
    fn agree(&self, a: u64, b: u64, floor: u64) -> bool {
        let diff = a.abs_diff(b);
        diff <= floor || diff as f64 <= self.relative * a.max(b) as f64
    }
}

/// Which figure disagreed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// Nanocores over the window between two checks.
    Cpu,
    /// Working-set bytes.
    Memory,
}

/// One figure on which we and the kubelet differ beyond the tolerance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disagreement {
    /// `node`, or `namespace/pod/container`.
    pub what: String,
    pub resource: Resource,
    pub ours: u64,
    pub kubelet: u64,
}

impl fmt::Display for Disagreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.resource {
            Resource::Cpu => write!(
                f,
                "{} cpu: ours {:.1}m, kubelet {:.1}m",
                self.what,
                self.ours as f64 / 1e6,
                self.kubelet as f64 / 1e6
            ),
            Resource::Memory => write!(
                f,
                "{} memory: ours {:.1}Mi, kubelet {:.1}Mi",
                self.what,
                self.ours as f64 / 1048576.0,
                self.kubelet as f64 / 1048576.0
            ),
        }
    }
}

/// The outcome of one check.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Comparison {
    /// Figures compared (a CPU rate or a working set each).
    pub compared: usize,
    pub disagreements: Vec<Disagreement>,
    /// Kubelet containers we could not pair with a reading of ours at their
    /// read time (not in our history, not joined to an id, too new).
    pub unpaired: usize,
    /// The largest difference between the two sides' CPU rates, as a
    /// fraction of the larger, among figures above the absolute floor (how
    /// close agreement was); `None` when no such figure was compared.
    pub cpu_worst: Option<f64>,
    /// The same for working sets.
    pub memory_worst: Option<f64>,
}

impl Comparison {
    fn note(&mut self, resource: Resource, ours: u64, kubelet: u64, floor: u64) {
        let larger = ours.max(kubelet);
        if larger <= floor {
            return;
        }
        let diff = ours.abs_diff(kubelet) as f64 / larger as f64;
        let worst = match resource {
            Resource::Cpu => &mut self.cpu_worst,
            Resource::Memory => &mut self.memory_worst,
        };
        *worst = Some(worst.map_or(diff, |w| w.max(diff)));
    }
}

#[derive(Clone, Copy, Debug)]
struct Reading {
    at: SystemTime,
    cpu_ns: u64,
    working_set: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Node,
    Container(String),
}

/// Both sides' cumulative CPU at one kubelet read time.
#[derive(Clone, Copy, Debug)]
struct Anchor {
    at: SystemTime,
    kubelet_ns: u64,
    ours_ns: u64,
}

/// Keeps what the next check compares against.
#[derive(Debug)]
pub struct CrossCheck {
    tolerance: Tolerance,
    /// How much of our history is kept: at least the kubelet's staleness
    /// (cAdvisor's housekeeping, 15 s at most by default) plus the scrape.
    lookback: Duration,
    history: HashMap<Key, VecDeque<Reading>>,
    anchors: HashMap<Key, Anchor>,
}

impl CrossCheck {
    pub fn new(tolerance: Tolerance, lookback: Duration) -> Self {
        Self {
            tolerance,
            lookback,
            history: HashMap::new(),
            anchors: HashMap::new(),
        }
    }

    /// How long before a check [`record`](Self::record) must start.
    pub fn lookback(&self) -> Duration {
        self.lookback
    }

    /// Keeps `s`'s readings (and drops those older than the lookback).
    pub fn record(&mut self, s: &Snapshot) {
        let mut push = |key: Key, cpu_ns: u64, working_set: u64| {
            let q = self.history.entry(key).or_default();
            q.push_back(Reading {
                at: s.timestamp,
                cpu_ns,
                working_set,
            });
            while q.front().is_some_and(|r| {
                s.timestamp.duration_since(r.at).unwrap_or_default() > self.lookback
            }) {
                q.pop_front();
            }
        };
        push(Key::Node, s.node.cpu_ns, s.node.memory.working_set);
        for c in s.pods.values().flat_map(|p| &p.containers) {
            push(Key::Container(c.id.clone()), c.cpu_ns, c.memory.working_set);
        }
        let stale = s.timestamp.checked_sub(self.lookback);
        self.history
            .retain(|_, q| q.back().is_some_and(|r| stale.is_none_or(|t| r.at >= t)));
    }

    /// Compares the kubelet's `stats` with what was recorded; `meta` joins
    /// the kubelet's names to our container ids. The history is then
    /// dropped: [`record`](Self::record) again before the next check.
    pub fn compare(&mut self, stats: &KubeletStats, meta: &NodeMetadata) -> Comparison {
        let mut out = Comparison::default();
        let mut anchors = HashMap::new();
        if let Some(node) = &stats.node {
            self.pair(
                &mut out,
                &mut anchors,
                Key::Node,
                "node".into(),
                (node.cpu.time, node.cpu.cumulative_ns),
                (node.memory.time, node.memory.working_set_bytes),
            );
        }
        let names = Names::new(meta);
        for pod in &stats.pods {
            let pm = names.pod(&pod.namespace, &pod.name);
            for c in &pod.containers {
                let Some(id) = pm.and_then(|pm| Names::container_id(pm, &c.name)) else {
                    out.unpaired += 1;
                    continue;
                };
                self.pair(
                    &mut out,
                    &mut anchors,
                    Key::Container(id.to_string()),
                    format!("{}/{}/{}", pod.namespace, pod.name, c.name),
                    (c.cpu.time, c.cpu.cumulative_ns),
                    (c.memory.time, c.memory.working_set_bytes),
                );
            }
        }
        self.anchors = anchors;
        self.history.clear();
        out
    }

    fn pair(
        &self,
        out: &mut Comparison,
        anchors: &mut HashMap<Key, Anchor>,
        key: Key,
        what: String,
        (cpu_at, kubelet_ns): (SystemTime, u64),
        (mem_at, kubelet_ws): (SystemTime, u64),
    ) {
        let Some(history) = self.history.get(&key) else {
            out.unpaired += 1;
            return;
        };
        if let Some(ours_ws) = nearest(history, mem_at) {
            out.compared += 1;
            out.note(
                Resource::Memory,
                ours_ws,
                kubelet_ws,
                self.tolerance.memory_bytes,
            );
            if !self
                .tolerance
                .agree(ours_ws, kubelet_ws, self.tolerance.memory_bytes)
            {
                out.disagreements.push(Disagreement {
                    what: what.clone(),
                    resource: Resource::Memory,
                    ours: ours_ws,
                    kubelet: kubelet_ws,
                });
            }
        }
        let Some(ours_ns) = interpolate(history, cpu_at) else {
            out.unpaired += 1;
            return;
        };
        let now = Anchor {
            at: cpu_at,
            kubelet_ns,
            ours_ns,
        };
        let before = self.anchors.get(&key).copied();
        let window = before.and_then(|b| cpu_at.duration_since(b.at).ok());
        match (before, window) {
            (Some(b), Some(window)) if window >= self.tolerance.min_window => {
                anchors.insert(key, now);
                // A counter that went backwards restarted: nothing to compare.
                let (Some(k), Some(o)) = (
                    kubelet_ns.checked_sub(b.kubelet_ns),
                    ours_ns.checked_sub(b.ours_ns),
                ) else {
                    return;
                };
                let rate = |ns: u64| (ns as f64 / window.as_secs_f64()) as u64;
                let (kubelet, ours) = (rate(k), rate(o));
                out.compared += 1;
                out.note(Resource::Cpu, ours, kubelet, self.tolerance.cpu_nanocores);
                if !self
                    .tolerance
                    .agree(ours, kubelet, self.tolerance.cpu_nanocores)
                {
                    out.disagreements.push(Disagreement {
                        what,
                        resource: Resource::Cpu,
                        ours,
                        kubelet,
                    });
                }
            }
            // The same cached kubelet reading, or too close to the last:
            // keep the older anchor so the next window is long enough.
            (Some(b), _) => {
                anchors.insert(key, b);
            }
            (None, _) => {
                anchors.insert(key, now);
            }
        }
    }
}

/// Our cumulative CPU at `t`, on the line between the readings around it.
fn interpolate(history: &VecDeque<Reading>, t: SystemTime) -> Option<u64> {
    let after = history.iter().position(|r| r.at >= t)?;
    let b = history[after];
    if b.at == t {
        return Some(b.cpu_ns);
    }
    let a = history[after.checked_sub(1)?];
    let span = b.at.duration_since(a.at).ok()?.as_secs_f64();
    let into = t.duration_since(a.at).ok()?.as_secs_f64();
    let grown = b.cpu_ns.checked_sub(a.cpu_ns)? as f64;
    Some(a.cpu_ns + (grown * into / span) as u64)
}

/// Our working set at the reading nearest `t`, if one is within a couple of
/// seconds (farther: not the same moment).
fn nearest(history: &VecDeque<Reading>, t: SystemTime) -> Option<u64> {
    let distance = |r: &Reading| {
        r.at.duration_since(t)
            .or_else(|_| t.duration_since(r.at))
            .unwrap_or_default()
    };
    history
        .iter()
        .min_by_key(|r| distance(r))
        .filter(|r| distance(r) <= Duration::from_secs(2))
        .map(|r| r.working_set)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proto::v1::{ContainerName, PodMetadata};

    use super::*;
    use crate::{
        cgroup::stats::Memory,
        collector::{ContainerSample, CpuSource, NodeSample, PodSample},
        kubelet::parse::{ContainerStats, CpuUsage, MemoryUsage, NodeStats, PodStats},
    };

    const T0: u64 = 1_700_000_000;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(T0 * 1000 + ms)
    }

    /// Ours at `ms`: the node at 2 cores, container `aaa` at `cores_a`,
    /// `bbb` at 0.25 core; working sets fixed.
    fn ours(ms: u64, cores_a: f64) -> Snapshot {
        let container = |id: &str, cpu_ns: u64, ws: u64| ContainerSample {
            id: id.into(),
            runtime: None,
            cgroup: None,
            cpu_ns,
            memory: Memory {
                usage: ws,
                working_set: ws,
                swap: None,
            },
            started: None,
            read_at: None,
        };
        let mut pods = BTreeMap::new();
        pods.insert(
            "uid-web".to_string(),
            PodSample {
                uid: "uid-web".into(),
                qos: None,
                containers: vec![
                    container("aaa", (ms as f64 * 1e6 * cores_a) as u64, 100 << 20),
                    container("bbb", ms * 250_000, 50 << 20),
                ],
            },
        );
        Snapshot {
            timestamp: at(ms),
            source: CpuSource::Switch,
            node: NodeSample {
                cpu_ns: ms * 2_000_000,
                memory: Memory {
                    usage: 2 << 30,
                    working_set: 2 << 30,
                    swap: None,
                },
                read_at: None,
            },
            pods,
            errors: vec![],
        }
    }

    fn meta() -> NodeMetadata {
        NodeMetadata {
            labels: Default::default(),
            pods: vec![PodMetadata {
                uid: "uid-web".into(),
                namespace: "shop".into(),
                name: "web".into(),
                running: true,
                containers: vec![
                    ContainerName {
                        id: "aaa".into(),
                        name: "app".into(),
                    },
                    ContainerName {
                        id: "bbb".into(),
                        name: "sidecar".into(),
                    },
                ],
                ..Default::default()
            }],
        }
    }

    /// The kubelet read everything at `ms`, with counters that started
    /// long before ours (an offset that must not matter): the node at 2
    /// cores, `app` at `cores_a`, `sidecar` at 0.25, working set of `app`
    /// `ws_a`.
    fn kubelet(ms: u64, cores_a: f64, ws_a: u64) -> KubeletStats {
        let offset = 9_000_000_000_000;
        let cpu = |ns: u64| CpuUsage {
            cumulative_ns: offset + ns,
            time: at(ms),
        };
        let mem = |b: u64| MemoryUsage {
            working_set_bytes: b,
            time: at(ms),
        };
        let container = |name: &str, cpu_ns: u64, ws: u64| ContainerStats {
            name: name.into(),
            cpu: cpu(cpu_ns),
            memory: mem(ws),
            swap_bytes: None,
            start_time: None,
        };
        KubeletStats {
            node: Some(NodeStats {
                cpu: cpu(ms * 2_000_000),
                memory: mem(2 << 30),
                swap_bytes: None,
            }),
            pods: vec![PodStats {
                namespace: "shop".into(),
                name: "web".into(),
                cpu: None,
                memory: None,
                swap_bytes: None,
                containers: vec![
                    container("app", (ms as f64 * 1e6 * cores_a) as u64, ws_a),
                    container("sidecar", ms * 250_000, 50 << 20),
                ],
                incomplete_containers: vec![],
            }],
            scrape_error: false,
        }
    }

    /// Records ours every second over `[from, to]` ms.
    fn record(check: &mut CrossCheck, from: u64, to: u64, cores_a: f64) {
        for ms in (from..=to).step_by(1000) {
            check.record(&ours(ms, cores_a));
        }
    }

    #[test]
    fn agreeing_sources_raise_nothing_and_stale_kubelet_readings_are_met_at_their_time() {
        let mut check = CrossCheck::new(Tolerance::default(), Duration::from_secs(30));
        // The kubelet's readings are 7.5 s old at the scrape (between two of
        // our readings: interpolated).
        record(&mut check, 0, 20_000, 1.0);
        let first = check.compare(&kubelet(12_500, 1.0, 100 << 20), &meta());
        // First check: working sets only (a rate needs two).
        assert_eq!(first.compared, 3, "{first:?}");
        assert!(first.disagreements.is_empty(), "{first:?}");
        assert_eq!(first.unpaired, 0);
        assert_eq!(first.cpu_worst, None, "no rate yet");
        assert!(first.memory_worst.is_some_and(|w| w < 0.01), "{first:?}");

        record(&mut check, 50_000, 80_000, 1.0);
        let second = check.compare(&kubelet(71_300, 1.0, 100 << 20), &meta());
        assert_eq!(second.compared, 6, "{second:?}");
        assert!(second.disagreements.is_empty(), "{second:?}");
        assert!(second.cpu_worst.is_some_and(|w| w < 0.01), "{second:?}");
    }

    #[test]
    fn cpu_and_memory_disagreements_are_reported_with_both_figures() {
        let mut check = CrossCheck::new(Tolerance::default(), Duration::from_secs(30));
        record(&mut check, 0, 20_000, 1.0);
        // We see `app` at 1 core; the kubelet's counter grows at 0.5 core.
        let first = check.compare(&kubelet(15_000, 0.5, 100 << 20), &meta());
        assert!(first.disagreements.is_empty(), "{first:?}");
        // ... and then it says 40 MiB of working set.
        record(&mut check, 50_000, 80_000, 1.0);
        let c = check.compare(&kubelet(75_000, 0.5, 40 << 20), &meta());
        assert_eq!(
            c.disagreements,
            [
                Disagreement {
                    what: "shop/web/app".into(),
                    resource: Resource::Memory,
                    ours: 100 << 20,
                    kubelet: 40 << 20,
                },
                Disagreement {
                    what: "shop/web/app".into(),
                    resource: Resource::Cpu,
                    ours: 1_000_000_000,
                    kubelet: 500_000_000,
                },
            ]
        );
        assert_eq!(c.cpu_worst, Some(0.5), "half of the larger figure");
        assert_eq!(
            c.disagreements[1].to_string(),
            "shop/web/app cpu: ours 1000.0m, kubelet 500.0m"
        );
    }

    #[test]
    fn readings_we_cannot_pair_are_counted_not_compared() {
        let mut check = CrossCheck::new(Tolerance::default(), Duration::from_secs(30));
        record(&mut check, 0, 20_000, 1.0);
        let mut stats = kubelet(30_000, 1.0, 100 << 20);
        let unknown = ContainerStats {
            name: "unknown".into(),
            ..stats.pods[0].containers[0].clone()
        };
        stats.pods[0].containers.push(unknown);
        let c = check.compare(&stats, &meta());
        // Read after our last reading: no CPU pairing (working set neither:
        // 10 s from our nearest), and a container without an id.
        assert_eq!(c.compared, 0);
        assert_eq!(c.unpaired, 4);
    }

    #[test]
    fn a_reading_repeated_by_the_kubelets_cache_keeps_the_older_window() {
        let mut check = CrossCheck::new(Tolerance::default(), Duration::from_secs(30));
        record(&mut check, 0, 20_000, 1.0);
        check.compare(&kubelet(10_000, 1.0, 100 << 20), &meta());
        record(&mut check, 0, 20_000, 1.0);
        // Same reading again: nothing to rate, anchor kept.
        let again = check.compare(&kubelet(10_000, 1.0, 100 << 20), &meta());
        assert_eq!(again.compared, 3);
        record(&mut check, 40_000, 60_000, 1.0);
        let later = check.compare(&kubelet(50_000, 1.0, 100 << 20), &meta());
        assert_eq!(later.compared, 6);
        assert!(later.disagreements.is_empty(), "{later:?}");
    }

    #[test]
    fn history_is_bounded_by_the_lookback() {
        let mut check = CrossCheck::new(Tolerance::default(), Duration::from_secs(5));
        record(&mut check, 0, 60_000, 1.0);
        assert!(check.history.values().all(|q| q.len() <= 6));
        assert_eq!(check.history.len(), 3);
    }

    #[test]
    fn interpolation_is_linear_between_neighbours() {
        let q: VecDeque<Reading> = [(0, 0), (1000, 1_000_000_000)]
            .iter()
            .map(|&(ms, cpu_ns)| Reading {
                at: at(ms),
                cpu_ns,
                working_set: 0,
            })
            .collect();
        assert_eq!(interpolate(&q, at(250)), Some(250_000_000));
        assert_eq!(interpolate(&q, at(1000)), Some(1_000_000_000));
        assert_eq!(interpolate(&q, at(1001)), None);
        let before = SystemTime::UNIX_EPOCH;
        assert_eq!(interpolate(&q, before), None);
    }
}
