//! The fake's shared state: fixed configuration, the mutable bookkeeping behind
//! one mutex (issued tokens, codes, grants, counters, recorded requests), and
//! the small helpers that mint random credentials and compute expiries.
//!
//! Expiry bookkeeping uses `tokio::time::Instant` so tests running with paused
//! tokio time see a consistent clock; the wall-clock values written on the wire
//! come from `chrono::Utc::now()`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use jsonwebtoken::DecodingKey;
use rand::RngCore;
use tokio::time::Instant;

use super::{ExpiresFormat, FakeInstallation, Recorded, TokenOwner};

/// How many requests `requests()` remembers; older ones are dropped so a long
/// load test cannot grow the fake without bound.
pub(super) const MAX_RECORDED: usize = 10_000;

/// Authorization codes live this long, like the classic OAuth flow's codes.
pub(super) const CODE_LIFETIME: Duration = Duration::from_secs(600);

/// An `ats_` or `atu_` token the fake issued.
pub(super) struct TokenRecord {
    pub owner: TokenOwner,
    pub expires: Instant,
    /// Revoked before its expiry: refused (401) on use.
    pub revoked: bool,
    /// A scoped token reaches only these repositories (lowercased).
    pub repositories: Option<Vec<String>>,
    /// The app whose JWT minted it (installation tokens).
    pub app: Option<u64>,
}

/// An authorization code handed out by the authorize page.
pub(super) struct CodeRecord {
    pub client_id: String,
    pub redirect_uri: String,
    pub user: String,
    pub expires: Instant,
}

/// A live refresh token. The wall-clock expiry is kept so a non-rotating
/// refresh can report the same `refresh_token_expires_in` it did before.
pub(super) struct RefreshRecord {
    pub user: String,
    pub expires: Instant,
    pub expires_wall: DateTime<Utc>,
}

/// Everything that changes while the server runs.
pub(super) struct Inner {
    pub requests: VecDeque<Recorded>,
    pub installations: Vec<FakeInstallation>,
    pub token_lifetime: Duration,
    pub access_lifetime: Duration,
    pub failure: Option<u16>,
    /// The OAuth token endpoint waits this long before answering (a slow
    /// platform, so a test can stop a proxy in the middle of a refresh).
    pub oauth_delay: Option<Duration>,
    /// How long an installation token mint waits before it answers.
    pub mint_delay: Option<Duration>,
    pub tokens: HashMap<String, TokenRecord>,
    pub codes: HashMap<String, CodeRecord>,
    pub refresh: HashMap<String, RefreshRecord>,
    pub mints: HashMap<u64, usize>,
    pub installation_lists: usize,
    pub expired_seen: usize,
    pub code_exchanges: usize,
    pub refreshes: usize,
    pub refused_refreshes: usize,
    /// API requests being answered now, and the most there ever were.
    pub api_in_flight: usize,
    pub api_max_in_flight: usize,
    /// Every token issued from now on is born revoked.
    pub revoke_on_issue: bool,
    /// API calls refused because their token was revoked.
    pub revoked_seen: usize,
    /// The fake's clock minus the real one, in seconds: JWTs are judged, and
    /// `Date` and `expires_at` written, on the fake's clock.
    pub clock_offset: i64,
    /// Bodies of `POST /app/installations/{id}/access_tokens`, in order.
    pub mint_bodies: Vec<serde_json::Value>,
    /// Mints ignore the scope they are asked for (full token, `ALL`).
    pub ignore_scope: bool,
    /// Every credential's budget.
    pub budgets: super::ratelimit::Budgets,
    /// Resources with validators (`.../etag/{name}`).
    pub resources: super::resources::Resources,
}

impl Inner {
    pub fn record(&mut self, r: Recorded) {
        if self.requests.len() >= MAX_RECORDED {
            self.requests.pop_front();
        }
        self.requests.push_back(r);
    }

    pub fn account_of(&self, installation_id: u64) -> Option<&str> {
        self.installations
            .iter()
            .find(|i| i.id == installation_id)
            .map(|i| i.account.as_str())
    }

