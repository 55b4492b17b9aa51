//! Installations: which id an account is, and minting `ats_` tokens for an id.
//!
//! The account directory is filled from `GET /app/installations`. A lookup
//! that misses refreshes it, but at most once per [`MISS_FLOOR`], so a flood
//! of requests for owners the app is not installed on cannot turn into a
//! flood of calls to the platform. A directory older than [`MAX_AGE`] is
//! refreshed in the background while its answers keep being used.

pub use super::app_call::AppSigner;
use super::app_call::app_call;
use super::{CredentialError, Token};
use crate::routes::TokenScope;
use crate::upstream::Upstream;
use bytes::Bytes;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

pub const MISS_FLOOR: Duration = Duration::from_secs(30);
pub const MAX_AGE: Duration = Duration::from_secs(600);

#[derive(Deserialize)]
struct Installation {
    id: u64,
    account: Account,
}

#[derive(Deserialize)]
struct Account {
    path: String,
}

#[derive(Deserialize)]
struct AccessToken {
    token: String,
    expires_at: String,
}

/// Account path (lowercased) to installation id, for one app identity.
#[derive(Default)]
pub struct Directory {
    state: Mutex<DirState>,
    /// One listing in flight at a time.
    refresh: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct DirState {
    accounts: HashMap<String, u64>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
    /// Why the last listing failed, answered to misses inside the floor.
    last_error: Option<CredentialError>,
    /// A background refresh is under way; do not start another. Cleared by
    /// [`Background`] however that task ends.
    background: bool,
}

/// Clears `background` when the background refresh task ends, also by a
/// panic or by the runtime cancelling it at shutdown: a flag left set would
/// stop the directory from ever refreshing in the background again.
struct Background(Arc<Directory>);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.state().background = false;
    }
}

/// Lists the app's installations.
pub type Lister = Arc<
    dyn Fn() -> futures_util::future::BoxFuture<
            'static,
            Result<HashMap<String, u64>, CredentialError>,
        > + Send
        + Sync,
>;

impl Directory {
    fn state(&self) -> std::sync::MutexGuard<'_, DirState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The installation id of `account` (lowercase).
    /// `list` is called only when the platform must be asked, so a hit
    /// builds nothing.
    pub async fn lookup(
        self: &Arc<Self>,
        account: &str,
        list: impl FnOnce() -> Lister,
    ) -> Result<u64, CredentialError> {
        let now = Instant::now();
        {
            let mut st = self.state();
            if let Some(&id) = st.accounts.get(account) {
                let stale = st
                    .fetched_at
                    .is_none_or(|t| now.duration_since(t) >= MAX_AGE);
                if stale && !st.background {
                    st.background = true;
                    drop(st);
                    let background = Background(self.clone());
                    let list = list();
                    tokio::spawn(async move {
                        background.0.refresh_now(&list).await.ok();
                        drop(background);
                    });
                }
                return Ok(id);
            }
        }
        let _guard = self.refresh.lock().await;
        {
            let st = self.state();
            if let Some(&id) = st.accounts.get(account) {
                return Ok(id);
            }
            if st
                .last_attempt
                .is_some_and(|t| Instant::now().duration_since(t) < MISS_FLOOR)
            {
                return Err(st
                    .last_error
                    .clone()
                    .unwrap_or_else(|| CredentialError::InstallationNotFound(account.to_owned())));
            }
        }
        self.fill(&list()).await?;
        self.state()
            .accounts
            .get(account)
            .copied()
            .ok_or_else(|| CredentialError::InstallationNotFound(account.to_owned()))
    }

    /// Makes sure a listing newer than [`MAX_AGE`] exists (for readiness of
    /// `auto` routes), honouring the floor after a failure.
    pub async fn ensure_listed(&self, list: Lister) -> Result<(), CredentialError> {
        let _guard = self.refresh.lock().await;
        {
            let st = self.state();
            let now = Instant::now();
            if st
                .fetched_at
                .is_some_and(|t| now.duration_since(t) < MAX_AGE)
            {
                return Ok(());
            }
            if let Some(e) = st.last_error.as_ref()
                && st
                    .last_attempt
                    .is_some_and(|t| now.duration_since(t) < MISS_FLOOR)
            {
                return Err(e.clone());
            }
        }
        self.fill(&list).await
    }

    async fn refresh_now(&self, list: &Lister) -> Result<(), CredentialError> {
        let _guard = self.refresh.lock().await;
        self.fill(list).await
    }

    async fn fill(&self, list: &Lister) -> Result<(), CredentialError> {
        // Recorded with the result, not before the call: a caller hanging up
        // mid-listing cancels it, and an attempt that never finished must not
        // make the misses after it wait out the floor with a stale answer.
        let started = Instant::now();
        let result = list().await;
        let mut st = self.state();
        st.last_attempt = Some(started);
        match result {
            Ok(accounts) => {
                st.accounts = accounts;
                st.fetched_at = Some(Instant::now());
                st.last_error = None;
                Ok(())
            }
            Err(e) => {
                st.last_error = Some(e.clone());
                Err(e)
            }
        }
    }
}

