//! The aggregator assembled in one place. [`Aggregator::build`] makes every
//! part from the flags (one Kubernetes client, the store, the ingest
//! listener with its TLS, the API listener) so that a bad flag or a busy
//! port fails before anything runs; [`Aggregator::run`] runs them together
//! until shutdown: the gRPC ingest and watch stream, the store's eviction,
//! the binding check, the kubelets of nodes without an agent, and the
//! metrics.k8s.io HTTPS server.
//!
//! The HTTPS server alone ([`run`], [`run_with`], [`run_on`]: kube-apiserver
//! client, authentication config reloader, TokenReview/SubjectAccessReview
//! auth, serving certificate, listener, and [`server::serve`] until
//! shutdown) takes its metrics as an `Arc<dyn MetricsView>`, for tests and
//! benches that feed it something else than the store.
//!
//! ```no_run
//! # async fn example(config: aggregator_api::config::Config,
//! #                  view: std::sync::Arc<dyn aggregator_api::api::view::MetricsView>)
//! #                  -> Result<(), aggregator_api::app::Error> {
//! let shutdown = async { let _ = tokio::signal::ctrl_c().await; };
//! aggregator_api::app::run(config, view, shutdown).await
//! # }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::view::MetricsView;
use crate::auth::config::AuthConfigHandle;
use crate::auth::configmap::AuthConfigReloader;
use crate::auth::review::{KubeAccessReviewer, KubeTokenReviewer};
use crate::auth::{Authenticator, Authorizer};
use crate::binding;
use crate::config::{Config, ServingSource};
use crate::connections::Connections;
use crate::ingest::{
    self, IngestAuth, IngestService, Unauthenticated,
    auth::TokenReviewAuth,
    config::{AuthMode, IngestArgs},
};
use crate::kubelets::{self, ScrapeStats};
use crate::server::{self, App, AppBuilder};
use crate::store::{self, Store};
use crate::stream::{WatchAuth, WatchService};
use crate::tls::{self, ServingCert};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable kube-apiserver credentials.
    #[error(transparent)]
    Kube(#[from] support::kube::Error),
    /// The serving certificate or TLS setup failed.
    #[error(transparent)]
    Tls(#[from] tls::Error),
    /// The listen address could not be bound.
    #[error("binding {addr}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The ingest's certificate or key cannot be used.
    #[error("ingest TLS")]
    IngestTls(#[source] tls::Error),
    /// Only one of the ingest's certificate and key files was given.
    #[error("--ingest-tls-cert-file and --ingest-tls-private-key-file go together")]
    IngestTlsPair,
    /// `--agent-service-account` or `--aggregator-service-account` is not
    /// `namespace:name` (the message names which).
    #[error("{0}")]
    ServiceAccount(String),
    /// The gRPC ingest server failed.
    #[error("ingest server")]
    Ingest(#[source] tonic::transport::Error),
    /// The ingest's own runtime, its thread or its listener could not be set up.
    #[error("ingest runtime")]
    IngestRuntime(#[source] std::io::Error),
    /// The ingest's thread ended without a result: its server panicked.
    #[error("the ingest thread panicked")]
    IngestPanicked,
}

/// Every part of the aggregator, built and bound, not yet running.
pub struct Aggregator {
    config: Config,
    ingest: IngestArgs,
    kubelets: kubelets::Settings,
    client: Client,
    store: Arc<Store>,
    /// The binding check's questions, when pod bindings are verified.
    bindings: Option<mpsc::UnboundedReceiver<Arc<str>>>,
    ingest_auth: Arc<dyn IngestAuth>,
    watch_auth: Option<WatchAuth>,
    ingest_tls: Option<Arc<rustls::ServerConfig>>,
    ingest_listener: TcpListener,
    listener: TcpListener,
}

impl Aggregator {
    /// Builds every part from the flags and binds both listeners.
    pub async fn build(
        config: Config,
        ingest: IngestArgs,
        kubelets: kubelets::Settings,
    ) -> Result<Self, Error> {
        let client = client(&config).await?;
        let (bindings_tx, bindings) = if ingest.verify_pod_bindings {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        } else {
            tracing::warn!(
                "--verify-pod-bindings=false: a pod is served as any agent names it (development only)"
            );
            (None, None)
        };
        let store = Arc::new(Store::new(store::Config {
            node_selector: config.node_selector.clone(),
            bindings: bindings_tx,
            freshness: store::Freshness {
                at_least: config.metric_resolution,
                ..Default::default()
            },
            ..Default::default()
        }));
        let (ingest_auth, watch_auth): (Arc<dyn IngestAuth>, _) = match ingest.ingest_auth {
            AuthMode::None => {
                tracing::warn!(
                    "--ingest-auth=none: any peer may report any node and watch everything (development only)"
                );
                (Arc::new(Unauthenticated), None)
            }
            AuthMode::Tokenreview => {
                let watch_auth = WatchAuth {
                    tokens: Arc::new(KubeTokenReviewer::new(client.clone())),
                    access: Arc::new(KubeAccessReviewer::new(client.clone())),
                };
                // Agents' tokens are minted for the aggregator's audience.
                let reviewer = KubeTokenReviewer::new(client.clone())
                    .with_audiences(vec![ingest.ingest_audience.clone()]);
                let (namespace, name) = ingest.agent_account().map_err(Error::ServiceAccount)?;
                let (replica_ns, replica_name) =
                    ingest.replica_account().map_err(Error::ServiceAccount)?;
                let auth = TokenReviewAuth::new(Arc::new(reviewer), namespace, name)
                    .with_replicas(replica_ns, replica_name);
                let auth = if ingest.ingest_allow_unbound_tokens {
                    auth.allow_unbound()
                } else {
                    auth
                };
                (Arc::new(auth), Some(watch_auth))
            }
        };
        let ingest_tls = match (
            &ingest.ingest_tls_cert_file,
            &ingest.ingest_tls_private_key_file,
        ) {
            (Some(cert), Some(key)) => Some(
                ingest::listener::server_config(cert, key, &config.tls)
                    .map_err(Error::IngestTls)?,
            ),
            (None, None) => {
                tracing::warn!("ingest without TLS (no --ingest-tls-cert-file): development only");
                None
            }
            _ => return Err(Error::IngestTlsPair),
        };
        let ingest_listener = bind(ingest.listen()).await?;
        let listener = bind(config.listen).await?;
        Ok(Aggregator {
            config,
            ingest,
            kubelets,
            client,
            store,
            bindings,
            ingest_auth,
            watch_auth,
            ingest_tls,
            ingest_listener,
            listener,
        })
    }

    /// Runs every part until `shutdown` resolves, then stops them: the
    /// HTTPS server drains first (see [`run_on`]), then ingest, eviction
    /// and the binding check end.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let Aggregator {
            config,
            ingest,
            kubelets,
            client,
            store,
            bindings,
            ingest_auth,
            watch_auth,
            ingest_tls,
            ingest_listener,
            listener,
        } = self;
        let cancel = CancellationToken::new();
        let binding_task = bindings.map(|rx| {
            tokio::spawn(binding::run(
                Arc::clone(&store),
                client.clone(),
                rx,
                cancel.clone(),
            ))
        });

        let kubelet_stats = Arc::new(ScrapeStats::default());
        let picked = Arc::new(kubelets::Picked::default());
        let kubelet_task = tokio::spawn(kubelets::run(
            Arc::clone(&store),
            client.clone(),
            kubelets,
            Arc::clone(&kubelet_stats),
            Arc::clone(&picked),
            ingest.ingest_port,
            cancel.clone(),
        ));

        let watch = WatchService::new(Arc::clone(&store), watch_auth, cancel.clone()).into_server();
        let service = IngestService::new(
            Arc::clone(&store),
            ingest_auth,
            cancel.clone(),
            ingest.ingest_max_message_bytes,
        )
        .forwarded_for(picked);
        let ingest_stats = service.stats();
        let service = service.into_server();
        let connections = Connections::new("ingest", ingest.settings().connections);
        let connections_metrics = connections.clone();
        tracing::info!(addr = %ingest.listen(), tls = ingest_tls.is_some(), "ingest listening");
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .max_concurrent_streams(Some(crate::ingest::MAX_STREAMS_PER_CONNECTION))
            .add_service(service)
            .add_service(watch);
        let ingest_listener = ingest_listener.into_std().map_err(Error::IngestRuntime)?;
        let (settings, ingest_cancel) = (ingest.settings(), cancel.clone());
        let ingest_task = on_own_runtime(
            "nodepulse-ingest",
            ingest.ingest_threads.into(),
            ingest::window::following(ingest.ingest_batch_window, Arc::clone(&store)),
            move || async move {
                let listener =
                    TcpListener::from_std(ingest_listener).map_err(Error::IngestRuntime)?;
                // The certificate is reloaded when its files change.
                router
                    .serve_with_incoming_shutdown(
                        ingest::listener::incoming(
                            listener,
                            ingest_tls,
                            connections,
                            settings,
                            ingest_cancel.clone(),
                        ),
                        ingest_cancel.cancelled_owned(),
                    )
                    .await
                    .map_err(Error::Ingest)
            },
        )
        .map_err(Error::IngestRuntime)?;
        let ingest_task = follow_ingest(ingest_task, cancel.clone());
        let evict_task = {
            let (store, cancel) = (Arc::clone(&store), cancel.clone());
            let after = ingest.node_eviction;
            tokio::spawn(async move { store.evict_silent(after, cancel).await })
        };

        let shutdown = {
            let cancel = cancel.clone();
            async move {
                tokio::select! {
                    () = shutdown => {}
                    () = cancel.cancelled() => {}
                }
                cancel.cancel();
            }
        };
        let view: Arc<dyn MetricsView> = store.clone();
        let served = serve(
            listener,
            config,
            client,
            view,
            move |app| {
                app.metrics_source(move |out| {
                    support::process::render_standard(
                        out,
                        "nodepulse_aggregator",
                        env!("CARGO_PKG_VERSION"),
                    );
                    connections_metrics.render(out);
                    ingest_stats.render(out);
                    kubelet_stats.render(out);
                    store.stats().render(out);
                    store.render_gauges(out);
                })
            },
            shutdown,
        )
        .await;
        cancel.cancel();
        // The follower itself neither panics nor is aborted.
        let ingested = ingest_task
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let _ = evict_task.await;
        let _ = kubelet_task.await;
        if let Some(task) = binding_task {
            let _ = task.await;
        }
        served.and(ingested)
    }
}

/// Runs the future `make` returns on a runtime of its own, `threads` wide,
/// on threads named `name`: its wake-ups do not wake the main runtime's
/// workers, and the main runtime's work (listing every pod) does not delay
/// it. The future is made on that runtime, so what it binds is bound there.
/// While `batch_window` says a non-zero time, I/O gathers for that long
/// after each burst of work (`--ingest-batch-window`).
fn on_own_runtime<F>(
    name: &str,
    threads: usize,
    batch_window: impl Fn() -> Duration + Send + Sync + 'static,
    make: impl FnOnce() -> F + Send + 'static,
) -> std::io::Result<tokio::sync::oneshot::Receiver<F::Output>>
where
    F: Future + 'static,
    F::Output: Send + 'static,
{
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    // A worker with nothing to run sleeps before it waits for I/O: what
    // arrives meanwhile is read after one wake-up, not one each. The first
    // event after a quiet spell is still read at once.
    builder.on_thread_park(move || {
        let window = batch_window();
        if !window.is_zero() {
            std::thread::sleep(window);
        }
    });
    let runtime = builder.enable_all().thread_name(name).build()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ = tx.send(runtime.block_on(make()));
        })?;
    Ok(rx)
}

