//! The upstream: pooled HTTP clients to the Open API.
//!
//! One TLS connector (webpki roots plus the optional extra CA) backs two
//! pools: one for forwarded requests, whose bodies stream straight from the
//! caller, and one for the proxy's own small token calls. Both are built once
//! per upstream configuration and reused across reloads that leave it alone.
//!
//! On a worker thread (see `server/workers.rs`) forwarded requests go through
//! that thread's own connections instead, so a connection is only ever
//! driven by the thread whose requests use it: no request hops threads on
//! its way upstream and back, and no pool lock is shared between threads.
//! To a plain-`http` upstream that is a list of HTTP/1 connections
//! (`lane.rs`, on [`crate::wire`], or `worker_pool.rs` for a body that
//! streams); over TLS, a hyper-util client per worker.

mod lane;
mod worker_pool;

use crate::body::{CallerBody, UpstreamBody};
use crate::config::UpstreamConfig;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::cell::{Cell, RefCell};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;
use worker_pool::BoxError;

type Connector = HttpsConnector<HttpConnector>;

/// The largest token-endpoint answer read; real ones are a few hundred bytes.
const MAX_API_RESPONSE: usize = 1 << 20;

/// Clients for one upstream configuration.
pub struct Upstream {
    /// What these clients were built from; a reload compares it to decide reuse.
    pub config: UpstreamConfig,
    /// `Host` for forwarded requests, built once.
    pub host_header: http::HeaderValue,
    /// `{origin}{base_path}`: what `Link`/`Location` rewriting looks for.
    pub base_url: String,
    /// Forwarding pool off the worker threads: request bodies are the
    /// callers' streams, watched.
    forward: Client<Connector, CallerBody>,
    /// Token-call pool: small, fully known bodies.
    api: Client<Connector, Full<Bytes>>,
    /// What a worker's own forwarding pool is built with.
    connector: Connector,
    /// Identifies these clients in the workers' pools; a pool whose
    /// `Upstream` is gone (a reload replaced it) is dropped.
    alive: Arc<()>,
}

/// A forwarded request ready to send (see [`Upstream::prepare`]).
pub struct Outbound(Prepared);

enum Prepared {
    /// Head and body written out, for this worker's own connections.
    Lane(lane::Written),
    /// For hyper's client: a body that streams, TLS, or off the workers.
    /// Boxed: the rare case, and the common one's future carries this.
    Hyper(Box<http::Request<CallerBody>>),
}

/// A request head again, for hyper's client (extensions are not needed
/// upstream and are not cloneable).
fn copy_head(head: &http::request::Parts) -> http::request::Parts {
    let mut req = http::Request::new(());
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers.clone();
    req.into_parts().0
}

/// A forwarding pool on one worker thread.
type ForwardPool = Client<Connector, CallerBody>;

thread_local! {
    /// Set on the worker threads, whose forwarded requests use their own pools.
    static ON_WORKER: Cell<bool> = const { Cell::new(false) };
    /// This worker's forwarding pools, one per live `Upstream` (one, except
    /// just after a reload that changed the upstream).
    static WORKER_POOLS: RefCell<Vec<(Weak<()>, ForwardPool)>> = const { RefCell::new(Vec::new()) };
}

/// Makes this thread's forwarded requests use pools of its own.
pub fn mark_worker_thread() {
    ON_WORKER.set(true);
}

fn forward_pool(connector: Connector) -> ForwardPool {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// Why a forwarded request got no answer.
#[derive(Debug)]
pub enum ForwardError {
    /// No answer's head before the deadline.
    TimedOut,
    /// Connecting, writing or reading failed.
    Failed(BoxError),
}

impl From<BoxError> for ForwardError {
    fn from(e: BoxError) -> Self {
        ForwardError::Failed(e)
    }
}

/// Why an upstream call failed before a response arrived.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot connect to the upstream: {0}")]
    Unreachable(String),
    #[error("the upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the upstream's answer could not be read: {0}")]
    Body(String),
}

/// A small, fully read answer from a token call.
#[derive(Debug)]
pub struct ApiResponse {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Upstream {
    pub fn new(config: UpstreamConfig) -> Result<Upstream, String> {
        let connector = connector(&config)?;
        let forward = forward_pool(connector.clone());
        let api = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(connector.clone());
        let host_header =
            http::HeaderValue::from_str(config.authority.as_str()).map_err(|e| e.to_string())?;
        Ok(Upstream {
            base_url: config.base_url(),
            host_header,
            config,
            forward,
            api,
            connector,
            alive: Arc::new(()),
        })
    }

    /// Makes a forwarded request ready to send, with the upstream's `Host`
    /// and `authorization` in place of the caller's, without taking its
    /// head: a request the platform refuses with 401 is sent again with
    /// another token (see `proxy/retry.rs`), and on the common path its
    /// head is written out here once instead of being copied for that.
    pub fn prepare(
        &self,
        head: &http::request::Parts,
        authorization: &http::HeaderValue,
        body: CallerBody,
    ) -> Outbound {
        if ON_WORKER.get()
            && self.config.scheme == http::uri::Scheme::HTTP
            && let Some(body) = body.in_hand()
        {
            let written = lane::Written::new(head, &self.host_header, authorization, body);
            return Outbound(Prepared::Lane(written));
        }
        let mut head = copy_head(head);
        head.headers
            .insert(http::header::HOST, self.host_header.clone());
        head.headers
            .insert(http::header::AUTHORIZATION, authorization.clone());
        let req = http::Request::from_parts(head, body);
        Outbound(Prepared::Hyper(Box::new(req)))
    }

