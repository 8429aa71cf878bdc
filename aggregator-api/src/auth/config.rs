//! What delegated authentication trusts, and the handle through which it is
//! swapped at runtime.
//!
//! kube-apiserver publishes its client CA and front-proxy (request-header)
//! settings in the ConfigMap `kube-system/extension-apiserver-authentication`
//! (contract §3.3). CAs rotate, so the config is re-read and swapped while the
//! server runs: [`AuthConfigHandle`] is the one shared cell, readers take an
//! `Arc` snapshot per request and never hold a lock across an await.
//! Flags (`--client-ca-file`, `--requestheader-client-ca-file`, …) override
//! the ConfigMap part they name, as in the Kubernetes generic apiserver.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{DistinguishedName, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

/// ConfigMap key of the client CA bundle (PEM).
pub const KEY_CLIENT_CA: &str = "client-ca-file";
/// ConfigMap key of the front-proxy CA bundle (PEM).
pub const KEY_REQUESTHEADER_CA: &str = "requestheader-client-ca-file";
/// ConfigMap key: JSON array of allowed front-proxy common names.
pub const KEY_ALLOWED_NAMES: &str = "requestheader-allowed-names";
/// ConfigMap key: JSON array of user name headers.
pub const KEY_USERNAME_HEADERS: &str = "requestheader-username-headers";
/// ConfigMap key: JSON array of UID headers.
pub const KEY_UID_HEADERS: &str = "requestheader-uid-headers";
/// ConfigMap key: JSON array of group headers.
pub const KEY_GROUP_HEADERS: &str = "requestheader-group-headers";
/// ConfigMap key: JSON array of extra header prefixes.
pub const KEY_EXTRA_PREFIXES: &str = "requestheader-extra-headers-prefix";

/// Defaults when the ConfigMap lacks a key (contract §3.3).
pub const DEFAULT_USERNAME_HEADERS: &[&str] = &["x-remote-user"];
/// Default group header.
pub const DEFAULT_GROUP_HEADERS: &[&str] = &["x-remote-group"];
/// Default extra header prefix.
pub const DEFAULT_EXTRA_PREFIXES: &[&str] = &["x-remote-extra-"];

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A CA file could not be read.
    #[error("reading {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A CA bundle is not valid PEM.
    #[error("{origin}: invalid PEM: {source}")]
    Pem {
        /// Where the bundle came from (file or ConfigMap key).
        origin: String,
        /// Why.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A CA bundle holds no certificate.
    #[error("{origin}: no certificate found")]
    Empty {
        /// Where the bundle came from.
        origin: String,
    },
    /// A certificate of the bundle cannot be a trust anchor.
    #[error("{origin}: certificate {index} is not a usable CA: {source}")]
    BadCa {
        /// Where the bundle came from.
        origin: String,
        /// Position in the bundle, from 0.
        index: usize,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused to build a verifier for the bundle.
    #[error("{origin}: {source}")]
    Verifier {
        /// Where the bundle came from.
        origin: String,
        /// Why.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// A list value is not a JSON array of strings.
    #[error("{key}: not a JSON array of strings: {source}")]
    StringList {
        /// The ConfigMap key.
        key: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A CA bundle and the verifier built from it once, so per-request
/// verification costs no parsing.
#[derive(Clone)]
pub struct CaBundle {
    origin: String,
    certs: Vec<CertificateDer<'static>>,
    subjects: Vec<DistinguishedName>,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl CaBundle {
    /// Parses a PEM bundle; `origin` names it in errors and logs.
    pub fn from_pem(origin: impl Into<String>, pem: &[u8]) -> Result<Self> {
        let origin = origin.into();
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| Error::Pem {
                origin: origin.clone(),
                source,
            })?;
        if certs.is_empty() {
            return Err(Error::Empty { origin });
        }
        let mut roots = RootCertStore::empty();
        for (index, cert) in certs.iter().enumerate() {
            roots.add(cert.clone()).map_err(|source| Error::BadCa {
                origin: origin.clone(),
                index,
                source,
            })?;
        }
        let subjects = roots.subjects();
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|source| Error::Verifier {
            origin: origin.clone(),
            source,
        })?;
        Ok(CaBundle {
            origin,
            certs,
            subjects,
            verifier,
        })
    }

    /// Reads and parses a PEM file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let pem = std::fs::read(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_pem(path.display().to_string(), &pem)
    }

    /// Where the bundle came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The CA subjects, offered to TLS clients as acceptable issuers.
    pub fn subjects(&self) -> &[DistinguishedName] {
        &self.subjects
    }

    /// Verifies a presented chain (leaf first) against this bundle for client
    /// authentication: signature path, validity at `now`, and the clientAuth
    /// extended key usage when the leaf has an EKU extension (as Go's
    /// `x509.Verify` with `ExtKeyUsageClientAuth` does).
    pub fn verify(
        &self,
        chain: &[CertificateDer<'static>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(rustls::Error::NoCertificatesPresented);
        };
        self.verifier
            .verify_client_cert(leaf, intermediates, now)
            .map(|_| ())
    }
}

impl PartialEq for CaBundle {
    fn eq(&self, other: &Self) -> bool {
        self.certs == other.certs
    }
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaBundle")
            .field("origin", &self.origin)
            .field("certificates", &self.certs.len())
            .finish()
    }
}

/// Front-proxy (request-header) authentication settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestHeaderConfig {
    /// CA the front proxy's client certificate must chain to.
    pub ca: CaBundle,
    /// Common names accepted; empty accepts any certificate of `ca`.
    pub allowed_names: Vec<String>,
    /// Headers holding the user name, first non-empty wins; lower case.
    pub username_headers: Vec<String>,
    /// Headers holding the UID, first non-empty wins; lower case.
    pub uid_headers: Vec<String>,
    /// Headers holding groups, every value of each; lower case.
    pub group_headers: Vec<String>,
    /// Prefixes of headers holding extra attributes; lower case.
    pub extra_header_prefixes: Vec<String>,
}

