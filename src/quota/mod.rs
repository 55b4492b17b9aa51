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
//! The state lives behind [`backend::QuotaBackend`]: per process today
//! ([`backend::LocalBackend`]); a Redis backend shares it across a fleet.
//!
//! # Layout
//! - [`budget`]: `x-ratelimit-*` and `Retry-After`, and when they block.
//! - [`bucket`]: the GCRA slot arithmetic.
//! - [`backend`]: the backend interface and the in-process store.
//! - [`metrics`]: the quota and cache metrics.

pub mod backend;
pub mod bucket;
pub mod budget;
pub mod metrics;

use crate::credentials::CacheKey;
use backend::{LocalBackend, QuotaBackend};
pub use bucket::Rate;
pub use budget::RateLimit;
use http::{HeaderMap, StatusCode};
use metrics::{CredentialLabel, QuotaMetrics, RejectLabels};
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
    backend: Arc<dyn QuotaBackend>,
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
        Quota { backend }
    }

    /// Refuses the request while the credential's budget is spent.
    pub async fn check_budget(
        &self,
        key: &CacheKey,
        metrics: &QuotaMetrics,
    ) -> Result<(), Rejected> {
        match self.backend.blocked(key).await {
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
    /// `None` when smoothing is off). Dropping the future while it sleeps
    /// gives the slot back.
    pub async fn wait_turn(
        &self,
        key: &CacheKey,
        rate: Option<Rate>,
        metrics: &QuotaMetrics,
    ) -> Result<(), Rejected> {
        let Some(rate) = rate else {
            return Ok(());
        };
        let started = tokio::time::Instant::now();
        let slot = match self.backend.reserve(key, rate).await {
            Ok(slot) => slot,
            Err(short) => {
                // The first slot free is `max_wait + short` away.
                return Err(reject(
                    metrics,
                    key,
                    RejectReason::MaxWait,
                    rate.max_wait + short,
                    None,
                ));
            }
        };
        if slot.at > started {
            let mut held = HeldSlot {
                backend: &*self.backend,
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
        self.backend.record(key, status, seen, retry_after).await;
        if let Some(seen) = seen {
            let label = CredentialLabel {
                credential: label(key),
            };
            let gauge = |family: &prometheus_client::metrics::family::Family<
                CredentialLabel,
                prometheus_client::metrics::gauge::Gauge,
            >,
                         v: Option<u64>| {
                if let Some(v) = v {
                    family
                        .get_or_create(&label)
                        .set(i64::try_from(v).unwrap_or(i64::MAX));
                }
            };
            gauge(&metrics.remaining, seen.remaining);
            gauge(&metrics.limit, seen.limit);
            gauge(&metrics.reset, seen.reset);
        }
    }

    /// Every credential's budget as last seen (a read-only copy).
    pub fn snapshot(&self) -> Vec<CredentialQuota> {
        let now = SystemTime::now();
        let mut all: Vec<CredentialQuota> = self
            .backend
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
mod tests {
    use super::*;
    use crate::config::{AppFingerprint, Secret};
    use std::time::Duration;
    use tokio::time::Instant;

    fn key() -> CacheKey {
        CacheKey::Installation {
            app: AppFingerprint::of(75, "http://x", &Secret::new("k")),
            id: 14,
            scope: None,
        }
    }

    fn metrics() -> QuotaMetrics {
        QuotaMetrics::register(&mut prometheus_client::registry::Registry::default())
    }

    const RATE: Rate = Rate {
        per_second: 10,
        burst: 1,
        max_wait: Duration::from_secs(1),
    };

    #[tokio::test(start_paused = true)]
    async fn waiters_go_in_arrival_order_one_slot_apart() {
        let quota = Arc::new(Quota::default());
        let metrics = Arc::new(metrics());
        let started = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..5u32 {
            let (quota, metrics) = (quota.clone(), metrics.clone());
            tasks.push(tokio::spawn(async move {
                quota.wait_turn(&key(), Some(RATE), &metrics).await.unwrap();
                (i, started.elapsed())
            }));
            // Arrival order is the spawn order.
            tokio::task::yield_now().await;
        }
        for (n, task) in tasks.into_iter().enumerate() {
            let (i, waited) = task.await.unwrap();
            assert_eq!(i as usize, n);
            assert_eq!(waited, Duration::from_millis(100) * i);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_who_hangs_up_gives_its_slot_back() {
        let quota = Quota::default();
        let metrics = metrics();
        let started = Instant::now();
        quota.wait_turn(&key(), Some(RATE), &metrics).await.unwrap();
        // The second waits 100ms for its slot; it is dropped after 10ms.
        let gone = tokio::time::timeout(
            Duration::from_millis(10),
            quota.wait_turn(&key(), Some(RATE), &metrics),
        )
        .await;
        assert!(gone.is_err(), "still waiting when dropped");
        // The next one takes the slot it left: at 100ms, not 200ms.
        quota.wait_turn(&key(), Some(RATE), &metrics).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn past_max_wait_is_refused_with_the_time_to_a_free_slot() {
        let quota = Arc::new(Quota::default());
        let metrics = Arc::new(metrics());
        let rate = Rate {
            max_wait: Duration::from_millis(150),
            ..RATE
        };
        // Slots at 0 and 100ms, held by waiters that stay.
        let mut waiting = Vec::new();
        for _ in 0..2 {
            let (quota, metrics) = (quota.clone(), metrics.clone());
            waiting.push(tokio::spawn(async move {
                quota.wait_turn(&key(), Some(rate), &metrics).await
            }));
            tokio::task::yield_now().await;
        }
        let refused = quota
            .wait_turn(&key(), Some(rate), &metrics)
            .await
            .unwrap_err();
        assert_eq!(refused.reason, RejectReason::MaxWait);
        assert_eq!(refused.retry_after, Duration::from_millis(200));
        for w in waiting {
            assert!(w.await.unwrap().is_ok());
        }
    }

    #[tokio::test]
    async fn a_spent_budget_is_refused_with_its_last_values() {
        let quota = Quota::default();
        let metrics = metrics();
        let reset = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 60;
        let mut h = HeaderMap::new();
        h.insert(budget::LIMIT, 5000.into());
        h.insert(budget::REMAINING, 0.into());
        h.insert(budget::RESET, reset.into());
        quota.record(&key(), StatusCode::OK, &h, &metrics).await;
        let refused = quota.check_budget(&key(), &metrics).await.unwrap_err();
        assert_eq!(refused.reason, RejectReason::Budget);
        assert!(refused.retry_after <= Duration::from_secs(60));
        assert_eq!(refused.last.unwrap().remaining, Some(0));
        let shown = quota.snapshot();
        assert_eq!(shown[0].credential, "installation:14");
        assert!(shown[0].blocked_for_secs.is_some());
    }
}
