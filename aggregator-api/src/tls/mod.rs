//! TLS of the API server: the rustls `ServerConfig` (TLS 1.2+, ALPN `h2` and
//! `http/1.1`, narrowed by `--tls-min-version` and `--tls-cipher-suites`:
//! [`policy`]), the serving certificate and the optional client certificate
//! request (contract §3.1).
//!
//! **Client certificates are requested, never required, and not judged
//! here.** Kubelet probes and token-bearing clients present none, and a
//! certificate's meaning depends on which CA it chains to: one from the
//! front-proxy CA only vouches for `X-Remote-*` headers, one from the client
//! CA is a user. So the handshake only proves possession of the key
//! (CertificateVerify) and `auth::authn` verifies the chain per request
//! against the CAs current at that moment. The CertificateRequest still
//! names both CAs' subjects, because Go clients send no certificate when none
//! of theirs matches the names offered.
//!
//! **Serving certificate reload.** With `--tls-cert-file`/`--tls-private-key-file`
//! the files' modification times are checked at most once a second, from the
//! handshake path (`ResolvesServerCert`) — two `stat` calls, no background
//! task. A changed pair is loaded only if it parses and the key matches the
//! certificate; otherwise the previous pair keeps serving (a rotation writes
//! two files, and a handshake may land between the writes).
//!
//! **No files given:** like metrics-server, a self-signed certificate for
//! `localhost`, `127.0.0.1` and any extra names is generated into
//! `--cert-dir` as `apiserver.crt`/`apiserver.key` at start, or reused if
//! both files are already there.

pub mod policy;

pub use policy::TlsPolicy;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::auth::config::AuthConfigHandle;

/// File name stem of a generated pair, as the generic apiserver names it.
pub const SELF_SIGNED_PAIR_NAME: &str = "apiserver";

/// How often the serving certificate files are checked for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// Distinct acceptable-issuer lists kept for the life of the process (see
/// [`IssuerHints`]); CA rotations are rare, and past the limit no hints are
/// sent, which clients handle by offering any certificate.
const MAX_HINT_GENERATIONS: usize = 64;

/// What can go wrong setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file cannot be read.
    #[error("reading {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file cannot be written (generated certificate).
    #[error("writing {}: {source}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Certificate PEM is unusable.
    #[error("{origin}: {reason}")]
    Certificate {
        /// File or description.
        origin: String,
        /// Why.
        reason: String,
    },
    /// The key is unusable or does not match the certificate.
    #[error("{origin}: {source}")]
    Key {
        /// File or description.
        origin: String,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// rustls rejected the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// Generating the self-signed certificate failed.
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Parses a PEM chain and key into a rustls `CertifiedKey`, checking that
/// the key belongs to the leaf.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8], origin: &str) -> Result<Arc<CertifiedKey>> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Certificate {
            origin: origin.to_owned(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(Error::Certificate {
            origin: origin.to_owned(),
            reason: "no certificate found".to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| Error::Certificate {
        origin: origin.to_owned(),
        reason: format!("private key: {e}"),
    })?;
    let certified =
        CertifiedKey::from_der(chain, key, &provider()).map_err(|source| Error::Key {
            origin: origin.to_owned(),
            source,
        })?;
    Ok(Arc::new(certified))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The serving certificate, fixed or reloaded from files.
pub struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
    files: Option<CertFiles>,
}

struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<ReloadState>,
}

struct ReloadState {
    checked_at: Instant,
    loaded: (Option<SystemTime>, Option<SystemTime>),
    failed: Option<(Option<SystemTime>, Option<SystemTime>)>,
}

impl fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("ServingCert");
        if let Some(files) = &self.files {
            s.field("cert", &files.cert).field("key", &files.key);
        }
        s.finish()
    }
}

impl ServingCert {
    /// A fixed certificate from PEM (tests, embedding).
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self> {
        Ok(ServingCert {
            current: RwLock::new(certified_key(cert_pem, key_pem, "serving certificate")?),
            files: None,
        })
    }

