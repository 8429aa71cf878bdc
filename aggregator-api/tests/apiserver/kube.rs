//! The kube-apiserver client, the real TokenReview/SubjectAccessReview
//! implementations, the ConfigMap reloader and the whole `app::run_on`
//! wiring, against a fake kube-apiserver served over HTTPS in-process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aggregator_api::auth::User;
use aggregator_api::auth::config::AuthConfigHandle;
use aggregator_api::auth::configmap::AuthConfigReloader;
use aggregator_api::auth::review::{
    AccessReviewer, KubeAccessReviewer, KubeTokenReviewer, ResourceAttributes,
    SubjectAccessReviewSpec, TokenReviewer, TokenVerdict,
};
use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::support::{
    Ca, Identity, Pki, TestView, configmap_data, default_flags, kube_client, serve_https,
};

const CONFIGMAP_PATH: &str =
    "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication";

/// State of the fake kube-apiserver.
struct Fake {
    configmap: Mutex<BTreeMap<String, String>>,
    requests: AtomicUsize,
    bodies: Mutex<Vec<Value>>,
}

async fn answer(fake: Arc<Fake>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    fake.requests.fetch_add(1, Ordering::SeqCst);
    let authorized = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some("Bearer sa-token");
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let respond = |status: StatusCode, value: Value| {
        let mut r = Response::new(Full::new(Bytes::from(value.to_string())));
        *r.status_mut() = status;
        r
    };
    if !authorized {
        return respond(
            StatusCode::UNAUTHORIZED,
            json!({"kind":"Status","status":"Failure","code":401,"reason":"Unauthorized","message":"Unauthorized"}),
        );
    }
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    fake.bodies.lock().expect("lock").push(parsed.clone());
    match (method, path.as_str()) {
        (Method::POST, "/apis/authentication.k8s.io/v1/tokenreviews") => {
            if parsed["spec"]["token"] == "good" {
                respond(
                    StatusCode::CREATED,
                    json!({"kind":"TokenReview","status":{"authenticated":true,"user":{"username":"carol","uid":"c-1","groups":["devs"],"extra":{"scopes":["x"]}}}}),
                )
            } else {
                respond(
                    StatusCode::CREATED,
                    json!({"kind":"TokenReview","status":{"authenticated":false,"error":"token expired"}}),
                )
            }
        }
        (Method::POST, "/apis/authorization.k8s.io/v1/subjectaccessreviews") => {
            let user = parsed["spec"]["user"].as_str().unwrap_or("");
            let allowed = user == "alice" || user == "carol";
            respond(
                StatusCode::CREATED,
                json!({"kind":"SubjectAccessReview","status":{"allowed":allowed,"reason":if allowed {""} else {"denied by fake"}}}),
            )
        }
        (Method::GET, p) if p == CONFIGMAP_PATH => respond(
            StatusCode::OK,
            json!({"kind":"ConfigMap","metadata":{"name":"extension-apiserver-authentication"},"data":*fake.configmap.lock().expect("lock")}),
        ),
        _ => respond(
            StatusCode::NOT_FOUND,
            json!({"kind":"Status","status":"Failure","code":404,"reason":"NotFound","message":format!("{path} not found")}),
        ),
    }
}

struct FakeApiserver {
    addr: SocketAddr,
    ca: Ca,
    fake: Arc<Fake>,
    stop: Option<oneshot::Sender<()>>,
}

impl FakeApiserver {
    async fn start(pki: &Pki) -> FakeApiserver {
        let fake = Arc::new(Fake {
            configmap: Mutex::new(configmap_data(pki)),
            requests: AtomicUsize::new(0),
            bodies: Mutex::new(Vec::new()),
        });
        let served = fake.clone();
        let (addr, ca, stop) = serve_https(move |request| answer(served.clone(), request)).await;
        FakeApiserver {
            addr,
            ca,
            fake,
            stop: Some(stop),
        }
    }

    /// A client with `token`, trusting `ca` (PEM).
    async fn client_with(&self, token: &str, ca: &str) -> (kube::Client, tempfile::TempDir) {
        kube_client(self.addr, ca, token).await
    }

    async fn client(&self) -> (kube::Client, tempfile::TempDir) {
        self.client_with("sa-token", &self.ca.pem()).await
    }
}

impl Drop for FakeApiserver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[tokio::test]
async fn token_reviews_go_to_the_apiserver() {
    let pki = Pki::new();
    let apiserver = FakeApiserver::start(&pki).await;
    let (client, _files) = apiserver.client().await;
    let reviewer = KubeTokenReviewer::new(client);
    assert_eq!(
        reviewer.review("good").await.expect("review"),
        TokenVerdict::Authenticated(User {
            name: "carol".to_owned(),
            uid: "c-1".to_owned(),
            groups: vec!["devs".to_owned()],
            extra: BTreeMap::from([("scopes".to_owned(), vec!["x".to_owned()])]),
        })
    );
    assert_eq!(
        reviewer.review("stale").await.expect("review"),
        TokenVerdict::Rejected("token expired".to_owned())
    );
    let mut sent = apiserver.fake.bodies.lock().expect("lock")[0].clone();
    if sent["metadata"] == json!({}) {
        sent.as_object_mut().expect("object").remove("metadata");
    }
    assert_eq!(
        sent,
        json!({"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":"good"}})
    );
}

