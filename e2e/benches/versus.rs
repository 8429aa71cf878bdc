//! nodepulse beside metrics-server at scale: the same simulated fleet served
//! by each in turn, on this machine, in one run.
//!
//! ```sh
//! cargo bench -p e2e --bench versus -- --nodes 1000 --pods-per-node 30
//! ```
//!
//! The real control plane (etcd, kube-apiserver, kube-controller-manager,
//! as the e2e tests run it) holds `--nodes` Node objects, each Ready with a
//! loopback InternalIP of its own, and `--pods-per-node` pods bound to each,
//! Running, 1.33 containers per pod, over 10 namespaces (`e2e::fleet`).
//! Every container burns a known load, so every counter is known at any
//! instant. Then, in turn:
//!
//! - **metrics-server** v0.8.0 with its release manifest's arguments
//!   (`--metric-resolution` 15 s) scrapes one kubelet stand-in per node: an
//!   HTTPS server on that node's address and port 10250, with a serving
//!   certificate from the cluster CA, answering `/metrics/resource` in the
//!   kubelet's format with the fleet's counters;
//! - the **nodepulse aggregator** (one replica, as the harness runs it: node
//!   tokens reviewed, pod bindings checked against kube-apiserver) is fed by
//!   one simulated agent per node — the agent's own exporter, the node's own
//!   bound token, the same counters — at each `--interval`. The simulated
//!   agents all connect from one address, so the aggregator's per-address
//!   connection limit is raised to let them;
//! - the **nodepulse aggregator reading the
//!   stand-ins itself**, as it reads nodes without an agent (every node
//!   picked by `--kubelet-node-selector`, read every `--resolution`; each
//!   node's pods watched as its agent would watch them): what agentless nodes
//!   cost, beside the same nodes sent by agents.
//!
//! For each, once it serves every pod: its CPU (utime+stime from
//! `/proc/<pid>/stat`) over `--seconds`, its RSS at the end, the same for
//! the stand-ins or simulated agents (this process) and for kube-apiserver;
//! then `--requests` GETs of all pods and of one namespace's pods, one at a
//! time, through one client (front-proxy certificate and `X-Remote-*`
//! headers, as kube-apiserver's aggregation layer sends them), p50 and p99.
//! The table ends with nodepulse / metrics-server ratios.
//!
//! Not simulated: the agents' pod watches (one field-selected watch per
//! node in a real cluster; the aggregator reading kubelets does run one per
//! node) and what a real kubelet spends answering a read. Needs root (the
//! cluster runs in a network namespace).

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser as _;
use e2e::{
    Cluster, MetricsServer, Options,
    fleet::{self, Fleet, agents, kubelets},
    replica_ip,
};
use http::{HeaderName, HeaderValue, Request};
use kube::Client;
use serde_json::Value;
use testkit::process::{cpu_seconds, raise_nofile, rss_kib};

#[derive(clap::Parser)]
#[command(about = "nodepulse beside metrics-server, the same fleet")]
struct Args {
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    #[arg(long, default_value_t = 30)]
    pods_per_node: usize,
    /// nodepulse's report intervals, seconds, each measured in turn.
    #[arg(long, value_delimiter = ',', default_value = "15,1")]
    interval: Vec<f64>,
    /// metrics-server's `--metric-resolution`.
    #[arg(long, default_value = "15s")]
    resolution: String,
    /// The measured window of each setup, seconds.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// GETs per latency figure.
    #[arg(long, default_value_t = 40)]
    requests: usize,
    /// Requests in flight while the fleet is made.
    #[arg(long, default_value_t = 32)]
    create_concurrency: usize,
    /// The setups measured, in this order; ratios are to the first.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "metrics-server,agents,kubelets"
    )]
    setups: Vec<Setup>,
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Setup {
    /// metrics-server scraping the kubelet stand-ins.
    MetricsServer,
    /// The aggregator fed by simulated agents, at each `--interval`.
    Agents,
    /// The aggregator reading the kubelet stand-ins itself.
    Kubelets,
}

/// What one setup cost.
struct Cost {
    name: String,
    /// From the server's start (ready) until it served every pod.
    first_served: Duration,
    server_cpu: f64,
    server_rss_kib: u64,
    feeder_cpu: f64,
    apiserver_cpu: f64,
    apiserver_rss_kib: u64,
    /// Requests kube-apiserver answered in the window, and the most frequent.
    apiserver_requests: (f64, String),
    all_pods: (f64, f64),
    one_namespace: (f64, f64),
}

