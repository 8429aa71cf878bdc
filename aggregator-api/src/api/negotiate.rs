//! Content negotiation: from an `Accept` header to what the response is
//! (JSON, protobuf, a `Table`, aggregated discovery) or a 406.
//!
//! Follows the apiserver's `negotiation.NegotiateMediaTypeOptions`: clauses are
//! ordered by `q` and then specificity, the server's media types are tried in
//! its own order (JSON first, so `*/*` means JSON), and the media type
//! parameters `as`/`g`/`v` ask for a conversion the endpoint may or may not
//! allow. Like recent apiservers, `q=0` excludes: a clause with `q=0` is never
//! chosen, and a media type whose most specific matching clause has `q=0` is
//! not served even through `*/*`.
//!
//! Why it matters: client-go sends `application/vnd.kubernetes.protobuf, */*`
//! and decodes by the response `Content-Type`; kubectl get sends
//! `application/json;as=Table;v=v1;g=meta.k8s.io` (then the v1beta1 variant,
//! then `application/json`); the aggregator asks `/apis` for
//! `application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`.

use std::cmp::Ordering;

use super::discovery::AGGREGATED_DISCOVERY_CONTENT_TYPE;
use super::table::MetaVersion;

/// Media type of JSON responses.
pub const JSON: &str = "application/json";
/// Media type of Kubernetes protobuf responses (`k8s\0` + `runtime.Unknown`).
pub const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// Nothing in `Accept` can be produced; becomes a 406 `Status` whose message
/// lists what can.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("only the following media types are accepted: {}", .accepted.join(", "))]
pub struct NotAcceptable {
    /// The media types this endpoint can produce.
    pub accepted: Vec<String>,
}

/// Which kind of path is being answered; each allows different conversions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `…/nodes`, `…/pods` and single objects: `Table` conversion allowed.
    Resource,
    /// `/apis/metrics.k8s.io/{v}` and other plain documents: no conversion.
    GroupVersionDiscovery,
    /// `/apis`: aggregated discovery when asked for, else the legacy list.
    RootDiscovery,
}

/// What the server can encode for this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Offer {
    /// Whether protobuf responses are produced.
    pub protobuf: bool,
}

impl Offer {
    /// JSON only.
    pub const JSON_ONLY: Offer = Offer { protobuf: false };
    /// JSON and protobuf (metrics-server parity).
    pub const JSON_AND_PROTOBUF: Offer = Offer { protobuf: true };

    fn encodings(self) -> Vec<Encoding> {
        if self.protobuf {
            vec![Encoding::Json, Encoding::Protobuf]
        } else {
            vec![Encoding::Json]
        }
    }
}

/// Wire encoding of the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `application/json`.
    Json,
    /// `application/vnd.kubernetes.protobuf`.
    Protobuf,
}

impl Encoding {
    /// The media type.
    pub fn media_type(self) -> &'static str {
        match self {
            Encoding::Json => JSON,
            Encoding::Protobuf => PROTOBUF,
        }
    }

    fn type_and_subtype(self) -> (&'static str, &'static str) {
        match self {
            Encoding::Json => ("application", "json"),
            Encoding::Protobuf => ("application", "vnd.kubernetes.protobuf"),
        }
    }
}

/// What to put in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// The resource or document itself.
    Object,
    /// A `meta.k8s.io` `Table` of it (always JSON).
    Table(MetaVersion),
    /// The `apidiscovery.k8s.io/v2` `APIGroupDiscoveryList` (only on `/apis`).
    AggregatedDiscovery,
}

/// The outcome of negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Negotiated {
    /// Encoding of the body.
    pub encoding: Encoding,
    /// What the body is.
    pub target: Target,
}

impl Negotiated {
    /// Plain JSON, the answer to a missing or empty `Accept`.
    pub const JSON: Negotiated = Negotiated {
        encoding: Encoding::Json,
        target: Target::Object,
    };

