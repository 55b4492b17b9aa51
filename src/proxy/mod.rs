//! The proxy service: one request from a local caller to the platform and back.
//!
//! `handle` never fails: it wraps `try_handle`, which uses `?`, and turns any
//! [`ProxyError`] into the contract's response in one place.
//!
//! The functions a forwarded request passes through (here, `spend.rs`,
//! `forward.rs`, `retry.rs` and `upstream/`) return `async move` blocks
//! instead of being `async fn`s: an `async fn` keeps its arguments twice in
//! its future (rust-lang/rust#62958), and each future is copied into the
//! one above it as it starts, so on this path that cost a third of the
//! futures' size in copying on every request.

pub mod clients;
mod forward;
pub mod guard;
pub mod headers;
mod retry;
mod spend;

use crate::body::{Body, Inbound};
use crate::credentials::Credentials;
use crate::error::ProxyError;
use crate::routes::Miss;
use crate::state::{Shared, Snapshot};
use http::uri::Authority;
use http::{Request, Response};
use std::net::SocketAddr;
use std::sync::Arc;

/// What the server knows about the connection a request came on.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    /// The listener's address; the fallback origin for rewritten links when
    /// a caller sends no `Host`.
    pub local: Option<SocketAddr>,
}

/// The service: cheap to clone, one per connection.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

impl Proxy {
    pub fn new(shared: Arc<Shared>) -> Self {
        Proxy { shared }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice; see `proxy`"
    )]
    pub fn handle(
        &self,
        req: Request<Inbound>,
        conn: &ConnInfo,
    ) -> impl Future<Output = Response<Body>> {
        async move {
            // One snapshot for the whole request: a reload mid-request does not
            // change the route, credential or upstream it uses.
            let snapshot = self.shared.snapshot.load_full();
            let mut observed = crate::metrics::Observed::start(
                &self.shared.metrics,
                req.method(),
                req.uri().path(),
            );
            let audit = crate::activity::AuditStart::begin(&snapshot.config, &req, || {
                clients::identify(req.headers(), &snapshot.config.clients)
                    .ok()
                    .flatten()
            });
            let resp = match self
                .try_handle(req, conn, &snapshot, &mut observed.route)
                .await
            {
                Ok(resp) => resp,
                Err(e) => e.into_response(observed.route.as_deref()),
            };
            observed.finish(&resp);
            self.shared.activity.observe(observed.route.as_ref(), &resp);
            if let Some(audit) = audit {
                let route = observed.route.as_ref();
                Box::pin(audit.finish(&snapshot, &self.shared.credentials, route, &resp)).await;
            }
            resp
        }
    }

    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice; see `proxy`"
    )]
    fn try_handle(
        &self,
        mut req: Request<Inbound>,
        conn: &ConnInfo,
        snap: &Arc<Snapshot>,
        route_name: &mut Option<Arc<str>>,
    ) -> impl Future<Output = Result<Response<Body>, ProxyError>> {
        async move {
            let path = req.uri().path();
            // Before anything else, admin endpoints included: a web page must not
            // reach a credential, nor learn whether a client key is needed.
            let host = forward::inbound_host(&req)?;
            let policy = &snap.config.browser;
            let host_str = host.as_ref().map(Authority::as_str);
            guard::check(req.method(), path, req.headers(), host_str, policy)?;
            let client = clients::identify(req.headers(), &snap.config.clients);
            if path == "/_proxy" || path.starts_with("/_proxy/") {
                // The admin endpoints read no keys themselves: who asks is
                // decided here, and each decides what it shows to whom.
                let caller = client.map(|_| ());
                // Boxed: the admin pages' futures are large, and forwarded
                // requests should not carry their size.
                return Box::pin(crate::admin::handle(req, &self.shared, snap, caller)).await;
            }
            let client = client?;
            let overrides = guard::method_overrides(req.headers())?;
            // The path is the caller's: the message names the rule, never the path.
            // Scoped: the reading is not kept across the awaits below.
            let selected = {
                let decoded = crate::routes::path::checked_reading(path).map_err(|why| {
                    ProxyError::BadRequest(format!("{why}; send the normalised path"))
                })?;
                let (routes, decoded) = (&snap.config.routes, decoded.as_deref());
                let client = client.as_deref();
                routes.select_read(req.method(), &overrides, path, decoded, host_str, client)
            };
            let route = selected.map_err(|miss| match miss {
                Miss::NoRoute => ProxyError::NoRoute {
                    method: req.method().clone(),
                    path: path.to_owned(),
                },
                Miss::ForbiddenClient { route } => ProxyError::ForbiddenClient { route },
                Miss::AmbiguousPath => ProxyError::BadRequest(
                    "the path, decoded, would take another route; send the normalised path".into(),
                ),
            })?;
            *route_name = Some(route.name.clone());
            let forward_path = route.forward_path(path);
            // The route's app and scope: the credential (and so the token, the
            // quota and the cache entries) belongs to both.
            let ctx = snap.context_for(route);
            let credentials = &self.shared.credentials;
            // A lookup (an installation by account) only when needed, boxed:
            // the common path carries no future of that size.
            let credential = match Credentials::key_at_once(&ctx, &route.credential) {
                Some(key) => key,
                None => Box::pin(credentials.key(&ctx, &route.credential, forward_path)).await?,
            };
            // Not started until the quota lets the request go: a refused
            // request mints nothing. A cached token is taken at once.
            let token = spend::TokenSource {
                cached: credentials.cached_token(&ctx, &credential),
                mint: || Box::pin(credentials.token_for_key(&ctx, &credential)),
            };
            let uri = snap
                .upstream
                .forward_uri(req.uri(), forward_path)
                .map_err(|e| {
                    ProxyError::BadRequest(format!("cannot build the upstream URI: {e}"))
                })?;
            let origin = forward::CallerOrigin::new(host.clone(), conn, route.reverse_prefix());
            let heal = retry::Heal {
                credentials,
                ctx: &ctx,
                credential: &credential,
                metrics: &self.shared.metrics,
            };
            forward::default_api_version(req.headers_mut(), route.api_version.as_ref());
            spend::spend(&self.shared, snap, req, uri, token, origin, heal).await
        }
    }
}
