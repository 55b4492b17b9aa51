//! `atomgit-proxy login USER --wait`: after printing the link, wait until
//! the user's grant is stored, by whichever replica handled the callback.
//!
//! The store is read through [`stored_since`] only, so a store other than
//! the JSON file plugs in at that one place.

use crate::credentials::grants::{Grant, GrantStore};
use std::path::Path;
use std::time::Duration;

/// How often the store is read while waiting.
pub const POLL: Duration = Duration::from_secs(1);

/// The grant of `user` stored after `since_ms` (epoch ms) and usable (not
/// revoked), if there is one yet. Opens the store afresh each time: the
/// grant is written by another process.
pub fn stored_since(store: &Path, user: &str, since_ms: u64) -> Result<Option<Grant>, String> {
    let store = GrantStore::open(store).map_err(|e| e.to_string())?;
    Ok(store
        .get(user)
        .filter(|g| g.updated_at_ms >= since_ms && g.revoked.is_none()))
}

/// Waits up to `limit` for a grant of `user` newer than `since_ms`.
/// `Ok(None)` when the time ran out.
pub async fn wait_for_grant(
    store: &Path,
    user: &str,
    since_ms: u64,
    limit: Duration,
) -> Result<Option<Grant>, String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (path, name) = (store.to_owned(), user.to_owned());
        // File reads stay off the runtime's threads.
        let found = tokio::task::spawn_blocking(move || stored_since(&path, &name, since_ms))
            .await
            .map_err(|e| e.to_string())??;
        if found.is_some() {
            return Ok(found);
        }
        if tokio::time::Instant::now() + POLL > deadline {
            return Ok(None);
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::grants::now_ms;
    use std::sync::Arc;

    fn grant(updated_at_ms: u64) -> Grant {
        Grant {
            access_token: "atu_x".into(),
            access_expires_at_ms: updated_at_ms + 3_600_000,
            refresh_token: "rt".into(),
            refresh_expires_at_ms: None,
            revoked: None,
            updated_at_ms,
            bound_to: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_ends_without_a_grant_when_the_time_is_up() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = dir.path().join("grants.json");
        let waited = wait_for_grant(&store, "alice", now_ms(), Duration::from_secs(5)).await;
        assert!(matches!(waited, Ok(None)), "{waited:?}");
    }

    #[tokio::test]
    async fn only_a_grant_newer_than_the_wait_counts() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("grants.json");
        let store = Arc::new(GrantStore::open(&path).expect("a store"));
        let start = now_ms();
        store
            .put("alice", grant(start - 60_000))
            .await
            .expect("put");
        assert!(stored_since(&path, "alice", start).expect("read").is_none());
        store.put("alice", grant(start + 1)).await.expect("put");
        let found = wait_for_grant(&path, "alice", start, Duration::from_secs(5)).await;
        assert!(matches!(found, Ok(Some(_))), "{found:?}");
    }
}
