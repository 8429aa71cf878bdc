//! The aggregator follows kube-system/extension-apiserver-authentication as
//! kube-apiserver serves it: a front proxy whose name the ConfigMap does not
//! allow is refused (401); once the name is added to
//! `requestheader-allowed-names` with `kubectl patch`, the running replica
//! accepts it — through its list and watch of the ConfigMap (narrowed by
//! `fieldSelector=metadata.name=…`, which the
//! `extension-apiserver-authentication-reader` Role must allow).
//!
//! Needs root, BTF, cgroup v2 and iproute2; skips with a message elsewhere
//! (fails instead under NODEPULSE_REQUIRE_PRIVILEGED=1, as in CI).

mod common;

use std::time::Duration;

use e2e::curl::Curl;
use e2e::pki::Usage;
use e2e::{AGGREGATOR_PORT, Options, replica_ip};
use serde_json::{Value, json};

/// Not a test: the body of burner processes the harness spawns (testkit).
#[test]
#[ignore = "entry point of burner child processes"]
fn burner_entry() {
    testkit::burner_main();
}

const LATE_PROXY: &str = "e2e-late-front-proxy";

#[test]
fn a_configmap_change_reaches_the_running_aggregator() {
    let Some(h) = e2e::privileged("auth_reload") else {
        return;
    };
    let opts = Options {
        replicas: 1,
        ..Options::new("authreload")
    };
    let mut c = e2e::Cluster::start(h, opts).expect("cluster starts");
    let Some(_ours) = c.ours_or_skip("auth_reload", "the ConfigMap reload") else {
        return;
    };
    c.start_aggregators().expect("aggregator starts");
    c.wait_apiservices_available(Duration::from_secs(90))
        .expect("APIServices Available");

    // A front-proxy certificate (signed by the CA the ConfigMap names) whose
    // CN is not yet an allowed name, asserting a system:masters user.
    let pki = c.pki();
    let proxy = pki
        .front_proxy_ca
        .issue(&pki.dir, "late-proxy", LATE_PROXY, None, &[], Usage::Client)
        .expect("front-proxy client certificate");
    let curl = Curl::with_files(&pki.nodepulse_ca.cert, Some((&proxy.cert, &proxy.key)));
    let url = format!(
        "https://{}:{AGGREGATOR_PORT}/apis/metrics.k8s.io/v1beta1",
        replica_ip(0)
    );
    let headers = [
        "X-Remote-User: e2e-proxied",
        "X-Remote-Group: system:masters",
    ];
    let (code, body) = curl.get_with(&c, &url, &headers).expect("curl");
    assert_eq!(code, 401, "a name not allowed is refused: {body}");

    // Add the name as an administrator would.
    let map = c
        .kubectl_json(&[
            "get",
            "configmap",
            "-n",
            "kube-system",
            "extension-apiserver-authentication",
        ])
        .expect("the ConfigMap");
    let mut names: Vec<String> = map["data"]["requestheader-allowed-names"]
        .as_str()
        .and_then(|s| serde_json::from_str(s).ok())
        .expect("requestheader-allowed-names is a JSON list");
    assert!(!names.iter().any(|n| n == LATE_PROXY));
    names.push(LATE_PROXY.to_owned());
    let patch =
        json!({ "data": { "requestheader-allowed-names": Value::from(names).to_string() } });
    c.kubectl_ok(&[
        "patch",
        "configmap",
        "-n",
        "kube-system",
        "extension-apiserver-authentication",
        "--type=merge",
        "-p",
        &patch.to_string(),
    ])
    .expect("patch the ConfigMap");

    // The running replica accepts the proxy once it has seen the change.
    let body = c
        .wait_for(
            "the aggregator accepts the newly allowed front proxy",
            Duration::from_secs(60),
            |c| {
                let (code, body) = curl.get_with(c, &url, &headers)?;
                Ok((code == 200).then_some(body))
            },
        )
        .expect("the change is applied");
    let list: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(list["kind"], "APIResourceList");
}
