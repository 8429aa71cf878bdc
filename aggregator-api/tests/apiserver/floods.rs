//! Connections that never become requests: raw sockets that send nothing,
//! TLS connections that dribble a header and stall, one address opening
//! hundreds. The server's timeouts are set far beyond the test's deadline
//! here, so only admission (per-peer limits, the oldest pending connection
//! making room) can let an honest client through in time.
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use aggregator_api::{connections, server::ServerLimits};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpSocket, TcpStream},
};

use crate::support::{Options, TestServer};

/// A connection to `to` from the loopback address 127.0.0.`from`.
pub async fn connect_from(from: u8, to: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket
        .bind(SocketAddr::new(IpAddr::from([127, 0, 0, from]), 0))
        .ok()?;
    socket.connect(to).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_stalling_connections_do_not_lock_out_probes() {
    let limits = ServerLimits {
        connections: connections::Limits {
            max: 200,
            per_peer: 20,
            pending: 16,
        },
        handshake_timeout: Duration::from_secs(600),
        first_request_timeout: Duration::from_secs(600),
        header_read_timeout: Duration::from_secs(600),
        ..ServerLimits::default()
    };
    let server = TestServer::start(Options {
        customize: Box::new(move |b| b.limits(limits)),
        ..Options::default()
    })
    .await;
    let addr = server.addr;
    let mut held = Vec::new();
    // 25 addresses × 30 raw sockets that never say anything.
    for from in 2..27u8 {
        for _ in 0..30 {
            if let Some(s) = connect_from(from, addr).await {
                held.push(s);
            }
        }
    }
    // Header dribblers: a TLS session, then half a request line, then
    // nothing. Established connections are never evicted, so these fill
    // their address's share and the last five are refused per peer
    // whatever the timing of evictions above.
    let client = server.client();
    let tls = client.tls_config();
    for _ in 0..25 {
        let Some(tcp) = connect_from(30, addr).await else {
            continue;
        };
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        if let Ok(mut s) = tokio_rustls::TlsConnector::from(Arc::clone(&tls))
            .connect(name, tcp)
            .await
        {
            let _ = s.write_all(b"GET /livez HT").await;
            held.push(s.into_inner().0);
        }
    }
    // An honest probe from 127.0.0.1, now and again after more attackers.
    for round in 0..3 {
        let reply = tokio::time::timeout(Duration::from_secs(10), client.get("/livez"))
            .await
            .unwrap_or_else(|_| panic!("round {round}: /livez did not answer in 10 s"));
        assert_eq!(reply.status, 200, "round {round}");
        for _ in 0..50 {
            if let Some(s) = connect_from(40 + round, addr).await {
                held.push(s);
            }
        }
    }
    let text = server.app.metrics_text();
    let figure = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{text}"))
    };
    assert!(
        figure("nodepulse_metrics_connections_total{result=\"evicted_pending\"}") > 0,
        "{text}"
    );
    assert!(
        figure("nodepulse_metrics_connections_total{result=\"refused_per_peer\"}") >= 5,
        "{text}"
    );
    assert!(figure("nodepulse_metrics_connections{state=\"open\"}") <= 200 + 16);
    drop(held);
    server.stop().await;
}
