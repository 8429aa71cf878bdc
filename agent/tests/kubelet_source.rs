//! The kubelet as the agent's second source, through the agent's own
//! [`Sampler`] and the real HTTPS client, against an in-process kubelet
//! (support/kubelet.rs) on 127.0.0.1:
//!
//! - cgroupfs unreadable: samples come from the kubelet's `/metrics/resource`
//!   (a fixture in the kubelet's exact format), joined to pod UIDs and
//!   container ids, and go on the wire marked as the kubelet's.
//! - the cross-check on real cgroups (a simulated node: cgroups laid out as
//!   the kubelet lays them, a process burning half a core): the fake kubelet
//!   answers as the real one does, from the same cgroup files cAdvisor reads
//!   (`cpu.stat`, `memory.current` − `inactive_file`), with a read time per
//!   figure and a cache like cAdvisor's housekeeping. Honest, it agrees with
//!   our eBPF figures; once it under-reports CPU, the check says so.
//!
//! The second test needs root, BTF and cgroup v2 (skips elsewhere, fails
//! instead under NODEPULSE_REQUIRE_PRIVILEGED=1 as in CI).
mod support;

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use agent::{
    collector::{CpuSource, CpuSourceChoice, Options},
    kubelet::{
        KubeletClient, KubeletConfig,
        check::{Resource, Tolerance},
    },
    report,
    run::{Kubelet, Sampler},
};
use proto::v1::{ContainerName, CpuSource as WireSource, NodeMetadata, PodMetadata};
use support::kubelet::{FakeKubelet, Reply, make_pki};
use testkit::{self as tk, Burn, CgroupTree, Launcher};

const FIXTURE: &[u8] = include_bytes!("../../kubelet/tests/fixtures/kubelet/resource_v1_31.txt");

