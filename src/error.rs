//! Errors the proxy answers itself, and the one place they become responses.
//!
//! Every variant maps to the contract's status and code here, and here alone
//! it is decided what is logged: a caller's mistake is not the operator's
//! problem and logs at debug; the platform failing logs at warn.

use crate::body::Body;
use crate::credentials::CredentialError;
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
    #[error(
        "cross-site request refused: it came from a web page (Origin or Sec-Fetch-Site); list the page's origin in allowed_origins to allow it"
    )]
    ForbiddenOrigin,
    #[error(
        "this Host is not served without a client key (DNS rebinding defence): use localhost, a loopback address, a listen address or a route's match.host, or list it in allowed_hosts"
    )]
    ForbiddenHost,
    #[error("{0} is not allowed through this proxy")]
    MethodNotAllowed(http::Method),
    #[error("no route matches {method} {path}")]
    NoRoute { method: http::Method, path: String },
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error("upstream unreachable: {0}")]
    UpstreamUnreachable(String),
    #[error("the upstream sent no response headers within {0:?}")]
    UpstreamTimeout(Duration),
    /// The credential's budget is spent, or no slot within `quota.max_wait`.
    #[error(transparent)]
    RateLimited(#[from] crate::quota::Rejected),
    /// The contract has no code of its own for this: a caller's fault.
    #[error("the request head is larger than limits.max_header_bytes ({limit} bytes)")]
    HeadTooLarge { limit: usize },
}

impl ProxyError {
    /// The contract's status and code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ProxyError::UnauthorizedClient => (StatusCode::UNAUTHORIZED, "unauthorized_client"),
            ProxyError::ForbiddenClient { .. } => (StatusCode::FORBIDDEN, "forbidden_client"),
            ProxyError::ForbiddenOrigin => (StatusCode::FORBIDDEN, "forbidden_origin"),
            ProxyError::ForbiddenHost => (StatusCode::FORBIDDEN, "forbidden_host"),
            ProxyError::MethodNotAllowed(_) => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            ProxyError::NoRoute { .. } => (StatusCode::NOT_FOUND, "no_route"),
            ProxyError::Credential(e) => match e {
                CredentialError::InstallationNotFound(_) => {
                    (StatusCode::NOT_FOUND, "installation_not_found")
                }
                CredentialError::NoOwnerInPath => (StatusCode::BAD_REQUEST, "bad_request"),
                CredentialError::TokenEndpoint(_) => {
                    (StatusCode::BAD_GATEWAY, "token_endpoint_failed")
                }
                CredentialError::GrantMissing(_) | CredentialError::GrantForOtherPlatform(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "grant_missing")
                }
                CredentialError::GrantRevoked(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "grant_revoked")
                }
                CredentialError::StoreUnavailable(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
                }
                CredentialError::Internal(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal_error")
                }
            },
            ProxyError::UpstreamUnreachable(_) => (StatusCode::BAD_GATEWAY, "upstream_unreachable"),
            ProxyError::UpstreamTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            ProxyError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ProxyError::HeadTooLarge { .. } => {
                (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "bad_request")
            }
        }
    }

    /// Logs what an operator should see. Messages never hold a token or key:
    /// they are built from our own words, status codes and config names.
    /// They may quote the caller (a path, an account decoded from one), so
    /// they are written escaped.
    fn log(&self, route: Option<&str>) {
        let (status, code) = self.status_and_code();
        let route = route.unwrap_or("-");
        match self {
            ProxyError::Credential(CredentialError::Internal(_)) => {
                tracing::error!(%code, route, status = status.as_u16(), "{}", Escaped(&self.to_string()))
            }
            ProxyError::Credential(
                CredentialError::TokenEndpoint(_)
                | CredentialError::GrantRevoked(_)
                | CredentialError::StoreUnavailable(_),
            )
            | ProxyError::UpstreamUnreachable(_)
            | ProxyError::UpstreamTimeout(_) => {
                tracing::warn!(%code, route, status = status.as_u16(), "{}", Escaped(&self.to_string()))
            }
            _ => {
                tracing::debug!(%code, route, status = status.as_u16(), "{}", Escaped(&self.to_string()))
            }
        }
    }

    /// The response: JSON `{error, message}` and the error header.
    pub fn into_response(self, route: Option<&str>) -> Response<Body> {
        self.log(route);
        let (status, code) = self.status_and_code();
        let mut resp = json_error(status, code, &self.to_string());
        if let ProxyError::RateLimited(rejected) = &self {
            let headers = resp.headers_mut();
            let secs = crate::quota::budget::retry_after_secs(rejected.retry_after);
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
            if let Some(last) = &rejected.last {
                last.write_headers(headers);
            }
        }
        resp
    }
}

/// Text for a log line with control characters (a decoded `%0A`, an escape
/// sequence) and line separators written as escapes, so a value from a
/// caller cannot start a forged line. Everything else is written as is.
pub struct Escaped<'a>(pub &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.chars() {
            if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_text_cannot_break_lines() {
        let text = Escaped("no route for /repos/ev\nil INFO forged\r\u{1b}[31m\u{2028}x, 名前")
            .to_string();
        assert_eq!(
            text,
            "no route for /repos/ev\\nil INFO forged\\r\\u{1b}[31m\\u{2028}x, 名前"
        );
    }
}
