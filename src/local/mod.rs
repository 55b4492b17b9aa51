//! The proxy's own endpoints under `/_proxy/`, never forwarded.

pub mod oauth;

use crate::error::{ProxyError, json_error};
use crate::proxy::{Body, Proxy};
use crate::routes::{InstallationSelector, RouteCredential};
use crate::state::Snapshot;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use serde::Serialize;
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
        "/_proxy/oauth/login" => Ok(oauth::login(req.into_parts().0, snap, proxy).await),
        "/_proxy/oauth/callback" => Ok(oauth::callback(req.into_parts().0, snap, proxy).await),
        "/_proxy/healthz" => Ok(text(StatusCode::OK, "text/plain", "ok\n".into())),
        "/_proxy/readyz" => Ok(readyz(proxy, snap).await),
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

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    config: ConfigReadiness,
    credentials: Vec<CredentialReadiness>,
}

#[derive(Serialize)]
struct ConfigReadiness {
    loaded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_reload_error: Option<String>,
}

#[derive(Serialize)]
pub struct CredentialReadiness {
    pub credential: String,
    pub routes: Vec<String>,
    pub ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Checks every distinct credential the routes use. Cached tokens answer at
/// once; a missing one is minted, which is what readiness should prove.
pub async fn check_credentials(proxy: &Proxy, snap: &Snapshot) -> Vec<CredentialReadiness> {
    let mut seen: Vec<(RouteCredential, Vec<String>)> = Vec::new();
    for route in snap.config.routes.iter() {
        match seen.iter_mut().find(|(c, _)| *c == route.credential) {
            Some((_, routes)) => routes.push(route.name.to_string()),
            None => seen.push((route.credential.clone(), vec![route.name.to_string()])),
        }
    }
    let creds = &proxy.shared().credentials;
    let ctx = snap.context();
    let checks = seen.into_iter().map(|(credential, routes)| {
        let ctx = &ctx;
        async move {
            let outcome = match &credential {
                RouteCredential::Installation(InstallationSelector::Auto) => {
                    creds.check_listing(ctx).await
                }
                other => creds.token(ctx, other, "/").await.map(|_| ()),
            };
            let (error, reason) = match &outcome {
                Ok(()) => (None, None),
                Err(e) => {
                    let (_, code) = ProxyError::Credential(e.clone()).status_and_code();
                    (Some(code), Some(e.to_string()))
                }
            };
            CredentialReadiness {
                credential: credential.to_string(),
                routes,
                ready: outcome.is_ok(),
                error,
                reason,
            }
        }
    });
    futures_util::future::join_all(checks).await
}

async fn readyz(proxy: &Proxy, snap: &Snapshot) -> Response<Body> {
    let credentials = check_credentials(proxy, snap).await;
    let last_reload_error = proxy
        .shared()
        .reload
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .last_error
        .clone();
    // A failed reload leaves the previous config serving, so it is reported
    // but does not take the replica out of rotation.
    let ready = credentials.iter().all(|c| c.ready);
    let body = Readiness {
        ready,
        config: ConfigReadiness {
            loaded: true,
            last_reload_error,
        },
        credentials,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let json = serde_json::to_string_pretty(&body).unwrap_or_default();
    text(status, "application/json", json)
}