#[tokio::test]
async fn access_reviews_go_to_the_apiserver() {
    let pki = Pki::new();
    let apiserver = FakeApiserver::start(&pki).await;
    let (client, _files) = apiserver.client().await;
    let reviewer = KubeAccessReviewer::new(client);
    let mut spec = SubjectAccessReviewSpec {
        resource_attributes: Some(ResourceAttributes {
            verb: "list".to_owned(),
            group: "metrics.k8s.io".to_owned(),
            version: "v1".to_owned(),
            resource: "nodes".to_owned(),
            ..ResourceAttributes::default()
        }),
        user: "alice".to_owned(),
        groups: vec!["system:authenticated".to_owned()],
        ..SubjectAccessReviewSpec::default()
    };
    assert!(reviewer.review(&spec).await.expect("review").allowed);
    spec.user = "bob".to_owned();
    let verdict = reviewer.review(&spec).await.expect("review");
    assert!(!verdict.allowed);
    assert_eq!(verdict.reason, "denied by fake");
    let sent = apiserver.fake.bodies.lock().expect("lock")[0].clone();
    assert_eq!(sent["kind"], "SubjectAccessReview");
    assert_eq!(sent["spec"]["resourceAttributes"]["resource"], "nodes");
    assert_eq!(sent["spec"]["groups"], json!(["system:authenticated"]));
}

#[tokio::test]
async fn client_errors_carry_the_status_message() {
    let pki = Pki::new();
    let apiserver = FakeApiserver::start(&pki).await;
    let (unauthenticated, _files) = apiserver.client_with("wrong", &apiserver.ca.pem()).await;
    let get = |client: kube::Client, path: &str| {
        let request = Request::get(path).body(Vec::new()).expect("request");
        async move { client.request::<Value>(request).await }
    };
    let err = get(unauthenticated, CONFIGMAP_PATH).await.expect_err("401");
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 401);
            assert_eq!(status.message, "Unauthorized");
        }
        other => panic!("unexpected {other}"),
    }
    let (client, _files) = apiserver.client().await;
    let err = get(client, "/nope").await.expect_err("404");
    assert!(err.to_string().contains("/nope not found"), "{err}");

    // A server certificate from another CA is refused.
    let (wrong_ca, _files) = apiserver
        .client_with("sa-token", &Ca::new("other").pem())
        .await;
    let err = get(wrong_ca, CONFIGMAP_PATH).await.expect_err("untrusted");
    assert!(!matches!(err, kube::Error::Api(_)), "{err}");
    let chain = format!("{err:?}");
    assert!(chain.contains("UnknownIssuer"), "{chain}");
}

#[tokio::test]
async fn configmap_reloads_into_the_handle() {
    let pki = Pki::new();
    let apiserver = FakeApiserver::start(&pki).await;
    let handle = AuthConfigHandle::new();
    let (client, _files) = apiserver.client().await;
    let reloader = AuthConfigReloader::new(Some(client), default_flags(), handle.clone());
    assert!(
        reloader.reload().await.expect("loads"),
        "first load changes"
    );
    let config = handle.current().expect("loaded");
    assert!(config.client_ca.is_some());
    let rh = config.request_header.as_ref().expect("request header");
    assert_eq!(rh.allowed_names, ["front-proxy-client"]);
    assert_eq!(rh.uid_headers, ["x-remote-uid"]);
    assert!(!reloader.reload().await.expect("loads"), "unchanged");

    apiserver.fake.configmap.lock().expect("lock").insert(
        "requestheader-allowed-names".to_owned(),
        r#"["front-proxy-client","aggregator"]"#.to_owned(),
    );
    assert!(reloader.reload().await.expect("loads"), "changed");
    assert_eq!(
        handle
            .current()
            .and_then(|c| c.request_header.clone())
            .map(|rh| rh.allowed_names),
        Some(vec![
            "front-proxy-client".to_owned(),
            "aggregator".to_owned()
        ])
    );

    apiserver
        .fake
        .configmap
        .lock()
        .expect("lock")
        .insert("client-ca-file".to_owned(), "garbage".to_owned());
    let err = reloader.reload().await.expect_err("bad CA");
    assert!(err.to_string().contains("client-ca-file"), "{err}");
    assert!(
        handle.current().is_some_and(|c| c.client_ca.is_some()),
        "the last good config stays"
    );
}

#[tokio::test]
async fn kubeconfig_files_drive_the_client() {
    let pki = Pki::new();
    let apiserver = FakeApiserver::start(&pki).await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("token"), "sa-token").expect("token");
    reads_the_configmap_with(&apiserver, dir.path(), "    tokenFile: token\n").await;
}

