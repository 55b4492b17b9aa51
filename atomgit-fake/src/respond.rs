//! Response building for the fake: one boxed body type for every endpoint,
//! helpers for JSON / text / HTML / form / redirect answers, and the
//! generated download body that never holds more than one chunk in memory.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use http::{HeaderValue, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

pub(super) type Body = BoxBody<Bytes, Infallible>;
pub(super) type Resp = Response<Body>;

/// Download chunk size.
const CHUNK: usize = 64 * 1024;
/// Download byte `i` is `i % PERIOD`.
const PERIOD: usize = 251;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn with_type(status: StatusCode, content_type: &'static str, body: Body) -> Resp {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

pub(super) fn json(status: StatusCode, v: &serde_json::Value) -> Resp {
    with_type(status, "application/json", full(v.to_string()))
}

/// JSON already written out.
pub(super) fn json_text(status: StatusCode, text: String) -> Resp {
    with_type(status, "application/json", full(text))
}

/// The platform's error shape: `{"message": "..."}`.
pub(super) fn message(status: StatusCode, msg: &str) -> Resp {
    json(status, &serde_json::json!({ "message": msg }))
}

pub(super) fn text(status: StatusCode, s: impl Into<String>) -> Resp {
    with_type(status, "text/plain; charset=utf-8", full(s.into()))
}

pub(super) fn html(status: StatusCode, s: impl Into<String>) -> Resp {
    with_type(status, "text/html; charset=utf-8", full(s.into()))
}

/// An `application/x-www-form-urlencoded` body, as the classic OAuth token
/// endpoint answers when the client did not ask for JSON.
pub(super) fn form(status: StatusCode, pairs: &[(&str, String)]) -> Resp {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        ser.append_pair(k, v);
    }
    with_type(
        status,
        "application/x-www-form-urlencoded",
        full(ser.finish()),
    )
}

/// A 302 to `location`; a location that cannot be a header value is a bug in
/// the fake's URL building, reported as a 500 rather than a panic.
pub(super) fn redirect(location: &str) -> Resp {
    match HeaderValue::from_str(location) {
        Ok(v) => {
            let mut resp = Response::new(full(Bytes::new()));
            *resp.status_mut() = StatusCode::FOUND;
            resp.headers_mut().insert(LOCATION, v);
            resp
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "bad redirect location"),
    }
}

/// Adds a header whose value was built from request data; invalid values are
/// dropped (the fake only builds them from URLs it produced itself).
pub(super) fn add_header(resp: &mut Resp, name: http::header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().append(name, v);
    }
}

/// Status for the configured failure mode; an out-of-range code becomes 500.
pub(super) fn status_or_500(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// `n` bytes of the download pattern, streamed in 64 KiB chunks.
pub(super) fn download(n: u64) -> Resp {
    let body = PatternBody {
        remaining: n,
        offset: 0,
    };
    let mut resp = with_type(StatusCode::OK, "application/octet-stream", body.boxed());
    resp.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(n));
    resp
}

/// One period-aligned buffer shared by all downloads: every chunk is a
/// zero-copy slice of it starting at `offset % PERIOD`.
fn pattern() -> &'static Bytes {
    static PATTERN: OnceLock<Bytes> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let v: Vec<u8> = (0..CHUNK + PERIOD).map(|i| (i % PERIOD) as u8).collect();
        Bytes::from(v)
    })
}

/// A body generating `remaining` more bytes of the pattern on demand.
struct PatternBody {
    remaining: u64,
    offset: u64,
}

impl http_body::Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        // `len` is at most CHUNK, so the conversion cannot truncate.
        let len = self.remaining.min(CHUNK as u64) as usize;
        let start = (self.offset % PERIOD as u64) as usize;
        let chunk = pattern().slice(start..start + len);
        self.offset += len as u64;
        self.remaining -= len as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
