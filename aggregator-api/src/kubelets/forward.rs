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

use super::replicas::Members;

/// Forwarded nodes' streams one connection to a replica carries: half of
/// what the ingest takes at once on one, so a reader of thousands of nodes
/// holds tens of connections to each other replica, within the ingest's
/// per-address limit.
pub const STREAMS_PER_CONNECTION: usize = crate::ingest::MAX_STREAMS_PER_CONNECTION as usize / 2;

/// The replicas reads are split across, and how to reach their ingest.
#[derive(Clone)]
pub struct Peers {
    pub members: watch::Receiver<Members>,
    /// The exporter's settings; the targets go in per replica.
    pub export: export::Config,
    /// The others' ingest port (this replica's own).
    pub port: u16,
}

/// One node's forwarding, while this replica reads it.
pub struct Forwarder {
    peers: Peers,
    running: Option<Running>,
}

struct Running {
    /// The replicas its streams go to.
    replicas: Vec<IpAddr>,
    tx: watch::Sender<Option<Arc<Outgoing>>>,
    /// The metadata last sent, and its version.
    metadata: Arc<NodeMetadata>,
    version: u64,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Forwarder {
    pub fn new(peers: Peers) -> Self {
        Self {
            peers,
            running: None,
        }
    }

    /// Sends `report` (applied here; its metadata is `metadata`) to the
    /// other ready replicas, restarting the streams when they are others
    /// than before.
    pub fn send(
        &mut self,
        report: NodeReport,
        metadata: &Arc<NodeMetadata>,
        cancel: &CancellationToken,
    ) {
        let replicas: Vec<IpAddr> = self.peers.members.borrow().others().collect();
        if replicas.is_empty() {
            return self.stop();
        }
        if self
            .running
            .as_ref()
            .is_some_and(|r| r.replicas != replicas)
        {
            self.stop();
        }
        let running = self.running.get_or_insert_with(|| {
            let (tx, rx) = watch::channel(None);
            let cancel = cancel.child_token();
            let scheme = match self.peers.export.ca_file {
                Some(_) => "https",
                None => "http",
            };
            let targets = replicas
                .iter()
                .map(|&ip| format!("{scheme}://{}", SocketAddr::new(ip, self.peers.port)))
                .collect();
            let config = export::Config {
                targets: Targets::Static(targets),
                ..self.peers.export.clone()
            };
            let task = tokio::spawn(
                export::run(config, rx, cancel.clone()).instrument(tracing::Span::current()),
            );
            Running {
                replicas,
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
