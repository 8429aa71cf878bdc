//! The real upstream `kubectl explain` on metrics.k8s.io through the real
//! kube-apiserver: kube-aggregator downloads nodepulse's `/openapi/v3`
//! discovery (and `/openapi/v2`), lists both group versions in its own
//! `/openapi/v3`, proxies each version's document by its `?hash=` URL, and
//! kubectl renders the types from it — for v1 (the preferred version) and
//! v1beta1, and from the merged v2 document too.
//!
//! Needs root, BTF, cgroup v2 and iproute2; skips with a message elsewhere
//! (fails instead under NODEPULSE_REQUIRE_PRIVILEGED=1, as in CI).

mod common;

use std::time::Duration;

use common::raw;
use e2e::{Cluster, Options, USER_NO_RBAC};

/// Not a test: the body of burner processes the harness spawns (testkit).
#[test]
#[ignore = "entry point of burner child processes"]
fn burner_entry() {
    testkit::burner_main();
}

const VERSIONS: [&str; 2] = ["v1beta1", "v1"];

/// kube-aggregator fetches an APIService's OpenAPI a second after it is
/// added or changes (becomes Available), and every minute after a failure.
const OPENAPI_TIMEOUT: Duration = Duration::from_secs(150);

/// `kubectl explain <args>` with its whitespace collapsed (kubectl wraps
/// descriptions at 76 columns).
fn explain(c: &Cluster, args: &[&str]) -> String {
    let mut all = vec!["explain"];
    all.extend(args);
    let out = c
        .kubectl_ok(&all)
        .unwrap_or_else(|e| panic!("kubectl {}: {e:#}", all.join(" ")));
    eprintln!("$ kubectl {}\n{}", all.join(" "), out.trim_end());
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn assert_says(out: &str, what: &[&str], context: &str) {
    for text in what {
        assert!(out.contains(text), "{context}: {text:?} not in:\n{out}");
    }
}

#[test]
fn kubectl_explain_describes_the_metrics_types() {
    let Some(h) = e2e::privileged("explain") else {
        return;
    };
    let opts = Options {
        replicas: 1,
        ..Options::new("explain")
    };
    let mut c = Cluster::start(h, opts).expect("cluster starts");
    let Some(_ours) = c.ours_or_skip("explain", "kubectl explain") else {
        return;
    };
    c.start_aggregators().expect("aggregator starts");
    c.wait_apiservices_available(Duration::from_secs(90))
        .expect("APIServices Available");

    // kube-apiserver's own /openapi/v3 lists both versions with the URL
    // nodepulse gave, and serves our document at it.
    let discovery = c
        .wait_for(
            "kube-apiserver's /openapi/v3 lists metrics.k8s.io",
            OPENAPI_TIMEOUT,
            |c| {
                let doc = raw(c, "/openapi/v3")?;
                let listed = VERSIONS
                    .iter()
                    .all(|v| doc["paths"][format!("apis/metrics.k8s.io/{v}")].is_object());
                Ok(listed.then_some(doc))
            },
        )
        .expect("metrics.k8s.io in /openapi/v3");
    for v in VERSIONS {
        let url = discovery["paths"][format!("apis/metrics.k8s.io/{v}")]["serverRelativeURL"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            url.starts_with(&format!("/openapi/v3/apis/metrics.k8s.io/{v}?hash=")),
            "{v}: {url}"
        );
        let doc = raw(&c, &url).expect("the group version's document");
        let model = format!("io.k8s.metrics.pkg.apis.metrics.{v}.PodMetrics");
        assert_eq!(
            doc["components"]["schemas"][&model]["x-kubernetes-group-version-kind"][0]["kind"],
            "PodMetrics",
            "{v}"
        );
    }

    // The preferred version (v1) by default.
    let out = explain(&c, &["podmetrics"]);
    assert_says(
        &out,
        &[
            "GROUP: metrics.k8s.io",
            "KIND: PodMetrics",
            "VERSION: v1",
            "PodMetrics sets resource usage metrics of a pod.",
            "containers <[]ContainerMetrics> -required-",
            "Metrics for all containers are collected within the same time window.",
            "metadata <ObjectMeta>",
            "window <string> -required-",
        ],
        "explain podmetrics",
    );

    for v in VERSIONS {
        let api_version = format!("--api-version=metrics.k8s.io/{v}");
        let context = format!("explain nodemetrics.usage {api_version}");
        let out = explain(&c, &["nodemetrics.usage", &api_version]);
        assert_says(
            &out,
            &[
                "KIND: NodeMetrics",
                &format!("VERSION: {v}"),
                "FIELD: usage <map[string]Quantity>",
                "The memory usage is the memory working set.",
            ],
            &context,
        );

        let context = format!("explain podmetrics.containers {api_version}");
        let out = explain(&c, &["podmetrics.containers", &api_version]);
        assert_says(
            &out,
            &[
                "KIND: PodMetrics",
                &format!("VERSION: {v}"),
                "FIELD: containers <[]ContainerMetrics>",
                "ContainerMetrics sets resource usage metrics of a container.",
                "Container name corresponding to the one from pod.spec.containers.",
            ],
            &context,
        );

        // The apimachinery definitions are there to follow into.
        let context = format!("explain nodemetrics.metadata {api_version}");
        let out = explain(&c, &["nodemetrics.metadata.labels", &api_version]);
        assert_says(
            &out,
            &[
                "FIELD: labels <map[string]string>",
                "Map of string keys and values",
            ],
            &context,
        );
    }

    // A user without RBAC on metrics.k8s.io may read the documents too (the
    // aggregator SubjectAccessReviews the non-resource path, which RBAC's
    // system:discovery grants to every authenticated user).
    let out = c
        .kubectl_as(USER_NO_RBAC, &["explain", "podmetrics.containers"])
        .expect("kubectl explain as a user without RBAC");
    let text = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        out.status.success(),
        "explain as {USER_NO_RBAC}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Container name corresponding to the one from pod.spec.containers."),
        "{text}"
    );

    // The v2 document, merged into kube-apiserver's /openapi/v2, serves the
    // older explain too.
    let out = c
        .wait_for(
            "explain from kube-apiserver's /openapi/v2",
            OPENAPI_TIMEOUT,
            |c| {
                let out = c.kubectl(&[
                    "explain",
                    "nodemetrics",
                    "--api-version=metrics.k8s.io/v1beta1",
                    "--output=plaintext-openapiv2",
                ])?;
                Ok(out
                    .status
                    .success()
                    .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
            },
        )
        .expect("explain --output=plaintext-openapiv2");
    let out = out.split_whitespace().collect::<Vec<_>>().join(" ");
    assert_says(
        &out,
        &[
            "KIND: NodeMetrics",
            "NodeMetrics sets resource usage metrics of a node.",
            "usage",
            "The memory usage is the memory working set.",
        ],
        "explain --output=plaintext-openapiv2",
    );
}
