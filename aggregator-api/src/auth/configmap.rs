//! Keeps the [`AuthConfigHandle`] in step with
//! `kube-system/extension-apiserver-authentication` and the CA files named by
//! flags.
//!
//! A kube-runtime watcher narrowed to the one object by
//! `fieldSelector=metadata.name=…` (the
//! `extension-apiserver-authentication-reader` Role grants get, list and watch
//! on that name only, and the apiserver authorizes a list or watch pinned to
//! a name as a request for that name): a rotated CA or a changed allowed name
//! applies as soon as kube-apiserver writes it, not a poll period later. The
//! watcher lists again after 410 Gone and resumes its watch when one ends;
//! failures are retried fast (1 s doubling up to the period), so `/readyz`
//! turns green promptly after start. An unusable ConfigMap (or its deletion)
//! keeps the last good config and says why in the log. CA files named by
//! flags are re-read every period, as the apiserver's dynamic file CA does.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use support::backoff::{Backoff, WatchBackoff};
use support::changes::{Change, changes};

use crate::auth::config::{self as auth_config, AuthConfig, AuthConfigHandle};
use crate::auth::flags::AuthFlags;

/// Namespace of the ConfigMap.
pub const NAMESPACE: &str = "kube-system";
/// Name of the ConfigMap.
pub const NAME: &str = "extension-apiserver-authentication";
/// The list and watch of it alone: its namespace's ConfigMaps, narrowed to its name.
pub const LIST_PATH: &str = "/api/v1/namespaces/kube-system/configmaps";

