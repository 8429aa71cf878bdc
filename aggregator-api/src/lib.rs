//! The aggregator: ingest of agent streams, the store of last/previous points,
//! the metrics.k8s.io API server and the consumer watch stream.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod auth;
pub mod binding;
pub mod compat;
pub mod config;
pub mod connections;
pub mod ingest;
pub mod kubelets;
pub mod server;
pub mod store;
pub mod stream;
pub mod time;
pub mod tls;
pub mod untrusted;
