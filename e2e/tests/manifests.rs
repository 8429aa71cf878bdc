//! The deploy manifests against the real kube-apiserver (v1.37):
//! `kubectl apply --dry-run=server -f deploy/components.yaml` and
//! `helm template … | kubectl apply --dry-run=server -f -` are accepted —
//! admission, defaulting and strict server-side field validation included —
//! `helm lint --strict` passes, and the dry runs create nothing.
//!
//! Some objects exist already (the harness registers nodepulse: APIServices,
//! Service, RBAC): a server-side dry run of an apply over them is an update.
//!
//! Needs root, BTF, cgroup v2 and iproute2; skips with a message elsewhere
//! (fails instead under NODEPULSE_REQUIRE_PRIVILEGED=1, as in CI).

use std::{collections::BTreeSet, process::Command, time::Instant};

use e2e::{Cluster, Options};

/// Not a test: the body of burner processes the harness spawns (testkit).
#[test]
#[ignore = "entry point of burner child processes"]
fn burner_entry() {
    testkit::burner_main();
}

/// `kind/name` of every object `kubectl apply --dry-run=server` reported,
/// checking each line says `(server dry run)`.
fn dry_run_objects(out: &str) -> BTreeSet<String> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            assert!(l.ends_with("(server dry run)"), "not a dry run: {l}");
            l.split_whitespace().next().unwrap_or_default().to_string()
        })
        .collect()
}

/// `kind/name` of the objects in a multi-document YAML stream (top-level
/// `kind:` and the first `name:` under `metadata:`), lower-cased and grouped
/// as kubectl prints them (`deployment.apps/nodepulse`).
fn objects_in(yaml: &str) -> BTreeSet<String> {
    let group = |kind: &str| -> &'static str {
        match kind {
            "ClusterRole" | "ClusterRoleBinding" | "RoleBinding" | "Role" => {
                ".rbac.authorization.k8s.io"
            }
            "APIService" => ".apiregistration.k8s.io",
            "Deployment" | "DaemonSet" => ".apps",
            "PodDisruptionBudget" => ".policy",
            _ => "",
        }
    };
    let mut out = BTreeSet::new();
    for doc in yaml.split("\n---") {
        let mut kind = None;
        let mut name = None;
        let mut in_metadata = false;
        for line in doc.lines() {
            if let Some(k) = line.strip_prefix("kind:") {
                kind = Some(k.trim().to_string());
            }
            if line.starts_with("metadata:") {
                in_metadata = true;
                continue;
            }
            if in_metadata && !line.starts_with(' ') && !line.trim().is_empty() {
                in_metadata = false;
            }
            if in_metadata
                && name.is_none()
                && let Some(n) = line.strip_prefix("  name:")
            {
                name = Some(n.trim().trim_matches('"').to_string());
            }
        }
        if let (Some(kind), Some(name)) = (kind, name) {
            out.insert(format!("{}{}/{name}", kind.to_lowercase(), group(&kind)));
        }
    }
    out
}

