//! Errors the proxy answers itself, and the one place they become responses.
//!
//! Every variant maps to the contract's status and code here, and here alone
//! it is decided what is logged: a caller's mistake is not the operator's
//! problem and logs at debug; the platform failing logs at warn.

use crate::credentials::CredentialError;
use crate::proxy::Body;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};
use std::sync::Arc;
use std::time::Duration;

/// The header naming the code of an error the proxy made itself.
pub const ERROR_HEADER: &str = "x-atomgit-proxy-error";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "a client key is required: send it as `Authorization: Bearer KEY`, `Authorization: token KEY`, or as the Basic auth password"
    )]
    UnauthorizedClient,
    #[error("route `{route}` does not admit this client")]
    ForbiddenClient { route: Arc<str> },
    #[error("no route matches {method} {path}")]
    NoRoute { method: http::Method, path: String },
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error("upstream unreachable: {0}")]
    UpstreamUnreachable(String),
    #[error("the upstream sent no response headers within {0:?}")]
    UpstreamTimeout(Duration),
}

impl ProxyError {
    /// The contract's status and code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ProxyError::UnauthorizedClient => (StatusCode::UNAUTHORIZED, "unauthorized_client"),
            ProxyError::ForbiddenClient { .. } => (StatusCode::FORBIDDEN, "forbidden_client"),
            ProxyError::NoRoute { .. } => (StatusCode::NOT_FOUND, "no_route"),
            ProxyError::Credential(e) => match e {
                CredentialError::InstallationNotFound(_) => {
                    (StatusCode::NOT_FOUND, "installation_not_found")
                }
                CredentialError::NoOwnerInPath => (StatusCode::BAD_REQUEST, "bad_request"),
                CredentialError::TokenEndpoint(_) => {
                    (StatusCode::BAD_GATEWAY, "token_endpoint_failed")
                }
                CredentialError::GrantMissing(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "grant_missing")
                }
                CredentialError::GrantRevoked(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "grant_revoked")
                }
                CredentialError::Internal(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal_error")
                }
            },
            ProxyError::UpstreamUnreachable(_) => (StatusCode::BAD_GATEWAY, "upstream_unreachable"),
            ProxyError::UpstreamTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
        }
    }

    /// Logs what an operator should see. Messages never hold a token or key:
    /// they are built from our own words, status codes and config names.
    fn log(&self, route: Option<&str>) {
        let (status, code) = self.status_and_code();
        let route = route.unwrap_or("-");
        match self {
            ProxyError::Credential(CredentialError::Internal(_)) => {
                tracing::error!(%code, route, status = status.as_u16(), "{self}")
            }
            ProxyError::Credential(
                CredentialError::TokenEndpoint(_) | CredentialError::GrantRevoked(_),
            )
            | ProxyError::UpstreamUnreachable(_)
            | ProxyError::UpstreamTimeout(_) => {
                tracing::warn!(%code, route, status = status.as_u16(), "{self}")
            }
            _ => tracing::debug!(%code, route, status = status.as_u16(), "{self}"),
        }
    }

    /// The response: JSON `{error, message}` and the error header.
    pub fn into_response(self, route: Option<&str>) -> Response<Body> {
        self.log(route);
        let (status, code) = self.status_and_code();
        json_error(status, code, &self.to_string())
    }
}

/// The code of an error the proxy answered itself, carried in the response's
/// extensions so metrics read it typed instead of parsing the header back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);

/// A JSON error response in the contract's shape.
pub fn json_error(status: StatusCode, code: &'static str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(ERROR_HEADER, HeaderValue::from_static(code));
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    resp.extensions_mut().insert(ErrorCode(code));
    resp
}
