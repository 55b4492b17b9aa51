//! `atomgit-proxy login USER --wait`: after printing the link, wait until
//! the user's grant is stored, by whichever replica handled the callback.
//!
//! The store is read through [`stored_since`] only, so a store other than
//! the JSON file plugs in at that one place.

use crate::credentials::grants::Grant;
use crate::store::Store;
use std::time::Duration;

/// How often the store is read while waiting.
pub const POLL: Duration = Duration::from_secs(1);

/// The grant of `user` stored after `since_ms` (epoch ms) and usable (not
/// revoked), if there is one yet. The store reads the shared state afresh
/// (the file when it changed, or Redis): the grant is written by another
/// process.
pub async fn stored_since(store: &dyn Store, user: &str, since_ms: u64) -> Option<Grant> {
    // A store that is briefly away (Redis restarting) is asked again at the
    // next poll rather than ending the wait: the login may still land.
    let found = store.grant(user).await.ok().flatten()?;
    let grant = found.grant;
    (grant.updated_at_ms >= since_ms && grant.revoked.is_none()).then_some(grant)
}

/// Waits up to `limit` for a grant of `user` newer than `since_ms`.
/// `None` when the time ran out.
pub async fn wait_for_grant(
    store: &dyn Store,
    user: &str,
    since_ms: u64,
    limit: Duration,
) -> Option<Grant> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(found) = stored_since(store, user, since_ms).await {
            return Some(found);
        }
        if tokio::time::Instant::now() + POLL > deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::grants::{GrantStore, now_ms};
    use crate::store::file::FileStore;
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
        let store = FileStore::open(&dir.path().join("grants.json")).expect("a store");
        let waited = wait_for_grant(&store, "alice", now_ms(), Duration::from_secs(5)).await;
        assert!(waited.is_none(), "{waited:?}");
    }

    #[tokio::test]
    async fn only_a_grant_newer_than_the_wait_counts() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("grants.json");
        // The writer is another process's view of the same file.
        let store = Arc::new(GrantStore::open(&path).expect("a store"));
        let reader = FileStore::open(&path).expect("a store");
        let start = now_ms();
        store
            .put("alice", grant(start - 60_000))
            .await
            .expect("put");
        assert!(stored_since(&reader, "alice", start).await.is_none());
        store.put("alice", grant(start + 1)).await.expect("put");
        let found = wait_for_grant(&reader, "alice", start, Duration::from_secs(5)).await;
        assert!(found.is_some(), "{found:?}");
    }
}
