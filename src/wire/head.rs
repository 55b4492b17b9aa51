//! Message heads: parsed by `httparse` into `http` types without copying
//! (names are interned by `http`, values and the target are slices of the
//! head's own bytes), and written back out.

use super::body::Framing;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{
    AUTHORIZATION, CONNECTION, CONTENT_LENGTH, EXPECT, HOST, HeaderName, HeaderValue,
    TRANSFER_ENCODING,
};
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

/// The headers of a head; `room` more can be added without the map growing
/// (a forwarded request may get `X-Api-Version` and the cache's
/// conditional headers).
fn headers(head: &Bytes, spans: &[Span], room: usize) -> Result<HeaderMap, HeadError> {
    let mut map = spare_map(spans.len() + room);
    for &(n, nl, v, vl) in spans {
        let name = HeaderName::from_bytes(&head[n..n + nl]).map_err(|_| HeadError::Invalid)?;
        let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl))
            .map_err(|_| HeadError::Invalid)?;
        map.append(name, value);
    }
    Ok(map)
}

thread_local! {
    /// Header maps of messages this thread is done with, emptied: a head
    /// parsed into one of them allocates nothing for its map.
    static SPARE_MAPS: std::cell::RefCell<Vec<HeaderMap>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// How many spare maps a thread keeps, and the largest it keeps: enough for
/// the messages in flight on a busy worker, little memory when idle.
const SPARE_MAPS_KEPT: usize = 32;
const SPARE_MAP_MAX_CAPACITY: usize = 32;

/// An empty map with room for `n` headers, a spare one if there is one.
fn spare_map(n: usize) -> HeaderMap {
    match SPARE_MAPS.with_borrow_mut(Vec::pop) {
        Some(mut map) => {
            map.reserve(n);
            map
        }
        None => HeaderMap::with_capacity(n),
    }
}

/// Gives a message's header map back for the next head this thread parses.
pub fn recycle(mut map: HeaderMap) {
    if map.capacity() > SPARE_MAP_MAX_CAPACITY {
        return;
    }
    map.clear();
    SPARE_MAPS.with_borrow_mut(|spare| {
        if spare.len() < SPARE_MAPS_KEPT {
            spare.push(map);
        }
    });
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
        .and_then(|uri| Ok((uri, headers(&head, spans, 3)?)));
    let (uri, headers) = match built {
        Ok(built) => built,
        Err(e) => {
            // Left as it was, for whoever parses it next (hyper, which
            // answers the error).
            *buf = rejoined(&head, buf);
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

/// A head taken out of a buffer put back in front of what followed it.
pub fn rejoined(head: &[u8], rest: &[u8]) -> BytesMut {
    let mut whole = BytesMut::with_capacity(head.len() + rest.len());
    whole.extend_from_slice(head);
    whole.extend_from_slice(rest);
    whole
}

/// Up to this many headers, looking at each name once is cheaper than a
/// hashed lookup of every name that is usually absent.
const SCAN_AT_MOST: usize = 16;

/// Whether `headers` surely holds no name `is_one` picks (`false`: maybe
/// some, look them up). API messages carry a handful of headers and
/// rarely the ones a proxy removes or checks for, so one pass comparing
/// names beats hashing each name sought.
pub fn surely_none(headers: &HeaderMap, is_one: impl Fn(&HeaderName) -> bool) -> bool {
    headers.len() <= SCAN_AT_MOST && !headers.keys().any(is_one)
}

/// The length a message's (first) `Content-Length` declares, if it is a
/// number. Framing decisions use [`request_shape`] and [`response_shape`],
/// which also refuse conflicting values; this is for a message already
/// framed, or a size guess.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    length_value(headers.get(CONTENT_LENGTH)?.as_bytes())
}

/// One `Content-Length` value: digits only (RFC 9110 §8.6: no sign, unlike
/// `str::parse`), with spaces or tabs around them.
fn length_value(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
            .flatten()
    })
}

/// Whether an answer has no body whatever its headers say (RFC 9112 §6.3):
/// one to `HEAD`, a 1xx, 204 or 304.
pub fn bodiless(method: &Method, status: StatusCode) -> bool {
    method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
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
    parts.headers = headers(&head, spans, 0)?;
    Ok(Some(parts))
}

/// What a head's headers say of its body and connection, read in one pass:
/// on the small heads of API calls, hashed lookups of names that are not
/// there cost more than looking at each name once.
#[derive(Debug, Default)]
struct Scan {
    /// Whether the last `Transfer-Encoding` coding is `chunked`, if any.
    chunked: Option<bool>,
    /// The one `Content-Length` (repeated values that agree are one).
    length: Option<u64>,
    /// A `Content-Length` that is malformed or conflicts with another.
    bad_length: bool,
    /// `Connection` lists `close` / `keep-alive`.
    close: bool,
    keep_alive: bool,
    expect: bool,
}

impl Scan {
    fn of(headers: &HeaderMap) -> Scan {
        let mut scan = Scan::default();
        for (name, value) in headers {
            if name == CONTENT_LENGTH {
                scan.add_length(value);
            } else if name == TRANSFER_ENCODING {
                scan.chunked = Some(
                    value
                        .to_str()
                        .ok()
                        .and_then(|v| v.rsplit(',').next())
                        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked")),
                );
            } else if name == CONNECTION {
                for token in value.to_str().unwrap_or_default().split(',') {
                    let token = token.trim();
                    scan.close |= token.eq_ignore_ascii_case("close");
                    scan.keep_alive |= token.eq_ignore_ascii_case("keep-alive");
                }
            } else if name == EXPECT {
                scan.expect = true;
            }
        }
        scan
    }

    fn add_length(&mut self, value: &HeaderValue) {
        for part in value.as_bytes().split(|&b| b == b',') {
            match length_value(part) {
                Some(n) if self.length.is_none_or(|f| f == n) => self.length = Some(n),
                _ => self.bad_length = true,
            }
        }
    }

    /// Whether the peer keeps the connection open after this message.
    fn keeps_alive(&self, version: Version) -> bool {
        if version == Version::HTTP_11 {
            !self.close
        } else {
            self.keep_alive
        }
    }
}

/// A message's body framing and whether its connection stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub framing: Framing,
    pub keep_alive: bool,
    /// A request sent `Expect` (hyper answers those).
    pub expect: bool,
}

