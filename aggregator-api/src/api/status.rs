//! Every error the API answers, and the one place it becomes a Kubernetes
//! `Status` body (house rule: errors turn into a `Status` at exactly one place).
//!
//! Messages, reasons and details reproduce apimachinery's constructors
//! (`k8s.io/apimachinery/pkg/api/errors`: `NewNotFound`, `NewForbidden`,
//! `NewBadRequest`, `NewUnauthorized`, `NewMethodNotSupported`,
//! `NewInternalError`) and the apiserver's `forbiddenMessage`
//! (`endpoints/handlers/responsewriters/errors.go`) as metrics-server returns
//! them, because kubectl prints the message verbatim and scripts match on it.

use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{GROUP, Resource, go_quote, negotiate, selector, table};

/// What a request is denied on: the authorizer's attributes as the message
/// needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthzTarget {
    /// A resource request (`/apis/metrics.k8s.io/...`).
    Resource {
        /// API group, `metrics.k8s.io`.
        group: String,
        /// Resource, `nodes` or `pods`.
        resource: String,
        /// Subresource, if any (none exist in this API).
        subresource: Option<String>,
        /// Namespace; empty for cluster-scoped or all-namespaces requests.
        namespace: String,
        /// Object name; empty for collection requests.
        name: String,
    },
    /// A non-resource request (`/apis`, `/openapi/v2`, …).
    NonResource {
        /// The request path.
        path: String,
    },
}

/// Every error answer of the API. `Display` is the `Status` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// `GET …/nodes/{name}` for a node the informer does not know.
    #[error("node {} not found", go_quote(.name))]
    NodeNotFound {
        /// Requested node.
        name: String,
    },
    /// The node exists but has no metrics (yet).
    #[error("nodemetrics.metrics.k8s.io {} not found", go_quote(.name))]
    NodeMetricsNotFound {
        /// Requested node.
        name: String,
    },
    /// The pod is unknown or not Running.
    #[error("pods {} not found", go_quote(.name))]
    PodNotFound {
        /// Namespace of the request (not part of the message, as upstream).
        namespace: String,
        /// Requested pod.
        name: String,
    },
    /// The pod is Running but has no complete metrics (yet).
    #[error("podmetrics.metrics.k8s.io {} not found", quoted_pod_key(.namespace, .name))]
    PodMetricsNotFound {
        /// Pod namespace.
        namespace: String,
        /// Pod name.
        name: String,
    },
    /// A path this server does not serve (the generic apiserver's 404 text).
    #[error("the server could not find the requested resource")]
    PathNotFound,
    /// A malformed request, e.g. a bad selector; the message is shown as is.
    #[error("{message}")]
    BadRequest {
        /// Message, typically apimachinery's parser text.
        message: String,
    },
    /// Authentication failed.
    #[error("Unauthorized")]
    Unauthorized,
    /// The authorizer denied the request.
    #[error("{}", forbidden_status_message(.user, .verb, .target, .reason))]
    Forbidden {
        /// User name as authenticated.
        user: String,
        /// Authorization verb (`get`, `list`, `watch`).
        verb: String,
        /// What was asked for.
        target: AuthzTarget,
        /// The authorizer's reason, appended after `: ` when non-empty.
        reason: String,
    },
    /// An action the resource does not support, e.g. `watch=true`.
    #[error("{action} is not supported on resources of kind \"{}.metrics.k8s.io\"", .resource.as_str())]
    MethodNotSupported {
        /// The resource asked for.
        resource: Resource,
        /// The action, `watch`.
        action: String,
    },
    /// Nothing in `Accept` can be produced.
    #[error("only the following media types are accepted: {}", .accepted.join(", "))]
    NotAcceptable {
        /// Media types this server can produce.
        accepted: Vec<String>,
    },
    /// Anything else; the message says what failed.
    #[error("Internal error occurred: {message}")]
    Internal {
        /// What failed.
        message: String,
    },
}

impl ApiError {
    /// The 405 answer to `watch=true` (metrics-server serves no watch).
    pub fn watch_not_supported(resource: Resource) -> Self {
        ApiError::MethodNotSupported {
            resource,
            action: "watch".to_owned(),
        }
    }

