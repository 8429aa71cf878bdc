//! The kubelet stats source: `GET https://<node>:10250/metrics/resource`
//! parsed into per-node, per-pod and per-container CPU and memory samples.
//!
//! The agent normally reads cgroups itself. This source exists for when it
//! cannot (cgroupfs not mounted or not readable), and as a periodic
//! cross-check of our numbers against the ones metrics-server would have
//! served. [`client`] owns reaching the kubelet (TLS, token, limits);
//! [`mod@parse`] owns reading its Prometheus text.
//!
//! ```no_run
//! # async fn demo() -> Result<(), agent::kubelet::ClientError> {
//! use agent::kubelet::{KubeletClient, KubeletConfig, resource_url};
//!
//! let node = std::net::SocketAddr::from(([10, 0, 0, 7], 10250));
//! let mut config = KubeletConfig::new(resource_url(node)?);
//! config.ca_file = Some("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt".into());
//! config.token_file = Some("/var/run/secrets/kubernetes.io/serviceaccount/token".into());
//! let client = KubeletClient::new(config)?;
//! let parsed = client.scrape().await?;
//! for pod in &parsed.stats.pods {
//!     tracing::info!(namespace = %pod.namespace, pod = %pod.name, containers = pod.containers.len());
//! }
//! # Ok(()) }
//! ```
pub mod check;
pub mod client;
pub mod parse;
pub mod source;

pub use client::{
    DEFAULT_MAX_BODY_BYTES, DEFAULT_TIMEOUT, Error as ClientError, KubeletClient, KubeletConfig,
    resource_url,
};
pub use parse::{
    ContainerStats, CpuUsage, Error as ParseError, KubeletStats, MemoryUsage, NodeStats, Parsed,
    PodStats, parse,
};
