//! Where quota state lives: the interface, and the per-process store.
//!
//! [`QuotaBackend`] is what the proxy asks: reserve a slot in a credential's
//! bucket, give one back, record an answer's `x-ratelimit-*`, and whether a
//! credential is held back. [`LocalBackend`] keeps that state in this
//! process. A fleet sharing one budget plugs in a Redis backend behind the
//! same trait (the GCRA of `bucket.rs` as one Lua script, the budget as a
//! hash per credential); nothing above this file changes.

use super::bucket::{Gcra, Rate, Slot};
use super::budget::{Blocked, Budget, RateLimit};
use crate::credentials::CacheKey;
use dashmap::DashMap;
use futures_util::future::BoxFuture;
use http::StatusCode;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// The quota state behind the proxy, per credential.
pub trait QuotaBackend: Send + Sync + 'static {
    /// Reserves the credential's next slot: `Ok` with when the request may
    /// go, or `Err` with how long past `rate.max_wait` the next slot is.
    fn reserve<'a>(
        &'a self,
        credential: &'a CacheKey,
        rate: Rate,
    ) -> BoxFuture<'a, Result<Slot, Duration>>;

    /// Gives back a slot its caller left before reaching. Called from
    /// `Drop`, so it cannot wait: a remote backend sends it in the background.
    fn give_back(&self, credential: &CacheKey, rate: Rate, slot: Slot);

    /// Records one upstream answer's status, `x-ratelimit-*` and `Retry-After`.
    fn record<'a>(
        &'a self,
        credential: &'a CacheKey,
        status: StatusCode,
        seen: Option<RateLimit>,
        retry_after: Option<Duration>,
    ) -> BoxFuture<'a, ()>;

    /// `Some` while the credential's requests can only fail upstream.
    fn blocked<'a>(&'a self, credential: &'a CacheKey) -> BoxFuture<'a, Option<Blocked>>;

    /// What is known of every credential's budget, for readiness and status.
    fn budgets(&self) -> Vec<(CacheKey, Budget)>;
}

/// One credential's state in this process.
#[derive(Default)]
struct State {
    bucket: Gcra,
    budget: Budget,
}

/// Quota state kept in this process: one entry per credential the routes
/// have used (a bounded set: routes name their credentials, and `auto`
/// resolves only to the app's installations). Each map operation holds a
/// shard lock for a few arithmetic steps, never across an `.await`.
#[derive(Default)]
pub struct LocalBackend {
    states: DashMap<CacheKey, State>,
}

impl QuotaBackend for LocalBackend {
    fn reserve<'a>(
        &'a self,
        credential: &'a CacheKey,
        rate: Rate,
    ) -> BoxFuture<'a, Result<Slot, Duration>> {
        let now = Instant::now();
        let reserved = match self.states.get_mut(credential) {
            Some(mut state) => state.bucket.reserve(&rate, now),
            None => self
                .states
                .entry(credential.clone())
                .or_default()
                .bucket
                .reserve(&rate, now),
        };
        Box::pin(std::future::ready(reserved))
    }

    fn give_back(&self, credential: &CacheKey, rate: Rate, slot: Slot) {
        if let Some(mut state) = self.states.get_mut(credential) {
            state.bucket.give_back(&rate, slot, Instant::now());
        }
    }

    fn record<'a>(
        &'a self,
        credential: &'a CacheKey,
        status: StatusCode,
        seen: Option<RateLimit>,
        retry_after: Option<Duration>,
    ) -> BoxFuture<'a, ()> {
        if seen.is_some() || retry_after.is_some() {
            let now = SystemTime::now();
            self.states
                .entry(credential.clone())
                .or_default()
                .budget
                .record(status, seen, retry_after, now);
        }
        Box::pin(std::future::ready(()))
    }

    fn blocked<'a>(&'a self, credential: &'a CacheKey) -> BoxFuture<'a, Option<Blocked>> {
        let blocked = self
            .states
            .get(credential)
            .and_then(|s| s.budget.blocked(SystemTime::now()));
        Box::pin(std::future::ready(blocked))
    }

    fn budgets(&self) -> Vec<(CacheKey, Budget)> {
        self.states
            .iter()
            .filter(|s| s.budget.last.is_some() || s.budget.retry_until.is_some())
            .map(|s| (s.key().clone(), s.budget.clone()))
            .collect()
    }
}
