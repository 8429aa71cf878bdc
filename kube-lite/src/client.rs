//! A deliberately small HTTPS client for kube-apiserver: GET and POST JSON
//! with the pod's ServiceAccount token or a kubeconfig's credentials.
//!
//! The server needs three calls (TokenReview, SubjectAccessReview, one
//! ConfigMap), all cached or periodic, so each request opens its own TLS
//! connection and drives it in the calling task: no pool, no background
//! task to own, and a dead apiserver connection can never wedge later calls.
//! kube-rs would do all of this and much more, at a compile cost this
//! workspace does not want.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Directory of the mounted ServiceAccount credentials in a pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Largest response body read unless the settings say otherwise: the
/// biggest the components read is one node's pods' metadata or the auth
/// ConfigMap, a few KiB.
pub const MAX_BODY: usize = 4 << 20;
/// What the client asks for unless told otherwise.
const JSON: &str = "application/json";

/// How often a token file is re-read (projected tokens rotate hourly; client-go
/// re-reads every minute too).
const TOKEN_REFRESH: Duration = Duration::from_secs(60);

/// What can fail talking to kube-apiserver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Credentials or settings cannot be used.
    #[error("kubernetes client configuration: {0}")]
    Config(String),
    /// A file named by the configuration cannot be read.
    #[error("reading {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// rustls rejected the TLS settings (e.g. a key not matching the cert).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// TCP connect or TLS handshake failed.
    #[error("connecting to {authority}: {source}")]
    Connect {
        /// host:port.
        authority: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP exchange with {authority}: {source}")]
    Http {
        /// host:port.
        authority: String,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// The response body could not be read or was too large.
    #[error("reading the response body: {0}")]
    Body(String),
    /// No answer in time.
    #[error("{method} {path}: no answer within {timeout:?}")]
    Timeout {
        /// Method.
        method: Method,
        /// Path.
        path: String,
        /// The limit.
        timeout: Duration,
    },
    /// kube-apiserver answered with an error status.
    #[error("{method} {path}: {code}: {message}")]
    Status {
        /// Method.
        method: Method,
        /// Path.
        path: String,
        /// HTTP status.
        code: StatusCode,
        /// The `Status` message, or the body's start.
        message: String,
    },
    /// The body is not the JSON expected.
    #[error("{method} {path}: decoding the response: {source}")]
    Decode {
        /// Method.
        method: Method,
        /// Path.
        path: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The request could not be encoded.
    #[error("encoding the request: {0}")]
    Encode(#[source] serde_json::Error),
    /// The request could not be built (bad path).
    #[error("building the request: {0}")]
    Request(#[from] http::Error),
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How requests authenticate besides a TLS client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// A fixed bearer token.
    Static(String),
    /// A token file, re-read every minute (projected ServiceAccount tokens).
    File(PathBuf),
}

/// Everything needed to talk to one kube-apiserver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// `https://host[:port][/prefix]`.
    pub server: String,
    /// PEM CA bundle the server certificate must chain to.
    pub ca_pem: Vec<u8>,
    /// Name to verify the server certificate against, when not the URL host.
    pub tls_server_name: Option<String>,
    /// PEM client certificate chain and private key.
    pub client_identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Bearer token.
    pub token: Option<Token>,
    /// Limit for one request, connect to last body byte.
    pub timeout: Duration,
    /// Largest response body (and watch event) read; larger is an error.
    pub max_body: usize,
}

/// A cheap-to-clone handle to one kube-apiserver.
#[derive(Clone)]
pub struct KubeClient {
    inner: Arc<Inner>,
}

struct Inner {
    host: String,
    port: u16,
    authority: String,
    base_path: String,
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    token: Option<Token>,
    token_cache: Mutex<Option<(String, Instant)>>,
    timeout: Duration,
    max_body: usize,
}

impl std::fmt::Debug for KubeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeClient")
            .field("server", &self.inner.authority)
            .finish()
    }
}

impl KubeClient {
    /// A client for `settings`.
    pub fn new(settings: ClientSettings) -> Result<Self> {
        let uri: http::Uri = settings
            .server
            .parse()
            .map_err(|e| Error::Config(format!("server URL {:?}: {e}", settings.server)))?;
        if uri.scheme_str() != Some("https") {
            return Err(Error::Config(format!(
                "server URL {:?}: only https is supported",
                settings.server
            )));
        }
        let host = uri
            .host()
            .ok_or_else(|| Error::Config(format!("server URL {:?} has no host", settings.server)))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let base_path = uri.path().trim_end_matches('/').to_owned();
        let name = settings
            .tls_server_name
            .clone()
            .unwrap_or_else(|| host.clone());
        let server_name = ServerName::try_from(name.clone())
            .map_err(|e| Error::Config(format!("server name {name:?}: {e}")))?;

        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&settings.ca_pem) {
            let cert = cert.map_err(|e| Error::Config(format!("certificate authority: {e}")))?;
            roots.add(cert)?;
        }
        if roots.is_empty() {
            return Err(Error::Config(
                "no certificate authority to verify the server with".to_owned(),
            ));
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
        let mut tls = match &settings.client_identity {
            None => builder.with_no_client_auth(),
            Some((cert_pem, key_pem)) => {
                let chain = CertificateDer::pem_slice_iter(cert_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| Error::Config(format!("client certificate: {e}")))?;
                if chain.is_empty() {
                    return Err(Error::Config("client certificate: none found".to_owned()));
                }
                let key = PrivateKeyDer::from_pem_slice(key_pem)
                    .map_err(|e| Error::Config(format!("client key: {e}")))?;
                builder.with_client_auth_cert(chain, key)?
            }
        };
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(KubeClient {
            inner: Arc::new(Inner {
                host,
                port,
                authority,
                base_path,
                server_name,
                tls: Arc::new(tls),
                token: settings.token,
                token_cache: Mutex::new(None),
                timeout: settings.timeout,
                max_body: settings.max_body,
            }),
        })
    }

    /// The in-cluster client: `KUBERNETES_SERVICE_HOST`/`_PORT` and the
    /// mounted ServiceAccount token and CA.
    pub fn in_cluster() -> Result<Self> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").unwrap_or_default();
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_default();
        Self::new(in_cluster_settings(
            &host,
            &port,
            Path::new(SERVICE_ACCOUNT_DIR),
        )?)
    }

    /// The client for a kubeconfig file (its current context).
    pub fn from_kubeconfig(path: &Path) -> Result<Self> {
        Self::new(crate::kubeconfig::load(path)?)
    }

    /// `--kubeconfig` when given, else in-cluster (metrics-server's rule).
    pub fn from_flag(kubeconfig: Option<&Path>) -> Result<Self> {
        match kubeconfig {
            Some(path) => Self::from_kubeconfig(path),
            None => Self::in_cluster(),
        }
    }

    /// `host:port` of the server.
    pub fn authority(&self) -> &str {
        &self.inner.authority
    }

    /// GETs `path` (with query) and decodes the JSON answer.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.get_json_as(path, JSON).await
    }

    /// GETs `path` asking for the JSON form `accept` names (e.g. only the
    /// objects' metadata: `application/json;as=PartialObjectMetadataList;
    /// g=meta.k8s.io;v=v1`) and decodes it.
    pub async fn get_json_as<T: DeserializeOwned>(&self, path: &str, accept: &str) -> Result<T> {
        let body = self.request(Method::GET, path, None, accept).await?;
        decode(Method::GET, path, &body)
    }

    /// POSTs `body` as JSON to `path` and decodes the JSON answer.
    pub async fn post_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let payload = serde_json::to_vec(body).map_err(Error::Encode)?;
        let answer = self
            .request(Method::POST, path, Some(payload), JSON)
            .await?;
        decode(Method::POST, path, &answer)
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        accept: &str,
    ) -> Result<Bytes> {
        let timeout = self.inner.timeout;
        match tokio::time::timeout(timeout, self.exchange(method.clone(), path, body, accept)).await
        {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                method,
                path: path.to_owned(),
                timeout,
            }),
        }
    }

    /// Opens a connection and sends one request; returns the response head and
    /// body, and the connection future, which must be polled for the body to flow.
    async fn send(
        &self,
        method: &Method,
        path: &str,
        body: Option<Vec<u8>>,
        accept: &str,
    ) -> Result<(
        http::Response<hyper::body::Incoming>,
        impl std::future::Future<Output = hyper::Result<()>> + use<>,
    )> {
        let inner = &self.inner;
        let connect_error = |source| Error::Connect {
            authority: inner.authority.clone(),
            source,
        };
        let tcp = TcpStream::connect((inner.host.as_str(), inner.port))
            .await
            .map_err(connect_error)?;
        // Best effort: latency matters more than packet count for small calls.
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(inner.tls.clone())
            .connect(inner.server_name.clone(), tcp)
            .await
            .map_err(connect_error)?;
        let http_error = |source| Error::Http {
            authority: inner.authority.clone(),
            source,
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(http_error)?;

        let mut request = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", inner.base_path))
            .header(header::HOST, inner.authority.as_str())
            .header(header::ACCEPT, accept)
            .header(
                header::USER_AGENT,
                concat!("nodepulse/", env!("CARGO_PKG_VERSION")),
            );
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(token) = self.token()? {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let mut connection = Box::pin(connection);
        let send = sender.send_request(request);
        tokio::pin!(send);
        let response = tokio::select! {
            biased;
            response = &mut send => response,
            result = &mut connection => {
                result.map_err(http_error)?;
                // Closed after answering: the answer is still on its way to us.
                send.await
            }
        }
        .map_err(http_error)?;
        Ok((response, connection))
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        accept: &str,
    ) -> Result<Bytes> {
        let (response, mut connection) = self.send(&method, path, body, accept).await?;
        let status = response.status();
        let collect = Limited::new(response.into_body(), self.inner.max_body).collect();
        tokio::pin!(collect);
        // The connection future drives the body; it may finish first (the server
        // closed after the last byte), and what it read is still in the body.
        let collected = tokio::select! {
            biased;
            collected = &mut collect => collected,
            result = &mut connection => {
                result.map_err(|source| Error::Http {
                    authority: self.inner.authority.clone(),
                    source,
                })?;
                collect.await
            }
        };
        let bytes = collected
            .map_err(|e| Error::Body(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(Error::Status {
                method,
                path: path.to_owned(),
                code: status,
                message: status_message(&bytes),
            });
        }
        Ok(bytes)
    }

    /// Watches `path` (a collection URL with `watch=1` and a `resourceVersion`),
    /// calling `on_event` for each event until the server ends the watch
    /// (`timeoutSeconds`), nothing arrives for `idle` (ask for bookmarks to keep
    /// it alive), or `on_event` returns `false`. An `ERROR` event (typically
    /// 410 Gone: the version is too old) ends it with [`Error::Status`]; the
    /// caller lists again.
    pub async fn watch<T: DeserializeOwned>(
        &self,
        path: &str,
        idle: Duration,
        mut on_event: impl FnMut(WatchEvent<T>) -> bool,
    ) -> Result<()> {
        let (response, mut connection) = self.send(&Method::GET, path, None, JSON).await?;
        let max_body = self.inner.max_body;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = Limited::new(body, max_body)
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
                .unwrap_or_default();
            return Err(Error::Status {
                method: Method::GET,
                path: path.to_owned(),
                code: status,
                message: status_message(&bytes),
            });
        }
        let mut pending: Vec<u8> = Vec::new();
        let mut connection_done = false;
        loop {
            let frame = tokio::select! {
                biased;
                frame = tokio::time::timeout(idle, body.frame()) => match frame {
                    Err(_) => return Ok(()),
                    Ok(None) => return Ok(()),
                    Ok(Some(frame)) => frame.map_err(|e| Error::Body(e.to_string()))?,
                },
                result = &mut connection, if !connection_done => {
                    result.map_err(|source| Error::Http {
                        authority: self.inner.authority.clone(),
                        source,
                    })?;
                    // What was read is still in the body: drain it next.
                    connection_done = true;
                    continue;
                }
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            if pending.len() > max_body {
                return Err(Error::Body(
                    "watch event larger than the body limit".to_owned(),
                ));
            }
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let raw: RawEvent = decode(Method::GET, path, &line)?;
                let event = match raw.kind.as_str() {
                    "ERROR" => {
                        let code = raw
                            .object
                            .get("code")
                            .and_then(serde_json::Value::as_u64)
                            .unwrap_or(500);
                        return Err(Error::Status {
                            method: Method::GET,
                            path: path.to_owned(),
                            code: StatusCode::from_u16(code as u16)
                                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                            message: status_message(raw.object.to_string().as_bytes()),
                        });
                    }
                    "BOOKMARK" => WatchEvent::Bookmark(resource_version(&raw.object)),
                    kind => {
                        let object =
                            serde_json::from_value(raw.object).map_err(|source| Error::Decode {
                                method: Method::GET,
                                path: path.to_owned(),
                                source,
                            })?;
                        match kind {
                            "ADDED" => WatchEvent::Added(object),
                            "MODIFIED" => WatchEvent::Modified(object),
                            "DELETED" => WatchEvent::Deleted(object),
                            _ => continue,
                        }
                    }
                };
                if !on_event(event) {
                    return Ok(());
                }
            }
        }
    }

    fn token(&self) -> Result<Option<String>> {
        match &self.inner.token {
            None => Ok(None),
            Some(Token::Static(token)) => Ok(Some(token.clone())),
            Some(Token::File(path)) => {
                let mut cache = self
                    .inner
                    .token_cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if let Some((token, read_at)) = cache.as_ref()
                    && read_at.elapsed() < TOKEN_REFRESH
                {
                    return Ok(Some(token.clone()));
                }
                let token = std::fs::read_to_string(path)
                    .map_err(|source| Error::Read {
                        path: path.clone(),
                        source,
                    })?
                    .trim()
                    .to_owned();
                *cache = Some((token.clone(), Instant::now()));
                Ok(Some(token))
            }
        }
    }
}

/// The settings `rest.InClusterConfig` would build.
pub fn in_cluster_settings(host: &str, port: &str, sa_dir: &Path) -> Result<ClientSettings> {
    if host.is_empty() || port.is_empty() {
        return Err(Error::Config(
            "not in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set (or pass --kubeconfig)"
                .to_owned(),
        ));
    }
    let server = if host.contains(':') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    };
    let ca_path = sa_dir.join("ca.crt");
    let ca_pem = std::fs::read(&ca_path).map_err(|source| Error::Read {
        path: ca_path,
        source,
    })?;
    Ok(ClientSettings {
        server,
        ca_pem,
        tls_server_name: None,
        client_identity: None,
        token: Some(Token::File(sa_dir.join("token"))),
        timeout: Duration::from_secs(10),
        max_body: MAX_BODY,
    })
}

