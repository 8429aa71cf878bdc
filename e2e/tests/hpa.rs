//! The real kube-controller-manager's HorizontalPodAutoscaler (autoscaling/v2,
//! CPU utilization target 50 %) scaling a Deployment on nodepulse's metrics:
//! its pods burn 150 % of their 100m request, so the HPA reports ~150 % from
//! our numbers and raises desiredReplicas to the maximum; once the load stops
//! (every replica's burner switched to idle) it scales back down to the
//! minimum (`behavior.scaleDown.stabilizationWindowSeconds: 0`).
//!
//! There is no scheduler or kubelet: the test is both. It binds every pod the
//! ReplicaSet makes to a simulated node with a burner in its cgroup
//! (`Cluster::adopt_pod`) and finishes graceful deletions.
//!
//! Needs root, BTF, cgroup v2 and iproute2; skips with a message elsewhere
//! (fails instead under NODEPULSE_REQUIRE_PRIVILEGED=1, as in CI).

mod common;

use std::time::{Duration, Instant};

use common::{duty, idle, parse_go_duration, parse_timestamp, quantity};
use e2e::Cluster;
use e2e::curl::Curl;
use serde_json::{Value, json};

/// Not a test: the body of burner processes the harness spawns (testkit).
#[test]
#[ignore = "entry point of burner child processes"]
fn burner_entry() {
    testkit::burner_main();
}

const NS: &str = "hpa";
const SELECTOR: &str = "app=burn";
/// Each pod's CPU request and, while hot, what it burns: 150 % of the request.
const REQUEST_MILLI: u64 = 100;
const HOT: f64 = 0.15;
const TARGET_UTILIZATION: u64 = 50;
const MAX_REPLICAS: u64 = 4;

/// What the HPA said at one moment.
#[derive(Clone, Debug, PartialEq)]
struct HpaState {
    current: u64,
    desired: u64,
    utilization: Option<u64>,
    average: Option<String>,
}

fn hpa_state(hpa: &Value) -> HpaState {
    let cpu = hpa["status"]["currentMetrics"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["type"] == "Resource" && m["resource"]["name"] == "cpu");
    HpaState {
        current: hpa["status"]["currentReplicas"].as_u64().unwrap_or(0),
        desired: hpa["status"]["desiredReplicas"].as_u64().unwrap_or(0),
        utilization: cpu.and_then(|m| m["resource"]["current"]["averageUtilization"].as_u64()),
        average: cpu.and_then(|m| {
            m["resource"]["current"]["averageValue"]
                .as_str()
                .map(String::from)
        }),
    }
}

fn condition<'a>(hpa: &'a Value, kind: &str) -> (&'a str, &'a str, &'a str) {
    let c = hpa["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind);
    let field = |k: &str| c.and_then(|c| c[k].as_str()).unwrap_or_default();
    (field("status"), field("reason"), field("message"))
}

/// Reads the HPA while acting as the kubelet, recording every state change.
struct Follow<'a> {
    api: &'a Curl,
    path: &'a str,
    since: Instant,
    timeline: &'a mut Vec<(Duration, HpaState)>,
}

impl Follow<'_> {
    /// The HPA object once its state satisfies `done` (2 min at most).
    fn until(
        &mut self,
        c: &mut Cluster,
        kubelet: &mut Kubelet,
        what: &str,
        done: impl Fn(&HpaState) -> bool,
    ) -> anyhow::Result<Value> {
        c.wait_for(what, Duration::from_secs(120), |c| {
            c.ensure_ours_running()?;
            kubelet.reconcile(c)?;
            let hpa = self.api.api_json(c, self.path)?;
            let s = hpa_state(&hpa);
            record(self.timeline, self.since.elapsed(), s.clone());
            Ok(done(&s).then_some(hpa))
        })
    }
}

/// Appends `s` to the timeline (and prints it) when it changed.
fn record(timeline: &mut Vec<(Duration, HpaState)>, t: Duration, s: HpaState) {
    if timeline.last().is_none_or(|(_, last)| *last != s) {
        eprintln!(
            "{:>6.1?}  replicas {} → desired {}  cpu utilization {:?} % (average {:?})",
            t, s.current, s.desired, s.utilization, s.average
        );
        timeline.push((t, s));
    }
}

/// The scheduler and kubelet of this test: binds unscheduled pods of the
/// Deployment round-robin to the nodes with a `hot` or idle burner, and
/// finishes graceful deletions (there is no kubelet to confirm them).
struct Kubelet {
    api: Curl,
    hot: bool,
    next_node: usize,
    adopted: Vec<String>,
}

