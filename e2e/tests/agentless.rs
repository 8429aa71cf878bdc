//! Nodes without an agent, read from their kubelet as metrics-server reads
//! every node, on the real control plane.
//!
//! Nine simulated nodes (Node objects and pods in kube-apiserver, as
//! kubelets leave them; see `e2e::fleet`), each with a kubelet stand-in on
//! its own loopback address serving its known counters over HTTPS with a
//! serving certificate from the cluster CA:
//! - `node-00000` has an agent (the agent's own exporter, its node-bound
//!   token) and no `type=virtual-kubelet` label at first;
//! - `node-00001`, `node-00002`: labelled `type=virtual-kubelet` (the
//!   aggregator's default `--kubelet-node-selector` picks them), no agent;
//! - `node-00003` answers garbage, `node-00004` never answers, `node-00005`
//!   presents a certificate from a CA the aggregator does not trust,
//!   `node-00006` answers 403 as a kubelet's authorizer does, nothing
//!   listens on `node-00007`'s address, and `node-00008` answers 401 as a
//!   kubelet does to a token it cannot authenticate.
//!
//! Shown, with two aggregator replicas splitting the kubelet reads
//! (`--kubelet-replicas-service`, over the EndpointSlice this harness
//! publishes): the agentless nodes and their pods appear in `kubectl top`
//! with the stand-ins' values, and each replica, asked directly, holds them;
//! the agent's node is unaffected; each broken kubelet is logged once, by
//! the replica that reads it, with its reason while reads of it keep failing
//! and counting, and the good ones stay on time; each good kubelet is read
//! once per interval across the replicas, the reader forwarding to the
//! other. Then
//! `node-00000`'s agent is stopped: with `--kubelet-fallback-after` its
//! kubelet is read once the agent has been silent that long; the agent is
//! started again and takes back over, and the kubelet is no longer read.
//! Then `node-00000` is labelled too: its agent's figures stand (never
//! both); its agent is stopped, and its kubelet takes over with no gap (the
//! read held while the agent reported); its agent is started again, and
//! takes back over. Every value served on the way is within 1 % of the
//! truth (no spike, nothing negative). Last, replica 1 is killed and leaves
//! the EndpointSlice: replica 0 then reads every good kubelet itself.
//!
//! Needs root, cgroup v2 and iproute2; skips with a message elsewhere
//! (fails instead under NODEPULSE_REQUIRE_PRIVILEGED=1, as in CI).

mod common;

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, anyhow, ensure};
use common::{parse_go_duration, quantity, raw, strip_ansi, table};
use e2e::curl::Curl;
use e2e::{
    Cluster, Options,
    fleet::{
        self, Fleet, agents,
        kubelets::{self, Answer},
    },
    netns::NsRuntime,
    replica_ip,
};
use serde_json::Value;

/// The aggregator's `--kubelet-scrape-interval` (its floor).
const INTERVAL: Duration = Duration::from_secs(10);
/// The agent's report interval.
const AGENT_INTERVAL: Duration = Duration::from_secs(1);
/// Aggregator replicas: the kubelet reads are split between them.
const REPLICAS: usize = 2;
/// The aggregator's `--kubelet-fallback-after`.
const FALLBACK_AFTER: Duration = Duration::from_secs(5);
/// Every value served against the fleet's truth.
const TOLERANCE: f64 = 0.01;

const AGENT_NODE: usize = 0;
const GOOD: [usize; 2] = [1, 2];
/// (node, the reason the aggregator gives)
const BROKEN: [(usize, &str); 6] = [
    (3, "garbage"),
    (4, "timeout"),
    (5, "certificate"),
    (6, "forbidden"),
    (7, "unreachable"),
    (8, "unauthorized"),
];

#[test]
fn nodes_without_an_agent_are_read_from_their_kubelet() {
    let Some(h) = e2e::privileged("agentless") else {
        return;
    };
    let opts = Options {
        replicas: REPLICAS,
        ..Options::new("agentless")
    };
    let mut c = Cluster::start(h, opts).expect("cluster starts");
    if let Err(e) = run(&mut c) {
        c.dump_logs();
        panic!("{e:#}");
    }
}

