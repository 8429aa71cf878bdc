//! metrics-server beside nodepulse on the real node: the same pods, read at
//! the same moments, each against the kernel's own counters.
//!
//! metrics-server (the pinned v0.8.0, its release manifest's arguments,
//! 15 s resolution) scrapes the real kubelet's `/metrics/resource`;
//! nodepulse is read through kube-apiserver's aggregation layer, which it
//! serves as installed. A new pod's load steps from 0 to 500m 40 s after it
//! starts: how soon each lists the pod, and how soon each shows the step.
//!
//! Asserted: nodepulse's figures against the cgroups'. metrics-server's are
//! reported, not judged: that is what a user weighing the switch reads.

use std::collections::HashMap;

use super::*;
use e2e::MetricsServer;

const RESOLUTION: &str = "15s";
const STEP_POD: &str = "step";
/// The step, in cores, and how long after the container's start.
const STEP: f64 = 0.5;
const STEP_AFTER: Duration = Duration::from_secs(40);
/// How long both are read after the step: metrics-server needs one scrape
/// after it and one whole window of the new load (two resolutions), plus
/// the kubelet's own collection period.
const AFTER_STEP: f64 = 50.0;
const PODS: &str = "/apis/metrics.k8s.io/v1beta1/pods";
const NODES: &str = "/apis/metrics.k8s.io/v1beta1/nodes";

/// What one metrics API served.
#[derive(Default)]
struct Readings {
    /// Per key: window end → (window, cpu, when first seen).
    cpu: BTreeMap<String, BTreeMap<u64, (f64, f64, f64)>>,
    /// Per key: (served, cgroup's) working sets at each reading.
    memory: BTreeMap<String, Vec<(f64, f64)>>,
    /// The step pod's CPU at each reading: (when seen, cores).
    step: Vec<(f64, f64)>,
}

impl Readings {
    /// `p` as served at `seen`, beside `truth`, its cgroup's working set.
    fn record(&mut self, p: &Served, truth: f64, seen: f64, sampler: &Sampler) {
        if sampler.saw_start(&p.key, p.ts, p.window) {
            self.cpu
                .entry(p.key.clone())
                .or_default()
                .entry(p.ts)
                .or_insert((p.window, p.cpu, seen));
        }
        self.memory
            .entry(p.key.clone())
            .or_default()
            .push((p.memory, truth));
    }

    /// When the step pod was first listed.
    fn first_listed(&self) -> Option<f64> {
        self.step.first().map(|&(seen, _)| seen)
    }

    /// When the step pod was first served within [`TOLERANCE`] of `load`
    /// after `rise`.
    fn caught_up(&self, rise: f64, load: f64) -> Option<f64> {
        self.step
            .iter()
            .find(|&&(seen, cpu)| seen > rise && (cpu - load).abs() <= TOLERANCE * load)
            .map(|&(seen, _)| seen)
    }
}

