//! Wire types of metrics.k8s.io, and the functions that render store data
//! into them (the discovery documents are in [`super::discovery`]).
//!
//! Field order, omitted-when-empty rules and string formats follow what
//! metrics-server's Go types produce (`k8s.io/metrics/pkg/apis/metrics/v1beta1`,
//! `metav1.ObjectMeta`, `metav1.Time`, `metav1.Duration`), because consumers
//! parse them with Go: `window` must be Go `time.Duration` text and timestamps
//! RFC 3339 in whole seconds. Items of a list carry no `kind`/`apiVersion`, the
//! single objects do.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::quantity::{format_bytes, format_cpu_nanocores};
use super::{ApiVersion, NodeUsage, PodUsage, Resource};
use crate::time::{go_duration, rfc3339_seconds};

/// What can go wrong turning values into wire bytes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// JSON encoding failed (not expected for these types; kept so callers
    /// never have to unwrap).
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Serialises a wire value to the exact JSON bytes sent.
pub fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(value)?)
}

// ---------------------------------------------------------------------------
// Metrics objects
// ---------------------------------------------------------------------------

/// `metav1.ObjectMeta` as metrics-server fills it: name, namespace (pods),
/// creation time, labels. Field order is Go's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ObjectMeta {
    /// Object name.
    pub name: String,
    /// Namespace; omitted for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// RFC 3339; metrics-server sets the time the response was built. `None`
    /// renders as `null`, as Go renders a zero `metav1.Time`.
    #[serde(rename = "creationTimestamp")]
    pub creation_timestamp: Option<String>,
    /// The live object's labels; omitted when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// `metav1.ListMeta` of a response built on the fly: always `{}` (no
/// resourceVersion, no continue token; `limit`/`continue` are ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ListMeta {}

/// Resource name → canonical quantity (`cpu`, `memory`, optional `swap`).
/// A `BTreeMap` so keys come out sorted, as Go's map encoding sorts them.
pub type Usage = BTreeMap<String, String>;

/// A `NodeMetrics` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMetrics {
    /// `NodeMetrics` on a single object; absent on list items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `metrics.k8s.io/<version>` on a single object; absent on list items.
    #[serde(
        rename = "apiVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub api_version: Option<String>,
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// End of the sampling window, RFC 3339 whole seconds.
    pub timestamp: String,
    /// Length of the sampling window, Go duration text.
    pub window: String,
    /// Usage quantities.
    pub usage: Usage,
}

/// A container inside [`PodMetrics`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerMetrics {
    /// Container name.
    pub name: String,
    /// Usage quantities.
    pub usage: Usage,
}

/// A `PodMetrics` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodMetrics {
    /// `PodMetrics` on a single object; absent on list items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `metrics.k8s.io/<version>` on a single object; absent on list items.
    #[serde(
        rename = "apiVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub api_version: Option<String>,
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// End of the sampling window.
    pub timestamp: String,
    /// Length of the sampling window.
    pub window: String,
    /// Per-container usage.
    pub containers: Vec<ContainerMetrics>,
}

/// A `NodeMetricsList`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMetricsList {
    /// `NodeMetricsList`.
    pub kind: String,
    /// `metrics.k8s.io/<version>`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// Always `{}`.
    pub metadata: ListMeta,
    /// Items sorted by name; `[]` when empty.
    pub items: Vec<NodeMetrics>,
}

/// A `PodMetricsList`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodMetricsList {
    /// `PodMetricsList`.
    pub kind: String,
    /// `metrics.k8s.io/<version>`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// Always `{}`.
    pub metadata: ListMeta,
    /// Items sorted by namespace then name; `[]` when empty.
    pub items: Vec<PodMetrics>,
}

/// The usage map for one set of numbers; `swap` only when known.
pub fn usage(cpu_nanocores: u64, memory_bytes: u64, swap_bytes: Option<u64>) -> Usage {
    let mut out = Usage::new();
    out.insert("cpu".to_owned(), format_cpu_nanocores(cpu_nanocores));
    out.insert("memory".to_owned(), format_bytes(memory_bytes));
    if let Some(swap) = swap_bytes {
        out.insert("swap".to_owned(), format_bytes(swap));
    }
    out
}