fn run(c: &mut Cluster) -> Result<()> {
    c.ours().context("nodepulse's binaries")?;
    c.add_aggregator_flags([
        format!(
            "--kubelet-certificate-authority={}",
            c.pki().cluster_ca.cert.display()
        ),
        "--kubelet-use-node-status-port".to_owned(),
        "--kubelet-preferred-address-types=InternalIP".to_owned(),
        "--kubelet-request-timeout=2s".to_owned(),
        format!("--kubelet-scrape-interval={}s", INTERVAL.as_secs()),
        format!("--kubelet-fallback-after={}s", FALLBACK_AFTER.as_secs()),
        "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics".to_owned(),
    ]);
    let split = c.replica_split_flags()?;
    c.add_aggregator_flags(split);
    let rt = c.netns().runtime(2)?;
    let admin = c.admin_kubeconfig();
    let client =
        rt.run(async move { anyhow::Ok(support::kube::client(Some(&admin)).await?) })??;
    let spec = fleet::Spec {
        nodes: 9,
        pods_per_node: 2,
        namespaces: 2,
        concurrency: 9,
    };
    let fleet = {
        let client = client.clone();
        Arc::new(rt.run(async move { fleet::fill(&client, &spec).await })??)
    };
    let name = |i: usize| fleet.nodes[i].name.clone();
    for i in GOOD.into_iter().chain(BROKEN.map(|(i, _)| i)) {
        c.kubectl_ok(&["label", "node", &name(i), "type=virtual-kubelet"])?;
    }
    let mut tls = kubelets::tls(&fleet, &c.pki().cluster_ca)?;
    let untrusted = kubelets::tls(&fleet, &c.pki().nodepulse_ca)?;
    tls[5] = Arc::clone(&untrusted[5]);
    let _stand_ins = rt.run(kubelets::serve_with(Arc::clone(&fleet), tls, |i| match i {
        3 => Some(Answer::Garbage),
        4 => Some(Answer::Hang),
        6 => Some(Answer::Forbidden),
        7 => None,
        8 => Some(Answer::Unauthorized),
        _ => Some(Answer::Metrics),
    }))??;
    c.start_aggregators()?;
    let token = {
        let (client, fleet) = (client.clone(), Arc::clone(&fleet));
        let dir = c.work_dir().join("node-tokens");
        rt.run(async move { agents::node_tokens(&client, &fleet, &dir).await })??
            .swap_remove(AGENT_NODE)
    };
    let agent_config = c.agent_export_config(token);
    let start_agent = |rt: &NsRuntime| {
        let (fleet, config) = (Arc::clone(&fleet), agent_config.clone());
        rt.run(async move { agents::start(fleet, vec![config], AGENT_INTERVAL) })
    };
    let agent = start_agent(&rt)?;

    // Served: the agent's node and the agentless ones, with their pods.
    let served_nodes: Vec<usize> = std::iter::once(AGENT_NODE).chain(GOOD).collect();
    let started = Instant::now();
    c.wait_for("the good nodes served", Duration::from_secs(60), |c| {
        let nodes = raw(c, "/apis/metrics.k8s.io/v1beta1/nodes")?;
        let pods = raw(c, "/apis/metrics.k8s.io/v1beta1/pods")?;
        Ok((served_nodes
            .iter()
            .all(|&i| find(&nodes, &name(i)).is_some())
            && served_nodes
                .iter()
                .flat_map(|&i| &fleet.nodes[i].pods)
                .all(|p| find_pod(&pods, &p.namespace, &p.name).is_some()))
        .then_some(()))
    })?;
    eprintln!(
        "agentless: every good node and pod served after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let nodes = raw(c, "/apis/metrics.k8s.io/v1beta1/nodes")?;
    let pods = raw(c, "/apis/metrics.k8s.io/v1beta1/pods")?;
    for &i in &served_nodes {
        check_node(&fleet, i, &nodes)?;
        check_pods(&fleet, i, &pods)?;
        let window = window_of(&nodes, &name(i))?;
        let want = if i == AGENT_NODE {
            AGENT_INTERVAL
        } else {
            INTERVAL
        };
        ensure!(
            (window - want.as_secs_f64()).abs() < 0.5,
            "{}: window {window} s, not {want:?}",
            name(i)
        );
    }
    for (i, _) in BROKEN {
        ensure!(find(&nodes, &name(i)).is_none(), "{} served", name(i));
    }
    // Every replica holds the agentless nodes: asked directly, as the
    // aggregation layer asks (front-proxy certificate, X-Remote-* headers).
    let front_proxy = Curl::with_files(
        &c.pki().nodepulse_ca.cert,
        Some((
            &c.pki().front_proxy_client.cert,
            &c.pki().front_proxy_client.key,
        )),
    );
    let as_admin = [
        format!("X-Remote-User: {}", e2e::USER_ADMIN),
        "X-Remote-Group: system:masters".to_owned(),
    ];
    let as_admin: Vec<&str> = as_admin.iter().map(String::as_str).collect();
    for r in 0..REPLICAS {
        let url = format!(
            "https://{}:{}/apis/metrics.k8s.io/v1beta1/nodes",
            replica_ip(r),
            e2e::AGGREGATOR_PORT
        );
        let (status, body) = front_proxy.get_with(c, &url, &as_admin)?;
        ensure!(status == 200, "replica {r}: {status} {body}");
        let nodes: Value = serde_json::from_str(&body)?;
        for i in GOOD {
            check_node(&fleet, i, &nodes).with_context(|| format!("replica {r}"))?;
        }
    }

    // What kubectl shows.
    let (_, rows) = table(&c.kubectl_ok(&["top", "nodes"])?);
    let listed: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    for &i in &served_nodes {
        ensure!(
            listed.contains(&name(i).as_str()),
            "kubectl top nodes: {listed:?}"
        );
    }
    let (_, rows) = table(&c.kubectl_ok(&["top", "pods", "-A"])?);
    for p in served_nodes.iter().flat_map(|&i| &fleet.nodes[i].pods) {
        let row = rows
            .iter()
            .find(|r| r[0] == p.namespace && r[1] == p.name)
            .ok_or_else(|| anyhow!("kubectl top pods: no {}/{}", p.namespace, p.name))?;
        let want: u64 = p.containers.iter().map(|c| c.millicores).sum();
        let got = quantity(&row[2])? * 1e3;
        ensure!(
            (got - want as f64).abs() <= want as f64 * TOLERANCE + 1.0,
            "kubectl top pods {}/{}: {got}m, not {want}m",
            p.namespace,
            p.name
        );
    }

    // Broken kubelets: counted at every read, logged once each (by the
    // replica that reads it); the good ones read on time meanwhile.
    let metrics_url =
        |r: usize| format!("https://{}:{}/metrics", replica_ip(r), e2e::AGGREGATOR_PORT);
    let curl = Curl::with_files(&c.pki().nodepulse_ca.cert, None);
    // A counter summed over the replicas.
    let total = |c: &mut Cluster, of: &dyn Fn(&str) -> Result<f64>| -> Result<f64> {
        let mut sum = 0.0;
        for r in 0..REPLICAS {
            let (status, text) = curl.get(c, &metrics_url(r))?;
            ensure!(status == 200, "replica {r} /metrics: {status} {text}");
            sum += of(&text)?;
        }
        Ok(sum)
    };
    let mut oldest = 0.0f64;
    let mut failures = BTreeMap::new();
    c.wait_for(
        "every broken kubelet read three times",
        Duration::from_secs(60),
        |c| {
            let nodes = raw(c, "/apis/metrics.k8s.io/v1beta1/nodes")?;
            for i in GOOD {
                oldest = oldest.max(age(&nodes, &name(i))?);
            }
            failures = BROKEN
                .iter()
                .map(|(_, reason)| Ok((*reason, total(c, &|text| scrapes(text, reason))?)))
                .collect::<Result<_>>()?;
            Ok(failures.values().all(|&n| n >= 3.0).then_some(()))
        },
    )?;
    eprintln!("agentless: failed reads {failures:?}; good nodes' oldest reading {oldest:.1} s");
    ensure!(
        oldest <= INTERVAL.as_secs_f64() + 3.0,
        "a good node's reading was {oldest:.1} s old while others failed"
    );
    let logs = (0..REPLICAS)
        .map(|r| {
            let path = c.aggregator_log(r).context("aggregator log")?;
            Ok(strip_ansi(&std::fs::read_to_string(path)?))
        })
        .collect::<Result<Vec<String>>>()?;
    for (i, reason) in BROKEN {
        let lines: Vec<&str> = logs
            .iter()
            .flat_map(|log| log.lines())
            .filter(|l| l.contains("cannot read the node's kubelet") && l.contains(&name(i)))
            .collect();
        ensure!(
            lines.len() == 1 && lines[0].contains(&format!("reason=\"{reason}\"")),
            "{}: want one line, from its reader, with reason {reason}, got {lines:#?}",
            name(i)
        );
        eprintln!("agentless: {}", lines[0]);
    }

    // Each good kubelet is read once per interval across the replicas, and
    // the reader forwards it to the other.
    let success = |text: &str| scrapes(text, "success");
    let forwarded = |text: &str| {
        metric(
            text,
            r#"nodepulse_ingest_forwarded_reports_total{result="applied"}"#,
        )
    };
    let (reads_before, since) = (total(c, &success)?, Instant::now());
    std::thread::sleep(INTERVAL * 3);
    let reads = total(c, &success)? - reads_before;
    let intervals = since.elapsed().as_secs_f64() / INTERVAL.as_secs_f64();
    let good = GOOD.len() as f64;
    eprintln!(
        "agentless: {reads} reads of {good} good kubelets in {intervals:.1} intervals, over {REPLICAS} replicas"
    );
    ensure!(
        reads <= good * (intervals + 1.0) && reads >= good * (intervals - 1.0),
        "{reads} reads of {good} kubelets in {intervals:.1} intervals: not once per interval"
    );
    ensure!(total(c, &forwarded)? > 0.0, "nothing forwarded");
    // The readers' side: what they sent on, and each picked node (broken
    // ones too) read by exactly one of the replicas.
    let sent = |text: &str| metric(text, "nodepulse_kubelet_forwarded_reports_total");
    ensure!(total(c, &sent)? > 0.0, "no reader counted a read sent on");
    let picked = (GOOD.len() + BROKEN.len()) as f64;
    let shares = total(c, &|text| metric(text, "nodepulse_kubelet_nodes_read"))?;
    ensure!(
        shares == picked,
        "{shares} nodes read across the replicas, not the {picked} picked"
    );

    // The agent's node, not picked, falls back to its kubelet while its
    // agent is silent, and only then.
    let gauge = |c: &mut Cluster, name: &str| -> Result<f64> {
        let (_, text) = curl.get(c, &metrics_url(0))?;
        metric(&text, name)
    };
    ensure!(
        gauge(c, "nodepulse_kubelet_nodes")? == picked,
        "only the picked nodes are read while the agent reports"
    );
    let agent = switch_source(c, &rt, &fleet, agent, &start_agent, "fallback")?;
    c.wait_for("the fallback's loop gone", INTERVAL * 3, |c| {
        Ok((gauge(c, "nodepulse_kubelet_nodes")? == picked).then_some(()))
    })?;

    // The agent's node picked too: its agent's figures stand.
    c.kubectl_ok(&["label", "node", &name(AGENT_NODE), "type=virtual-kubelet"])?;
    let held = r#"nodepulse_kubelet_scrapes_total{result="agent_reports"}"#;
    c.wait_for(
        "the agent's node read and held",
        Duration::from_secs(45),
        |c| Ok((total(c, &|text| metric(text, held))? >= 2.0).then_some(())),
    )?;
    let nodes = raw(c, "/apis/metrics.k8s.io/v1beta1/nodes")?;
    ensure!(
        (window_of(&nodes, &name(AGENT_NODE))? - AGENT_INTERVAL.as_secs_f64()).abs() < 0.5,
        "the agent's node is served from its kubelet while its agent reports"
    );
    let _agent = switch_source(c, &rt, &fleet, agent, &start_agent, "picked")?;

    // Replica 1 dies and leaves the EndpointSlice: replica 0 reads every
    // good kubelet itself, each served from a read after the death.
    c.kill_aggregator(1);
    c.set_replica_ready(1, false)?;
    let killed = Instant::now();
    let after = INTERVAL + Duration::from_secs(3);
    let url = format!(
        "https://{}:{}/apis/metrics.k8s.io/v1beta1/nodes",
        replica_ip(0),
        e2e::AGGREGATOR_PORT
    );
    c.wait_for("replica 0 reading every good kubelet", INTERVAL * 6, |c| {
        let (status, body) = front_proxy.get_with(c, &url, &as_admin)?;
        ensure!(status == 200, "replica 0: {status} {body}");
        let nodes: Value = serde_json::from_str(&body)?;
        let mut fresh = killed.elapsed() > after;
        for i in GOOD {
            check_node(&fleet, i, &nodes)?;
            fresh &= age(&nodes, &name(i))? < after.as_secs_f64();
        }
        Ok(fresh.then_some(()))
    })?;
    eprintln!(
        "agentless: replica 1 killed; replica 0 serves every good node from its own reads after {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Stops the agent of [`AGENT_NODE`] until its kubelet serves the node,
/// then starts it until it serves the node again; every value served on
/// the way must hold. Returns the new agent.
fn switch_source(
    c: &mut Cluster,
    rt: &NsRuntime,
    fleet: &Fleet,
    agent: agents::Agents,
    start_agent: &dyn Fn(&NsRuntime) -> Result<agents::Agents>,
    case: &str,
) -> Result<agents::Agents> {
    rt.run(agent.stop())?;
    let (after, unserved) = until_served(
        c,
        fleet,
        "the kubelet serving the agent's node",
        Duration::from_secs(60),
        INTERVAL,
    )?;
    eprintln!(
        "agentless ({case}): agent stopped; its kubelet serves the node after {after:.1} s (unserved for {unserved:.1} s)"
    );
    let agent = start_agent(rt)?;
    let (after, unserved) = until_served(
        c,
        fleet,
        "the agent serving its node again",
        Duration::from_secs(30),
        AGENT_INTERVAL,
    )?;
    eprintln!(
        "agentless ({case}): agent started; it serves the node again after {after:.1} s (unserved for {unserved:.1} s)"
    );
    Ok(agent)
}

/// Waits until [`AGENT_NODE`] is served over `window`, checking every
/// value served on the way: (seconds it took, longest time unserved).
fn until_served(
    c: &mut Cluster,
    fleet: &Fleet,
    what: &str,
    timeout: Duration,
    window: Duration,
) -> Result<(f64, f64)> {
    let started = Instant::now();
    let mut gap = Gap::default();
    c.wait_for(what, timeout, |c| gap.watch(c, fleet, AGENT_NODE, window))?;
    Ok((started.elapsed().as_secs_f64(), gap.longest))
}

/// Watches one node through a change of source: every value served must
/// hold; done once it is served over `window`.
#[derive(Default)]
struct Gap {
    since: Option<Instant>,
    longest: f64,
}

impl Gap {
    fn watch(
        &mut self,
        c: &mut Cluster,
        fleet: &Fleet,
        i: usize,
        window: Duration,
    ) -> Result<Option<()>> {
        let nodes = raw(c, "/apis/metrics.k8s.io/v1beta1/nodes")?;
        let name = &fleet.nodes[i].name;
        if find(&nodes, name).is_none() {
            let since = *self.since.get_or_insert_with(Instant::now);
            self.longest = self.longest.max(since.elapsed().as_secs_f64());
            return Ok(None);
        }
        self.since = None;
        check_node(fleet, i, &nodes)?;
        check_pods(fleet, i, &raw(c, "/apis/metrics.k8s.io/v1beta1/pods")?)?;
        Ok(((window_of(&nodes, name)? - window.as_secs_f64()).abs() < 0.5).then_some(()))
    }
}

fn find<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list["items"]
        .as_array()?
        .iter()
        .find(|i| i["metadata"]["name"] == name)
}

fn find_pod<'a>(list: &'a Value, namespace: &str, name: &str) -> Option<&'a Value> {
    list["items"]
        .as_array()?
        .iter()
        .find(|i| i["metadata"]["namespace"] == namespace && i["metadata"]["name"] == name)
}

