//! What the aggregator's binding check costs the real kube-apiserver, side by
//! side with the start of the alternative, a watch of every pod.
//!
//! ```sh
//! cargo bench -p e2e --bench binding -- --nodes 1000 --pods-per-node 30
//! ```
//!
//! The real control plane (etcd, kube-apiserver, kube-controller-manager, as
//! the e2e tests run it) holds `--nodes` Node objects and `--pods-per-node`
//! pods bound to each (`e2e::fleet`: created through the API as the
//! scheduler's binding and a kubelet's status leave them; no kubelet runs
//! them). A store learns every pod from its
//! node's reports, then the aggregator's own binding check
//! (`aggregator_api::binding::run`, 8 nodes at a time: each Node's capacity,
//! then the node's pods' metadata) runs until every pod is served. Side by
//! side: the cluster-wide metadata-only LIST of all pods that a pod watch
//! (an informer) makes at every replica's start, before it holds every pod.
//! Both are answered from kube-apiserver's watch cache (`resourceVersion=0`).
//! Measured: wall time, kube-apiserver CPU (`/proc/<pid>/stat`), and the
//! bytes of the answers (their JSON re-encoded); then one node's question
//! alone, as asked whenever a node's pods change.
//!
//! Needs root (the cluster runs in a network namespace of its own).
use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use aggregator_api::{
    api::view::MetricsView as _,
    binding,
    store::{Config, Freshness, Store},
};
use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser as _;
use e2e::{
    Cluster, Options,
    fleet::{self, Fleet},
};
use k8s_openapi::api::core::v1::Pod as KubePod;
use kube::{
    Api, Client,
    api::{ListParams, ObjectList, PartialObjectMeta},
};
use testkit::process::cpu_seconds;
use tokio_util::sync::CancellationToken;