fn node_item(node: &NodeUsage, now: SystemTime) -> NodeMetrics {
    NodeMetrics {
        kind: None,
        api_version: None,
        metadata: ObjectMeta {
            name: node.name.to_string(),
            namespace: String::new(),
            creation_timestamp: Some(rfc3339_seconds(now)),
            labels: node.labels.to_map(),
        },
        timestamp: rfc3339_seconds(node.timestamp),
        window: go_duration(node.window),
        usage: usage(node.cpu_nanocores, node.memory_bytes, node.swap_bytes),
    }
}

fn pod_item(pod: &PodUsage, now: SystemTime) -> PodMetrics {
    PodMetrics {
        kind: None,
        api_version: None,
        metadata: ObjectMeta {
            name: pod.name.to_string(),
            namespace: pod.namespace.to_string(),
            creation_timestamp: Some(rfc3339_seconds(now)),
            labels: pod.labels.to_map(),
        },
        timestamp: rfc3339_seconds(pod.timestamp),
        window: go_duration(pod.window),
        containers: pod
            .containers
            .iter()
            .map(|c| ContainerMetrics {
                name: c.name.to_string(),
                usage: usage(c.cpu_nanocores, c.memory_bytes, c.swap_bytes),
            })
            .collect(),
    }
}

/// The answer to `GET …/nodes/{name}`: one object with `kind`/`apiVersion`.
/// `now` becomes `creationTimestamp`.
pub fn node_metrics(node: &NodeUsage, version: ApiVersion, now: SystemTime) -> NodeMetrics {
    NodeMetrics {
        kind: Some(Resource::Nodes.kind().to_owned()),
        api_version: Some(version.group_version().to_owned()),
        ..node_item(node, now)
    }
}

/// The answer to `GET …/namespaces/{ns}/pods/{name}`.
pub fn pod_metrics(pod: &PodUsage, version: ApiVersion, now: SystemTime) -> PodMetrics {
    PodMetrics {
        kind: Some(Resource::Pods.kind().to_owned()),
        api_version: Some(version.group_version().to_owned()),
        ..pod_item(pod, now)
    }
}

/// The answer to `GET …/nodes`, items sorted by name: the oracle of
/// [`super::json::node_list`].
#[cfg(test)]
pub fn node_metrics_list(
    nodes: &[NodeUsage],
    version: ApiVersion,
    now: SystemTime,
) -> NodeMetricsList {
    NodeMetricsList {
        kind: Resource::Nodes.list_kind().to_owned(),
        api_version: version.group_version().to_owned(),
        metadata: ListMeta {},
        items: super::sorted_nodes(nodes)
            .into_iter()
            .map(|n| node_item(n, now))
            .collect(),
    }
}