fn window_of(nodes: &Value, name: &str) -> Result<f64> {
    let item = find(nodes, name).ok_or_else(|| anyhow!("{name} not served"))?;
    item["window"]
        .as_str()
        .and_then(parse_go_duration)
        .ok_or_else(|| anyhow!("{name}: window {}", item["window"]))
}

/// How old node `name`'s reading is, seconds.
fn age(nodes: &Value, name: &str) -> Result<f64> {
    let item = find(nodes, name).ok_or_else(|| anyhow!("{name} not served"))?;
    let at = item["timestamp"]
        .as_str()
        .and_then(common::parse_timestamp)
        .ok_or_else(|| anyhow!("{name}: timestamp {}", item["timestamp"]))?;
    Ok(common::now_secs() - at as f64)
}

fn within(what: &str, got: f64, want: f64, slack: f64) -> Result<()> {
    ensure!(
        (got - want).abs() <= want * TOLERANCE + slack,
        "{what}: {got}, not {want}"
    );
    Ok(())
}

/// Node `i` as served against the fleet's truth.
fn check_node(fleet: &Fleet, i: usize, nodes: &Value) -> Result<()> {
    let node = &fleet.nodes[i];
    let item = find(nodes, &node.name).ok_or_else(|| anyhow!("{} not served", node.name))?;
    let now = SystemTime::now();
    let cores = fleet.node_cpu_seconds(node, now + Duration::from_secs(1))
        - fleet.node_cpu_seconds(node, now);
    within(
        &format!("{} cpu", node.name),
        common::usage(item, "cpu")?,
        cores,
        0.001,
    )?;
    within(
        &format!("{} memory", node.name),
        common::usage(item, "memory")?,
        fleet.node_memory(node) as f64,
        1024.0,
    )
}