/// Follows the ingest's thread: whenever it ends, the whole aggregator
/// stops (`cancel`), for without the agents' streams it would serve ever
/// older figures; a panic is an error, so the process exits non-zero and
/// is restarted.
fn follow_ingest(
    ended: tokio::sync::oneshot::Receiver<Result<(), Error>>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<Result<(), Error>> {
    tokio::spawn(async move {
        let result = ended.await.unwrap_or(Err(Error::IngestPanicked));
        if !cancel.is_cancelled() {
            match &result {
                Ok(()) => tracing::error!("the ingest server stopped; stopping"),
                Err(error) => tracing::error!(error = %error, "the ingest server failed; stopping"),
            }
            cancel.cancel();
        }
        result
    })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// The one kube-apiserver client, from `--kubeconfig` or in-cluster.
async fn client(config: &Config) -> Result<Client, Error> {
    let kube = support::kube::config(config.kubeconfig.as_deref()).await?;
    tracing::info!(server = %kube.cluster_url, "kubernetes client configured");
    Ok(support::kube::client_for(kube)?)
}

/// Runs the API server over `view` until `shutdown` resolves.
pub async fn run(
    config: Config,
    view: Arc<dyn MetricsView>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    run_with(config, view, |builder| builder, shutdown).await
}

/// [`run`], with a hook to extend the app (extra health checks).
pub async fn run_with(
    config: Config,
    view: Arc<dyn MetricsView>,
    customize: impl FnOnce(AppBuilder) -> AppBuilder,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let listener = bind(config.listen).await?;
    run_on(listener, config, view, customize, shutdown).await
}

/// [`run_with`] on an already-bound listener (`config.listen` is ignored),
/// so tests can bind port 0.
///
/// The authentication config is loaded once before serving (a failure is
/// logged and retried by the reloader), so the first requests already see it.
pub async fn run_on(
    listener: TcpListener,
    config: Config,
    view: Arc<dyn MetricsView>,
    customize: impl FnOnce(AppBuilder) -> AppBuilder,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let client = client(&config).await?;
    serve(listener, config, client, view, customize, shutdown).await
}

/// [`run_on`] with a client already built.
async fn serve(
    listener: TcpListener,
    config: Config,
    client: Client,
    view: Arc<dyn MetricsView>,
    customize: impl FnOnce(AppBuilder) -> AppBuilder,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let serving = match &config.serving {
        ServingSource::Files { cert, key } => ServingCert::from_files(cert, key)?,
        ServingSource::SelfSigned { dir, names } => ServingCert::self_signed_in(dir, names)?,
    };
    let handle = AuthConfigHandle::new();
    let tls_config = tls::build(Arc::new(serving), handle.clone(), &config.tls)?;

    let flags = config.auth.clone();
    let authenticator = Authenticator::new(
        handle.clone(),
        Some(Arc::new(KubeTokenReviewer::new(client.clone()))),
    )
    .with_token_cache_ttl(flags.authentication_token_webhook_cache_ttl);
    let authorizer = Authorizer::new(Arc::new(KubeAccessReviewer::new(client.clone())))
        .with_always_allow_paths(flags.authorization_always_allow_paths.clone())
        .with_cache_ttls(
            flags.authorization_webhook_cache_authorized_ttl,
            flags.authorization_webhook_cache_unauthorized_ttl,
        );
    let app = customize(
        App::builder(view, authenticator, authorizer)
            .node_selector(config.node_selector.clone())
            .limits(config.limits.clone()),
    )
    .build();

    // The reloader is owned here and stopped after the server has drained.
    let (stop_reloader, reloader_stopped) = tokio::sync::oneshot::channel::<()>();
    let reloader = AuthConfigReloader::new(Some(client), flags, handle);
    if let Err(error) = reloader.reload().await {
        tracing::warn!(%error, "authentication configuration not loaded yet; retrying");
    }
    let reloader_task = tokio::spawn(reloader.run(async {
        let _ = reloader_stopped.await;
    }));

    let delay = config.shutdown_delay;
    let shutdown_app = app.clone();
    let shutdown = async move {
        shutdown.await;
        shutdown_app.begin_shutdown();
        if !delay.is_zero() {
            tracing::info!(
                ?delay,
                "shutdown requested: not ready, waiting before closing the listener"
            );
            tokio::time::sleep(delay).await;
        }
    };
    server::serve(listener, tls_config, app, shutdown).await;

    let _ = stop_reloader.send(());
    if let Err(error) = reloader_task.await {
        tracing::warn!(%error, "authentication config reloader ended abnormally");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_on_the_ingest_thread_stops_the_aggregator() {
        let cancel = CancellationToken::new();
        async fn panics() -> Result<(), Error> {
            panic!("the ingest server panics")
        }
        let ended =
            on_own_runtime("test-ingest", 1, || Duration::ZERO, panics).expect("ingest thread");
        let followed = follow_ingest(ended, cancel.clone());
        let result = followed.await.expect("follower");
        assert!(matches!(result, Err(Error::IngestPanicked)), "{result:?}");
        assert!(cancel.is_cancelled(), "the aggregator keeps running");
    }

    #[tokio::test]
    async fn shutdown_is_not_an_error() {
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let ended = on_own_runtime(
            "test-ingest",
            1,
            || Duration::ZERO,
            move || async move {
                stop.cancelled().await;
                Ok(())
            },
        )
        .expect("ingest thread");
        let followed = follow_ingest(ended, cancel.clone());
        cancel.cancel();
        assert!(followed.await.expect("follower").is_ok());
    }

    #[test]
    fn what_arrives_after_a_read_waits_for_the_batch_window() {
        use std::io::Write;
        use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
        const WINDOW: Duration = Duration::from_millis(300);
        // A socket, as the agents' reports come: its readiness reaches the
        // runtime only when the thread waits for I/O.
        let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().expect("socket pair");
        ours.set_nonblocking(true).expect("nonblocking");
        let (waiting, is_waiting) = std::sync::mpsc::channel();
        let ended = on_own_runtime(
            "test-batch-window",
            1,
            || WINDOW,
            move || async move {
                let mut ours = tokio::net::UnixStream::from_std(ours).expect("registered");
                let mut byte = [0; 1];
                ours.read_exact(&mut byte).await.expect("first");
                let first = std::time::Instant::now();
                // Told once the socket has nothing more to read, so the second
                // byte is not there yet: the thread will park, window first.
                let mut waiting = Some(waiting);
                std::future::poll_fn(|cx| {
                    let polled =
                        std::pin::Pin::new(&mut ours).poll_read(cx, &mut ReadBuf::new(&mut byte));
                    if polled.is_pending()
                        && let Some(waiting) = waiting.take()
                    {
                        waiting.send(()).expect("test");
                    }
                    polled
                })
                .await
                .expect("second");
                first.elapsed()
            },
        )
        .expect("ingest thread");
        theirs.write_all(b"1").expect("first");
        is_waiting.recv().expect("waiting for the second");
        theirs.write_all(b"2").expect("second");
        let gap = ended.blocking_recv().expect("ingest thread");
        assert!(
            gap >= WINDOW,
            "read {gap:?} after the first, within the window"
        );
    }
}