    /// The HTTP status code.
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::NodeNotFound { .. }
            | ApiError::NodeMetricsNotFound { .. }
            | ApiError::PodNotFound { .. }
            | ApiError::PodMetricsNotFound { .. }
            | ApiError::PathNotFound => StatusCode::NOT_FOUND,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::MethodNotSupported { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotAcceptable { .. } => StatusCode::NOT_ACCEPTABLE,
            ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `reason` field (`metav1.StatusReason`).
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NodeNotFound { .. }
            | ApiError::NodeMetricsNotFound { .. }
            | ApiError::PodNotFound { .. }
            | ApiError::PodMetricsNotFound { .. }
            | ApiError::PathNotFound => "NotFound",
            ApiError::BadRequest { .. } => "BadRequest",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden { .. } => "Forbidden",
            ApiError::MethodNotSupported { .. } => "MethodNotAllowed",
            ApiError::NotAcceptable { .. } => "NotAcceptable",
            ApiError::Internal { .. } => "InternalError",
        }
    }

    fn details(&self) -> Option<StatusDetails> {
        let group_kind = |group: &str, kind: &str, name: String| StatusDetails {
            name,
            group: group.to_owned(),
            kind: kind.to_owned(),
            causes: Vec::new(),
        };
        match self {
            ApiError::NodeNotFound { name } => Some(group_kind("", "node", name.clone())),
            ApiError::NodeMetricsNotFound { name } => {
                Some(group_kind(GROUP, "nodemetrics", name.clone()))
            }
            ApiError::PodNotFound { name, .. } => Some(group_kind("", "pods", name.clone())),
            ApiError::PodMetricsNotFound { namespace, name } => Some(group_kind(
                GROUP,
                "podmetrics",
                format!("{namespace}/{name}"),
            )),
            ApiError::PathNotFound => Some(StatusDetails::default()),
            ApiError::Forbidden { target, .. } => Some(match target {
                AuthzTarget::Resource {
                    group,
                    resource,
                    name,
                    ..
                } => group_kind(group, resource, name.clone()),
                AuthzTarget::NonResource { .. } => StatusDetails::default(),
            }),
            ApiError::MethodNotSupported { resource, .. } => {
                Some(group_kind(GROUP, resource.as_str(), String::new()))
            }
            ApiError::Internal { message } => Some(StatusDetails {
                causes: vec![StatusCause {
                    message: message.clone(),
                }],
                ..StatusDetails::default()
            }),
            ApiError::BadRequest { .. }
            | ApiError::Unauthorized
            | ApiError::NotAcceptable { .. } => None,
        }
    }

    /// The `Status` object for this error.
    pub fn to_status(&self) -> Status {
        Status {
            kind: "Status".to_owned(),
            api_version: "v1".to_owned(),
            metadata: StatusMeta {},
            status: "Failure".to_owned(),
            message: self.to_string(),
            reason: self.reason().to_owned(),
            details: self.details(),
            code: self.status_code().as_u16(),
        }
    }

    /// The protobuf body (`k8s\0` + `runtime.Unknown`) of the same `Status`,
    /// for clients that negotiated `application/vnd.kubernetes.protobuf`.
    pub fn to_status_protobuf(&self) -> Vec<u8> {
        super::protobuf::status(&self.to_status())
    }

    /// The JSON body to send with [`ApiError::status_code`]
    /// (`Content-Type: application/json`).
    pub fn to_status_json(&self) -> String {
        // Plain strings and numbers cannot fail to serialise; the fallback only
        // keeps this infallible without an unwrap.
        serde_json::to_string(&self.to_status()).unwrap_or_else(|_| {
            format!(
                r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","code":{}}}"#,
                self.status_code().as_u16()
            )
        })
    }
}

/// apiserver `forbiddenMessage` wrapped by `NewForbidden`, with the HTML
/// sanitising `Forbidden` applies to the first part.
fn forbidden_status_message(user: &str, verb: &str, target: &AuthzTarget, reason: &str) -> String {
    let (qualified, name, inner) = match target {
        AuthzTarget::NonResource { path } => (
            String::new(),
            "",
            format!(
                "User {} cannot {verb} path {}",
                go_quote(user),
                go_quote(path)
            ),
        ),
        AuthzTarget::Resource {
            group,
            resource,
            subresource,
            namespace,
            name,
        } => {
            let full = match subresource.as_deref() {
                Some(sub) if !sub.is_empty() => format!("{resource}/{sub}"),
                _ => resource.clone(),
            };
            let inner = if namespace.is_empty() {
                format!(
                    "User {} cannot {verb} resource {} in API group {} at the cluster scope",
                    go_quote(user),
                    go_quote(&full),
                    go_quote(group)
                )
            } else {
                format!(
                    "User {} cannot {verb} resource {} in API group {} in the namespace {}",
                    go_quote(user),
                    go_quote(&full),
                    go_quote(group),
                    go_quote(namespace)
                )
            };
            let qualified = if group.is_empty() {
                resource.clone()
            } else {
                format!("{resource}.{group}")
            };
            (qualified, name.as_str(), inner)
        }
    };
    let mut message = sanitize(&inner);
    if !reason.is_empty() {
        message.push_str(": ");
        message.push_str(reason);
    }
    if qualified.is_empty() {
        format!("forbidden: {message}")
    } else if name.is_empty() {
        format!("{qualified} is forbidden: {message}")
    } else {
        format!("{qualified} {} is forbidden: {message}", go_quote(name))
    }
}