    /// Sends a forwarded request, up to the answer's head or `deadline`:
    /// through this thread's own connections on a worker, else through the
    /// shared pool.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice; see `proxy`"
    )]
    pub fn forward(
        &self,
        out: Outbound,
        deadline: Instant,
    ) -> impl Future<Output = Result<http::Response<UpstreamBody>, ForwardError>> {
        async move {
            match out.0 {
                Prepared::Lane(written) => lane::send(self, written, deadline).await,
                // Boxed: hyper's futures are large, and the common path
                // above should not carry their size.
                Prepared::Hyper(req) => Box::pin(self.forward_hyper(*req, deadline)).await,
            }
        }
    }

    async fn forward_hyper(
        &self,
        req: http::Request<CallerBody>,
        deadline: Instant,
    ) -> Result<http::Response<UpstreamBody>, ForwardError> {
        let sent = async {
            let sent: Result<_, BoxError> = if !ON_WORKER.get() {
                Ok(self.forward.request(req).await?)
            } else if self.config.scheme == http::uri::Scheme::HTTP {
                worker_pool::send(self, req).await
            } else {
                Ok(self.worker_client(req).await?)
            };
            sent
        };
        let resp = tokio::time::timeout_at(deadline, sent)
            .await
            .map_err(|_| ForwardError::TimedOut)??;
        Ok(resp.map(UpstreamBody::Hyper))
    }

    /// This worker's own hyper-util client for this upstream.
    fn worker_client(&self, req: http::Request<CallerBody>) -> ResponseFuture {
        WORKER_POOLS.with_borrow_mut(|pools| {
            let mine = |(owner, _): &(Weak<()>, ForwardPool)| {
                std::ptr::eq(owner.as_ptr(), Arc::as_ptr(&self.alive))
            };
            if let Some((_, pool)) = pools.iter().find(|p| mine(p)) {
                return pool.request(req);
            }
            // First request here since this upstream was built: forget the
            // pools of upstreams that are gone, and make this one's.
            pools.retain(|(owner, _)| owner.strong_count() > 0);
            let pool = forward_pool(self.connector.clone());
            let fut = pool.request(req);
            pools.push((Arc::downgrade(&self.alive), pool));
            fut
        })
    }

    /// Sends a request whose body is small and known, and reads a bounded answer.
    pub async fn call(&self, req: http::Request<Full<Bytes>>) -> Result<ApiResponse, CallError> {
        let timeout = self.config.response_timeout;
        let resp = match tokio::time::timeout(timeout, self.api.request(req)).await {
            Err(_) => return Err(CallError::Timeout(timeout)),
            Ok(Err(e)) => return Err(CallError::Unreachable(error_chain(&e))),
            Ok(Ok(resp)) => resp,
        };
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(timeout, Limited::new(body, MAX_API_RESPONSE).collect())
            .await
            .map_err(|_| CallError::Timeout(timeout))?
            .map_err(|e| CallError::Body(e.to_string()))?
            .to_bytes();
        Ok(ApiResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// The upstream URI of a forwarded request whose path, after any prefix
    /// stripping, is `forward_path`. The query goes on byte for byte. In the
    /// common case (nothing stripped, no base path) the caller's path and
    /// query are reused as they are: a reference-count bump, no copy.
    pub fn forward_uri(
        &self,
        inbound: &http::Uri,
        forward_path: &str,
    ) -> Result<http::Uri, http::Error> {
        let unchanged = self.config.base_path.is_empty() && forward_path == inbound.path();
        let pq = match (unchanged, inbound.path_and_query(), inbound.query()) {
            (true, Some(pq), _) => pq.clone(),
            (_, _, Some(q)) => http::uri::PathAndQuery::try_from(format!(
                "{}{forward_path}?{q}",
                self.config.base_path
            ))?,
            (_, _, None) => http::uri::PathAndQuery::try_from(format!(
                "{}{forward_path}",
                self.config.base_path
            ))?,
        };
        Ok(http::Uri::from_parts({
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(self.config.scheme.clone());
            parts.authority = Some(self.config.authority.clone());
            parts.path_and_query = Some(pq);
            parts
        })?)
    }

    /// An absolute URI on the upstream for `path_and_query` (which starts with `/`).
    pub fn uri(&self, path_and_query: &str) -> Result<http::Uri, http::Error> {
        let pq = if self.config.base_path.is_empty() {
            http::uri::PathAndQuery::try_from(path_and_query)?
        } else {
            http::uri::PathAndQuery::try_from(format!("{}{path_and_query}", self.config.base_path))?
        };
        http::Uri::builder()
            .scheme(self.config.scheme.clone())
            .authority(self.config.authority.clone())
            .path_and_query(pq)
            .build()
    }
}

fn connector(config: &UpstreamConfig) -> Result<Connector, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = &config.extra_ca_pem {
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("upstream_ca_file: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("upstream_ca_file: {e}"))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(config.connect_timeout));
    http.set_nodelay(true);
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http))
}

/// The error and its causes on one line: hyper's top-level messages alone
/// ("client error (Connect)") do not tell an operator what went wrong.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
