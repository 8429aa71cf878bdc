//! Fleet simulator: thousands of simulated node agents streaming real
//! `nodepulse.v1.Ingest/ReportInParts` streams (`Report` with
//! `--whole-metadata`) over loopback TCP to one real
//! `nodepulse-aggregator` process, and consumers following a sample of the
//! nodes through the real `nodepulse.v1.Metrics/Watch` stream.
//!
//! ```sh
//! cargo bench -p aggregator-api --bench fleet -- --nodes 10000 --interval 15
//! cargo bench -p aggregator-api --bench fleet -- --nodes 1000 --interval 1 --soak
//! ```
//!
//! `--soak` adds an attack window after the measured one, as long, with the
//! same fleet reporting: `--abandoned` connections opened to both ports from
//! many loopback addresses and left silent, and `--slow` clients dribbling a
//! TLS request header or an HTTP/2 preface a byte a second, reconnecting when
//! closed. Both windows measure freshness and `kubectl top`'s request (a new
//! TLS connection, `GET /apis/metrics.k8s.io/v1beta1/nodes`, every 250 ms); a
//! recovery window after the attack ends measures RSS again.
//!
//! What it measures, from outside the aggregator: CPU (`/proc/<pid>/stat`
//! utime+stime over a steady-state window), RSS (`VmRSS`, minus the same
//! process's idle RSS before any node connected), ingest throughput, and
//! freshness (sample time → the sample's pods arriving on a watch stream).
//!
//! Each node is one TCP connection with one HTTP/2 stream, as real agents
//! have: the aggregator pays for 10,000 connections as it would in a cluster.
//! The simulator stays lean so it does not starve the aggregator on a small
//! machine: one thread, reports encoded once per node into a template whose
//! counters sit in fixed-width (10-byte) varints patched in place before each
//! send — a valid protobuf encoding every decoder accepts.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use bytes::{BufMut as _, Bytes};
use clap::Parser as _;
use futures::StreamExt as _;
use prost::{
    Message as _,
    encoding::{WireType, encode_key, encode_varint},
};
use proto::v1::{
    ContainerName, ContainerSample, CpuSource, NodeMetadata, NodeReport, PodMetadata, PodSample,
    ReportSummary, Usage, WatchRequest, metrics_client::MetricsClient,
};
use testkit::process::{cpu_seconds, rss_kib};

#[derive(clap::Parser)]
#[command(about = "Simulated fleet against one real nodepulse-aggregator")]
struct Args {
    /// Simulated nodes (one TCP connection and one ingest stream each).
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    /// Pods per node (1–2 containers each).
    #[arg(long, default_value_t = 30)]
    pods: usize,
    /// Report interval of every node, seconds.
    #[arg(long, default_value_t = 15.0)]
    interval: f64,
    /// Rounds (one report from every node) before the measured window.
    #[arg(long, default_value_t = 2)]
    warmup_rounds: u64,
    /// Rounds in the measured window.
    #[arg(long, default_value_t = 4)]
    rounds: u64,
    /// Nodes followed by a watch consumer each, for freshness.
    #[arg(long, default_value_t = 48)]
    probes: usize,
    /// Seconds between `kubectl top nodes` requests during the measured
    /// window; 0 sends none (the aggregator's cost is then ingest alone).
    #[arg(long, default_value_t = 0.25)]
    probe_every: f64,
    /// Seconds the aggregator runs idle (no node) before the load, measured.
    #[arg(long, default_value_t = 10.0)]
    idle: f64,
    /// Connections opened at once while the fleet connects.
    #[arg(long, default_value_t = 100)]
    connect_parallel: usize,
    /// After the measured window, an attack window as long (see the module
    /// docs), then a recovery window.
    #[arg(long)]
    soak: bool,
    /// Attack: silent connections opened and left (half per port).
    #[arg(long, default_value_t = 10_000)]
    abandoned: usize,
    /// Attack: clients dribbling a byte a second (half per port).
    #[arg(long, default_value_t = 1_000)]
    slow: usize,
    /// Seconds after the attack ends before RSS is measured again.
    #[arg(long, default_value_t = 15.0)]
    recovery: f64,
    /// Send metadata in one message on `Report`, as agents do to an
    /// aggregator without `ReportInParts` (the baseline for its parts).
    #[arg(long)]
    whole_metadata: bool,
    /// The aggregator binary.
    #[arg(long, default_value = env!("CARGO_BIN_EXE_nodepulse-aggregator"))]
    aggregator: PathBuf,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Args {
    /// How often `kubectl top nodes` is asked during the window, if at all.
    fn probe(&self) -> Option<Duration> {
        (self.probe_every > 0.0).then(|| Duration::from_secs_f64(self.probe_every))
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One thread: the simulator must leave the other core to the aggregator.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

// ---------------------------------------------------------------- /proc

/// Field `nth` (whitespace-separated) of the line of `/proc/<pid>/<file>`
/// that starts with `prefix`.
fn proc_field(pid: u32, file: &str, prefix: &str, nth: usize) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix))
        .with_context(|| format!("no {prefix:?} in /proc/{pid}/{file}"))?;
    Ok(line
        .split_whitespace()
        .nth(nth)
        .with_context(|| format!("{prefix:?} line format"))?
        .to_string())
}

/// Busy and total jiffies of the whole machine (`/proc/stat`).
fn machine_jiffies() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("/proc/stat empty")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let total: u64 = v.iter().sum();
    Ok((total - v[3] - v[4], total))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A point in time of both processes and the machine.
struct Probe {
    at: Instant,
    agg_cpu: f64,
    sim_cpu: f64,
    machine: (u64, u64),
}

impl Probe {
    fn take(agg: u32) -> anyhow::Result<Self> {
        Ok(Self {
            at: Instant::now(),
            agg_cpu: cpu_seconds(agg)?,
            sim_cpu: cpu_seconds(std::process::id())?,
            machine: machine_jiffies()?,
        })
    }
}

