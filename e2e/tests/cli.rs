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
    time::{Duration, Instant},
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

/// Where one aggregator listens and keeps its files: loopback, no
/// kube-apiserver, ingest without authentication.
struct Local<'a> {
    dir: &'a Path,
    kubeconfig: &'a Path,
    secure: u16,
    ingest: u16,
}

impl Local<'_> {
    /// `--flags` after `upstream` (later values win, as with
    /// metrics-server's Go flags).
    fn aggregator(&self, ours: &Ours, upstream: &[String]) -> Command {
        let mut cmd = Command::new(&ours.aggregator);
        cmd.args(upstream)
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", self.secure))
            .arg(format!("--cert-dir={}", self.dir.display()))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg("--authentication-tolerate-lookup-failure")
            .arg("--ingest-bind-address=127.0.0.1")
            .arg(format!("--ingest-port={}", self.ingest))
            .arg("--ingest-auth=none")
            .arg("--verify-pod-bindings=false")
            .env_remove("RUST_LOG");
        cmd
    }

    /// An agent of node `node` reporting to this aggregator (CPU from
    /// cgroupfs, every 200 ms), `extra` flags last.
    fn agent(&self, ours: &Ours, node: &str, extra: &[String]) -> Command {
        let mut cmd = Command::new(&ours.agent);
        cmd.arg("run")
            .arg(format!("--node-name={node}"))
            .arg(format!("--aggregator=http://127.0.0.1:{}", self.ingest))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg("--cpu-source=cgroupfs")
            .arg("--interval=200ms")
            .args(extra)
            .env_remove("RUST_LOG");
        cmd
    }
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
        // One bound for the whole wait: other lines keep coming meanwhile.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
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
    let local = Local {
        dir: dir.path(),
        kubeconfig: &kubeconfig,
        secure: free_port()?,
        ingest,
    };
    let mut cmd = local.aggregator(ours, &[]);
    if !format.is_empty() {
        cmd.arg(format!("--logging-format={format}"));
    }
    let mut aggregator = Running::start(cmd)?;
    aggregator.wait_for("ingest listening", |l| l.contains("ingest listening"))?;

    let mut cmd = local.agent(ours, "cli-test", &[]);
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

/// GET `path` on the aggregator's HTTPS port without credentials, as a
/// kubelet probe does: the status and the body.
fn https_get(port: u16, path: &str) -> Result<(u16, String)> {
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
        let status = response.status().as_u16();
        let body = response.into_body().collect_bytes().await?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
}

