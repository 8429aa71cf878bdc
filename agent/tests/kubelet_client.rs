//! The kubelet client against an in-process HTTPS server on 127.0.0.1 that
//! plays the kubelet: a cluster CA and a serving certificate made with rcgen,
//! a fixture body, and whatever status the test asks for.
//!
//! The listener is bound before the server task starts, so no test waits for
//! readiness; every server stops through its shutdown channel.
use std::{
    collections::VecDeque,
    convert::Infallible,
    error::Error as StdError,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use agent::kubelet::{ClientError, KubeletClient, KubeletConfig};
use bytes::Bytes;
use http::{
    Request, Response, StatusCode, Uri,
    header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE},
};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{
    body::{Body, Frame, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_rustls::TlsAcceptor;

type TestResult = Result<(), Box<dyn StdError>>;

const FIXTURE: &[u8] = include_bytes!("fixtures/kubelet/resource_v1_31.txt");

/// A cluster CA and a kubelet serving certificate it signed.
struct Pki {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// `san` is the serving certificate's only subject alternative name, as the
/// kubelet's `serverTLSBootstrap` certificates carry the node's IP.
fn make_pki(san: &str) -> Result<Pki, rcgen::Error> {
    make_pki_with_ca_name(san, "nodepulse test cluster CA")
}

fn make_pki_with_ca_name(san: &str, ca_name: &str) -> Result<Pki, rcgen::Error> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let leaf_key = KeyPair::generate()?;
    let mut leaf_params = CertificateParams::new(vec![san.to_owned()])?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "system:node:test-node");
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params.signed_by(&leaf_key, &ca)?;
    Ok(Pki {
        ca_pem: ca.pem(),
        chain: vec![leaf.der().clone()],
        key: PrivatePkcs8KeyDer::from(leaf_key.serialize_der()).into(),
    })
}

/// What the fake kubelet answers.
#[derive(Clone)]
struct Reply {
    status: StatusCode,
    body: Bytes,
    /// Send without `Content-Length` (chunked), so only the client's running
    /// count can catch an oversized body.
    chunked: bool,
}

impl Reply {
    fn ok(body: &'static [u8]) -> Self {
        Reply {
            status: StatusCode::OK,
            body: Bytes::from_static(body),
            chunked: false,
        }
    }

    fn response(&self) -> Response<BoxBody<Bytes, Infallible>> {
        let body = if self.chunked {
            Chunked(self.body.chunks(512).map(Bytes::copy_from_slice).collect()).boxed()
        } else {
            Full::new(self.body.clone()).boxed()
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }
}

/// A body of known chunks with no declared length.
struct Chunked(VecDeque<Bytes>);

impl Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// What the fake kubelet saw of one request.
#[derive(Debug)]
struct Seen {
    path: String,
    authorization: Option<String>,
    accept: Option<String>,
}

struct FakeKubelet {
    url: Uri,
    seen: mpsc::Receiver<Seen>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl FakeKubelet {
    async fn start(pki: &Pki, reply: Reply) -> Result<Self, Box<dyn StdError>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(pki.chain.clone(), pki.key.clone_key())?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let (seen_tx, seen) = mpsc::channel(16);
        let (shutdown, mut shutdown_rx) = oneshot::channel::<()>();

        let task = tokio::spawn(async move {
            loop {
                let serve_one = async {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    // A client that rejects our certificate ends here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let reply = reply.clone();
                    let seen_tx = seen_tx.clone();
                    let service = service_fn(move |req: Request<Incoming>| {
                        let header = |name| {
                            req.headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned)
                        };
                        // Bounded; a test that does not read just loses
                        // the record.
                        let _ = seen_tx.try_send(Seen {
                            path: req.uri().to_string(),
                            authorization: header(AUTHORIZATION),
                            accept: header(ACCEPT),
                        });
                        let response = reply.response();
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                };
                tokio::select! {
                    _ = &mut shutdown_rx => break,
                    () = serve_one => {}
                }
            }
        });
        Ok(FakeKubelet {
            url: format!("https://{addr}/metrics/resource").parse()?,
            seen,
            shutdown: Some(shutdown),
            task,
        })
    }

    async fn stop(mut self) -> TestResult {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await?;
        Ok(())
    }
}

/// Files the client reads, in a temporary directory.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> std::io::Result<Self> {
        Ok(Files {
            dir: tempfile::tempdir()?,
        })
    }

    fn write(&self, name: &str, contents: &str) -> std::io::Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents)?;
        Ok(path)
    }
}

fn trusting(url: &Uri, ca_file: PathBuf) -> KubeletConfig {
    let mut config = KubeletConfig::new(url.clone());
    config.ca_file = Some(ca_file);
    config.timeout = Duration::from_secs(10);
    config
}

