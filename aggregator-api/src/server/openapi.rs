//! The OpenAPI documents of metrics.k8s.io, which kube-aggregator downloads
//! and merges into kube-apiserver's own so that `kubectl explain podmetrics`
//! works: `/openapi/v2` (Swagger 2.0, both versions), `/openapi/v3` (the
//! discovery document: each group version's `serverRelativeURL`, carrying a
//! `?hash=` of its document) and `/openapi/v3/apis/metrics.k8s.io/{v}`
//! (OpenAPI 3.0).
//!
//! What kube-aggregator does with them (`pkg/controllers/openapi/aggregator`
//! and `openapiv3/aggregator`, v1.37):
//! - v2: `GET /openapi/v2` as `system:kube-aggregator`, `Accept:
//!   application/json`, `If-None-Match` with the last `ETag`; 404 means "no
//!   spec", 304 "unchanged". The spec is cut down, per APIService, to the
//!   paths under `/apis/<group>/<version>/` and the definitions they reach,
//!   then merged (a definition name already taken with other content is
//!   renamed, which is why the apimachinery definitions here are copied
//!   verbatim from kube-apiserver's published spec).
//! - v3: `GET /openapi/v3` (no `Accept`); its `paths` join kube-apiserver's
//!   discovery document as they are, and a client's request for a group
//!   version is proxied here unchanged, its `Accept` and `?hash=` included.
//!
//! The documents never change while the process runs, so they are built and
//! hashed once. Answers follow kube-openapi's `handler` and `handler3`: JSON
//! when acceptable, else 406; `ETag`, and 304 for a matching
//! `If-None-Match`; a stale `?hash=` is redirected (301) to the current URL,
//! and an answer to the current one may be cached for a year.
//!
//! Both documents are built from one description of the schemas, in the
//! OpenAPI 3 form `builder3` emits (a `$ref` with siblings becomes a
//! one-element `allOf`); the v2 form is derived from it the way the two
//! builders differ (`$ref` with siblings, no `default`, one type).

use std::sync::OnceLock;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::{Map, Value, json};

use super::query::Query;
use super::respond::{Body, HandlerResult, json_bytes};
use crate::api::negotiate::{self, Endpoint, JSON, Offer};
use crate::api::status::ApiError;
use crate::api::{ApiVersion, GROUP, Resource, discovery};

/// A document this module serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Document {
    /// `/openapi/v2`: every version's paths and definitions.
    V2,
    /// `/openapi/v3`: group version → `serverRelativeURL`.
    V3Discovery,
    /// `/openapi/v3/apis/metrics.k8s.io/{v}`.
    V3(ApiVersion),
}

/// How long an answer to a current `?hash=` URL may be cached: kube-openapi
/// sends `Cache-Control: public, immutable` and `Expires` one year ahead; the
/// same year is given here as `max-age`.
const IMMUTABLE: &str = "public, immutable, max-age=31536000";

const V3_REF_PREFIX: &str = "#/components/schemas/";
const V2_REF_PREFIX: &str = "#/definitions/";

const KIND_DESCRIPTION: &str = "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";
const API_VERSION_DESCRIPTION: &str = "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources";
const OBJECT_META_DESCRIPTION: &str = "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";
const LIST_META_DESCRIPTION: &str = "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";
/// k8s.io/metrics puts this comment above `Timestamp` and `Window` together;
/// the generator gives it to `timestamp` only. Here both fields carry it, so
/// `kubectl explain nodemetrics.window` has something to say.
const WINDOW_DESCRIPTION: &str = "The following fields define time interval from which metrics were collected from the interval [Timestamp-Window, Timestamp].";
const USAGE_DESCRIPTION: &str = "The memory usage is the memory working set.";

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";
const TIME: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Time";
const DURATION: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Duration";
const QUANTITY: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";

