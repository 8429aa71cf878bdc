//! Keeps the [`AuthConfigHandle`] in step with
//! `kube-system/extension-apiserver-authentication` and the CA files named by
//! flags.
//!
//! A list, then a watch from the list's resourceVersion, both narrowed to the
//! one object by `fieldSelector=metadata.name=…` (the
//! `extension-apiserver-authentication-reader` Role grants get, list and watch
//! on that name only, and the apiserver authorizes a list or watch pinned to
//! a name as a request for that name): a rotated CA or a changed allowed name
//! applies as soon as kube-apiserver writes it, not a poll period later. The
//! watch is listed again when it ends (the server's `timeoutSeconds`, an idle
//! connection, 410 Gone when the version is too old, any error). Failed lists
//! are retried fast (1 s doubling up to the period), so `/readyz` turns green
//! promptly after start. An unusable ConfigMap (or its deletion) keeps the
//! last good config and says why in the log. CA files named by flags are
//! re-read every period, as the apiserver's dynamic file CA does.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::StatusCode;
use serde::Deserialize;

use super::client::{self, KubeClient, WatchEvent};
use crate::auth::config::{self as auth_config, AuthConfig, AuthConfigHandle};
use crate::auth::flags::AuthFlags;

/// Namespace of the ConfigMap.
pub const NAMESPACE: &str = "kube-system";
/// Name of the ConfigMap.
pub const NAME: &str = "extension-apiserver-authentication";
/// Its API path.
pub const PATH: &str =
    "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication";
/// The list of it alone: its namespace's ConfigMaps narrowed to its name.
pub const LIST_PATH: &str = "/api/v1/namespaces/kube-system/configmaps?fieldSelector=metadata.name%3Dextension-apiserver-authentication";

/// How long a watch asks the server to stay open; kube-apiserver ends it
/// then, and the reloader lists again.
const WATCH_TIMEOUT_SECONDS: u32 = 300;
/// A watch with no event or bookmark for this long is presumed dead.
const WATCH_IDLE: Duration = Duration::from_secs(90);

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
    /// The ConfigMap does not exist (kube-apiserver writes it at start).
    #[error("configmap {NAMESPACE}/{NAME} does not exist")]
    NotFound,
    /// The ConfigMap was deleted while watched.
    #[error("configmap {NAMESPACE}/{NAME} was deleted")]
    Deleted,
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Deserialize)]
struct ConfigMap {
    #[serde(default)]
    data: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct ConfigMapList {
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<ConfigMap>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    #[serde(default)]
    resource_version: String,
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

    /// Keeps the config current until `shutdown` resolves: list, watch, list
    /// again. Failures keep the last good config; they are logged on the first
    /// occurrence and then every 30th time.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
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
        // Consecutive lists or watches that failed: the retry delay grows with
        // them, and only a watch that ran a while resets it.
        let mut errors: u32 = 0;
        loop {
            let (observed, version) = match list(&client).await {
                Ok(listed) => listed,
                Err(error) => {
                    self.record(&failures, Err(error));
                    errors = errors.saturating_add(1);
                    tokio::select! {
                        () = &mut shutdown => return,
                        () = tokio::time::sleep(self.retry_delay(errors)) => continue,
                    }
                }
            };
            let latest = Mutex::new(observed);
            self.apply(&failures, &latest);
            let watch_path = format!(
                "{LIST_PATH}&watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_TIMEOUT_SECONDS}&resourceVersion={version}"
            );
            let watched = client.watch::<ConfigMap>(&watch_path, WATCH_IDLE, |event| {
                match event {
                    WatchEvent::Added(map) | WatchEvent::Modified(map) => {
                        *latest.lock().unwrap_or_else(|p| p.into_inner()) =
                            Observed::Data(map.data);
                    }
                    WatchEvent::Deleted(_) => {
                        *latest.lock().unwrap_or_else(|p| p.into_inner()) = Observed::Deleted;
                    }
                    WatchEvent::Bookmark(_) => return true,
                }
                self.apply(&failures, &latest);
                true
            });
            let started = tokio::time::Instant::now();
            let ended = tokio::select! {
                () = &mut shutdown => return,
                ended = self.while_watching(watched, &latest, &failures) => ended,
            };
            match ended {
                // The server's timeout or an idle connection: list again at
                // once, unless the watch ended as soon as it started.
                Ok(()) if started.elapsed() >= Duration::from_secs(1) => {
                    tracing::debug!("configmap watch ended; listing again");
                    errors = 0;
                    continue;
                }
                Ok(()) => errors = errors.saturating_add(1),
                Err(client::Error::Status { code, .. }) if code == StatusCode::GONE => {
                    tracing::debug!("configmap watch expired (410 Gone); listing again");
                    errors = 0;
                    continue;
                }
                Err(error) => {
                    self.record(&failures, Err(Error::Fetch(error)));
                    errors = errors.saturating_add(1);
                }
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(self.retry_delay(errors)) => {}
            }
        }
    }

    /// Drives `watched`; every period meanwhile, applies the latest ConfigMap
    /// again so CA files named by flags are re-read.
    async fn while_watching(
        &self,
        watched: impl Future<Output = client::Result<()>>,
        latest: &Mutex<Observed>,
        failures: &Failures,
    ) -> client::Result<()> {
        tokio::pin!(watched);
        if !self.flags_name_files() {
            return watched.await;
        }
        let mut ticks = tokio::time::interval(self.period);
        ticks.tick().await;
        loop {
            tokio::select! {
                ended = &mut watched => return ended,
                _ = ticks.tick() => self.apply(failures, latest),
            }
        }
    }

    /// Without the ConfigMap: the flags alone, their files re-read every
    /// period.
    async fn follow_flag_files(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let failures = Failures::default();
        loop {
            self.record(&failures, self.reload().await);
            let delay = if self.handle.is_loaded() {
                self.period
            } else {
                self.retry_delay(failures.count())
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

    /// 1 s doubling with each consecutive error, at most the period.
    fn retry_delay(&self, errors: u32) -> Duration {
        Duration::from_secs(1 << errors.saturating_sub(1).min(6)).min(self.period)
    }

    /// Builds the config from what was last observed and the flags, and
    /// stores it.
    fn apply(&self, failures: &Failures, latest: &Mutex<Observed>) {
        let result = match &*latest.lock().unwrap_or_else(|p| p.into_inner()) {
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

/// Consecutive failed loads, for rate-limited logging. Shared by the watch
/// callback and the loop around it.
#[derive(Default)]
struct Failures(AtomicU32);

impl Failures {
    fn count(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the last list or watch event said about the ConfigMap.
enum Observed {
    /// Its `data`.
    Data(BTreeMap<String, String>),
    /// The list was empty.
    Missing,
    /// A watch event deleted it.
    Deleted,
}

/// Lists the ConfigMap: what it holds, and the list's resourceVersion to
/// watch from (a missing ConfigMap is watched for too).
async fn list(client: &KubeClient) -> Result<(Observed, String)> {
    let list: ConfigMapList = client.get_json(LIST_PATH).await?;
    let observed = list
        .items
        .into_iter()
        .next()
        .map_or(Observed::Missing, |map| Observed::Data(map.data));
    Ok((observed, list.metadata.resource_version))
}
