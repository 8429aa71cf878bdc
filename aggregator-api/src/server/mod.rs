//! The metrics.k8s.io HTTPS server: hyper 1 (HTTP/1.1 and HTTP/2 by ALPN)
//! over tokio-rustls, delegated auth in front of every path, and the pure
//! rendering of `crate::api` behind it.
//!
//! [`serve`] takes an already-bound listener and a shutdown future, so tests
//! bind `127.0.0.1:0` and connect at once. Every connection is admitted by
//! [`crate::connections`] (a limit in all, per peer, and for those still in
//! their handshake, the oldest of which make room for newcomers), must finish
//! its TLS handshake and send a first request within bounded times, and runs
//! in a task owned by a `JoinSet` with one tracing span. On shutdown `/readyz` starts failing, the listener closes,
//! open connections get a graceful close (HTTP/2 GOAWAY, HTTP/1 after the
//! current response) and are aborted after [`ServerLimits::drain_timeout`].
//!
//! ```no_run
//! # async fn example(view: std::sync::Arc<dyn aggregator_api::api::view::MetricsView>,
//! #                  tls: std::sync::Arc<rustls::ServerConfig>,
//! #                  authn: aggregator_api::auth::Authenticator,
//! #                  authz: aggregator_api::auth::Authorizer) -> std::io::Result<()> {
//! use aggregator_api::server::{App, serve};
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:4443").await?;
//! let app = App::builder(view, authn, authz).build();
//! serve(listener, tls, app, async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```

// Handlers return `Result<Response, ApiError>`: `ApiError` is large (the
// Forbidden variant names user, verb and target) but errors are the rare path
// and a single plain error type keeps `?` from every parser working.
#![allow(clippy::result_large_err)]

pub mod discovery;
pub mod health;
pub mod metrics;
pub mod openapi;
pub mod query;
pub mod request_info;
pub mod resources;
pub mod respond;
pub mod router;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument as _;

use crate::api::selector::LabelSelector;
use crate::api::view::MetricsView;
use crate::auth::{Authenticator, Authorizer};
use health::{Check, Health};
use metrics::Metrics;
use router::ConnInfo;
use support::log_gate::LogGate;

