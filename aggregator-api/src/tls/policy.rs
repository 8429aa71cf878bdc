//! `--tls-min-version` and `--tls-cipher-suites`, with the names and the
//! meaning Go's API servers (so metrics-server) give them, on both listeners.
//!
//! rustls implements TLS 1.2 and 1.3 with ECDHE key exchange and AEAD
//! ciphers only. So, for a flag copied from a metrics-server Deployment:
//! - a minimum of TLS 1.0 or 1.1 is met by serving 1.2 and up (one warning);
//! - a suite Go knows and rustls does not (CBC, RC4, 3DES, RSA key exchange)
//!   is left out with a warning, and the list must keep at least one it can
//!   offer; a name Go does not know is an error;
//! - as in Go, TLS 1.3 suites are always offered: the list narrows TLS 1.2.

use rustls::crypto::CryptoProvider;
use rustls::version::{TLS12, TLS13};
use rustls::{CipherSuite, SupportedProtocolVersion};

/// A flag value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// Not a Go TLS version name.
    #[error(
        "--tls-min-version={0}: expected VersionTLS10, VersionTLS11, VersionTLS12 or VersionTLS13"
    )]
    Version(String),
    /// Not a Go cipher suite name.
    #[error("--tls-cipher-suites: unknown cipher suite {0:?}; this server offers {offered}", offered = OFFERED.join(", "))]
    UnknownSuite(String),
    /// Every suite listed is one rustls does not implement.
    #[error("--tls-cipher-suites names none of the suites this server offers ({offered})", offered = OFFERED.join(", "))]
    NoSuite,
}

/// Go's names of the suites rustls (with *ring*) implements.
const SUPPORTED: &[(&str, CipherSuite)] = &[
    (
        "TLS_AES_128_GCM_SHA256",
        CipherSuite::TLS13_AES_128_GCM_SHA256,
    ),
    (
        "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_AES_256_GCM_SHA384,
    ),
    (
        "TLS_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// For error messages: the canonical names of [`SUPPORTED`].
const OFFERED: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// Suites Go knows that rustls does not implement.
const NOT_IMPLEMENTED: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// What the listeners offer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsPolicy {
    /// `--tls-min-version=VersionTLS13`.
    tls13_only: bool,
    /// The TLS 1.2 suites listed; `None`: all of them.
    tls12_suites: Option<Vec<CipherSuite>>,
}

impl TlsPolicy {
    /// From the flags' values (`None` / empty: not given). Logs a warning
    /// for each setting that is met differently than asked.
    pub fn from_flags(
        min_version: Option<&str>,
        cipher_suites: &[String],
    ) -> Result<Self, PolicyError> {
        let tls13_only = match min_version {
            None | Some("VersionTLS12") => false,
            Some("VersionTLS13") => true,
            Some(v @ ("VersionTLS10" | "VersionTLS11")) => {
                tracing::warn!(
                    flag = "tls-min-version",
                    value = v,
                    "TLS 1.0 and 1.1 are not offered: the minimum served is TLS 1.2"
                );
                false
            }
            Some(other) => return Err(PolicyError::Version(other.to_owned())),
        };
        if cipher_suites.is_empty() {
            return Ok(TlsPolicy {
                tls13_only,
                tls12_suites: None,
            });
        }
        let mut tls12 = Vec::new();
        let mut usable = false;
        for name in cipher_suites.iter().map(|n| n.trim()) {
            if let Some((_, suite)) = SUPPORTED.iter().find(|(n, _)| *n == name) {
                usable = true;
                if !name.starts_with("TLS_AES_") && !name.starts_with("TLS_CHACHA20_") {
                    tls12.push(*suite);
                }
            } else if NOT_IMPLEMENTED.contains(&name) {
                tracing::warn!(
                    flag = "tls-cipher-suites",
                    suite = name,
                    "not offered: only ECDHE key exchange with AEAD ciphers is implemented"
                );
            } else {
                return Err(PolicyError::UnknownSuite(name.to_owned()));
            }
        }
        if !usable {
            return Err(PolicyError::NoSuite);
        }
        if tls12.is_empty() && !tls13_only {
            tracing::warn!(
                flag = "tls-cipher-suites",
                "no TLS 1.2 suite listed: only TLS 1.3 is offered"
            );
        }
        Ok(TlsPolicy {
            tls13_only: tls13_only || tls12.is_empty(),
            tls12_suites: Some(tls12),
        })
    }

    /// The protocol versions offered.
    pub fn versions(&self) -> &'static [&'static SupportedProtocolVersion] {
        static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&TLS13];
        static BOTH: [&SupportedProtocolVersion; 2] = [&TLS13, &TLS12];
        if self.tls13_only { &TLS13_ONLY } else { &BOTH }
    }

    /// `provider` with only the suites offered.
    pub fn narrow(&self, mut provider: CryptoProvider) -> CryptoProvider {
        if let Some(tls12) = &self.tls12_suites {
            provider.cipher_suites.retain(|s| match s {
                rustls::SupportedCipherSuite::Tls13(_) => true,
                rustls::SupportedCipherSuite::Tls12(_) => tls12.contains(&s.suite()),
            });
        }
        provider
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn go_version_names() {
        let p = |v| TlsPolicy::from_flags(Some(v), &[]);
        assert_eq!(p("VersionTLS12").expect("ok").versions().len(), 2);
        assert_eq!(p("VersionTLS13").expect("ok").versions(), &[&TLS13]);
        assert_eq!(p("VersionTLS10").expect("ok").versions().len(), 2);
        assert_eq!(p("TLS1.3"), Err(PolicyError::Version("TLS1.3".to_owned())));
    }

    #[test]
    fn suites_narrow_tls12_and_keep_tls13() {
        let policy = TlsPolicy::from_flags(
            None,
            &names(&[
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                "TLS_RSA_WITH_AES_128_CBC_SHA",
            ]),
        )
        .expect("ok");
        let suites: Vec<CipherSuite> = policy
            .narrow(rustls::crypto::ring::default_provider())
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert!(suites.contains(&CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384));
        assert!(!suites.contains(&CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256));
        assert!(suites.contains(&CipherSuite::TLS13_AES_128_GCM_SHA256));
        assert_eq!(policy.versions().len(), 2);
    }

    #[test]
    fn unusable_lists_are_refused_and_tls13_names_alone_mean_tls13() {
        assert_eq!(
            TlsPolicy::from_flags(None, &names(&["TLS_RSA_WITH_RC4_128_SHA"])),
            Err(PolicyError::NoSuite)
        );
        assert_eq!(
            TlsPolicy::from_flags(None, &names(&["TLS_NULL"])),
            Err(PolicyError::UnknownSuite("TLS_NULL".to_owned()))
        );
        let only13 = TlsPolicy::from_flags(None, &names(&["TLS_AES_128_GCM_SHA256"])).expect("ok");
        assert_eq!(only13.versions(), &[&TLS13]);
    }
}
