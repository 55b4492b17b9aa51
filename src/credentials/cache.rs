//! A per-credential token cache with one mint in flight at a time.
//!
//! Shaped after pingora's read-through cache: concurrent misses on one key
//! share one lookup. A request finds one of three states:
//! - a token before its `refresh_at`: used at once;
//! - a token past `refresh_at` but still usable: used at once, and one
//!   background refresh is started (the caller never waits for it);
//! - no usable token: the caller waits on the slot's mint lock, and whoever
//!   gets it first mints; the rest find its token when they get the lock.
//!
//! Failures back off: while a failure is recent, callers get it back instead
//! of hammering the platform, and a still-usable token keeps being served.
//! Mints run in their own task, so a caller that hangs up mid-mint does not
//! waste the mint for the callers queued behind it.

use super::{CredentialError, Token};
use dashmap::DashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Tokens keyed by what identifies a credential.
pub struct TokenCache<K> {
    slots: DashMap<K, Arc<Slot>>,
}

#[derive(Default)]
struct Slot {
    /// Held for the length of a mint; the queue of waiters on a cold slot.
    mint: Arc<tokio::sync::Mutex<()>>,
    /// Short critical sections only, never held across an await.
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    token: Option<Token>,
    failure: Option<Failure>,
    /// A background refresh is under way; do not start another.
    refreshing: bool,
}

struct Failure {
    error: CredentialError,
    retry_at: Instant,
    backoff: Duration,
}

impl Slot {
    fn state(&self) -> MutexGuard<'_, SlotState> {
        // A panic while holding this lock leaves plain data behind; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a mint's outcome. A failure never discards a still-usable token.
    fn record(&self, result: &Result<Token, CredentialError>) {
        let mut st = self.state();
        let now = Instant::now();
        match result {
            Ok(token) => {
                st.token = Some(token.clone());
                st.failure = None;
            }
            Err(error) => {
                let backoff = st
                    .failure
                    .as_ref()
                    .map_or(FIRST_BACKOFF, |f| (f.backoff * 2).min(MAX_BACKOFF));
                st.failure = Some(Failure {
                    error: error.clone(),
                    retry_at: now + backoff,
                    backoff,
                });
            }
        }
    }

    /// A fresh-enough token, or the recent failure, without waiting.
    fn ready(&self, now: Instant) -> Option<Result<Token, CredentialError>> {
        let st = self.state();
        if let Some(t) = st.token.as_ref().filter(|t| t.is_usable(now)) {
            return Some(Ok(t.clone()));
        }
        st.failure
            .as_ref()
            .filter(|f| now < f.retry_at)
            .map(|f| Err(f.error.clone()))
    }
}

