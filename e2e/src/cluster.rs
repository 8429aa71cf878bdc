//! [`Cluster`]: a real control plane, simulated nodes and nodepulse, all in one
//! private network namespace, torn down on drop (panics included).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use agent::cgroup::Hierarchy;
use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;
use testkit::{Burn, Burner, CgroupTree, Launcher};

mod install;
mod metrics_server;
mod nodepulse;
mod nodes;
mod real_node;

pub use metrics_server::MetricsServer;
pub use real_node::DNS_IP;

use crate::{
    binaries::{self, AgentArgs, AggregatorArgs, Ours},
    kubectl::{Kubectl, write_kubeconfig},
    manifests::{self, ContainerSpec},
    netns::NetNs,
    pki::{self, CertFiles, Pki},
    process::{Proc, Spawner, tail},
    time::now_rfc3339,
};

/// kube-apiserver's client certificate for kubelets (file and user name).
const KUBELET_CLIENT: &str = "kube-apiserver-kubelet-client";

/// kube-apiserver's (and etcd's) address inside the namespace.
pub const API_IP: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 1);
pub const API_PORT: u16 = 6443;
pub const ETCD_CLIENT_PORT: u16 = 2379;
pub const ETCD_PEER_PORT: u16 = 2380;
/// kube-controller-manager's secure port, on the namespace's loopback.
pub const KCM_PORT: u16 = 10257;
/// Each aggregator replica's metrics.k8s.io port (the Service's target port).
pub const AGGREGATOR_PORT: u16 = 443;
/// Each aggregator replica's ingest (agent) port.
pub const INGEST_PORT: u16 = 8443;
/// Service ClusterIPs; nothing ever routes them (no kube-proxy, aggregator
/// routing on), and the namespace has no route out anyway.
pub const SERVICE_CIDR: &str = "10.203.128.0/24";
const SERVICE_FIRST_IP: Ipv4Addr = Ipv4Addr::new(10, 203, 128, 1);
/// The name the aggregators' serving certificate carries and agents check.
pub const SERVER_NAME: &str = "nodepulse.kube-system.svc";
/// The ServiceAccount token issuer.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The audience of the agents' Node-bound tokens.
pub const AGENT_AUDIENCE: &str = "nodepulse";

/// Users with a kubeconfig from the start.
pub const USER_ADMIN: &str = "e2e-admin";
/// A user no RBAC rule mentions.
pub const USER_NO_RBAC: &str = "e2e-nobody";
/// A user bound to get/list on metrics.k8s.io pods and nodes.
pub const USER_METRICS_READER: &str = "e2e-metrics-reader";

/// Address of aggregator replica `i` (10.203.0.10, .11, …).
pub fn replica_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 203, 0, 10 + i as u8)
}

/// InternalIP of simulated node `i` (10.203.0.100, .101, …).
fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 203, 0, 100 + i as u8)
}

const POLL: Duration = Duration::from_millis(200);

/// Temp dirs are `nodepulse-e2e-<pid>-<test>-XXXXXX`.
const TEMP_PREFIX: &str = "nodepulse-e2e-";
/// A kept temp dir holds this file; stale-dir cleanup leaves it alone.
const KEEP_MARK: &str = "KEPT";
/// Node cgroups are testkit's `/nodepulse-test-e2e-<node>-<pid>-<n>`.
const CGROUP_PREFIX: &str = "nodepulse-test-e2e-";

/// One cluster at a time per test binary: each is a whole control plane, and
/// the machines have two cores. (A flag and a condvar rather than a held
/// `MutexGuard`, so that a `Cluster` can move between threads.)
static BUSY: Mutex<bool> = Mutex::new(false);
static FREED: Condvar = Condvar::new();

struct Slot;

