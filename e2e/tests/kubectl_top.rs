//! The real upstream kubectl against nodepulse behind the real kube-apiserver:
//! both APIServices Available, discovery, `kubectl top node|pod` in every
//! form a user types, `kubectl get --raw` on the five paths of both versions,
//! `kubectl get podmetrics|nodemetrics` (server-side Table), and the numbers:
//! CPU within 5 % of the burners' known load, memory within 5 % of what the
//! memory burners hold, a node's CPU the sum of its pods'.
//!
//! Needs root, BTF, cgroup v2 and iproute2; skips with a message elsewhere
//! (fails instead under NODEPULSE_REQUIRE_PRIVILEGED=1, as in CI).

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use common::{
    MIB, cgroup_cpu_seconds, cgroup_working_set, container_usage, duty, item_names, now_secs,
    parse_go_duration, parse_timestamp, quantity, raw, rel_err, rows_by, table, usage,
};
use e2e::{Cluster, Container, Options, PodInfo};
use serde_json::Value;
use testkit::{Burn, stats::median};

/// Not a test: the body of burner processes the harness spawns (testkit).
#[test]
#[ignore = "entry point of burner child processes"]
fn burner_entry() {
    testkit::burner_main();
}

/// What a container is known to use: cores, or MiB held.
#[derive(Clone, Copy, Debug)]
enum Load {
    Cpu(f64),
    Mem(u64),
}

/// The simulated workload: (node, namespace, pod, labels, [(container, load)]).
/// CPU demand 0.5 + 0.2 + 0.25 = 0.95 cores of the machine's 2, so that the
/// control plane, kubectl and nodepulse never make the burners wait.
#[allow(clippy::type_complexity)]
const WORKLOAD: &[(&str, &str, &str, &[(&str, &str)], &[(&str, Load)])] = &[
    (
        "node-a",
        "shop",
        "web-1",
        &[("app", "web"), ("tier", "front")],
        &[("app", Load::Cpu(0.5)), ("cache", Load::Mem(96))],
    ),
    (
        "node-a",
        "shop",
        "web-2",
        &[("app", "web")],
        &[("app", Load::Cpu(0.2))],
    ),
    (
        "node-b",
        "batch",
        "worker-1",
        &[("app", "batch")],
        &[("worker", Load::Cpu(0.25))],
    ),
    (
        "node-b",
        "batch",
        "store-1",
        &[("app", "store")],
        &[("main", Load::Mem(64))],
    ),
];

const VERSIONS: [&str; 2] = ["v1beta1", "v1"];
const TOLERANCE: f64 = 0.05;

fn out_text(c: &Cluster, args: &[&str]) -> String {
    let text = c
        .kubectl_ok(args)
        .unwrap_or_else(|e| panic!("kubectl {}: {e:#}", args.join(" ")));
    eprintln!("$ kubectl {}\n{}", args.join(" "), text.trim_end());
    text
}

/// Rows of `kubectl top …` keyed by `key` columns.
fn top(
    c: &Cluster,
    args: &[&str],
    want_header: &[&str],
    key: &[&str],
) -> BTreeMap<String, BTreeMap<String, String>> {
    let text = out_text(c, args);
    let (header, rows) = table(&text);
    assert_eq!(header, want_header, "kubectl {}", args.join(" "));
    rows_by(&header, &rows, key).expect("table")
}

