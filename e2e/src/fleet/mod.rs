//! A simulated fleet at scale, for benchmarks: Node objects and their pods
//! in the real kube-apiserver as kubelets leave them (bound, Running, with
//! container ids), each container burning a known load, so that every
//! cumulative counter is known at any instant. The same fleet is served two
//! ways: by kubelet stand-ins ([`kubelets`]), one per node on its own
//! loopback address, answering `/metrics/resource` as the kubelet does (what
//! metrics-server scrapes), and by simulated agents ([`agents`]) that send
//! it through the agent's own exporter (what nodepulse ingests).

pub mod agents;
pub mod kubelets;

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use agent::{
    cgroup::stats::Memory,
    collector::{ContainerSample, CpuSource, NodeSample, PodSample, Snapshot},
};
use anyhow::{Context, Result, ensure};
use http::Request;
use kube::Client;
use proto::v1::{ContainerName, NodeMetadata, NodeReport, PodMetadata};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::{manifests, time::rfc3339};

/// The kubelet port every node's status names (and its stand-in listens on).
pub const KUBELET_PORT: u16 = 10250;
/// Every node's capacity.
const NODE_CORES: u64 = 8;
const NODE_MEMORY: u64 = 32 << 30;
/// What a node uses beyond its pods' containers (system daemons).
const NODE_OVERHEAD_MILLICORES: u64 = 150;
const NODE_OVERHEAD_MEMORY: u64 = 1 << 30;

/// How big a fleet to make.
#[derive(Clone, Debug)]
pub struct Spec {
    pub nodes: usize,
    pub pods_per_node: usize,
    /// Pods are spread over this many namespaces, `fleet-0` on.
    pub namespaces: usize,
    /// Requests in flight while the objects are made.
    pub concurrency: usize,
}

/// The fleet as made: every object's identity and every container's load.
pub struct Fleet {
    /// When every container started; counters are zero then.
    pub start: SystemTime,
    pub nodes: Vec<Node>,
}

pub struct Node {
    pub name: String,
    pub uid: String,
    /// InternalIP: a loopback address of its own (see [`node_ip`]).
    pub ip: Ipv4Addr,
    pub pods: Vec<Pod>,
}

pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub containers: Vec<Container>,
}

pub struct Container {
    pub name: String,
    /// 64 hex digits, as containerd's.
    pub id: String,
    pub millicores: u64,
    pub memory: u64,
}

/// Node `i`'s InternalIP: 127.a.b.c with b and c never 0 (loopback, so any
/// of them is this machine's inside the test's network namespace).
pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        1 + (i / 62_500) as u8,
        1 + (i / 250 % 250) as u8,
        1 + (i % 250) as u8,
    )
}

pub fn namespace(i: usize) -> String {
    format!("fleet-{i}")
}

impl Fleet {
    pub fn pods(&self) -> usize {
        self.nodes.iter().map(|n| n.pods.len()).sum()
    }

    pub fn containers(&self) -> usize {
        self.nodes
            .iter()
            .flat_map(|n| &n.pods)
            .map(|p| p.containers.len())
            .sum()
    }

    /// Seconds since [`Fleet::start`] at `at`.
    fn elapsed(&self, at: SystemTime) -> f64 {
        at.duration_since(self.start)
            .map_or(0.0, |d| d.as_secs_f64())
    }

    /// A container's cumulative CPU at `at`, seconds.
    pub fn cpu_seconds(&self, c: &Container, at: SystemTime) -> f64 {
        c.millicores as f64 / 1e3 * self.elapsed(at)
    }

    /// A node's cumulative CPU at `at` (its containers and the rest), seconds.
    pub fn node_cpu_seconds(&self, n: &Node, at: SystemTime) -> f64 {
        (n.millicores() + NODE_OVERHEAD_MILLICORES) as f64 / 1e3 * self.elapsed(at)
    }

    pub fn node_memory(&self, n: &Node) -> u64 {
        n.containers().map(|c| c.memory).sum::<u64>() + NODE_OVERHEAD_MEMORY
    }