fn decode<T: DeserializeOwned>(method: Method, path: &str, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|source| Error::Decode {
        method,
        path: path.to_owned(),
        source,
    })
}

/// One event of a watch.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent<T> {
    Added(T),
    Modified(T),
    Deleted(T),
    /// The collection is at this resourceVersion; nothing changed.
    Bookmark(String),
}

#[derive(serde::Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

fn resource_version(object: &serde_json::Value) -> String {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// The `message` of a `Status` body, or the start of whatever was sent.
fn status_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Status {
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Status>(body) {
        Ok(status) if !status.message.is_empty() => status.message,
        _ => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).expect("cert").pem().into_bytes()
    }

    fn settings(server: &str) -> ClientSettings {
        ClientSettings {
            server: server.to_owned(),
            ca_pem: ca_pem(),
            tls_server_name: None,
            client_identity: None,
            token: None,
            timeout: Duration::from_secs(1),
            max_body: MAX_BODY,
        }
    }

    #[test]
    fn server_urls_parse() {
        let c = KubeClient::new(settings("https://10.96.0.1")).expect("client");
        assert_eq!(c.authority(), "10.96.0.1:443");
        let c = KubeClient::new(settings("https://[fd00::1]:6443/prefix/")).expect("client");
        assert_eq!(c.authority(), "[fd00::1]:6443");
        assert_eq!(c.inner.base_path, "/prefix");
        let c = KubeClient::new(settings("https://kube.example:8443")).expect("client");
        assert_eq!(c.inner.host, "kube.example");
        assert!(
            KubeClient::new(settings("http://10.0.0.1")).is_err(),
            "https only"
        );
        let mut no_ca = settings("https://x");
        no_ca.ca_pem.clear();
        assert!(KubeClient::new(no_ca).is_err());
    }

    #[test]
    fn in_cluster_needs_the_environment() {
        let dir = tempfile::tempdir().expect("dir");
        let err = in_cluster_settings("", "443", dir.path()).expect_err("no host");
        assert!(err.to_string().contains("KUBERNETES_SERVICE_HOST"));
        std::fs::write(dir.path().join("ca.crt"), ca_pem()).expect("write");
        let s = in_cluster_settings("fd00::1", "443", dir.path()).expect("settings");
        assert_eq!(s.server, "https://[fd00::1]:443");
        assert_eq!(s.token, Some(Token::File(dir.path().join("token"))));
    }

    #[test]
    fn token_files_are_read_and_trimmed() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("token");
        std::fs::write(&path, "abc\n").expect("write");
        let mut s = settings("https://x");
        s.token = Some(Token::File(path));
        let c = KubeClient::new(s).expect("client");
        assert_eq!(c.token().expect("token").as_deref(), Some("abc"));
    }

    #[test]
    fn status_messages_are_extracted() {
        assert_eq!(
            status_message(br#"{"kind":"Status","message":"forbidden: no"}"#),
            "forbidden: no"
        );
        assert_eq!(status_message(b"plain text"), "plain text");
    }
}
