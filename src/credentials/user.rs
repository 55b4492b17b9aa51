//! User tokens: the grant in the store, refreshed ahead of expiry.
//!
//! The token cache makes this run at most once per user at a time in this
//! process, and the store's per-user lock across processes (a `flock` on the
//! grant file, a leased Redis lock in a fleet), which is what keeps
//! concurrent refreshes from burning each other's rotated refresh tokens.
//! Under the lock the grant is read again, and the new one is written with a
//! compare-and-set on the version read, before its token is handed out. No
//! lock, no refresh: a store that cannot lock answers `store_unavailable`
//! once the last token seen is no longer usable. A refused refresh token marks the grant revoked: the user's routes
//! then fail fast with `grant_revoked` until the person logs in again; there
//! is no retry loop against a token that can never work again.
//!
//! A refresh that fails for another reason (network, 5xx) reports the
//! current token along with the error if it is still usable: the cache
//! records the failure with its backoff and serves that token meanwhile,
//! exactly as for installation tokens (see `cache.rs`).
//!
//! A grant is used only under the platform it was obtained for (upstream and
//! OAuth client, see `GrantBinding`): after a reload that changed either, its
//! token is neither sent nor refreshed (the refresh would go to the new
//! token endpoint), and the user's routes answer `grant_missing` until the
//! person logs in again.

