//! The metrics.k8s.io API, without the transport: this module owns what a
//! response *says* (objects, lists, tables, discovery documents, `Status`
//! errors), how request parameters are understood (label and field selectors,
//! the `Accept` header, `includeObject`), and the canonical number formats the
//! API's consumers parse (Kubernetes quantities, Go durations, RFC 3339).
//!
//! Everything here is a pure function of its inputs so the HTTP layer stays a
//! thin adapter and every byte metrics-server's consumers depend on can be
//! tested without a socket. The store hands over plain [`NodeUsage`] /
//! [`PodUsage`] values, or for pod lists lends each pod as a
//! [`view::PodRef`]; this module never reads a clock or a lock itself (the
//! caller passes `now`), which keeps responses reproducible in tests.
//!
//! Submodules, one concept each:
//! - [`quantity`]: canonical `cpu`/`memory` quantity strings and a parser.
//! - [`selector`]: `labelSelector` / `fieldSelector` parsing and matching.
//! - [`negotiate`]: what to answer for an `Accept` header.
//! - [`render`]: the one path from data to a response body, through one of
//!   - [`list`]: pod lists encoded straight from a view, in parallel (same
//!     bytes as [`json`] and [`protobuf`] from values);
//!   - [`json`]: objects and lists as JSON, written in one pass (same bytes
//!     as serde on [`types`]);
//!   - [`protobuf`]: the Kubernetes protobuf encoding of objects (and of
//!     `Status`);
//!   - [`table`]: `as=Table` rendering for `kubectl get`.
//! - [`types`]: the wire types (serde), which [`table`] renders with and
//!   clients and tests decode into.
//! - [`status`]: every error as a Kubernetes `Status` body ([`status::ApiError`]).
//! - [`discovery`]: the discovery documents.
//! - [`view`]: what the store lends the encoders.

pub mod discovery;
pub mod json;
pub mod list;
pub mod negotiate;
pub mod protobuf;
pub mod quantity;
pub mod render;
pub mod selector;
pub mod status;
#[cfg(test)]
mod strategies;
pub mod table;
pub mod types;
pub mod view;

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The API group served. A constant so paths, discovery and error details can
/// never disagree on its spelling.
pub const GROUP: &str = "metrics.k8s.io";

/// A served version of the group.
///
/// Kubernetes 1.37 promotes `v1` with the same shape as `v1beta1`; clients
/// prefer `v1` and fall back, so both are served and `v1` is listed first
/// wherever an order expresses preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ApiVersion {
    /// `metrics.k8s.io/v1`, preferred.
    V1,
    /// `metrics.k8s.io/v1beta1`, what every released metrics-server serves.
    V1Beta1,
}

impl ApiVersion {
    /// All served versions, most preferred first (the order discovery uses).
    pub const ALL: [ApiVersion; 2] = [ApiVersion::V1, ApiVersion::V1Beta1];

    /// The version segment of the path, e.g. `v1beta1`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V1 => "v1",
            ApiVersion::V1Beta1 => "v1beta1",
        }
    }

    /// The `apiVersion` field value, e.g. `metrics.k8s.io/v1beta1`.
    pub fn group_version(self) -> &'static str {
        match self {
            ApiVersion::V1 => "metrics.k8s.io/v1",
            ApiVersion::V1Beta1 => "metrics.k8s.io/v1beta1",
        }
    }

    /// Recognises a path segment; `None` for a version this server does not serve
    /// (the router answers that with a 404 like any unknown path).
    pub fn from_path_segment(segment: &str) -> Option<Self> {
        match segment {
            "v1" => Some(ApiVersion::V1),
            "v1beta1" => Some(ApiVersion::V1Beta1),
            _ => None,
        }
    }
}

/// The two resources of the group. Used where a message or detail names the
/// resource (authorization, 405 for watch) so the spelling lives in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// `nodes` → `NodeMetrics`, cluster-scoped.
    Nodes,
    /// `pods` → `PodMetrics`, namespaced.
    Pods,
}

impl Resource {
    /// The plural resource name used in paths and RBAC.
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Nodes => "nodes",
            Resource::Pods => "pods",
        }
    }

    /// The kind of a single object.
    pub fn kind(self) -> &'static str {
        match self {
            Resource::Nodes => "NodeMetrics",
            Resource::Pods => "PodMetrics",
        }
    }

    /// The kind of a list.
    pub fn list_kind(self) -> &'static str {
        match self {
            Resource::Nodes => "NodeMetricsList",
            Resource::Pods => "PodMetricsList",
        }
    }

    /// Whether objects live in a namespace.
    pub fn namespaced(self) -> bool {
        matches!(self, Resource::Pods)
    }
}