    /// `n`'s report at `at`, built as its agent builds one
    /// (`agent::report::build`) from what a collection would have read
    /// (metadata separately: [`Node::metadata`]).
    pub fn report(&self, n: &Node, at: SystemTime, seq: u64, epoch: u64) -> NodeReport {
        let memory = |working_set| Memory {
            usage: working_set,
            working_set,
            swap: None,
        };
        let ns = |seconds: f64| (seconds * 1e9) as u64;
        let snapshot = Snapshot {
            timestamp: at,
            source: CpuSource::Cgroupfs,
            node: NodeSample {
                cpu_ns: ns(self.node_cpu_seconds(n, at)),
                memory: memory(self.node_memory(n)),
                read_at: None,
            },
            pods: n
                .pods
                .iter()
                .map(|p| {
                    let sample = PodSample {
                        uid: p.uid.clone(),
                        qos: None,
                        containers: p
                            .containers
                            .iter()
                            .map(|c| ContainerSample {
                                id: c.id.clone(),
                                runtime: None,
                                cgroup: None,
                                cpu_ns: ns(self.cpu_seconds(c, at)),
                                memory: memory(c.memory),
                                started: Some(self.start),
                                read_at: None,
                            })
                            .collect(),
                    };
                    (p.uid.clone(), sample)
                })
                .collect(),
            errors: Vec::new(),
        };
        agent::report::build(&n.name, seq, epoch, &snapshot)
    }
}

impl Node {
    fn containers(&self) -> impl Iterator<Item = &Container> {
        self.pods.iter().flat_map(|p| &p.containers)
    }

    fn millicores(&self) -> u64 {
        self.containers().map(|c| c.millicores).sum()
    }

