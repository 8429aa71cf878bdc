//! The two questions delegated auth asks kube-apiserver, as traits so tests
//! answer them with doubles: "who holds this token?" (`TokenReview`) and "may
//! this user do this?" (`SubjectAccessReview`). The real implementations
//! create the review objects (k8s-openapi's types) with kube-rs.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use k8s_openapi::api::{authentication::v1 as authn, authorization::v1 as authz};
use kube::Client;
use kube::api::{Api, PostParams};
use serde::{Deserialize, Serialize};

use super::User;

/// A review could not be obtained (network, kube-apiserver error, bad answer).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The request to kube-apiserver failed.
    #[error(transparent)]
    Client(#[from] kube::Error),
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

impl From<&SubjectAccessReviewSpec> for authz::SubjectAccessReview {
    fn from(spec: &SubjectAccessReviewSpec) -> Self {
        let some = |s: &String| (!s.is_empty()).then(|| s.clone());
        authz::SubjectAccessReview {
            spec: authz::SubjectAccessReviewSpec {
                resource_attributes: spec.resource_attributes.as_ref().map(|r| {
                    authz::ResourceAttributes {
                        namespace: some(&r.namespace),
                        verb: some(&r.verb),
                        group: some(&r.group),
                        version: some(&r.version),
                        resource: some(&r.resource),
                        subresource: some(&r.subresource),
                        name: some(&r.name),
                        ..Default::default()
                    }
                }),
                non_resource_attributes: spec.non_resource_attributes.as_ref().map(|n| {
                    authz::NonResourceAttributes {
                        path: some(&n.path),
                        verb: some(&n.verb),
                    }
                }),
                user: some(&spec.user),
                groups: (!spec.groups.is_empty()).then(|| spec.groups.clone()),
                extra: (!spec.extra.is_empty()).then(|| spec.extra.clone()),
                uid: some(&spec.uid),
            },
            ..Default::default()
        }
    }
}

/// What a TokenReview's answer says; anything missing is a rejection.
fn token_verdict(review: authn::TokenReview) -> TokenVerdict {
    let status = review.status.unwrap_or_default();
    let user = status.user.unwrap_or_default();
    let name = user.username.unwrap_or_default();
    if status.authenticated != Some(true) || name.is_empty() {
        return TokenVerdict::Rejected(status.error.unwrap_or_default());
    }
    TokenVerdict::Authenticated(User {
        name,
        uid: user.uid.unwrap_or_default(),
        groups: user.groups.unwrap_or_default(),
        extra: user.extra.unwrap_or_default(),
    })
}

/// [`TokenReviewer`] that asks kube-apiserver (needs `system:auth-delegator`).
#[derive(Debug, Clone)]
pub struct KubeTokenReviewer {
    client: Api<authn::TokenReview>,
    audiences: Vec<String>,
}

impl KubeTokenReviewer {
    /// Reviews through `client`, for the apiserver's own audiences.
    pub fn new(client: Client) -> Self {
        KubeTokenReviewer {
            client: Api::all(client),
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
            let review = authn::TokenReview {
                spec: authn::TokenReviewSpec {
                    token: token.to_owned(),
                    audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
                },
                ..Default::default()
            };
            let answer = self.client.create(&PostParams::default(), &review).await?;
            Ok(token_verdict(answer))
        })
    }
}

/// [`AccessReviewer`] that asks kube-apiserver (needs `system:auth-delegator`).
#[derive(Debug, Clone)]
pub struct KubeAccessReviewer {
    client: Api<authz::SubjectAccessReview>,
}

impl KubeAccessReviewer {
    /// Reviews through `client`.
    pub fn new(client: Client) -> Self {
        KubeAccessReviewer {
            client: Api::all(client),
        }
    }
}

impl AccessReviewer for KubeAccessReviewer {
    fn review<'a>(
        &'a self,
        spec: &'a SubjectAccessReviewSpec,
    ) -> BoxFuture<'a, Result<AccessVerdict, ReviewError>> {
        Box::pin(async move {
            let review = authz::SubjectAccessReview::from(spec);
            let answer = self.client.create(&PostParams::default(), &review).await?;
            let status = answer.status.unwrap_or_default();
            // Like the webhook authorizer: an evaluation error is logged, the
            // decision stands (allowed=false is a denial with the reason).
            if let Some(error) = status.evaluation_error.filter(|e| !e.is_empty()) {
                tracing::debug!(%error, "SubjectAccessReview evaluation error");
            }
            Ok(AccessVerdict {
                allowed: status.allowed,
                reason: status.reason.unwrap_or_default(),
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
        let body = serde_json::to_value(authz::SubjectAccessReview::from(&spec)).expect("json");
        assert_eq!(
            body,
            serde_json::json!({
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "metadata": {},
                "spec": {
                    "resourceAttributes": {"namespace": "ns", "verb": "list", "group": "metrics.k8s.io", "version": "v1beta1", "resource": "pods"},
                    "user": "jane",
                    "groups": ["system:authenticated"]
                }
            })
        );
    }

    #[test]
    fn token_review_status_tolerates_missing_fields() {
        let review =
            |json: &str| -> authn::TokenReview { serde_json::from_str(json).expect("parses") };
        assert_eq!(
            token_verdict(review(
                r#"{"spec":{},"status":{"authenticated":true,"user":{"username":"u"}}}"#
            )),
            TokenVerdict::Authenticated(User {
                name: "u".into(),
                ..User::default()
            })
        );
        assert_eq!(
            token_verdict(review("{}")),
            TokenVerdict::Rejected(String::new())
        );
    }
}
