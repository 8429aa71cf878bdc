//! The ground the end-to-end tests stand on: a real etcd, kube-apiserver and
//! kube-controller-manager in a private network namespace, two simulated
//! nodes whose pods run in kubelet-named cgroups, and nodepulse registered
//! with the aggregation layer. When nodepulse's binaries are built (and know
//! the flags the harness passes) it also starts them and checks that
//! metrics.k8s.io becomes Available and lists the nodes; otherwise it says
//! why that part was skipped.
//!
//! Needs root, BTF, cgroup v2 and iproute2; skips with a message elsewhere
//! (fails instead under NODEPULSE_REQUIRE_PRIVILEGED=1, as in CI).

use std::time::{Duration, Instant};

use e2e::{Cluster, Container, Options, PodInfo, USER_METRICS_READER, USER_NO_RBAC};
use serde_json::Value;
use testkit::Burn;

/// A stand-in for an aggregator replica (Python's standard library only): it
/// serves metrics.k8s.io discovery, and on `…/nodes` returns what the
/// aggregation layer sent: the client certificate's CN (verified against the
/// front-proxy CA) and the X-Remote-* headers.
const STUB_AGGREGATOR: &str = r#"
import http.server, json, ssl, sys
ip, cert, key, ca = sys.argv[1:5]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, fmt, *args):
        sys.stderr.write("stub: " + (fmt % args) + "\n")
    def do_GET(self):
        path = self.path.split("?")[0]
        parts = path.strip("/").split("/")
        code = 200
        if path.endswith("/nodes"):
            peer = self.connection.getpeercert() or {}
            cn = [v for rdn in peer.get("subject", ()) for (k, v) in rdn if k == "commonName"]
            body = {"peer": cn,
                    "user": self.headers.get_all("X-Remote-User") or [],
                    "groups": self.headers.get_all("X-Remote-Group") or [],
                    "authorization": self.headers.get("Authorization")}
        elif parts[:2] == ["apis", "metrics.k8s.io"] and len(parts) == 3:
            body = {"kind": "APIResourceList", "apiVersion": "v1",
                    "groupVersion": "metrics.k8s.io/" + parts[2],
                    "resources": [
                        {"name": "nodes", "singularName": "", "namespaced": False,
                         "kind": "NodeMetrics", "verbs": ["get", "list"]},
                        {"name": "pods", "singularName": "", "namespaced": True,
                         "kind": "PodMetrics", "verbs": ["get", "list"]}]}
        else:
            code = 404
            body = {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "code": 404, "reason": "NotFound"}
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.load_verify_locations(ca)
ctx.verify_mode = ssl.CERT_OPTIONAL
srv = http.server.ThreadingHTTPServer((ip, 443), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

/// Not a test: the body of burner processes the harness spawns (testkit).
#[test]
#[ignore = "entry point of burner child processes"]
fn burner_entry() {
    testkit::burner_main();
}

fn duty(fraction: f64) -> Burn {
    Burn::Duty {
        fraction,
        period_ms: 20,
    }
}

fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a str> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)?["status"]
        .as_str()
}

