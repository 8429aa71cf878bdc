//! Wire types of metrics.k8s.io and of the discovery documents, and the
//! functions that render store data into them.
//!
//! Field order, omitted-when-empty rules and string formats follow what
//! metrics-server's Go types produce (`k8s.io/metrics/pkg/apis/metrics/v1beta1`,
//! `metav1.ObjectMeta`, `metav1.Time`, `metav1.Duration`), because consumers
//! parse them with Go: `window` must be Go `time.Duration` text and timestamps
//! RFC 3339 in whole seconds. Items of a list carry no `kind`/`apiVersion`, the
//! single objects do.
//!
//! Discovery documents: `APIResourceList` (`/apis/metrics.k8s.io/{v}`, the
//! aggregator's availability probe), the legacy `APIGroupList` and the
//! aggregated `APIGroupDiscoveryList` (apidiscovery.k8s.io/v2) for `/apis`.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::quantity::{format_bytes, format_cpu_nanocores};
use super::{ApiVersion, GROUP, NodeUsage, PodUsage, Resource, sorted_nodes, sorted_pods};
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

/// The answer to `GET …/nodes`: items sorted by name. Filtering by selectors
/// happens before, on the caller's side.
pub fn node_metrics_list(
    nodes: &[NodeUsage],
    version: ApiVersion,
    now: SystemTime,
) -> NodeMetricsList {
    NodeMetricsList {
        kind: Resource::Nodes.list_kind().to_owned(),
        api_version: version.group_version().to_owned(),
        metadata: ListMeta {},
        items: sorted_nodes(nodes)
            .into_iter()
            .map(|n| node_item(n, now))
            .collect(),
    }
}

/// The answer to `GET …/pods` and `…/namespaces/{ns}/pods`: items sorted by
/// namespace, then name.
pub fn pod_metrics_list(pods: &[PodUsage], version: ApiVersion, now: SystemTime) -> PodMetricsList {
    PodMetricsList {
        kind: Resource::Pods.list_kind().to_owned(),
        api_version: version.group_version().to_owned(),
        metadata: ListMeta {},
        items: sorted_pods(pods)
            .into_iter()
            .map(|p| pod_item(p, now))
            .collect(),
    }
}

// ---------------------------------------------------------------------------
// Discovery
// ---------------------------------------------------------------------------

/// The verbs served for both resources, sorted as discovery lists them.
/// `watch` is absent: a watch request is answered 405 (see `status`).
pub const VERBS: [&str; 2] = ["get", "list"];

/// One entry of an [`ApiResourceList`] (`metav1.APIResource`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiResource {
    /// Plural resource name.
    pub name: String,
    /// Always present, empty like metrics-server's (its storage returns "").
    #[serde(rename = "singularName")]
    pub singular_name: String,
    /// Whether the resource is namespaced.
    pub namespaced: bool,
    /// Kind of one object.
    pub kind: String,
    /// Supported verbs, sorted.
    pub verbs: Vec<String>,
}

/// `APIResourceList`, the body of `/apis/metrics.k8s.io/{version}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiResourceList {
    /// `APIResourceList`.
    pub kind: String,
    /// `v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// `metrics.k8s.io/<version>`.
    #[serde(rename = "groupVersion")]
    pub group_version: String,
    /// `nodes`, then `pods`.
    pub resources: Vec<ApiResource>,
}

fn api_resource(resource: Resource) -> ApiResource {
    ApiResource {
        name: resource.as_str().to_owned(),
        singular_name: String::new(),
        namespaced: resource.namespaced(),
        kind: resource.kind().to_owned(),
        verbs: VERBS.iter().map(|v| (*v).to_owned()).collect(),
    }
}

/// The aggregator's availability probe answer for one version.
pub fn api_resource_list(version: ApiVersion) -> ApiResourceList {
    ApiResourceList {
        kind: "APIResourceList".to_owned(),
        api_version: "v1".to_owned(),
        group_version: version.group_version().to_owned(),
        resources: vec![api_resource(Resource::Nodes), api_resource(Resource::Pods)],
    }
}

/// `GroupVersionForDiscovery`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupVersionForDiscovery {
    /// `metrics.k8s.io/<version>`.
    #[serde(rename = "groupVersion")]
    pub group_version: String,
    /// `<version>`.
    pub version: String,
}

