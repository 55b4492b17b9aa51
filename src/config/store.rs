//! The `store:` section validated: the grant file, or Redis for a fleet.
//!
//! Exactly one of `path` and `redis`; with `redis`, an `encryption_key` of
//! 32 bytes (base64) is required. The Redis URL is a secret (it may hold a
//! password): it is parsed here, once, and only its host is ever shown.

use super::Secret;
use super::file::{SecretFile, StoreFile};
use super::validate::Problems;
use std::fmt;
use std::path::{Path, PathBuf};

/// The default prefix of every Redis key.
pub const DEFAULT_KEY_PREFIX: &str = "atomgit-proxy:";

/// `store.redis` with its key, validated.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisStoreConfig {
    /// `redis://` or `rediss://`, possibly with a password: never logged.
    pub url: Secret,
    /// Prefix of every key (a fleet's namespace).
    pub key_prefix: String,
    /// The 32 bytes of `store.encryption_key`.
    pub encryption_key: [u8; 32],
}

impl RedisStoreConfig {
    /// `scheme://host:port/db`, without user or password, for logs.
    pub fn shown(&self) -> String {
        match url::Url::parse(self.url.expose()) {
            Ok(u) => format!(
                "{}://{}:{}{}",
                u.scheme(),
                u.host_str().unwrap_or("?"),
                u.port().unwrap_or(6379),
                u.path()
            ),
            Err(_) => "redis".into(),
        }
    }
}

impl fmt::Debug for RedisStoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreConfig")
            .field("url", &self.shown())
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

/// The store's two shapes after validation: `(path, redis)`, at most one set.
pub(super) fn store(
    raw: Option<&StoreFile>,
    base: &Path,
    problems: &mut Problems,
) -> (Option<PathBuf>, Option<RedisStoreConfig>) {
    let Some(raw) = raw else {
        return (None, None);
    };
    let path = raw.path.as_ref().map(|p| base.join(p));
    match (&path, &raw.redis) {
        (Some(_), Some(_)) => {
            problems.add(
                "store",
                "has both `path` and `redis`; keep exactly one (the grant file, or Redis for a fleet)",
            );
            return (None, None);
        }
        (None, None) => {
            problems.add(
                "store",
                "needs exactly one of `path` (a grant file) and `redis` (shared state for a fleet)",
            );
            return (None, None);
        }
        _ => {}
    }
    let Some(redis) = &raw.redis else {
        return (path, None);
    };
    let url = secret(&redis.url, "store.redis.url", base, problems);
    if let Some(url) = &url {
        check_url(url, problems);
    }
    let key_prefix = redis
        .key_prefix
        .clone()
        .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_owned());
    if key_prefix.contains(['{', '}']) {
        problems.add(
            "store.redis.key_prefix",
            "must not contain `{` or `}`: the keys' hash tags use them",
        );
    }
    let key = match &raw.encryption_key {
        None => {
            problems.add(
                "store.encryption_key",
                "is required with `store.redis` (32 random bytes, base64: `head -c 32 /dev/urandom | base64`)",
            );
            None
        }
        Some(source) => secret(source, "store.encryption_key", base, problems)
            .and_then(|k| decode_key(&k, problems)),
    };
    match (url, key) {
        (Some(url), Some(encryption_key)) => (
            None,
            Some(RedisStoreConfig {
                url,
                key_prefix,
                encryption_key,
            }),
        ),
        _ => (None, None),
    }
}

fn secret(
    source: &SecretFile,
    field: &str,
    base: &Path,
    problems: &mut Problems,
) -> Option<Secret> {
    super::secret::resolve(source, base)
        .map_err(|msg| problems.add(field, msg))
        .ok()
}

/// The URL must be one the client takes; its text is never quoted back
/// (it may hold a password).
fn check_url(url: &Secret, problems: &mut Problems) {
    let scheme_ok = url::Url::parse(url.expose())
        .is_ok_and(|u| matches!(u.scheme(), "redis" | "rediss") && u.host_str().is_some());
    if !scheme_ok || redis::Client::open(url.expose()).is_err() {
        problems.add(
            "store.redis.url",
            "expected redis://[:password@]host:port/db or rediss://... (TLS)",
        );
    }
}

fn decode_key(key: &Secret, problems: &mut Problems) -> Option<[u8; 32]> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key.expose().trim())
        .ok();
    match bytes.and_then(|b| <[u8; 32]>::try_from(b).ok()) {
        Some(k) => Some(k),
        None => {
            problems.add(
                "store.encryption_key",
                "expected 32 random bytes in base64 (44 characters): `head -c 32 /dev/urandom | base64`",
            );
            None
        }
    }
}
