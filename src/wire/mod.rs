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

/// Starts an empty read buffer (allocated `size` bytes) over at the front
/// of its allocation, unless bytes taken from it are still held elsewhere
/// (or it grew): each message is then read into the same few cache lines.
/// Walking on through the buffer instead, every read landed on memory gone
/// cold since the connection's last one, a cost that grows with the
/// connections a worker serves.
pub fn rewind(buf: &mut bytes::BytesMut, size: usize) {
    if buf.is_empty() {
        // `false`: shared or grown, left as it is; the next read reserves.
        let _ = buf.try_reclaim(size);
    }
}

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

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};

    /// Where the next byte written would go.
    fn front(buf: &mut BytesMut) -> usize {
        buf.chunk_mut().as_mut_ptr() as usize
    }

    #[test]
    fn an_empty_buffer_starts_over_once_nothing_shares_it() {
        let mut buf = BytesMut::with_capacity(64);
        let start = front(&mut buf);
        buf.put_slice(b"GET / HTTP/1.1\r\n\r\n");
        let head = buf.split_to(buf.len()).freeze();
        assert_ne!(front(&mut buf), start);
        // Still shared with the head taken from it: left alone.
        super::rewind(&mut buf, 64);
        assert_ne!(front(&mut buf), start);
        drop(head);
        super::rewind(&mut buf, 64);
        assert_eq!(front(&mut buf), start);
        assert_eq!(buf.capacity(), 64);
        // Bytes not yet used stay where they are.
        buf.put_slice(b"GET");
        let _ = buf.split_to(1);
        super::rewind(&mut buf, 64);
        assert_eq!(&buf[..], b"ET");
    }
}
