//! Connections shared by many streams to one aggregator replica. An agent
//! holds one stream per replica, each on its own connection; a replica that
//! forwards the nodes it reads from their kubelets holds one stream per node
//! to each other replica, and on a connection each, a replica reading more
//! nodes than the ingest takes from one address
//! (`--ingest-max-connections-per-peer`) would be refused the rest. Through
//! a pool, each connection carries up to `per_connection` streams (the
//! ingest takes 64 at once on one connection).
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use tonic::transport::Channel;

use crate::{Config, Result};

/// Connections to the replicas, by address, shared by the streams to each.
#[derive(Debug)]
pub struct Pool {
    per_connection: usize,
    peers: Mutex<HashMap<String, Arc<Peer>>>,
}

#[derive(Debug, Default)]
struct Peer {
    slots: Mutex<Vec<Slot>>,
    /// One connect at a time: streams starting together share the new one.
    connecting: tokio::sync::Mutex<()>,
    next_id: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct Slot {
    id: u64,
    channel: Channel,
    streams: usize,
}

/// A stream's share of a connection; the connection closes when its last
/// stream ends.
pub(crate) struct Lease {
    pool: Arc<Pool>,
    uri: String,
    peer: Arc<Peer>,
    id: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pool {
    /// `per_connection`: the most streams one connection carries (at least 1).
    pub fn new(per_connection: usize) -> Arc<Self> {
        Arc::new(Self {
            per_connection: per_connection.max(1),
            peers: Mutex::new(HashMap::new()),
        })
    }

    /// Connections open, to every replica.
    pub fn connections(&self) -> usize {
        lock(&self.peers)
            .values()
            .map(|p| lock(&p.slots).len())
            .sum()
    }

    /// A connection to `uri` with room for one more stream, opened if none
    /// has room.
    pub(crate) async fn lease(
        self: &Arc<Self>,
        config: &Config,
        uri: &str,
    ) -> Result<(Channel, Lease)> {
        let peer = Arc::clone(lock(&self.peers).entry(uri.to_owned()).or_default());
        if let Some(found) = self.room(&peer, uri) {
            return Ok(found);
        }
        let _connecting = peer.connecting.lock().await;
        if let Some(found) = self.room(&peer, uri) {
            return Ok(found);
        }
        let channel = crate::channel(config, uri).await?;
        let id = peer
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock(&peer.slots).push(Slot {
            id,
            channel: channel.clone(),
            streams: 1,
        });
        Ok((channel, self.lease_of(uri, Arc::clone(&peer), id)))
    }

    fn room(self: &Arc<Self>, peer: &Arc<Peer>, uri: &str) -> Option<(Channel, Lease)> {
        let mut slots = lock(&peer.slots);
        let slot = slots.iter_mut().find(|s| s.streams < self.per_connection)?;
        slot.streams += 1;
        let (channel, id) = (slot.channel.clone(), slot.id);
        drop(slots);
        Some((channel, self.lease_of(uri, Arc::clone(peer), id)))
    }

    fn lease_of(self: &Arc<Self>, uri: &str, peer: Arc<Peer>, id: u64) -> Lease {
        Lease {
            pool: Arc::clone(self),
            uri: uri.to_owned(),
            peer,
            id,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let empty = {
            let mut slots = lock(&self.peer.slots);
            if let Some(i) = slots.iter().position(|s| s.id == self.id) {
                slots[i].streams -= 1;
                if slots[i].streams == 0 {
                    // Its last stream: the connection closes with the channel.
                    slots.swap_remove(i);
                }
            }
            slots.is_empty()
        };
        if empty {
            let mut peers = lock(&self.pool.peers);
            // Forgotten unless another stream holds or awaits it (the map's
            // reference and this lease's are the two expected).
            if peers
                .get(&self.uri)
                .is_some_and(|p| Arc::ptr_eq(p, &self.peer) && Arc::strong_count(p) <= 2)
            {
                peers.remove(&self.uri);
            }
        }
    }
}
