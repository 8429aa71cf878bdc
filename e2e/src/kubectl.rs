//! kubectl, run inside the test namespace, and the kubeconfigs it (and our
//! processes) use.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{
    netns::NetNs,
    pki::CertFiles,
    process::{self, display},
    time::now_rfc3339,
};

/// How long one kubectl invocation may take in all.
const TIMEOUT: Duration = Duration::from_secs(90);

/// Runs the pinned kubectl; every call is recorded in the harness log.
pub struct Kubectl {
    bin: PathBuf,
    /// Scratch dir: `HOME`, and one fresh discovery cache per call, so a call
    /// never sees API groups as they were before an APIService changed.
    scratch: PathBuf,
    log: PathBuf,
    seq: AtomicU64,
}

impl Kubectl {
    pub fn new(bin: PathBuf, scratch: PathBuf, log: PathBuf) -> Self {
        Self {
            bin,
            scratch,
            log,
            seq: AtomicU64::new(0),
        }
    }

    /// `kubectl --kubeconfig=<kubeconfig> <args>` inside `netns`, `input` on stdin.
    pub fn run(
        &self,
        netns: &NetNs,
        kubeconfig: &Path,
        args: &[&str],
        input: Option<Vec<u8>>,
    ) -> Result<Output> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let cache = self.scratch.join(format!("cache-{n}"));
        let mut cmd = Command::new(&self.bin);
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--cache-dir={}", cache.display()))
            .arg("--request-timeout=30s")
            .args(args)
            .env("HOME", &self.scratch)
            .env_remove("KUBECONFIG");
        netns.enter_in_child(&mut cmd);
        let what = display(&cmd);
        let start = Instant::now();
        let result = process::run(cmd, input, TIMEOUT);
        let _ = fs::remove_dir_all(&cache);
        let outcome = match &result {
            Ok(out) if out.status.success() => "ok".to_string(),
            Ok(out) => format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => format!("{e:#}"),
        };
        if let Ok(mut f) = fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
        {
            let _ = writeln!(
                f,
                "{} {what} -> {outcome} ({} ms)",
                now_rfc3339(),
                start.elapsed().as_millis()
            );
        }
        result
    }
}

/// Writes a kubeconfig for `user` authenticating with a client certificate.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    user: &str,
    client: &CertFiles,
) -> Result<()> {
    // JSON strings are valid YAML double-quoted scalars.
    let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let p = |p: &Path| q(&p.to_string_lossy());
    let text = format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: e2e\n  \
           cluster:\n    \
             server: {}\n    \
             certificate-authority: {}\n\
         users:\n\
         - name: {}\n  \
           user:\n    \
             client-certificate: {}\n    \
             client-key: {}\n\
         contexts:\n\
         - name: e2e\n  \
           context:\n    \
             cluster: e2e\n    \
             user: {}\n\
         current-context: e2e\n",
        q(server),
        p(ca),
        q(user),
        p(&client.cert),
        p(&client.key),
        q(user),
    );
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_is_indented_yaml() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kc");
        let client = CertFiles {
            cert: "/p/u.crt".into(),
            key: "/p/u.key".into(),
        };
        write_kubeconfig(
            &path,
            "https://10.203.0.1:6443",
            Path::new("/p/ca.crt"),
            "u",
            &client,
        )
        .expect("write");
        let text = fs::read_to_string(&path).expect("read");
        assert!(text.contains("\n  cluster:\n    server: \"https://10.203.0.1:6443\"\n"));
        assert!(text.contains("\n    client-key: \"/p/u.key\"\n"));
        assert!(text.ends_with("current-context: e2e\n"));
    }
}