fn main() -> Result<()> {
    let args = Args::parse();
    let Some(h) = e2e::privileged("versus-bench") else {
        bail!("the versus bench needs root, cgroup v2 and iproute2");
    };
    // Thousands of connections (stand-ins, agents).
    raise_nofile().context("raising the open-file limit")?;
    let opts = Options {
        replicas: 1,
        // The aggregator's staleness floor, as metrics-server's resolution.
        metric_resolution: args.resolution.clone(),
        ingest_connections_per_peer: Some(args.nodes + 64),
        ..Options::new("versus-bench")
    };
    let mut c = Cluster::start(h, opts).context("control plane")?;
    c.ours().context("nodepulse's binaries")?;
    let rt = c.netns().runtime(2)?;
    let admin = c.admin_kubeconfig();
    let client = rt.run(async move {
        let mut config = support::kube::config(Some(&admin)).await?;
        config.read_timeout = Some(Duration::from_secs(600));
        anyhow::Ok(support::kube::client_for(config)?)
    })??;
    let spec = fleet::Spec {
        nodes: args.nodes,
        pods_per_node: args.pods_per_node,
        namespaces: 10,
        concurrency: args.create_concurrency,
    };
    let fleet = {
        let client = client.clone();
        Arc::new(rt.run(async move { fleet::fill(&client, &spec).await })??)
    };
    let namespace_pods = fleet
        .nodes
        .iter()
        .flat_map(|n| &n.pods)
        .filter(|p| p.namespace == fleet::namespace(0))
        .count();
    let pods = fleet.pods();
    let apiserver = c.apiserver_pid().context("kube-apiserver not running")?;
    let front_proxy = (
        c.pki().front_proxy_client.cert.clone(),
        c.pki().front_proxy_client.key.clone(),
    );
    let mut costs = Vec::new();
    let tls = kubelets::tls(&fleet, &c.pki().cluster_ca)?;
    let stand_ins = rt.run(kubelets::serve(Arc::clone(&fleet), tls))??;
    let ca = c.pki().nodepulse_ca.cert.clone();
    let aggregator_reader = |rt: &e2e::netns::NsRuntime| {
        rt.run(metrics_client(
            format!("https://{}:{}", replica_ip(0), e2e::AGGREGATOR_PORT),
            ca.clone(),
            front_proxy.clone(),
        ))?
    };
    let measure = |name: String, reader: &Client, server: u32| {
        measure(
            &rt,
            &args,
            name,
            &client,
            reader,
            (server, apiserver),
            (pods, namespace_pods),
        )
    };
    for setup in &args.setups {
        match setup {
            Setup::MetricsServer => {
                let before = stand_ins.scrapes();
                let ms = c.start_metrics_server(&args.resolution)?;
                let reader = rt.run(metrics_client(
                    ms.url.clone(),
                    ms.ca.clone(),
                    front_proxy.clone(),
                ))??;
                costs.push(measure(
                    format!("metrics-server ({})", args.resolution),
                    &reader,
                    ms.pid(),
                )?);
                eprintln!(
                    "stand-ins answered {} scrapes",
                    stand_ins.scrapes() - before
                );
            }
            Setup::Agents => {
                let tokens = {
                    let (client, fleet) = (client.clone(), Arc::clone(&fleet));
                    let dir = c.work_dir().join("node-tokens");
                    rt.run(async move { agents::node_tokens(&client, &fleet, &dir).await })??
                };
                for &interval in &args.interval {
                    c.start_aggregators()?;
                    let pid = c.aggregator_pid(0).context("aggregator not running")?;
                    let configs = tokens
                        .iter()
                        .map(|token| c.agent_export_config(token.clone()))
                        .collect();
                    let fleet = Arc::clone(&fleet);
                    let period = Duration::from_secs_f64(interval);
                    let agents = rt.run(async move { agents::start(fleet, configs, period) })?;
                    let reader = aggregator_reader(&rt)?;
                    costs.push(measure(format!("nodepulse ({interval} s)"), &reader, pid)?);
                    rt.run(agents.stop())?;
                    c.stop_aggregator(0);
                }
            }
            Setup::Kubelets => {
                // Restored after, for setups that follow.
                let base = c.set_aggregator_flags(Vec::new());
                let mut flags = base.clone();
                flags.extend([
                    "--kubelet-node-selector=e2e.nodepulse.dev/simulated=true".to_owned(),
                    format!(
                        "--kubelet-certificate-authority={}",
                        c.pki().cluster_ca.cert.display()
                    ),
                    "--kubelet-use-node-status-port".to_owned(),
                    "--kubelet-preferred-address-types=InternalIP".to_owned(),
                    format!("--kubelet-scrape-interval={}", args.resolution),
                ]);
                c.set_aggregator_flags(flags);
                c.start_aggregators()?;
                let pid = c.aggregator_pid(0).context("aggregator not running")?;
                let reader = aggregator_reader(&rt)?;
                let before = stand_ins.scrapes();
                costs.push(measure(
                    format!("nodepulse (kubelets, {})", args.resolution),
                    &reader,
                    pid,
                )?);
                eprintln!(
                    "stand-ins answered {} reads of the aggregator",
                    stand_ins.scrapes() - before
                );
                c.stop_aggregator(0);
                c.set_aggregator_flags(base);
            }
        }
    }
    drop(stand_ins);
    print_table(&args, &fleet, &costs);
    Ok(())
}