    /// The response `Content-Type`. Tables are plain `application/json` (as the
    /// apiserver sends them); aggregated discovery names its kind, which is how
    /// client-go recognises it.
    pub fn content_type(&self) -> &'static str {
        match (self.target, self.encoding) {
            (Target::AggregatedDiscovery, Encoding::Json) => AGGREGATED_DISCOVERY_CONTENT_TYPE,
            (Target::AggregatedDiscovery, Encoding::Protobuf) => {
                "application/vnd.kubernetes.protobuf;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
            }
            (_, encoding) => encoding.media_type(),
        }
    }
}

/// One clause of an `Accept` header.
#[derive(Debug, Clone, PartialEq)]
struct Clause {
    type_: String,
    subtype: String,
    q: f32,
    params: Vec<(String, String)>,
}

impl Clause {
    /// 2 exact, 1 `type/*`, 0 `*/*`, none if it does not match.
    fn specificity(&self, encoding: Encoding) -> Option<u8> {
        let (t, s) = encoding.type_and_subtype();
        if self.type_ == t && self.subtype == s {
            Some(2)
        } else if self.type_ == t && self.subtype == "*" {
            Some(1)
        } else if self.type_ == "*" && self.subtype == "*" {
            Some(0)
        } else {
            None
        }
    }
}

/// Parses an `Accept` header like goautoneg: malformed clauses are skipped, an
/// unparsable `q` counts as 0. Type, subtype and parameter names are
/// compared case-insensitively (RFC 9110), slightly more lenient than Go.
fn parse_accept(header: &str) -> Vec<Clause> {
    let mut clauses = Vec::new();
    for part in header.split(',') {
        let mut pieces = part.split(';');
        let range = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
        let (type_, subtype) = match range.split_once('/') {
            Some((t, s)) => (t.trim().to_owned(), s.trim().to_owned()),
            None if range == "*" => ("*".to_owned(), "*".to_owned()),
            None => continue,
        };
        if type_.is_empty() || subtype.is_empty() {
            continue;
        }
        let mut clause = Clause {
            type_,
            subtype,
            q: 1.0,
            params: Vec::new(),
        };
        for param in pieces {
            let Some((key, value)) = param.split_once('=') else {
                continue;
            };
            let key = key.trim().to_ascii_lowercase();
            let value = value.trim();
            if key == "q" {
                clause.q = value.parse::<f32>().unwrap_or(0.0);
            } else {
                clause.params.push((key, value.to_owned()));
            }
        }
        clauses.push(clause);
    }
    // Stable: equal clauses keep header order.
    clauses.sort_by(|a, b| {
        b.q.partial_cmp(&a.q)
            .unwrap_or(Ordering::Equal)
            .then_with(|| (a.type_ == "*").cmp(&(b.type_ == "*")))
            .then_with(|| (a.subtype == "*").cmp(&(b.subtype == "*")))
    });
    clauses
}

/// A conversion requested with `as`/`g`/`v`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Convert<'a> {
    group: &'a str,
    version: &'a str,
    kind: &'a str,
}

/// Which conversions an endpoint accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restriction {
    /// No conversion; plain objects only.
    Plain,
    /// Plain objects or `Table`.
    Resource,
    /// Only aggregated discovery (the first pass on `/apis`).
    AggregatedOnly,
}

