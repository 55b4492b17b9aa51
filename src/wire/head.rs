//! Message heads: parsed by `httparse` into `http` types without copying
//! (names are interned by `http`, values and the target are slices of the
//! head's own bytes), and written back out.

use super::body::Framing;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HeaderName, HeaderValue, TRANSFER_ENCODING};
use http::{HeaderMap, Method, StatusCode, Uri, Version};
use std::mem::MaybeUninit;

/// As many headers as hyper's HTTP/1 parser takes; more is not an API call.
pub const MAX_HEADERS: usize = 100;

/// Why a head could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("malformed message head: {0}")]
    Parse(#[from] httparse::Error),
    #[error("invalid header or target in the message head")]
    Invalid,
    #[error("HTTP/1.0 and HTTP/1.1 only")]
    Version,
}

/// A header's name and value as offsets (and lengths) into the head.
type Span = (usize, usize, usize, usize);

/// As many spans as a typical head has, kept on the stack; more spill
/// into a vector (a fixed array for all 100 would be zeroed per message).
const INLINE_SPANS: usize = 24;

/// The spans of `headers` within `base`.
fn spans_of<'a>(
    base: &[u8],
    headers: &[httparse::Header<'_>],
    inline: &'a mut [Span; INLINE_SPANS],
    spill: &'a mut Vec<Span>,
) -> &'a [Span] {
    let span_of = |h: &httparse::Header<'_>| {
        let (n, nl) = span(base, h.name.as_bytes());
        let (v, vl) = span(base, h.value);
        (n, nl, v, vl)
    };
    if headers.len() <= INLINE_SPANS {
        for (slot, h) in inline.iter_mut().zip(headers) {
            *slot = span_of(h);
        }
        &inline[..headers.len()]
    } else {
        spill.extend(headers.iter().map(span_of));
        spill
    }
}

fn span(base: &[u8], part: &[u8]) -> (usize, usize) {
    (part.as_ptr() as usize - base.as_ptr() as usize, part.len())
}

fn version(v: Option<u8>) -> Result<Version, HeadError> {
    match v {
        Some(0) => Ok(Version::HTTP_10),
        Some(1) => Ok(Version::HTTP_11),
        _ => Err(HeadError::Version),
    }
}

fn headers(head: &Bytes, spans: &[Span]) -> Result<HeaderMap, HeadError> {
    let mut map = HeaderMap::with_capacity(spans.len());
    for &(n, nl, v, vl) in spans {
        let name = HeaderName::from_bytes(&head[n..n + nl]).map_err(|_| HeadError::Invalid)?;
        let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl))
            .map_err(|_| HeadError::Invalid)?;
        map.append(name, value);
    }
    Ok(map)
}

/// A request head at the start of `buf`, taken out of it when complete,
/// with the head's bytes (which its values share). `Ok(None)`: incomplete,
/// read more.
pub fn take_request(
    buf: &mut BytesMut,
) -> Result<Option<(http::request::Parts, Bytes)>, HeadError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let (method, path, version) = (req.method, req.path, version(req.version)?);
    let method = Method::from_bytes(method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadError::Invalid)?;
    let target = span(buf, path.unwrap_or_default().as_bytes());
    let (mut inline, mut spill) = ([(0, 0, 0, 0); INLINE_SPANS], Vec::new());
    let spans = spans_of(buf, req.headers, &mut inline, &mut spill);
    let head = buf.split_to(len).freeze();
    let built = Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1))
        .map_err(|_| HeadError::Invalid)
        .and_then(|uri| Ok((uri, headers(&head, spans)?)));
    let (uri, headers) = match built {
        Ok(built) => built,
        Err(e) => {
            // Left as it was, for whoever parses it next (hyper, which
            // answers the error).
            let mut whole = BytesMut::with_capacity(head.len() + buf.len());
            whole.extend_from_slice(&head);
            whole.extend_from_slice(buf);
            *buf = whole;
            return Err(e);
        }
    };
    let mut parts = http::Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some((parts, head)))
}

