//! Who is asking: delegated authentication in the Kubernetes order
//! (contract §3.4).
//!
//! 1. Request-header: the peer's certificate chains to the front-proxy CA,
//!    its CN is allowed, and a user name header is set → the user the
//!    aggregator vouches for.
//! 2. Client certificate against the client CA → user = CN, groups = O.
//! 3. `Authorization: Bearer` → TokenReview (cached).
//! 4. Anonymous.
//!
//! Like the apiserver's union authenticator, every step that *fails* (a
//! certificate that does not verify, a disallowed CN, a rejected token) is
//! remembered; if no later step succeeds the request gets 401 rather than
//! falling through to anonymous. A step that simply does not apply (no
//! certificate, no CA configured, no user name header) is skipped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderMap;
use rustls_pki_types::{CertificateDer, UnixTime};

use super::cache::{DEFAULT_CAPACITY, TtlCache};
use super::config::{AuthConfigHandle, CaBundle, RequestHeaderConfig};
use super::review::{ReviewError, TokenReviewer, TokenVerdict};
use super::{ANONYMOUS_USER, AUTHENTICATED_GROUP, UNAUTHENTICATED_GROUP, User, x509};

/// Why a request is not authenticated; every variant becomes a 401.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The presented chain does not verify against the CA.
    #[error("verifying certificate against {ca}: {source}")]
    Untrusted {
        /// The CA bundle's origin.
        ca: String,
        /// rustls' verdict.
        #[source]
        source: rustls::Error,
    },
    /// The front proxy's CN is not among the allowed names.
    #[error(
        "client certificate common name {common_name:?} is not in the allowed request-header names"
    )]
    NameNotAllowed {
        /// The certificate's CN.
        common_name: String,
    },
    /// The certificate's subject cannot be read.
    #[error("reading the client certificate: {0}")]
    Certificate(#[from] x509::Error),
    /// TokenReview said the token is not valid.
    #[error("token rejected{}", if .0.is_empty() { String::new() } else { format!(": {}", .0) })]
    TokenRejected(String),
    /// TokenReview could not be performed.
    #[error("token review failed: {0}")]
    TokenReview(#[source] ReviewError),
    /// Several steps failed; all reasons, in order.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<Error>),
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which step authenticated the request (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// Front proxy headers.
    RequestHeader,
    /// Client certificate.
    ClientCert,
    /// Bearer token.
    Token,
    /// Nobody.
    Anonymous,
}

impl Method {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::RequestHeader => "requestheader",
            Method::ClientCert => "x509",
            Method::Token => "token",
            Method::Anonymous => "anonymous",
        }
    }
}

/// A successful authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The user, with `system:authenticated` added unless anonymous.
    pub user: User,
    /// How.
    pub method: Method,
}

/// The outcome of one step.
enum Step {
    Authenticated(User),
    Skip,
    Failed(Error),
}

/// Authenticates requests against the current [`AuthConfigHandle`].
pub struct Authenticator {
    config: AuthConfigHandle,
    tokens: Option<Arc<dyn TokenReviewer>>,
    token_ttl: Duration,
    token_cache: Mutex<TtlCache<String, TokenVerdict>>,
}

impl Authenticator {
    /// Authenticates with `config`; bearer tokens only when `tokens` is set.
    /// Token answers are cached 10 s, like the apiserver's default.
    pub fn new(config: AuthConfigHandle, tokens: Option<Arc<dyn TokenReviewer>>) -> Self {
        Authenticator {
            config,
            tokens,
            token_ttl: Duration::from_secs(10),
            token_cache: Mutex::new(TtlCache::new(DEFAULT_CAPACITY)),
        }
    }

    /// Sets how long TokenReview answers (valid and invalid) are cached.
    pub fn with_token_cache_ttl(mut self, ttl: Duration) -> Self {
        self.token_ttl = ttl;
        self
    }

    /// The config handle (readiness checks whether it is loaded).
    pub fn config(&self) -> &AuthConfigHandle {
        &self.config
    }

