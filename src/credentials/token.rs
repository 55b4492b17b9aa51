//! A bearer token and the instants that govern its use.

use http::HeaderValue;
use std::fmt;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// A token ready to inject. Times are tokio instants (converted from the
/// platform's wall-clock expiry when minted), so tests can pause time and the
/// refresh logic never reads the wall clock twice.
#[derive(Clone)]
pub struct Token {
    /// `Bearer <token>`, built once and marked sensitive so hyper never logs it;
    /// cloning a `HeaderValue` is a reference-count bump, not a copy.
    header: HeaderValue,
    /// From here on, a refresh is started (in the background while still usable).
    pub refresh_at: Instant,
    /// Not injected from here on: the in-flight allowance before `expires_at`
    /// keeps a request from reaching the platform with a dead token.
    pub usable_until: Instant,
    /// The platform's expiry.
    pub expires_at: Instant,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("refresh_at", &self.refresh_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// A token valid for `lifetime` from `now`. The refresh starts `margin`
    /// ahead of expiry, but never earlier than half-way through the life of a
    /// short token, which would otherwise be refreshed the moment it arrived.
    pub fn new(value: &str, now: Instant, lifetime: Duration, margin: Duration) -> Option<Token> {
        let mut header = HeaderValue::try_from(format!("Bearer {value}")).ok()?;
        header.set_sensitive(true);
        let expires_at = now + lifetime;
        let ahead = margin.min(lifetime / 2);
        let guard = Duration::from_secs(10).min(lifetime / 10);
        Some(Token {
            header,
            refresh_at: expires_at - ahead,
            usable_until: expires_at - guard,
            expires_at,
        })
    }

    /// The `Authorization` header value.
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }

    /// The raw token, for `atomgit-proxy token`.
    pub fn value(&self) -> &str {
        // Built from "Bearer " + a valid header string in `new`.
        self.header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
    }

    /// Whether both carry the same token (whatever their timing).
    pub fn same_as(&self, other: &Token) -> bool {
        self.header == other.header
    }

    pub fn is_usable(&self, now: Instant) -> bool {
        now < self.usable_until
    }
}

/// How long until `at` (a wall-clock time), measured now; zero if past.
pub fn lifetime_until(at: SystemTime) -> Duration {
    at.duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_margin_is_capped_at_half_the_life() {
        let now = Instant::now();
        let t = Token::new(
            "ats_x",
            now,
            Duration::from_secs(3600),
            Duration::from_secs(300),
        )
        .unwrap();
        assert_eq!(t.refresh_at, now + Duration::from_secs(3300));
        let short = Token::new(
            "ats_x",
            now,
            Duration::from_secs(60),
            Duration::from_secs(300),
        )
        .unwrap();
        assert_eq!(short.refresh_at, now + Duration::from_secs(30));
        assert_eq!(short.usable_until, now + Duration::from_secs(54));
        assert_eq!(short.value(), "ats_x");
        assert!(!format!("{short:?}").contains("ats_x"));
    }

    #[test]
    fn a_token_that_cannot_be_a_header_is_refused() {
        assert!(
            Token::new(
                "bad\ntoken",
                Instant::now(),
                Duration::from_secs(60),
                Duration::ZERO
            )
            .is_none()
        );
    }
}
