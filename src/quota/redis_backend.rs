//! The fleet's quota: one bucket and one learned budget per credential,
//! shared in Redis by every replica (`store.redis`).
//!
//! A request costs one round trip before it is sent: the reserve script
//! (`redis_scripts.rs`) reads the credential's budget hash and, unless it
//! is blocked, takes the next GCRA slot, both atomically and on Redis's
//! clock; the reply carries the budget, so this process learns another
//! replica's spent budget on its next request. Answers are recorded into
//! the hash when they block the credential (remaining 0, or a refusal's
//! `Retry-After`), and otherwise at most once a second per credential
//! (for other replicas' readiness pages): a second round trip only then.
//!
//! Redis unreachable or slow (past [`TIMEOUT`]): the request goes on with
//! the per-process [`LocalBackend`] (never failed because of Redis), the
//! failure is counted in `atomgit_proxy_store_errors_total{op}`, and Redis
//! is left alone for [`PAUSE`] so an outage does not cost every request a
//! timeout. The local backend records every answer as well, so it knows
//! the budget when it has to take over.

use super::backend::{LocalBackend, QuotaBackend, Refusal};
use super::bucket::{Rate, Slot};
use super::budget::{Blocked, Budget, RateLimit};
use super::redis_scripts::{GIVE_BACK, RECORD, RESERVE};
use crate::credentials::CacheKey;
use crate::store::keys::Keys;
use crate::store::{StoreOpLabels, store_errors};
use dashmap::DashMap;
use futures_util::future::BoxFuture;
use http::StatusCode;
use redis::aio::ConnectionManager;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// The longest a request waits for Redis before going on with the local
/// quota: shorter than the store's `OP_TIMEOUT`, as every request pays it.
pub const TIMEOUT: Duration = Duration::from_millis(500);
/// After a failure, Redis is not asked again for this long.
pub const PAUSE: Duration = Duration::from_secs(1);
/// An answer that does not block is written at most this often.
const WRITE_EVERY: Duration = Duration::from_secs(1);

/// The credential's name in shared keys: the same on every replica (no
/// pointer, no process state). One place to change when credentials gain
/// more parts.
pub fn shared_name(key: &CacheKey) -> String {
    match key {
        // The same name the fleet's shared token has: app, id and scope.
        CacheKey::Installation { app, id, scope } => format!(
            "inst:{}",
            crate::store::InstallationKey::new(app, *id, scope.as_deref()).slot()
        ),
        CacheKey::User { user, platform } => {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            h.update(&platform.upstream);
            h.update([0]);
            h.update(platform.app_id.to_be_bytes());
            h.update(platform.client_id.as_deref().unwrap_or("").as_bytes());
            format!("user:{user}:{}", hex::encode(&h.finalize()[..8]))
        }
    }
}

/// What the fleet last told this process about one credential.
#[derive(Debug, Clone, Copy, Default)]
struct Known {
    last: Option<RateLimit>,
    /// On this process's clock (converted from Redis's "blocked for").
    blocked_until: Option<Instant>,
    /// When this process last wrote the credential's budget.
    written: Option<Instant>,
}

pub struct RedisBackend {
    conn: ConnectionManager,
    keys: Keys,
    /// The fallback, and this process's own view of every answer.
    local: LocalBackend,
    known: DashMap<CacheKey, Known>,
    /// Redis failed: not asked again before this.
    paused_until: Mutex<Option<Instant>>,
}

impl RedisBackend {
    pub fn new(conn: ConnectionManager, keys: Keys) -> RedisBackend {
        RedisBackend {
            conn,
            keys,
            local: LocalBackend::default(),
            known: DashMap::new(),
            paused_until: Mutex::new(None),
        }
    }

    /// The shared backend `snap`'s store calls for, with the store's
    /// identity; `None` without `store.redis`.
    pub fn for_snapshot(snap: &crate::state::Snapshot) -> Option<(String, RedisBackend)> {
        let store = snap.store.as_ref()?;
        let prefix = &snap.config.store_redis.as_ref()?.key_prefix;
        let backend = RedisBackend::new(store.redis()?, Keys::new(prefix));
        Some((store.identity().to_owned(), backend))
    }

    fn usable(&self) -> bool {
        let paused = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        paused.is_none_or(|until| Instant::now() >= until)
    }

    /// Runs a script within [`TIMEOUT`]; `None` (counted, Redis paused)
    /// when Redis did not answer.
    async fn run<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Option<T> {
        let mut conn = self.conn.clone();
        let error = match tokio::time::timeout(TIMEOUT, invocation.invoke_async(&mut conn)).await {
            Ok(Ok(v)) => return Some(v),
            // The text names the failure (refused, timed out), never the URL.
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {TIMEOUT:?}"),
        };
        store_errors().get_or_create(&StoreOpLabels { op }).inc();
        let mut paused = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if paused.is_none_or(|until| Instant::now() >= until) {
            tracing::warn!(
                op,
                error,
                "Redis is unavailable: quota is kept per process for now"
            );
        }
        *paused = Some(Instant::now() + PAUSE);
        None
    }

