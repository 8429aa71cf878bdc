//! Where the binaries come from, and the command lines of nodepulse's own.
//!
//! Upstream (etcd, kube-apiserver, kube-controller-manager, kubectl) comes from
//! `scripts/upstream.sh`; nodepulse's from `cargo build --release`.
//! [`aggregator_command`] and [`agent_command`] are the only places that know
//! the two binaries' flags: [`Ours::locate`] checks the binaries against the
//! very command lines these build, so a flag renamed on one side shows up as a
//! clear "skipped: … does not know --x" rather than as a dead process.

use std::{
    env,
    ffi::OsString,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};

use crate::process;

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or_else(|| manifest.join(".."), Path::to_path_buf)
}

/// Cargo's target directory (`CARGO_TARGET_DIR` or `<root>/target`).
pub fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// The directory holding the pinned upstream binaries: `NODEPULSE_UPSTREAM_BIN`
/// if set, else the last stdout line of `scripts/upstream.sh` (which builds
/// them on first use — about 17 minutes cold — and takes under a second warm).
pub fn upstream_bin_dir() -> Result<PathBuf> {
    let dir = match env::var_os("NODEPULSE_UPSTREAM_BIN") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let script = workspace_root().join("scripts/upstream.sh");
            let out = process::run(Command::new(&script), None, Duration::from_secs(3600))?;
            if !out.status.success() {
                bail!(
                    "{} failed ({}):\n{}",
                    script.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let stdout = String::from_utf8_lossy(&out.stdout);
            match stdout.lines().last() {
                Some(line) if !line.trim().is_empty() => PathBuf::from(line.trim()),
                _ => bail!("{} printed no bin directory", script.display()),
            }
        }
    };
    for b in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kubectl",
    ] {
        if !dir.join(b).is_file() {
            bail!("{} is missing", dir.join(b).display());
        }
    }
    Ok(dir)
}

/// The pinned `k8s.io/kubernetes` version (`v1.37.2`), from
/// `e2e/upstream/kube/go.mod`.
pub fn upstream_kube_version() -> Result<String> {
    let path = workspace_root().join("e2e/upstream/kube/go.mod");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    module_version(&text, "k8s.io/kubernetes")
        .ok_or_else(|| anyhow!("{} requires no k8s.io/kubernetes", path.display()))
}

/// The version a go.mod requires of `module` (`require` block or line).
fn module_version(go_mod: &str, module: &str) -> Option<String> {
    go_mod.lines().find_map(|line| {
        let line = line.trim();
        let line = line.strip_prefix("require ").unwrap_or(line);
        let mut words = line.split_whitespace();
        (words.next() == Some(module))
            .then(|| words.next())
            .flatten()
            .filter(|v| v.starts_with('v'))
            .map(str::to_string)
    })
}

/// nodepulse's two binaries, checked against the command lines below, and
/// the burner of the real-node images.
#[derive(Clone, Debug)]
pub struct Ours {
    pub aggregator: PathBuf,
    pub agent: PathBuf,
    /// `nodepulse-burner` (testkit), for the burner image.
    pub burner: PathBuf,
}