    /// A certificate loaded from files now and reloaded when they change.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self> {
        let loaded = (modified(cert), modified(key));
        let certified = certified_key(&read(cert)?, &read(key)?, &cert.display().to_string())?;
        Ok(ServingCert {
            current: RwLock::new(certified),
            files: Some(CertFiles {
                cert: cert.to_owned(),
                key: key.to_owned(),
                state: Mutex::new(ReloadState {
                    checked_at: Instant::now(),
                    loaded,
                    failed: None,
                }),
            }),
        })
    }

    /// metrics-server's default: `<cert_dir>/apiserver.{crt,key}`, generated
    /// self-signed if absent, then served (and reloaded) from those files.
    pub fn self_signed_in(cert_dir: &Path, extra_names: &[String]) -> Result<Self> {
        let (cert, key) = ensure_self_signed(cert_dir, extra_names)?;
        Self::from_files(&cert, &key)
    }

    /// The certificate currently served.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Checks the files (at most once per [`RELOAD_CHECK`]) and swaps in a
    /// changed, valid pair.
    fn maybe_reload(&self) {
        let Some(files) = &self.files else {
            return;
        };
        // A handshake never waits for another one's check.
        let Ok(mut state) = files.state.try_lock() else {
            return;
        };
        if state.checked_at.elapsed() < RELOAD_CHECK {
            return;
        }
        state.checked_at = Instant::now();
        let stamps = (modified(&files.cert), modified(&files.key));
        if stamps == state.loaded || state.failed == Some(stamps) {
            return;
        }
        let loaded = read(&files.cert).and_then(|cert| {
            let key = read(&files.key)?;
            certified_key(&cert, &key, &files.cert.display().to_string())
        });
        match loaded {
            Ok(certified) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = certified;
                state.loaded = stamps;
                state.failed = None;
                tracing::info!(cert = %files.cert.display(), "serving certificate reloaded");
            }
            Err(error) => {
                // Logged once per change of the files; retried on the next change.
                state.failed = Some(stamps);
                tracing::warn!(%error, "serving certificate changed but cannot be used; keeping the previous one");
            }
        }
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.maybe_reload();
        Some(self.current())
    }
}

/// Writes a self-signed pair into `cert_dir` unless both files exist;
/// returns their paths. SANs: `localhost`, `127.0.0.1` and `extra_names`
/// (IP literals become IP SANs).
pub fn ensure_self_signed(cert_dir: &Path, extra_names: &[String]) -> Result<(PathBuf, PathBuf)> {
    let cert_path = cert_dir.join(format!("{SELF_SIGNED_PAIR_NAME}.crt"));
    let key_path = cert_dir.join(format!("{SELF_SIGNED_PAIR_NAME}.key"));
    if cert_path.is_file() && key_path.is_file() {
        return Ok((cert_path, key_path));
    }
    let (cert_pem, key_pem) = generate_self_signed(extra_names)?;
    std::fs::create_dir_all(cert_dir).map_err(|source| Error::Write {
        path: cert_dir.to_owned(),
        source,
    })?;
    write_private(&key_path, key_pem.as_bytes())?;
    std::fs::write(&cert_path, cert_pem.as_bytes()).map_err(|source| Error::Write {
        path: cert_path.clone(),
        source,
    })?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed serving certificate");
    Ok((cert_path, key_path))
}

/// A self-signed certificate and key (PEM) for `localhost`, `127.0.0.1` and
/// `extra_names`. rcgen's default validity is used (no expiry in practice):
/// a generated certificate is only ever used with `insecureSkipTLSVerify`.
pub fn generate_self_signed(extra_names: &[String]) -> Result<(String, String)> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    for name in extra_names {
        if !name.is_empty() && !names.contains(name) {
            names.push(name.clone());
        }
    }
    let mut params = rcgen::CertificateParams::new(names)?;
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("localhost@{stamp}"));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let write_error = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = options.open(path).map_err(write_error)?;
    file.write_all(contents).map_err(write_error)
}

