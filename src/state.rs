//! What every request shares: the current snapshot and the credential caches.

use crate::config::Config;
use crate::credentials::{Context, Credentials};
use crate::metrics::Metrics;
use crate::upstream::Upstream;
use arc_swap::ArcSwap;
use std::sync::{Arc, Mutex};

/// A config and the clients built from it. Requests load one snapshot and
/// keep it to the end, so a reload never changes a request half-way.
pub struct Snapshot {
    pub config: Config,
    pub upstream: Arc<Upstream>,
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
        Ok(Snapshot { config, upstream })
    }

    /// What the credential layer needs from this snapshot.
    pub fn context(&self) -> Context<'_> {
        Context {
            app: &self.config.app,
            upstream: &self.upstream,
            refresh_margin: self.config.refresh_margin,
        }
    }
}

/// The outcome of the most recent reload attempt, for readiness.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    /// `Some(problems)` when the last attempt failed.
    pub last_error: Option<String>,
}

/// State shared by every connection.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub credentials: Credentials,
    pub metrics: Metrics,
    pub reload: Mutex<ReloadStatus>,
}

impl Shared {
    pub fn new(snapshot: Snapshot) -> Arc<Shared> {
        Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            credentials: Credentials::default(),
            metrics: Metrics::default(),
            reload: Mutex::new(ReloadStatus::default()),
        })
    }
}
