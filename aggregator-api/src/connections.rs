//! What a listener lets in: at most `max` connections at once, at most
//! `per_peer` from one address, and at most `pending` still in their
//! handshake. Both listeners (metrics.k8s.io and ingest) admit every
//! accepted connection here before they do any work for it.
//!
//! A flood of connections that never finish their handshake (raw sockets
//! left open, a TLS ClientHello dribbled byte by byte) would otherwise fill
//! every slot until their timeouts run out and lock everyone else out. So a
//! connection is *pending* until its owner says it is established, and when
//! the pending budget or the whole listener is full, the oldest pending
//! connection is closed to make room: an honest client finishes its
//! handshake in milliseconds, long before a flood reaches it; an attacker
//! must keep opening connections faster than honest clients arrive, and one
//! address can hold only `per_peer` of them.
use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use support::process::family_values;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The limits of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections held at once, established or not.
    pub max: usize,
    /// Connections from one peer address.
    pub per_peer: usize,
    /// Connections not yet established (in their handshake).
    pub pending: usize,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its address already holds `per_peer` connections.
    PerPeer,
    /// The listener holds `max` established connections.
    Full,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub refused_per_peer: AtomicU64,
    pub refused_full: AtomicU64,
    /// Pending connections closed to make room for newer ones.
    pub evicted: AtomicU64,
    /// Connections whose handshake failed or timed out.
    pub handshake_failed: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    open: usize,
    by_peer: HashMap<IpAddr, usize>,
    /// Pending connections, oldest first: (id, what closes it).
    pending: VecDeque<(u64, CancellationToken)>,
    next_id: u64,
}

/// The admission state of one listener. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Connections {
    limits: Limits,
    /// Names the listener in `/metrics` (`metrics`, `ingest`).
    name: &'static str,
    state: Arc<Mutex<State>>,
    stats: Arc<Stats>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    peer: IpAddr,
    established: bool,
    evicted: CancellationToken,
    owner: Connections,
}

impl Connections {
    pub fn new(name: &'static str, limits: Limits) -> Self {
        Self {
            limits: Limits {
                max: limits.max.max(1),
                per_peer: limits.per_peer.max(1),
                pending: limits.pending.max(1),
            },
            name,
            state: Arc::default(),
            stats: Arc::default(),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.lock().open
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update below is complete before the lock is released.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `peer`, closing the oldest pending one when
    /// that makes room; `Err` when it must be closed at once.
    pub fn admit(&self, peer: IpAddr) -> Result<Ticket, Refused> {
        let mut s = self.lock();
        if s.by_peer.get(&peer).copied().unwrap_or(0) >= self.limits.per_peer {
            self.stats.refused_per_peer.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::PerPeer);
        }
        if s.pending.len() >= self.limits.pending || s.open >= self.limits.max {
            match s.pending.pop_front() {
                // Its ticket still counts until its task sees the
                // cancellation and drops it (within one poll).
                Some((_, oldest)) => {
                    oldest.cancel();
                    self.stats.evicted.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    self.stats.refused_full.fetch_add(1, Ordering::Relaxed);
                    return Err(Refused::Full);
                }
            }
        }
        let id = s.next_id;
        s.next_id += 1;
        s.open += 1;
        *s.by_peer.entry(peer).or_insert(0) += 1;
        let evicted = CancellationToken::new();
        s.pending.push_back((id, evicted.clone()));
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(Ticket {
            id,
            peer,
            established: false,
            evicted,
            owner: self.clone(),
        })
    }

    /// Prometheus text of this listener's figures.
    pub fn render(&self, out: &mut String) {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (open, pending) = {
            let s = self.lock();
            (s.open, s.pending.len())
        };
        let l = self.name;
        family_values(
            out,
            &format!("nodepulse_{l}_connections"),
            "gauge",
            "Connections held now, and those still in their handshake.",
            [("{state=\"open\"}", open), ("{state=\"pending\"}", pending)],
        );
        family_values(
            out,
            &format!("nodepulse_{l}_connections_total"),
            "counter",
            "Connections by what became of them at the door.",
            [
                ("accepted", &self.stats.accepted),
                ("refused_per_peer", &self.stats.refused_per_peer),
                ("refused_full", &self.stats.refused_full),
                ("evicted_pending", &self.stats.evicted),
                ("handshake_failed", &self.stats.handshake_failed),
            ]
            .map(|(result, c)| (format!("{{result=\"{result}\"}}"), n(c))),
        );
    }
}

impl Ticket {
    /// The handshake is done: the connection no longer counts as pending
    /// and is never evicted.
    pub fn established(&mut self) {
        if !self.established {
            self.established = true;
            let mut s = self.owner.lock();
            s.pending.retain(|(id, _)| *id != self.id);
        }
    }

    /// Resolves when the connection was evicted to make room.
    pub fn evicted(&self) -> WaitForCancellationFutureOwned {
        self.evicted.clone().cancelled_owned()
    }

    /// Counts a failed or timed-out handshake.
    pub fn handshake_failed(&self) {
        self.owner
            .stats
            .handshake_failed
            .fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut s = self.owner.lock();
        s.open -= 1;
        if let Some(n) = s.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                s.by_peer.remove(&self.peer);
            }
        }
        if !self.established {
            s.pending.retain(|(id, _)| *id != self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn one_peer_cannot_take_more_than_its_share() {
        let c = Connections::new(
            "t",
            Limits {
                max: 100,
                per_peer: 2,
                pending: 100,
            },
        );
        let a = c.admit(ip(1)).expect("first");
        let _b = c.admit(ip(1)).expect("second");
        assert_eq!(c.admit(ip(1)).err(), Some(Refused::PerPeer));
        assert!(c.admit(ip(2)).is_ok(), "others are unaffected");
        drop(a);
        assert!(
            c.admit(ip(1)).is_ok(),
            "a closed connection frees its place"
        );
    }

    #[test]
    fn the_oldest_pending_connection_makes_room() {
        let c = Connections::new(
            "t",
            Limits {
                max: 3,
                per_peer: 10,
                pending: 2,
            },
        );
        let mut honest = c.admit(ip(1)).expect("admitted");
        honest.established();
        let stall1 = c.admit(ip(2)).expect("admitted");
        let stall2 = c.admit(ip(2)).expect("admitted");
        // Pending is full: the oldest stalled one goes.
        let newcomer = c.admit(ip(3)).expect("admitted by evicting");
        assert!(stall1.evicted.is_cancelled());
        assert!(!stall2.evicted.is_cancelled());
        drop(stall1);
        assert_eq!(c.open(), 3);
        // Full: the next evicts the oldest pending again, never the
        // established one.
        let _late = c.admit(ip(4)).expect("admitted by evicting");
        assert!(stall2.evicted.is_cancelled());
        assert!(!honest.evicted.is_cancelled());
        drop(stall2);
        drop(newcomer);
        assert_eq!(c.stats().evicted.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn full_of_established_connections_refuses() {
        let c = Connections::new(
            "t",
            Limits {
                max: 1,
                per_peer: 10,
                pending: 10,
            },
        );
        let mut t = c.admit(ip(1)).expect("admitted");
        t.established();
        assert_eq!(c.admit(ip(2)).err(), Some(Refused::Full));
        let mut text = String::new();
        c.render(&mut text);
        assert!(text.contains("nodepulse_t_connections_total{result=\"refused_full\"} 1"));
        assert!(text.contains("nodepulse_t_connections{state=\"open\"} 1"));
    }
}
