//! HTTP/1.1 on the wire, for the common exchange served without hyper's
//! general-purpose machinery: a caller's request without a body
//! (`server/lane.rs`), sent upstream over a worker's own connections
//! (`upstream/lane.rs`), its answer streamed back.
//!
//! hyper remains the HTTP stack for everything else (request bodies,
//! HTTP/2, TLS upstreams, malformed input, whose answers it writes); this is
//! only the hot path, kept narrow. `httparse` (hyper's own parser) reads the
//! heads; what is written here is the framing around them.
//!
//! - [`head`]: parsing heads into `http` types and writing them back.
//! - [`body`]: body framing (length, chunked, until close).
//! - [`client`]: upstream connections and the response body read off one.

pub mod body;
pub mod client;
pub mod head;

/// `Date` for answers, formatted once a second per thread, as hyper does.
pub fn date() -> bytes::Bytes {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<(u64, bytes::Bytes)> =
            const { RefCell::new((u64::MAX, bytes::Bytes::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *at = secs;
            *text = bytes::Bytes::from(httpdate::fmt_http_date(now));
        }
        text.clone()
    })
}