/// Node `i`'s pods as served against the fleet's truth.
fn check_pods(fleet: &Fleet, i: usize, pods: &Value) -> Result<()> {
    for p in &fleet.nodes[i].pods {
        let item = find_pod(pods, &p.namespace, &p.name)
            .ok_or_else(|| anyhow!("{}/{} not served", p.namespace, p.name))?;
        for c in &p.containers {
            let what = format!("{}/{}/{}", p.namespace, p.name, c.name);
            within(
                &format!("{what} cpu"),
                common::container_usage(item, &c.name, "cpu")?,
                c.millicores as f64 / 1e3,
                0.001,
            )?;
            within(
                &format!("{what} memory"),
                common::container_usage(item, &c.name, "memory")?,
                c.memory as f64,
                1024.0,
            )?;
        }
    }
    Ok(())
}

/// `nodepulse_kubelet_scrapes_total{result="<result>"}` in a `/metrics` text.
fn scrapes(text: &str, result: &str) -> Result<f64> {
    metric(
        text,
        &format!("nodepulse_kubelet_scrapes_total{{result=\"{result}\"}}"),
    )
}

/// The sample `series` (name and labels, as printed) in a `/metrics` text.
fn metric(text: &str, series: &str) -> Result<f64> {
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .ok_or_else(|| anyhow!("no {series} in /metrics"))?
        .trim()
        .parse()
        .context("a sample")
}
