//! The HTTP client every test talks to the proxy with, and the whole
//! answers it reads.

use super::private_key_pem;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::convert::Infallible;

/// Request bodies: a small buffer or a generated stream, as one type.
pub type ReqBody = BoxBody<Bytes, Infallible>;

/// The client every test talks to the proxy with.
pub type HttpClient = Client<HttpConnector, ReqBody>;

/// A plain HTTP/1.1 client (no proxy settings, no TLS).
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// An HTTP/2 client speaking prior knowledge (h2c).
pub fn h2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

pub fn full(body: impl Into<Bytes>) -> ReqBody {
    Full::new(body.into()).boxed()
}

pub fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: ReqBody,
) -> Request<ReqBody> {
    let mut req = Request::builder()
        .method(method)
        .uri(url)
        .body(body)
        .expect("a valid test request");
    for (name, value) in headers {
        req.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"),
            HeaderValue::from_str(value).expect("a valid header value"),
        );
    }
    req
}

/// A whole answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// Asserts this is one of the proxy's own errors with `status` and `code`,
    /// in the contract's shape, and that it leaks no credential.
    pub fn assert_proxy_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(
            self.headers
                .get("x-atomgit-proxy-error")
                .and_then(|v| v.to_str().ok()),
            Some(code),
            "headers: {:?}",
            self.headers
        );
        let json = self.json();
        assert_eq!(json["error"], code, "{json}");
        assert!(json["message"].is_string(), "{json}");
        assert_no_secret(&self.text());
    }
}

/// Asserts `text` holds no token, key material or PEM armour.
pub fn assert_no_secret(text: &str) {
    assert!(!text.contains("ats_"), "a token leaked: {text}");
    assert!(!text.contains("atu_"), "a token leaked: {text}");
    assert!(!text.contains("BEGIN"), "PEM armour leaked: {text}");
    let key_body = private_key_pem()
        .lines()
        .nth(1)
        .expect("a PEM has a body line");
    assert!(!text.contains(key_body), "the private key leaked: {text}");
}

/// Sends `req` and reads the whole answer; fails the test if either fails.
pub async fn send(client: &HttpClient, req: Request<ReqBody>) -> Reply {
    let what = format!("{} {}", req.method(), req.uri());
    try_send(client, req)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Sends `req` and reads the whole answer, or says why it could not.
pub async fn try_send(client: &HttpClient, req: Request<ReqBody>) -> Result<Reply, String> {
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("the answer's body cannot be read: {e}"))?
        .to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// GET `url` with `headers`, reading the whole answer.
pub async fn get(client: &HttpClient, url: &str, headers: &[(&str, &str)]) -> Reply {
    send(
        client,
        request(Method::GET, url, headers, full(Bytes::new())),
    )
    .await
}
