//! The proxy service: one request from a local caller to the platform and back.
//!
//! `handle` never fails: it wraps `try_handle`, which uses `?`, and turns any
//! [`ProxyError`] into the contract's response in one place.

pub mod clients;
mod forward;
pub mod headers;

use crate::error::ProxyError;
use crate::routes::Miss;
use crate::state::{Shared, Snapshot};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;

/// Response bodies: the upstream's stream, or a small body the proxy made.
pub type Body = Either<Incoming, Full<Bytes>>;

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

    pub async fn handle(&self, req: Request<Incoming>, conn: &ConnInfo) -> Response<Body> {
        // One snapshot for the whole request: a reload mid-request does not
        // change the route, credential or upstream it uses.
        let snapshot = self.shared.snapshot.load_full();
        let mut observed =
            crate::metrics::Observed::start(&self.shared.metrics, req.method(), req.uri().path());
        let resp = match self
            .try_handle(req, conn, &snapshot, &mut observed.route)
            .await
        {
            Ok(resp) => resp,
            Err(e) => e.into_response(observed.route.as_deref()),
        };
        observed.finish(&resp);
        resp
    }

    async fn try_handle(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
        snap: &Arc<Snapshot>,
        route_name: &mut Option<Arc<str>>,
    ) -> Result<Response<Body>, ProxyError> {
        let path = req.uri().path();
        if path == "/_proxy" || path.starts_with("/_proxy/") {
            return crate::local::handle(self, req, snap).await;
        }
        let client = clients::identify(req.headers(), &snap.config.clients)?;
        if crate::routes::has_dot_segment(path) {
            return Err(ProxyError::BadRequest(
                "the path has a `.` or `..` segment; send the normalised path".into(),
            ));
        }
        let route = snap
            .config
            .routes
            .select(
                req.method(),
                path,
                forward::inbound_host(&req),
                client.as_deref(),
            )
            .map_err(|miss| match miss {
                Miss::NoRoute => ProxyError::NoRoute {
                    method: req.method().clone(),
                    path: path.to_owned(),
                },
                Miss::ForbiddenClient { route } => ProxyError::ForbiddenClient { route },
            })?;
        *route_name = Some(route.name.clone());
        let forward_path = route.forward_path(path);
        let token = self
            .shared
            .credentials
            .token(&snap.context(), &route.credential, forward_path)
            .await?;
        let uri = snap
            .upstream
            .forward_uri(req.uri(), forward_path)
            .map_err(|e| ProxyError::BadRequest(format!("cannot build the upstream URI: {e}")))?;
        let origin = forward::CallerOrigin::new(&req, conn, route.reverse_prefix());
        forward::send(req, uri, snap, &token, origin, &self.shared.metrics).await
    }
}
