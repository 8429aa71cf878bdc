//! Flags of the kubelet side: which nodes are read from their kubelet, and
//! how a kubelet is reached. The reaching flags are metrics-server's own,
//! with its defaults, so a metrics-server Deployment's args keep working.
use std::{net::IpAddr, path::PathBuf, time::Duration};

use http::Uri;
use k8s_openapi::api::core::v1::Node;
use kubelet::{KubeletConfig, resource_url};

use crate::{api::selector::LabelSelector, time::duration_arg};

/// In-cluster credentials, used when present and no other is given (as
/// metrics-server uses its own in-cluster config for kubelets).
const SERVICE_ACCOUNT_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// A node annotation naming another path than `/metrics/resource`
/// (metrics-server's `metrics.k8s.io/resource-metrics-path`).
pub const METRICS_PATH_ANNOTATION: &str = "metrics.k8s.io/resource-metrics-path";

/// The scrape interval's floor: the kubelet's own resolution.
pub const MIN_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, clap::Args)]
pub struct KubeletArgs {
    /// Nodes read from their kubelet instead of an agent (label selector
    /// syntax; repeat the flag, or separate with `;`, for more: a node
    /// matching any is read). The
    /// defaults are the nodes the agent's DaemonSet does not run on: Windows
    /// nodes and virtual kubelets. An empty value reads no kubelet at all.
    #[arg(
        long = "kubelet-node-selector",
        env = "NODEPULSE_KUBELET_NODE_SELECTOR",
        default_values_t = ["kubernetes.io/os=windows".to_owned(), "type=virtual-kubelet".to_owned()],
        value_delimiter = ';'
    )]
    pub kubelet_node_selectors: Vec<String>,
    /// Also read the kubelet of any node whose agent has not reported for
    /// this long (Go duration; a node never reported counts from when it is
    /// first seen), until its agent reports again. Off by default; adds one
    /// watch of every Node.
    #[arg(long, env = "NODEPULSE_KUBELET_FALLBACK_AFTER", value_parser = duration_arg)]
    pub kubelet_fallback_after: Option<Duration>,
    /// How often each of those kubelets is read (not below 10s, the
    /// kubelet's own resolution); default: --metric-resolution.
    #[arg(long, env = "NODEPULSE_KUBELET_SCRAPE_INTERVAL", value_parser = duration_arg)]
    pub kubelet_scrape_interval: Option<Duration>,
    /// Kubelets read at once.
    #[arg(
        long,
        env = "NODEPULSE_KUBELET_SCRAPE_CONCURRENCY",
        default_value_t = 64
    )]
    pub kubelet_scrape_concurrency: usize,
    /// The kubelet port, where --kubelet-use-node-status-port is not given or
    /// the Node does not say.
    #[arg(long, default_value_t = 10250)]
    pub kubelet_port: u16,
    /// Use the port in the Node's status (`daemonEndpoints.kubeletEndpoint`).
    #[arg(long, default_missing_value = "true", num_args = 0..=1, require_equals = true, action = clap::ArgAction::Set, default_value_t = false)]
    pub kubelet_use_node_status_port: bool,
    /// Node address types, first match wins (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "Hostname,InternalDNS,InternalIP,ExternalDNS,ExternalIP"
    )]
    pub kubelet_preferred_address_types: Vec<String>,
    /// CA bundle that signs the kubelets' serving certificates (default: the
    /// in-cluster CA).
    #[arg(long)]
    pub kubelet_certificate_authority: Option<PathBuf>,
    /// Do not verify the kubelets' serving certificates. For testing only.
    #[arg(long, default_missing_value = "true", num_args = 0..=1, require_equals = true, action = clap::ArgAction::Set, default_value_t = false)]
    pub kubelet_insecure_tls: bool,
    /// Client certificate for the kubelets (PEM), with --kubelet-client-key.
    #[arg(long, requires = "kubelet_client_key")]
    pub kubelet_client_certificate: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, requires = "kubelet_client_certificate")]
    pub kubelet_client_key: Option<PathBuf>,
    /// Bearer token for the kubelets, re-read on every scrape (default: the
    /// in-cluster ServiceAccount token).
    #[arg(long, env = "NODEPULSE_KUBELET_TOKEN_FILE")]
    pub kubelet_token_file: Option<PathBuf>,
    /// Bound on one kubelet read: connect, handshake, request and body.
    #[arg(long, default_value = "10s", value_parser = duration_arg)]
    pub kubelet_request_timeout: Duration,
    /// Split the kubelet reads across the replicas this Service of the
    /// aggregator lists ready (its EndpointSlices, in
    /// --kubelet-replicas-namespace): each kubelet is read by one replica,
    /// which forwards what it read to the others' ingest port. Unset: every
    /// replica reads every kubelet.
    #[arg(long, env = "NODEPULSE_KUBELET_REPLICAS_SERVICE")]
    pub kubelet_replicas_service: Option<String>,
    /// The namespace of that Service (the DaemonSet passes the pod's).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    pub kubelet_replicas_namespace: String,
    /// This replica's address as the Service lists it (the pod's IP).
    #[arg(long, env = "POD_IP")]
    pub kubelet_replica_ip: Option<IpAddr>,
    /// Token presented to the other replicas: the aggregator's
    /// ServiceAccount, minted for the ingest audience (re-read per stream).
    #[arg(long, env = "NODEPULSE_KUBELET_REPLICA_TOKEN_FILE")]
    pub kubelet_replica_token_file: Option<PathBuf>,
    /// CA bundle of the replicas' ingest certificates (unset: plain text,
    /// for development only).
    #[arg(long, env = "NODEPULSE_KUBELET_REPLICA_CA_FILE")]
    pub kubelet_replica_ca_file: Option<PathBuf>,
    /// Name to verify in the replicas' ingest certificates.
    #[arg(long, env = "NODEPULSE_KUBELET_REPLICA_SERVER_NAME")]
    pub kubelet_replica_server_name: Option<String>,
}

