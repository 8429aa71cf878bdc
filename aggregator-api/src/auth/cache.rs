//! A small bounded cache with a time-to-live per entry, for TokenReview and
//! SubjectAccessReview answers.
//!
//! Why: the HPA asks every 15 s per scaled workload and `kubectl top` in
//! loops; without a cache each request costs a round trip to kube-apiserver.
//! Kubernetes' delegated authenticator and authorizer cache for 10 s, success
//! and failure alike, and so does this. The bound keeps a flood of distinct
//! tokens or users from growing memory without limit.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Entries kept at most, per cache.
pub const DEFAULT_CAPACITY: usize = 4096;

/// A map whose entries expire. Not synchronised: callers wrap it in a mutex
/// and never hold the lock across an await.
#[derive(Debug)]
pub struct TtlCache<K, V> {
    entries: HashMap<K, (V, Instant)>,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    /// An empty cache holding at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        TtlCache {
            entries: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The value for `key` if it has not expired at `now`.
    pub fn get(&mut self, key: &K, now: Instant) -> Option<V> {
        match self.entries.get(key) {
            Some((value, expires)) if *expires > now => Some(value.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Stores `value` until `now + ttl`. A zero TTL stores nothing. When full,
    /// expired entries go first, then the one closest to expiry.
    pub fn insert(&mut self, key: K, value: V, ttl: Duration, now: Instant) {
        if ttl.is_zero() {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.retain(|_, (_, expires)| *expires > now);
            if self.entries.len() >= self.capacity {
                let soonest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, expires))| *expires)
                    .map(|(k, _)| k.clone());
                if let Some(k) = soonest {
                    self.entries.remove(&k);
                }
            }
        }
        self.entries.insert(key, (value, now + ttl));
    }

    /// Number of entries, expired ones included until they are noticed.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache holds nothing.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire() {
        let start = Instant::now();
        let mut cache = TtlCache::new(8);
        cache.insert("a", 1, Duration::from_secs(10), start);
        assert_eq!(cache.get(&"a", start + Duration::from_secs(9)), Some(1));
        assert_eq!(cache.get(&"a", start + Duration::from_secs(10)), None);
        assert!(cache.is_empty(), "an expired entry is dropped when seen");
    }

    #[test]
    fn zero_ttl_caches_nothing() {
        let now = Instant::now();
        let mut cache = TtlCache::new(8);
        cache.insert("a", 1, Duration::ZERO, now);
        assert_eq!(cache.get(&"a", now), None);
    }

    #[test]
    fn capacity_is_a_hard_bound() {
        let start = Instant::now();
        let mut cache = TtlCache::new(3);
        for i in 0..10u64 {
            cache.insert(i, i, Duration::from_secs(100 + i), start);
            assert!(cache.len() <= 3);
        }
        assert_eq!(cache.get(&9, start), Some(9), "newest kept");
        assert_eq!(cache.get(&0, start), None, "soonest to expire evicted");
    }

    #[test]
    fn expired_entries_are_evicted_first() {
        let start = Instant::now();
        let mut cache = TtlCache::new(2);
        cache.insert("short", 1, Duration::from_secs(1), start);
        cache.insert("long", 2, Duration::from_secs(100), start);
        cache.insert(
            "new",
            3,
            Duration::from_secs(50),
            start + Duration::from_secs(5),
        );
        let later = start + Duration::from_secs(6);
        assert_eq!(cache.get(&"long", later), Some(2));
        assert_eq!(cache.get(&"new", later), Some(3));
    }
}
