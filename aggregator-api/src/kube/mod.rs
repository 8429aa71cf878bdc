//! The little of the Kubernetes API this server calls itself: the shared
//! HTTPS client (`kube-lite`) and the reloader of the authentication
//! ConfigMap ([`configmap`]). TokenReview and SubjectAccessReview live with the
//! authentication code that uses them (`auth::review`).

pub mod configmap;

pub use kube_lite::{KubeClient, client, kubeconfig};
