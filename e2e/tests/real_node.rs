//! nodepulse as users run it: `deploy/components.yaml` applied unchanged to a
//! real control plane with a real node — the pinned kubelet, containerd,
//! runc, the CNI bridge, kube-proxy and CoreDNS — running the images built
//! here (`images` crate, as `cargo xtask image` builds them), with the
//! ingest TLS made by deploy/README.md's own openssl recipe; workloads are
//! pods of the burner image with known loads, started by the kubelet.
//!
//! One cluster for the whole file (it is the slowest suite): the phases run
//! in order inside one test, each named in its failure message, and what
//! they measured is printed (`cargo test -- --nocapture`).
//!
//! Needs root, BTF, cgroup v2 and iproute2; skips with a message elsewhere
//! (fails instead under NODEPULSE_REQUIRE_PRIVILEGED=1, as in CI).

mod common;
#[path = "real_node/side_by_side.rs"]
mod side_by_side;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use common::{cgroup_working_set, parse_go_duration, parse_timestamp, quantity, table};
use e2e::Cluster;
use e2e::curl::Curl;
use images::catalog;
use serde_json::{Value, json};

const NODE: &str = "node-a";
/// The node's own figures among containers' (`namespace/pod/container`).
const NODE_KEY: &str = "node";
const SYSTEM: &str = "kube-system";
const SHOP: &str = "shop";
/// The agents' sampling interval as shipped.
const INTERVAL: f64 = 1.0;
const TOLERANCE: f64 = 0.05;
/// Below these, relative errors mean nothing: an idle container's few
/// millicores, a few pages of memory.
const CPU_FLOOR: f64 = 0.002;
const MEMORY_FLOOR: f64 = (1 << 20) as f64;

/// Not a test: the body of burner processes (every e2e binary carries the
/// entry point the harness may start).
#[test]
#[ignore = "entry point of burner child processes"]
fn burner_entry() {
    testkit::burner_main();
}

#[test]
fn nodepulse_on_a_real_node() {
    let Some(h) = e2e::privileged("real_node") else {
        return;
    };
    let t0 = Instant::now();
    let mut c = Cluster::start(h, e2e::Options::real_nodes("real-node")).expect("control plane");
    c.add_real_node(NODE).expect("a real node, Ready");
    say(t0, "node Ready");
    c.install_deploy()
        .expect("install as deploy/README.md says");
    let agent_started = Instant::now();
    say(
        t0,
        "nodepulse installed: agent Running, aggregators Ready, APIServices Available",
    );
    ebpf_under_the_shipped_security_context(&c).expect("the agent measures with eBPF in its pod");

    let api = Curl::new(&c, "e2e-curl-admin", Some("system:masters"), None).expect("curl");
    start_workload(&mut c).expect("workload pods");
    identity(&mut c).expect("containers identified as the kubelet and containerd name them");
    say(t0, "identity checked");
    accuracy(&mut c, &api).expect("served figures match the kernel's counters");
    say(t0, "accuracy checked");
    side_by_side::side_by_side(&mut c, &api).expect("side by side with metrics-server");
    say(t0, "side by side with metrics-server measured");
    lifecycle(&mut c, &api).expect("lifecycle on the real runtime");
    say(t0, "lifecycle checked");
    hpa(&mut c).expect("the HPA scales on our metrics");
    say(t0, "HPA checked");
    cross_check(&mut c, agent_started).expect("the kubelet cross-check agrees");
    restarts(&mut c, &api).expect("metrics keep flowing through agent and aggregator restarts");
    say(t0, "restarts checked");
}

fn say(t0: Instant, what: &str) {
    eprintln!("real_node [{:>5.1}s]: {what}", t0.elapsed().as_secs_f64());
}

/// The agent's own log says it loaded its cgroup iterator (the first
/// choice on this kernel) and collects with it: the shipped securityContext
/// (BPF + PERFMON, RuntimeDefault seccomp, read-only everything) is enough
/// under containerd and runc.
fn ebpf_under_the_shipped_security_context(c: &Cluster) -> Result<()> {
    let logs = c.kubectl_ok(&["-n", SYSTEM, "logs", "ds/nodepulse-agent"])?;
    ensure!(
        logs.contains("BPF cgroup iterator"),
        "the agent did not load its cgroup iterator:\n{logs}"
    );
    // The log is coloured: look for the words on one line.
    ensure!(
        logs.lines()
            .any(|l| l.contains("collecting") && l.contains("iterator"))
            && !logs.contains("without eBPF"),
        "the agent does not collect with the cgroup iterator:\n{logs}"
    );
    Ok(())
}

// --- the workload ----------------------------------------------------------

fn burner_pod(c: &Cluster, name: &str, containers: &[(&str, &[&str])]) -> Result<Value> {
    let image = c.image_reference(&catalog::BURNER)?;
    Ok(e2e::manifests::burner_pod(&image, SHOP, name, containers))
}

