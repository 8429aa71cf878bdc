//! The ingest port's TLS: connections accepted and handshaken here, then
//! handed to the gRPC server, so the certificate comes from a
//! [`ServingCert`] that reloads its files when they change (cert-manager
//! renews before expiry; tonic's own TLS would serve the first pair until a
//! restart, and every agent would fail once it expired).
//!
//! Each handshake runs in its own task under a timeout: a client that stalls
//! mid-handshake never holds up the accept loop or the others.
use std::{io, path::Path, sync::Arc, time::Duration};

use rustls::server::WebPkiClientVerifier;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::{
    server::accept,
    tls::{self, ServingCert},
};

/// Time a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the gRPC server to take them.
const QUEUE: usize = 64;

/// The ingest TLS config: the certificate and key from these files,
/// reloaded when they change; HTTP/2 only (gRPC); no client certificates
/// (agents authenticate with tokens).
pub fn server_config(cert: &Path, key: &Path) -> tls::Result<Arc<rustls::ServerConfig>> {
    let certs = Arc::new(ServingCert::from_files(cert, key)?);
    let mut config = tls::server_config(certs, WebPkiClientVerifier::no_client_auth())?;
    Arc::make_mut(&mut config).alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// TLS connections on `listener` until `cancel`, for
/// `tonic::transport::Server::serve_with_incoming_shutdown`.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    handshake_timeout: Duration,
    cancel: CancellationToken,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        let mut accept_errors: u64 = 0;
        loop {
            let stream = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = tx.closed() => return,
                (stream, _) = accept(&listener, &mut accept_errors) => stream,
            };
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%error, "ingest TLS handshake failed"),
                    Err(_) => tracing::debug!("ingest TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