/// Why a load failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ConfigMap could not be fetched.
    #[error("reading configmap {NAMESPACE}/{NAME}: {0}")]
    Fetch(#[from] kube::Error),
    /// Listing or watching it failed (the watcher tries again).
    #[error("watching configmap {NAMESPACE}/{NAME}: {0}")]
    Watch(#[from] watcher::Error),
    /// Its contents or a flag's CA file is unusable.
    #[error("authentication configuration: {0}")]
    Config(#[from] auth_config::Error),
    /// The ConfigMap is needed but there is no client to read it with.
    #[error("configmap {NAMESPACE}/{NAME} must be read but no kubernetes client is configured")]
    NoClient,
    /// The ConfigMap does not exist (kube-apiserver writes it at start).
    #[error("configmap {NAMESPACE}/{NAME} does not exist")]
    NotFound,
    /// The ConfigMap was deleted while watched.
    #[error("configmap {NAMESPACE}/{NAME} was deleted")]
    Deleted,
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// GETs the ConfigMap's `data`.
pub async fn fetch(client: &Client) -> Result<BTreeMap<String, String>> {
    let map = Api::<ConfigMap>::namespaced(client.clone(), NAMESPACE)
        .get(NAME)
        .await?;
    Ok(map.data.unwrap_or_default())
}

/// Loads the authentication config from flags and (when needed) the
/// ConfigMap, and keeps reloading it.
pub struct AuthConfigReloader {
    client: Option<Client>,
    flags: AuthFlags,
    handle: AuthConfigHandle,
    period: Duration,
}

impl AuthConfigReloader {
    /// A reloader storing into `handle`. `client` may be `None` only when the
    /// flags make the lookup unnecessary.
    pub fn new(client: Option<Client>, flags: AuthFlags, handle: AuthConfigHandle) -> Self {
        AuthConfigReloader {
            client,
            flags,
            handle,
            period: Duration::from_secs(10),
        }
    }

    /// Sets how often CA files named by flags are re-read, which is also the
    /// longest wait before listing again after a failure (default 10 s).
    pub fn with_period(mut self, period: Duration) -> Self {
        self.period = period;
        self
    }

    /// Builds the config once: ConfigMap (unless skipped) with flag overrides.
    pub async fn load(&self) -> Result<AuthConfig> {
        if self.flags.needs_lookup() {
            let client = self.client.as_ref().ok_or(Error::NoClient)?;
            self.config_from(&fetch(client).await?)
        } else {
            Ok(AuthConfig::default().with_overrides(&self.flags.overrides()?))
        }
    }

    /// Loads and stores once; returns whether the stored config changed.
    pub async fn reload(&self) -> Result<bool> {
        let config = self.load().await?;
        Ok(self.handle.store(config))
    }

    /// Keeps the config current until `shutdown` resolves. Failures keep the
    /// last good config; they are logged on the first occurrence and then
    /// every 30th time.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = pin!(shutdown);
        let client = match (&self.client, self.flags.needs_lookup()) {
            (Some(client), true) => client.clone(),
            (None, true) => {
                // Nothing will ever load: say so (and tolerate, if asked).
                self.record(&Failures::default(), Err(Error::NoClient));
                shutdown.await;
                return;
            }
            (_, false) => {
                self.follow_flag_files(shutdown).await;
                return;
            }
        };
        let failures = Failures::default();
        let api = Api::<ConfigMap>::namespaced(client, NAMESPACE);
        let config = watcher::Config::default().fields(&format!("metadata.name={NAME}"));
        let backoff = WatchBackoff::new(Duration::from_secs(1), self.period);
        let mut events = pin!(changes(
            watcher::watcher(api, config).backoff(backoff),
            "configmap"
        ));
        // What the last complete listing and the events since say.
        let mut latest = None;
        let mut ticks =
            tokio::time::interval_at(tokio::time::Instant::now() + self.period, self.period);
        loop {
            let event = tokio::select! {
                () = &mut shutdown => return,
                event = events.next() => event,
                // The flags' CA files are re-read every period.
                _ = ticks.tick(), if self.flags_name_files() => {
                    if let Some(latest) = &latest {
                        self.apply(&failures, latest);
                    }
                    continue;
                }
            };
            let Some(event) = event else { return };
            let observed = match event {
                // The field selector lists one name: none, or that one.
                Ok(Change::Listed(maps)) => {
                    maps.into_iter().next().map_or(Observed::Missing, |map| {
                        Observed::Data(map.data.unwrap_or_default())
                    })
                }
                Ok(Change::Applied(map)) => Observed::Data(map.data.unwrap_or_default()),
                Ok(Change::Deleted(_)) => Observed::Deleted,
                Err(error) => {
                    self.record(&failures, Err(Error::Watch(error)));
                    continue;
                }
            };
            self.apply(&failures, &observed);
            latest = Some(observed);
        }
    }

    /// Without the ConfigMap: the flags alone, their files re-read every
    /// period.
    async fn follow_flag_files(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let failures = Failures::default();
        // Until a first config loads, retried sooner than every period.
        let mut retry = Backoff::new(Duration::from_secs(1), self.period);
        loop {
            self.record(&failures, self.reload().await);
            let delay = if self.handle.is_loaded() {
                retry.reset();
                self.period
            } else {
                retry.next_delay()
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn flags_name_files(&self) -> bool {
        self.flags.client_ca_file.is_some() || self.flags.requestheader_client_ca_file.is_some()
    }

    /// Builds the config from what was last observed and the flags, and
    /// stores it.
    fn apply(&self, failures: &Failures, latest: &Observed) {
        let result = match latest {
            Observed::Data(data) => self.config_from(data),
            Observed::Missing => Err(Error::NotFound),
            Observed::Deleted => Err(Error::Deleted),
        };
        let result = result.map(|config| self.handle.store(config));
        self.record(failures, result);
    }

    /// The config a ConfigMap's `data` and the flags make.
    fn config_from(&self, data: &BTreeMap<String, String>) -> Result<AuthConfig> {
        let overrides = self.flags.overrides()?;
        Ok(AuthConfig::from_configmap_data(data)?.with_overrides(&overrides))
    }

    /// Logs the outcome of a load: a change, a recovery, or a failure (the
    /// first and every 30th of a run). Until a config is loaded, a failure
    /// with `--authentication-tolerate-lookup-failure` stores the flags alone.
    fn record(&self, failures: &Failures, result: Result<bool>) {
        match result {
            Ok(changed) => {
                let count = failures.0.swap(0, Ordering::Relaxed);
                if count > 0 {
                    tracing::info!(
                        failures = count,
                        "authentication configuration readable again"
                    );
                }
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
                let count = failures.0.fetch_add(1, Ordering::Relaxed).saturating_add(1);
                if count == 1 || count.is_multiple_of(30) {
                    if self.handle.is_loaded() {
                        tracing::error!(%error, failures = count, "authentication configuration not updated: keeping the last good one");
                    } else {
                        tracing::warn!(%error, failures = count, "loading authentication configuration failed");
                    }
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
    }
}

/// Consecutive failed loads, for rate-limited logging.
#[derive(Default)]
struct Failures(AtomicU32);

/// What the last listing or watch event said about the ConfigMap.
enum Observed {
    /// Its `data`.
    Data(BTreeMap<String, String>),
    /// The list was empty.
    Missing,
    /// A watch event deleted it.
    Deleted,
}
