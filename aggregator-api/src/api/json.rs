//! Metrics objects and lists as JSON, written straight from the store's
//! values.
//!
//! A `PodMetricsList` of 300,000 pods built as [`types`] objects first costs
//! several allocations per pod (labels, usage maps, formatted times) before
//! serde writes a byte. These writers produce the same bytes — the tests
//! compare them with `to_json` of the [`types`] objects for random inputs —
//! into one buffer: strings are escaped by `serde_json` in place, the
//! response time is formatted once, and timestamps and windows repeat across
//! pods, so the last formatted one is reused. A single object is a list item
//! with `kind` and `apiVersion` in front.
//!
//! Tables keep using [`types`] (through [`super::table`]): they are small and
//! have a shape of their own.

use std::time::{Duration, SystemTime};

use super::quantity::{ByteSink, write_bytes, write_cpu_nanocores};
use super::types;
use super::view::{PodRef, with_pod_ref};
use super::{ApiVersion, Labels, NodeUsage, PodUsage, Resource, sorted_nodes};
use crate::time::{go_duration, rfc3339_seconds};

/// Appends `s` as a JSON string (quoted and escaped as serde_json does).
fn string(buf: &mut Vec<u8>, s: &str) -> types::Result<()> {
    serde_json::to_writer(&mut *buf, s)?;
    Ok(())
}

/// Remembers the last value formatted, since consecutive items mostly share
/// it (one timestamp per reporting round, one window per interval).
struct Memo<K> {
    last: Option<(K, String)>,
    format: fn(K) -> String,
}

impl<K: PartialEq + Copy> Memo<K> {
    fn new(format: fn(K) -> String) -> Self {
        Memo { last: None, format }
    }

    /// Appends the formatted value, quoted (the formats need no escaping).
    fn write(&mut self, buf: &mut Vec<u8>, key: K) {
        if self.last.as_ref().is_none_or(|(k, _)| *k != key) {
            self.last = Some((key, (self.format)(key)));
        }
        if let Some((_, text)) = &self.last {
            buf.push(b'"');
            buf.extend_from_slice(text.as_bytes());
            buf.push(b'"');
        }
    }
}

fn raw(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(s.as_bytes());
}

/// What starts an object or list item.
#[derive(Clone, Copy)]
struct Head<'a> {
    /// Kind and version: a single object's, `None` for a list item.
    type_meta: Option<(&'a str, ApiVersion)>,
    name: &'a str,
    /// Empty for nodes.
    namespace: &'a str,
    labels: &'a Labels,
    timestamp: SystemTime,
    window: Duration,
}

/// Writes list items: the formatted response time and the memos. One per
/// thread when a list is encoded in parts ([`super::list`]); the memos only
/// save formatting, so the bytes do not depend on how items are split.
pub(crate) struct Items {
    created: String,
    timestamp: Memo<SystemTime>,
    window: Memo<Duration>,
}

impl Items {
    /// Items of a response made at `now`.
    pub(crate) fn new(now: SystemTime) -> Self {
        Items {
            created: rfc3339_seconds(now),
            timestamp: Memo::new(rfc3339_seconds),
            window: Memo::new(go_duration),
        }
    }

