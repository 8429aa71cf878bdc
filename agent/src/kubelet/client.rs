//! HTTPS client for the kubelet's `/metrics/resource` endpoint.
//!
//! Owns how we reach the kubelet: TLS trust (a CA bundle, or verification
//! explicitly switched off), bearer-token authentication, the request
//! timeout and the cap on the response size. Turning the body into numbers is
//! [`mod@super::parse`]'s job.
//!
//! Each scrape opens its own connection (HTTP/1.1 over rustls) and drives it
//! inside the calling task. Why not a pooled client: the agent talks to one
//! kubelet on its own node at most once per resolution, so a handshake per
//! scrape costs little, and in exchange there is no background connection
//! task to own and shut down, a restarted kubelet (new serving certificate)
//! is picked up on the next scrape, and the timeout covers connect, handshake,
//! request and body in one place.
use std::{
    error::Error as StdError,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http::{
    HeaderValue, Request, StatusCode, Uri,
    header::{ACCEPT, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, HOST, USER_AGENT},
};
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};
use tokio::{io::AsyncReadExt, net::TcpStream};
use tokio_rustls::TlsConnector;
use tracing::{Instrument, debug, debug_span, warn};

use super::parse::{self, Parsed};

/// metrics-server's `--kubelet-request-timeout` default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Cap on a `/metrics/resource` body. A node with 250 pods of 3 containers
/// produces about 300 KiB; 16 MiB leaves room without letting a misbehaving
/// endpoint make the agent buffer without bound.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Projected service-account tokens are about 1 KiB; anything far larger is
/// not a token.
const MAX_TOKEN_BYTES: u64 = 64 * 1024;

/// How much of an error response body to quote back. The kubelet's 401/403
/// bodies are one line (`Forbidden (user=..., verb=get, resource=nodes,
/// subresource=metrics)`), which is exactly what an operator needs to see.
const MAX_ERROR_BODY_BYTES: usize = 1024;

/// Exposition format 0.0.4 only, so a kubelet that can also serve OpenMetrics
/// or protobuf never picks a format [`mod@super::parse`] does not read.
const ACCEPT_TEXT_0_0_4: &str = "text/plain;version=0.0.4";

const USER_AGENT_VALUE: &str = concat!("nodepulse-agent/", env!("CARGO_PKG_VERSION"));

