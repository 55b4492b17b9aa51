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
//! Failures back off, one policy for every credential: after a failed mint
//! the next attempt waits 1 s, then 2 s, 4 s, ... up to 60 s, and a success
//! clears the record. While a failure is recent, callers without a usable
//! token get it back instead of hammering the platform, and a still-usable
//! token keeps being served: the cache's own, or the one a mint reports it
//! fell back on ([`MintError::still_usable`], e.g. a user's stored token
//! after a restart whose refresh failed).
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
/// At most one token per credential is dropped for a refusal in this time:
/// an endpoint that answers 401 whatever the token must not turn every
/// request into a mint.
pub const REFUSAL_FLOOR: Duration = Duration::from_secs(10);

/// Why a mint produced no new token, and what can still be served meanwhile.
///
/// A refresh that fails while the current token is still usable reports
/// both: the cache records the failure (so the next attempt waits for the
/// backoff) and serves the token until it stops being usable. Any
/// `CredentialError` converts with `?`, with nothing to fall back on.
#[derive(Debug)]
pub struct MintError {
    pub error: CredentialError,
    /// The token that was current when the mint started, if there is one.
    pub still_usable: Option<Token>,
}

impl From<CredentialError> for MintError {
    fn from(error: CredentialError) -> Self {
        MintError {
            error,
            still_usable: None,
        }
    }
}

/// What a mint returns.
pub type Minted = Result<Token, MintError>;

/// Tokens keyed by what identifies a credential.
pub struct TokenCache<K> {
    slots: DashMap<K, Arc<Slot>, foldhash::fast::RandomState>,
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
    /// When a token was last dropped because the platform refused it.
    refused_at: Option<Instant>,
}

struct Failure {
    error: CredentialError,
    retry_at: Instant,
    backoff: Duration,
}

impl SlotState {
    /// A recent failure: no new attempt before its `retry_at`.
    fn backing_off(&self, now: Instant) -> bool {
        self.failure.as_ref().is_some_and(|f| now < f.retry_at)
    }
}

