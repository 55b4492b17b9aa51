//! The store: everything replicas must agree on, behind one interface.
//!
//! User grants (with a version for compare-and-set), the per-user refresh
//! lock, used login-link nonces, pending logins, and shared installation
//! tokens with their mint lock. Two backends: [`file::FileStore`], the JSON
//! grant file of a single proxy (or replicas sharing a volume, with `flock`),
//! and [`redis::RedisStore`] for a fleet. Nothing above this module knows
//! which one runs.

pub mod cli;
pub mod crypto;
pub mod file;
pub mod keys;
pub mod redis;
mod redis_lock;

use crate::config::Config;
use crate::credentials::grants::Grant;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A grant's version: bumped by every write, so a writer can say "only if
/// nobody wrote since I read". 0: no grant.
pub type Version = u64;

/// A grant as read, with the version a compare-and-set names.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub grant: Grant,
    pub version: Version,
}

/// What a compare-and-set did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Stored,
    /// Someone wrote a newer grant since the version named: nothing written.
    Conflict,
}

/// Why the store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Redis is unreachable, timed out or refused: the state is out of reach.
    #[error("the shared store is unavailable: {0}")]
    Unavailable(String),
    /// The grant file could not be written (its message says what and where).
    #[error("{0}")]
    File(String),
}

/// An installation token as the fleet shares it: wall-clock times, so
/// another process can time it.
#[derive(Clone, Serialize, Deserialize)]
pub struct SharedToken {
    pub token: String,
    pub issued_at_ms: u64,
    pub expires_at_ms: u64,
}

/// Names an installation's token across the fleet: the app fingerprint's
/// short hex form, the installation id and, for a scoped token, a digest of
/// its scope (two scopes on one installation are two tokens, in a fleet as
/// in one process).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstallationKey {
    pub app: String,
    pub id: u64,
    pub scope: Option<String>,
}

impl InstallationKey {
    pub fn new(
        app: &crate::config::AppFingerprint,
        id: u64,
        scope: Option<&crate::routes::TokenScope>,
    ) -> InstallationKey {
        use sha2::Digest;
        InstallationKey {
            app: app.short_hex(),
            id,
            // The scope's canonical text (sorted names) digested: short, and
            // free of braces that would end the hash tag.
            scope: scope.map(|s| hex::encode(&sha2::Sha256::digest(s.to_string())[..8])),
        }
    }

    /// The part of the Redis keys that names this token (`APP:ID[:SCOPE]`).
    pub fn slot(&self) -> String {
        match &self.scope {
            None => format!("{}:{}", self.app, self.id),
            Some(scope) => format!("{}:{}:{scope}", self.app, self.id),
        }
    }
}

