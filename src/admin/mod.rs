//! The proxy's own endpoints under `/_proxy/`, never forwarded.
//!
//! The proxy service dispatches here; these endpoints take the shared state
//! they read, never the service, so imports run one way.

pub mod login;
mod readyz;
mod status;

pub use readyz::{CHECK_WAIT, CredentialReadiness, check_credentials};

use crate::body::Body;
use crate::body::Inbound;
use crate::error::{ProxyError, json_error};
use crate::state::{Shared, Snapshot};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use std::sync::Arc;

/// Answers a `/_proxy/` request. `caller` is whether the request presented a
/// valid client key (always so without `clients:`), as the service found it.
pub async fn handle(
    req: Request<Inbound>,
    shared: &Arc<Shared>,
    snap: &Arc<Snapshot>,
    caller: Result<(), ProxyError>,
) -> Result<Response<Body>, ProxyError> {
    let path = req.uri().path();
    let known_caller = caller.is_ok();
    let open = matches!(
        path,
        "/_proxy/healthz" | "/_proxy/readyz" | "/_proxy/oauth/login" | "/_proxy/oauth/callback"
    );
    if path == "/_proxy/status" && req.method() == Method::GET {
        // Asks for the key itself (Basic auth), so a browser can prompt.
        return Ok(status::status(&req.into_parts().0, shared, snap, caller).await);
    }
    if !open {
        // Everything else (metrics) tells about the deployment: callers only.
        caller?;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(ProxyError::BadRequest(format!("{path} answers GET only")));
    }
    match path {
        "/_proxy/oauth/login" => Ok(login::login(req.into_parts().0, snap).await),
        "/_proxy/oauth/callback" => {
            let credentials = &shared.credentials;
            Ok(login::callback(req.into_parts().0, snap, credentials).await)
        }
        "/_proxy/healthz" => Ok(text(StatusCode::OK, "text/plain", "ok\n".into())),
        "/_proxy/readyz" => {
            let req = req.into_parts().0;
            Ok(readyz::readyz(shared, snap, &req, known_caller).await)
        }
        "/_proxy/metrics" => Ok(text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.metrics.encode(),
        )),
        _ => Ok(json_error(
            StatusCode::NOT_FOUND,
            "no_route",
            &format!("{path} is not an endpoint of the proxy (healthz, readyz, metrics, status)"),
        )),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    resp
}