/// An object's labels, sorted by key, in one shared allocation: the store
/// hands the same one to every response (a clone is a reference count, which
/// matters when a list copies 300,000 pods out of the store), and
/// `labelSelector` finds keys by binary search.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels(Arc<[(Arc<str>, Arc<str>)]>);

impl Labels {
    /// From pairs sorted by key with no key twice (what a map yields).
    pub fn from_sorted(pairs: Arc<[(Arc<str>, Arc<str>)]>) -> Self {
        debug_assert!(
            pairs.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, unique keys"
        );
        Labels(pairs)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    /// The shared pairs, in key order.
    pub fn pairs(&self) -> &[(Arc<str>, Arc<str>)] {
        &self.0
    }

    /// Pairs in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// No labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// An owned map (for the typed JSON objects).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Labels {
    /// Sorts; a repeated key keeps its last value, as inserting into a map does.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let map: BTreeMap<Arc<str>, Arc<str>> = pairs
            .into_iter()
            .map(|(k, v)| (Arc::from(k.as_ref()), Arc::from(v.as_ref())))
            .collect();
        Labels(map.into_iter().collect())
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Self {
        map.into_iter().collect()
    }
}

/// One node's usage as the store computed it: the input to every node response.
///
/// Plain data so the store does not depend on the wire format and tests can
/// build values literally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeUsage {
    /// Node name.
    pub name: Arc<str>,
    /// The live Node object's labels (copied into `metadata.labels`, matched by
    /// `labelSelector`).
    pub labels: Labels,
    /// Time of the newer of the two points the rate was computed from.
    pub timestamp: SystemTime,
    /// Distance between the two points; consumers use `timestamp - window`.
    pub window: Duration,
    /// CPU rate in nanocores.
    pub cpu_nanocores: u64,
    /// Memory working set in bytes.
    pub memory_bytes: u64,
    /// Swap in use in bytes, when the source knows it; reported under `swap`
    /// only then (kubectl >= 1.34 `--show-swap` reads it).
    pub swap_bytes: Option<u64>,
}

/// One container's usage inside a [`PodUsage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerUsage {
    /// Container name.
    pub name: Arc<str>,
    /// CPU rate in nanocores.
    pub cpu_nanocores: u64,
    /// Memory working set in bytes.
    pub memory_bytes: u64,
    /// Swap in use in bytes, when known.
    pub swap_bytes: Option<u64>,
}

/// One pod's usage as the store computed it: the input to every pod response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodUsage {
    /// Pod namespace.
    pub namespace: Arc<str>,
    /// Pod name.
    pub name: Arc<str>,
    /// The live Pod object's labels.
    pub labels: Labels,
    /// Timestamp of the pod's earliest container (metrics-server semantics).
    pub timestamp: SystemTime,
    /// Window of that container.
    pub window: Duration,
    /// Containers in the order the store keeps them (rendered in that order).
    pub containers: Vec<ContainerUsage>,
}