impl Slot {
    fn take() -> Self {
        let mut busy = BUSY.lock().unwrap_or_else(|e| e.into_inner());
        while *busy {
            busy = FREED.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy = true;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        *BUSY.lock().unwrap_or_else(|e| e.into_inner()) = false;
        FREED.notify_one();
    }
}

/// Container ids unique within this process (testkit mixes in the pid).
static CONTAINER_SEQ: AtomicU32 = AtomicU32::new(1 << 20);

/// How to start a [`Cluster`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Names the temp dir (keep it short: letters, digits, `-`).
    pub test: String,
    /// Aggregator replicas (addresses, EndpointSlice entries); started only by
    /// [`Cluster::start_aggregators`].
    pub replicas: usize,
    /// How burners start: by default this test binary re-run for its
    /// `#[ignore]`d `burner_entry` test (see `testkit::burner_main`), under
    /// `setpriv --pdeathsig KILL` where util-linux has it, so that burners die
    /// with the harness even when it is killed before its cleanup runs.
    pub launcher: Launcher,
    /// Deadline for each control-plane component to become ready.
    pub ready_timeout: Duration,
    /// The aggregators' `--metric-resolution`: how long a silent node's
    /// metrics are served (at least three of its agent's intervals).
    pub metric_resolution: String,
    /// The agents' `--interval`.
    pub agent_interval: String,
    /// A cluster for real nodes ([`Cluster::add_real_node`]): kube-scheduler
    /// runs (simulated pods are bound by the harness), and so does the node
    /// lifecycle controller (which lifts a new node's `not-ready` taint; with
    /// simulated nodes, whose leases no kubelet renews, it is off).
    pub real_nodes: bool,
    /// Register nodepulse the harness's way (RBAC, a Service without
    /// selector, an EndpointSlice of the replicas it starts, APIServices);
    /// off where `deploy/` is applied instead.
    pub register_nodepulse: bool,
    /// The aggregators' `--ingest-max-connections-per-peer`: for simulated
    /// agents, which all connect from one address where real agents each
    /// have their node's. `None`: the default.
    pub ingest_connections_per_peer: Option<usize>,
    /// Further flags for every aggregator replica.
    pub aggregator_flags: Vec<String>,
}

impl Options {
    pub fn new(test: &str) -> Self {
        Self {
            test: test.to_string(),
            replicas: 2,
            launcher: burner_launcher(),
            ready_timeout: Duration::from_secs(120),
            metric_resolution: "10s".into(),
            agent_interval: "1s".into(),
            real_nodes: false,
            register_nodepulse: true,
            ingest_connections_per_peer: None,
            aggregator_flags: Vec::new(),
        }
    }

    /// For a cluster of real nodes onto which `deploy/` is applied:
    /// kube-scheduler, and no harness-made registration or replicas.
    pub fn real_nodes(test: &str) -> Self {
        Self {
            replicas: 0,
            real_nodes: true,
            register_nodepulse: false,
            ..Self::new(test)
        }
    }
}

/// This test binary's `burner_entry`, wrapped in `setpriv --pdeathsig KILL`
/// when that is available.
fn burner_launcher() -> Launcher {
    dies_with_parent(Launcher::test_binary("burner_entry"))
}

/// `inner` wrapped in `setpriv --pdeathsig KILL` where util-linux has it, so
/// burners die with whoever started them even if it is killed outright.
pub fn dies_with_parent(inner: Launcher) -> Launcher {
    let setpriv = Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !setpriv {
        return inner;
    }
    let mut args: Vec<String> = ["--pdeathsig", "KILL", "--"].map(String::from).to_vec();
    args.push(inner.program.to_string_lossy().into_owned());
    args.extend(inner.args);
    Launcher {
        program: "setpriv".into(),
        args,
    }
}

/// How long the phases of [`Cluster::start`] took.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    /// `scripts/upstream.sh` (warm: under a second).
    pub upstream: Duration,
    pub pki: Duration,
    /// etcd started until `/health` answers.
    pub etcd: Duration,
    /// kube-apiserver started until `/readyz` answers.
    pub apiserver: Duration,
    /// nodepulse's objects applied (overlaps `controller_manager`).
    pub objects: Duration,
    /// kube-controller-manager started until ServiceAccount default/default exists.
    pub controller_manager: Duration,
    pub total: Duration,
}

/// A container of a simulated pod: what it burns, and its resources.
pub struct Container {
    pub name: String,
    pub burn: Burn,
    pub requests: Vec<(String, String)>,
    pub limits: Vec<(String, String)>,
}

impl Container {
    pub fn new(name: &str, burn: Burn) -> Self {
        Self {
            name: name.to_string(),
            burn,
            requests: Vec::new(),
            limits: Vec::new(),
        }
    }

    /// Adds a request, e.g. `("cpu", "250m")`.
    pub fn request(mut self, resource: &str, quantity: &str) -> Self {
        self.requests.push((resource.into(), quantity.into()));
        self
    }

    /// Adds a limit, e.g. `("memory", "128Mi")`.
    pub fn limit(mut self, resource: &str, quantity: &str) -> Self {
        self.limits.push((resource.into(), quantity.into()));
        self
    }
}

/// A running simulated pod.
#[derive(Clone, Debug)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    /// The UID kube-apiserver assigned (and the cgroups carry).
    pub uid: String,
    pub node: String,
    /// `guaranteed`, `burstable` or `besteffort`, from `status.qosClass`.
    pub qos: String,
    pub containers: Vec<ContainerInfo>,
}

