//! Flags of the ingest side: where agents connect and how they authenticate.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use super::window::{BatchWindow, MAX_BATCH_WINDOW};

/// How ingest streams are authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// TokenReview of the agent's ServiceAccount token (the default).
    Tokenreview,
    /// None: any peer may report any node. Development only.
    None,
}

#[derive(Clone, Debug, clap::Args)]
pub struct IngestArgs {
    /// Port agents stream to (gRPC).
    #[arg(long, env = "NODEPULSE_INGEST_PORT", default_value_t = 8443)]
    pub ingest_port: u16,
    /// Address the ingest port listens on.
    #[arg(long, env = "NODEPULSE_INGEST_BIND_ADDRESS", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub ingest_bind_address: IpAddr,
    /// Ingest serving certificate (PEM). Without it ingest is plaintext HTTP/2:
    /// only for local development.
    #[arg(long, env = "NODEPULSE_INGEST_TLS_CERT_FILE")]
    pub ingest_tls_cert_file: Option<PathBuf>,
    #[arg(long, env = "NODEPULSE_INGEST_TLS_PRIVATE_KEY_FILE")]
    pub ingest_tls_private_key_file: Option<PathBuf>,
    #[arg(
        long,
        value_enum,
        env = "NODEPULSE_INGEST_AUTH",
        default_value = "tokenreview"
    )]
    pub ingest_auth: AuthMode,
    /// The agents' ServiceAccount, `namespace:name`.
    #[arg(
        long,
        env = "NODEPULSE_AGENT_SERVICE_ACCOUNT",
        default_value = "kube-system:nodepulse-agent"
    )]
    pub agent_service_account: String,
    /// This aggregator's own ServiceAccount, `namespace:name`: a stream
    /// authenticated as it is another replica forwarding nodes it reads
    /// from their kubelets, taken only for nodes this replica reads too.
    #[arg(
        long,
        env = "NODEPULSE_AGGREGATOR_SERVICE_ACCOUNT",
        default_value = "kube-system:nodepulse"
    )]
    pub aggregator_service_account: String,
    /// Audience the agents' tokens are minted for.
    #[arg(long, env = "NODEPULSE_INGEST_AUDIENCE", default_value = "nodepulse")]
    pub ingest_audience: String,
    /// Accept agent tokens not bound to a node (such a stream may report any node).
    #[arg(long, env = "NODEPULSE_INGEST_ALLOW_UNBOUND_TOKENS")]
    pub ingest_allow_unbound_tokens: bool,
    /// Largest report accepted, bytes.
    #[arg(long, default_value_t = 16 << 20)]
    pub ingest_max_message_bytes: usize,
    /// Connections held at once on the ingest port (each agent holds one
    /// per replica).
    #[arg(
        long,
        env = "NODEPULSE_INGEST_MAX_CONNECTIONS",
        default_value_t = 20_000
    )]
    pub ingest_max_connections: usize,
    /// Connections held at once from one address on the ingest port.
    #[arg(
        long,
        env = "NODEPULSE_INGEST_MAX_CONNECTIONS_PER_PEER",
        default_value_t = 64
    )]
    pub ingest_max_connections_per_peer: usize,
    /// Serve a pod only once kube-apiserver says it is bound to the node
    /// whose agent reports it (one list of the node's pods, metadata only;
    /// needs `list` on pods). Off: every agent is trusted with the pods it
    /// names (development only).
    #[arg(
        long,
        env = "NODEPULSE_VERIFY_POD_BINDINGS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub verify_pod_bindings: bool,
    /// Threads that run the agents' streams (gRPC ingest and watch), apart
    /// from those that serve metrics.k8s.io. One thread takes a report with
    /// one wake-up; a pool of workers wakes more than one per report, which
    /// costs more CPU than the report itself at 15 s intervals.
    #[arg(
        long,
        env = "NODEPULSE_INGEST_THREADS",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub ingest_threads: u16,
    /// How long the ingest threads let reports gather before reading them:
    /// `auto`, or a Go duration or seconds (0 reads each as it arrives), at
    /// most 1s. Agents report at independent moments, so without it nearly
    /// every report wakes a thread on its own, and the wake-up costs more
    /// than the report. `auto` is a twentieth of the shortest interval the
    /// nodes report at, at least 50ms (50ms for agents at 1 s, 750ms at 15 s),
    /// and 50ms until nodes have reported twice. Everything the ingest port
    /// serves waits up to this long (reports, watch streams, other replicas'
    /// forwarding).
    #[arg(long, env = "NODEPULSE_INGEST_BATCH_WINDOW", default_value = "auto", value_parser = parse_batch_window)]
    pub ingest_batch_window: BatchWindow,
    /// Forget a node that has not reported for this long (Go duration or seconds).
    #[arg(long, env = "NODEPULSE_NODE_EVICTION", default_value = "60s", value_parser = parse_duration)]
    pub node_eviction: Duration,
}

