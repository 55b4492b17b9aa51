//! Sending one request upstream and streaming the answer back.
//!
//! Bodies are never collected: the caller's `Incoming` body becomes the
//! upstream request body and the upstream's `Incoming` becomes the response.

use super::headers::{rewrite_links, strip_hop_by_hop};
use super::{Body, ConnInfo};
use crate::credentials::Token;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::state::Snapshot;
use crate::upstream::error_chain;
use http::header::{AUTHORIZATION, HOST};
use http::{Request, Response, Version};
use http_body_util::Either;
use hyper::body::Incoming;

/// Where the caller reached the proxy, for rewriting links back to it. Only
/// turned into a URL when a response carries a link to rewrite; until then it
/// holds reference-counted copies of what the request carried, no new string.
pub struct CallerOrigin<'a> {
    /// `host[:port]` as the caller addressed it, validated as a URI authority.
    host: Option<http::uri::Authority>,
    local: Option<std::net::SocketAddr>,
    /// The stripped route prefix, put back so rewritten links take the same route.
    prefix: &'a str,
}

impl<'a> CallerOrigin<'a> {
    pub fn new<B>(req: &Request<B>, conn: &ConnInfo, prefix: &'a str) -> Self {
        CallerOrigin {
            host: inbound_authority(req),
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
/// absolute-form HTTP/1 target), else the `Host` header. Only a value that
/// parses as an authority is kept, so it can be echoed into a URL safely.
fn inbound_authority<B>(req: &Request<B>) -> Option<http::uri::Authority> {
    if let Some(a) = req.uri().authority() {
        return Some(a.clone());
    }
    let host = req.headers().get(HOST)?;
    http::uri::Authority::try_from(host.as_bytes()).ok()
}

/// The host the caller addressed, borrowed from the request, for matching
/// routes on `match.host`.
pub fn inbound_host<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => req.headers().get(HOST)?.to_str().ok(),
    }
}

pub async fn send(
    req: Request<Incoming>,
    uri: http::Uri,
    snap: &Snapshot,
    token: &Token,
    origin: CallerOrigin<'_>,
    metrics: &Metrics,
) -> Result<Response<Body>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(AUTHORIZATION);
    parts.headers.insert(AUTHORIZATION, token.header().clone());
    parts
        .headers
        .insert(HOST, snap.upstream.host_header.clone());
    parts.uri = uri;
    // The pool negotiates HTTP/2 by ALPN where the platform offers it; an
    // inbound HTTP/2 request must not force prior-knowledge HTTP/2 upstream.
    parts.version = Version::HTTP_11;
    let req = Request::from_parts(parts, body);

    let timeout = snap.config.upstream.response_timeout;
    let started = tokio::time::Instant::now();
    let resp = match tokio::time::timeout(timeout, snap.upstream.forward.request(req)).await {
        Err(_) => return Err(ProxyError::UpstreamTimeout(timeout)),
        Ok(Err(e)) => return Err(ProxyError::UpstreamUnreachable(error_chain(&e))),
        Ok(Ok(resp)) => resp,
    };
    metrics
        .upstream_seconds
        .observe(started.elapsed().as_secs_f64());
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    rewrite_links(&mut parts.headers, &snap.upstream.base_url, || {
        origin.base()
    });
    Ok(Response::from_parts(parts, Either::Left(body)))
}
