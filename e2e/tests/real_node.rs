//! nodepulse as users run it: `deploy/components.yaml` applied unchanged to a
//! real control plane with a real node — the pinned kubelet, containerd,
//! runc, the CNI bridge, kube-proxy and CoreDNS — running the images built
//! here (`images` crate, as `cargo xtask image` builds them), with the
//! ingest TLS made by deploy/README.md's own openssl recipe.
//!
//! One cluster for the whole file (it is the slowest suite): the phases run
//! in order inside one test, each named in its failure message.
//!
//! Needs root, BTF, cgroup v2 and iproute2; skips with a message elsewhere
//! (fails instead under NODEPULSE_REQUIRE_PRIVILEGED=1, as in CI).

mod common;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use e2e::Cluster;
use images::catalog;
use serde_json::Value;

const NODE: &str = "node-a";
const NS: &str = "kube-system";

/// Not a test: the body of burner processes (unused here, but every e2e
/// binary carries the entry point the harness may start).
#[test]
#[ignore = "entry point of burner child processes"]
fn burner_entry() {
    testkit::burner_main();
}

#[test]
fn nodepulse_on_a_real_node() {
    let Some(h) = e2e::privileged("real_node") else {
        return;
    };
    let t0 = Instant::now();
    let mut c = Cluster::start(h, e2e::Options::real_nodes("real-node")).expect("control plane");
    eprintln!("real_node: control plane up after {:?}", t0.elapsed());
    c.add_real_node(NODE).expect("a real node, Ready");
    eprintln!("real_node: node Ready after {:?}", t0.elapsed());

    install(&mut c).expect("install as deploy/README.md says");
    eprintln!("real_node: nodepulse serving after {:?}", t0.elapsed());
}

/// deploy/README.md's steps: the ingest TLS by its openssl recipe, then
/// `kubectl apply -f deploy/components.yaml` (the images it names are the
/// ones built here); then everything Running, Ready, Available.
fn install(c: &mut Cluster) -> Result<()> {
    let root = e2e::binaries::workspace_root();
    let manifest = root.join("deploy/components.yaml");
    let text = std::fs::read_to_string(&manifest)?;
    for spec in [catalog::AGENT, catalog::AGGREGATOR] {
        let want = c.image_reference(&spec)?;
        if !text.contains(&format!("image: {want}\n")) {
            bail!("deploy/components.yaml does not name {want}, the image built here");
        }
    }
    run_readme_recipe(c, &root.join("deploy/README.md"), "### With openssl")?;
    c.kubectl_ok(&["apply", "-f", &manifest.display().to_string()])
        .context("kubectl apply -f deploy/components.yaml")?;

    c.wait_for(
        "the agent DaemonSet rolled out",
        Duration::from_secs(180),
        |c| {
            let ds = c.kubectl_json(&["-n", NS, "get", "daemonset", "nodepulse-agent"])?;
            let s = &ds["status"];
            let want = s["desiredNumberScheduled"].as_u64().unwrap_or(0);
            Ok(
                (want == 1 && s["numberReady"] == want && s["updatedNumberScheduled"] == want)
                    .then_some(()),
            )
        },
    )?;
    c.wait_for(
        "the aggregator Deployment ready",
        Duration::from_secs(180),
        |c| {
            let d = c.kubectl_json(&["-n", NS, "get", "deployment", "nodepulse"])?;
            let s = &d["status"];
            Ok((s["readyReplicas"] == 2 && s["updatedReplicas"] == 2).then_some(()))
        },
    )?;
    c.wait_for(
        "both APIServices Available",
        Duration::from_secs(120),
        |c| {
            let mut ok = true;
            for v in ["v1beta1", "v1"] {
                let a = c.kubectl_json(&["get", "apiservice", &format!("{v}.metrics.k8s.io")])?;
                ok &= conditions(&a).contains(&("Available".into(), "True".into()));
            }
            Ok(ok.then_some(()))
        },
    )?;
    Ok(())
}

fn conditions(obj: &Value) -> Vec<(String, String)> {
    obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["type"].as_str().unwrap_or_default().to_string(),
                c["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Runs the first ```sh block after `heading` in `doc` with bash, inside the
/// test's network namespace, with the pinned kubectl first on PATH and the
/// admin kubeconfig: the documented commands themselves, not a copy.
fn run_readme_recipe(c: &Cluster, doc: &Path, heading: &str) -> Result<()> {
    let text = std::fs::read_to_string(doc)?;
    let after = text
        .split_once(heading)
        .with_context(|| format!("{}: no {heading:?}", doc.display()))?
        .1;
    let script = after
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .with_context(|| format!("{}: no sh block after {heading:?}", doc.display()))?
        .0;
    let scratch = c.work_dir().join("recipe");
    std::fs::create_dir_all(&scratch)?;
    let mut path = c.upstream_bin().as_os_str().to_owned();
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    let mut cmd: Command = c.command_in_netns("bash");
    cmd.arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(script)
        .env("PATH", path)
        .env("KUBECONFIG", c.admin_kubeconfig())
        .env("HOME", &scratch)
        .env("TMPDIR", &scratch);
    let out = e2e::process::run(cmd, None, Duration::from_secs(120))?;
    if !out.status.success() {
        bail!(
            "the recipe under {heading:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