impl Ours {
    /// `target/release/nodepulse-{aggregator,agent}`, built first according to
    /// `NODEPULSE_E2E_BUILD`: `always` (default: `cargo build --release`
    /// once per test process, a second or two when up to date, so a test never
    /// runs stale binaries), `missing` (only when either is absent) or `never`.
    /// `NODEPULSE_E2E_AGGREGATOR` / `NODEPULSE_E2E_AGENT` name other binaries
    /// (a debug build, a stand-in); when both are set nothing is built.
    /// The error says why they cannot be used (a caller may skip).
    pub fn locate() -> Result<Self> {
        let release = target_dir().join("release");
        let aggregator = env::var_os("NODEPULSE_E2E_AGGREGATOR").map(PathBuf::from);
        let agent = env::var_os("NODEPULSE_E2E_AGENT").map(PathBuf::from);
        let overridden = aggregator.is_some() && agent.is_some();
        let ours = Self {
            aggregator: aggregator.unwrap_or_else(|| release.join("nodepulse-aggregator")),
            agent: agent.unwrap_or_else(|| release.join("nodepulse-agent")),
            burner: release.join("nodepulse-burner"),
        };
        let policy = if overridden {
            "never".into()
        } else {
            env::var("NODEPULSE_E2E_BUILD").unwrap_or_else(|_| "always".into())
        };
        let build = match policy.as_str() {
            "always" | "" => true,
            "never" => false,
            "missing" => [&ours.aggregator, &ours.agent, &ours.burner]
                .iter()
                .any(|b| !b.is_file()),
            other => bail!("NODEPULSE_E2E_BUILD={other}: expected always, missing or never"),
        };
        if build {
            // One build per test process; its outcome is remembered.
            static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
            BUILT
                .get_or_init(|| cargo_build_release().map_err(|e| format!("{e:#}")))
                .clone()
                .map_err(|e| anyhow!(e))?;
        }
        for bin in [&ours.aggregator, &ours.agent] {
            if !bin.is_file() {
                bail!("{} does not exist", bin.display());
            }
        }
        check_flags(&aggregator_command(
            &ours.aggregator,
            &AggregatorArgs::placeholder(),
        ))?;
        check_flags(&agent_command(&ours.agent, &AgentArgs::placeholder()))?;
        Ok(ours)
    }
}

/// What [`cargo_build_release`] builds.
const RELEASE_PACKAGES: [&str; 6] = ["-p", "agent", "-p", "aggregator-api", "-p", "testkit"];

/// `nice -n 10 cargo build --release -p agent -p aggregator-api -p testkit`.
fn cargo_build_release() -> Result<()> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new("nice");
    cmd.arg("-n")
        .arg("10")
        .arg(cargo)
        .arg("build")
        .arg("--release")
        .args(RELEASE_PACKAGES)
        .current_dir(workspace_root());
    eprintln!("e2e: {}", process::display(&cmd));
    let out = process::run(cmd, None, Duration::from_secs(1800))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        bail!(
            "cargo build --release {} failed:\n{}",
            RELEASE_PACKAGES.join(" "),
            lines[lines.len().saturating_sub(40)..].join("\n")
        );
    }
    Ok(())
}

/// What one aggregator replica is started with.
#[derive(Clone, Debug)]
pub struct AggregatorArgs {
    pub ip: Ipv4Addr,
    pub secure_port: u16,
    pub ingest_port: u16,
    /// Serving certificate for both ports (SANs: every replica IP and
    /// `nodepulse.kube-system.svc`).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Identity `system:serviceaccount:kube-system:nodepulse`.
    pub kubeconfig: PathBuf,
    /// Go duration, e.g. `1s`.
    pub metric_resolution: String,
    /// `--ingest-max-connections-per-peer`, where not the default.
    pub ingest_connections_per_peer: Option<usize>,
    /// Further flags, as given.
    pub extra: Vec<String>,
}

impl AggregatorArgs {
    fn placeholder() -> Self {
        Self {
            ingest_connections_per_peer: Some(64),
            ip: Ipv4Addr::LOCALHOST,
            secure_port: 443,
            ingest_port: 8443,
            cert: "tls.crt".into(),
            key: "tls.key".into(),
            kubeconfig: "kubeconfig".into(),
            metric_resolution: "1s".into(),
            extra: Vec::new(),
        }
    }
}

