//! What the agent and the aggregator share.
pub mod backoff;
pub mod changes;
pub mod kube;
pub mod log_gate;
pub mod logging;
pub mod process;
pub mod token;
