use std::time::{Duration, SystemTime};

use proto::v1::{
    ContainerName, ContainerSample, NodeMetadata, NodeReport, PodMetadata, PodSample, Usage,
};

use super::*;
use crate::api::selector::LabelSelector;
use crate::api::view::{Lookup, MetricsView};

const T0: u64 = 1_800_000_000;

fn at(ms: u64) -> i64 {
    ((T0 * 1000 + ms) * 1_000_000) as i64
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + 10)
}

fn usage(cpu_ms: u64, mem: u64) -> Option<Usage> {
    Some(Usage {
        cpu_ns: cpu_ms * 1_000_000,
        memory_working_set_bytes: mem,
        swap_bytes: None,
        read_unix_nanos: None,
    })
}

/// (uid, namespace, name, [(container id, container name)])
type PodSpec<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)]);

fn meta(pods: &[PodSpec<'_>]) -> NodeMetadata {
    NodeMetadata {
        labels: [("zone".to_string(), "a".to_string())].into(),
        pods: pods
            .iter()
            .map(|(uid, ns, name, containers)| PodMetadata {
                uid: uid.to_string(),
                namespace: ns.to_string(),
                name: name.to_string(),
                labels: [("app".to_string(), name.to_string())].into(),
                running: true,
                containers: containers
                    .iter()
                    .map(|(id, n)| ContainerName {
                        id: id.to_string(),
                        name: n.to_string(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn report(node: &str, ms: u64, cpu_ms: u64, containers: &[(&str, &str, u64)]) -> NodeReport {
    let mut pods: Vec<PodSample> = Vec::new();
    for (pod, id, cpu) in containers {
        let sample = ContainerSample {
            id: id.to_string(),
            usage: usage(*cpu, 1 << 20),
            start_unix_nanos: 1,
        };
        match pods.iter_mut().find(|p| p.uid == *pod) {
            Some(p) => p.containers.push(sample),
            None => pods.push(PodSample {
                uid: pod.to_string(),
                containers: vec![sample],
            }),
        }
    }
    NodeReport {
        node: node.into(),
        sample_unix_nanos: at(ms),
        node_usage: usage(cpu_ms, 8 << 30),
        pods,
        metadata: None,
        cpu_source: 1,
        seq: ms,
        agent_epoch: 1,
        metadata_continues: false,
    }
}

/// A store that asks whether agents' pods are bound to them; the receiver
/// gets the nodes asked about.
fn checking_store() -> (Store, tokio::sync::mpsc::UnboundedReceiver<Arc<str>>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let store = Store::new(Config {
        bindings: Some(tx),
        ..Config::default()
    });
    (store, rx)
}

/// Node `n1`'s first report, with metadata: pod `ns/p` of one container
/// `c1` ("a") at `cpu_ms` of CPU.
fn first_report_of_one_pod(store: &Store, cpu_ms: u64) {
    let mut first = report("n1", 0, 0, &[("u1", "c1", cpu_ms)]);
    first.metadata = Some(meta(&[("u1", "ns", "p", &[("c1", "a")])]));
    store.apply(&first, now()).expect("applies");
}

#[test]
fn node_and_pod_rates_after_two_points() {
    let store = Store::default();
    let mut first = report("n1", 0, 0, &[("u1", "c1", 0), ("u1", "c2", 0)]);
    first.metadata = Some(meta(&[(
        "u1",
        "default",
        "web",
        &[("c1", "app"), ("c2", "side")],
    )]));
    store.apply(&first, now()).expect("applies");
    assert_eq!(store.node("n1"), Lookup::NoMetrics);
    assert_eq!(store.pod("default", "web"), Lookup::NoMetrics);
    assert!(!store.has_data());

    store
        .apply(
            &report("n1", 1000, 2000, &[("u1", "c1", 500), ("u1", "c2", 250)]),
            now(),
        )
        .expect("applies");
    let Lookup::Found(node) = store.node("n1") else {
        panic!("node metrics");
    };
    assert_eq!(node.cpu_nanocores, 2_000_000_000);
    assert_eq!(node.window, Duration::from_secs(1));
    assert_eq!(node.labels.get("zone"), Some("a"));
    let Lookup::Found(pod) = store.pod("default", "web") else {
        panic!("pod metrics");
    };
    assert_eq!(
        pod.containers
            .iter()
            .map(|c| (&*c.name, c.cpu_nanocores))
            .collect::<Vec<_>>(),
        [("app", 500_000_000), ("side", 250_000_000)]
    );
    assert_eq!(store.pods(Some("default")).len(), 1);
    assert_eq!(store.pods(Some("other")).len(), 0);
    assert_eq!(store.pods(None).len(), 1);
    assert!(store.has_data());
    assert_eq!(store.pod("default", "nope"), Lookup::Unknown);
    assert_eq!(store.node("n2"), Lookup::Unknown);
}

#[test]
fn a_pod_is_complete_only_when_every_container_is() {
    let store = Store::default();
    let mut first = report("n1", 0, 0, &[("u1", "c1", 0)]);
    first.metadata = Some(meta(&[("u1", "ns", "p", &[("c1", "a"), ("c2", "b")])]));
    store.apply(&first, now()).expect("applies");
    store
        .apply(
            &report("n1", 1000, 10, &[("u1", "c1", 5), ("u1", "c2", 0)]),
            now(),
        )
        .expect("applies");
    // c2 has one point only.
    assert_eq!(store.pod("ns", "p"), Lookup::NoMetrics);
    assert!(store.pods(None).is_empty());
    store
        .apply(
            &report("n1", 2000, 20, &[("u1", "c1", 10), ("u1", "c2", 1)]),
            now(),
        )
        .expect("applies");
    assert!(matches!(store.pod("ns", "p"), Lookup::Found(_)));
}

/// A container the node's latest report does not carry is not running (it
/// exited and waits to restart, or is a finished init container): its pod
/// is served with the others, as the kubelet reports it to metrics-server.
#[test]
fn a_container_missing_from_the_latest_report_is_left_out_of_its_pod() {
    let store = Store::default();
    let mut first = report("n1", 0, 0, &[("u1", "c1", 0), ("u1", "c2", 0)]);
    first.metadata = Some(meta(&[("u1", "ns", "p", &[("c1", "a"), ("c2", "b")])]));
    store.apply(&first, now()).expect("applies");
    store
        .apply(
            &report("n1", 1000, 1000, &[("u1", "c1", 500), ("u1", "c2", 100)]),
            now(),
        )
        .expect("applies");
    // c2 crashed: its cgroup is gone from the report, its name still listed.
    store
        .apply(&report("n1", 2000, 2000, &[("u1", "c1", 1000)]), now())
        .expect("applies");
    let Lookup::Found(p) = store.pod("ns", "p") else {
        panic!("the running container is served");
    };
    assert_eq!(
        p.containers
            .iter()
            .map(|c| (&*c.name, c.cpu_nanocores))
            .collect::<Vec<_>>(),
        [("a", 500_000_000)]
    );
    assert_eq!(store.pods(Some("ns")).len(), 1);
    // Restarted: one point only, so the pod waits for its second.
    store
        .apply(
            &report("n1", 3000, 30, &[("u1", "c1", 1500), ("u1", "c2", 0)]),
            now(),
        )
        .expect("applies");
    assert_eq!(store.pod("ns", "p"), Lookup::NoMetrics);
    // No container running at all: nothing to serve.
    store
        .apply(&report("n1", 4000, 40, &[]), now())
        .expect("applies");
    assert_eq!(store.pod("ns", "p"), Lookup::NoMetrics);
    assert!(store.pods(None).is_empty());
}

/// A new agent process (another `agent_epoch`) or another CPU source counts
/// from another origin: eBPF counters from when the agent first saw a
/// cgroup, cgroupfs ones from its creation. Read against the old counters
/// that jump would be served as thousands of cores.
#[test]
fn a_new_agent_or_cpu_source_restarts_every_series_of_the_node() {
    let store = Store::default();
    first_report_of_one_pod(&store, 0);
    store
        .apply(&report("n1", 1000, 1000, &[("u1", "c1", 100)]), now())
        .expect("applies");
    assert!(matches!(store.pod("ns", "p"), Lookup::Found(_)));

    // Same agent, now on cgroupfs: an hour of the container's CPU appears.
    let mut cgroupfs = report("n1", 2000, 7_200_000, &[("u1", "c1", 3_600_000)]);
    cgroupfs.cpu_source = 2;
    store.apply(&cgroupfs, now()).expect("applies");
    assert_eq!(store.node("n1"), Lookup::NoMetrics);
    assert_eq!(store.pod("ns", "p"), Lookup::NoMetrics);
    let mut next = report("n1", 3000, 7_201_000, &[("u1", "c1", 3_600_200)]);
    next.cpu_source = 2;
    store.apply(&next, now()).expect("applies");
    let Lookup::Found(p) = store.pod("ns", "p") else {
        panic!("rate from the new source's two points");
    };
    assert_eq!(p.containers[0].cpu_nanocores, 200_000_000);
    let Lookup::Found(n) = store.node("n1") else {
        panic!("node rate");
    };
    assert_eq!(n.cpu_nanocores, 1_000_000_000);

    // A restarted agent, same source: its counters start near the old ones.
    let mut restarted = report("n1", 4000, 7_201_100, &[("u1", "c1", 3_600_300)]);
    restarted.cpu_source = 2;
    restarted.agent_epoch = 2;
    store.apply(&restarted, now()).expect("applies");
    assert_eq!(store.pod("ns", "p"), Lookup::NoMetrics);
    assert_eq!(store.stats().restarts.load(Ordering::Relaxed), 2);
    // Metadata and labels are kept across the restart.
    assert!(matches!(store.node("n1"), Lookup::NoMetrics));
}

/// Metadata comes on a stream's first report only. If that report was
/// refused (or the node evicted while its stream stayed open), later ones
/// could never be served: they are refused too, which ends the stream, and
/// the agent's next stream starts with the metadata.
#[test]
fn a_report_without_metadata_for_a_node_without_any_is_refused() {
    let store = Store::default();
    let r = report("n1", 0, 0, &[("u1", "c1", 0)]);
    assert_eq!(store.apply(&r, now()), Err(Reject::NoMetadata("n1".into())));
    assert!(store.node_names().is_empty(), "nothing applied");
    let mut future = report("n1", 60_000, 0, &[("u1", "c1", 0)]);
    future.metadata = Some(meta(&[("u1", "ns", "p", &[("c1", "a")])]));
    assert!(matches!(
        store.apply(&future, now()),
        Err(Reject::Future { .. })
    ));
    assert_eq!(
        store.apply(&report("n1", 1000, 0, &[("u1", "c1", 0)]), now()),
        Err(Reject::NoMetadata("n1".into()))
    );
    let mut again = report("n1", 2000, 0, &[("u1", "c1", 0)]);
    again.metadata = future.metadata.clone();
    store.apply(&again, now()).expect("applies");
    store
        .apply(&report("n1", 3000, 1000, &[("u1", "c1", 100)]), now())
        .expect("metadata known: applies");
    assert!(matches!(store.pod("ns", "p"), Lookup::Found(_)));
}

/// `--node-selector`: metrics-server scrapes only the matching nodes, so
/// neither the others nor their pods are served; a node whose labels come
/// to match (or stop matching) follows.
#[test]
fn only_nodes_the_selector_matches_are_served_with_their_pods() {
    let store = Store::new(Config {
        node_selector: LabelSelector::parse("zone=b").expect("selector"),
        ..Config::default()
    });
    let apply = |node: &str, zone: &str, ms: u64, cpu: u64, with_meta: bool| {
        let mut r = report(node, ms, cpu, &[(node, node, cpu / 2)]);
        if with_meta {
            let mut m = meta(&[(node, "ns", node, &[(node, "c")])]);
            m.labels.insert("zone".into(), zone.into());
            r.metadata = Some(m);
        }
        store.apply(&r, now()).expect("applies");
    };
    apply("in-b", "b", 0, 0, true);
    apply("in-a", "a", 0, 0, true);
    apply("in-b", "b", 1000, 1000, false);
    apply("in-a", "a", 1000, 1000, false);
    assert!(matches!(store.node("in-b"), Lookup::Found(_)));
    assert!(matches!(store.pod("ns", "in-b"), Lookup::Found(_)));
    assert_eq!(store.node("in-a"), Lookup::Unknown);
    assert_eq!(store.pod("ns", "in-a"), Lookup::Unknown);
    assert_eq!(store.nodes().len(), 1);
    assert_eq!(store.pods(None).len(), 1);
    assert_eq!(store.pods(Some("ns")).len(), 1);

    // Relabelled: in-b leaves the selection, in-a joins it.
    apply("in-b", "a", 2000, 2000, true);
    apply("in-a", "b", 2000, 2000, true);
    assert_eq!(store.node("in-b"), Lookup::Unknown);
    assert_eq!(store.pod("ns", "in-b"), Lookup::Unknown);
    assert!(store.pods(None).is_empty(), "in-a has one point only");
    assert!(!store.has_data());
    apply("in-a", "b", 3000, 3000, false);
    assert!(matches!(store.pod("ns", "in-a"), Lookup::Found(_)));
    assert_eq!(store.pods(None).len(), 1);
    assert!(store.has_data());
}

/// An agent that stops reporting (its node lost power) leaves a gap, not
/// its last numbers: metrics-server drops a node whose scrape failed.
#[test]
fn a_node_that_stopped_reporting_is_not_served_until_it_reports_again() {
    const FRESH: Duration = Duration::from_secs(2);
    let store = Store::new(Config {
        freshness: Freshness {
            windows: 0,
            at_least: FRESH,
        },
        ..Config::default()
    });
    first_report_of_one_pod(&store, 0);
    store
        .apply(&report("n1", 1000, 1000, &[("u1", "c1", 100)]), now())
        .expect("applies");
    assert!(matches!(store.node("n1"), Lookup::Found(_)));
    assert!(matches!(store.pod("ns", "p"), Lookup::Found(_)));
    assert_eq!(store.pods(None).len(), 1);

    // The time under test passing, not a wait for readiness.
    std::thread::sleep(FRESH + Duration::from_millis(200));
    assert_eq!(store.node("n1"), Lookup::NoMetrics);
    assert_eq!(store.pod("ns", "p"), Lookup::NoMetrics);
    assert!(store.nodes().is_empty());
    assert!(store.pods(None).is_empty());
    assert!(store.pods(Some("ns")).is_empty());
    assert!(store.pods_by_node(None, None).is_empty());

    store
        .apply(&report("n1", 2000, 2000, &[("u1", "c1", 200)]), now())
        .expect("applies");
    let Lookup::Found(p) = store.pod("ns", "p") else {
        panic!("served again");
    };
    assert_eq!(p.containers[0].cpu_nanocores, 100_000_000);
    assert_eq!(store.pods(None).len(), 1);
}

#[test]
fn pods_not_running_are_unknown() {
    let store = Store::default();
    let mut m = meta(&[("u1", "ns", "p", &[("c1", "a")])]);
    m.pods[0].running = false;
    let mut first = report("n1", 0, 0, &[("u1", "c1", 0)]);
    first.metadata = Some(m);
    store.apply(&first, now()).expect("applies");
    store
        .apply(&report("n1", 1000, 10, &[("u1", "c1", 5)]), now())
        .expect("applies");
    assert_eq!(store.pod("ns", "p"), Lookup::Unknown);
    assert!(store.pods(None).is_empty());
}

#[test]
fn restarted_container_gives_no_rate_until_its_second_point() {
    let store = Store::default();
    first_report_of_one_pod(&store, 900);
    store
        .apply(&report("n1", 1000, 1000, &[("u1", "c1", 1000)]), now())
        .expect("applies");
    assert!(matches!(store.pod("ns", "p"), Lookup::Found(_)));
    // Counter back to near zero: a restart.
    store
        .apply(&report("n1", 2000, 2000, &[("u1", "c1", 3)]), now())
        .expect("applies");
    assert_eq!(store.pod("ns", "p"), Lookup::NoMetrics);
    assert_eq!(store.stats().resets.load(Ordering::Relaxed), 1);
    store
        .apply(&report("n1", 3000, 3000, &[("u1", "c1", 503)]), now())
        .expect("applies");
    let Lookup::Found(p) = store.pod("ns", "p") else {
        panic!("rate again");
    };
    assert_eq!(p.containers[0].cpu_nanocores, 500_000_000);
}

#[test]
fn bad_reports_are_refused_whole_and_counted() {
    let store = Store::default();
    let mut good = report("n1", 0, 0, &[]);
    good.metadata = Some(meta(&[]));
    store.apply(&good, now()).expect("applies");

    let mut r = report("", 1000, 0, &[]);
    assert_eq!(store.apply(&r, now()), Err(Reject::NoNode));
    r.node = "Bad_Name".into();
    assert!(matches!(
        store.apply(&r, now()),
        Err(Reject::BadNodeName(_))
    ));
    let mut r = report("n1", 0, 0, &[]);
    r.sample_unix_nanos = -5;
    assert_eq!(store.apply(&r, now()), Err(Reject::NoTime(-5)));
    let r = report("n1", 60_000, 0, &[]);
    assert!(matches!(store.apply(&r, now()), Err(Reject::Future { .. })));
    let mut r = report("n1", 1000, 0, &[]);
    r.node_usage = None;
    assert_eq!(store.apply(&r, now()), Err(Reject::NoUsage));
    let many: Vec<(String, String)> = (0..2001)
        .map(|i| (format!("u{i}"), format!("c{i}")))
        .collect();
    let refs: Vec<(&str, &str, u64)> = many
        .iter()
        .map(|(u, c)| (u.as_str(), c.as_str(), 0))
        .collect();
    assert!(matches!(
        store.apply(&report("n1", 1000, 0, &refs), now()),
        Err(Reject::TooManyPods { .. })
    ));
    assert_eq!(store.stats().rejected.load(Ordering::Relaxed), 6);
    // Nothing of them was applied: still one point.
    assert_eq!(store.node("n1"), Lookup::NoMetrics);
}

/// One container id twice (in one pod, or in two) is a report no agent
/// makes: refused whole and counted, never served twice or mixed up.
#[test]
fn duplicate_container_ids_are_refused() {
    let store = Store::default();
    first_report_of_one_pod(&store, 0);
    for dup in [
        report("n1", 1000, 1000, &[("u1", "c1", 100), ("u1", "c1", 999)]),
        report("n1", 1000, 1000, &[("u1", "c1", 100), ("u2", "c1", 999)]),
    ] {
        let err = store.apply(&dup, now()).expect_err("refused");
        assert!(
            matches!(
                &err,
                Reject::Samples(limits::Problem::Duplicate {
                    what: "container id",
                    ..
                })
            ),
            "{err}"
        );
    }
    for m in [
        meta(&[("u1", "ns", "p", &[("c1", "a"), ("c1", "b")])]),
        meta(&[
            ("u1", "ns", "p", &[("c1", "a")]),
            ("u2", "ns", "q", &[("c1", "a")]),
        ]),
    ] {
        let mut r = report("n1", 1000, 1000, &[("u1", "c1", 100)]);
        r.metadata = Some(m);
        let err = store.apply(&r, now()).expect_err("refused");
        assert!(
            matches!(
                &err,
                Reject::Metadata(limits::Problem::Duplicate {
                    what: "container id",
                    ..
                })
            ),
            "{err}"
        );
    }
    assert_eq!(
        store.stats().rejected_by
            [Reject::Samples(limits::Problem::TooManySamples { count: 0, limit: 0 }).index()]
        .load(Ordering::Relaxed),
        2
    );
    // The first report's point is still the only one.
    assert_eq!(store.pod("ns", "p"), Lookup::NoMetrics);
}

#[test]
fn containers_gone_from_a_report_are_dropped() {
    let store = Store::default();
    first_report_of_one_pod(&store, 0);
    store
        .apply(&report("n1", 1000, 0, &[]), now())
        .expect("applies");
    store
        .apply(&report("n1", 2000, 0, &[("u1", "c1", 100)]), now())
        .expect("applies");
    // Came back: one point again, no rate from a stale point.
    assert_eq!(store.pod("ns", "p"), Lookup::NoMetrics);
}

#[test]
fn a_pod_moved_to_another_node_is_found_there() {
    let store = Store::default();
    let mut a = report("n1", 0, 0, &[("u1", "c1", 0)]);
    a.metadata = Some(meta(&[("u1", "ns", "p", &[("c1", "a")])]));
    store.apply(&a, now()).expect("applies");
    // Recreated on n2 with a new uid; n1 then reports it gone.
    let mut b = report("n2", 0, 0, &[("u2", "c9", 0)]);
    b.metadata = Some(meta(&[("u2", "ns", "p", &[("c9", "a")])]));
    store.apply(&b, now()).expect("applies");
    let mut a2 = report("n1", 1000, 0, &[]);
    a2.metadata = Some(meta(&[]));
    store.apply(&a2, now()).expect("applies");
    store
        .apply(&report("n2", 1000, 1000, &[("u2", "c9", 300)]), now())
        .expect("applies");
    let Lookup::Found(p) = store.pod("ns", "p") else {
        panic!("found on n2");
    };
    assert_eq!(p.containers[0].cpu_nanocores, 300_000_000);
}

#[test]
fn silent_nodes_are_evicted() {
    let store = Store::default();
    let mut r = report("n1", 0, 0, &[]);
    r.metadata = Some(meta(&[("u1", "ns", "p", &[("c1", "a")])]));
    store.apply(&r, now()).expect("applies");
    assert_eq!(store.evict(Duration::from_secs(60)), 0);
    assert_eq!(store.evict(Duration::ZERO), 1);
    assert_eq!(store.node("n1"), Lookup::Unknown);
    assert_eq!(store.pod("ns", "p"), Lookup::Unknown);
}

#[test]
fn the_sweep_notes_the_shortest_interval_of_the_nodes_it_keeps() {
    let store = Store::default();
    let with_metadata = |node: &str, ms| {
        let mut r = report(node, ms, 0, &[]);
        r.metadata = Some(meta(&[]));
        r
    };
    store
        .apply(&with_metadata("slow", 0), now())
        .expect("applies");
    store
        .apply(&with_metadata("fast", 0), now())
        .expect("applies");
    store.evict(Duration::from_secs(60));
    assert_eq!(store.shortest_interval(), None, "no node has two points");

    store
        .apply(&report("slow", 15_000, 10, &[]), now())
        .expect("applies");
    store.evict(Duration::from_secs(60));
    assert_eq!(store.shortest_interval(), Some(Duration::from_secs(15)));

    store
        .apply(&report("fast", 1_000, 10, &[]), now())
        .expect("applies");
    assert_eq!(
        store.shortest_interval(),
        Some(Duration::from_secs(15)),
        "as of the last sweep"
    );
    store.evict(Duration::from_secs(60));
    assert_eq!(store.shortest_interval(), Some(Duration::from_secs(1)));

    // Every node evicted: none left to say.
    store.evict(Duration::ZERO);
    assert_eq!(store.shortest_interval(), None);
}

#[test]
fn watchers_see_every_applied_report() {
    let store = Store::default();
    let mut rx = store.subscribe();
    let mut r = report("n1", 0, 0, &[]);
    r.metadata = Some(meta(&[]));
    store.apply(&r, now()).expect("applies");
    assert!(rx.has_changed().expect("open"));
    rx.borrow_and_update();
    let _ = store.apply(&report("", 0, 0, &[]), now());
    assert!(
        !rx.has_changed().expect("open"),
        "a refused report changes nothing"
    );
}

#[test]
fn metadata_over_the_limits_is_refused_whole_and_counted() {
    let store = Store::default();
    let mut first = report("n1", 0, 0, &[("u1", "c1", 0)]);
    first.metadata = Some(meta(&[("u1", "ns", "web", &[("c1", "a")])]));
    store.apply(&first, now()).expect("applies");

    let mut bad = report("n1", 1000, 10, &[("u1", "c1", 5)]);
    let mut m = meta(&[("u1", "ns", "web", &[("c1", "a")])]);
    m.pods[0]
        .labels
        .insert("app".into(), "v".repeat(limits::MAX_LABEL_NAME + 1));
    bad.metadata = Some(m);
    let err = store.apply(&bad, now()).expect_err("label value too long");
    assert!(matches!(err, Reject::Metadata(_)), "{err}");
    assert!(err.to_string().contains("pod ns/web"), "{err}");
    let mut bad = report("n1", 1000, 10, &[]);
    let mut m = meta(&[]);
    m.labels.insert("not a key".into(), "v".into());
    bad.metadata = Some(m);
    assert!(matches!(
        store.apply(&bad, now()),
        Err(Reject::Metadata(limits::Problem::LabelKey { .. }))
    ));
    assert_eq!(store.stats().bad_metadata.load(Ordering::Relaxed), 2);
    assert_eq!(store.stats().rejected.load(Ordering::Relaxed), 2);

    // Nothing of them was kept: the old names, and the store goes on.
    store
        .apply(&report("n1", 1000, 10, &[("u1", "c1", 5)]), now())
        .expect("applies");
    let Lookup::Found(p) = store.pod("ns", "web") else {
        panic!("pod metrics");
    };
    assert_eq!(p.labels.get("app"), Some("web"));
    let Lookup::Found(n) = store.node("n1") else {
        panic!("node metrics")
    };
    assert_eq!(n.labels.get("zone"), Some("a"));
}

#[test]
fn metadata_with_too_many_pods_is_refused() {
    let store = Store::new(Config {
        max_pods: 1,
        ..Config::default()
    });
    let mut r = report("n1", 0, 0, &[]);
    r.metadata = Some(meta(&[
        ("u1", "ns", "a", &[("c1", "a")]),
        ("u2", "ns", "b", &[("c2", "a")]),
    ]));
    assert_eq!(
        store.apply(&r, now()),
        Err(Reject::TooManyPods { count: 2, limit: 1 })
    );
}

#[test]
fn readiness_follows_nodes_with_metrics_through_eviction() {
    let store = Store::default();
    for node in ["n1", "n2"] {
        let mut r = report(node, 0, 0, &[]);
        r.metadata = Some(meta(&[]));
        store.apply(&r, now()).expect("applies");
    }
    assert!(!store.has_data(), "one point is no metrics");
    store
        .apply(&report("n1", 1000, 10, &[]), now())
        .expect("applies");
    assert!(store.has_data());
    assert_eq!(store.with_data.load(Ordering::Relaxed), 1);
    store
        .apply(&report("n2", 1000, 10, &[]), now())
        .expect("applies");
    // A counter reset takes n1's metrics away until its next point.
    store
        .apply(&report("n1", 2000, 1, &[]), now())
        .expect("applies");
    assert_eq!(store.with_data.load(Ordering::Relaxed), 1);
    assert_eq!(store.evict(Duration::ZERO), 2);
    assert!(!store.has_data());
    assert_eq!(store.with_data.load(Ordering::Relaxed), 0);
    // A report after eviction starts the node afresh.
    let mut r = report("n1", 3000, 0, &[]);
    r.metadata = Some(meta(&[]));
    store.apply(&r, now()).expect("applies");
    store
        .apply(&report("n1", 4000, 10, &[]), now())
        .expect("applies");
    assert!(store.has_data());
}

#[test]
fn repeated_strings_and_label_sets_are_kept_once_and_forgotten_when_unused() {
    let store = Store::default();
    let id = |n: u8| format!("{n:02x}").repeat(32);
    let (c1, c2) = (id(1), id(2));
    for (node, uid, c) in [("n1", "u1", &c1), ("n2", "u2", &c2)] {
        let mut r = report(node, 0, 0, &[(uid, c, 0)]);
        r.metadata = Some(meta(&[(uid, "shop", "web", &[(c, "app")])]));
        store.apply(&r, now()).expect("applies");
    }
    let shared = |node: &str| {
        let n = store.nodes.read().expect("lock").get(node).cloned();
        let n = n.expect("node");
        let state = lock(&n);
        let p = &state.pods[0];
        (
            Arc::clone(&p.namespace),
            Arc::clone(&p.labels.pairs()[0].0),
            Arc::clone(&p.containers[0].1),
            matches!(p.containers[0].0, ContainerId::Hex(_)),
            p.labels.clone(),
        )
    };
    let (a, b) = (shared("n1"), shared("n2"));
    assert!(Arc::ptr_eq(&a.0, &b.0), "namespace");
    assert!(Arc::ptr_eq(&a.1, &b.1), "label key");
    assert!(Arc::ptr_eq(&a.2, &b.2), "container name");
    assert!(a.3, "runtime ids are kept as bytes");
    assert!(std::ptr::eq(a.4.pairs(), b.4.pairs()), "label set");
    drop((a, b));
    // zone, a (node label); app, web (pod label); shop; "app" again as
    // the container name: one copy. Two label sets: the nodes', the pods'.
    assert_eq!(store.strings.len(), (5, 2));
    store.evict(Duration::ZERO);
    assert_eq!(store.strings.len(), (0, 0));
}

/// The kubelet source: each reading carries the time cAdvisor took it, which
/// lags the report and repeats while cAdvisor's cache is not refreshed.
#[test]
fn rates_are_computed_between_read_times() {
    let store = Store::default();
    let with_read = |ms: u64, read_ms: u64, cpu_ms: u64| {
        let mut r = report("n1", ms, cpu_ms, &[("u1", "c1", cpu_ms)]);
        let usages = std::iter::once(r.node_usage.as_mut()).chain(
            r.pods
                .iter_mut()
                .flat_map(|p| &mut p.containers)
                .map(|c| c.usage.as_mut()),
        );
        for u in usages.flatten() {
            u.read_unix_nanos = Some(at(read_ms));
        }
        r
    };
    let mut first = with_read(1000, 0, 0);
    first.metadata = Some(meta(&[("u1", "default", "web", &[("c1", "app")])]));
    store.apply(&first, now()).expect("applies");
    // The same cached reading sent again one report later: not a new point.
    store.apply(&with_read(2000, 0, 0), now()).expect("applies");
    assert_eq!(store.node("n1"), Lookup::NoMetrics);
    assert_eq!(store.stats().stale.load(Ordering::Relaxed), 2);
    // Refreshed: 3 s of readings (not the 2 s between reports) at 1 core.
    store
        .apply(&with_read(4000, 3000, 3000), now())
        .expect("applies");
    let Lookup::Found(node) = store.node("n1") else {
        panic!("node metrics");
    };
    assert_eq!(node.window, Duration::from_secs(3));
    assert_eq!(node.cpu_nanocores, 1_000_000_000);
    assert_eq!(
        node.timestamp,
        SystemTime::UNIX_EPOCH + Duration::from_nanos(at(3000) as u64)
    );
    let Lookup::Found(pod) = store.pod("default", "web") else {
        panic!("pod metrics");
    };
    assert_eq!(pod.containers[0].cpu_nanocores, 1_000_000_000);
    assert_eq!(pod.window, Duration::from_secs(3));

    // A reading after its report, or without a time, is refused whole.
    let rejected = store.stats().rejected.load(Ordering::Relaxed);
    let mut later = with_read(5000, 5000, 5000);
    later.pods[0].containers[0]
        .usage
        .as_mut()
        .expect("usage")
        .read_unix_nanos = Some(at(5001));
    assert_eq!(
        store.apply(&later, now()),
        Err(Reject::ReadTime {
            read: at(5001),
            sample: at(5000)
        })
    );
    let mut zero = with_read(5000, 5000, 5000);
    zero.node_usage.as_mut().expect("usage").read_unix_nanos = Some(0);
    assert!(matches!(
        store.apply(&zero, now()),
        Err(Reject::ReadTime { read: 0, .. })
    ));
    assert_eq!(store.stats().rejected.load(Ordering::Relaxed), rejected + 2);
    let Lookup::Found(node) = store.node("n1") else {
        panic!("node metrics");
    };
    assert_eq!(
        node.window,
        Duration::from_secs(3),
        "nothing of them applied"
    );
}

/// Names kube-apiserver would never have accepted (so no honest agent sends
/// them) are refused with the report, and nothing of them is served.
#[test]
fn names_kubernetes_would_refuse_are_refused() {
    let store = Store::default();
    let bad_namespaces = [
        "",
        "../../x",
        "a/b",
        "Prod",
        "a\nb",
        "esc\u{1b}[31m",
        "bel\u{7}",
    ];
    let bad_pod_names = ["", "../../x", "a/b", "Web", "a\nb", &"p".repeat(254)];
    let bad_container_names = ["", "a/b", "App", "a.b", "x\ty"];
    let bad_ids = ["", "a b", "x\n", "../c", &"f".repeat(129)];
    let mut cases: Vec<NodeMetadata> = Vec::new();
    for ns in bad_namespaces {
        cases.push(meta(&[("u1", ns, "p", &[("c1", "a")])]));
    }
    for name in bad_pod_names {
        cases.push(meta(&[("u1", "ns", name, &[("c1", "a")])]));
    }
    for c in bad_container_names {
        cases.push(meta(&[("u1", "ns", "p", &[("c1", c)])]));
    }
    for id in bad_ids {
        cases.push(meta(&[(id, "ns", "p", &[("c1", "a")])]));
        cases.push(meta(&[("u1", "ns", "p", &[(id, "a")])]));
    }
    for m in cases {
        let mut r = report("n1", 0, 0, &[]);
        r.metadata = Some(m.clone());
        let err = store.apply(&r, now()).expect_err("refused");
        assert!(matches!(err, Reject::Metadata(_)), "{m:?}: {err}");
        // The message escapes what it quotes: one line, bounded.
        let text = err.to_string();
        assert!(!text.contains('\n') && !text.contains('\u{1b}'), "{text:?}");
        assert!(text.len() < 400, "{}", text.len());
    }
    assert!(store.pods(None).is_empty());
    // Samples carry ids too.
    let mut ok = report("n1", 0, 0, &[]);
    ok.metadata = Some(meta(&[("u1", "ns", "p", &[("c1", "a")])]));
    store.apply(&ok, now()).expect("applies");
    let r = report("n1", 1000, 1000, &[("u1", "c\n1", 5)]);
    assert!(matches!(store.apply(&r, now()), Err(Reject::Samples(_))));
}

/// The limits that bound metadata bound the samples too: a report of
/// 100,000 container samples is refused, not stored.
#[test]
fn samples_are_bounded_like_metadata() {
    let store = Store::default();
    let mut first = report("n1", 0, 0, &[]);
    first.metadata = Some(meta(&[("u1", "ns", "p", &[("c1", "a")])]));
    store.apply(&first, now()).expect("applies");
    let ids: Vec<String> = (0..100_000).map(|i| format!("{i:064x}")).collect();
    let many: Vec<(&str, &str, u64)> = ids.iter().map(|id| ("u1", id.as_str(), 0)).collect();
    let err = store
        .apply(&report("n1", 1000, 1000, &many), now())
        .expect_err("refused");
    assert!(
        matches!(
            err,
            Reject::Samples(limits::Problem::TooManySamples { count: 100_000, .. })
        ),
        "{err}"
    );
    // Within the total but over the per-pod limit.
    let some: Vec<(&str, &str, u64)> = ids[..300].iter().map(|id| ("u1", id.as_str(), 0)).collect();
    let err = store
        .apply(&report("n1", 1000, 1000, &some), now())
        .expect_err("refused");
    assert!(
        matches!(
            err,
            Reject::Samples(limits::Problem::TooManyContainers { .. })
        ),
        "{err}"
    );
}

/// Figures no machine produces are not served: a working set of 2^64 − 1
/// bytes, a container burning 500 cores on a node that used one, a sample
/// from 1970.
#[test]
fn absurd_values_are_not_served() {
    let store = Store::default();
    first_report_of_one_pod(&store, 0);
    // The node itself claims more memory than any machine has: refused.
    let mut r = report("n1", 1000, 1000, &[("u1", "c1", 500)]);
    r.node_usage
        .as_mut()
        .expect("usage")
        .memory_working_set_bytes = u64::MAX;
    assert!(matches!(
        store.apply(&r, now()),
        Err(Reject::AbsurdMemory { .. })
    ));
    // A container claims more memory than its node: dropped.
    let mut r = report("n1", 1000, 1000, &[("u1", "c1", 500)]);
    r.pods[0].containers[0]
        .usage
        .as_mut()
        .expect("usage")
        .memory_working_set_bytes = u64::MAX;
    store.apply(&r, now()).expect("applies");
    assert_eq!(store.pod("ns", "p"), Lookup::NoMetrics);
    // 500 cores in a second on a node that used one.
    store
        .apply(&report("n1", 2000, 2000, &[("u1", "c1", 1_000)]), now())
        .expect("applies");
    store
        .apply(&report("n1", 3000, 3000, &[("u1", "c1", 501_000)]), now())
        .expect("applies");
    assert_eq!(
        store.pod("ns", "p"),
        Lookup::NoMetrics,
        "500 cores not served"
    );
    assert_eq!(store.stats().over_node.load(Ordering::Relaxed), 2);
    // Honest again: served from the next point on.
    store
        .apply(&report("n1", 4000, 4000, &[("u1", "c1", 501_500)]), now())
        .expect("applies");
    let Lookup::Found(p) = store.pod("ns", "p") else {
        panic!("served again");
    };
    assert_eq!(p.containers[0].cpu_nanocores, 500_000_000);
    // A sample from 1970, and one older than the aggregator allows.
    let mut r = report("n1", 5000, 5000, &[]);
    r.sample_unix_nanos = 1_000_000_000;
    assert!(matches!(store.apply(&r, now()), Err(Reject::Past { .. })));
    let mut r = report("n1", 5000, 5000, &[]);
    r.sample_unix_nanos = at(0) - 200_000_000_000;
    assert!(matches!(store.apply(&r, now()), Err(Reject::Past { .. })));
    let mut text = String::new();
    store.stats().render(&mut text);
    assert!(
        text.contains("nodepulse_store_rejected_reports_total{reason=\"past\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("nodepulse_store_rejected_reports_total{reason=\"absurd_memory\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("nodepulse_store_samples_over_node_total 2"),
        "{text}"
    );
}

/// Node A runs `prod/web-0`; node B claims a `prod/web-0` of its own at 900
/// cores. kube-apiserver binds only A's to A: the pod GET, the namespace
/// list and the HPA's label-selected list serve A's figures only, B's claim
/// is refused after the check's attempts and counted, and nothing is served
/// for a pod before its binding is known.
#[test]
fn a_node_cannot_stand_in_for_another_nodes_pod() {
    let (store, mut rx) = checking_store();
    let mut a = report("node-a", 0, 0, &[("ua", "ca", 0)]);
    a.metadata = Some(meta(&[("ua", "prod", "web-0", &[("ca", "app")])]));
    store.apply(&a, now()).expect("applies");
    let mut b = report("node-b", 0, 0, &[("ub", "cb", 0)]);
    b.metadata = Some(meta(&[("ub", "prod", "web-0", &[("cb", "app")])]));
    store.apply(&b, now()).expect("applies");
    store
        .apply(&report("node-a", 1000, 1000, &[("ua", "ca", 1000)]), now())
        .expect("applies");
    store
        .apply(
            &report("node-b", 1000, 900_000, &[("ub", "cb", 900_000)]),
            now(),
        )
        .expect("applies");
    // Asked about both nodes; nothing served before the answers.
    let mut asked: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
        .map(|n| n.to_string())
        .collect();
    asked.sort();
    assert_eq!(asked, ["node-a", "node-b"]);
    assert_eq!(store.pod("prod", "web-0"), Lookup::Unknown);
    assert!(store.pods(Some("prod")).is_empty());

    let bound_a: HashSet<String> = ["ua".to_string()].into();
    let nothing: HashSet<String> = HashSet::new();
    assert!(!store.record_bindings("node-a", Some(&bound_a)).pending);
    // kube-apiserver could not be asked: nothing decided.
    assert!(store.record_bindings("node-b", None).pending);
    for attempt in 1..=BINDING_ATTEMPTS {
        let recorded = store.record_bindings("node-b", Some(&nothing));
        assert_eq!(
            recorded.pending,
            attempt < BINDING_ATTEMPTS,
            "attempt {attempt}"
        );
        if attempt == BINDING_ATTEMPTS {
            assert_eq!(
                recorded.refused,
                [("prod/web-0".to_string(), "ub".to_string())]
            );
        }
    }
    let Lookup::Found(p) = store.pod("prod", "web-0") else {
        panic!("A's pod served");
    };
    assert_eq!(p.containers[0].cpu_nanocores, 1_000_000_000);
    let listed = store.pods(Some("prod"));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].containers[0].cpu_nanocores, 1_000_000_000);
    let selector = LabelSelector::parse("app=web-0").expect("selector");
    let selected: Vec<_> = store
        .pods(None)
        .into_iter()
        .filter(|p| selector.matches(&p.labels))
        .collect();
    assert_eq!(selected.len(), 1);
    assert_eq!(selected[0].containers[0].cpu_nanocores, 1_000_000_000);
    assert_eq!(store.stats().refused_pods.load(Ordering::Relaxed), 1);
    // B's later metadata does not undo the refusal, nor take the name.
    let mut b2 = report("node-b", 2000, 1_800_000, &[("ub", "cb", 1_800_000)]);
    b2.metadata = Some(meta(&[("ub", "prod", "web-0", &[("cb", "app")])]));
    store.apply(&b2, now()).expect("applies");
    assert!(rx.try_recv().is_err(), "nothing pending: not asked again");
    let Lookup::Found(p) = store.pod("prod", "web-0") else {
        panic!("still A's");
    };
    assert_eq!(p.containers[0].cpu_nanocores, 1_000_000_000);
}

/// Pods the aggregator lists itself (`Source::Watched`: its own watch of
/// the node's pods by `spec.nodeName`) are served from the first rate with
/// nothing asked of kube-apiserver, even one an agent's earlier claim left
/// pending; the Node's capacity that comes with them holds the rates.
#[test]
fn pods_the_aggregator_watched_itself_are_served_without_asking() {
    let (store, mut rx) = checking_store();
    first_report_of_one_pod(&store, 0);
    assert_eq!(
        rx.try_recv().ok().as_deref(),
        Some("n1"),
        "an agent's claim is asked about"
    );

    let watched = Source::Watched(Some(Capacity {
        cpu_nanocores: 2_000_000_000,
        memory_bytes: 16 << 30,
    }));
    let mut first = report("n1", 1000, 0, &[("u1", "c1", 0)]);
    first.agent_epoch = 2;
    first.metadata = Some(meta(&[("u1", "ns", "p", &[("c1", "a")])]));
    store.apply_from(&first, now(), watched).expect("applies");
    let mut second = report("n1", 2000, 1500, &[("u1", "c1", 1000)]);
    second.agent_epoch = 2;
    store.apply_from(&second, now(), watched).expect("applies");
    assert!(rx.try_recv().is_err(), "nothing asked");
    let Lookup::Found(p) = store.pod("ns", "p") else {
        panic!("served at once");
    };
    assert_eq!(p.containers[0].cpu_nanocores, 1_000_000_000);
    assert!(store.has_capacity("n1"));

    // 3 cores on a 2-CPU node: not served.
    let mut third = report("n1", 3000, 4500, &[("u1", "c1", 2000)]);
    third.agent_epoch = 2;
    store.apply_from(&third, now(), watched).expect("applies");
    assert!(
        matches!(store.node("n1"), Lookup::NoMetrics),
        "{:?}",
        store.node("n1")
    );
    assert_eq!(store.stats().over_capacity.load(Ordering::Relaxed), 1);
}

/// Node `n1` has 2 CPUs and 16 GiB. Rates beyond its CPUs are not served,
/// whether recorded before its capacity was known or after; a working set
/// beyond its memory is refused whole; honest figures around them are served.
#[test]
fn a_node_cannot_claim_more_than_its_capacity() {
    let store = Store::default();
    let cores = |n: u64| n * 1_000_000_000;
    let node_cpu = |store: &Store| match store.node("n1") {
        Lookup::Found(n) => Some(n.cpu_nanocores),
        _ => None,
    };
    let pod_cpu = |store: &Store| match store.pod("ns", "p") {
        Lookup::Found(p) => Some(p.containers[0].cpu_nanocores),
        _ => None,
    };
    let over_capacity = |store: &Store| store.stats().over_capacity.load(Ordering::Relaxed);
    first_report_of_one_pod(&store, 0);
    store
        .apply(
            &report("n1", 1000, 900_000, &[("u1", "c1", 900_000)]),
            now(),
        )
        .expect("applies");
    assert_eq!(node_cpu(&store), Some(cores(900)), "no capacity known yet");
    assert!(!store.has_capacity("n1"));
    store.record_capacity(
        "n1",
        Capacity {
            cpu_nanocores: cores(2),
            memory_bytes: 16 << 30,
        },
    );
    assert!(store.has_capacity("n1"));
    assert_eq!(node_cpu(&store), None, "900 cores on a 2-CPU node");
    assert_eq!(pod_cpu(&store), None);
    assert_eq!(over_capacity(&store), 2);
    assert!(!store.has_data(), "the node no longer counts as serving");

    // 1.5 cores on the node, 1 in the container: served.
    store
        .apply(
            &report("n1", 2000, 901_500, &[("u1", "c1", 901_000)]),
            now(),
        )
        .expect("applies");
    assert_eq!(node_cpu(&store), Some(1_500_000_000));
    assert_eq!(pod_cpu(&store), Some(cores(1)));
    // The node claims 3 cores: not served; its honest container still is.
    store
        .apply(
            &report("n1", 3000, 904_500, &[("u1", "c1", 902_000)]),
            now(),
        )
        .expect("applies");
    assert_eq!(node_cpu(&store), None);
    assert_eq!(pod_cpu(&store), Some(cores(1)));
    assert_eq!(over_capacity(&store), 3);
    // The node at 2 cores, its container at 2.5: the node is served, the
    // container is not.
    store
        .apply(
            &report("n1", 4000, 906_500, &[("u1", "c1", 904_500)]),
            now(),
        )
        .expect("applies");
    assert_eq!(node_cpu(&store), Some(cores(2)));
    assert_eq!(pod_cpu(&store), None);
    assert_eq!(over_capacity(&store), 4);
    assert_eq!(store.stats().over_node.load(Ordering::Relaxed), 0);

    // 17 GiB on a 16 GiB node: refused whole, what was served stays.
    let mut r = report("n1", 5000, 908_500, &[("u1", "c1", 905_000)]);
    r.node_usage
        .as_mut()
        .expect("usage")
        .memory_working_set_bytes = 17 << 30;
    assert!(matches!(
        store.apply(&r, now()),
        Err(Reject::OverCapacity { bytes, capacity }) if bytes == 17 << 30 && capacity == 16 << 30
    ));
    assert_eq!(node_cpu(&store), Some(cores(2)));
    let mut text = String::new();
    store.stats().render(&mut text);
    assert!(
        text.contains("nodepulse_store_rejected_reports_total{reason=\"over_capacity\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("nodepulse_store_samples_over_capacity_total 4"),
        "{text}"
    );
}

mod invariants {
    //! Whatever agents send, in any order: nothing served beyond a node's
    //! capacity, beyond what any machine has, or a container beyond the
    //! node it ran on in the same window.

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Copy, Debug)]
    enum Cpu {
        /// Nanoseconds on top of the last reading: honest, if fast.
        After(u64),
        /// Any counter at all: resets, jumps to 2^64−1.
        Absolute(u64),
    }

    impl Cpu {
        fn next(self, last: u64) -> u64 {
            match self {
                Cpu::After(d) => last.saturating_add(d),
                Cpu::Absolute(v) => v,
            }
        }
    }

    fn cpu() -> impl Strategy<Value = Cpu> {
        prop_oneof![
            4 => (0..3_000_000_000u64).prop_map(Cpu::After),
            1 => any::<u64>().prop_map(Cpu::After),
            1 => any::<u64>().prop_map(Cpu::Absolute),
        ]
    }

    fn memory() -> impl Strategy<Value = u64> {
        prop_oneof![4 => 0..(20u64 << 30), 1 => any::<u64>()]
    }

    #[derive(Clone, Debug)]
    struct Step {
        second: bool,
        after_ms: u64,
        node_cpu: Cpu,
        container_cpu: Cpu,
        node_memory: u64,
        container_memory: u64,
    }

    fn step() -> impl Strategy<Value = Step> {
        (any::<bool>(), 0..2_500u64, cpu(), cpu(), memory(), memory()).prop_map(
            |(second, after_ms, node_cpu, container_cpu, node_memory, container_memory)| Step {
                second,
                after_ms,
                node_cpu,
                container_cpu,
                node_memory,
                container_memory,
            },
        )
    }

    fn sample(node: &str, time_ns: i64, cpu: [u64; 2], memory: [u64; 2]) -> NodeReport {
        let usage = |cpu_ns, memory_working_set_bytes| {
            Some(Usage {
                cpu_ns,
                memory_working_set_bytes,
                swap_bytes: None,
                read_unix_nanos: None,
            })
        };
        NodeReport {
            node: node.into(),
            sample_unix_nanos: time_ns,
            node_usage: usage(cpu[0], memory[0]),
            pods: vec![PodSample {
                uid: format!("uid-{node}"),
                containers: vec![ContainerSample {
                    id: format!("c-{node}"),
                    usage: usage(cpu[1], memory[1]),
                    start_unix_nanos: 1,
                }],
            }],
            metadata: None,
            cpu_source: 1,
            seq: 0,
            agent_epoch: 1,
            metadata_continues: false,
        }
    }

    proptest! {
        #[test]
        fn nothing_absurd_is_ever_served(steps in prop::collection::vec(step(), 1..40)) {
            let store = Store::default();
            let nodes = ["n1", "n2"];
            let mut time_ns = at(0);
            let mut last = [[0u64; 2]; 2];
            for node in nodes {
                let mut first = sample(node, time_ns, [0, 0], [1 << 30, 1 << 20]);
                first.metadata = Some(meta(&[(
                    &format!("uid-{node}"),
                    "ns",
                    &format!("p-{node}"),
                    &[(&format!("c-{node}"), "app")],
                )]));
                store.apply(&first, now()).expect("first report");
            }
            // n1's Node says 2 CPUs and 16 GiB; n2's capacity is unknown.
            let capacity = Capacity { cpu_nanocores: 2_000_000_000, memory_bytes: 16 << 30 };
            store.record_capacity("n1", capacity);

            for s in steps {
                let i = usize::from(s.second);
                time_ns += (s.after_ms * 1_000_000) as i64;
                let cpu = [s.node_cpu.next(last[i][0]), s.container_cpu.next(last[i][1])];
                let report = sample(nodes[i], time_ns, cpu, [s.node_memory, s.container_memory]);
                let at_now = SystemTime::UNIX_EPOCH + Duration::from_nanos(time_ns as u64);
                if store.apply(&report, at_now).is_ok() {
                    last[i] = cpu;
                }

                let served_nodes = store.nodes();
                for n in &served_nodes {
                    prop_assert!(n.memory_bytes <= MAX_MEMORY_BYTES, "{:?}", n);
                    prop_assert!(n.cpu_nanocores <= rate::MAX_CORES * 1_000_000_000, "{:?}", n);
                    if &*n.name == "n1" {
                        prop_assert!(n.cpu_nanocores <= capacity.cpu_ceiling(), "{:?}", n);
                        prop_assert!(n.memory_bytes <= capacity.memory_ceiling(), "{:?}", n);
                    }
                }
                for p in store.pods(None) {
                    let node = if &*p.name == "p-n1" { "n1" } else { "n2" };
                    let c = &p.containers[0];
                    prop_assert!(c.cpu_nanocores <= rate::MAX_CORES * 1_000_000_000, "{:?}", p);
                    if node == "n1" {
                        prop_assert!(c.cpu_nanocores <= capacity.cpu_ceiling(), "{:?}", p);
                        prop_assert!(c.memory_bytes <= capacity.memory_ceiling(), "{:?}", p);
                    }
                    // Over the same window as its node: within the node's figures.
                    if let Some(n) = served_nodes
                        .iter()
                        .find(|n| &*n.name == node && n.timestamp == p.timestamp && n.window == p.window)
                    {
                        let slack = |v: u64, fixed: u64| (v as f64 * (1.0 + CONTAINER_SLACK)) as u64 + fixed;
                        prop_assert!(c.cpu_nanocores <= slack(n.cpu_nanocores, CONTAINER_SLACK_NANOCORES), "{:?} on {:?}", p, n);
                        prop_assert!(c.memory_bytes <= slack(n.memory_bytes, CONTAINER_SLACK_BYTES), "{:?} on {:?}", p, n);
                    }
                }
            }
        }
    }
}

#[test]
fn gauges_count_fresh_and_silent_nodes_and_their_pods() {
    let store = Store::new(Config {
        freshness: Freshness {
            windows: 0,
            at_least: Duration::ZERO,
        },
        ..Config::default()
    });
    first_report_of_one_pod(&store, 0);
    let mut text = String::new();
    store.render_gauges(&mut text);
    // A zero freshness bound: the node is silent as soon as it reported.
    for line in [
        "nodepulse_store_nodes{state=\"fresh\"} 0",
        "nodepulse_store_nodes{state=\"stale\"} 1",
        "nodepulse_store_pods 0",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
    }
    assert!(text.contains("\nnodepulse_store_node_report_age_seconds{node=\"n1\"} 0."));

    let store = Store::default();
    first_report_of_one_pod(&store, 0);
    let mut text = String::new();
    store.render_gauges(&mut text);
    for line in [
        "nodepulse_store_nodes{state=\"fresh\"} 1",
        "nodepulse_store_nodes{state=\"stale\"} 0",
        "nodepulse_store_pods 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
    }
}

/// Another origin of a node's figures stands only while it is fresh (what
/// ingest asks before taking a replica's forwarded read), and only the
/// agent's reports count as the agent reporting (what a kubelet loop asks
/// before it holds its reads).
#[test]
fn another_origin_stands_only_while_it_is_fresh() {
    let store = Store::new(Config {
        freshness: Freshness {
            windows: 0,
            at_least: Duration::from_millis(200),
        },
        ..Config::default()
    });
    assert!(
        !store.fed_elsewhere("n1", 7),
        "an unknown node is fed by nobody"
    );
    first_report_of_one_pod(&store, 0);
    assert!(store.fed_elsewhere("n1", 7), "the agent (epoch 1) reports");
    assert!(
        !store.fed_elsewhere("n1", 1),
        "its own origin is not elsewhere"
    );
    assert!(store.agent_reports("n1"));
    std::thread::sleep(Duration::from_millis(250));
    assert!(!store.fed_elsewhere("n1", 7), "the agent fell silent");
    assert!(!store.agent_reports("n1"), "silent");
    // Read from its kubelet (here or by another replica): fresh, not the agent.
    let mut read = report("n1", 0, 0, &[("u1", "c1", 0)]);
    read.agent_epoch = 7;
    read.metadata = Some(meta(&[("u1", "ns", "p", &[("c1", "a")])]));
    store
        .apply_from(&read, now(), Source::Watched(None))
        .expect("applies");
    assert!(store.fed_elsewhere("n1", 8));
    assert!(!store.agent_reports("n1"), "a kubelet's figures");
    // The stream that brought them ended: fresh, but in no one's way.
    store.origin_ended("n1", 6);
    assert!(
        store.fed_elsewhere("n1", 8),
        "another origin's end says nothing"
    );
    store.origin_ended("n1", 7);
    assert!(!store.fed_elsewhere("n1", 8));
    store
        .apply_from(&read, now(), Source::Watched(None))
        .expect("applies");
    assert!(store.fed_elsewhere("n1", 8), "reported again: it stands");
}
