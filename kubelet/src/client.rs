//! HTTPS client for the kubelet's `/metrics/resource` endpoint.
//!
//! Owns how we reach the kubelet: TLS trust (a CA bundle, or verification
//! explicitly switched off), bearer-token authentication, the request
//! timeout and the cap on the response size. Turning the body into numbers is
//! [`mod@super::parse`]'s job.
//!
//! The HTTPS stack is kube-rs's client (hyper and rustls), the one the
//! agent uses for kube-apiserver too, built for the kubelet's address and CA:
//! the connection is kept between scrapes (a handshake per scrape is gone),
//! and a restarted kubelet (new serving certificate) is met with a new
//! handshake when the old connection breaks. The bearer token comes from the
//! workspace's one token reader, checked on every scrape.
use std::{
    error::Error as StdError,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http::{
    HeaderValue, Request, StatusCode, Uri,
    header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, USER_AGENT},
};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use kube::client::Body;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use support::token::TokenFile;
use tokio::sync::OnceCell;
use tracing::{Instrument, debug, debug_span, warn};

use super::parse::{self, Parsed};

/// metrics-server's `--kubelet-request-timeout` default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Cap on a `/metrics/resource` body. A node with 250 pods of 3 containers
/// produces about 300 KiB; 16 MiB leaves room without letting a misbehaving
/// endpoint make the agent buffer without bound.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// How much of an error response body to quote back. The kubelet's 401/403
/// bodies are one line (`Forbidden (user=..., verb=get, resource=nodes,
/// subresource=metrics)`), which is exactly what an operator needs to see.
const MAX_ERROR_BODY_BYTES: usize = 1024;

/// Exposition format 0.0.4 only, so a kubelet that can also serve OpenMetrics
/// or protobuf never picks a format [`mod@super::parse`] does not read.
const ACCEPT_TEXT_0_0_4: &str = "text/plain;version=0.0.4";

/// The default [`KubeletConfig::user_agent`].
pub const USER_AGENT_VALUE: &str = concat!("nodepulse-agent/", env!("CARGO_PKG_VERSION"));

