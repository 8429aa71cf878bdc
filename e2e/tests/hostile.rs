//! A lying agent against the real aggregator behind the real kube-apiserver:
//! node-b's own (valid, node-bound) token, reports that claim node-a's pod
//! `prod/web-0` at 900 cores. kube-apiserver binds `prod/web-0` to node-a,
//! so what kubectl and the HPA read stays node-a's figure, and the claim is
//! refused and logged. node-b itself claims 1,000 cores: its Node says 2
//! CPUs, so that is never served either.
//!
//! Needs root, BTF, cgroup v2 and iproute2; skips with a message elsewhere
//! (fails instead under NODEPULSE_REQUIRE_PRIVILEGED=1, as in CI).

mod common;

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::{duty, raw};
use e2e::{Cluster, Container, Options};
use export::{self, Outgoing};
use proto::v1::{
    ContainerName, ContainerSample, CpuSource, NodeMetadata, NodeReport, PodMetadata, PodSample,
    Usage,
};

#[test]
#[ignore = "entry point of burner child processes"]
fn burner_entry() {
    testkit::burner_main();
}

fn nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Served CPU of `prod/web-0` (cores), from the single-pod GET, the
/// namespace list and the label-selected list (the HPA's query).
fn served(c: &Cluster) -> Vec<f64> {
    let mut out = Vec::new();
    if let Ok(pod) = raw(c, "/apis/metrics.k8s.io/v1beta1/namespaces/prod/pods/web-0") {
        out.push(common::usage(&pod, "cpu").expect("cpu"));
    }
    for path in [
        "/apis/metrics.k8s.io/v1beta1/namespaces/prod/pods",
        "/apis/metrics.k8s.io/v1beta1/namespaces/prod/pods?labelSelector=app%3Dweb",
    ] {
        let list = raw(c, path).expect("list");
        let items = list["items"].as_array().cloned().unwrap_or_default();
        assert!(items.len() <= 1, "{path}: two web-0 entries: {list}");
        for item in items {
            out.push(common::usage(&item, "cpu").expect("cpu"));
        }
    }
    out
}

#[test]
fn a_node_cannot_report_another_nodes_pod() {
    let Some(h) = e2e::privileged("hostile") else {
        return;
    };
    let mut c = Cluster::start(h, Options::new("hostile")).expect("cluster");
    c.add_node("node-a", "2", "4Gi").expect("node-a");
    c.add_node("node-b", "2", "4Gi").expect("node-b");
    c.add_pod(
        "node-a",
        "prod",
        "web-0",
        &[("app", "web")],
        vec![Container::new("app", duty(0.2)).request("cpu", "100m")],
    )
    .expect("pod");
    let Some(_ours) = c.ours_or_skip("hostile", "the whole test") else {
        return;
    };
    c.start_aggregators().expect("aggregators");
    c.start_agent("node-a").expect("node-a's agent");
    c.wait_apiservices_available(Duration::from_secs(90))
        .expect("Available");
    c.wait_for("web-0 served", Duration::from_secs(60), |c| {
        Ok((served(c).len() == 3).then_some(()))
    })
    .expect("served");

    // node-b's agent, lying: its own valid token, node-a's pod's name.
    let token = c.work_dir().join("node-b.token");
    std::fs::write(&token, c.node_token("node-b").expect("token")).expect("token file");
    let config = c.agent_export_config(token);
    let metadata = Arc::new(NodeMetadata {
        labels: Default::default(),
        pods: vec![PodMetadata {
            uid: "11111111-2222-3333-4444-555555555555".into(),
            namespace: "prod".into(),
            name: "web-0".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            running: true,
            containers: vec![ContainerName {
                id: "f".repeat(64),
                name: "app".into(),
            }],
        }],
    });
    let cancel = tokio_util::sync::CancellationToken::new();
    let stop = cancel.clone();
    let liar = c
        .netns()
        .spawn("liar", move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let (tx, rx) = tokio::sync::watch::channel(None);
                let exporter = tokio::spawn(export::run(config, rx, stop.clone()));
                let start = SystemTime::now();
                let mut seq = 0u64;
                let mut every = tokio::time::interval(Duration::from_secs(1));
                while !stop.is_cancelled() {
                    tokio::select! {
                        _ = every.tick() => {}
                        () = stop.cancelled() => break,
                    }
                    seq += 1;
                    let now = SystemTime::now();
                    let secs = now.duration_since(start).unwrap_or_default().as_nanos() as u64;
                    let usage = |cores: u64| Usage {
                        cpu_ns: secs * cores,
                        memory_working_set_bytes: 64 << 20,
                        swap_bytes: None,
                        read_unix_nanos: None,
                    };
                    let report = NodeReport {
                        node: "node-b".into(),
                        sample_unix_nanos: nanos(now),
                        node_usage: Some(Usage {
                            memory_working_set_bytes: 1 << 30,
                            ..usage(1000)
                        }),
                        pods: vec![PodSample {
                            uid: metadata.pods[0].uid.clone(),
                            containers: vec![ContainerSample {
                                id: "f".repeat(64),
                                usage: Some(usage(900)),
                                start_unix_nanos: nanos(start),
                            }],
                        }],
                        metadata: None,
                        cpu_source: CpuSource::Cgroupfs as i32,
                        seq,
                        agent_epoch: 7,
                        metadata_continues: false,
                    };
                    tx.send_replace(Some(Arc::new(Outgoing {
                        report,
                        metadata: Arc::clone(&metadata),
                        metadata_version: 1,
                    })));
                }
                let _ = exporter.await;
            });
        })
        .expect("liar");

    // For 12 s (the binding check's five answers a second apart, and more):
    // never the liar's 900 cores, never two entries, never node-b beyond
    // its 2 CPUs.
    let until = Instant::now() + Duration::from_secs(12);
    let mut seen = 0;
    while Instant::now() < until {
        for cpu in served(&c) {
            assert!(cpu < 1.0, "web-0 served at {cpu} cores: the liar's figure");
            seen += 1;
        }
        if let Ok(node) = raw(&c, "/apis/metrics.k8s.io/v1beta1/nodes/node-b") {
            let cpu = common::usage(&node, "cpu").expect("cpu");
            assert!(
                cpu <= 2.0,
                "node-b served at {cpu} cores, beyond its 2 CPUs"
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(seen > 0, "web-0 was not served at all meanwhile");
    cancel.cancel();
    liar.join().expect("liar thread").expect("liar");
    // node-b's stream was taken (its token is valid), its claim refused.
    let logs: String = c
        .log_files()
        .iter()
        .filter(|f| f.display().to_string().contains("aggregator"))
        .map(|f| std::fs::read_to_string(f).unwrap_or_default())
        .collect();
    assert!(
        logs.contains("not bound to the node") && logs.contains("prod/web-0"),
        "the refusal is logged"
    );
}