/// `GET /app/installations`.
pub async fn list(
    upstream: Arc<Upstream>,
    signer: AppSigner,
) -> Result<HashMap<String, u64>, CredentialError> {
    let resp = app_call(
        &upstream,
        &signer,
        http::Method::GET,
        "/app/installations",
        None,
    )
    .await?;
    if !resp.status.is_success() {
        return Err(CredentialError::TokenEndpoint(format!(
            "GET /app/installations answered {}",
            resp.status
        )));
    }
    let list: Vec<Installation> = serde_json::from_slice(&resp.body).map_err(|e| {
        CredentialError::TokenEndpoint(format!("GET /app/installations: unexpected answer: {e}"))
    })?;
    Ok(list
        .into_iter()
        .map(|i| (i.account.path.to_lowercase(), i.id))
        .collect())
}

/// `POST /app/installations/{id}/access_tokens`.
pub async fn mint(
    upstream: Arc<Upstream>,
    signer: AppSigner,
    id: u64,
    scope: Option<Arc<TokenScope>>,
    margin: Duration,
) -> Result<Token, CredentialError> {
    let path = format!("/app/installations/{id}/access_tokens");
    let body = scope.as_ref().map(|s| Bytes::from(s.body().to_string()));
    let resp = app_call(&upstream, &signer, http::Method::POST, &path, body).await?;
    if resp.status == http::StatusCode::NOT_FOUND {
        return Err(CredentialError::InstallationNotFound(format!("id {id}")));
    }
    if !resp.status.is_success() {
        return Err(CredentialError::TokenEndpoint(format!(
            "POST {path} answered {}",
            resp.status
        )));
    }
    let answer: serde_json::Value = serde_json::from_slice(&resp.body).map_err(|e| {
        CredentialError::TokenEndpoint(format!("POST {path}: unexpected answer: {e}"))
    })?;
    if let Some(scope) = &scope {
        // Fail closed: a token broader than asked never reaches the API.
        scope.check(&answer).map_err(|why| {
            CredentialError::TokenEndpoint(format!(
                "POST {path}: the platform did not honour the token scope ({scope}): {why}; \
                 the token is not used"
            ))
        })?;
    }
    let body: AccessToken = serde_json::from_value(answer).map_err(|e| {
        CredentialError::TokenEndpoint(format!("POST {path}: unexpected answer: {e}"))
    })?;
    // Never assume a lifetime: read it from the answer.
    let expires_at = chrono::DateTime::parse_from_rfc3339(&body.expires_at).map_err(|e| {
        CredentialError::TokenEndpoint(format!(
            "POST {path}: bad expires_at `{}`: {e}",
            body.expires_at
        ))
    })?;
    // Timed on the platform's clock, which wrote `expires_at`.
    let offset = chrono::TimeDelta::seconds(signer.jwt.offset());
    let lifetime = super::token::lifetime_until((expires_at - offset).into());
    if lifetime.is_zero() {
        return Err(CredentialError::TokenEndpoint(format!(
            "POST {path}: the token it issued has already expired (check this machine's clock)"
        )));
    }
    tracing::info!(
        installation = id,
        lifetime_s = lifetime.as_secs(),
        "minted installation token"
    );
    Token::new(&body.token, Instant::now(), lifetime, margin).ok_or_else(|| {
        CredentialError::TokenEndpoint(format!("POST {path}: the token is not header-safe"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A listing of `alice` and `bob` that counts its calls, takes 1 s, and
    /// panics (as a bug would) while `panics` is set.
    fn lister(calls: &Arc<AtomicUsize>, panics: bool) -> Lister {
        let calls = calls.clone();
        Arc::new(move || {
            let calls = calls.clone();
            Box::pin(async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(1)).await;
                assert!(!panics, "listing failed by a bug");
                Ok(HashMap::from([("alice".into(), 1), ("bob".into(), 2)]))
            })
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_background_refresh_that_panics_does_not_stop_later_ones() {
        let dir = Arc::new(Directory::default());
        let calls = Arc::new(AtomicUsize::new(0));
        assert_eq!(
            dir.lookup("alice", || lister(&calls, false)).await.ok(),
            Some(1)
        );
        tokio::time::advance(MAX_AGE).await;
        // Stale: answered at once, refreshed in the background, which panics.
        assert_eq!(
            dir.lookup("alice", || lister(&calls, true)).await.ok(),
            Some(1)
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Still stale: the next use starts a new background refresh.
        assert_eq!(
            dir.lookup("alice", || lister(&calls, false)).await.ok(),
            Some(1)
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_dropped_mid_listing_does_not_hold_off_the_next() {
        let dir = Arc::new(Directory::default());
        let calls = Arc::new(AtomicUsize::new(0));
        // The caller hangs up half-way through the listing.
        let hung_up = tokio::time::timeout(
            Duration::from_millis(500),
            dir.lookup("bob", || lister(&calls, false)),
        )
        .await;
        assert!(hung_up.is_err());
        // The next miss asks the platform instead of answering "not
        // installed" from an attempt that never finished.
        assert_eq!(
            dir.lookup("bob", || lister(&calls, false)).await.ok(),
            Some(2)
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
