//! Paths, parameters, errors and representations, for both versions. Auth is
//! out of the way here (anonymous, every review allowed); `auth.rs` tests it.

use std::time::Duration;

use aggregator_api::api::selector::LabelSelector;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::support::{Client, Options, TestServer, TestView, status_message};

const VERSIONS: [&str; 2] = ["v1", "v1beta1"];
const KUBECTL_TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Percent-encodes a query value.
fn enc(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn names(reply: &Value) -> Vec<String> {
    reply["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {reply}"))
        .iter()
        .map(|i| {
            let ns = i["metadata"]["namespace"].as_str().unwrap_or("");
            let name = i["metadata"]["name"].as_str().unwrap_or("");
            if ns.is_empty() {
                name.to_owned()
            } else {
                format!("{ns}/{name}")
            }
        })
        .collect()
}

fn base(version: &str) -> String {
    format!("/apis/metrics.k8s.io/{version}")
}

async fn list(client: &Client, path: &str) -> Vec<String> {
    let reply = client.get(path).await;
    assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
    names(&reply.json())
}

#[tokio::test]
async fn node_list_and_item_in_both_versions() {
    let server = TestServer::start(Options::default()).await;
    let client = server.client();
    for v in VERSIONS {
        let reply = client.get(&format!("{}/nodes", base(v))).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let body = reply.json();
        assert_eq!(body["kind"], "NodeMetricsList");
        assert_eq!(body["apiVersion"], format!("metrics.k8s.io/{v}"));
        assert_eq!(body["metadata"], json!({}));
        assert_eq!(
            names(&body),
            ["node-a", "node-b", "win-1"],
            "sorted by name"
        );
        let first = &body["items"][0];
        assert!(first.get("kind").is_none(), "list items carry no kind");
        assert_eq!(first["timestamp"], "2021-12-17T17:57:42Z");
        assert_eq!(first["window"], "15.002s");
        assert_eq!(first["usage"], json!({"cpu": "13m", "memory": "14520Ki"}));
        assert_eq!(first["metadata"]["labels"]["zone"], "a");

        let item = client
            .get(&format!("{}/nodes/node-b", base(v)))
            .await
            .json();
        assert_eq!(item["kind"], "NodeMetrics");
        assert_eq!(item["apiVersion"], format!("metrics.k8s.io/{v}"));
        assert_eq!(item["metadata"]["name"], "node-b");
        assert!(item["metadata"]["creationTimestamp"].is_string());
    }
    server.stop().await;
}

#[tokio::test]
async fn pod_lists_and_items_in_both_versions() {
    let server = TestServer::start(Options::default()).await;
    let client = server.client();
    for v in VERSIONS {
        let b = base(v);
        assert_eq!(
            list(&client, &format!("{b}/pods")).await,
            [
                "default/db-0",
                "default/web-1",
                "default/web-2",
                "kube-system/dns-0"
            ]
        );
        assert_eq!(
            list(&client, &format!("{b}/namespaces/default/pods")).await,
            ["default/db-0", "default/web-1", "default/web-2"]
        );
        assert!(
            list(&client, &format!("{b}/namespaces/empty/pods"))
                .await
                .is_empty()
        );
        let empty = client.get(&format!("{b}/namespaces/empty/pods")).await;
        assert_eq!(
            empty.body,
            format!(
                r#"{{"kind":"PodMetricsList","apiVersion":"metrics.k8s.io/{v}","metadata":{{}},"items":[]}}"#
            )
        );
        let item = client
            .get(&format!("{b}/namespaces/default/pods/web-1"))
            .await
            .json();
        assert_eq!(item["kind"], "PodMetrics");
        assert_eq!(item["metadata"]["namespace"], "default");
        assert_eq!(
            item["containers"],
            json!([{"name": "app", "usage": {"cpu": "7338891n", "memory": "4Mi"}}])
        );
        assert_eq!(item["window"], "15s");
    }
    server.stop().await;
}