/// apiserver `acceptMediaTypeOptions` plus the endpoint's
/// `AllowsMediaTypeTransform`: what this clause asks of this encoding, if allowed.
fn accept_params(clause: &Clause, encoding: Encoding, restriction: Restriction) -> Option<Target> {
    let mut convert: Option<Convert<'_>> = None;
    for (key, value) in &clause.params {
        match key.as_str() {
            "as" => convert.get_or_insert_with(Convert::default).kind = value,
            "g" => convert.get_or_insert_with(Convert::default).group = value,
            "v" => convert.get_or_insert_with(Convert::default).version = value,
            // Only the watch stream schema exists; a plain GET ignores it.
            "stream" if !value.is_empty() && value != "watch" => return None,
            // No alternative server versions are served.
            "sv" if !value.is_empty() => return None,
            _ => {}
        }
    }
    match (restriction, convert) {
        (Restriction::Plain | Restriction::Resource, None) => Some(Target::Object),
        (Restriction::Resource, Some(c))
            if c.group == "meta.k8s.io" && c.kind == "Table" && encoding == Encoding::Json =>
        {
            MetaVersion::from_param(c.version).map(Target::Table)
        }
        (Restriction::AggregatedOnly, Some(c))
            if c.group == "apidiscovery.k8s.io"
                && c.version == "v2"
                && c.kind == "APIGroupDiscoveryList" =>
        {
            Some(Target::AggregatedDiscovery)
        }
        _ => None,
    }
}

fn negotiate_with(
    clauses: &[Clause],
    offer: Offer,
    restriction: Restriction,
) -> Option<Negotiated> {
    let encodings = offer.encodings();
    // A media type is refused when its most specific matching clause says q=0.
    let rejected: Vec<bool> = encodings
        .iter()
        .map(|e| {
            let mut best: Option<(u8, bool)> = None;
            for clause in clauses {
                if let Some(spec) = clause.specificity(*e)
                    && best.is_none_or(|(b, _)| spec > b)
                {
                    best = Some((spec, clause.q <= 0.0));
                }
            }
            best.is_some_and(|(_, refused)| refused)
        })
        .collect();
    for clause in clauses.iter().filter(|c| c.q > 0.0) {
        for (encoding, refused) in encodings.iter().zip(&rejected) {
            if *refused || clause.specificity(*encoding).is_none() {
                continue;
            }
            if let Some(target) = accept_params(clause, *encoding, restriction) {
                return Some(Negotiated {
                    encoding: *encoding,
                    target,
                });
            }
        }
    }
    None
}

/// Decides the response for an `Accept` header (`None` when absent).
///
/// An absent or blank header gets JSON. On `/apis`, an acceptable
/// aggregated-discovery clause wins wherever it stands in the header (as in
/// the apiserver's wrapped discovery handler); otherwise the legacy document
/// is negotiated like any plain one.
pub fn negotiate(
    accept: Option<&str>,
    endpoint: Endpoint,
    offer: Offer,
) -> Result<Negotiated, NotAcceptable> {
    let header = accept.unwrap_or("").trim();
    if header.is_empty() {
        return Ok(Negotiated::JSON);
    }
    let clauses = parse_accept(header);
    let found = match endpoint {
        Endpoint::Resource => negotiate_with(&clauses, offer, Restriction::Resource),
        Endpoint::GroupVersionDiscovery => negotiate_with(&clauses, offer, Restriction::Plain),
        Endpoint::RootDiscovery => negotiate_with(&clauses, offer, Restriction::AggregatedOnly)
            .or_else(|| negotiate_with(&clauses, offer, Restriction::Plain)),
    };
    found.ok_or_else(|| NotAcceptable {
        accepted: offer
            .encodings()
            .into_iter()
            .map(|e| e.media_type().to_owned())
            .collect(),
    })
}

