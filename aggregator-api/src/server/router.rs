//! One request, start to end: authenticate, authorize, route, answer, count.
//!
//! Authorization comes before routing, as in the apiserver's filter chain:
//! an unauthorized caller learns nothing about which paths exist (an unknown
//! path is a 403 for them, a 404 only for callers allowed to ask).

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use rustls_pki_types::CertificateDer;

use super::App;
use super::discovery;
use super::health::Probe;
use super::metrics::verb_label;
use super::openapi::{self, Document};
use super::query::Query;
use super::request_info;
use super::resources::{self, ResourceRequest, ResourceRoute};
use super::respond::{self, Body, HandlerResult};
use crate::api::negotiate;
use crate::api::status::ApiError;
use crate::api::{ApiVersion, GROUP};
use crate::auth::Decision;

/// What the connection knows about its peer.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Remote address.
    pub peer: std::net::SocketAddr,
    /// The TLS client certificate chain, leaf first; empty when none.
    pub certs: Arc<[CertificateDer<'static>]>,
}

/// The paths served.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    /// `/apis`.
    Root,
    /// `/apis/metrics.k8s.io`.
    Group,
    /// `/apis/metrics.k8s.io/{v}`.
    GroupVersion(ApiVersion),
    /// The five resource paths.
    Resource(ApiVersion, ResourceRoute),
    /// `/openapi/v2`, `/openapi/v3`, `/openapi/v3/apis/metrics.k8s.io/{v}`.
    OpenApi(Document),
    /// `/version`.
    Version,
    /// `/healthz`, `/livez`, `/readyz`, optionally `/<probe>/<check>`.
    Health(Probe, Option<String>),
    /// `/metrics`.
    Metrics,
    /// Anything else.
    NotFound,
}

impl Route {
    fn parse(path: &str) -> Route {
        let trimmed = path
            .strip_suffix('/')
            .filter(|p| !p.is_empty())
            .unwrap_or(path);
        let segments: Vec<&str> = trimmed.trim_start_matches('/').split('/').collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Route::NotFound;
        }
        let probe = |name: &str| match name {
            "healthz" => Some(Probe::Healthz),
            "livez" => Some(Probe::Livez),
            "readyz" => Some(Probe::Readyz),
            _ => None,
        };
        match segments.as_slice() {
            ["apis"] => Route::Root,
            ["apis", g] if *g == GROUP => Route::Group,
            ["apis", g, v, rest @ ..] if *g == GROUP => {
                let Some(version) = ApiVersion::from_path_segment(v) else {
                    return Route::NotFound;
                };
                let resource = match rest {
                    [] => return Route::GroupVersion(version),
                    ["nodes"] => ResourceRoute::NodeList,
                    ["nodes", name] => ResourceRoute::Node((*name).to_owned()),
                    ["pods"] => ResourceRoute::PodList(None),
                    ["namespaces", ns, "pods"] => ResourceRoute::PodList(Some((*ns).to_owned())),
                    ["namespaces", ns, "pods", name] => ResourceRoute::Pod {
                        namespace: (*ns).to_owned(),
                        name: (*name).to_owned(),
                    },
                    _ => return Route::NotFound,
                };
                Route::Resource(version, resource)
            }
            ["openapi", "v2"] => Route::OpenApi(Document::V2),
            ["openapi", "v3"] => Route::OpenApi(Document::V3Discovery),
            ["openapi", "v3", "apis", g, v] if *g == GROUP => ApiVersion::from_path_segment(v)
                .map_or(Route::NotFound, |v| Route::OpenApi(Document::V3(v))),
            ["version"] => Route::Version,
            ["metrics"] => Route::Metrics,
            [p] => probe(p).map_or(Route::NotFound, |p| Route::Health(p, None)),
            [p, check] => probe(p).map_or(Route::NotFound, |p| {
                Route::Health(p, Some((*check).to_owned()))
            }),
            _ => Route::NotFound,
        }
    }

    /// The bounded `resource` label of the request metrics.
    fn label(&self) -> &'static str {
        match self {
            Route::Root | Route::Group | Route::GroupVersion(_) => "discovery",
            Route::Resource(_, r) => r.resource().as_str(),
            Route::OpenApi(_) => "openapi",
            Route::Version => "version",
            Route::Health(p, _) => p.name(),
            Route::Metrics => "metrics",
            Route::NotFound => "notfound",
        }
    }
}

/// Answers one request. Never fails: every error is a `Status` response.
pub async fn handle<B>(app: &App, conn: &ConnInfo, request: Request<B>) -> Response<Body> {
    let started = Instant::now();
    let (parts, _body) = request.into_parts();
    let path = parts.uri.path();
    let query = Query::parse(parts.uri.query());
    let route = Route::parse(path);
    let attributes = request_info::attributes(&parts.method, path, &query);
    let verb = verb_label(attributes.verb());

    let inner = &app.inner;
    let result: HandlerResult = async {
        let authenticated = match inner
            .authenticator
            .authenticate(&conn.certs, &parts.headers)
            .await
        {
            Ok(a) => a,
            Err(error) => {
                inner.metrics.authentication("failure", "none");
                match inner.auth_failure_log.open() {
                    Some(suppressed) => {
                        tracing::info!(peer = %conn.peer, %error, suppressed, "authentication failed")
                    }
                    None => tracing::debug!(peer = %conn.peer, %error, "authentication failed"),
                }
                return Err(ApiError::Unauthorized);
            }
        };
        inner
            .metrics
            .authentication("success", authenticated.method.as_str());
        match inner
            .authorizer
            .authorize(&authenticated.user, &attributes)
            .await
        {
            Ok(Decision::Allow) => inner.metrics.authorization("allowed"),
            Ok(Decision::Deny { reason }) => {
                inner.metrics.authorization("denied");
                return Err(ApiError::Forbidden {
                    user: authenticated.user.name,
                    verb: attributes.verb().to_owned(),
                    target: attributes.target(),
                    reason,
                });
            }
            Err(error) => {
                inner.metrics.authorization("error");
                return Err(ApiError::Internal {
                    message: error.to_string(),
                });
            }
        }
        dispatch(
            app,
            &route,
            &parts.method,
            &parts.headers,
            &query,
            attributes.verb(),
        )
    }
    .await;

    let response = result.unwrap_or_else(|e| {
        let accept = parts
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        respond::error(&e, &inner.error_log, negotiate::error_encoding(accept))
    });
    let code = response.status().as_u16();
    inner
        .metrics
        .request(verb, route.label(), code, started.elapsed());
    tracing::debug!(method = %parts.method, path, code, elapsed = ?started.elapsed(), "request");
    response
}

