//! Spending the credential's budget: the quota and the conditional cache
//! around one upstream exchange.
//!
//! In order: a credential whose budget is spent is answered 429 here; a
//! cacheable GET joins an identical one in flight (and takes its answer);
//! the token is obtained; the request waits for its slot in the
//! credential's bucket; a stored
//! entry makes it conditional; it is sent (and resent once with a fresh
//! token after a 401, within the same slot); the answer's `x-ratelimit-*` is
//! recorded; and the cache turns a 304 into the stored 200, or copies a
//! storable 200 as it streams.

use super::forward::{self, CallerOrigin};
use super::retry::Heal;
use crate::body::Body;
use crate::body::Inbound;
use crate::cache::entry::EntryKey;
use crate::cache::inflight::Joined;
use crate::cache::respond_from;
use crate::credentials::{CredentialError, Token};
use crate::error::ProxyError;
use crate::quota::Rate;
use crate::state::{Shared, Snapshot};
use http::{Request, Response};
use http_body_util::Either;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// The request's token: the cached one, or how to mint it (only once the
/// budget allows). The mint's future is boxed: it is large and rare, and
/// every request would otherwise carry its size.
pub(super) struct TokenSource<M> {
    pub cached: Option<Token>,
    pub mint: M,
}

#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice; see `proxy`"
)]
pub(super) fn spend<M, F>(
    shared: &Shared,
    snap: &Arc<Snapshot>,
    mut req: Request<Inbound>,
    uri: http::Uri,
    token: TokenSource<M>,
    origin: CallerOrigin<'_>,
    heal: Heal<'_>,
) -> impl Future<Output = Result<Response<Body>, ProxyError>>
where
    M: FnOnce() -> Pin<Box<F>>,
    F: Future<Output = Result<Token, CredentialError>>,
{
    async move {
        let credential = heal.credential;
        let metrics = &shared.metrics.quota;
        let cache = snap.cache.as_deref();
        // A spent budget is refused before a mint or a wait for another
        // request's answer. With neither ahead, the reservation below makes
        // the same check (see `QuotaBackend::reserve`), and once is enough.
        if cache.is_some() || token.cached.is_none() {
            shared.quota.check_budget(credential, metrics).await?;
        }

        let key = cache.and_then(|_| {
            let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
            EntryKey::of(credential, req.method(), pq, req.headers())
        });
        let mut lead = None;
        if let (Some(cache), Some(key)) = (cache, &key) {
            match cache.join(key) {
                Joined::Leader(l) => lead = Some(*l),
                Joined::Follower(follow) => {
                    // Bounded: a leader whose caller reads its body slowly must
                    // not hold every follower as long.
                    let wait = snap.config.upstream.response_timeout;
                    let outcome = Box::pin(tokio::time::timeout(wait, follow.outcome()));
                    if let Ok(Some(entry)) = outcome.await {
                        metrics.cache_result("shared");
                        let mut resp = respond_from(&entry, "shared");
                        forward::rewrite_for_caller(&mut resp, snap, &origin);
                        return Ok(resp);
                    }
                    // The leader's answer was not for sharing: ask ourselves.
                }
            }
        }

        // The token first: a slot taken while a slow mint runs would be spent
        // waiting, and every request queued behind that mint would then leave
        // at once when it lands, over the rate the bucket promised.
        let token = match token.cached {
            Some(token) => token,
            None => (token.mint)().await?,
        };
        let rate = Rate::of(&snap.config.quota);
        shared.quota.wait_turn(credential, rate, metrics).await?;
        let stored = match (cache, &key) {
            (Some(cache), Some(key)) => cache.get(key),
            _ => None,
        };
        if let Some(entry) = &stored {
            metrics.cache_result("hit");
            entry.add_conditionals(req.headers_mut());
        }
        // A 401 is healed inside: the resend spends no second slot.
        let resp = forward::send(req, uri, snap, token, heal).await?;
        shared
            .quota
            .record(credential, resp.status(), resp.headers(), metrics)
            .await;

        let (parts, body) = resp.into_parts();
        let mut resp = match (cache, key) {
            (Some(cache), Some(key)) => {
                let (resp, served) = cache.answer(key, stored, lead, parts, body);
                metrics.cache_result(served.label());
                resp
            }
            _ => Response::from_parts(parts, Either::Left(Either::Left(body))),
        };
        forward::rewrite_for_caller(&mut resp, snap, &origin);
        Ok(resp)
    }
}