/// Errors of building a client or of one scrape.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid kubelet URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },
    #[error("the user agent {0:?} is not a valid HTTP header value")]
    InvalidUserAgent(String),
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
    #[error("cannot set up the HTTPS client for the kubelet")]
    Client(#[source] kube::Error),
    #[error(transparent)]
    Token(#[from] support::token::Error),
    /// Refused, unreachable, reset: `kind` is the innermost I/O error's,
    /// `source` the whole chain.
    #[error("cannot connect to the kubelet at {url}")]
    Connect {
        url: String,
        kind: std::io::ErrorKind,
        #[source]
        source: kube::Error,
    },
    /// The kubelet's certificate was rejected: unknown issuer (wrong CA
    /// file), a name that does not match the URL's host, or expired.
    #[error(
        "the kubelet at {url} presented a certificate that was rejected ({source}); check the CA file, the certificate's IP/DNS names and its validity"
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
        source: rustls::Error,
    },
    #[error("HTTP exchange with the kubelet at {url} failed")]
    Http {
        url: String,
        #[source]
        source: kube::Error,
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
    /// File holding the bearer token; checked on every request so a rotated
    /// projected service-account token is picked up without a restart.
    pub token_file: Option<PathBuf>,
    /// A client certificate and its key (PEM files) instead of, or beside,
    /// the token, as metrics-server's `--kubelet-client-certificate` and
    /// `--kubelet-client-key`.
    pub client_certificate: Option<(PathBuf, PathBuf)>,
    /// Who is asking, in the `User-Agent` header (the kubelet logs it).
    pub user_agent: String,
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
            client_certificate: None,
            user_agent: USER_AGENT_VALUE.to_owned(),
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

/// A client for one kubelet. Cheap to share by reference; keeps its
/// connection between scrapes.
pub struct KubeletClient {
    url: Uri,
    /// `url` as text, for errors and spans.
    url_text: String,
    /// The request target (`/metrics/resource`).
    path: String,
    /// What the HTTPS client is built from, on the first scrape (it needs
    /// the runtime that drives it).
    settings: kube::Config,
    client: OnceCell<kube::Client>,
    token: Option<TokenFile>,
    user_agent: HeaderValue,
    timeout: Duration,
    max_body_bytes: usize,
}

impl fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeletClient")
            .field("url", &self.url_text)
            .field("token_file", &self.token.as_ref().map(TokenFile::path))
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
        let path = config
            .url
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        ServerName::try_from(host.as_str())
            .map_err(|_| invalid("host is neither an IP address nor a DNS name"))?;
        let base = Uri::builder()
            .scheme("https")
            .authority(authority)
            .path_and_query("/")
            .build()
            .map_err(|_| invalid("host is not a valid URL authority"))?;
        let settings = settings(&config, base)?;
        let user_agent = HeaderValue::from_str(&config.user_agent)
            .map_err(|_| Error::InvalidUserAgent(config.user_agent.clone()))?;
        Ok(KubeletClient {
            user_agent,
            url: config.url,
            url_text,
            path,
            settings,
            client: OnceCell::new(),
            token: config.token_file.map(TokenFile::new),
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
        let authorization = self.authorization()?;
        let client = self
            .client
            .get_or_try_init(|| async { kube::Client::try_from(self.settings.clone()) })
            .await
            .map_err(Error::Client)?;
        let mut builder = Request::get(self.path.as_str())
            .header(ACCEPT, ACCEPT_TEXT_0_0_4)
            .header(USER_AGENT, self.user_agent.clone());
        if let Some(value) = authorization {
            builder = builder.header(AUTHORIZATION, value);
        }
        let request = builder
            .body(Body::empty())
            .map_err(|source| Error::Request {
                url: self.url_text.clone(),
                source,
            })?;
        let response = client
            .send(request)
            .await
            .map_err(|source| self.exchange_error(source))?;
        self.read_response(response).await
    }

    async fn read_response(&self, response: http::Response<Body>) -> Result<Bytes> {
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

    /// `Bearer <token>` from the token file (see [`KubeletConfig::token_file`]).
    fn authorization(&self) -> Result<Option<HeaderValue>> {
        Ok(self.token.as_ref().map(TokenFile::header).transpose()?)
    }

    /// Names what failed, from the causes the HTTPS stack nests: "we do not
    /// trust this certificate" (a configuration problem with a specific fix),
    /// another handshake failure, a refused or unreachable address, or the
    /// HTTP exchange itself.
    fn exchange_error(&self, source: kube::Error) -> Error {
        let url = self.url_text.clone();
        let mut tls = None;
        let mut io = None;
        let mut cause: Option<&(dyn StdError + 'static)> = Some(&source);
        while let Some(error) = cause {
            if let Some(e) = error.downcast_ref::<rustls::Error>() {
                tls.get_or_insert_with(|| e.clone());
            }
            cause = match error.downcast_ref::<std::io::Error>() {
                Some(e) => {
                    io.get_or_insert(e.kind());
                    // An I/O error's `source` skips the error it wraps.
                    e.get_ref().map(|inner| inner as &(dyn StdError + 'static))
                }
                None => error.source(),
            };
        }
        match (tls, io) {
            (Some(source @ rustls::Error::InvalidCertificate(_)), _) => {
                Error::CertificateRejected { url, source }
            }
            (Some(source), _) => Error::Tls { url, source },
            (None, Some(kind)) => Error::Connect { url, kind, source },
            (None, None) => Error::Http { url, source },
        }
    }
}

/// The start of an error body, as one printable line.
async fn error_snippet(mut body: Body) -> String {
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

/// Says loudly, once where the configuration is read (not per client: the
/// aggregator builds one per node), that `kubelets` are trusted blindly.
pub fn warn_insecure(kubelets: &str) {
    warn!(
        kubelets,
        "TLS verification of the kubelet's certificate is DISABLED (insecure); \
         anyone on the path can impersonate the kubelet and read the bearer token"
    );
}

/// The HTTPS client's settings: the kubelet's address, whom to trust, and
/// one attempt per scrape (a retry belongs to the next interval).
fn settings(config: &KubeletConfig, base: Uri) -> Result<kube::Config> {
    let mut settings = kube::Config::new(base);
    match (&config.ca_file, config.insecure) {
        (Some(_), true) => return Err(Error::ConflictingTrust),
        (None, false) => return Err(Error::NoTrust),
        (Some(path), false) => settings.root_cert = Some(load_roots(path)?),
        (None, true) => settings.accept_invalid_certs = true,
    }
    if let Some((cert, key)) = &config.client_certificate {
        // kube-rs reads these when it builds the HTTPS client, like a
        // kubeconfig's client-certificate and client-key.
        settings.auth_info.client_certificate = Some(cert.display().to_string());
        settings.auth_info.client_key = Some(key.display().to_string());
    }
    // `fetch` bounds the whole exchange by `timeout`. A read timeout on the
    // connection would also count the idle time between scrapes and close
    // the kept connection before the next one: a TLS handshake per read.
    settings.connect_timeout = Some(config.timeout);
    settings.read_timeout = None;
    settings.write_timeout = None;
    settings.default_retry = false;
    Ok(settings)
}

/// The CA file's certificates (DER), each checked to be a usable trust
/// anchor, so a broken file fails at start with its own error.
fn load_roots(path: &Path) -> Result<Vec<Vec<u8>>> {
    let pem = std::fs::read(path).map_err(|source| Error::ReadCa {
        path: path.to_owned(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    let mut ders = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|source| Error::ParseCa {
            path: path.to_owned(),
            source,
        })?;
        ders.push(cert.to_vec());
        roots.add(cert).map_err(|source| Error::InvalidCa {
            path: path.to_owned(),
            source,
        })?;
    }
    if ders.is_empty() {
        return Err(Error::NoCaCertificates {
            path: path.to_owned(),
        });
    }
    Ok(ders)
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
        assert_eq!(
            client.settings.cluster_url.to_string(),
            "https://[fd00::7]:10250/"
        );
        assert_eq!(client.path, "/metrics/resource");
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
        let url = &client.settings.cluster_url;
        assert_eq!((url.host(), url.port_u16()), (Some("node-1.example"), None));
        assert!(matches!(
            KubeletClient::new(config("https://under_score!/metrics/resource")),
            Err(Error::InvalidUrl { .. })
        ));
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

    #[test]
    fn token_is_trimmed_and_marked_sensitive() -> std::result::Result<(), Box<dyn StdError>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("token");
        let mut c = config("https://127.0.0.1:10250/metrics/resource");
        c.token_file = Some(path.clone());
        let client = KubeletClient::new(c)?;

        use support::token::Error as TokenError;
        assert!(matches!(
            client.authorization(),
            Err(Error::Token(TokenError::Read { .. }))
        ));
        std::fs::write(&path, " \n")?;
        assert!(matches!(
            client.authorization(),
            Err(Error::Token(TokenError::Empty { .. }))
        ));
        std::fs::write(&path, "s3cr3t\nvalue")?;
        let err = client
            .authorization()
            .err()
            .ok_or("accepted a token with a newline")?;
        assert!(matches!(err, Error::Token(TokenError::Invalid { .. })));
        assert!(
            !err.to_string().contains("s3cr3t"),
            "token leaked into {err}"
        );
        std::fs::write(&path, "eyJhbGciOi.abc.def\n")?;
        let value = client.authorization()?.ok_or("no header")?;
        assert_eq!(value, "Bearer eyJhbGciOi.abc.def");
        assert!(value.is_sensitive());
        Ok(())
    }
}