/// The aggregator's command line (the one place that knows its flags).
pub fn aggregator_command(bin: &Path, a: &AggregatorArgs) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--secure-port={}", a.secure_port))
        .arg(format!("--bind-address={}", a.ip))
        .arg(flag("--tls-cert-file", &a.cert))
        .arg(flag("--tls-private-key-file", &a.key))
        .arg(flag("--kubeconfig", &a.kubeconfig))
        .arg(format!("--ingest-port={}", a.ingest_port))
        .arg(format!("--ingest-bind-address={}", a.ip))
        .arg(flag("--ingest-tls-cert-file", &a.cert))
        .arg(flag("--ingest-tls-private-key-file", &a.key))
        .arg(format!("--metric-resolution={}", a.metric_resolution))
        // As the Deployment passes it (the Downward API's status.podIP).
        .env("POD_IP", a.ip.to_string())
        .env("RUST_LOG", log_filter());
    if let Some(n) = a.ingest_connections_per_peer {
        cmd.arg(format!("--ingest-max-connections-per-peer={n}"));
    }
    cmd.args(&a.extra);
    cmd
}

/// What one node's agent is started with.
#[derive(Clone, Debug)]
pub struct AgentArgs {
    pub node_name: String,
    /// The node's cgroup, relative to the v2 root (the simulated node's base).
    pub node_cgroup: String,
    /// `https://<replica ip>:<ingest port>` for every replica.
    pub aggregators: Vec<String>,
    /// CA of the aggregators' serving certificate.
    pub ca: PathBuf,
    /// The name the aggregators' certificate is checked against.
    pub server_name: String,
    /// A ServiceAccount token bound to the Node object.
    pub token_file: PathBuf,
    /// Identity `system:serviceaccount:kube-system:nodepulse-agent`.
    pub kubeconfig: PathBuf,
    /// Go duration, e.g. `1s`.
    pub interval: String,
}

impl AgentArgs {
    fn placeholder() -> Self {
        Self {
            node_name: "node".into(),
            node_cgroup: "/".into(),
            aggregators: vec!["https://127.0.0.1:8443".into()],
            ca: "ca.crt".into(),
            server_name: "nodepulse.kube-system.svc".into(),
            token_file: "token".into(),
            kubeconfig: "kubeconfig".into(),
            interval: "1s".into(),
        }
    }
}

/// The agent's command line (the one place that knows its flags).
pub fn agent_command(bin: &Path, a: &AgentArgs) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .arg(format!("--node-name={}", a.node_name))
        .arg(format!("--node-cgroup={}", a.node_cgroup));
    for url in &a.aggregators {
        cmd.arg(format!("--aggregator={url}"));
    }
    cmd.arg(flag("--aggregator-ca", &a.ca))
        .arg(format!("--aggregator-server-name={}", a.server_name))
        .arg(flag("--token-file", &a.token_file))
        .arg(flag("--kubeconfig", &a.kubeconfig))
        .arg(format!("--interval={}", a.interval))
        .env("RUST_LOG", log_filter());
    cmd
}

/// `RUST_LOG` for our processes: `NODEPULSE_E2E_LOG`, else `info`.
fn log_filter() -> String {
    env::var("NODEPULSE_E2E_LOG").unwrap_or_else(|_| "info".into())
}

fn flag(name: &str, path: &Path) -> OsString {
    let mut s = OsString::from(format!("{name}="));
    s.push(path);
    s
}