pub(super) fn side_by_side(c: &mut Cluster, api: &Curl) -> Result<()> {
    let mut ms = c.start_metrics_server(RESOLUTION)?;
    let ms_curl = Curl::with_files(&ms.ca, Some((&ms.client.0, &ms.client.1)));
    let headers: Vec<String> = MetricsServer::headers(e2e::USER_ADMIN, "system:masters")
        .iter()
        .map(|(name, value)| format!("{name}: {value}"))
        .collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let ms_url = ms.url.clone();
    let read_ms = |c: &Cluster, path: &str| -> Result<Value> {
        let (code, body) = ms_curl.get_with(c, &format!("{ms_url}{path}"), &headers)?;
        ensure!(code == 200, "metrics-server: GET {path}: {code} {body}");
        serde_json::from_str(&body).with_context(|| format!("metrics-server: GET {path}"))
    };

    let (mut cgroups, counters) = node_counters(c)?;
    let sampler = Sampler::start(counters)?;
    let step_arg = format!("--cpu-step={:.0}m@{}s", STEP * 1e3, STEP_AFTER.as_secs());
    let pod = burner_pod(c, STEP_POD, &[(STEP_POD, &[&step_arg])])?;
    c.create(&pod)?;
    let step_key = format!("{SHOP}/{STEP_POD}/{STEP_POD}");
    sampler.unsteady(&step_key);
    let deadline = Instant::now() + STEP_AFTER + Duration::from_secs_f64(AFTER_STEP + 30.0);
    let mut started: Option<f64> = None;
    let mut rise: Option<f64> = None;
    let (mut ours, mut theirs) = (Readings::default(), Readings::default());
    while rise.is_none_or(|r| unix_now() < r + AFTER_STEP) {
        ensure!(
            Instant::now() < deadline,
            "the step pod's load never rose (started at {started:?})"
        );
        if started.is_none() {
            let pod = api.api_json(c, &format!("/api/v1/namespaces/{SHOP}/pods/{STEP_POD}"))?;
            let at = pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
                .as_str()
                .and_then(parse_timestamp);
            let p = NodePod::from_json(&pod);
            if let Some(at) = at
                && !p.containers.is_empty()
            {
                for (key, counter, rel) in p.counters(c)? {
                    sampler.add(key.clone(), counter);
                    cgroups.insert(key, rel);
                }
                started = Some(at as f64);
            }
        }
        rise = rise.or_else(|| sampler.rise(&step_key, STEP / 2.0));
        // Each one's answers, and when they had come: a served window ended
        // before then (metrics-server may scrape while a request is in
        // flight).
        let from_ours = served_points(&api.api_json(c, PODS)?, &api.api_json(c, NODES)?)?;
        let seen_ours = unix_now();
        let from_theirs = served_points(&read_ms(c, PODS)?, &read_ms(c, NODES)?)?;
        let seen_theirs = unix_now();
        // Each cgroup's working set, read once per poll for both.
        let mut truths: HashMap<String, f64> = HashMap::new();
        for (readings, points, seen) in [
            (&mut ours, from_ours, seen_ours),
            (&mut theirs, from_theirs, seen_theirs),
        ] {
            for p in points {
                let Some(rel) = cgroups.get(&p.key) else {
                    continue;
                };
                if p.key == step_key {
                    readings.step.push((seen, p.cpu));
                }
                let truth = match truths.get(&p.key) {
                    Some(&truth) => truth,
                    None => {
                        let truth = cgroup_working_set(c, rel)?;
                        truths.insert(p.key.clone(), truth);
                        truth
                    }
                };
                readings.record(&p, truth, seen, &sampler);
            }
        }
        ms.ensure_running()?;
        std::thread::sleep(Duration::from_millis(250));
    }
    let (started, rise) = (
        started.context("never started")?,
        rise.context("never rose")?,
    );
    c.kubectl_ok(&["-n", SHOP, "delete", "pod", STEP_POD])?;
    drop(ms);

    let mut rows = Vec::new();
    for key in cgroups.keys() {
        let a = window_errors(&sampler, key, ours.cpu.get(key))?;
        let b = window_errors(&sampler, key, theirs.cpu.get(key))?;
        ensure!(!a.is_empty(), "{key}: nodepulse served no window");
        // Asserted: nodepulse within TOLERANCE of its cgroup, window by window.
        for w in &a {
            ensure!(
                within(w.served, w.range, CPU_FLOOR),
                "{key}: nodepulse served {:.1}m for the {:.1}s window ending in second {}; its cgroup's counter says {:.1}m to {:.1}m",
                w.served * 1e3,
                w.window,
                w.ts,
                w.range.0 * 1e3,
                w.range.1 * 1e3
            );
        }
        for &(served, truth) in ours.memory.get(key).into_iter().flatten() {
            ensure!(
                within(served, (truth, truth), MEMORY_FLOOR),
                "{key}: nodepulse served a working set of {:.1} MiB, its cgroup has {:.1} MiB",
                served / 1048576.0,
                truth / 1048576.0
            );
        }
        rows.push(format!(
            "| {key} | {} | {} | {} | {} | {} |",
            known_load(key),
            cpu_cell(&a),
            cpu_cell(&b),
            memory_cell(ours.memory.get(key)),
            memory_cell(theirs.memory.get(key)),
        ));
    }
    // The stepped load as the cgroup ran it, over the 10 s after it settled.
    let load = sampler
        .rate_range(&step_key, (rise + 11.0, rise + 11.0), 10.0)
        .map(|(lo, hi)| (lo + hi) / 2.0)
        .context("no cgroup samples after the step")?;
    let since_rise = |r: &Readings| {
        r.caught_up(rise, load)
            .map_or(format!("not within {AFTER_STEP:.0} s"), |t| {
                format!("{:.1} s", t - rise)
            })
    };
    let since_start = |r: &Readings| {
        r.first_listed()
            .map_or("never".to_string(), |t| format!("{:.1} s", t - started))
    };
    let caught_up = ours.caught_up(rise, load);
    eprintln!(
        "side by side with metrics-server ({RESOLUTION} resolution), same node, same moments\n\
         CPU: mean served / mean truth over each one's windows (the cgroup's rate over the same window), \
         worst error outside the truth's range (its end is known to the second); \
         memory: the cgroup's last working set, worst error against it at the reading\n\n\
         | container | known load | nodepulse CPU (1 s windows) | metrics-server CPU ({RESOLUTION} windows) | nodepulse memory | metrics-server memory |\n\
         |---|---|---|---|---|---|\n{}\n\n\
         | new pod, load 0 → {:.0}m | nodepulse | metrics-server |\n|---|---|---|\n\
         | listed, after the container started (to the second) | {} | {} |\n\
         | within 5 % of the new load ({:.1}m), after the cgroup's rise | {} | {} |",
        rows.join("\n"),
        STEP * 1e3,
        since_start(&ours),
        since_start(&theirs),
        load * 1e3,
        since_rise(&ours),
        since_rise(&theirs),
    );
    ensure!(
        caught_up.is_some(),
        "nodepulse never served the step pod within 5 % of {:.1}m in {AFTER_STEP} s: {:?}",
        load * 1e3,
        ours.step
    );
    Ok(())
}