    /// Takes in the budget part of a script's reply:
    /// `limit, remaining, used, reset, blocked_ms`.
    fn learn(&self, credential: &CacheKey, budget: &[i64]) -> Option<Blocked> {
        let value = |v: i64| u64::try_from(v).ok();
        let seen = RateLimit {
            limit: value(budget[0]),
            remaining: value(budget[1]),
            used: value(budget[2]),
            reset: value(budget[3]),
        };
        let last = (seen != RateLimit::default()).then_some(seen);
        let for_ = Duration::from_millis(value(budget[4]).unwrap_or(0));
        let mut known = self.known.entry(credential.clone()).or_default();
        known.last = last;
        known.blocked_until = (!for_.is_zero()).then(|| Instant::now() + for_);
        (!for_.is_zero()).then_some(Blocked { for_, last })
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl QuotaBackend for RedisBackend {
    fn reserve<'a>(
        &'a self,
        credential: &'a CacheKey,
        rate: Option<Rate>,
    ) -> BoxFuture<'a, Result<Option<Slot>, Refusal>> {
        Box::pin(async move {
            // What this process already knows first, as the trait promises:
            // no round trip for a credential it has seen refused.
            if let Some(blocked) = self.blocked(credential) {
                return Err(Refusal::Blocked(blocked));
            }
            if !self.usable() {
                return self.local.reserve_now(credential, rate);
            }
            let name = shared_name(credential);
            let mut invocation = RESERVE.key(self.keys.quota_bucket(&name));
            invocation.key(self.keys.quota_budget(&name));
            match rate {
                Some(r) => invocation
                    .arg(micros(r.interval()).max(1))
                    .arg(r.burst.max(1))
                    .arg(micros(r.max_wait)),
                None => invocation.arg(0).arg(1).arg(0),
            };
            let reply = match self.run::<Vec<i64>>("quota_reserve", &invocation).await {
                Some(reply) if reply.len() == 8 => reply,
                _ => return self.local.reserve_now(credential, rate),
            };
            let now = Instant::now();
            let blocked = self.learn(credential, &reply[3..8]);
            let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
            match (reply[0], blocked) {
                (3, Some(blocked)) => Err(Refusal::Blocked(blocked)),
                (1, _) => Ok(Some(Slot {
                    at: now + us(reply[1]),
                    shared_tat: u64::try_from(reply[2]).ok(),
                })),
                (2, _) => Err(Refusal::Full(us(reply[1]))),
                _ => Ok(None),
            }
        })
    }

    fn give_back(&self, credential: &CacheKey, rate: Rate, slot: Slot) {
        let Some(tat) = slot.shared_tat else {
            return self.local.give_back(credential, rate, slot);
        };
        // Reached already, or no runtime to send it from (a drop at exit).
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if slot.at <= Instant::now() {
            return;
        }
        let key = self.keys.quota_bucket(&shared_name(credential));
        let interval = micros(rate.interval()).max(1);
        let burst = interval * u64::from(rate.burst.max(1));
        let mut conn = self.conn.clone();
        runtime.spawn(async move {
            let mut invocation = GIVE_BACK.key(key);
            invocation.arg(tat).arg(interval).arg(burst);
            let sent = invocation.invoke_async::<i64>(&mut conn);
            if !matches!(tokio::time::timeout(TIMEOUT, sent).await, Ok(Ok(_))) {
                let op = "quota_give_back";
                store_errors().get_or_create(&StoreOpLabels { op }).inc();
            }
        });
    }

    fn record<'a>(
        &'a self,
        credential: &'a CacheKey,
        status: StatusCode,
        seen: Option<RateLimit>,
        retry_after: Option<Duration>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.local.record_now(credential, status, seen, retry_after);
            // As `Budget::record`: only a refusal's Retry-After holds back.
            let retry = retry_after.filter(|_| matches!(status.as_u16(), 403 | 429));
            let blocks = retry.is_some() || seen.is_some_and(|s| s.remaining == Some(0));
            let now = Instant::now();
            let due = {
                let mut known = self.known.entry(credential.clone()).or_default();
                let due = known.written.is_none_or(|w| now >= w + WRITE_EVERY);
                if blocks || due {
                    known.written = Some(now);
                }
                due
            };
            if !(blocks || due) || !self.usable() {
                return;
            }
            let seen = seen.unwrap_or_default();
            let arg = |v: Option<u64>| v.and_then(|v| i64::try_from(v).ok()).unwrap_or(-1);
            let name = shared_name(credential);
            let mut invocation = RECORD.key(self.keys.quota_budget(&name));
            invocation
                .arg(arg(seen.limit))
                .arg(arg(seen.remaining))
                .arg(arg(seen.used))
                .arg(arg(seen.reset))
                .arg(arg(
                    retry.map(|r| u64::try_from(r.as_millis()).unwrap_or(u64::MAX))
                ));
            if let Some(reply) = self.run::<Vec<i64>>("quota_record", &invocation).await
                && reply.len() == 5
            {
                self.learn(credential, &reply);
            }
        })
    }

    fn blocked(&self, credential: &CacheKey) -> Option<Blocked> {
        let now = Instant::now();
        let shared = self.known.get(credential).and_then(|k| {
            let until = k.blocked_until.filter(|u| *u > now)?;
            Some(Blocked {
                for_: until - now,
                last: k.last,
            })
        });
        match (shared, self.local.blocked(credential)) {
            (Some(a), Some(b)) => Some(if a.for_ >= b.for_ { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    fn budgets(&self) -> Vec<(CacheKey, Budget)> {
        let mut all: std::collections::HashMap<CacheKey, Budget> =
            self.local.budgets().into_iter().collect();
        let (now, wall) = (Instant::now(), SystemTime::now());
        for k in self.known.iter().filter(|k| k.last.is_some()) {
            let retry_until = k
                .blocked_until
                .filter(|u| *u > now)
                .map(|u| wall + (u - now));
            let budget = Budget {
                last: k.last,
                retry_until,
            };
            all.insert(k.key().clone(), budget);
        }
        all.into_iter().collect()
    }
}
