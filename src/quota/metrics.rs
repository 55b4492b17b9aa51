//! The metrics of spending the platform's budget: what it says is left,
//! what the proxy refused or delayed, and what the conditional cache saved.
//! Registered by [`crate::metrics::Metrics`] with the other metrics.

use crate::credentials::CacheKey;
use crate::quota::budget::RateLimit;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::cell::RefCell;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabel {
    /// `installation:ID` or `user:NAME`: bounded by the credentials in use.
    pub credential: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub credential: String,
    /// `budget` (the platform's budget is spent) or `max_wait` (no slot in
    /// the bucket within `quota.max_wait`).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `hit`, `miss`, `revalidated` or `shared`.
    pub result: &'static str,
}

/// The quota and cache metrics.
pub struct QuotaMetrics {
    pub remaining: Family<CredentialLabel, Gauge>,
    pub limit: Family<CredentialLabel, Gauge>,
    pub reset: Family<CredentialLabel, Gauge>,
    pub rejected: Family<RejectLabels, Counter>,
    pub wait_seconds: Histogram,
    pub cache: Family<CacheLabels, Counter>,
    /// Tells this instance's gauges apart in [`RECENT_GAUGES`] (tests
    /// make several).
    id: u64,
}

/// One credential's `ratelimit_*` gauges as this thread last set them;
/// each made when the platform first reports its value.
struct RecentGauges {
    metrics: u64,
    key: CacheKey,
    /// `remaining`, `limit`, `reset`.
    gauges: [Option<Gauge>; 3],
}

/// As many credentials' gauges as a worker keeps at hand.
const RECENT_GAUGES_KEPT: usize = 8;

thread_local! {
    static RECENT_GAUGES: RefCell<Vec<RecentGauges>> = const { RefCell::new(Vec::new()) };
}

impl QuotaMetrics {
    /// Creates the metrics and registers them in `registry` (prefixed `atomgit_proxy`).
    pub fn register(registry: &mut Registry) -> QuotaMetrics {
        let m = QuotaMetrics {
            remaining: Family::default(),
            limit: Family::default(),
            reset: Family::default(),
            rejected: Family::default(),
            // From 5 ms to about 40 s: waits are bounded by `quota.max_wait`.
            wait_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            cache: Family::default(),
            id: crate::metrics::instance_id(),
        };
        registry.register(
            "ratelimit_remaining",
            "Requests left in the credential's window, as the platform last said",
            m.remaining.clone(),
        );
        registry.register(
            "ratelimit_limit",
            "The credential's requests per window, as the platform last said",
            m.limit.clone(),
        );
        registry.register(
            "ratelimit_reset_timestamp_seconds",
            "When the credential's window resets (epoch seconds)",
            m.reset.clone(),
        );
        registry.register(
            "quota_rejected",
            "Requests answered 429 rate_limited by the proxy, by credential and reason",
            m.rejected.clone(),
        );
        registry.register(
            "quota_wait_seconds",
            "Time requests waited for their slot in the credential's bucket",
            m.wait_seconds.clone(),
        );
        // Every result shows from the start (at 0), so a dashboard's rate
        // has a series before the first hit.
        for result in ["hit", "miss", "revalidated", "shared"] {
            let _ = m.cache.get_or_create(&CacheLabels { result });
        }
        registry.register(
            "cache",
            "Conditional cache lookups and answers, by result",
            m.cache.clone(),
        );
        m
    }

    pub fn cache_result(&self, result: &'static str) {
        self.cache.get_or_create(&CacheLabels { result }).inc();
    }
}

impl QuotaMetrics {
    /// Sets `key`'s `ratelimit_*` gauges to what the platform reported, on
    /// every answer; with gauges this thread kept (see
    /// [`crate::metrics::kept`]), found by comparing keys.
    pub fn set_budget(&self, key: &CacheKey, seen: &RateLimit) {
        RECENT_GAUGES.with_borrow_mut(|recent| {
            let is = |r: &RecentGauges| r.metrics == self.id && r.key == *key;
            let make = || RecentGauges {
                metrics: self.id,
                key: key.clone(),
                gauges: [None, None, None],
            };
            let kept = crate::metrics::kept(recent, RECENT_GAUGES_KEPT, is, make);
            let families = [&self.remaining, &self.limit, &self.reset];
            let values = [seen.remaining, seen.limit, seen.reset];
            for ((slot, family), value) in kept.gauges.iter_mut().zip(families).zip(values) {
                let Some(value) = value else { continue };
                let gauge = slot.get_or_insert_with(|| {
                    let label = CredentialLabel {
                        credential: super::label(key),
                    };
                    family.get_or_create(&label).clone()
                });
                gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
            }
        });
    }
}