/// Two pods of known loads (0.45 cores in all, on a 2-core machine that also
/// runs the control plane): `web` burns 300m in `app` and holds 96 MiB in
/// `cache`; `worker` burns 150m holding 32 MiB.
fn start_workload(c: &mut Cluster) -> Result<()> {
    c.kubectl_ok(&["create", "namespace", SHOP])?;
    let web = burner_pod(
        c,
        "web",
        &[("app", &["--cpu=300m"]), ("cache", &["--memory=96Mi"])],
    )?;
    let worker = burner_pod(c, "worker", &[("worker", &["--cpu=150m", "--memory=32Mi"])])?;
    c.apply(&json!({"apiVersion": "v1", "kind": "List", "items": [web, worker]}))?;
    wait_running(c, SHOP, &["web", "worker"])
}

fn wait_running(c: &mut Cluster, ns: &str, pods: &[&str]) -> Result<()> {
    let want: BTreeSet<String> = pods.iter().map(|p| p.to_string()).collect();
    c.wait_for(
        &format!("pods {pods:?} Running"),
        Duration::from_secs(90),
        move |c| {
            let running: BTreeSet<String> = node_pods(c)?
                .into_iter()
                .filter(|p| p.namespace == ns && p.ready)
                .map(|p| p.name)
                .collect();
            Ok(want.is_subset(&running).then_some(()))
        },
    )
}

/// A pod on the node as kube-apiserver knows it.
#[derive(Clone, Debug)]
struct NodePod {
    namespace: String,
    name: String,
    uid: String,
    qos: String,
    ready: bool,
    /// Running containers: (name, id without the runtime's scheme).
    containers: Vec<(String, String)>,
}

impl NodePod {
    /// A container's cgroup below the node's, as the kubelet (cgroupfs
    /// driver) and runc name it.
    fn cgroup(&self, c: &Cluster, id: &str) -> Result<String> {
        let node = c.real_node(NODE).context("the real node")?;
        let qos = match self.qos.as_str() {
            "Guaranteed" => String::new(),
            "Burstable" => "burstable/".into(),
            "BestEffort" => "besteffort/".into(),
            other => bail!("pod {}/{}: QoS {other:?}", self.namespace, self.name),
        };
        Ok(format!(
            "{}/kubepods/{qos}pod{}/{id}",
            node.cgroup_root(),
            self.uid
        ))
    }
}

fn node_pods(c: &Cluster) -> Result<Vec<NodePod>> {
    let list = c.kubectl_json(&[
        "get",
        "pods",
        "-A",
        &format!("--field-selector=spec.nodeName={NODE},status.phase=Running"),
    ])?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(NodePod::from_json)
        .collect())
}

impl NodePod {
    fn from_json(p: &Value) -> Self {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let statuses = p["status"]["containerStatuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let containers = statuses
            .iter()
            .filter(|cs| !cs["state"]["running"].is_null())
            .filter_map(|cs| {
                let id = s(&cs["containerID"]);
                let id = id.strip_prefix("containerd://")?.to_string();
                Some((s(&cs["name"]), id))
            })
            .collect();
        NodePod {
            namespace: s(&p["metadata"]["namespace"]),
            name: s(&p["metadata"]["name"]),
            uid: s(&p["metadata"]["uid"]),
            qos: s(&p["status"]["qosClass"]),
            ready: statuses.iter().all(|cs| cs["ready"] == true) && !statuses.is_empty(),
            containers,
        }
    }

    /// Each running container's key (`namespace/pod/container`) and counter.
    fn counters(&self, c: &Cluster) -> Result<Vec<(String, Counter, String)>> {
        self.containers
            .iter()
            .map(|(name, id)| {
                let rel = self.cgroup(c, id)?;
                let dir = c.cgroup_dir(&rel).context("no cgroup v2")?;
                Ok((
                    format!("{}/{}/{name}", self.namespace, self.name),
                    Counter::V2(dir),
                    rel,
                ))
            })
            .collect()
    }
}

// --- identity --------------------------------------------------------------

/// `nodepulse-agent top`, run in the agent's own pod as an operator would
/// (`kubectl exec ds/nodepulse-agent -- nodepulse-agent top`), lists every
/// running container of every pod on the node under the pod UID and
/// container id the API has for it, by name, and nothing else: no pod
/// sandbox, nothing skipped. The `not shown` count is exactly one sandbox
/// per pod.
fn identity(c: &mut Cluster) -> Result<()> {
    let pods = node_pods(c)?;
    for p in &pods {
        for (_, id) in &p.containers {
            let rel = p.cgroup(c, id)?;
            let dir = c.cgroup_dir(&rel).context("no cgroup v2")?;
            ensure!(
                dir.is_dir(),
                "{}/{}: no cgroup {}",
                p.namespace,
                p.name,
                dir.display()
            );
        }
    }
    let out = c.kubectl_ok(&[
        "-n",
        SYSTEM,
        "exec",
        "ds/nodepulse-agent",
        "--",
        "nodepulse-agent",
        "top",
        "--count=1",
    ])?;
    eprintln!("$ kubectl exec ds/nodepulse-agent -- nodepulse-agent top --count=1\n{out}");
    let (shown, not_shown, skipped) = parse_top(&out)?;
    ensure!(skipped.is_empty(), "the agent skipped cgroups: {skipped:?}");
    let mut want: BTreeMap<String, (String, BTreeSet<(String, String)>)> = BTreeMap::new();
    for p in &pods {
        want.insert(
            format!("{}/{}", p.namespace, p.name),
            (
                p.uid.clone(),
                p.containers
                    .iter()
                    .map(|(n, id)| (n.clone(), id[..12].to_string()))
                    .collect(),
            ),
        );
    }
    ensure!(
        shown == want,
        "top shows\n{shown:#?}\nthe API says\n{want:#?}"
    );
    ensure!(
        not_shown == pods.len(),
        "{not_shown} unnamed container cgroups left out, want one sandbox per pod ({})",
        pods.len()
    );
    Ok(())
}

type TopPods = BTreeMap<String, (String, BTreeSet<(String, String)>)>;

/// `top`'s table: pod (`ns/name`) → (UID, {(container, short id)}), the
/// `not shown` count, and `skipped:` lines.
fn parse_top(out: &str) -> Result<(TopPods, usize, Vec<String>)> {
    let mut pods = TopPods::new();
    let mut current: Option<String> = None;
    let mut not_shown = 0;
    let mut skipped = Vec::new();
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("not shown: ") {
            not_shown = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| anyhow!("top: {line:?}"))?;
            continue;
        }
        if line.starts_with("skipped: ") {
            skipped.push(line.to_string());
            continue;
        }
        if line.starts_with("cpu source") || line.starts_with("POD ") || line.starts_with("(node)")
        {
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with(' ') {
            // A container row: name, id, cpu, memory.
            let pod = current
                .as_ref()
                .ok_or_else(|| anyhow!("top: container before pod: {line:?}"))?;
            ensure!(cols.len() == 4, "top: container row {line:?}");
            if let Some(p) = pods.get_mut(pod) {
                p.1.insert((cols[0].to_string(), cols[1].to_string()));
            }
        } else if cols.len() >= 5 {
            // A pod row: ns/name, qos, uid, cpu, memory.
            pods.insert(cols[0].to_string(), (cols[2].to_string(), BTreeSet::new()));
            current = Some(cols[0].to_string());
        }
    }
    Ok((pods, not_shown, skipped))
}

