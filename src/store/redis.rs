//! The Redis backend: a fleet's shared state (see `keys.rs` for the layout).
//!
//! One `ConnectionManager` per store, made lazily: the proxy starts with
//! Redis down, and the manager reconnects by itself when it returns. Every
//! call has a timeout ([`OP_TIMEOUT`]), so a Redis that hangs cannot hang a
//! request longer than that; every failure is counted in
//! `atomgit_proxy_store_errors_total{op}`.
//!
//! Tokens and refresh tokens are sealed (`crypto.rs`) with the key's name
//! as associated data. Grants are hashes of a version and the sealed grant,
//! written by a Lua compare-and-set on the version. Locks are `SET NX PX`
//! with a random owner id, renewed while held and released by their owner
//! only (compare-and-delete in Lua), so a lock whose holder died frees
//! itself when its lease runs out.
//!
//! The URL is never logged (it may hold a password): [`RedisStore::identity`]
//! is a digest, and messages show only `scheme://host:port/db`.

use super::crypto::{Sealer, link_key};
use super::keys::Keys;
use super::{
    InstallationKey, LockGuard, SharedToken, Store, StoreError, StoreHealth, StoreOpLabels,
    Version, Versioned, Written, store_errors,
};
use crate::config::store::RedisStoreConfig;
use crate::credentials::grants::Grant;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisResult, Script};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::Duration;

/// The longest any one Redis call may take.
pub const OP_TIMEOUT: Duration = Duration::from_secs(2);
pub use super::redis_lock::LOCK_LEASE;
use super::redis_lock::{HeldLock, LOCK_POLL};

/// Writes the grant if its version is still `ARGV[1]` (`-`: any), as the
/// next version; returns it, or -1 on a conflict.
static PUT_GRANT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local n = tonumber(redis.call('HGET', KEYS[1], 'v')) or 0
if ARGV[1] ~= '-' and tostring(n) ~= ARGV[1] then return -1 end
redis.call('HSET', KEYS[1], 'v', n + 1, 'g', ARGV[2])
return n + 1",
    )
});

pub struct RedisStore {
    client: Client,
    /// Made on first use, inside the runtime; reconnects by itself.
    conn: OnceLock<ConnectionManager>,
    keys: Keys,
    sealer: Sealer,
    link_key: Vec<u8>,
    identity: String,
    /// `scheme://host:port/db`, for messages.
    shown: String,
    /// The last grant read or written per user: a cached token is served
    /// from it while Redis is away.
    seen: Mutex<HashMap<String, Versioned>>,
    /// Grants a refresh produced while Redis was unreachable, with the
    /// version they replace: written as soon as Redis answers again, so a
    /// rotated refresh token is not lost.
    unsaved: Mutex<HashMap<String, (Grant, Option<Version>)>>,
}

impl RedisStore {
    pub fn new(config: &RedisStoreConfig) -> Result<RedisStore, String> {
        let client = Client::open(config.url.expose()).map_err(|_| {
            format!(
                "store.redis.url: {} is not a usable Redis URL",
                config.shown()
            )
        })?;
        Ok(RedisStore {
            client,
            conn: OnceLock::new(),
            keys: Keys::new(&config.key_prefix),
            sealer: Sealer::new(&config.encryption_key),
            link_key: link_key(&config.encryption_key),
            identity: Self::identity_of(config),
            shown: config.shown(),
            seen: Mutex::default(),
            unsaved: Mutex::default(),
        })
    }

    /// A digest of everything that makes two configs one store.
    pub fn identity_of(config: &RedisStoreConfig) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(config.url.expose());
        h.update([0]);
        h.update(&config.key_prefix);
        h.update([0]);
        h.update(config.encryption_key);
        format!("redis:{}", hex::encode(&h.finalize()[..16]))
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    fn conn(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(c) = self.conn.get() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let made = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", self.shown)))?;
        Ok(self.conn.get_or_init(|| made).clone())
    }

