//! `application/vnd.kubernetes.protobuf` over the wire: every resource path of
//! both versions decoded with prost types generated from the upstream
//! `generated.proto` files (crate `upstream-proto`, an independent decoder)
//! must say exactly what the JSON answer to the same request says; errors come
//! back as protobuf `Status` when protobuf was negotiated.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aggregator_api::time::{go_duration, rfc3339_seconds};
use http::StatusCode;
use serde_json::{Value, json};
use upstream_proto::meta;

use crate::support::{Options, Reply, TestServer};

const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";
/// What client-go (kubectl top, the HPA) sends.
const CLIENT_GO: &str = "application/vnd.kubernetes.protobuf, */*";

fn time(t: Option<meta::Time>) -> Value {
    match t {
        Some(t) => {
            let secs = t.seconds.unwrap_or_default();
            let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).expect("after 1970"));
            json!(rfc3339_seconds(at))
        }
        None => Value::Null,
    }
}

fn window(d: Option<meta::Duration>) -> Value {
    let nanos = d.and_then(|d| d.duration).unwrap_or_default();
    json!(go_duration(Duration::from_nanos(
        u64::try_from(nanos).expect("non-negative")
    )))
}

fn quantities(
    map: &std::collections::HashMap<
        String,
        upstream_proto::k8s::io::apimachinery::pkg::api::resource::Quantity,
    >,
) -> Value {
    let sorted: BTreeMap<&String, Value> = map
        .iter()
        .map(|(k, q)| (k, json!(q.string.clone().unwrap_or_default())))
        .collect();
    json!(sorted)
}

/// The JSON shape of a decoded `ObjectMeta` (creationTimestamp checked
/// separately: it is the response time).
fn object_meta(m: Option<meta::ObjectMeta>) -> Value {
    let m = m.expect("metadata present");
    let created = time(m.creation_timestamp);
    let now = rfc3339_seconds(SystemTime::now());
    let created = created.as_str().expect("creationTimestamp set");
    assert!(
        created <= now.as_str()
            && created >= rfc3339_seconds(SystemTime::now() - Duration::from_secs(60)).as_str(),
        "creationTimestamp {created} is the response time (now {now})"
    );
    let mut out = json!({"name": m.name.unwrap_or_default()});
    if let Some(ns) = m.namespace.filter(|n| !n.is_empty()) {
        out["namespace"] = json!(ns);
    }
    if !m.labels.is_empty() {
        let sorted: BTreeMap<String, String> = m.labels.into_iter().collect();
        out["labels"] = json!(sorted);
    }
    out
}

/// Upstream's v1 and v1beta1 messages are distinct Rust types with one
/// shape; this macro renders either as the JSON the server would send.
macro_rules! render {
    ($name:ident, $v:ident) => {
        mod $name {
            use super::*;
            use upstream_proto::$v as m;

            pub fn node(n: m::NodeMetrics) -> Value {
                json!({
                    "metadata": object_meta(n.metadata),
                    "timestamp": time(n.timestamp),
                    "window": window(n.window),
                    "usage": quantities(&n.usage),
                })
            }

            pub fn pod(p: m::PodMetrics) -> Value {
                json!({
                    "metadata": object_meta(p.metadata),
                    "timestamp": time(p.timestamp),
                    "window": window(p.window),
                    "containers": p.containers.into_iter().map(|c| json!({
                        "name": c.name.unwrap_or_default(),
                        "usage": quantities(&c.usage),
                    })).collect::<Vec<_>>(),
                })
            }

            pub fn decode(body: &[u8], kind: &str) -> Value {
                let (api_version, got_kind, value) = match kind {
                    "NodeMetrics" => {
                        let (a, k, n) = upstream_proto::decode::<m::NodeMetrics>(body).expect("decodes");
                        (a, k, node(n))
                    }
                    "PodMetrics" => {
                        let (a, k, p) = upstream_proto::decode::<m::PodMetrics>(body).expect("decodes");
                        (a, k, pod(p))
                    }
                    "NodeMetricsList" => {
                        let (a, k, l) = upstream_proto::decode::<m::NodeMetricsList>(body).expect("decodes");
                        let meta = l.metadata.expect("list metadata present");
                        assert_eq!(meta, Default::default(), "empty ListMeta");
                        (a, k, json!({"metadata": {}, "items": l.items.into_iter().map(node).collect::<Vec<_>>()}))
                    }
                    "PodMetricsList" => {
                        let (a, k, l) = upstream_proto::decode::<m::PodMetricsList>(body).expect("decodes");
                        let meta = l.metadata.expect("list metadata present");
                        assert_eq!(meta, Default::default(), "empty ListMeta");
                        (a, k, json!({"metadata": {}, "items": l.items.into_iter().map(pod).collect::<Vec<_>>()}))
                    }
                    other => panic!("unexpected kind {other}"),
                };
                assert_eq!(got_kind, kind);
                let mut value = value;
                value["kind"] = json!(got_kind);
                value["apiVersion"] = json!(api_version);
                value
            }
        }
    };
}
render!(v1, metrics_v1);
render!(v1beta1, metrics_v1beta1);

