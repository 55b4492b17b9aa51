//! Sending one request upstream and streaming the answer back.
//!
//! Bodies are never collected: the caller's `Incoming` body becomes the
//! upstream request body and the upstream's `Incoming` becomes the response.

use super::ConnInfo;
use super::headers::{rewrite_links, strip_caller_credentials, strip_hop_by_hop};
use super::retry::Heal;
use crate::body::{Body, CallerFault, Inbound, UpstreamBody};
use crate::cache::entry::API_VERSION;
use crate::credentials::Token;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::state::Snapshot;
use crate::upstream::{ForwardError, Outbound, error_chain};
use http::header::HOST;
use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Request, Response, Version};
use std::cell::RefCell;

/// Where the caller reached the proxy, for rewriting links back to it. Only
/// turned into a URL when a response carries a link to rewrite; until then it
/// holds reference-counted copies of what the request carried, no new string.
pub struct CallerOrigin<'a> {
    /// `host[:port]` as the caller addressed it, validated as a URI authority.
    host: Option<Authority>,
    local: Option<std::net::SocketAddr>,
    /// The stripped route prefix, put back so rewritten links take the same route.
    prefix: &'a str,
}

impl<'a> CallerOrigin<'a> {
    pub fn new(host: Option<Authority>, conn: &ConnInfo, prefix: &'a str) -> Self {
        CallerOrigin {
            host,
            local: conn.local,
            prefix,
        }
    }

    fn base(&self) -> String {
        match (&self.host, self.local) {
            (Some(h), _) => format!("http://{h}{}", self.prefix),
            (None, Some(addr)) => format!("http://{addr}{}", self.prefix),
            (None, None) => format!("http://localhost{}", self.prefix),
        }
    }
}

/// The authority the caller addressed: the request target's (HTTP/2, or an
/// absolute-form HTTP/1 target), else the `Host` header; `None` without
/// either (HTTP/1.0). It is echoed into rewritten links and checked against
/// the allowed hosts, so a `Host` that is not one plain authority (several
/// headers, unparsable, or with `user@` userinfo) is refused, not ignored.
pub fn inbound_host<B>(req: &Request<B>) -> Result<Option<Authority>, ProxyError> {
    let bad = |what: &str| ProxyError::BadRequest(format!("the Host {what}"));
    let authority = match req.uri().authority() {
        Some(a) => a.clone(),
        None => {
            let mut hosts = req.headers().get_all(HOST).iter();
            let host = match (hosts.next(), hosts.next()) {
                (None, _) => return Ok(None),
                (Some(_), Some(_)) => return Err(bad("header is sent more than once")),
                (Some(h), None) if h.is_empty() => return Ok(None),
                (Some(h), None) => h,
            };
            parse_host(host)
                .map_err(|_| bad("header is not a host name or address with an optional port"))?
        }
    };
    if authority.as_str().contains('@') {
        return Err(bad("has user information (`user@`); send only host[:port]"));
    }
    Ok(Some(authority))
}

thread_local! {
    /// The `Host` last parsed on this thread, and its authority: callers
    /// address the proxy by one name, and parsing it copies it. The value
    /// is a copy too, so the entry holds no connection's buffer.
    static LAST_HOST: RefCell<Option<(HeaderValue, Authority)>> = const { RefCell::new(None) };
}

fn parse_host(host: &HeaderValue) -> Result<Authority, http::uri::InvalidUri> {
    LAST_HOST.with_borrow_mut(|last| {
        if let Some((value, authority)) = last.as_ref()
            && value == host
        {
            return Ok(authority.clone());
        }
        let authority = Authority::try_from(host.as_bytes())?;
        if let Ok(value) = HeaderValue::from_bytes(host.as_bytes()) {
            *last = Some((value, authority.clone()));
        }
        Ok(authority)
    })
}

/// Sets the route's `api_version` as `X-Api-Version` (the platform's API
/// version header, `ATOMGIT_API.md` section 7) unless the caller sent one:
/// the caller knows what shape it expects. Done before the cache key is
/// made, so answers of two versions are never mixed up.
pub fn default_api_version(headers: &mut HeaderMap, version: Option<&HeaderValue>) {
    if let Some(version) = version
        && !headers.contains_key(API_VERSION)
    {
        headers.insert(API_VERSION, version.clone());
    }
}

