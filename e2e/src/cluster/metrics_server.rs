//! metrics-server beside nodepulse, for side-by-side measurements: the
//! pinned upstream binary (scripts/upstream.sh) started with the arguments
//! of its release manifest (`e2e/upstream/metrics-server/deployment.yaml`).
//!
//! It runs as a process in the cluster's namespace, not as a pod: there is
//! no metrics-server image here, and what is compared is what it computes
//! from the kubelets' `/metrics/resource`, which is the same wherever it
//! runs. It does not register an APIService (nodepulse holds
//! `v1beta1.metrics.k8s.io`): it is read directly, as kube-apiserver's
//! aggregation layer would read it ([`MetricsServer::headers`]).

use super::*;
use crate::curl::Curl;
use crate::pki::Usage;

/// Its secure port, on the namespace's loopback.
const PORT: u16 = 4443;

/// A running metrics-server; dropping it stops it.
pub struct MetricsServer {
    proc: Proc,
    /// `https://127.0.0.1:<port>`, inside the namespace.
    pub url: String,
    /// The CA its serving certificate chains to.
    pub ca: PathBuf,
    /// The front-proxy client certificate and key, which its delegated
    /// authentication trusts with [`MetricsServer::headers`].
    pub client: (PathBuf, PathBuf),
}

impl MetricsServer {
    /// The request headers kube-apiserver's aggregator sends for `user`,
    /// as (name, value).
    pub fn headers(user: &str, group: &str) -> [(&'static str, String); 2] {
        [
            ("X-Remote-User", user.to_owned()),
            ("X-Remote-Group", group.to_owned()),
        ]
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Its log, for failure messages.
    pub fn log(&self) -> &Path {
        self.proc.log()
    }

    /// Fails if it has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.proc.ensure_running()
    }
}

impl Cluster {
    /// Starts metrics-server with `resolution` (its `--metric-resolution`)
    /// and returns once `/readyz` answers 200: it has scraped every node
    /// at least once. It reads the API and the kubelets as a cluster-admin
    /// user (its RBAC is not what is compared) and verifies the kubelets'
    /// serving certificates against the cluster CA, which issued them.
    pub fn start_metrics_server(&mut self, resolution: &str) -> Result<MetricsServer> {
        let manifest =
            binaries::workspace_root().join("e2e/upstream/metrics-server/deployment.yaml");
        let manifest = fs::read_to_string(&manifest)
            .with_context(|| format!("reading {}", manifest.display()))?;
        let upstream = manifests::container_args(&manifest);
        ensure!(
            upstream
                .iter()
                .any(|a| a.starts_with("--kubelet-preferred-address-types")),
            "no arguments read from metrics-server's manifest: {upstream:?}"
        );
        let user = "metrics-server";
        let kubeconfig = self.add_user(user, Some("system:masters"))?;
        let dir = self.work_dir.join("metrics-server");
        fs::create_dir_all(&dir)?;
        let serving = self.pki.cluster_ca.issue(
            &dir,
            "serving",
            user,
            None,
            &["127.0.0.1".to_string()],
            Usage::Server,
        )?;
        let mut cmd = Command::new(self.bin.join("metrics-server"));
        // The manifest's arguments first; later ones win (pflag), so these
        // replace its port and certificate directory with this namespace's.
        cmd.args(&upstream)
            .arg(format!("--metric-resolution={resolution}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={PORT}"))
            .arg(format!("--tls-cert-file={}", serving.cert.display()))
            .arg(format!("--tls-private-key-file={}", serving.key.display()))
            .arg(format!(
                "--kubelet-certificate-authority={}",
                self.pki.cluster_ca.cert.display()
            ));
        for flag in [
            "--kubeconfig",
            "--authentication-kubeconfig",
            "--authorization-kubeconfig",
        ] {
            cmd.arg(format!("{flag}={}", kubeconfig.display()));
        }
        let proc = self.start_proc("metrics-server", cmd)?;
        let mut server = MetricsServer {
            proc,
            url: format!("https://127.0.0.1:{PORT}"),
            ca: self.pki.cluster_ca.cert.clone(),
            client: (
                self.pki.front_proxy_client.cert.clone(),
                self.pki.front_proxy_client.key.clone(),
            ),
        };
        let readyz = format!("{}/readyz", server.url);
        let curl = Curl::with_files(&server.ca, None);
        let ready = self.wait_for("metrics-server ready", Duration::from_secs(90), |c| {
            Ok((curl.get(c, &readyz)?.0 == 200).then_some(()))
        });
        if let Err(e) = ready {
            server.ensure_running()?;
            bail!("{e:#}\nmetrics-server's log:\n{}", tail(server.log(), 30));
        }
        Ok(server)
    }
}