#[test]
fn deploy_manifests_pass_server_side_dry_run_and_helm_lint() {
    let Some(h) = e2e::privileged("manifests") else {
        return;
    };
    let t0 = Instant::now();
    let c = Cluster::start(h, Options::new("manifests")).expect("cluster starts");
    let root = e2e::binaries::workspace_root();
    let components = root.join("deploy/components.yaml");
    let chart = root.join("deploy/helm/nodepulse");
    let helm = c.upstream_bin().join("helm");
    assert!(helm.is_file(), "no helm in {}", c.upstream_bin().display());

    // --- components.yaml -----------------------------------------------------------
    let path = components.to_string_lossy().into_owned();
    let out = c
        .kubectl_ok(&["apply", "--dry-run=server", "-f", &path])
        .expect("kubectl apply --dry-run=server -f deploy/components.yaml");
    eprintln!("$ kubectl apply --dry-run=server -f deploy/components.yaml\n{out}");
    let applied = dry_run_objects(&out);
    let declared = objects_in(&std::fs::read_to_string(&components).expect("components.yaml"));
    assert_eq!(applied, declared, "every object of components.yaml, once");
    assert!(applied.len() >= 14, "{applied:?}");

    // --- the Helm chart -------------------------------------------------------------
    let run = |args: &[&str]| {
        let out = Command::new(&helm)
            .args(args)
            .env("HOME", c.work_dir())
            .output()
            .expect("running helm");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "helm {}: {}\n{stdout}{stderr}",
            args.join(" "),
            out.status
        );
        stdout
    };
    let chart_path = chart.to_string_lossy().into_owned();
    let lint = run(&["lint", "--strict", &chart_path]);
    eprintln!(
        "$ helm lint --strict deploy/helm/nodepulse\n{}",
        lint.trim_end()
    );
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    let rendered = run(&["template", "nodepulse", &chart_path, "-n", "kube-system"]);
    let out = c
        .kubectl_stdin(
            &["apply", "--dry-run=server", "-f", "-"],
            rendered.as_bytes(),
        )
        .expect("kubectl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "helm template | kubectl apply --dry-run=server: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "$ helm template nodepulse deploy/helm/nodepulse -n kube-system | kubectl apply --dry-run=server -f -\n{stdout}"
    );
    let chart_applied = dry_run_objects(&stdout);
    assert_eq!(chart_applied, objects_in(&rendered));
    assert_eq!(
        chart_applied, applied,
        "the chart (default values) and components.yaml name the same objects"
    );

    // The chart's other values (those that need no CRD of another project):
    // Helm-made ingest TLS, sizing, host network, spread, pod security
    // contexts, ServiceAccounts of other names with annotations.
    let values = [
        "ingest.tls.create=helm",
        "aggregator.sizing.nodes=1000",
        "aggregator.hostNetwork=true",
        "aggregator.topologySpreadConstraints[0].maxSkew=1",
        "aggregator.topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
        "aggregator.topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
        "aggregator.podSecurityContext.fsGroup=65534",
        "agent.podSecurityContext.fsGroup=0",
        "serviceAccount.aggregatorName=np-aggregator",
        "serviceAccount.agentName=np-agent",
        "serviceAccount.annotations.example\\.com/role=metrics",
    ]
    .join(",");
    let rendered = run(&[
        "template",
        "nodepulse",
        &chart_path,
        "-n",
        "kube-system",
        "--set",
        &values,
    ]);
    let out = c
        .kubectl_stdin(
            &["apply", "--dry-run=server", "-f", "-"],
            rendered.as_bytes(),
        )
        .expect("kubectl");
    assert!(
        out.status.success(),
        "helm template --set {values} | kubectl apply --dry-run=server: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let with_values = dry_run_objects(&String::from_utf8_lossy(&out.stdout));
    for object in [
        "secret/nodepulse-ingest-tls",
        "configmap/nodepulse-ingest-ca",
        "serviceaccount/np-agent",
    ] {
        assert!(with_values.contains(object), "{object} in {with_values:?}");
    }

    // --- a dry run creates nothing ------------------------------------------------
    for (kind, name) in [
        ("deployment", "nodepulse"),
        ("daemonset", "nodepulse-agent"),
        ("poddisruptionbudget", "nodepulse"),
        ("service", "nodepulse-ingest"),
    ] {
        let out = c
            .kubectl(&["-n", "kube-system", "get", kind, name])
            .expect("kubectl");
        assert!(
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NotFound"),
            "{kind}/{name} exists after a dry run"
        );
    }
    // The harness's own registration is untouched (still its EndpointSlice's Service).
    let svc = c
        .kubectl_json(&["-n", "kube-system", "get", "service", "nodepulse"])
        .expect("service");
    assert!(svc["spec"]["selector"].is_null(), "{svc}");
    eprintln!(
        "components.yaml and the chart: {} objects accepted by kube-apiserver's dry run, \
         helm lint clean, nothing created; {:.1?}",
        applied.len(),
        t0.elapsed()
    );
}
