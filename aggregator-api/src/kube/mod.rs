//! The little of the Kubernetes API this server calls itself: an HTTPS JSON
//! client with in-cluster or kubeconfig credentials ([`client`],
//! [`kubeconfig`]) and the reloader of the authentication ConfigMap
//! ([`configmap`]). TokenReview and SubjectAccessReview live with the
//! authentication code that uses them (`auth::review`).

pub mod client;
pub mod configmap;
pub mod kubeconfig;

pub use client::KubeClient;
