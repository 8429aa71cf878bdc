//! Untrusted bytes of a `nodepulse.v1.Metrics/Watch` request: decoded, and
//! its selector parsed as the watch service parses it. Any panic, overflow
//! or hang is a bug; refusals are fine.
#![no_main]

use aggregator_api::api::selector::LabelSelector;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use proto::v1::WatchRequest;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = WatchRequest::decode(data) else {
        return;
    };
    if request.label_selector.len() <= aggregator_api::stream::MAX_SELECTOR_BYTES {
        let _ = LabelSelector::parse(&request.label_selector);
    }
});
