//! Untrusted bytes from an agent stream: decode as a NodeReport and apply to
//! a store, twice (so rate arithmetic runs), then read everything back. Any
//! panic, overflow or hang is a bug; refusals are fine.
#![no_main]

use std::time::{Duration, SystemTime};

use aggregator_api::{api::view::MetricsView, store::Store};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use proto::v1::NodeReport;

fuzz_target!(|data: &[u8]| {
    let Ok(report) = NodeReport::decode(data) else {
        return;
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let _ = Store::default().apply(&report, now);
    // A stream's first report carries metadata (a store refuses counters for
    // a node it has no names for): give it some, so the rest is exercised.
    let mut report = report;
    report.metadata.get_or_insert_with(Default::default);
    let store = Store::default();
    let _ = store.apply(&report, now);
    let mut later = report.clone();
    later.sample_unix_nanos = later.sample_unix_nanos.saturating_add(1_000_000_000);
    later.metadata = None;
    let _ = store.apply(&later, now);
    let _ = store.nodes();
    let _ = store.pods(None);
    for p in report.metadata.iter().flat_map(|m| &m.pods) {
        let _ = store.pod(&p.namespace, &p.name);
    }
    let _ = store.node(&report.node);
    let _ = store.evict(Duration::ZERO);
});