/// Waits until `reader` serves every pod, then measures.
fn measure(
    rt: &e2e::netns::NsRuntime,
    args: &Args,
    name: String,
    admin: &Client,
    reader: &Client,
    (server, apiserver): (u32, u32),
    (pods, namespace_pods): (usize, usize),
) -> Result<Cost> {
    let started = Instant::now();
    let all = "/apis/metrics.k8s.io/v1beta1/pods";
    let one = format!(
        "/apis/metrics.k8s.io/v1beta1/namespaces/{}/pods",
        fleet::namespace(0)
    );
    loop {
        let client = reader.clone();
        let served = rt.run(async move { count(&client, all).await })?;
        match served {
            Ok(n) if n == pods => break,
            Ok(n) => eprintln!("{name}: {n}/{pods} pods served"),
            Err(e) => eprintln!("{name}: {e:#}"),
        }
        ensure!(
            started.elapsed() < Duration::from_secs(600),
            "{name}: not every pod served after 10 minutes"
        );
        std::thread::sleep(Duration::from_secs(3));
    }
    let first_served = started.elapsed();
    eprintln!(
        "{name}: every pod served after {:.0} s; measuring {} s",
        first_served.as_secs_f64(),
        args.seconds
    );
    let me = std::process::id();
    let requests = |rt: &e2e::netns::NsRuntime| {
        let admin = admin.clone();
        rt.run(async move { apiserver_requests(&admin).await })
    };
    let requests_before = requests(rt)??;
    let before = [
        cpu_seconds(server)?,
        cpu_seconds(me)?,
        cpu_seconds(apiserver)?,
    ];
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    let after = [
        cpu_seconds(server)?,
        cpu_seconds(me)?,
        cpu_seconds(apiserver)?,
    ];
    let wall = t.elapsed().as_secs_f64();
    let requests_after = requests(rt)??;
    let cores = |i: usize| (after[i] - before[i]) / wall;
    let latency = |path: String, want: usize| -> Result<(f64, f64)> {
        let mut ms = Vec::with_capacity(args.requests);
        for _ in 0..args.requests {
            let (client, get) = (reader.clone(), path.clone());
            let t = Instant::now();
            let n = rt.run(async move { count(&client, &get).await })??;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            ensure!(n == want, "{path}: {n} pods, not {want}");
        }
        ms.sort_by(f64::total_cmp);
        let at = |p: f64| ms[((ms.len() as f64 * p) as usize).min(ms.len() - 1)];
        Ok((at(0.5), at(0.99)))
    };
    Ok(Cost {
        server_cpu: cores(0),
        feeder_cpu: cores(1),
        apiserver_cpu: cores(2),
        server_rss_kib: rss_kib(server)?,
        apiserver_rss_kib: rss_kib(apiserver)?,
        apiserver_requests: requests_between(&requests_before, &requests_after, wall),
        all_pods: latency(all.to_string(), pods)?,
        one_namespace: latency(one, namespace_pods)?,
        first_served,
        name,
    })
}

/// A client for a metrics.k8s.io server as kube-apiserver's aggregation
/// layer reaches it: the front-proxy client certificate, the user in
/// `X-Remote-*` headers.
async fn metrics_client(
    url: String,
    ca: PathBuf,
    (cert, key): (PathBuf, PathBuf),
) -> Result<Client> {
    let mut config = kube::Config::new(url.parse()?);
    config.root_cert_file = Some(ca);
    config.auth_info.client_certificate = Some(cert.display().to_string());
    config.auth_info.client_key = Some(key.display().to_string());
    config.read_timeout = Some(Duration::from_secs(120));
    config.headers = MetricsServer::headers(e2e::USER_ADMIN, "system:masters")
        .into_iter()
        .map(|(name, value)| {
            Ok((
                HeaderName::from_bytes(name.as_bytes())?,
                HeaderValue::try_from(value)?,
            ))
        })
        .collect::<Result<_>>()?;
    Ok(support::kube::client_for(config)?)
}

