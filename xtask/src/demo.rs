//! `cargo xtask demo`: the whole product on this machine, and the real
//! `kubectl top` every few seconds. Ctrl-C stops it and removes everything it
//! made.
//!
//! By default, nodepulse as users run it: a real control plane (etcd,
//! kube-apiserver with the aggregation layer, kube-controller-manager,
//! kube-scheduler, CoreDNS) and a real node (kubelet, containerd, runc,
//! kube-proxy) running `deploy/components.yaml` from images built here, and
//! pods of a burner image with known loads. `--simulated`: two simulated
//! nodes whose pods are real processes burning known CPU and holding known
//! memory in kubelet-style cgroups, with aggregators and agents run as
//! processes.
use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use e2e::{
    cluster::{Cluster, Container, Options, dies_with_parent},
    manifests,
};
use testkit::{Burn, Launcher};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Waits up to `d`, returning early (false) on Ctrl-C.
fn pause(d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if STOP.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    !STOP.load(Ordering::SeqCst)
}

#[allow(clippy::print_stdout)]
fn show(c: &Cluster, title: &str, args: &[&str]) -> Result<()> {
    let out = c.kubectl(args)?;
    println!("$ kubectl {}   # {title}", args.join(" "));
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        print!("{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

pub fn run(seconds: Option<u64>, simulated: bool) -> Result<()> {
    let Some(hierarchy) = e2e::privileged("demo") else {
        bail!("the demo creates cgroups, network namespaces and loads eBPF: run it as root");
    };
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    if simulated {
        simulated_nodes(hierarchy, seconds)
    } else {
        real_node(hierarchy, seconds)
    }
}

/// Shows the APIServices, `kubectl top nodes` and `kubectl top pods` every
/// 3 s until Ctrl-C or `seconds`.
fn show_until_stopped(c: &Cluster, seconds: Option<u64>, pods_title: &str) -> Result<()> {
    let started = Instant::now();
    eprintln!("ready: Ctrl-C stops the demo and removes everything it made");
    loop {
        show(
            c,
            "APIServices",
            &[
                "get",
                "apiservices",
                "v1.metrics.k8s.io",
                "v1beta1.metrics.k8s.io",
            ],
        )?;
        show(c, "nodes", &["top", "nodes"])?;
        show(c, pods_title, &["top", "pods", "-A", "--containers"])?;
        if seconds.is_some_and(|s| started.elapsed() >= Duration::from_secs(s))
            || !pause(Duration::from_secs(3))
        {
            return Ok(());
        }
    }
}

fn real_node(hierarchy: agent::cgroup::Hierarchy, seconds: Option<u64>) -> Result<()> {
    eprintln!("starting etcd, kube-apiserver, kube-controller-manager and kube-scheduler …");
    let mut c = Cluster::start(hierarchy, Options::real_nodes("demo"))?;
    eprintln!(
        "building the images, starting a real node (containerd, kubelet, kube-proxy) and CoreDNS …"
    );
    c.add_real_node("node-a")?;
    eprintln!(
        "installing nodepulse: deploy/README.md's ingest TLS recipe, then kubectl apply -f deploy/components.yaml …"
    );
    c.install_deploy()?;
    show(
        &c,
        "nodepulse's pods",
        &["-n", "kube-system", "get", "pods", "-o", "wide"],
    )?;
    let image = c.image_reference(&images::catalog::BURNER)?;
    for ns in ["shop", "batch"] {
        c.kubectl_ok(&["create", "namespace", ns])?;
    }
    let pods = [
        manifests::burner_pod(
            &image,
            "shop",
            "web",
            &[("app", &["--cpu=400m"]), ("cache", &["--memory=96Mi"])],
        ),
        manifests::burner_pod(
            &image,
            "batch",
            "report",
            &[
                ("worker", &["--cpu=250m"]),
                ("sidecar", &["--cpu=50m", "--memory=16Mi"]),
            ],
        ),
    ];
    c.apply(&manifests::list(pods.to_vec()))?;
    c.wait_for("the demo's pods served", Duration::from_secs(90), |c| {
        let out = c.kubectl(&["top", "pods", "-A", "--no-headers"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok((out.status.success() && text.contains("web") && text.contains("report")).then_some(()))
    })?;
    show_until_stopped(
        &c,
        seconds,
        "pods (web 400m + 96Mi, report 250m + 50m; nodepulse's own in kube-system)",
    )?;
    eprintln!("stopping; removing processes, mounts, cgroups and the network namespace …");
    drop(c);
    eprintln!("demo ended; nothing left behind");
    Ok(())
}

fn simulated_nodes(hierarchy: agent::cgroup::Hierarchy, seconds: Option<u64>) -> Result<()> {
    let mut opts = Options::new("demo");
    opts.launcher = dies_with_parent(Launcher {
        program: std::env::current_exe().context("xtask path")?,
        args: vec!["burn".into()],
    });
    eprintln!("starting etcd, kube-apiserver and kube-controller-manager …");
    let mut c = Cluster::start(hierarchy, opts)?;
    c.add_node("node-a", "2", "8Gi")?;
    c.add_node("node-b", "2", "8Gi")?;
    let duty = |fraction: f64| Burn::Duty {
        fraction,
        period_ms: 20,
    };
    c.add_pod(
        "node-a",
        "shop",
        "web",
        &[("app", "web")],
        vec![Container::new("app", duty(0.4)).request("cpu", "500m")],
    )?;
    c.add_pod(
        "node-a",
        "shop",
        "cache",
        &[("app", "cache")],
        vec![Container::new(
            "redis",
            Burn::Memory {
                mib: 96,
                cache_mib: 32,
                file: std::env::temp_dir().join(format!("nodepulse-demo-{}", std::process::id())),
            },
        )],
    )?;
    c.add_pod(
        "node-b",
        "batch",
        "report",
        &[("app", "report")],
        vec![
            Container::new("worker", duty(0.25)),
            Container::new("sidecar", duty(0.05)),
        ],
    )?;
    eprintln!("starting 2 aggregator replicas and 2 agents …");
    c.start_aggregators()?;
    c.start_agents()?;
    c.wait_apiservices_available(Duration::from_secs(90))?;
    c.wait_for("pod metrics", Duration::from_secs(60), |c| {
        let out = c.kubectl(&["top", "pods", "-A", "--no-headers"])?;
        Ok(
            (out.status.success() && String::from_utf8_lossy(&out.stdout).lines().count() >= 3)
                .then_some(()),
        )
    })?;
    show_until_stopped(&c, seconds, "pods (web 400m, report 250m+50m, cache 96Mi)")?;
    eprintln!("stopping; removing processes, cgroups and the network namespace …");
    drop(c);
    let _ = std::fs::remove_file(
        std::env::temp_dir().join(format!("nodepulse-demo-{}", std::process::id())),
    );
    eprintln!("demo ended; nothing left behind");
    Ok(())
}
