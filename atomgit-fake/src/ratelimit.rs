//! The platform's budget (`ATOMGIT_API.md` section 6): per installation and
//! per user, `limit` requests per window (an hour on the platform; seconds
//! in tests), reported on every API answer as `x-ratelimit-limit`,
//! `-remaining`, `-used` and `-reset` (epoch seconds, rounded up). Past the
//! window's budget the answer is 403 with `remaining: 0`; past the optional
//! per-second limit, 429 with `Retry-After`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderName, RETRY_AFTER};
use http::{HeaderValue, StatusCode};

use super::TokenOwner;
use super::respond::{self, Resp};

/// The budget every credential gets (see [`super::FakeAtomGit::set_limit_for`]
/// for one credential's own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FakeRateLimit {
    /// Requests per window.
    pub limit: u64,
    /// The window: an hour on the platform.
    pub window: Duration,
    /// Requests per second (a fixed one-second window); `None`: no limit.
    pub per_second: Option<u32>,
}

impl Default for FakeRateLimit {
    fn default() -> Self {
        FakeRateLimit {
            limit: 5000,
            window: Duration::from_secs(3600),
            per_second: None,
        }
    }
}

/// One credential's window and second.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    ends: SystemTime,
    used: u64,
    second_started: SystemTime,
    in_second: u32,
}

/// Every credential's budget.
#[derive(Debug, Default)]
pub(super) struct Budgets {
    pub settings: FakeRateLimit,
    pub limits: HashMap<TokenOwner, u64>,
    pub(super) windows: HashMap<TokenOwner, Window>,
}

impl Budgets {
    fn limit_of(&self, owner: &TokenOwner) -> u64 {
        self.limits
            .get(owner)
            .copied()
            .unwrap_or(self.settings.limit)
    }

    fn window(&mut self, owner: &TokenOwner, now: SystemTime) -> &mut Window {
        let length = self.settings.window;
        let w = self.windows.entry(owner.clone()).or_insert(Window {
            ends: now + length,
            used: 0,
            second_started: now,
            in_second: 0,
        });
        if now >= w.ends {
            w.ends = now + length;
            w.used = 0;
        }
        if now.duration_since(w.second_started).unwrap_or_default() >= Duration::from_secs(1) {
            w.second_started = now;
            w.in_second = 0;
        }
        w
    }

    /// Spends the whole window, as other tools using the same credential
    /// without the proxy would.
    pub fn exhaust(&mut self, owner: &TokenOwner) {
        let limit = self.limit_of(owner);
        self.window(owner, SystemTime::now()).used = limit;
    }

    /// Counts one API request: `Ok(headers)` to add to its answer, or the
    /// refusal to send instead.
    pub fn spend(
        &mut self,
        owner: &TokenOwner,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, Box<Resp>> {
        let now = SystemTime::now();
        let limit = self.limit_of(owner);
        let per_second = self.settings.per_second;
        let w = self.window(owner, now);
        let over_budget = w.used >= limit;
        let over_second = per_second.is_some_and(|n| w.in_second >= n);
        if !over_budget && !over_second {
            w.used += 1;
            w.in_second += 1;
        }
        let reset = w
            .ends
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
            .unwrap_or(0);
        let headers = vec![
            (HeaderName::from_static("x-ratelimit-limit"), limit.into()),
            (
                HeaderName::from_static("x-ratelimit-remaining"),
                limit.saturating_sub(w.used).into(),
            ),
            (HeaderName::from_static("x-ratelimit-used"), w.used.into()),
            (HeaderName::from_static("x-ratelimit-reset"), reset.into()),
        ];
        let refusal = if over_budget {
            Some(respond::message(
                StatusCode::FORBIDDEN,
                "API rate limit exceeded",
            ))
        } else if over_second {
            let mut resp = respond::message(StatusCode::TOO_MANY_REQUESTS, "Too many requests");
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            Some(resp)
        } else {
            None
        };
        match refusal {
            Some(mut resp) => {
                resp.headers_mut().extend(headers);
                Err(Box::new(resp))
            }
            None => Ok(headers),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(headers: &[(HeaderName, HeaderValue)], name: &str) -> String {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_str().unwrap().to_owned())
            .unwrap()
    }

    #[test]
    fn the_window_is_counted_down_then_refused_with_403() {
        let owner = TokenOwner::Installation(14);
        let mut b = Budgets {
            settings: FakeRateLimit {
                limit: 100,
                window: Duration::from_secs(60),
                per_second: None,
            },
            ..Default::default()
        };
        b.limits.insert(owner.clone(), 2);
        let first = b.spend(&owner).unwrap();
        assert_eq!(value(&first, "x-ratelimit-limit"), "2");
        assert_eq!(value(&first, "x-ratelimit-remaining"), "1");
        assert_eq!(value(&first, "x-ratelimit-used"), "1");
        let reset: u64 = value(&first, "x-ratelimit-reset").parse().unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!((now + 59..=now + 61).contains(&reset), "{reset} vs {now}");
        assert_eq!(
            value(&b.spend(&owner).unwrap(), "x-ratelimit-remaining"),
            "0"
        );
        let refused = b.spend(&owner).unwrap_err();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert_eq!(refused.headers()["x-ratelimit-remaining"], "0");
        // Others keep their own budget.
        let other = b.spend(&TokenOwner::User("alice".into())).unwrap();
        assert_eq!(value(&other, "x-ratelimit-remaining"), "99");
    }

    #[test]
    fn past_the_per_second_limit_is_429_with_retry_after() {
        let owner = TokenOwner::User("alice".into());
        let mut b = Budgets {
            settings: FakeRateLimit {
                per_second: Some(1),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(b.spend(&owner).is_ok());
        let refused = b.spend(&owner).unwrap_err();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers()[RETRY_AFTER], "1");
        assert_eq!(
            refused.headers()["x-ratelimit-used"],
            "1",
            "a refusal is not counted"
        );
    }
}
