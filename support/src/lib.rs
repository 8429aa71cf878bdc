//! What the agent and the aggregator share.
pub mod backoff;
pub mod kube;
pub mod token;
