//! The learned budget: what the platform said about a credential's hour.
//!
//! Every upstream answer carries `x-ratelimit-limit`, `-remaining`, `-used`
//! and `-reset` (epoch seconds). The last of them is kept per credential;
//! while `remaining` is 0 and `reset` is ahead, asking the platform can only
//! fail, so the proxy answers itself. A 403/429 with `Retry-After` blocks the
//! credential for that long as well. Times here are wall-clock (the platform
//! speaks epoch seconds) and passed in, so the rules are tested without
//! waiting.

use crate::wire::head::surely_none;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub const REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub const USED: HeaderName = HeaderName::from_static("x-ratelimit-used");
pub const RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The `x-ratelimit-*` values of one answer; a header the platform left out
/// (or wrote as no number) is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    pub used: Option<u64>,
    /// Epoch seconds at which the window resets.
    pub reset: Option<u64>,
}

impl RateLimit {
    /// The values in `headers` (the first of each name), or `None` when it
    /// carries none of them. One pass over the names: the platform sends
    /// these on every answer, and a lookup hashes a name this long each time.
    pub fn from_headers(headers: &HeaderMap) -> Option<RateLimit> {
        let mut seen = RateLimit::default();
        // Which names were met: a later value of a name never counts.
        let mut met = [false; 4];
        for (name, value) in headers {
            let Some(which) = name.as_str().strip_prefix("x-ratelimit-") else {
                continue;
            };
            let (at, slot) = match which {
                "limit" => (0, &mut seen.limit),
                "remaining" => (1, &mut seen.remaining),
                "used" => (2, &mut seen.used),
                "reset" => (3, &mut seen.reset),
                _ => continue,
            };
            if !std::mem::replace(&mut met[at], true) {
                *slot = number(value);
            }
        }
        (seen != RateLimit::default()).then_some(seen)
    }

    /// Writes the known values back as headers (on a local 429, so a caller
    /// sees the same numbers the platform would have sent).
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        for (name, value) in [
            (LIMIT, self.limit),
            (REMAINING, self.remaining),
            (USED, self.used),
            (RESET, self.reset),
        ] {
            if let Some(v) = value {
                headers.insert(name, HeaderValue::from(v));
            }
        }
    }
}

/// What is known about one credential's budget.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    /// The freshest `x-ratelimit-*` seen.
    pub last: Option<RateLimit>,
    /// Until when a `Retry-After` on a refusal holds the credential back.
    pub retry_until: Option<SystemTime>,
}

/// Why and for how long a credential is held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked {
    /// Until the window resets or the `Retry-After` passes.
    pub for_: Duration,
    /// The last values, repeated on the local 429.
    pub last: Option<RateLimit>,
}

impl Budget {
    /// Records one answer. Answers arrive out of order (a slow one carries
    /// an older count), so within one window the lowest `remaining` wins and
    /// an answer from an earlier window is ignored.
    pub fn record(
        &mut self,
        status: StatusCode,
        seen: Option<RateLimit>,
        retry_after: Option<Duration>,
        now: SystemTime,
    ) {
        if let Some(seen) = seen {
            self.last = Some(match self.last {
                Some(old) if old.reset.is_some() && seen.reset.is_some() => {
                    if seen.reset < old.reset {
                        old
                    } else if seen.reset == old.reset
                        && seen.remaining.unwrap_or(u64::MAX) > old.remaining.unwrap_or(u64::MAX)
                    {
                        RateLimit {
                            limit: seen.limit.or(old.limit),
                            ..old
                        }
                    } else {
                        seen
                    }
                }
                _ => seen,
            });
        }
        // Only a refusal's Retry-After holds the credential back: the
        // platform documents it for 403/429 past the limit.
        if matches!(status.as_u16(), 403 | 429)
            && let Some(wait) = retry_after
        {
            let until = now + wait;
            self.retry_until = Some(self.retry_until.map_or(until, |u| u.max(until)));
        }
    }

    /// `Some` while requests can only fail: `remaining` is 0 and `reset` is
    /// ahead, or a `Retry-After` has not passed.
    pub fn blocked(&self, now: SystemTime) -> Option<Blocked> {
        let mut left = Duration::ZERO;
        if let Some(RateLimit {
            remaining: Some(0),
            reset: Some(reset),
            ..
        }) = self.last
        {
            let reset = UNIX_EPOCH + Duration::from_secs(reset);
            left = left.max(reset.duration_since(now).unwrap_or_default());
        }
        if let Some(until) = self.retry_until {
            left = left.max(until.duration_since(now).unwrap_or_default());
        }
        (!left.is_zero()).then_some(Blocked {
            for_: left,
            last: self.last,
        })
    }
}