#[tokio::test]
async fn label_selectors_of_every_form() {
    let server = TestServer::start(Options::default()).await;
    let client = server.client();
    for v in VERSIONS {
        let nodes = |selector: &str| format!("{}/nodes?labelSelector={}", base(v), enc(selector));
        let cases: &[(&str, &[&str])] = &[
            ("kubernetes.io/os=linux", &["node-a", "node-b"]),
            ("kubernetes.io/os==linux", &["node-a", "node-b"]),
            ("kubernetes.io/os!=linux", &["win-1"]),
            ("zone in (a)", &["node-a", "win-1"]),
            ("zone notin (a)", &["node-b"]),
            ("gpu", &["node-a"]),
            ("!gpu", &["node-b", "win-1"]),
            ("kubernetes.io/os=linux,zone=a", &["node-a"]),
            ("", &["node-a", "node-b", "win-1"]),
        ];
        for (selector, want) in cases {
            assert_eq!(&list(&client, &nodes(selector)).await, want, "{selector}");
        }
        let pods = format!(
            "{}/namespaces/default/pods?labelSelector={}",
            base(v),
            enc("tier in (front,back),app!=db")
        );
        assert_eq!(
            list(&client, &pods).await,
            ["default/web-1", "default/web-2"]
        );
        // `+` is a space in a query, as in Go.
        let plus = format!("{}/nodes?labelSelector=zone+in+(b)", base(v));
        assert_eq!(list(&client, &plus).await, ["node-b"]);
    }
    server.stop().await;
}

#[tokio::test]
async fn field_selectors_and_rejected_ones() {
    let server = TestServer::start(Options::default()).await;
    let client = server.client();
    for v in VERSIONS {
        let b = base(v);
        let nodes = |selector: &str| format!("{b}/nodes?fieldSelector={}", enc(selector));
        assert_eq!(
            list(&client, &nodes("metadata.name=node-b")).await,
            ["node-b"]
        );
        assert_eq!(
            list(&client, &nodes("metadata.name==node-b")).await,
            ["node-b"]
        );
        assert_eq!(
            list(&client, &nodes("metadata.name!=node-b")).await,
            ["node-a", "win-1"]
        );
        assert!(
            list(&client, &nodes("metadata.namespace=x"))
                .await
                .is_empty()
        );
        assert_eq!(
            list(
                &client,
                &format!(
                    "{b}/pods?fieldSelector={}",
                    enc("metadata.namespace=kube-system")
                )
            )
            .await,
            ["kube-system/dns-0"]
        );
        assert_eq!(
            list(
                &client,
                &format!(
                    "{b}/namespaces/default/pods?fieldSelector={}",
                    enc("metadata.name=web-1")
                )
            )
            .await,
            ["default/web-1"]
        );

        let reply = client
            .get(&format!(
                "{b}/pods?fieldSelector={}",
                enc("spec.nodeName=node-a")
            ))
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        let status = reply.json();
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "BadRequest");
        assert_eq!(status["code"], 400);
        assert_eq!(
            status["message"],
            r#""spec.nodeName" is not a known field selector: only "metadata.name", "metadata.namespace""#
        );

        for bad in ["zone in a", "a=(", "!"] {
            let reply = client
                .get(&format!("{b}/nodes?labelSelector={}", enc(bad)))
                .await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(reply.json()["reason"], "BadRequest");
            assert!(!status_message(&reply).is_empty());
        }
        // Bytes that are not UTF-8 are a bad selector, as kube-apiserver
        // says, not an absent one that matches everything.
        for query in [
            "labelSelector=%ff%fe",
            "labelSelector=role%3D%ff",
            "fieldSelector=%ff",
        ] {
            for path in ["nodes", "pods"] {
                let reply = client.get(&format!("{b}/{path}?{query}")).await;
                assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}?{query}");
                assert_eq!(reply.json()["reason"], "BadRequest", "{path}?{query}");
            }
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn paging_parameters_are_ignored_and_watch_is_405() {
    let server = TestServer::start(Options::default()).await;
    let client = server.client();
    for v in VERSIONS {
        let b = base(v);
        assert_eq!(
            list(
                &client,
                &format!("{b}/nodes?limit=1&continue=abc&resourceVersion=0")
            )
            .await,
            ["node-a", "node-b", "win-1"]
        );
        for (path, resource) in [
            (format!("{b}/nodes?watch=true"), "nodes"),
            (format!("{b}/pods?watch=1"), "pods"),
            (format!("{b}/namespaces/default/pods?watch=true"), "pods"),
        ] {
            let reply = client.get(&path).await;
            assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
            let status = reply.json();
            assert_eq!(status["reason"], "MethodNotAllowed");
            assert_eq!(
                status["message"],
                format!(
                    "watch is not supported on resources of kind \"{resource}.metrics.k8s.io\""
                )
            );
        }
        assert_eq!(
            list(&client, &format!("{b}/nodes?watch=false")).await.len(),
            3
        );
        let reply = client.get(&format!("{b}/nodes?watch=maybe")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    }
    server.stop().await;
}

#[tokio::test]
async fn every_not_found_status() {
    let server = TestServer::start(Options::default()).await;
    let client = server.client();
    for v in VERSIONS {
        let b = base(v);
        let cases = [
            (
                format!("{b}/nodes/nope"),
                json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"node \"nope\" not found","reason":"NotFound","details":{"name":"nope","kind":"node"},"code":404}),
            ),
            (
                format!("{b}/nodes/node-new"),
                json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"nodemetrics.metrics.k8s.io \"node-new\" not found","reason":"NotFound","details":{"name":"node-new","group":"metrics.k8s.io","kind":"nodemetrics"},"code":404}),
            ),
            (
                format!("{b}/namespaces/default/pods/nope"),
                json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods \"nope\" not found","reason":"NotFound","details":{"name":"nope","kind":"pods"},"code":404}),
            ),
            (
                format!("{b}/namespaces/kube-system/pods/web-1"),
                json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods \"web-1\" not found","reason":"NotFound","details":{"name":"web-1","kind":"pods"},"code":404}),
            ),
            (
                format!("{b}/namespaces/default/pods/starting"),
                json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"podmetrics.metrics.k8s.io \"default/starting\" not found","reason":"NotFound","details":{"name":"default/starting","group":"metrics.k8s.io","kind":"podmetrics"},"code":404}),
            ),
        ];
        for (path, want) in cases {
            let reply = client.get(&path).await;
            assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(reply.header("content-type"), Some("application/json"));
            assert_eq!(reply.json(), want, "{path}");
        }
    }
    for path in [
        "/nope",
        "/apis/metrics.k8s.io/v2",
        "/apis/metrics.k8s.io/v1beta1/pods/x",
        "/apis/metrics.k8s.io/v1beta1/nodes/a/b",
        "/openapi/v3/apis/metrics.k8s.io/v2",
        "/readyz/nope",
    ] {
        let reply = client.get(path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            reply.json(),
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","details":{},"code":404}),
            "{path}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn other_methods() {
    let server = TestServer::start(Options::default()).await;
    let client = server.client();
    let reply = client
        .request(Method::POST, "/apis/metrics.k8s.io/v1beta1/nodes", &[])
        .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        status_message(&reply),
        "create is not supported on resources of kind \"nodes.metrics.k8s.io\""
    );
    let reply = client
        .request(
            Method::DELETE,
            "/apis/metrics.k8s.io/v1/namespaces/a/pods/b",
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        server
            .access
            .last()
            .and_then(|s| s.resource_attributes)
            .map(|r| r.verb),
        Some("delete".to_owned()),
        "authorized with the verb the method implies"
    );
    let reply = client.request(Method::POST, "/apis", &[]).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = client
        .request(Method::HEAD, "/apis/metrics.k8s.io/v1/nodes", &[])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.is_empty(), "HEAD has no body");
    server.stop().await;
}

