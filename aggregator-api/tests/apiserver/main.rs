//! In-process tests of the metrics.k8s.io HTTPS server: every path of both
//! versions through a real TLS client, delegated authentication with a PKI
//! made in the test, and the kube-apiserver client against a fake
//! kube-apiserver. Servers bind 127.0.0.1:0; nothing sleeps for readiness.

mod api;
mod auth;
mod floods;
mod ingest_tls;
mod kube;
mod protobuf;
mod support;