/// The acceptable-issuer list of the CertificateRequest, following the
/// swappable auth config.
///
/// rustls borrows the list from the verifier (`&self`) for the handshake, so
/// it cannot live behind a lock that a reload replaces. Instead every
/// distinct list is published once into an append-only slot and kept for the
/// process's life (bounded by [`MAX_HINT_GENERATIONS`]); the current slot is
/// an atomic index.
struct IssuerHints {
    slots: Vec<OnceLock<Vec<DistinguishedName>>>,
    /// Index + 1 of the slot in use; 0 = no hints.
    published: AtomicUsize,
    /// The auth config generation the published slot reflects.
    seen_generation: AtomicU64,
    publishing: Mutex<()>,
}

impl IssuerHints {
    fn new() -> Self {
        IssuerHints {
            slots: (0..MAX_HINT_GENERATIONS).map(|_| OnceLock::new()).collect(),
            published: AtomicUsize::new(0),
            seen_generation: AtomicU64::new(u64::MAX),
            publishing: Mutex::new(()),
        }
    }

    fn current(&self, auth: &AuthConfigHandle) -> &[DistinguishedName] {
        let generation = auth.generation();
        if self.seen_generation.load(Ordering::Acquire) != generation {
            self.publish(auth, generation);
        }
        self.slot(self.published.load(Ordering::Acquire))
    }

    fn slot(&self, published: usize) -> &[DistinguishedName] {
        published
            .checked_sub(1)
            .and_then(|i| self.slots.get(i))
            .and_then(OnceLock::get)
            .map_or(&[], Vec::as_slice)
    }

    fn publish(&self, auth: &AuthConfigHandle, generation: u64) {
        let _guard = self.publishing.lock().unwrap_or_else(|p| p.into_inner());
        if self.seen_generation.load(Ordering::Acquire) == generation {
            return;
        }
        let wanted = auth
            .current()
            .map(|c| c.acceptable_issuers())
            .unwrap_or_default();
        let published = self.published.load(Ordering::Acquire);
        let same = self
            .slot(published)
            .iter()
            .map(|d| d.as_ref())
            .eq(wanted.iter().map(|d| d.as_ref()));
        if !same {
            let next = self.slots.iter().position(|s| s.get().is_none());
            match next {
                Some(i) if !wanted.is_empty() => {
                    let _ = self.slots[i].set(wanted);
                    self.published.store(i + 1, Ordering::Release);
                }
                Some(_) => self.published.store(0, Ordering::Release),
                None => {
                    tracing::warn!(
                        "too many client CA changes; no longer naming acceptable issuers in TLS"
                    );
                    self.published.store(0, Ordering::Release);
                }
            }
        }
        self.seen_generation.store(generation, Ordering::Release);
    }
}

/// Requests a client certificate without requiring one, proves key
/// possession, and leaves chain verification to authentication (see the
/// module doc).
pub struct OptionalClientAuth {
    auth: AuthConfigHandle,
    hints: IssuerHints,
    algorithms: WebPkiSupportedAlgorithms,
}

impl OptionalClientAuth {
    /// A verifier naming the CAs of `auth` as acceptable issuers.
    pub fn new(auth: AuthConfigHandle) -> Self {
        OptionalClientAuth {
            auth,
            hints: IssuerHints::new(),
            algorithms: provider().signature_verification_algorithms,
        }
    }
}

impl fmt::Debug for OptionalClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OptionalClientAuth").finish_non_exhaustive()
    }
}