impl<K: Eq + Hash + Clone> Default for TokenCache<K> {
    fn default() -> Self {
        TokenCache {
            slots: DashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Clone> TokenCache<K> {
    fn slot(&self, key: &K) -> Arc<Slot> {
        if let Some(slot) = self.slots.get(key) {
            return slot.clone();
        }
        self.slots.entry(key.clone()).or_default().clone()
    }

    /// The hit path: a token that is usable and not yet due for a refresh,
    /// with no allocation and no write lock. `None` sends the caller to
    /// [`TokenCache::get`], which refreshes, mints or reports a failure.
    pub fn fresh(&self, key: &K) -> Option<Token> {
        let slot = self.slots.get(key)?;
        let st = slot.state();
        let now = Instant::now();
        st.token
            .as_ref()
            .filter(|t| t.is_usable(now) && now < t.refresh_at)
            .cloned()
    }

    /// A usable token for `key`, minting with `mint` when there is none.
    pub async fn get<F, Fut>(&self, key: &K, mint: F) -> Result<Token, CredentialError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Token, CredentialError>> + Send + 'static,
    {
        let slot = self.slot(key);
        let now = Instant::now();
        {
            let mut st = slot.state();
            if let Some(token) = st.token.as_ref().filter(|t| t.is_usable(now)) {
                let token = token.clone();
                let backing_off = st.failure.as_ref().is_some_and(|f| now < f.retry_at);
                if now >= token.refresh_at && !st.refreshing && !backing_off {
                    st.refreshing = true;
                    drop(st);
                    spawn_refresh(slot, mint());
                }
                return Ok(token);
            }
            if let Some(f) = st.failure.as_ref().filter(|f| now < f.retry_at) {
                return Err(f.error.clone());
            }
        }
        let guard = slot.mint.clone().lock_owned().await;
        // Whoever held the lock before us may have minted already.
        if let Some(outcome) = slot.ready(Instant::now()) {
            return outcome;
        }
        let fut = mint();
        let task_slot = slot.clone();
        let task = tokio::spawn(async move {
            let _guard = guard;
            let result = fut.await;
            task_slot.record(&result);
            result
        });
        task.await
            .unwrap_or_else(|e| Err(CredentialError::Internal(format!("mint task failed: {e}"))))
    }

    /// The cached token, if any, without minting (for readiness and tests).
    pub fn peek(&self, key: &K) -> Option<Token> {
        self.slots.get(key).and_then(|s| s.state().token.clone())
    }

    /// Drops the cached state for `key` (e.g. after a new login replaced a grant).
    pub fn forget(&self, key: &K) {
        self.slots.remove(key);
    }

    /// Drops every slot whose key `keep` rejects: credentials a reload removed.
    pub fn retain(&self, keep: impl Fn(&K) -> bool) {
        self.slots.retain(|k, _| keep(k));
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

fn spawn_refresh<Fut>(slot: Arc<Slot>, fut: Fut)
where
    Fut: Future<Output = Result<Token, CredentialError>> + Send + 'static,
{
    /// Clears `refreshing` however the refresh task ends, so a panic (or
    /// the runtime cancelling the task at shutdown) cannot leave the slot
    /// believing a refresh is under way forever.
    struct Refreshing(Arc<Slot>);
    impl Drop for Refreshing {
        fn drop(&mut self) {
            self.0.state().refreshing = false;
        }
    }
    tokio::spawn(async move {
        let refreshing = Refreshing(slot);
        let slot = &refreshing.0;
        let _guard = slot.mint.clone().lock_owned().await;
        let result = fut.await;
        if let Err(e) = &result {
            tracing::warn!(error = %e, "token refresh failed; the current token stays in use until it expires");
        }
        slot.record(&result);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const HOUR: Duration = Duration::from_secs(3600);
    const MARGIN: Duration = Duration::from_secs(300);

    fn minter(
        count: &Arc<AtomicUsize>,
        fail: bool,
    ) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = Result<Token, CredentialError>> + Send>>
    {
        let count = count.clone();
        move || {
            Box::pin(async move {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                if fail {
                    return Err(CredentialError::TokenEndpoint("boom".into()));
                }
                Ok(Token::new(&format!("ats_{n}"), Instant::now(), HOUR, MARGIN).unwrap())
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_cold_requests_mint_once() {
        let cache = Arc::new(TokenCache::<u64>::default());
        let count = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let (cache, count) = (cache.clone(), count.clone());
            tasks.push(tokio::spawn(async move {
                cache.get(&1, minter(&count, false)).await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().value(), "ats_1");
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_ahead_of_expiry_in_the_background() {
        let cache = TokenCache::<u64>::default();
        let count = Arc::new(AtomicUsize::new(0));
        assert_eq!(
            cache.get(&1, minter(&count, false)).await.unwrap().value(),
            "ats_1"
        );
        // Just before the refresh window: no new mint.
        tokio::time::advance(HOUR - MARGIN - Duration::from_secs(1)).await;
        assert_eq!(
            cache.get(&1, minter(&count, false)).await.unwrap().value(),
            "ats_1"
        );
        assert_eq!(count.load(Ordering::SeqCst), 1);
        // Inside it: the old token is served while one refresh runs.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            cache.get(&1, minter(&count, false)).await.unwrap().value(),
            "ats_1"
        );
        assert_eq!(
            cache.get(&1, minter(&count, false)).await.unwrap().value(),
            "ats_1"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(count.load(Ordering::SeqCst), 2);
        assert_eq!(
            cache.get(&1, minter(&count, false)).await.unwrap().value(),
            "ats_2"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_is_never_served_past_its_usable_time() {
        let cache = TokenCache::<u64>::default();
        let count = Arc::new(AtomicUsize::new(0));
        let first = cache.get(&1, minter(&count, false)).await.unwrap();
        // Refreshes keep failing; the old token is served only while usable.
        tokio::time::advance(HOUR - MARGIN + Duration::from_secs(1)).await;
        assert_eq!(
            cache.get(&1, minter(&count, true)).await.unwrap().value(),
            "ats_1"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        tokio::time::advance(first.usable_until - Instant::now()).await;
        let err = cache.get(&1, minter(&count, true)).await.unwrap_err();
        assert!(matches!(err, CredentialError::TokenEndpoint(_)), "{err:?}");
        assert!(Instant::now() < first.expires_at);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_then_recover() {
        let cache = TokenCache::<u64>::default();
        let count = Arc::new(AtomicUsize::new(0));
        assert!(cache.get(&1, minter(&count, true)).await.is_err());
        // Within the backoff the failure is answered without a new attempt.
        assert!(cache.get(&1, minter(&count, true)).await.is_err());
        assert_eq!(count.load(Ordering::SeqCst), 1);
        tokio::time::advance(FIRST_BACKOFF).await;
        assert_eq!(
            cache.get(&1, minter(&count, false)).await.unwrap().value(),
            "ats_2"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failed_refresh_keeps_the_valid_token_and_backs_off() {
        let cache = TokenCache::<u64>::default();
        let count = Arc::new(AtomicUsize::new(0));
        cache.get(&1, minter(&count, false)).await.unwrap();
        tokio::time::advance(HOUR - MARGIN + Duration::from_secs(1)).await;
        assert!(cache.get(&1, minter(&count, true)).await.is_ok());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(count.load(Ordering::SeqCst), 2);
        // Still backing off: no third attempt yet, token still served.
        assert!(cache.get(&1, minter(&count, true)).await.is_ok());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(count.load(Ordering::SeqCst), 2);
        tokio::time::advance(FIRST_BACKOFF).await;
        assert_eq!(
            cache.get(&1, minter(&count, false)).await.unwrap().value(),
            "ats_1"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(count.load(Ordering::SeqCst), 3);
        assert_eq!(
            cache.get(&1, minter(&count, false)).await.unwrap().value(),
            "ats_3"
        );
    }
}