/// Average cores used between two probes: (aggregator, simulator, whole machine).
fn cores_between(a: &Probe, b: &Probe) -> (f64, f64, f64) {
    let secs = b.at.duration_since(a.at).as_secs_f64();
    let (busy, total) = (b.machine.0 - a.machine.0, b.machine.1 - a.machine.1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    (
        (b.agg_cpu - a.agg_cpu) / secs,
        (b.sim_cpu - a.sim_cpu) / secs,
        busy as f64 / total.max(1) as f64 * cores,
    )
}

// ---------------------------------------------------------------- limits

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit — the
/// aggregator inherits it — and checks that it covers `need` descriptors.
fn raise_nofile(need: u64) -> anyhow::Result<u64> {
    let have =
        testkit::process::raise_nofile().context("raising RLIMIT_NOFILE to its hard limit")?;
    if have < need {
        bail!(
            "RLIMIT_NOFILE hard limit is {have}, {need} descriptors are needed: raise the hard limit (e.g. `prlimit --nofile={need}:{need} --pid $$` as root, or limits.conf) and retry"
        );
    }
    Ok(have)
}

/// The `Max open files` soft limit of a running process.
fn nofile_of(pid: u32) -> anyhow::Result<String> {
    proc_field(pid, "limits", "Max open files", 3)
}

// ---------------------------------------------------------------- aggregator

struct Aggregator {
    child: Child,
    ingest: std::net::SocketAddr,
    https: std::net::SocketAddr,
    /// A client of the metrics.k8s.io port: trusts its certificate and
    /// presents one of group system:masters (authorized without a review).
    client_tls: Arc<rustls::ClientConfig>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Aggregator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Kubeconfig whose server is never contacted: with
/// `--authentication-skip-lookup` the aggregator reads no ConfigMap, and with
/// `--ingest-auth=none` it reviews no ingest or watch token; with
/// `--verify-pod-bindings=false` it asks nobody which pods are bound where (the
/// fleet's pods exist nowhere else). It still needs
/// some kubeconfig to build the (unused) client the HTTPS side holds for
/// TokenReview and SubjectAccessReview of metrics.k8s.io requests.
const KUBECONFIG: &str = "apiVersion: v1
kind: Config
clusters:
- name: none
  cluster:
    server: https://127.0.0.1:9
    certificate-authority: CA
contexts:
- name: none
  context:
    cluster: none
    user: none
users:
- name: none
  user: {}
current-context: none
";

/// Starts the aggregator on loopback and returns once its ingest port is
/// bound (it logs so).
fn start_aggregator(binary: &std::path::Path) -> anyhow::Result<Aggregator> {
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    // A CA the kubeconfig must name; nothing is ever verified against it.
    let ca = dir.path().join("ca.crt");
    std::fs::write(
        &ca,
        rcgen::generate_simple_self_signed(vec!["localhost".into()])?
            .cert
            .pem(),
    )?;
    std::fs::write(
        &kubeconfig,
        KUBECONFIG.replace("CA", &ca.display().to_string()),
    )?;
    let ingest = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let https = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let (client_tls, pki) = bench_pki(dir.path())?;
    let mut child = Command::new(binary)
        .arg("--ingest-auth=none")
        .arg("--verify-pod-bindings=false")
        .arg("--ingest-bind-address=127.0.0.1")
        .arg(format!("--ingest-port={}", ingest.port()))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--secure-port={}", https.port()))
        .arg(format!("--tls-cert-file={}", pki.serving_cert.display()))
        .arg(format!(
            "--tls-private-key-file={}",
            pki.serving_key.display()
        ))
        .arg(format!("--client-ca-file={}", pki.ca.display()))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg("--authentication-skip-lookup")
        .arg("--node-eviction=10m")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    // The aggregator logs to stderr.
    let stderr = child.stderr.take().context("stderr")?;
    let log = std::env::temp_dir().join(format!("nodepulse-fleet-{}.log", child.id()));
    let mut file = std::fs::File::create(&log)?;
    let mut lines = BufReader::new(stderr).lines();
    let mut ready = false;
    for line in lines.by_ref() {
        let line = line?;
        writeln!(file, "{line}")?;
        if line.contains("ingest listening") {
            ready = true;
            break;
        }
    }
    if !ready {
        let status = child.wait()?;
        bail!(
            "aggregator exited ({status}) before listening; log: {}",
            log.display()
        );
    }
    // Keep draining the log so the aggregator never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if writeln!(file, "{line}").is_err() {
                return;
            }
        }
    });
    Ok(Aggregator {
        child,
        ingest,
        https,
        client_tls,
        log,
        _dir: dir,
    })
}

/// Files of the bench's PKI, written to a temp dir.
struct PkiFiles {
    ca: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
}

/// A CA, the aggregator's serving certificate for 127.0.0.1, and a client
/// configuration trusting it with a system:masters client certificate.
fn bench_pki(dir: &std::path::Path) -> anyhow::Result<(Arc<rustls::ClientConfig>, PkiFiles)> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "bench CA");
    let issuer = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let serving_key = KeyPair::generate()?;
    let serving = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?
        .signed_by(&serving_key, &issuer)?;
    let client_key = KeyPair::generate()?;
    let mut client_params = CertificateParams::new(Vec::<String>::new())?;
    client_params
        .distinguished_name
        .push(DnType::CommonName, "bench");
    client_params
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    let client = client_params.signed_by(&client_key, &issuer)?;
    let files = PkiFiles {
        ca: dir.join("ca.crt"),
        serving_cert: dir.join("serving.crt"),
        serving_key: dir.join("serving.key"),
    };
    std::fs::write(&files.ca, issuer.pem())?;
    std::fs::write(&files.serving_cert, serving.pem())?;
    std::fs::write(&files.serving_key, serving_key.serialize_pem())?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(issuer.der().clone())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![client.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(client_key.serialize_der().into()),
    )?;
    Ok((Arc::new(config), files))
}

// ---------------------------------------------------------------- the fleet

