//! The metrics of spending the platform's budget: what it says is left,
//! what the proxy refused or delayed, and what the conditional cache saved.
//! Registered by [`crate::metrics::Metrics`] with the other metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