#[test]
fn metrics_server_manifest_arguments_start_the_aggregator() -> Result<()> {
    let manifest = std::fs::read_to_string(
        e2e::binaries::workspace_root().join("e2e/upstream/metrics-server/deployment.yaml"),
    )?;
    let mut upstream = e2e::manifests::container_args(&manifest);
    assert!(
        upstream
            .iter()
            .any(|a| a == "--kubelet-use-node-status-port"),
        "args read from the manifest: {upstream:?}"
    );
    // What metrics-server's test overlay adds, and flags of its that mean
    // nothing here.
    upstream.extend(
        [
            "--kubelet-insecure-tls",
            "--v=4",
            "--profiling=false",
            "--request-timeout=1m",
        ]
        .map(str::to_owned),
    );

    let ours = Ours::locate()?;
    let dir = tempfile::tempdir()?;
    let secure = free_port()?;
    // Upstream's as they are, then what this machine needs: loopback, free
    // ports, a certificate directory of the test's own, no kube-apiserver.
    let kubeconfig = dead_kubeconfig(dir.path())?;
    let local = Local {
        dir: dir.path(),
        kubeconfig: &kubeconfig,
        secure,
        ingest: free_port()?,
    };
    let cmd = local.aggregator(&ours, &upstream);
    let mut aggregator = Running::start(cmd)?;
    aggregator.wait_for("serving", |l| l.contains("ingest listening"))?;
    assert_eq!(
        https_get(secure, "/livez")?.0,
        200,
        "the liveness probe passes"
    );
    let (stderr, _) = aggregator.stop()?;
    let warnings = |flag: &str| {
        stderr
            .iter()
            .filter(|l| l.contains(" WARN ") && l.contains(&format!("flag={flag}")))
            .count()
    };
    // The kubelet client's flags are the aggregator's own (for nodes
    // without an agent); the others are ignored, one warning each.
    for (flag, want) in [
        ("kubelet-preferred-address-types", 0),
        ("kubelet-use-node-status-port", 0),
        ("kubelet-insecure-tls", 0),
        ("profiling", 1),
        ("request-timeout", 1),
    ] {
        assert_eq!(
            warnings(flag),
            want,
            "warnings for --{flag}:\n{}",
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

/// A plain HTTP/1.0 GET on loopback: the status and the body.
fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line in {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Polls `path` (as the kubelet's probes do) until it answers `status`.
fn until_status(port: u16, path: &str, status: u16) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (got, body) = http_get(port, path)?;
        if got == status {
            return Ok(body);
        }
        if Instant::now() > deadline {
            bail!("{path} still answers {got} after 60 s, not {status}: {body}");
        }
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn agent_probes_follow_its_reports_not_the_aggregators_life() -> Result<()> {
    let ours = Ours::locate()?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dead_kubeconfig(dir.path())?;
    let (ingest, secure, health) = (free_port()?, free_port()?, free_port()?);
    let local = Local {
        dir: dir.path(),
        kubeconfig: &kubeconfig,
        secure,
        ingest,
    };
    // Its /metrics open to the test, which has no credentials kube-apiserver
    // could review (there is none).
    let open_metrics =
        ["--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics".to_owned()];
    let aggregator = || -> Result<Running> {
        let mut running = Running::start(local.aggregator(&ours, &open_metrics))?;
        running.wait_for("ingest listening", |l| l.contains("ingest listening"))?;
        Ok(running)
    };

    let cmd = local.agent(
        &ours,
        "probe-test",
        &[format!("--health-address=127.0.0.1:{health}")],
    );
    let mut agent = Running::start(cmd)?;
    agent.wait_for("the health listener", |l| l.contains("/livez"))?;

    // No aggregator yet: alive, not ready.
    until_status(health, "/livez", 200)?;
    let why = until_status(health, "/readyz", 503)?;
    assert!(
        why.contains("aggregators connected") || why.contains("no sample"),
        "{why}"
    );

    let first = aggregator()?;
    until_status(health, "/readyz", 200)?;
    let metrics = until_status(health, "/metrics", 200)?;
    for family in [
        "nodepulse_agent_ready 1",
        "nodepulse_agent_cpu_source{source=\"cgroupfs\"} 1",
        &format!("nodepulse_agent_aggregator_up{{aggregator=\"http://127.0.0.1:{ingest}\"}} 1"),
    ] {
        assert!(
            metrics.lines().any(|l| l == family),
            "{family} in\n{metrics}"
        );
    }

    // Every metric the dashboard queries is in a scrape of the two.
    let aggregator_metrics = {
        // A request for its API's request metrics to count.
        https_get(secure, "/livez")?;
        let (status, body) = https_get(secure, "/metrics")?;
        assert_eq!(status, 200, "{body}");
        body
    };
    let dashboard = std::fs::read_to_string(
        e2e::binaries::workspace_root().join("deploy/grafana/nodepulse.json"),
    )?;
    let queried = dashboard_metrics(&dashboard)?;
    assert!(queried.len() >= 10, "metrics queried: {queried:?}");
    for metric in &queried {
        let exposed = |text: &str| {
            text.lines().any(|l| {
                l.strip_prefix(metric.as_str())
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
        };
        assert!(
            exposed(&metrics) || exposed(&aggregator_metrics),
            "the dashboard queries {metric}, which neither binary exposes"
        );
    }

    // Every aggregator gone: not ready, still alive.
    let mut first = first;
    first.child.kill()?;
    first.child.wait()?;
    until_status(health, "/readyz", 503)?;
    assert_eq!(http_get(health, "/livez")?.0, 200, "not ready is not dead");

    // Back: ready again.
    let second = aggregator()?;
    until_status(health, "/readyz", 200)?;
    second.stop()?;
    agent.stop()?;
    Ok(())
}

/// The metric names in a Grafana dashboard's queries (the project's own
/// families, the API server's and the process's).
fn dashboard_metrics(dashboard: &str) -> Result<std::collections::BTreeSet<String>> {
    let json: serde_json::Value = serde_json::from_str(dashboard)?;
    let mut names = std::collections::BTreeSet::new();
    for panel in json["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().context("targets")? {
            let expr = target["expr"].as_str().context("expr")?;
            let mut word = String::new();
            for c in expr.chars().chain(std::iter::once(' ')) {
                if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                    word.push(c);
                    continue;
                }
                if ["nodepulse_", "apiserver_", "process_"]
                    .iter()
                    .any(|p| word.starts_with(p))
                {
                    names.insert(std::mem::take(&mut word));
                }
                word.clear();
            }
        }
    }
    Ok(names)
}
