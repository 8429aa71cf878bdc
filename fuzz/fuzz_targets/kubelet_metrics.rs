//! Untrusted bytes from a kubelet's `/metrics/resource` (what the agent,
//! and the aggregator for nodes without an agent, parse): Prometheus text.
//! Any panic, overflow or hang is a bug; errors in the result are fine.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let scraped = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let _ = agent::kubelet::parse::parse(data, scraped);
});
