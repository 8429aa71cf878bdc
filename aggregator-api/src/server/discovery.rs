//! Discovery and version documents: `/apis` (legacy `APIGroupList`, or
//! aggregated discovery v2 with `ETag` when asked for), `/apis/metrics.k8s.io`
//! (`APIGroup`), `/apis/metrics.k8s.io/{v}` (`APIResourceList`, the
//! aggregator's availability probe) and `/version`.
//!
//! `/apis` never answers 503: the aggregator's discovery manager treats a 503
//! as "try again later" and would not fall back to the per-version documents
//! (contract §2). Every `/apis` answer carries `Vary: Accept` because two
//! representations share the URL.

use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Serialize;

use crate::api::ApiVersion;
use crate::api::discovery;
use crate::api::negotiate::{self, Endpoint, Offer, Target};
use crate::api::status::ApiError;

use super::respond::{self, HandlerResult};

const OFFER: Offer = Offer::JSON_ONLY;

/// `/apis`.
pub fn root(headers: &HeaderMap, accept: Option<&str>) -> HandlerResult {
    let negotiated = negotiate::negotiate(accept, Endpoint::RootDiscovery, OFFER)?;
    let mut response = match negotiated.target {
        Target::AggregatedDiscovery => {
            let body = respond::json_bytes(&discovery::api_group_discovery_list(&ApiVersion::ALL))?;
            let etag = discovery::discovery_etag(&body);
            let etag_value = HeaderValue::from_str(&etag).map_err(|e| ApiError::Internal {
                message: e.to_string(),
            })?;
            let unchanged = headers
                .get_all(header::IF_NONE_MATCH)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|tag| {
                    let tag = tag.trim();
                    tag == etag || tag == "*" || tag.strip_prefix("W/") == Some(etag.as_str())
                });
            let mut response = if unchanged {
                let mut r = respond::ok(negotiated.content_type(), Vec::new());
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                r
            } else {
                respond::ok(negotiated.content_type(), body)
            };
            response.headers_mut().insert(header::ETAG, etag_value);
            response
        }
        Target::Object => respond::ok(
            negotiated.content_type(),
            respond::json_bytes(&discovery::api_group_list(&ApiVersion::ALL))?,
        ),
        Target::Table(_) => {
            return Err(ApiError::Internal {
                message: "negotiated a Table for /apis".to_owned(),
            });
        }
    };
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    Ok(response)
}

/// `/apis/metrics.k8s.io`.
pub fn group(accept: Option<&str>) -> HandlerResult {
    let negotiated = negotiate::negotiate(accept, Endpoint::GroupVersionDiscovery, OFFER)?;
    let mut group = discovery::api_group(&ApiVersion::ALL);
    group.kind = Some("APIGroup".to_owned());
    group.api_version = Some("v1".to_owned());
    Ok(respond::ok(
        negotiated.content_type(),
        respond::json_bytes(&group)?,
    ))
}

/// `/apis/metrics.k8s.io/{v}`.
pub fn group_version(version: ApiVersion, accept: Option<&str>) -> HandlerResult {
    let negotiated = negotiate::negotiate(accept, Endpoint::GroupVersionDiscovery, OFFER)?;
    Ok(respond::ok(
        negotiated.content_type(),
        respond::json_bytes(&discovery::api_resource_list(version))?,
    ))
}

/// `version.Info` as kube components serve it on `/version`.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    /// Major version.
    pub major: String,
    /// Minor version.
    pub minor: String,
    /// `v<semver>`.
    #[serde(rename = "gitVersion")]
    pub git_version: String,
    /// Commit, when known at build time.
    #[serde(rename = "gitCommit")]
    pub git_commit: String,
    /// `clean`/`dirty`, when known.
    #[serde(rename = "gitTreeState")]
    pub git_tree_state: String,
    /// Build date, when known.
    #[serde(rename = "buildDate")]
    pub build_date: String,
    /// Go's field; the Rust toolchain here.
    #[serde(rename = "goVersion")]
    pub go_version: String,
    /// `rustc`.
    pub compiler: String,
    /// `os/arch` in Go's spelling (`linux/amd64`).
    pub platform: String,
}

/// This build's version document.
pub fn version_info() -> VersionInfo {
    let version = env!("CARGO_PKG_VERSION");
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    VersionInfo {
        major: env!("CARGO_PKG_VERSION_MAJOR").to_owned(),
        minor: env!("CARGO_PKG_VERSION_MINOR").to_owned(),
        git_version: format!("v{version}"),
        git_commit: option_env!("NODEPULSE_GIT_COMMIT").unwrap_or("").to_owned(),
        git_tree_state: String::new(),
        build_date: option_env!("NODEPULSE_BUILD_DATE").unwrap_or("").to_owned(),
        go_version: String::new(),
        compiler: "rustc".to_owned(),
        platform: format!("{}/{arch}", std::env::consts::OS),
    }
}

/// `/version`.
pub fn version() -> HandlerResult {
    Ok(respond::ok(
        negotiate::JSON,
        respond::json_bytes(&version_info())?,
    ))
}
