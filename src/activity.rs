//! What the proxy remembers of recent traffic for operators, and the audit
//! trail: one bounded ring of the last upstream errors, and (with
//! `audit: true`) one JSON line per forwarded request on the `audit` log
//! target. The platform's budget per credential is the quota's own
//! (`quota::Quota::snapshot`), not kept twice.
//!
//! Hooked in one place, after the service made its response: nothing here
//! is on the request's critical path unless `audit` is on, and memory is
//! bounded (the ring holds [`RECENT_ERRORS`]).

use crate::config::Config;
use crate::credentials::Credentials;
use crate::routes::{InstallationSelector, RouteCredential};
use crate::state::Snapshot;
use http::{HeaderMap, Method, Request, Response};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How many upstream errors the status page shows.
pub const RECENT_ERRORS: usize = 20;

/// Recent traffic, shared by every connection.
#[derive(Debug)]
pub struct Activity {
    /// When this process started serving.
    pub started: SystemTime,
    errors: Mutex<VecDeque<UpstreamFailure>>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            started: SystemTime::now(),
            errors: Mutex::new(VecDeque::with_capacity(RECENT_ERRORS)),
        }
    }
}

/// One failed exchange with the platform.
#[derive(Debug, Clone)]
pub struct UpstreamFailure {
    pub at: SystemTime,
    pub route: Option<Arc<str>>,
    pub status: u16,
    /// The proxy's error code, or `upstream_5xx` for a platform answer.
    pub code: &'static str,
}

/// The upstream's response time, put in the response's extensions by the
/// forwarding code (absent when the platform was never reached).
#[derive(Debug, Clone, Copy)]
pub struct UpstreamElapsed(pub Duration);

impl Activity {
    /// The last upstream errors, newest first.
    pub fn recent_errors(&self) -> Vec<UpstreamFailure> {
        let ring = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().rev().cloned().collect()
    }

    fn push_error(&self, failure: UpstreamFailure) {
        let mut ring = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == RECENT_ERRORS {
            ring.pop_front();
        }
        ring.push_back(failure);
    }

    /// Notes what a finished response tells operators.
    pub fn observe<B>(&self, route: Option<&Arc<str>>, resp: &Response<B>) {
        let status = resp.status().as_u16();
        let code = resp
            .extensions()
            .get::<crate::error::ErrorCode>()
            .map(|c| c.0);
        let upstream_fault = match code {
            // The platform failed, or refused a credential: what an
            // operator looks for first.
            Some(
                c @ ("upstream_unreachable"
                | "upstream_timeout"
                | "token_endpoint_failed"
                | "installation_not_found"
                | "grant_revoked"
                | "store_unavailable"),
            ) => Some(c),
            Some(_) => None,
            None if status >= 500 => Some("upstream_5xx"),
            None => None,
        };
        if let Some(code) = upstream_fault {
            self.push_error(UpstreamFailure {
                at: SystemTime::now(),
                route: route.cloned(),
                status,
                code,
            });
        }
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// What an audit line needs from the request, taken before the request is
/// handed on (only with `audit: true`).
pub struct AuditStart {
    method: Method,
    /// The path only: a query can carry secrets.
    path: String,
    client: Option<Arc<str>>,
    request_bytes: Option<u64>,
    at: SystemTime,
}

impl AuditStart {
    /// `Some` only when the config turns auditing on.
    /// `client` names the caller (asked only when auditing).
    pub fn begin<B>(
        config: &Config,
        req: &Request<B>,
        client: impl FnOnce() -> Option<Arc<str>>,
    ) -> Option<AuditStart> {
        if !config.audit {
            return None;
        }
        let client = client();
        Some(AuditStart {
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            client,
            request_bytes: header_u64(req.headers(), "content-length"),
            at: SystemTime::now(),
        })
    }

    /// Writes the audit line for a forwarded request (one that took a
    /// route); the proxy's own endpoints and refused requests are not.
    pub async fn finish<B>(
        self,
        snap: &Snapshot,
        credentials: &Credentials,
        route: Option<&Arc<str>>,
        resp: &Response<B>,
    ) {
        let Some(route) = route.and_then(|name| snap.config.routes.get(name)) else {
            return;
        };
        // The route's app: its installations are looked up in its directory.
        let ctx = &snap.context_for(route);
        let forward_path = route.forward_path(&self.path);
        let credential = match &route.credential {
            RouteCredential::User(user) => format!("user:{user}"),
            RouteCredential::Installation(InstallationSelector::Id(id)) => {
                format!("installation:{id}")
            }
            // Resolved already for the request itself: a cache hit.
            RouteCredential::Installation(selector) => {
                match credentials
                    .installation_id(ctx, selector, forward_path)
                    .await
                {
                    Ok(id) => format!("installation:{id}"),
                    Err(_) => "installation:unresolved".to_owned(),
                }
            }
        };
        let headers = resp.headers();
        let time = chrono::DateTime::<chrono::Utc>::from(self.at)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let upstream_ms = resp
            .extensions()
            .get::<UpstreamElapsed>()
            .map(|e| e.0.as_millis() as u64);
        tracing::info!(
            target: "audit",
            time = %time,
            client = self.client.as_deref().unwrap_or("-"),
            route = &*route.name,
            credential = %credential,
            method = %self.method,
            path = %self.path,
            status = resp.status().as_u16(),
            upstream_ms,
            request_bytes = self.request_bytes,
            response_bytes = header_u64(headers, "content-length"),
            quota_remaining = header_u64(headers, "x-ratelimit-remaining"),
            "forwarded"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_errors_only() {
        let activity = Activity::default();
        for i in 0..(RECENT_ERRORS + 5) {
            let mut resp = Response::new(());
            *resp.status_mut() = http::StatusCode::from_u16(500 + (i % 5) as u16).unwrap();
            activity.observe(None, &resp);
        }
        let errors = activity.recent_errors();
        assert_eq!(errors.len(), RECENT_ERRORS);
        assert_eq!(errors[0].status, 504, "newest first");
        // A success is no error.
        activity.observe(Some(&Arc::from("r")), &Response::new(()));
        assert_eq!(activity.recent_errors().len(), RECENT_ERRORS);
        assert_eq!(activity.recent_errors()[0].status, 504);
    }
}