/// splitmix64: deterministic, dependency-free randomness for the fleet.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn hex(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| char::from(b"0123456789abcdef"[self.below(16) as usize]))
            .collect()
    }
    /// Characters Kubernetes uses for generated name suffixes.
    fn suffix(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        (0..len)
            .map(|_| char::from(ALPHABET[self.below(ALPHABET.len() as u64) as usize]))
            .collect()
    }
    fn uid(&mut self) -> String {
        format!(
            "{}-{}-4{}-a{}-{}",
            self.hex(8),
            self.hex(4),
            self.hex(3),
            self.hex(3),
            self.hex(12)
        )
    }
}

const TEAMS: &[&str] = &[
    "payments", "checkout", "search", "catalog", "identity", "billing", "ledger", "ads", "reco",
    "media", "notify", "growth", "risk", "support", "data", "infra",
];
const SERVICES: &[&str] = &[
    "api",
    "worker",
    "gateway",
    "frontend",
    "scheduler",
    "indexer",
    "cache",
    "consumer",
    "exporter",
    "backend",
    "batch",
    "grpc",
];
const SIDECARS: &[&str] = &["istio-proxy", "log-shipper", "cloudsql-proxy"];

/// A Deployment of the simulated cluster: every pod of it on any node shares
/// the namespace, labels and container names, as in a real cluster.
struct Deployment {
    namespace: String,
    name: String,
    hash: String,
    team: &'static str,
    sidecar: Option<&'static str>,
}

fn catalog(count: usize) -> Vec<Deployment> {
    let mut rng = Rng(42);
    (0..count)
        .map(|i| {
            let team = TEAMS[i % TEAMS.len()];
            let service = SERVICES[(i / TEAMS.len()) % SERVICES.len()];
            let env = ["prod", "staging", "canary"][i % 3];
            Deployment {
                namespace: format!("{team}-{env}"),
                name: format!("{team}-{service}-{}", i / (TEAMS.len() * SERVICES.len())),
                hash: rng.suffix(10),
                team,
                sidecar: (rng.below(5) < 2).then(|| SIDECARS[rng.below(3) as usize]),
            }
        })
        .collect()
}

/// One simulated container's counters.
struct SimContainer {
    cpu_ns: u64,
    nanocores: u64,
    memory: u64,
}

/// One simulated node: its metadata report, its steady-state report as a
/// template with patchable counters, and its connection.
struct SimNode {
    index: usize,
    name: String,
    template: Vec<u8>,
    /// Offsets in `template` of: sample time, node cpu, node memory, then
    /// (cpu, memory) per container, then seq.
    slots: Vec<usize>,
    containers: Vec<SimContainer>,
    node_cpu: u64,
    seq: u64,
    last_sample: u64,
}

/// Builds one message with fixed-width counters and remembers where they are.
#[derive(Default)]
struct Enc {
    buf: Vec<u8>,
    slots: Vec<usize>,
}

impl Enc {
    fn padded(&mut self, tag: u32, v: u64) {
        encode_key(tag, WireType::Varint, &mut self.buf);
        self.slots.push(self.buf.len());
        self.buf.extend_from_slice(&[0; 10]);
        let at = self.buf.len() - 10;
        put_padded(&mut self.buf[at..], v);
    }
    fn varint(&mut self, tag: u32, v: u64) {
        encode_key(tag, WireType::Varint, &mut self.buf);
        encode_varint(v, &mut self.buf);
    }
    fn string(&mut self, tag: u32, s: &str) {
        encode_key(tag, WireType::LengthDelimited, &mut self.buf);
        encode_varint(s.len() as u64, &mut self.buf);
        self.buf.extend_from_slice(s.as_bytes());
    }
    fn message(&mut self, tag: u32, inner: Enc) {
        encode_key(tag, WireType::LengthDelimited, &mut self.buf);
        encode_varint(inner.buf.len() as u64, &mut self.buf);
        let base = self.buf.len();
        self.buf.extend_from_slice(&inner.buf);
        self.slots.extend(inner.slots.iter().map(|s| s + base));
    }
}

/// A varint in exactly 10 bytes (non-minimal, valid protobuf).
fn put_padded(out: &mut [u8], mut v: u64) {
    for (i, b) in out.iter_mut().enumerate().take(10) {
        let low = (v & 0x7f) as u8;
        v >>= 7;
        *b = if i < 9 { low | 0x80 } else { low };
    }
}

/// A gRPC length-prefixed message (uncompressed).
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.extend_from_slice(message);
    out
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn node_name(i: usize) -> String {
    format!(
        "ip-10-{}-{}-{}.eu-west-1.compute.internal",
        16 + i / 65536,
        (i / 256) % 256,
        i % 256
    )
}

