//! The proxy's own endpoints under `/_proxy/`, never forwarded.

pub mod login;
mod readyz;

pub use readyz::{CHECK_WAIT, CredentialReadiness, check_credentials};

use crate::body::Body;
use crate::error::{ProxyError, json_error};
use crate::proxy::Proxy;
use crate::state::Snapshot;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use std::sync::Arc;

pub async fn handle(
    proxy: &Proxy,
    req: Request<Incoming>,
    snap: &Arc<Snapshot>,
) -> Result<Response<Body>, ProxyError> {
    let path = req.uri().path();
    let open = matches!(
        path,
        "/_proxy/healthz" | "/_proxy/readyz" | "/_proxy/oauth/login" | "/_proxy/oauth/callback"
    );
    if !open {
        // Everything else (metrics) tells about the deployment: callers only.
        crate::proxy::clients::identify(req.headers(), &snap.config.clients)?;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(ProxyError::BadRequest(format!("{path} answers GET only")));
    }
    match path {
        "/_proxy/oauth/login" => Ok(login::login(req.into_parts().0, snap, proxy).await),
        "/_proxy/oauth/callback" => Ok(login::callback(req.into_parts().0, snap, proxy).await),
        "/_proxy/healthz" => Ok(text(StatusCode::OK, "text/plain", "ok\n".into())),
        "/_proxy/readyz" => Ok(readyz::readyz(proxy, snap, &req.into_parts().0).await),
        "/_proxy/metrics" => Ok(text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            proxy.shared().metrics.encode(),
        )),
        _ => Ok(json_error(
            StatusCode::NOT_FOUND,
            "no_route",
            &format!("{path} is not an endpoint of the proxy (healthz, readyz, metrics)"),
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