/// The answer to `GET …/pods` and `…/namespaces/{ns}/pods`, items sorted by
/// namespace, then name: the oracle of the pod list encoders.
#[cfg(test)]
pub fn pod_metrics_list(pods: &[PodUsage], version: ApiVersion, now: SystemTime) -> PodMetricsList {
    PodMetricsList {
        kind: Resource::Pods.list_kind().to_owned(),
        api_version: version.group_version().to_owned(),
        metadata: ListMeta {},
        items: super::sorted_pods(pods)
            .into_iter()
            .map(|p| pod_item(p, now))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::super::ContainerUsage;
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn json<T: Serialize>(v: &T) -> String {
        String::from_utf8(to_json(v).expect("serialises")).expect("utf-8")
    }

    fn node() -> NodeUsage {
        NodeUsage {
            name: "node-1".to_owned().into(),
            labels: BTreeMap::from([("kubernetes.io/os".to_owned(), "linux".to_owned())]).into(),
            timestamp: at(1_639_763_862),
            window: Duration::from_millis(15_002),
            cpu_nanocores: 13_000_000,
            memory_bytes: 14_868_480,
            swap_bytes: None,
        }
    }

    fn pod(ns: &str, name: &str) -> PodUsage {
        PodUsage {
            namespace: ns.to_owned().into(),
            name: name.to_owned().into(),
            labels: BTreeMap::new().into(),
            timestamp: at(1_639_763_862),
            window: Duration::from_secs(15),
            containers: vec![ContainerUsage {
                name: "app".to_owned().into(),
                cpu_nanocores: 7_338_891,
                memory_bytes: 4_194_304,
                swap_bytes: Some(0),
            }],
        }
    }

    #[test]
    fn single_node_has_kind_and_go_field_order() {
        let got = json(&node_metrics(
            &node(),
            ApiVersion::V1Beta1,
            at(1_639_763_900),
        ));
        assert_eq!(
            got,
            r#"{"kind":"NodeMetrics","apiVersion":"metrics.k8s.io/v1beta1","metadata":{"name":"node-1","creationTimestamp":"2021-12-17T17:58:20Z","labels":{"kubernetes.io/os":"linux"}},"timestamp":"2021-12-17T17:57:42Z","window":"15.002s","usage":{"cpu":"13m","memory":"14520Ki"}}"#
        );
    }

    #[test]
    fn swap_is_reported_only_when_known() {
        let mut n = node();
        n.swap_bytes = Some(1024 * 1024);
        let got = node_metrics(&n, ApiVersion::V1, at(0));
        assert_eq!(got.usage.get("swap").map(String::as_str), Some("1Mi"));
        assert_eq!(got.api_version.as_deref(), Some("metrics.k8s.io/v1"));
        let keys: Vec<_> = got.usage.keys().cloned().collect();
        assert_eq!(keys, ["cpu", "memory", "swap"]);
        assert!(
            !node_metrics(&node(), ApiVersion::V1, at(0))
                .usage
                .contains_key("swap")
        );
    }

    #[test]
    fn empty_labels_are_omitted() {
        let mut n = node();
        n.labels = Default::default();
        let got = json(&node_metrics(&n, ApiVersion::V1Beta1, at(0)));
        assert!(
            got.contains(
                r#""metadata":{"name":"node-1","creationTimestamp":"1970-01-01T00:00:00Z"}"#
            ),
            "{got}"
        );
    }

    #[test]
    fn single_pod_renders_containers() {
        let got = json(&pod_metrics(
            &pod("default", "web"),
            ApiVersion::V1Beta1,
            at(0),
        ));
        assert_eq!(
            got,
            r#"{"kind":"PodMetrics","apiVersion":"metrics.k8s.io/v1beta1","metadata":{"name":"web","namespace":"default","creationTimestamp":"1970-01-01T00:00:00Z"},"timestamp":"2021-12-17T17:57:42Z","window":"15s","containers":[{"name":"app","usage":{"cpu":"7338891n","memory":"4Mi","swap":"0"}}]}"#
        );
    }

    #[test]
    fn lists_sort_and_drop_item_kinds() {
        let mut b = node();
        b.name = "b".to_owned().into();
        let mut a = node();
        a.name = "a".to_owned().into();
        let list = node_metrics_list(&[b, a], ApiVersion::V1Beta1, at(0));
        let names: Vec<_> = list
            .items
            .iter()
            .map(|i| i.metadata.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b"]);
        let text = json(&list);
        assert!(text.starts_with(r#"{"kind":"NodeMetricsList","apiVersion":"metrics.k8s.io/v1beta1","metadata":{},"items":[{"metadata":{"name":"a""#), "{text}");

        let pods = pod_metrics_list(
            &[pod("b", "x"), pod("a", "z"), pod("a", "y")],
            ApiVersion::V1,
            at(0),
        );
        let keys: Vec<_> = pods
            .items
            .iter()
            .map(|p| format!("{}/{}", p.metadata.namespace, p.metadata.name))
            .collect();
        assert_eq!(keys, ["a/y", "a/z", "b/x"]);
        assert!(
            pods.items
                .iter()
                .all(|p| p.kind.is_none() && p.api_version.is_none())
        );
        assert_eq!(pods.kind, "PodMetricsList");
    }

    #[test]
    fn empty_lists_have_empty_items() {
        assert_eq!(
            json(&node_metrics_list(&[], ApiVersion::V1Beta1, at(0))),
            r#"{"kind":"NodeMetricsList","apiVersion":"metrics.k8s.io/v1beta1","metadata":{},"items":[]}"#
        );
        assert_eq!(
            json(&pod_metrics_list(&[], ApiVersion::V1, at(0))),
            r#"{"kind":"PodMetricsList","apiVersion":"metrics.k8s.io/v1","metadata":{},"items":[]}"#
        );
    }

    #[test]
    fn objects_round_trip_through_json() {
        let original = pod_metrics(&pod("ns", "p"), ApiVersion::V1, at(5));
        let bytes = to_json(&original).expect("serialises");
        let back: PodMetrics = serde_json::from_slice(&bytes).expect("parses");
        assert_eq!(back, original);
    }
}
