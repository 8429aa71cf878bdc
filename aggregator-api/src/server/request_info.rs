//! From an HTTP request to authorization attributes, as the apiserver's
//! `RequestInfoFactory` derives them, so SubjectAccessReviews (and the RBAC
//! rules users write) see exactly what they would for metrics-server.
//!
//! `/apis/{group}/{version}/[namespaces/{ns}/]{resource}[/{name}[/{sub}]]` is
//! a resource request; anything shorter or elsewhere is non-resource. A
//! collection GET is `list`, or `watch` with `watch=true`; an item GET is
//! `get`. A list whose `fieldSelector` pins `metadata.name` is authorized as
//! a request for that name, as upstream does.

use http::Method;

use super::query::Query;
use crate::api::selector::{FieldOp, FieldSelector, MetaField};
use crate::auth::Attributes;

/// The attributes of a request.
pub fn attributes(method: &Method, path: &str, query: &Query) -> Attributes {
    let non_resource = || Attributes::NonResource {
        verb: method.as_str().to_ascii_lowercase(),
        path: path.to_owned(),
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, mut rest) = match parts.as_slice() {
        ["apis", group, version, rest @ ..] if !rest.is_empty() => (*group, *version, rest),
        ["api", version, rest @ ..] if !rest.is_empty() => ("", *version, rest),
        _ => return non_resource(),
    };
    let mut verb = match *method {
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "",
    }
    .to_owned();
    if verb.is_empty() {
        verb = method.as_str().to_ascii_lowercase();
    }
    // The deprecated `/watch/` path prefix.
    if rest.first() == Some(&"watch") {
        verb = "watch".to_owned();
        rest = &rest[1..];
        if rest.is_empty() {
            return non_resource();
        }
    }
    let mut namespace = String::new();
    if rest[0] == "namespaces" && rest.len() > 1 {
        namespace = rest[1].to_owned();
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    let resource = rest[0].to_owned();
    let name = rest.get(1).map(|s| (*s).to_owned()).unwrap_or_default();
    let subresource = rest.get(2).map(|s| (*s).to_owned()).unwrap_or_default();
    let mut attributes_name = name;
    if attributes_name.is_empty() && verb == "get" {
        verb = if query.watch().unwrap_or(false) {
            "watch"
        } else {
            "list"
        }
        .to_owned();
        if let Some(pinned) = pinned_name(query) {
            attributes_name = pinned;
        }
    }
    if attributes_name.is_empty() && verb == "delete" {
        verb = "deletecollection".to_owned();
    }
    Attributes::Resource {
        verb,
        namespace,
        group: group.to_owned(),
        version: version.to_owned(),
        resource,
        subresource,
        name: attributes_name,
    }
}

/// `metadata.name=X` in the field selector (`RequiresExactMatch`), when X is
/// a valid path segment.
fn pinned_name(query: &Query) -> Option<String> {
    let selector = FieldSelector::parse(query.get("fieldSelector")?).ok()?;
    selector
        .terms()
        .iter()
        .find(|t| t.field == MetaField::Name && t.op == FieldOp::Equals)
        .map(|t| t.value.clone())
        .filter(|v| !v.is_empty() && v != "." && v != ".." && !v.contains(['/', '%']))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(method: Method, path: &str, query: &str) -> Attributes {
        attributes(&method, path, &Query::parse(Some(query)))
    }

    fn resource(verb: &str, ns: &str, resource: &str, name: &str) -> Attributes {
        Attributes::Resource {
            verb: verb.to_owned(),
            namespace: ns.to_owned(),
            group: "metrics.k8s.io".to_owned(),
            version: "v1beta1".to_owned(),
            resource: resource.to_owned(),
            subresource: String::new(),
            name: name.to_owned(),
        }
    }

    #[test]
    fn metrics_paths() {
        let base = "/apis/metrics.k8s.io/v1beta1";
        assert_eq!(
            attrs(Method::GET, &format!("{base}/nodes"), ""),
            resource("list", "", "nodes", "")
        );
        assert_eq!(
            attrs(Method::GET, &format!("{base}/nodes/n1"), ""),
            resource("get", "", "nodes", "n1")
        );
        assert_eq!(
            attrs(Method::GET, &format!("{base}/nodes"), "watch=true"),
            resource("watch", "", "nodes", "")
        );
        assert_eq!(
            attrs(Method::GET, &format!("{base}/pods"), ""),
            resource("list", "", "pods", "")
        );
        assert_eq!(
            attrs(Method::GET, &format!("{base}/namespaces/ns/pods"), ""),
            resource("list", "ns", "pods", "")
        );
        assert_eq!(
            attrs(Method::GET, &format!("{base}/namespaces/ns/pods/p"), ""),
            resource("get", "ns", "pods", "p")
        );
        assert_eq!(
            attrs(Method::GET, &format!("{base}/namespaces/ns"), ""),
            resource("get", "ns", "namespaces", "ns")
        );
        assert_eq!(
            attrs(Method::POST, &format!("{base}/nodes"), ""),
            resource("create", "", "nodes", "")
        );
        assert_eq!(
            attrs(Method::DELETE, &format!("{base}/nodes"), ""),
            resource("deletecollection", "", "nodes", "")
        );
    }

    #[test]
    fn field_selector_pins_the_name() {
        let path = "/apis/metrics.k8s.io/v1beta1/namespaces/ns/pods";
        assert_eq!(
            attrs(Method::GET, path, "fieldSelector=metadata.name%3Dweb"),
            resource("list", "ns", "pods", "web")
        );
        assert_eq!(
            attrs(Method::GET, path, "fieldSelector=metadata.name!%3Dweb"),
            resource("list", "ns", "pods", "")
        );
    }

    #[test]
    fn discovery_and_other_paths_are_non_resource() {
        for path in [
            "/apis",
            "/apis/metrics.k8s.io",
            "/apis/metrics.k8s.io/v1beta1",
            "/healthz",
            "/version",
            "/",
        ] {
            assert_eq!(
                attrs(Method::GET, path, ""),
                Attributes::NonResource {
                    verb: "get".to_owned(),
                    path: path.to_owned()
                },
                "{path}"
            );
        }
    }
}
