//! The Kubernetes client both binaries use: kube-rs, configured from a
//! kubeconfig or the pod's ServiceAccount, with watch requests paced.
//!
//! kube-runtime's watcher backs off after errors (with [`Backoff`], see the
//! callers) but starts a new watch at once when one ends cleanly.
//! kube-apiserver ends a healthy watch after minutes; a proxy that cuts every
//! stream at once would make that a tight loop of watch requests. So a watch
//! that starts again soon after its previous successful start (the same path
//! and selectors) waits a growing pause first.
use std::{
    collections::HashMap,
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use kube::{
    Client, Config,
    client::{Body, ClientBuilder},
    config::{KubeConfigOptions, Kubeconfig},
};
use tokio::{runtime::Handle, time::Instant};
use tokio_util::task::AbortOnDropHandle;
use tower::{BoxError, Layer, Service, buffer::BufferLayer};

use crate::{backoff::Backoff, token::TokenFile};

/// Why no client could be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig cannot be read or used.
    #[error("kubeconfig {}: {source}", .path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No kubeconfig given, and not in a pod with a ServiceAccount.
    #[error(
        "in-cluster credentials (no --kubeconfig given; is the ServiceAccount token mounted?): {0}"
    )]
    InCluster(#[from] kube::config::InClusterError),
    /// The settings were read but the client cannot be built from them.
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// A client from `kubeconfig` (its current context), or from the pod's
/// ServiceAccount when there is none (metrics-server's rule). Must be called
/// inside a Tokio runtime.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, Error> {
    client_for(config(kubeconfig).await?)
}

/// The settings [`client`] uses, for callers that adjust them (timeouts).
pub async fn config(kubeconfig: Option<&Path>) -> Result<Config, Error> {
    Ok(match kubeconfig {
        Some(path) => {
            let error = |source| Error::Kubeconfig {
                path: path.to_owned(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(error)?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(error)?
        }
        None => Config::incluster()?,
    })
}

/// A client with `config`'s settings, watches paced. A token file (the
/// in-cluster ServiceAccount's, or a kubeconfig's `tokenFile`) is read by
/// the workspace's one [`TokenFile`] rather than by kube-rs, so that it is
/// trimmed and re-read as every other token is.
pub fn client_for(mut config: Config) -> Result<Client, Error> {
    let token = match (&config.auth_info.token, config.auth_info.token_file.take()) {
        (None, Some(path)) => Some(TokenFile::new(path)),
        // An inline token wins over a file, as in client-go.
        (_, _) => None,
    };
    Ok(paced(
        ClientBuilder::try_from(config)?,
        Pacing::default(),
        token,
    ))
}

/// How watches that end at once are spaced out.
#[derive(Clone, Copy, Debug)]
pub struct Pacing {
    /// A watch that starts this long after the previous one is not paced
    /// (and the pauses start over). kube-apiserver ends healthy watches
    /// after `timeoutSeconds` (kube-runtime asks for 290).
    pub healthy: Duration,
    /// First pause, and the largest.
    pub base: Duration,
    pub max: Duration,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            healthy: Duration::from_secs(30),
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// Requests waiting to reach the connection pool (kube's own default).
const QUEUE: usize = 1024;

/// A client over `builder`'s stack (kube's own from a [`Config`], or a fake
/// kube-apiserver in tests), with watch requests paced by `pacing` and, with
/// a `token`, its bearer token on every request. Must be called inside the
/// Tokio runtime its requests are to run on ([`SpawnOn`]).
pub fn paced<S, B>(builder: ClientBuilder<S>, pacing: Pacing, token: Option<TokenFile>) -> Client
where
    S: Service<Request<Body>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + Sync,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    // The pacing layer delays a call, so it needs a service it can clone
    // and call later: a buffer in front of kube's stack.
    let runtime = Handle::current();
    builder
        .with_layer(&tower::layer::layer_fn(move |inner| SpawnOn {
            inner,
            runtime: runtime.clone(),
        }))
        .with_layer(&BufferLayer::<Request<Body>>::new(QUEUE))
        .with_layer(&PaceWatches::new(pacing))
        .with_layer(&tower::util::option_layer(token.map(|token| Bearer {
            inner: (),
            token: Arc::new(token),
        })))
        .build()
}

/// Runs every request on the runtime the client was built on, whichever
/// runtime awaits it. hyper spawns a new connection's task where the request
/// that opened it is polled, and every later request from anywhere may reuse
/// that connection: one opened from a runtime that is slow to wake (the
/// aggregator's ingest, which gathers I/O over a window before it polls)
/// would delay the replies of every other caller it is handed to.
#[derive(Clone)]
struct SpawnOn<S> {
    inner: S,
    runtime: Handle,
}

impl<S, B> Service<Request<B>> for SpawnOn<S>
where
    S: Service<Request<B>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Boxed<S::Response, BoxError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // Dropping the caller's future still cancels the request.
        let call = AbortOnDropHandle::new(self.runtime.spawn(self.inner.call(request)));
        Box::pin(async move { call.await?.map_err(Into::into) })
    }
}

