//! 401 recovery: a request the platform refused because of its token is
//! resent once with a fresh one.
//!
//! Tokens die before their time (revoked, rotated by an operator, refused
//! right after minting by a replica that has not seen them yet); every user
//! of app-token libraries reports it. When the upstream answers 401 to a
//! request that carried a token, that token is dropped (only if the cache
//! still holds it, so a burst of refusals makes one mint, see
//! [`Credentials::renew`]), a fresh one is obtained through the same single
//! flight as any mint, and the request is sent again, once. A second 401
//! goes to the caller as it is.
//!
//! The retry happens inside the one quota slot and cache exchange the
//! request took (see `spend.rs`): a resent request is not counted twice
//! against the credential's bucket.
//!
//! Only a request whose body can be sent twice is resent: one without a
//! body, or whose whole body arrived within [`MAX_REPLAY_BYTES`] and
//! [`READ_AHEAD_WAIT`]. Reading ahead is bounded both ways: a body declared
//! larger is never touched, and one of unknown length that goes past either
//! bound is sent as it came (the part read first, then the rest of the
//! stream) and never replayed.

use crate::body::{CallerBody, CallerFault, Inbound, UpstreamBody};
use crate::credentials::{CacheKey, Context, Credentials, Token};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::future::Future;
use std::time::Duration;

/// The largest body kept to be sent again.
pub const MAX_REPLAY_BYTES: usize = 64 * 1024;

/// How long the body is waited for before sending starts anyway: a slow
/// upload must not wait on the chance of a retry.
pub const READ_AHEAD_WAIT: Duration = Duration::from_secs(2);

/// What a fresh token for the request's route is obtained with.
pub struct Heal<'a> {
    pub credentials: &'a Credentials,
    /// The route's context (app, scope), the one `credential` was made with.
    pub ctx: &'a Context<'a>,
    pub credential: &'a CacheKey,
    /// `atomgit_proxy_token_retries_total` and the upstream timings.
    pub metrics: &'a Metrics,
}

/// The caller's body, as far as it was read before sending.
enum Outgoing {
    /// All of it: can be sent again.
    Whole(Bytes),
    /// The first bytes and the rest of the stream: sent once.
    Stream(Bytes, Incoming),
}

/// Sends the request with `token` through `send`, and once more with a fresh
/// token if the platform refused it and the body allows. `send` gets each
/// attempt's `Authorization` value beside the head, and only borrows both
/// (it writes them out before its future starts), so the head is not
/// copied for a resend that rarely happens.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice; see `proxy`"
)]
pub fn exchange<F, Fut>(
    parts: &Parts,
    body: Inbound,
    token: Token,
    heal: Heal<'_>,
    send: F,
) -> impl Future<Output = Result<Response<UpstreamBody>, ProxyError>>
where
    F: Fn(&Parts, &HeaderValue, CallerBody, CallerFault) -> Fut,
    Fut: Future<Output = Result<Response<UpstreamBody>, ProxyError>>,
{
    async move {
        let outgoing = match body {
            // Nothing to read: no future (see `wire` on future sizes).
            Inbound::Empty => Outgoing::Whole(Bytes::new()),
            Inbound::Hyper(body) => Box::pin(read_ahead(body, &parts.headers)).await?,
        };
        let bytes = match outgoing {
            Outgoing::Stream(prefix, rest) => {
                let (body, fault) = CallerBody::prefixed(prefix, rest);
                let resp = send(parts, token.header(), body, fault).await?;
                if resp.status() == StatusCode::UNAUTHORIZED {
                    // Not replayed, but the next request gets a fresh token.
                    // Boxed, as every mint here: rare, and large.
                    Box::pin(heal.drop_refused(&token)).await;
                }
                return Ok(resp);
            }
            Outgoing::Whole(bytes) => bytes,
        };
        let (body, fault) = CallerBody::buffered(bytes.clone());
        let first = send(parts, token.header(), body, fault).await?;
        if first.status() != StatusCode::UNAUTHORIZED {
            return Ok(first);
        }
        let fresh = match Box::pin(heal.renew(&token)).await {
            Ok(fresh) => fresh,
            Err(e) => {
                // The platform's own answer says more than our failure to mint.
                tracing::warn!(
                    error = %e,
                    "the platform refused the token (401) and no fresh one could be had; \
                     passing the 401 on"
                );
                return Ok(first);
            }
        };
        drop(first);
        heal.metrics.token_retries.inc();
        tracing::info!("the platform refused the token (401); resending once with a fresh one");
        let (body, fault) = CallerBody::buffered(bytes);
        send(parts, fresh.header(), body, fault).await
    }
}

impl Heal<'_> {
    async fn renew(&self, stale: &Token) -> Result<Token, crate::credentials::CredentialError> {
        self.credentials
            .renew(self.ctx, self.credential, stale)
            .await
    }

    /// Drops a refused token without waiting for its replacement.
    async fn drop_refused(&self, stale: &Token) {
        if let Err(e) = self.renew(stale).await {
            tracing::warn!(error = %e, "the platform refused the token (401) and no fresh one could be had");
        }
    }
}

/// Reads the body ahead of sending while it may still be replayed.
async fn read_ahead(mut body: Incoming, headers: &HeaderMap) -> Result<Outgoing, ProxyError> {
    use http_body::Body as _;
    if body.is_end_stream() {
        return Ok(Outgoing::Whole(Bytes::new()));
    }
    let declared = crate::wire::head::declared_length(headers);
    if declared.is_some_and(|n| n > MAX_REPLAY_BYTES as u64) {
        return Ok(Outgoing::Stream(Bytes::new(), body));
    }
    let mut read = BytesMut::new();
    let deadline = tokio::time::Instant::now() + READ_AHEAD_WAIT;
    loop {
        if read.len() > MAX_REPLAY_BYTES {
            return Ok(Outgoing::Stream(read.freeze(), body));
        }
        // Cancelling `frame()` loses nothing: it holds no frame of its own.
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Ok(Outgoing::Stream(read.freeze(), body)),
            Ok(None) => return Ok(Outgoing::Whole(read.freeze())),
            Ok(Some(Err(e))) => {
                return Err(ProxyError::BadRequest(format!(
                    "the request body could not be read: {}",
                    crate::upstream::error_chain(&e)
                )));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers are not kept: API requests do not send them.
        if let Ok(data) = frame.into_data() {
            read.extend_from_slice(&data);
        }
        if body.is_end_stream() {
            return Ok(Outgoing::Whole(read.freeze()));
        }
    }
}
