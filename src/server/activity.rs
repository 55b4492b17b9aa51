//! What one connection is doing, for its idle and header-read timeouts.
//!
//! hyper has no server-side idle timeout, its HTTP/2 keep-alive pings only
//! prove the peer is alive, and its HTTP/1 header-read timer starts only once
//! protocol detection has seen a byte. So each connection keeps this record:
//! the service counts requests in flight (a request stays in flight until its
//! response body is finished or dropped), the socket wrapper notes when the
//! first byte of a new HTTP/1 request head arrives, and the connection's
//! watchdog (`connection.rs`) asks [`Activity::deadline`] when to close.
//!
//! Nothing here wakes the watchdog: a request only touches a few atomics. A
//! deadline that appears later (a request ends, a head starts) is always at
//! least the shorter of the two timeouts from when it appears, so the
//! watchdog looks again at most that often and never misses one; a timer
//! reset per request would take the runtime's timer lock each time.

use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// "Not set" for the millisecond offsets below.
const UNSET: u64 = u64::MAX;

/// The server's connection timeouts, read once at start.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// No request in flight for this long: close.
    pub idle: Duration,
    /// A request head must be complete this long after accept (the first
    /// request) or after its first byte (later HTTP/1 requests).
    pub header_read: Duration,
}

/// Why a connection is being closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Idle,
    HeaderRead,
}

/// One connection's record. Times are milliseconds since `accepted`, so they
/// fit in atomics: the service, response bodies (spawned tasks under HTTP/2)
/// and the socket all update it without a lock.
#[derive(Debug)]
pub struct Activity {
    accepted: Instant,
    in_flight: AtomicUsize,
    /// A request has reached the service: the from-accept header deadline
    /// no longer applies.
    served: AtomicBool,
    /// HTTP/2 reads control frames while idle, which are no request head.
    h2: AtomicBool,
    /// When the last request in flight ended (0: accept).
    idle_since: AtomicU64,
    /// When the first byte of the HTTP/1 request head being read arrived.
    head_since: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            accepted: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(UNSET),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(UNSET - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.accepted + Duration::from_millis(ms)
    }

    /// A request head has been read: the request is in flight until the
    /// returned guard is dropped.
    pub fn begin(self: &Arc<Self>, h2: bool) -> InFlight {
        self.served.store(true, Ordering::Relaxed);
        if h2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(UNSET, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// The socket delivered bytes. With nothing in flight on HTTP/1, they
    /// start the next request head, and its header-read clock.
    fn bytes_read(&self) {
        if self.h2.load(Ordering::Relaxed)
            || self.in_flight.load(Ordering::Acquire) > 0
            || self.head_since.load(Ordering::Relaxed) != UNSET
        {
            return;
        }
        self.head_since.store(self.now_ms(), Ordering::Relaxed);
    }

    /// When the connection must close and why, or `None` while a request
    /// is in flight (the watchdog is woken when that changes).
    pub fn deadline(&self, t: Timeouts) -> Option<(Instant, Expiry)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let idle = (
            self.at(self.idle_since.load(Ordering::Relaxed)) + t.idle,
            Expiry::Idle,
        );
        let head_start = if !self.served.load(Ordering::Relaxed) {
            // The first head: from accept, so protocol detection (which
            // waits for bytes that may never come) is covered too.
            Some(0)
        } else if self.h2.load(Ordering::Relaxed) {
            None
        } else {
            Some(self.head_since.load(Ordering::Relaxed)).filter(|&ms| ms != UNSET)
        };
        let head = head_start.map(|ms| (self.at(ms) + t.header_read, Expiry::HeaderRead));
        Some(match head {
            Some(head) if head.0 < idle.0 => head,
            _ => idle,
        })
    }
}

/// A request in flight; dropping it ends the request.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        // Written before the count drops, so whoever sees zero sees this.
        a.idle_since.store(a.now_ms(), Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request in flight until it is finished
/// or dropped: a long download is not an idle connection.
pub struct Held<B> {
    inner: B,
    guard: Option<InFlight>,
}

impl<B> Held<B> {
    pub fn new(inner: B, guard: InFlight) -> Self {
        Held {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B: Body + Unpin> Body for Held<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, reporting reads to the connection's [`Activity`].
pub struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Watched { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        idle: Duration::from_secs(60),
        header_read: Duration::from_secs(30),
    };

    fn after(a: &Activity, secs: u64) -> Instant {
        a.accepted + Duration::from_secs(secs)
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_head_is_timed_from_accept() {
        let a = Activity::new();
        assert_eq!(a.deadline(T), Some((after(&a, 30), Expiry::HeaderRead)));
        // Bytes arriving later do not restart the first head's clock.
        tokio::time::advance(Duration::from_secs(10)).await;
        a.bytes_read();
        assert_eq!(a.deadline(T), Some((after(&a, 30), Expiry::HeaderRead)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_http1_connection_waits_for_idle_not_header_read() {
        let a = Activity::new();
        let req = a.begin(false);
        assert_eq!(a.deadline(T), None, "in flight");
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(req);
        assert_eq!(a.deadline(T), Some((after(&a, 65), Expiry::Idle)));
        // The next head's first byte starts its own, shorter clock.
        tokio::time::advance(Duration::from_secs(20)).await;
        a.bytes_read();
        assert_eq!(a.deadline(T), Some((after(&a, 55), Expiry::HeaderRead)));
        // Once read, the head no longer counts; the request is in flight.
        let _req = a.begin(false);
        assert_eq!(a.deadline(T), None);
    }

    #[tokio::test(start_paused = true)]
    async fn http2_control_frames_are_not_request_heads() {
        let a = Activity::new();
        drop(a.begin(true));
        tokio::time::advance(Duration::from_secs(1)).await;
        a.bytes_read();
        assert_eq!(a.deadline(T), Some((after(&a, 60), Expiry::Idle)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_is_in_flight_until_its_body_ends() {
        use http_body_util::BodyExt;
        let a = Activity::new();
        let mut body = Held::new(
            http_body_util::Full::new(bytes::Bytes::from_static(b"x")),
            a.begin(false),
        );
        assert!(body.frame().await.is_some_and(|f| f.is_ok()));
        assert_eq!(a.deadline(T), None, "the body is still being sent");
        assert!(body.frame().await.is_none());
        assert!(
            a.deadline(T).is_some(),
            "the finished body ended the request"
        );
    }
}