#[tokio::test]
async fn node_selector_hides_nodes() {
    let options = Options {
        customize: Box::new(|b| {
            b.node_selector(LabelSelector::parse("kubernetes.io/os=linux").expect("selector"))
        }),
        ..Options::default()
    };
    let server = TestServer::start(options).await;
    let client = server.client();
    assert_eq!(
        list(&client, "/apis/metrics.k8s.io/v1/nodes").await,
        ["node-a", "node-b"]
    );
    let reply = client.get("/apis/metrics.k8s.io/v1/nodes/win-1").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(status_message(&reply), "node \"win-1\" not found");
    server.stop().await;
}

#[tokio::test]
async fn tables_with_and_without_rows() {
    let server = TestServer::start(Options::default()).await;
    let client = server.client();
    for v in VERSIONS {
        let b = base(v);
        let reply = client
            .get_with(&format!("{b}/nodes"), &[("accept", KUBECTL_TABLE)])
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let table = reply.json();
        assert_eq!(table["kind"], "Table");
        assert_eq!(table["apiVersion"], "meta.k8s.io/v1");
        let columns: Vec<&str> = table["columnDefinitions"]
            .as_array()
            .expect("columns")
            .iter()
            .map(|c| c["name"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(columns, ["Name", "cpu", "memory", "Window"]);
        assert_eq!(table["rows"].as_array().map(Vec::len), Some(3));
        assert_eq!(
            table["rows"][0]["cells"],
            json!(["node-a", "13m", "14520Ki", "15.002s"])
        );
        assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");

        let full = client
            .get_with(
                &format!("{b}/nodes?includeObject=Object"),
                &[("accept", KUBECTL_TABLE)],
            )
            .await
            .json();
        assert_eq!(full["rows"][0]["object"]["kind"], "NodeMetrics");
        assert_eq!(full["rows"][0]["object"]["usage"]["cpu"], "13m");
        let none = client
            .get_with(
                &format!("{b}/nodes?includeObject=None"),
                &[("accept", KUBECTL_TABLE)],
            )
            .await
            .json();
        assert_eq!(none["rows"][0]["object"], Value::Null);
        let bad = client
            .get_with(
                &format!("{b}/nodes?includeObject=Everything"),
                &[("accept", KUBECTL_TABLE)],
            )
            .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert!(
            status_message(&bad).contains("includeObject"),
            "{}",
            bad.body
        );
        let plain = client
            .get(&format!("{b}/nodes?includeObject=Everything"))
            .await;
        assert_eq!(
            plain.status,
            StatusCode::OK,
            "includeObject only matters for tables"
        );

        let empty = client
            .get_with(
                &format!("{b}/nodes?labelSelector=nothing"),
                &[(
                    "accept",
                    "application/json;as=Table;v=v1beta1;g=meta.k8s.io",
                )],
            )
            .await
            .json();
        assert_eq!(
            empty,
            json!({"kind":"Table","apiVersion":"meta.k8s.io/v1beta1","metadata":{},"columnDefinitions":null,"rows":null})
        );

        let one = client
            .get_with(&format!("{b}/nodes/node-b"), &[("accept", KUBECTL_TABLE)])
            .await
            .json();
        assert_eq!(one["rows"].as_array().map(Vec::len), Some(1));
        assert_eq!(one["rows"][0]["cells"][0], "node-b");

        let pods = client
            .get_with(
                &format!("{b}/namespaces/default/pods"),
                &[("accept", KUBECTL_TABLE)],
            )
            .await
            .json();
        assert_eq!(
            pods["rows"][0]["cells"],
            json!(["db-0", "7338891n", "4Mi", "15s"])
        );
        assert_eq!(
            pods["rows"][0]["object"]["metadata"]["namespace"],
            "default"
        );
        let pod = client
            .get_with(
                &format!("{b}/namespaces/default/pods/web-2"),
                &[("accept", KUBECTL_TABLE)],
            )
            .await
            .json();
        assert_eq!(pod["rows"][0]["cells"][0], "web-2");
    }
    server.stop().await;
}

#[tokio::test]
async fn negotiation_prefers_json_and_refuses_with_406() {
    let server = TestServer::start(Options::default()).await;
    let client = server.client();
    let path = "/apis/metrics.k8s.io/v1beta1/nodes";
    for accept in [
        "application/json",
        "*/*",
        "application/json;as=Table;v=v2;g=meta.k8s.io, application/json",
    ] {
        let reply = client.get_with(path, &[("accept", accept)]).await;
        assert_eq!(reply.status, StatusCode::OK, "{accept}");
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(reply.json()["kind"], "NodeMetricsList");
    }
    for accept in ["text/plain", "application/yaml"] {
        let reply = client.get_with(path, &[("accept", accept)]).await;
        assert_eq!(reply.status, StatusCode::NOT_ACCEPTABLE, "{accept}");
        assert_eq!(
            reply.json(),
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"only the following media types are accepted: application/json, application/vnd.kubernetes.protobuf","reason":"NotAcceptable","code":406})
        );
    }
    let reply = client
        .get_with(
            "/apis/metrics.k8s.io/v1/nodes/nope",
            &[("accept", "text/plain")],
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::NOT_ACCEPTABLE,
        "negotiation comes first"
    );
    let reply = client
        .get_with("/apis/metrics.k8s.io/v1beta1", &[("accept", KUBECTL_TABLE)])
        .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "no table for discovery, JSON fallback"
    );
    assert_eq!(reply.json()["kind"], "APIResourceList");
    server.stop().await;
}

