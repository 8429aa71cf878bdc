//! The Kubernetes protobuf encoding (`application/vnd.kubernetes.protobuf`)
//! of the metrics objects and of `Status`, written straight from the store's
//! values.
//!
//! Framing, as apimachinery's `runtime/serializer/protobuf` writes it: the
//! four bytes `k8s\0`, then a `runtime.Unknown` whose `typeMeta` names the
//! object's `apiVersion`/`kind` and whose `raw` holds the object encoded with
//! the field numbers of its upstream `generated.proto`
//! (`k8s.io/metrics/pkg/apis/metrics/{v1,v1beta1}`, identical shapes;
//! `k8s.io/apimachinery/pkg/apis/meta/v1` for `ObjectMeta`, `ListMeta`,
//! `Time`, `Duration` and `Status`; `pkg/api/resource` for `Quantity`).
//!
//! Fields that hold their default value are left out, which every protobuf
//! decoder reads as that default (Go's generated code happens to write empty
//! strings too; the decoded objects are the same). Map entries come out
//! sorted by key, as Go writes them. `metav1.Time` is whole seconds on the
//! wire here, matching the JSON form (Go's decoder drops nanoseconds anyway).
//!
//! Why hand-written rather than prost-generated types: a list of 300,000 pods
//! is encoded from borrowed store values in one pass into one buffer, with no
//! intermediate object tree. The tests decode the output with prost types
//! generated from the upstream `.proto` files (crate `upstream-proto`), so
//! the field numbers here are checked against an independent decoder, and
//! the end-to-end tests have the real kubectl (Go) decode it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::quantity::{ByteSink, write_bytes, write_cpu_nanocores};
use super::status::{Status, StatusDetails};
use super::view::{PodRef, with_pod_ref};
use super::{ApiVersion, Labels, NodeUsage, PodUsage, Resource, sorted_nodes};

/// The 4-byte prefix of every Kubernetes protobuf message.
pub const MAGIC: [u8; 4] = *b"k8s\0";

const VARINT: u8 = 0;
const LEN: u8 = 2;

fn varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

fn varint_len(value: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn key(buf: &mut Vec<u8>, field: u32, wire: u8) {
    varint(buf, (u64::from(field) << 3) | u64::from(wire));
}

/// A string field; empty strings are the default and are left out.
fn string(buf: &mut Vec<u8>, field: u32, value: &str) {
    if !value.is_empty() {
        bytes_field(buf, field, value.as_bytes());
    }
}

fn bytes_field(buf: &mut Vec<u8>, field: u32, value: &[u8]) {
    key(buf, field, LEN);
    varint(buf, value.len() as u64);
    buf.extend_from_slice(value);
}

/// An integer field (int32/int64 as varint, two's complement for negatives);
/// zero is the default and is left out.
fn int(buf: &mut Vec<u8>, field: u32, value: i64) {
    if value != 0 {
        key(buf, field, VARINT);
        varint(buf, value as u64);
    }
}

/// An embedded message written by `body` in place, most of them shorter than
/// 128 bytes (one length byte).
fn message(buf: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    message_sized(buf, field, 1, body);
}

/// An embedded message written by `body` in place. The length prefix is not
/// known in advance: `guess` bytes are reserved for it and the body is
/// shifted only when the length needs a different width (list items need
/// two, a whole list three or four).
fn message_sized(buf: &mut Vec<u8>, field: u32, guess: usize, body: impl FnOnce(&mut Vec<u8>)) {
    key(buf, field, LEN);
    let at = buf.len();
    buf.resize(at + guess, 0);
    body(buf);
    let len = buf.len() - at - guess;
    let width = varint_len(len as u64);
    if width > guess {
        buf.splice(
            at + guess..at + guess,
            std::iter::repeat_n(0, width - guess),
        );
    } else if width < guess {
        buf.drain(at + width..at + guess);
    }
    let mut value = len as u64;
    for byte in &mut buf[at..at + width - 1] {
        *byte = (value as u8) | 0x80;
        value >>= 7;
    }
    buf[at + width - 1] = value as u8;
}

fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => {
            // Whole seconds towards the past, like Go's Time.Unix().
            let d = before.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() > 0 {
                -secs - 1
            } else {
                -secs
            }
        }
    }
}