#[tokio::test]
async fn trusted_ca_with_rotating_bearer_token() -> TestResult {
    let pki = make_pki("127.0.0.1")?;
    let mut kubelet = FakeKubelet::start(&pki, Reply::ok(FIXTURE)).await?;
    let files = Files::new()?;
    let token = files.write("token", "token-one\n")?;
    let mut config = trusting(&kubelet.url, files.write("ca.crt", &pki.ca_pem)?);
    config.token_file = Some(token.clone());
    let client = KubeletClient::new(config)?;

    let parsed = client.scrape().await?;
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    assert_eq!(parsed.stats.pods.len(), 5);
    assert!(parsed.stats.node.is_some());
    let seen = kubelet.seen.recv().await.ok_or("server saw no request")?;
    assert_eq!(seen.path, "/metrics/resource");
    assert_eq!(seen.authorization.as_deref(), Some("Bearer token-one"));
    assert_eq!(seen.accept.as_deref(), Some("text/plain;version=0.0.4"));

    // The projected token is replaced on disk; the next request uses it.
    std::fs::write(&token, "token-two")?;
    let body = client.fetch().await?;
    assert_eq!(body.as_ref(), FIXTURE);
    let seen = kubelet.seen.recv().await.ok_or("server saw no request")?;
    assert_eq!(seen.authorization.as_deref(), Some("Bearer token-two"));

    kubelet.stop().await
}

#[tokio::test]
async fn no_token_file_sends_no_authorization() -> TestResult {
    let pki = make_pki("127.0.0.1")?;
    let mut kubelet = FakeKubelet::start(&pki, Reply::ok(FIXTURE)).await?;
    let files = Files::new()?;
    let client = KubeletClient::new(trusting(&kubelet.url, files.write("ca.crt", &pki.ca_pem)?))?;
    client.fetch().await?;
    let seen = kubelet.seen.recv().await.ok_or("server saw no request")?;
    assert_eq!(seen.authorization, None);
    kubelet.stop().await
}

#[tokio::test]
async fn untrusted_ca_is_rejected_clearly() -> TestResult {
    let pki = make_pki("127.0.0.1")?;
    // Another cluster's CA. With a different name the issuer is unknown;
    // with the same name (every kubeadm cluster CA is "kubernetes") the
    // issuer is found but its signature does not verify. Both are a
    // rejected certificate.
    let cases = [
        (
            make_pki_with_ca_name("127.0.0.1", "some other cluster")?,
            rustls::CertificateError::UnknownIssuer,
        ),
        (
            make_pki("127.0.0.1")?,
            rustls::CertificateError::BadSignature,
        ),
    ];
    let kubelet = FakeKubelet::start(&pki, Reply::ok(FIXTURE)).await?;
    let files = Files::new()?;
    for (other, want) in cases {
        let client = KubeletClient::new(trusting(
            &kubelet.url,
            files.write("other-ca.crt", &other.ca_pem)?,
        ))?;
        let err = client
            .fetch()
            .await
            .err()
            .ok_or("untrusted kubelet accepted")?;
        match &err {
            ClientError::CertificateRejected { source, .. } => {
                assert_eq!(*source, rustls::Error::InvalidCertificate(want))
            }
            other => panic!("expected CertificateRejected, got {other:?}"),
        }
        let message = err.to_string();
        assert!(message.contains("rejected"), "{message}");
        assert!(message.contains(&kubelet.url.to_string()), "{message}");
    }
    kubelet.stop().await
}

#[tokio::test]
async fn certificate_for_another_address_is_rejected() -> TestResult {
    // Signed by the CA we trust, but for a different node IP.
    let pki = make_pki("127.0.0.2")?;
    let kubelet = FakeKubelet::start(&pki, Reply::ok(FIXTURE)).await?;
    let files = Files::new()?;
    let client = KubeletClient::new(trusting(&kubelet.url, files.write("ca.crt", &pki.ca_pem)?))?;
    match client.fetch().await {
        Err(ClientError::CertificateRejected {
            source:
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForNameContext { .. }
                    | rustls::CertificateError::NotValidForName,
                ),
            ..
        }) => {}
        other => panic!("expected a name mismatch, got {other:?}"),
    }
    kubelet.stop().await
}

#[tokio::test]
async fn insecure_accepts_any_certificate() -> TestResult {
    // Nothing trusts this certificate, and its name does not match either.
    let pki = make_pki("127.0.0.2")?;
    let kubelet = FakeKubelet::start(&pki, Reply::ok(FIXTURE)).await?;
    let mut config = KubeletConfig::new(kubelet.url.clone());
    config.insecure = true;
    let client = KubeletClient::new(config)?;
    let parsed = client.scrape().await?;
    assert_eq!(parsed.stats.pods.len(), 5);
    kubelet.stop().await
}

