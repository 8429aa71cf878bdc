//! Which replica reads which node's kubelet: rendezvous hashing over the
//! replicas the aggregator's Service lists ready, so each kubelet is read
//! once per interval cluster-wide; the reader forwards what it read to the
//! others, so each still holds the whole view.
//!
//! Every replica watches the same EndpointSlices, so all agree on the
//! reader of every node once the watch has settled. A replica not listed
//! ready reads nothing (the ready ones cover every node), unless none is
//! listed ready at all: then it reads every node, as with no split.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    pin::pin,
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use support::{
    backoff::WatchBackoff,
    changes::{Change, changes},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The replicas listed ready, and this one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Members {
    me: IpAddr,
    ready: BTreeSet<IpAddr>,
}

impl Members {
    pub fn new(me: IpAddr, ready: impl IntoIterator<Item = IpAddr>) -> Self {
        Self {
            me,
            ready: ready.into_iter().collect(),
        }
    }

    /// Whether this replica reads `node`'s kubelet.
    pub fn reads(&self, node: &str) -> bool {
        if !self.ready.contains(&self.me) {
            return self.ready.is_empty();
        }
        self.ready
            .iter()
            .max_by_key(|&&replica| (score(node, replica), replica))
            .is_some_and(|&reader| reader == self.me)
    }

    /// The other replicas listed ready: where what this one reads goes.
    pub fn others(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ready.iter().copied().filter(|&r| r != self.me)
    }
}

/// A node's weight at a replica: the highest reads it. Stable across
/// processes and versions (FNV-1a, then a 64-bit finaliser to spread
/// nearby inputs), as every replica must compute the same.
fn score(node: &str, replica: IpAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    node.bytes().for_each(&mut eat);
    eat(0xff);
    match replica {
        IpAddr::V4(ip) => ip.octets().into_iter().for_each(&mut eat),
        IpAddr::V6(ip) => ip.octets().into_iter().for_each(&mut eat),
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The ready addresses of one EndpointSlice (an endpoint without conditions
/// counts as ready, as the API says of an unset `ready`).
fn ready_in(slice: &EndpointSlice) -> Vec<IpAddr> {
    slice
        .endpoints
        .iter()
        .flatten()
        .filter(|e| {
            let c = e.conditions.as_ref();
            c.and_then(|c| c.ready).unwrap_or(true)
                && !c.and_then(|c| c.terminating).unwrap_or(false)
        })
        .flat_map(|e| &e.addresses)
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// Keeps `members` to the ready replicas of `service`'s EndpointSlices until
/// `cancel`.
pub async fn watch_members(
    client: Client,
    namespace: String,
    service: String,
    members: watch::Sender<Members>,
    cancel: CancellationToken,
) {
    let slices: Api<EndpointSlice> = Api::namespaced(client, &namespace);
    let config =
        watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
    let mut events = pin!(changes(
        watcher::watcher(slices, config).backoff(WatchBackoff::new(
            Duration::from_millis(500),
            Duration::from_secs(30),
        )),
        "endpointslices"
    ));
    let mut by_slice: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    let name = |s: &EndpointSlice| s.metadata.name.clone().unwrap_or_default();
    loop {
        let event = tokio::select! {
            event = events.next() => match event { Some(e) => e, None => return },
            () = cancel.cancelled() => return,
        };
        match event {
            Ok(Change::Listed(slices)) => {
                by_slice = slices.iter().map(|s| (name(s), ready_in(s))).collect();
            }
            Ok(Change::Applied(slice)) => {
                by_slice.insert(name(&slice), ready_in(&slice));
            }
            Ok(Change::Deleted(slice)) => {
                by_slice.remove(&name(&slice));
            }
            Err(e) => {
                warn!(error = %e, %service, "watching the replicas' EndpointSlices (trying again after a pause)");
                continue;
            }
        }
        let me = members.borrow().me;
        let now = Members::new(me, by_slice.values().flatten().copied());
        members.send_if_modified(|m| {
            if *m == now {
                return false;
            }
            info!(ready = ?now.ready, listed = now.ready.contains(&me), "replicas reading kubelets");
            *m = now;
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn nodes() -> Vec<String> {
        (0..1000).map(|i| format!("node-{i:05}")).collect()
    }

    /// Of three replicas each node has exactly one reader, and each reads
    /// about a third.
    #[test]
    fn every_node_has_one_reader_and_the_work_is_even() {
        let all = [ip(1), ip(2), ip(3)];
        let mut counts = [0usize; 3];
        for node in nodes() {
            let readers: Vec<usize> = (0..3)
                .filter(|&i| Members::new(all[i], all).reads(&node))
                .collect();
            assert_eq!(readers.len(), 1, "{node}: {readers:?}");
            counts[readers[0]] += 1;
        }
        for c in counts {
            assert!((250..420).contains(&c), "{counts:?}");
        }
    }

    /// A replica leaving moves only its own nodes; the others keep theirs.
    #[test]
    fn a_replica_leaving_moves_only_its_nodes() {
        let three = [ip(1), ip(2), ip(3)];
        let two = [ip(1), ip(2)];
        for node in nodes() {
            for me in two {
                let before = Members::new(me, three).reads(&node);
                let after = Members::new(me, two).reads(&node);
                let was_third = Members::new(ip(3), three).reads(&node);
                if !was_third {
                    assert_eq!(before, after, "{node} moved from {me}");
                }
            }
            assert!(two.iter().any(|&me| Members::new(me, two).reads(&node)));
        }
    }

    /// Not listed ready: nothing, while others are; everything when none is.
    #[test]
    fn an_unlisted_replica_reads_only_when_none_is_listed() {
        assert!(!Members::new(ip(9), [ip(1)]).reads("node-1"));
        assert!(Members::new(ip(9), []).reads("node-1"));
        assert_eq!(
            Members::new(ip(1), [ip(1), ip(2)])
                .others()
                .collect::<Vec<_>>(),
            [ip(2)]
        );
    }

    /// Fixed values (computed apart from this code): replicas of different
    /// builds must agree.
    #[test]
    fn the_score_is_stable() {
        assert_eq!(
            score("", IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            0x461d_c8fd_9d1f_20e2
        );
        assert_eq!(score("node-1", ip(1)), 0xd713_9c92_1741_71bd);
    }
}