fn node_labels(name: &str, i: usize) -> std::collections::HashMap<String, String> {
    let zone = ["eu-west-1a", "eu-west-1b", "eu-west-1c"][i % 3];
    let (itype, group) = [
        ("m6i.2xlarge", "general"),
        ("c6i.4xlarge", "compute"),
        ("r6i.2xlarge", "memory"),
    ][i % 3];
    [
        ("beta.kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/hostname", name),
        ("node.kubernetes.io/instance-type", itype),
        ("topology.kubernetes.io/region", "eu-west-1"),
        ("topology.kubernetes.io/zone", zone),
        ("eks.amazonaws.com/nodegroup", group),
        ("eks.amazonaws.com/capacityType", "ON_DEMAND"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn labels(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl SimNode {
    /// Node `i` of the fleet (the same every time for the same `start`) and
    /// its first report, with metadata.
    fn new(i: usize, pods: usize, deployments: &[Deployment], start: u64) -> (Self, NodeReport) {
        let mut rng = Rng(0x5eed ^ (i as u64).wrapping_mul(0x1000_0001));
        let name = node_name(i);
        let mut metas = Vec::with_capacity(pods);
        let mut samples = Vec::with_capacity(pods);
        let mut containers = Vec::new();
        // Three DaemonSet pods on every node, the rest from Deployments.
        let daemonsets: [(&str, &[&str], &str); 3] = [
            ("kube-proxy", &["kube-proxy"], "6d4b9c7f8"),
            ("aws-node", &["aws-node", "aws-eks-nodeagent"], "7c9f5b6d4"),
            ("nodepulse-agent", &["agent"], "5f7d8c9b6"),
        ];
        for p in 0..pods {
            let uid = rng.uid();
            let (namespace, pod_name, pod_labels, names): (String, String, _, Vec<String>) =
                if p < daemonsets.len().min(pods) {
                    let (ds, cs, rev) = daemonsets[p];
                    (
                        "kube-system".into(),
                        format!("{ds}-{}", rng.suffix(5)),
                        labels(&[
                            ("k8s-app", ds),
                            ("controller-revision-hash", rev),
                            ("pod-template-generation", "3"),
                        ]),
                        cs.iter().map(|c| c.to_string()).collect(),
                    )
                } else {
                    let d = &deployments[rng.below(deployments.len() as u64) as usize];
                    let mut names = vec![d.name.clone()];
                    names.extend(d.sidecar.map(str::to_string));
                    (
                        d.namespace.clone(),
                        format!("{}-{}-{}", d.name, d.hash, rng.suffix(5)),
                        labels(&[
                            ("app.kubernetes.io/name", &d.name),
                            ("app.kubernetes.io/part-of", d.team),
                            ("app.kubernetes.io/managed-by", "Helm"),
                            ("pod-template-hash", &d.hash),
                            ("team", d.team),
                        ]),
                        names,
                    )
                };
            let mut cnames = Vec::new();
            let mut csamples = Vec::new();
            for n in names {
                let id = rng.hex(64);
                let c = SimContainer {
                    cpu_ns: rng.below(1 << 40),
                    nanocores: 1_000_000 + rng.below(400_000_000),
                    memory: (16 << 20) + rng.below(1 << 30),
                };
                csamples.push(ContainerSample {
                    id: id.clone(),
                    usage: Some(Usage {
                        cpu_ns: c.cpu_ns,
                        memory_working_set_bytes: c.memory,
                        swap_bytes: None,
                        read_unix_nanos: None,
                    }),
                    start_unix_nanos: (start - 86_400_000_000_000 + rng.below(1 << 40)) as i64,
                });
                cnames.push(ContainerName { id, name: n });
                containers.push(c);
            }
            metas.push(PodMetadata {
                uid: uid.clone(),
                namespace,
                name: pod_name,
                labels: pod_labels,
                running: true,
                containers: cnames,
            });
            samples.push(PodSample {
                uid,
                containers: csamples,
            });
        }
        let node_cpu = rng.below(1 << 50);
        let node_memory = containers.iter().map(|c| c.memory).sum::<u64>() + (2 << 30);
        let first = NodeReport {
            node: name.clone(),
            sample_unix_nanos: start as i64,
            node_usage: Some(Usage {
                cpu_ns: node_cpu,
                memory_working_set_bytes: node_memory,
                swap_bytes: None,
                read_unix_nanos: None,
            }),
            pods: samples.clone(),
            metadata: Some(NodeMetadata {
                labels: node_labels(&name, i),
                pods: metas,
            }),
            cpu_source: CpuSource::Ebpf as i32,
            seq: 0,
            agent_epoch: 1,
            metadata_continues: false,
        };

        let mut enc = Enc::default();
        enc.string(1, &name);
        enc.padded(2, start);
        let mut usage = Enc::default();
        usage.padded(1, node_cpu);
        usage.padded(2, node_memory);
        enc.message(3, usage);
        for pod in &samples {
            let mut p = Enc::default();
            p.string(1, &pod.uid);
            for c in &pod.containers {
                let mut cs = Enc::default();
                cs.string(1, &c.id);
                let u = c.usage.unwrap_or_default();
                let mut usage = Enc::default();
                usage.padded(1, u.cpu_ns);
                usage.padded(2, u.memory_working_set_bytes);
                cs.message(2, usage);
                cs.varint(3, c.start_unix_nanos as u64);
                p.message(2, cs);
            }
            enc.message(4, p);
        }
        enc.varint(6, CpuSource::Ebpf as u64);
        enc.padded(7, 0);
        enc.varint(8, first.agent_epoch);
        let mut template = grpc_frame(&enc.buf);
        let slots = enc.slots.iter().map(|s| s + 5).collect();
        // The template must be the first report minus its metadata.
        let decoded = NodeReport::decode(&template[5..]).expect("template decodes");
        let mut expect = first.clone();
        expect.metadata = None;
        assert_eq!(decoded, expect, "template encodes the report");
        template.shrink_to_fit();
        let node = Self {
            index: i,
            name,
            template,
            slots,
            containers,
            node_cpu,
            seq: 0,
            last_sample: start,
        };
        (node, first)
    }

    /// The first report on a new stream after a broken one: current
    /// counters, with the node's metadata again (as an agent sends it).
    fn reconnect_report(&mut self, metadata: Option<NodeMetadata>, now: u64) -> NodeReport {
        let counters = self.next_report(now);
        let mut report = NodeReport::decode(&counters[5..]).expect("template decodes");
        report.metadata = metadata;
        report
    }

    /// The next report: counters advanced by the time since the last one.
    fn next_report(&mut self, now: u64) -> Bytes {
        let dt = u128::from(now.saturating_sub(self.last_sample));
        self.last_sample = now;
        self.seq += 1;
        let (t, s) = (&mut self.template, &self.slots);
        put_padded(&mut t[s[0]..], now);
        let mut node_delta = 0u64;
        for (i, c) in self.containers.iter_mut().enumerate() {
            let delta = (u128::from(c.nanocores) * dt / 1_000_000_000) as u64;
            c.cpu_ns += delta;
            node_delta += delta;
            // Memory moves a little, as it does.
            c.memory = c.memory.wrapping_add(now & 0xfff).wrapping_sub(0x800);
            put_padded(&mut t[s[3 + 2 * i]..], c.cpu_ns);
            put_padded(&mut t[s[4 + 2 * i]..], c.memory);
        }
        self.node_cpu += node_delta + node_delta / 8;
        put_padded(&mut t[s[1]..], self.node_cpu);
        put_padded(&mut t[s[s.len() - 1]..], self.seq);
        Bytes::copy_from_slice(t)
    }
}

// ---------------------------------------------------------------- connections

type Stream = (h2::SendStream<Bytes>, h2::client::ResponseFuture);

/// Connections that ended with an error, and the first such error.
#[derive(Default)]
struct Broken {
    count: std::sync::atomic::AtomicU64,
    first: Mutex<Option<String>>,
}

impl Broken {
    fn record(&self, error: &dyn std::fmt::Display) {
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.first
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(|| error.to_string());
    }
}

/// The loopback address node `i` connects from: 127.0.(1 + i / 250).(1 + i %
/// 250). Each agent of a real fleet has an address of its own, and the
/// aggregator admits only so many connections from one.
fn node_address(i: usize) -> std::net::SocketAddr {
    let (hi, lo) = (1 + i / 250, 1 + i % 250);
    std::net::SocketAddr::from(([127, 0, hi.min(255) as u8, lo as u8], 0))
}

/// A stream's first report as an agent sends it: its metadata in parts
/// (each its own message and data frame), or in one message when `whole`.
fn first_frames(mut report: NodeReport, whole: bool) -> Vec<Bytes> {
    let reports = match report.metadata.take() {
        Some(metadata) if !whole => proto::parts::reports_in_parts(report, &metadata),
        metadata => vec![NodeReport { metadata, ..report }],
    };
    reports
        .iter()
        .map(|r| Bytes::from(grpc_frame(&r.encode_to_vec())))
        .collect()
}

/// One agent's connection: TCP, HTTP/2, the stream (`ReportInParts`, or
/// `Report` when `whole`), the first report.
async fn connect(
    addr: std::net::SocketAddr,
    from: std::net::SocketAddr,
    first: Vec<Bytes>,
    whole: bool,
    broken: Arc<Broken>,
) -> anyhow::Result<Stream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(from)?;
    let tcp = socket.connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (client, connection) = h2::client::handshake(tcp).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            broken.record(&e);
        }
    });
    let mut client = client.ready().await?;
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{addr}/nodepulse.v1.Ingest/{}",
            if whole { "Report" } else { "ReportInParts" }
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())?;
    let (response, mut send) = client.send_request(request, false)?;
    for frame in first {
        send.send_data(frame, false)?;
    }
    Ok((send, response))
}