/// Answers a request for `document`. `/openapi/v3` is JSON whatever `Accept`
/// says (as kube-openapi serves it); the others negotiate.
pub fn handle(
    document: Document,
    headers: &HeaderMap,
    accept: Option<&str>,
    query: &Query,
) -> HandlerResult {
    let documents = documents()?;
    let served = match document {
        Document::V2 => &documents.v2,
        Document::V3Discovery => &documents.v3_discovery,
        Document::V3(version) => documents.v3(version),
    };
    if document != Document::V3Discovery {
        negotiate::negotiate(accept, Endpoint::GroupVersionDiscovery, Offer::JSON_ONLY)?;
    }
    let mut cache_control = None;
    if let Document::V3(version) = document
        && let Some(hash) = query.get("hash").filter(|h| !h.is_empty())
    {
        if hash != served.hash {
            let mut response = empty(StatusCode::MOVED_PERMANENTLY);
            response.headers_mut().insert(
                header::LOCATION,
                header_value(&server_relative_url(version, &served.hash))?,
            );
            return Ok(response);
        }
        cache_control = Some(HeaderValue::from_static(IMMUTABLE));
    }
    let etag = served.etag();
    let mut response = if etag_matches(headers, &etag) {
        empty(StatusCode::NOT_MODIFIED)
    } else {
        let mut r = Response::new(Full::new(served.body.clone()));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
        r
    };
    let response_headers = response.headers_mut();
    response_headers.insert(header::ETAG, header_value(&etag)?);
    response_headers.insert(header::VARY, HeaderValue::from_static("Accept"));
    if let Some(value) = cache_control {
        response_headers.insert(header::CACHE_CONTROL, value);
    }
    Ok(response)
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

fn header_value(value: &str) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(value).map_err(|e| ApiError::Internal {
        message: e.to_string(),
    })
}

/// Whether `If-None-Match` names `etag` (weak comparison, `*` matches), as
/// Go's `http.ServeContent` decides.
fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// `/openapi/v3/apis/metrics.k8s.io/{v}?hash=…`, as kube-openapi's
/// `constructServerRelativeURL` spells it.
fn server_relative_url(version: ApiVersion, hash: &str) -> String {
    format!("/openapi/v3/{}?hash={hash}", group_version_path(version))
}

/// The key of a group version in the v3 discovery document.
fn group_version_path(version: ApiVersion) -> String {
    format!("apis/{GROUP}/{}", version.as_str())
}

/// One serialized document.
struct Served {
    body: Bytes,
    /// Hex hash of `body`: the `?hash=` value; the `ETag` is it quoted.
    hash: String,
}

impl Served {
    fn new(document: &Value) -> Result<Self, ApiError> {
        let body = json_bytes(document)?;
        let hash = discovery::discovery_etag(&body)
            .trim_matches('"')
            .to_owned();
        Ok(Served {
            body: Bytes::from(body),
            hash,
        })
    }

    fn etag(&self) -> String {
        format!("\"{}\"", self.hash)
    }
}

/// Every served document, built once.
struct Documents {
    v2: Served,
    v3_discovery: Served,
    v3_v1: Served,
    v3_v1beta1: Served,
}

impl Documents {
    fn build() -> Result<Self, ApiError> {
        let meta: Map<String, Value> =
            serde_json::from_str(META_SCHEMAS).map_err(|e| ApiError::Internal {
                message: format!("the built-in OpenAPI definitions: {e}"),
            })?;
        let mut documents = Documents {
            v2: Served::new(&v2_document(&meta))?,
            v3_discovery: Served::new(&json!({}))?,
            v3_v1: Served::new(&v3_document(ApiVersion::V1, &meta))?,
            v3_v1beta1: Served::new(&v3_document(ApiVersion::V1Beta1, &meta))?,
        };
        let paths: Map<String, Value> = ApiVersion::ALL
            .iter()
            .map(|&version| {
                let url = server_relative_url(version, &documents.v3(version).hash);
                (
                    group_version_path(version),
                    json!({ "serverRelativeURL": url }),
                )
            })
            .collect();
        documents.v3_discovery = Served::new(&json!({ "paths": paths }))?;
        Ok(documents)
    }

    fn v3(&self, version: ApiVersion) -> &Served {
        match version {
            ApiVersion::V1 => &self.v3_v1,
            ApiVersion::V1Beta1 => &self.v3_v1beta1,
        }
    }
}

fn documents() -> Result<&'static Documents, ApiError> {
    static DOCUMENTS: OnceLock<Result<Documents, String>> = OnceLock::new();
    DOCUMENTS
        .get_or_init(|| Documents::build().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|message| ApiError::Internal {
            message: message.clone(),
        })
}