/// A held lock; dropping it releases the lock (for Redis: by its owner only).
pub struct LockGuard(#[allow(dead_code)] Box<dyn Send + Sync>);

impl LockGuard {
    pub fn new(inner: impl Send + Sync + 'static) -> LockGuard {
        LockGuard(Box::new(inner))
    }
}

/// What `readyz` shows of the store.
#[derive(Debug, Clone, Serialize)]
pub struct StoreHealth {
    pub backend: &'static str,
    /// `ok` or `unavailable`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The store interface every backend implements.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// `file` or `redis`.
    fn backend(&self) -> &'static str;
    /// What identifies this store's configuration: a reload that keeps it
    /// keeps the store (and its memory) too. Holds no secret.
    fn identity(&self) -> &str;

    /// The user's grant, read from the shared state.
    async fn grant(&self, user: &str) -> Result<Option<Versioned>, StoreError>;
    /// The last grant this process saw for `user`, without asking anyone:
    /// what a cached token can still be served from while the store is away.
    fn cached_grant(&self, user: &str) -> Option<Grant>;
    /// Writes `grant`; with `expected`, only if the stored version is still
    /// that one (compare-and-set).
    async fn put_grant(
        &self,
        user: &str,
        grant: Grant,
        expected: Option<Version>,
    ) -> Result<Written, StoreError>;
    /// Every grant, for `store list`.
    async fn grants(&self) -> Result<Vec<(String, Grant)>, StoreError>;
    /// Writes what an earlier failed write left only in memory.
    async fn flush(&self) -> Result<(), StoreError>;

    /// The per-user refresh lock, waiting at most `wait` (`None` past it).
    async fn lock_refresh(
        &self,
        user: &str,
        wait: Duration,
    ) -> Result<Option<LockGuard>, StoreError>;

    /// The login-link HMAC key.
    async fn link_key(&self) -> Result<Vec<u8>, StoreError>;
    /// Records a login link's nonce as used; false if it already was.
    async fn use_link(&self, nonce: &str, expires_at_s: u64) -> Result<bool, StoreError>;
    /// Remembers a started login's `state` for [`PENDING_LIFETIME`].
    async fn insert_login(&self, state: &str, user: &str) -> Result<(), StoreError>;
    /// The user of a pending login, removing it: a state works once.
    async fn take_login(&self, state: &str) -> Result<Option<String>, StoreError>;

    /// Whether installation tokens are shared (Redis) or per process (file).
    fn shares_installation_tokens(&self) -> bool {
        false
    }
    async fn installation_token(
        &self,
        _key: &InstallationKey,
    ) -> Result<Option<SharedToken>, StoreError> {
        Ok(None)
    }
    async fn put_installation_token(
        &self,
        _key: &InstallationKey,
        _token: &SharedToken,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    /// The short lock a fleet mints an installation's token under; `None`
    /// when another process holds it (no waiting here).
    async fn try_lock_mint(&self, _key: &InstallationKey) -> Result<Option<LockGuard>, StoreError> {
        Ok(Some(LockGuard::new(())))
    }

    /// Whether the store answers now.
    async fn health(&self) -> StoreHealth;
    /// The Redis connection, for features that keep their own shared state
    /// there (the quota's buckets); `None` for the file store.
    fn redis(&self) -> Option<::redis::aio::ConnectionManager> {
        None
    }
}

/// A started login must come back within this.
pub const PENDING_LIFETIME: Duration = crate::credentials::pending_logins::PENDING_LIFETIME;

/// The store `config` describes, reusing `previous` when it is the same one
/// (so a reload keeps grants in memory, pending logins and the connection).
pub fn open(
    config: &Config,
    previous: Option<&Arc<dyn Store>>,
) -> Result<Option<Arc<dyn Store>>, String> {
    if let Some(redis) = &config.store_redis {
        let identity = redis::RedisStore::identity_of(redis);
        if let Some(prev) = previous.filter(|p| p.identity() == identity) {
            return Ok(Some(prev.clone()));
        }
        return Ok(Some(Arc::new(redis::RedisStore::new(redis)?)));
    }
    let Some(path) = &config.store_path else {
        return Ok(None);
    };
    let identity = file::FileStore::identity_of(path);
    if let Some(prev) = previous.filter(|p| p.identity() == identity) {
        return Ok(Some(prev.clone()));
    }
    Ok(Some(Arc::new(
        file::FileStore::open(path).map_err(|e| e.to_string())?,
    )))
}

/// The login-link key for `config`, without connecting anywhere: derived
/// from `encryption_key` with Redis, else the key file beside the grant file.
pub fn link_key_for(config: &Config) -> std::io::Result<Vec<u8>> {
    if let Some(redis) = &config.store_redis {
        return Ok(crypto::link_key(&redis.encryption_key));
    }
    let path = config
        .store_path
        .as_ref()
        .ok_or_else(|| std::io::Error::other("the config has no `store:`"))?;
    crate::credentials::login_link::load_or_create_key(path)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreOpLabels {
    pub op: &'static str,
}

/// `atomgit_proxy_store_errors_total{op}`: failed store operations. One
/// family for the process (registered by every `Metrics`), since the store
/// is built before, and lives beside, the metrics of one `Shared`.
pub fn store_errors() -> &'static Family<StoreOpLabels, Counter> {
    static ERRORS: OnceLock<Family<StoreOpLabels, Counter>> = OnceLock::new();
    ERRORS.get_or_init(Family::default)
}

/// The store's health for `readyz`, within [`redis::OP_TIMEOUT`].
pub async fn health_of(store: Option<&Arc<dyn Store>>) -> Option<StoreHealth> {
    Some(store?.health().await)
}

#[cfg(test)]
mod tests {
    use super::InstallationKey;
    use crate::config::{AppFingerprint, Secret};
    use crate::routes::TokenScope;

    #[test]
    fn apps_and_scopes_name_different_tokens() {
        let app = AppFingerprint::of(75, "http://x", &Secret::new("k"));
        let other = AppFingerprint::of(76, "http://x", &Secret::new("k2"));
        let read = TokenScope {
            repositories: Some(vec!["docs".into()]),
            permissions: None,
        };
        let write = TokenScope {
            repositories: Some(vec!["site".into()]),
            permissions: None,
        };
        let plain = InstallationKey::new(&app, 14, None);
        assert_eq!(plain.slot(), format!("{}:14", app.short_hex()));
        let slots = [
            plain.slot(),
            InstallationKey::new(&app, 14, Some(&read)).slot(),
            InstallationKey::new(&app, 14, Some(&write)).slot(),
            InstallationKey::new(&other, 14, Some(&read)).slot(),
        ];
        for (i, a) in slots.iter().enumerate() {
            assert!(!a.contains(['{', '}']), "{a}");
            for b in &slots[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // The same scope always names the same token (replicas agree).
        assert_eq!(
            InstallationKey::new(&app, 14, Some(&read)),
            InstallationKey::new(&app, 14, Some(&read.clone()))
        );
    }
}