impl IngestArgs {
    pub fn listen(&self) -> SocketAddr {
        SocketAddr::new(self.ingest_bind_address, self.ingest_port)
    }

    /// The ingest port's limits and timeouts.
    pub fn settings(&self) -> super::listener::Settings {
        let d = super::listener::Settings::default();
        super::listener::Settings {
            connections: crate::connections::Limits {
                max: self.ingest_max_connections.max(1),
                per_peer: self.ingest_max_connections_per_peer.max(1),
                pending: d
                    .connections
                    .pending
                    .min(self.ingest_max_connections.max(1)),
            },
            ..d
        }
    }

    /// `(namespace, name)` of the agents' ServiceAccount.
    pub fn agent_account(&self) -> Result<(&str, &str), String> {
        account("--agent-service-account", &self.agent_service_account)
    }

    /// `(namespace, name)` of the aggregator's own ServiceAccount.
    pub fn replica_account(&self) -> Result<(&str, &str), String> {
        account(
            "--aggregator-service-account",
            &self.aggregator_service_account,
        )
    }
}

fn account<'a>(flag: &str, value: &'a str) -> Result<(&'a str, &'a str), String> {
    value
        .split_once(':')
        .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
        .ok_or_else(|| format!("{flag} {value:?}: want namespace:name"))
}

fn parse_batch_window(s: &str) -> Result<BatchWindow, String> {
    if s == "auto" {
        return Ok(BatchWindow::Auto);
    }
    let window = parse_duration(s)?;
    if window > MAX_BATCH_WINDOW {
        return Err(format!("{s:?}: at most {MAX_BATCH_WINDOW:?}"));
    }
    Ok(BatchWindow::Fixed(window))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::time::parse_go_duration(s)
        .or_else(|_| {
            s.parse::<f64>()
                .map_err(|e| e.to_string())
                .and_then(|secs| Duration::try_from_secs_f64(secs).map_err(|e| e.to_string()))
        })
        .map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        ingest: IngestArgs,
    }

    fn window(args: &[&str]) -> Result<BatchWindow, clap::Error> {
        let argv = std::iter::once("nodepulse-aggregator").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|c| c.ingest.ingest_batch_window)
    }

    #[test]
    fn the_batch_window_is_auto_unless_set_and_at_most_a_second() {
        assert_eq!(window(&[]).expect("default"), BatchWindow::Auto);
        assert_eq!(
            window(&["--ingest-batch-window=auto"]).expect("auto"),
            BatchWindow::Auto
        );
        assert_eq!(
            window(&["--ingest-batch-window=0s"]).expect("off"),
            BatchWindow::Fixed(Duration::ZERO)
        );
        assert_eq!(
            window(&["--ingest-batch-window=0.2"]).expect("seconds"),
            BatchWindow::Fixed(Duration::from_millis(200))
        );
        assert_eq!(
            window(&["--ingest-batch-window=1s"]).expect("most"),
            BatchWindow::Fixed(MAX_BATCH_WINDOW)
        );
        for bad in ["1001ms", "5m", "-1s", "soon", "Auto"] {
            let error = window(&[&format!("--ingest-batch-window={bad}")]).expect_err(bad);
            assert!(error.to_string().contains(bad), "{bad}: {error}");
        }
    }
}
