//! The five resource paths (contract §1.3) over a [`MetricsView`]: lists
//! with label and field selectors, single objects with their three kinds of
//! "not found", `Table` output, and the 405 for `watch=true`.
//!
//! Order of checks follows the apiserver's list handler: output negotiation
//! (406), then query decoding (selectors → 400), then `watch` (405), then
//! the data; `includeObject` is only read for a `Table`.

use std::time::SystemTime;

use crate::api::list::{self, Format, PodList};
use crate::api::negotiate::{self, Encoding, Endpoint, Negotiated, Offer, Target};
use crate::api::selector::{FieldSelector, LabelSelector};
use crate::api::status::ApiError;
use crate::api::table::{self, IncludeObject};
use crate::api::types;
use crate::api::view::PodRef;
use crate::api::view::{Lookup, MetricsView};
use crate::api::{ApiVersion, NodeUsage, PodUsage, Resource};
use crate::api::{json_list, protobuf};

use super::query::Query;
use super::respond::{self, HandlerResult};

/// Which resource path was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceRoute {
    /// `…/nodes`.
    NodeList,
    /// `…/nodes/{name}`.
    Node(String),
    /// `…/pods` (`None`) or `…/namespaces/{ns}/pods`.
    PodList(Option<String>),
    /// `…/namespaces/{ns}/pods/{name}`.
    Pod {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
}

impl ResourceRoute {
    /// The resource.
    pub fn resource(&self) -> Resource {
        match self {
            ResourceRoute::NodeList | ResourceRoute::Node(_) => Resource::Nodes,
            ResourceRoute::PodList(_) | ResourceRoute::Pod { .. } => Resource::Pods,
        }
    }
}

/// What a resource request needs besides the route.
pub struct ResourceRequest<'a> {
    /// The data.
    pub view: &'a dyn MetricsView,
    /// `--node-selector`: nodes outside it do not exist for this server.
    pub node_selector: &'a LabelSelector,
    /// Served version.
    pub version: ApiVersion,
    /// Decoded query.
    pub query: &'a Query,
    /// `Accept` header.
    pub accept: Option<&'a str>,
}

/// Which encodings are produced: JSON, and protobuf (what client-go asks
/// for first; `Table`s are JSON only, as upstream).
const OFFER: Offer = Offer::JSON_AND_PROTOBUF;

/// Answers a resource request.
pub fn handle(request: &ResourceRequest<'_>, route: &ResourceRoute) -> HandlerResult {
    let negotiated = negotiate::negotiate(request.accept, Endpoint::Resource, OFFER)?;
    let now = SystemTime::now();
    match route {
        ResourceRoute::NodeList => {
            let (labels, fields) = list_options(request.query, Resource::Nodes)?;
            let nodes: Vec<NodeUsage> = request
                .view
                .nodes()
                .into_iter()
                .filter(|n| request.node_selector.matches(&n.labels))
                .filter(|n| labels.matches(&n.labels) && fields.matches(&n.name, ""))
                .collect();
            render_nodes(request, negotiated, &nodes, false, now)
        }
        ResourceRoute::Node(name) => match request.view.node(name) {
            Lookup::Found(node) if request.node_selector.matches(&node.labels) => {
                render_nodes(request, negotiated, std::slice::from_ref(&node), true, now)
            }
            Lookup::Found(_) | Lookup::Unknown => {
                Err(ApiError::NodeNotFound { name: name.clone() })
            }
            Lookup::NoMetrics => Err(ApiError::NodeMetricsNotFound { name: name.clone() }),
        },
        ResourceRoute::PodList(namespace) => {
            let (labels, fields) = list_options(request.query, Resource::Pods)?;
            if let Target::Object = negotiated.target {
                // Encoded straight from the view (all namespaces: on every
                // core), never copied out as `PodUsage` values.
                let namespace = namespace.as_deref();
                let filter = |p: &PodRef<'_>| {
                    namespace.is_none_or(|ns| p.namespace == ns)
                        && labels.matches(p.labels)
                        && fields.matches(p.name, p.namespace)
                };
                let body = list::pod_list(
                    request.view,
                    &PodList {
                        namespace,
                        filter: &filter,
                        format: match negotiated.encoding {
                            Encoding::Json => Format::Json,
                            Encoding::Protobuf => Format::Protobuf,
                        },
                        version: request.version,
                        now,
                        threads: if namespace.is_none() {
                            list::threads()
                        } else {
                            1
                        },
                    },
                )
                .map_err(respond::encode_failed)?;
                return Ok(respond::ok(negotiated.content_type(), body));
            }
            let pods: Vec<PodUsage> = request
                .view
                .pods(namespace.as_deref())
                .into_iter()
                .filter(|p| namespace.as_deref().is_none_or(|ns| *p.namespace == *ns))
                .filter(|p| labels.matches(&p.labels) && fields.matches(&p.name, &p.namespace))
                .collect();
            render_pods(request, negotiated, &pods, false, now)
        }
        ResourceRoute::Pod { namespace, name } => match request.view.pod(namespace, name) {
            Lookup::Found(pod) => {
                render_pods(request, negotiated, std::slice::from_ref(&pod), true, now)
            }
            Lookup::Unknown => Err(ApiError::PodNotFound {
                namespace: namespace.clone(),
                name: name.clone(),
            }),
            Lookup::NoMetrics => Err(ApiError::PodMetricsNotFound {
                namespace: namespace.clone(),
                name: name.clone(),
            }),
        },
    }
}