    /// Issues a new bearer token with the given prefix for `owner`.
    pub fn issue_token(&mut self, prefix: &str, owner: TokenOwner, lifetime: Duration) -> String {
        let token = format!("{prefix}{}", random_hex(16));
        let expires = instant_after(lifetime);
        let revoked = self.revoke_on_issue;
        self.tokens.insert(
            token.clone(),
            TokenRecord {
                owner,
                expires,
                revoked,
                repositories: None,
                app: None,
            },
        );
        token
    }
}

/// The fake's OAuth app: settings that never change after start (the access lifetime is
/// settable and therefore lives in `Inner`).
pub(super) struct OAuthApp {
    pub client_id: String,
    pub client_secret: String,
    pub user: String,
    pub refresh_lifetime: Duration,
    pub expires_format: ExpiresFormat,
    pub rotate_refresh_tokens: bool,
}

/// State shared by the server task and the `FakeAtomGit` handle.
pub(super) struct FakeState {
    pub app_id: u64,
    /// `None` when no public key was configured: every app JWT is refused.
    pub key: Option<DecodingKey>,
    /// More apps: (id, key).
    pub extra_keys: Vec<(u64, DecodingKey)>,
    pub oauth: OAuthApp,
    /// `http://127.0.0.1:PORT`, used for absolute URLs in bodies and headers.
    pub base_url: String,
    /// `created_at`/`updated_at` of installations, in the platform's +08:00 style.
    pub created_at: String,
    inner: Mutex<Inner>,
}

impl FakeState {
    pub fn new(
        app_id: u64,
        key: Option<DecodingKey>,
        extra_keys: Vec<(u64, DecodingKey)>,
        oauth: OAuthApp,
        base_url: String,
        inner: Inner,
    ) -> Self {
        FakeState {
            app_id,
            key,
            extra_keys,
            oauth,
            base_url,
            created_at: to_platform_time(Utc::now(), false),
            inner: Mutex::new(inner),
        }
    }

    /// Locks the bookkeeping. A panic while holding the lock cannot leave it
    /// half-updated in a way that matters to a test double, so poisoning is
    /// ignored rather than turned into a second panic.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Now on the fake's clock (see `Inner::clock_offset`).
    pub fn now(&self) -> DateTime<Utc> {
        let offset = self.lock().clock_offset;
        Utc::now() + TimeDelta::seconds(offset)
    }
}

/// `n` random bytes as lowercase hex (the platform's token alphabet).
pub(super) fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// `now + d` on the tokio clock, saturating instead of panicking on absurd
/// lifetimes such as `Duration::MAX`.
pub(super) fn instant_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

/// `Utc::now() + d` on the wall clock, saturating likewise.
pub(super) fn wall_after(d: Duration) -> DateTime<Utc> {
    let now = Utc::now();
    TimeDelta::from_std(d)
        .ok()
        .and_then(|delta| now.checked_add_signed(delta))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The platform writes times in China Standard Time (`+08:00`); `expires_at`
/// additionally carries milliseconds (`2023-05-07T04:02:40.758+08:00`).
pub(super) fn to_platform_time(t: DateTime<Utc>, millis: bool) -> String {
    // Eight hours is well inside the ±24 h that `FixedOffset` accepts.
    let cst = chrono::FixedOffset::east_opt(8 * 3600).expect("+08:00 is a valid offset");
    let local = t.with_timezone(&cst);
    if millis {
        local.format("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string()
    } else {
        local.format("%Y-%m-%dT%H:%M:%S%:z").to_string()
    }
}

/// Writes an expiry the way the configured `ExpiresFormat` says.
pub(super) fn expires_value(format: ExpiresFormat, at: DateTime<Utc>) -> i64 {
    match format {
        ExpiresFormat::EpochMillis => at.timestamp_millis(),
        ExpiresFormat::EpochSeconds => at.timestamp(),
        // Round up so "8 h from now" reads 28800, not 28799, a few µs later.
        ExpiresFormat::RelativeSeconds => {
            let ms = (at - Utc::now()).num_milliseconds().max(0);
            (ms + 999) / 1000
        }
    }
}