// ---------------------------------------------------------------------------
// The documents
// ---------------------------------------------------------------------------

/// Which OpenAPI the paths are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    /// Swagger 2.0.
    V2,
    /// OpenAPI 3.0.
    V3,
}

/// The title and version kube-aggregator shows nowhere but keeps in the
/// downloaded spec.
fn info() -> Value {
    json!({
        "title": "nodepulse metrics.k8s.io",
        "version": concat!("v", env!("CARGO_PKG_VERSION")),
    })
}

fn v3_document(version: ApiVersion, meta: &Map<String, Value>) -> Value {
    let mut schemas = meta.clone();
    schemas.extend(metrics_schemas(version));
    json!({
        "openapi": "3.0.0",
        "info": info(),
        "paths": paths(version, Flavor::V3),
        "components": {
            "schemas": schemas,
            "securitySchemes": { "BearerToken": bearer_token() },
        },
    })
}

fn v2_document(meta: &Map<String, Value>) -> Value {
    let mut definitions = meta.clone();
    let mut paths = Map::new();
    for version in ApiVersion::ALL {
        definitions.extend(metrics_schemas(version));
        paths.extend(self::paths(version, Flavor::V2));
    }
    let definitions: Map<String, Value> = definitions
        .iter()
        .map(|(name, schema)| (name.clone(), schema_to_v2(schema)))
        .collect();
    json!({
        "swagger": "2.0",
        "info": info(),
        "paths": paths,
        "definitions": definitions,
        "securityDefinitions": { "BearerToken": bearer_token() },
        "security": [{ "BearerToken": [] }],
    })
}

fn bearer_token() -> Value {
    json!({
        "description": "Bearer Token authentication",
        "in": "header",
        "name": "authorization",
        "type": "apiKey",
    })
}

/// The model name of a k8s.io/metrics type (its `OpenAPIModelName()`).
fn model(version: ApiVersion, kind: &str) -> String {
    format!(
        "io.k8s.metrics.pkg.apis.metrics.{}.{kind}",
        version.as_str()
    )
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("{V3_REF_PREFIX}{name}") })
}

/// A property that is a named schema with a description (and a default):
/// builder3's one-element `allOf`.
fn referenced(name: &str, description: &str, default: Option<Value>) -> Value {
    let mut schema = json!({ "allOf": [reference(name)], "description": description });
    if let Some(default) = default {
        schema["default"] = default;
    }
    schema
}

fn usage() -> Value {
    json!({
        "description": USAGE_DESCRIPTION,
        "type": "object",
        "additionalProperties": reference(QUANTITY),
    })
}

fn group_version_kind(version: ApiVersion, kind: &str) -> Value {
    json!({ "group": GROUP, "kind": kind, "version": version.as_str() })
}