/// The JSON answer with every `creationTimestamp` removed.
fn json_without_creation(reply: &Reply) -> Value {
    let mut value = reply.json();
    let strip = |v: &mut Value| {
        v["metadata"]
            .as_object_mut()
            .map(|m| m.remove("creationTimestamp"));
    };
    if let Some(items) = value.get_mut("items").and_then(Value::as_array_mut) {
        items.iter_mut().for_each(strip);
    } else {
        strip(&mut value);
    }
    value
}

#[tokio::test]
async fn every_path_in_protobuf_says_what_json_says() {
    let server = TestServer::start(Options::default()).await;
    let client = server.client();
    for version in ["v1", "v1beta1"] {
        let b = format!("/apis/metrics.k8s.io/{version}");
        for (path, kind, items) in [
            (format!("{b}/nodes"), "NodeMetricsList", Some(3)),
            (
                format!("{b}/nodes?labelSelector=zone%3Da"),
                "NodeMetricsList",
                Some(2),
            ),
            (format!("{b}/nodes/node-a"), "NodeMetrics", None),
            (format!("{b}/pods"), "PodMetricsList", Some(4)),
            (
                format!("{b}/namespaces/default/pods"),
                "PodMetricsList",
                Some(3),
            ),
            (
                format!("{b}/namespaces/default/pods?labelSelector=app%3Dweb"),
                "PodMetricsList",
                Some(2),
            ),
            (
                format!("{b}/namespaces/nobody/pods"),
                "PodMetricsList",
                Some(0),
            ),
            (
                format!("{b}/namespaces/kube-system/pods/dns-0"),
                "PodMetrics",
                None,
            ),
        ] {
            for accept in [CLIENT_GO, PROTOBUF] {
                let reply = client.get_with(&path, &[("accept", accept)]).await;
                assert_eq!(reply.status, StatusCode::OK, "{path} {accept}");
                assert_eq!(reply.header("content-type"), Some(PROTOBUF), "{path}");
                let decoded = match version {
                    "v1" => v1::decode(&reply.bytes, kind),
                    _ => v1beta1::decode(&reply.bytes, kind),
                };
                let json = client
                    .get_with(&path, &[("accept", "application/json")])
                    .await;
                assert_eq!(json.header("content-type"), Some("application/json"));
                let expected = json_without_creation(&json);
                assert_eq!(decoded, expected, "{path} {accept}");
                if let Some(n) = items {
                    assert_eq!(decoded["items"].as_array().map(Vec::len), Some(n), "{path}");
                }
            }
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn errors_are_protobuf_status_when_protobuf_was_negotiated() {
    let server = TestServer::start(Options::default()).await;
    let client = server.client();
    for (path, code, reason) in [
        ("/apis/metrics.k8s.io/v1beta1/nodes/nope", 404, "NotFound"),
        (
            "/apis/metrics.k8s.io/v1/namespaces/default/pods/starting",
            404,
            "NotFound",
        ),
        (
            "/apis/metrics.k8s.io/v1/pods?labelSelector=a%20in",
            400,
            "BadRequest",
        ),
        (
            "/apis/metrics.k8s.io/v1/pods?watch=true",
            405,
            "MethodNotAllowed",
        ),
    ] {
        let json = client
            .get_with(path, &[("accept", "application/json")])
            .await;
        let expected = json.json();
        for accept in [CLIENT_GO, PROTOBUF] {
            let reply = client.get_with(path, &[("accept", accept)]).await;
            assert_eq!(reply.status.as_u16(), code, "{path}");
            assert_eq!(reply.header("content-type"), Some(PROTOBUF), "{path}");
            let (api_version, kind, status) =
                upstream_proto::decode::<meta::Status>(&reply.bytes).expect("Status decodes");
            assert_eq!((api_version.as_str(), kind.as_str()), ("v1", "Status"));
            assert_eq!(status.code, Some(i32::from(code)), "{path}");
            assert_eq!(status.reason.as_deref(), Some(reason), "{path}");
            assert_eq!(status.status.as_deref(), Some("Failure"));
            assert_eq!(
                status.message.as_deref(),
                expected["message"].as_str(),
                "{path}"
            );
            let details = status.details.unwrap_or_default();
            assert_eq!(
                details.name.unwrap_or_default(),
                expected["details"]["name"].as_str().unwrap_or_default(),
                "{path}"
            );
            assert_eq!(
                details.kind.unwrap_or_default(),
                expected["details"]["kind"].as_str().unwrap_or_default(),
                "{path}"
            );
            assert_eq!(
                details.group.unwrap_or_default(),
                expected["details"]["group"].as_str().unwrap_or_default(),
                "{path}"
            );
        }
    }
    // Nothing acceptable: the 406 itself is JSON, listing both types.
    let reply = client
        .get_with("/apis/metrics.k8s.io/v1/nodes", &[("accept", "text/plain")])
        .await;
    assert_eq!(reply.status, StatusCode::NOT_ACCEPTABLE);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        reply.json()["message"],
        "only the following media types are accepted: application/json, application/vnd.kubernetes.protobuf"
    );
    // A Table is JSON only: protobuf-only Table requests are refused.
    let reply = client
        .get_with(
            "/apis/metrics.k8s.io/v1/nodes",
            &[(
                "accept",
                "application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io",
            )],
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_ACCEPTABLE);
    server.stop().await;
}