    /// What its agent knows of its pods.
    pub fn metadata(&self) -> NodeMetadata {
        NodeMetadata {
            labels: [("kubernetes.io/hostname".to_string(), self.name.clone())].into(),
            pods: self
                .pods
                .iter()
                .map(|p| PodMetadata {
                    uid: p.uid.clone(),
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    labels: [("app".to_string(), app_of(&p.name).to_string())].into(),
                    running: true,
                    containers: p
                        .containers
                        .iter()
                        .map(|c| ContainerName {
                            id: c.id.clone(),
                            name: c.name.clone(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

pub use proto::unix_nanos;

/// Pod `j` of a node is called `<node>-<app>-<j>`; its `app` label is that app.
fn app_of(pod: &str) -> &str {
    pod.rsplit('-').nth(1).unwrap_or("app")
}

const APPS: [&str; 6] = ["web", "api", "worker", "cache", "batch", "proxy"];

/// Makes the fleet in kube-apiserver: the namespaces, every Node (Ready, its
/// capacity, InternalIP [`node_ip`], kubelet port [`KUBELET_PORT`]), every
/// pod bound to its node with one or two containers, then each pod's status
/// as its kubelet would write it (Running, container ids). Progress goes to
/// stderr every 10 s.
pub async fn fill(client: &Client, spec: &Spec) -> Result<Fleet> {
    let started = Instant::now();
    for i in 0..spec.namespaces {
        let ns = namespace(i);
        post(
            client,
            "/api/v1/namespaces",
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await?;
    }
    // ServiceAccount admission wants each namespace's default account, which
    // kube-controller-manager creates.
    for i in 0..spec.namespaces {
        let path = format!(
            "/api/v1/namespaces/{}/serviceaccounts/default",
            namespace(i)
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while get(client, &path).await.is_err() {
            ensure!(Instant::now() < deadline, "no {path}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let start = SystemTime::now();
    let now = rfc3339(start.duration_since(UNIX_EPOCH)?.as_secs());
    let names: Vec<String> = (0..spec.nodes).map(|i| format!("node-{i:05}")).collect();
    let node_objects = names.iter().enumerate().map(|(i, name)| {
        let mut node = manifests::node(name);
        let mut status = manifests::node_status(
            name,
            node_ip(i),
            &NODE_CORES.to_string(),
            &format!("{}Ki", NODE_MEMORY >> 10),
            &now,
        )["status"]
            .take();
        status["daemonEndpoints"] = json!({"kubeletEndpoint": {"Port": KUBELET_PORT}});
        node["status"] = status;
        post_request("/api/v1/nodes", &node)
    });
    let created = send_all(
        client,
        node_objects.collect::<Result<_>>()?,
        spec.concurrency,
    )
    .await?;
    let mut nodes = Vec::with_capacity(spec.nodes);
    for (i, node) in created.iter().enumerate() {
        ensure!(
            node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == KUBELET_PORT,
            "kube-apiserver dropped the status of a created Node: {node}"
        );
        nodes.push(Node {
            name: names[i].clone(),
            uid: uid_of(node)?,
            ip: node_ip(i),
            pods: Vec::new(),
        });
    }
    eprintln!(
        "fleet: {} nodes in {:.1} s",
        nodes.len(),
        started.elapsed().as_secs_f64()
    );

    let mut k = 0u64;
    let mut pod_objects = Vec::new();
    let mut shapes = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for j in 0..spec.pods_per_node {
            let ns = namespace((i * spec.pods_per_node + j) % spec.namespaces.max(1));
            let app = APPS[(i + j) % APPS.len()];
            let name = format!("{}-{app}-{j}", node.name);
            // One pod in three has a sidecar: 1.33 containers per pod.
            let names: &[&str] = if (i + j) % 3 == 0 {
                &["app", "sidecar"]
            } else {
                &["app"]
            };
            let containers: Vec<Container> = names
                .iter()
                .map(|c| {
                    k += 1;
                    Container {
                        name: c.to_string(),
                        id: format!("{k:064x}"),
                        millicores: 5 + (k * 37) % 60,
                        memory: (16 + (k * 13) % 112) << 20,
                    }
                })
                .collect();
            let specs: Vec<manifests::ContainerSpec<'_>> = names
                .iter()
                .map(|c| manifests::ContainerSpec {
                    name: c,
                    requests: &[],
                    limits: &[],
                })
                .collect();
            let object = manifests::pod(&ns, &name, &node.name, &[("app", app)], &specs);
            pod_objects.push(post_request(
                &format!("/api/v1/namespaces/{ns}/pods"),
                &object,
            )?);
            shapes.push((i, ns, name, containers));
        }
    }
    let created = send_all(client, pod_objects, spec.concurrency).await?;
    let mut statuses = Vec::with_capacity(created.len());
    for (pod, (i, ns, name, containers)) in created.iter().zip(shapes) {
        let ids: Vec<(String, String)> = containers
            .iter()
            .map(|c| (c.name.clone(), c.id.clone()))
            .collect();
        let status = manifests::pod_status(nodes[i].ip, &ids, &now);
        statuses.push(
            Request::patch(format!("/api/v1/namespaces/{ns}/pods/{name}/status"))
                .header(http::header::CONTENT_TYPE, "application/merge-patch+json")
                .body(serde_json::to_vec(&status)?)?,
        );
        nodes[i].pods.push(Pod {
            namespace: ns,
            name,
            uid: uid_of(pod)?,
            containers,
        });
    }
    send_all(client, statuses, spec.concurrency).await?;
    let fleet = Fleet { start, nodes };
    eprintln!(
        "fleet: {} nodes, {} pods Running, {} containers, in {:.1} s",
        fleet.nodes.len(),
        fleet.pods(),
        fleet.containers(),
        started.elapsed().as_secs_f64()
    );
    Ok(fleet)
}

fn uid_of(object: &Value) -> Result<String> {
    Ok(object["metadata"]["uid"]
        .as_str()
        .context("an object without uid")?
        .to_string())
}

/// GETs `path` as JSON.
pub async fn get(client: &Client, path: &str) -> Result<Value> {
    Ok(client.request(Request::get(path).body(Vec::new())?).await?)
}

/// POSTs `object` to `path`; the created object.
pub async fn post(client: &Client, path: &str, object: &Value) -> Result<Value> {
    Ok(client.request(post_request(path, object)?).await?)
}

fn post_request(path: &str, object: &Value) -> Result<Request<Vec<u8>>> {
    Ok(Request::post(path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(object)?)?)
}

/// Sends every request, `concurrency` at a time; the answers, in order.
pub async fn send_all(
    client: &Client,
    requests: Vec<Request<Vec<u8>>>,
    concurrency: usize,
) -> Result<Vec<Value>> {
    let total = requests.len();
    let mut pending = requests.into_iter().enumerate();
    let mut sending = JoinSet::new();
    let mut answers: Vec<Option<Value>> = vec![None; total];
    let mut done = 0;
    let mut progress = Instant::now();
    loop {
        while sending.len() < concurrency.max(1)
            && let Some((i, request)) = pending.next()
        {
            let client = client.clone();
            sending.spawn(async move {
                let answer: Result<Value> = client.request(request).await.map_err(Into::into);
                (i, answer)
            });
        }
        let Some(joined) = sending.join_next().await else {
            break;
        };
        let (i, answer) = joined?;
        answers[i] = Some(answer?);
        done += 1;
        if progress.elapsed() > Duration::from_secs(10) {
            eprintln!("fleet: {done}/{total} requests");
            progress = Instant::now();
        }
    }
    answers
        .into_iter()
        .map(|a| a.context("a request never answered"))
        .collect()
}