/// A request's shape (RFC 9112 §6.3): no body unless it says so.
pub fn request_shape(version: Version, headers: &HeaderMap) -> Result<Shape, HeadError> {
    let scan = Scan::of(headers);
    let framing = match (scan.chunked, scan.bad_length, scan.length) {
        (Some(_), ..) => Framing::Chunked,
        (None, true, _) => return Err(HeadError::Invalid),
        (None, false, None | Some(0)) => Framing::Empty,
        (None, false, Some(n)) => Framing::Length(n),
    };
    Ok(Shape {
        framing,
        keep_alive: scan.keeps_alive(version),
        expect: scan.expect,
    })
}

/// A response's shape (RFC 9112 §6.3), given the request's method.
pub fn response_shape(
    method: &Method,
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
) -> Result<Shape, HeadError> {
    let scan = Scan::of(headers);
    let framing = match (
        bodiless(method, status),
        scan.chunked,
        scan.bad_length,
        scan.length,
    ) {
        (true, ..) => Framing::Empty,
        (false, Some(true), ..) => Framing::Chunked,
        (false, Some(false), ..) => Framing::Close,
        (false, None, true, _) => return Err(HeadError::Invalid),
        (false, None, false, Some(n)) => Framing::Length(n),
        (false, None, false, None) => Framing::Close,
    };
    Ok(Shape {
        framing,
        keep_alive: scan.keeps_alive(version),
        expect: false,
    })
}

/// `name: value\r\n` for each header but the framing ones, which the
/// writer sets itself, and those `skip` picks; whether one was `Date` (told
/// here, so the response writer need not look it up as well).
fn put_headers(
    out: &mut BytesMut,
    headers: &HeaderMap,
    skip: impl Fn(&HeaderName) -> bool,
) -> bool {
    let mut date = false;
    for (name, value) in headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING || skip(name) {
            continue;
        }
        date |= name == http::header::DATE;
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    date
}

fn put_length(out: &mut BytesMut, n: u64) {
    out.put_slice(b"content-length: ");
    out.put_slice(itoa::Buffer::new().format(n).as_bytes());
    out.put_slice(b"\r\n");
}