/// Runs `<program> <subcommands…> --help` and fails unless it mentions every
/// `--flag` that `cmd` passes.
pub fn check_flags(cmd: &Command) -> Result<()> {
    let program = Path::new(cmd.get_program());
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let subcommands: Vec<&str> = args
        .iter()
        .take_while(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    let mut help = Command::new(program);
    help.args(&subcommands).arg("--help");
    let out = process::run(help, None, Duration::from_secs(30))
        .with_context(|| format!("running {} --help", program.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let missing = missing_flags(&args, &text);
    if !out.status.success() || !missing.is_empty() {
        bail!(
            "`{} {} --help` does not offer {} (exit {}); it printed:\n{}",
            program.display(),
            subcommands.join(" "),
            missing.join(", "),
            out.status,
            text.lines().take(40).collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

/// The `--flags` among `args` that `help` never mentions as a whole word.
fn missing_flags(args: &[String], help: &str) -> Vec<String> {
    let mut missing: Vec<String> = Vec::new();
    for arg in args.iter().filter(|a| a.starts_with("--")) {
        let name = arg.split_once('=').map_or(arg.as_str(), |(n, _)| n);
        let mentioned = help.match_indices(name).any(|(i, _)| {
            help[i + name.len()..]
                .chars()
                .next()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '-' || c == '_'))
        });
        if !mentioned && !missing.iter().any(|m| m == name) {
            missing.push(name.to_string());
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn module_versions_from_go_mod() {
        let go_mod = "module x\n\nrequire (\n\tk8s.io/api v0.37.2 // indirect\n\tk8s.io/kubernetes v1.37.2 // indirect\n)\nreplace k8s.io/api => k8s.io/api v0.37.2\n";
        assert_eq!(
            module_version(go_mod, "k8s.io/kubernetes").as_deref(),
            Some("v1.37.2")
        );
        assert_eq!(
            module_version("require k8s.io/kubernetes v1.2.3\n", "k8s.io/kubernetes").as_deref(),
            Some("v1.2.3")
        );
        assert_eq!(module_version(go_mod, "k8s.io/kube"), None);
        assert_eq!(
            upstream_kube_version()
                .expect("upstream_kube_version")
                .chars()
                .next(),
            Some('v')
        );
    }

    #[test]
    fn a_flag_must_appear_as_a_whole_word() {
        let help = "  --aggregator-ca <FILE>\n  --interval <DUR>\n";
        let have =
            |a: &[&str]| missing_flags(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>(), help);
        assert_eq!(
            have(&["--aggregator=https://x", "--aggregator-ca=a"]),
            ["--aggregator"]
        );
        assert!(have(&["run", "--interval=1s", "--aggregator-ca=a"]).is_empty());
    }

    /// A fake binary whose `run --help` lists `flags`.
    fn fake_agent(dir: &Path, flags: &[&str]) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("agent");
        let help: String = flags.iter().map(|f| format!("  {f} <VALUE>\n")).collect();
        let script =
            format!("#!/bin/sh\n[ \"$1 $2\" = \"run --help\" ] || exit 2\nprintf '%s' '{help}'\n");
        std::fs::write(&path, script).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    #[test]
    fn check_flags_asks_the_subcommand_and_names_what_is_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let all = [
            "--node-name",
            "--node-cgroup",
            "--aggregator",
            "--aggregator-ca",
            "--aggregator-server-name",
            "--token-file",
            "--kubeconfig",
            "--interval",
        ];
        let good = fake_agent(dir.path(), &all);
        check_flags(&agent_command(&good, &AgentArgs::placeholder())).expect("all flags known");
        let bad = fake_agent(dir.path(), &all[..7]);
        let err = check_flags(&agent_command(&bad, &AgentArgs::placeholder()))
            .expect_err("--interval is missing");
        assert!(
            format!("{err:#}").contains("does not offer --interval"),
            "{err:#}"
        );
    }

    #[test]
    fn agent_command_names_every_aggregator_once() {
        let mut a = AgentArgs::placeholder();
        a.aggregators = vec![
            "https://10.203.0.10:8443".into(),
            "https://10.203.0.11:8443".into(),
        ];
        let got = args(&agent_command(Path::new("nodepulse-agent"), &a));
        assert_eq!(got[0], "run");
        assert_eq!(
            got.iter()
                .filter(|a| a.starts_with("--aggregator="))
                .count(),
            2
        );
        assert!(got.contains(&"--node-cgroup=/".to_string()));
    }

    #[test]
    fn aggregator_command_serves_both_ports_with_one_certificate() {
        let got = args(&aggregator_command(
            Path::new("nodepulse-aggregator"),
            &AggregatorArgs::placeholder(),
        ));
        assert!(got.contains(&"--tls-cert-file=tls.crt".to_string()));
        assert!(got.contains(&"--ingest-tls-cert-file=tls.crt".to_string()));
        assert!(got.contains(&"--bind-address=127.0.0.1".to_string()));
    }
}
