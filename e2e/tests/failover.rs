//! Losing an aggregator replica: replica 0 is killed (SIGKILL) and marked not
//! ready in the EndpointSlice, as the EndpointSlice controller would once its
//! readiness probe fails; `kubectl top` and the raw paths keep answering from
//! replica 1, with every pod. Replica 0 is then restarted: the agents
//! reconnect on their own, and it serves every pod again within two agent
//! intervals of the first report it receives (measured by asking it directly
//! every few tens of milliseconds, and from its log).
//!
//! Needs root, BTF, cgroup v2 and iproute2; skips with a message elsewhere
//! (fails instead under NODEPULSE_REQUIRE_PRIVILEGED=1, as in CI).

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::{duty, item_names, parse_timestamp, strip_ansi, table};
use e2e::curl::Curl;
use e2e::{Cluster, Container, Options};

/// Not a test: the body of burner processes the harness spawns (testkit).
#[test]
#[ignore = "entry point of burner child processes"]
fn burner_entry() {
    testkit::burner_main();
}

/// The agents' `--interval` (the harness's default).
const INTERVAL: Duration = Duration::from_secs(1);

fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `2026-11-27T12:19:25.661661Z` → seconds since the epoch.
fn parse_log_time(s: &str) -> Option<f64> {
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) => (format!("{w}Z"), format!("0.{}", f.trim_end_matches('Z'))),
        None => (s.to_string(), "0".to_string()),
    };
    Some(parse_timestamp(&whole)? as f64 + frac.parse::<f64>().ok()?)
}

/// When each node's first report reached the replica whose log is `log`,
/// counting only its last start: `node → seconds since the epoch`.
fn first_reports(log: &str) -> BTreeMap<String, f64> {
    let last_start = log.rfind("e2e: starting").unwrap_or(0);
    let mut out = BTreeMap::new();
    for line in strip_ansi(&log[last_start..]).lines() {
        if !line.contains("agent stream opened") {
            continue;
        }
        let Some(t) = line.split_whitespace().next().and_then(parse_log_time) else {
            continue;
        };
        if let Some(node) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("node="))
        {
            out.entry(node.to_string()).or_insert(t);
        }
    }
    out
}

