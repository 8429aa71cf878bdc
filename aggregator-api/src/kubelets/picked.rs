//! The nodes this replica serves from their kubelets, with each one's
//! capacity from its Node object: the only nodes another replica may
//! forward to it (read from their kubelets in its stead), and what bounds
//! their figures.
use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
};

use crate::store::Capacity;

#[derive(Debug, Default)]
pub struct Picked(RwLock<HashMap<Arc<str>, Option<Capacity>>>);

impl Picked {
    /// `node` is served from its kubelet, bounded by `capacity` (None where
    /// its Node says none).
    pub fn insert(&self, node: Arc<str>, capacity: Option<Capacity>) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node, capacity);
    }

    pub fn remove(&self, node: &str) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(node);
    }

    /// `Some(capacity)` when `node` is served from its kubelet.
    pub fn capacity(&self, node: &str) -> Option<Option<Capacity>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(node)
            .copied()
    }
}