/// A running simulated container.
#[derive(Clone, Debug)]
pub struct ContainerInfo {
    pub name: String,
    /// 64 hex digits; `status.containerStatuses[].containerID` is `containerd://<id>`.
    pub id: String,
    /// Its cgroup, relative to the v2 root.
    pub cgroup: String,
}

struct SimPod {
    info: PodInfo,
    burners: Vec<Burner>,
}

struct SimNode {
    name: String,
    ip: Ipv4Addr,
    pods: Vec<SimPod>,
    agent: Option<Proc>,
    /// The node cgroup, relative to the v2 root.
    base: String,
    /// Shared with the spawner thread, which starts the burners.
    tree: Arc<Mutex<CgroupTree>>,
}

struct Replica {
    ip: Ipv4Addr,
    ready: bool,
    proc: Option<Proc>,
}

/// A cluster for one test. See the crate docs for what runs where.
pub struct Cluster {
    opts: Options,
    hierarchy: Hierarchy,
    bin: PathBuf,
    work_dir: PathBuf,
    logs: PathBuf,
    harness_log: PathBuf,
    pki: Pki,
    kubeconfigs: BTreeMap<String, PathBuf>,
    kubectl: Kubectl,
    etcd: Option<Proc>,
    apiserver: Option<Proc>,
    controller_manager: Option<Proc>,
    scheduler: Option<Proc>,
    /// CoreDNS, once a real node needs it.
    dns: Option<Proc>,
    replicas: Vec<Replica>,
    nodes: Vec<SimNode>,
    real_nodes: Vec<crate::node::RealNode>,
    namespaces: BTreeSet<String>,
    slice_revision: u64,
    ours: Option<Ours>,
    timings: Timings,
    // Dropped after everything above has been stopped, in this order.
    spawner: Spawner,
    netns: NetNs,
    work: Option<tempfile::TempDir>,
    _slot: Slot,
}