    /// Runs `cmd` with the timeout, counting failures under `op`.
    async fn query<T: ::redis::FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &::redis::Cmd,
    ) -> Result<T, StoreError> {
        self.call(op, |mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    /// Runs `f` on the connection within [`OP_TIMEOUT`], counting failures
    /// under `op`. A call that finds the connection broken is made once
    /// more: the manager reconnects only when a call fails, so after Redis
    /// came back the first call would otherwise fail for nothing.
    async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let conn = self.conn()?;
        let attempts = async {
            match f(conn.clone()).await {
                Err(e)
                    if e.is_io_error()
                        || e.is_connection_refusal()
                        || e.is_connection_dropped() =>
                {
                    f(conn).await
                }
                other => other,
            }
        };
        let outcome = match tokio::time::timeout(OP_TIMEOUT, attempts).await {
            Ok(Ok(v)) => return Ok(v),
            // The error's text names the failure (refused, timed out), not
            // the URL, so it is safe to show.
            Ok(Err(e)) => format!("{}: {e}", self.shown),
            Err(_) => format!("{}: no answer within {OP_TIMEOUT:?}", self.shown),
        };
        store_errors().get_or_create(&StoreOpLabels { op }).inc();
        Err(StoreError::Unavailable(outcome))
    }

    fn remember(&self, user: &str, v: Versioned) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user.to_owned(), v);
    }

    /// Writes a grant a failed write left in memory, if any.
    async fn flush_user(&self, user: &str) -> Result<(), StoreError> {
        let pending = self
            .unsaved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .cloned();
        let Some((grant, expected)) = pending else {
            return Ok(());
        };
        let outcome = self.cas(user, &grant, expected).await?;
        self.unsaved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(user);
        match outcome {
            Written::Stored => tracing::info!(user, "grant written to Redis after it came back"),
            Written::Conflict => tracing::warn!(
                user,
                "a grant kept while Redis was away was not written: a newer one is there"
            ),
        }
        Ok(())
    }

    async fn cas(
        &self,
        user: &str,
        grant: &Grant,
        expected: Option<Version>,
    ) -> Result<Written, StoreError> {
        let key = self.keys.grant(user);
        let json = serde_json::to_vec(grant)
            .map_err(|e| StoreError::Unavailable(format!("cannot encode a grant: {e}")))?;
        let sealed = self.sealer.seal(&key, &json);
        let expected_arg = expected.map_or_else(|| "-".to_owned(), |v| v.to_string());
        let mut invocation = PUT_GRANT.key(&key);
        invocation.arg(expected_arg).arg(sealed);
        let invocation = &invocation;
        let version: i64 = self
            .call("grant_put", |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        if version < 0 {
            return Ok(Written::Conflict);
        }
        self.remember(
            user,
            Versioned {
                grant: grant.clone(),
                version: version as u64,
            },
        );
        Ok(Written::Stored)
    }

    /// Takes `key` for [`LOCK_LEASE`], waiting at most `wait` (zero: one try).
    async fn lock(&self, key: String, wait: Duration) -> Result<Option<LockGuard>, StoreError> {
        let owner = hex::encode(rand::random::<[u8; 16]>());
        let deadline = tokio::time::Instant::now() + wait;
        let conn = self.conn()?;
        loop {
            let taken: Option<String> = self
                .query(
                    "lock",
                    ::redis::cmd("SET")
                        .arg(&key)
                        .arg(&owner)
                        .arg("NX")
                        .arg("PX")
                        .arg(LOCK_LEASE.as_millis() as u64),
                )
                .await?;
            if taken.is_some() {
                return Ok(Some(LockGuard::new(HeldLock::start(
                    conn.clone(),
                    key,
                    owner,
                ))));
            }
            if tokio::time::Instant::now() + LOCK_POLL > deadline {
                return Ok(None);
            }
            tokio::time::sleep(LOCK_POLL).await;
        }
    }
}