/// An HTTP/1.1 request head with `length` body bytes to follow (`None`:
/// no body and no `Content-Length`), and `host` and `authorization` in
/// place of any the head has: a forwarded request's are the proxy's, set
/// here rather than in the map, which would cost a hashed insert each.
pub fn put_request(
    out: &mut BytesMut,
    parts: &http::request::Parts,
    host: &HeaderValue,
    authorization: &HeaderValue,
    length: Option<u64>,
) {
    out.put_slice(parts.method.as_str().as_bytes());
    out.put_u8(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\nhost: ");
    out.put_slice(host.as_bytes());
    out.put_slice(b"\r\nauthorization: ");
    out.put_slice(authorization.as_bytes());
    out.put_slice(b"\r\n");
    put_headers(out, &parts.headers, |name| {
        name == HOST || name == AUTHORIZATION
    });
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
/// `date` is asked only for an answer without `Date`: the platform's carry
/// one, and reading the clock for nothing costs on every request.
pub fn put_response(
    out: &mut BytesMut,
    parts: &http::response::Parts,
    delimit: Delimit,
    version: Version,
    close: bool,
    date: impl FnOnce() -> Bytes,
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
    let has_date = put_headers(out, &parts.headers, |_| false);
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
    if !has_date {
        out.put_slice(b"date: ");
        out.put_slice(&date());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_length_is_digits_only() {
        assert_eq!(length_value(b"1024"), Some(1024));
        assert_eq!(length_value(b" 7\t"), Some(7));
        assert_eq!(length_value(b"0"), Some(0));
        assert_eq!(length_value(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b" ",
            b"+5",
            b"-1",
            b"5 5",
            b"0x10",
            b"18446744073709551616",
            b"\xff",
        ] {
            assert_eq!(
                length_value(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\n\r\n"[..]);
        let agreeing = take_response(&mut buf).unwrap().unwrap();
        let shape = response_shape(
            &Method::GET,
            agreeing.status,
            agreeing.version,
            &agreeing.headers,
        );
        assert_eq!(shape.unwrap().framing, Framing::Length(3));
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\n"[..]);
        let signed = take_response(&mut buf).unwrap().unwrap();
        let shape = response_shape(&Method::GET, signed.status, signed.version, &signed.headers);
        assert!(shape.is_err(), "a signed length is refused");
    }

    #[test]
    fn a_recycled_map_comes_back_empty_and_a_large_one_is_not_kept() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n"[..]);
        let first = take_response(&mut buf).unwrap().unwrap();
        assert_eq!(first.headers.len(), 2);
        recycle(first.headers);
        let mut buf = BytesMut::from(&b"HTTP/1.1 204 No Content\r\nC: 3\r\n\r\n"[..]);
        let second = take_response(&mut buf).unwrap().unwrap();
        assert_eq!(second.headers.len(), 1, "nothing of the first message");
        assert_eq!(second.headers["c"], "3");

        let mut large = HeaderMap::with_capacity(SPARE_MAP_MAX_CAPACITY * 2);
        large.insert("x", http::HeaderValue::from_static("1"));
        let kept = SPARE_MAPS.with_borrow(Vec::len);
        recycle(large);
        assert_eq!(SPARE_MAPS.with_borrow(Vec::len), kept);
    }

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
        let v11 = Version::HTTP_11;
        let framing = |h: &HeaderMap| request_shape(v11, h).map(|s| s.framing);
        let mut h = HeaderMap::new();
        assert_eq!(framing(&h).unwrap(), Framing::Empty);
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert_eq!(framing(&h).unwrap(), Framing::Length(12));
        let head = response_shape(&Method::HEAD, StatusCode::OK, v11, &h).unwrap();
        assert_eq!(head.framing, Framing::Empty);
        h.append(CONTENT_LENGTH, HeaderValue::from_static("13"));
        assert!(framing(&h).is_err(), "conflicting lengths");
        let mut h = HeaderMap::new();
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("gzip, chunked"));
        let resp = |m: &Method, st: StatusCode, h: &HeaderMap| {
            response_shape(m, st, v11, h).unwrap().framing
        };
        assert_eq!(resp(&Method::GET, StatusCode::OK, &h), Framing::Chunked);
        let none = HeaderMap::new();
        assert_eq!(resp(&Method::GET, StatusCode::OK, &none), Framing::Close);
        assert_eq!(
            resp(&Method::GET, StatusCode::NOT_MODIFIED, &none),
            Framing::Empty
        );
        h.insert(EXPECT, HeaderValue::from_static("100-continue"));
        assert!(request_shape(v11, &h).unwrap().expect);
    }

    #[test]
    fn keep_alive_by_version() {
        let alive = |v: Version, h: &HeaderMap| request_shape(v, h).unwrap().keep_alive;
        let mut h = HeaderMap::new();
        assert!(alive(Version::HTTP_11, &h));
        assert!(!alive(Version::HTTP_10, &h));
        h.insert(CONNECTION, HeaderValue::from_static("Keep-Alive"));
        assert!(alive(Version::HTTP_10, &h));
        h.insert(CONNECTION, HeaderValue::from_static("foo, close"));
        assert!(!alive(Version::HTTP_11, &h));
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
            || Bytes::from_static(b"D"),
        );
        assert_eq!(
            &out[..],
            b"HTTP/1.1 200 OK\r\nx-a: b\r\ncontent-length: 3\r\nconnection: close\r\ndate: D\r\n\r\n"
        );
        // An answer with its own `Date` keeps it, and the clock is not read.
        parts
            .headers
            .insert(http::header::DATE, HeaderValue::from_static("E"));
        out.clear();
        put_response(
            &mut out,
            &parts,
            Delimit::Length(3),
            Version::HTTP_11,
            false,
            || unreachable!("the answer has a Date"),
        );
        assert_eq!(
            &out[..],
            b"HTTP/1.1 200 OK\r\nx-a: b\r\ndate: E\r\ncontent-length: 3\r\n\r\n"
        );
    }
}
