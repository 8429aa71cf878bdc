//! Test support for the API server: a PKI made with rcgen, an in-memory
//! `MetricsView`, counting TokenReview/SubjectAccessReview doubles, a server
//! bound to `127.0.0.1:0`, and a real TLS client (HTTP/1.1 or HTTP/2, with or
//! without a client certificate).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aggregator_api::api::view::{Lookup, MetricsView};
use aggregator_api::api::{ContainerUsage, NodeUsage, PodUsage};
use aggregator_api::auth::config::{AuthConfig, AuthConfigHandle, CaBundle, RequestHeaderConfig};
use aggregator_api::auth::flags::AuthFlags;
use aggregator_api::auth::review::{
    AccessReviewer, AccessVerdict, ReviewError, SubjectAccessReviewSpec, TokenReviewer,
    TokenVerdict,
};
use aggregator_api::auth::{Authenticator, Authorizer};
use aggregator_api::server::{App, AppBuilder, serve};
use bytes::Bytes;
use clap::Parser;
use futures::future::BoxFuture;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

// ---------------------------------------------------------------------------
// PKI
// ---------------------------------------------------------------------------

/// A certificate and key in PEM.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A CA that issues client and server certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(cn: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::CrlSign,
        ];
        let key = KeyPair::generate().expect("key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn bundle(&self) -> CaBundle {
        CaBundle::from_pem("test CA", self.pem().as_bytes()).expect("bundle")
    }

    /// A client certificate (clientAuth EKU) with CN and O.
    pub fn client(&self, cn: &str, orgs: &[&str]) -> Identity {
        self.client_with_eku(cn, orgs, ExtendedKeyUsagePurpose::ClientAuth)
    }

    pub fn client_with_eku(
        &self,
        cn: &str,
        orgs: &[&str],
        eku: ExtendedKeyUsagePurpose,
    ) -> Identity {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        // rcgen keeps one value per attribute type, so a second O is added
        // under the same OID as a custom type.
        assert!(orgs.len() <= 2, "at most two organizations");
        let org_types = [
            DnType::OrganizationName,
            DnType::CustomDnType(vec![2, 5, 4, 10]),
        ];
        for (org, ty) in orgs.iter().zip(org_types) {
            params.distinguished_name.push(ty, *org);
        }
        params.extended_key_usages = vec![eku];
        self.sign(params)
    }

    /// A server certificate for localhost / 127.0.0.1.
    pub fn server(&self) -> Identity {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Identity {
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// The PKI of one test: the server's CA, kube-apiserver's client CA and
/// front-proxy CA, and a CA nobody trusts.
pub struct Pki {
    pub server_ca: Ca,
    pub server: Identity,
    pub client_ca: Ca,
    pub front_proxy_ca: Ca,
    pub rogue_ca: Ca,
}

impl Pki {
    pub fn new() -> Pki {
        let server_ca = Ca::new("server-ca");
        let server = server_ca.server();
        Pki {
            server_ca,
            server,
            client_ca: Ca::new("kubernetes-client-ca"),
            front_proxy_ca: Ca::new("front-proxy-ca"),
            rogue_ca: Ca::new("rogue-ca"),
        }
    }

    /// What kube-apiserver publishes: both CAs, front-proxy CN
    /// `front-proxy-client`, the standard headers and the UID header.
    pub fn auth_config(&self) -> AuthConfig {
        AuthConfig {
            client_ca: Some(self.client_ca.bundle()),
            request_header: Some(RequestHeaderConfig {
                allowed_names: vec!["front-proxy-client".to_owned()],
                uid_headers: vec!["x-remote-uid".to_owned()],
                ..RequestHeaderConfig::with_defaults(self.front_proxy_ca.bundle())
            }),
        }
    }
}

// ---------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------

pub fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

pub fn node(name: &str, node_labels: &[(&str, &str)]) -> NodeUsage {
    NodeUsage {
        name: name.to_owned().into(),
        labels: labels(node_labels).into(),
        timestamp: at(1_639_763_862),
        window: Duration::from_millis(15_002),
        cpu_nanocores: 13_000_000,
        memory_bytes: 14_868_480,
        swap_bytes: None,
    }
}

pub fn pod(namespace: &str, name: &str, pod_labels: &[(&str, &str)]) -> PodUsage {
    PodUsage {
        namespace: namespace.to_owned().into(),
        name: name.to_owned().into(),
        labels: labels(pod_labels).into(),
        timestamp: at(1_639_763_862),
        window: Duration::from_secs(15),
        containers: vec![ContainerUsage {
            name: "app".to_owned().into(),
            cpu_nanocores: 7_338_891,
            memory_bytes: 4_194_304,
            swap_bytes: None,
        }],
    }
}

/// An in-memory view: objects with metrics, plus names known without them.
#[derive(Default)]
pub struct TestView {
    pub nodes: Mutex<Vec<NodeUsage>>,
    pub pods: Mutex<Vec<PodUsage>>,
    pub nodes_without_metrics: Mutex<Vec<String>>,
    pub pods_without_metrics: Mutex<Vec<(String, String)>>,
}

impl TestView {
    /// Three nodes, pods in two namespaces, and one node and one pod known
    /// without metrics.
    pub fn sample() -> TestView {
        let view = TestView::default();
        *view.nodes.lock().expect("lock") = vec![
            node("node-b", &[("kubernetes.io/os", "linux"), ("zone", "b")]),
            node(
                "node-a",
                &[("kubernetes.io/os", "linux"), ("zone", "a"), ("gpu", "")],
            ),
            node("win-1", &[("kubernetes.io/os", "windows"), ("zone", "a")]),
        ];
        *view.pods.lock().expect("lock") = vec![
            pod("default", "web-2", &[("app", "web"), ("tier", "front")]),
            pod("default", "web-1", &[("app", "web"), ("tier", "front")]),
            pod("default", "db-0", &[("app", "db"), ("tier", "back")]),
            pod("kube-system", "dns-0", &[("k8s-app", "kube-dns")]),
        ];
        *view.nodes_without_metrics.lock().expect("lock") = vec!["node-new".to_owned()];
        *view.pods_without_metrics.lock().expect("lock") =
            vec![("default".to_owned(), "starting".to_owned())];
        view
    }
}

impl MetricsView for TestView {
    fn nodes(&self) -> Vec<NodeUsage> {
        self.nodes.lock().expect("lock").clone()
    }

    fn node(&self, name: &str) -> Lookup<NodeUsage> {
        if let Some(n) = self
            .nodes
            .lock()
            .expect("lock")
            .iter()
            .find(|n| n.name == name.into())
        {
            return Lookup::Found(n.clone());
        }
        if self
            .nodes_without_metrics
            .lock()
            .expect("lock")
            .iter()
            .any(|n| n == name)
        {
            return Lookup::NoMetrics;
        }
        Lookup::Unknown
    }

    fn pods(&self, namespace: Option<&str>) -> Vec<PodUsage> {
        self.pods
            .lock()
            .expect("lock")
            .iter()
            .filter(|p| namespace.is_none_or(|ns| p.namespace == ns.into()))
            .cloned()
            .collect()
    }

    fn pod(&self, namespace: &str, name: &str) -> Lookup<PodUsage> {
        if let Some(p) = self
            .pods
            .lock()
            .expect("lock")
            .iter()
            .find(|p| p.namespace == namespace.into() && p.name == name.into())
        {
            return Lookup::Found(p.clone());
        }
        if self
            .pods_without_metrics
            .lock()
            .expect("lock")
            .iter()
            .any(|(ns, n)| ns == namespace && n == name)
        {
            return Lookup::NoMetrics;
        }
        Lookup::Unknown
    }

    fn has_data(&self) -> bool {
        !self.nodes.lock().expect("lock").is_empty()
    }
}

// ---------------------------------------------------------------------------
// Review doubles
// ---------------------------------------------------------------------------

/// TokenReview double: a fixed map of tokens, counting calls.
#[derive(Default)]
pub struct FakeTokens {
    pub tokens: HashMap<String, TokenVerdict>,
    pub calls: AtomicUsize,
}

impl TokenReviewer for FakeTokens {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenVerdict, ReviewError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let verdict = self
            .tokens
            .get(token)
            .cloned()
            .unwrap_or_else(|| TokenVerdict::Rejected("unknown token".to_owned()));
        Box::pin(async move { Ok(verdict) })
    }
}

type Rule = Box<dyn Fn(&SubjectAccessReviewSpec) -> Result<AccessVerdict, String> + Send + Sync>;

/// SubjectAccessReview double: a rule, every spec recorded.
pub struct FakeAccess {
    rule: Rule,
    pub specs: Mutex<Vec<SubjectAccessReviewSpec>>,
}

impl FakeAccess {
    pub fn new(
        rule: impl Fn(&SubjectAccessReviewSpec) -> Result<AccessVerdict, String> + Send + Sync + 'static,
    ) -> FakeAccess {
        FakeAccess {
            rule: Box::new(rule),
            specs: Mutex::new(Vec::new()),
        }
    }

    pub fn allow_all() -> FakeAccess {
        FakeAccess::new(|_| {
            Ok(AccessVerdict {
                allowed: true,
                reason: String::new(),
            })
        })
    }

    pub fn calls(&self) -> usize {
        self.specs.lock().expect("lock").len()
    }

    pub fn last(&self) -> Option<SubjectAccessReviewSpec> {
        self.specs.lock().expect("lock").last().cloned()
    }
}

impl AccessReviewer for FakeAccess {
    fn review<'a>(
        &'a self,
        spec: &'a SubjectAccessReviewSpec,
    ) -> BoxFuture<'a, Result<AccessVerdict, ReviewError>> {
        self.specs.lock().expect("lock").push(spec.clone());
        let answer = (self.rule)(spec).map_err(ReviewError::Other);
        Box::pin(async move { answer })
    }
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// A running server and what it was built from.
pub struct TestServer {
    pub addr: SocketAddr,
    pub pki: Arc<Pki>,
    pub view: Arc<TestView>,
    pub tokens: Arc<FakeTokens>,
    pub access: Arc<FakeAccess>,
    pub auth: AuthConfigHandle,
    pub app: App,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// How to build a test server.
pub struct Options {
    pub view: TestView,
    pub tokens: FakeTokens,
    pub access: FakeAccess,
    /// `false` leaves the auth config unloaded (readyz fails).
    pub auth_loaded: bool,
    pub customize: Box<dyn FnOnce(AppBuilder) -> AppBuilder + Send>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            view: TestView::sample(),
            tokens: FakeTokens::default(),
            access: FakeAccess::allow_all(),
            auth_loaded: true,
            customize: Box::new(|b| b),
        }
    }
}

