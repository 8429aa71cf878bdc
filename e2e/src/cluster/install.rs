//! nodepulse installed on real nodes the way deploy/README.md tells a user
//! to: the ingest TLS by its own openssl recipe (the documented commands run
//! as they stand), then `kubectl apply -f deploy/components.yaml`, unchanged.

use images::catalog;

use super::*;

/// What deploy/ names the installed objects.
const DAEMONSET: &str = "nodepulse-agent";
const DEPLOYMENT: &str = "nodepulse";

impl Cluster {
    /// Installs nodepulse from `deploy/` as its README says and waits until
    /// the agent runs on every node, both aggregator replicas are ready and
    /// both APIServices Available. The manifest names the images
    /// [`Cluster::add_real_node`] imported; that is checked, not patched.
    pub fn install_deploy(&mut self) -> Result<()> {
        let root = binaries::workspace_root();
        let manifest = root.join("deploy/components.yaml");
        let text = fs::read_to_string(&manifest)
            .with_context(|| format!("reading {}", manifest.display()))?;
        for spec in [catalog::AGENT, catalog::AGGREGATOR] {
            let want = self.image_reference(&spec)?;
            ensure!(
                text.contains(&format!("image: {want}\n")),
                "deploy/components.yaml does not name {want}, the image built here"
            );
        }
        self.run_doc_recipe(&root.join("deploy/README.md"), "### With openssl")
            .context("the ingest TLS, by deploy/README.md's recipe")?;
        self.kubectl_ok(&["apply", "-f", &manifest.display().to_string()])
            .context("kubectl apply -f deploy/components.yaml")?;
        let nodes = self.real_nodes.len();
        self.wait_for(
            "the agent DaemonSet rolled out",
            Duration::from_secs(180),
            |c| {
                let ds =
                    c.kubectl_json(&["-n", manifests::NAMESPACE, "get", "daemonset", DAEMONSET])?;
                let s = &ds["status"];
                Ok((s["desiredNumberScheduled"] == nodes
                    && s["numberReady"] == nodes
                    && s["updatedNumberScheduled"] == nodes)
                    .then_some(()))
            },
        )?;
        self.wait_aggregators_ready()?;
        self.wait_apiservices_available(Duration::from_secs(120))
    }

    /// Waits until the aggregator Deployment has all its replicas ready and
    /// updated, and no other pod of it is left.
    pub fn wait_aggregators_ready(&mut self) -> Result<()> {
        self.wait_for(
            "the aggregator Deployment ready",
            Duration::from_secs(180),
            |c| {
                let d =
                    c.kubectl_json(&["-n", manifests::NAMESPACE, "get", "deployment", DEPLOYMENT])?;
                let s = &d["status"];
                let want = &d["spec"]["replicas"];
                Ok((s["readyReplicas"] == *want
                    && s["updatedReplicas"] == *want
                    && s["replicas"] == *want)
                    .then_some(()))
            },
        )
    }

    /// Runs the first ```sh block after `heading` in `doc` with bash, inside
    /// the namespace, with the pinned kubectl first on `PATH` and the admin's
    /// kubeconfig: the documented commands themselves, not a copy of them.
    pub fn run_doc_recipe(&self, doc: &Path, heading: &str) -> Result<()> {
        let text = fs::read_to_string(doc).with_context(|| format!("reading {}", doc.display()))?;
        let after = text
            .split_once(heading)
            .with_context(|| format!("{}: no {heading:?}", doc.display()))?
            .1;
        let script = after
            .split_once("```sh\n")
            .and_then(|(_, rest)| rest.split_once("\n```"))
            .with_context(|| format!("{}: no sh block after {heading:?}", doc.display()))?
            .0;
        let scratch = self.work_dir.join("recipe");
        fs::create_dir_all(&scratch)?;
        let mut path = self.bin.as_os_str().to_owned();
        path.push(":");
        path.push(std::env::var_os("PATH").unwrap_or_default());
        let mut cmd = self.command_in_netns("bash");
        cmd.arg("-euo")
            .arg("pipefail")
            .arg("-c")
            .arg(script)
            .env("PATH", path)
            .env("KUBECONFIG", self.admin_kubeconfig())
            .env("HOME", &scratch)
            .env("TMPDIR", &scratch);
        let out = crate::process::run(cmd, None, Duration::from_secs(120))?;
        ensure!(
            out.status.success(),
            "the recipe under {heading:?} in {} failed ({}):\n{}\n{}",
            doc.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.note(&format!(
            "ran the recipe under {heading:?} in {}",
            doc.display()
        ));
        Ok(())
    }
}
