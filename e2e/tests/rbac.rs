//! Who may read metrics, through the real kube-apiserver and at nodepulse
//! itself:
//! - through kube-apiserver (kubectl and curl): a user without RBAC gets 403
//!   on `kubectl top pod` and on every path of both versions; a user bound to
//!   `system:aggregated-metrics-reader` gets 200 everywhere; a user with the
//!   built-in `view` role in one namespace only (which the reader role
//!   aggregates into) gets 200 there and 403 elsewhere;
//! - at an aggregator replica directly, as kube-apiserver's front proxy
//!   would call it: our own delegated authorization (SubjectAccessReview)
//!   gives the same answers, with the verb the path implies (get, list,
//!   watch); identity headers count only from the front proxy's certificate;
//!   anonymous callers are refused, health probes are not.
//!
//! Needs root, BTF, cgroup v2 and iproute2; skips with a message elsewhere
//! (fails instead under NODEPULSE_REQUIRE_PRIVILEGED=1, as in CI).

mod common;

use std::time::{Duration, Instant};

use common::{duty, item_names};
use e2e::curl::Curl;
use e2e::{Cluster, Container, Options, USER_METRICS_READER, USER_NO_RBAC};
use serde_json::{Value, json};

/// Not a test: the body of burner processes the harness spawns (testkit).
#[test]
#[ignore = "entry point of burner child processes"]
fn burner_entry() {
    testkit::burner_main();
}

const VERSIONS: [&str; 2] = ["v1beta1", "v1"];
/// Bound (cluster-wide) to `system:aggregated-metrics-reader`.
const READER: &str = "e2e-aggregated-reader";
/// Bound to the built-in `view` ClusterRole in namespace team-a only.
const VIEWER: &str = "e2e-team-a-viewer";
/// A Role in team-a with `get` (not list) on metrics.k8s.io pods.
const GETTER: &str = "e2e-team-a-getter";

/// The five paths of `v`.
fn paths(v: &str) -> Vec<String> {
    let base = format!("/apis/metrics.k8s.io/{v}");
    vec![
        format!("{base}/nodes"),
        format!("{base}/nodes/node-a"),
        format!("{base}/pods"),
        format!("{base}/namespaces/team-a/pods"),
        format!("{base}/namespaces/team-a/pods/api-1"),
    ]
}

fn status_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| json!({"unparsed": body}))
}

/// Asserts a 403 with a Status body naming `user`.
fn assert_forbidden(what: &str, code: u16, body: &str, user: &str) {
    let status = status_of(body);
    assert_eq!(code, 403, "{what}: {body}");
    assert_eq!(status["kind"], "Status", "{what}: {body}");
    assert_eq!(status["reason"], "Forbidden", "{what}: {body}");
    assert_eq!(status["code"], 403, "{what}: {body}");
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("User \"{user}\""))),
        "{what}: {body}"
    );
}

