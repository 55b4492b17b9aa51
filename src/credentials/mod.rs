//! Credentials: turning a route's credential into a fresh bearer token.
//!
//! Caches live here, outside the config snapshot, keyed by what identifies a
//! credential (the app fingerprint and installation id), so a reload keeps
//! every token that is still right and nothing is minted because of it.

mod app_call;
mod app_jwt;
pub mod cache;
pub mod clock;
pub mod grants;
pub mod grants_file;
pub mod installations;
pub mod login_link;
pub mod pending_logins;
pub mod shared_installations;
pub mod token;
pub mod token_endpoint;
pub mod user;

use crate::config::{AppConfig, AppFingerprint, OAuthEndpoints};
use crate::metrics::AppLabels;
use crate::routes::{InstallationSelector, RouteCredential, TokenScope, owner_from_path};
use crate::upstream::{CallError, Upstream};
use app_jwt::AppJwt;
use cache::TokenCache;
use dashmap::DashMap;
use grants::GrantBinding;
use installations::Directory;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use std::time::Duration;
pub use token::Token;

/// Why no token could be had. Cloneable: one failed mint answers every
/// request that waited for it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialError {
    #[error("the app is not installed on `{0}`")]
    InstallationNotFound(String),
    #[error(
        "the route uses `installation: auto` but the path names no owner (/repos/OWNER/..., /orgs/ORG/..., /users/USER/...)"
    )]
    NoOwnerInPath,
    #[error("token endpoint failed: {0}")]
    TokenEndpoint(String),
    #[error("no grant for user `{0}`: run `atomgit-proxy login {0}`")]
    GrantMissing(String),
    /// The stored grant was obtained for another upstream or OAuth client
    /// (the config changed since): answered as `grant_missing`.
    #[error(
        "the grant of user `{0}` was obtained for another upstream or app than this config's: run `atomgit-proxy login {0}` to log in again"
    )]
    GrantForOtherPlatform(String),
    #[error(
        "the grant of user `{0}` was refused by the platform: run `atomgit-proxy login {0}` again"
    )]
    GrantRevoked(String),
    /// The shared store (Redis) is out of reach and the user's token ran
    /// out: a refresh is never made without the store's lock.
    #[error("{0}; the user's token cannot be refreshed until the store is back")]
    StoreUnavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl CredentialError {
    fn from_call(e: CallError) -> Self {
        CredentialError::TokenEndpoint(e.to_string())
    }
}

/// What a cached token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CacheKey {
    /// One token per (app, installation, scope): a scoped route never gets
    /// a broader route's token, nor the other way round.
    Installation {
        app: AppFingerprint,
        id: u64,
        scope: Option<Arc<TokenScope>>,
    },
    /// A user's token belongs to the person and the platform the grant was
    /// obtained for, not the app key: it survives any reload that keeps both,
    /// and one from another upstream is never found after a reload.
    User {
        user: Arc<str>,
        platform: Arc<GrantBinding>,
    },
}

fn installation_key(ctx: &Context<'_>, id: u64) -> CacheKey {
    CacheKey::Installation {
        app: ctx.app.fingerprint,
        id,
        scope: ctx.scope.cloned(),
    }
}

/// The cache key of `user`'s token under the route's grant binding.
fn user_key(ctx: &Context<'_>, user: &Arc<str>) -> CacheKey {
    CacheKey::User {
        user: user.clone(),
        platform: ctx.grant_binding.clone(),
    }
}

/// Every credential's cached state.
#[derive(Default)]
pub struct Credentials {
    /// `atomgit_proxy_clock_offset_seconds{app}`, shared with the metrics
    /// registry: each app's JWT sets its own.
    clock_offsets: Family<AppLabels, Gauge>,
    /// Minted tokens.
    tokens: TokenCache<CacheKey>,
    /// One signed JWT per app identity.
    jwts: DashMap<AppFingerprint, Arc<AppJwt>>,
    /// One account directory per app identity.
    directories: DashMap<AppFingerprint, Arc<Directory>>,
}

/// What a token is requested with: the parts of a snapshot the mint needs.
pub struct Context<'a> {
    pub app: &'a Arc<AppConfig>,
    pub upstream: &'a Arc<Upstream>,
    pub refresh_margin: Duration,
    pub oauth: Option<&'a OAuthEndpoints>,
    pub store: Option<&'a Arc<dyn crate::store::Store>>,
    /// The platform user grants must belong to.
    pub grant_binding: &'a Arc<GrantBinding>,
    /// What the route's installation token is limited to.
    pub scope: Option<&'a Arc<TokenScope>>,
}

impl Credentials {
    /// Credentials whose clock offsets are reported in `clock_offsets`.
    pub fn new(clock_offsets: Family<AppLabels, Gauge>) -> Self {
        Credentials {
            clock_offsets,
            ..Credentials::default()
        }
    }