/// `APIGroup`. `kind`/`apiVersion` appear only when served on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiGroup {
    /// `APIGroup` when standalone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `v1` when standalone.
    #[serde(
        rename = "apiVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub api_version: Option<String>,
    /// `metrics.k8s.io`.
    pub name: String,
    /// Served versions, preferred first.
    pub versions: Vec<GroupVersionForDiscovery>,
    /// The first of `versions`.
    #[serde(rename = "preferredVersion")]
    pub preferred_version: GroupVersionForDiscovery,
}

/// `APIGroupList`, the legacy answer to `/apis`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiGroupList {
    /// `APIGroupList`.
    pub kind: String,
    /// `v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// The one group served.
    pub groups: Vec<ApiGroup>,
}

fn group_version_for_discovery(version: ApiVersion) -> GroupVersionForDiscovery {
    GroupVersionForDiscovery {
        group_version: version.group_version().to_owned(),
        version: version.as_str().to_owned(),
    }
}

/// The `APIGroup` for the served versions, most preferred first (pass
/// [`ApiVersion::ALL`] to serve both). An empty slice falls back to all.
pub fn api_group(versions: &[ApiVersion]) -> ApiGroup {
    let versions = if versions.is_empty() {
        &ApiVersion::ALL[..]
    } else {
        versions
    };
    let preferred = versions.first().copied().unwrap_or(ApiVersion::V1);
    ApiGroup {
        kind: None,
        api_version: None,
        name: GROUP.to_owned(),
        versions: versions
            .iter()
            .map(|v| group_version_for_discovery(*v))
            .collect(),
        preferred_version: group_version_for_discovery(preferred),
    }
}

/// The legacy `/apis` answer.
pub fn api_group_list(versions: &[ApiVersion]) -> ApiGroupList {
    ApiGroupList {
        kind: "APIGroupList".to_owned(),
        api_version: "v1".to_owned(),
        groups: vec![api_group(versions)],
    }
}

/// `metav1.GroupVersionKind` as used in aggregated discovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupVersionKind {
    /// Empty for metrics resources, as the generic apiserver emits it.
    pub group: String,
    /// Empty for metrics resources.
    pub version: String,
    /// `NodeMetrics` / `PodMetrics`.
    pub kind: String,
}

/// `apidiscovery.k8s.io/v2` `APIResourceDiscovery`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiResourceDiscovery {
    /// Plural resource name.
    pub resource: String,
    /// Kind returned.
    #[serde(rename = "responseKind")]
    pub response_kind: GroupVersionKind,
    /// `Cluster` or `Namespaced`.
    pub scope: String,
    /// Empty, as in the `APIResourceList`.
    #[serde(rename = "singularResource")]
    pub singular_resource: String,
    /// Supported verbs.
    pub verbs: Vec<String>,
}

/// `apidiscovery.k8s.io/v2` `APIVersionDiscovery`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiVersionDiscovery {
    /// `v1` / `v1beta1`.
    pub version: String,
    /// `nodes`, `pods`.
    pub resources: Vec<ApiResourceDiscovery>,
    /// `Current`: this server's own document is never stale.
    pub freshness: String,
}

/// `apidiscovery.k8s.io/v2` `APIGroupDiscovery`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiGroupDiscovery {
    /// Only `name` (and a `null` creationTimestamp, as Go prints a zero time).
    pub metadata: ObjectMeta,
    /// Versions, preferred first.
    pub versions: Vec<ApiVersionDiscovery>,
}

/// `apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`, the aggregated `/apis`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiGroupDiscoveryList {
    /// `APIGroupDiscoveryList`.
    pub kind: String,
    /// `apidiscovery.k8s.io/v2`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// Always `{}`.
    pub metadata: ListMeta,
    /// The one group served.
    pub items: Vec<ApiGroupDiscovery>,
}

/// The media type of an aggregated discovery response; client-go recognises
/// aggregated discovery by this `Content-Type`, so it must be exact.
pub const AGGREGATED_DISCOVERY_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

fn resource_discovery(resource: Resource) -> ApiResourceDiscovery {
    ApiResourceDiscovery {
        resource: resource.as_str().to_owned(),
        response_kind: GroupVersionKind {
            group: String::new(),
            version: String::new(),
            kind: resource.kind().to_owned(),
        },
        scope: if resource.namespaced() {
            "Namespaced"
        } else {
            "Cluster"
        }
        .to_owned(),
        singular_resource: String::new(),
        verbs: VERBS.iter().map(|v| (*v).to_owned()).collect(),
    }
}