/// What is wrong with the kubelet flags.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--kubelet-node-selector {selector:?}: {reason}")]
    Selector { selector: String, reason: String },
    #[error(
        "--kubelet-preferred-address-types: unknown type {0:?} (Hostname, InternalDNS, InternalIP, ExternalDNS, ExternalIP)"
    )]
    AddressType(String),
    #[error("--kubelet-certificate-authority and --kubelet-insecure-tls: pick one")]
    ConflictingTrust,
    #[error("--kubelet-scrape-concurrency must be at least 1")]
    Concurrency,
    #[error("--kubelet-request-timeout must be positive")]
    Timeout,
    #[error("--kubelet-fallback-after must be positive")]
    Fallback,
    #[error(
        "--kubelet-replicas-service needs --kubelet-replica-ip (the pod's IP: env POD_IP from status.podIP)"
    )]
    ReplicaIp,
}

/// Reads split across replicas (`--kubelet-replicas-service`).
#[derive(Clone, Debug)]
pub struct Split {
    pub service: String,
    pub namespace: String,
    /// This replica, as the Service lists it.
    pub me: IpAddr,
    /// How to reach the others' ingest: their address and port are filled
    /// in per replica.
    pub export: export::Config,
}

/// The flags, checked.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Label selectors, each as kube-apiserver takes it; empty: no kubelet
    /// is read.
    pub selectors: Vec<String>,
    /// Read nodes whose agent has been silent this long.
    pub fallback_after: Option<Duration>,
    pub interval: Duration,
    pub concurrency: usize,
    pub split: Option<Split>,
    port: u16,
    use_node_status_port: bool,
    address_types: Vec<String>,
    ca_file: Option<PathBuf>,
    insecure: bool,
    client_certificate: Option<(PathBuf, PathBuf)>,
    token_file: Option<PathBuf>,
    timeout: Duration,
}

const ADDRESS_TYPES: [&str; 5] = [
    "Hostname",
    "InternalDNS",
    "InternalIP",
    "ExternalDNS",
    "ExternalIP",
];

fn existing(path: &str) -> Option<PathBuf> {
    let path = PathBuf::from(path);
    path.exists().then_some(path)
}

