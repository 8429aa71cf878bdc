//! JSON lists written straight from the store's values.
//!
//! A `PodMetricsList` of 300,000 pods built as [`types`] objects first costs
//! several allocations per pod (labels, usage maps, formatted times) before
//! serde writes a byte. These writers produce the same bytes — the tests
//! compare them with `to_json` of the [`types`] objects for random inputs —
//! into one buffer: strings are escaped by `serde_json` in place, the
//! response time is formatted once, and timestamps and windows repeat across
//! pods, so the last formatted one is reused.
//!
//! Single objects and Tables keep using [`types`]: they are small.

use std::time::{Duration, SystemTime};

use super::quantity::{ByteSink, write_bytes, write_cpu_nanocores};
use super::types::{self, go_duration, rfc3339_seconds};
use super::{ApiVersion, Labels, NodeUsage, PodUsage, Resource, sorted_nodes, sorted_pods};

/// Appends `s` as a JSON string (quoted and escaped as serde_json does).
fn string(buf: &mut Vec<u8>, s: &str) -> types::Result<()> {
    serde_json::to_writer(&mut *buf, s)?;
    Ok(())
}

/// Remembers the last value formatted, since consecutive items mostly share
/// it (one timestamp per reporting round, one window per interval).
struct Memo<K, F> {
    last: Option<(K, String)>,
    format: F,
}

impl<K: PartialEq + Copy, F: Fn(K) -> String> Memo<K, F> {
    fn new(format: F) -> Self {
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

/// Per-response state: the formatted response time and the memos.
struct Writer<T, W> {
    buf: Vec<u8>,
    created: String,
    timestamp: Memo<SystemTime, T>,
    window: Memo<Duration, W>,
}

fn writer(
    capacity: usize,
    now: SystemTime,
) -> Writer<impl Fn(SystemTime) -> String, impl Fn(Duration) -> String> {
    Writer {
        buf: Vec::with_capacity(capacity),
        created: rfc3339_seconds(now),
        timestamp: Memo::new(rfc3339_seconds),
        window: Memo::new(go_duration),
    }
}

impl<T: Fn(SystemTime) -> String, W: Fn(Duration) -> String> Writer<T, W> {
    fn raw(&mut self, s: &str) {
        self.buf.extend_from_slice(s.as_bytes());
    }

    fn list_head(&mut self, kind: &str, version: ApiVersion) {
        self.raw(r#"{"kind":""#);
        self.raw(kind);
        self.raw(r#"","apiVersion":""#);
        self.raw(version.group_version());
        self.raw(r#"","metadata":{},"items":["#);
    }

    /// `"metadata":{…},"timestamp":…,"window":…` of an item.
    fn item_head(
        &mut self,
        name: &str,
        namespace: &str,
        labels: &Labels,
        timestamp: SystemTime,
        window: Duration,
    ) -> types::Result<()> {
        self.raw(r#"{"metadata":{"name":"#);
        string(&mut self.buf, name)?;
        if !namespace.is_empty() {
            self.raw(r#","namespace":"#);
            string(&mut self.buf, namespace)?;
        }
        self.raw(r#","creationTimestamp":""#);
        self.buf.extend_from_slice(self.created.as_bytes());
        self.raw("\"");
        if !labels.is_empty() {
            self.raw(r#","labels":{"#);
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.raw(",");
                }
                string(&mut self.buf, k)?;
                self.raw(":");
                string(&mut self.buf, v)?;
            }
            self.raw("}");
        }
        self.raw(r#"},"timestamp":"#);
        self.timestamp.write(&mut self.buf, timestamp);
        self.raw(r#","window":"#);
        self.window.write(&mut self.buf, window);
        Ok(())
    }

    /// `"usage":{"cpu":…,"memory":…[,"swap":…]}` (keys sorted, like a Go map).
    fn usage(&mut self, cpu_nanocores: u64, memory: u64, swap: Option<u64>) {
        // Writing to a Vec cannot fail.
        self.raw(r#""usage":{"cpu":""#);
        let _ = write_cpu_nanocores(&mut ByteSink(&mut self.buf), cpu_nanocores);
        self.raw(r#"","memory":""#);
        let _ = write_bytes(&mut ByteSink(&mut self.buf), memory);
        if let Some(swap) = swap {
            self.raw(r#"","swap":""#);
            let _ = write_bytes(&mut ByteSink(&mut self.buf), swap);
        }
        self.raw(r#""}"#);
    }
}

/// `GET …/nodes` as JSON: the bytes of `to_json(&types::node_metrics_list(…))`.
pub fn node_list(
    nodes: &[NodeUsage],
    version: ApiVersion,
    now: SystemTime,
) -> types::Result<Vec<u8>> {
    let mut w = writer(nodes.len() * 320 + 128, now);
    w.list_head(Resource::Nodes.list_kind(), version);
    for (i, n) in sorted_nodes(nodes).into_iter().enumerate() {
        if i > 0 {
            w.raw(",");
        }
        w.item_head(&n.name, "", &n.labels, n.timestamp, n.window)?;
        w.raw(",");
        w.usage(n.cpu_nanocores, n.memory_bytes, n.swap_bytes);
        w.raw("}");
    }
    w.raw("]}");
    Ok(w.buf)
}

/// `GET …/pods` as JSON: the bytes of `to_json(&types::pod_metrics_list(…))`.
pub fn pod_list(pods: &[PodUsage], version: ApiVersion, now: SystemTime) -> types::Result<Vec<u8>> {
    let mut w = writer(pods.len() * 384 + 128, now);
    w.list_head(Resource::Pods.list_kind(), version);
    for (i, p) in sorted_pods(pods).into_iter().enumerate() {
        if i > 0 {
            w.raw(",");
        }
        w.item_head(&p.name, &p.namespace, &p.labels, p.timestamp, p.window)?;
        w.raw(r#","containers":["#);
        for (j, c) in p.containers.iter().enumerate() {
            if j > 0 {
                w.raw(",");
            }
            w.raw(r#"{"name":"#);
            string(&mut w.buf, &c.name)?;
            w.raw(",");
            w.usage(c.cpu_nanocores, c.memory_bytes, c.swap_bytes);
            w.raw("}");
        }
        w.raw("]}");
    }
    w.raw("]}");
    Ok(w.buf)
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
