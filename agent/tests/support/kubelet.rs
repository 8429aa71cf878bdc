//! An in-process HTTPS server on 127.0.0.1 that plays the kubelet: a cluster
//! CA and a serving certificate made with rcgen, and whatever answer the test
//! gives it (fixed, or made when each request comes).
//!
//! The listener is bound before the server task starts, so no test waits for
//! readiness; every server stops through its shutdown channel.
#![allow(dead_code)] // each test file uses its own part

use std::{
    collections::VecDeque,
    convert::Infallible,
    error::Error as StdError,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

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

/// A cluster CA, a kubelet serving certificate it signed, and a client
/// certificate it signed (PEM, with its key).
pub struct Pki {
    pub ca_pem: String,
    pub ca: CertificateDer<'static>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub client_pem: (String, String),
}

/// `san` is the serving certificate's only subject alternative name, as the
/// kubelet's `serverTLSBootstrap` certificates carry the node's IP.
pub fn make_pki(san: &str) -> Result<Pki, rcgen::Error> {
    make_pki_with_ca_name(san, "nodepulse test cluster CA")
}

pub fn make_pki_with_ca_name(san: &str, ca_name: &str) -> Result<Pki, rcgen::Error> {
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
    let client_key = KeyPair::generate()?;
    let mut client_params = CertificateParams::new(Vec::<String>::new())?;
    client_params
        .distinguished_name
        .push(DnType::CommonName, "nodepulse-aggregator");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = client_params.signed_by(&client_key, &ca)?;
    Ok(Pki {
        ca_pem: ca.pem(),
        ca: ca.der().clone(),
        chain: vec![leaf.der().clone()],
        key: PrivatePkcs8KeyDer::from(leaf_key.serialize_der()).into(),
        client_pem: (client.pem(), client_key.serialize_pem()),
    })
}

/// What the fake kubelet answers.
#[derive(Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
    /// Send without `Content-Length` (chunked), so only the client's running
    /// count can catch an oversized body.
    pub chunked: bool,
}

impl Reply {
    pub fn ok(body: &'static [u8]) -> Self {
        Reply {
            status: StatusCode::OK,
            body: Bytes::from_static(body),
            chunked: false,
        }
    }

    pub fn response(&self) -> Response<BoxBody<Bytes, Infallible>> {
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
pub struct Seen {
    pub path: String,
    pub authorization: Option<String>,
    pub accept: Option<String>,
    /// Which connection it came on: 1 for the first accepted, and so on.
    pub connection: usize,
    /// The client presented a certificate (the server verified it).
    pub client_certificate: bool,
}

pub struct FakeKubelet {
    pub url: Uri,
    pub seen: mpsc::Receiver<Seen>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl FakeKubelet {
    pub async fn start(pki: &Pki, reply: Reply) -> Result<Self, Box<dyn StdError>> {
        Self::start_with(pki, Arc::new(move || reply.clone())).await
    }

    /// A kubelet whose every answer is made by `reply` when the request comes.
    pub async fn start_with(
        pki: &Pki,
        reply: Arc<dyn Fn() -> Reply + Send + Sync>,
    ) -> Result<Self, Box<dyn StdError>> {
        Self::serve(pki, reply, false).await
    }

    /// A kubelet that takes only connections with a client certificate
    /// signed by the cluster CA.
    pub async fn start_requiring_client_certificates(
        pki: &Pki,
        reply: Reply,
    ) -> Result<Self, Box<dyn StdError>> {
        Self::serve(pki, Arc::new(move || reply.clone()), true).await
    }

    async fn serve(
        pki: &Pki,
        reply: Arc<dyn Fn() -> Reply + Send + Sync>,
        client_certificates: bool,
    ) -> Result<Self, Box<dyn StdError>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?;
        let builder = if client_certificates {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(pki.ca.clone())?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut tls = builder.with_single_cert(pki.chain.clone(), pki.key.clone_key())?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let (seen_tx, seen) = mpsc::channel(16);
        let (shutdown, mut shutdown_rx) = oneshot::channel::<()>();

        let task = tokio::spawn(async move {
            let mut connections = 0;
            loop {
                let serve_one = async {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    connections += 1;
                    let connection = connections;
                    // A client that rejects our certificate ends here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let client_certificate = tls.get_ref().1.peer_certificates().is_some();
                    let reply = Arc::clone(&reply);
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
                            connection,
                            client_certificate,
                        });
                        let response = reply().response();
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

    pub async fn stop(mut self) -> Result<(), Box<dyn StdError>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await?;
        Ok(())
    }
}
