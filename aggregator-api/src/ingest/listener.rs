//! The ingest port's connections, before gRPC sees them: admitted by
//! [`crate::connections`] (a limit in all, per peer, and for those still in
//! their handshake, the oldest of which make room for newcomers), TLS
//! handshaken here under a timeout, and required to send the HTTP/2 preface
//! within a bounded time — a connection that says nothing never reaches the
//! gRPC server, whose HTTP/2 layer would wait for it forever.
//!
//! The certificate comes from a [`ServingCert`] that reloads its files when
//! they change (cert-manager renews before expiry; tonic's own TLS would
//! serve the first pair until a restart, and every agent would fail once it
//! expired). Each connection is set up in its own task: a client that stalls
//! never holds up the accept loop or the others.
use std::{
    io,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use rustls::server::WebPkiClientVerifier;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::{
    connections::{self, Connections, Ticket},
    server::accept,
    tls::{self, ServingCert},
};

/// Time a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Time a client has, after its handshake, to send the HTTP/2 preface.
pub const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Handshaken connections waiting for the gRPC server to take them.
const QUEUE: usize = 64;

/// Limits and timeouts of the ingest port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub connections: connections::Limits,
    pub handshake_timeout: Duration,
    pub preface_timeout: Duration,
}

impl Default for Settings {
    /// Room for 10,000 agents, each streaming to every replica over one
    /// connection, and their reconnecting all at once after a restart.
    fn default() -> Self {
        Self {
            connections: connections::Limits {
                max: 20_000,
                per_peer: 64,
                pending: 4_096,
            },
            handshake_timeout: HANDSHAKE_TIMEOUT,
            preface_timeout: PREFACE_TIMEOUT,
        }
    }
}

/// The ingest TLS config: the certificate and key from these files,
/// reloaded when they change; HTTP/2 only (gRPC); no client certificates
/// (agents authenticate with tokens).
pub fn server_config(
    cert: &Path,
    key: &Path,
    policy: &tls::TlsPolicy,
) -> tls::Result<Arc<rustls::ServerConfig>> {
    let certs = Arc::new(ServingCert::from_files(cert, key)?);
    let mut config = tls::server_config(certs, WebPkiClientVerifier::no_client_auth(), policy)?;
    Arc::make_mut(&mut config).alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A connection as the gRPC server gets it: plaintext (development only) or
/// TLS, with the preface already read replayed first, holding its place in
/// the listener's [`Connections`] until dropped.
pub struct Admitted {
    io: Io,
    /// The preface, handed to the gRPC server before anything else.
    replay: &'static [u8],
    info: TcpConnectInfo,
    _ticket: Ticket,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connected for Admitted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.replay.is_empty() {
            let n = self.replay.len().min(buf.remaining());
            buf.put_slice(&self.replay[..n]);
            self.replay = &self.replay[n..];
            return Poll::Ready(Ok(()));
        }
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connections on `listener` until `cancel`, for
/// `tonic::transport::Server::serve_with_incoming_shutdown`: TLS with
/// `tls`, plaintext without (development only).
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    connections: Connections,
    settings: Settings,
    cancel: CancellationToken,
) -> ReceiverStream<io::Result<Admitted>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let acceptor = tls.map(TlsAcceptor::from);
    tokio::spawn(async move {
        let mut accept_errors: u64 = 0;
        loop {
            let (stream, peer) = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = tx.closed() => return,
                accepted = accept(&listener, &mut accept_errors) => accepted,
            };
            // Refused: closed at once (dropped), before any work for it.
            let Ok(ticket) = connections.admit(peer.ip()) else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Some(admitted) = set_up(stream, peer, acceptor, ticket, settings).await {
                    let _ = tx.send(Ok(admitted)).await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The handshake and the preface, each under its timeout, unless the
/// connection is evicted first to make room.
async fn set_up(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    mut ticket: Ticket,
    settings: Settings,
) -> Option<Admitted> {
    let info = TcpConnectInfo {
        local_addr: stream.local_addr().ok(),
        remote_addr: Some(peer),
    };
    let evicted = ticket.evicted();
    let work = async {
        let mut io = match acceptor {
            None => Io::Plain(stream),
            Some(acceptor) => {
                match tokio::time::timeout(settings.handshake_timeout, acceptor.accept(stream))
                    .await
                {
                    Ok(Ok(tls)) => Io::Tls(Box::new(tls)),
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "ingest TLS handshake failed");
                        return None;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "ingest TLS handshake timed out");
                        return None;
                    }
                }
            }
        };
        let mut preface = [0u8; PREFACE.len()];
        let read = match &mut io {
            Io::Plain(s) => {
                tokio::time::timeout(settings.preface_timeout, s.read_exact(&mut preface)).await
            }
            Io::Tls(s) => {
                tokio::time::timeout(settings.preface_timeout, s.read_exact(&mut preface)).await
            }
        };
        match read {
            Ok(Ok(_)) if &preface == PREFACE => Some(io),
            Ok(Ok(_)) => {
                tracing::debug!(%peer, "ingest connection is not HTTP/2");
                None
            }
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "ingest connection closed before the HTTP/2 preface");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "no HTTP/2 preface in time");
                None
            }
        }
    };
    let io = tokio::select! {
        io = work => io,
        () = evicted => {
            tracing::debug!(%peer, "ingest connection closed in its handshake to make room");
            return None;
        }
    };
    let Some(io) = io else {
        ticket.handshake_failed();
        return None;
    };
    ticket.established();
    Some(Admitted {
        io,
        replay: PREFACE,
        info,
        _ticket: ticket,
    })
}