/// Errors of building a client or of one scrape.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid kubelet URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },
    #[error(
        "both a kubelet CA file and insecure TLS were configured; pick one (as client-go refuses this combination too)"
    )]
    ConflictingTrust,
    #[error(
        "no way to verify the kubelet's certificate: set a CA file, or explicitly opt into insecure TLS"
    )]
    NoTrust,
    #[error("cannot read the kubelet CA file {path}")]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the kubelet CA file {path} is not valid PEM")]
    ParseCa {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the kubelet CA file {path} holds a certificate rustls cannot use as a trust anchor")]
    InvalidCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("the kubelet CA file {path} holds no CERTIFICATE block")]
    NoCaCertificates { path: PathBuf },
    #[error("cannot set up TLS for the kubelet client")]
    TlsConfig(#[source] rustls::Error),
    #[error("cannot read the bearer token file {path}")]
    ReadToken {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the bearer token file {path} is empty")]
    EmptyToken { path: PathBuf },
    /// The token is never quoted: it is a credential.
    #[error(
        "the bearer token file {path} does not hold a usable token (not UTF-8, too large, or characters not allowed in a header)"
    )]
    InvalidToken { path: PathBuf },
    #[error("cannot connect to the kubelet at {url}")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    /// The kubelet's certificate was rejected: unknown issuer (wrong CA
    /// file), a name that does not match the URL's host, or expired.
    #[error(
        "the kubelet at {url} presented a certificate that was rejected; check the CA file, the certificate's IP/DNS names and its validity"
    )]
    CertificateRejected {
        url: String,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS handshake with the kubelet at {url} failed")]
    Tls {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with the kubelet at {url} failed")]
    Http {
        url: String,
        #[source]
        source: hyper::Error,
    },
    #[error("cannot build the request to {url}")]
    Request {
        url: String,
        #[source]
        source: http::Error,
    },
    #[error("the kubelet at {url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    /// A non-2xx answer. 401 usually means a bad or expired token, 403 that
    /// the service account lacks `get` on `nodes/metrics`.
    #[error("the kubelet at {url} answered {status}: {body}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("the response from {url} is larger than the {limit}-byte limit")]
    BodyTooLarge { url: String, limit: usize },
    #[error("reading the response body from {url} failed")]
    Body {
        url: String,
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where and how to reach the kubelet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletConfig {
    /// Full URL, normally `https://<node IP>:10250/metrics/resource`. Only
    /// `https` is accepted: the request carries a bearer token.
    pub url: Uri,
    /// PEM bundle of the CA(s) that sign the kubelet's serving certificate.
    pub ca_file: Option<PathBuf>,
    /// **Disables verification of the kubelet's certificate.** Anyone who can
    /// intercept traffic to the kubelet can then impersonate it and read the
    /// bearer token. Exists for clusters whose kubelets serve self-signed
    /// certificates (the kubeadm default without `serverTLSBootstrap`), like
    /// metrics-server's `--kubelet-insecure-tls`. Mutually exclusive with
    /// `ca_file`.
    pub insecure: bool,
    /// File holding the bearer token; re-read on every request so a rotated
    /// projected service-account token is picked up without a restart.
    pub token_file: Option<PathBuf>,
    /// Bound on the whole scrape: connect, TLS handshake, request and body.
    pub timeout: Duration,
    /// Responses larger than this are rejected.
    pub max_body_bytes: usize,
}

impl KubeletConfig {
    /// A config for `url` with the default timeout and size limit, no token,
    /// and no trust configured yet (set `ca_file` or `insecure`).
    pub fn new(url: Uri) -> Self {
        KubeletConfig {
            url,
            ca_file: None,
            insecure: false,
            token_file: None,
            timeout: DEFAULT_TIMEOUT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// The `/metrics/resource` URL of a kubelet at `addr` (IPv6 addresses get
/// their brackets).
pub fn resource_url(addr: SocketAddr) -> Result<Uri> {
    Uri::builder()
        .scheme("https")
        .authority(addr.to_string())
        .path_and_query("/metrics/resource")
        .build()
        .map_err(|_| Error::InvalidUrl {
            url: addr.to_string(),
            reason: "cannot build a URL from this address",
        })
}

/// A client for one kubelet. Cheap to share by reference; holds no connection
/// between scrapes.
pub struct KubeletClient {
    url: Uri,
    /// `url` as text, for errors and spans.
    url_text: String,
    /// Host for the TCP connection (IPv6 without brackets).
    host: String,
    port: u16,
    /// The request target (`/metrics/resource`).
    path: String,
    host_header: HeaderValue,
    server_name: ServerName<'static>,
    connector: TlsConnector,
    token_file: Option<PathBuf>,
    timeout: Duration,
    max_body_bytes: usize,
}

impl fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeletClient")
            .field("url", &self.url_text)
            .field("token_file", &self.token_file)
            .field("timeout", &self.timeout)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

impl KubeletClient {
    /// Validates the config and loads the CA bundle. Fails here, at startup,
    /// rather than on every scrape, for anything that cannot fix itself: a bad
    /// URL, a missing or broken CA file, or an ambiguous trust setting. The
    /// token file is not read yet: it may legitimately appear later.
    pub fn new(config: KubeletConfig) -> Result<Self> {
        let url_text = config.url.to_string();
        let invalid = |reason| Error::InvalidUrl {
            url: url_text.clone(),
            reason,
        };
        if config.url.scheme_str() != Some("https") {
            return Err(invalid(
                "only https is supported: requests carry a bearer token",
            ));
        }
        let authority = config
            .url
            .authority()
            .ok_or_else(|| invalid("no host"))?
            .clone();
        if authority.as_str().contains('@') {
            return Err(invalid("user info in the URL is not supported"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let port = authority.port_u16().unwrap_or(443);
        let path = config
            .url
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|_| invalid("host is not a valid Host header"))?;
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| invalid("host is neither an IP address nor a DNS name"))?;

        let tls = tls_config(&config)?;
        Ok(KubeletClient {
            url: config.url,
            url_text,
            host,
            port,
            path,
            host_header,
            server_name,
            connector: TlsConnector::from(Arc::new(tls)),
            token_file: config.token_file,
            timeout: config.timeout,
            max_body_bytes: config.max_body_bytes,
        })
    }

    /// The URL this client scrapes.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// Fetches and parses one body. The time the request was started stands in
    /// for lines without a timestamp. Parse problems do not fail the scrape:
    /// they are in [`Parsed::errors`] for the caller to count and log.
    pub async fn scrape(&self) -> Result<Parsed> {
        let scrape_time = SystemTime::now();
        let body = self.fetch().await?;
        let parsed = parse::parse(&body, scrape_time);
        if parsed.error_count > 0 {
            debug!(
                url = %self.url_text,
                errors = parsed.error_count,
                first = ?parsed.errors.first(),
                "kubelet body had lines that did not parse"
            );
        }
        Ok(parsed)
    }

    /// Fetches the raw body: one connection, one `GET`, bounded in time and
    /// size.
    pub async fn fetch(&self) -> Result<Bytes> {
        let span = debug_span!("kubelet_scrape", url = %self.url_text);
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, self.fetch_inner())
            .instrument(span.clone())
            .await
        {
            Ok(result) => result,
            Err(_elapsed) => Err(Error::Timeout {
                url: self.url_text.clone(),
                timeout: self.timeout,
            }),
        };
        span.in_scope(|| match &result {
            Ok(body) => debug!(bytes = body.len(), elapsed = ?started.elapsed(), "scraped"),
            Err(error) => debug!(%error, elapsed = ?started.elapsed(), "scrape failed"),
        });
        result
    }

    async fn fetch_inner(&self) -> Result<Bytes> {
        // Read the token before connecting: a missing token is a local
        // problem and should not look like a network one.
        let authorization = self.authorization().await?;

        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| Error::Connect {
                url: self.url_text.clone(),
                source,
            })?;
        // Best effort: only latency is at stake.
        let _ = tcp.set_nodelay(true);
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|source| self.tls_error(source))?;

        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|source| self.http_error(source))?;

        let mut builder = Request::get(self.path.as_str())
            .header(HOST, self.host_header.clone())
            .header(ACCEPT, ACCEPT_TEXT_0_0_4)
            .header(USER_AGENT, USER_AGENT_VALUE)
            .header(CONNECTION, "close");
        if let Some(value) = authorization {
            builder = builder.header(AUTHORIZATION, value);
        }
        let request = builder
            .body(Empty::<Bytes>::new())
            .map_err(|source| Error::Request {
                url: self.url_text.clone(),
                source,
            })?;

        // Drive the connection and the exchange together in this task, so no
        // connection task outlives the scrape.
        let mut conn = std::pin::pin!(conn);
        let mut exchange = std::pin::pin!(async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|source| self.http_error(source))?;
            self.read_response(response).await
        });
        tokio::select! {
            biased;
            result = &mut exchange => return result,
            conn_result = &mut conn => conn_result.map_err(|source| self.http_error(source))?,
        }
        // The connection finished cleanly first (the server closed after
        // writing); what it delivered is still buffered for the exchange.
        exchange.await
    }

    async fn read_response(&self, response: hyper::Response<Incoming>) -> Result<Bytes> {
        let status = response.status();
        if !status.is_success() {
            let body = error_snippet(response.into_body()).await;
            return Err(Error::Status {
                url: self.url_text.clone(),
                status,
                body,
            });
        }
        let too_large = || Error::BodyTooLarge {
            url: self.url_text.clone(),
            limit: self.max_body_bytes,
        };
        // Refuse before reading when the server says up front it is too big.
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_body_bytes as u64) {
            return Err(too_large());
        }
        match Limited::new(response.into_body(), self.max_body_bytes)
            .collect()
            .await
        {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(source) if source.is::<LengthLimitError>() => Err(too_large()),
            Err(source) => Err(Error::Body {
                url: self.url_text.clone(),
                source,
            }),
        }
    }

    /// `Bearer <token>` from the token file, read afresh (see
    /// [`KubeletConfig::token_file`]).
    async fn authorization(&self) -> Result<Option<HeaderValue>> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let read_error = |source| Error::ReadToken {
            path: path.clone(),
            source,
        };
        let file = tokio::fs::File::open(path).await.map_err(read_error)?;
        let mut raw = Vec::new();
        file.take(MAX_TOKEN_BYTES + 1)
            .read_to_end(&mut raw)
            .await
            .map_err(read_error)?;
        let invalid = || Error::InvalidToken { path: path.clone() };
        if raw.len() as u64 > MAX_TOKEN_BYTES {
            return Err(invalid());
        }
        let token = std::str::from_utf8(&raw).map_err(|_| invalid())?.trim();
        if token.is_empty() {
            return Err(Error::EmptyToken { path: path.clone() });
        }
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| invalid())?;
        // Keeps it out of hyper's debug output and HPACK tables.
        value.set_sensitive(true);
        Ok(Some(value))
    }

    /// Separates "we do not trust this certificate" (a configuration problem
    /// with a specific fix) from other handshake failures.
    fn tls_error(&self, source: std::io::Error) -> Error {
        let rejected = source
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .filter(|e| matches!(e, rustls::Error::InvalidCertificate(_)))
            .cloned();
        match rejected {
            Some(source) => Error::CertificateRejected {
                url: self.url_text.clone(),
                source,
            },
            None => Error::Tls {
                url: self.url_text.clone(),
                source,
            },
        }
    }

    fn http_error(&self, source: hyper::Error) -> Error {
        Error::Http {
            url: self.url_text.clone(),
            source,
        }
    }
}

