//! Keeps the [`AuthConfigHandle`] in step with
//! `kube-system/extension-apiserver-authentication` and the CA files named by
//! flags.
//!
//! A periodic GET (every 10 s by default) rather than a watch: the ConfigMap
//! changes only when kube-apiserver restarts or its CAs rotate, one small GET
//! per period is negligible, and polling needs no stream handling or
//! resourceVersion bookkeeping. Until the first load succeeds it retries
//! faster (1 s doubling up to the period) so `/readyz` turns green promptly.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use serde::Deserialize;

use super::client::{self, KubeClient};
use crate::auth::config::{self as auth_config, AuthConfig, AuthConfigHandle};
use crate::auth::flags::AuthFlags;

/// Namespace of the ConfigMap.
pub const NAMESPACE: &str = "kube-system";
/// Name of the ConfigMap.
pub const NAME: &str = "extension-apiserver-authentication";
/// Its API path.
pub const PATH: &str =
    "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication";

/// Why a load failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ConfigMap could not be fetched.
    #[error("reading configmap {NAMESPACE}/{NAME}: {0}")]
    Fetch(#[from] client::Error),
    /// Its contents or a flag's CA file is unusable.
    #[error("authentication configuration: {0}")]
    Config(#[from] auth_config::Error),
    /// The ConfigMap is needed but there is no client to read it with.
    #[error("configmap {NAMESPACE}/{NAME} must be read but no kubernetes client is configured")]
    NoClient,
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Deserialize)]
struct ConfigMap {
    #[serde(default)]
    data: BTreeMap<String, String>,
}

/// GETs the ConfigMap's `data`.
pub async fn fetch(client: &KubeClient) -> Result<BTreeMap<String, String>> {
    let map: ConfigMap = client.get_json(PATH).await?;
    Ok(map.data)
}

/// Loads the authentication config from flags and (when needed) the
/// ConfigMap, and keeps reloading it.
pub struct AuthConfigReloader {
    client: Option<KubeClient>,
    flags: AuthFlags,
    handle: AuthConfigHandle,
    period: Duration,
}

impl AuthConfigReloader {
    /// A reloader storing into `handle`. `client` may be `None` only when the
    /// flags make the lookup unnecessary.
    pub fn new(client: Option<KubeClient>, flags: AuthFlags, handle: AuthConfigHandle) -> Self {
        AuthConfigReloader {
            client,
            flags,
            handle,
            period: Duration::from_secs(10),
        }
    }

    /// Sets the reload period.
    pub fn with_period(mut self, period: Duration) -> Self {
        self.period = period;
        self
    }

    /// Builds the config once: ConfigMap (unless skipped) with flag overrides.
    pub async fn load(&self) -> Result<AuthConfig> {
        let overrides = self.flags.overrides()?;
        let base = if self.flags.needs_lookup() {
            let client = self.client.as_ref().ok_or(Error::NoClient)?;
            AuthConfig::from_configmap_data(&fetch(client).await?)?
        } else {
            AuthConfig::default()
        };
        Ok(base.with_overrides(&overrides))
    }

    /// Loads and stores once; returns whether the stored config changed.
    pub async fn reload(&self) -> Result<bool> {
        let config = self.load().await?;
        Ok(self.handle.store(config))
    }

    /// Reloads until `shutdown` resolves, the first time at once unless a
    /// config is already loaded. Failures keep the last good config; they are
    /// logged on the first occurrence and then every 30th time.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut failures: u32 = 0;
        let mut skip = self.handle.is_loaded();
        loop {
            let result = if std::mem::take(&mut skip) {
                Ok(false)
            } else {
                self.reload().await
            };
            match result {
                Ok(changed) => {
                    if failures > 0 {
                        tracing::info!(failures, "authentication configuration readable again");
                    }
                    failures = 0;
                    if changed {
                        let config = self.handle.current();
                        tracing::info!(
                            client_ca = config.as_ref().is_some_and(|c| c.client_ca.is_some()),
                            request_header =
                                config.as_ref().is_some_and(|c| c.request_header.is_some()),
                            "authentication configuration loaded"
                        );
                    }
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 || failures.is_multiple_of(30) {
                        tracing::warn!(%error, failures, "loading authentication configuration failed");
                    }
                    if self.flags.authentication_tolerate_lookup_failure
                        && !self.handle.is_loaded()
                        && let Ok(overrides) = self.flags.overrides()
                    {
                        tracing::warn!(
                            "tolerating the lookup failure: authenticating with the flags only"
                        );
                        self.handle
                            .store(AuthConfig::default().with_overrides(&overrides));
                    }
                }
            }
            let delay = if self.handle.is_loaded() {
                self.period
            } else {
                Duration::from_secs(1 << failures.min(6)).min(self.period)
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}