/// Not a test: the body of burner processes (see testkit).
#[test]
#[ignore = "entry point of burner child processes"]
fn burner_entry() {
    tk::burner_main();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

fn kubelet(fake: &FakeKubelet, check_every: Option<Duration>, tolerance: Tolerance) -> Kubelet {
    let mut config = KubeletConfig::new(fake.url.clone());
    config.insecure = true;
    Kubelet {
        client: KubeletClient::new(config).expect("client"),
        interval: Duration::from_secs(10),
        check_every,
        tolerance,
    }
}

fn pod(uid: &str, ns: &str, name: &str, containers: &[(&str, &str)]) -> PodMetadata {
    PodMetadata {
        uid: uid.into(),
        namespace: ns.into(),
        name: name.into(),
        running: true,
        containers: containers
            .iter()
            .map(|(id, name)| ContainerName {
                id: (*id).into(),
                name: (*name).into(),
            })
            .collect(),
        ..Default::default()
    }
}

#[test]
fn the_kubelet_is_the_source_when_cgroupfs_cannot_be_read() {
    let rt = runtime();
    let pki = make_pki("127.0.0.1").expect("pki");
    let fake = rt
        .block_on(FakeKubelet::start(&pki, Reply::ok(FIXTURE)))
        .expect("fake kubelet");
    let unreadable = Options {
        cgroup_root: "/nonexistent/nodepulse-test".into(),
        ..Options::default()
    };

    // Without a kubelet, that is fatal, and says why.
    let err = Sampler::new(unreadable.clone(), None, rt.handle().clone())
        .err()
        .expect("no source at all");
    assert!(
        err.to_string().contains("/nonexistent/nodepulse-test"),
        "{err}"
    );

    let mut sampler = Sampler::new(
        unreadable,
        Some(kubelet(&fake, None, Tolerance::default())),
        rt.handle().clone(),
    )
    .expect("the kubelet stands in");
    sampler.wait_for_kubelet(true);
    let meta = NodeMetadata {
        labels: Default::default(),
        pods: vec![
            pod(
                "uid-web",
                "default",
                "web-5d9c7b8f6d-7kq2p",
                &[("id-nginx", "nginx"), ("id-istio", "istio-proxy")],
            ),
            pod(
                "uid-dns",
                "kube-system",
                "coredns-7db6d8ff4d-x2x9q",
                &[("id-coredns", "coredns")],
            ),
        ],
    };
    let s = sampler.sample(&meta).expect("a sample from the kubelet");
    assert_eq!(s.source, CpuSource::Kubelet);
    assert_eq!(
        s.pods.keys().map(String::as_str).collect::<Vec<_>>(),
        ["uid-dns", "uid-web"]
    );
    let web = &s.pods["uid-web"];
    let nginx = web
        .containers
        .iter()
        .find(|c| c.id == "id-nginx")
        .expect("nginx");
    // The fixture's figures and read time, as the kubelet wrote them.
    assert_eq!(nginx.cpu_ns, 4_710_898_000);
    assert_eq!(nginx.memory.working_set, 3_932_160);
    assert_eq!(
        nginx.read_at,
        Some(UNIX_EPOCH + Duration::from_millis(1_718_023_455_120))
    );
    // Pods this node's watch does not list are named, not guessed at.
    assert!(
        s.errors.iter().any(|e| e.contains("kube-proxy-8m2fz")),
        "{:?}",
        s.errors
    );

    let wire = report::build("node-1", 1, 7, &s);
    assert_eq!(wire.cpu_source, WireSource::Kubelet as i32);
    let read = wire.pods.iter().flat_map(|p| &p.containers).map(|c| {
        c.usage
            .as_ref()
            .and_then(|u| u.read_unix_nanos)
            .expect("read time on the wire")
    });
    assert!(
        read.into_iter()
            .all(|t| t > 0 && t <= wire.sample_unix_nanos)
    );
    rt.block_on(fake.stop()).expect("stop");
}

/// What cAdvisor reads for one cgroup: cumulative CPU (v2 `cpu.stat`) and
/// working set (v2 `memory.current` − `inactive_file`; on a hybrid host,
/// where the memory controller is in v1, `memory.usage_in_bytes` −
/// `total_inactive_file` from `v1_memory`).
fn read_cgroup(v2: &Path, v1_memory: Option<&Path>) -> (f64, u64) {
    let field = |dir: &Path, file: &str, key: &str| -> u64 {
        fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{key} in {file}"))
    };
    let single = |dir: &Path, file: &str| -> u64 {
        fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or_else(|| panic!("{}", dir.join(file).display()))
    };
    let usage_usec = field(v2, "cpu.stat", "usage_usec");
    let ws = if v2.join("memory.current").exists() {
        single(v2, "memory.current").saturating_sub(field(v2, "memory.stat", "inactive_file"))
    } else {
        let v1 = v1_memory.expect("no memory controller in v2 nor v1");
        single(v1, "memory.usage_in_bytes").saturating_sub(field(
            v1,
            "memory.stat",
            "total_inactive_file",
        ))
    };
    (usage_usec as f64 / 1e6, ws)
}

/// A kubelet body read from the simulated node's cgroups as the kubelet
/// would: node totals from the node's cgroup, one container.
struct Kubelike {
    /// v2 and v1 memory directories of the node's and the container's cgroups.
    node_dir: (PathBuf, Option<PathBuf>),
    container_dir: (PathBuf, Option<PathBuf>),
    /// cAdvisor's cache: the body and when it was made.
    cache: Mutex<Option<(Instant, String)>>,
    /// Under-report CPU from now on: counters grow at half the true rate.
    lie: AtomicBool,
    lie_from: Mutex<Option<(f64, f64)>>,
}

impl Kubelike {
    const HOUSEKEEPING: Duration = Duration::from_secs(2);

    fn body(&self) -> String {
        let mut cache = self.cache.lock().expect("cache");
        if let Some((at, body)) = cache.as_ref()
            && at.elapsed() < Self::HOUSEKEEPING
        {
            return body.clone();
        }
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis();
        let (mut node_cpu, node_ws) = read_cgroup(&self.node_dir.0, self.node_dir.1.as_deref());
        let (mut ctr_cpu, ctr_ws) =
            read_cgroup(&self.container_dir.0, self.container_dir.1.as_deref());
        if self.lie.load(Ordering::SeqCst) {
            let mut from = self.lie_from.lock().expect("lie");
            let (n0, c0) = *from.get_or_insert((node_cpu, ctr_cpu));
            node_cpu = n0 + (node_cpu - n0) / 2.0;
            ctr_cpu = c0 + (ctr_cpu - c0) / 2.0;
        }
        let body = format!(
            "# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds\n\
             # TYPE container_cpu_usage_seconds_total counter\n\
             container_cpu_usage_seconds_total{{container=\"main\",namespace=\"default\",pod=\"burner\"}} {ctr_cpu} {ms}\n\
             # HELP container_memory_working_set_bytes [STABLE] Current working set of the container in bytes\n\
             # TYPE container_memory_working_set_bytes gauge\n\
             container_memory_working_set_bytes{{container=\"main\",namespace=\"default\",pod=\"burner\"}} {ctr_ws} {ms}\n\
             # HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds\n\
             # TYPE node_cpu_usage_seconds_total counter\n\
             node_cpu_usage_seconds_total {node_cpu} {ms}\n\
             # HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes\n\
             # TYPE node_memory_working_set_bytes gauge\n\
             node_memory_working_set_bytes {node_ws} {ms}\n\
             # HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise\n\
             # TYPE resource_scrape_error gauge\n\
             resource_scrape_error 0\n"
        );
        *cache = Some((Instant::now(), body.clone()));
        body
    }
}

#[test]
fn cross_check_agrees_with_an_honest_kubelet_and_flags_a_wrong_one() {
    let Some(h) = tk::privileged("cross_check") else {
        return;
    };
    let mut tree = CgroupTree::new(&h, "xcheck");
    let base = tree.base.clone();
    let (uid, cid) = (tk::uid(9), tk::container_id(9));
    let path = tk::systemd_container(&base, "burstable", &uid, &cid);
    let _burner = tree.spawn(
        &path,
        &Burn::Duty {
            fraction: 0.5,
            period_ms: 20,
        },
        &Launcher::test_binary("burner_entry"),
    );
    let v1_memory = |rel: &str| {
        h.v1_memory
            .as_ref()
            .map(|root| root.join(rel.trim_start_matches('/')))
    };
    let kubelike = Arc::new(Kubelike {
        node_dir: (tree.v2_dir(&base), v1_memory(&base)),
        container_dir: (tree.v2_dir(&path), v1_memory(&path)),
        cache: Mutex::new(None),
        lie: AtomicBool::new(false),
        lie_from: Mutex::new(None),
    });

    let rt = runtime();
    let pki = make_pki("127.0.0.1").expect("pki");
    let fake = {
        let k = Arc::clone(&kubelike);
        rt.block_on(FakeKubelet::start_with(
            &pki,
            Arc::new(move || Reply {
                status: http::StatusCode::OK,
                body: k.body().into(),
                chunked: false,
            }),
        ))
        .expect("fake kubelet")
    };
    let tolerance = Tolerance {
        min_window: Duration::from_secs(3),
        ..Tolerance::default()
    };
    let check_every = Duration::from_secs(5);
    let mut sampler = Sampler::new(
        Options {
            cpu_source: CpuSourceChoice::Iterator,
            node_cgroup: base.clone(),
            ..Options::default()
        },
        Some(kubelet(&fake, Some(check_every), tolerance)),
        rt.handle().clone(),
    )
    .expect("sampler");
    sampler.wait_for_kubelet(true);
    let meta = NodeMetadata {
        labels: Default::default(),
        pods: vec![pod(&uid, "default", "burner", &[(&cid, "main")])],
    };

    // Samples every second, as the daemon does, until `checks` more
    // comparisons that include CPU (a first one has working sets only).
    let mut follow = |checks: usize| {
        let (mut done, mut seen) = (sampler.checks(), 0);
        for _ in 0..60 {
            let s = sampler.sample(&meta).expect("sample");
            assert_eq!(s.source, CpuSource::Iterator);
            if sampler.checks() > done {
                done = sampler.checks();
                let c = sampler.last_comparison().expect("comparison").clone();
                if c.compared == 4 {
                    seen += 1;
                    if seen == checks {
                        return c;
                    }
                }
            }
            thread::sleep(Duration::from_secs(1));
        }
        panic!(
            "not {checks} CPU comparisons in 60 samples: {:?}",
            sampler.last_comparison()
        );
    };

    let honest = follow(1);
    assert!(
        honest.disagreements.is_empty(),
        "an honest kubelet: {:?}",
        honest.disagreements
    );
    assert_eq!(honest.unpaired, 0);

    kubelike.lie.store(true, Ordering::SeqCst);
    // The lie starts inside the next window: the one after is all lie.
    let wrong = follow(2);
    let cpu: Vec<_> = wrong
        .disagreements
        .iter()
        .filter(|d| d.resource == Resource::Cpu)
        .map(|d| (d.what.as_str(), d.ours, d.kubelet))
        .collect();
    assert_eq!(
        cpu.iter().map(|d| d.0).collect::<Vec<_>>(),
        ["node", "default/burner/main"],
        "{:?}",
        wrong.disagreements
    );
    for (what, ours, kubelet) in cpu {
        let ratio = kubelet as f64 / ours as f64;
        assert!(
            (0.4..0.6).contains(&ratio),
            "{what}: kubelet {kubelet} vs ours {ours}"
        );
    }
    assert!(
        wrong
            .disagreements
            .iter()
            .all(|d| d.resource == Resource::Cpu),
        "working sets still agree: {:?}",
        wrong.disagreements
    );
    rt.block_on(fake.stop()).expect("stop");
}