/// The schemas kube-openapi generates from k8s.io/metrics
/// `pkg/apis/metrics/{v}/types.go` (v1 and v1beta1 are identical), in
/// OpenAPI 3 form, with the `x-kubernetes-group-version-kind` the apiserver
/// adds to the kinds it serves (`kubectl explain` finds the schema by it).
fn metrics_schemas(version: ApiVersion) -> Map<String, Value> {
    let mut schemas = Map::new();
    for resource in [Resource::Nodes, Resource::Pods] {
        let kind = resource.kind();
        let (description, specific_name, specific) = match resource {
            Resource::Nodes => (
                "NodeMetrics sets resource usage metrics of a node.",
                "usage",
                usage(),
            ),
            Resource::Pods => (
                "PodMetrics sets resource usage metrics of a pod.",
                "containers",
                json!({
                    "description": "Metrics for all containers are collected within the same time window.",
                    "type": "array",
                    "items": reference(&model(version, "ContainerMetrics")),
                    "x-kubernetes-list-type": "atomic",
                }),
            ),
        };
        let mut object = json!({
            "description": description,
            "type": "object",
            "required": ["timestamp", "window", specific_name],
            "properties": {
                "apiVersion": { "description": API_VERSION_DESCRIPTION, "type": "string" },
                "kind": { "description": KIND_DESCRIPTION, "type": "string" },
                "metadata": referenced(OBJECT_META, OBJECT_META_DESCRIPTION, Some(json!({}))),
                "timestamp": referenced(TIME, WINDOW_DESCRIPTION, None),
                "window": referenced(DURATION, WINDOW_DESCRIPTION, None),
            },
            "x-kubernetes-group-version-kind": [group_version_kind(version, kind)],
        });
        object["properties"][specific_name] = specific;
        schemas.insert(model(version, kind), object);

        let list_kind = resource.list_kind();
        let items = match resource {
            Resource::Nodes => "List of node metrics.",
            Resource::Pods => "List of pod metrics.",
        };
        schemas.insert(
            model(version, list_kind),
            json!({
                "description": format!("{list_kind} is a list of {kind}."),
                "type": "object",
                "required": ["items"],
                "properties": {
                    "apiVersion": { "description": API_VERSION_DESCRIPTION, "type": "string" },
                    "kind": { "description": KIND_DESCRIPTION, "type": "string" },
                    "metadata": referenced(LIST_META, LIST_META_DESCRIPTION, Some(json!({}))),
                    "items": {
                        "description": items,
                        "type": "array",
                        "items": reference(&model(version, kind)),
                    },
                },
                "x-kubernetes-group-version-kind": [group_version_kind(version, list_kind)],
            }),
        );
    }
    schemas.insert(
        model(version, "ContainerMetrics"),
        json!({
            "description": "ContainerMetrics sets resource usage metrics of a container.",
            "type": "object",
            "required": ["name", "usage"],
            "properties": {
                "name": {
                    "description": "Container name corresponding to the one from pod.spec.containers.",
                    "type": "string",
                    "default": "",
                },
                "usage": usage(),
            },
        }),
    );
    schemas
}

/// One GET path of a version.
struct Operation {
    resource: Resource,
    /// Whether the path names one object.
    named: bool,
    /// Whether the path has a namespace segment.
    namespaced: bool,
}

const OPERATIONS: [Operation; 5] = [
    Operation {
        resource: Resource::Nodes,
        named: false,
        namespaced: false,
    },
    Operation {
        resource: Resource::Nodes,
        named: true,
        namespaced: false,
    },
    Operation {
        resource: Resource::Pods,
        named: false,
        namespaced: false,
    },
    Operation {
        resource: Resource::Pods,
        named: false,
        namespaced: true,
    },
    Operation {
        resource: Resource::Pods,
        named: true,
        namespaced: true,
    },
];

/// The five resource paths (contract §1.3) with their GET operations, named
/// and described as the apiserver's endpoint installer does. Every
/// operation's `x-kubernetes-group-version-kind` is the item kind, lists
/// included: `kubectl explain` finds a resource's kind that way.
fn paths(version: ApiVersion, flavor: Flavor) -> Map<String, Value> {
    let v = version.as_str();
    let capitalized = format!("{}{}", v[..1].to_ascii_uppercase(), &v[1..]);
    OPERATIONS
        .iter()
        .map(|op| {
            let resource = op.resource;
            let kind = resource.kind();
            let mut path = format!("/apis/{GROUP}/{v}");
            let mut parameters = Vec::new();
            if op.namespaced {
                path.push_str("/namespaces/{namespace}");
                parameters.push(parameter(
                    flavor,
                    "path",
                    "namespace",
                    "object name and auth scope, such as for teams and projects",
                ));
            }
            path.push('/');
            path.push_str(resource.as_str());
            let (action, operation_id, description, response) = if op.named {
                path.push_str("/{name}");
                parameters.push(parameter(
                    flavor,
                    "path",
                    "name",
                    &format!("name of the {kind}"),
                ));
                let scope = if op.namespaced { "Namespaced" } else { "" };
                (
                    "get",
                    format!("readMetrics{capitalized}{scope}{kind}"),
                    format!("read the specified {kind}"),
                    kind,
                )
            } else {
                parameters.push(parameter(
                    flavor,
                    "query",
                    "labelSelector",
                    "A selector to restrict the list of returned objects by their labels. Defaults to everything.",
                ));
                parameters.push(parameter(
                    flavor,
                    "query",
                    "fieldSelector",
                    "A selector to restrict the list of returned objects by their fields: metadata.name, and metadata.namespace for pods. Defaults to everything.",
                ));
                let scope = match (resource.namespaced(), op.namespaced) {
                    (true, true) => "Namespaced",
                    _ => "",
                };
                let suffix = if resource.namespaced() && !op.namespaced {
                    "ForAllNamespaces"
                } else {
                    ""
                };
                (
                    "list",
                    format!("listMetrics{capitalized}{scope}{kind}{suffix}"),
                    format!("list objects of kind {kind}"),
                    resource.list_kind(),
                )
            };
            let mut get = json!({
                "description": description,
                "operationId": operation_id,
                "responses": responses(flavor, &model(version, response)),
                "tags": [format!("metrics_{v}")],
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": group_version_kind(version, kind),
            });
            if flavor == Flavor::V2 {
                get["consumes"] = json!(["*/*"]);
                get["produces"] = json!([JSON]);
                get["schemes"] = json!(["https"]);
            }
            (path, json!({ "get": get, "parameters": parameters }))
        })
        .collect()
}