/// The aggregated discovery answer to `/apis` for the served versions,
/// preferred first. An empty slice falls back to all.
pub fn api_group_discovery_list(versions: &[ApiVersion]) -> ApiGroupDiscoveryList {
    let versions = if versions.is_empty() {
        &ApiVersion::ALL[..]
    } else {
        versions
    };
    ApiGroupDiscoveryList {
        kind: "APIGroupDiscoveryList".to_owned(),
        api_version: "apidiscovery.k8s.io/v2".to_owned(),
        metadata: ListMeta {},
        items: vec![ApiGroupDiscovery {
            metadata: ObjectMeta {
                name: GROUP.to_owned(),
                ..ObjectMeta::default()
            },
            versions: versions
                .iter()
                .map(|v| ApiVersionDiscovery {
                    version: v.as_str().to_owned(),
                    resources: vec![
                        resource_discovery(Resource::Nodes),
                        resource_discovery(Resource::Pods),
                    ],
                    freshness: "Current".to_owned(),
                })
                .collect(),
        }],
    }
}

/// A strong `ETag` for a discovery body (quoted, ready for the header), so the
/// aggregator's 1-minute refresh can be answered with 304 via `If-None-Match`.
/// Clients treat it as opaque; FNV-1a 64 of the bytes is enough to change
/// whenever the body does (upstream uses SHA-512, which needs a crate).
pub fn discovery_etag(body: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in body {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("\"{hash:016X}\"")
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

    #[test]
    fn api_resource_list_matches_contract_bytes() {
        assert_eq!(
            json(&api_resource_list(ApiVersion::V1Beta1)),
            r#"{"kind":"APIResourceList","apiVersion":"v1","groupVersion":"metrics.k8s.io/v1beta1","resources":[{"name":"nodes","singularName":"","namespaced":false,"kind":"NodeMetrics","verbs":["get","list"]},{"name":"pods","singularName":"","namespaced":true,"kind":"PodMetrics","verbs":["get","list"]}]}"#
        );
        assert_eq!(
            api_resource_list(ApiVersion::V1).group_version,
            "metrics.k8s.io/v1"
        );
    }

    #[test]
    fn api_group_list_prefers_v1() {
        assert_eq!(
            json(&api_group_list(&ApiVersion::ALL)),
            r#"{"kind":"APIGroupList","apiVersion":"v1","groups":[{"name":"metrics.k8s.io","versions":[{"groupVersion":"metrics.k8s.io/v1","version":"v1"},{"groupVersion":"metrics.k8s.io/v1beta1","version":"v1beta1"}],"preferredVersion":{"groupVersion":"metrics.k8s.io/v1","version":"v1"}}]}"#
        );
        let only_beta = api_group(&[ApiVersion::V1Beta1]);
        assert_eq!(only_beta.preferred_version.version, "v1beta1");
        assert_eq!(api_group(&[]).versions.len(), 2);
    }

    #[test]
    fn aggregated_discovery_has_v2_shape() {
        assert_eq!(
            json(&api_group_discovery_list(&ApiVersion::ALL)),
            concat!(
                r#"{"kind":"APIGroupDiscoveryList","apiVersion":"apidiscovery.k8s.io/v2","metadata":{},"items":[{"metadata":{"name":"metrics.k8s.io","creationTimestamp":null},"versions":["#,
                r#"{"version":"v1","resources":[{"resource":"nodes","responseKind":{"group":"","version":"","kind":"NodeMetrics"},"scope":"Cluster","singularResource":"","verbs":["get","list"]},{"resource":"pods","responseKind":{"group":"","version":"","kind":"PodMetrics"},"scope":"Namespaced","singularResource":"","verbs":["get","list"]}],"freshness":"Current"},"#,
                r#"{"version":"v1beta1","resources":[{"resource":"nodes","responseKind":{"group":"","version":"","kind":"NodeMetrics"},"scope":"Cluster","singularResource":"","verbs":["get","list"]},{"resource":"pods","responseKind":{"group":"","version":"","kind":"PodMetrics"},"scope":"Namespaced","singularResource":"","verbs":["get","list"]}],"freshness":"Current"}"#,
                r#"]}]}"#
            )
        );
    }

    #[test]
    fn etag_is_quoted_and_tracks_the_body() {
        let a = discovery_etag(b"one");
        let b = discovery_etag(b"two");
        assert_ne!(a, b);
        assert_eq!(a, discovery_etag(b"one"));
        assert!(a.starts_with('"') && a.ends_with('"') && a.len() == 18);
    }
}
