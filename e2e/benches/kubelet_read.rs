//! What one read of `/metrics/resource` costs a real kubelet: the figure
//! that decides whether every aggregator replica may read every agentless
//! node's kubelet (each reads it once per interval), or whether the reads
//! must be split across replicas.
//!
//! ```sh
//! cargo bench -p e2e --bench kubelet_read -- --pods 30
//! ```
//!
//! The real control plane with a real node (the pinned kubelet, containerd,
//! runc, as `e2e/tests/real_node.rs` runs them) and `--pods` pods of one
//! pause container each on it. Then rounds of `--seconds`, alternating:
//! nothing read, and `/metrics/resource` read `--rate` times a second by
//! nodepulse's own kubelet client (one kept connection, a client
//! certificate the kubelet's webhook authorizer allows, as the aggregator
//! reads). In each round, the CPU (utime+stime from `/proc/<pid>/stat`) of
//! the kubelet and of containerd (the kubelet asks the runtime for some of
//! the figures). Per read: the median read round's CPU less the median idle
//! round's, over the reads. Needs root (the cluster runs in a network
//! namespace, the node in cgroups of its own).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use agent::kubelet::{KubeletClient, KubeletConfig, resource_url};
use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser as _;
use e2e::{Cluster, Options};
use images::catalog;
use serde_json::{Value, json};
use testkit::{process::cpu_seconds, stats::median};

const NODE: &str = "node-a";
const NAMESPACE: &str = "reads";
const KUBELET_PORT: u16 = 10250;

#[derive(clap::Parser)]
#[command(about = "What one /metrics/resource read costs a real kubelet")]
struct Args {
    /// Pods of one container each on the node.
    #[arg(long, default_value_t = 30)]
    pods: usize,
    /// Rounds of each kind (idle, reading), alternating.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds per round.
    #[arg(long, default_value_t = 15.0)]
    seconds: f64,
    /// Reads per second in a reading round.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.pods > 0 && args.rounds > 0 && args.seconds > 0.0 && args.rate > 0.0,
        "--pods, --rounds, --seconds and --rate must be > 0"
    );
    let Some(h) = e2e::privileged("kubelet-read-bench") else {
        bail!("the kubelet read bench needs root, cgroup v2 and iproute2");
    };
    let mut c = Cluster::start(h, Options::real_nodes("kubelet-read")).context("control plane")?;
    c.add_real_node(NODE).context("a real node, Ready")?;
    start_pods(&mut c, args.pods)?;

    let node = c.real_node(NODE).context("the real node")?;
    let (kubelet, containerd) = (
        node.kubelet_pid().context("kubelet not running")?,
        node.containerd_pid().context("containerd not running")?,
    );
    let client = {
        let files = c.pki().client(
            "kubelet-read-bench",
            "kubelet-read-bench",
            Some("system:masters"),
        )?;
        let mut config = KubeletConfig::new(resource_url((node.ip, KUBELET_PORT).into())?);
        config.ca_file = Some(c.pki().cluster_ca.cert.clone());
        config.client_certificate = Some((files.cert, files.key));
        KubeletClient::new(config)?
    };
    let rt = c.netns().runtime(1)?;
    let client = Arc::new(client);

    // The kubelet lists a pod's container once it has stats for it.
    let containers = args.pods;
    let started = Instant::now();
    c.wait_for(
        &format!("the kubelet lists all {containers} containers"),
        Duration::from_secs(120),
        |_| {
            let client = Arc::clone(&client);
            let parsed = rt.run(async move { client.scrape().await })??;
            let ours = parsed
                .stats
                .pods
                .iter()
                .filter(|p| p.namespace == NAMESPACE)
                .map(|p| p.containers.len())
                .sum::<usize>();
            Ok((ours == containers).then_some(()))
        },
    )?;
    eprintln!(
        "kubelet-read: the kubelet lists all {containers} containers, {:.0} s after the pods ran",
        started.elapsed().as_secs_f64()
    );

    let period = Duration::from_secs_f64(1.0 / args.rate);
    let cpu = |pid: u32| cpu_seconds(pid).with_context(|| format!("CPU of pid {pid}"));
    let mut idle = Vec::new();
    let mut reading = Vec::new();
    let mut reads = 0u64;
    for round in 0..args.rounds * 2 {
        let read = round % 2 == 1;
        let before = (cpu(kubelet)?, cpu(containerd)?);
        let t = Instant::now();
        let n = if read {
            let client = Arc::clone(&client);
            let seconds = args.seconds;
            rt.run(async move { read_for(&client, period, seconds).await })??
        } else {
            std::thread::sleep(Duration::from_secs_f64(args.seconds));
            0
        };
        let wall = t.elapsed().as_secs_f64();
        let after = (cpu(kubelet)?, cpu(containerd)?);
        let cores = ((after.0 - before.0) / wall, (after.1 - before.1) / wall);
        eprintln!(
            "kubelet-read: round {round} ({}): kubelet {:.2} mCPU, containerd {:.2} mCPU{}",
            if read { "reading" } else { "idle" },
            cores.0 * 1e3,
            cores.1 * 1e3,
            if read {
                format!(", {n} reads")
            } else {
                String::new()
            }
        );
        if read {
            reads += n;
            reading.push((cores, n as f64 / wall));
        } else {
            idle.push(cores);
        }
    }
    let rate = median(reading.iter().map(|r| r.1));
    let kubelet_idle = median(idle.iter().map(|c| c.0));
    let kubelet_read = median(reading.iter().map(|r| r.0.0));
    let containerd_idle = median(idle.iter().map(|c| c.1));
    let containerd_read = median(reading.iter().map(|r| r.0.1));
    print_table(
        &args,
        (rate, reads),
        [
            ("kubelet", kubelet_idle, kubelet_read),
            ("containerd", containerd_idle, containerd_read),
        ],
    );
    Ok(())
}

