//! The wire contract between node agents, aggregators and stream consumers
//! (`nodepulse.v1`, see `proto/nodepulse/v1/nodepulse.proto` for the fields and
//! the rules for evolving them).
#![forbid(unsafe_code)]

/// Generated from `proto/nodepulse/v1/nodepulse.proto`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, clippy::unwrap_used, missing_docs)]
    tonic::include_proto!("nodepulse.v1");
}

pub mod codec;
pub mod parts;

use std::time::{SystemTime, UNIX_EPOCH};

/// `t` as the wire counts time: nanoseconds since the Unix epoch (0 before
/// it, saturating far after it).
pub fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// A fresh `agent_epoch` for a new series of counters: random per call (the
/// standard library's hasher keys come from the OS's randomness), never 0.
pub fn new_epoch() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_i64(unix_nanos(SystemTime::now()));
    h.finish().max(1)
}