/// metrics-server names missing pod metrics `namespace/name`.
fn quoted_pod_key(namespace: &str, name: &str) -> String {
    go_quote(&format!("{namespace}/{name}"))
}

/// The apiserver escapes what could read as HTML in a forbidden message.
fn sanitize(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl From<selector::Error> for ApiError {
    fn from(error: selector::Error) -> Self {
        ApiError::BadRequest {
            message: error.to_string(),
        }
    }
}

impl From<table::Error> for ApiError {
    fn from(error: table::Error) -> Self {
        ApiError::BadRequest {
            message: error.to_string(),
        }
    }
}

impl From<negotiate::NotAcceptable> for ApiError {
    fn from(error: negotiate::NotAcceptable) -> Self {
        ApiError::NotAcceptable {
            accepted: error.accepted,
        }
    }
}

/// `metav1.Status` as sent; field order is Go's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// `Status`.
    pub kind: String,
    /// `v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// Always `{}`.
    pub metadata: StatusMeta,
    /// `Failure`.
    pub status: String,
    /// Human-readable message.
    pub message: String,
    /// Machine-readable reason.
    pub reason: String,
    /// Name/group/kind of the object concerned, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
    /// HTTP status code.
    pub code: u16,
}

/// The empty `metadata` of a `Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StatusMeta {}

/// `metav1.StatusDetails`; every field omitted when empty, as in Go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StatusDetails {
    /// Object name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// API group.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Resource (Go calls the field kind).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Causes (internal errors).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
}