/// A response head at the start of `buf`, taken out of it when complete.
pub fn take_response(buf: &mut BytesMut) -> Result<Option<http::response::Parts>, HeadError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)?
    {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let version = version(resp.version)?;
    let status =
        StatusCode::from_u16(resp.code.unwrap_or_default()).map_err(|_| HeadError::Invalid)?;
    let (mut inline, mut spill) = ([(0, 0, 0, 0); INLINE_SPANS], Vec::new());
    let spans = spans_of(buf, resp.headers, &mut inline, &mut spill);
    let head = buf.split_to(len).freeze();
    let mut parts = http::Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = headers(&head, spans)?;
    Ok(Some(parts))
}

/// Whether a `Connection` header lists `token`.
fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether the peer keeps the connection open after this message.
pub fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    if version == Version::HTTP_11 {
        !connection_has(headers, "close")
    } else {
        connection_has(headers, "keep-alive")
    }
}

/// The one `Content-Length` of a message: `Err` for a malformed or
/// conflicting one (repeated values that agree are one value).
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, HeadError> {
    let mut found = None;
    for v in headers.get_all(CONTENT_LENGTH) {
        for part in v.to_str().map_err(|_| HeadError::Invalid)?.split(',') {
            let n: u64 = part.trim().parse().map_err(|_| HeadError::Invalid)?;
            if found.is_some_and(|f| f != n) {
                return Err(HeadError::Invalid);
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// A request's body framing (RFC 9112 §6.3): none unless it says so.
pub fn request_framing(headers: &HeaderMap) -> Result<Framing, HeadError> {
    if headers.contains_key(TRANSFER_ENCODING) {
        return Ok(Framing::Chunked);
    }
    Ok(match content_length(headers)? {
        None | Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
    })
}

/// A response's body framing (RFC 9112 §6.3), given the request's method.
pub fn response_framing(
    method: &Method,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<Framing, HeadError> {
    if method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    if let Some(te) = headers.get_all(TRANSFER_ENCODING).iter().next_back() {
        let chunked = te
            .to_str()
            .ok()
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        return Ok(if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        });
    }
    Ok(match content_length(headers)? {
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
}

/// `name: value\r\n` for each header but the framing ones, which the
/// writer sets itself.
fn put_headers(out: &mut BytesMut, headers: &HeaderMap) {
    for (name, value) in headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
}

fn put_length(out: &mut BytesMut, n: u64) {
    out.put_slice(b"content-length: ");
    out.put_slice(itoa::Buffer::new().format(n).as_bytes());
    out.put_slice(b"\r\n");
}

/// An HTTP/1.1 request head with `length` body bytes to follow (`None`:
/// no body and no `Content-Length`).
pub fn put_request(out: &mut BytesMut, parts: &http::request::Parts, length: Option<u64>) {
    out.put_slice(parts.method.as_str().as_bytes());
    out.put_u8(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    put_headers(out, &parts.headers);
    if let Some(n) = length {
        put_length(out, n);
    }
    out.put_slice(b"\r\n");
}

/// How a response head tells its body's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delimit {
    /// Nothing follows (`HEAD`, 204, 304); the headers stay as given.
    None,
    Length(u64),
    Chunked,
    /// HTTP/1.0 caller, length unknown: the close ends it.
    Close,
}

/// A response head, in the caller's HTTP version (as hyper answers an
/// HTTP/1.0 caller). `close` adds `connection: close`; for an HTTP/1.0
/// caller that keeps the connection, `connection: keep-alive` is added.
pub fn put_response(
    out: &mut BytesMut,
    parts: &http::response::Parts,
    delimit: Delimit,
    version: Version,
    close: bool,
    date: &[u8],
) {
    let http10 = version == Version::HTTP_10;
    out.put_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    out.put_slice(parts.status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or("<none>")
            .as_bytes(),
    );
    out.put_slice(b"\r\n");
    if delimit == Delimit::None {
        // A `HEAD` answer keeps the length the `GET` would have had.
        if let Some(n) = parts.headers.get(CONTENT_LENGTH) {
            out.put_slice(b"content-length: ");
            out.put_slice(n.as_bytes());
            out.put_slice(b"\r\n");
        }
    }
    put_headers(out, &parts.headers);
    match delimit {
        Delimit::Length(n) => put_length(out, n),
        Delimit::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
        Delimit::None | Delimit::Close => {}
    }
    if close {
        out.put_slice(b"connection: close\r\n");
    } else if http10 {
        out.put_slice(b"connection: keep-alive\r\n");
    }
    if !parts.headers.contains_key(http::header::DATE) {
        out.put_slice(b"date: ");
        out.put_slice(date);
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_parse_whole_and_leave_the_rest() {
        let mut buf = BytesMut::from(
            &b"GET /orgs/x?q=1 HTTP/1.1\r\nHost: a:1\r\nX-A: 1\r\nx-a: 2\r\n\r\nGET /"[..],
        );
        let (parts, head) = take_request(&mut buf).unwrap().unwrap();
        assert!(head.ends_with(b"\r\n\r\n"));
        assert_eq!(parts.method, Method::GET);
        assert_eq!(parts.uri.path(), "/orgs/x");
        assert_eq!(parts.uri.query(), Some("q=1"));
        assert_eq!(parts.headers["host"], "a:1");
        assert_eq!(parts.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(&buf[..], b"GET /");
        assert!(take_request(&mut buf).unwrap().is_none());
    }

    #[test]
    fn heads_with_many_headers_keep_them_all() {
        let mut wire = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..40 {
            wire.extend_from_slice(format!("x-h{i}: v{i}\r\n").as_bytes());
        }
        wire.extend_from_slice(b"\r\n");
        let mut buf = BytesMut::from(&wire[..]);
        let (parts, _) = take_request(&mut buf).unwrap().unwrap();
        assert_eq!(parts.headers.len(), 40);
        assert_eq!(parts.headers["x-h39"], "v39");
        assert!(buf.is_empty());
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let mut h = HeaderMap::new();
        assert_eq!(request_framing(&h).unwrap(), Framing::Empty);
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert_eq!(request_framing(&h).unwrap(), Framing::Length(12));
        assert_eq!(
            response_framing(&Method::HEAD, StatusCode::OK, &h).unwrap(),
            Framing::Empty
        );
        h.append(CONTENT_LENGTH, HeaderValue::from_static("13"));
        assert!(request_framing(&h).is_err(), "conflicting lengths");
        let mut h = HeaderMap::new();
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("gzip, chunked"));
        assert_eq!(
            response_framing(&Method::GET, StatusCode::OK, &h).unwrap(),
            Framing::Chunked
        );
        assert_eq!(
            response_framing(&Method::GET, StatusCode::OK, &HeaderMap::new()).unwrap(),
            Framing::Close
        );
        assert_eq!(
            response_framing(&Method::GET, StatusCode::NOT_MODIFIED, &HeaderMap::new()).unwrap(),
            Framing::Empty
        );
    }

    #[test]
    fn keep_alive_by_version() {
        let mut h = HeaderMap::new();
        assert!(keeps_alive(Version::HTTP_11, &h));
        assert!(!keeps_alive(Version::HTTP_10, &h));
        h.insert(CONNECTION, HeaderValue::from_static("Keep-Alive"));
        assert!(keeps_alive(Version::HTTP_10, &h));
        h.insert(CONNECTION, HeaderValue::from_static("foo, close"));
        assert!(!keeps_alive(Version::HTTP_11, &h));
    }

    #[test]
    fn response_heads_write_their_framing() {
        let mut parts = http::Response::new(()).into_parts().0;
        parts.headers.insert("x-a", HeaderValue::from_static("b"));
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from_static("999"));
        let mut out = BytesMut::new();
        put_response(
            &mut out,
            &parts,
            Delimit::Length(3),
            Version::HTTP_11,
            true,
            b"D",
        );
        assert_eq!(
            &out[..],
            b"HTTP/1.1 200 OK\r\nx-a: b\r\ncontent-length: 3\r\nconnection: close\r\ndate: D\r\n\r\n"
        );
    }
}