fn dispatch(
    app: &App,
    route: &Route,
    method: &Method,
    headers: &HeaderMap,
    query: &Query,
    verb: &str,
) -> HandlerResult {
    let inner = &app.inner;
    let readable = method == Method::GET || method == Method::HEAD;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    match route {
        Route::Resource(_, resource) if !readable => Err(ApiError::MethodNotSupported {
            resource: resource.resource(),
            action: verb.to_owned(),
        }),
        _ if !readable => Err(ApiError::PathNotFound),
        Route::Root => discovery::root(headers, accept),
        Route::Group => discovery::group(accept),
        Route::GroupVersion(version) => discovery::group_version(*version, accept),
        Route::Resource(version, resource) => resources::handle(
            &ResourceRequest {
                view: inner.view.as_ref(),
                node_selector: &inner.node_selector,
                version: *version,
                query,
                accept,
            },
            resource,
        ),
        Route::OpenApi(document) => openapi::handle(*document, headers, accept, query),
        Route::Version => discovery::version(),
        Route::Health(probe, single) => {
            let verbose = query.get("verbose").is_some();
            let exclude: Vec<&str> = query.get_all("exclude").collect();
            match inner
                .health
                .answer(*probe, single.as_deref(), verbose, &exclude)
            {
                Some((status, body)) => {
                    Ok(respond::text(status, "text/plain; charset=utf-8", body))
                }
                None => Err(ApiError::PathNotFound),
            }
        }
        Route::Metrics => Ok(respond::text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            inner.metrics_text(),
        )),
        Route::NotFound => Err(ApiError::PathNotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse() {
        let v1b1 = ApiVersion::V1Beta1;
        let cases = [
            ("/apis", Route::Root),
            ("/apis/", Route::Root),
            ("/apis/metrics.k8s.io", Route::Group),
            ("/apis/metrics.k8s.io/v1beta1", Route::GroupVersion(v1b1)),
            (
                "/apis/metrics.k8s.io/v1",
                Route::GroupVersion(ApiVersion::V1),
            ),
            ("/apis/metrics.k8s.io/v2", Route::NotFound),
            (
                "/apis/metrics.k8s.io/v1beta1/nodes",
                Route::Resource(v1b1, ResourceRoute::NodeList),
            ),
            (
                "/apis/metrics.k8s.io/v1beta1/nodes/n",
                Route::Resource(v1b1, ResourceRoute::Node("n".to_owned())),
            ),
            (
                "/apis/metrics.k8s.io/v1beta1/pods",
                Route::Resource(v1b1, ResourceRoute::PodList(None)),
            ),
            (
                "/apis/metrics.k8s.io/v1beta1/namespaces/ns/pods",
                Route::Resource(v1b1, ResourceRoute::PodList(Some("ns".to_owned()))),
            ),
            (
                "/apis/metrics.k8s.io/v1beta1/namespaces/ns/pods/p",
                Route::Resource(
                    v1b1,
                    ResourceRoute::Pod {
                        namespace: "ns".to_owned(),
                        name: "p".to_owned(),
                    },
                ),
            ),
            ("/apis/metrics.k8s.io/v1beta1/pods/p", Route::NotFound),
            ("/apis/metrics.k8s.io/v1beta1/nodes/n/x", Route::NotFound),
            ("/apis/metrics.k8s.io/v1beta1//nodes", Route::NotFound),
            ("/apis/other.k8s.io/v1", Route::NotFound),
            ("/version", Route::Version),
            ("/metrics", Route::Metrics),
            ("/readyz", Route::Health(Probe::Readyz, None)),
            (
                "/livez/ping",
                Route::Health(Probe::Livez, Some("ping".to_owned())),
            ),
            ("/", Route::NotFound),
            ("/openapi/v2", Route::OpenApi(Document::V2)),
            ("/openapi/v3", Route::OpenApi(Document::V3Discovery)),
            (
                "/openapi/v3/apis/metrics.k8s.io/v1beta1",
                Route::OpenApi(Document::V3(v1b1)),
            ),
            (
                "/openapi/v3/apis/metrics.k8s.io/v1",
                Route::OpenApi(Document::V3(ApiVersion::V1)),
            ),
            ("/openapi/v3/apis/metrics.k8s.io/v2", Route::NotFound),
            ("/openapi/v3/apis/other.k8s.io/v1", Route::NotFound),
            ("/openapi/v3/api/v1", Route::NotFound),
            ("/openapi/v1", Route::NotFound),
        ];
        for (path, want) in cases {
            assert_eq!(Route::parse(path), want, "{path}");
        }
    }
}
