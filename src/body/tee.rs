//! A response body that streams to the caller while a copy is captured.
//!
//! The caller gets every frame the moment it arrives; the copy only grows
//! up to a limit, past which capturing stops (the body still streams) and
//! the copy is dropped. When the body ends, the whole copy is handed to a
//! callback (to be stored and shared); if it cannot end well (too large, a
//! read error, trailers, the caller hanging up) the callback gets `None`,
//! from `Drop` at the latest, so whoever waits for it is never left hanging.

use super::{BoxError, UpstreamBody};
use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Called once with the whole body, or `None` when there is none to keep.
pub type OnEnd = Box<dyn FnOnce(Option<Bytes>) + Send + Sync>;

/// The upstream's body, teed.
pub struct Tee {
    inner: UpstreamBody,
    capture: Option<Capture>,
}

struct Capture {
    buf: BytesMut,
    limit: usize,
    on_end: Option<OnEnd>,
}

impl Capture {
    fn end(&mut self, body: Option<Bytes>) {
        if let Some(on_end) = self.on_end.take() {
            on_end(body);
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.end(None);
    }
}

impl Tee {
    /// Streams `inner`, capturing at most `limit` bytes for `on_end`.
    pub fn new(inner: UpstreamBody, limit: usize, on_end: OnEnd) -> Tee {
        // Sized by the announced length when it fits, so the copy is not
        // regrown frame by frame.
        let hint = inner.size_hint().exact().unwrap_or(0).min(limit as u64) as usize;
        let mut tee = Tee {
            capture: Some(Capture {
                buf: BytesMut::with_capacity(hint),
                limit,
                on_end: Some(on_end),
            }),
            inner,
        };
        // An empty body may never be polled.
        if tee.inner.is_end_stream() {
            tee.finish();
        }
        tee
    }

    fn finish(&mut self) {
        if let Some(mut c) = self.capture.take() {
            let body = std::mem::take(&mut c.buf).freeze();
            c.end(Some(body));
        }
    }
}

impl HttpBody for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => match (frame.data_ref(), this.capture.as_mut()) {
                (Some(data), Some(c)) if c.buf.len() + data.len() <= c.limit => {
                    c.buf.extend_from_slice(data);
                    // The server may not poll again once the body says it
                    // is done, so the end is taken here too.
                    if this.inner.is_end_stream() {
                        this.finish();
                    }
                }
                // Too large, or trailers: nothing to keep.
                (_, Some(_)) => this.capture = None,
                (_, None) => {}
            },
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => this.capture = None,
            Poll::Pending => {}
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
