//! Quota: spending the platform's budget wisely.
//!
//! Every tool behind the proxy spends the same credential's budget (10
//! requests a second, 5000 an hour). Per credential, the proxy
//! - learns the budget from each answer's `x-ratelimit-*` ([`budget`]) and,
//!   while it is spent, answers 429 `rate_limited` itself instead of asking;
//! - spaces requests with a token bucket ([`bucket`], GCRA): past the burst
//!   a request sleeps once until its slot, in arrival order, up to
//!   `quota.max_wait`; a caller that hangs up gives its slot back.
//!
//! The state lives behind [`backend::QuotaBackend`]: per process
//! ([`backend::LocalBackend`]), or shared by a fleet in Redis when
//! `store.redis` is configured ([`redis_backend::RedisBackend`]).
//!
//! # Layout
//! - [`budget`]: `x-ratelimit-*` and `Retry-After`, and when they block.
//! - [`bucket`]: the GCRA slot arithmetic.
//! - [`backend`]: the backend interface and the in-process store.
//! - [`redis_backend`]: the fleet's shared bucket and budget (Lua scripts).
//! - [`metrics`]: the quota and cache metrics.

pub mod backend;
pub mod bucket;
pub mod budget;
pub mod metrics;
pub mod redis_backend;
mod redis_scripts;

use crate::credentials::CacheKey;
use backend::{LocalBackend, QuotaBackend, Refusal};
pub use bucket::Rate;
pub use budget::RateLimit;
use http::{HeaderMap, StatusCode};
use metrics::{QuotaMetrics, RejectLabels};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Why the proxy answered 429 itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The platform's budget is spent until its reset (or a `Retry-After`).
    Budget,
    /// No slot in the bucket within `quota.max_wait`.
    MaxWait,
}

/// A request the quota refused; becomes 429 `rate_limited`.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Rejected {
    pub reason: RejectReason,
    /// For `Retry-After`.
    pub retry_after: Duration,
    /// The last `x-ratelimit-*` values, repeated to the caller.
    pub last: Option<RateLimit>,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = budget::retry_after_secs(self.retry_after);
        match self.reason {
            RejectReason::Budget => write!(
                f,
                "the platform's rate limit for this credential is spent; retry after {secs}s"
            ),
            RejectReason::MaxWait => write!(
                f,
                "more requests for this credential than quota.per_second allows, and no slot within quota.max_wait; retry after {secs}s"
            ),
        }
    }
}

/// One credential's budget as last seen, for readiness and status pages.
#[derive(Debug, Clone, Serialize)]
pub struct CredentialQuota {
    /// `installation:ID` or `user:NAME`.
    pub credential: String,
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    pub used: Option<u64>,
    /// Epoch seconds.
    pub reset: Option<u64>,
    /// Seconds the proxy still answers 429 itself; absent when not blocked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_for_secs: Option<u64>,
}

/// The quota of every credential.
pub struct Quota {
    current: arc_swap::ArcSwap<Current>,
}

/// The backend in use, and the store it follows (`None`: per process).
struct Current {
    backend: Arc<dyn QuotaBackend>,
    store: Option<String>,
}

impl Default for Quota {
    fn default() -> Self {
        Quota::with_backend(Arc::new(LocalBackend::default()))
    }
}

/// The credential's name in metrics and pages: never a token.
pub fn label(key: &CacheKey) -> String {
    match key {
        CacheKey::Installation { id, .. } => format!("installation:{id}"),
        CacheKey::User { user, .. } => format!("user:{user}"),
    }
}

impl Quota {
    pub fn with_backend(backend: Arc<dyn QuotaBackend>) -> Quota {
        let current = Current {
            backend,
            store: None,
        };
        Quota {
            current: arc_swap::ArcSwap::from_pointee(current),
        }
    }

    /// The quota for `snap`: shared by the fleet in Redis when the store is
    /// Redis, else per process.
    pub fn for_snapshot(snap: &crate::state::Snapshot) -> Quota {
        let quota = Quota::default();
        quota.follow(snap);
        quota
    }

    /// Moves to `snap`'s store when a reload changed it (what was learned
    /// starts over there); keeps everything when it did not.
    pub fn follow(&self, snap: &crate::state::Snapshot) {
        let shared = redis_backend::RedisBackend::for_snapshot(snap);
        let store = shared.as_ref().map(|(identity, _)| identity.clone());
        if self.current.load().store == store {
            return;
        }
        let backend: Arc<dyn QuotaBackend> = match shared {
            Some((_, redis)) => Arc::new(redis),
            None => Arc::new(LocalBackend::default()),
        };
        self.current.store(Arc::new(Current { backend, store }));
    }

