//! The kubelet client against an in-process HTTPS server on 127.0.0.1 that
//! plays the kubelet (support/kubelet.rs): a fixture body, and whatever status
//! the test asks for.
mod support;

use std::{error::Error as StdError, path::PathBuf, time::Duration};

use agent::kubelet::{ClientError, KubeletClient, KubeletConfig};
use bytes::Bytes;
use http::{StatusCode, Uri};
use support::kubelet::{FakeKubelet, Reply, make_pki, make_pki_with_ca_name};
use tokio::{net::TcpListener, sync::oneshot};

type TestResult = Result<(), Box<dyn StdError>>;

const FIXTURE: &[u8] = include_bytes!("../../kubelet/tests/fixtures/kubelet/resource_v1_31.txt");

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
    let again = kubelet.seen.recv().await.ok_or("server saw no request")?;
    assert_eq!(again.authorization.as_deref(), Some("Bearer token-two"));
    assert_eq!(again.connection, seen.connection, "the connection is kept");

    kubelet.stop().await
}

/// A kubelet read less often than the request timeout (the aggregator's
/// 15 s against 10 s) keeps its connection: the timeout bounds a read, not
/// the idle time between reads.
#[tokio::test]
async fn the_connection_outlives_the_timeout_between_reads() -> TestResult {
    let pki = make_pki("127.0.0.1")?;
    let mut kubelet = FakeKubelet::start(&pki, Reply::ok(FIXTURE)).await?;
    let files = Files::new()?;
    let mut config = trusting(&kubelet.url, files.write("ca.crt", &pki.ca_pem)?);
    config.timeout = Duration::from_millis(300);
    let client = KubeletClient::new(config)?;
    client.fetch().await?;
    let first = kubelet.seen.recv().await.ok_or("server saw no request")?;
    // Idle for longer than the timeout: the very case under test.
    tokio::time::sleep(Duration::from_millis(900)).await;
    client.fetch().await?;
    let second = kubelet.seen.recv().await.ok_or("server saw no request")?;
    assert_eq!(
        second.connection, first.connection,
        "the kept connection was closed while idle"
    );
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

/// As metrics-server's `--kubelet-client-certificate`/`--kubelet-client-key`.
#[tokio::test]
async fn a_client_certificate_is_presented() -> TestResult {
    let pki = make_pki("127.0.0.1")?;
    let mut kubelet =
        FakeKubelet::start_requiring_client_certificates(&pki, Reply::ok(FIXTURE)).await?;
    let files = Files::new()?;
    let ca = files.write("ca.crt", &pki.ca_pem)?;
    let mut config = trusting(&kubelet.url, ca.clone());
    config.client_certificate = Some((
        files.write("client.crt", &pki.client_pem.0)?,
        files.write("client.key", &pki.client_pem.1)?,
    ));
    let body = KubeletClient::new(config)?.fetch().await?;
    assert_eq!(body.as_ref(), FIXTURE);
    let seen = kubelet.seen.recv().await.ok_or("server saw no request")?;
    assert!(seen.client_certificate);
    assert_eq!(seen.authorization, None);

    // Without one, the kubelet refuses the handshake.
    let error = KubeletClient::new(trusting(&kubelet.url, ca))?
        .fetch()
        .await
        .expect_err("no client certificate");
    assert!(
        matches!(
            error,
            ClientError::Tls { .. } | ClientError::Connect { .. } | ClientError::Http { .. }
        ),
        "{error:?}"
    );
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
        Err(ClientError::Connect { kind, .. }) => {
            assert_eq!(kind, std::io::ErrorKind::ConnectionRefused)
        }
        other => panic!("expected Connect, got {other:?}"),
    }
    Ok(())
}
