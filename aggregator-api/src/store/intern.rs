//! Shared copies of the strings that repeat across a fleet: namespaces,
//! label keys and values, container names. 300,000 pods spread over a few
//! thousand Deployments carry a few thousand distinct strings; each is kept
//! once and every pod holds a pointer to it.
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
};

/// A node's or pod's labels: interned pairs sorted by key, one allocation,
/// handed to responses as they are.
pub use crate::api::Labels;

/// The set of interned strings. Only metadata (a stream's first report and
/// changes) goes through it, never the per-sample path.
#[derive(Debug, Default)]
pub struct Interner(Mutex<HashSet<Arc<str>>>);

/// The locked set: intern many strings under one lock.
pub struct Strings<'a>(MutexGuard<'a, HashSet<Arc<str>>>);

impl Interner {
    pub fn lock(&self) -> Strings<'_> {
        Strings(self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Forgets strings nothing else holds any more.
    pub fn sweep(&self) {
        self.lock().0.retain(|s| Arc::strong_count(s) > 1);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().0.len()
    }
}

impl Strings<'_> {
    pub fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.0.get(s) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(s);
        self.0.insert(Arc::clone(&shared));
        shared
    }

    pub fn labels(&mut self, labels: &HashMap<String, String>) -> Labels {
        let mut pairs: Vec<_> = labels
            .iter()
            .map(|(k, v)| (self.get(k), self.get(v)))
            .collect();
        pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Labels::from_sorted(pairs.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn equal_strings_share_one_copy_until_unused() {
        let interner = Interner::default();
        let (a, b) = {
            let mut s = interner.lock();
            (s.get("kube-system"), s.get("kube-system"))
        };
        assert!(Arc::ptr_eq(&a, &b));
        let labels = interner.lock().labels(
            &[
                ("tier".to_string(), "web".to_string()),
                ("app".to_string(), "kube-system".to_string()),
            ]
            .into(),
        );
        assert_eq!(&*labels.pairs()[0].0, "app", "sorted by key");
        assert!(Arc::ptr_eq(&labels.pairs()[0].1, &a));
        assert_eq!(
            labels.to_map(),
            BTreeMap::from([
                ("app".to_string(), "kube-system".to_string()),
                ("tier".to_string(), "web".to_string())
            ])
        );
        assert_eq!(interner.len(), 4);
        drop((a, b));
        interner.sweep();
        assert_eq!(interner.len(), 4, "still used by the labels");
        drop(labels);
        interner.sweep();
        assert_eq!(interner.len(), 0);
    }
}