#[tokio::test]
async fn discovery_documents() {
    let server = TestServer::start(Options::default()).await;
    let client = server.client();
    let reply = client.get("/apis/metrics.k8s.io/v1beta1").await;
    assert_eq!(
        reply.body,
        r#"{"kind":"APIResourceList","apiVersion":"v1","groupVersion":"metrics.k8s.io/v1beta1","resources":[{"name":"nodes","singularName":"","namespaced":false,"kind":"NodeMetrics","verbs":["get","list"]},{"name":"pods","singularName":"","namespaced":true,"kind":"PodMetrics","verbs":["get","list"]}]}"#
    );
    assert_eq!(
        client.get("/apis/metrics.k8s.io/v1").await.json()["groupVersion"],
        "metrics.k8s.io/v1"
    );

    let group = client.get("/apis/metrics.k8s.io").await.json();
    assert_eq!(group["kind"], "APIGroup");
    assert_eq!(group["name"], "metrics.k8s.io");
    assert_eq!(group["preferredVersion"]["version"], "v1");
    assert_eq!(group["versions"].as_array().map(Vec::len), Some(2));

    let legacy = client.get("/apis").await;
    assert_eq!(legacy.status, StatusCode::OK);
    assert_eq!(legacy.header("content-type"), Some("application/json"));
    assert_eq!(legacy.header("vary"), Some("Accept"));
    assert_eq!(legacy.json()["kind"], "APIGroupList");
    assert!(legacy.header("etag").is_none());

    let aggregated = client.get_with("/apis", &[("accept", AGGREGATED)]).await;
    assert_eq!(aggregated.status, StatusCode::OK);
    assert_eq!(aggregated.header("content-type"), Some(AGGREGATED));
    assert_eq!(aggregated.header("vary"), Some("Accept"));
    let etag = aggregated.header("etag").expect("etag").to_owned();
    let body = aggregated.json();
    assert_eq!(body["kind"], "APIGroupDiscoveryList");
    assert_eq!(body["items"][0]["versions"][0]["version"], "v1");
    assert_eq!(body["items"][0]["versions"][1]["version"], "v1beta1");

    let again = client
        .get_with(
            "/apis",
            &[("accept", AGGREGATED), ("if-none-match", etag.as_str())],
        )
        .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    let changed = client
        .get_with(
            "/apis",
            &[("accept", AGGREGATED), ("if-none-match", "\"other\"")],
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK);

    let fallback = client
        .get_with(
            "/apis",
            &[("accept", "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json")],
        )
        .await;
    assert_eq!(fallback.json()["kind"], "APIGroupList");

    let version = client.get("/version").await.json();
    assert!(
        version["gitVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with('v'))
    );
    assert_eq!(version["compiler"], "rustc");
    assert!(
        version["platform"]
            .as_str()
            .is_some_and(|p| p.contains('/'))
    );
    assert!(version["major"].is_string() && version["minor"].is_string());
    server.stop().await;
}

#[tokio::test]
async fn health_probes() {
    let server = TestServer::start(Options::default()).await;
    let client = server.client();
    for path in [
        "/healthz",
        "/livez",
        "/readyz",
        "/readyz/ping",
        "/livez/ping",
    ] {
        let reply = client.get(path).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "ok"),
            "{path}"
        );
    }
    let verbose = client.get("/readyz?verbose").await;
    assert_eq!(verbose.status, StatusCode::OK);
    assert!(verbose.body.contains("[+]authentication-config ok\n"));
    assert!(verbose.body.contains("[+]metric-storage-ready ok\n"));
    assert!(verbose.body.ends_with("readyz check passed\n"));

    server.app.begin_shutdown();
    let reply = client.get("/readyz").await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(reply.body.contains("[-]shutdown failed: reason withheld\n"));
    assert_eq!(client.get("/livez").await.status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn readyz_fails_until_data_and_auth_config() {
    let options = Options {
        view: TestView::default(),
        auth_loaded: false,
        customize: Box::new(|b| b.live_check("always-ok", || Ok(()))),
        ..Options::default()
    };
    let server = TestServer::start(options).await;
    let client = server.client();
    let reply = client.get("/readyz").await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        reply.body,
        "[+]ping ok\n[+]always-ok ok\n[-]authentication-config failed: reason withheld\n[-]metric-storage-ready failed: reason withheld\n[+]shutdown ok\nreadyz check failed\n"
    );
    assert_eq!(client.get("/livez").await.status, StatusCode::OK);
    assert_eq!(
        client.get("/readyz/metric-storage-ready").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    // Lists still answer (empty), as metrics-server does before its first scrape.
    let nodes = client.get("/apis/metrics.k8s.io/v1/nodes").await;
    assert_eq!(nodes.status, StatusCode::OK);
    assert_eq!(nodes.json()["items"], json!([]));

    server.auth.store(server.pki.auth_config());
    server
        .view
        .nodes
        .lock()
        .expect("lock")
        .push(super::support::node("n", &[]));
    assert_eq!(client.get("/readyz").await.body, "ok");
    server.stop().await;
}

#[tokio::test]
async fn metrics_count_requests() {
    let server = TestServer::start(Options::default()).await;
    let client = server.client();
    client.get("/apis/metrics.k8s.io/v1/nodes").await;
    client.get("/apis/metrics.k8s.io/v1/nodes").await;
    client.get("/apis/metrics.k8s.io/v1/nodes/nope").await;
    client.get("/apis/metrics.k8s.io/v1/pods?watch=true").await;
    let text = client.get("/metrics").await;
    assert_eq!(text.status, StatusCode::OK);
    assert!(
        text.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain"))
    );
    for line in [
        "apiserver_request_total{verb=\"LIST\",resource=\"nodes\",code=\"200\"} 2",
        "apiserver_request_total{verb=\"GET\",resource=\"nodes\",code=\"404\"} 1",
        "apiserver_request_total{verb=\"WATCH\",resource=\"pods\",code=\"405\"} 1",
        "apiserver_request_duration_seconds_count{verb=\"LIST\",resource=\"nodes\"} 2",
        "nodepulse_authentication_attempts_total{result=\"success\",method=\"anonymous\"}",
        "nodepulse_authorization_decisions_total{decision=\"allowed\"}",
    ] {
        assert!(text.body.contains(line), "missing {line}\n{}", text.body);
    }
    server.stop().await;
}

#[tokio::test]
async fn http2_and_http1_are_both_served() {
    let server = TestServer::start(Options::default()).await;
    let h2 = Client::new(server.addr, &server.pki.server_ca.pem(), None, true);
    let reply = h2.get("/apis/metrics.k8s.io/v1/nodes").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.version, http::Version::HTTP_2);
    let reply = server.client().get("/apis/metrics.k8s.io/v1/nodes").await;
    assert_eq!(reply.version, http::Version::HTTP_11);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_drains_open_connections() {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let server = TestServer::start(Options::default()).await;
    // An idle HTTP/2 connection kept open across the shutdown.
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        rustls_pki_types::CertificateDer::pem_slice_iter(server.pki.server_ca.pem().as_bytes())
    {
        roots.add(cert.expect("pem")).expect("root");
    }
    use rustls_pki_types::pem::PemObject as _;
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").expect("name"),
            tcp,
        )
        .await
        .expect("handshake");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2");
    let conn_task = tokio::spawn(conn);
    let request = http::Request::get("https://localhost/livez")
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(
        sender
            .send_request(request)
            .await
            .expect("response")
            .status(),
        StatusCode::OK
    );
    let addr = server.addr;
    tokio::time::timeout(Duration::from_secs(5), server.stop())
        .await
        .expect("drained promptly despite an open connection");
    tokio::time::timeout(Duration::from_secs(5), conn_task)
        .await
        .expect("client sees the connection close")
        .expect("task")
        .ok();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn metrics_include_ingest_and_store_figures() {
    use aggregator_api::store::Store;
    use proto::v1::{NodeReport, Usage};
    use std::sync::Arc;
    use std::time::{SystemTime, UNIX_EPOCH};

    let store = Arc::new(Store::default());
    let now = SystemTime::now();
    let good = NodeReport {
        node: "n1".to_owned(),
        sample_unix_nanos: now
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos() as i64,
        node_usage: Some(Usage {
            cpu_ns: 1,
            memory_working_set_bytes: 1,
            swap_bytes: None,
            read_unix_nanos: None,
        }),
        metadata: Some(Default::default()),
        ..NodeReport::default()
    };
    store.apply(&good, now).expect("a good report applies");
    let bad = NodeReport {
        node: String::new(),
        ..good.clone()
    };
    assert!(store.apply(&bad, now).is_err());
    let source = Arc::clone(&store);
    let server = TestServer::start(Options {
        customize: Box::new(move |app| app.metrics_source(move |out| source.stats().render(out))),
        ..Options::default()
    })
    .await;
    let text = server.client().get("/metrics").await.body;
    for line in [
        "nodepulse_store_reports_total{outcome=\"applied\"} 1",
        "nodepulse_store_reports_total{outcome=\"rejected\"} 1",
        "nodepulse_store_samples_total{reason=\"reset\"} 0",
        "# TYPE nodepulse_store_evicted_nodes_total counter",
        "nodepulse_store_counter_restarts_total 0",
        // The server's own figures are still there.
        "# TYPE apiserver_request_total counter",
    ] {
        assert!(text.contains(line), "missing {line}\n{text}");
    }
    server.stop().await;
}