    /// A token for `credential`, as a request to `forward_path` needs it.
    pub async fn token(
        &self,
        ctx: &Context<'_>,
        credential: &RouteCredential,
        forward_path: &str,
    ) -> Result<Token, CredentialError> {
        let key = self.key(ctx, credential, forward_path).await?;
        self.token_for_key(ctx, &key).await
    }

    /// What identifies the credential a request to `forward_path` uses (the
    /// token cache, the quota and the conditional cache are kept per
    /// credential: app, installation and scope, or user and the app's grant
    /// binding).
    pub async fn key(
        &self,
        ctx: &Context<'_>,
        credential: &RouteCredential,
        forward_path: &str,
    ) -> Result<CacheKey, CredentialError> {
        Ok(match credential {
            RouteCredential::Installation(selector) => installation_key(
                ctx,
                self.installation_id(ctx, selector, forward_path).await?,
            ),
            RouteCredential::User(user) => user_key(ctx, user),
        })
    }

    /// [`Credentials::key`] when it needs no lookup (an installation given by
    /// id, a user): the common case, without a future.
    pub fn key_at_once(ctx: &Context<'_>, credential: &RouteCredential) -> Option<CacheKey> {
        match credential {
            RouteCredential::Installation(InstallationSelector::Id(id)) => {
                Some(installation_key(ctx, *id))
            }
            RouteCredential::Installation(_) => None,
            RouteCredential::User(user) => Some(user_key(ctx, user)),
        }
    }

    /// The cached token for `key` when it needs no mint or refresh yet: the
    /// common case, answered without a future.
    pub fn cached_token(&self, ctx: &Context<'_>, key: &CacheKey) -> Option<Token> {
        match key {
            CacheKey::Installation { id, .. } => self.tokens.fresh(&installation_key(ctx, *id)),
            CacheKey::User { user, .. } => self.tokens.fresh(&user_key(ctx, user)),
        }
    }

    /// A token for the credential `key` names (see [`Credentials::key`]);
    /// `ctx` must be the one the key was made with.
    pub async fn token_for_key(
        &self,
        ctx: &Context<'_>,
        key: &CacheKey,
    ) -> Result<Token, CredentialError> {
        self.token_after(ctx, key, None).await
    }

    /// A fresh token for `key` after the platform refused `stale` (401):
    /// `stale` is dropped if it is still the cached one, and the next comes
    /// through the same single flight as any mint, so a burst of refusals of
    /// one token causes one mint. A user's token is refreshed with the
    /// grant's refresh token (under the store's lock), and a fleet's shared
    /// installation token is replaced, never re-read from the store as it was.
    pub async fn renew(
        &self,
        ctx: &Context<'_>,
        key: &CacheKey,
        stale: &Token,
    ) -> Result<Token, CredentialError> {
        self.tokens.discard(key, stale);
        let fresh = self.token_after(ctx, key, Some(stale)).await?;
        if fresh.same_as(stale) {
            // Kept: another refusal was answered with a new token moments ago.
            return Err(CredentialError::TokenEndpoint(format!(
                "the platform keeps refusing fresh tokens; the next one is minted at most {}s after the last",
                cache::REFUSAL_FLOOR.as_secs()
            )));
        }
        Ok(fresh)
    }

    /// The token for `key`, never answering with `refused`.
    async fn token_after(
        &self,
        ctx: &Context<'_>,
        key: &CacheKey,
        refused: Option<&Token>,
    ) -> Result<Token, CredentialError> {
        match key {
            CacheKey::Installation { id, .. } => {
                self.installation_token_after(ctx, *id, refused).await
            }
            CacheKey::User { user, .. } => self.user_token_after(ctx, user, refused).await,
        }
    }

    /// A token for `user`, from the grant store, refreshed when due.
    pub async fn user_token(
        &self,
        ctx: &Context<'_>,
        user: &Arc<str>,
    ) -> Result<Token, CredentialError> {
        self.user_token_after(ctx, user, None).await
    }

    /// [`Credentials::user_token`], never answering with `refused`.
    async fn user_token_after(
        &self,
        ctx: &Context<'_>,
        user: &Arc<str>,
        refused: Option<&Token>,
    ) -> Result<Token, CredentialError> {
        let key = user_key(ctx, user);
        if let Some(token) = self.tokens.fresh(&key) {
            return Ok(token);
        }
        let (Some(store), Some(oauth)) = (ctx.store, ctx.oauth) else {
            // Validation requires both for user routes.
            return Err(CredentialError::Internal(
                "user routes need `store:` and `oauth:`".into(),
            ));
        };
        let source = user::UserSource {
            store: store.clone(),
            upstream: ctx.upstream.clone(),
            app: ctx.app.clone(),
            oauth: oauth.clone(),
            user: user.clone(),
            binding: ctx.grant_binding.clone(),
            margin: ctx.refresh_margin,
            refused: refused.cloned(),
        };
        self.tokens.get(&key, move || source.token()).await
    }

