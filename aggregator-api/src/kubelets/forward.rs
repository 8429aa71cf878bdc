//! What this replica read from a node's kubelet, sent on to the other
//! replicas through the agents' own exporter, one stream per replica: they
//! take it as their own read ([`crate::ingest`], for the nodes they pick
//! too), so each holds the whole view while the kubelet is read once.
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use export::{Outgoing, Targets};
use proto::v1::{NodeMetadata, NodeReport};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// One node's forwarding, while this replica reads it.
pub struct Forwarder {
    /// How to reach the others; their addresses go in per replica.
    config: export::Config,
    port: u16,
    running: Option<Running>,
}

struct Running {
    targets: Vec<String>,
    tx: watch::Sender<Option<Arc<Outgoing>>>,
    /// The metadata last sent, and its version.
    metadata: Arc<NodeMetadata>,
    version: u64,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Forwarder {
    /// `port`: the others' ingest port (this replica's own).
    pub fn new(config: export::Config, port: u16) -> Self {
        Self {
            config,
            port,
            running: None,
        }
    }

    /// Sends `report` (applied here; its metadata is `metadata`) to
    /// `replicas`, restarting the streams when they are others than before.
    pub fn send(
        &mut self,
        report: NodeReport,
        metadata: &Arc<NodeMetadata>,
        replicas: impl IntoIterator<Item = IpAddr>,
        cancel: &CancellationToken,
    ) {
        let scheme = match self.config.ca_file {
            Some(_) => "https",
            None => "http",
        };
        let targets: Vec<String> = replicas
            .into_iter()
            .map(|ip| format!("{scheme}://{}", SocketAddr::new(ip, self.port)))
            .collect();
        if targets.is_empty() {
            return self.stop();
        }
        if self.running.as_ref().is_some_and(|r| r.targets != targets) {
            self.stop();
        }
        let running = self.running.get_or_insert_with(|| {
            let (tx, rx) = watch::channel(None);
            let cancel = cancel.child_token();
            let config = export::Config {
                targets: Targets::Static(targets.clone()),
                ..self.config.clone()
            };
            let task = tokio::spawn(
                export::run(config, rx, cancel.clone()).instrument(tracing::Span::current()),
            );
            Running {
                targets,
                tx,
                metadata: Arc::clone(metadata),
                version: 0,
                cancel,
                task,
            }
        });
        if !Arc::ptr_eq(&running.metadata, metadata) {
            running.metadata = Arc::clone(metadata);
            running.version += 1;
        }
        running.tx.send_replace(Some(Arc::new(Outgoing {
            report,
            metadata: Arc::clone(metadata),
            metadata_version: running.version,
        })));
    }

    /// This replica no longer reads the node: the streams end.
    pub fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.cancel.cancel();
            // It ends at the cancel; nothing waits for it.
            drop(r.task);
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop();
    }
}