fn parameter(flavor: Flavor, location: &str, name: &str, description: &str) -> Value {
    let mut parameter = json!({ "description": description, "in": location, "name": name });
    let schema = json!({ "type": "string", "uniqueItems": true });
    match flavor {
        Flavor::V2 => {
            if let (Some(p), Value::Object(s)) = (parameter.as_object_mut(), schema) {
                p.extend(s);
            }
        }
        Flavor::V3 => parameter["schema"] = schema,
    }
    if location == "path" {
        parameter["required"] = json!(true);
    }
    parameter
}

fn responses(flavor: Flavor, model: &str) -> Value {
    let ok = match flavor {
        Flavor::V2 => json!({
            "description": "OK",
            "schema": { "$ref": format!("{V2_REF_PREFIX}{model}") },
        }),
        Flavor::V3 => json!({
            "description": "OK",
            "content": { JSON: { "schema": reference(model) } },
        }),
    };
    json!({ "200": ok, "401": { "description": "Unauthorized" } })
}

/// A schema in v3 form → the v2 form kube-openapi's v2 builder emits for the
/// same Go type: `#/definitions/` references; a one-element `allOf` becomes a
/// `$ref` beside the other keys; no `default`; `oneOf` types become the first.
fn schema_to_v2(schema: &Value) -> Value {
    let Value::Object(map) = schema else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (key, value) in map {
        match (key.as_str(), value) {
            ("default", _) => {}
            ("$ref", Value::String(target)) => {
                let name = target.strip_prefix(V3_REF_PREFIX).unwrap_or(target);
                out.insert(key.clone(), json!(format!("{V2_REF_PREFIX}{name}")));
            }
            ("allOf", Value::Array(all)) if all.len() == 1 => {
                if let Value::Object(inner) = schema_to_v2(&all[0]) {
                    out.extend(inner);
                }
            }
            ("oneOf", Value::Array(one)) => {
                if let Some(kind) = one.first().and_then(|s| s.get("type")) {
                    out.insert("type".to_owned(), kind.clone());
                }
            }
            ("properties", Value::Object(properties)) => {
                let converted: Map<String, Value> = properties
                    .iter()
                    .map(|(name, s)| (name.clone(), schema_to_v2(s)))
                    .collect();
                out.insert(key.clone(), Value::Object(converted));
            }
            ("items" | "additionalProperties", _) => {
                out.insert(key.clone(), schema_to_v2(value));
            }
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    Value::Object(out)
}

/// The apimachinery definitions the metrics types reach (`ObjectMeta`,
/// `ListMeta` and what they reference, `Time`, `Quantity`), copied from
/// kube-apiserver v1.37.2's `api/openapi-spec/v3/api__v1_openapi.json`, and
/// `Duration` from its generated definition (kube-apiserver's own spec has
/// no field of that type).
const META_SCHEMAS: &str = include_str!("../../openapi/meta-schemas.json");

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use std::time::Duration;

    use futures::FutureExt as _;
    use http::Request;
    use http_body_util::BodyExt;

    use super::*;
    use support::log_gate::LogGate;

    fn get(document: Document, headers: &[(&str, &str)], query: &str) -> Response<Body> {
        let mut request = Request::builder();
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(()).expect("request");
        let accept = request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        handle(
            document,
            request.headers(),
            accept,
            &Query::parse(Some(query)),
        )
        .unwrap_or_else(|e| {
            crate::server::respond::error(
                &e,
                &LogGate::new(Duration::from_secs(10)),
                crate::api::negotiate::Encoding::Json,
            )
        })
    }

    fn body(response: Response<Body>) -> Vec<u8> {
        response
            .into_body()
            .collect()
            .now_or_never()
            .expect("a full body is ready")
            .expect("body")
            .to_bytes()
            .to_vec()
    }

    fn json_of(document: Document) -> Value {
        let response = get(document, &[], "");
        assert_eq!(response.status(), StatusCode::OK, "{document:?}");
        assert_eq!(response.headers()[header::CONTENT_TYPE], JSON);
        serde_json::from_slice(&body(response)).expect("valid JSON")
    }

    fn header_of(response: &Response<Body>, name: header::HeaderName) -> String {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    /// Every field of every k8s.io/metrics type (types.go), by model kind.
    const FIELDS: [(&str, &[&str]); 5] = [
        (
            "NodeMetrics",
            &[
                "apiVersion",
                "kind",
                "metadata",
                "timestamp",
                "window",
                "usage",
            ],
        ),
        (
            "PodMetrics",
            &[
                "apiVersion",
                "kind",
                "metadata",
                "timestamp",
                "window",
                "containers",
            ],
        ),
        (
            "NodeMetricsList",
            &["apiVersion", "kind", "metadata", "items"],
        ),
        (
            "PodMetricsList",
            &["apiVersion", "kind", "metadata", "items"],
        ),
        ("ContainerMetrics", &["name", "usage"]),
    ];

    fn v3_schema(doc: &Value, version: ApiVersion, kind: &str) -> Value {
        doc["components"]["schemas"][model(version, kind)].clone()
    }

    #[test]
    fn every_field_is_described_in_both_documents() {
        let v2 = json_of(Document::V2);
        for version in ApiVersion::ALL {
            let v3 = json_of(Document::V3(version));
            for (kind, fields) in FIELDS {
                for (doc, schema) in [
                    ("v3", v3_schema(&v3, version, kind)),
                    ("v2", v2["definitions"][model(version, kind)].clone()),
                ] {
                    let what = format!("{doc} {} {kind}", version.as_str());
                    assert!(
                        schema["description"]
                            .as_str()
                            .is_some_and(|d| d.contains(kind)),
                        "{what}: {schema}"
                    );
                    let properties = schema["properties"].as_object().expect("properties");
                    let names: BTreeSet<&str> = properties.keys().map(String::as_str).collect();
                    assert_eq!(names, fields.iter().copied().collect(), "{what}");
                    for (name, property) in properties {
                        assert!(
                            property["description"]
                                .as_str()
                                .is_some_and(|d| d.len() > 10),
                            "{what}.{name} has no description: {property}"
                        );
                    }
                }
            }
            // The texts of types.go.
            let node = v3_schema(&v3, version, "NodeMetrics");
            assert_eq!(
                node["properties"]["usage"]["description"],
                "The memory usage is the memory working set."
            );
            let pod = v3_schema(&v3, version, "PodMetrics");
            assert_eq!(
                pod["properties"]["containers"]["description"],
                "Metrics for all containers are collected within the same time window."
            );
            assert_eq!(
                v3_schema(&v3, version, "ContainerMetrics")["properties"]["name"]["description"],
                "Container name corresponding to the one from pod.spec.containers."
            );
        }
    }

    #[test]
    fn kinds_carry_their_group_version_kind() {
        let v2 = json_of(Document::V2);
        for version in ApiVersion::ALL {
            let v3 = json_of(Document::V3(version));
            for kind in [
                "NodeMetrics",
                "PodMetrics",
                "NodeMetricsList",
                "PodMetricsList",
            ] {
                let want = json!([{ "group": "metrics.k8s.io", "kind": kind, "version": version.as_str() }]);
                assert_eq!(
                    v3_schema(&v3, version, kind)["x-kubernetes-group-version-kind"],
                    want
                );
                assert_eq!(
                    v2["definitions"][model(version, kind)]["x-kubernetes-group-version-kind"],
                    want
                );
            }
            // kubectl explain maps a resource to its kind through the GET
            // operations of these paths (explain/v2/templates/plaintext.tmpl).
            let v = version.as_str();
            for (path, kind) in [
                (format!("/apis/metrics.k8s.io/{v}/nodes"), "NodeMetrics"),
                (
                    format!("/apis/metrics.k8s.io/{v}/nodes/{{name}}"),
                    "NodeMetrics",
                ),
                (format!("/apis/metrics.k8s.io/{v}/pods"), "PodMetrics"),
                (
                    format!("/apis/metrics.k8s.io/{v}/namespaces/{{namespace}}/pods"),
                    "PodMetrics",
                ),
                (
                    format!("/apis/metrics.k8s.io/{v}/namespaces/{{namespace}}/pods/{{name}}"),
                    "PodMetrics",
                ),
            ] {
                let want = json!({ "group": "metrics.k8s.io", "kind": kind, "version": v });
                assert_eq!(
                    v3["paths"][&path]["get"]["x-kubernetes-group-version-kind"], want,
                    "{path}"
                );
                assert_eq!(
                    v2["paths"][&path]["get"]["x-kubernetes-group-version-kind"], want,
                    "{path}"
                );
            }
            assert_eq!(v3["paths"].as_object().map(Map::len), Some(5));
        }
        assert_eq!(v2["paths"].as_object().map(Map::len), Some(10));
    }

    /// Every `$ref`, collected.
    fn references(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("$ref", Value::String(target)) => out.push(target.clone()),
                        _ => references(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| references(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_resolves_in_its_document() {
        let mut documents = vec![(
            "v2",
            json_of(Document::V2),
            "#/definitions/",
            "/definitions",
        )];
        for version in ApiVersion::ALL {
            documents.push((
                version.as_str(),
                json_of(Document::V3(version)),
                "#/components/schemas/",
                "/components/schemas",
            ));
        }
        for (name, doc, prefix, pointer) in documents {
            let mut targets = Vec::new();
            references(&doc, &mut targets);
            assert!(targets.len() > 20, "{name}: {targets:?}");
            for target in targets {
                let model = target
                    .strip_prefix(prefix)
                    .unwrap_or_else(|| panic!("{name}: {target} is not under {prefix}"));
                assert!(
                    doc.pointer(pointer).and_then(|s| s.get(model)).is_some(),
                    "{name}: {target} does not resolve"
                );
            }
            let text = doc.to_string();
            if name == "v2" {
                assert!(
                    !text.contains("allOf") && !text.contains("components"),
                    "v2 is v2"
                );
            }
        }
    }

    #[test]
    fn upstream_meta_definitions_are_served() {
        let v3 = json_of(Document::V3(ApiVersion::V1Beta1));
        let schemas = &v3["components"]["schemas"];
        let object_meta = &schemas["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"];
        for field in [
            "name",
            "namespace",
            "labels",
            "creationTimestamp",
            "ownerReferences",
        ] {
            assert!(
                object_meta["properties"][field]["description"].is_string(),
                "ObjectMeta.{field}"
            );
        }
        for name in [
            "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta",
            "io.k8s.apimachinery.pkg.apis.meta.v1.Time",
            "io.k8s.apimachinery.pkg.apis.meta.v1.Duration",
            "io.k8s.apimachinery.pkg.api.resource.Quantity",
        ] {
            assert!(schemas[name]["description"].is_string(), "{name}");
        }
        // v2 has Quantity as the plain string kube-apiserver's v2 spec has.
        let v2 = json_of(Document::V2);
        assert_eq!(
            v2["definitions"]["io.k8s.apimachinery.pkg.api.resource.Quantity"]["type"],
            "string"
        );
        assert_eq!(
            v2["definitions"][model(ApiVersion::V1, "NodeMetrics")]["properties"]["metadata"]["$ref"],
            "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
        );
    }

    #[test]
    fn discovery_hashes_name_the_served_documents() {
        let discovery = json_of(Document::V3Discovery);
        let paths = discovery["paths"].as_object().expect("paths");
        assert_eq!(paths.len(), ApiVersion::ALL.len());
        for version in ApiVersion::ALL {
            let response = get(Document::V3(version), &[], "");
            let etag = header_of(&response, header::ETAG);
            let served = body(response);
            let hash = discovery::discovery_etag(&served)
                .trim_matches('"')
                .to_owned();
            assert_eq!(etag, format!("\"{hash}\""));
            let url =
                paths[&format!("apis/metrics.k8s.io/{}", version.as_str())]["serverRelativeURL"]
                    .as_str()
                    .expect("url");
            assert_eq!(
                url,
                format!(
                    "/openapi/v3/apis/metrics.k8s.io/{}?hash={hash}",
                    version.as_str()
                )
            );
            // Following it gives the same document, cacheable.
            let (_, query) = url.split_once('?').expect("query");
            let followed = get(Document::V3(version), &[], query);
            assert_eq!(followed.status(), StatusCode::OK);
            assert_eq!(header_of(&followed, header::CACHE_CONTROL), IMMUTABLE);
            assert_eq!(body(followed), served);
        }
    }

    #[test]
    fn a_stale_hash_is_redirected() {
        let version = ApiVersion::V1Beta1;
        let response = get(Document::V3(version), &[], "hash=0123");
        assert_eq!(response.status(), StatusCode::MOVED_PERMANENTLY);
        let location = header_of(&response, header::LOCATION);
        let discovery = json_of(Document::V3Discovery);
        assert_eq!(
            discovery["paths"]["apis/metrics.k8s.io/v1beta1"]["serverRelativeURL"],
            location
        );
    }

    #[test]
    fn etags_answer_if_none_match() {
        for document in [
            Document::V2,
            Document::V3Discovery,
            Document::V3(ApiVersion::V1),
        ] {
            let first = get(document, &[("accept", "application/json")], "");
            let etag = header_of(&first, header::ETAG);
            assert!(
                etag.starts_with('"') && etag.len() > 2,
                "{document:?}: {etag}"
            );
            let again = get(document, &[("if-none-match", etag.as_str())], "");
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{document:?}");
            assert_eq!(header_of(&again, header::ETAG), etag);
            assert!(body(again).is_empty());
            let other = get(document, &[("if-none-match", "\"other\"")], "");
            assert_eq!(other.status(), StatusCode::OK, "{document:?}");
        }
    }

    #[test]
    fn json_when_acceptable_else_406() {
        const PROTO_V2: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
        const PROTO_V3: &str = "application/com.github.proto-openapi.spec.v3@v1.0+protobuf";
        let refused = get(Document::V2, &[("accept", PROTO_V2)], "");
        assert_eq!(refused.status(), StatusCode::NOT_ACCEPTABLE);
        let refused = get(Document::V3(ApiVersion::V1), &[("accept", PROTO_V3)], "");
        assert_eq!(refused.status(), StatusCode::NOT_ACCEPTABLE);
        for accept in [
            format!("{PROTO_V2}, application/json"),
            format!("{PROTO_V2}, */*"),
            "application/json".to_owned(),
        ] {
            let response = get(Document::V2, &[("accept", accept.as_str())], "");
            assert_eq!(response.status(), StatusCode::OK, "{accept}");
            assert_eq!(header_of(&response, header::CONTENT_TYPE), JSON);
            assert_eq!(header_of(&response, header::VARY), "Accept");
        }
        // The discovery document is JSON whatever is asked, as upstream.
        let response = get(Document::V3Discovery, &[("accept", PROTO_V3)], "");
        assert_eq!(response.status(), StatusCode::OK);
    }

    /// Like `/apis`, the documents are non-resource paths: authorized by a
    /// SubjectAccessReview of `get` on the path (RBAC's `system:discovery`
    /// grants `/openapi/*` to every authenticated user).
    #[test]
    fn documents_are_authorized_as_non_resource_paths() {
        for path in [
            "/openapi/v2",
            "/openapi/v3",
            "/openapi/v3/apis/metrics.k8s.io/v1beta1",
            "/openapi/v3/apis/metrics.k8s.io/v1",
        ] {
            assert_eq!(
                crate::server::request_info::attributes(
                    &http::Method::GET,
                    path,
                    &Query::parse(Some("hash=ABC"))
                ),
                crate::auth::Attributes::NonResource {
                    verb: "get".to_owned(),
                    path: path.to_owned(),
                },
                "{path}"
            );
        }
    }

    #[test]
    fn documents_are_built_once() {
        let first = documents().expect("documents") as *const Documents;
        let second = documents().expect("documents") as *const Documents;
        assert_eq!(first, second);
    }
}