/// Ends a stream and returns the aggregator's count of accepted reports.
async fn finish(mut stream: Stream) -> anyhow::Result<u64> {
    stream.0.send_data(Bytes::new(), true)?;
    let response = stream.1.await?;
    let mut body = response.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await?;
    let status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?");
    if status != "0" || data.len() < 5 {
        bail!("stream ended with grpc-status {status}");
    }
    Ok(ReportSummary::decode(&data[5..])?.accepted)
}

// ---------------------------------------------------------------- freshness

/// Follows one node's pods on the watch stream; records, for every new
/// sample whose time is at or after `from`, receive time − sample time.
async fn follow(
    mut client: MetricsClient<tonic::transport::Channel>,
    node: String,
    from: Arc<std::sync::atomic::AtomicU64>,
    out: Arc<Mutex<Vec<u64>>>,
) -> anyhow::Result<()> {
    let mut events = client
        .watch(WatchRequest {
            node,
            pods: true,
            ..WatchRequest::default()
        })
        .await?
        .into_inner();
    let mut last = 0i64;
    while let Some(event) = events.message().await? {
        let received = now_nanos();
        let Some(t) = event.pods.iter().map(|p| p.timestamp_unix_nanos).max() else {
            continue;
        };
        if t > last {
            last = t;
            let t = t as u64;
            if !event.snapshot && t >= from.load(std::sync::atomic::Ordering::Relaxed) {
                out.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(received.saturating_sub(t));
            }
        }
    }
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1e6
}

// ---------------------------------------------------------------- soak

/// A connection to `to` from the loopback address 127.0.0.(2 + k mod 250):
/// an attack from many addresses, so per-address limits alone do not stop it.
async fn connect_from(
    k: usize,
    to: std::net::SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from((
        [127, 0, 0, 2 + (k % 250) as u8],
        0,
    )))?;
    socket.connect(to).await
}

/// Opens `count` connections, alternating between `targets`, and leaves them
/// silent until `stop`. Returns how many opened.
async fn abandon(
    count: usize,
    targets: [std::net::SocketAddr; 2],
    stop: tokio_util::sync::CancellationToken,
) -> usize {
    let held: Vec<_> = futures::stream::iter(0..count)
        .map(|k| connect_from(k, targets[k % 2]))
        .buffer_unordered(200)
        .filter_map(|r| async move { r.ok() })
        .collect()
        .await;
    let opened = held.len();
    stop.cancelled().await;
    drop(held);
    opened
}

/// One slow client until `stop`: a byte a second of a TLS request header
/// (`tls`: the metrics.k8s.io port) or of the HTTP/2 preface (the ingest
/// port), connecting again a second after the server closes it.
async fn dribble(
    k: usize,
    to: std::net::SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    stop: tokio_util::sync::CancellationToken,
) {
    use tokio::io::AsyncWriteExt as _;
    const HEADER: &[u8] =
        b"GET /apis/metrics.k8s.io/v1beta1/nodes HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let dribble_into = |mut w: Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                        bytes: &'static [u8]| async move {
        for b in bytes.iter().cycle() {
            if w.write_all(&[*b]).await.is_err() || w.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    loop {
        let attempt = async {
            let Ok(tcp) = connect_from(k, to).await else {
                return;
            };
            match &tls {
                Some(config) => {
                    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
                    if let Ok(s) = tokio_rustls::TlsConnector::from(Arc::clone(config))
                        .connect(name, tcp)
                        .await
                    {
                        dribble_into(Box::new(s), HEADER).await;
                    }
                }
                None => dribble_into(Box::new(tcp), PREFACE).await,
            }
        };
        tokio::select! {
            () = attempt => {}
            () = stop.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// `kubectl top nodes`' request every `every` until `stop`: a new TLS
/// connection, `GET /apis/metrics.k8s.io/v1beta1/nodes`, the whole answer.
/// Records (start, unix ns; latency, ns; answered 200).
async fn probe_https(
    every: Duration,
    to: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    out: Arc<Mutex<Vec<(u64, u64, bool)>>>,
    stop: tokio_util::sync::CancellationToken,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut every = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = stop.cancelled() => return,
        }
        let started = now_nanos();
        let t = Instant::now();
        let answered = async {
            let tcp = tokio::net::TcpStream::connect(to).await.ok()?;
            let name = rustls_pki_types::ServerName::try_from("localhost").ok()?;
            let mut s = tokio_rustls::TlsConnector::from(Arc::clone(&tls))
                .connect(name, tcp)
                .await
                .ok()?;
            s.write_all(b"GET /apis/metrics.k8s.io/v1beta1/nodes HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n\r\n")
                .await
                .ok()?;
            let mut body = Vec::new();
            let _ = s.read_to_end(&mut body).await;
            Some(body.starts_with(b"HTTP/1.1 200"))
        };
        let ok = tokio::time::timeout(Duration::from_secs(30), answered)
            .await
            .ok()
            .flatten()
            .unwrap_or(false);
        out.lock().unwrap_or_else(|e| e.into_inner()).push((
            started,
            t.elapsed().as_nanos() as u64,
            ok,
        ));
    }
}

/// Runs `work` to completion on a new thread with a runtime of its own.
fn on_own_thread<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(work)
    })
}