/// One served window against the cgroup's rate over it.
struct WindowError {
    ts: u64,
    window: f64,
    served: f64,
    /// The cgroup's rate over windows ending within the served second.
    range: (f64, f64),
}

fn window_errors(
    sampler: &Sampler,
    key: &str,
    points: Option<&BTreeMap<u64, (f64, f64, f64)>>,
) -> Result<Vec<WindowError>> {
    points
        .into_iter()
        .flatten()
        .map(|(&ts, &(window, served, seen))| {
            let range = sampler.served_range(key, ts, window, seen)?;
            Ok(WindowError {
                ts,
                window,
                served,
                range,
            })
        })
        .collect()
}

/// `mean served / mean truth (n windows, worst error)`. A window's truth is
/// the cgroup's rate over windows ending anywhere in the served second (the
/// API's timestamps have whole seconds): its error is how far outside that
/// range the served figure is, relative where the truth is large enough for
/// that to mean something.
fn cpu_cell(windows: &[WindowError]) -> String {
    if windows.is_empty() {
        return "not served".into();
    }
    let n = windows.len() as f64;
    let mid = |w: &WindowError| (w.range.0 + w.range.1) / 2.0;
    let served = windows.iter().map(|w| w.served).sum::<f64>() / n;
    let truth = windows.iter().map(mid).sum::<f64>() / n;
    let worst = windows
        .iter()
        .map(|w| {
            (
                (w.range.0 - w.served).max(w.served - w.range.1).max(0.0),
                mid(w),
            )
        })
        .fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a });
    let error = if worst.1 >= 10.0 * CPU_FLOOR {
        format!("{:.1} %", 100.0 * worst.0 / worst.1)
    } else {
        format!("{:.1}m", worst.0 * 1e3)
    };
    format!(
        "{:.1}m / {:.1}m ({} windows, worst {error})",
        served * 1e3,
        truth * 1e3,
        windows.len()
    )
}

fn memory_cell(readings: Option<&Vec<(f64, f64)>>) -> String {
    let Some(readings) = readings.filter(|r| !r.is_empty()) else {
        return "not served".into();
    };
    let worst = readings
        .iter()
        .map(|&(served, truth)| (served - truth).abs() / truth.max(MEMORY_FLOOR))
        .fold(0.0, f64::max);
    let last = readings[readings.len() - 1].1;
    format!("{:.1} MiB, worst {:.1} %", last / 1048576.0, 100.0 * worst)
}

/// The load the workload was started with, where the test set one.
fn known_load(key: &str) -> String {
    let known = [
        ("shop/web/app", "300m"),
        ("shop/web/cache", "0, 96 MiB"),
        ("shop/worker/worker", "150m, 32 MiB"),
    ];
    if key.ends_with(&format!("/{STEP_POD}/{STEP_POD}")) {
        return format!("0 → {:.0}m", STEP * 1e3);
    }
    known
        .iter()
        .find(|(k, _)| *k == key)
        .map_or("—".to_string(), |(_, v)| v.to_string())
}