// --- accuracy --------------------------------------------------------------

/// Per key, (unix seconds, cumulative CPU seconds) as read.
type Series = BTreeMap<String, Vec<(f64, f64)>>;

/// The longest a sample's read may take (s): its counter is then known to
/// the millisecond.
const MAX_READ: f64 = 0.002;

/// Every cumulative CPU counter the test compares with, read every 50 ms:
/// each container's own cgroup and the node's.
struct Sampler {
    counters: Arc<Mutex<BTreeMap<String, Counter>>>,
    /// Keys whose load is not steady (see [`Sampler::rate_range`]).
    unsteady: Mutex<BTreeSet<String>>,
    series: Arc<Mutex<Series>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The data behind `m`, whether or not a holder panicked.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Sampler {
    /// `counters`: key → the file holding its cumulative CPU.
    fn start(counters: BTreeMap<String, Counter>) -> Result<Self> {
        let counters = Arc::new(Mutex::new(counters));
        let series = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (counters, series, stop) = (
                Arc::clone(&counters),
                Arc::clone(&series),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for (key, counter) in lock(&counters).iter() {
                        let called = unix_now();
                        let Some(cpu) = counter.read() else {
                            continue;
                        };
                        let returned = unix_now();
                        // A read takes microseconds; one preempted for
                        // longer is of an unknown moment within it.
                        if returned - called <= MAX_READ {
                            lock(&series)
                                .entry(key.clone())
                                .or_insert_with(Vec::new)
                                .push(((called + returned) / 2.0, cpu));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        Ok(Self {
            counters,
            unsteady: Mutex::new([NODE_KEY.to_string()].into()),
            series,
            stop,
            thread: Some(thread),
        })
    }

    /// Samples `key` from now on too.
    fn add(&self, key: String, counter: Counter) {
        lock(&self.counters).insert(key, counter);
    }

    /// `key`'s load changes (it steps): between two samples its counter
    /// is only known to lie between them.
    fn unsteady(&self, key: &str) {
        lock(&self.unsteady).insert(key.to_string());
    }

    /// When `key` was first and last sampled.
    fn span(&self, key: &str) -> Option<(f64, f64)> {
        let s = lock(&self.series);
        let series = s.get(key)?;
        Some((series.first()?.0, series.last()?.0))
    }

    /// The range of `key`'s CPU rate over a served window of `window` s:
    /// it ended within second `ts`, and before it was first seen at `seen`.
    fn served_range(&self, key: &str, ts: u64, window: f64, seen: f64) -> Result<(f64, f64)> {
        self.rate_range(key, (ts as f64, (ts as f64 + 0.999).min(seen)), window)
            .ok_or_else(|| {
                anyhow!(
                    "{key}: no cgroup samples around the {window:.3} s window ending in second {ts} (seen at {seen:.3}); sampled over {:?}",
                    self.span(key)
                )
            })
    }

    /// Whether the samples of `key` began before a window of `window` s
    /// ending in second `ts` (one the sampler saw from its start).
    fn saw_start(&self, key: &str, ts: u64, window: f64) -> bool {
        self.span(key)
            .is_some_and(|(first, _)| ts as f64 - window > first)
    }

    /// When `key`'s CPU rate first rose above `cores`, to the sampling
    /// period: the start of the first quarter second burning that much.
    fn rise(&self, key: &str, cores: f64) -> Option<f64> {
        let s = lock(&self.series);
        let series = s.get(key)?;
        series.iter().enumerate().find_map(|(i, &(t0, c0))| {
            let &(t1, c1) = series[i..].iter().find(|&&(t, _)| t >= t0 + 0.25)?;
            ((c1 - c0) / (t1 - t0) > cores).then_some(t0)
        })
    }

    /// The range of `key`'s CPU rate (cores) over windows of `window` s
    /// ending anywhere in `ends` (unix seconds), from the samples around
    /// each end; `None` where the samples do not reach.
    ///
    /// Between two samples a container's counter is taken as linear (its
    /// burner's load is steady). An unsteady one's is not (the node counts
    /// every process on the machine, the harness's own bursts among them; a
    /// stepped load starts between two samples), so it is only known to lie
    /// between the two samples (it never falls).
    fn rate_range(&self, key: &str, ends: (f64, f64), window: f64) -> Option<(f64, f64)> {
        let bracketed = lock(&self.unsteady).contains(key);
        let s = lock(&self.series);
        let series = s.get(key)?;
        // The counter at `t`: (lowest, highest) it can have been.
        let at = |t: f64| -> Option<(f64, f64)> {
            let i = series.iter().position(|&(x, _)| x >= t)?;
            let (x1, y1) = series[i];
            if x1 == t {
                return Some((y1, y1));
            }
            let (x0, y0) = series[i.checked_sub(1)?];
            if bracketed {
                return Some((y0, y1));
            }
            let y = y0 + (y1 - y0) * (t - x0) / (x1 - x0);
            Some((y, y))
        };
        // Ends the samples cover (the last one may be a few ms behind).
        let last = series.last()?.0;
        let (from, to) = (ends.0, ends.1.min(last));
        let mut range: Option<(f64, f64)> = None;
        let mut e = from;
        while e <= to {
            let ((end_lo, end_hi), (start_lo, start_hi)) = (at(e)?, at(e - window)?);
            let (lo, hi) = ((end_lo - start_hi) / window, (end_hi - start_lo) / window);
            range = Some(range.map_or((lo, hi), |(l, h)| (l.min(lo), h.max(hi))));
            e += 0.05;
        }
        range
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A cumulative CPU counter of the kernel's.
enum Counter {
    /// A v2 cgroup's `cpu.stat` `usage_usec`.
    V2(std::path::PathBuf),
    /// A v1 `cpuacct.usage` (ns). The node's counter where there is one: the
    /// v2 root's `cpu.stat` comes from the scheduler tick's sampling (a
    /// timer-driven load that sleeps through ticks is missed), the v1 root's
    /// from every task's exact run time, as cAdvisor (so the kubelet) reads it.
    V1Cpuacct(std::path::PathBuf),
}

impl Counter {
    /// Seconds of CPU.
    fn read(&self) -> Option<f64> {
        match self {
            Counter::V2(dir) => {
                let text = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
                let us: f64 = text
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))?
                    .trim()
                    .parse()
                    .ok()?;
                Some(us / 1e6)
            }
            Counter::V1Cpuacct(dir) => {
                let ns: f64 = std::fs::read_to_string(dir.join("cpuacct.usage"))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                Some(ns / 1e9)
            }
        }
    }
}

fn within(got: f64, (lo, hi): (f64, f64), floor: f64) -> bool {
    got >= lo * (1.0 - TOLERANCE) - floor && got <= hi * (1.0 + TOLERANCE) + floor
}

/// Every running container on the node and the node itself: key
/// (`namespace/pod/container` or `node`) → its cgroup below the hierarchy's
/// root, and key → its CPU counter.
fn node_counters(c: &Cluster) -> Result<(BTreeMap<String, String>, BTreeMap<String, Counter>)> {
    let (mut cgroups, mut counters) = (BTreeMap::new(), BTreeMap::new());
    for p in node_pods(c)? {
        for (key, counter, rel) in p.counters(c)? {
            cgroups.insert(key.clone(), rel);
            counters.insert(key, counter);
        }
    }
    let node = match &c.hierarchy().v1_cpuacct {
        Some(v1) => Counter::V1Cpuacct(v1.clone()),
        None => Counter::V2(c.cgroup_dir("/").context("no cgroup v2")?),
    };
    cgroups.insert(NODE_KEY.into(), "/".into());
    counters.insert(NODE_KEY.into(), node);
    Ok((cgroups, counters))
}

/// One figure a metrics API serves.
struct Served {
    /// `namespace/pod/container`, or `node` for [`NODE`].
    key: String,
    /// The window's end, to the second.
    ts: u64,
    /// The window, seconds.
    window: f64,
    /// Cores.
    cpu: f64,
    /// Working set, bytes.
    memory: f64,
}

/// Every container of a `PodMetricsList` and [`NODE`] of a
/// `NodeMetricsList`, as served.
fn served_points(pods: &Value, nodes: &Value) -> Result<Vec<Served>> {
    let mut items: Vec<(String, &Value, &Value)> = Vec::new();
    for pod in pods["items"].as_array().into_iter().flatten() {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        for ctr in pod["containers"].as_array().into_iter().flatten() {
            let cname = ctr["name"].as_str().unwrap_or_default();
            items.push((format!("{ns}/{name}/{cname}"), pod, &ctr["usage"]));
        }
    }
    for node in nodes["items"].as_array().into_iter().flatten() {
        if node["metadata"]["name"] == NODE {
            items.push((NODE_KEY.into(), node, &node["usage"]));
        }
    }
    items
        .into_iter()
        .map(|(key, item, usage)| {
            Ok(Served {
                ts: parse_timestamp(item["timestamp"].as_str().unwrap_or_default())
                    .ok_or_else(|| anyhow!("{key}: timestamp {item}"))?,
                window: parse_go_duration(item["window"].as_str().unwrap_or_default())
                    .ok_or_else(|| anyhow!("{key}: window {item}"))?,
                cpu: quantity(usage["cpu"].as_str().unwrap_or_default())?,
                memory: quantity(usage["memory"].as_str().unwrap_or_default())?,
                key,
            })
        })
        .collect()
}

/// What the metrics API serves for every container on the node, window by
/// window, against each container's own cgroup counter over the same window
/// (its end is known to the second: the candidates within that second give a
/// range); working sets against the cgroup's at the time. Then `kubectl top
/// pods -A --containers` and `kubectl top nodes` the same way, the window's
/// end within the few seconds around the call.
fn accuracy(c: &mut Cluster, api: &Curl) -> Result<()> {
    let (cgroups, counters) = node_counters(c)?;
    let keys: Vec<String> = cgroups.keys().cloned().collect();
    let sampler = Sampler::start(counters)?;
    // Served points, distinct by (key, timestamp): (window, cpu, when seen).
    let mut served: BTreeMap<String, BTreeMap<u64, (f64, f64, f64)>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(14);
    let mut memory_checked = 0;
    // The first two seconds only fill the sampler's history.
    std::thread::sleep(Duration::from_secs(2));
    while Instant::now() < deadline {
        let points = served_points(
            &api.api_json(c, "/apis/metrics.k8s.io/v1beta1/pods")?,
            &api.api_json(c, "/apis/metrics.k8s.io/v1beta1/nodes")?,
        )?;
        // After the answers: a window may end while a request is in flight,
        // and a served window ended before this.
        let seen = unix_now();
        for p in points {
            let Some(rel) = cgroups.get(&p.key) else {
                continue;
            };
            if sampler.saw_start(&p.key, p.ts, p.window) {
                served
                    .entry(p.key.clone())
                    .or_default()
                    .entry(p.ts)
                    .or_insert((p.window, p.cpu, seen));
            }
            // Working sets hold still: the cgroup's now against what is served.
            let truth = cgroup_working_set(c, rel)?;
            ensure!(
                within(p.memory, (truth, truth), MEMORY_FLOOR),
                "{}: working set served {:.1} MiB, cgroup {:.1} MiB",
                p.key,
                p.memory / 1048576.0,
                truth / 1048576.0
            );
            memory_checked += 1;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut report = Vec::new();
    let mut windows = 0;
    for key in &keys {
        let points = served
            .get(key)
            .ok_or_else(|| anyhow!("{key}: never served"))?;
        ensure!(
            points.len() >= 5,
            "{key}: served only {} windows in 14 s",
            points.len()
        );
        // How far served figures fell outside the cgroup's range (0 inside),
        // and how wide that range was (the uncertainty of the window's end).
        let (mut outside, mut widest, mut inside): (f64, f64, usize) = (0.0, 0.0, 0);
        for (&ts, &(window, cpu, seen)) in points {
            let range = sampler.served_range(key, ts, window, seen)?;
            ensure!(
                within(cpu, range, CPU_FLOOR),
                "{key}: {:.1}m served for the {window}s window ending in second {ts}; its cgroup's counter says {:.1}m to {:.1}m",
                cpu * 1e3,
                range.0 * 1e3,
                range.1 * 1e3
            );
            let off = (range.0 - cpu).max(cpu - range.1).max(0.0);
            // cpu.stat counts whole microseconds: 0.001m over a second.
            inside += usize::from(off <= 0.000_01);
            outside = outside.max(off);
            widest = widest.max(range.1 - range.0);
            windows += 1;
        }
        report.push(format!(
            "{key}: {}/{} windows inside the cgroup's range, the rest at most {:.2}m outside; widest range {:.2}m",
            inside,
            points.len(),
            outside * 1e3,
            widest * 1e3
        ));
    }
    eprintln!(
        "accuracy ({windows} windows, {memory_checked} working sets):\n  {}",
        report.join("\n  ")
    );

    // kubectl top, as users read it.
    for (args, header, key_cols) in [
        (
            &["top", "pods", "-A", "--containers"][..],
            &["NAMESPACE", "POD", "NAME", "CPU(cores)", "MEMORY(bytes)"][..],
            &["NAMESPACE", "POD", "NAME"][..],
        ),
        (
            &["top", "nodes"],
            &["NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"],
            &["NAME"],
        ),
    ] {
        let before = unix_now();
        let out = c.kubectl_ok(args)?;
        let after = unix_now();
        eprintln!("$ kubectl {}\n{out}", args.join(" "));
        let (head, rows) = table(&out);
        ensure!(
            head.iter().eq(header.iter()),
            "kubectl {}: header {head:?}",
            args.join(" ")
        );
        let rows = common::rows_by(&head, &rows, key_cols)?;
        let listed: BTreeSet<String> = rows
            .keys()
            .map(|k| {
                if k == NODE {
                    NODE_KEY.to_string()
                } else {
                    k.clone()
                }
            })
            .collect();
        let want: BTreeSet<String> = keys
            .iter()
            .filter(|k| (args[1] == "nodes") == (k.as_str() == NODE_KEY))
            .cloned()
            .collect();
        ensure!(
            listed == want,
            "kubectl {} lists {listed:?}, want {want:?}",
            args.join(" ")
        );
        for (k, row) in &rows {
            let key = if k == NODE {
                NODE_KEY.to_string()
            } else {
                k.clone()
            };
            let cpu = quantity(&row["CPU(cores)"])?;
            // Served at most two intervals before the call, window ~1 s.
            let range = sampler
                .rate_range(&key, (before - 2.0 * INTERVAL, after), INTERVAL)
                .ok_or_else(|| anyhow!("{key}: no cgroup samples"))?;
            // kubectl rounds to whole millicores.
            ensure!(
                within(cpu, range, CPU_FLOOR + 0.001),
                "kubectl {}: {key} at {:.0}m; its cgroup ran at {:.1}m to {:.1}m",
                args.join(" "),
                cpu * 1e3,
                range.0 * 1e3,
                range.1 * 1e3
            );
            let mem = quantity(&row["MEMORY(bytes)"])?;
            let truth = cgroup_working_set(c, &cgroups[&key])?;
            ensure!(
                within(mem, (truth, truth), MEMORY_FLOOR),
                "kubectl {}: {key} at {:.0} MiB, its cgroup's working set {:.1} MiB",
                args.join(" "),
                mem / 1048576.0,
                truth / 1048576.0
            );
        }
    }
    drop(sampler);
    Ok(())
}

// --- lifecycle --------------------------------------------------------------

/// A container that exits every 6 s and is restarted shows no spike and no
/// negative rate; a deleted pod leaves the API within a few intervals; a new
/// pod is served within two intervals of the first report that carries it.
fn lifecycle(c: &mut Cluster, api: &Curl) -> Result<()> {
    // Restarts.
    let crasher = burner_pod(c, "crasher", &[("app", &["--cpu=200m", "--exit-after=6s"])])?;
    c.apply(&crasher)?;
    let t_start = Instant::now();
    let mut served = Vec::new();
    let mut restarts = 0;
    while t_start.elapsed() < Duration::from_secs(40) || restarts < 2 {
        ensure!(
            t_start.elapsed() < Duration::from_secs(90),
            "crasher: {restarts} restarts in 90 s"
        );
        let (code, body) = api.api(
            c,
            &format!("/apis/metrics.k8s.io/v1beta1/namespaces/{SHOP}/pods/crasher"),
        )?;
        if code == 200 {
            let pod: Value = serde_json::from_str(&body)?;
            for ctr in pod["containers"].as_array().into_iter().flatten() {
                let cpu = quantity(ctr["usage"]["cpu"].as_str().unwrap_or_default())?;
                served.push(cpu);
                ensure!(
                    (0.0..=0.2 * 1.25 + CPU_FLOOR).contains(&cpu),
                    "crasher (200m, restarted {restarts} times): {:.1}m served",
                    cpu * 1e3
                );
            }
        }
        let p = c.kubectl_json(&["-n", SHOP, "get", "pod", "crasher"])?;
        restarts = p["status"]["containerStatuses"][0]["restartCount"]
            .as_u64()
            .unwrap_or(0);
        std::thread::sleep(Duration::from_millis(300));
    }
    ensure!(!served.is_empty(), "crasher never served");
    eprintln!(
        "crasher: restarted {restarts} times; {} readings served, {:.1}m to {:.1}m",
        served.len(),
        served.iter().cloned().fold(f64::MAX, f64::min) * 1e3,
        served.iter().cloned().fold(0.0, f64::max) * 1e3
    );
    c.kubectl_ok(&["-n", SHOP, "delete", "pod", "crasher", "--wait=true"])?;

    // A deleted pod goes.
    let path = format!("/apis/metrics.k8s.io/v1beta1/namespaces/{SHOP}/pods/worker");
    ensure!(
        api.api(c, &path)?.0 == 200,
        "worker is not served before its deletion"
    );
    // From the delete request: the kubelet stops the container (grace 1 s;
    // the burner exits at SIGTERM), its cgroup goes, the agent's next
    // report lacks it.
    let deleting = Instant::now();
    c.kubectl_ok(&["-n", SHOP, "delete", "pod", "worker", "--wait=false"])?;
    c.wait_for(
        "worker gone from the metrics API",
        Duration::from_secs(30),
        |c| Ok((api.api(c, &path)?.0 == 404).then_some(())),
    )?;
    let gone = deleting.elapsed();
    ensure!(
        gone <= Duration::from_secs_f64(1.0 + 4.0 * INTERVAL),
        "worker served {gone:?} after its deletion was asked for"
    );
    let top = c.kubectl_ok(&["top", "pods", "-n", SHOP])?;
    ensure!(
        !top.contains("worker"),
        "kubectl top still lists worker:\n{top}"
    );
    eprintln!(
        "worker: gone from the metrics API {:.1}s after `kubectl delete` was called",
        gone.as_secs_f64()
    );

    // A new pod comes: served within two intervals of the first report that
    // can name it (the kubelet's status with the container's id).
    let newbie = burner_pod(c, "newbie", &[("app", &["--cpu=100m"])])?;
    c.apply(&newbie)?;
    let path = format!("/apis/metrics.k8s.io/v1beta1/namespaces/{SHOP}/pods/newbie");
    let mut named_at = None;
    let served_at = loop {
        if named_at.is_none() {
            let p = c.kubectl_json(&["-n", SHOP, "get", "pod", "newbie"])?;
            if p["status"]["containerStatuses"][0]["containerID"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
            {
                named_at = Some(Instant::now());
            }
        }
        if api.api(c, &path)?.0 == 200 {
            break Instant::now();
        }
        ensure!(
            named_at.is_none_or(|t| t.elapsed() < Duration::from_secs(30)),
            "newbie not served 30 s after its container id was known"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let named_at = named_at.unwrap_or(served_at);
    let after = served_at.saturating_duration_since(named_at);
    // The agent's pod watch hears of the id, its next report carries it (≤ 1
    // interval), the one after gives a rate (1 interval); the watch's and
    // this loop's own latency on top.
    ensure!(
        after <= Duration::from_secs_f64(3.0 * INTERVAL),
        "newbie served {after:?} after its container id was in its status"
    );
    eprintln!(
        "newbie: served {:.1}s after its container id appeared in the pod's status",
        after.as_secs_f64()
    );
    c.kubectl_ok(&["-n", SHOP, "delete", "pod", "newbie", "--wait=false"])?;
    Ok(())
}

// --- HPA -------------------------------------------------------------------

/// The real kube-controller-manager's HPA scales a Deployment of burners
/// from 1 to 3 on our metrics (150m each against 100m requested, target
/// 50 %), and back to 1 once they burn 10m.
fn hpa(c: &mut Cluster) -> Result<()> {
    let image = c.image_reference(&catalog::BURNER)?;
    let deployment = |cpu: &str| {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "burn", "namespace": SHOP},
            "spec": {
                "selector": {"matchLabels": {"app": "burn"}},
                "template": {
                    "metadata": {"labels": {"app": "burn"}},
                    "spec": {
                        "terminationGracePeriodSeconds": 1,
                        "automountServiceAccountToken": false,
                        "enableServiceLinks": false,
                        "containers": [{
                            "name": "burn",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "args": [format!("--cpu={cpu}")],
                            "resources": {"requests": {"cpu": "100m"}},
                        }],
                    },
                },
            },
        })
    };
    c.apply(&deployment("150m"))?;
    c.apply(&json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "burn", "namespace": SHOP},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "burn"},
            "minReplicas": 1,
            "maxReplicas": 3,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 0},
                "scaleDown": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Percent", "value": 100, "periodSeconds": 5}]},
            },
        },
    }))?;
    let up = Instant::now();
    c.wait_for("the HPA scales burn to 3", Duration::from_secs(120), |c| {
        let h = c.kubectl_json(&["-n", SHOP, "get", "hpa", "burn"])?;
        Ok((h["status"]["desiredReplicas"] == 3).then_some(()))
    })?;
    let h = c.kubectl_ok(&["-n", SHOP, "get", "hpa", "burn"])?;
    eprintln!("scaled up after {:.0}s:\n{h}", up.elapsed().as_secs_f64());
    wait_deployment(c, "burn", 3)?;

    c.apply(&deployment("10m"))?;
    let down = Instant::now();
    c.wait_for(
        "the HPA scales burn back to 1",
        Duration::from_secs(180),
        |c| {
            let h = c.kubectl_json(&["-n", SHOP, "get", "hpa", "burn"])?;
            Ok((h["status"]["desiredReplicas"] == 1).then_some(()))
        },
    )?;
    let h = c.kubectl_ok(&["-n", SHOP, "get", "hpa", "burn"])?;
    eprintln!(
        "scaled down after {:.0}s:\n{h}",
        down.elapsed().as_secs_f64()
    );
    wait_deployment(c, "burn", 1)
}