#[test]
fn rbac_through_kube_apiserver_and_at_the_aggregator() {
    let Some(h) = e2e::privileged("rbac") else {
        return;
    };
    let t0 = Instant::now();
    let mut c = Cluster::start(h, Options::new("rbac")).expect("cluster starts");
    c.add_node("node-a", "2", "4Gi").expect("node-a");
    c.add_pod(
        "node-a",
        "team-a",
        "api-1",
        &[("app", "api")],
        vec![Container::new("app", duty(0.1)).request("cpu", "100m")],
    )
    .expect("pod team-a/api-1");
    c.add_pod(
        "node-a",
        "team-b",
        "db-1",
        &[("app", "db")],
        vec![Container::new("db", duty(0.05))],
    )
    .expect("pod team-b/db-1");

    // RBAC for the test users (USER_NO_RBAC has none).
    for user in [READER, VIEWER, GETTER] {
        c.add_user(user, None).expect("user");
    }
    let user =
        |name: &str| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name});
    c.apply(&e2e::manifests::list(vec![
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "e2e-aggregated-reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "system:aggregated-metrics-reader"},
            "subjects": [user(READER)],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "e2e-viewer", "namespace": "team-a"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [user(VIEWER)],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "e2e-metrics-get", "namespace": "team-a"},
            "rules": [{"apiGroups": ["metrics.k8s.io"], "resources": ["pods"], "verbs": ["get"]}],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "e2e-getter", "namespace": "team-a"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "e2e-metrics-get"},
            "subjects": [user(GETTER)],
        }),
    ]))
    .expect("RBAC for the test users");
    // The clusterrole-aggregation controller folds the reader role into view.
    c.wait_for(
        "view aggregates metrics.k8s.io",
        Duration::from_secs(60),
        |c| {
            let view = c.kubectl_json(&["get", "clusterrole", "view"])?;
            Ok(view["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["apiGroups"][0] == "metrics.k8s.io")
                .then_some(()))
        },
    )
    .expect("view has the metrics rule");

    let Some(_ours) = c.ours_or_skip("rbac", "the whole test") else {
        return;
    };
    c.start_aggregators().expect("aggregators");
    c.start_agents().expect("agents");
    c.wait_apiservices_available(Duration::from_secs(90))
        .expect("metrics.k8s.io Available");
    common::wait_all_served(
        &mut c,
        &["team-a/api-1".into(), "team-b/db-1".into()],
        &["node-a"],
        Duration::from_secs(60),
    )
    .expect("every pod served");
    eprintln!("nodepulse serving {:.1?} after start of test", t0.elapsed());

    // --- through kube-apiserver: kubectl ---------------------------------------
    let out = c
        .kubectl_as(USER_NO_RBAC, &["top", "pod", "-n", "team-a"])
        .expect("kubectl");
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "kubectl top pod -n team-a as {USER_NO_RBAC}: {}",
        err.trim()
    );
    assert!(!out.status.success());
    assert!(
        err.contains("Forbidden") || err.contains("forbidden"),
        "{err}"
    );
    for path in paths("v1") {
        let out = c
            .kubectl_as(USER_NO_RBAC, &["get", "--raw", &path, "-v=6"])
            .expect("kubectl");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{path}");
        assert!(err.contains("403 Forbidden"), "{path}: {err}");
    }
    eprintln!("{USER_NO_RBAC}: kubectl top and get --raw: 403 Forbidden");

    // Permissions are read from informers: poll until they apply.
    c.wait_for(
        "the reader's binding applies",
        Duration::from_secs(30),
        |c| {
            let out = c.kubectl_as(READER, &["get", "--raw", "/apis/metrics.k8s.io/v1/pods"])?;
            Ok(out.status.success().then_some(()))
        },
    )
    .expect("reader allowed");
    for path in paths("v1").iter().chain(&paths("v1beta1")) {
        let out = c
            .kubectl_as(READER, &["get", "--raw", path, "-v=6"])
            .expect("kubectl");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{path}: {err}");
        assert!(err.contains("200 OK"), "{path}: {err}");
        serde_json::from_slice::<Value>(&out.stdout).expect("JSON");
    }
    eprintln!("{READER}: get --raw on the five paths of both versions: 200 OK");
    // What kubectl top needs beyond metrics.k8s.io is kubectl's business:
    // `top node` also lists core Nodes (for allocatable), which the reader
    // role alone does not grant. Printed, not asserted.
    let top = c
        .kubectl_as(READER, &["top", "pod", "-n", "team-a"])
        .expect("kubectl");
    eprintln!(
        "kubectl top pod -n team-a as {READER}: exit {}\n{}{}",
        top.status,
        String::from_utf8_lossy(&top.stdout),
        String::from_utf8_lossy(&top.stderr)
    );
    let top = c.kubectl_as(READER, &["top", "node"]).expect("kubectl");
    eprintln!(
        "kubectl top node as {READER}: exit {}\n{}{}",
        top.status,
        String::from_utf8_lossy(&top.stdout),
        String::from_utf8_lossy(&top.stderr)
    );

    c.wait_for(
        "the viewer's binding applies",
        Duration::from_secs(30),
        |c| {
            let out = c.kubectl_as(VIEWER, &["top", "pod", "-n", "team-a"])?;
            Ok(out.status.success().then_some(()))
        },
    )
    .expect("viewer allowed");
    let top = c
        .kubectl_as(VIEWER, &["top", "pod", "-n", "team-a"])
        .expect("kubectl");
    let text = String::from_utf8_lossy(&top.stdout);
    eprintln!(
        "kubectl top pod -n team-a as {VIEWER}:\n{}",
        text.trim_end()
    );
    assert!(text.lines().any(|l| l.starts_with("api-1 ")), "{text}");
    for args in [
        &["top", "pod", "-n", "team-b"][..],
        &["top", "pod", "-A"][..],
        &["top", "node"][..],
    ] {
        let out = c.kubectl_as(VIEWER, args).expect("kubectl");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            err.contains("forbidden") || err.contains("Forbidden"),
            "{args:?}: {err}"
        );
    }
    eprintln!("{VIEWER}: top pod -n team-a works; -n team-b, -A and top node are forbidden");

    // --- through kube-apiserver: curl, exact status codes -------------------------
    let as_user = |name: &str| Curl::new(&c, name, None, None).expect("client cert");
    let (nobody, reader, viewer) = (as_user(USER_NO_RBAC), as_user(READER), as_user(VIEWER));
    for v in VERSIONS {
        for path in paths(v) {
            let (code, body) = nobody.api(&c, &path).expect("GET");
            assert_forbidden(&format!("{USER_NO_RBAC} {path}"), code, &body, USER_NO_RBAC);
            let (code, body) = reader.api(&c, &path).expect("GET");
            assert_eq!(code, 200, "{READER} {path}: {body}");
            let in_team_a = path.contains("/namespaces/team-a/");
            let (code, body) = viewer.api(&c, &path).expect("GET");
            if in_team_a {
                assert_eq!(code, 200, "{VIEWER} {path}: {body}");
            } else {
                assert_forbidden(&format!("{VIEWER} {path}"), code, &body, VIEWER);
            }
        }
    }
    // Identity headers sent by a client never reach us: kube-apiserver strips them.
    let (code, body) = nobody
        .get_with(
            &c,
            &format!(
                "https://{}:{}/apis/metrics.k8s.io/v1/pods",
                e2e::API_IP,
                e2e::API_PORT
            ),
            &["X-Remote-User: e2e-admin", "X-Remote-Group: system:masters"],
        )
        .expect("GET");
    assert_forbidden(
        "spoofed X-Remote-User via kube-apiserver",
        code,
        &body,
        USER_NO_RBAC,
    );
    eprintln!(
        "through kube-apiserver, both versions, five paths: {USER_NO_RBAC} 403, {READER} 200, \
         {VIEWER} 200 in team-a only, spoofed X-Remote-* ignored"
    );

    // --- at the aggregator itself --------------------------------------------------
    // As kube-apiserver's front proxy calls it: the front-proxy client cert and
    // X-Remote-* headers; the decision is ours (SubjectAccessReview).
    let replica = |path: &str| {
        format!(
            "https://{}:{}{path}",
            e2e::replica_ip(0),
            e2e::AGGREGATOR_PORT
        )
    };
    let pki = c.pki();
    let front_proxy = Curl::with_files(
        &pki.nodepulse_ca.cert,
        Some((&pki.front_proxy_client.cert, &pki.front_proxy_client.key)),
    );
    let as_proxied = |user: &str, path: &str| -> (u16, String) {
        let who = format!("X-Remote-User: {user}");
        front_proxy
            .get_with(
                &c,
                &replica(path),
                &[&who, "X-Remote-Group: system:authenticated"],
            )
            .expect("GET")
    };
    for v in VERSIONS {
        for path in paths(v) {
            let (code, body) = as_proxied(USER_NO_RBAC, &path);
            assert_forbidden(
                &format!("ours: {USER_NO_RBAC} {path}"),
                code,
                &body,
                USER_NO_RBAC,
            );
            let (code, body) = as_proxied(READER, &path);
            assert_eq!(code, 200, "ours: {READER} {path}: {body}");
            let (code, body) = as_proxied(VIEWER, &path);
            if path.contains("/namespaces/team-a/") {
                assert_eq!(code, 200, "ours: {VIEWER} {path}: {body}");
            } else {
                assert_forbidden(&format!("ours: {VIEWER} {path}"), code, &body, VIEWER);
            }
        }
    }
    // The verb follows the request: get for an item, list for a collection,
    // watch for ?watch=true.
    let (code, body) = as_proxied(
        GETTER,
        "/apis/metrics.k8s.io/v1/namespaces/team-a/pods/api-1",
    );
    assert_eq!(code, 200, "ours: getter item: {body}");
    let (code, body) = as_proxied(GETTER, "/apis/metrics.k8s.io/v1/namespaces/team-a/pods");
    assert_forbidden("ours: getter list", code, &body, GETTER);
    assert!(
        status_of(&body)["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot list"),
        "{body}"
    );
    let (code, body) = as_proxied(
        USER_METRICS_READER,
        "/apis/metrics.k8s.io/v1/namespaces/team-a/pods?watch=true",
    );
    assert_forbidden(
        "ours: watch without the watch verb",
        code,
        &body,
        USER_METRICS_READER,
    );
    assert!(
        status_of(&body)["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot watch"),
        "{body}"
    );
    let (code, body) = as_proxied(
        READER,
        "/apis/metrics.k8s.io/v1/namespaces/team-a/pods?watch=true",
    );
    eprintln!("ours: watch=true as {READER} (may watch): {code} {body}");
    assert_ne!(code, 403, "{body}");
    assert_ne!(code, 200, "{body}");
    // Namespaced list of the right pods only.
    let (_, body) = as_proxied(VIEWER, "/apis/metrics.k8s.io/v1/namespaces/team-a/pods");
    assert_eq!(item_names(&status_of(&body)), ["team-a/api-1"]);

    // X-Remote-* count only from the front proxy: with a cluster-CA client
    // certificate the user is its CN, whatever the headers say.
    let nobody_direct =
        Curl::new(&c, USER_NO_RBAC, None, Some(&c.pki().nodepulse_ca.cert)).expect("client cert");
    let (code, body) = nobody_direct
        .get_with(
            &c,
            &replica("/apis/metrics.k8s.io/v1/pods"),
            &["X-Remote-User: e2e-admin", "X-Remote-Group: system:masters"],
        )
        .expect("GET");
    assert_forbidden(
        "ours: client cert + spoofed headers",
        code,
        &body,
        USER_NO_RBAC,
    );
    let reader_direct =
        Curl::new(&c, READER, None, Some(&c.pki().nodepulse_ca.cert)).expect("client cert");
    let (code, body) = reader_direct
        .get(&c, &replica("/apis/metrics.k8s.io/v1/nodes"))
        .expect("GET");
    assert_eq!(code, 200, "ours: reader by client cert: {body}");
    // A certificate no trusted CA signed: 401, no fall-through to anonymous.
    let stranger = Curl::with_files(
        &c.pki().nodepulse_ca.cert,
        Some((
            &c.pki().aggregator_serving.cert,
            &c.pki().aggregator_serving.key,
        )),
    );
    match stranger.get(&c, &replica("/apis/metrics.k8s.io/v1/pods")) {
        Ok((code, body)) => {
            eprintln!("ours: untrusted client certificate: {code} {body}");
            assert_eq!(code, 401, "{body}");
        }
        // Refusing the handshake is as good.
        Err(e) => eprintln!("ours: untrusted client certificate: refused ({e:#})"),
    }
    // Anonymous: metrics refused, probes answered.
    let anonymous = Curl::with_files(&c.pki().nodepulse_ca.cert, None);
    let (code, body) = anonymous
        .get(&c, &replica("/apis/metrics.k8s.io/v1/pods"))
        .expect("GET");
    eprintln!("ours: anonymous list: {code} {body}");
    assert!(code == 401 || code == 403, "{code} {body}");
    for probe in ["/healthz", "/livez", "/readyz"] {
        let (code, body) = anonymous.get(&c, &replica(probe)).expect("GET");
        assert_eq!((code, body.trim()), (200, "ok"), "{probe}");
    }
    eprintln!(
        "at the aggregator: {USER_NO_RBAC} 403, {READER} 200, {VIEWER} 200 in team-a only, \
         verbs get/list/watch as the path implies, headers only from the front proxy, \
         anonymous refused, probes open"
    );
    c.ensure_ours_running().expect("nodepulse still running");
    eprintln!("rbac done in {:.1?}", t0.elapsed());
}