/// The start of an error body, as one printable line.
async fn error_snippet(mut body: Incoming) -> String {
    let mut raw = Vec::new();
    while raw.len() < MAX_ERROR_BODY_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    raw.extend_from_slice(&data);
                }
            }
            // The status is the error; a broken body adds nothing.
            Some(Err(_)) | None => break,
        }
    }
    raw.truncate(MAX_ERROR_BODY_BYTES);
    let text = String::from_utf8_lossy(&raw);
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    line.trim().to_owned()
}

fn tls_config(config: &KubeletConfig) -> Result<ClientConfig> {
    // An explicit provider: the process-wide default may be unset, or
    // ambiguous when several crypto backends are linked in.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(Error::TlsConfig)?;
    let mut tls = match (&config.ca_file, config.insecure) {
        (Some(_), true) => return Err(Error::ConflictingTrust),
        (None, false) => return Err(Error::NoTrust),
        (Some(path), false) => builder
            .with_root_certificates(load_roots(path)?)
            .with_no_client_auth(),
        (None, true) => {
            warn!(
                url = %config.url,
                "TLS verification of the kubelet's certificate is DISABLED (insecure); \
                 anyone on the path can impersonate the kubelet and read the bearer token"
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert { provider }))
                .with_no_client_auth()
        }
    };
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

