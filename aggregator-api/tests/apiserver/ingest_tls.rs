//! The ingest port's TLS: agents stream over it, and a renewed certificate
//! (cert-manager or a Secret update rewriting the files) is served to new
//! connections without a restart.
use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use aggregator_api::{
    ingest::{IngestService, Unauthenticated, listener},
    store::Store,
};
use export::{self, Outgoing, Targets};
use proto::v1::{NodeMetadata, NodeReport, Usage};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::support::{Ca, Client, Identity};

/// Writes the pair as a Secret volume update does: new files renamed over
/// the old ones.
fn install(dir: &Path, id: &Identity) {
    for (name, pem) in [("tls.crt", &id.cert_pem), ("tls.key", &id.key_pem)] {
        let tmp = dir.join(format!(".{name}.new"));
        std::fs::write(&tmp, pem).expect("write");
        std::fs::rename(&tmp, dir.join(name)).expect("rename");
    }
}

/// An exporter for `node` streaming one report (with metadata) to `addr`,
/// trusting `ca_file`.
fn agent(
    node: &str,
    addr: SocketAddr,
    ca_file: &Path,
    cancel: &CancellationToken,
) -> (JoinHandle<()>, watch::Sender<Option<Arc<Outgoing>>>) {
    let report = NodeReport {
        node: node.into(),
        sample_unix_nanos: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos() as i64,
        node_usage: Some(Usage::default()),
        cpu_source: 1,
        agent_epoch: 1,
        metadata_continues: false,
        ..NodeReport::default()
    };
    let (tx, rx) = watch::channel(Some(Arc::new(Outgoing {
        report,
        metadata: Arc::new(NodeMetadata::default()),
        metadata_version: 1,
    })));
    let config = export::Config {
        targets: Targets::Static(vec![format!("https://{addr}")]),
        ca_file: Some(ca_file.to_owned()),
        tls_server_name: Some("localhost".into()),
        ..export::Config::default()
    };
    (tokio::spawn(export::run(config, rx, cancel.clone())), tx)
}

/// Waits (bounded) until the store knows `node`.
async fn known(store: &Store, node: &str) {
    let mut changes = store.subscribe();
    let wait = async {
        while !store.node_names().iter().any(|n| n == node) {
            changes.changed().await.expect("store alive");
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("{node} never reported over TLS"));
}

/// The leaf certificate the ingest port presents to a new connection, and
/// the protocol it negotiated.
async fn presented(addr: SocketAddr, client: &Client) -> (CertificateDer<'static>, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let tls = TlsConnector::from(client.tls_config())
        .connect(name, tcp)
        .await
        .expect("handshake with a certificate the CA signed");
    let (_, session) = tls.get_ref();
    let leaf = session.peer_certificates().expect("certificates")[0].clone();
    (leaf, session.alpn_protocol().unwrap_or_default().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_stream_over_tls_and_a_renewed_certificate_is_served_without_restart() {
    let ca = Ca::new("ingest CA");
    let dir = tempfile::tempdir().expect("tempdir");
    let first = ca.server();
    install(dir.path(), &first);
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, ca.pem()).expect("ca");

    let config = listener::server_config(
        &dir.path().join("tls.crt"),
        &dir.path().join("tls.key"),
        &Default::default(),
    )
    .expect("ingest TLS config");
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let store = Arc::new(Store::default());
    let stop = CancellationToken::new();
    let service = IngestService::new(
        Arc::clone(&store),
        Arc::new(Unauthenticated),
        stop.clone(),
        16 << 20,
    )
    .into_server();
    let incoming = listener::incoming(
        tcp,
        Some(config),
        aggregator_api::connections::Connections::new(
            "ingest",
            listener::Settings::default().connections,
        ),
        listener::Settings::default(),
        stop.clone(),
    );
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned()),
    );

    let agents = CancellationToken::new();
    let (one, _keep_one) = agent("node-1", addr, &ca_file, &agents);
    known(&store, "node-1").await;
    let client = Client::new(addr, &ca.pem(), None, true);
    let der = |id: &Identity| CertificateDer::from_pem_slice(id.cert_pem.as_bytes()).expect("pem");
    let (leaf, alpn) = presented(addr, &client).await;
    assert_eq!(leaf, der(&first));
    assert_eq!(alpn, b"h2", "gRPC needs HTTP/2");

    // Renewed: the files change under the running server.
    let second = ca.server();
    install(dir.path(), &second);
    let renewed = async {
        loop {
            let (leaf, _) = presented(addr, &client).await;
            if leaf == der(&second) {
                return;
            }
            assert_eq!(leaf, der(&first), "only the old or the new certificate");
            // The files are checked at most once a second, at a handshake.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), renewed)
        .await
        .expect("the renewed certificate is served to new connections");
    // A new agent connects with it.
    let (two, _keep_two) = agent("node-2", addr, &ca_file, &agents);
    known(&store, "node-2").await;

    agents.cancel();
    let _ = one.await;
    let _ = two.await;
    stop.cancel();
    server.await.expect("joins").expect("serves until shutdown");
}