impl TestServer {
    pub async fn start(options: Options) -> TestServer {
        let pki = Arc::new(Pki::new());
        let auth = if options.auth_loaded {
            AuthConfigHandle::loaded(pki.auth_config())
        } else {
            AuthConfigHandle::new()
        };
        let view = Arc::new(options.view);
        let tokens = Arc::new(options.tokens);
        let access = Arc::new(options.access);
        let serving = aggregator_api::tls::ServingCert::from_pem(
            pki.server.cert_pem.as_bytes(),
            pki.server.key_pem.as_bytes(),
        )
        .expect("serving cert");
        let tls = aggregator_api::tls::build(Arc::new(serving), auth.clone(), &Default::default())
            .expect("tls");
        let authenticator = Authenticator::new(auth.clone(), Some(tokens.clone()));
        let authorizer = Authorizer::new(access.clone());
        let app =
            (options.customize)(App::builder(view.clone(), authenticator, authorizer)).build();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, tls, app.clone(), async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            pki,
            view,
            tokens,
            access,
            auth,
            app,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A client over HTTP/1.1 without a client certificate.
    pub fn client(&self) -> Client {
        Client::new(self.addr, &self.pki.server_ca.pem(), None, false)
    }

    /// A client presenting `identity`.
    pub fn client_with(&self, identity: &Identity, http2: bool) -> Client {
        Client::new(self.addr, &self.pki.server_ca.pem(), Some(identity), http2)
    }

    /// Stops the server and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("server stops")
                .expect("server task");
        }
    }
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// A response, body as text (lossy for binary bodies) and as bytes.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
    pub bytes: Bytes,
    pub version: http::Version,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A TLS client for the test server.
