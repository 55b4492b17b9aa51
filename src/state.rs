//! What every request shares: the current snapshot and the credential caches.

use crate::config::Config;
use crate::credentials::grants::GrantBinding;
use crate::credentials::{Context, Credentials};
use crate::metrics::Metrics;
use crate::upstream::Upstream;
use arc_swap::ArcSwap;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// A config and the clients built from it. Requests load one snapshot and
/// keep it to the end, so a reload never changes a request half-way.
pub struct Snapshot {
    pub config: Config,
    pub upstream: Arc<Upstream>,
    /// The store (grant file or Redis), when `store:` is set. Shared with
    /// the previous snapshot while `store:` stays, so grants in memory,
    /// pending logins and the Redis connection survive reloads.
    pub store: Option<Arc<dyn crate::store::Store>>,
    /// Slots for requests to the platform (`limits.max_upstream_requests`).
    /// Kept across reloads unless the limit changes; then requests already
    /// holding or awaiting a slot finish under the old count.
    pub upstream_slots: Arc<Semaphore>,
    /// The platform user grants must belong to, to be used under this config
    /// (built once: the user token cache is keyed by it).
    pub grant_binding: Arc<GrantBinding>,
    /// The same per app, in the order of `config.apps`: a user grant belongs
    /// to the app it was obtained with.
    pub app_bindings: Vec<Arc<GrantBinding>>,
    /// The conditional cache (`None` when `cache.max_bytes` is 0). Kept
    /// across reloads unless the `cache:` settings change.
    pub cache: Option<Arc<crate::cache::ResponseCache>>,
}

impl Snapshot {
    /// Builds the runtime for `config`, reusing the previous snapshot's
    /// upstream pools when the upstream settings did not change (their idle
    /// connections survive the reload).
    pub fn build(config: Config, previous: Option<&Snapshot>) -> Result<Snapshot, String> {
        let upstream = match previous {
            Some(prev) if prev.upstream.config == config.upstream => prev.upstream.clone(),
            _ => Arc::new(Upstream::new(config.upstream.clone())?),
        };
        let store = crate::store::open(&config, previous.and_then(|p| p.store.as_ref()))?;
        let upstream_slots = match previous {
            Some(prev)
                if prev.config.limits.max_upstream_requests
                    == config.limits.max_upstream_requests =>
            {
                prev.upstream_slots.clone()
            }
            _ => Arc::new(Semaphore::new(
                config
                    .limits
                    .max_upstream_requests
                    .min(Semaphore::MAX_PERMITS),
            )),
        };
        let grant_binding = Arc::new(GrantBinding::of(&config.app, &config.upstream));
        let app_bindings = config
            .apps
            .iter()
            .map(|app| Arc::new(GrantBinding::of(app, &config.upstream)))
            .collect();
        let cache = match previous.and_then(|p| p.cache.as_ref()) {
            Some(prev) if prev.config == config.cache => Some(prev.clone()),
            _ => crate::cache::ResponseCache::new(config.cache).map(Arc::new),
        };
        Ok(Snapshot {
            cache,
            config,
            upstream,
            store,
            upstream_slots,
            grant_binding,
            app_bindings,
        })
    }

    /// What the credential layer needs from this snapshot.
    pub fn context(&self) -> Context<'_> {
        Context {
            app: &self.config.app,
            upstream: &self.upstream,
            refresh_margin: self.config.refresh_margin,
            oauth: self.config.oauth.as_ref(),
            store: self.store.as_ref(),
            grant_binding: &self.grant_binding,
            scope: None,
        }
    }

    /// What the credential layer needs for `route`'s credential: its app,
    /// that app's grant binding, its scope.
    pub fn context_for<'a>(&'a self, route: &'a crate::routes::Route) -> Context<'a> {
        let mut ctx = self.context();
        ctx.scope = route.scope.as_ref();
        if let Some(i) = self.config.apps.iter().position(|a| a.name == route.app) {
            ctx.app = &self.config.apps[i];
            ctx.grant_binding = self.app_bindings.get(i).unwrap_or(&self.grant_binding);
        }
        ctx
    }
}

/// The outcome of the most recent reload attempt, for readiness.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    /// `Some(problems)` when the last attempt failed.
    pub last_error: Option<String>,
    /// When the last reload was attempted (`None`: none since the start).
    pub at: Option<std::time::SystemTime>,
    /// The files the failed attempt's config names (itself first): the
    /// watcher retries when one of them changes, and not on other events.
    pub failed_files: Vec<std::path::PathBuf>,
}

/// State shared by every connection.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub credentials: Credentials,
    pub metrics: Metrics,
    pub reload: Mutex<ReloadStatus>,
    /// Each credential's learned budget and token bucket; outside the
    /// snapshot so a reload keeps what the platform said.
    pub quota: crate::quota::Quota,
    /// Recent upstream errors and quota, for the status page.
    pub activity: crate::activity::Activity,
}

impl Shared {
    pub fn new(snapshot: Snapshot) -> Arc<Shared> {
        let quota = crate::quota::Quota::for_snapshot(&snapshot);
        let metrics = Metrics::default();
        Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            credentials: Credentials::new(metrics.clock_offset.clone()),
            metrics,
            reload: Mutex::new(ReloadStatus::default()),
            quota,
            activity: Default::default(),
        })
    }
}
