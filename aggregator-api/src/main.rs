//! `nodepulse-aggregator`: flags, tracing, then [`aggregator_api::app::run`]
//! until SIGTERM or Ctrl-C. The store is not wired yet, so the view is empty
//! (lists answer `[]`, `/readyz` reports `metric-storage-ready` failing).

use std::sync::Arc;

use aggregator_api::api::view::{Lookup, MetricsView};
use aggregator_api::api::{NodeUsage, PodUsage};
use aggregator_api::config::Args;
use anyhow::Context as _;
use clap::Parser as _;

/// A view with no data, until the store feeds one.
struct EmptyView;

impl MetricsView for EmptyView {
    fn nodes(&self) -> Vec<NodeUsage> {
        Vec::new()
    }
    fn node(&self, _name: &str) -> Lookup<NodeUsage> {
        Lookup::Unknown
    }
    fn pods(&self, _namespace: Option<&str>) -> Vec<PodUsage> {
        Vec::new()
    }
    fn pod(&self, _namespace: &str, _name: &str) -> Lookup<PodUsage> {
        Lookup::Unknown
    }
    fn has_data(&self) -> bool {
        false
    }
}

/// Resolves on SIGTERM (how the kubelet stops a pod) or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown signal received");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = args.into_config().context("invalid flags")?;
    aggregator_api::app::run(config, Arc::new(EmptyView), shutdown_signal())
        .await
        .context("metrics.k8s.io server")?;
    Ok(())
}
