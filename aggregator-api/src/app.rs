//! Wiring of the API server from a [`Config`]: kube-apiserver client,
//! authentication config reloader, TokenReview/SubjectAccessReview auth,
//! serving certificate, listener, and [`server::serve`] until shutdown.
//!
//! The metrics come from outside as an `Arc<dyn MetricsView>` so the store
//! (and whatever feeds it) is built and owned by the caller.
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

use tokio::net::TcpListener;

use crate::api::view::MetricsView;
use crate::auth::config::AuthConfigHandle;
use crate::auth::configmap::AuthConfigReloader;
use crate::auth::review::{KubeAccessReviewer, KubeTokenReviewer};
use crate::auth::{Authenticator, Authorizer};
use crate::config::{Config, ServingSource};
use crate::server::{self, App, AppBuilder};
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
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
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
    let kube = support::kube::config(config.kubeconfig.as_deref()).await?;
    tracing::info!(server = %kube.cluster_url, "kubernetes client configured");
    let client = support::kube::client_for(kube)?;

    let serving = match &config.serving {
        ServingSource::Files { cert, key } => ServingCert::from_files(cert, key)?,
        ServingSource::SelfSigned { dir, names } => ServingCert::self_signed_in(dir, names)?,
    };
    let handle = AuthConfigHandle::new();
    let tls_config = tls::build(Arc::new(serving), handle.clone())?;

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
