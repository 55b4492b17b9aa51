//! Where quota state lives: the interface, and the per-process store.
//!
//! [`QuotaBackend`] is what the proxy asks: reserve a slot in a credential's
//! bucket, give one back, record an answer's `x-ratelimit-*`, and whether a
//! credential is held back. [`LocalBackend`] keeps that state in this
//! process; a fleet sharing one budget uses the Redis backend
//! (`redis_backend.rs`) behind the same trait.

use super::bucket::{Gcra, Rate, Slot};
use super::budget::{Blocked, Budget, RateLimit};
use crate::credentials::CacheKey;
use dashmap::DashMap;
use futures_util::future::BoxFuture;
use http::StatusCode;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// Why [`QuotaBackend::reserve`] let a request not go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The credential's budget is spent (as the whole fleet knows it).
    Blocked(Blocked),
    /// No slot within `rate.max_wait`: the next is this much past it.
    Full(Duration),
}

/// The quota state behind the proxy, per credential.
pub trait QuotaBackend: Send + Sync + 'static {
    /// Admits a request: refuses it while the credential is blocked, else
    /// reserves its slot in the bucket (`rate` is `None` when smoothing is
    /// off: `Ok(None)`). It refuses whatever [`QuotaBackend::blocked`] would
    /// (so a caller with nothing to do between the two need not ask both),
    /// and a shared backend also what the fleet knows, in the same round
    /// trip: this is the authoritative check, `blocked` the cheap early one.
    fn reserve<'a>(
        &'a self,
        credential: &'a CacheKey,
        rate: Option<Rate>,
    ) -> BoxFuture<'a, Result<Option<Slot>, Refusal>>;

    /// [`QuotaBackend::reserve`] answered without I/O, when this backend
    /// can (a per-process one): no future, no allocation per request.
    fn reserve_at_once(
        &self,
        _credential: &CacheKey,
        _rate: Option<Rate>,
    ) -> Option<Result<Option<Slot>, Refusal>> {
        None
    }

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

    /// [`QuotaBackend::record`] done without I/O, when this backend can (a
    /// per-process one): no future, no allocation per answer. `false`:
    /// nothing was recorded, call `record`.
    fn record_at_once(
        &self,
        _credential: &CacheKey,
        _status: StatusCode,
        _seen: Option<RateLimit>,
        _retry_after: Option<Duration>,
    ) -> bool {
        false
    }

    /// `Some` while the credential's requests can only fail upstream, as far
    /// as this process knows without asking anyone (no I/O).
    fn blocked(&self, credential: &CacheKey) -> Option<Blocked>;

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
    states: DashMap<CacheKey, State, foldhash::fast::RandomState>,
}

impl LocalBackend {
    /// [`QuotaBackend::reserve`] without the future (the Redis backend
    /// falls back to it).
    pub fn reserve_now(
        &self,
        credential: &CacheKey,
        rate: Option<Rate>,
    ) -> Result<Option<Slot>, Refusal> {
        if let Some(blocked) = self.blocked(credential) {
            return Err(Refusal::Blocked(blocked));
        }
        let Some(rate) = rate else {
            return Ok(None);
        };
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
        reserved.map(Some).map_err(Refusal::Full)
    }

    /// [`QuotaBackend::record`] without the future (the Redis backend
    /// records here too). The platform reports its budget on every answer:
    /// a known credential's entry is updated in place, without cloning its
    /// key for an `entry`.
    pub fn record_now(
        &self,
        credential: &CacheKey,
        status: StatusCode,
        seen: Option<RateLimit>,
        retry_after: Option<Duration>,
    ) {
        if seen.is_none() && retry_after.is_none() {
            return;
        }
        let now = SystemTime::now();
        match self.states.get_mut(credential) {
            Some(mut state) => state.budget.record(status, seen, retry_after, now),
            None => self
                .states
                .entry(credential.clone())
                .or_default()
                .budget
                .record(status, seen, retry_after, now),
        }
    }
}

impl QuotaBackend for LocalBackend {
    fn reserve<'a>(
        &'a self,
        credential: &'a CacheKey,
        rate: Option<Rate>,
    ) -> BoxFuture<'a, Result<Option<Slot>, Refusal>> {
        Box::pin(std::future::ready(self.reserve_now(credential, rate)))
    }

    fn reserve_at_once(
        &self,
        credential: &CacheKey,
        rate: Option<Rate>,
    ) -> Option<Result<Option<Slot>, Refusal>> {
        Some(self.reserve_now(credential, rate))
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
        self.record_now(credential, status, seen, retry_after);
        Box::pin(std::future::ready(()))
    }

    fn record_at_once(
        &self,
        credential: &CacheKey,
        status: StatusCode,
        seen: Option<RateLimit>,
        retry_after: Option<Duration>,
    ) -> bool {
        self.record_now(credential, status, seen, retry_after);
        true
    }

    fn blocked(&self, credential: &CacheKey) -> Option<Blocked> {
        self.states
            .get(credential)
            .and_then(|s| s.budget.blocked(SystemTime::now()))
    }

    fn budgets(&self) -> Vec<(CacheKey, Budget)> {
        self.states
            .iter()
            .filter(|s| s.budget.last.is_some() || s.budget.retry_until.is_some())
            .map(|s| (s.key().clone(), s.budget.clone()))
            .collect()
    }
}