/// Nodes in the order every list response uses: by name, like the Kubernetes
/// API orders a cluster-scoped list.
pub fn sorted_nodes(nodes: &[NodeUsage]) -> Vec<&NodeUsage> {
    let mut out: Vec<&NodeUsage> = nodes.iter().collect();
    out.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Pods in the order every list response uses: by namespace, then name.
pub fn sorted_pods(pods: &[PodUsage]) -> Vec<&PodUsage> {
    let mut out: Vec<&PodUsage> = pods.iter().collect();
    // Unstable is deterministic here: namespace/name is unique.
    out.sort_unstable_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// Quotes a string the way Go's `%q` / `strconv.Quote` does, because upstream
/// messages (`node "x" not found`, selector validation errors) embed names with
/// `%q` and clients and tests compare those messages byte for byte.
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{07}' => out.push_str("\\a"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0B}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() || is_go_unprintable_space(c) => {
                if (c as u32) <= 0xFFFF {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                } else {
                    let _ = write!(out, "\\U{:08x}", c as u32);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `unicode.IsPrint` treats only U+0020 as a printable space; other
/// separators are escaped by `strconv.Quote`.
fn is_go_unprintable_space(c: char) -> bool {
    c != ' ' && c.is_whitespace()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions_render_and_parse() {
        assert_eq!(ApiVersion::V1.group_version(), "metrics.k8s.io/v1");
        assert_eq!(
            ApiVersion::V1Beta1.group_version(),
            "metrics.k8s.io/v1beta1"
        );
        assert_eq!(
            ApiVersion::from_path_segment("v1beta1"),
            Some(ApiVersion::V1Beta1)
        );
        assert_eq!(ApiVersion::from_path_segment("v1"), Some(ApiVersion::V1));
        assert_eq!(ApiVersion::from_path_segment("v2"), None);
        assert_eq!(ApiVersion::ALL[0], ApiVersion::V1, "v1 is preferred");
    }

    #[test]
    fn resources_name_their_kinds() {
        assert_eq!(Resource::Nodes.kind(), "NodeMetrics");
        assert_eq!(Resource::Pods.list_kind(), "PodMetricsList");
        assert!(Resource::Pods.namespaced());
        assert!(!Resource::Nodes.namespaced());
    }

    fn node(name: &str) -> NodeUsage {
        NodeUsage {
            name: name.to_owned().into(),
            labels: BTreeMap::new().into(),
            timestamp: SystemTime::UNIX_EPOCH,
            window: Duration::from_secs(15),
            cpu_nanocores: 0,
            memory_bytes: 0,
            swap_bytes: None,
        }
    }

    fn pod(ns: &str, name: &str) -> PodUsage {
        PodUsage {
            namespace: ns.to_owned().into(),
            name: name.to_owned().into(),
            labels: BTreeMap::new().into(),
            timestamp: SystemTime::UNIX_EPOCH,
            window: Duration::from_secs(15),
            containers: Vec::new(),
        }
    }

    #[test]
    fn nodes_sort_by_name() {
        let nodes = [node("b"), node("a"), node("c")];
        let names: Vec<_> = sorted_nodes(&nodes).iter().map(|n| &*n.name).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[test]
    fn pods_sort_by_namespace_then_name() {
        let pods = [pod("b", "a"), pod("a", "z"), pod("a", "b")];
        let keys: Vec<_> = sorted_pods(&pods)
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        assert_eq!(keys, ["a/b", "a/z", "b/a"]);
    }

    #[test]
    fn go_quote_matches_strconv_quote() {
        assert_eq!(go_quote("node-1"), "\"node-1\"");
        assert_eq!(go_quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(go_quote("tab\there\n"), "\"tab\\there\\n\"");
        assert_eq!(go_quote("\u{1}"), "\"\\x01\"");
        assert_eq!(go_quote("\u{7f}"), "\"\\x7f\"");
        assert_eq!(go_quote("µé"), "\"µé\"", "printable non-ASCII stays as is");
        assert_eq!(go_quote("\u{85}"), "\"\\u0085\"");
        assert_eq!(go_quote("\u{2028}"), "\"\\u2028\"");
        assert_eq!(go_quote(""), "\"\"");
    }
}

#[cfg(test)]
mod sort_tests {
    use super::*;
    use proptest::prelude::*;

    fn pod(namespace: String, name: String) -> PodUsage {
        PodUsage {
            namespace: namespace.into(),
            name: name.into(),
            labels: Labels::default(),
            timestamp: SystemTime::UNIX_EPOCH,
            window: Duration::ZERO,
            containers: Vec::new(),
        }
    }

    /// Names sharing long prefixes (the 16-byte keys tie), short ones, and
    /// NUL and high bytes around the padding.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ab]{0,3}",
            "[ab\\x00\\x01]{0,20}",
            "kube-system-long-[a-c]{0,3}",
            "app-7d4b9c8f5-[a-z0-9]{0,5}",
            "\\PC{0,20}",
        ]
    }

    proptest! {
        #[test]
        fn sorted_pods_orders_like_comparing_the_strings(
            pairs in proptest::collection::hash_set((text(), text()), 0..60)
        ) {
            let pods: Vec<PodUsage> = pairs.into_iter().map(|(ns, n)| pod(ns, n)).collect();
            let fast: Vec<(&str, &str)> =
                sorted_pods(&pods).iter().map(|p| (&*p.namespace, &*p.name)).collect();
            let mut naive: Vec<(&str, &str)> =
                pods.iter().map(|p| (&*p.namespace, &*p.name)).collect();
            naive.sort();
            prop_assert_eq!(fast, naive);
        }
    }
}