/// Sets `Authorization` from a token file on every request.
#[derive(Clone)]
struct Bearer<S = ()> {
    inner: S,
    token: Arc<TokenFile>,
}

impl<S> Layer<S> for Bearer {
    type Service = Bearer<S>;

    fn layer(&self, inner: S) -> Bearer<S> {
        Bearer {
            inner,
            token: Arc::clone(&self.token),
        }
    }
}

impl<S, B> Service<Request<B>> for Bearer<S>
where
    S: Service<Request<B>, Error = BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Boxed<S::Response, BoxError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        match self.token.header() {
            Ok(header) => {
                request
                    .headers_mut()
                    .insert(http::header::AUTHORIZATION, header);
                Box::pin(self.inner.call(request))
            }
            Err(error) => Box::pin(std::future::ready(Err(error.into()))),
        }
    }
}

/// The layer, and the service it makes: every clone shares one [`Pacer`].
#[derive(Clone)]
struct PaceWatches<S = ()> {
    inner: S,
    pacer: Arc<Pacer>,
}

/// When each watch may start again.
struct Pacer {
    pacing: Pacing,
    /// Per watch ([`watch_of`]): when it last started successfully.
    last: Mutex<HashMap<String, Pace>>,
}

struct Pace {
    started: Instant,
    backoff: Backoff,
}

impl PaceWatches {
    fn new(pacing: Pacing) -> Self {
        PaceWatches {
            inner: (),
            pacer: Arc::new(Pacer {
                pacing,
                last: Mutex::default(),
            }),
        }
    }
}

impl<S> Layer<S> for PaceWatches {
    type Service = PaceWatches<S>;

    fn layer(&self, inner: S) -> PaceWatches<S> {
        PaceWatches {
            inner,
            pacer: Arc::clone(&self.pacer),
        }
    }
}

impl Pacer {
    /// The pause before `watch` starts now.
    fn delay(&self, watch: &str) -> Duration {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(pace) = last.get_mut(watch) else {
            return Duration::ZERO;
        };
        if pace.started.elapsed() >= self.pacing.healthy {
            pace.backoff.reset();
            Duration::ZERO
        } else {
            pace.backoff.next_delay()
        }
    }

    /// `watch`, started at `started`, was accepted.
    fn started(&self, watch: String, started: Instant) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let pacing = self.pacing;
        last.entry(watch)
            .or_insert_with(|| Pace {
                started,
                backoff: Backoff::new(pacing.base, pacing.max),
            })
            .started = started;
    }
}

/// Which watch a request starts again: its path and query without the
/// version it resumes from or its timeout. Watches of one path with other
/// selectors (one per node's pods, say) are apart: one that starts does not
/// make the next wait.
fn watch_of<B>(request: &Request<B>) -> String {
    let uri = request.uri();
    let query = uri.query().unwrap_or_default().split('&').filter(|pair| {
        !pair.starts_with("resourceVersion=") && !pair.starts_with("timeoutSeconds=")
    });
    let query: Vec<&str> = query.collect();
    format!("{}?{}", uri.path(), query.join("&"))
}

/// `watch=true` (kube-rs) or `watch=1` (others) in the query.
fn is_watch<B>(request: &Request<B>) -> bool {
    request.uri().query().is_some_and(|query| {
        query
            .split('&')
            .any(|pair| matches!(pair, "watch=true" | "watch=1"))
    })
}