/// Each process's CPU, idle and reading (cores), and per read.
#[allow(clippy::print_stdout)]
fn print_table(args: &Args, (rate, reads): (f64, u64), rows: [(&str, f64, f64); 2]) {
    println!(
        "\n| {} pods on a real node, {} rounds of {} s each kind, {rate:.1} reads/s ({reads} in all) | idle | reading | per read |",
        args.pods, args.rounds, args.seconds
    );
    println!("|---|---|---|---|");
    for (name, idle, reading) in rows {
        println!(
            "| {name} CPU | {:.2} mCPU | {:.2} mCPU | {:.3} ms |",
            idle * 1e3,
            reading * 1e3,
            (reading - idle) / rate * 1e3
        );
    }
}

/// `--pods` pods of one pause container each, Running on the node.
fn start_pods(c: &mut Cluster, pods: usize) -> Result<()> {
    let image = c.image_reference(&catalog::PAUSE)?;
    c.kubectl_ok(&["create", "namespace", NAMESPACE])?;
    let items: Vec<Value> = (0..pods)
        .map(|i| {
            json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": format!("p{i:03}"), "namespace": NAMESPACE},
                "spec": {
                    "nodeName": NODE,
                    "containers": [{
                        "name": "pause",
                        "image": image,
                        // Imported into the node's containerd; no registry.
                        "imagePullPolicy": "Never",
                    }],
                    "terminationGracePeriodSeconds": 1,
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                },
            })
        })
        .collect();
    c.apply(&json!({"apiVersion": "v1", "kind": "List", "items": items}))?;
    c.wait_for(
        &format!("{pods} pods Running"),
        Duration::from_secs(60 + 3 * pods as u64),
        move |c| {
            let list = c.kubectl_json(&["get", "pods", "-n", NAMESPACE])?;
            let running = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["status"]["phase"] == "Running")
                .count();
            Ok((running == pods).then_some(()))
        },
    )
}

/// Reads every `period` for `seconds`; how many reads.
async fn read_for(client: &KubeletClient, period: Duration, seconds: f64) -> Result<u64> {
    let end = tokio::time::Instant::now() + Duration::from_secs_f64(seconds);
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0;
    loop {
        ticks.tick().await;
        if tokio::time::Instant::now() >= end {
            return Ok(n);
        }
        client.fetch().await?;
        n += 1;
    }
}