#[async_trait::async_trait]
impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn identity(&self) -> &str {
        &self.identity
    }

    async fn grant(&self, user: &str) -> Result<Option<Versioned>, StoreError> {
        self.flush_user(user).await?;
        let key = self.keys.grant(user);
        let (version, sealed): (Option<u64>, Option<Vec<u8>>) = self
            .query(
                "grant_get",
                ::redis::cmd("HMGET").arg(&key).arg("v").arg("g"),
            )
            .await?;
        let (Some(version), Some(sealed)) = (version, sealed) else {
            return Ok(None);
        };
        let grant = self
            .sealer
            .open(&key, &sealed)
            .and_then(|plain| serde_json::from_slice::<Grant>(&plain).ok())
            .ok_or_else(|| {
                store_errors()
                    .get_or_create(&StoreOpLabels { op: "grant_open" })
                    .inc();
                StoreError::Unavailable(format!(
                    "the grant of `{user}` in Redis does not open with this store.encryption_key"
                ))
            })?;
        let v = Versioned { grant, version };
        self.remember(user, v.clone());
        Ok(Some(v))
    }

    fn cached_grant(&self, user: &str) -> Option<Grant> {
        let unsaved = self.unsaved.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((g, _)) = unsaved.get(user) {
            return Some(g.clone());
        }
        drop(unsaved);
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(user).map(|v| v.grant.clone())
    }

    async fn put_grant(
        &self,
        user: &str,
        grant: Grant,
        expected: Option<Version>,
    ) -> Result<Written, StoreError> {
        match self.cas(user, &grant, expected).await {
            Ok(w) => Ok(w),
            Err(e) => {
                self.unsaved
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(user.to_owned(), (grant, expected));
                Err(e)
            }
        }
    }

    async fn grants(&self) -> Result<Vec<(String, Grant)>, StoreError> {
        let pattern = self.keys.grant_pattern();
        let mut cursor = 0u64;
        let mut users = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .query(
                    "grants_list",
                    ::redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(500),
                )
                .await?;
            users.extend(keys.iter().filter_map(|k| self.keys.user_of_grant(k)));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        users.sort();
        users.dedup();
        let mut out = Vec::new();
        for user in users {
            if let Some(v) = self.grant(&user).await? {
                out.push((user, v.grant));
            }
        }
        Ok(out)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let users: Vec<String> = self
            .unsaved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for user in users {
            self.flush_user(&user).await?;
        }
        Ok(())
    }

    async fn lock_refresh(
        &self,
        user: &str,
        wait: Duration,
    ) -> Result<Option<LockGuard>, StoreError> {
        self.lock(self.keys.refresh_lock(user), wait).await
    }

    async fn link_key(&self) -> Result<Vec<u8>, StoreError> {
        Ok(self.link_key.clone())
    }

    async fn use_link(&self, nonce: &str, expires_at_s: u64) -> Result<bool, StoreError> {
        let set: Option<String> = self
            .query(
                "link",
                ::redis::cmd("SET")
                    .arg(self.keys.used_link(nonce))
                    .arg(1)
                    .arg("NX")
                    .arg("EXAT")
                    .arg(expires_at_s.max(1)),
            )
            .await?;
        Ok(set.is_some())
    }

    async fn insert_login(&self, state: &str, user: &str) -> Result<(), StoreError> {
        self.query::<()>(
            "login",
            ::redis::cmd("SET")
                .arg(self.keys.pending_login(state))
                .arg(user)
                .arg("PX")
                .arg(super::PENDING_LIFETIME.as_millis() as u64),
        )
        .await
    }

    async fn take_login(&self, state: &str) -> Result<Option<String>, StoreError> {
        self.query(
            "login",
            ::redis::cmd("GETDEL").arg(self.keys.pending_login(state)),
        )
        .await
    }

    fn shares_installation_tokens(&self) -> bool {
        true
    }

    async fn installation_token(
        &self,
        key: &InstallationKey,
    ) -> Result<Option<SharedToken>, StoreError> {
        let name = self.keys.installation_token(&key.slot());
        let sealed: Option<Vec<u8>> = self
            .query("token_get", ::redis::cmd("GET").arg(&name))
            .await?;
        Ok(sealed
            .and_then(|s| self.sealer.open(&name, &s))
            .and_then(|plain| serde_json::from_slice(&plain).ok()))
    }

    async fn put_installation_token(
        &self,
        key: &InstallationKey,
        token: &SharedToken,
    ) -> Result<(), StoreError> {
        let ttl = token
            .expires_at_ms
            .saturating_sub(crate::credentials::grants::now_ms());
        if ttl == 0 {
            return Ok(());
        }
        let name = self.keys.installation_token(&key.slot());
        let json = serde_json::to_vec(token)
            .map_err(|e| StoreError::Unavailable(format!("cannot encode a token: {e}")))?;
        let sealed = self.sealer.seal(&name, &json);
        self.query::<()>(
            "token_put",
            ::redis::cmd("SET")
                .arg(&name)
                .arg(sealed)
                .arg("PX")
                .arg(ttl),
        )
        .await
    }

    async fn try_lock_mint(&self, key: &InstallationKey) -> Result<Option<LockGuard>, StoreError> {
        self.lock(self.keys.mint_lock(&key.slot()), Duration::ZERO)
            .await
    }

    async fn health(&self) -> StoreHealth {
        let ping = async { self.query::<String>("ping", &::redis::cmd("PING")).await };
        let error = ping.await.err().map(|e| e.to_string());
        StoreHealth {
            backend: "redis",
            state: if error.is_none() { "ok" } else { "unavailable" },
            error,
        }
    }

    fn redis(&self) -> Option<ConnectionManager> {
        self.conn().ok()
    }
}
