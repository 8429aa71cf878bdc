//! The little of the Kubernetes API nodepulse calls itself: an HTTPS JSON
//! client with in-cluster or kubeconfig credentials ([`client`],
//! [`kubeconfig`]), and list-then-watch of a collection ([`client::KubeClient::watch`]).
//!
//! kube-rs would do all of this and much more, at a compile cost this
//! workspace does not want.
#![forbid(unsafe_code)]

pub mod client;
pub mod kubeconfig;

pub use client::{ClientSettings, Error, KubeClient, Result, Token, WatchEvent};