/// kube-apiserver's `apiserver_request_total`, summed by verb, resource
/// and subresource (the requests it has answered since it started).
async fn apiserver_requests(admin: &Client) -> Result<std::collections::BTreeMap<String, f64>> {
    let text = admin
        .request_text(Request::get("/metrics").body(Vec::new())?)
        .await?;
    let mut by_kind = std::collections::BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|l| l.strip_prefix(&format!("{name}=\"")))
                .map_or("", |v| v.trim_end_matches('"'))
        };
        let kind = format!(
            "{} {}{}",
            label("verb"),
            label("resource"),
            match label("subresource") {
                "" => String::new(),
                sub => format!("/{sub}"),
            }
        );
        *by_kind.entry(kind).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    Ok(by_kind)
}

/// Requests per second between two readings of [`apiserver_requests`], and
/// the three most frequent kinds.
fn requests_between(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
    wall: f64,
) -> (f64, String) {
    let mut kinds: Vec<(f64, &String)> = after
        .iter()
        .map(|(k, v)| (v - before.get(k).copied().unwrap_or(0.0), k))
        .filter(|(d, _)| *d > 0.0)
        .collect();
    kinds.sort_by(|a, b| b.0.total_cmp(&a.0));
    let total: f64 = kinds.iter().map(|(d, _)| d).sum();
    let top: Vec<String> = kinds
        .iter()
        .take(3)
        .map(|(d, k)| format!("{k} {:.1}/s", d / wall))
        .collect();
    (total / wall, top.join(", "))
}

/// How many items `path` lists.
async fn count(client: &Client, path: &str) -> Result<usize> {
    let list: Value = client
        .request(Request::get(path).body(Vec::new())?)
        .await
        .with_context(|| format!("GET {path}"))?;
    list["items"]
        .as_array()
        .map(Vec::len)
        .with_context(|| format!("GET {path}: not a list"))
}

// A bench's report is its standard output.
#[allow(clippy::print_stdout)]
fn print_table(args: &Args, fleet: &Fleet, costs: &[Cost]) {
    let n = fleet.nodes.len() as f64;
    println!(
        "\n{} nodes, {} pods, {} containers; measured {} s each, {} GETs per latency\n",
        fleet.nodes.len(),
        fleet.pods(),
        fleet.containers(),
        args.seconds,
        args.requests
    );
    let head: Vec<&str> = costs.iter().map(|c| c.name.as_str()).collect();
    println!("| | {} |", head.join(" | "));
    println!("|---|{}", "---|".repeat(costs.len()));
    let row = |what: &str, f: &dyn Fn(&Cost) -> f64, unit: &str, digits: usize| {
        let base = f(&costs[0]);
        let cells: Vec<String> = costs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let v = f(c);
                if i == 0 || base == 0.0 {
                    format!("{v:.digits$}{unit}")
                } else {
                    format!("{v:.digits$}{unit} (×{:.3})", v / base)
                }
            })
            .collect();
        println!("| {what} | {} |", cells.join(" | "));
    };
    row(
        "server CPU per node",
        &|c| c.server_cpu * 1e3 / n,
        " mCPU",
        4,
    );
    row(
        "server RSS per node",
        &|c| c.server_rss_kib as f64 / n,
        " KiB",
        1,
    );
    row("server CPU", &|c| c.server_cpu * 1e3, " mCPU", 1);
    row(
        "server RSS",
        &|c| c.server_rss_kib as f64 / 1024.0,
        " MiB",
        1,
    );
    row(
        "stand-ins / simulated agents CPU",
        &|c| c.feeder_cpu * 1e3,
        " mCPU",
        1,
    );
    row("kube-apiserver CPU", &|c| c.apiserver_cpu * 1e3, " mCPU", 1);
    row(
        "kube-apiserver requests",
        &|c| c.apiserver_requests.0,
        "/s",
        2,
    );
    row(
        "kube-apiserver RSS",
        &|c| c.apiserver_rss_kib as f64 / 1024.0,
        " MiB",
        1,
    );
    row(
        "every pod served after",
        &|c| c.first_served.as_secs_f64(),
        " s",
        0,
    );
    row("all pods, p50", &|c| c.all_pods.0, " ms", 1);
    row("all pods, p99", &|c| c.all_pods.1, " ms", 1);
    row("one namespace, p50", &|c| c.one_namespace.0, " ms", 2);
    row("one namespace, p99", &|c| c.one_namespace.1, " ms", 2);
    println!("\nratios: each setup / {}", costs[0].name);
    for c in costs {
        println!(
            "kube-apiserver's most frequent requests, {}: {}",
            c.name, c.apiserver_requests.1
        );
    }
}