#[derive(clap::Parser)]
#[command(about = "The binding check against the real kube-apiserver")]
struct Args {
    /// Node objects.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Pods bound to each node.
    #[arg(long, default_value_t = 30)]
    pods_per_node: usize,
    /// Measured runs of each side (the median is printed).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Objects created at once while the cluster is filled.
    #[arg(long, default_value_t = 32)]
    create_concurrency: usize,
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let Some(h) = e2e::privileged("binding-bench") else {
        bail!("the binding bench needs root, cgroup v2 and iproute2");
    };
    let opts = Options {
        replicas: 0,
        register_nodepulse: false,
        ..Options::new("binding-bench")
    };
    let c = Cluster::start(h, opts).context("control plane")?;
    let apiserver = c.apiserver_pid().context("kube-apiserver not running")?;
    let kubeconfig = c.admin_kubeconfig();
    let run = c
        .netns()
        .spawn("binding-bench", move || -> Result<()> {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(measure(&args, &kubeconfig, apiserver))
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("bench thread panicked"))?;
    run??;
    Ok(())
}

/// A bench's report is its standard output.
#[allow(clippy::print_stdout)]
async fn measure(args: &Args, kubeconfig: &Path, apiserver: u32) -> Result<()> {
    let mut config = support::kube::config(Some(kubeconfig)).await?;
    // The whole cluster's list is hundreds of MB at 300,000 pods.
    config.read_timeout = Some(Duration::from_secs(600));
    let client = support::kube::client_for(config)?;
    let started = Instant::now();
    let fleet = fleet::fill(
        &client,
        &fleet::Spec {
            nodes: args.nodes,
            pods_per_node: args.pods_per_node,
            namespaces: 1,
            concurrency: args.create_concurrency,
        },
    )
    .await?;
    let total = fleet.pods();
    println!(
        "{} nodes, {total} pods created in {:.1} s",
        args.nodes,
        started.elapsed().as_secs_f64()
    );

    let mut check = Vec::new();
    for _ in 0..args.rounds {
        check.push(binding_pass(&client, &fleet, apiserver).await?);
    }
    let mut list = Vec::new();
    for _ in 0..args.rounds {
        let cpu = cpu_seconds(apiserver)?;
        let t = Instant::now();
        let (items, bytes) = list_all(&client).await?;
        let wall = t.elapsed();
        ensure!(items == total, "the list has {items} pods, not {total}");
        list.push(Cost {
            wall,
            cpu: cpu_seconds(apiserver)? - cpu,
            bytes,
        });
    }
    let mut one = Vec::new();
    for node in fleet.nodes.iter().take(200) {
        let node = &node.name;
        let t = Instant::now();
        let answer = node_pods(&client, node).await?;
        one.push(t.elapsed());
        let items = answer.items.len();
        ensure!(
            items == args.pods_per_node,
            "{node}: {items} pods listed, not {}",
            args.pods_per_node
        );
    }
    one.sort();

    let check = median(check);
    let list = median(list);
    println!("median of {} rounds each:", args.rounds);
    println!("| | wall | kube-apiserver CPU | bytes |");
    println!("|---|---|---|---|");
    for (what, c) in [
        (
            format!(
                "binding check: {} Node GETs + {} node pod lists",
                args.nodes, args.nodes
            ),
            &check,
        ),
        (format!("one metadata LIST of all {total} pods"), &list),
    ] {
        println!(
            "| {what} | {:.2} s | {:.2} s | {:.1} MB |",
            c.wall.as_secs_f64(),
            c.cpu,
            c.bytes as f64 / 1e6
        );
    }
    println!(
        "binding check / full list: wall ×{:.2}, kube-apiserver CPU {}, bytes ×{:.2}",
        check.wall.as_secs_f64() / list.wall.as_secs_f64(),
        cpu_ratio(check.cpu, list.cpu),
        check.bytes as f64 / list.bytes as f64
    );
    println!(
        "one node's pods ({} each), asked alone: p50 {:.2} ms, p99 {:.2} ms over {} questions",
        args.pods_per_node,
        ms(one[one.len() / 2]),
        ms(one[(one.len() * 99 / 100).min(one.len() - 1)]),
        one.len()
    );
    Ok(())
}

#[derive(Clone, Copy)]
struct Cost {
    wall: Duration,
    cpu: f64,
    bytes: usize,
}

fn median(mut runs: Vec<Cost>) -> Cost {
    runs.sort_by_key(|c| c.wall);
    runs[runs.len() / 2]
}

/// The kernel counts process CPU in clock ticks (10 ms here), so a
/// denominator below two ticks makes no ratio worth printing.
fn cpu_ratio(check: f64, list: f64) -> String {
    if list < 0.02 {
        "n/a (the list used under 20 ms, below the tick resolution)".to_string()
    } else {
        format!("×{:.2}", check / list)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Every pod's metadata in one LIST from kube-apiserver's watch cache
/// (`resourceVersion=0`, which the cache answers whole, whatever `limit`
/// says), as a reflector's first LIST asks: how many, and the bytes.
async fn list_all(client: &Client) -> Result<(usize, usize)> {
    let all = Api::<KubePod>::all(client.clone())
        .list_metadata(&ListParams::default().match_any())
        .await?;
    Ok((all.items.len(), serde_json::to_vec(&all)?.len()))
}

/// `node`'s pods, metadata only, as the binding check asks.
async fn node_pods(client: &Client, node: &str) -> Result<ObjectList<PartialObjectMeta<KubePod>>> {
    Ok(Api::<KubePod>::all(client.clone())
        .list_metadata(&binding::list_params(node))
        .await?)
}

/// A fresh store learns every pod from two reports of each node; the
/// binding check then runs until every pod is served.
async fn binding_pass(client: &Client, fleet: &Fleet, apiserver: u32) -> Result<Cost> {
    let total = fleet.pods();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    // Each node reports once, before the pass: at 10,000 nodes applying the
    // reports and the pass take longer than the 10 s a silent node stays
    // served, so freshness must not end the pass early.
    let store = Arc::new(Store::new(Config {
        bindings: Some(tx),
        freshness: Freshness {
            windows: 3,
            at_least: Duration::from_secs(3600),
        },
        ..Config::default()
    }));
    let now = SystemTime::now();
    for node in &fleet.nodes {
        let metadata = node.metadata();
        for (k, at) in [now - Duration::from_secs(1), now].into_iter().enumerate() {
            let mut report = fleet.report(node, at, k as u64 + 1, 1);
            report.metadata = Some(metadata.clone());
            store
                .apply(&report, now)
                .map_err(|e| anyhow::anyhow!("{}: {e}", node.name))?;
        }
    }
    ensure!(store.pods(None).is_empty(), "pods served before the check");
    let cancel = CancellationToken::new();
    let cpu = cpu_seconds(apiserver)?;
    let t = Instant::now();
    let checking = tokio::spawn(binding::run(
        Arc::clone(&store),
        client.clone(),
        rx,
        cancel.clone(),
    ));
    // Polled every 50 ms, or twice as long as a poll takes (serving 300,000
    // pods takes a while), so that polling uses at most a third of a core
    // beside the pass it measures.
    let deadline = t + Duration::from_secs(1200);
    loop {
        let poll = Instant::now();
        if store.pods(None).len() == total {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the binding check did not finish"
        );
        tokio::time::sleep((poll.elapsed() * 2).max(Duration::from_millis(50))).await;
    }
    let wall = t.elapsed();
    let cpu = cpu_seconds(apiserver)? - cpu;
    cancel.cancel();
    checking.await?;
    // What the check received: each Node and each node's metadata list.
    let mut bytes = 0;
    for node in fleet.nodes.iter().take(20) {
        let n = fleet::get(client, &format!("/api/v1/nodes/{}", node.name)).await?;
        let l = node_pods(client, &node.name).await?;
        bytes += serde_json::to_vec(&n)?.len() + serde_json::to_vec(&l)?.len();
    }
    let n = fleet.nodes.len();
    let bytes = bytes * n / n.min(20);
    Ok(Cost { wall, cpu, bytes })
}
