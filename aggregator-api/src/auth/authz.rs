//! May this user do this: delegated authorization (contract §3.5).
//!
//! Members of `system:masters` and the health paths are always allowed (the
//! aggregator's availability probe and anonymous kubelet probes must never
//! depend on a round trip). Everything else is a `SubjectAccessReview`, with
//! allowed and denied answers cached separately (10 s each by default, like
//! the apiserver's `--authorization-webhook-cache-*-ttl`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::User;
use super::cache::{DEFAULT_CAPACITY, TtlCache};
use super::review::{
    AccessReviewer, NonResourceAttributes, ResourceAttributes, ReviewError, SubjectAccessReviewSpec,
};
use crate::api::status::AuthzTarget;

/// No decision could be made; the request gets a 500.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The SubjectAccessReview failed.
    #[error("authorization review failed: {0}")]
    Review(#[from] ReviewError),
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Paths allowed without review by default (`--authorization-always-allow-paths`).
pub const DEFAULT_ALWAYS_ALLOW_PATHS: &[&str] = &["/healthz", "/readyz", "/livez"];
/// Groups allowed without review.
pub const ALWAYS_ALLOW_GROUPS: &[&str] = &["system:masters"];

/// What a request asks to do, as the apiserver's `RequestInfo` derives it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Attributes {
    /// `/apis/{group}/{version}/…` with a resource.
    Resource {
        /// `get`, `list`, `watch`, `create`, …
        verb: String,
        /// Namespace, empty when none.
        namespace: String,
        /// API group.
        group: String,
        /// API version.
        version: String,
        /// Resource.
        resource: String,
        /// Subresource, empty when none.
        subresource: String,
        /// Object name, empty for collections.
        name: String,
    },
    /// Any other path.
    NonResource {
        /// Lower-case HTTP method.
        verb: String,
        /// URL path.
        path: String,
    },
}

impl Attributes {
    /// The verb.
    pub fn verb(&self) -> &str {
        match self {
            Attributes::Resource { verb, .. } | Attributes::NonResource { verb, .. } => verb,
        }
    }

    /// What a 403 message names.
    pub fn target(&self) -> AuthzTarget {
        match self.clone() {
            Attributes::Resource {
                namespace,
                group,
                resource,
                subresource,
                name,
                ..
            } => AuthzTarget::Resource {
                group,
                resource,
                subresource: (!subresource.is_empty()).then_some(subresource),
                namespace,
                name,
            },
            Attributes::NonResource { path, .. } => AuthzTarget::NonResource { path },
        }
    }

    fn review_spec(&self, user: &User) -> SubjectAccessReviewSpec {
        let mut spec = SubjectAccessReviewSpec {
            user: user.name.clone(),
            groups: user.groups.clone(),
            extra: user.extra.clone(),
            uid: user.uid.clone(),
            ..SubjectAccessReviewSpec::default()
        };
        match self.clone() {
            Attributes::Resource {
                verb,
                namespace,
                group,
                version,
                resource,
                subresource,
                name,
            } => {
                spec.resource_attributes = Some(ResourceAttributes {
                    namespace,
                    verb,
                    group,
                    version,
                    resource,
                    subresource,
                    name,
                });
            }
            Attributes::NonResource { verb, path } => {
                spec.non_resource_attributes = Some(NonResourceAttributes { path, verb });
            }
        }
        spec
    }
}

/// An authorization decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Denied (or no opinion); `reason` is appended to the 403 message.
    Deny {
        /// The authorizer's reason, possibly empty.
        reason: String,
    },
}

/// Decides requests, asking an [`AccessReviewer`] when no rule applies.
pub struct Authorizer {
    reviewer: Arc<dyn AccessReviewer>,
    always_allow_paths: Vec<String>,
    allowed_ttl: Duration,
    denied_ttl: Duration,
    cache: Mutex<TtlCache<SubjectAccessReviewSpec, Decision>>,
}

impl Authorizer {
    /// An authorizer with the default always-allowed paths and 10 s caches.
    pub fn new(reviewer: Arc<dyn AccessReviewer>) -> Self {
        Authorizer {
            reviewer,
            always_allow_paths: DEFAULT_ALWAYS_ALLOW_PATHS
                .iter()
                .map(|p| (*p).to_owned())
                .collect(),
            allowed_ttl: Duration::from_secs(10),
            denied_ttl: Duration::from_secs(10),
            cache: Mutex::new(TtlCache::new(DEFAULT_CAPACITY)),
        }
    }

    /// Replaces the always-allowed paths; a trailing `*` matches a prefix.
    pub fn with_always_allow_paths(mut self, paths: Vec<String>) -> Self {
        self.always_allow_paths = paths;
        self
    }

