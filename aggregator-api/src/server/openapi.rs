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
use crate::api::{ApiVersion, GROUP, Resource, types};

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
        let hash = types::discovery_etag(&body).trim_matches('"').to_owned();
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
const META_SCHEMAS: &str = r##"{
 "io.k8s.apimachinery.pkg.api.resource.Quantity": {
  "description": "Quantity is a fixed-point representation of a number. It provides convenient marshaling/unmarshaling in JSON and YAML, in addition to String() and AsInt64() accessors.\n\nThe serialization format is:\n\n``` <quantity>        ::= <signedNumber><suffix>\n\n\t(Note that <suffix> may be empty, from the \"\" case in <decimalSI>.)\n\n<digit>           ::= 0 | 1 | ... | 9 <digits>          ::= <digit> | <digit><digits> <number>          ::= <digits> | <digits>.<digits> | <digits>. | .<digits> <sign>            ::= \"+\" | \"-\" <signedNumber>    ::= <number> | <sign><number> <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI> <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei\n\n\t(International System of units; See: http://physics.nist.gov/cuu/Units/binary.html)\n\n<decimalSI>       ::= m | \"\" | k | M | G | T | P | E\n\n\t(Note that 1024 = 1Ki but 1000 = 1k; I didn't choose the capitalization.)\n\n<decimalExponent> ::= \"e\" <signedNumber> | \"E\" <signedNumber> ```\n\nNo matter which of the three exponent forms is used, no quantity may represent a number greater than 2^63-1 in magnitude, nor may it have more than 3 decimal places. Numbers larger or more precise will be capped or rounded up. (E.g.: 0.1m will rounded up to 1m.) This may be extended in the future if we require larger or smaller quantities.\n\nWhen a Quantity is parsed from a string, it will remember the type of suffix it had, and will use the same type again when it is serialized.\n\nBefore serializing, Quantity will be put in \"canonical form\". This means that Exponent/suffix will be adjusted up or down (with a corresponding increase or decrease in Mantissa) such that:\n\n- No precision is lost - No fractional digits will be emitted - The exponent (or suffix) is as large as possible.\n\nThe sign will be omitted unless the number is negative.\n\nExamples:\n\n- 1.5 will be serialized as \"1500m\" - 1.5Gi will be serialized as \"1536Mi\"\n\nNote that the quantity will NEVER be internally represented by a floating point number. That is the whole point of this exercise.\n\nNon-canonical values will still parse as long as they are well formed, but will be re-emitted in their canonical form. (So always use canonical form, or don't diff.)\n\nThis format is intended to make it difficult to use these numbers without writing some sort of special handling code in the hopes that that will cause implementors to also use a fixed point implementation.",
  "oneOf": [
   {
    "type": "string"
   },
   {
    "type": "number"
   }
  ]
 },
 "io.k8s.apimachinery.pkg.apis.meta.v1.Duration": {
  "description": "Duration is a wrapper around time.Duration which supports correct marshaling to YAML and JSON. In particular, it marshals into strings, which can be used as map keys in json.",
  "type": "string"
 },
 "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1": {
  "description": "FieldsV1 stores a set of fields in a data structure like a Trie, in JSON format.\n\nEach key is either a '.' representing the field itself, and will always map to an empty set, or a string representing a sub-field or item. The string will follow one of these four formats: 'f:<name>', where <name> is the name of a field in a struct, or key in a map 'v:<value>', where <value> is the exact json formatted value of a list item 'i:<index>', where <index> is position of a item in a list 'k:<keys>', where <keys> is a map of  a list item's key fields to their unique values If a key maps to an empty Fields value, the field that key represents is part of the set.\n\nThe exact format is defined in sigs.k8s.io/structured-merge-diff",
  "type": "object"
 },
 "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta": {
  "description": "ListMeta describes metadata that synthetic resources must have, including lists and various status objects. A resource may have only one of {ObjectMeta, ListMeta}.",
  "properties": {
   "continue": {
    "description": "continue may be set if the user set a limit on the number of items returned, and indicates that the server has more data available. The value is opaque and may be used to issue another request to the endpoint that served this list to retrieve the next set of available objects. Continuing a consistent list may not be possible if the server configuration has changed or more than a few minutes have passed. The resourceVersion field returned when using this continue value will be identical to the value in the first response, unless you have received this token from an error message.",
    "type": "string"
   },
   "remainingItemCount": {
    "description": "remainingItemCount is the number of subsequent items in the list which are not included in this list response. If the list request contained label or field selectors, then the number of remaining items is unknown and the field will be left unset and omitted during serialization. If the list is complete (either because it is not chunking or because this is the last chunk), then there are no more remaining items and this field will be left unset and omitted during serialization. Servers older than v1.15 do not set this field. The intended use of the remainingItemCount is *estimating* the size of a collection. Clients should not rely on the remainingItemCount to be set or to be exact.",
    "format": "int64",
    "type": "integer"
   },
   "resourceVersion": {
    "description": "String that identifies the server's internal version of this object that can be used by clients to determine when objects have changed. Value must be treated as opaque by clients and passed unmodified back to the server. Populated by the system. Read-only. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#concurrency-control-and-consistency",
    "type": "string"
   },
   "selfLink": {
    "description": "Deprecated: selfLink is a legacy read-only field that is no longer populated by the system.",
    "type": "string"
   },
   "shardInfo": {
    "allOf": [
     {
      "$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ShardInfo"
     }
    ],
    "description": "shardInfo is set when the list is a filtered subset of the full collection, as selected by a shard selector on the request. It echoes back the selector so clients can verify which shard they received and merge sharded responses. Clients should not cache sharded list responses as a full representation of the collection.\n\nThis is an alpha field and requires enabling the ShardedListAndWatch feature gate."
   }
  },
  "type": "object"
 },
 "io.k8s.apimachinery.pkg.apis.meta.v1.ManagedFieldsEntry": {
  "description": "ManagedFieldsEntry is a workflow-id, a FieldSet and the group version of the resource that the fieldset applies to.",
  "properties": {
   "apiVersion": {
    "description": "APIVersion defines the version of this resource that this field set applies to. The format is \"group/version\" just like the top-level APIVersion field. It is necessary to track the version of a field set because it cannot be automatically converted.",
    "type": "string"
   },
   "fieldsType": {
    "description": "FieldsType is the discriminator for the different fields format and version. There is currently only one possible value: \"FieldsV1\"",
    "type": "string"
   },
   "fieldsV1": {
    "allOf": [
     {
      "$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1"
     }
    ],
    "description": "FieldsV1 holds the first JSON version format as described in the \"FieldsV1\" type."
   },
   "manager": {
    "description": "Manager is an identifier of the workflow managing these fields.",
    "type": "string"
   },
   "operation": {
    "description": "Operation is the type of operation which lead to this ManagedFieldsEntry being created. The only valid values for this field are 'Apply' and 'Update'.",
    "type": "string"
   },
   "subresource": {
    "description": "Subresource is the name of the subresource used to update that object, or empty string if the object was updated through the main resource. The value of this field is used to distinguish between managers, even if they share the same name. For example, a status update will be distinct from a regular update using the same manager name. Note that the APIVersion field is not related to the Subresource field and it always corresponds to the version of the main resource.",
    "type": "string"
   },
   "time": {
    "allOf": [
     {
      "$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Time"
     }
    ],
    "description": "Time is the timestamp of when the ManagedFields entry was added. The timestamp will also be updated if a field is added, the manager changes any of the owned fields value or removes a field. The timestamp does not update when a field is removed from the entry because another manager took it over."
   }
  },
  "type": "object"
 },
 "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta": {
  "description": "ObjectMeta is metadata that all persisted resources must have, which includes all objects users must create.",
  "properties": {
   "annotations": {
    "additionalProperties": {
     "type": "string"
    },
    "description": "Annotations is an unstructured key value map stored with a resource that may be set by external tools to store and retrieve arbitrary metadata. They are not queryable and should be preserved when modifying objects. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/annotations",
    "type": "object"
   },
   "creationTimestamp": {
    "allOf": [
     {
      "$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Time"
     }
    ],
    "description": "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
   },
   "deletionGracePeriodSeconds": {
    "description": "Number of seconds allowed for this object to gracefully terminate before it will be removed from the system. Only set when deletionTimestamp is also set. May only be shortened. Read-only.",
    "format": "int64",
    "type": "integer"
   },
   "deletionTimestamp": {
    "allOf": [
     {
      "$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Time"
     }
    ],
    "description": "DeletionTimestamp is RFC 3339 date and time at which this resource will be deleted. This field is set by the server when a graceful deletion is requested by the user, and is not directly settable by a client. The resource is expected to be deleted (no longer visible from resource lists, and not reachable by name) after the time in this field, once the finalizers list is empty. As long as the finalizers list contains items, deletion is blocked. Once the deletionTimestamp is set, this value may not be unset or be set further into the future, although it may be shortened or the resource may be deleted prior to this time. For example, a user may request that a pod is deleted in 30 seconds. The Kubelet will react by sending a graceful termination signal to the containers in the pod. After that 30 seconds, the Kubelet will send a hard termination signal (SIGKILL) to the container and after cleanup, remove the pod from the API. In the presence of network partitions, this object may still exist after this timestamp, until an administrator or automated process can determine the resource is fully terminated. If not set, graceful deletion of the object has not been requested.\n\nPopulated by the system when a graceful deletion is requested. Read-only. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
   },
   "finalizers": {
    "description": "Must be empty before the object is deleted from the registry. Each entry is an identifier for the responsible component that will remove the entry from the list. If the deletionTimestamp of the object is non-nil, entries in this list can only be removed. Finalizers may be processed and removed in any order.  Order is NOT enforced because it introduces significant risk of stuck finalizers. finalizers is a shared field, any actor with permission can reorder it. If the finalizer list is processed in order, then this can lead to a situation in which the component responsible for the first finalizer in the list is waiting for a signal (field value, external system, or other) produced by a component responsible for a finalizer later in the list, resulting in a deadlock. Without enforced ordering finalizers are free to order amongst themselves and are not vulnerable to ordering changes in the list.",
    "items": {
     "type": "string"
    },
    "type": "array",
    "x-kubernetes-list-type": "set",
    "x-kubernetes-patch-strategy": "merge"
   },
   "generateName": {
    "description": "GenerateName is an optional prefix, used by the server, to generate a unique name ONLY IF the Name field has not been provided. If this field is used, the name returned to the client will be different than the name passed. This value will also be combined with a unique suffix. The provided value has the same validation rules as the Name field, and may be truncated by the length of the suffix required to make the value unique on the server.\n\nIf this field is specified and the generated name exists, the server will return a 409.\n\nApplied only if Name is not specified. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#idempotency",
    "type": "string"
   },
   "generation": {
    "description": "A sequence number representing a specific generation of the desired state. Populated by the system. Read-only.",
    "format": "int64",
    "type": "integer"
   },
   "labels": {
    "additionalProperties": {
     "type": "string"
    },
    "description": "Map of string keys and values that can be used to organize and categorize (scope and select) objects. May match selectors of replication controllers and services. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels",
    "type": "object"
   },
   "managedFields": {
    "description": "ManagedFields maps workflow-id and version to the set of fields that are managed by that workflow. This is mostly for internal housekeeping, and users typically shouldn't need to set or understand this field. A workflow can be the user's name, a controller's name, or the name of a specific apply path like \"ci-cd\". The set of fields is always in the version that the workflow used when modifying the object.",
    "items": {
     "$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ManagedFieldsEntry"
    },
    "type": "array",
    "x-kubernetes-list-type": "atomic"
   },
   "name": {
    "description": "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
    "type": "string"
   },
   "namespace": {
    "description": "Namespace defines the space within which each name must be unique. An empty namespace is equivalent to the \"default\" namespace, but \"default\" is the canonical representation. Not all objects are required to be scoped to a namespace - the value of this field for those objects will be empty.\n\nMust be a DNS_LABEL. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/namespaces",
    "type": "string"
   },
   "ownerReferences": {
    "description": "List of objects depended by this object. If ALL objects in the list have been deleted, this object will be garbage collected. If this object is managed by a controller, then an entry in this list will point to this controller, with the controller field set to true. There cannot be more than one managing controller.",
    "items": {
     "$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.OwnerReference"
    },
    "type": "array",
    "x-kubernetes-list-map-keys": [
     "uid"
    ],
    "x-kubernetes-list-type": "map",
    "x-kubernetes-patch-merge-key": "uid",
    "x-kubernetes-patch-strategy": "merge"
   },
   "resourceVersion": {
    "description": "An opaque value that represents the internal version of this object that can be used by clients to determine when objects have changed. May be used for optimistic concurrency, change detection, and the watch operation on a resource or set of resources. Clients must treat these values as opaque and passed unmodified back to the server. They may only be valid for a particular resource or set of resources.\n\nPopulated by the system. Read-only. Value must be treated as opaque by clients and . More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#concurrency-control-and-consistency",
    "type": "string"
   },
   "selfLink": {
    "description": "Deprecated: selfLink is a legacy read-only field that is no longer populated by the system.",
    "type": "string"
   },
   "uid": {
    "description": "UID is the unique in time and space value for this object. It is typically generated by the server on successful creation of a resource and is not allowed to change on PUT operations.\n\nPopulated by the system. Read-only. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#uids",
    "type": "string"
   }
  },
  "type": "object"
 },
 "io.k8s.apimachinery.pkg.apis.meta.v1.OwnerReference": {
  "description": "OwnerReference contains enough information to let you identify an owning object. An owning object must be in the same namespace as the dependent, or be cluster-scoped, so there is no namespace field.",
  "properties": {
   "apiVersion": {
    "default": "",
    "description": "API version of the referent.",
    "type": "string"
   },
   "blockOwnerDeletion": {
    "description": "If true, AND if the owner has the \"foregroundDeletion\" finalizer, then the owner cannot be deleted from the key-value store until this reference is removed. See https://kubernetes.io/docs/concepts/architecture/garbage-collection/#foreground-deletion for how the garbage collector interacts with this field and enforces the foreground deletion. Defaults to false. To set this field, a user needs \"delete\" permission of the owner, otherwise 422 (Unprocessable Entity) will be returned.",
    "type": "boolean"
   },
   "controller": {
    "description": "If true, this reference points to the managing controller.",
    "type": "boolean"
   },
   "kind": {
    "default": "",
    "description": "Kind of the referent. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds",
    "type": "string"
   },
   "name": {
    "default": "",
    "description": "Name of the referent. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
    "type": "string"
   },
   "uid": {
    "default": "",
    "description": "UID of the referent. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#uids",
    "type": "string"
   }
  },
  "required": [
   "apiVersion",
   "kind",
   "name",
   "uid"
  ],
  "type": "object",
  "x-kubernetes-map-type": "atomic"
 },
 "io.k8s.apimachinery.pkg.apis.meta.v1.ShardInfo": {
  "description": "ShardInfo describes the shard selector that was applied to produce a list response. Its presence on a list response indicates the list is a filtered subset.",
  "properties": {
   "selector": {
    "default": "",
    "description": "selector is the shard selector string from the request, echoed back so clients can verify which shard they received and merge responses from multiple shards.",
    "type": "string"
   }
  },
  "required": [
   "selector"
  ],
  "type": "object"
 },
 "io.k8s.apimachinery.pkg.apis.meta.v1.Time": {
  "description": "Time is a wrapper around time.Time which supports correct marshaling to YAML and JSON.  Wrappers are provided for many of the factory methods that the time package offers.",
  "format": "date-time",
  "type": "string"
 }
}"##;

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
            let hash = types::discovery_etag(&served).trim_matches('"').to_owned();
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
