//! Shared by the agent's integration tests.
pub mod kubelet;
