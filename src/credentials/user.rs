//! User tokens: the grant in the store, refreshed ahead of expiry.
//!
//! The token cache makes this run at most once per user at a time, which is
//! what keeps concurrent refreshes from burning each other's rotated refresh
//! tokens. The new grant is written to the store before its token is handed
//! out. A refused refresh token marks the grant revoked: the user's routes
//! then fail fast with `grant_revoked` until the person logs in again; there
//! is no retry loop against a token that can never work again.

use super::grants::{Grant, GrantStore, now_ms};
use super::oauth::{self, OAuthError};
use super::{CredentialError, Token};
use crate::config::{AppConfig, OAuthConfig};
use crate::upstream::Upstream;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// After a transient refresh failure with a still-usable token, try again this
/// much later (the token keeps being served meanwhile).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// Everything a refresh needs, owned, so it can run in its own task.
pub struct UserSource {
    pub store: Arc<GrantStore>,
    pub upstream: Arc<Upstream>,
    pub app: Arc<AppConfig>,
    pub oauth: OAuthConfig,
    pub user: Arc<str>,
    pub margin: Duration,
}

/// The token a stored grant holds, timed on the tokio clock.
pub fn token_from_grant(grant: &Grant, margin: Duration) -> Option<Token> {
    let lifetime = Duration::from_millis(grant.access_expires_at_ms.saturating_sub(now_ms()));
    Token::new(&grant.access_token, Instant::now(), lifetime, margin)
}

impl UserSource {
    pub async fn token(self) -> Result<Token, CredentialError> {
        let user = &*self.user;
        // Another process sharing the store may have refreshed since we last
        // looked; its refresh token is the live one.
        self.store.sync_from_disk(user);
        let grant = self
            .store
            .get(user)
            .ok_or_else(|| CredentialError::GrantMissing(user.to_owned()))?;
        if grant.revoked.is_some() {
            return Err(CredentialError::GrantRevoked(user.to_owned()));
        }
        let now = Instant::now();
        let current = token_from_grant(&grant, self.margin).filter(|t| t.is_usable(now));
        if let Some(token) = current.as_ref().filter(|t| now < t.refresh_at) {
            return Ok(token.clone());
        }
        if grant.refresh_expires_at_ms.is_some_and(|at| at <= now_ms()) {
            return Err(self.revoke(grant, "the refresh token has expired".into()));
        }
        match oauth::refresh(&self.upstream, &self.app, &self.oauth, &grant).await {
            Ok(fresh) => {
                // Durable first: a rotated refresh token that only lived in
                // memory would be lost with the process.
                if let Err(e) = self.store.put(user, fresh.clone()) {
                    tracing::error!(user, "{e}; the refreshed grant is kept in memory only");
                }
                tracing::info!(user, "refreshed user token");
                token_from_grant(&fresh, self.margin).ok_or_else(|| {
                    CredentialError::TokenEndpoint(
                        "the refreshed token has already expired (check this machine's clock)"
                            .into(),
                    )
                })
            }
            Err(OAuthError::Refused { status, detail }) => Err(self.revoke(
                grant,
                format!("the platform refused the refresh token ({status}: {detail})"),
            )),
            Err(OAuthError::Failed(msg)) => match current {
                Some(mut token) => {
                    tracing::warn!(
                        user,
                        "token refresh failed, the current token stays in use: {msg}"
                    );
                    token.refresh_at = Instant::now() + RETRY_AFTER_FAILURE;
                    Ok(token)
                }
                None => Err(CredentialError::TokenEndpoint(msg)),
            },
        }
    }

    fn revoke(&self, mut grant: Grant, reason: String) -> CredentialError {
        let user = &*self.user;
        tracing::warn!(
            user,
            "user grant is dead: {reason}; run `atomgit-proxy login {user}` to log in again"
        );
        grant.revoked = Some(reason);
        grant.updated_at_ms = now_ms();
        if let Err(e) = self.store.put(user, grant) {
            tracing::error!(user, "{e}");
        }
        CredentialError::GrantRevoked(user.to_owned())
    }
}
