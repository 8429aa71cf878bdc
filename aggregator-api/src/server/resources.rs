//! The five resource paths (contract §1.3) over a [`MetricsView`]: lists
//! with label and field selectors, single objects with their three kinds of
//! "not found", `Table` output, and the 405 for `watch=true`.
//!
//! Order of checks follows the apiserver's list handler: output negotiation
//! (406), then query decoding (selectors → 400), then `watch` (405), then
//! the data; `includeObject` is only read for a `Table`.

use std::time::SystemTime;

use crate::api::negotiate::{self, Encoding, Endpoint, Negotiated, Offer, Target};
use crate::api::render::{Output, Pods, Render};
use crate::api::selector::{FieldSelector, LabelSelector};
use crate::api::status::ApiError;
use crate::api::table::IncludeObject;
use crate::api::view::{Lookup, MetricsView, PodRef};
use crate::api::{ApiVersion, NodeUsage, Resource};

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
    // The output (and so `includeObject`) is read only once the request is
    // otherwise known to be good, in the apiserver's order.
    let render = || -> Result<Render, ApiError> {
        Ok(Render {
            output: output(negotiated, request.query)?,
            version: request.version,
            now,
        })
    };
    let body = match route {
        ResourceRoute::NodeList => {
            let (labels, fields) = list_options(request.query, Resource::Nodes)?;
            let nodes: Vec<NodeUsage> = request
                .view
                .nodes()
                .into_iter()
                .filter(|n| request.node_selector.matches(&n.labels))
                .filter(|n| labels.matches(&n.labels) && fields.matches(&n.name, ""))
                .collect();
            render()?.nodes(&nodes)
        }
        ResourceRoute::Node(name) => match request.view.node(name) {
            Lookup::Found(node) if request.node_selector.matches(&node.labels) => {
                render()?.node(&node)
            }
            Lookup::Found(_) | Lookup::Unknown => {
                return Err(ApiError::NodeNotFound { name: name.clone() });
            }
            Lookup::NoMetrics => return Err(ApiError::NodeMetricsNotFound { name: name.clone() }),
        },
        ResourceRoute::PodList(namespace) => {
            let (labels, fields) = list_options(request.query, Resource::Pods)?;
            let filter =
                |p: &PodRef<'_>| labels.matches(p.labels) && fields.matches(p.name, p.namespace);
            render()?.pods(&Pods {
                view: request.view,
                namespace: namespace.as_deref(),
                filter: &filter,
            })
        }
        ResourceRoute::Pod { namespace, name } => match request.view.pod(namespace, name) {
            Lookup::Found(pod) => render()?.pod(&pod),
            Lookup::Unknown => {
                return Err(ApiError::PodNotFound {
                    namespace: namespace.clone(),
                    name: name.clone(),
                });
            }
            Lookup::NoMetrics => {
                return Err(ApiError::PodMetricsNotFound {
                    namespace: namespace.clone(),
                    name: name.clone(),
                });
            }
        },
    };
    Ok(respond::ok(
        negotiated.content_type(),
        body.map_err(respond::encode_failed)?,
    ))
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

/// The body's form: what negotiation chose, with `includeObject` for a
/// `Table`.
fn output(negotiated: Negotiated, query: &Query) -> Result<Output, ApiError> {
    Ok(match (negotiated.target, negotiated.encoding) {
        (Target::Object, Encoding::Json) => Output::Json,
        (Target::Object, Encoding::Protobuf) => Output::Protobuf,
        (Target::Table(version), _) => Output::Table {
            version,
            include: IncludeObject::from_query(query.get("includeObject"))?,
        },
        (Target::AggregatedDiscovery, _) => {
            return Err(ApiError::Internal {
                message: "negotiated aggregated discovery for a resource".to_owned(),
            });
        }
    })
}
