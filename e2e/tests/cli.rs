//! Both binaries as an operator starts them, without a cluster: the
//! aggregator's ingest on loopback, one agent reporting to it (CPU from
//! cgroupfs), kube-apiserver unreachable (a closed loopback port), so both
//! also log warnings. Checks what lands in `kubectl logs`: one stream
//! (stderr), JSON lines under `--logging-format=json`, no terminal escape
//! codes when the output is not a terminal.

use std::{
    io::{BufRead, BufReader, Read},
    net::{Ipv4Addr, TcpListener},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use e2e::binaries::Ours;

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// A kubeconfig for a kube-apiserver that is not there.
fn dead_kubeconfig(dir: &Path) -> Result<std::path::PathBuf> {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: none
  cluster:
    server: https://127.0.0.1:{}
    insecure-skip-tls-verify: true
contexts:
- name: none
  context: {{cluster: none, user: none}}
users:
- name: none
  user: {{token: none}}
current-context: none
",
            free_port()?
        ),
    )?;
    Ok(path)
}

/// A started binary whose stderr lines arrive on `lines`; stdout is kept.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Vec<String>,
    stdout: thread::JoinHandle<String>,
}

impl Running {
    fn start(mut cmd: Command) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().context("stderr")?;
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut out = child.stdout.take().context("stdout")?;
        let stdout = thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        });
        Ok(Running {
            child,
            lines,
            stderr: Vec::new(),
            stdout,
        })
    }

    /// Waits for a stderr line that `found` accepts.
    fn wait_for(&mut self, what: &str, found: impl Fn(&str) -> bool) -> Result<()> {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    let done = found(&line);
                    self.stderr.push(line);
                    if done {
                        return Ok(());
                    }
                }
                Err(_) => bail!(
                    "no {what} within 60 s (or the process ended); stderr so far:\n{}",
                    self.stderr.join("\n")
                ),
            }
        }
    }

    /// SIGTERM, then everything it wrote: (stderr lines, stdout).
    fn stop(mut self) -> Result<(Vec<String>, String)> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let status = self.child.wait()?;
        self.stderr.extend(self.lines.iter());
        let stdout = self.stdout.join().unwrap_or_default();
        if !status.success() {
            bail!(
                "exited {status} after SIGTERM; stderr:\n{}",
                self.stderr.join("\n")
            );
        }
        Ok((self.stderr, stdout))
    }
}

/// What both binaries wrote in one run: the aggregator up, one agent's
/// stream accepted, then both stopped.
struct Logs {
    aggregator: (Vec<String>, String),
    agent: (Vec<String>, String),
}

fn run_both(ours: &Ours, format: &str) -> Result<Logs> {
    let dir = tempfile::tempdir()?;
    let kubeconfig = dead_kubeconfig(dir.path())?;
    let ingest = free_port()?;
    let mut cmd = Command::new(&ours.aggregator);
    cmd.arg("--bind-address=127.0.0.1")
        .arg(format!("--secure-port={}", free_port()?))
        .arg(format!("--cert-dir={}", dir.path().display()))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg("--ingest-bind-address=127.0.0.1")
        .arg(format!("--ingest-port={ingest}"))
        .arg("--ingest-auth=none")
        .arg("--verify-pod-bindings=false")
        .arg("--authentication-tolerate-lookup-failure")
        .env_remove("RUST_LOG");
    if !format.is_empty() {
        cmd.arg(format!("--logging-format={format}"));
    }
    let mut aggregator = Running::start(cmd)?;
    aggregator.wait_for("ingest listening", |l| l.contains("ingest listening"))?;

    let mut cmd = Command::new(&ours.agent);
    cmd.arg("run")
        .arg("--node-name=cli-test")
        .arg(format!("--aggregator=http://127.0.0.1:{ingest}"))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg("--cpu-source=cgroupfs")
        .arg("--interval=200ms")
        .env_remove("RUST_LOG");
    if !format.is_empty() {
        cmd.arg(format!("--logging-format={format}"));
    }
    let agent = Running::start(cmd)?;
    aggregator.wait_for("the agent's stream", |l| l.contains("agent stream opened"))?;
    Ok(Logs {
        agent: agent.stop()?,
        aggregator: aggregator.stop()?,
    })
}

fn check_one_stream(name: &str, (stderr, stdout): &(Vec<String>, String)) {
    assert!(!stderr.is_empty(), "{name} logged nothing");
    assert!(
        stdout.is_empty(),
        "{name} logs to stderr only; stdout had:\n{stdout}"
    );
    for line in stderr {
        assert!(
            !line.contains('\x1b'),
            "{name}: escape codes in a log line that goes to a pipe: {line:?}"
        );
    }
}