impl KubeletArgs {
    /// Checks the flags; `resolution` is `--metric-resolution`, the default
    /// interval.
    pub fn settings(&self, resolution: Duration) -> Result<Settings, Error> {
        let mut selectors = Vec::new();
        for s in self.kubelet_node_selectors.iter().map(|s| s.trim()) {
            if s.is_empty() {
                continue;
            }
            LabelSelector::parse(s).map_err(|e| Error::Selector {
                selector: s.to_owned(),
                reason: e.to_string(),
            })?;
            selectors.push(s.to_owned());
        }
        // `--kubelet-node-selector=` alone: none.
        if self
            .kubelet_node_selectors
            .iter()
            .any(|s| s.trim().is_empty())
        {
            selectors.clear();
        }
        if let Some(t) = self
            .kubelet_preferred_address_types
            .iter()
            .find(|t| !ADDRESS_TYPES.contains(&t.as_str()))
        {
            return Err(Error::AddressType(t.clone()));
        }
        if self.kubelet_certificate_authority.is_some() && self.kubelet_insecure_tls {
            return Err(Error::ConflictingTrust);
        }
        if self.kubelet_scrape_concurrency == 0 {
            return Err(Error::Concurrency);
        }
        if self.kubelet_request_timeout.is_zero() {
            return Err(Error::Timeout);
        }
        if self.kubelet_fallback_after.is_some_and(|d| d.is_zero()) {
            return Err(Error::Fallback);
        }
        let ca_file = match (
            &self.kubelet_certificate_authority,
            self.kubelet_insecure_tls,
        ) {
            (Some(path), _) => Some(path.clone()),
            (None, false) => existing(SERVICE_ACCOUNT_CA),
            (None, true) => None,
        };
        if self.kubelet_insecure_tls {
            kubelet::client::warn_insecure("every node read from its kubelet");
        }
        let split = match (&self.kubelet_replicas_service, self.kubelet_replica_ip) {
            (None, _) => None,
            (Some(_), None) => return Err(Error::ReplicaIp),
            (Some(service), Some(me)) => Some(Split {
                service: service.clone(),
                namespace: self.kubelet_replicas_namespace.clone(),
                me,
                export: export::Config {
                    ca_file: self.kubelet_replica_ca_file.clone(),
                    tls_server_name: self.kubelet_replica_server_name.clone(),
                    token_file: self.kubelet_replica_token_file.clone(),
                    ..export::Config::default()
                },
            }),
        };
        Ok(Settings {
            selectors,
            fallback_after: self.kubelet_fallback_after,
            interval: self
                .kubelet_scrape_interval
                .unwrap_or(resolution)
                .max(MIN_INTERVAL),
            concurrency: self.kubelet_scrape_concurrency,
            split,
            port: self.kubelet_port,
            use_node_status_port: self.kubelet_use_node_status_port,
            address_types: self.kubelet_preferred_address_types.clone(),
            ca_file,
            insecure: self.kubelet_insecure_tls,
            client_certificate: self
                .kubelet_client_certificate
                .clone()
                .zip(self.kubelet_client_key.clone()),
            token_file: self
                .kubelet_token_file
                .clone()
                .or_else(|| existing(SERVICE_ACCOUNT_TOKEN)),
            timeout: self.kubelet_request_timeout,
        })
    }
}

/// Why a node's kubelet has no URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("no address of the types {0:?} in the Node's status")]
    NoAddress(Vec<String>),
    #[error("the Node's {kind} address {address:?} with port {port} makes no URL")]
    Bad {
        kind: String,
        address: String,
        port: u16,
    },
}

