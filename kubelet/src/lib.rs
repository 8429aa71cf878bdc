//! A node as its kubelet knows it, for the agent and the aggregator alike:
//! its stats (`GET https://<node>:10250/metrics/resource`, [`client`] and
//! [`mod@parse`]), its pods (`spec.nodeName`, [`pods`]), and the two joined
//! into the wire's names ([`join`]).
//!
//! The agent reads the kubelet when it cannot read cgroups, and to
//! cross-check its own figures; the aggregator reads the kubelets of nodes
//! that have no agent.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kubelet::ClientError> {
//! use kubelet::{KubeletClient, KubeletConfig, resource_url};
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
pub mod client;
pub mod join;
pub mod parse;
pub mod pods;

pub use client::{
    DEFAULT_MAX_BODY_BYTES, DEFAULT_TIMEOUT, Error as ClientError, KubeletClient, KubeletConfig,
    resource_url,
};
pub use parse::{
    ContainerStats, CpuUsage, Error as ParseError, KubeletStats, MemoryUsage, NodeStats, Parsed,
    PodStats, parse,
};
