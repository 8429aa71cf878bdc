//! Delegated authentication and authorization, as every aggregated API server
//! does it: trust the CAs kube-apiserver publishes, believe the front proxy's
//! `X-Remote-*` headers when its certificate proves it, and ask kube-apiserver
//! about tokens and permissions (contract §3).
//!
//! - [`config`]: the trusted CAs and header names, swappable at runtime.
//! - [`configmap`]: keeps them in step with kube-apiserver's
//!   `extension-apiserver-authentication` ConfigMap and the flags' CA files.
//! - [`flags`]: the `--client-ca-file` / `--requestheader-*` / cache flags.
//! - [`authn`]: the authentication order (request-header, client cert,
//!   token, anonymous).
//! - [`authz`]: always-allow rules, SubjectAccessReview and its cache.
//! - [`review`]: the TokenReview / SubjectAccessReview traits and their
//!   kube-apiserver implementations.

pub mod authn;
pub mod authz;
pub(crate) mod cache;
pub mod config;
pub mod configmap;
pub mod flags;
pub mod review;
pub mod x509;

use std::collections::BTreeMap;

pub use authn::{Authenticated, Authenticator};
pub use authz::{Attributes, Authorizer, Decision};
pub use config::{AuthConfig, AuthConfigHandle};
pub use review::{AccessReviewer, TokenReviewer};

/// The anonymous user's name.
pub const ANONYMOUS_USER: &str = "system:anonymous";
/// The anonymous user's group.
pub const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";
/// The group every authenticated user gets.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

/// An authenticated identity (`user.Info`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct User {
    /// User name.
    pub name: String,
    /// UID, empty when unknown.
    pub uid: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes (e.g. the pod a ServiceAccount token is bound to).
    pub extra: BTreeMap<String, Vec<String>>,
}