    fn backend(&self) -> Arc<dyn QuotaBackend> {
        self.current.load().backend.clone()
    }

    /// Refuses the request while the credential's budget is spent.
    pub async fn check_budget(
        &self,
        key: &CacheKey,
        metrics: &QuotaMetrics,
    ) -> Result<(), Rejected> {
        match self.backend().blocked(key) {
            None => Ok(()),
            Some(blocked) => Err(reject(
                metrics,
                key,
                RejectReason::Budget,
                blocked.for_,
                blocked.last,
            )),
        }
    }

    /// Waits for the request's slot in the credential's bucket (`rate` is
    /// `None` when smoothing is off), refusing it when the backend knows the
    /// budget is spent (a fleet learns it here, in the same round trip).
    /// Dropping the future while it sleeps gives the slot back.
    pub async fn wait_turn(
        &self,
        key: &CacheKey,
        rate: Option<Rate>,
        metrics: &QuotaMetrics,
    ) -> Result<(), Rejected> {
        // Only a bucket's wait is timed: smoothing off reads no clock.
        let started = rate.map(|_| tokio::time::Instant::now());
        let backend = self.backend();
        let reserved = match backend.reserve_at_once(key, rate) {
            Some(reserved) => reserved,
            None => backend.reserve(key, rate).await,
        };
        let slot = match reserved {
            Ok(Some(slot)) => slot,
            Ok(None) => return Ok(()),
            Err(Refusal::Blocked(blocked)) => {
                return Err(reject(
                    metrics,
                    key,
                    RejectReason::Budget,
                    blocked.for_,
                    blocked.last,
                ));
            }
            Err(Refusal::Full(short)) => {
                // The first slot free is `max_wait + short` away.
                let max_wait = rate.map_or(Duration::ZERO, |r| r.max_wait);
                return Err(reject(
                    metrics,
                    key,
                    RejectReason::MaxWait,
                    max_wait + short,
                    None,
                ));
            }
        };
        let (Some(rate), Some(started)) = (rate, started) else {
            return Ok(());
        };
        if slot.at > started {
            let mut held = HeldSlot {
                backend: &*backend,
                key,
                rate,
                slot: Some(slot),
            };
            tokio::time::sleep_until(slot.at).await;
            held.slot = None;
        }
        metrics
            .wait_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Records an upstream answer's `x-ratelimit-*` and, on a refusal, its
    /// `Retry-After`.
    pub async fn record(
        &self,
        key: &CacheKey,
        status: StatusCode,
        headers: &HeaderMap,
        metrics: &QuotaMetrics,
    ) {
        let seen = RateLimit::from_headers(headers);
        let retry_after = budget::retry_after(headers);
        if seen.is_none() && retry_after.is_none() {
            return;
        }
        let backend = self.backend();
        if !backend.record_at_once(key, status, seen, retry_after) {
            backend.record(key, status, seen, retry_after).await;
        }
        if let Some(seen) = &seen {
            metrics.set_budget(key, seen);
        }
    }

    /// Every credential's budget as last seen (a read-only copy).
    pub fn snapshot(&self) -> Vec<CredentialQuota> {
        let now = SystemTime::now();
        let mut all: Vec<CredentialQuota> = self
            .backend()
            .budgets()
            .into_iter()
            .map(|(key, b)| {
                let last = b.last.unwrap_or_default();
                CredentialQuota {
                    credential: label(&key),
                    limit: last.limit,
                    remaining: last.remaining,
                    used: last.used,
                    reset: last.reset,
                    blocked_for_secs: b.blocked(now).map(|bl| budget::retry_after_secs(bl.for_)),
                }
            })
            .collect();
        all.sort_by(|a, b| a.credential.cmp(&b.credential));
        all
    }
}

fn reject(
    metrics: &QuotaMetrics,
    key: &CacheKey,
    reason: RejectReason,
    retry_after: Duration,
    last: Option<RateLimit>,
) -> Rejected {
    let reason_label = match reason {
        RejectReason::Budget => "budget",
        RejectReason::MaxWait => "max_wait",
    };
    metrics
        .rejected
        .get_or_create(&RejectLabels {
            credential: label(key),
            reason: reason_label,
        })
        .inc();
    Rejected {
        reason,
        retry_after,
        last,
    }
}

/// A reserved slot not yet reached: given back if the caller leaves (its
/// future is dropped mid-sleep), so those behind it move up.
struct HeldSlot<'a> {
    backend: &'a dyn QuotaBackend,
    key: &'a CacheKey,
    rate: Rate,
    slot: Option<bucket::Slot>,
}

impl Drop for HeldSlot<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.backend.give_back(self.key, self.rate, slot);
        }
    }
}

#[cfg(test)]
mod tests;