fn wait_deployment(c: &mut Cluster, name: &str, replicas: u64) -> Result<()> {
    c.wait_for(
        &format!("deployment {name} at {replicas} ready"),
        Duration::from_secs(120),
        |c| {
            let d = c.kubectl_json(&["-n", SHOP, "get", "deployment", name])?;
            let s = &d["status"];
            Ok((s["replicas"] == replicas
                && s["readyReplicas"] == replicas
                && s["updatedReplicas"] == replicas)
                .then_some(()))
        },
    )
}

// --- the kubelet cross-check --------------------------------------------------

/// The agent compares its figures with the real kubelet's `/metrics/resource`
/// (through the shipped RBAC's `nodes/metrics`) every minute; CPU needs two
/// checks, so agreement on CPU is logged two minutes after it started.
fn cross_check(c: &mut Cluster, agent_started: Instant) -> Result<()> {
    let by = agent_started + Duration::from_secs(150);
    let wait = by.saturating_duration_since(Instant::now()) + Duration::from_secs(5);
    let line = c.wait_for("the agent's kubelet cross-check", wait, |c| {
        let logs = c.kubectl_ok(&["-n", SYSTEM, "logs", "ds/nodepulse-agent"])?;
        if let Some(bad) = logs.lines().find(|l| {
            l.contains("differ from the kubelet") || l.contains("scraping the kubelet failed")
        }) {
            bail!("the cross-check failed: {bad}");
        }
        Ok(logs
            .lines()
            .find(|l| l.contains("kubelet cross-check: agree"))
            .map(str::to_string))
    })?;
    eprintln!("kubelet cross-check: {line}");
    Ok(())
}