impl Cluster {
    /// Starts etcd, kube-apiserver and kube-controller-manager in a fresh
    /// network namespace, and registers nodepulse (RBAC, Service,
    /// EndpointSlice, APIServices) — without starting it. `hierarchy` comes
    /// from [`crate::privileged`].
    pub fn start(hierarchy: Hierarchy, opts: Options) -> Result<Self> {
        let fewest = usize::from(opts.register_nodepulse);
        ensure!(
            (fewest..=80).contains(&opts.replicas),
            "replicas must be {fewest}..=80, not {}",
            opts.replicas
        );
        let slot = Slot::take();
        let t0 = Instant::now();
        let bin = binaries::upstream_bin_dir().context("installing the upstream binaries")?;
        let upstream = t0.elapsed();

        remove_stale(&hierarchy);
        let work = tempfile::Builder::new()
            .prefix(&format!(
                "{TEMP_PREFIX}{}-{}-",
                std::process::id(),
                opts.test
            ))
            .tempdir()
            .context("creating the temp dir")?;
        let work_dir = work.path().to_path_buf();
        let logs = work_dir.join("logs");
        for dir in [&logs, &work_dir.join("kubectl"), &work_dir.join("nodes")] {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let harness_log = logs.join("harness.log");

        let t = Instant::now();
        let replica_ips: Vec<Ipv4Addr> = (0..opts.replicas).map(replica_ip).collect();
        let mut aggregator_sans: Vec<String> =
            replica_ips.iter().map(Ipv4Addr::to_string).collect();
        aggregator_sans.extend(
            [
                SERVER_NAME,
                "nodepulse.kube-system",
                "nodepulse",
                "nodepulse.kube-system.svc.cluster.local",
            ]
            .map(String::from),
        );
        let pki = Pki::generate(
            &work_dir.join("pki"),
            &pki::apiserver_sans(API_IP, SERVICE_FIRST_IP),
            &aggregator_sans,
        )
        .context("generating the PKI")?;
        let pki_time = t.elapsed();

        let netns = NetNs::create().context("creating the network namespace")?;
        netns.add_address(API_IP, 24)?;
        for ip in &replica_ips {
            netns.add_address(*ip, 32)?;
        }
        let spawner = Spawner::new()?;
        let kubectl = Kubectl::new(
            bin.join("kubectl"),
            work_dir.join("kubectl"),
            harness_log.clone(),
        );
        let mut cluster = Self {
            hierarchy,
            bin,
            logs,
            harness_log,
            pki,
            kubeconfigs: BTreeMap::new(),
            kubectl,
            etcd: None,
            apiserver: None,
            controller_manager: None,
            scheduler: None,
            dns: None,
            real_nodes: Vec::new(),
            replicas: replica_ips
                .into_iter()
                .map(|ip| Replica {
                    ip,
                    ready: true,
                    proc: None,
                })
                .collect(),
            nodes: Vec::new(),
            namespaces: BTreeSet::new(),
            slice_revision: 0,
            ours: None,
            timings: Timings {
                upstream,
                pki: pki_time,
                ..Timings::default()
            },
            spawner,
            netns,
            work_dir,
            work: Some(work),
            opts,
            _slot: slot,
        };
        cluster.note(&format!(
            "cluster {} in network namespace {}, work dir {}",
            cluster.opts.test,
            cluster.netns.name(),
            cluster.work_dir.display()
        ));
        if let Err(e) = cluster.boot() {
            cluster.dump_logs();
            return Err(e);
        }
        cluster.timings.total = t0.elapsed();
        cluster.note(&format!("control plane ready: {:?}", cluster.timings));
        Ok(cluster)
    }

    fn boot(&mut self) -> Result<()> {
        let server = format!("https://{API_IP}:{API_PORT}");
        let admin = self
            .pki
            .client("admin", USER_ADMIN, Some("system:masters"))?;
        self.write_user_kubeconfig(USER_ADMIN, &admin, &server)?;
        let kcm = self.pki.controller_manager.clone();
        self.write_user_kubeconfig("system:kube-controller-manager", &kcm, &server)?;
        for (file, user) in [
            ("aggregator", manifests::AGGREGATOR_SA),
            ("agent", manifests::AGENT_SA),
        ] {
            let name = manifests::service_account_user(manifests::NAMESPACE, user);
            let cert = self.pki.client(file, &name, None)?;
            self.write_user_kubeconfig(&name, &cert, &server)?;
        }
        self.add_user(USER_NO_RBAC, None)?;
        self.add_user(USER_METRICS_READER, None)?;
        // What kube-apiserver presents to kubelets (logs, exec, port-forward).
        self.pki
            .client(KUBELET_CLIENT, KUBELET_CLIENT, Some("system:masters"))?;

        let t = Instant::now();
        self.start_etcd()?;
        self.timings.etcd = t.elapsed();

        let t = Instant::now();
        self.start_apiserver()?;
        self.timings.apiserver = t.elapsed();

        // kube-controller-manager takes seconds to come up: create nodepulse's
        // objects meanwhile.
        let t = Instant::now();
        self.start_controller_manager()?;
        if self.opts.real_nodes {
            self.start_scheduler()?;
        }
        let t_objects = Instant::now();
        if self.opts.register_nodepulse {
            let mut objects = manifests::nodepulse_objects(USER_METRICS_READER, AGGREGATOR_PORT);
            objects.push(self.endpoint_slice());
            self.apply(&manifests::list(objects))
                .context("creating nodepulse's RBAC, Service, EndpointSlice and APIServices")?;
        }
        self.timings.objects = t_objects.elapsed();
        self.wait_controller_manager()?;
        self.timings.controller_manager = t.elapsed();
        Ok(())
    }

    fn start_etcd(&mut self) -> Result<()> {
        let client = format!("http://{API_IP}:{ETCD_CLIENT_PORT}");
        let peer = format!("http://{API_IP}:{ETCD_PEER_PORT}");
        let mut cmd = Command::new(self.bin.join("etcd"));
        cmd.arg("--name=e2e")
            .arg(format!(
                "--data-dir={}",
                self.work_dir.join("etcd").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=e2e={peer}"))
            .arg("--initial-cluster-state=new")
            // Throwaway data: no fsync makes every write (and start-up) faster.
            .arg("--unsafe-no-fsync=true")
            .arg("--log-level=warn");
        self.etcd = Some(self.start_proc("etcd", cmd)?);
        let addr = SocketAddr::V4(SocketAddrV4::new(API_IP, ETCD_CLIENT_PORT));
        self.wait_for("etcd /health", self.opts.ready_timeout, |c| {
            let (status, body) = c.netns.http_get(addr, "/health")?;
            Ok((status == 200 && body.contains("\"health\":\"true\"")).then_some(()))
        })
    }

    fn start_apiserver(&mut self) -> Result<()> {
        let p = &self.pki;
        let path = |p: &Path| p.display().to_string();
        let mut cmd = Command::new(self.bin.join("kube-apiserver"));
        cmd.arg(format!("--etcd-servers=http://{API_IP}:{ETCD_CLIENT_PORT}"))
            .arg(format!("--bind-address={API_IP}"))
            .arg(format!("--advertise-address={API_IP}"))
            .arg(format!("--secure-port={API_PORT}"))
            .arg(format!(
                "--cert-dir={}",
                self.work_dir.join("apiserver-certs").display()
            ))
            .arg(format!("--tls-cert-file={}", path(&p.apiserver.cert)))
            .arg(format!("--tls-private-key-file={}", path(&p.apiserver.key)))
            .arg(format!("--client-ca-file={}", path(&p.cluster_ca.cert)))
            .arg(format!("--service-account-issuer={ISSUER}"))
            .arg(format!(
                "--service-account-key-file={}",
                path(&p.service_account_pub)
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                path(&p.service_account_key)
            ))
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
            .arg("--authorization-mode=Node,RBAC")
            // The aggregation layer (contract §3).
            .arg(format!(
                "--proxy-client-cert-file={}",
                path(&p.front_proxy_client.cert)
            ))
            .arg(format!(
                "--proxy-client-key-file={}",
                path(&p.front_proxy_client.key)
            ))
            .arg(format!(
                "--requestheader-client-ca-file={}",
                path(&p.front_proxy_ca.cert)
            ))
            .arg(format!(
                "--requestheader-allowed-names={}",
                pki::FRONT_PROXY_CLIENT
            ))
            .arg("--requestheader-username-headers=X-Remote-User")
            .arg("--requestheader-group-headers=X-Remote-Group")
            .arg("--requestheader-extra-headers-prefix=X-Remote-Extra-")
            // Dial the replicas' EndpointSlice addresses, not the ClusterIP.
            .arg("--enable-aggregator-routing=true")
            // Real kubelets: by their InternalIP (not their hostname, which
            // nothing resolves here), verified against the cluster CA.
            .arg("--kubelet-preferred-address-types=InternalIP")
            .arg(format!(
                "--kubelet-certificate-authority={}",
                path(&p.cluster_ca.cert)
            ))
            .arg(format!(
                "--kubelet-client-certificate={}",
                path(&p.dir.join(format!("{KUBELET_CLIENT}.crt")))
            ))
            .arg(format!(
                "--kubelet-client-key={}",
                path(&p.dir.join(format!("{KUBELET_CLIENT}.key")))
            ))
            // NODEPULSE_E2E_PROFILING=1 serves /debug/pprof, to see where a
            // bench's kube-apiserver spends.
            .arg(format!(
                "--profiling={}",
                std::env::var("NODEPULSE_E2E_PROFILING").is_ok_and(|v| v == "1")
            ));
        self.apiserver = Some(self.start_proc("kube-apiserver", cmd)?);
        self.wait_for("kube-apiserver /readyz", self.opts.ready_timeout, |c| {
            let out = c.kubectl(&["get", "--raw=/readyz"])?;
            Ok(out.status.success().then_some(()))
        })
    }

    fn start_controller_manager(&mut self) -> Result<()> {
        let kubeconfig = self.kubeconfig_of("system:kube-controller-manager")?;
        let kubeconfig = kubeconfig.display().to_string();
        let p = &self.pki;
        // No kubelet renews the simulated nodes' leases: the node lifecycle
        // controller would mark them Unknown and their pods not Ready.
        let controllers = if self.opts.real_nodes {
            "*"
        } else {
            "*,-node-lifecycle-controller"
        };
        let mut cmd = Command::new(self.bin.join("kube-controller-manager"));
        cmd.arg(format!("--kubeconfig={kubeconfig}"))
            .arg(format!("--authentication-kubeconfig={kubeconfig}"))
            .arg(format!("--authorization-kubeconfig={kubeconfig}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={KCM_PORT}"))
            .arg(format!(
                "--cert-dir={}",
                self.work_dir.join("kcm-certs").display()
            ))
            .arg("--leader-elect=false")
            .arg("--use-service-account-credentials=true")
            .arg(format!(
                "--service-account-private-key-file={}",
                p.service_account_key.display()
            ))
            .arg(format!("--root-ca-file={}", p.cluster_ca.cert.display()))
            .arg(format!(
                "--cluster-signing-cert-file={}",
                p.cluster_ca.cert.display()
            ))
            .arg(format!(
                "--cluster-signing-key-file={}",
                p.cluster_ca.key.display()
            ))
            .arg(format!("--controllers={controllers}"))
            .arg("--horizontal-pod-autoscaler-sync-period=5s");
        self.controller_manager = Some(self.start_proc("kube-controller-manager", cmd)?);
        Ok(())
    }

    fn wait_controller_manager(&mut self) -> Result<()> {
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, KCM_PORT));
        self.wait_for(
            "kube-controller-manager (its port, and ServiceAccount default/default)",
            self.opts.ready_timeout,
            |c| {
                if !c.netns.tcp_open(addr) {
                    return Ok(None);
                }
                let out = c.kubectl(&["-n", "default", "get", "serviceaccount", "default"])?;
                Ok(out.status.success().then_some(()))
            },
        )
    }

    fn start_proc(&self, name: &str, cmd: Command) -> Result<Proc> {
        let log = self.logs.join(format!("{name}.log"));
        let proc = Proc::start(&self.spawner, &self.netns, name, cmd, &log)?;
        self.note(&format!("started {name} (pid {})", proc.pid()));
        Ok(proc)
    }

    /// Polls `f` every 200 ms until it yields a value, failing at `timeout`
    /// or as soon as a control-plane process has exited.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&mut Self) -> Result<Option<T>>,
    ) -> Result<T> {
        let start = Instant::now();
        let mut last_error = None;
        loop {
            self.ensure_control_plane()?;
            match f(self) {
                Ok(Some(v)) => {
                    self.note(&format!("{what}: after {:?}", start.elapsed()));
                    return Ok(v);
                }
                Ok(None) => {}
                Err(e) => last_error = Some(e),
            }
            if start.elapsed() >= timeout {
                let why = last_error.map_or(String::new(), |e| format!(" (last error: {e:#})"));
                bail!("{what}: not ready after {timeout:?}{why}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// Fails if etcd, kube-apiserver or kube-controller-manager has exited.
    pub fn ensure_control_plane(&mut self) -> Result<()> {
        for proc in [
            &mut self.etcd,
            &mut self.apiserver,
            &mut self.controller_manager,
            &mut self.scheduler,
            &mut self.dns,
        ]
        .into_iter()
        .flatten()
        {
            proc.ensure_running()?;
        }
        Ok(())
    }

    fn note(&self, line: &str) {
        if let Ok(mut f) = fs::File::options()
            .create(true)
            .append(true)
            .open(&self.harness_log)
        {
            use std::io::Write;
            let _ = writeln!(f, "{} e2e: {line}", now_rfc3339());
        }
    }

    // --- kubectl ---------------------------------------------------------

    fn write_user_kubeconfig(
        &mut self,
        user: &str,
        client: &CertFiles,
        server: &str,
    ) -> Result<()> {
        let path = self
            .work_dir
            .join(format!("{}.kubeconfig", user.replace(':', "_")));
        write_kubeconfig(&path, server, &self.pki.cluster_ca.cert, user, client)?;
        self.kubeconfigs.insert(user.to_string(), path);
        Ok(())
    }

    /// A client-certificate user (CN `name`, O `group`) with a kubeconfig, for
    /// [`Cluster::kubectl_as`]. Returns the kubeconfig's path.
    pub fn add_user(&mut self, name: &str, group: Option<&str>) -> Result<PathBuf> {
        let file = format!("user-{}", name.replace(':', "_"));
        let cert = self.pki.client(&file, name, group)?;
        let server = format!("https://{API_IP}:{API_PORT}");
        self.write_user_kubeconfig(name, &cert, &server)?;
        self.kubeconfig_of(name)
    }

    /// The kubeconfig of `user` ([`USER_ADMIN`], [`USER_NO_RBAC`],
    /// [`USER_METRICS_READER`], the ServiceAccount users, or an added user).
    pub fn kubeconfig_of(&self, user: &str) -> Result<PathBuf> {
        self.kubeconfigs
            .get(user)
            .cloned()
            .ok_or_else(|| anyhow!("no kubeconfig for user {user}"))
    }

    /// The admin (system:masters) kubeconfig. Its server is only reachable
    /// inside the namespace: use it through [`Cluster::kubectl`] or
    /// [`Cluster::command_in_netns`].
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.kubeconfigs
            .get(USER_ADMIN)
            .cloned()
            .unwrap_or_else(|| self.work_dir.join("e2e-admin.kubeconfig"))
    }

    /// `kubectl <args>` as the admin, inside the namespace.
    pub fn kubectl(&self, args: &[&str]) -> Result<Output> {
        self.kubectl_as(USER_ADMIN, args)
    }

    /// `kubectl <args>` as `user` (see [`Cluster::kubeconfig_of`]).
    pub fn kubectl_as(&self, user: &str, args: &[&str]) -> Result<Output> {
        let kubeconfig = self.kubeconfig_of(user)?;
        self.kubectl.run(&self.netns, &kubeconfig, args, None)
    }

    /// `kubectl <args>` as the admin with `input` on stdin.
    pub fn kubectl_stdin(&self, args: &[&str], input: &[u8]) -> Result<Output> {
        self.kubectl_as_stdin(USER_ADMIN, args, input)
    }

    /// `kubectl <args>` as `user` with `input` on stdin.
    pub fn kubectl_as_stdin(&self, user: &str, args: &[&str], input: &[u8]) -> Result<Output> {
        let kubeconfig = self.kubeconfig_of(user)?;
        self.kubectl
            .run(&self.netns, &kubeconfig, args, Some(input.to_vec()))
    }

    /// Whether `user` may `verb` `resource` in `group` (`""` for core), in
    /// `namespace` (`None`: cluster-wide), the object `name` (`None`: any) —
    /// a SelfSubjectAccessReview made as that user. Unlike `kubectl auth
    /// can-i` it needs no discovery, so it also answers for metrics.k8s.io
    /// while that API is not Available.
    pub fn can_i(
        &self,
        user: &str,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<bool> {
        let review = manifests::self_subject_access_review(verb, group, resource, namespace, name);
        // Client-side validation would list CRDs, which most users may not.
        let args = ["create", "--validate=false", "-f", "-", "-o", "json"];
        let out = ok(
            self.kubectl_as_stdin(user, &args, review.to_string().as_bytes())?,
            &args,
        )?;
        let review: Value =
            serde_json::from_str(&out).context("SelfSubjectAccessReview: not JSON")?;
        Ok(review["status"]["allowed"] == true)
    }

    /// `kubectl <args>` as the admin; its stdout, or an error with its stderr.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        ok(self.kubectl(args)?, args)
    }

    /// `kubectl <args> -o json` as the admin, parsed.
    pub fn kubectl_json(&self, args: &[&str]) -> Result<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.kubectl_ok(&all)?;
        serde_json::from_str(&out).with_context(|| format!("kubectl {}: not JSON", args.join(" ")))
    }

    /// `kubectl apply -f -` of `object` (one object or a `v1/List`).
    pub fn apply(&self, object: &Value) -> Result<String> {
        let args = ["apply", "-f", "-"];
        ok(
            self.kubectl_stdin(&args, object.to_string().as_bytes())?,
            &args,
        )
    }

    /// `kubectl create -f - -o json` of `object`: the object as created.
    pub fn create(&self, object: &Value) -> Result<Value> {
        let args = ["create", "-f", "-", "-o", "json"];
        let out = ok(
            self.kubectl_stdin(&args, object.to_string().as_bytes())?,
            &args,
        )?;
        serde_json::from_str(&out).context("kubectl create: not JSON")
    }

    /// Starts `cmd` inside the namespace as a managed process (own process
    /// group, log `logs/<name>.log`, dies with the harness); dropping the
    /// returned [`Proc`] stops it. For stand-ins and probes in tests.
    pub fn spawn_in_netns(&self, name: &str, cmd: Command) -> Result<Proc> {
        self.start_proc(name, cmd)
    }

    /// A command (e.g. `curl`) that will run inside the namespace.
    pub fn command_in_netns(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        self.netns.enter_in_child(&mut cmd);
        cmd
    }
}

impl Cluster {
    // --- accessors and diagnostics --------------------------------------

    /// kube-apiserver's process id, while it runs.
    pub fn apiserver_pid(&self) -> Option<u32> {
        self.apiserver.as_ref().map(Proc::pid)
    }

    /// Aggregator replica `i`'s process id, while it runs.
    pub fn aggregator_pid(&self, i: usize) -> Option<u32> {
        self.replicas.get(i)?.proc.as_ref().map(Proc::pid)
    }

    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// The pinned upstream bin dir (etcd, kube-apiserver, kubectl, helm…).
    pub fn upstream_bin(&self) -> &Path {
        &self.bin
    }

    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    /// Every log (etcd, kube-apiserver, kube-controller-manager, aggregators,
    /// agents, and the harness's own record of kubectl calls).
    pub fn log_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(&self.logs)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        files
    }

    /// Prints the tail of every log to stderr.
    pub fn dump_logs(&self) {
        for file in self.log_files() {
            eprintln!(
                "----- e2e: last lines of {} -----\n{}",
                file.display(),
                tail(&file, 40)
            );
        }
        if !self.real_nodes.is_empty() {
            self.dump_workloads();
        }
    }

    /// What a user would look at on a real node: every pod, the events, and
    /// the last lines each container logged.
    fn dump_workloads(&self) {
        let show = |args: &[&str]| match self.kubectl(args) {
            Ok(out) => eprintln!(
                "----- e2e: kubectl {} -----\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("----- e2e: kubectl {}: {e:#}", args.join(" ")),
        };
        show(&[
            "get",
            "nodes,pods,deployments,daemonsets,replicasets,apiservices",
            "-A",
            "-o",
            "wide",
        ]);
        show(&["get", "events", "-A", "--sort-by=.lastTimestamp"]);
        let Ok(pods) = self.kubectl_json(&["get", "pods", "-A"]) else {
            return;
        };
        for pod in pods["items"].as_array().into_iter().flatten() {
            let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = pod["metadata"]["name"].as_str().unwrap_or_default();
            if pod["spec"]["nodeName"].is_null() {
                continue;
            }
            show(&[
                "-n",
                ns,
                "logs",
                name,
                "--all-containers",
                "--tail=30",
                "--prefix",
            ]);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        // Ours first, then real nodes (everything they run), then the
        // control plane top-down, then the burners and their cgroups; the
        // spawner, the namespace and the temp dir follow as fields drop.
        for node in &mut self.nodes {
            drop(node.agent.take());
        }
        for replica in &mut self.replicas {
            drop(replica.proc.take());
        }
        self.real_nodes.clear();
        drop(self.dns.take());
        drop(self.scheduler.take());
        drop(self.controller_manager.take());
        drop(self.apiserver.take());
        drop(self.etcd.take());
        for node in &mut self.nodes {
            node.pods.clear();
        }
        self.nodes.clear();
        // NODEPULSE_E2E_KEEP=1 keeps the temp dir (logs, PKI, kubeconfigs),
        // =failure only when the test panicked.
        let keep = match std::env::var("NODEPULSE_E2E_KEEP").as_deref() {
            Ok("1") => true,
            Ok("failure") => std::thread::panicking(),
            _ => false,
        };
        if keep && let Some(work) = self.work.take() {
            let dir = work.keep();
            let _ = fs::write(dir.join(KEEP_MARK), "kept by NODEPULSE_E2E_KEEP\n");
            eprintln!("e2e: kept {}", dir.display());
        }
    }
}

/// stdout of a successful kubectl run, or an error with its stderr.
fn ok(out: Output, args: &[&str]) -> Result<String> {
    if !out.status.success() {
        bail!(
            "kubectl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes what harness runs that no longer exist left behind (killed before
/// their cleanup ran): node cgroups (killing what still runs in them) and temp
/// dirs. Their names carry the harness's pid.
fn remove_stale(h: &Hierarchy) {
    let dead = |name: &str, prefix: &str, pid_from_end: bool| -> bool {
        let Some(rest) = name.strip_prefix(prefix) else {
            return false;
        };
        let parts: Vec<&str> = rest.split('-').collect();
        let pid = if pid_from_end {
            parts.len().checked_sub(2).map(|i| parts[i])
        } else {
            parts.first().copied()
        };
        match pid.and_then(|p| p.parse::<u32>().ok()) {
            Some(pid) => pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists(),
            None => false,
        }
    };
    if let Some(v2) = &h.v2 {
        for entry in fs::read_dir(v2).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if dead(&name, CGROUP_PREFIX, true) {
                let _ = fs::write(entry.path().join("cgroup.kill"), "1");
                // A real node's kubelet made its tree in every hierarchy.
                for root in
                    crate::node::cgroup::hierarchies(Path::new(crate::node::cgroup::CGROUP_FS))
                {
                    if let Err(e) = crate::node::cgroup::remove_tree(&root.join(&name)) {
                        eprintln!("e2e: {e:#}");
                    }
                }
                eprintln!("e2e: removed stale cgroup /{name}");
            }
        }
    }
    for entry in fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if dead(&name, TEMP_PREFIX, false)
            && !entry.path().join(KEEP_MARK).exists()
            && fs::remove_dir_all(entry.path()).is_ok()
        {
            eprintln!("e2e: removed stale {}", entry.path().display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<Cluster>();
    }

    #[test]
    fn addresses_stay_inside_the_test_subnet() {
        assert_eq!(replica_ip(0), Ipv4Addr::new(10, 203, 0, 10));
        assert_eq!(replica_ip(79), Ipv4Addr::new(10, 203, 0, 89));
        assert_eq!(node_ip(99), Ipv4Addr::new(10, 203, 0, 199));
    }
}
