//! The two questions delegated auth asks kube-apiserver, as traits so tests
//! answer them with doubles: "who holds this token?" (`TokenReview`) and "may
//! this user do this?" (`SubjectAccessReview`). The real implementations POST
//! the review objects with the small [`KubeClient`].

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::User;
use crate::kube::client::{self, KubeClient};

/// A review could not be obtained (network, kube-apiserver error, bad answer).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The request to kube-apiserver failed.
    #[error(transparent)]
    Client(#[from] client::Error),
    /// A test double or another implementation failed for its own reason.
    #[error("{0}")]
    Other(String),
}

/// The answer to a `TokenReview`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenVerdict {
    /// The token is valid for this user.
    Authenticated(User),
    /// The token is not valid; the reviewer's error text, possibly empty.
    Rejected(String),
}

/// Asks who holds a bearer token.
pub trait TokenReviewer: Send + Sync + 'static {
    /// Reviews `token`. `Err` means no answer (not cached); a rejection is
    /// `Ok(TokenVerdict::Rejected)`.
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenVerdict, ReviewError>>;
}

/// The answer to a `SubjectAccessReview`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessVerdict {
    /// Whether the request is allowed.
    pub allowed: bool,
    /// The authorizer's reason (shown after `: ` in a 403 message).
    pub reason: String,
}

/// Asks whether a user may do something.
pub trait AccessReviewer: Send + Sync + 'static {
    /// Reviews `spec`. `Err` means no answer (the request gets a 500).
    fn review<'a>(
        &'a self,
        spec: &'a SubjectAccessReviewSpec,
    ) -> BoxFuture<'a, Result<AccessVerdict, ReviewError>>;
}

/// `authorization.k8s.io/v1` `ResourceAttributes`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct ResourceAttributes {
    /// Namespace; empty for cluster-scoped and all-namespace requests.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// `get`, `list`, `watch`, …
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub verb: String,
    /// API group, `metrics.k8s.io`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// API version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// `nodes` or `pods`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
    /// Subresource (none exist in this API).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subresource: String,
    /// Object name for item requests.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// `authorization.k8s.io/v1` `NonResourceAttributes`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct NonResourceAttributes {
    /// The URL path.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// The verb, `get` for reads.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub verb: String,
}

/// `authorization.k8s.io/v1` `SubjectAccessReviewSpec`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct SubjectAccessReviewSpec {
    /// For resource requests.
    #[serde(
        rename = "resourceAttributes",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub resource_attributes: Option<ResourceAttributes>,
    /// For non-resource requests.
    #[serde(
        rename = "nonResourceAttributes",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub non_resource_attributes: Option<NonResourceAttributes>,
    /// User name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Extra attributes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
    /// UID.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

#[derive(Serialize)]
struct Review<'a, S> {
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    kind: &'a str,
    spec: S,
}

#[derive(Serialize)]
struct TokenReviewSpec<'a> {
    token: &'a str,
    /// Audiences the token must be valid for; empty: the apiserver's own.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    audiences: &'a [String],
}

#[derive(Deserialize, Default)]
struct TokenReviewResponse {
    #[serde(default)]
    status: TokenReviewStatus,
}

#[derive(Deserialize, Default)]
struct TokenReviewStatus {
    #[serde(default)]
    authenticated: bool,
    #[serde(default)]
    user: TokenReviewUser,
    #[serde(default)]
    error: String,
}

#[derive(Deserialize, Default)]
struct TokenReviewUser {
    #[serde(default)]
    username: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    extra: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize, Default)]
struct AccessReviewResponse {
    #[serde(default)]
    status: AccessReviewStatus,
}

#[derive(Deserialize, Default)]
struct AccessReviewStatus {
    #[serde(default)]
    allowed: bool,
    #[serde(default)]
    reason: String,
    #[serde(default, rename = "evaluationError")]
    evaluation_error: String,
}

/// Path of the TokenReview collection.
pub const TOKEN_REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// Path of the SubjectAccessReview collection.
pub const ACCESS_REVIEW_PATH: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";