/// Resource limits of the server. Set explicitly rather than left to
/// library defaults so they are visible and testable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections held at once, per peer address, and in their handshake.
    pub connections: crate::connections::Limits,
    /// Time a client has to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time a client has, after its handshake, to send a first request.
    pub first_request_timeout: Duration,
    /// Time an HTTP/1 client has to send its request headers.
    pub header_read_timeout: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 keep-alive ping interval (dead aggregator connections are
    /// noticed and their permits returned).
    pub keep_alive_interval: Duration,
    /// How long open connections may take to finish after shutdown.
    pub drain_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            // kube-apiserver multiplexes over a few HTTP/2 connections and
            // the kubelet probes over one at a time: thousands is plenty.
            connections: crate::connections::Limits {
                max: 4096,
                per_peer: 256,
                pending: 512,
            },
            handshake_timeout: Duration::from_secs(10),
            first_request_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            max_concurrent_streams: 250,
            keep_alive_interval: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Everything a request needs. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct App {
    inner: Arc<AppInner>,
}

struct AppInner {
    view: Arc<dyn MetricsView>,
    authenticator: Authenticator,
    authorizer: Authorizer,
    node_selector: LabelSelector,
    limits: ServerLimits,
    metrics: Metrics,
    health: Health,
    auth_failure_log: LogGate,
    error_log: LogGate,
    metric_sources: Vec<MetricSource>,
    connections: crate::connections::Connections,
}

/// Appends Prometheus text of another part of the process (ingest, store) to
/// what `/metrics` serves.
pub type MetricSource = Arc<dyn Fn(&mut String) + Send + Sync>;

/// Builds an [`App`].
pub struct AppBuilder {
    view: Arc<dyn MetricsView>,
    authenticator: Authenticator,
    authorizer: Authorizer,
    node_selector: LabelSelector,
    limits: ServerLimits,
    live: Vec<(String, Check)>,
    ready: Vec<(String, Check)>,
    metric_sources: Vec<MetricSource>,
}

impl App {
    /// Starts building an app over `view` with the given auth.
    pub fn builder(
        view: Arc<dyn MetricsView>,
        authenticator: Authenticator,
        authorizer: Authorizer,
    ) -> AppBuilder {
        AppBuilder {
            view,
            authenticator,
            authorizer,
            node_selector: LabelSelector::everything(),
            limits: ServerLimits::default(),
            live: Vec::new(),
            ready: Vec::new(),
            metric_sources: Vec::new(),
        }
    }

    /// Makes `/readyz` fail (the `shutdown` check). [`serve`] calls it when
    /// its shutdown future resolves; a caller that wants load balancers to
    /// notice before the listener closes calls it earlier.
    pub fn begin_shutdown(&self) {
        self.inner.health.set_shutting_down();
    }

    /// The server's Prometheus text (what `/metrics` serves).
    pub fn metrics_text(&self) -> String {
        self.inner.metrics_text()
    }
}

impl AppBuilder {
    /// `--node-selector`: nodes whose labels do not match are not served.
    pub fn node_selector(mut self, selector: LabelSelector) -> Self {
        self.node_selector = selector;
        self
    }

    /// Server limits.
    pub fn limits(mut self, limits: ServerLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Adds Prometheus text from another part of the process to `/metrics`.
    pub fn metrics_source(mut self, source: impl Fn(&mut String) + Send + Sync + 'static) -> Self {
        self.metric_sources.push(Arc::new(source));
        self
    }

    /// Adds a liveness check (part of `/livez`, `/healthz` and `/readyz`),
    /// e.g. "metric collection is recent".
    pub fn live_check(
        mut self,
        name: impl Into<String>,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.live.push((name.into(), Arc::new(check)));
        self
    }

    /// Adds a readiness check (part of `/readyz` only).
    pub fn ready_check(
        mut self,
        name: impl Into<String>,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.ready.push((name.into(), Arc::new(check)));
        self
    }

    /// The app. `/readyz` also requires the authentication config to be
    /// loaded (`authentication-config`) and the view to hold data
    /// (`metric-storage-ready`).
    pub fn build(self) -> App {
        let mut health = Health::default();
        for (name, check) in self.live {
            health.add_live(name, check);
        }
        let config = self.authenticator.config().clone();
        health.add_ready(
            "authentication-config",
            Arc::new(move || {
                if config.is_loaded() {
                    Ok(())
                } else {
                    Err("authentication configuration not loaded yet".to_owned())
                }
            }),
        );
        let view = self.view.clone();
        health.add_ready(
            "metric-storage-ready",
            Arc::new(move || {
                if view.has_data() {
                    Ok(())
                } else {
                    Err("no node has metrics yet".to_owned())
                }
            }),
        );
        for (name, check) in self.ready {
            health.add_ready(name, check);
        }
        App {
            inner: Arc::new(AppInner {
                view: self.view,
                authenticator: self.authenticator,
                authorizer: self.authorizer,
                node_selector: self.node_selector,
                metrics: Metrics::default(),
                health,
                auth_failure_log: LogGate::new(Duration::from_secs(10)),
                error_log: LogGate::new(Duration::from_secs(10)),
                metric_sources: self.metric_sources,
                connections: crate::connections::Connections::new(
                    "metrics",
                    self.limits.connections,
                ),
                limits: self.limits,
            }),
        }
    }
}

impl AppInner {
    fn metrics_text(&self) -> String {
        let mut text = self.metrics.render();
        self.connections.render(&mut text);
        for source in &self.metric_sources {
            source(&mut text);
        }
        text
    }
}

/// The next connection on `listener`. A failed accept (EMFILE and friends)
/// is logged (the first, then every hundredth, counted in `errors`) and
/// retried after a short pause instead of spinning. Cancel-safe.
pub(crate) async fn accept(
    listener: &TcpListener,
    errors: &mut u64,
) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(error) => {
                *errors += 1;
                if *errors == 1 || errors.is_multiple_of(100) {
                    let addr = listener.local_addr().ok();
                    tracing::warn!(%error, accept_errors = *errors, ?addr, "accepting a connection failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Counts an open connection for its lifetime, aborted tasks included.
struct OpenConnection(App);

impl OpenConnection {
    fn new(app: &App) -> Self {
        app.inner.metrics.connection(1);
        OpenConnection(app.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.inner.metrics.connection(-1);
    }
}

/// Serves HTTPS on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: App,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let limits = app.inner.limits.clone();
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(limits.keep_alive_interval);
    let builder = Arc::new(builder);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving metrics.k8s.io");
    }

    tokio::pin!(shutdown);
    let mut accept_errors: u64 = 0;
    loop {
        // Reap finished connections so the set stays as small as the load.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = accept(&listener, &mut accept_errors) => accepted,
        };
        // Refused: closed at once (dropped), before any work for it.
        let Ok(mut ticket) = app.inner.connections.admit(peer.ip()) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let span = tracing::debug_span!("connection", %peer);
        connections.spawn(
            async move {
                let _open = OpenConnection::new(&app);
                let limits = &app.inner.limits;
                let handshake =
                    tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream));
                let tls = tokio::select! {
                    done = handshake => match done {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(error)) => {
                            app.inner.metrics.handshake_error();
                            ticket.handshake_failed();
                            tracing::debug!(%error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            app.inner.metrics.handshake_error();
                            ticket.handshake_failed();
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    },
                    () = ticket.evicted() => {
                        tracing::debug!("closed in its handshake to make room");
                        return;
                    }
                };
                ticket.established();
                let certs: Arc<[rustls_pki_types::CertificateDer<'static>]> = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| c.to_vec().into())
                    .unwrap_or_else(|| Arc::from(Vec::new()));
                let conn = Arc::new(ConnInfo { peer, certs });
                let service_app = app.clone();
                let asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let asked_in_service = Arc::clone(&asked);
                let service = service_fn(move |request| {
                    let app = service_app.clone();
                    let conn = conn.clone();
                    asked_in_service.store(true, std::sync::atomic::Ordering::Relaxed);
                    async move { Ok::<_, Infallible>(router::handle(&app, &conn, request).await) }
                });
                let connection = builder
                    .serve_connection(TokioIo::new(tls), service)
                    .into_owned();
                let served = watcher.watch(connection);
                tokio::pin!(served);
                // A client that completed its handshake and then says
                // nothing (HTTP/2 waits for its preface without a timer of
                // its own) is closed.
                let first = tokio::time::sleep(limits.first_request_timeout);
                tokio::pin!(first);
                let result = loop {
                    tokio::select! {
                        result = &mut served => break result,
                        () = &mut first, if !first.is_elapsed() => {
                            if !asked.load(std::sync::atomic::Ordering::Relaxed) {
                                tracing::debug!("no request after the handshake; closing");
                                return;
                            }
                        }
                    }
                };
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                drop(ticket);
            }
            .instrument(span),
        );
    }

    tracing::info!(
        open = connections.len(),
        "shutting down: not ready, listener closed, draining connections"
    );
    app.begin_shutdown();
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached; closing the remaining connections");
        connections.abort_all();
    }
    while connections.join_next().await.is_some() {}
    tracing::info!("server stopped");
}