impl Kubelet {
    fn pods(&self, c: &Cluster) -> anyhow::Result<Vec<Value>> {
        let list = self.api.api_json(
            c,
            &format!("/api/v1/namespaces/{NS}/pods?labelSelector={SELECTOR}"),
        )?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// One round; returns how many pods it adopted or finished.
    fn reconcile(&mut self, c: &mut Cluster) -> anyhow::Result<usize> {
        let mut acted = 0;
        for pod in self.pods(c)? {
            let name = pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let terminating = !pod["metadata"]["deletionTimestamp"].is_null();
            let bound = pod["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty());
            if terminating {
                c.delete_pod(NS, &name)?;
                acted += 1;
            } else if !bound {
                let nodes: Vec<String> = c.nodes().iter().map(|n| n.to_string()).collect();
                let node = &nodes[self.next_node % nodes.len()];
                self.next_node += 1;
                let burn = if self.hot { duty(HOT) } else { idle() };
                c.adopt_pod(node, NS, &name, vec![("app".to_string(), burn)])?;
                self.adopted.push(format!(
                    "{name} on {node} ({})",
                    if self.hot { "hot" } else { "idle" }
                ));
                acted += 1;
            }
        }
        Ok(acted)
    }
}

#[test]
fn hpa_scales_a_deployment_up_and_down_on_our_metrics() {
    let Some(h) = e2e::privileged("hpa") else {
        return;
    };
    let t0 = Instant::now();
    let mut c = Cluster::start(h, e2e::Options::new("hpa")).expect("cluster starts");
    c.add_node("node-a", "2", "4Gi").expect("node-a");
    c.add_node("node-b", "2", "4Gi").expect("node-b");
    c.ensure_namespace(NS).expect("namespace");
    let Some(_ours) = c.ours_or_skip("hpa", "the whole test") else {
        return;
    };
    c.start_aggregators().expect("aggregators");
    c.start_agents().expect("agents");
    c.wait_apiservices_available(Duration::from_secs(90))
        .expect("metrics.k8s.io Available");

    c.apply(&json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "burn", "namespace": NS},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "burn"}},
            "template": {
                "metadata": {"labels": {"app": "burn"}},
                "spec": {
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "containers": [{
                        "name": "app",
                        "image": e2e::manifests::IMAGE,
                        "resources": {"requests": {"cpu": format!("{REQUEST_MILLI}m")}},
                    }],
                },
            },
        },
    }))
    .expect("Deployment");
    let mut kubelet = Kubelet {
        api: Curl::new(&c, "e2e-hpa-kubelet", Some("system:masters"), None).expect("curl"),
        hot: true,
        next_node: 0,
        adopted: Vec::new(),
    };
    c.wait_for("the first pod adopted", Duration::from_secs(60), |c| {
        Ok((kubelet.reconcile(c)? > 0).then_some(()))
    })
    .expect("a pod to adopt");
    // The HPA comes once its first pod has a sample the HPA counts: during a
    // pod's CPU initialization period only one whose timestamp is at least
    // one window after the pod turned Ready (contract §4); before that its
    // first sync would record "did not receive metrics for targeted pods".
    let api = Curl::new(&c, "e2e-hpa-watcher", Some("system:masters"), None).expect("curl");
    let t = Instant::now();
    let (ready_at, ts, window) = c
        .wait_for("a sample the HPA counts", Duration::from_secs(30), |c| {
            let list = api.api_json(c, &format!("/apis/metrics.k8s.io/v1/namespaces/{NS}/pods"))?;
            let Some(item) = list["items"].as_array().and_then(|i| i.first()).cloned() else {
                return Ok(None);
            };
            let name = item["metadata"]["name"].as_str().unwrap_or_default();
            let pod = api.api_json(c, &format!("/api/v1/namespaces/{NS}/pods/{name}"))?;
            let ready_at = pod["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready")
                .and_then(|c| c["lastTransitionTime"].as_str())
                .and_then(parse_timestamp)
                .ok_or_else(|| anyhow::anyhow!("no Ready transition: {pod}"))?;
            let ts = item["timestamp"]
                .as_str()
                .and_then(parse_timestamp)
                .unwrap_or(0);
            let window = item["window"]
                .as_str()
                .and_then(parse_go_duration)
                .unwrap_or(f64::MAX);
            Ok((ts as f64 >= ready_at as f64 + window).then_some((ready_at, ts, window)))
        })
        .expect("first pod served");
    eprintln!(
        "first pod: Ready at {ready_at}, counted sample at {ts} (window {window} s), {:.1?} after adoption",
        t.elapsed()
    );

    c.apply(&json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "burn", "namespace": NS},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "burn"},
            "minReplicas": 1,
            "maxReplicas": MAX_REPLICAS,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": TARGET_UTILIZATION}}}],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}},
        },
    }))
    .expect("HorizontalPodAutoscaler");
    let hpa_path = format!("/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers/burn");
    let t_hpa = Instant::now();

    // --- load: scale up ----------------------------------------------------------
    let mut timeline: Vec<(Duration, HpaState)> = Vec::new();
    let mut follow = Follow {
        api: &api,
        path: &hpa_path,
        since: t_hpa,
        timeline: &mut timeline,
    };
    let hot_hpa = follow
        .until(
            &mut c,
            &mut kubelet,
            "HPA desires the maximum on our metrics",
            |s| s.desired == MAX_REPLICAS && s.utilization.is_some(),
        )
        .expect("scale up");
    let t_up = t_hpa.elapsed();
    // Every replica running and measured: utilization as the HPA sees it.
    let settled = c
        .wait_for(
            "all replicas running, HPA reading them",
            Duration::from_secs(60),
            |c| {
                kubelet.reconcile(c)?;
                let hpa = api.api_json(c, &hpa_path)?;
                let s = hpa_state(&hpa);
                record(&mut timeline, t_hpa.elapsed(), s.clone());
                let running = kubelet
                    .pods(c)?
                    .iter()
                    .filter(|p| p["status"]["phase"] == "Running")
                    .count() as u64;
                Ok((s.current == MAX_REPLICAS
                    && running == MAX_REPLICAS
                    && s.utilization.is_some())
                .then_some(hpa))
            },
        )
        .expect("all replicas running");
    let hot_state = hpa_state(&settled);
    let utilization = hot_state.utilization.expect("utilization") as f64;
    let known = HOT * 1000.0 / REQUEST_MILLI as f64 * 100.0;
    eprintln!(
        "scaled up: desired {} after {t_up:.1?}; with every replica burning {HOT} cores of \
         {REQUEST_MILLI}m the HPA reads {utilization} % (known {known} %), average {:?}",
        hot_state.desired, hot_state.average
    );
    let (status, reason, message) = condition(&settled, "ScalingActive");
    assert_eq!(
        (status, reason),
        ("True", "ValidMetricFound"),
        "ScalingActive: {message}"
    );
    let (status, _, message) = condition(&hot_hpa, "AbleToScale");
    assert_eq!(status, "True", "AbleToScale: {message}");
    assert!(
        (utilization - known).abs() <= known * 0.15,
        "HPA utilization {utilization} % vs known {known} %"
    );
    let average = quantity(hot_state.average.as_deref().expect("averageValue")).expect("quantity");
    assert!(
        (average - HOT).abs() <= HOT * 0.15,
        "averageValue {average}"
    );
    let desired_seen: Vec<u64> = timeline.iter().map(|(_, s)| s.desired).collect();
    assert!(
        desired_seen.windows(2).all(|w| w[0] <= w[1]),
        "desiredReplicas only rose while hot: {desired_seen:?}"
    );
    let deployment = c
        .kubectl_json(&["-n", NS, "get", "deployment", "burn"])
        .expect("deployment");
    assert_eq!(deployment["spec"]["replicas"], MAX_REPLICAS);

    // --- no load: scale down -------------------------------------------------------
    // Every running replica's burner goes idle (same pods, same cgroups), and
    // pods made from now on start idle.
    kubelet.hot = false;
    let t_idle = t_hpa.elapsed();
    let running: Vec<String> = kubelet
        .pods(&c)
        .expect("pods")
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
        .collect();
    for name in &running {
        c.set_burn(NS, name, "app", idle()).expect("stop the load");
    }
    eprintln!(
        "{t_idle:>6.1?}  load stopped: the burners of {} replicas now idle",
        running.len()
    );
    let mut follow = Follow {
        api: &api,
        path: &hpa_path,
        since: t_hpa,
        timeline: &mut timeline,
    };
    let cold = follow
        .until(
            &mut c,
            &mut kubelet,
            "HPA scales back to the minimum",
            |s| s.desired == 1 && s.current == 1,
        )
        .expect("scale down");
    let cold_state = hpa_state(&cold);
    eprintln!(
        "scaled down: desired {} {:.1?} after the load stopped; HPA reads {:?} % (average {:?})",
        cold_state.desired,
        t_hpa.elapsed() - t_idle,
        cold_state.utilization,
        cold_state.average
    );
    assert!(
        cold_state.utilization.is_some_and(|u| u < 10),
        "idle utilization {:?}",
        cold_state.utilization
    );
    let (status, reason, message) = condition(&cold, "ScalingActive");
    assert_eq!((status, reason), ("True", "ValidMetricFound"), "{message}");
    // The HPA never complained about metrics.
    let events = c
        .kubectl_json(&[
            "-n",
            NS,
            "get",
            "events",
            "--field-selector=involvedObject.kind=HorizontalPodAutoscaler",
        ])
        .expect("events");
    let reasons: Vec<String> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "{}: {}",
                e["reason"].as_str().unwrap_or_default(),
                e["message"].as_str().unwrap_or_default()
            )
        })
        .collect();
    eprintln!("HPA events:\n  {}", reasons.join("\n  "));
    assert!(
        reasons
            .iter()
            .all(|r| !r.starts_with("FailedGet") && !r.starts_with("FailedCompute")),
        "{reasons:#?}"
    );
    eprintln!("pods adopted: {:#?}", kubelet.adopted);
    eprintln!("hpa done in {:.1?}", t0.elapsed());
}
