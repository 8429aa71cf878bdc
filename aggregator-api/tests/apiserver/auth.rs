//! Delegated authentication and authorization through real TLS connections
//! with certificates from a PKI generated here (contract §3.4, §3.5).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use aggregator_api::auth::User;
use aggregator_api::auth::review::{AccessVerdict, ResourceAttributes, TokenVerdict};
use http::StatusCode;
use rcgen::ExtendedKeyUsagePurpose;
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;

use super::support::{Client, FakeAccess, FakeTokens, Options, TestServer, status_message};

const PODS: &str = "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods";

fn unauthorized() -> serde_json::Value {
    json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401})
}

#[tokio::test]
async fn front_proxy_headers_become_the_user() {
    let server = TestServer::start(Options::default()).await;
    let proxy = server.pki.front_proxy_ca.client("front-proxy-client", &[]);
    for http2 in [false, true] {
        let client = server.client_with(&proxy, http2);
        let reply = client
            .get_with(
                PODS,
                &[
                    ("x-remote-user", "system:serviceaccount:kube-system:hpa"),
                    ("x-remote-uid", "uid-1"),
                    ("x-remote-group", "system:serviceaccounts"),
                    ("x-remote-group", "system:serviceaccounts:kube-system"),
                    (
                        "x-remote-extra-authentication.kubernetes.io%2fpod-name",
                        "hpa-0",
                    ),
                    ("x-remote-extra-Scopes", "a"),
                    ("x-remote-extra-scopes", "b"),
                ],
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let spec = server.access.last().expect("reviewed");
        assert_eq!(spec.user, "system:serviceaccount:kube-system:hpa");
        assert_eq!(spec.uid, "uid-1");
        assert_eq!(
            spec.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:kube-system",
                "system:authenticated"
            ]
        );
        assert_eq!(
            spec.extra,
            BTreeMap::from([
                (
                    "authentication.kubernetes.io/pod-name".to_owned(),
                    vec!["hpa-0".to_owned()]
                ),
                ("scopes".to_owned(), vec!["a".to_owned(), "b".to_owned()]),
            ])
        );
        assert_eq!(
            spec.resource_attributes,
            Some(ResourceAttributes {
                namespace: "default".to_owned(),
                verb: "list".to_owned(),
                group: "metrics.k8s.io".to_owned(),
                version: "v1beta1".to_owned(),
                resource: "pods".to_owned(),
                ..ResourceAttributes::default()
            })
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn aggregator_probe_as_masters_needs_no_review() {
    let server = TestServer::start(Options::default()).await;
    let proxy = server.pki.front_proxy_ca.client("front-proxy-client", &[]);
    let reply = server
        .client_with(&proxy, false)
        .get_with(
            "/apis/metrics.k8s.io/v1",
            &[
                ("x-remote-user", "system:kube-aggregator"),
                ("x-remote-group", "system:masters"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(server.access.calls(), 0);
    server.stop().await;
}

#[tokio::test]
async fn disallowed_common_name_is_401_without_fall_through() {
    let server = TestServer::start(Options::default()).await;
    let imposter = server.pki.front_proxy_ca.client("not-the-proxy", &[]);
    let reply = server
        .client_with(&imposter, false)
        .get_with(
            PODS,
            &[
                ("x-remote-user", "admin"),
                ("x-remote-group", "system:masters"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json(), unauthorized());
    assert_eq!(server.access.calls(), 0, "never reached authorization");
    server.stop().await;
}

#[tokio::test]
async fn untrusted_chain_is_401() {
    let server = TestServer::start(Options::default()).await;
    for cn in ["front-proxy-client", "jane"] {
        let rogue = server.pki.rogue_ca.client(cn, &["system:masters"]);
        let reply = server
            .client_with(&rogue, false)
            .get_with(PODS, &[("x-remote-user", "admin")])
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{cn}");
        assert_eq!(reply.json(), unauthorized());
    }
    // A front-proxy certificate without a user header is no user, and it is
    // not a valid client certificate either.
    let proxy = server.pki.front_proxy_ca.client("front-proxy-client", &[]);
    let reply = server.client_with(&proxy, false).get(PODS).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    // A server-only certificate from the right CA fails the clientAuth EKU.
    let wrong_usage = server.pki.front_proxy_ca.client_with_eku(
        "front-proxy-client",
        &[],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let reply = server
        .client_with(&wrong_usage, false)
        .get_with(PODS, &[("x-remote-user", "admin")])
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(server.access.calls(), 0);
    server.stop().await;
}

#[tokio::test]
async fn client_certificates_name_user_and_groups() {
    let server = TestServer::start(Options::default()).await;
    let jane = server.pki.client_ca.client("jane", &["dev", "ops"]);
    let reply = server
        .client_with(&jane, true)
        .get_with(PODS, &[("x-remote-user", "admin")])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let spec = server.access.last().expect("reviewed");
    assert_eq!(
        spec.user, "jane",
        "headers are ignored without the proxy CA"
    );
    assert_eq!(spec.groups, ["dev", "ops", "system:authenticated"]);

    let admin = server
        .pki
        .client_ca
        .client("kubernetes-admin", &["system:masters"]);
    let calls = server.access.calls();
    let reply = server.client_with(&admin, false).get(PODS).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(server.access.calls(), calls, "system:masters skips review");
    server.stop().await;
}

#[tokio::test]
async fn bearer_tokens_are_reviewed_and_cached() {
    let tokens = FakeTokens {
        tokens: HashMap::from([(
            "good".to_owned(),
            TokenVerdict::Authenticated(User {
                name: "system:serviceaccount:monitoring:prometheus".to_owned(),
                uid: "u-2".to_owned(),
                groups: vec!["system:serviceaccounts".to_owned()],
                extra: BTreeMap::new(),
            }),
        )]),
        ..FakeTokens::default()
    };
    let server = TestServer::start(Options {
        tokens,
        ..Options::default()
    })
    .await;
    let client = server.client();
    for _ in 0..3 {
        let reply = client
            .get_with("/metrics", &[("authorization", "Bearer good")])
            .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(
        server
            .tokens
            .calls
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    let spec = server.access.last().expect("reviewed");
    assert_eq!(spec.user, "system:serviceaccount:monitoring:prometheus");
    assert_eq!(
        spec.groups,
        ["system:serviceaccounts", "system:authenticated"]
    );
    assert_eq!(
        spec.non_resource_attributes.map(|n| (n.path, n.verb)),
        Some(("/metrics".to_owned(), "get".to_owned()))
    );

    for _ in 0..2 {
        let reply = client
            .get_with(PODS, &[("authorization", "Bearer bad")])
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        server
            .tokens
            .calls
            .load(std::sync::atomic::Ordering::SeqCst),
        2,
        "rejections are cached too"
    );
    server.stop().await;
}

#[tokio::test]
async fn anonymous_is_reviewed_as_anonymous() {
    let server = TestServer::start(Options {
        access: FakeAccess::new(|_| {
            Ok(AccessVerdict {
                allowed: false,
                reason: String::new(),
            })
        }),
        ..Options::default()
    })
    .await;
    let reply = server.client().get("/apis").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(
        reply.json(),
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"forbidden: User \"system:anonymous\" cannot get path \"/apis\"","reason":"Forbidden","details":{},"code":403})
    );
    let spec = server.access.last().expect("reviewed");
    assert_eq!(spec.user, "system:anonymous");
    assert_eq!(spec.groups, ["system:unauthenticated"]);

    // Health probes are never reviewed, whoever asks.
    let calls = server.access.calls();
    for path in ["/healthz", "/livez", "/readyz"] {
        assert_eq!(
            server.client().get(path).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
    assert_eq!(server.access.calls(), calls);
    // Unknown paths are authorized first: a stranger gets 403, not 404.
    assert_eq!(
        server.client().get("/nope").await.status,
        StatusCode::FORBIDDEN
    );
    server.stop().await;
}

#[tokio::test]
async fn denial_is_403_with_the_reviewers_reason_and_cached() {
    let server = TestServer::start(Options {
        access: FakeAccess::new(|spec| {
            Ok(AccessVerdict {
                allowed: spec.user == "alice",
                reason: "RBAC: clusterrole \"view\" not found".to_owned(),
            })
        }),
        ..Options::default()
    })
    .await;
    let proxy = server.pki.front_proxy_ca.client("front-proxy-client", &[]);
    let client = server.client_with(&proxy, false);
    let as_user = |user: &'static str| [("x-remote-user", user)];
    let cases = [
        (
            PODS.to_owned(),
            "pods.metrics.k8s.io is forbidden: User \"bob\" cannot list resource \"pods\" in API group \"metrics.k8s.io\" in the namespace \"default\": RBAC: clusterrole \"view\" not found",
        ),
        (
            "/apis/metrics.k8s.io/v1/nodes/n1".to_owned(),
            "nodes.metrics.k8s.io \"n1\" is forbidden: User \"bob\" cannot get resource \"nodes\" in API group \"metrics.k8s.io\" at the cluster scope: RBAC: clusterrole \"view\" not found",
        ),
        (
            "/apis/metrics.k8s.io/v1/nodes?watch=true".to_owned(),
            "nodes.metrics.k8s.io is forbidden: User \"bob\" cannot watch resource \"nodes\" in API group \"metrics.k8s.io\" at the cluster scope: RBAC: clusterrole \"view\" not found",
        ),
    ];
    for (path, message) in &cases {
        let reply = client.get_with(path, &as_user("bob")).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(reply.json()["reason"], "Forbidden");
        assert_eq!(status_message(&reply), *message);
    }
    let calls = server.access.calls();
    for (path, _) in &cases {
        let reply = client.get_with(path, &as_user("bob")).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
    }
    assert_eq!(server.access.calls(), calls, "denials come from the cache");

    for _ in 0..3 {
        let reply = client.get_with(PODS, &as_user("alice")).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(
        server.access.calls(),
        calls + 1,
        "one review, then the cache"
    );
    server.stop().await;
}

#[tokio::test]
async fn review_failure_is_500() {
    let server = TestServer::start(Options {
        access: FakeAccess::new(|_| Err("connection refused".to_owned())),
        ..Options::default()
    })
    .await;
    let reply = server.client().get(PODS).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.json()["reason"], "InternalError");
    assert!(status_message(&reply).contains("connection refused"));
    // Failures are not cached.
    server.client().get(PODS).await;
    assert_eq!(server.access.calls(), 2);
    server.stop().await;
}

#[tokio::test]
async fn auth_config_swaps_at_runtime() {
    let server = TestServer::start(Options::default()).await;
    let proxy = server.pki.front_proxy_ca.client("front-proxy-client", &[]);
    let headers = [("x-remote-user", "u")];
    assert_eq!(
        server
            .client_with(&proxy, false)
            .get_with(PODS, &headers)
            .await
            .status,
        StatusCode::OK
    );
    // The front-proxy CA rotates: old proxy certificates stop working, new ones work.
    let new_ca = super::support::Ca::new("front-proxy-ca-2");
    let mut config = server.pki.auth_config();
    if let Some(rh) = config.request_header.as_mut() {
        rh.ca = new_ca.bundle();
    }
    server.auth.store(config);
    assert_eq!(
        server
            .client_with(&proxy, false)
            .get_with(PODS, &headers)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let new_proxy = new_ca.client("front-proxy-client", &[]);
    assert_eq!(
        server
            .client_with(&new_proxy, false)
            .get_with(PODS, &headers)
            .await
            .status,
        StatusCode::OK
    );
    server.stop().await;
}

/// A client certificate resolver that records the acceptable issuers the
/// server names and presents a fixed certificate.
#[derive(Debug)]
struct Recording {
    key: Arc<CertifiedKey>,
    hints: Mutex<Vec<Vec<u8>>>,
}

impl ResolvesClientCert for Recording {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        *self.hints.lock().expect("lock") = root_hint_subjects.iter().map(|s| s.to_vec()).collect();
        Some(self.key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn tls_names_both_cas_as_acceptable_issuers() {
    let server = TestServer::start(Options::default()).await;
    let proxy = server.pki.front_proxy_ca.client("front-proxy-client", &[]);
    let chain = CertificateDer::pem_slice_iter(proxy.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key = PrivateKeyDer::from_pem_slice(proxy.key_pem.as_bytes()).expect("key");
    let provider = rustls::crypto::ring::default_provider();
    let recording = Arc::new(Recording {
        key: Arc::new(CertifiedKey::from_der(chain, key, &provider).expect("key")),
        hints: Mutex::new(Vec::new()),
    });
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(server.pki.server_ca.pem().as_bytes()) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_cert_resolver(recording.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let client = Client::from_config(server.addr, config);
    let reply = client.get_with(PODS, &[("x-remote-user", "u")]).await;
    assert_eq!(reply.status, StatusCode::OK);

    let hints = recording.hints.lock().expect("lock").clone();
    let expected: Vec<Vec<u8>> = server
        .pki
        .auth_config()
        .acceptable_issuers()
        .iter()
        .map(|d| d.as_ref().to_vec())
        .collect();
    assert_eq!(expected.len(), 2);
    assert_eq!(hints, expected);
    server.stop().await;
}
