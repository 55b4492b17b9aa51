//! A worker's own HTTP/1.1 connections to a plain-`http` upstream, and the
//! response body that reads straight off one.
//!
//! hyper's client drives each connection from a task of its own: a request
//! goes to it through a channel, the response comes back through another,
//! and every body chunk through a third, each hop a task wake-up. Here the
//! request's own task writes the request and reads the answer, and the
//! caller's connection reads the body off the socket as it writes it out: no
//! task, channel or wake-up in between. Once a body has been read to its
//! end, its connection goes back on this thread's idle list for the next
//! request; a body dropped early takes its connection with it (closed).

use super::body::{DecodeError, Decoded, Decoder};
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// A connection unused this long is closed, as hyper-util's pool does.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// At most this many idle connections kept per thread.
const MAX_IDLE: usize = 512;
/// Read buffer growth: enough for an API answer's head and a small body in
/// one read; once a read fills what it was given (a download), large
/// chunks, so a stream costs few reads and writes (hyper's client grows
/// its buffer the same way, to about 400 KiB).
const READ_SMALL: usize = 16 * 1024;
const READ_LARGE: usize = 256 * 1024;

/// One connection and what has been read from it but not used yet.
#[derive(Debug)]
pub struct Conn {
    pub io: TcpStream,
    pub buf: BytesMut,
    /// The upstream it belongs to (gone: a reload replaced it).
    owner: Weak<()>,
    /// The answer being read is large: read in large chunks.
    streaming: bool,
    /// The response timeout's timer, kept from request to request (see
    /// [`Conn::timer`]).
    timer: Option<Pin<Box<Sleep>>>,
}

impl Conn {
    pub fn new(io: TcpStream, owner: &Arc<()>) -> Conn {
        Conn {
            io,
            buf: BytesMut::with_capacity(READ_SMALL),
            owner: Arc::downgrade(owner),
            streaming: false,
            timer: None,
        }
    }

    /// A timer for `deadline`, this connection's own: give it back with
    /// [`Conn::keep_timer`]. Moving a registered timer later is one atomic
    /// update, where a timer per request enters and leaves tokio's timer
    /// wheel every time. An idle connection's timer may still hold the
    /// waker of the task that used it last, until it fires or is reused:
    /// at most one response timeout.
    pub fn timer(&mut self, deadline: Instant) -> Pin<Box<Sleep>> {
        match self.timer.take() {
            Some(mut timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    pub fn keep_timer(&mut self, timer: Pin<Box<Sleep>>) {
        self.timer = Some(timer);
    }

    /// Before a request: the answer is read into the front of the buffer
    /// (see [`super::rewind`]).
    pub fn rewind(&mut self) {
        super::rewind(&mut self.buf, READ_SMALL);
    }

    /// Reads more into the buffer; `Ok(0)` at the end of input.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let want = if self.streaming {
            READ_LARGE
        } else {
            READ_SMALL
        };
        if self.buf.capacity() - self.buf.len() < want / 4 {
            self.buf.reserve(want);
        }
        let room = self.buf.capacity() - self.buf.len();
        let read = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ));
        if matches!(read, Ok(n) if n == room) {
            self.streaming = true;
        }
        Poll::Ready(read)
    }

    pub async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

thread_local! {
    static IDLE: RefCell<Vec<Idle>> = const { RefCell::new(Vec::new()) };
}

/// The most recently used idle connection to `owner`'s upstream that is
/// still open, dropping on the way what is closed, stale, or of an upstream
/// that is gone.
pub fn checkout(owner: &Arc<()>) -> Option<Conn> {
    IDLE.with_borrow_mut(|idle| {
        let now = Instant::now();
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let k = &idle[i];
            if k.conn.owner.strong_count() == 0 || now.duration_since(k.since) > IDLE_TIMEOUT {
                idle.swap_remove(i);
                continue;
            }
            if !std::ptr::eq(k.conn.owner.as_ptr(), Arc::as_ptr(owner)) {
                continue;
            }
            let conn = idle.swap_remove(i).conn;
            // An idle connection has nothing to say: readable means the
            // upstream closed it (or broke the protocol). Without a pending
            // readiness event this makes no system call.
            match conn.io.try_read(&mut [0u8; 1]) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(conn),
                _ => continue,
            }
        }
        None
    })
}

/// Keeps `conn` for the next request on this thread.
pub fn checkin(mut conn: Conn) {
    conn.streaming = false;
    if !conn.buf.is_empty() || conn.owner.strong_count() == 0 {
        return;
    }
    IDLE.with_borrow_mut(|idle| {
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    });
}

/// A response body read off its connection.
#[derive(Debug)]
pub struct ResponseBody {
    /// `None` once the body has ended (the connection went back or closed).
    conn: Option<Conn>,
    decoder: Decoder,
    /// The connection can serve another request once this body has ended.
    reusable: bool,
}

/// Why reading a body failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    #[error("the upstream closed the connection before the body ended")]
    Truncated,
    #[error("the upstream's body framing is broken: {0}")]
    Framing(#[from] DecodeError),
}

impl ResponseBody {
    pub fn new(conn: Conn, decoder: Decoder, reusable: bool) -> ResponseBody {
        let mut body = ResponseBody {
            conn: Some(conn),
            decoder,
            reusable,
        };
        body.end_if_done();
        body
    }

    /// Hands the connection back as soon as the body is complete: the
    /// server may stop polling once `is_end_stream` says so.
    fn end_if_done(&mut self) {
        if self.decoder.is_done()
            && let Some(conn) = self.conn.take()
            && self.reusable
        {
            checkin(conn);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decoder.decode(&mut conn.buf) {
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Ok(Decoded::Data(data)) => {
                    // A chunked body's end may be here already; a framing
                    // error is reported by the next poll.
                    if this.decoder.settle(&mut conn.buf).is_ok() {
                        this.end_if_done();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::End) => {
                    this.end_if_done();
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => {}
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if this.decoder.ends_at_close() => {
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(BodyError::Truncated)));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