use super::cache::{MintError, Minted};
use super::grants::{Grant, GrantBinding, now_ms};
use super::token_endpoint::{self, OAuthError};
use super::{CredentialError, Token};
use crate::config::{AppConfig, OAuthEndpoints};
use crate::store::{Store, StoreError, Version, Written};
use crate::upstream::Upstream;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long a refresh waits for another refresh of the same user (in this
/// or another process). A refresh is one bounded HTTP call, so this is
/// generous.
const REFRESH_LOCK_WAIT: Duration = Duration::from_secs(30);

/// Everything a refresh needs, owned, so it can run in its own task.
pub struct UserSource {
    pub store: Arc<dyn Store>,
    pub upstream: Arc<Upstream>,
    pub app: Arc<AppConfig>,
    pub oauth: OAuthEndpoints,
    pub user: Arc<str>,
    /// The platform the grant must belong to (the snapshot's).
    pub binding: Arc<GrantBinding>,
    pub margin: Duration,
    /// A token the platform refused (401): the stored grant holding it is
    /// refreshed even when not yet due.
    pub refused: Option<Token>,
}

/// Where a stored grant stands with respect to the platform of a config.
#[derive(Debug, PartialEq, Eq)]
enum Belongs {
    Here,
    Elsewhere,
    /// Written before grants recorded their platform.
    Unrecorded,
}

fn belongs(grant: &Grant, current: &GrantBinding) -> Belongs {
    match &grant.bound_to {
        Some(b) if b == current => Belongs::Here,
        Some(_) => Belongs::Elsewhere,
        None => Belongs::Unrecorded,
    }
}

/// The token a stored grant holds, timed on the tokio clock as of `now`.
///
/// Its refresh point and its usable end are placed over the token's whole
/// life, counted from when it was issued (`updated_at_ms`), not over what is
/// left of it when it is read: otherwise a grant read late in its life (after
/// a restart, by `atomgit-proxy token`, or on every re-read while a refresh is
/// due) looks like a fresh short token, one with 200 ms left is still
/// "usable" and not yet due, and an expired one is served instead of
/// refreshed. The caller judges the token at the same `now`.
pub fn token_from_grant(grant: &Grant, margin: Duration, now: Instant) -> Option<Token> {
    token_at(grant, margin, now, now_ms())
}

fn token_at(grant: &Grant, margin: Duration, now: Instant, now_ms: u64) -> Option<Token> {
    timed_at(
        &grant.access_token,
        grant.updated_at_ms,
        grant.access_expires_at_ms,
        margin,
        now,
        now_ms,
    )
}

/// A token issued at `issued_ms` and expiring at `expires_ms` (wall clock),
/// timed over its whole life as [`token_from_grant`] explains. Installation
/// tokens shared by a fleet are timed the same way.
pub fn token_timed(
    value: &str,
    issued_ms: u64,
    expires_ms: u64,
    margin: Duration,
    now: Instant,
) -> Option<Token> {
    timed_at(value, issued_ms, expires_ms, margin, now, now_ms())
}

fn timed_at(
    value: &str,
    issued_ms: u64,
    expires_ms: u64,
    margin: Duration,
    now: Instant,
    now_ms: u64,
) -> Option<Token> {
    let remaining = expires_ms.saturating_sub(now_ms);
    let lifetime = expires_ms.saturating_sub(issued_ms);
    let age = Duration::from_millis(lifetime.saturating_sub(remaining));
    match now.checked_sub(age) {
        Some(issued) => Token::new(value, issued, Duration::from_millis(lifetime), margin),
        // The monotonic clock does not reach back that far: time what is
        // left, which still never serves the token past its expiry.
        None => Token::new(value, now, Duration::from_millis(remaining), margin),
    }
}

impl UserSource {
    pub async fn token(self) -> Minted {
        let user = &*self.user;
        // A grant that an earlier failed write left only in memory goes to
        // the store first, so a restart cannot fall back to a dead refresh token.
        if let Err(e) = self.store.flush().await {
            tracing::warn!(user, "{e}; grants newer than the store stay in memory only");
        }
        let (grant, _) = self.read().await?;
        if let Some(token) = self.not_due(&grant) {
            return Ok(token);
        }
        // A refresh is due. Replicas sharing the store must not spend the
        // same refresh token twice (with rotation, the second is refused and
        // the grant would die), so refreshes of one user take turns across
        // processes, and each reads the grant again once it has the lock.
        // Never without the lock: a store that cannot lock is unavailable.
        let _lock = match self.store.lock_refresh(user, REFRESH_LOCK_WAIT).await {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                return Err(MintError {
                    error: CredentialError::TokenEndpoint(
                        "another process has held the user's refresh lock for too long".into(),
                    ),
                    still_usable: self.still_usable(),
                });
            }
            Err(e) => return Err(self.unavailable(e)),
        };
        let (grant, version) = self.read().await?;
        if let Some(token) = self.not_due(&grant) {
            return Ok(token);
        }
        let now = Instant::now();
        let current = token_from_grant(&grant, self.margin, now)
            .filter(|t| t.is_usable(now) && !self.is_refused(t));
        if grant.refresh_expires_at_ms.is_some_and(|at| at <= now_ms()) {
            return Err(self
                .revoke(grant, version, "the refresh token has expired".into())
                .await
                .into());
        }
        match token_endpoint::refresh(&self.upstream, &self.app, &self.oauth, &grant).await {
            Ok(fresh) => {
                // Stored first, under the lock and compared-and-set on the
                // version read under it: a rotated refresh token that only
                // lived in memory would be lost with the process, and a
                // replica whose lease ran out cannot overwrite a newer grant.
                match self
                    .store
                    .put_grant(user, fresh.clone(), Some(version))
                    .await
                {
                    Ok(Written::Stored) => {}
                    Ok(Written::Conflict) => tracing::warn!(
                        user,
                        "a newer grant was stored while this refresh ran (its lock lease ran out?); it is kept"
                    ),
                    Err(e) => tracing::error!(
                        user,
                        "{e}; the refreshed grant is kept in memory and written when the store answers"
                    ),
                }
                tracing::info!(user, "refreshed user token");
                Ok(
                    token_from_grant(&fresh, self.margin, Instant::now()).ok_or_else(|| {
                        CredentialError::TokenEndpoint(
                            "the refreshed token has already expired (check this machine's clock)"
                                .into(),
                        )
                    })?,
                )
            }
            Err(OAuthError::Refused { status, detail }) => Err(self
                .revoke(
                    grant,
                    version,
                    format!("the platform refused the refresh token ({status}: {detail})"),
                )
                .await
                .into()),
            Err(OAuthError::Failed(msg)) => {
                tracing::warn!(user, "user token refresh failed: {msg}");
                // The cache backs off and serves `current` while it lasts.
                Err(MintError {
                    error: CredentialError::TokenEndpoint(msg),
                    still_usable: current,
                })
            }
        }
    }

    /// Whether `token` is the one the platform refused (401): never served
    /// again, however long it has left.
    fn is_refused(&self, token: &Token) -> bool {
        self.refused.as_ref().is_some_and(|r| r.same_as(token))
    }

    /// The grant's token when it is usable and not yet due.
    fn not_due(&self, grant: &Grant) -> Option<Token> {
        let now = Instant::now();
        token_from_grant(grant, self.margin, now)
            .filter(|t| t.is_usable(now) && now < t.refresh_at && !self.is_refused(t))
    }

    /// The store is out of reach: `store_unavailable`, serving the last
    /// token seen while it is usable.
    fn unavailable(&self, e: StoreError) -> MintError {
        match e {
            StoreError::Unavailable(msg) => MintError {
                error: CredentialError::StoreUnavailable(msg),
                still_usable: self.still_usable(),
            },
            StoreError::File(msg) => MintError {
                error: CredentialError::Internal(msg),
                still_usable: self.still_usable(),
            },
        }
    }

    /// The last grant seen's token if it is still usable (though due), for
    /// the cache to serve while a refresh cannot be made.
    fn still_usable(&self) -> Option<Token> {
        let grant = self.store.cached_grant(&self.user)?;
        let now = Instant::now();
        token_from_grant(&grant, self.margin, now)
            .filter(|t| t.is_usable(now) && !self.is_refused(t))
    }

    /// The user's stored grant and its version, if it is alive and belongs
    /// to this platform.
    async fn read(&self) -> Result<(Grant, Version), MintError> {
        let user = &*self.user;
        let stored = self
            .store
            .grant(user)
            .await
            .map_err(|e| self.unavailable(e))?;
        let Some(stored) = stored else {
            return Err(CredentialError::GrantMissing(user.to_owned()).into());
        };
        let (mut grant, version) = (stored.grant, stored.version);
        if grant.revoked.is_some() {
            return Err(CredentialError::GrantRevoked(user.to_owned()).into());
        }
        match belongs(&grant, &self.binding) {
            Belongs::Here => Ok((grant, version)),
            Belongs::Elsewhere => {
                Err(CredentialError::GrantForOtherPlatform(user.to_owned()).into())
            }
            Belongs::Unrecorded => {
                // Migration: a store from before grants were bound only ever
                // served one config, so the config using it now adopts it.
                // `updated_at_ms` stays: it times the token.
                grant.bound_to = Some((*self.binding).clone());
                tracing::info!(
                    user,
                    upstream = self.binding.upstream.as_str(),
                    "user grant from an older store: bound to this upstream and app from now on"
                );
                match self
                    .store
                    .put_grant(user, grant.clone(), Some(version))
                    .await
                {
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(user, "{e}; the grant's binding is kept in memory only")
                    }
                }
                // Re-read: the version moved (and another replica may have
                // adopted it first).
                let again = self
                    .store
                    .grant(user)
                    .await
                    .map_err(|e| self.unavailable(e))?;
                Ok(again.map_or((grant, version), |v| (v.grant, v.version)))
            }
        }
    }

    async fn revoke(&self, mut grant: Grant, version: Version, reason: String) -> CredentialError {
        let user = &*self.user;
        tracing::warn!(
            user,
            "user grant is dead: {reason}; run `atomgit-proxy login {user}` to log in again"
        );
        grant.revoked = Some(reason);
        grant.updated_at_ms = now_ms();
        if let Err(e) = self.store.put_grant(user, grant, Some(version)).await {
            tracing::error!(user, "{e}");
        }
        CredentialError::GrantRevoked(user.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: u64 = 1_684_137_356_606;

    fn grant(issued_ms: u64, lifetime_ms: u64) -> Grant {
        Grant {
            access_token: "atu_x".into(),
            access_expires_at_ms: issued_ms + lifetime_ms,
            refresh_token: "refresh_x".into(),
            refresh_expires_at_ms: None,
            revoked: None,
            updated_at_ms: issued_ms,
            bound_to: None,
        }
    }

    #[test]
    fn a_grant_is_used_only_under_the_platform_it_was_obtained_for() {
        let here = GrantBinding {
            upstream: "https://api.atomgit.com".into(),
            app_id: 75,
            client_id: Some("c1".into()),
        };
        let mut g = grant(NOW_MS, 1000);
        assert_eq!(belongs(&g, &here), Belongs::Unrecorded);
        g.bound_to = Some(here.clone());
        assert_eq!(belongs(&g, &here), Belongs::Here);
        let elsewhere = [
            GrantBinding {
                upstream: "http://127.0.0.1:9".into(),
                ..here.clone()
            },
            GrantBinding {
                app_id: 76,
                ..here.clone()
            },
            GrantBinding {
                client_id: Some("c2".into()),
                ..here.clone()
            },
            GrantBinding {
                client_id: None,
                ..here.clone()
            },
        ];
        for other in elsewhere {
            assert_eq!(belongs(&g, &other), Belongs::Elsewhere, "{other:?}");
        }
    }

    #[test]
    fn a_grant_is_timed_over_its_whole_life() {
        let now = Instant::now();
        let margin = Duration::from_secs(300);
        // Fresh 8 h token: due 5 min before its end, usable to 10 s before.
        let t = token_at(&grant(NOW_MS, 8 * 3_600_000), margin, now, NOW_MS).unwrap();
        assert_eq!(t.refresh_at, now + Duration::from_secs(8 * 3600 - 300));
        assert_eq!(t.usable_until, now + Duration::from_secs(8 * 3600 - 10));
        // The same token read with 4 minutes left is due now, not in 2 minutes.
        let late = grant(NOW_MS - (8 * 3_600_000 - 240_000), 8 * 3_600_000);
        let t = token_at(&late, margin, now, NOW_MS).unwrap();
        assert!(t.refresh_at <= now && t.is_usable(now));
        assert_eq!(t.expires_at, now + Duration::from_secs(240));
        // A 4 s token with 200 ms left is in its last tenth: not injected.
        let t = token_at(&grant(NOW_MS - 3_800, 4_000), margin, now, NOW_MS).unwrap();
        assert!(!t.is_usable(now));
        assert_eq!(t.expires_at, now + Duration::from_millis(200));
        // Expired, or issued already expired: neither usable nor served.
        let t = token_at(&grant(NOW_MS - 5_000, 4_000), margin, now, NOW_MS).unwrap();
        assert!(!t.is_usable(now) && t.expires_at <= now);
        let t = token_at(&grant(NOW_MS, 0), margin, now, NOW_MS).unwrap();
        assert!(!t.is_usable(now));
    }
}