#[test]
fn failover_kill_one_replica_and_restart_it() {
    let Some(h) = e2e::privileged("failover") else {
        return;
    };
    let t0 = Instant::now();
    let mut c = Cluster::start(h, Options::new("failover")).expect("cluster starts");
    c.add_node("node-a", "2", "4Gi").expect("node-a");
    c.add_node("node-b", "2", "4Gi").expect("node-b");
    let workload = [
        ("node-a", "shop", "web-1"),
        ("node-a", "shop", "web-2"),
        ("node-b", "batch", "job-1"),
        ("node-b", "default", "tool-1"),
    ];
    for (node, ns, name) in workload {
        c.add_pod(
            node,
            ns,
            name,
            &[("app", name)],
            vec![Container::new("main", duty(0.05))],
        )
        .unwrap_or_else(|e| panic!("pod {ns}/{name}: {e:#}"));
    }
    let all: BTreeSet<String> = workload
        .iter()
        .map(|(_, ns, name)| format!("{ns}/{name}"))
        .collect();
    let node_of = |pod: &str| -> &str {
        workload
            .iter()
            .find(|(_, ns, name)| format!("{ns}/{name}") == pod)
            .map(|(node, _, _)| *node)
            .expect("known pod")
    };

    let Some(_ours) = c.ours_or_skip("failover", "the whole test") else {
        return;
    };
    c.start_aggregators().expect("aggregators");
    c.start_agents().expect("agents");
    c.wait_apiservices_available(Duration::from_secs(90))
        .expect("metrics.k8s.io Available");
    let want: Vec<String> = all.iter().cloned().collect();
    common::wait_all_served(
        &mut c,
        &want,
        &["node-a", "node-b"],
        Duration::from_secs(60),
    )
    .expect("every pod served");

    let top_pods = |c: &Cluster| -> anyhow::Result<BTreeSet<String>> {
        let out = c.kubectl_ok(&["top", "pod", "-A"])?;
        let (_, rows) = table(&out);
        Ok(rows.iter().map(|r| format!("{}/{}", r[0], r[1])).collect())
    };
    assert_eq!(top_pods(&c).expect("kubectl top"), all);

    // --- replica 0 dies ---------------------------------------------------------
    let killed = c.kill_aggregator(0);
    c.set_replica_ready(0, false).expect("replica 0 not ready");
    eprintln!("replica 0 killed ({killed:?}) and marked not ready");
    let t_down = Instant::now();
    let admin = Curl::new(&c, "e2e-failover", Some("system:masters"), None).expect("curl");
    let mut answered = 0;
    for _ in 0..20 {
        for v in ["v1", "v1beta1"] {
            let list = admin
                .api_json(&c, &format!("/apis/metrics.k8s.io/{v}/pods"))
                .expect("pods through kube-apiserver with replica 0 down");
            assert_eq!(
                item_names(&list).into_iter().collect::<BTreeSet<_>>(),
                all,
                "{v}"
            );
            answered += 1;
        }
    }
    for _ in 0..3 {
        assert_eq!(
            top_pods(&c).expect("kubectl top pod with replica 0 down"),
            all
        );
        let nodes = c.kubectl_ok(&["top", "node"]).expect("kubectl top node");
        let (_, rows) = table(&nodes);
        assert_eq!(rows.len(), 2, "{nodes}");
    }
    let conditions = c.apiservice_conditions().expect("conditions");
    assert!(
        conditions.iter().all(|(_, status, _, _)| status == "True"),
        "{conditions:?}"
    );
    eprintln!(
        "with replica 0 down: {answered} GETs through kube-apiserver and 3 rounds of kubectl top \
         pod/node all answered with every pod in {:.1?}; APIServices still Available",
        t_down.elapsed()
    );

    // --- replica 0 comes back ------------------------------------------------------
    let direct = Curl::new(
        &c,
        "e2e-failover-direct",
        Some("system:masters"),
        Some(&c.pki().nodepulse_ca.cert),
    )
    .expect("curl");
    let replica0 = format!(
        "https://{}:{}/apis/metrics.k8s.io/v1/pods",
        e2e::replica_ip(0),
        e2e::AGGREGATOR_PORT
    );
    let restart_wall = wall();
    let t_restart = Instant::now();
    c.start_aggregator(0).expect("replica 0 restarts");
    let listening = t_restart.elapsed();
    // Poll it directly (it is still marked not ready, so kube-apiserver does
    // not route to it) until every pod is there; note when each node's pods
    // first all appear.
    let mut node_full: BTreeMap<String, f64> = BTreeMap::new();
    // When its /readyz first passes: what a readiness probe would act on.
    let anonymous = Curl::with_files(&c.pki().nodepulse_ca.cert, None);
    let readyz = format!(
        "https://{}:{}/readyz",
        e2e::replica_ip(0),
        e2e::AGGREGATOR_PORT
    );
    let mut ready_at: Option<(f64, usize)> = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (full_wall, first_full) = loop {
        assert!(
            Instant::now() < deadline,
            "replica 0 not full 60 s after restart; has {node_full:?}"
        );
        c.ensure_ours_running().expect("ours running");
        if let Ok((200, body)) = direct.get(&c, &replica0) {
            let now = wall();
            let list: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            let served: BTreeSet<String> = item_names(&list).into_iter().collect();
            for node in ["node-a", "node-b"] {
                let complete = all
                    .iter()
                    .filter(|p| node_of(p) == node)
                    .all(|p| served.contains(p));
                if complete {
                    node_full.entry(node.to_string()).or_insert(now);
                }
            }
            if ready_at.is_none() && matches!(anonymous.get(&c, &readyz), Ok((200, _))) {
                ready_at = Some((wall(), node_full.len()));
            }
            if served == all {
                break (now, list);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Its first complete answer carries true numbers: rates over a real
    // window, not a first point against nothing.
    for item in first_full["items"].as_array().expect("items") {
        let name = format!(
            "{}/{}",
            item["metadata"]["namespace"].as_str().unwrap_or_default(),
            item["metadata"]["name"].as_str().unwrap_or_default()
        );
        let cpu = common::usage(item, "cpu").expect("cpu");
        let window = item["window"]
            .as_str()
            .and_then(common::parse_go_duration)
            .expect("window");
        eprintln!(
            "  first full answer: {name} cpu {:.1}m over {window:.3} s",
            cpu * 1e3
        );
        assert!((0.5..=2.5).contains(&window), "{name}: window {window} s");
        assert!(
            common::rel_err(cpu, 0.05) <= 0.1,
            "{name}: cpu {cpu} right after the restart (burns 0.05)"
        );
    }
    let log = c
        .log_files()
        .into_iter()
        .find(|f| f.file_name().is_some_and(|n| n == "aggregator-0.log"))
        .expect("aggregator-0.log");
    let reports = first_reports(&std::fs::read_to_string(&log).expect("log"));
    assert_eq!(
        reports.keys().map(String::as_str).collect::<Vec<_>>(),
        ["node-a", "node-b"],
        "first reports after restart: {reports:?}"
    );
    let first_report = reports.values().copied().fold(f64::MAX, f64::min);
    eprintln!(
        "replica 0 restarted: listening after {listening:.1?}; the agents reconnect on their \
         own (each with its backoff)"
    );
    let mut worst: f64 = 0.0;
    for (node, reported) in &reports {
        let full = node_full[node];
        worst = worst.max(full - reported);
        eprintln!(
            "  {node}: first report to replica 0 {:+.2} s after the restart, all its pods served \
             {:+.2} s: {:.2} s = {:.2} intervals after that first report",
            reported - restart_wall,
            full - restart_wall,
            full - reported,
            (full - reported) / INTERVAL.as_secs_f64()
        );
        assert!(
            full - reported <= 2.0 * INTERVAL.as_secs_f64(),
            "{node}: full {:.2} s after its first report, more than two intervals",
            full - reported
        );
    }
    let last_report = reports.values().copied().fold(f64::MIN, f64::max);
    eprintln!(
        "replica 0 full again {:.2} s after the restart: {:.2} intervals after the last node's \
         first report ({:.2} s after the very first; worst node {:.2} intervals)",
        full_wall - restart_wall,
        (full_wall - last_report) / INTERVAL.as_secs_f64(),
        full_wall - first_report,
        worst / INTERVAL.as_secs_f64()
    );
    match ready_at {
        Some((t, complete_nodes)) => eprintln!(
            "replica 0 /readyz passed {:+.2} s after the restart, with {complete_nodes} of 2 \
             nodes' pods served (full at {:+.2} s)",
            t - restart_wall,
            full_wall - restart_wall
        ),
        None => eprintln!("replica 0 /readyz had not passed by the time it was full"),
    }
    // The agents reconnect with backoff (200 ms doubling to 30 s, with
    // jitter); replica 0 was down for a few seconds.
    assert!(
        first_report - restart_wall < 35.0,
        "the agents took {:.1} s to reconnect",
        first_report - restart_wall
    );

    // Ready again (its probe passes), and serving through kube-apiserver.
    let (code, body) = anonymous.get(&c, &readyz).expect("readyz");
    assert_eq!((code, body.trim()), (200, "ok"));
    c.set_replica_ready(0, true).expect("replica 0 ready");
    c.wait_apiservices_available(Duration::from_secs(60))
        .expect("Available");
    // Both replicas now serve the same pods.
    let replica1 = format!(
        "https://{}:{}/apis/metrics.k8s.io/v1/pods",
        e2e::replica_ip(1),
        e2e::AGGREGATOR_PORT
    );
    for url in [&replica0, &replica1] {
        let (code, body) = direct.get(&c, url).expect("GET");
        assert_eq!(code, 200, "{url}: {body}");
        let list: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(
            item_names(&list).into_iter().collect::<BTreeSet<_>>(),
            all,
            "{url}"
        );
    }
    assert_eq!(top_pods(&c).expect("kubectl top"), all);
    c.ensure_ours_running().expect("nodepulse still running");
    eprintln!("failover done in {:.1?}", t0.elapsed());
}
