//! Clock skew between this machine and the platform.
//!
//! The platform judges the app JWT's `iat` and `exp` on its own clock, so a
//! machine whose clock is off by minutes has every JWT refused, and with it
//! every mint. When an app call is refused (401) and the answer's `Date`
//! differs from the local clock by more than [`TOLERANCE_SECS`], the JWT is
//! signed on the platform's clock from then on (the offset is kept per app,
//! in its `AppJwt`) and the call is retried once.

use http::HeaderMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// A difference up to this is normal (latency, a second's rounding in
/// `Date`) and the JWT's own backdating absorbs it.
pub const TOLERANCE_SECS: i64 = 30;

/// The platform's clock minus ours, in seconds, read from an answer's
/// `Date` header; `None` without a readable one.
pub fn platform_offset(headers: &HeaderMap) -> Option<i64> {
    let date = headers.get(http::header::DATE)?.to_str().ok()?;
    let platform = chrono::DateTime::parse_from_rfc2822(date.trim()).ok()?;
    Some(platform.timestamp() - now_secs())
}

/// Seconds since the epoch on this machine's clock.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_is_read_from_date() {
        let mut headers = HeaderMap::new();
        assert_eq!(platform_offset(&headers), None);
        let behind = chrono::Utc::now() - chrono::TimeDelta::seconds(600);
        let date = behind.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        headers.insert(http::header::DATE, date.parse().unwrap());
        let offset = platform_offset(&headers).unwrap();
        assert!((-602..=-598).contains(&offset), "{offset}");
        headers.insert(http::header::DATE, "yesterday".parse().unwrap());
        assert_eq!(platform_offset(&headers), None);
    }
}