impl Settings {
    /// The node's `/metrics/resource` URL, as metrics-server builds it: the
    /// first address of the preferred types, the status port or
    /// `--kubelet-port`, and the node's metrics-path annotation.
    pub fn url(&self, node: &Node) -> Result<Uri, AddressError> {
        let status = node.status.as_ref();
        let addresses = status
            .and_then(|s| s.addresses.as_deref())
            .unwrap_or_default();
        let address = self
            .address_types
            .iter()
            .find_map(|t| addresses.iter().find(|a| &a.type_ == t))
            .ok_or_else(|| AddressError::NoAddress(self.address_types.clone()))?;
        let status_port = status
            .and_then(|s| s.daemon_endpoints.as_ref())
            .and_then(|d| d.kubelet_endpoint.as_ref())
            .and_then(|e| u16::try_from(e.port).ok())
            .filter(|&p| p != 0);
        let port = match status_port {
            Some(p) if self.use_node_status_port => p,
            _ => self.port,
        };
        let path = node
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(METRICS_PATH_ANNOTATION))
            .filter(|p| p.starts_with('/'))
            .map_or("/metrics/resource", String::as_str);
        let bad = || AddressError::Bad {
            kind: address.type_.clone(),
            address: address.address.clone(),
            port,
        };
        let host = match address.address.parse::<std::net::IpAddr>() {
            Ok(ip) => resource_url((ip, port).into())
                .map_err(|_| bad())?
                .authority()
                .map(|a| a.as_str().to_owned())
                .ok_or_else(bad)?,
            Err(_) => format!("{}:{port}", address.address),
        };
        Uri::builder()
            .scheme("https")
            .authority(host)
            .path_and_query(path)
            .build()
            .map_err(|_| bad())
    }

    /// The client settings for a kubelet at `url`.
    pub fn client(&self, url: Uri) -> KubeletConfig {
        let mut config = KubeletConfig::new(url);
        config.ca_file = self.ca_file.clone();
        config.insecure = self.insecure;
        config.token_file = self.token_file.clone();
        config.client_certificate = self.client_certificate.clone();
        config.user_agent = concat!("nodepulse-aggregator/", env!("CARGO_PKG_VERSION")).to_owned();
        config.timeout = self.timeout;
        config
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use k8s_openapi::api::core::v1::{
        DaemonEndpoint, NodeAddress, NodeDaemonEndpoints, NodeStatus,
    };

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        k: KubeletArgs,
    }

    fn settings(args: &[&str]) -> Result<Settings, Error> {
        let cli =
            Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).expect("parses");
        cli.k.settings(Duration::from_secs(15))
    }

    fn node(addresses: &[(&str, &str)], status_port: i32) -> Node {
        Node {
            status: Some(NodeStatus {
                addresses: Some(
                    addresses
                        .iter()
                        .map(|(t, a)| NodeAddress {
                            type_: (*t).into(),
                            address: (*a).into(),
                        })
                        .collect(),
                ),
                daemon_endpoints: Some(NodeDaemonEndpoints {
                    kubelet_endpoint: Some(DaemonEndpoint { port: status_port }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn reads_are_split_only_when_asked_and_with_this_replicas_address() {
        assert!(settings(&[]).expect("valid").split.is_none());
        assert!(matches!(
            settings(&["--kubelet-replicas-service=nodepulse"]),
            Err(Error::ReplicaIp)
        ));
        let s = settings(&[
            "--kubelet-replicas-service=nodepulse",
            "--kubelet-replica-ip=10.0.0.7",
            "--kubelet-replica-ca-file=/ca.crt",
        ])
        .expect("valid");
        let split = s.split.expect("split");
        assert_eq!(split.me.to_string(), "10.0.0.7");
        assert_eq!(
            (split.service.as_str(), split.namespace.as_str()),
            ("nodepulse", "kube-system")
        );
        assert_eq!(
            split.export.ca_file.as_deref(),
            Some(std::path::Path::new("/ca.crt"))
        );
    }

    #[test]
    fn defaults_read_windows_and_virtual_nodes_every_resolution() {
        let s = settings(&[]).expect("valid");
        assert_eq!(
            s.selectors,
            ["kubernetes.io/os=windows", "type=virtual-kubelet"]
        );
        assert_eq!(s.interval, Duration::from_secs(15));
        assert_eq!(s.fallback_after, None, "no fallback unless asked");
        let s =
            settings(&["--kubelet-node-selector=", "--kubelet-fallback-after=1m"]).expect("valid");
        assert!(s.selectors.is_empty());
        assert_eq!(s.fallback_after, Some(Duration::from_secs(60)));
        assert!(matches!(
            settings(&["--kubelet-fallback-after=0s"]),
            Err(Error::Fallback)
        ));
        let s = settings(&["--kubelet-scrape-interval=1s"]).expect("valid");
        assert_eq!(
            s.interval, MIN_INTERVAL,
            "never below the kubelet's resolution"
        );
        assert!(matches!(
            settings(&["--kubelet-node-selector=a in b"]),
            Err(Error::Selector { .. })
        ));
        assert!(matches!(
            settings(&["--kubelet-preferred-address-types=InternalIP,Nowhere"]),
            Err(Error::AddressType(t)) if t == "Nowhere"
        ));
        assert!(matches!(
            settings(&[
                "--kubelet-insecure-tls",
                "--kubelet-certificate-authority=/ca.crt"
            ]),
            Err(Error::ConflictingTrust)
        ));
    }

    #[test]
    fn urls_as_metrics_server_builds_them() {
        let s =
            settings(&["--kubelet-preferred-address-types=InternalIP,Hostname"]).expect("valid");
        let n = node(&[("Hostname", "node-a"), ("InternalIP", "10.0.0.7")], 10255);
        assert_eq!(
            s.url(&n).expect("url").to_string(),
            "https://10.0.0.7:10250/metrics/resource"
        );
        let s = settings(&[
            "--kubelet-preferred-address-types=InternalIP",
            "--kubelet-use-node-status-port",
        ])
        .expect("valid");
        assert_eq!(
            s.url(&n).expect("url").to_string(),
            "https://10.0.0.7:10255/metrics/resource"
        );
        let v6 = node(&[("InternalIP", "fd00::7")], 0);
        assert_eq!(
            s.url(&v6).expect("url").to_string(),
            "https://[fd00::7]:10250/metrics/resource"
        );
        let s = settings(&[]).expect("valid");
        let mut n = node(&[("Hostname", "node-a")], 0);
        n.metadata.annotations =
            Some([(METRICS_PATH_ANNOTATION.to_owned(), "/stats/x".to_owned())].into());
        assert_eq!(
            s.url(&n).expect("url").to_string(),
            "https://node-a:10250/stats/x"
        );
        assert_eq!(
            s.url(&node(&[], 0)),
            Err(AddressError::NoAddress(
                ADDRESS_TYPES.map(String::from).to_vec()
            ))
        );
    }
}
