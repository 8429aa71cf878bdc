//! Untrusted text from metrics.k8s.io clients and watchers: a query string
//! decoded as the API decodes it, and label and field selectors parsed and
//! matched. Any panic, overflow or hang is a bug; refusals are fine.
#![no_main]

use std::collections::BTreeMap;

use aggregator_api::{
    api::selector::{FieldSelector, LabelSelector},
    server::query::Query,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let labels: BTreeMap<String, String> = [
        ("app", "web"),
        ("tier", "front"),
        ("n", "10"),
        ("example.com/key", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let query = Query::parse(Some(text));
    let _ = query.watch();
    for s in query.get_all("labelSelector") {
        if let Ok(selector) = LabelSelector::parse(s) {
            let _ = selector.matches(&labels);
        }
    }
    for s in query.get_all("fieldSelector") {
        if let Ok(selector) = FieldSelector::parse(s) {
            let _ = selector.matches("web-1", "default");
        }
    }
    if let Ok(selector) = LabelSelector::parse(text) {
        let _ = selector.matches(&labels);
    }
    if let Ok(selector) = FieldSelector::parse(text) {
        let _ = selector.matches("web-1", "default");
    }
});
