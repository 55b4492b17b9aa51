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
