//! curl inside the cluster's network namespace: a client far lighter than
//! kubectl (a Go binary that costs a noticeable share of these 2 cores per
//! call), for polls and for the phases that sample CPU or time things to the
//! tenth of a second.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::Cluster;

/// curl with a client certificate of its own (or none).
pub struct Curl {
    ca: PathBuf,
    client: Option<(PathBuf, PathBuf)>,
}

impl Curl {
    /// A client certificate from the cluster CA for `user` (O = `group`);
    /// servers are verified against `ca` (the cluster CA when `None`).
    pub fn new(c: &Cluster, user: &str, group: Option<&str>, ca: Option<&Path>) -> Result<Self> {
        let files = c
            .pki()
            .client(&format!("curl-{}", user.replace(':', "_")), user, group)?;
        Ok(Self {
            ca: ca.map_or_else(|| c.pki().cluster_ca.cert.clone(), Path::to_path_buf),
            client: Some((files.cert, files.key)),
        })
    }

    /// Servers verified against `ca`; `client` (cert, key) presented if given.
    pub fn with_files(ca: &Path, client: Option<(&Path, &Path)>) -> Self {
        Self {
            ca: ca.to_path_buf(),
            client: client.map(|(c, k)| (c.to_path_buf(), k.to_path_buf())),
        }
    }

    /// `GET <url>`: (status, body).
    pub fn get(&self, c: &Cluster, url: &str) -> Result<(u16, String)> {
        self.get_with(c, url, &[])
    }

    /// `GET <url>` with extra `headers` (`"Name: value"`): (status, body).
    pub fn get_with(&self, c: &Cluster, url: &str, headers: &[&str]) -> Result<(u16, String)> {
        let mut cmd = c.command_in_netns("curl");
        cmd.args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&self.ca);
        if let Some((cert, key)) = &self.client {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        for h in headers {
            cmd.arg("-H").arg(h);
        }
        cmd.args(["-w", "\n%{http_code}", url]);
        let out = cmd.output().context("running curl")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "curl {url}: {} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let (body, code) = text
            .rsplit_once('\n')
            .ok_or_else(|| anyhow!("curl {url}: no status line"))?;
        Ok((code.trim().parse()?, body.to_string()))
    }

    /// `GET https://<kube-apiserver><path>`: (status, body).
    pub fn api(&self, c: &Cluster, path: &str) -> Result<(u16, String)> {
        self.get(
            c,
            &format!("https://{}:{}{path}", crate::API_IP, crate::API_PORT),
        )
    }

    /// `GET https://<kube-apiserver><path>`, which must answer 200 with JSON.
    pub fn api_json(&self, c: &Cluster, path: &str) -> Result<Value> {
        let (code, body) = self.api(c, path)?;
        if code != 200 {
            bail!("GET {path}: {code} {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON"))
    }
}