/// `metav1.StatusCause` (only the message is used).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StatusCause {
    /// What went wrong.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(e: &ApiError) -> String {
        e.to_status_json()
    }

    #[test]
    fn node_not_found() {
        let e = ApiError::NodeNotFound {
            name: "n1".to_owned(),
        };
        assert_eq!(e.status_code(), StatusCode::NOT_FOUND);
        assert_eq!(
            body(&e),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"node \"n1\" not found","reason":"NotFound","details":{"name":"n1","kind":"node"},"code":404}"#
        );
    }

    #[test]
    fn node_metrics_not_found() {
        let e = ApiError::NodeMetricsNotFound {
            name: "n1".to_owned(),
        };
        assert_eq!(
            body(&e),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"nodemetrics.metrics.k8s.io \"n1\" not found","reason":"NotFound","details":{"name":"n1","group":"metrics.k8s.io","kind":"nodemetrics"},"code":404}"#
        );
    }

    #[test]
    fn pod_not_found() {
        let e = ApiError::PodNotFound {
            namespace: "default".to_owned(),
            name: "web".to_owned(),
        };
        assert_eq!(
            body(&e),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods \"web\" not found","reason":"NotFound","details":{"name":"web","kind":"pods"},"code":404}"#
        );
    }

    #[test]
    fn pod_metrics_not_found() {
        let e = ApiError::PodMetricsNotFound {
            namespace: "default".to_owned(),
            name: "web".to_owned(),
        };
        assert_eq!(
            body(&e),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"podmetrics.metrics.k8s.io \"default/web\" not found","reason":"NotFound","details":{"name":"default/web","group":"metrics.k8s.io","kind":"podmetrics"},"code":404}"#
        );
    }

    #[test]
    fn path_not_found() {
        assert_eq!(
            body(&ApiError::PathNotFound),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","details":{},"code":404}"#
        );
    }

    #[test]
    fn bad_request_from_selectors() {
        let e: ApiError = selector::FieldSelector::parse("spec.nodeName=n1")
            .expect_err("unknown field")
            .into();
        assert_eq!(e.status_code(), StatusCode::BAD_REQUEST);
        assert_eq!(
            body(&e),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"\"spec.nodeName\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\"","reason":"BadRequest","code":400}"#
        );
        let e: ApiError = selector::LabelSelector::parse("a in")
            .expect_err("bad")
            .into();
        assert_eq!(e.reason(), "BadRequest");
        assert_eq!(
            e.to_string(),
            "unable to parse requirement: found '' expected: '('"
        );
    }

    #[test]
    fn unauthorized() {
        assert_eq!(
            ApiError::Unauthorized.status_code(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            body(&ApiError::Unauthorized),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#
        );
    }

    fn pods_in(namespace: &str, name: &str) -> AuthzTarget {
        AuthzTarget::Resource {
            group: GROUP.to_owned(),
            resource: "pods".to_owned(),
            subresource: None,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    #[test]
    fn forbidden_namespaced_list() {
        let e = ApiError::Forbidden {
            user: "u".to_owned(),
            verb: "list".to_owned(),
            target: pods_in("ns", ""),
            reason: String::new(),
        };
        assert_eq!(e.status_code(), StatusCode::FORBIDDEN);
        assert_eq!(
            body(&e),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods.metrics.k8s.io is forbidden: User \"u\" cannot list resource \"pods\" in API group \"metrics.k8s.io\" in the namespace \"ns\"","reason":"Forbidden","details":{"group":"metrics.k8s.io","kind":"pods"},"code":403}"#
        );
    }

    #[test]
    fn forbidden_named_cluster_scope_with_reason() {
        let e = ApiError::Forbidden {
            user: "system:serviceaccount:a:b".to_owned(),
            verb: "get".to_owned(),
            target: AuthzTarget::Resource {
                group: GROUP.to_owned(),
                resource: "nodes".to_owned(),
                subresource: None,
                namespace: String::new(),
                name: "n1".to_owned(),
            },
            reason: "no RBAC policy matched".to_owned(),
        };
        assert_eq!(
            e.to_string(),
            "nodes.metrics.k8s.io \"n1\" is forbidden: User \"system:serviceaccount:a:b\" cannot get \
             resource \"nodes\" in API group \"metrics.k8s.io\" at the cluster scope: no RBAC policy matched"
        );
        let status = e.to_status();
        assert_eq!(
            status.details,
            Some(StatusDetails {
                name: "n1".to_owned(),
                group: GROUP.to_owned(),
                kind: "nodes".to_owned(),
                causes: Vec::new(),
            })
        );
    }

    #[test]
    fn forbidden_subresource_and_sanitising() {
        let e = ApiError::Forbidden {
            user: "<b>&".to_owned(),
            verb: "get".to_owned(),
            target: AuthzTarget::Resource {
                group: GROUP.to_owned(),
                resource: "pods".to_owned(),
                subresource: Some("log".to_owned()),
                namespace: "ns".to_owned(),
                name: "p".to_owned(),
            },
            reason: "<kept>".to_owned(),
        };
        assert_eq!(
            e.to_string(),
            "pods.metrics.k8s.io \"p\" is forbidden: User \"&lt;b&gt;&amp;\" cannot get resource \
             \"pods/log\" in API group \"metrics.k8s.io\" in the namespace \"ns\": <kept>"
        );
    }

    #[test]
    fn forbidden_non_resource() {
        let e = ApiError::Forbidden {
            user: "system:anonymous".to_owned(),
            verb: "get".to_owned(),
            target: AuthzTarget::NonResource {
                path: "/apis".to_owned(),
            },
            reason: String::new(),
        };
        assert_eq!(
            body(&e),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"forbidden: User \"system:anonymous\" cannot get path \"/apis\"","reason":"Forbidden","details":{},"code":403}"#
        );
    }

    #[test]
    fn watch_not_supported() {
        let e = ApiError::watch_not_supported(Resource::Nodes);
        assert_eq!(e.status_code(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            body(&e),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"watch is not supported on resources of kind \"nodes.metrics.k8s.io\"","reason":"MethodNotAllowed","details":{"group":"metrics.k8s.io","kind":"nodes"},"code":405}"#
        );
        assert_eq!(
            ApiError::watch_not_supported(Resource::Pods).to_string(),
            "watch is not supported on resources of kind \"pods.metrics.k8s.io\""
        );
    }

    #[test]
    fn not_acceptable_from_negotiation() {
        let e: ApiError = negotiate::negotiate(
            Some("text/plain"),
            negotiate::Endpoint::Resource,
            negotiate::Offer::JSON_AND_PROTOBUF,
        )
        .expect_err("text/plain is not served")
        .into();
        assert_eq!(e.status_code(), StatusCode::NOT_ACCEPTABLE);
        assert_eq!(
            body(&e),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"only the following media types are accepted: application/json, application/vnd.kubernetes.protobuf","reason":"NotAcceptable","code":406}"#
        );
    }

    #[test]
    fn internal_error() {
        let e = ApiError::Internal {
            message: "store unavailable".to_owned(),
        };
        assert_eq!(e.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            body(&e),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Internal error occurred: store unavailable","reason":"InternalError","details":{"causes":[{"message":"store unavailable"}]},"code":500}"#
        );
    }

    #[test]
    fn bad_include_object_is_bad_request() {
        let e: ApiError = table::IncludeObject::from_query(Some("Everything"))
            .expect_err("invalid")
            .into();
        assert_eq!(e.status_code(), StatusCode::BAD_REQUEST);
        assert_eq!(
            e.to_string(),
            "Unable to convert to Table as requested: includeObject: Invalid value: \"Everything\": \
             must be 'Metadata', 'Object', 'None', or empty"
        );
    }

    #[test]
    fn status_parses_back() {
        let e = ApiError::PodMetricsNotFound {
            namespace: "a".to_owned(),
            name: "b".to_owned(),
        };
        let parsed: Status = serde_json::from_str(&e.to_status_json()).expect("parses");
        assert_eq!(parsed, e.to_status());
        assert_eq!(parsed.code, 404);
    }
}
