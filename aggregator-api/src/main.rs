//! `nodepulse-aggregator`: flags and tracing, then the three parts sharing
//! one store until SIGTERM or Ctrl-C: the gRPC ingest agents stream to, the
//! eviction of silent nodes, and the metrics.k8s.io HTTPS server.

use std::{sync::Arc, time::Duration};

use aggregator_api::{
    api::view::MetricsView,
    auth::review::{KubeAccessReviewer, KubeTokenReviewer},
    config::Args,
    ingest::{
        IngestAuth, IngestService, Unauthenticated,
        auth::TokenReviewAuth,
        config::{AuthMode, IngestArgs},
    },
    store::Store,
    stream::{WatchAuth, WatchService},
};
use anyhow::Context as _;
use clap::Parser as _;
use tokio_util::sync::CancellationToken;

#[derive(clap::Parser)]
#[command(
    name = "nodepulse-aggregator",
    version,
    about = "Serves metrics.k8s.io from agent-reported usage, as a drop-in for metrics-server"
)]
struct Cli {
    #[command(flatten)]
    api: Args,
    #[command(flatten)]
    ingest: IngestArgs,
}

/// Resolves on SIGTERM (how the kubelet stops a pod) or Ctrl-C.
/// Connections cost a descriptor each, and container runtimes hand out a
/// soft limit of 1024: raise it to the hard limit (nothing here uses
/// `select(2)`, the reason the soft default is low).
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (limit.current, limit.maximum)
        && soft < hard
    {
        let raised = rustix::process::Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-file limit"),
            Err(error) => tracing::warn!(%error, soft, hard, "could not raise the open-file limit"),
        }
    }
    if let Some(soft) = getrlimit(Resource::Nofile).current
        && soft < 4096
    {
        tracing::warn!(
            soft,
            "the open-file limit holds few connections: raise the container's LimitNOFILE"
        );
    }
}

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

/// jemalloc returns memory freed after a burst (a flood of connections, a
/// fleet reconnecting) to the system within seconds (its decay); glibc's
/// allocator keeps most of it in its per-thread arenas, so RSS would stay at
/// the burst's peak. Measured side by side in BENCHMARKS.md (the soak).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = cli.api.into_config().context("invalid flags")?;
    let ingest = cli.ingest;
    let cancel = CancellationToken::new();
    // The binding check and the agents' TokenReviews share one client.
    let client = if ingest.verify_pod_bindings || ingest.ingest_auth == AuthMode::Tokenreview {
        Some(
            support::kube::client(config.kubeconfig.as_deref())
                .await
                .context("kube-apiserver credentials for the binding check and TokenReview")?,
        )
    } else {
        None
    };
    let bindings = if let Some(client) = client.clone().filter(|_| ingest.verify_pod_bindings) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Some((tx, rx, client))
    } else {
        tracing::warn!(
            "--verify-pod-bindings=false: a pod is served as any agent names it (development only)"
        );
        None
    };
    let store = Arc::new(Store::new(aggregator_api::store::Config {
        node_selector: config.node_selector.clone(),
        bindings: bindings.as_ref().map(|(tx, _, _)| tx.clone()),
        ..Default::default()
    }));
    let binding_task = bindings.map(|(_, rx, client)| {
        tokio::spawn(aggregator_api::binding::run(
            Arc::clone(&store),
            client,
            rx,
            cancel.clone(),
        ))
    });

    let (auth, watch_auth): (Arc<dyn IngestAuth>, Option<WatchAuth>) = match ingest.ingest_auth {
        AuthMode::None => {
            tracing::warn!(
                "--ingest-auth=none: any peer may report any node and watch everything (development only)"
            );
            (Arc::new(Unauthenticated), None)
        }
        AuthMode::Tokenreview => {
            let client = client.context("a Kubernetes client for TokenReview")?;
            let watch_auth = WatchAuth {
                tokens: Arc::new(KubeTokenReviewer::new(client.clone())),
                access: Arc::new(KubeAccessReviewer::new(client.clone())),
            };
            let reviewer =
                KubeTokenReviewer::new(client).with_audiences(vec![ingest.ingest_audience.clone()]);
            let (namespace, name) = ingest.agent_account().map_err(anyhow::Error::msg)?;
            let auth = TokenReviewAuth::new(Arc::new(reviewer), namespace, name);
            let auth: Arc<dyn IngestAuth> = Arc::new(if ingest.ingest_allow_unbound_tokens {
                auth.allow_unbound()
            } else {
                auth
            });
            (auth, Some(watch_auth))
        }
    };
    let watch = WatchService::new(Arc::clone(&store), watch_auth, cancel.clone()).into_server();
    let service = IngestService::new(Arc::clone(&store), auth, cancel.clone());
    let ingest_stats = service.stats();
    let service = service.into_server(ingest.ingest_max_message_bytes);
    let mut server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(64));
    raise_open_file_limit();
    let ingest_connections =
        aggregator_api::connections::Connections::new("ingest", ingest.settings().connections);
    let ingest_connections_metrics = ingest_connections.clone();
    let tls = match (
        &ingest.ingest_tls_cert_file,
        &ingest.ingest_tls_private_key_file,
    ) {
        (Some(cert), Some(key)) => {
            Some(aggregator_api::ingest::listener::server_config(cert, key).context("ingest TLS")?)
        }
        (None, None) => {
            tracing::warn!("ingest without TLS (no --ingest-tls-cert-file): development only");
            None
        }
        _ => anyhow::bail!("--ingest-tls-cert-file and --ingest-tls-private-key-file go together"),
    };
    let listener = tokio::net::TcpListener::bind(ingest.listen())
        .await
        .with_context(|| format!("binding ingest {}", ingest.listen()))?;
    tracing::info!(addr = %ingest.listen(), tls = tls.is_some(), "ingest listening");
    let router = server.add_service(service).add_service(watch);
    let shutdown = cancel.clone().cancelled_owned();
    // The certificate is reloaded when its files change.
    let ingest_task = tokio::spawn(router.serve_with_incoming_shutdown(
        aggregator_api::ingest::listener::incoming(
            listener,
            tls,
            ingest_connections,
            ingest.settings(),
            cancel.clone(),
        ),
        shutdown,
    ));
    let evict_task = {
        let (store, cancel, after) = (Arc::clone(&store), cancel.clone(), ingest.node_eviction);
        tokio::spawn(async move {
            let mut every = tokio::time::interval((after / 4).max(Duration::from_secs(1)));
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        let n = store.evict(after);
                        if n > 0 {
                            tracing::info!(nodes = n, ?after, "evicted nodes that stopped reporting");
                        }
                    }
                    _ = cancel.cancelled() => return,
                }
            }
        })
    };

    let shutdown = {
        let cancel = cancel.clone();
        async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = cancel.cancelled() => {}
            }
            cancel.cancel();
        }
    };
    let view: Arc<dyn MetricsView> = store.clone();
    let served = aggregator_api::app::run_with(
        config,
        view,
        move |app| {
            app.metrics_source(move |out| {
                ingest_connections_metrics.render(out);
                ingest_stats.render(out);
                store.stats().render(out);
            })
        },
        shutdown,
    )
    .await;
    cancel.cancel();
    match ingest_task.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "ingest server"),
        Err(e) => tracing::warn!(error = %e, "ingest task"),
        Ok(Ok(())) => {}
    }
    let _ = evict_task.await;
    if let Some(task) = binding_task {
        let _ = task.await;
    }
    served.context("metrics.k8s.io server")?;
    Ok(())
}