    /// Authenticates a request from its peer certificate chain (leaf first,
    /// empty when none was presented) and its headers.
    pub async fn authenticate(
        &self,
        peer: &[CertificateDer<'static>],
        headers: &HeaderMap,
    ) -> Result<Authenticated> {
        let mut failures = Vec::new();
        let config = self.config.current();
        let now = UnixTime::now();
        if !peer.is_empty() {
            if let Some(rh) = config.as_ref().and_then(|c| c.request_header.as_ref()) {
                match request_header(rh, peer, headers, now) {
                    Step::Authenticated(user) => return Ok(finish(user, Method::RequestHeader)),
                    Step::Failed(e) => failures.push(e),
                    Step::Skip => {}
                }
            }
            if let Some(ca) = config.as_ref().and_then(|c| c.client_ca.as_ref()) {
                match client_cert(ca, peer, now) {
                    Step::Authenticated(user) => return Ok(finish(user, Method::ClientCert)),
                    Step::Failed(e) => failures.push(e),
                    Step::Skip => {}
                }
            }
        }
        if let Some(token) = bearer_token(headers) {
            match self.token(token).await {
                Step::Authenticated(user) => return Ok(finish(user, Method::Token)),
                Step::Failed(e) => failures.push(e),
                Step::Skip => {}
            }
        }
        match failures.len() {
            0 => Ok(Authenticated {
                user: User {
                    name: ANONYMOUS_USER.to_owned(),
                    uid: String::new(),
                    groups: vec![UNAUTHENTICATED_GROUP.to_owned()],
                    extra: BTreeMap::new(),
                },
                method: Method::Anonymous,
            }),
            1 => Err(failures.remove(0)),
            _ => Err(Error::Several(failures)),
        }
    }

    async fn token(&self, token: &str) -> Step {
        let Some(reviewer) = &self.tokens else {
            return Step::Skip;
        };
        let cached = self
            .token_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&token.to_owned(), Instant::now());
        let verdict = match cached {
            Some(verdict) => verdict,
            None => match reviewer.review(token).await {
                Ok(verdict) => {
                    self.token_cache
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(
                            token.to_owned(),
                            verdict.clone(),
                            self.token_ttl,
                            Instant::now(),
                        );
                    verdict
                }
                // Errors are not cached: the next request tries again.
                Err(e) => return Step::Failed(Error::TokenReview(e)),
            },
        };
        match verdict {
            TokenVerdict::Authenticated(user) => Step::Authenticated(user),
            TokenVerdict::Rejected(reason) => Step::Failed(Error::TokenRejected(reason)),
        }
    }
}

/// Adds `system:authenticated` to a non-anonymous user (the aggregator's own
/// calls arrive as `system:kube-aggregator` without groups).
fn finish(mut user: User, method: Method) -> Authenticated {
    let anonymous =
        user.name == ANONYMOUS_USER || user.groups.iter().any(|g| g == UNAUTHENTICATED_GROUP);
    if !anonymous && !user.groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
        user.groups.push(AUTHENTICATED_GROUP.to_owned());
    }
    Authenticated { user, method }
}