fn load_roots(path: &Path) -> Result<RootCertStore> {
    let pem = std::fs::read(path).map_err(|source| Error::ReadCa {
        path: path.to_owned(),
        source,
    })?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|source| Error::ParseCa {
            path: path.to_owned(),
            source,
        })?;
        roots.add(cert).map_err(|source| Error::InvalidCa {
            path: path.to_owned(),
            source,
        })?;
    }
    if roots.is_empty() {
        return Err(Error::NoCaCertificates {
            path: path.to_owned(),
        });
    }
    Ok(roots)
}

/// **DANGER: accepts any server certificate, for any name, from any issuer,
/// expired or not.** Used only when [`KubeletConfig::insecure`] is set, and
/// announced with a warning when the client is built.
///
/// It still checks the handshake signatures against the presented
/// certificate's key, so the peer must hold the key of the certificate it
/// shows; that proves nothing about *who* the peer is, which is the point of
/// the warning.
#[derive(Debug)]
struct AcceptAnyServerCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> KubeletConfig {
        let mut c = KubeletConfig::new(url.parse().expect("test URL"));
        c.insecure = true;
        c
    }

    #[test]
    fn resource_url_brackets_ipv6() {
        let v4 = resource_url("10.0.0.7:10250".parse().expect("addr")).expect("url");
        assert_eq!(v4.to_string(), "https://10.0.0.7:10250/metrics/resource");
        let v6 = resource_url("[fd00::7]:10250".parse().expect("addr")).expect("url");
        assert_eq!(v6.to_string(), "https://[fd00::7]:10250/metrics/resource");
        let client = KubeletClient::new(config(&v6.to_string())).expect("client");
        assert_eq!(client.host, "fd00::7");
        assert_eq!(client.port, 10250);
        assert_eq!(client.path, "/metrics/resource");
        assert!(matches!(client.server_name, ServerName::IpAddress(_)));
    }

    #[test]
    fn rejects_plain_http_and_missing_host() {
        for url in [
            "http://127.0.0.1:10255/metrics/resource",
            "/metrics/resource",
        ] {
            assert!(
                matches!(
                    KubeletClient::new(config(url)),
                    Err(Error::InvalidUrl { .. })
                ),
                "{url}"
            );
        }
    }

    #[test]
    fn default_port_and_dns_name() {
        let client =
            KubeletClient::new(config("https://node-1.example/metrics/resource")).expect("client");
        assert_eq!(client.port, 443);
        assert!(matches!(client.server_name, ServerName::DnsName(_)));
    }

    #[test]
    fn trust_must_be_chosen_exactly_once() {
        let mut neither = config("https://127.0.0.1:10250/metrics/resource");
        neither.insecure = false;
        assert!(matches!(
            KubeletClient::new(neither.clone()),
            Err(Error::NoTrust)
        ));
        let mut both = neither;
        both.insecure = true;
        both.ca_file = Some(PathBuf::from("/nonexistent/ca.crt"));
        assert!(matches!(
            KubeletClient::new(both),
            Err(Error::ConflictingTrust)
        ));
    }

    #[test]
    fn ca_file_problems_are_reported_at_construction() -> std::result::Result<(), Box<dyn StdError>>
    {
        let dir = tempfile::tempdir()?;
        let mut c = config("https://127.0.0.1:10250/metrics/resource");
        c.insecure = false;

        c.ca_file = Some(dir.path().join("missing.crt"));
        assert!(matches!(
            KubeletClient::new(c.clone()),
            Err(Error::ReadCa { .. })
        ));

        let empty = dir.path().join("empty.crt");
        std::fs::write(&empty, "not a certificate\n")?;
        c.ca_file = Some(empty);
        assert!(matches!(
            KubeletClient::new(c.clone()),
            Err(Error::NoCaCertificates { .. })
        ));

        let broken = dir.path().join("broken.crt");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )?;
        c.ca_file = Some(broken);
        assert!(matches!(
            KubeletClient::new(c),
            Err(Error::ParseCa { .. } | Error::InvalidCa { .. })
        ));
        Ok(())
    }

    #[tokio::test]
    async fn token_is_trimmed_and_marked_sensitive() -> std::result::Result<(), Box<dyn StdError>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("token");
        let mut c = config("https://127.0.0.1:10250/metrics/resource");
        c.token_file = Some(path.clone());
        let client = KubeletClient::new(c)?;

        assert!(matches!(
            client.authorization().await,
            Err(Error::ReadToken { .. })
        ));
        std::fs::write(&path, " \n")?;
        assert!(matches!(
            client.authorization().await,
            Err(Error::EmptyToken { .. })
        ));
        std::fs::write(&path, "s3cr3t\nvalue")?;
        let err = client
            .authorization()
            .await
            .err()
            .ok_or("accepted a token with a newline")?;
        assert!(matches!(err, Error::InvalidToken { .. }));
        assert!(
            !err.to_string().contains("s3cr3t"),
            "token leaked into {err}"
        );
        std::fs::write(&path, "eyJhbGciOi.abc.def\n")?;
        let value = client.authorization().await?.ok_or("no header")?;
        assert_eq!(value, "Bearer eyJhbGciOi.abc.def");
        assert!(value.is_sensitive());
        Ok(())
    }
}