impl RequestHeaderConfig {
    /// Settings with the default header names and no name restriction.
    pub fn with_defaults(ca: CaBundle) -> Self {
        RequestHeaderConfig {
            ca,
            allowed_names: Vec::new(),
            username_headers: owned(DEFAULT_USERNAME_HEADERS),
            uid_headers: Vec::new(),
            group_headers: owned(DEFAULT_GROUP_HEADERS),
            extra_header_prefixes: owned(DEFAULT_EXTRA_PREFIXES),
        }
    }
}

fn owned(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn lower(items: Vec<String>) -> Vec<String> {
    items
        .into_iter()
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Everything authentication trusts. Either part may be absent: then that
/// step of the authentication order is skipped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthConfig {
    /// CA for plain client-certificate authentication (user = CN, groups = O).
    pub client_ca: Option<CaBundle>,
    /// Front-proxy settings.
    pub request_header: Option<RequestHeaderConfig>,
}

impl AuthConfig {
    /// Parses the `data` of `kube-system/extension-apiserver-authentication`.
    /// Empty values count as absent; list keys missing from the data take the
    /// defaults (`x-remote-user`, `x-remote-group`, `x-remote-extra-`).
    pub fn from_configmap_data(data: &BTreeMap<String, String>) -> Result<Self> {
        let origin = |key: &str| format!("configmap key {key}");
        let text = |key: &str| data.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
        let client_ca = text(KEY_CLIENT_CA)
            .map(|pem| CaBundle::from_pem(origin(KEY_CLIENT_CA), pem.as_bytes()))
            .transpose()?;
        let request_header = match text(KEY_REQUESTHEADER_CA) {
            None => None,
            Some(pem) => {
                let ca = CaBundle::from_pem(origin(KEY_REQUESTHEADER_CA), pem.as_bytes())?;
                let list = |key: &str, default: &[&str]| -> Result<Vec<String>> {
                    match data.get(key) {
                        None => Ok(owned(default)),
                        Some(value) => parse_string_list(key, value),
                    }
                };
                Some(RequestHeaderConfig {
                    ca,
                    allowed_names: list(KEY_ALLOWED_NAMES, &[])?,
                    username_headers: lower(list(KEY_USERNAME_HEADERS, DEFAULT_USERNAME_HEADERS)?),
                    uid_headers: lower(list(KEY_UID_HEADERS, &[])?),
                    group_headers: lower(list(KEY_GROUP_HEADERS, DEFAULT_GROUP_HEADERS)?),
                    extra_header_prefixes: lower(list(KEY_EXTRA_PREFIXES, DEFAULT_EXTRA_PREFIXES)?),
                })
            }
        };
        Ok(AuthConfig {
            client_ca,
            request_header,
        })
    }

    /// This config with the parts the flags set replaced by them.
    pub fn with_overrides(mut self, overrides: &AuthOverrides) -> Self {
        if let Some(ca) = &overrides.client_ca {
            self.client_ca = Some(ca.clone());
        }
        if let Some(rh) = &overrides.request_header {
            self.request_header = Some(rh.clone());
        }
        self
    }

    /// Subjects of every CA, offered in the TLS CertificateRequest so clients
    /// pick a matching certificate (Go clients send none when nothing matches).
    pub fn acceptable_issuers(&self) -> Vec<DistinguishedName> {
        let mut out: Vec<DistinguishedName> = Vec::new();
        let cas = self
            .client_ca
            .iter()
            .chain(self.request_header.as_ref().map(|rh| &rh.ca));
        for subject in cas.flat_map(|ca| ca.subjects()) {
            if !out.iter().any(|s| s.as_ref() == subject.as_ref()) {
                out.push(subject.clone());
            }
        }
        out
    }
}

/// A ConfigMap list value: a JSON array of strings; `null` or blank is empty.
pub fn parse_string_list(key: &str, value: &str) -> Result<Vec<String>> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str::<Option<Vec<String>>>(value)
        .map(Option::unwrap_or_default)
        .map_err(|source| Error::StringList {
            key: key.to_owned(),
            source,
        })
}