#[test]
fn control_plane_nodes_pods_and_nodepulse_registration() {
    let Some(h) = e2e::privileged("control_plane") else {
        return;
    };
    let t0 = Instant::now();
    let mut c = Cluster::start(h, Options::new("cp")).expect("cluster starts");
    eprintln!(
        "control plane ready in {:.1?} ({:?})",
        t0.elapsed(),
        c.timings()
    );

    // --- simulated nodes and pods -------------------------------------------------
    let t = Instant::now();
    c.add_node("node-a", "4", "8Gi").expect("node-a");
    c.add_node("node-b", "2", "4Gi").expect("node-b");
    let cache = c.work_dir().join("idle-cache");
    let pods: Vec<PodInfo> = vec![
        c.add_pod(
            "node-a",
            "default",
            "web-1",
            &[("app", "web")],
            vec![
                Container::new("app", duty(0.2))
                    .request("cpu", "200m")
                    .limit("cpu", "500m"),
                Container::new("sidecar", duty(0.05)),
            ],
        )
        .expect("pod web-1"),
        c.add_pod(
            "node-b",
            "team-a",
            "batch-1",
            &[("app", "batch")],
            vec![
                Container::new("worker", duty(0.1))
                    .request("cpu", "250m")
                    .limit("cpu", "250m")
                    .request("memory", "64Mi")
                    .limit("memory", "64Mi"),
            ],
        )
        .expect("pod batch-1"),
        c.add_pod(
            "node-b",
            "team-a",
            "idle",
            &[],
            vec![Container::new(
                "main",
                Burn::Memory {
                    mib: 16,
                    cache_mib: 0,
                    file: cache,
                },
            )],
        )
        .expect("pod idle"),
    ];
    eprintln!("2 nodes and 3 pods in {:.1?}", t.elapsed());
    assert_eq!(
        pods.iter().map(|p| p.qos.as_str()).collect::<Vec<_>>(),
        ["burstable", "guaranteed", "besteffort"]
    );

    let nodes = c.kubectl_json(&["get", "nodes"]).expect("get nodes");
    let nodes = nodes["items"].as_array().expect("items");
    let names: Vec<&str> = nodes
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["node-a", "node-b"]);
    for (node, cpu) in nodes.iter().zip(["4", "2"]) {
        assert_eq!(condition(node, "Ready"), Some("True"), "{node}");
        assert_eq!(node["status"]["allocatable"]["cpu"], cpu);
        assert!(node["spec"]["taints"].is_null(), "{}", node["spec"]);
    }

    for p in &pods {
        let pod = c
            .kubectl_json(&["-n", &p.namespace, "get", "pod", &p.name])
            .expect("get pod");
        assert_eq!(pod["metadata"]["uid"], p.uid.as_str());
        assert_eq!(pod["spec"]["nodeName"], p.node.as_str());
        assert_eq!(pod["status"]["phase"], "Running");
        assert_eq!(condition(&pod, "Ready"), Some("True"));
        let statuses = pod["status"]["containerStatuses"]
            .as_array()
            .expect("containerStatuses");
        assert_eq!(statuses.len(), p.containers.len());
        for ctr in &p.containers {
            let status = statuses
                .iter()
                .find(|s| s["name"] == ctr.name.as_str())
                .expect("status of container");
            assert_eq!(
                status["containerID"],
                format!("containerd://{}", ctr.id).as_str()
            );
            assert!(status["state"]["running"]["startedAt"].is_string());
            // The cgroup the kubelet would make: real UID, QoS slice, containerd scope.
            assert!(
                ctr.cgroup
                    .starts_with(c.node_cgroup(&p.node).expect("node"))
            );
            assert!(ctr.cgroup.contains(&p.uid.replace('-', "_")));
            assert!(
                ctr.cgroup
                    .ends_with(&format!("cri-containerd-{}.scope", ctr.id))
            );
            let dir = c.cgroup_dir(&ctr.cgroup).expect("v2 root");
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).expect("cgroup.procs");
            assert!(!procs.trim().is_empty(), "no burner in {}", dir.display());
        }
    }

    // --- discovery and nodepulse's registration ---------------------------------
    let out = c.kubectl(&["api-resources"]).expect("api-resources");
    let listed = String::from_utf8_lossy(&out.stdout);
    for resource in [
        "pods",
        "nodes",
        "apiservices",
        "endpointslices",
        "horizontalpodautoscalers",
    ] {
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with(&format!("{resource} "))),
            "api-resources lacks {resource}:\n{listed}"
        );
    }
    if !out.status.success() {
        // Discovery of an aggregated API that is not Available fails; only ours may.
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.lines()
                .filter(|l| !l.trim().is_empty())
                .all(|l| l.contains("metrics.k8s.io")),
            "api-resources failed beyond metrics.k8s.io: {err}"
        );
    }

    for version in ["v1beta1", "v1"] {
        let api = c
            .kubectl_json(&["get", "apiservice", &format!("{version}.metrics.k8s.io")])
            .expect("APIService");
        assert_eq!(api["spec"]["service"]["namespace"], "kube-system");
        assert_eq!(api["spec"]["service"]["name"], "nodepulse");
        assert_eq!(api["spec"]["service"]["port"], 443);
        assert_eq!(api["spec"]["insecureSkipTLSVerify"], true);
        assert_eq!(api["spec"]["groupPriorityMinimum"], 100);
    }
    eprintln!(
        "APIServices before nodepulse runs: {:?}",
        c.apiservice_conditions().expect("conditions")
    );

    let slice_ready = |c: &Cluster| -> Vec<(String, bool)> {
        let s = c
            .kubectl_json(&["-n", "kube-system", "get", "endpointslice", "nodepulse-e2e"])
            .expect("EndpointSlice");
        s["endpoints"]
            .as_array()
            .expect("endpoints")
            .iter()
            .map(|e| {
                (
                    e["addresses"][0].as_str().unwrap_or_default().to_string(),
                    e["conditions"]["ready"] == true,
                )
            })
            .collect()
    };
    let ips: Vec<String> = (0..c.replica_count())
        .map(|i| e2e::replica_ip(i).to_string())
        .collect();
    assert_eq!(
        slice_ready(&c),
        ips.iter().map(|ip| (ip.clone(), true)).collect::<Vec<_>>()
    );
    c.set_replica_ready(1, false).expect("mark not ready");
    assert_eq!(slice_ready(&c)[1], (ips[1].clone(), false));
    c.set_replica_ready(1, true).expect("mark ready");
    assert_eq!(slice_ready(&c)[1], (ips[1].clone(), true));

    // kube-apiserver publishes the request-header settings extension servers read.
    let auth = c
        .kubectl_json(&[
            "-n",
            "kube-system",
            "get",
            "configmap",
            "extension-apiserver-authentication",
        ])
        .expect("extension-apiserver-authentication");
    assert_eq!(
        auth["data"]["requestheader-allowed-names"],
        r#"["front-proxy-client"]"#
    );
    assert!(
        auth["data"]["requestheader-client-ca-file"]
            .as_str()
            .is_some_and(|pem| pem.contains("BEGIN CERTIFICATE"))
    );

    // RBAC as the tests and the aggregator will rely on it.
    let can = |user: &str, verb: &str, group: &str, resource: &str| {
        c.can_i(user, verb, group, resource, None, None)
            .expect("SelfSubjectAccessReview")
    };
    let metrics = "metrics.k8s.io";
    assert!(!can(USER_NO_RBAC, "list", metrics, "pods"));
    assert!(!can(USER_NO_RBAC, "get", metrics, "nodes"));
    assert!(can(USER_METRICS_READER, "list", metrics, "pods"));
    assert!(can(USER_METRICS_READER, "get", metrics, "nodes"));
    assert!(!can(USER_METRICS_READER, "watch", metrics, "pods"));
    assert!(!can(USER_METRICS_READER, "list", "", "pods"));
    let aggregator = "system:serviceaccount:kube-system:nodepulse";
    assert!(can(
        aggregator,
        "create",
        "authentication.k8s.io",
        "tokenreviews"
    ));
    assert!(can(
        aggregator,
        "create",
        "authorization.k8s.io",
        "subjectaccessreviews"
    ));
    // The binding check, each Node's capacity, and the nodes read from their
    // kubelet (their Nodes, their pods, their kubelets' /metrics/resource).
    for (verb, resource) in [
        ("list", "pods"),
        ("watch", "pods"),
        ("get", "nodes"),
        ("list", "nodes"),
        ("watch", "nodes"),
        ("get", "nodes/metrics"),
    ] {
        assert!(can(aggregator, verb, "", resource), "{verb} {resource}");
    }
    assert!(!can(aggregator, "create", "", "pods"));
    assert!(!can(aggregator, "get", "", "secrets"));
    assert!(
        c.can_i(
            aggregator,
            "get",
            "",
            "configmaps",
            Some("kube-system"),
            Some("extension-apiserver-authentication")
        )
        .expect("SelfSubjectAccessReview")
    );
    assert!(can(
        "system:serviceaccount:kube-system:nodepulse-agent",
        "watch",
        "",
        "pods"
    ));

    // An agent's token: audience nodepulse, bound to its Node.
    let token = c.node_token("node-a").expect("token for node-a");
    let review = c
        .create(&e2e::manifests::token_review(&token, e2e::AGENT_AUDIENCE))
        .expect("TokenReview");
    assert_eq!(review["status"]["authenticated"], true, "{review}");
    assert_eq!(
        review["status"]["user"]["username"],
        "system:serviceaccount:kube-system:nodepulse-agent"
    );
    assert_eq!(
        review["status"]["user"]["extra"]["authentication.kubernetes.io/node-name"][0], "node-a",
        "{review}"
    );
    let wrong_audience = c
        .create(&e2e::manifests::token_review(&token, "someone-else"))
        .expect("TokenReview");
    assert_ne!(wrong_audience["status"]["authenticated"], true);

    // The aggregation path, proven with a stand-in on replica 0 (replica 1 is
    // marked not ready, so every request and availability check goes to 0).
    let python = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if python {
        let t = Instant::now();
        c.set_replica_ready(1, false).expect("replica 1 not ready");
        let mut stub = std::process::Command::new("python3");
        stub.arg("-c")
            .arg(STUB_AGGREGATOR)
            .arg(e2e::replica_ip(0).to_string())
            .arg(&c.pki().aggregator_serving.cert)
            .arg(&c.pki().aggregator_serving.key)
            .arg(&c.pki().front_proxy_ca.cert);
        let mut stub = c.spawn_in_netns("stub-aggregator-0", stub).expect("stub");
        let addr = std::net::SocketAddr::from((e2e::replica_ip(0), e2e::AGGREGATOR_PORT));
        c.wait_for("stand-in listening", Duration::from_secs(30), |c| {
            stub.ensure_running()?;
            Ok(c.netns().tcp_open(addr).then_some(()))
        })
        .expect("stand-in listens");
        c.publish_endpoints().expect("EndpointSlice update");
        c.wait_apiservices_available(Duration::from_secs(60))
            .expect("APIServices Available with the stand-in");
        eprintln!(
            "APIServices Available through the stand-in after {:.1?}",
            t.elapsed()
        );
        // kube-apiserver's proxy learns that an APIService is Available from
        // its own APIService informer, a moment after the condition is
        // written: until then it answers 503 ServiceUnavailable itself.
        let out = c
            .wait_for(
                "the aggregation layer proxying to the stand-in",
                Duration::from_secs(30),
                |c| {
                    let out = c.kubectl_as(
                        USER_METRICS_READER,
                        &["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes"],
                    )?;
                    let unavailable = !out.status.success()
                        && String::from_utf8_lossy(&out.stderr).contains("(ServiceUnavailable)");
                    Ok((!unavailable).then_some(out))
                },
            )
            .expect("kubectl get --raw");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let echo: Value = serde_json::from_slice(&out.stdout).expect("stand-in's JSON");
        assert_eq!(echo["peer"][0], "front-proxy-client", "{echo}");
        assert_eq!(echo["user"][0], USER_METRICS_READER, "{echo}");
        assert!(
            echo["groups"]
                .as_array()
                .is_some_and(|g| g.iter().any(|g| g == "system:authenticated")),
            "{echo}"
        );
        assert!(echo["authorization"].is_null(), "{echo}");
        // kube-apiserver authorizes proxied requests itself before proxying.
        let out = c
            .kubectl_as(
                USER_NO_RBAC,
                &["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes"],
            )
            .expect("kubectl get --raw");
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("Forbidden"));

        // No ready endpoint: kube-aggregator notices from the EndpointSlice alone.
        c.set_replica_ready(0, false).expect("replica 0 not ready");
        c.wait_for(
            "APIServices MissingEndpoints",
            Duration::from_secs(60),
            |c| {
                let conditions = c.apiservice_conditions()?;
                Ok(conditions
                    .iter()
                    .all(|(_, status, reason, _)| status == "False" && reason == "MissingEndpoints")
                    .then_some(()))
            },
        )
        .expect("APIServices unavailable without ready endpoints");
        drop(stub);
        c.set_replica_ready(0, true).expect("replica 0 ready");
        c.set_replica_ready(1, true).expect("replica 1 ready");
        eprintln!("aggregation path checks took {:.1?}", t.elapsed());
    } else {
        eprintln!("skipped the stand-in aggregator check: no python3");
    }

    c.ensure_control_plane().expect("control plane still up");
    eprintln!("control plane checks done at {:.1?}", t0.elapsed());

    // --- nodepulse itself, when it is built -------------------------------------
    let Some(ours) = c.ours_or_skip("control_plane", "the nodepulse part") else {
        return;
    };
    eprintln!("nodepulse binaries: {ours:?}");
    let t = Instant::now();
    c.start_aggregators().expect("aggregators start");
    c.start_agents().expect("agents start");
    c.wait_apiservices_available(Duration::from_secs(90))
        .expect("metrics.k8s.io Available");
    eprintln!("APIServices Available {:.1?} after start", t.elapsed());
    c.wait_for(
        "node metrics for node-a and node-b",
        Duration::from_secs(60),
        |c| {
            c.ensure_ours_running()?;
            let out = c.kubectl(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes"])?;
            let body: Value = match serde_json::from_slice(&out.stdout) {
                Ok(v) if out.status.success() => v,
                _ => return Ok(None),
            };
            let mut names: Vec<&str> = body["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n["metadata"]["name"].as_str())
                .collect();
            names.sort_unstable();
            Ok((names == ["node-a", "node-b"]).then_some(()))
        },
    )
    .expect("node metrics");
    eprintln!("node metrics served {:.1?} after start", t.elapsed());
}