/// Sends `req` to `uri` with `token` (resent once with a fresh one if the
/// platform refuses it, see [`super::retry`]) and returns the platform's
/// answer, hop-by-hop headers removed (links are rewritten by the caller, see
/// [`rewrite_for_caller`], once it knows which answer the caller gets).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice; see `proxy`"
)]
pub fn send(
    req: Request<Inbound>,
    uri: http::Uri,
    snap: &Snapshot,
    token: Token,
    heal: Heal<'_>,
) -> impl Future<Output = Result<Response<UpstreamBody>, ProxyError>> {
    async move {
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        // `Host` and `Authorization` are the upstream's, set as it is
        // written out (see `Upstream::prepare`).
        strip_caller_credentials(&mut parts.headers);
        parts.uri = uri;
        // The pool negotiates HTTP/2 by ALPN where the platform offers it; an
        // inbound HTTP/2 request must not force prior-knowledge HTTP/2 upstream.
        parts.version = Version::HTTP_11;
        let metrics = heal.metrics;
        let resp = super::retry::exchange(&parts, body, token, heal, |parts, auth, body, fault| {
            exchange_once(
                snap.upstream.prepare(parts, auth, body),
                fault,
                snap,
                metrics,
            )
        })
        .await;
        crate::wire::head::recycle(parts.headers);
        resp
    }
}

/// One request to the platform, up to its response headers.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice; see `proxy`"
)]
fn exchange_once(
    req: Outbound,
    caller_fault: CallerFault,
    snap: &Snapshot,
    metrics: &Metrics,
) -> impl Future<Output = Result<Response<UpstreamBody>, ProxyError>> {
    async move {
        let timeout = snap.config.upstream.response_timeout;
        let started = tokio::time::Instant::now();
        let deadline = deadline_after(started, timeout);
        // At most `limits.max_upstream_requests` at the platform; the rest wait
        // here, inside the response timeout. A slot is held until the response
        // headers, not through the body: a caller that stops reading a download
        // must not keep one for as long as it likes. (Never closed: the
        // `Result` always holds a permit.)
        let _slot = match snap.upstream_slots.try_acquire() {
            // A free slot is taken without a future: the usual case.
            Ok(slot) => Ok(slot),
            // Boxed: the rare case, and the common one's future carries it.
            Err(_) => Box::pin(tokio::time::timeout_at(
                deadline,
                snap.upstream_slots.acquire(),
            ))
            .await
            .map_err(|_| ProxyError::UpstreamTimeout(timeout))?,
        };
        let resp = match snap.upstream.forward(req, deadline).await {
            Err(ForwardError::TimedOut) => return Err(ProxyError::UpstreamTimeout(timeout)),
            // A body the caller broke also fails the upstream call: not the platform's fault.
            Err(ForwardError::Failed(e)) if caller_fault.happened() => {
                return Err(ProxyError::BadRequest(format!(
                    "the request body could not be read: {}",
                    error_chain(&*e)
                )));
            }
            Err(ForwardError::Failed(e)) => {
                return Err(ProxyError::UpstreamUnreachable(error_chain(&*e)));
            }
            Ok(resp) => resp,
        };
        let elapsed = started.elapsed();
        metrics.upstream_seconds.observe(elapsed.as_secs_f64());
        let (mut parts, body) = resp.into_parts();
        // Only the audit trail reads it; an extension costs a map per response.
        if snap.config.audit {
            parts
                .extensions
                .insert(crate::activity::UpstreamElapsed(elapsed));
        }
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, body))
    }
}

/// `timeout` after `start`, or as good as never for a timeout too large to
/// add (the configuration sets no upper bound), as `tokio::time::timeout`
/// does.
fn deadline_after(
    start: tokio::time::Instant,
    timeout: std::time::Duration,
) -> tokio::time::Instant {
    const NEVER: std::time::Duration = std::time::Duration::from_secs(86400 * 365 * 30);
    start.checked_add(timeout).unwrap_or_else(|| start + NEVER)
}

/// Points the answer's `Link`/`Location` back at the proxy the caller used.
pub fn rewrite_for_caller(resp: &mut Response<Body>, snap: &Snapshot, origin: &CallerOrigin<'_>) {
    rewrite_links(resp.headers_mut(), &snap.upstream.base_url, || {
        origin.base()
    });
}