    /// `{["kind":…,"apiVersion":…,]"metadata":{…},"timestamp":…,"window":…`.
    fn item_head(&mut self, buf: &mut Vec<u8>, head: &Head<'_>) -> types::Result<()> {
        let Head {
            type_meta,
            name,
            namespace,
            labels,
            timestamp,
            window,
        } = *head;
        raw(buf, "{");
        if let Some((kind, version)) = type_meta {
            raw(buf, r#""kind":""#);
            raw(buf, kind);
            raw(buf, r#"","apiVersion":""#);
            raw(buf, version.group_version());
            raw(buf, r#"","#);
        }
        raw(buf, r#""metadata":{"name":"#);
        string(buf, name)?;
        if !namespace.is_empty() {
            raw(buf, r#","namespace":"#);
            string(buf, namespace)?;
        }
        raw(buf, r#","creationTimestamp":""#);
        buf.extend_from_slice(self.created.as_bytes());
        raw(buf, "\"");
        if !labels.is_empty() {
            raw(buf, r#","labels":{"#);
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    raw(buf, ",");
                }
                string(buf, k)?;
                raw(buf, ":");
                string(buf, v)?;
            }
            raw(buf, "}");
        }
        raw(buf, r#"},"timestamp":"#);
        self.timestamp.write(buf, timestamp);
        raw(buf, r#","window":"#);
        self.window.write(buf, window);
        Ok(())
    }

    /// One `PodMetrics` list item (no separator).
    pub(crate) fn pod(&mut self, buf: &mut Vec<u8>, p: &PodRef<'_>) -> types::Result<()> {
        self.pod_object(buf, None, p)
    }

    fn pod_object(
        &mut self,
        buf: &mut Vec<u8>,
        type_meta: Option<(&str, ApiVersion)>,
        p: &PodRef<'_>,
    ) -> types::Result<()> {
        let head = Head {
            type_meta,
            name: p.name,
            namespace: p.namespace,
            labels: p.labels,
            timestamp: p.timestamp,
            window: p.window,
        };
        self.item_head(buf, &head)?;
        raw(buf, r#","containers":["#);
        for (j, c) in p.containers.iter().enumerate() {
            if j > 0 {
                raw(buf, ",");
            }
            raw(buf, r#"{"name":"#);
            string(buf, c.name)?;
            raw(buf, ",");
            usage(buf, c.cpu_nanocores, c.memory_bytes, c.swap_bytes);
            raw(buf, "}");
        }
        raw(buf, "]}");
        Ok(())
    }

    fn node_object(
        &mut self,
        buf: &mut Vec<u8>,
        type_meta: Option<(&str, ApiVersion)>,
        n: &NodeUsage,
    ) -> types::Result<()> {
        let head = Head {
            type_meta,
            name: &n.name,
            namespace: "",
            labels: &n.labels,
            timestamp: n.timestamp,
            window: n.window,
        };
        self.item_head(buf, &head)?;
        raw(buf, ",");
        usage(buf, n.cpu_nanocores, n.memory_bytes, n.swap_bytes);
        raw(buf, "}");
        Ok(())
    }
}

/// Bytes to reserve for one object: a pod with two containers and a few
/// labels is about this long.
const OBJECT_SIZE_HINT: usize = 384;

/// `GET …/nodes/{name}` as JSON: the bytes of `to_json(&types::node_metrics(…))`.
pub fn node(node: &NodeUsage, version: ApiVersion, now: SystemTime) -> types::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(OBJECT_SIZE_HINT);
    Items::new(now).node_object(&mut buf, Some((Resource::Nodes.kind(), version)), node)?;
    Ok(buf)
}

/// `GET …/namespaces/{ns}/pods/{name}` as JSON: the bytes of
/// `to_json(&types::pod_metrics(…))`.
pub fn pod(pod: &PodUsage, version: ApiVersion, now: SystemTime) -> types::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(OBJECT_SIZE_HINT);
    let type_meta = Some((Resource::Pods.kind(), version));
    with_pod_ref(pod, |p| Items::new(now).pod_object(&mut buf, type_meta, p))?;
    Ok(buf)
}

/// `"usage":{"cpu":…,"memory":…[,"swap":…]}` (keys sorted, like a Go map).
fn usage(buf: &mut Vec<u8>, cpu_nanocores: u64, memory: u64, swap: Option<u64>) {
    // Writing to a Vec cannot fail.
    raw(buf, r#""usage":{"cpu":""#);
    let _ = write_cpu_nanocores(&mut ByteSink(buf), cpu_nanocores);
    raw(buf, r#"","memory":""#);
    let _ = write_bytes(&mut ByteSink(buf), memory);
    if let Some(swap) = swap {
        raw(buf, r#"","swap":""#);
        let _ = write_bytes(&mut ByteSink(buf), swap);
    }
    raw(buf, r#""}"#);
}

/// `{"kind":…,"apiVersion":…,"metadata":{},"items":[`: what a list starts
/// with; `]}` ends it.
pub(crate) fn list_head(buf: &mut Vec<u8>, kind: &str, version: ApiVersion) {
    raw(buf, r#"{"kind":""#);
    raw(buf, kind);
    raw(buf, r#"","apiVersion":""#);
    raw(buf, version.group_version());
    raw(buf, r#"","metadata":{},"items":["#);
}

/// The end of a list.
pub(crate) const LIST_TAIL: &str = "]}";

/// `GET …/nodes` as JSON: the bytes of `to_json(&types::node_metrics_list(…))`.
pub fn node_list(
    nodes: &[NodeUsage],
    version: ApiVersion,
    now: SystemTime,
) -> types::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(nodes.len() * 320 + 128);
    let mut items = Items::new(now);
    list_head(&mut buf, Resource::Nodes.list_kind(), version);
    for (i, n) in sorted_nodes(nodes).into_iter().enumerate() {
        if i > 0 {
            raw(&mut buf, ",");
        }
        items.node_object(&mut buf, None, n)?;
    }
    raw(&mut buf, LIST_TAIL);
    Ok(buf)
}

/// `GET …/pods` as JSON: the bytes of `to_json(&types::pod_metrics_list(…))`,
/// in one pass on this thread. The server lists pods with
/// [`super::list::pod_list`] (the same bytes, from a view, in parallel); this
/// is its test oracle, and the serve bench's baseline.
#[cfg(any(test, feature = "test-oracles"))]
pub fn pod_list(pods: &[PodUsage], version: ApiVersion, now: SystemTime) -> types::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(pods.len() * 384 + 128);
    let mut items = Items::new(now);
    list_head(&mut buf, Resource::Pods.list_kind(), version);
    for (i, p) in super::sorted_pods(pods).into_iter().enumerate() {
        if i > 0 {
            raw(&mut buf, ",");
        }
        with_pod_ref(p, |r| items.pod(&mut buf, r))?;
    }
    raw(&mut buf, LIST_TAIL);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::strategies::{node, pod, time};
    use proptest::prelude::*;
    use std::time::UNIX_EPOCH;

    proptest! {
        #[test]
        fn pod_list_is_byte_identical_to_the_typed_rendering(
            pods in proptest::collection::vec(pod(), 0..12),
            now in time(),
        ) {
            for version in ApiVersion::ALL {
                let fast = pod_list(&pods, version, now).expect("encodes");
                let typed = types::to_json(&types::pod_metrics_list(&pods, version, now)).expect("encodes");
                prop_assert_eq!(String::from_utf8_lossy(&fast), String::from_utf8_lossy(&typed));
            }
        }

        #[test]
        fn single_objects_are_byte_identical_to_the_typed_rendering(
            pod in pod(),
            node in node(),
            now in time(),
        ) {
            for version in ApiVersion::ALL {
                let fast = super::pod(&pod, version, now).expect("encodes");
                let typed = types::to_json(&types::pod_metrics(&pod, version, now)).expect("encodes");
                prop_assert_eq!(String::from_utf8_lossy(&fast), String::from_utf8_lossy(&typed));
                let fast = super::node(&node, version, now).expect("encodes");
                let typed = types::to_json(&types::node_metrics(&node, version, now)).expect("encodes");
                prop_assert_eq!(String::from_utf8_lossy(&fast), String::from_utf8_lossy(&typed));
            }
        }

        #[test]
        fn node_list_is_byte_identical_to_the_typed_rendering(
            nodes in proptest::collection::vec(node(), 0..12),
            now in time(),
        ) {
            for version in ApiVersion::ALL {
                let fast = node_list(&nodes, version, now).expect("encodes");
                let typed = types::to_json(&types::node_metrics_list(&nodes, version, now)).expect("encodes");
                prop_assert_eq!(String::from_utf8_lossy(&fast), String::from_utf8_lossy(&typed));
            }
        }
    }

    #[test]
    fn empty_lists_have_empty_items() {
        let now = UNIX_EPOCH;
        assert_eq!(
            pod_list(&[], ApiVersion::V1Beta1, now).expect("encodes"),
            br#"{"kind":"PodMetricsList","apiVersion":"metrics.k8s.io/v1beta1","metadata":{},"items":[]}"#
        );
        assert_eq!(
            node_list(&[], ApiVersion::V1, now).expect("encodes"),
            br#"{"kind":"NodeMetricsList","apiVersion":"metrics.k8s.io/v1","metadata":{},"items":[]}"#
        );
    }
}