/// A kubeconfig whose user is an exec credential plugin, as cloud providers'
/// kubeconfigs are: the one constructor both binaries use runs the plugin
/// and sends the token it prints.
#[tokio::test]
async fn exec_credential_plugins_provide_the_token() {
    use std::os::unix::fs::PermissionsExt as _;

    let pki = Pki::new();
    let apiserver = FakeApiserver::start(&pki).await;
    let dir = tempfile::tempdir().expect("dir");
    let plugin = dir.path().join("credential-plugin");
    std::fs::write(
        &plugin,
        "#!/bin/sh\nprintf '%s' '{\"apiVersion\": \"client.authentication.k8s.io/v1\", \"kind\": \"ExecCredential\", \"status\": {\"token\": \"sa-token\"}}'\n",
    )
    .expect("plugin");
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let user = format!(
        "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      interactiveMode: Never\n",
        plugin.display()
    );
    reads_the_configmap_with(&apiserver, dir.path(), &user).await;
}

/// Writes a kubeconfig in `dir` for `apiserver` with `user` (YAML lines
/// under `user:`; relative paths are relative to `dir`), builds the client
/// from it as both binaries do, and reads the ConfigMap through it.
async fn reads_the_configmap_with(apiserver: &FakeApiserver, dir: &std::path::Path, user: &str) {
    std::fs::write(dir.join("ca.crt"), apiserver.ca.pem()).expect("ca");
    let kubeconfig = dir.join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\ncontexts:\n- name: test\n  context: {{cluster: c, user: u}}\nclusters:\n- name: c\n  cluster:\n    server: https://{}\n    certificate-authority: ca.crt\nusers:\n- name: u\n  user:\n{user}",
            apiserver.addr
        ),
    )
    .expect("kubeconfig");
    let client = ::support::kube::client(Some(&kubeconfig))
        .await
        .expect("client");
    let request = Request::get(CONFIGMAP_PATH)
        .body(Vec::new())
        .expect("request");
    let map: Value = client.request(request).await.expect("configmap");
    assert_eq!(map["kind"], "ConfigMap");
}

/// The whole wiring: kubeconfig → fake apiserver; ConfigMap → auth config;
/// TokenReview and SubjectAccessReview over the network; TLS from files.
#[tokio::test]
async fn run_on_serves_with_delegated_auth() {
    use aggregator_api::config::Args;

    let pki = Pki::new();
    let apiserver = FakeApiserver::start(&pki).await;
    let dir = tempfile::tempdir().expect("dir");
    let write = |name: &str, contents: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).expect("write");
        path
    };
    let ca = write("ca.crt", &apiserver.ca.pem());
    write("token", "sa-token");
    let kubeconfig = write(
        "kubeconfig",
        &format!(
            "current-context: t\ncontexts: [{{name: t, context: {{cluster: c, user: u}}}}]\nclusters: [{{name: c, cluster: {{server: \"https://{}\", certificate-authority: {}}}}}]\nusers: [{{name: u, user: {{tokenFile: token}}}}]\n",
            apiserver.addr,
            ca.display()
        ),
    );
    let cert = write("tls.crt", &pki.server.cert_pem);
    let key = write("tls.key", &pki.server.key_pem);
    let args = Args::try_parse_from([
        "nodepulse-aggregator".to_owned(),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--tls-cert-file={}", cert.display()),
        format!("--tls-private-key-file={}", key.display()),
    ])
    .expect("args");
    let config = args.into_config().expect("config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(aggregator_api::app::run_on(
        listener,
        config,
        Arc::new(TestView::sample()),
        |b| b,
        async {
            let _ = stopped.await;
        },
    ));

    let anonymous = super::support::Client::new(addr, &pki.server_ca.pem(), None, false);
    let ready = anonymous.get("/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (StatusCode::OK, "ok"));

    let proxy: Identity = pki.front_proxy_ca.client("front-proxy-client", &[]);
    let via_proxy = super::support::Client::new(addr, &pki.server_ca.pem(), Some(&proxy), true);
    let path = "/apis/metrics.k8s.io/v1/namespaces/default/pods";
    let allowed = via_proxy
        .get_with(path, &[("x-remote-user", "alice")])
        .await;
    assert_eq!(allowed.status, StatusCode::OK, "{}", allowed.body);
    let denied = via_proxy.get_with(path, &[("x-remote-user", "bob")]).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert!(denied.body.contains("denied by fake"), "{}", denied.body);

    let with_token = anonymous
        .get_with(path, &[("authorization", "Bearer good")])
        .await;
    assert_eq!(with_token.status, StatusCode::OK, "{}", with_token.body);
    let bad_token = anonymous
        .get_with(path, &[("authorization", "Bearer stale")])
        .await;
    assert_eq!(bad_token.status, StatusCode::UNAUTHORIZED);

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("stops")
        .expect("task")
        .expect("ran");
}