pub struct Client {
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    http2: bool,
}

impl Client {
    pub fn new(
        addr: SocketAddr,
        server_ca_pem: &str,
        identity: Option<&Identity>,
        http2: bool,
    ) -> Client {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(server_ca_pem.as_bytes()) {
            roots.add(cert.expect("pem")).expect("root");
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some(id) => {
                let chain = CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("chain");
                let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).expect("key");
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("client auth")
            }
        };
        config.alpn_protocols = if http2 {
            vec![b"h2".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Client {
            addr,
            tls: Arc::new(config),
            http2,
        }
    }

    /// The client's rustls config, for raw TLS connections.
    pub fn tls_config(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.tls)
    }

    /// With a custom rustls config (e.g. a recording certificate resolver).
    pub fn from_config(addr: SocketAddr, config: rustls::ClientConfig) -> Client {
        Client {
            addr,
            tls: Arc::new(config),
            http2: false,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, &[]).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.request(Method::GET, path, headers).await
    }

    pub async fn request(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Reply {
        let tcp = TcpStream::connect(self.addr).await.expect("connect");
        let tls = TlsConnector::from(self.tls.clone())
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("TLS handshake");
        let mut builder = Request::builder().method(method).uri(path);
        if !self.http2 {
            builder = builder.header(http::header::HOST, "localhost");
        } else {
            builder = builder.uri(format!("https://localhost{path}"));
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder.body(Full::new(Bytes::new())).expect("request");
        let response = if self.http2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .expect("h2 handshake");
            tokio::spawn(conn);
            sender.send_request(request).await.expect("response")
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .expect("h1 handshake");
            tokio::spawn(conn);
            sender.send_request(request).await.expect("response")
        };
        let status = response.status();
        let version = response.version();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            bytes: body,
            version,
        }
    }
}