#[test]
fn json_logs_are_one_object_per_line_on_stderr() -> Result<()> {
    let ours = Ours::locate()?;
    let logs = run_both(&ours, "json")?;
    for (name, output) in [("aggregator", &logs.aggregator), ("agent", &logs.agent)] {
        check_one_stream(name, output);
        let mut levels = std::collections::BTreeSet::new();
        for line in &output.0 {
            let value: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{name}: a log line that is not JSON: {line:?}"))?;
            let level = value["level"].as_str().context("a level")?;
            assert!(value["timestamp"].is_string(), "{name}: {line}");
            assert!(value["message"].is_string(), "{name}: {line}");
            levels.insert(level.to_owned());
        }
        // The unreachable kube-apiserver is warned about: fields and all go
        // through the JSON writer, not only plain messages.
        assert!(
            levels.contains("WARN") && levels.contains("INFO"),
            "{name}: levels {levels:?}"
        );
    }
    Ok(())
}

#[test]
fn text_logs_to_a_pipe_have_no_colour() -> Result<()> {
    let ours = Ours::locate()?;
    let logs = run_both(&ours, "")?;
    for (name, output) in [("aggregator", &logs.aggregator), ("agent", &logs.agent)] {
        check_one_stream(name, output);
        assert!(
            output.0.iter().any(|l| l.contains(" INFO ")),
            "{name}: text lines: {:?}",
            output.0
        );
    }
    Ok(())
}

/// The `args` of the first container in a Deployment manifest.
fn container_args(manifest: &str) -> Vec<String> {
    let mut lines = manifest.lines().skip_while(|l| l.trim() != "args:").skip(1);
    let mut args = Vec::new();
    for line in lines.by_ref() {
        match line.trim().strip_prefix("- ") {
            Some(arg) if arg.starts_with("--") => args.push(arg.to_owned()),
            _ => break,
        }
    }
    args
}

/// GET `path` on the aggregator's HTTPS port without credentials, as a
/// kubelet probe does: the status.
fn probe(port: u16, path: &str) -> Result<u16> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut config = kube::Config::new(format!("https://127.0.0.1:{port}").parse()?);
        config.accept_invalid_certs = true;
        let client = kube::Client::try_from(config)?;
        let response = client
            .send(http::Request::get(path).body(kube::client::Body::empty())?)
            .await?;
        Ok(response.status().as_u16())
    })
}

#[test]
fn metrics_server_manifest_arguments_start_the_aggregator() -> Result<()> {
    let manifest = std::fs::read_to_string(
        e2e::binaries::workspace_root().join("e2e/upstream/metrics-server/deployment.yaml"),
    )?;
    let mut upstream = container_args(&manifest);
    assert!(
        upstream
            .iter()
            .any(|a| a == "--kubelet-use-node-status-port"),
        "args read from the manifest: {upstream:?}"
    );
    // What metrics-server's test overlay adds.
    upstream.extend(["--kubelet-insecure-tls".to_owned(), "--v=4".to_owned()]);

    let ours = Ours::locate()?;
    let dir = tempfile::tempdir()?;
    let secure = free_port()?;
    let mut cmd = Command::new(&ours.aggregator);
    // Upstream's as they are, then what this machine needs: loopback, free
    // ports, a certificate directory of the test's own (later values win,
    // as with metrics-server's Go flags), no kube-apiserver.
    cmd.args(&upstream)
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--secure-port={secure}"))
        .arg(format!("--cert-dir={}", dir.path().display()))
        .arg(format!(
            "--kubeconfig={}",
            dead_kubeconfig(dir.path())?.display()
        ))
        .arg("--authentication-tolerate-lookup-failure")
        .arg("--ingest-bind-address=127.0.0.1")
        .arg(format!("--ingest-port={}", free_port()?))
        .arg("--ingest-auth=none")
        .arg("--verify-pod-bindings=false")
        .env_remove("RUST_LOG");
    let mut aggregator = Running::start(cmd)?;
    aggregator.wait_for("serving", |l| l.contains("ingest listening"))?;
    assert_eq!(probe(secure, "/livez")?, 200, "the liveness probe passes");
    let (stderr, _) = aggregator.stop()?;
    for flag in [
        "kubelet-preferred-address-types",
        "kubelet-use-node-status-port",
        "kubelet-insecure-tls",
    ] {
        let warnings = stderr
            .iter()
            .filter(|l| l.contains(" WARN ") && l.contains(&format!("flag={flag}")))
            .count();
        assert_eq!(
            warnings,
            1,
            "one warning for --{flag}:\n{}",
            stderr.join("\n")
        );
    }
    // `--v=4` is debug.
    assert!(
        stderr.iter().any(|l| l.contains(" DEBUG ")),
        "--v=4 logs at debug:\n{}",
        stderr.join("\n")
    );
    Ok(())
}