fn request_header(
    rh: &RequestHeaderConfig,
    peer: &[CertificateDer<'static>],
    headers: &HeaderMap,
    now: UnixTime,
) -> Step {
    if let Err(source) = rh.ca.verify(peer, now) {
        return Step::Failed(Error::Untrusted {
            ca: rh.ca.origin().to_owned(),
            source,
        });
    }
    if !rh.allowed_names.is_empty() {
        let subject = match x509::subject(peer[0].as_ref()) {
            Ok(s) => s,
            Err(e) => return Step::Failed(e.into()),
        };
        if !rh.allowed_names.contains(&subject.common_name) {
            return Step::Failed(Error::NameNotAllowed {
                common_name: subject.common_name,
            });
        }
    }
    let Some(name) = first_value(headers, &rh.username_headers) else {
        return Step::Skip;
    };
    let groups = rh
        .group_headers
        .iter()
        .flat_map(|h| headers.get_all(h.as_str()))
        .filter_map(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect();
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (header, value) in headers {
        let header = header.as_str();
        let Some(prefix) = rh
            .extra_header_prefixes
            .iter()
            .find(|p| header.starts_with(p.as_str()))
        else {
            continue;
        };
        let Ok(value) = value.to_str() else {
            continue;
        };
        let key = unescape_extra_key(&header[prefix.len()..].to_ascii_lowercase());
        extra.entry(key).or_default().push(value.to_owned());
    }
    Step::Authenticated(User {
        name,
        uid: first_value(headers, &rh.uid_headers).unwrap_or_default(),
        groups,
        extra,
    })
}

fn client_cert(ca: &CaBundle, peer: &[CertificateDer<'static>], now: UnixTime) -> Step {
    if let Err(source) = ca.verify(peer, now) {
        return Step::Failed(Error::Untrusted {
            ca: ca.origin().to_owned(),
            source,
        });
    }
    let subject = match x509::subject(peer[0].as_ref()) {
        Ok(s) => s,
        Err(e) => return Step::Failed(e.into()),
    };
    if subject.common_name.is_empty() {
        return Step::Skip;
    }
    Step::Authenticated(User {
        name: subject.common_name,
        uid: String::new(),
        groups: subject.organizations,
        extra: BTreeMap::new(),
    })
}

/// The first non-empty value among `names` (each header's first value), as
/// the apiserver's `headerValue` reads user name and UID.
fn first_value(headers: &HeaderMap, names: &[String]) -> Option<String> {
    names
        .iter()
        .filter_map(|n| headers.get(n.as_str()))
        .filter_map(|v| v.to_str().ok())
        .find(|v| !v.is_empty())
        .map(str::to_owned)
}

/// `Authorization: Bearer <token>`, scheme case-insensitive, token non-empty.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// Go's `url.PathUnescape`, falling back to the text as is on a bad escape
/// (the apiserver's `unescapeExtraKey`): extra keys may contain characters
/// header names cannot, such as `/` in `authentication.kubernetes.io/pod-name`.
fn unescape_extra_key(key: &str) -> String {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |b: u8| char::from(b).to_digit(16);
            match (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push((hi * 16 + lo) as u8);
                    i += 3;
                    continue;
                }
                _ => return key.to_owned(),
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        map
    }

    #[test]
    fn extra_keys_unescape_like_go() {
        assert_eq!(
            unescape_extra_key("authentication.kubernetes.io%2fpod-name"),
            "authentication.kubernetes.io/pod-name"
        );
        assert_eq!(unescape_extra_key("plain"), "plain");
        assert_eq!(unescape_extra_key("bad%zz"), "bad%zz", "kept as is");
        assert_eq!(unescape_extra_key("end%2"), "end%2");
    }

    #[test]
    fn bearer_tokens_are_read_strictly() {
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Bearer abc")])),
            Some("abc")
        );
        assert_eq!(
            bearer_token(&headers(&[("authorization", "bearer  abc ")])),
            Some("abc")
        );
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Basic abc")])),
            None
        );
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Bearer ")])),
            None
        );
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn first_non_empty_header_wins() {
        let h = headers(&[
            ("x-a", ""),
            ("x-b", "bob"),
            ("x-b", "eve"),
            ("x-c", "carol"),
        ]);
        let names = ["x-a".to_owned(), "x-b".to_owned(), "x-c".to_owned()];
        assert_eq!(first_value(&h, &names).as_deref(), Some("bob"));
        assert_eq!(first_value(&h, &["x-z".to_owned()]), None);
    }

    #[test]
    fn authenticated_group_is_added_once() {
        let user = |groups: &[&str]| User {
            name: "u".to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..User::default()
        };
        assert_eq!(
            finish(user(&[]), Method::Token).user.groups,
            ["system:authenticated"]
        );
        assert_eq!(
            finish(user(&["system:authenticated"]), Method::Token)
                .user
                .groups,
            ["system:authenticated"]
        );
        assert_eq!(
            finish(user(&["system:unauthenticated"]), Method::Token)
                .user
                .groups,
            ["system:unauthenticated"]
        );
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(
            Error::TokenRejected(String::new()).to_string(),
            "token rejected"
        );
        assert_eq!(
            Error::Several(vec![
                Error::TokenRejected("expired".to_owned()),
                Error::NameNotAllowed {
                    common_name: "x".to_owned()
                }
            ])
            .to_string(),
            "token rejected: expired; client certificate common name \"x\" is not in the allowed request-header names"
        );
    }
}