impl ClientCertVerifier for OptionalClientAuth {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.hints.current(&self.auth)
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Deliberately deferred: the chain is verified per request against
        // the CA its role requires (auth::authn).
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The server's rustls config: the versions and suites `policy` offers
/// (TLS 1.3 and 1.2 by default), ALPN `h2` then `http/1.1`, the given
/// certificate source and client certificate policy.
pub fn server_config(
    certs: Arc<dyn ResolvesServerCert>,
    client_auth: Arc<dyn ClientCertVerifier>,
    policy: &TlsPolicy,
) -> Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(policy.narrow(provider())))
        .with_protocol_versions(policy.versions())?
        .with_client_cert_verifier(client_auth)
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// [`server_config`] with [`OptionalClientAuth`] over `auth`.
pub fn build(
    serving: Arc<ServingCert>,
    auth: AuthConfigHandle,
    policy: &TlsPolicy,
) -> Result<Arc<ServerConfig>> {
    server_config(serving, Arc::new(OptionalClientAuth::new(auth)), policy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::config::{AuthConfig, CaBundle};

    fn ca(cn: &str) -> CaBundle {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().expect("key");
        let pem = params.self_signed(&key).expect("cert").pem();
        CaBundle::from_pem(cn, pem.as_bytes()).expect("bundle")
    }

    #[test]
    fn self_signed_is_generated_once_and_loads() {
        let dir = tempfile::tempdir().expect("dir");
        let names = ["metrics-server.kube-system.svc".to_owned()];
        let (cert, key) = ensure_self_signed(dir.path(), &names).expect("generated");
        let first = std::fs::read(&cert).expect("cert");
        ensure_self_signed(dir.path(), &names).expect("reused");
        assert_eq!(
            std::fs::read(&cert).expect("cert"),
            first,
            "not regenerated"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&key).expect("key").permissions().mode();
            assert_eq!(mode & 0o077, 0, "key is private");
        }
        let serving = ServingCert::from_files(&cert, &key).expect("loads");
        assert_eq!(serving.current().cert.len(), 1);
    }

    #[test]
    fn changed_files_are_reloaded_and_bad_ones_ignored() {
        let dir = tempfile::tempdir().expect("dir");
        let cert_path = dir.path().join("tls.crt");
        let key_path = dir.path().join("tls.key");
        let (cert, key) = generate_self_signed(&[]).expect("pair");
        std::fs::write(&cert_path, &cert).expect("write");
        std::fs::write(&key_path, &key).expect("write");
        let serving = ServingCert::from_files(&cert_path, &key_path).expect("loads");
        let before = serving.current().cert[0].clone();

        let force_check = |s: &ServingCert| {
            if let Some(files) = &s.files {
                let mut state = files.state.lock().expect("lock");
                state.checked_at = Instant::now() - RELOAD_CHECK * 2;
                state.loaded = (None, None);
                state.failed = None;
            }
            s.maybe_reload();
        };

        // A new certificate with the old key: mismatch, keep serving the old one.
        let (other_cert, other_key) = generate_self_signed(&[]).expect("pair");
        std::fs::write(&cert_path, &other_cert).expect("write");
        force_check(&serving);
        assert_eq!(serving.current().cert[0], before);

        // The matching key arrives: swapped.
        std::fs::write(&key_path, &other_key).expect("write");
        force_check(&serving);
        assert_ne!(serving.current().cert[0], before);
    }

    #[test]
    fn mismatched_or_missing_pairs_are_rejected() {
        let (cert, _) = generate_self_signed(&[]).expect("pair");
        let (_, key) = generate_self_signed(&[]).expect("pair");
        let err = ServingCert::from_pem(cert.as_bytes(), key.as_bytes()).expect_err("mismatch");
        assert!(matches!(err, Error::Key { .. }), "{err}");
        assert!(ServingCert::from_pem(b"", key.as_bytes()).is_err());
        assert!(ServingCert::from_files(Path::new("/nonexistent.crt"), Path::new("/x")).is_err());
    }

    #[test]
    fn issuer_hints_follow_the_auth_config() {
        let handle = AuthConfigHandle::new();
        let verifier = OptionalClientAuth::new(handle.clone());
        assert!(verifier.root_hint_subjects().is_empty(), "nothing loaded");
        let a = ca("a");
        handle.store(AuthConfig {
            client_ca: Some(a.clone()),
            request_header: None,
        });
        let names =
            |d: &[DistinguishedName]| d.iter().map(|n| n.as_ref().to_vec()).collect::<Vec<_>>();
        assert_eq!(names(verifier.root_hint_subjects()), names(a.subjects()));
        let b = ca("b");
        handle.store(AuthConfig {
            client_ca: Some(b.clone()),
            request_header: None,
        });
        assert_eq!(names(verifier.root_hint_subjects()), names(b.subjects()));
        assert!(!verifier.client_auth_mandatory());
        assert!(verifier.offer_client_auth());
    }

    #[test]
    fn server_config_offers_h2_and_http1() {
        let (cert, key) = generate_self_signed(&[]).expect("pair");
        let serving =
            Arc::new(ServingCert::from_pem(cert.as_bytes(), key.as_bytes()).expect("pem"));
        let config =
            build(serving, AuthConfigHandle::new(), &TlsPolicy::default()).expect("config");
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    /// A whole handshake in memory between a server built with `policy` and
    /// a client offering only `versions` and `suites`: what it agreed on.
    fn handshake(
        policy: &TlsPolicy,
        versions: &[&'static rustls::SupportedProtocolVersion],
        suites: &[rustls::CipherSuite],
    ) -> std::result::Result<(rustls::ProtocolVersion, rustls::CipherSuite), rustls::Error> {
        let (cert, key) = generate_self_signed(&[]).expect("pair");
        let serving =
            Arc::new(ServingCert::from_pem(cert.as_bytes(), key.as_bytes()).expect("pem"));
        let server = build(serving, AuthConfigHandle::new(), policy).expect("config");
        let mut roots = rustls::RootCertStore::empty();
        for der in rustls_pki_types::CertificateDer::pem_slice_iter(cert.as_bytes()) {
            roots.add(der.expect("pem")).expect("root");
        }
        let mut provider = provider();
        provider
            .cipher_suites
            .retain(|s| suites.contains(&s.suite()));
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .expect("client versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let mut client = rustls::ClientConnection::new(Arc::new(client), name).expect("client");
        let mut server = rustls::ServerConnection::new(server).expect("server");
        let mut wire = Vec::new();
        while client.is_handshaking() || server.is_handshaking() {
            wire.clear();
            client.write_tls(&mut wire).expect("client writes");
            server.read_tls(&mut wire.as_slice()).expect("server reads");
            if let Err(e) = server.process_new_packets() {
                // Deliver the alert, for the client's side of the story.
                wire.clear();
                let _ = server.write_tls(&mut wire);
                return Err(e);
            }
            wire.clear();
            server.write_tls(&mut wire).expect("server writes");
            client.read_tls(&mut wire.as_slice()).expect("client reads");
            client.process_new_packets()?;
        }
        Ok((
            client.protocol_version().expect("version"),
            client.negotiated_cipher_suite().expect("suite").suite(),
        ))
    }

    #[test]
    fn min_version_and_cipher_suites_hold_in_a_handshake() {
        use rustls::version::{TLS12, TLS13};
        use rustls::{CipherSuite as S, ProtocolVersion as V};
        let all: Vec<S> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        let default = TlsPolicy::default();
        assert_eq!(
            handshake(&default, &[&TLS12], &all).expect("1.2"),
            (V::TLSv1_2, S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384)
        );
        let tls13 = TlsPolicy::from_flags(Some("VersionTLS13"), &[]).expect("policy");
        assert!(handshake(&tls13, &[&TLS12], &all).is_err(), "1.2 refused");
        assert_eq!(
            handshake(&tls13, &[&TLS13, &TLS12], &all).expect("1.3").0,
            V::TLSv1_3
        );

        let one =
            TlsPolicy::from_flags(None, &["TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305".to_owned()])
                .expect("policy");
        assert_eq!(
            handshake(&one, &[&TLS12], &all).expect("the one suite"),
            (V::TLSv1_2, S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256)
        );
        assert!(
            handshake(
                &one,
                &[&TLS12],
                &[S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]
            )
            .is_err(),
            "a suite not listed is refused"
        );
    }
}
