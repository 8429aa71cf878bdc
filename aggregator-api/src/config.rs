//! Command line of the aggregator, with metrics-server's flag names and
//! defaults (its `cmd/metrics-server/app/options` plus the generic
//! apiserver's secure-serving and delegated-auth options), validated into a
//! typed [`Config`].
//!
//! Defaults are the flags' defaults, not the shipped manifests': port 443 as
//! in metrics-server (its manifests pass `--secure-port=10250`). The one
//! exception is `--metric-resolution`, whose meaning differs here: 15 s, what
//! metrics-server's manifests and chart pass. Its flags that mean nothing
//! here are accepted and ignored ([`crate::compat`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::api::selector::LabelSelector;
use crate::auth::flags::AuthFlags;
use crate::compat::IgnoredFlags;
use crate::server::ServerLimits;
use crate::time::duration_arg;
use crate::tls::{TlsPolicy, policy::PolicyError};

/// A flag combination that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Only one of the serving certificate and key was given.
    #[error("--tls-cert-file and --tls-private-key-file must be given together")]
    HalfCertificate,
    /// `--node-selector` does not parse.
    #[error("--node-selector")]
    NodeSelector(#[from] crate::api::selector::Error),
    /// `--metric-resolution` is zero.
    #[error("--metric-resolution must be greater than zero")]
    Resolution,
    /// `--max-connections` is zero.
    #[error("--max-connections must be at least 1")]
    MaxConnections,
    /// `--tls-min-version` or `--tls-cipher-suites` cannot be used.
    #[error(transparent)]
    Tls(#[from] PolicyError),
}

/// The aggregator's flags.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "nodepulse-aggregator",
    version,
    about = "Serves metrics.k8s.io from agent-reported usage, as a drop-in for metrics-server"
)]
pub struct Args {
    /// HTTPS port.
    #[arg(long, env = "NODEPULSE_SECURE_PORT", default_value_t = 443)]
    pub secure_port: u16,

    /// Address to listen on.
    #[arg(long, env = "NODEPULSE_BIND_ADDRESS", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub bind_address: IpAddr,

    /// Serving certificate (PEM, leaf first); reloaded when the file changes.
    #[arg(long, env = "NODEPULSE_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// Serving certificate's private key (PEM).
    #[arg(long, env = "NODEPULSE_TLS_PRIVATE_KEY_FILE")]
    pub tls_private_key_file: Option<PathBuf>,

    /// Where a self-signed certificate is written when no --tls-cert-file is
    /// given.
    #[arg(
        long,
        env = "NODEPULSE_CERT_DIR",
        default_value = "apiserver.local.config/certificates"
    )]
    pub cert_dir: PathBuf,

    /// Extra DNS names or IPs for the self-signed certificate (besides
    /// localhost and 127.0.0.1), e.g. `metrics-server.kube-system.svc`.
    #[arg(long, env = "NODEPULSE_SELF_SIGNED_NAMES", value_delimiter = ',')]
    pub self_signed_names: Vec<String>,

    /// kubeconfig for kube-apiserver; in-cluster credentials when absent.
    #[arg(long, env = "NODEPULSE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// How long a node's metrics are still served after its agent last
    /// reported: this long, or three of the agent's reporting windows if that
    /// is longer (Go duration, not zero). metrics-server drops a node whose
    /// scrape failed, so its metrics are at most one resolution old; agents
    /// here push every `--interval` (1 s by default), so this only bounds
    /// how stale a silent node's metrics may get. The default is what
    /// metrics-server's manifests and chart pass.
    #[arg(long, env = "NODEPULSE_METRIC_RESOLUTION", default_value = "15s", value_parser = duration_arg)]
    pub metric_resolution: Duration,

    /// Only nodes whose labels match are served, with their pods (label
    /// selector syntax); reports from other nodes are taken and dropped.
    #[arg(short = 'l', long, env = "NODEPULSE_NODE_SELECTOR", default_value = "")]
    pub node_selector: String,

    /// After a shutdown signal, report not-ready for this long before
    /// closing the listener, so endpoints are updated first.
    #[arg(long, env = "NODEPULSE_SHUTDOWN_DELAY_DURATION", default_value = "0s", value_parser = duration_arg)]
    pub shutdown_delay_duration: Duration,

    /// Connections held at once on the metrics.k8s.io port.
    #[arg(long, env = "NODEPULSE_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Connections held at once from one address on that port.
    #[arg(
        long,
        env = "NODEPULSE_MAX_CONNECTIONS_PER_PEER",
        default_value_t = 256
    )]
    pub max_connections_per_peer: usize,

    /// The lowest TLS version offered on both ports, as Go names it
    /// (`VersionTLS12`, `VersionTLS13`; `VersionTLS10` and `VersionTLS11` are
    /// met with TLS 1.2).
    #[arg(long, env = "NODEPULSE_TLS_MIN_VERSION")]
    pub tls_min_version: Option<String>,

    /// TLS 1.2 cipher suites offered on both ports, by their Go names
    /// (comma-separated; TLS 1.3 suites are always offered, as in Go).
    #[arg(long, env = "NODEPULSE_TLS_CIPHER_SUITES", value_delimiter = ',')]
    pub tls_cipher_suites: Vec<String>,

    /// Delegated authentication and authorization.
    #[command(flatten)]
    pub auth: AuthFlags,

    /// metrics-server's flags that have no meaning here.
    #[command(flatten)]
    pub ignored: IgnoredFlags,
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServingSource {
    /// `--tls-cert-file` / `--tls-private-key-file`.
    Files {
        /// Certificate.
        cert: PathBuf,
        /// Key.
        key: PathBuf,
    },
    /// Self-signed in `--cert-dir`.
    SelfSigned {
        /// Directory.
        dir: PathBuf,
        /// Extra SANs.
        names: Vec<String>,
    },
}

