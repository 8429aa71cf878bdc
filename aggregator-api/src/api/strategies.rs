//! Test-only proptest strategies for the API's input values: any text
//! (quotes, backslashes, control characters, non-ASCII) in names and labels,
//! any numbers, repeated timestamps and windows as a store produces them.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;

use super::{ContainerUsage, NodeUsage, PodUsage};

pub fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    // Any text, including quotes, backslashes, control characters and
    // non-ASCII, so escaping is compared too.
    proptest::collection::btree_map("\\PC{0,12}|[\"\\\\\\x00-\\x1f<>&]{0,4}", "\\PC{0,20}", 0..5)
}

pub fn time() -> impl Strategy<Value = SystemTime> {
    (0u64..4_000_000_000, 0u32..1_000_000_000).prop_map(|(s, n)| UNIX_EPOCH + Duration::new(s, n))
}

pub fn window() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::from_secs(15)),
        Just(Duration::from_secs(1)),
        (0u64..100_000_000_000).prop_map(Duration::from_nanos),
    ]
}

pub fn pod() -> impl Strategy<Value = PodUsage> {
    let container = (
        "\\PC{0,12}",
        any::<u64>(),
        any::<u64>(),
        any::<Option<u64>>(),
    )
        .prop_map(|(name, cpu, mem, swap)| ContainerUsage {
            name: name.into(),
            cpu_nanocores: cpu,
            memory_bytes: mem,
            swap_bytes: swap,
        });
    (
        "[a-c]{0,2}",
        "\\PC{0,12}",
        labels(),
        time(),
        window(),
        proptest::collection::vec(container, 0..3),
    )
        .prop_map(
            |(namespace, name, labels, timestamp, window, containers)| PodUsage {
                namespace: namespace.into(),
                name: name.into(),
                labels: labels.into(),
                timestamp,
                window,
                containers,
            },
        )
}

pub fn node() -> impl Strategy<Value = NodeUsage> {
    (
        "\\PC{0,12}",
        labels(),
        time(),
        window(),
        any::<u64>(),
        any::<u64>(),
        any::<Option<u64>>(),
    )
        .prop_map(
            |(name, labels, timestamp, window, cpu, mem, swap)| NodeUsage {
                name: name.into(),
                labels: labels.into(),
                timestamp,
                window,
                cpu_nanocores: cpu,
                memory_bytes: mem,
                swap_bytes: swap,
            },
        )
}