/// The encoding of an error `Status` for this `Accept` header, as the
/// apiserver's `ErrorNegotiated` picks it: whatever a plain object would be
/// sent as, and JSON when nothing is acceptable (so a 406 is readable).
pub fn error_encoding(accept: Option<&str>) -> Encoding {
    negotiate(
        accept,
        Endpoint::GroupVersionDiscovery,
        Offer::JSON_AND_PROTOBUF,
    )
    .map_or(Encoding::Json, |n| n.encoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: Offer = Offer::JSON_AND_PROTOBUF;
    const JSON_ONLY: Offer = Offer::JSON_ONLY;

    fn resource(accept: &str, offer: Offer) -> Result<Negotiated, NotAcceptable> {
        negotiate(Some(accept), Endpoint::Resource, offer)
    }

    fn json() -> Negotiated {
        Negotiated::JSON
    }

    fn protobuf() -> Negotiated {
        Negotiated {
            encoding: Encoding::Protobuf,
            target: Target::Object,
        }
    }

    fn table(v: MetaVersion) -> Negotiated {
        Negotiated {
            encoding: Encoding::Json,
            target: Target::Table(v),
        }
    }

    #[test]
    fn missing_or_blank_header_is_json() {
        assert_eq!(negotiate(None, Endpoint::Resource, BOTH), Ok(json()));
        assert_eq!(negotiate(Some(""), Endpoint::Resource, BOTH), Ok(json()));
        assert_eq!(
            negotiate(Some("  "), Endpoint::RootDiscovery, BOTH),
            Ok(json())
        );
    }

    #[test]
    fn wildcards_and_json_give_json() {
        for accept in [
            "*/*",
            "application/json",
            "application/*",
            "*",
            "application/json; charset=utf-8",
        ] {
            assert_eq!(resource(accept, BOTH), Ok(json()), "{accept}");
        }
    }

    #[test]
    fn client_go_gets_protobuf_when_offered() {
        let accept = "application/vnd.kubernetes.protobuf, */*";
        assert_eq!(resource(accept, BOTH), Ok(protobuf()));
        assert_eq!(resource(accept, JSON_ONLY), Ok(json()), "falls back to */*");
        assert_eq!(
            resource("application/vnd.kubernetes.protobuf", JSON_ONLY),
            Err(NotAcceptable {
                accepted: vec![JSON.to_owned()]
            })
        );
    }

    #[test]
    fn kubectl_get_gets_a_table() {
        let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(resource(accept, BOTH), Ok(table(MetaVersion::V1)));
        assert_eq!(
            resource(
                "application/json;as=Table;v=v1beta1;g=meta.k8s.io, application/json",
                BOTH
            ),
            Ok(table(MetaVersion::V1Beta1))
        );
        assert_eq!(
            resource(
                "application/json;as=Table;v=v2;g=meta.k8s.io, application/json",
                BOTH
            ),
            Ok(json()),
            "an unknown Table version is skipped"
        );
        assert_eq!(
            resource("*/*;as=Table;v=v1;g=meta.k8s.io", BOTH),
            Ok(table(MetaVersion::V1))
        );
        assert!(
            resource("application/json;as=Table;v=v1", BOTH).is_err(),
            "group required"
        );
    }

    #[test]
    fn tables_are_json_only() {
        assert!(
            resource(
                "application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io",
                BOTH
            )
            .is_err()
        );
        assert_eq!(
            resource(
                "application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io, application/json",
                BOTH
            ),
            Ok(json())
        );
    }

    #[test]
    fn tables_only_on_resources() {
        let accept = "application/json;as=Table;v=v1;g=meta.k8s.io";
        assert!(negotiate(Some(accept), Endpoint::GroupVersionDiscovery, BOTH).is_err());
        assert_eq!(
            negotiate(
                Some(&format!("{accept}, application/json")),
                Endpoint::GroupVersionDiscovery,
                BOTH
            ),
            Ok(json())
        );
    }

    #[test]
    fn unsupported_types_are_not_acceptable() {
        let e = resource("text/plain", BOTH).expect_err("406");
        assert_eq!(
            e.to_string(),
            "only the following media types are accepted: application/json, application/vnd.kubernetes.protobuf"
        );
        assert!(resource("application/yaml", BOTH).is_err());
        assert!(resource("garbage", BOTH).is_err());
        assert!(
            resource(
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
                BOTH
            )
            .is_err()
        );
        assert!(resource("application/json;stream=other", BOTH).is_err());
        assert!(resource("application/json;sv=v2", BOTH).is_err());
        assert_eq!(resource("application/json;stream=watch", BOTH), Ok(json()));
        assert_eq!(resource("application/json;pretty=1", BOTH), Ok(json()));
    }

    #[test]
    fn q_values_order_and_exclude() {
        assert_eq!(
            resource(
                "application/json;q=0.5, application/vnd.kubernetes.protobuf",
                BOTH
            ),
            Ok(protobuf())
        );
        assert_eq!(
            resource(
                "application/vnd.kubernetes.protobuf;q=0.1, application/json;q=0.9",
                BOTH
            ),
            Ok(json())
        );
        assert!(resource("application/json;q=0", JSON_ONLY).is_err());
        assert!(resource("*/*;q=0", BOTH).is_err());
        assert_eq!(
            resource("application/json;q=0, */*", BOTH),
            Ok(protobuf()),
            "a specific q=0 refuses JSON even through */*"
        );
        assert!(resource("application/json;q=0, */*", JSON_ONLY).is_err());
        assert!(
            resource("application/json;q=abc", JSON_ONLY).is_err(),
            "bad q is 0"
        );
        assert_eq!(resource("application/json;Q=1", JSON_ONLY), Ok(json()));
    }

    #[test]
    fn specificity_breaks_q_ties() {
        assert_eq!(
            resource("*/*, application/vnd.kubernetes.protobuf", BOTH),
            Ok(protobuf())
        );
        assert_eq!(
            resource("application/*, application/vnd.kubernetes.protobuf", BOTH),
            Ok(protobuf())
        );
    }

    #[test]
    fn root_discovery_prefers_aggregated_when_asked() {
        let aggregated = Negotiated {
            encoding: Encoding::Json,
            target: Target::AggregatedDiscovery,
        };
        let accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
        assert_eq!(
            negotiate(Some(accept), Endpoint::RootDiscovery, BOTH),
            Ok(aggregated)
        );
        assert_eq!(
            negotiate(
                Some(&format!("application/json, {accept}")),
                Endpoint::RootDiscovery,
                BOTH
            ),
            Ok(aggregated),
            "aggregated wins wherever it is listed"
        );
        assert_eq!(
            negotiate(Some("application/json"), Endpoint::RootDiscovery, BOTH),
            Ok(json()),
            "legacy APIGroupList otherwise"
        );
        assert_eq!(
            negotiate(
                Some(
                    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
                ),
                Endpoint::RootDiscovery,
                BOTH
            ),
            Ok(json()),
            "v2beta1 is not served"
        );
        assert_eq!(
            negotiate(Some(accept), Endpoint::Resource, BOTH).map_err(|e| e.accepted.len()),
            Err(2),
            "only /apis converts to discovery"
        );
    }

    #[test]
    fn content_types() {
        assert_eq!(json().content_type(), "application/json");
        assert_eq!(
            protobuf().content_type(),
            "application/vnd.kubernetes.protobuf"
        );
        assert_eq!(table(MetaVersion::V1).content_type(), "application/json");
        let aggregated = Negotiated {
            encoding: Encoding::Json,
            target: Target::AggregatedDiscovery,
        };
        assert_eq!(
            aggregated.content_type(),
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
        );
        let aggregated_pb = Negotiated {
            encoding: Encoding::Protobuf,
            ..aggregated
        };
        assert!(aggregated_pb.content_type().starts_with(PROTOBUF));
    }

    #[test]
    fn parse_accept_sorts_stably() {
        let clauses =
            parse_accept("text/html, application/xhtml+xml, application/xml;q=0.9, */*;q=0.8");
        let order: Vec<_> = clauses
            .iter()
            .map(|c| format!("{}/{}", c.type_, c.subtype))
            .collect();
        assert_eq!(
            order,
            [
                "text/html",
                "application/xhtml+xml",
                "application/xml",
                "*/*"
            ]
        );
        assert_eq!(
            resource(
                "text/html, application/xhtml+xml, application/xml;q=0.9, */*;q=0.8",
                BOTH
            ),
            Ok(json()),
            "a browser gets JSON"
        );
        assert!(clauses[2].params.is_empty(), "q is not a parameter");
        assert!((clauses[2].q - 0.9).abs() < f32::EPSILON);
    }
}