impl Slot {
    fn state(&self) -> MutexGuard<'_, SlotState> {
        // A panic while holding this lock leaves plain data behind; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a mint's outcome and returns what its callers get: the new
    /// token, or after a failure the usable token kept (the cache's own or
    /// the mint's fallback, whichever lasts longer), else the error. A
    /// failure never discards a still-usable token.
    fn record(&self, result: Minted) -> Result<Token, CredentialError> {
        let mut st = self.state();
        let now = Instant::now();
        match result {
            Ok(token) => {
                st.token = Some(token.clone());
                st.failure = None;
                Ok(token)
            }
            Err(MintError {
                error,
                still_usable,
            }) => {
                // An unreachable store is asked again every second, not on
                // the platform's doubling backoff: asking it costs the
                // platform nothing, and users recover as soon as it is back.
                let max = match error {
                    CredentialError::StoreUnavailable(_) => FIRST_BACKOFF,
                    _ => MAX_BACKOFF,
                };
                let backoff = st
                    .failure
                    .as_ref()
                    .map_or(FIRST_BACKOFF, |f| (f.backoff * 2).min(max));
                st.failure = Some(Failure {
                    error: error.clone(),
                    retry_at: now + backoff,
                    backoff,
                });
                if let Some(fallback) = still_usable.filter(|t| t.is_usable(now))
                    && st
                        .token
                        .as_ref()
                        .is_none_or(|t| t.usable_until < fallback.usable_until)
                {
                    st.token = Some(fallback);
                }
                match st.token.as_ref().filter(|t| t.is_usable(now)) {
                    Some(token) => {
                        tracing::warn!(
                            error = %error,
                            retry_in_s = backoff.as_secs(),
                            "token refresh failed; the current token stays in use until it expires"
                        );
                        Ok(token.clone())
                    }
                    None => Err(error),
                }
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
            slots: DashMap::default(),
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

    /// The hit path: a usable token that needs no refresh started now (not
    /// yet due, or due while a refresh runs or a failure backs off), with no
    /// allocation and no write lock. `None` sends the caller to
    /// [`TokenCache::get`], which refreshes, mints or reports a failure.
    pub fn fresh(&self, key: &K) -> Option<Token> {
        let slot = self.slots.get(key)?;
        let st = slot.state();
        let now = Instant::now();
        let token = st.token.as_ref().filter(|t| t.is_usable(now))?;
        let wait = now < token.refresh_at || st.refreshing || st.backing_off(now);
        wait.then(|| token.clone())
    }

    /// A usable token for `key`, minting with `mint` when there is none.
    pub async fn get<F, Fut>(&self, key: &K, mint: F) -> Result<Token, CredentialError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Minted> + Send + 'static,
    {
        let slot = self.slot(key);
        let now = Instant::now();
        {
            let mut st = slot.state();
            if let Some(token) = st.token.as_ref().filter(|t| t.is_usable(now)) {
                let token = token.clone();
                if now >= token.refresh_at && !st.refreshing && !st.backing_off(now) {
                    st.refreshing = true;
                    drop(st);
                    // The guard first: it clears the flag even if `mint`
                    // panics before the refresh task exists.
                    let refreshing = Refreshing(slot);
                    spawn_refresh(refreshing, mint());
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
            task_slot.record(fut.await)
        });
        task.await
            .unwrap_or_else(|e| Err(CredentialError::Internal(format!("mint task failed: {e}"))))
    }

    /// The cached token, if any, without minting (for readiness and tests).
    pub fn peek(&self, key: &K) -> Option<Token> {
        self.slots.get(key).and_then(|s| s.state().token.clone())
    }

    /// Drops `stale` (a token the platform refused) if the slot still holds
    /// it, so the next [`TokenCache::get`] mints. Only that token: when a
    /// burst of requests all saw it refused, the first drops it and mints,
    /// and the rest find the new one instead of dropping it in turn. And
    /// only once per [`REFUSAL_FLOOR`]: a refusal that new tokens do not
    /// cure is not worth a mint per request. Returns whether it was dropped.
    pub fn discard(&self, key: &K, stale: &Token) -> bool {
        let Some(slot) = self.slots.get(key).map(|s| s.clone()) else {
            return false;
        };
        let mut st = slot.state();
        let now = Instant::now();
        let recent = st
            .refused_at
            .is_some_and(|at| now.duration_since(at) < REFUSAL_FLOOR);
        if !recent && st.token.as_ref().is_some_and(|t| t.same_as(stale)) {
            st.token = None;
            st.refused_at = Some(now);
            true
        } else {
            false
        }
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

/// Clears `refreshing` however a background refresh ends, so a panic (or
/// the runtime cancelling the task at shutdown) cannot leave the slot
/// believing a refresh is under way forever.
struct Refreshing(Arc<Slot>);

impl Drop for Refreshing {
    fn drop(&mut self) {
        self.0.state().refreshing = false;
    }
}

fn spawn_refresh<Fut>(refreshing: Refreshing, fut: Fut)
where
    Fut: Future<Output = Minted> + Send + 'static,
{
    tokio::spawn(async move {
        let slot = &refreshing.0;
        let _guard = slot.mint.clone().lock_owned().await;
        // A failure is logged by `record` when a token stays in use.
        let _ = slot.record(fut.await);
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
    ) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = Minted> + Send>> {
        let count = count.clone();
        move || {
            Box::pin(async move {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                if fail {
                    return Err(CredentialError::TokenEndpoint("boom".into()).into());
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

    /// The installation tokens' integration property on a clock the test
    /// drives: under continuous use across many short lifetimes, every
    /// token handed out is still usable (so at least its guard away from
    /// expiry), also when a refresh outlasts the time left before the old
    /// token's guard; and refreshes come once per half-life, not per request.
    #[tokio::test(start_paused = true)]
    async fn continuous_use_of_short_tokens_never_gets_an_unusable_one() {
        const LIFE: Duration = Duration::from_secs(3);
        const SPAN: Duration = Duration::from_secs(30);
        // 1.4 s: longer than the 1.2 s between half-life and the guard.
        for mint_time in [Duration::from_millis(50), Duration::from_millis(1400)] {
            let cache = TokenCache::<u64>::default();
            let count = Arc::new(AtomicUsize::new(0));
            let started = Instant::now();
            while started.elapsed() < SPAN {
                let count = count.clone();
                let mint = move || async move {
                    let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(mint_time).await;
                    Ok(Token::new(&format!("ats_{n}"), Instant::now(), LIFE, MARGIN).unwrap())
                };
                let token = cache.get(&1, mint).await.unwrap();
                assert!(
                    token.is_usable(Instant::now()),
                    "{token:?} served at {:?} (mint time {mint_time:?})",
                    started.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let mints = count.load(Ordering::SeqCst) as u32;
            assert!(
                mints >= SPAN.as_secs() as u32 / 3 && mints <= SPAN.as_secs() as u32 * 2 / 3 + 1,
                "{mints} mints of 3 s tokens in {SPAN:?} (mint time {mint_time:?})"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_token_is_dropped_once_by_a_burst() {
        let cache = TokenCache::<u64>::default();
        let count = Arc::new(AtomicUsize::new(0));
        let first = cache.get(&1, minter(&count, false)).await.unwrap();
        // The first of a burst drops it and mints; the others, seeing a
        // token other than the one refused, keep the new one.
        assert!(cache.discard(&1, &first));
        let second = cache.get(&1, minter(&count, false)).await.unwrap();
        assert!(!cache.discard(&1, &first));
        assert_eq!(
            cache.get(&1, minter(&count, false)).await.unwrap().value(),
            second.value()
        );
        assert_eq!(second.value(), "ats_2");
        assert_eq!(count.load(Ordering::SeqCst), 2);
        assert!(!cache.discard(&2, &first), "an unknown key drops nothing");
        // The new token refused too, at once: kept until the floor passes.
        assert!(!cache.discard(&1, &second));
        tokio::time::advance(REFUSAL_FLOOR).await;
        assert!(cache.discard(&1, &second));
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

    /// A token endpoint for the backoff tests: records when each mint
    /// starts, fails until made healthy, and reports `fallback` as still
    /// usable when it fails (as a user's stored grant does).
    #[derive(Clone)]
    struct Platform {
        starts: Arc<Mutex<Vec<Instant>>>,
        healthy: Arc<std::sync::atomic::AtomicBool>,
        fallback: Option<Token>,
    }

    impl Platform {
        fn new(healthy: bool, fallback: Option<Token>) -> Self {
            Platform {
                starts: Arc::default(),
                healthy: Arc::new(healthy.into()),
                fallback,
            }
        }

        fn set_healthy(&self, healthy: bool) {
            self.healthy.store(healthy, Ordering::SeqCst);
        }

        fn starts(&self) -> Vec<Instant> {
            self.starts.lock().unwrap().clone()
        }

        fn mint(&self) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = Minted> + Send>> {
            let p = self.clone();
            move || {
                Box::pin(async move {
                    let n = {
                        let mut starts = p.starts.lock().unwrap();
                        starts.push(Instant::now());
                        starts.len()
                    };
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if p.healthy.load(Ordering::SeqCst) {
                        return Ok(
                            Token::new(&format!("ats_{n}"), Instant::now(), HOUR, MARGIN).unwrap(),
                        );
                    }
                    Err(MintError {
                        error: CredentialError::TokenEndpoint("boom".into()),
                        still_usable: p.fallback.clone(),
                    })
                })
            }
        }
    }

    /// Asks for the token every 100 ms for `span`; every answer must be
    /// the token `expected`.
    async fn ask_for(cache: &TokenCache<u64>, platform: &Platform, span: Duration, expected: &str) {
        let end = Instant::now() + span;
        while Instant::now() < end {
            let token = cache.get(&1, platform.mint()).await;
            assert_eq!(
                token.map(|t| t.value().to_owned()).ok().as_deref(),
                Some(expected)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Refresh attempts are spaced 1 s, 2 s, 4 s, 8 s apart: the backoff,
    /// plus the 50 ms a mint takes and the 100 ms between requests.
    fn assert_backoff(starts: &[Instant]) {
        assert_eq!(starts.len(), 5, "five attempts in 16 s");
        for (i, pair) in starts.windows(2).enumerate() {
            let gap = pair[1] - pair[0];
            let backoff = FIRST_BACKOFF * 2u32.pow(i as u32);
            assert!(
                gap >= backoff && gap <= backoff + Duration::from_millis(200),
                "attempt {} came {gap:?} after the one before, not {backoff:?}",
                i + 1
            );
        }
    }

    fn failure_recorded(cache: &TokenCache<u64>) -> bool {
        cache.slots.get(&1).unwrap().state().failure.is_some()
    }

    #[tokio::test(start_paused = true)]
    async fn failing_refreshes_serve_the_cached_token_and_back_off_doubling() {
        let cache = TokenCache::<u64>::default();
        let platform = Platform::new(true, None);
        ask_for(&cache, &platform, Duration::from_millis(1), "ats_1").await;
        platform.set_healthy(false);
        tokio::time::advance(HOUR - MARGIN).await;
        ask_for(&cache, &platform, Duration::from_secs(16), "ats_1").await;
        assert_backoff(&platform.starts()[1..]);
        assert!(failure_recorded(&cache));
        // Healthy again: the next attempt, after the 16 s backoff, succeeds
        // and clears the failure.
        platform.set_healthy(true);
        tokio::time::advance(Duration::from_secs(16)).await;
        ask_for(&cache, &platform, Duration::from_millis(1), "ats_1").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        ask_for(&cache, &platform, Duration::from_millis(1), "ats_7").await;
        assert!(!failure_recorded(&cache));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cold_mint_that_fails_serves_its_usable_fallback_and_backs_off() {
        // A stored token that is due but still usable, as a user's grant is
        // when the proxy restarts late in its life.
        let stored = Token::new("atu_stored", Instant::now(), HOUR, MARGIN).unwrap();
        tokio::time::advance(HOUR - MARGIN).await;
        let cache = TokenCache::<u64>::default();
        let platform = Platform::new(false, Some(stored));
        ask_for(&cache, &platform, Duration::from_secs(16), "atu_stored").await;
        assert_backoff(&platform.starts());
        assert!(failure_recorded(&cache));
        platform.set_healthy(true);
        tokio::time::advance(Duration::from_secs(16)).await;
        ask_for(&cache, &platform, Duration::from_millis(1), "atu_stored").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        ask_for(&cache, &platform, Duration::from_millis(1), "ats_6").await;
        assert!(!failure_recorded(&cache));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fallback_past_its_usable_time_is_not_served() {
        let stored = Token::new("atu_stored", Instant::now(), HOUR, MARGIN).unwrap();
        tokio::time::advance(HOUR).await;
        let cache = TokenCache::<u64>::default();
        let platform = Platform::new(false, Some(stored));
        let err = cache.get(&1, platform.mint()).await.unwrap_err();
        assert!(matches!(err, CredentialError::TokenEndpoint(_)), "{err:?}");
    }
}
