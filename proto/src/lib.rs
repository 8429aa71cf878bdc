//! The wire contract between node agents, aggregators and stream consumers
//! (`nodepulse.v1`, see `proto/nodepulse/v1/nodepulse.proto` for the fields and
//! the rules for evolving them).
#![forbid(unsafe_code)]

/// Generated from `proto/nodepulse/v1/nodepulse.proto`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, clippy::unwrap_used, missing_docs)]
    tonic::include_proto!("nodepulse.v1");
}