    /// Sets the cache lifetimes of allowed and denied answers.
    pub fn with_cache_ttls(mut self, allowed: Duration, denied: Duration) -> Self {
        self.allowed_ttl = allowed;
        self.denied_ttl = denied;
        self
    }

    /// Whether `path` is allowed for everyone, without review.
    pub fn path_always_allowed(&self, path: &str) -> bool {
        self.always_allow_paths
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => path.starts_with(prefix),
                None => path == pattern,
            })
    }

    /// Decides whether `user` may do `attributes`.
    pub async fn authorize(&self, user: &User, attributes: &Attributes) -> Result<Decision> {
        if user
            .groups
            .iter()
            .any(|g| ALWAYS_ALLOW_GROUPS.contains(&g.as_str()))
        {
            return Ok(Decision::Allow);
        }
        if let Attributes::NonResource { path, .. } = attributes
            && self.path_always_allowed(path)
        {
            return Ok(Decision::Allow);
        }
        let spec = attributes.review_spec(user);
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&spec, Instant::now());
        if let Some(decision) = cached {
            return Ok(decision);
        }
        let verdict = self.reviewer.review(&spec).await?;
        let (decision, ttl) = if verdict.allowed {
            (Decision::Allow, self.allowed_ttl)
        } else {
            (
                Decision::Deny {
                    reason: verdict.reason,
                },
                self.denied_ttl,
            )
        };
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(
            spec,
            decision.clone(),
            ttl,
            Instant::now(),
        );
        Ok(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::review::AccessVerdict;
    use futures::future::BoxFuture;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting {
        calls: AtomicUsize,
        allow: bool,
    }

    impl AccessReviewer for Counting {
        fn review<'a>(
            &'a self,
            _spec: &'a SubjectAccessReviewSpec,
        ) -> BoxFuture<'a, std::result::Result<AccessVerdict, ReviewError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let allow = self.allow;
            Box::pin(async move {
                Ok(AccessVerdict {
                    allowed: allow,
                    reason: "because".to_owned(),
                })
            })
        }
    }

    fn user(groups: &[&str]) -> User {
        User {
            name: "jane".to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..User::default()
        }
    }

    fn nodes_list() -> Attributes {
        Attributes::Resource {
            verb: "list".to_owned(),
            namespace: String::new(),
            group: "metrics.k8s.io".to_owned(),
            version: "v1beta1".to_owned(),
            resource: "nodes".to_owned(),
            subresource: String::new(),
            name: String::new(),
        }
    }

    #[tokio::test]
    async fn masters_and_health_paths_skip_review() {
        let reviewer = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            allow: false,
        });
        let authz = Authorizer::new(reviewer.clone());
        assert_eq!(
            authz
                .authorize(&user(&["system:masters"]), &nodes_list())
                .await
                .expect("decides"),
            Decision::Allow
        );
        let health = Attributes::NonResource {
            verb: "get".to_owned(),
            path: "/readyz".to_owned(),
        };
        assert_eq!(
            authz.authorize(&user(&[]), &health).await.expect("decides"),
            Decision::Allow
        );
        assert_eq!(reviewer.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn answers_are_cached() {
        let reviewer = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            allow: false,
        });
        let authz = Authorizer::new(reviewer.clone());
        for _ in 0..3 {
            assert_eq!(
                authz
                    .authorize(&user(&[]), &nodes_list())
                    .await
                    .expect("decides"),
                Decision::Deny {
                    reason: "because".to_owned()
                }
            );
        }
        assert_eq!(reviewer.calls.load(Ordering::SeqCst), 1);
        let other = user(&["dev"]);
        authz
            .authorize(&other, &nodes_list())
            .await
            .expect("decides");
        assert_eq!(
            reviewer.calls.load(Ordering::SeqCst),
            2,
            "key includes groups"
        );
    }

    #[tokio::test]
    async fn zero_ttl_disables_the_cache() {
        let reviewer = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            allow: true,
        });
        let authz =
            Authorizer::new(reviewer.clone()).with_cache_ttls(Duration::ZERO, Duration::ZERO);
        authz
            .authorize(&user(&[]), &nodes_list())
            .await
            .expect("decides");
        authz
            .authorize(&user(&[]), &nodes_list())
            .await
            .expect("decides");
        assert_eq!(reviewer.calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn path_patterns() {
        let authz = Authorizer::new(Arc::new(Counting {
            calls: AtomicUsize::new(0),
            allow: false,
        }))
        .with_always_allow_paths(vec!["/healthz".to_owned(), "/debug/*".to_owned()]);
        assert!(authz.path_always_allowed("/healthz"));
        assert!(!authz.path_always_allowed("/healthz/ping"));
        assert!(authz.path_always_allowed("/debug/pprof"));
        assert!(!authz.path_always_allowed("/readyz"));
    }
}