    /// Forgets a user's cached tokens and failures, after a new login stored
    /// a new grant.
    pub fn forget_user(&self, user: &str) {
        self.tokens
            .retain(|k| !matches!(k, CacheKey::User { user: u, .. } if &**u == user));
    }

    /// Resolves a selector to an installation id.
    pub async fn installation_id(
        &self,
        ctx: &Context<'_>,
        selector: &InstallationSelector,
        forward_path: &str,
    ) -> Result<u64, CredentialError> {
        let owner;
        let account = match selector {
            InstallationSelector::Id(id) => return Ok(*id),
            InstallationSelector::Account(account) => account.as_str(),
            InstallationSelector::Auto => {
                owner = owner_from_path(forward_path).ok_or(CredentialError::NoOwnerInPath)?;
                &*owner
            }
        };
        let dir = self.directory(ctx);
        dir.lookup(account, || self.lister(ctx)).await
    }

    /// Whether the app can list its installations (readiness of `auto` routes).
    pub async fn check_listing(&self, ctx: &Context<'_>) -> Result<(), CredentialError> {
        self.directory(ctx).ensure_listed(self.lister(ctx)).await
    }

    fn directory(&self, ctx: &Context<'_>) -> Arc<Directory> {
        // A read lock on the hit path; the write lock only the first time.
        if let Some(dir) = self.directories.get(&ctx.app.fingerprint) {
            return dir.clone();
        }
        self.directories
            .entry(ctx.app.fingerprint)
            .or_default()
            .clone()
    }

    fn lister(&self, ctx: &Context<'_>) -> installations::Lister {
        let (jwt, app, upstream) = (self.jwt(ctx.app), ctx.app.clone(), ctx.upstream.clone());
        Arc::new(move || {
            let signer = installations::AppSigner {
                app: app.clone(),
                jwt: jwt.clone(),
            };
            Box::pin(installations::list(upstream.clone(), signer))
        })
    }

    /// A token for installation `id` (with the context's app and scope).
    pub async fn installation_token(
        &self,
        ctx: &Context<'_>,
        id: u64,
    ) -> Result<Token, CredentialError> {
        self.installation_token_after(ctx, id, None).await
    }

    /// [`Credentials::installation_token`], never answering with `refused`.
    async fn installation_token_after(
        &self,
        ctx: &Context<'_>,
        id: u64,
        refused: Option<&Token>,
    ) -> Result<Token, CredentialError> {
        let key = installation_key(ctx, id);
        if let Some(token) = self.tokens.fresh(&key) {
            return Ok(token);
        }
        let signer = installations::AppSigner {
            app: ctx.app.clone(),
            jwt: self.jwt(ctx.app),
        };
        let (upstream, margin) = (ctx.upstream.clone(), ctx.refresh_margin);
        let scope = ctx.scope.cloned();
        // A fleet shares installation tokens through the store (one mint per
        // installation, scope and expiry); the memory cache above stays first.
        let shared = ctx
            .store
            .filter(|s| s.shares_installation_tokens())
            .cloned();
        let refused = refused.cloned();
        self.tokens
            .get(&key, move || async move {
                let key = crate::store::InstallationKey::new(
                    &signer.app.fingerprint,
                    id,
                    scope.as_deref(),
                );
                let mint = || installations::mint(upstream, signer, id, scope, margin);
                let Some(store) = shared else {
                    return Ok(mint().await?);
                };
                Ok(shared_installations::installation_token(
                    &store,
                    &key,
                    margin,
                    refused.as_ref(),
                    mint,
                )
                .await?)
            })
            .await
    }

    fn jwt(&self, app: &AppConfig) -> Arc<AppJwt> {
        if let Some(jwt) = self.jwts.get(&app.fingerprint) {
            return jwt.clone();
        }
        self.jwts
            .entry(app.fingerprint)
            .or_insert_with(|| {
                let gauge = self.clock_offsets.get_or_create(&AppLabels {
                    app: app.name.to_string(),
                });
                Arc::new(AppJwt::new(gauge.clone()))
            })
            .clone()
    }

    /// The platform's clock minus ours for `app`, in seconds, as learned
    /// from refused app calls (0 until one).
    pub fn clock_offset(&self, app: &AppConfig) -> i64 {
        self.jwts.get(&app.fingerprint).map_or(0, |j| j.offset())
    }

    /// Forgets everything minted under app identities other than `current`:
    /// after a reload changed an app's id or key, old tokens must not be used.
    pub fn retain_apps(&self, current: &[AppFingerprint]) {
        self.tokens.retain(|k| match k {
            CacheKey::Installation { app, .. } => current.contains(app),
            CacheKey::User { .. } => true,
        });
        self.jwts.retain(|k, _| current.contains(k));
        self.directories.retain(|k, _| current.contains(k));
    }

    /// The cached token for an installation (with the context's app and
    /// scope), without minting.
    pub fn cached_installation_token(&self, ctx: &Context<'_>, id: u64) -> Option<Token> {
        self.tokens.peek(&installation_key(ctx, id))
    }
}