fn keys(rows: &BTreeMap<String, BTreeMap<String, String>>) -> BTreeSet<String> {
    rows.keys().cloned().collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Checks the shape every metrics item has (contract §1.1) and returns its
/// timestamp (seconds since the epoch).
fn check_item(item: &Value, what: &str) -> u64 {
    let ts = item["timestamp"].as_str().unwrap_or_default();
    let ts = parse_timestamp(ts).unwrap_or_else(|| panic!("{what}: timestamp {item}"));
    let now = now_secs();
    assert!(
        (ts as f64) <= now + 1.0 && (ts as f64) >= now - 30.0,
        "{what}: timestamp {ts} is not recent (now {now:.0})"
    );
    let window = item["window"].as_str().unwrap_or_default();
    let window = parse_go_duration(window).unwrap_or_else(|| panic!("{what}: window {item}"));
    assert!(
        window > 0.5 && window <= 5.0,
        "{what}: window {window}s for a 1 s resolution"
    );
    assert!(
        item["metadata"]["creationTimestamp"]
            .as_str()
            .and_then(parse_timestamp)
            .is_some(),
        "{what}: creationTimestamp {item}"
    );
    for key in ["uid", "resourceVersion", "selfLink", "annotations"] {
        assert!(item["metadata"][key].is_null(), "{what}: metadata.{key}");
    }
    ts
}

#[test]
fn kubectl_top_and_raw_paths_with_the_real_kubectl() {
    let Some(h) = e2e::privileged("kubectl_top") else {
        return;
    };
    let t0 = Instant::now();
    let mut c = Cluster::start(h, Options::new("top")).expect("cluster starts");
    eprintln!("control plane ready in {:.1?}", t0.elapsed());

    c.add_node("node-a", "4", "8Gi").expect("node-a");
    c.add_node("node-b", "2", "4Gi").expect("node-b");
    let cache_dir = c.work_dir().join("mem");
    std::fs::create_dir_all(&cache_dir).expect("mem dir");
    let mut pods: Vec<PodInfo> = Vec::new();
    for (node, ns, name, labels, containers) in WORKLOAD {
        let containers = containers
            .iter()
            .map(|(cname, load)| match *load {
                Load::Cpu(cores) => Container::new(cname, duty(cores))
                    .request("cpu", &format!("{}m", (cores * 1000.0) as u64)),
                Load::Mem(mib) => Container::new(
                    cname,
                    Burn::Memory {
                        mib,
                        cache_mib: 0,
                        file: cache_dir.join(format!("{name}-{cname}")),
                    },
                )
                .request("memory", &format!("{}Mi", mib * 2)),
            })
            .collect();
        pods.push(
            c.add_pod(node, ns, name, labels, containers)
                .unwrap_or_else(|e| panic!("pod {ns}/{name}: {e:#}")),
        );
    }
    let all: Vec<String> = pods
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();

    let Some(_ours) = c.ours_or_skip("kubectl_top", "the whole test") else {
        return;
    };
    let t = Instant::now();
    c.start_aggregators().expect("aggregators");
    c.start_agents().expect("agents");
    c.wait_apiservices_available(Duration::from_secs(90))
        .expect("metrics.k8s.io Available");
    eprintln!("APIServices Available {:.1?} after start", t.elapsed());
    common::wait_all_served(&mut c, &all, &["node-a", "node-b"], Duration::from_secs(60))
        .expect("every pod and node served");
    eprintln!("every pod and node served {:.1?} after start", t.elapsed());

    // --- registration and discovery, as kubectl shows them -----------------
    let apiservices = top(
        &c,
        &["get", "apiservices"],
        &["NAME", "SERVICE", "AVAILABLE", "AGE"],
        &["NAME"],
    );
    for v in VERSIONS {
        let row = &apiservices[&format!("{v}.metrics.k8s.io")];
        assert_eq!(row["SERVICE"], "kube-system/nodepulse");
        assert_eq!(row["AVAILABLE"], "True", "{v}.metrics.k8s.io");
    }
    // kube-aggregator merges our discovery into /apis as the APIServices turn
    // Available: moments after, not at once.
    let t = Instant::now();
    c.wait_for(
        "api-versions lists metrics.k8s.io",
        Duration::from_secs(15),
        |c| {
            let versions = c.kubectl_ok(&["api-versions"])?;
            Ok(VERSIONS
                .iter()
                .all(|v| versions.lines().any(|l| l == format!("metrics.k8s.io/{v}")))
                .then_some(()))
        },
    )
    .expect("api-versions lists metrics.k8s.io/v1 and metrics.k8s.io/v1beta1");
    let versions = out_text(&c, &["api-versions"]);
    eprintln!(
        "api-versions listed both metrics.k8s.io versions within {:.1?}",
        t.elapsed()
    );
    for v in VERSIONS {
        assert!(versions.lines().any(|l| l == format!("metrics.k8s.io/{v}")));
    }
    let resources = out_text(&c, &["api-resources", "--api-group=metrics.k8s.io"]);
    for kind in ["NodeMetrics", "PodMetrics"] {
        assert!(resources.contains(kind), "api-resources lacks {kind}");
    }

    // --- the five paths, both versions ---------------------------------------
    for v in VERSIONS {
        let base = format!("/apis/metrics.k8s.io/{v}");
        let api_version = format!("metrics.k8s.io/{v}");

        let nodes = raw(&c, &format!("{base}/nodes")).expect("nodes");
        assert_eq!(nodes["kind"], "NodeMetricsList");
        assert_eq!(nodes["apiVersion"], api_version.as_str());
        assert_eq!(item_names(&nodes), ["node-a", "node-b"]);
        for n in nodes["items"].as_array().expect("items") {
            check_item(n, &format!("{v} nodes item"));
            assert_eq!(
                n["metadata"]["labels"]["kubernetes.io/hostname"],
                n["metadata"]["name"]
            );
            assert!(usage(n, "cpu").expect("cpu") > 0.0);
            assert!(usage(n, "memory").expect("memory") > 0.0);
        }

        let node = raw(&c, &format!("{base}/nodes/node-b")).expect("node");
        assert_eq!(node["kind"], "NodeMetrics");
        assert_eq!(node["apiVersion"], api_version.as_str());
        assert_eq!(node["metadata"]["name"], "node-b");
        check_item(&node, &format!("{v} nodes/node-b"));

        let list = raw(&c, &format!("{base}/pods")).expect("pods");
        assert_eq!(list["kind"], "PodMetricsList");
        assert_eq!(list["apiVersion"], api_version.as_str());
        // Namespace, then name; only the simulated pods run.
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(item_names(&list), sorted);
        for item in list["items"].as_array().expect("items") {
            let ns = item["metadata"]["namespace"].as_str().expect("namespace");
            let name = item["metadata"]["name"].as_str().expect("name");
            check_item(item, &format!("{v} pods item {ns}/{name}"));
            let pod = pods
                .iter()
                .find(|p| p.namespace == ns && p.name == name)
                .expect("known pod");
            let (_, _, _, labels, containers) = WORKLOAD
                .iter()
                .find(|w| w.1 == ns && w.2 == name)
                .expect("workload");
            let want_labels: BTreeMap<String, String> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let got_labels: BTreeMap<String, String> =
                serde_json::from_value(item["metadata"]["labels"].clone()).expect("labels");
            assert_eq!(got_labels, want_labels, "{ns}/{name} labels");
            let got: BTreeSet<&str> = item["containers"]
                .as_array()
                .expect("containers")
                .iter()
                .filter_map(|c| c["name"].as_str())
                .collect();
            let want: BTreeSet<&str> = containers.iter().map(|(n, _)| *n).collect();
            assert_eq!(got, want, "{ns}/{name} containers");
            assert_eq!(pod.containers.len(), want.len());
        }

        let shop = raw(&c, &format!("{base}/namespaces/shop/pods")).expect("ns pods");
        assert_eq!(shop["kind"], "PodMetricsList");
        assert_eq!(item_names(&shop), ["shop/web-1", "shop/web-2"]);
        let empty = raw(&c, &format!("{base}/namespaces/default/pods")).expect("empty ns");
        assert_eq!(empty["items"], serde_json::json!([]), "{empty}");

        let one = raw(&c, &format!("{base}/namespaces/shop/pods/web-1")).expect("pod");
        assert_eq!(one["kind"], "PodMetrics");
        assert_eq!(one["apiVersion"], api_version.as_str());
        assert_eq!(one["metadata"]["namespace"], "shop");
        assert_eq!(one["metadata"]["name"], "web-1");
        check_item(&one, &format!("{v} pods/web-1"));

        let selected = raw(
            &c,
            &format!("{base}/pods?labelSelector=app%20in%20(web,store),tier!=front"),
        )
        .expect("selector");
        assert_eq!(item_names(&selected), ["batch/store-1", "shop/web-2"]);
        eprintln!("{v}: the five paths and a label selector answer as they should");
    }

    // --- the numbers, exactly, from the JSON ----------------------------------
    // Through kube-apiserver with curl, not kubectl: each kubectl run costs
    // enough of the 2 cores to starve the burners during the very window it
    // asks about. Two fresh reports of quiet first, then five rounds at
    // distinct timestamps (1 s windows): medians per container, and the
    // kernel's own cpu.stat over the same span as a second reference.
    let curl = e2e::curl::Curl::new(&c, "e2e-sampler", Some("system:masters"), None).expect("curl");
    let fresh_ts = |c: &Cluster, after: u64| -> Option<(u64, Value, Value)> {
        let list = curl
            .api_json(c, "/apis/metrics.k8s.io/v1/pods")
            .expect("pods");
        let nodes = curl
            .api_json(c, "/apis/metrics.k8s.io/v1/nodes")
            .expect("nodes");
        let ts = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["timestamp"].as_str().and_then(parse_timestamp))
            .min()
            .unwrap_or(0);
        (ts > after).then_some((ts, list, nodes))
    };
    let mut last_ts = 0;
    for _ in 0..2 {
        last_ts = c
            .wait_for("a fresh report", Duration::from_secs(10), |c| {
                Ok(fresh_ts(c, last_ts).map(|(ts, _, _)| ts))
            })
            .expect("fresh report");
    }
    let ground: Vec<(String, String)> = pods
        .iter()
        .flat_map(|p| {
            p.containers.iter().map(move |ctr| {
                (
                    format!("{}/{}/{}", p.namespace, p.name, ctr.name),
                    ctr.cgroup.clone(),
                )
            })
        })
        .collect();
    let cpu_before: Vec<f64> = ground
        .iter()
        .map(|(_, cg)| cgroup_cpu_seconds(&c, cg).expect("cpu.stat"))
        .collect();
    let t_before = Instant::now();
    let mut samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut node_vs_pods: Vec<(String, f64, f64)> = Vec::new();
    let mut rounds = 0;
    while rounds < 5 {
        let (ts, list, nodes) = c
            .wait_for("a fresh report", Duration::from_secs(10), |c| {
                Ok(fresh_ts(c, last_ts))
            })
            .expect("fresh report");
        last_ts = ts;
        rounds += 1;
        let items = list["items"].as_array().expect("items").clone();
        for item in &items {
            let ns = item["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = item["metadata"]["name"].as_str().unwrap_or_default();
            for ctr in item["containers"].as_array().expect("containers") {
                let cname = ctr["name"].as_str().unwrap_or_default();
                for resource in ["cpu", "memory"] {
                    let v = container_usage(item, cname, resource).expect("usage");
                    samples
                        .entry(format!("{ns}/{name}/{cname}/{resource}"))
                        .or_default()
                        .push(v);
                }
            }
        }
        // A node's usage is its cgroup subtree: the sum of its pods, when both
        // come from the same report (same timestamp and window).
        for node in nodes["items"].as_array().expect("items") {
            let node_name = node["metadata"]["name"].as_str().unwrap_or_default();
            let on_node: Vec<&Value> = items
                .iter()
                .filter(|i| {
                    let key = format!(
                        "{}/{}",
                        i["metadata"]["namespace"].as_str().unwrap_or_default(),
                        i["metadata"]["name"].as_str().unwrap_or_default()
                    );
                    pods.iter().any(|p| {
                        format!("{}/{}", p.namespace, p.name) == key && p.node == node_name
                    })
                })
                .collect();
            if on_node
                .iter()
                .all(|p| p["timestamp"] == node["timestamp"] && p["window"] == node["window"])
            {
                let sum: f64 = on_node.iter().map(|p| usage(p, "cpu").expect("cpu")).sum();
                node_vs_pods.push((node_name.to_string(), usage(node, "cpu").expect("cpu"), sum));
            }
        }
    }
    let span = t_before.elapsed().as_secs_f64();
    let cpu_after: Vec<f64> = ground
        .iter()
        .map(|(_, cg)| cgroup_cpu_seconds(&c, cg).expect("cpu.stat"))
        .collect();

    eprintln!(
        "container                 known      served (median of 5)   kernel cpu.stat/working set"
    );
    let mut failures = Vec::new();
    for (i, (key, cgroup)) in ground.iter().enumerate() {
        let parts: Vec<&str> = key.split('/').collect();
        let (_, _, _, _, containers) = WORKLOAD
            .iter()
            .find(|w| w.1 == parts[0] && w.2 == parts[1])
            .expect("workload");
        let load = containers
            .iter()
            .find(|(n, _)| *n == parts[2])
            .expect("container")
            .1;
        let cpu = median(samples[&format!("{key}/cpu")].iter().copied());
        let mem = median(samples[&format!("{key}/memory")].iter().copied());
        let kernel_cpu = (cpu_after[i] - cpu_before[i]) / span;
        let kernel_mem = cgroup_working_set(&c, cgroup).expect("working set");
        match load {
            Load::Cpu(cores) => {
                eprintln!(
                    "{key:<25} {:>6.0}m   cpu {:>7.1}m ({:+.1} %)   kernel {:>7.1}m ({:+.1} %)",
                    cores * 1e3,
                    cpu * 1e3,
                    (cpu / cores - 1.0) * 100.0,
                    kernel_cpu * 1e3,
                    (kernel_cpu / cores - 1.0) * 100.0
                );
                if rel_err(cpu, cores) > TOLERANCE {
                    failures.push(format!("{key}: cpu {cpu:.4} vs known {cores}"));
                }
            }
            Load::Mem(mib) => {
                let want = mib as f64 * MIB;
                eprintln!(
                    "{key:<25} {:>6}Mi  mem {:>7.2}Mi ({:+.1} %)  kernel {:>7.2}Mi ({:+.1} %)",
                    mib,
                    mem / MIB,
                    (mem / want - 1.0) * 100.0,
                    kernel_mem / MIB,
                    (kernel_mem / want - 1.0) * 100.0
                );
                if rel_err(mem, want) > TOLERANCE {
                    failures.push(format!("{key}: memory {mem} vs known {want}"));
                }
                if rel_err(mem, kernel_mem) > 0.02 {
                    failures.push(format!(
                        "{key}: memory {mem} vs the kernel's working set {kernel_mem}"
                    ));
                }
            }
        }
    }
    for (node, node_cpu, sum) in &node_vs_pods {
        eprintln!(
            "{node}: node cpu {:.1}m, sum of its pods {:.1}m ({:+.2} %)",
            node_cpu * 1e3,
            sum * 1e3,
            (node_cpu / sum - 1.0) * 100.0
        );
        // The node cgroup holds only the pods, plus a few wakeups of nothing.
        if (node_cpu - sum).abs() > sum * TOLERANCE {
            failures.push(format!("{node}: node cpu {node_cpu} vs pods {sum}"));
        }
    }
    assert!(
        node_vs_pods.len() >= 4,
        "too few rounds with node and pods from one report: {node_vs_pods:?}"
    );
    assert!(failures.is_empty(), "{failures:#?}");

    // --- kubectl top node -------------------------------------------------------
    let node_header = ["NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"];
    let rows = top(&c, &["top", "node"], &node_header, &["NAME"]);
    assert_eq!(keys(&rows), set(&["node-a", "node-b"]));
    // kubectl's own percentages of allocatable (4 and 2 cores): it read the
    // Nodes too. (The values themselves were checked exactly above; kubectl's
    // 1 s window overlaps kubectl's own start-up, which starves the burners.)
    let node_a_cpu = quantity(&rows["node-a"]["CPU(cores)"]).expect("cpu");
    let node_b_cpu = quantity(&rows["node-b"]["CPU(cores)"]).expect("cpu");
    assert!(node_a_cpu > 0.0 && node_b_cpu > 0.0);
    let pct = |s: &str| s.trim_end_matches('%').parse::<f64>().expect("percent");
    assert!((pct(&rows["node-a"]["CPU(%)"]) - node_a_cpu / 4.0 * 100.0).abs() <= 1.0);
    assert!((pct(&rows["node-b"]["CPU(%)"]) - node_b_cpu / 2.0 * 100.0).abs() <= 1.0);
    let rows = top(&c, &["top", "node", "node-b"], &node_header, &["NAME"]);
    assert_eq!(keys(&rows), set(&["node-b"]));
    let rows = top(
        &c,
        &["top", "node", "-l", "kubernetes.io/hostname=node-a"],
        &node_header,
        &["NAME"],
    );
    assert_eq!(keys(&rows), set(&["node-a"]));
    let rows = top(
        &c,
        &["top", "node", "--sort-by=cpu"],
        &node_header,
        &["NAME"],
    );
    assert_eq!(keys(&rows), set(&["node-a", "node-b"]));

    // --- kubectl top pod --------------------------------------------------------
    let ns_header = ["NAMESPACE", "NAME", "CPU(cores)", "MEMORY(bytes)"];
    let pod_header = ["NAME", "CPU(cores)", "MEMORY(bytes)"];
    let rows = top(
        &c,
        &["top", "pod", "-A"],
        &ns_header,
        &["NAMESPACE", "NAME"],
    );
    assert_eq!(keys(&rows), all.iter().cloned().collect());
    // Memory as kubectl prints it (Mi, rounded): within 5 % of what is held.
    for (key, mib) in [("shop/web-1", 96.0), ("batch/store-1", 64.0)] {
        let printed = quantity(&rows[key]["MEMORY(bytes)"]).expect("memory") / MIB;
        eprintln!("kubectl top: {key} memory {printed}Mi (holds {mib}Mi)");
        assert!(rel_err(printed, mib) <= TOLERANCE, "{key}: {printed}Mi");
    }
    for key in ["shop/web-1", "shop/web-2", "batch/worker-1"] {
        let printed = quantity(&rows[key]["CPU(cores)"]).expect("cpu");
        assert!(printed > 0.0, "{key}: {printed} cores");
    }

    let rows = top(&c, &["top", "pod", "-n", "shop"], &pod_header, &["NAME"]);
    assert_eq!(keys(&rows), set(&["web-1", "web-2"]));
    let rows = top(&c, &["top", "pod", "-n", "batch"], &pod_header, &["NAME"]);
    assert_eq!(keys(&rows), set(&["store-1", "worker-1"]));
    let rows = top(
        &c,
        &["top", "pod", "-n", "shop", "web-2"],
        &pod_header,
        &["NAME"],
    );
    assert_eq!(keys(&rows), set(&["web-2"]));
    let rows = top(
        &c,
        &["top", "pod", "-A", "-l", "app=web"],
        &ns_header,
        &["NAMESPACE", "NAME"],
    );
    assert_eq!(keys(&rows), set(&["shop/web-1", "shop/web-2"]));
    let rows = top(
        &c,
        &["top", "pod", "-n", "shop", "-l", "app=web,tier!=front"],
        &pod_header,
        &["NAME"],
    );
    assert_eq!(keys(&rows), set(&["web-2"]));
    let rows = top(
        &c,
        &["top", "pod", "-A", "--containers"],
        &["NAMESPACE", "POD", "NAME", "CPU(cores)", "MEMORY(bytes)"],
        &["NAMESPACE", "POD", "NAME"],
    );
    assert_eq!(
        keys(&rows),
        set(&[
            "batch/store-1/main",
            "batch/worker-1/worker",
            "shop/web-1/app",
            "shop/web-1/cache",
            "shop/web-2/app",
        ])
    );
    let web1_app = quantity(&rows["shop/web-1/app"]["CPU(cores)"]).expect("cpu");
    let web1_cache = quantity(&rows["shop/web-1/cache"]["MEMORY(bytes)"]).expect("memory");
    assert!(web1_app > 0.0, "web-1/app {web1_app}");
    assert!(
        rel_err(web1_cache / MIB, 96.0) <= TOLERANCE,
        "web-1/cache {web1_cache}"
    );
    let rows = top(
        &c,
        &["top", "pod", "-n", "shop", "web-1", "--containers"],
        &["POD", "NAME", "CPU(cores)", "MEMORY(bytes)"],
        &["POD", "NAME"],
    );
    assert_eq!(keys(&rows), set(&["web-1/app", "web-1/cache"]));

    // Sorted: CPU 0.5 first (0.25 and 0.2 may trade places in a starved
    // window); memory 96Mi > 64Mi > the rest.
    for (sort, column, first) in [
        ("--sort-by=cpu", "CPU(cores)", &["shop/web-1"][..]),
        (
            "--sort-by=memory",
            "MEMORY(bytes)",
            &["shop/web-1", "batch/store-1"][..],
        ),
    ] {
        let text = out_text(&c, &["top", "pod", "-A", sort]);
        let (header, lines) = table(&text);
        assert_eq!(header, ns_header);
        let order: Vec<String> = lines.iter().map(|r| format!("{}/{}", r[0], r[1])).collect();
        assert_eq!(
            order.iter().cloned().collect::<BTreeSet<_>>(),
            all.iter().cloned().collect::<BTreeSet<_>>(),
            "{sort}"
        );
        assert_eq!(&order[..first.len()], first, "{sort}");
        let col = header.iter().position(|h| h == column).expect("column");
        let values: Vec<f64> = lines
            .iter()
            .map(|r| quantity(&r[col]).expect("q"))
            .collect();
        assert!(
            values.windows(2).all(|w| w[0] >= w[1]),
            "{sort}: {values:?}"
        );
    }

    // swap is reported (metrics-server does not): `--show-swap` prints it.
    let reports_swap = raw(&c, "/apis/metrics.k8s.io/v1/pods").expect("pods")["items"][0]
        ["containers"][0]["usage"]
        .get("swap")
        .is_some();
    if reports_swap {
        let rows = top(
            &c,
            &["top", "pod", "-A", "--show-swap"],
            &[
                "NAMESPACE",
                "NAME",
                "CPU(cores)",
                "MEMORY(bytes)",
                "SWAP(bytes)",
            ],
            &["NAMESPACE", "NAME"],
        );
        assert_eq!(keys(&rows), all.iter().cloned().collect());
        let rows = top(
            &c,
            &["top", "node", "--show-swap"],
            &[
                "NAME",
                "CPU(cores)",
                "CPU(%)",
                "MEMORY(bytes)",
                "MEMORY(%)",
                "SWAP(bytes)",
                "SWAP(%)",
            ],
            &["NAME"],
        );
        assert_eq!(keys(&rows), set(&["node-a", "node-b"]));
    }

    // --- kubectl get podmetrics / nodemetrics (the server's Table) -------------
    // Columns: Name, one per usage key sorted, Window (contract §1.6).
    let usage_columns: &[&str] = if reports_swap {
        &["CPU", "MEMORY", "SWAP", "WINDOW"]
    } else {
        &["CPU", "MEMORY", "WINDOW"]
    };
    let header = |first: &[&'static str]| -> Vec<&'static str> {
        first.iter().chain(usage_columns).copied().collect()
    };
    let rows = top(
        &c,
        &["get", "podmetrics", "-A"],
        &header(&["NAMESPACE", "NAME"]),
        &["NAMESPACE", "NAME"],
    );
    assert_eq!(keys(&rows), all.iter().cloned().collect());
    for row in rows.values() {
        let cpu = quantity(&row["CPU"]).expect("cpu quantity");
        let memory = quantity(&row["MEMORY"]).expect("memory quantity");
        assert!(cpu >= 0.0 && memory > 0.0, "{row:?}");
        assert!(parse_go_duration(&row["WINDOW"]).is_some(), "{row:?}");
    }
    let rows = top(
        &c,
        &["get", "podmetrics", "-n", "shop", "web-1"],
        &header(&["NAME"]),
        &["NAME"],
    );
    assert_eq!(keys(&rows), set(&["web-1"]));
    let rows = top(&c, &["get", "nodemetrics"], &header(&["NAME"]), &["NAME"]);
    assert_eq!(keys(&rows), set(&["node-a", "node-b"]));
    for v in VERSIONS {
        let rows = top(
            &c,
            &["get", &format!("nodemetrics.{v}.metrics.k8s.io"), "node-a"],
            &header(&["NAME"]),
            &["NAME"],
        );
        assert_eq!(keys(&rows), set(&["node-a"]));
        let rows = top(
            &c,
            &[
                "get",
                &format!("podmetrics.{v}.metrics.k8s.io"),
                "-n",
                "batch",
                "-l",
                "app=batch",
            ],
            &header(&["NAME"]),
            &["NAME"],
        );
        assert_eq!(keys(&rows), set(&["worker-1"]));
    }

    c.ensure_ours_running().expect("nodepulse still running");
    eprintln!("kubectl_top done in {:.1?}", t0.elapsed());
}
