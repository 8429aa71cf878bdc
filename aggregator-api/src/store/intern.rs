//! Shared copies of the strings that repeat across a fleet: namespaces,
//! label keys and values, container names. 300,000 pods spread over a few
//! thousand Deployments carry a few thousand distinct strings; each is kept
//! once and every pod holds a pointer to it. So are whole label sets: the
//! pods of one Deployment (or DaemonSet) carry the same labels, so they hold
//! one array between them.
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
};

/// A node's or pod's labels: interned pairs sorted by key, one allocation,
/// handed to responses as they are.
pub use crate::api::Labels;

type Pairs = Arc<[(Arc<str>, Arc<str>)]>;

/// The interned strings and label sets. Only metadata (a stream's first
/// report and changes) goes through it, never the per-sample path.
#[derive(Debug, Default)]
pub struct Interner(Mutex<Sets>);

#[derive(Debug, Default)]
struct Sets {
    strings: HashSet<Arc<str>>,
    labels: HashSet<Pairs>,
}

/// The locked sets: intern many strings under one lock.
pub struct Strings<'a>(MutexGuard<'a, Sets>);

impl Interner {
    pub fn lock(&self) -> Strings<'_> {
        Strings(self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Forgets label sets and strings nothing else holds any more.
    pub fn sweep(&self) {
        let mut sets = self.lock();
        // Sets first: a set let go lets go of its strings.
        sets.0.labels.retain(|s| Arc::strong_count(s) > 1);
        sets.0.strings.retain(|s| Arc::strong_count(s) > 1);
    }

    /// Strings and label sets held.
    #[cfg(test)]
    pub fn len(&self) -> (usize, usize) {
        let sets = self.lock();
        (sets.0.strings.len(), sets.0.labels.len())
    }
}

impl Strings<'_> {
    pub fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.0.strings.get(s) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(s);
        self.0.strings.insert(Arc::clone(&shared));
        shared
    }

    pub fn labels(&mut self, labels: &HashMap<String, String>) -> Labels {
        let mut pairs: Vec<_> = labels
            .iter()
            .map(|(k, v)| (self.get(k), self.get(v)))
            .collect();
        pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let shared = match self.0.labels.get(pairs.as_slice()) {
            Some(shared) => Arc::clone(shared),
            None => {
                let shared: Pairs = pairs.into();
                self.0.labels.insert(Arc::clone(&shared));
                shared
            }
        };
        Labels::from_sorted(shared)
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
        assert_eq!(interner.len(), (4, 1));
        drop((a, b));
        interner.sweep();
        assert_eq!(interner.len(), (4, 1), "still used by the labels");
        drop(labels);
        interner.sweep();
        assert_eq!(interner.len(), (0, 0));
    }

    #[test]
    fn equal_label_sets_share_one_array_until_unused() {
        let interner = Interner::default();
        let map = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let web = map(&[("app", "web"), ("pod-template-hash", "7c9f5b6d4")]);
        let (a, b, other) = {
            let mut s = interner.lock();
            (
                s.labels(&web),
                s.labels(&web.clone()),
                s.labels(&map(&[("app", "web")])),
            )
        };
        let same = |x: &Labels, y: &Labels| std::ptr::eq(x.pairs(), y.pairs());
        assert!(same(&a, &b), "one array for equal sets");
        assert!(!same(&a, &other), "a set is shared only with equal ones");
        assert_eq!(a.to_map(), b.to_map());
        assert_eq!(interner.len(), (4, 2));
        drop((a, other));
        interner.sweep();
        assert_eq!(interner.len(), (4, 1), "still used by b");
        let c = interner.lock().labels(&web);
        assert!(same(&b, &c), "found again after a sweep");
        drop((b, c));
        interner.sweep();
        assert_eq!(interner.len(), (0, 0));
    }
}