/// Validated configuration of the API server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Serving certificate.
    pub serving: ServingSource,
    /// kubeconfig, or in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// The longest a silent node's metrics are served (`--metric-resolution`).
    pub metric_resolution: Duration,
    /// What both listeners offer.
    pub tls: TlsPolicy,
    /// Node filter.
    pub node_selector: LabelSelector,
    /// Auth flags.
    pub auth: AuthFlags,
    /// Not-ready period before the listener closes.
    pub shutdown_delay: Duration,
    /// Server limits.
    pub limits: ServerLimits,
}

impl Args {
    /// Validates the flags.
    pub fn into_config(self) -> Result<Config, Error> {
        let serving = match (self.tls_cert_file, self.tls_private_key_file) {
            (Some(cert), Some(key)) => ServingSource::Files { cert, key },
            (None, None) => ServingSource::SelfSigned {
                dir: self.cert_dir,
                names: self.self_signed_names,
            },
            _ => return Err(Error::HalfCertificate),
        };
        if self.metric_resolution.is_zero() {
            return Err(Error::Resolution);
        }
        if self.max_connections == 0 || self.max_connections_per_peer == 0 {
            return Err(Error::MaxConnections);
        }
        Ok(Config {
            listen: SocketAddr::new(self.bind_address, self.secure_port),
            serving,
            kubeconfig: self.kubeconfig,
            metric_resolution: self.metric_resolution,
            tls: TlsPolicy::from_flags(self.tls_min_version.as_deref(), &self.tls_cipher_suites)?,
            node_selector: LabelSelector::parse(&self.node_selector)?,
            auth: self.auth,
            shutdown_delay: self.shutdown_delay_duration,
            limits: {
                let d = ServerLimits::default();
                ServerLimits {
                    connections: crate::connections::Limits {
                        max: self.max_connections,
                        per_peer: self.max_connections_per_peer,
                        pending: d.connections.pending.min(self.max_connections),
                    },
                    ..d
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(args: &[&str]) -> Result<Config, Error> {
        let mut argv = vec!["nodepulse-aggregator"];
        argv.extend_from_slice(args);
        Args::try_parse_from(argv).expect("parses").into_config()
    }

    #[test]
    fn defaults_mirror_metrics_server_and_its_manifests() {
        let c = config(&[]).expect("valid");
        assert_eq!(c.listen, "0.0.0.0:443".parse().expect("addr"));
        assert_eq!(c.metric_resolution, Duration::from_secs(15));
        assert_eq!(
            c.serving,
            ServingSource::SelfSigned {
                dir: PathBuf::from("apiserver.local.config/certificates"),
                names: Vec::new()
            }
        );
        assert!(c.node_selector.is_empty());
        assert_eq!(c.limits, ServerLimits::default());
    }

    #[test]
    fn manifest_style_flags() {
        let c = config(&[
            "--secure-port=10250",
            "--cert-dir=/tmp",
            "--metric-resolution=15s",
            "--node-selector=kubernetes.io/os=linux",
            "--kubeconfig=/etc/kube/config",
            "--requestheader-allowed-names=front-proxy-client",
        ])
        .expect("valid");
        assert_eq!(c.listen.port(), 10250);
        assert_eq!(c.metric_resolution, Duration::from_secs(15));
        assert!(!c.node_selector.is_empty());
        assert_eq!(c.auth.requestheader_allowed_names, ["front-proxy-client"]);
    }

    #[test]
    fn invalid_combinations_are_rejected() {
        assert!(matches!(
            config(&["--tls-cert-file=/a"]),
            Err(Error::HalfCertificate)
        ));
        assert!(matches!(
            config(&["--node-selector=a in"]),
            Err(Error::NodeSelector(_))
        ));
        assert!(matches!(
            config(&["--metric-resolution=0s"]),
            Err(Error::Resolution)
        ));
    }
}