/// [`TokenReviewer`] that asks kube-apiserver (needs `system:auth-delegator`).
#[derive(Debug, Clone)]
pub struct KubeTokenReviewer {
    client: KubeClient,
    audiences: Vec<String>,
}

impl KubeTokenReviewer {
    /// Reviews through `client`, for the apiserver's own audiences.
    pub fn new(client: KubeClient) -> Self {
        KubeTokenReviewer {
            client,
            audiences: Vec::new(),
        }
    }

    /// Reviews tokens that must be valid for `audiences` (the agents' tokens
    /// are minted for the aggregator's audience, not the apiserver's).
    pub fn with_audiences(mut self, audiences: Vec<String>) -> Self {
        self.audiences = audiences;
        self
    }
}

impl TokenReviewer for KubeTokenReviewer {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenVerdict, ReviewError>> {
        Box::pin(async move {
            let body = Review {
                api_version: "authentication.k8s.io/v1",
                kind: "TokenReview",
                spec: TokenReviewSpec {
                    token,
                    audiences: &self.audiences,
                },
            };
            let response: TokenReviewResponse =
                self.client.post_json(TOKEN_REVIEW_PATH, &body).await?;
            let status = response.status;
            if !status.authenticated || status.user.username.is_empty() {
                return Ok(TokenVerdict::Rejected(status.error));
            }
            Ok(TokenVerdict::Authenticated(User {
                name: status.user.username,
                uid: status.user.uid,
                groups: status.user.groups,
                extra: status.user.extra,
            }))
        })
    }
}

/// [`AccessReviewer`] that asks kube-apiserver (needs `system:auth-delegator`).
#[derive(Debug, Clone)]
pub struct KubeAccessReviewer {
    client: KubeClient,
}

impl KubeAccessReviewer {
    /// Reviews through `client`.
    pub fn new(client: KubeClient) -> Self {
        KubeAccessReviewer { client }
    }
}

impl AccessReviewer for KubeAccessReviewer {
    fn review<'a>(
        &'a self,
        spec: &'a SubjectAccessReviewSpec,
    ) -> BoxFuture<'a, Result<AccessVerdict, ReviewError>> {
        Box::pin(async move {
            let body = Review {
                api_version: "authorization.k8s.io/v1",
                kind: "SubjectAccessReview",
                spec,
            };
            let response: AccessReviewResponse =
                self.client.post_json(ACCESS_REVIEW_PATH, &body).await?;
            let status = response.status;
            // Like the webhook authorizer: an evaluation error is logged, the
            // decision stands (allowed=false is a denial with the reason).
            if !status.evaluation_error.is_empty() {
                tracing::debug!(error = %status.evaluation_error, "SubjectAccessReview evaluation error");
            }
            Ok(AccessVerdict {
                allowed: status.allowed,
                reason: status.reason,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sar_spec_serialises_like_kubernetes() {
        let spec = SubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: "ns".to_owned(),
                verb: "list".to_owned(),
                group: "metrics.k8s.io".to_owned(),
                version: "v1beta1".to_owned(),
                resource: "pods".to_owned(),
                ..ResourceAttributes::default()
            }),
            user: "jane".to_owned(),
            groups: vec!["system:authenticated".to_owned()],
            ..SubjectAccessReviewSpec::default()
        };
        let body = Review {
            api_version: "authorization.k8s.io/v1",
            kind: "SubjectAccessReview",
            spec: &spec,
        };
        assert_eq!(
            serde_json::to_string(&body).expect("json"),
            r#"{"apiVersion":"authorization.k8s.io/v1","kind":"SubjectAccessReview","spec":{"resourceAttributes":{"namespace":"ns","verb":"list","group":"metrics.k8s.io","version":"v1beta1","resource":"pods"},"user":"jane","groups":["system:authenticated"]}}"#
        );
    }

    #[test]
    fn token_review_status_tolerates_missing_fields() {
        let r: TokenReviewResponse =
            serde_json::from_str(r#"{"status":{"authenticated":true,"user":{"username":"u"}}}"#)
                .expect("parses");
        assert!(r.status.authenticated);
        assert_eq!(r.status.user.username, "u");
        let r: TokenReviewResponse = serde_json::from_str("{}").expect("parses");
        assert!(!r.status.authenticated);
    }
}