/// `metav1.Time` { seconds = 1, nanos = 2 }.
fn time(buf: &mut Vec<u8>, field: u32, at: SystemTime) {
    message(buf, field, |b| int(b, 1, unix_seconds(at)));
}

/// `metav1.Duration` { duration = 1 } in nanoseconds.
fn duration(buf: &mut Vec<u8>, field: u32, d: Duration) {
    message(buf, field, |b| {
        int(b, 1, i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
    });
}

/// `map<string, string>` entries { key = 1, value = 2 }, sorted by key.
fn string_map(buf: &mut Vec<u8>, field: u32, map: &Labels) {
    for (k, v) in map.iter() {
        message(buf, field, |b| {
            string(b, 1, k);
            string(b, 2, v);
        });
    }
}

/// `map<string, resource.Quantity>` entries; `Quantity` { string = 1 }.
/// Keys in sorted order: cpu, memory, swap.
/// The quantity text is formatted straight into the buffer: a string field
/// has the wire shape of an embedded message, and a quantity is never empty.
fn usage(buf: &mut Vec<u8>, field: u32, cpu_nanocores: u64, memory: u64, swap: Option<u64>) {
    let mut entry = |name: &str, text: &dyn Fn(&mut ByteSink<'_>) -> std::fmt::Result| {
        message(buf, field, |b| {
            string(b, 1, name);
            message(b, 2, |q| {
                message(q, 1, |s| {
                    // Writing to a Vec cannot fail.
                    let _ = text(&mut ByteSink(s));
                })
            });
        });
    };
    entry("cpu", &|s| write_cpu_nanocores(s, cpu_nanocores));
    entry("memory", &|s| write_bytes(s, memory));
    if let Some(swap) = swap {
        entry("swap", &|s| write_bytes(s, swap));
    }
}

/// `metav1.ObjectMeta`: name = 1, namespace = 3, creationTimestamp = 8,
/// labels = 11.
fn object_meta(
    buf: &mut Vec<u8>,
    name: &str,
    namespace: &str,
    created: SystemTime,
    labels: &Labels,
) {
    message(buf, 1, |b| {
        string(b, 1, name);
        string(b, 3, namespace);
        time(b, 8, created);
        string_map(b, 11, labels);
    });
}

/// `NodeMetrics`: metadata = 1, timestamp = 2, window = 3, usage = 4.
fn node_body(buf: &mut Vec<u8>, node: &NodeUsage, now: SystemTime) {
    object_meta(buf, &node.name, "", now, &node.labels);
    time(buf, 2, node.timestamp);
    duration(buf, 3, node.window);
    usage(
        buf,
        4,
        node.cpu_nanocores,
        node.memory_bytes,
        node.swap_bytes,
    );
}

/// `PodMetrics`: metadata = 1, timestamp = 2, window = 3, containers = 4
/// (`ContainerMetrics`: name = 1, usage = 2).
fn pod_body(buf: &mut Vec<u8>, pod: &PodRef<'_>, now: SystemTime) {
    object_meta(buf, pod.name, pod.namespace, now, pod.labels);
    time(buf, 2, pod.timestamp);
    duration(buf, 3, pod.window);
    for c in pod.containers {
        message(buf, 4, |b| {
            string(b, 1, c.name);
            usage(b, 2, c.cpu_nanocores, c.memory_bytes, c.swap_bytes);
        });
    }
}

/// One list item: `items = 2` of a `PodMetricsList`, key and length
/// included, so items encoded apart can be concatenated in any order.
pub(crate) fn pod_item(buf: &mut Vec<u8>, pod: &PodRef<'_>, now: SystemTime) {
    message_sized(buf, 2, 2, |b| pod_body(b, pod, now));
}

/// What a `PodMetricsList` whose items take `items_len` bytes starts with:
/// the envelope up to `raw`'s length, and the (empty) `ListMeta`. The items
/// follow and end the message.
pub(crate) fn pod_list_head(version: ApiVersion, items_len: usize) -> Vec<u8> {
    // The empty `ListMeta`: field 1, length 0.
    const LIST_META: [u8; 2] = [(1 << 3) | LEN, 0];
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(&MAGIC);
    message(&mut buf, 1, |b| {
        string(b, 1, version.group_version());
        string(b, 2, Resource::Pods.list_kind());
    });
    key(&mut buf, 2, LEN);
    varint(&mut buf, (LIST_META.len() + items_len) as u64);
    buf.extend_from_slice(&LIST_META);
    buf
}

/// `k8s\0` + `runtime.Unknown` { typeMeta = 1 { apiVersion = 1, kind = 2 },
/// raw = 2, contentEncoding = 3, contentType = 4 } around `raw`, which is
/// written in place. `size_hint` pre-sizes the buffer.
fn envelope(
    api_version: &str,
    kind: &str,
    size_hint: usize,
    raw: impl FnOnce(&mut Vec<u8>),
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(size_hint + 64);
    buf.extend_from_slice(&MAGIC);
    message(&mut buf, 1, |b| {
        string(b, 1, api_version);
        string(b, 2, kind);
    });
    // `raw` is a bytes field: same wire shape as an embedded message.
    message_sized(&mut buf, 2, varint_len(size_hint as u64), raw);
    buf
}

/// A list: metadata = 1 (an empty `ListMeta`), items = 2.
fn list<T>(items: &[T], mut item: impl FnMut(&mut Vec<u8>, &T)) -> impl FnOnce(&mut Vec<u8>) {
    move |buf: &mut Vec<u8>| {
        message(buf, 1, |_| {});
        for i in items {
            message_sized(buf, 2, 2, |b| item(b, i));
        }
    }
}

/// Bytes per item to reserve up front: a pod with two containers and a few
/// labels encodes to roughly this.
const ITEM_SIZE_HINT: usize = 256;

/// `GET …/nodes/{name}`.
pub fn node(node: &NodeUsage, version: ApiVersion, now: SystemTime) -> Vec<u8> {
    envelope(
        version.group_version(),
        Resource::Nodes.kind(),
        ITEM_SIZE_HINT,
        |b| node_body(b, node, now),
    )
}

/// `GET …/namespaces/{ns}/pods/{name}`.
pub fn pod(pod: &PodUsage, version: ApiVersion, now: SystemTime) -> Vec<u8> {
    envelope(
        version.group_version(),
        Resource::Pods.kind(),
        ITEM_SIZE_HINT,
        |b| with_pod_ref(pod, |p| pod_body(b, p, now)),
    )
}

/// `GET …/nodes`: items sorted by name, like the JSON list.
pub fn node_list(nodes: &[NodeUsage], version: ApiVersion, now: SystemTime) -> Vec<u8> {
    let sorted = sorted_nodes(nodes);
    envelope(
        version.group_version(),
        Resource::Nodes.list_kind(),
        nodes.len() * ITEM_SIZE_HINT,
        list(&sorted, |b, n| node_body(b, n, now)),
    )
}

/// `GET …/pods` and `…/namespaces/{ns}/pods`: sorted by namespace, then name,
/// in one pass on this thread. The server lists pods with
/// [`super::list::pod_list`] (the same bytes, from a view, in parallel); this
/// is its test oracle, and the serve bench's baseline.
#[cfg(any(test, feature = "test-oracles"))]
pub fn pod_list(pods: &[PodUsage], version: ApiVersion, now: SystemTime) -> Vec<u8> {
    let sorted = super::sorted_pods(pods);
    envelope(
        version.group_version(),
        Resource::Pods.list_kind(),
        pods.len() * ITEM_SIZE_HINT,
        list(&sorted, |b, p| with_pod_ref(p, |p| pod_body(b, p, now))),
    )
}

/// A `Status` (`v1`): metadata = 1, status = 2, message = 3, reason = 4,
/// details = 5 { name = 1, group = 2, kind = 3, causes = 4 { message = 2 } },
/// code = 6.
pub fn status(status: &Status) -> Vec<u8> {
    envelope(&status.api_version, &status.kind, 256, |b| {
        message(b, 1, |_| {});
        string(b, 2, &status.status);
        string(b, 3, &status.message);
        string(b, 4, &status.reason);
        if let Some(details) = &status.details {
            status_details(b, details);
        }
        int(b, 6, i64::from(status.code));
    })
}

fn status_details(buf: &mut Vec<u8>, details: &StatusDetails) {
    message(buf, 5, |b| {
        string(b, 1, &details.name);
        string(b, 2, &details.group);
        string(b, 3, &details.kind);
        for cause in &details.causes {
            message(b, 4, |c| string(c, 2, &cause.message));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::strategies::{pod, time as any_time};
    use crate::api::types;
    use crate::time::{go_duration, rfc3339_seconds};
    use proptest::prelude::*;
    use upstream_proto::metrics_v1beta1 as upstream;

    /// Decoded by prost types generated from upstream `generated.proto`,
    /// rebuilt as the JSON wire type: must equal the JSON rendering.
    fn decoded_as_json_list(body: &[u8]) -> types::PodMetricsList {
        let (api_version, kind, list) =
            upstream_proto::decode::<upstream::PodMetricsList>(body).expect("decodes");
        types::PodMetricsList {
            kind,
            api_version,
            metadata: types::ListMeta {},
            items: list
                .items
                .into_iter()
                .map(|p| {
                    let meta = p.metadata.unwrap_or_default();
                    let secs = |t: Option<upstream_proto::meta::Time>| {
                        let s = t.and_then(|t| t.seconds).unwrap_or_default();
                        rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s as u64))
                    };
                    types::PodMetrics {
                        kind: None,
                        api_version: None,
                        metadata: types::ObjectMeta {
                            name: meta.name.unwrap_or_default(),
                            namespace: meta.namespace.unwrap_or_default(),
                            creation_timestamp: Some(secs(meta.creation_timestamp)),
                            labels: meta.labels.into_iter().collect(),
                        },
                        timestamp: secs(p.timestamp),
                        window: go_duration(Duration::from_nanos(
                            p.window.and_then(|w| w.duration).unwrap_or_default() as u64,
                        )),
                        containers: p
                            .containers
                            .into_iter()
                            .map(|c| types::ContainerMetrics {
                                name: c.name.unwrap_or_default(),
                                usage: c
                                    .usage
                                    .into_iter()
                                    .map(|(k, q)| (k, q.string.unwrap_or_default()))
                                    .collect(),
                            })
                            .collect(),
                    }
                })
                .collect(),
        }
    }

    proptest! {
        #[test]
        fn pod_lists_decode_upstream_as_the_json_says(
            pods in proptest::collection::vec(pod(), 0..20),
            now in any_time(),
        ) {
            let body = pod_list(&pods, ApiVersion::V1Beta1, now);
            let expected = types::pod_metrics_list(&pods, ApiVersion::V1Beta1, now);
            prop_assert_eq!(decoded_as_json_list(&body), expected);
        }
    }

    #[test]
    fn varint_widths() {
        for (value, width) in [
            (0u64, 1),
            (1, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (u64::MAX, 10),
        ] {
            let mut buf = Vec::new();
            varint(&mut buf, value);
            assert_eq!(buf.len(), width, "{value}");
            assert_eq!(varint_len(value), width, "{value}");
        }
    }

    #[test]
    fn nested_lengths_are_patched_for_long_bodies() {
        for (n, guess) in [0usize, 1, 126, 127, 128, 300, 20_000, 3_000_000]
            .into_iter()
            .flat_map(|n| (1..=4).map(move |g| (n, g)))
        {
            let mut buf = Vec::new();
            message_sized(&mut buf, 2, guess, |b| {
                b.extend(std::iter::repeat_n(7u8, n))
            });
            // key, then the length varint, then the body.
            assert_eq!(buf[0], (2 << 3) | LEN);
            let mut prefix = Vec::new();
            varint(&mut prefix, n as u64);
            assert_eq!(
                &buf[1..1 + prefix.len()],
                prefix.as_slice(),
                "len {n} guess {guess}"
            );
            assert_eq!(buf.len(), 1 + prefix.len() + n);
            assert!(buf[1 + prefix.len()..].iter().all(|&x| x == 7));
        }
    }

    #[test]
    fn time_before_the_epoch_rounds_down_like_go() {
        let t = UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(unix_seconds(t), -2);
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(3)), -3);
        assert_eq!(unix_seconds(UNIX_EPOCH + Duration::from_millis(2999)), 2);
    }

    #[test]
    fn envelope_starts_with_magic_and_type_meta() {
        let body = envelope("metrics.k8s.io/v1beta1", "PodMetricsList", 0, |_| {});
        assert_eq!(&body[..4], b"k8s\0");
        // field 1 (typeMeta), then apiVersion as field 1 inside it.
        assert_eq!(body[4], (1 << 3) | LEN);
        assert_eq!(body[6], (1 << 3) | LEN);
        assert_eq!(&body[8..8 + 22], b"metrics.k8s.io/v1beta1");
    }
}