/// Decodes the list parameters in the apiserver's order; `limit`,
/// `continue` and `resourceVersion` are accepted and ignored.
fn list_options(
    query: &Query,
    resource: Resource,
) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))?;
    let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""))?;
    let watch = query.watch().map_err(|value| ApiError::BadRequest {
        message: format!("strconv.ParseBool: parsing {value:?}: invalid syntax"),
    })?;
    if watch {
        return Err(ApiError::watch_not_supported(resource));
    }
    Ok((labels, fields))
}

fn include_object(query: &Query) -> Result<IncludeObject, ApiError> {
    Ok(IncludeObject::from_query(query.get("includeObject"))?)
}

/// `single` is true for an item request (a single object, not a list).
fn render_nodes(
    request: &ResourceRequest<'_>,
    negotiated: Negotiated,
    nodes: &[NodeUsage],
    single: bool,
    now: SystemTime,
) -> HandlerResult {
    let version = request.version;
    let body = match (negotiated.target, negotiated.encoding) {
        (Target::Object, Encoding::Json) => match (single, nodes.first()) {
            (true, Some(node)) => respond::json_bytes(&types::node_metrics(node, version, now))?,
            _ => json_list::node_list(nodes, version, now).map_err(respond::encode_failed)?,
        },
        (Target::Object, Encoding::Protobuf) => match (single, nodes.first()) {
            (true, Some(node)) => protobuf::node(node, version, now),
            _ => protobuf::node_list(nodes, version, now),
        },
        (Target::Table(meta), _) => respond::json_bytes(&table::node_table(
            nodes,
            version,
            meta,
            include_object(request.query)?,
            now,
        ))?,
        (Target::AggregatedDiscovery, _) => return Err(unexpected_target()),
    };
    Ok(respond::ok(negotiated.content_type(), body))
}

fn render_pods(
    request: &ResourceRequest<'_>,
    negotiated: Negotiated,
    pods: &[PodUsage],
    single: bool,
    now: SystemTime,
) -> HandlerResult {
    let version = request.version;
    let body = match (negotiated.target, negotiated.encoding) {
        (Target::Object, Encoding::Json) => match (single, pods.first()) {
            (true, Some(pod)) => respond::json_bytes(&types::pod_metrics(pod, version, now))?,
            _ => json_list::pod_list(pods, version, now).map_err(respond::encode_failed)?,
        },
        (Target::Object, Encoding::Protobuf) => match (single, pods.first()) {
            (true, Some(pod)) => protobuf::pod(pod, version, now),
            _ => protobuf::pod_list(pods, version, now),
        },
        (Target::Table(meta), _) => respond::json_bytes(&table::pod_table(
            pods,
            version,
            meta,
            include_object(request.query)?,
            now,
        ))?,
        (Target::AggregatedDiscovery, _) => return Err(unexpected_target()),
    };
    Ok(respond::ok(negotiated.content_type(), body))
}

fn unexpected_target() -> ApiError {
    ApiError::Internal {
        message: "negotiated aggregated discovery for a resource".to_owned(),
    }
}
