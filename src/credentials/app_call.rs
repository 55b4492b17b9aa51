//! Calls made as the app (with the app JWT): signed, and retried once on
//! the platform's clock when the platform refused the JWT and its clock is
//! off (see `clock.rs`).

use super::app_jwt::AppJwt;
use super::{CredentialError, clock};
use crate::config::AppConfig;
use crate::upstream::{ApiResponse, Upstream};
use bytes::Bytes;
use http_body_util::Full;
use std::sync::Arc;

/// What app calls are signed with: the app and its JWT (with its clock offset).
pub struct AppSigner {
    pub app: Arc<AppConfig>,
    pub jwt: Arc<AppJwt>,
}

/// An app (JWT) call to `path`, retried once on the platform's clock when
/// the platform refused the JWT and its clock is off.
pub(super) async fn app_call(
    upstream: &Upstream,
    signer: &AppSigner,
    method: http::Method,
    path: &str,
    body: Option<Bytes>,
) -> Result<ApiResponse, CredentialError> {
    let mut retried = false;
    loop {
        let jwt = signer
            .jwt
            .get(&signer.app)
            .map_err(|e| CredentialError::Internal(format!("cannot sign the app JWT: {e}")))?;
        let req = request(upstream, method.clone(), path, &jwt, body.clone())?;
        let resp = upstream
            .call(req)
            .await
            .map_err(CredentialError::from_call)?;
        if resp.status != http::StatusCode::UNAUTHORIZED || retried {
            return Ok(resp);
        }
        match clock::platform_offset(&resp.headers) {
            Some(seen) if signer.jwt.correct(&signer.app, seen) => retried = true,
            _ => return Ok(resp),
        }
    }
}

fn request(
    upstream: &Upstream,
    method: http::Method,
    path: &str,
    jwt: &str,
    body: Option<Bytes>,
) -> Result<http::Request<Full<Bytes>>, CredentialError> {
    let uri = upstream
        .uri(path)
        .map_err(|e| CredentialError::Internal(e.to_string()))?;
    let mut auth = http::HeaderValue::try_from(format!("Bearer {jwt}"))
        .map_err(|e| CredentialError::Internal(e.to_string()))?;
    auth.set_sensitive(true);
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::AUTHORIZATION, auth)
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, crate::USER_AGENT);
    let req = match &body {
        Some(_) => req.header(http::header::CONTENT_TYPE, "application/json"),
        None => req,
    };
    req.body(Full::new(body.unwrap_or_default()))
        .map_err(|e| CredentialError::Internal(e.to_string()))
}
