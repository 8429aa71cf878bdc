//! The one path from data to a response body: every resource answer — a
//! list or a single object, of nodes or pods, as JSON, protobuf or a `Table`
//! — is rendered by [`Render`], which picks the encoder.
//!
//! Pod lists as JSON or protobuf are encoded straight from the view on
//! several threads ([`super::list`]); everything else is small and encoded
//! from [`NodeUsage`] / [`PodUsage`] values ([`super::json`],
//! [`super::protobuf`], [`super::table`]).

use std::time::SystemTime;

use super::list::{self, Filter, Format, PodList};
use super::table::{self, IncludeObject, MetaVersion};
use super::view::{MetricsView, with_pod_ref};
use super::{ApiVersion, NodeUsage, PodUsage, json, protobuf, types};

/// What the client asked the body to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The objects, as JSON.
    Json,
    /// The objects, in the Kubernetes protobuf envelope.
    Protobuf,
    /// A `meta.k8s.io` `Table` (JSON) of that version, rows carrying what
    /// `include` says.
    Table {
        /// `meta.k8s.io/v1` or `v1beta1`.
        version: MetaVersion,
        /// The rows' `object`.
        include: IncludeObject,
    },
}

/// The pods of a pod list.
pub struct Pods<'a> {
    /// The data.
    pub view: &'a dyn MetricsView,
    /// `None`: every namespace.
    pub namespace: Option<&'a str>,
    /// Pods kept (label and field selectors).
    pub filter: Filter<'a>,
}

/// Renders answers of one request.
#[derive(Debug, Clone, Copy)]
pub struct Render {
    /// The body's form.
    pub output: Output,
    /// The served `metrics.k8s.io` version.
    pub version: ApiVersion,
    /// When the answer is made: every object's `creationTimestamp`.
    pub now: SystemTime,
}

impl Render {
    /// `GET …/nodes`: `nodes` in name order.
    pub fn nodes(&self, nodes: &[NodeUsage]) -> types::Result<Vec<u8>> {
        let Render { version, now, .. } = *self;
        match self.output {
            Output::Json => json::node_list(nodes, version, now),
            Output::Protobuf => Ok(protobuf::node_list(nodes, version, now)),
            Output::Table {
                version: meta,
                include,
            } => types::to_json(&table::node_table(nodes, version, meta, include, now)),
        }
    }

    /// `GET …/nodes/{name}`.
    pub fn node(&self, node: &NodeUsage) -> types::Result<Vec<u8>> {
        let Render { version, now, .. } = *self;
        match self.output {
            Output::Json => json::node(node, version, now),
            Output::Protobuf => Ok(protobuf::node(node, version, now)),
            Output::Table { .. } => self.nodes(std::slice::from_ref(node)),
        }
    }

    /// `GET …/pods` and `…/namespaces/{ns}/pods`: the pods `pods.filter`
    /// keeps, in namespace and name order.
    pub fn pods(&self, pods: &Pods<'_>) -> types::Result<Vec<u8>> {
        let Render { version, now, .. } = *self;
        let format = match self.output {
            Output::Json => Format::Json,
            Output::Protobuf => Format::Protobuf,
            Output::Table {
                version: meta,
                include,
            } => {
                let kept: Vec<PodUsage> = pods
                    .view
                    .pods(pods.namespace)
                    .into_iter()
                    .filter(|p| pods.namespace.is_none_or(|ns| *p.namespace == *ns))
                    .filter(|p| with_pod_ref(p, |r| (pods.filter)(r)))
                    .collect();
                return types::to_json(&table::pod_table(&kept, version, meta, include, now));
            }
        };
        list::pod_list(
            pods.view,
            &PodList {
                namespace: pods.namespace,
                filter: pods.filter,
                format,
                version,
                now,
                // One namespace is a few dozen pods: not worth a thread.
                threads: if pods.namespace.is_none() {
                    list::threads()
                } else {
                    1
                },
            },
        )
    }

    /// `GET …/namespaces/{ns}/pods/{name}`.
    pub fn pod(&self, pod: &PodUsage) -> types::Result<Vec<u8>> {
        let Render { version, now, .. } = *self;
        match self.output {
            Output::Json => json::pod(pod, version, now),
            Output::Protobuf => Ok(protobuf::pod(pod, version, now)),
            Output::Table {
                version: meta,
                include,
            } => types::to_json(&table::pod_table(
                std::slice::from_ref(pod),
                version,
                meta,
                include,
                now,
            )),
        }
    }
}