/// A header value that is a whole number, spaces around it allowed.
fn number(value: &HeaderValue) -> Option<u64> {
    std::str::from_utf8(value.as_bytes().trim_ascii())
        .ok()?
        .parse()
        .ok()
}

/// `Retry-After` as delay-seconds (the form the platform and GitHub use;
/// an HTTP-date is not worth a date parser here and is ignored).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if surely_none(headers, |k| k == http::header::RETRY_AFTER) {
        return None;
    }
    headers
        .get(http::header::RETRY_AFTER)
        .and_then(number)
        .map(Duration::from_secs)
}

/// Whole seconds for a `Retry-After`, rounded up and at least 1: a caller
/// told "0" would come straight back.
pub fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn rl(remaining: u64, reset: u64) -> Option<RateLimit> {
        Some(RateLimit {
            limit: Some(5000),
            remaining: Some(remaining),
            used: Some(5000 - remaining),
            reset: Some(reset),
        })
    }

    #[test]
    fn headers_are_read_and_written_back() {
        let mut h = HeaderMap::new();
        h.insert(LIMIT, HeaderValue::from_static("5000"));
        h.insert(REMAINING, HeaderValue::from_static("0"));
        h.insert(RESET, HeaderValue::from_static("1700000100"));
        h.insert(USED, HeaderValue::from_static("lots"));
        let seen = RateLimit::from_headers(&h).unwrap();
        assert_eq!(seen.remaining, Some(0));
        assert_eq!(seen.used, None);
        let mut out = HeaderMap::new();
        seen.write_headers(&mut out);
        assert_eq!(out.get(RESET).unwrap(), "1700000100");
        assert!(RateLimit::from_headers(&HeaderMap::new()).is_none());

        let mut h = HeaderMap::new();
        h.append(REMAINING, HeaderValue::from_static(" 7 "));
        h.append(REMAINING, HeaderValue::from_static("9"));
        h.append(LIMIT, HeaderValue::from_static("many"));
        h.append(LIMIT, HeaderValue::from_static("50"));
        h.insert("x-ratelimit-resource", HeaderValue::from_static("3"));
        h.insert("content-length", HeaderValue::from_static("4"));
        let seen = RateLimit::from_headers(&h).unwrap();
        assert_eq!(seen.remaining, Some(7), "the first value of a name");
        assert_eq!(seen.limit, None, "a first value that is no number");
        assert_eq!((seen.used, seen.reset), (None, None));
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-resource", HeaderValue::from_static("3"));
        assert!(RateLimit::from_headers(&h).is_none());
    }

    #[test]
    fn spent_budget_blocks_until_reset() {
        let mut b = Budget::default();
        b.record(StatusCode::OK, rl(1, T0 + 60), None, at(T0));
        assert_eq!(b.blocked(at(T0)), None);
        b.record(StatusCode::OK, rl(0, T0 + 60), None, at(T0));
        let blocked = b.blocked(at(T0 + 1)).unwrap();
        assert_eq!(blocked.for_, Duration::from_secs(59));
        assert_eq!(blocked.last.unwrap().remaining, Some(0));
        assert_eq!(b.blocked(at(T0 + 60)), None, "resumes at reset");
    }

    #[test]
    fn late_answers_do_not_undo_a_spent_budget() {
        let mut b = Budget::default();
        b.record(StatusCode::OK, rl(0, T0 + 60), None, at(T0));
        // A slow answer from earlier in the same window.
        b.record(StatusCode::OK, rl(7, T0 + 60), None, at(T0));
        assert!(b.blocked(at(T0)).is_some());
        // One from the window before.
        b.record(StatusCode::OK, rl(9, T0), None, at(T0));
        assert!(b.blocked(at(T0)).is_some());
        // The next window's first answer.
        b.record(StatusCode::OK, rl(4999, T0 + 3660), None, at(T0 + 61));
        assert_eq!(b.blocked(at(T0 + 61)), None);
    }

    #[test]
    fn retry_after_on_a_refusal_blocks() {
        let mut b = Budget::default();
        b.record(StatusCode::OK, None, Some(Duration::from_secs(5)), at(T0));
        assert_eq!(b.blocked(at(T0)), None, "only refusals count");
        b.record(
            StatusCode::TOO_MANY_REQUESTS,
            None,
            Some(Duration::from_secs(5)),
            at(T0),
        );
        assert_eq!(b.blocked(at(T0 + 2)).unwrap().for_, Duration::from_secs(3));
        assert_eq!(b.blocked(at(T0 + 5)), None);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
    }
}