/// The parts of [`AuthConfig`] given by flags, which win over the ConfigMap.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthOverrides {
    /// From `--client-ca-file`.
    pub client_ca: Option<CaBundle>,
    /// From `--requestheader-client-ca-file` and the other `--requestheader-*`.
    pub request_header: Option<RequestHeaderConfig>,
}

impl AuthOverrides {
    /// Whether the flags set everything, so the ConfigMap need not be read.
    pub fn is_complete(&self) -> bool {
        self.client_ca.is_some() && self.request_header.is_some()
    }
}

/// The shared, swappable [`AuthConfig`]. Cloning shares the cell.
///
/// Starts empty ("not loaded"): `/readyz` fails until the first config is
/// stored, so the aggregator does not route requests that would be
/// authenticated against nothing.
#[derive(Clone, Default)]
pub struct AuthConfigHandle {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    current: RwLock<Option<Arc<AuthConfig>>>,
    generation: AtomicU64,
}

impl AuthConfigHandle {
    /// An empty handle.
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle already holding `config` (tests, flag-only setups).
    pub fn loaded(config: AuthConfig) -> Self {
        let handle = Self::new();
        handle.store(config);
        handle
    }

    /// The current config, `None` until one is stored.
    pub fn current(&self) -> Option<Arc<AuthConfig>> {
        self.shared
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Whether a config was stored.
    pub fn is_loaded(&self) -> bool {
        self.current().is_some()
    }

    /// Stores `config`; returns whether it differs from the previous one
    /// (so a reloader logs only changes).
    pub fn store(&self, config: AuthConfig) -> bool {
        let mut slot = self
            .shared
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.as_deref() == Some(&config) {
            return false;
        }
        *slot = Some(Arc::new(config));
        self.shared.generation.fetch_add(1, Ordering::Release);
        true
    }

    /// Incremented by every change, so dependents (the TLS acceptable-issuer
    /// list) notice a swap with one atomic load.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }
}

impl fmt::Debug for AuthConfigHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfigHandle")
            .field("generation", &self.generation())
            .field("loaded", &self.is_loaded())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    fn ca_pem(cn: &str) -> String {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").pem()
    }

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parses_a_full_configmap() {
        let client = ca_pem("client-ca");
        let front = ca_pem("front-proxy-ca");
        let config = AuthConfig::from_configmap_data(&data(&[
            (KEY_CLIENT_CA, &client),
            (KEY_REQUESTHEADER_CA, &front),
            (KEY_ALLOWED_NAMES, r#"["front-proxy-client"]"#),
            (KEY_USERNAME_HEADERS, r#"["X-Remote-User"]"#),
            (KEY_GROUP_HEADERS, r#"["X-Remote-Group"]"#),
            (KEY_EXTRA_PREFIXES, r#"["X-Remote-Extra-"]"#),
            (KEY_UID_HEADERS, r#"["X-Remote-Uid"]"#),
        ]))
        .expect("parses");
        assert!(config.client_ca.is_some());
        let rh = config.request_header.as_ref().expect("request header");
        assert_eq!(rh.allowed_names, ["front-proxy-client"]);
        assert_eq!(rh.username_headers, ["x-remote-user"], "lower-cased");
        assert_eq!(rh.uid_headers, ["x-remote-uid"]);
        assert_eq!(rh.extra_header_prefixes, ["x-remote-extra-"]);
        assert_eq!(config.acceptable_issuers().len(), 2);
    }

    #[test]
    fn missing_lists_take_defaults_and_null_is_empty() {
        let front = ca_pem("front");
        let config = AuthConfig::from_configmap_data(&data(&[
            (KEY_REQUESTHEADER_CA, &front),
            (KEY_ALLOWED_NAMES, "null"),
        ]))
        .expect("parses");
        let rh = config.request_header.expect("request header");
        assert!(rh.allowed_names.is_empty());
        assert_eq!(rh.username_headers, ["x-remote-user"]);
        assert_eq!(rh.group_headers, ["x-remote-group"]);
        assert!(rh.uid_headers.is_empty());
        assert!(config.client_ca.is_none());
    }

    #[test]
    fn empty_configmap_is_an_empty_config() {
        assert_eq!(
            AuthConfig::from_configmap_data(&BTreeMap::new()).expect("parses"),
            AuthConfig::default()
        );
    }

    #[test]
    fn errors_name_the_key() {
        let front = ca_pem("front");
        let err = AuthConfig::from_configmap_data(&data(&[
            (KEY_REQUESTHEADER_CA, &front),
            (KEY_GROUP_HEADERS, "x-remote-group"),
        ]))
        .expect_err("not JSON");
        assert!(
            err.to_string()
                .starts_with("requestheader-group-headers: not a JSON array of strings"),
            "{err}"
        );
        let err = AuthConfig::from_configmap_data(&data(&[(KEY_CLIENT_CA, "no pem here")]))
            .expect_err("no certificate");
        assert_eq!(
            err.to_string(),
            "configmap key client-ca-file: no certificate found"
        );
        let err = CaBundle::from_file(Path::new("/nonexistent/ca.crt")).expect_err("missing");
        assert!(err.to_string().starts_with("reading /nonexistent/ca.crt"));
    }

    #[test]
    fn overrides_replace_their_part() {
        let a = CaBundle::from_pem("a", ca_pem("a").as_bytes()).expect("a");
        let b = CaBundle::from_pem("b", ca_pem("b").as_bytes()).expect("b");
        let base = AuthConfig {
            client_ca: Some(a),
            request_header: None,
        };
        let overrides = AuthOverrides {
            client_ca: Some(b.clone()),
            request_header: Some(RequestHeaderConfig::with_defaults(b.clone())),
        };
        assert!(overrides.is_complete());
        let merged = base.with_overrides(&overrides);
        assert_eq!(merged.client_ca, Some(b.clone()));
        assert_eq!(
            merged.acceptable_issuers().len(),
            1,
            "the same CA is offered once"
        );
    }

    #[test]
    fn handle_counts_changes_only() {
        let handle = AuthConfigHandle::new();
        assert!(!handle.is_loaded());
        let gen0 = handle.generation();
        assert!(handle.store(AuthConfig::default()));
        assert!(handle.is_loaded());
        assert!(!handle.store(AuthConfig::default()), "same config");
        assert_eq!(handle.generation(), gen0 + 1);
        let ca = CaBundle::from_pem("a", ca_pem("a").as_bytes()).expect("a");
        assert!(handle.store(AuthConfig {
            client_ca: Some(ca),
            request_header: None
        }));
        assert_eq!(handle.generation(), gen0 + 2);
    }
}
