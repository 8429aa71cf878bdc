//! The data the API serves, as an interface: the store implements it, tests
//! use small in-memory doubles.
use super::{NodeUsage, PodUsage};

/// A single-object lookup: the three answers have three different `Status`
/// bodies (contract §1.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<T> {
    /// The object is unknown (no such node; pod missing or not Running).
    Unknown,
    /// The object is known but has no metrics yet.
    NoMetrics,
    /// The object with its metrics.
    Found(T),
}

/// What the server reads. Called on every request, so implementations
/// answer from memory and never block on I/O.
pub trait MetricsView: Send + Sync + 'static {
    /// Nodes with complete metrics, any order (the server sorts and filters).
    fn nodes(&self) -> Vec<NodeUsage>;
    /// One node; the server applies `--node-selector` on top.
    fn node(&self, name: &str) -> Lookup<NodeUsage>;
    /// Running pods with complete metrics; `None` = all namespaces.
    fn pods(&self, namespace: Option<&str>) -> Vec<PodUsage>;
    /// One pod; `Unknown` also for a pod that is not Running.
    fn pod(&self, namespace: &str, name: &str) -> Lookup<PodUsage>;
    /// True once the store holds metrics for at least one node (readyz).
    fn has_data(&self) -> bool;
}