type Boxed<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> Service<Request<B>> for PaceWatches<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Boxed<Response<R>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if !is_watch(&request) {
            return Box::pin(self.inner.call(request));
        }
        let watch = watch_of(&request);
        let delay = self.pacer.delay(&watch);
        // The clone is not ready; the one that is goes into the future.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let pacer = Arc::clone(&self.pacer);
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let started = Instant::now();
            let response = inner.call(request).await?;
            // Refused watches are the watcher's to back off from.
            if response.status().is_success() {
                pacer.started(watch, started);
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures::StreamExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::{
        Api,
        runtime::{WatchStreamExt, watcher},
    };
    use tokio::sync::mpsc;

    use super::*;

    const EMPTY_LIST: &str = r#"{"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {"resourceVersion": "7"}, "items": []}"#;

    #[tokio::test]
    async fn watches_that_end_at_once_are_spaced_out_more_and_more() {
        let (tx, mut watches) = mpsc::unbounded_channel();
        let pacing = Pacing {
            healthy: Duration::from_secs(3600),
            base: Duration::from_millis(40),
            max: Duration::from_millis(160),
        };
        // kube-apiserver behind a proxy that ends every watch at once, cleanly.
        let cut_watches = tower::service_fn(move |request: Request<Body>| {
            let body = if is_watch(&request) {
                let _ = tx.send(Instant::now());
                ""
            } else {
                EMPTY_LIST
            };
            std::future::ready(Ok::<_, Infallible>(Response::new(
                http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes())),
            )))
        });
        let client = paced(ClientBuilder::new(cut_watches, "default"), pacing, None);
        let api: Api<ConfigMap> = Api::namespaced(client, "kube-system");
        let events = watcher(api, watcher::Config::default())
            .backoff(crate::backoff::WatchBackoff::new(pacing.base, pacing.max))
            .for_each(|_| async {});
        let starts = async {
            let mut starts = Vec::new();
            while starts.len() < 5 {
                starts.push(watches.recv().await.expect("watches"));
            }
            starts
        };
        let starts = tokio::select! {
            starts = starts => starts,
            () = events => unreachable!("a watcher never ends"),
        };
        let pauses: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        // Each within [ceiling/2, ceiling] of a ceiling that doubles: 40, 80,
        // 160, 160 ms.
        for (pause, floor) in pauses.iter().zip([20, 40, 80, 80]) {
            assert!(*pause >= Duration::from_millis(floor), "pauses {pauses:?}");
        }
    }

    #[test]
    fn requests_run_on_the_clients_runtime_whoever_awaits_them() {
        let runtime = |name: &str| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name(name)
                .enable_all()
                .build()
                .expect("runtime")
        };
        let (home, away) = (runtime("client-home"), runtime("caller"));
        // Where kube-apiserver's reply is read: hyper's connection is driven
        // on the thread that polls the request.
        let (tx, read_on) = std::sync::mpsc::channel();
        let service = tower::service_fn(move |_: Request<Body>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(std::thread::current().name().map(str::to_owned));
                Ok::<_, Infallible>(Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(EMPTY_LIST.as_bytes()),
                )))
            }
        });
        let client = home.block_on(async {
            paced(
                ClientBuilder::new(service, "default"),
                Pacing::default(),
                None,
            )
        });
        let listed = away.block_on(away.spawn(async move {
            Api::<ConfigMap>::namespaced(client, "kube-system")
                .list(&Default::default())
                .await
        }));
        assert!(listed.expect("task").expect("list").items.is_empty());
        assert_eq!(
            read_on.recv().expect("polled").as_deref(),
            Some("client-home")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_watch_that_lived_starts_the_pauses_over() {
        let pace = PaceWatches::new(Pacing {
            healthy: Duration::from_secs(30),
            base: Duration::from_millis(100),
            max: Duration::from_secs(10),
        })
        .pacer;
        let path = "/api/v1/pods";
        assert_eq!(pace.delay(path), Duration::ZERO, "the first watch");
        pace.started(path.into(), Instant::now());
        let first = pace.delay(path);
        assert!(first >= Duration::from_millis(50), "{first:?}");
        assert_eq!(pace.delay("/api/v1/nodes"), Duration::ZERO, "paths apart");
        pace.delay(path);
        let third = pace.delay(path);
        assert!(third >= Duration::from_millis(200), "grows: {third:?}");
        pace.started(path.into(), Instant::now());
        tokio::time::advance(Duration::from_secs(300)).await;
        assert_eq!(
            pace.delay(path),
            Duration::ZERO,
            "a watch that ran its course: the next starts at once"
        );
        pace.started(path.into(), Instant::now());
        let after = pace.delay(path);
        assert!(
            after <= Duration::from_millis(100),
            "started over: {after:?}"
        );
    }

    #[test]
    fn a_watch_is_told_apart_by_its_selectors_not_its_version() {
        let watch = |uri: &str| watch_of(&Request::get(uri).body(()).expect("request"));
        let node = |n: &str, version: u32| {
            watch(&format!(
                "/api/v1/pods?watch=true&timeoutSeconds=290&fieldSelector=spec.nodeName%3D{n}&allowWatchBookmarks=true&resourceVersion={version}"
            ))
        };
        assert_eq!(node("a", 5), node("a", 9), "the same watch, resumed");
        assert_ne!(node("a", 5), node("b", 5), "another node's pods");
        assert_ne!(
            watch("/api/v1/pods?watch=true&labelSelector=app%3Dx"),
            watch("/api/v1/pods?watch=true&labelSelector=app%3Dy")
        );
    }

    #[test]
    fn only_watch_requests_are_paced() {
        let request = |uri: &str| Request::get(uri).body(()).expect("request");
        assert!(is_watch(&request(
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dn&watch=true&resourceVersion=5"
        )));
        assert!(is_watch(&request("/api/v1/pods?watch=1")));
        assert!(!is_watch(&request("/api/v1/pods?resourceVersion=0")));
        assert!(!is_watch(&request("/api/v1/pods?watch=false")));
        assert!(!is_watch(&request("/api/v1/nodes/watch")));
    }
}
