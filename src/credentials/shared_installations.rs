//! Installation tokens a fleet shares: one mint per installation and expiry.
//!
//! Runs inside the token cache's single-flight mint, so each replica asks
//! at most once at a time: a token in the store that is not yet due is
//! adopted; otherwise the short mint lock is taken (others poll it, and find
//! the winner's token when it is released), the store looked at again, and
//! the token minted and written with its remaining life as TTL. With the
//! store unreachable the replica mints on its own: installation tokens are
//! cheap to mint and nothing is lost by minting one more.

use super::grants::now_ms;
use super::user::token_timed;
use super::{CredentialError, Token};
use crate::store::{InstallationKey, SharedToken, Store};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long a replica waits for another's mint before minting itself.
const MINT_WAIT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(50);

/// The shared token for `key`, or one minted with `mint` (and shared). A
/// stored token the platform `refused` (401) is replaced, not adopted.
pub async fn installation_token<Fut>(
    store: &Arc<dyn Store>,
    key: &InstallationKey,
    margin: Duration,
    refused: Option<&Token>,
    mint: impl FnOnce() -> Fut,
) -> Result<Token, CredentialError>
where
    Fut: Future<Output = Result<Token, CredentialError>>,
{
    let deadline = Instant::now() + MINT_WAIT;
    let _lock = loop {
        match adopt(store, key, margin, refused).await {
            Ok(Some(token)) => return Ok(token),
            Ok(None) => {}
            Err(()) => return mint().await,
        }
        match store.try_lock_mint(key).await {
            Ok(Some(lock)) => break Some(lock),
            Ok(None) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
            Ok(None) => {
                tracing::warn!(
                    installation = key.id,
                    "another replica has held the mint lock for {MINT_WAIT:?}; minting here"
                );
                break None;
            }
            Err(e) => {
                tracing::warn!(installation = key.id, "{e}; minting locally");
                return mint().await;
            }
        }
    };
    // Whoever held the lock before us may have minted already.
    if let Ok(Some(token)) = adopt(store, key, margin, refused).await {
        return Ok(token);
    }
    let token = mint().await?;
    let now = Instant::now();
    let shared = SharedToken {
        token: token.value().to_owned(),
        issued_at_ms: now_ms(),
        expires_at_ms: now_ms()
            + token.expires_at.saturating_duration_since(now).as_millis() as u64,
    };
    if let Err(e) = store.put_installation_token(key, &shared).await {
        tracing::warn!(
            installation = key.id,
            "{e}; the token is used by this replica only"
        );
    }
    Ok(token)
}

/// A stored token that is usable and not yet due. `Err`: the store is away.
async fn adopt(
    store: &Arc<dyn Store>,
    key: &InstallationKey,
    margin: Duration,
    refused: Option<&Token>,
) -> Result<Option<Token>, ()> {
    let shared = match store.installation_token(key).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(installation = key.id, "{e}; minting locally");
            return Err(());
        }
    };
    let now = Instant::now();
    Ok(shared.and_then(|s| {
        token_timed(&s.token, s.issued_at_ms, s.expires_at_ms, margin, now)
            .filter(|t| t.is_usable(now) && now < t.refresh_at)
            .filter(|t| !refused.is_some_and(|r| r.same_as(t)))
    }))
}