/// The `message` of a Status body.
pub fn status_message(reply: &Reply) -> String {
    reply.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

// ---------------------------------------------------------------------------
// Fake HTTPS servers (kube-apiserver doubles)
// ---------------------------------------------------------------------------

/// Serves `answer` over HTTPS (HTTP/1.1) on 127.0.0.1:0 with a server
/// certificate of a fresh CA, until the returned sender fires or is dropped.
/// Returns the address and the CA clients verify it with.
pub async fn serve_https<F, Fut, B>(answer: F) -> (SocketAddr, Ca, oneshot::Sender<()>)
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let ca = Ca::new("fake-apiserver-ca");
    let identity = ca.server();
    let chain = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).expect("key");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, mut stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = &mut stopped => return,
                accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => return },
            };
            let acceptor = acceptor.clone();
            let answer = answer.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(move |request| {
                    let reply = answer(request);
                    async move { Ok::<_, Infallible>(reply.await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, ca, stop)
}

/// The ConfigMap data kube-apiserver publishes for `pki`.
pub fn configmap_data(pki: &Pki) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("client-ca-file".to_owned(), pki.client_ca.pem()),
        (
            "requestheader-client-ca-file".to_owned(),
            pki.front_proxy_ca.pem(),
        ),
        (
            "requestheader-allowed-names".to_owned(),
            r#"["front-proxy-client"]"#.to_owned(),
        ),
        (
            "requestheader-username-headers".to_owned(),
            r#"["X-Remote-User"]"#.to_owned(),
        ),
        (
            "requestheader-group-headers".to_owned(),
            r#"["X-Remote-Group"]"#.to_owned(),
        ),
        (
            "requestheader-extra-headers-prefix".to_owned(),
            r#"["X-Remote-Extra-"]"#.to_owned(),
        ),
        (
            "requestheader-uid-headers".to_owned(),
            r#"["X-Remote-Uid"]"#.to_owned(),
        ),
    ])
}

/// The authentication flags' defaults.
pub fn default_flags() -> AuthFlags {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        auth: AuthFlags,
    }
    Cli::try_parse_from(["x"]).expect("flags").auth
}

/// A kubeconfig for the server at `addr` whose certificate `ca_pem` signs,
/// with a token file holding `token`; the client the components build from
/// it. The directory holds the files the client re-reads: keep it.
pub async fn kube_client(
    addr: SocketAddr,
    ca_pem: &str,
    token: &str,
) -> (kube::Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("ca.crt"), ca_pem).expect("ca");
    std::fs::write(dir.path().join("token"), token).expect("token");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: t\ncontexts: [{{name: t, context: {{cluster: c, user: u}}}}]\nclusters: [{{name: c, cluster: {{server: \"https://{addr}\", certificate-authority: {}}}}}]\nusers: [{{name: u, user: {{tokenFile: {}}}}}]\n",
            dir.path().join("ca.crt").display(),
            dir.path().join("token").display(),
        ),
    )
    .expect("kubeconfig");
    let client = ::support::kube::client(Some(&kubeconfig))
        .await
        .expect("client");
    (client, dir)
}
