//! The delegated authentication and authorization flags, with the names and
//! defaults of the Kubernetes generic apiserver (`DelegatingAuthenticationOptions`,
//! `DelegatingAuthorizationOptions`) that metrics-server exposes, so existing
//! manifests keep working.

use std::path::PathBuf;
use std::time::Duration;

use super::config::{
    AuthOverrides, CaBundle, DEFAULT_EXTRA_PREFIXES, DEFAULT_GROUP_HEADERS,
    DEFAULT_USERNAME_HEADERS, RequestHeaderConfig, Result,
};
use crate::time::duration_arg;

/// Delegated authn/authz flags.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct AuthFlags {
    /// CA bundle for client certificates (user = CN, groups = O). Overrides
    /// the ConfigMap's client-ca-file.
    #[arg(long, env = "NODEPULSE_CLIENT_CA_FILE")]
    pub client_ca_file: Option<PathBuf>,

    /// CA bundle of the front proxy. Overrides the ConfigMap's request-header
    /// settings together with the other --requestheader-* flags.
    #[arg(long, env = "NODEPULSE_REQUESTHEADER_CLIENT_CA_FILE")]
    pub requestheader_client_ca_file: Option<PathBuf>,

    /// Front-proxy common names allowed; empty allows any certificate signed
    /// by the request-header CA.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_allowed_names: Vec<String>,

    /// Headers to read the user name from.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_USERNAME_HEADERS.iter().map(|s| (*s).to_owned()))]
    pub requestheader_username_headers: Vec<String>,

    /// Headers to read the user UID from.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_uid_headers: Vec<String>,

    /// Headers to read groups from.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_GROUP_HEADERS.iter().map(|s| (*s).to_owned()))]
    pub requestheader_group_headers: Vec<String>,

    /// Header prefixes to read extra attributes from.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_EXTRA_PREFIXES.iter().map(|s| (*s).to_owned()))]
    pub requestheader_extra_headers_prefix: Vec<String>,

    /// Do not read kube-system/extension-apiserver-authentication; only the
    /// flags configure authentication.
    #[arg(long, env = "NODEPULSE_AUTHENTICATION_SKIP_LOOKUP")]
    pub authentication_skip_lookup: bool,

    /// Start serving even if the ConfigMap cannot be read (authentication then
    /// uses the flags only until it can).
    #[arg(long)]
    pub authentication_tolerate_lookup_failure: bool,

    /// How long TokenReview answers are cached.
    #[arg(long, default_value = "10s", value_parser = duration_arg)]
    pub authentication_token_webhook_cache_ttl: Duration,

    /// How long allowed SubjectAccessReview answers are cached.
    #[arg(long, default_value = "10s", value_parser = duration_arg)]
    pub authorization_webhook_cache_authorized_ttl: Duration,

    /// How long denied SubjectAccessReview answers are cached.
    #[arg(long, default_value = "10s", value_parser = duration_arg)]
    pub authorization_webhook_cache_unauthorized_ttl: Duration,

    /// Paths allowed without authorization; a trailing `*` matches a prefix.
    #[arg(long, value_delimiter = ',', default_values_t = super::authz::DEFAULT_ALWAYS_ALLOW_PATHS.iter().map(|s| (*s).to_owned()))]
    pub authorization_always_allow_paths: Vec<String>,
}

impl AuthFlags {
    /// Reads the CA files the flags name. Called on every reload so rotated
    /// files are picked up like the apiserver's dynamic file CA.
    pub fn overrides(&self) -> Result<AuthOverrides> {
        let client_ca = self
            .client_ca_file
            .as_deref()
            .map(CaBundle::from_file)
            .transpose()?;
        let request_header = match self.requestheader_client_ca_file.as_deref() {
            None => None,
            Some(path) => {
                let lower = |v: &[String]| {
                    v.iter()
                        .map(|s| s.trim().to_ascii_lowercase())
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                };
                Some(RequestHeaderConfig {
                    ca: CaBundle::from_file(path)?,
                    allowed_names: self
                        .requestheader_allowed_names
                        .iter()
                        .filter(|s| !s.is_empty())
                        .cloned()
                        .collect(),
                    username_headers: lower(&self.requestheader_username_headers),
                    uid_headers: lower(&self.requestheader_uid_headers),
                    group_headers: lower(&self.requestheader_group_headers),
                    extra_header_prefixes: lower(&self.requestheader_extra_headers_prefix),
                })
            }
        };
        Ok(AuthOverrides {
            client_ca,
            request_header,
        })
    }

    /// Whether the ConfigMap has to be read.
    pub fn needs_lookup(&self) -> bool {
        !self.authentication_skip_lookup
            && (self.client_ca_file.is_none() || self.requestheader_client_ca_file.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        auth: AuthFlags,
    }

    #[test]
    fn defaults_match_the_generic_apiserver() {
        let cli = Cli::try_parse_from(["x"]).expect("parses");
        assert_eq!(cli.auth.requestheader_username_headers, ["x-remote-user"]);
        assert_eq!(cli.auth.requestheader_group_headers, ["x-remote-group"]);
        assert_eq!(
            cli.auth.requestheader_extra_headers_prefix,
            ["x-remote-extra-"]
        );
        assert!(cli.auth.requestheader_uid_headers.is_empty());
        assert_eq!(
            cli.auth.authorization_always_allow_paths,
            ["/healthz", "/readyz", "/livez"]
        );
        assert_eq!(
            cli.auth.authentication_token_webhook_cache_ttl,
            Duration::from_secs(10)
        );
        assert!(cli.auth.needs_lookup());
        assert_eq!(
            cli.auth.overrides().expect("no files"),
            AuthOverrides::default()
        );
    }

    #[test]
    fn lists_and_durations_parse() {
        let cli = Cli::try_parse_from([
            "x",
            "--requestheader-allowed-names=front-proxy-client,aggregator",
            "--requestheader-username-headers=X-Remote-User",
            "--authorization-webhook-cache-authorized-ttl=1m30s",
            "--authentication-skip-lookup",
        ])
        .expect("parses");
        assert_eq!(
            cli.auth.requestheader_allowed_names,
            ["front-proxy-client", "aggregator"]
        );
        assert_eq!(
            cli.auth.authorization_webhook_cache_authorized_ttl,
            Duration::from_secs(90)
        );
        assert!(!cli.auth.needs_lookup());
        assert!(
            Cli::try_parse_from(["x", "--authentication-token-webhook-cache-ttl=10"]).is_err(),
            "Go durations need a unit"
        );
    }
}