/// Latencies (ms, sorted) of the probes started in `[from, to)` and how many
/// failed.
fn window_of(probes: &[(u64, u64, bool)], from: u64, to: u64) -> (Vec<u64>, usize) {
    let inside = probes.iter().filter(|p| p.0 >= from && p.0 < to);
    let failed = inside.clone().filter(|p| !p.2).count();
    let mut latencies: Vec<u64> = inside.filter(|p| p.2).map(|p| p.1).collect();
    latencies.sort_unstable();
    (latencies, failed)
}

// ---------------------------------------------------------------- run

// The bench is a command line tool: its result is the table on stdout.
#[allow(clippy::print_stdout)]
async fn run(args: Args) -> anyhow::Result<()> {
    let n = args.nodes;
    anyhow::ensure!(
        n > 0 && args.interval > 0.0,
        "--nodes and --interval must be > 0"
    );
    anyhow::ensure!(args.probe_every >= 0.0, "--probe-every must be ≥ 0");
    anyhow::ensure!(
        !args.soak || args.probe().is_some(),
        "--soak compares `kubectl top nodes` latency: --probe-every must be > 0"
    );
    // Each process holds one descriptor per connection plus its own.
    let attackers = if args.soak {
        args.abandoned + args.slow
    } else {
        0
    };
    let nofile = raise_nofile((n + attackers) as u64 + 512)?;
    let load_before = loadavg();
    let agg = start_aggregator(&args.aggregator)?;
    let pid = agg.child.id();
    eprintln!(
        "aggregator pid {pid} (log {}), RLIMIT_NOFILE {nofile}, aggregator soft limit {}",
        agg.log.display(),
        nofile_of(pid)?
    );

    // Idle baseline: the same process, before any node.
    let idle_start = Probe::take(pid)?;
    tokio::time::sleep(Duration::from_secs_f64(args.idle)).await;
    let idle_end = Probe::take(pid)?;
    let idle_rss = rss_kib(pid)?;
    let (idle_cores, _, _) = cores_between(&idle_start, &idle_end);

    // Build the fleet.
    let built = Instant::now();
    let deployments = catalog(1500);
    let start = now_nanos();
    let (mut fleet, firsts): (Vec<SimNode>, Vec<NodeReport>) = (0..n)
        .map(|i| SimNode::new(i, args.pods, &deployments, start))
        .unzip();
    let containers: usize = fleet.iter().map(|f| f.containers.len()).sum();
    let report_bytes = fleet[0].template.len();
    let first_bytes = firsts[0].encoded_len() + 5;
    eprintln!(
        "fleet built in {:.1?}: {n} nodes, {} pods, {containers} containers; report {report_bytes} B, first report {first_bytes} B",
        built.elapsed(),
        n * args.pods
    );

    // Connect every node: each sends its first report (with metadata).
    let connecting = Instant::now();
    let broken = Arc::new(Broken::default());
    let whole = args.whole_metadata;
    let firsts: Vec<(usize, Vec<Bytes>)> = firsts
        .into_iter()
        .zip(&mut fleet)
        .map(|(mut first, f)| {
            f.last_sample = now_nanos();
            first.sample_unix_nanos = f.last_sample as i64;
            (f.index, first_frames(first, whole))
        })
        .collect();
    let mut streams: Vec<Option<Stream>> = (0..n).map(|_| None).collect();
    let addr = agg.ingest;
    let mut results = futures::stream::iter(firsts)
        .map(|(i, first)| {
            let broken = Arc::clone(&broken);
            async move {
                (
                    i,
                    connect(addr, node_address(i), first, whole, broken).await,
                )
            }
        })
        .buffer_unordered(args.connect_parallel);
    while let Some((i, r)) = results.next().await {
        streams[i] = Some(r.with_context(|| format!("connecting node {i}"))?);
    }
    drop(results);
    eprintln!("{n} streams connected in {:.1?}", connecting.elapsed());
    // Streams whose connection breaks are reopened, as agents do.
    let (reopened_tx, mut reopened) = tokio::sync::mpsc::channel(n);
    let mut reopening = vec![false; n];
    let mut reconnects = 0u64;

    // Watch consumers.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", agg.ingest))?
        .connect()
        .await?;
    let from = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    let fresh = Arc::new(Mutex::new(Vec::new()));
    let probes: Vec<_> = (0..args.probes.min(n))
        .map(|k| {
            let node = fleet[k * n / args.probes.min(n)].name.clone();
            tokio::spawn(follow(
                MetricsClient::new(channel.clone()),
                node,
                Arc::clone(&from),
                Arc::clone(&fresh),
            ))
        })
        .collect();

    // The schedule: report s (node s % n, round s / n) is due at t0 + s·step,
    // so the fleet's reports are spread evenly over each interval.
    let interval = Duration::from_secs_f64(args.interval);
    let step = interval.as_secs_f64() / n as f64;
    let measure_from = args.warmup_rounds * n as u64;
    let measure_to = (args.warmup_rounds + args.rounds) * n as u64;
    // The soak's attack window is as long as the measured one; its recovery
    // lasts `--recovery` seconds.
    let attack_to = if args.soak {
        measure_to + args.rounds * n as u64
    } else {
        measure_to
    };
    let recovery_to = if args.soak {
        attack_to + (args.recovery / step) as u64
    } else {
        attack_to
    };
    // Keep reporting a little after the window so its last samples reach the
    // watchers.
    let tail = ((3.0 / step) as u64).min(n as u64);
    let total = recovery_to + tail;
    let https_probes = Arc::new(Mutex::new(Vec::new()));
    let stop_probe = tokio_util::sync::CancellationToken::new();
    let stop_attack = tokio_util::sync::CancellationToken::new();
    let mut attack: Vec<std::thread::JoinHandle<usize>> = Vec::new();
    let mut quiet_fresh: Vec<u64> = Vec::new();
    let mut attack_fresh: Vec<u64> = Vec::new();
    let mut marks = [0u64; 4];
    let mut rss_quiet = 0u64;
    let mut rss_attack_peak = 0u64;
    let t0 = Instant::now();
    let mut sent = 0u64;
    let mut failed = 0u64;
    let mut max_lag = Duration::ZERO;
    let mut window: Option<(Probe, u64)> = None;
    let mut end: Option<(Probe, u64)> = None;
    let mut rss_peak = 0u64;
    let mut rss_samples = Vec::new();
    let mut last_rss = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while sent < total {
        tick.tick().await;
        let now = Instant::now();
        while sent < total {
            let due = t0 + Duration::from_secs_f64(step * sent as f64);
            if due > now {
                break;
            }
            max_lag = max_lag.max(now - due);
            if sent == measure_from {
                from.store(now_nanos(), std::sync::atomic::Ordering::Relaxed);
                window = Some((Probe::take(pid)?, sent));
                marks[0] = now_nanos();
                // Its own thread: the fleet's and the attackers' tasks must not
                // delay it (what it measures is the aggregator).
                if let Some(every) = args.probe() {
                    on_own_thread(probe_https(
                        every,
                        agg.https,
                        Arc::clone(&agg.client_tls),
                        Arc::clone(&https_probes),
                        stop_probe.clone(),
                    ));
                }
            }
            if sent == measure_to {
                end = Some((Probe::take(pid)?, sent));
                marks[1] = now_nanos();
                if args.soak {
                    quiet_fresh =
                        std::mem::take(&mut *fresh.lock().unwrap_or_else(|e| e.into_inner()));
                    from.store(now_nanos(), std::sync::atomic::Ordering::Relaxed);
                    rss_quiet = rss_kib(pid)?;
                    let targets = [agg.ingest, agg.https];
                    // The attackers on a thread of their own, as another
                    // machine's would be.
                    let (abandoned, slow, tls, stop) = (
                        args.abandoned,
                        args.slow,
                        Arc::clone(&agg.client_tls),
                        stop_attack.clone(),
                    );
                    attack.push(on_own_thread(async move {
                        let mut clients = Vec::new();
                        for k in 0..slow {
                            let tls = (k % 2 == 1).then(|| Arc::clone(&tls));
                            clients.push(tokio::spawn(dribble(
                                k,
                                targets[k % 2],
                                tls,
                                stop.clone(),
                            )));
                        }
                        let opened = abandon(abandoned, targets, stop).await;
                        for c in clients {
                            let _ = c.await;
                        }
                        opened
                    }));
                    eprintln!(
                        "attack: {} silent connections, {} slow clients",
                        args.abandoned, args.slow
                    );
                } else {
                    from.store(u64::MAX, std::sync::atomic::Ordering::Relaxed);
                }
            }
            if args.soak && sent == attack_to {
                marks[2] = now_nanos();
                attack_fresh =
                    std::mem::take(&mut *fresh.lock().unwrap_or_else(|e| e.into_inner()));
                from.store(u64::MAX, std::sync::atomic::Ordering::Relaxed);
                stop_attack.cancel();
                eprintln!("attack over; recovering for {}s", args.recovery);
            }
            if args.soak && sent == recovery_to {
                marks[3] = now_nanos();
            }
            let i = (sent % n as u64) as usize;
            sent += 1;
            if reopening[i] {
                failed += 1;
                continue;
            }
            let report = fleet[i].next_report(now_nanos());
            let delivered = streams[i].as_mut().is_some_and(|(send, _)| {
                send.reserve_capacity(report.len());
                send.send_data(report, false).is_ok()
            });
            if !delivered {
                failed += 1;
                streams[i] = None;
                reopening[i] = true;
                reconnects += 1;
                let (_, first) = SimNode::new(i, args.pods, &deployments, start);
                let first = fleet[i].reconnect_report(first.metadata, now_nanos());
                let first = first_frames(first, whole);
                let (tx, broken) = (reopened_tx.clone(), Arc::clone(&broken));
                tokio::spawn(async move {
                    let stream = connect(addr, node_address(i), first, whole, broken).await;
                    let _ = tx.send((i, stream)).await;
                });
            }
        }
        while let Ok((i, stream)) = reopened.try_recv() {
            reopening[i] = false;
            match stream {
                Ok(s) => streams[i] = Some(s),
                Err(e) => broken.record(&e),
            }
        }
        if window.is_some() && end.is_none() && last_rss.elapsed() >= Duration::from_secs(1) {
            last_rss = Instant::now();
            let r = rss_kib(pid)?;
            rss_peak = rss_peak.max(r);
            rss_samples.push(r);
        }
        if args.soak
            && end.is_some()
            && marks[2] == 0
            && last_rss.elapsed() >= Duration::from_secs(1)
        {
            last_rss = Instant::now();
            rss_attack_peak = rss_attack_peak.max(rss_kib(pid)?);
        }
    }
    let rss_end = rss_kib(pid)?;
    stop_probe.cancel();
    let mut opened = 0;
    for a in attack {
        opened += a.join().unwrap_or(0);
    }
    let load_after = loadavg();
    for p in &probes {
        p.abort();
    }
    let (start_probe, from_s) = window.context("no window")?;
    let (end_probe, to_s) = end.context("no window end")?;
    let secs = end_probe.at.duration_since(start_probe.at).as_secs_f64();
    let (agg_cores, sim_cores, machine_cores) = cores_between(&start_probe, &end_probe);
    let reports = (to_s - from_s) as f64;

    // End every stream and check the aggregator accepted every report.
    // Every report, the first ones and those on reopened streams.
    let expected = sent + n as u64 - failed + reconnects;
    let accepted: u64 = futures::stream::iter(streams.into_iter().flatten())
        .map(finish)
        .buffer_unordered(1000)
        .filter_map(|r| async move { r.ok() })
        .fold(0, |a, b| async move { a + b })
        .await;

    let mut fresh = if args.soak {
        quiet_fresh
    } else {
        std::mem::take(&mut *fresh.lock().unwrap_or_else(|e| e.into_inner()))
    };
    fresh.sort_unstable();
    attack_fresh.sort_unstable();
    let probes_seen = std::mem::take(&mut *https_probes.lock().unwrap_or_else(|e| e.into_inner()));
    let (quiet_https, quiet_failed) = window_of(&probes_seen, marks[0], marks[1]);
    let rss_median = {
        rss_samples.sort_unstable();
        rss_samples
            .get(rss_samples.len() / 2)
            .copied()
            .unwrap_or(rss_end)
    };
    let per_node_kib = |rss: u64| rss.saturating_sub(idle_rss) as f64 / n as f64;
    let mcpu_per_node = agg_cores * 1000.0 / n as f64;

    println!();
    println!(
        "fleet: {n} nodes × {} pods ({containers} containers, {:.2}/pod), interval {}s, window {:.1}s ({} rounds after {} warm-up), {} watch consumers",
        args.pods,
        containers as f64 / (n * args.pods) as f64,
        args.interval,
        secs,
        args.rounds,
        args.warmup_rounds,
        args.probes.min(n)
    );
    println!("loadavg before {load_before}, after {load_after}");
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| aggregator CPU, idle (no nodes) | {:.2} mCPU total |",
        idle_cores * 1000.0
    );
    println!(
        "| aggregator CPU, loaded | {:.1} mCPU total = **{mcpu_per_node:.4} mCPU per node** |",
        agg_cores * 1000.0
    );
    println!("| aggregator RSS, idle | {idle_rss} KiB |");
    println!(
        "| aggregator RSS, loaded (median / peak / end of window) | {rss_median} / {rss_peak} / {rss_end} KiB |"
    );
    println!(
        "| RSS per node, (loaded − idle) / nodes (median / peak) | **{:.1}** / {:.1} KiB |",
        per_node_kib(rss_median),
        per_node_kib(rss_peak)
    );
    println!(
        "| RSS per node, loaded / nodes (idle not subtracted) | {:.1} KiB |",
        rss_median as f64 / n as f64
    );
    println!(
        "| ingest | {:.0} reports/s, {:.0} containers/s ({:.1} MB/s of reports) |",
        reports / secs,
        reports * containers as f64 / n as f64 / secs,
        reports * report_bytes as f64 / secs / 1e6
    );
    println!(
        "| accepted by the aggregator / sent | {accepted} / {expected} ({failed} not sent: stream broken; {reconnects} streams reopened; {} connection errors{}) |",
        broken.count.load(std::sync::atomic::Ordering::Relaxed),
        broken
            .first
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_deref()
            .map(|e| format!(", first: {e}"))
            .unwrap_or_default()
    );
    println!(
        "| freshness, sample → watch event (n = {}) | p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms |",
        fresh.len(),
        percentile(&fresh, 0.5),
        percentile(&fresh, 0.99),
        percentile(&fresh, 1.0)
    );
    if args.probe().is_some() {
        println!(
            "| `kubectl top nodes` request (new TLS connection, GET nodes; n = {}) | p50 {:.1} ms, p99 {:.1} ms; {quiet_failed} failed |",
            quiet_https.len(),
            percentile(&quiet_https, 0.5),
            percentile(&quiet_https, 0.99)
        );
    }
    if args.soak {
        let (attack_https, attack_failed) = window_of(&probes_seen, marks[1], marks[2]);
        let ratio = |a: f64, q: f64| a / q;
        println!(
            "| soak: {} silent connections ({opened} connected), {} slow clients | |",
            args.abandoned, args.slow
        );
        println!(
            "| soak: freshness p99, quiet → attack (n = {} → {}) | {:.0} ms → {:.0} ms (**×{:.2}**) |",
            fresh.len(),
            attack_fresh.len(),
            percentile(&fresh, 0.99),
            percentile(&attack_fresh, 0.99),
            ratio(percentile(&attack_fresh, 0.99), percentile(&fresh, 0.99))
        );
        println!(
            "| soak: `kubectl top nodes` request p99, quiet → attack (n = {} → {}) | {:.1} ms → {:.1} ms (**×{:.2}**); failed {quiet_failed} → {attack_failed} |",
            quiet_https.len(),
            attack_https.len(),
            percentile(&quiet_https, 0.99),
            percentile(&attack_https, 0.99),
            ratio(
                percentile(&attack_https, 0.99),
                percentile(&quiet_https, 0.99)
            )
        );
        println!(
            "| soak: RSS end of quiet window → attack peak → {}s after the attack | {rss_quiet} → {rss_attack_peak} → {rss_end} KiB (**×{:.3}** of quiet) |",
            args.recovery,
            rss_end as f64 / rss_quiet.max(1) as f64
        );
    }
    println!(
        "| simulator CPU (one thread) | {:.1} mCPU; latest send behind schedule by {:.0?} at most |",
        sim_cores * 1000.0,
        max_lag
    );
    println!(
        "| whole machine busy during window | {:.2} cores (others: {:.2}) |",
        machine_cores,
        (machine_cores - agg_cores - sim_cores).max(0.0)
    );
    Ok(())
}