#[tokio::test]
async fn unauthorized_is_a_clear_error() -> TestResult {
    let pki = make_pki("127.0.0.1")?;
    let reply = Reply {
        status: StatusCode::UNAUTHORIZED,
        body: Bytes::from_static(b"Unauthorized\n"),
        chunked: false,
    };
    let kubelet = FakeKubelet::start(&pki, reply).await?;
    let files = Files::new()?;
    let mut config = trusting(&kubelet.url, files.write("ca.crt", &pki.ca_pem)?);
    config.token_file = Some(files.write("token", "expired")?);
    let client = KubeletClient::new(config)?;

    let err = client.fetch().await.err().ok_or("401 treated as success")?;
    match &err {
        ClientError::Status { status, body, .. } => {
            assert_eq!(*status, StatusCode::UNAUTHORIZED);
            assert_eq!(body, "Unauthorized");
        }
        other => panic!("expected Status, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("401 Unauthorized"), "{message}");
    kubelet.stop().await
}

#[tokio::test]
async fn forbidden_body_is_quoted() -> TestResult {
    let pki = make_pki("127.0.0.1")?;
    let reply = Reply {
        status: StatusCode::FORBIDDEN,
        body: Bytes::from_static(
            b"Forbidden (user=system:serviceaccount:kube-system:nodepulse, verb=get, resource=nodes, subresource=metrics)",
        ),
        chunked: false,
    };
    let kubelet = FakeKubelet::start(&pki, reply).await?;
    let files = Files::new()?;
    let client = KubeletClient::new(trusting(&kubelet.url, files.write("ca.crt", &pki.ca_pem)?))?;
    let err = client.fetch().await.err().ok_or("403 treated as success")?;
    assert!(err.to_string().contains("subresource=metrics"), "{err}");
    kubelet.stop().await
}

#[tokio::test]
async fn oversized_body_is_rejected() -> TestResult {
    let pki = make_pki("127.0.0.1")?;
    let files = Files::new()?;
    let ca = files.write("ca.crt", &pki.ca_pem)?;
    let big = Bytes::from(vec![b'#'; 64 * 1024]);
    for chunked in [false, true] {
        let reply = Reply {
            status: StatusCode::OK,
            body: big.clone(),
            chunked,
        };
        let kubelet = FakeKubelet::start(&pki, reply).await?;
        let mut config = trusting(&kubelet.url, ca.clone());
        config.max_body_bytes = 16 * 1024;
        let client = KubeletClient::new(config)?;
        match client.fetch().await {
            Err(ClientError::BodyTooLarge { limit, .. }) => assert_eq!(limit, 16 * 1024),
            other => panic!("chunked={chunked}: expected BodyTooLarge, got {other:?}"),
        }

        // The same body fits under a larger limit.
        let mut config = trusting(&kubelet.url, ca.clone());
        config.max_body_bytes = 64 * 1024;
        let client = KubeletClient::new(config)?;
        assert_eq!(client.fetch().await?.len(), 64 * 1024, "chunked={chunked}");
        kubelet.stop().await?;
    }
    Ok(())
}

#[tokio::test]
async fn silent_server_times_out() -> TestResult {
    // Accepts TCP connections and never speaks TLS.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (shutdown, mut shutdown_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            tokio::select! {
                _ = &mut shutdown_rx => break,
                accepted = listener.accept() => {
                    if let Ok((tcp, _)) = accepted {
                        held.push(tcp);
                    }
                }
            }
        }
    });

    let mut config = KubeletConfig::new(format!("https://{addr}/metrics/resource").parse()?);
    config.insecure = true;
    config.timeout = Duration::from_millis(200);
    let client = KubeletClient::new(config)?;
    match client.fetch().await {
        Err(ClientError::Timeout { timeout, .. }) => {
            assert_eq!(timeout, Duration::from_millis(200))
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    let _ = shutdown.send(());
    task.await?;
    Ok(())
}

#[tokio::test]
async fn refused_connection_is_a_connect_error() -> TestResult {
    // Bind then drop, so the port is very likely closed.
    let addr = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let mut config = KubeletConfig::new(format!("https://{addr}/metrics/resource").parse()?);
    config.insecure = true;
    let client = KubeletClient::new(config)?;
    match client.fetch().await {
        Err(ClientError::Connect { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused)
        }
        other => panic!("expected Connect, got {other:?}"),
    }
    Ok(())
}