// --- restarts --------------------------------------------------------------

/// `kubectl delete pod` of the agent, then of one aggregator replica: the
/// metrics API stays Available, `web` stays served, and nothing absurd is
/// served meanwhile (every CPU between 0 and the node's 2 cores, working
/// sets below the node's memory).
fn restarts(c: &mut Cluster, api: &Curl) -> Result<()> {
    let web = format!("/apis/metrics.k8s.io/v1beta1/namespaces/{SHOP}/pods/web");
    // Polls `web` every 250 ms until `done` says so (and at least `secs`):
    // every value sane; returns the longest stretch it was not served.
    let watch = |c: &mut Cluster,
                 what: &str,
                 secs: u64,
                 done: &mut dyn FnMut(&mut Cluster) -> Result<bool>|
     -> Result<Duration> {
        let start = Instant::now();
        let mut last_served = Instant::now();
        let mut longest = Duration::ZERO;
        let mut served = 0;
        loop {
            let (code, body) = api.api(c, &web)?;
            if code == 200 {
                let pod: Value = serde_json::from_str(&body)?;
                for ctr in pod["containers"].as_array().into_iter().flatten() {
                    let cpu = quantity(ctr["usage"]["cpu"].as_str().unwrap_or_default())?;
                    let mem = quantity(ctr["usage"]["memory"].as_str().unwrap_or_default())?;
                    ensure!(
                        (0.0..=2.0).contains(&cpu),
                        "{what}: web at {:.1}m",
                        cpu * 1e3
                    );
                    ensure!(mem < (24u64 << 30) as f64, "{what}: web holds {mem} bytes");
                }
                served += 1;
                last_served = Instant::now();
            }
            longest = longest.max(last_served.elapsed());
            if start.elapsed() >= Duration::from_secs(secs) && done(c)? {
                break;
            }
            ensure!(
                start.elapsed() < Duration::from_secs(120),
                "{what}: not done in 120 s"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        eprintln!(
            "{what}: web served {served} times in {:.0} s; longest without: {:.2} s",
            start.elapsed().as_secs_f64(),
            longest.as_secs_f64()
        );
        Ok(longest)
    };

    // The agent: the old one stops at SIGTERM, the DaemonSet starts another.
    let agent = pods_of(c, "agent")?
        .into_iter()
        .next()
        .context("no agent pod")?;
    c.kubectl_ok(&["-n", SYSTEM, "delete", "pod", &agent, "--wait=false"])?;
    let mut ready_for = 0;
    let gap = watch(c, "the agent's pod deleted and replaced", 5, &mut |c| {
        let pods = node_pods(c)?;
        let fresh = pods
            .iter()
            .any(|p| p.ready && p.name.starts_with("nodepulse-agent-") && p.name != agent);
        ready_for = if fresh { ready_for + 1 } else { 0 };
        // 30 polls (7.5 s) with a Ready new agent.
        Ok(ready_for >= 30)
    })?;
    // The old agent's last figures are served until the new one's first
    // report restarts the series (its counters are its own); the first rate
    // then needs its second report.
    ensure!(
        gap <= Duration::from_secs_f64(3.0 * INTERVAL + 1.0),
        "web went unserved for {gap:?} across the agent's restart"
    );

    // One aggregator replica of two: the other serves throughout.
    let first = pods_of(c, "aggregator")?
        .into_iter()
        .next()
        .context("no aggregator pod")?;
    c.kubectl_ok(&["-n", SYSTEM, "delete", "pod", &first, "--wait=false"])?;
    let gap = watch(
        c,
        "an aggregator replica deleted and replaced",
        10,
        &mut |c| {
            let d = c.kubectl_json(&["-n", SYSTEM, "get", "deployment", "nodepulse"])?;
            Ok(d["status"]["readyReplicas"] == 2 && !pods_of(c, "aggregator")?.contains(&first))
        },
    )?;
    ensure!(
        gap <= Duration::from_secs(1),
        "web went unserved for {gap:?} while one of two replicas was replaced"
    );
    c.wait_apiservices_available(Duration::from_secs(120))?;
    let logs = c.kubectl_ok(&["-n", SYSTEM, "logs", "ds/nodepulse-agent"])?;
    ensure!(
        !logs
            .lines()
            .any(|l| l.contains("WARN") && l.contains("skipped")),
        "the new agent skipped cgroups:\n{logs}"
    );
    Ok(())
}

/// The names of nodepulse's pods of `component` (`agent`, `aggregator`).
fn pods_of(c: &Cluster, component: &str) -> Result<Vec<String>> {
    let list = c.kubectl_json(&[
        "-n",
        SYSTEM,
        "get",
        "pods",
        "-l",
        &format!("app.kubernetes.io/component={component}"),
    ])?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect())
}
