//! Discovery documents: `APIResourceList` (`/apis/metrics.k8s.io/{v}`, the
//! aggregator's availability probe), the legacy `APIGroupList` and the
//! aggregated `APIGroupDiscoveryList` (apidiscovery.k8s.io/v2) for `/apis`,
//! with field order and omitted-when-empty rules as Go's types produce them.

use serde::{Deserialize, Serialize};

use super::types::{ListMeta, ObjectMeta};
use super::{ApiVersion, GROUP, Resource};

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
    use super::*;

    fn json<T: Serialize>(v: &T) -> String {
        String::from_utf8(super::super::types::to_json(v).expect("serialises")).expect("utf-8")
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
