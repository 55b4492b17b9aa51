//! The bodies a request carries through the proxy.
//!
//! [`Body`] is what the proxy answers with: the upstream's stream, or a small
//! body the proxy made itself. [`CallerBody`] is the caller's request body on
//! its way upstream, watched for the caller's own faults.
//!
//! When the upstream client fails, hyper reports one error whether the
//! platform went away or the caller's body broke (bad chunking, fewer bytes
//! than `Content-Length`, a hang-up mid-body). Only the first is the
//! platform's fault; [`CallerBody`] records the second so the forwarding path
//! can answer 400 instead of blaming the upstream. It streams frame by frame
//! and holds nothing, except what the 401 recovery buffered before sending
//! (at most 64 KiB, see `proxy::retry`): a whole small body it may send
//! twice, or the first part of a larger one, followed by the rest.

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

pub mod tee;

/// Response bodies: the upstream's stream (as is, or copied on its way for
/// the conditional cache by a [`Tee`](tee::Tee)), or a small body the proxy
/// made (or the cache kept).
pub type Body = Either<Either<UpstreamBody, tee::Tee>, Full<Bytes>>;

/// An error while streaming a body, whoever's it is.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The upstream's answer body: from hyper's client (HTTP/2, TLS, or a
/// request whose body streamed), or read off a worker's own connection.
#[derive(Debug)]
pub enum UpstreamBody {
    Hyper(Incoming),
    Lane(crate::wire::client::ResponseBody),
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Lane(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper(b) => b.is_end_stream(),
            UpstreamBody::Lane(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Hyper(b) => b.size_hint(),
            UpstreamBody::Lane(b) => b.size_hint(),
        }
    }
}

/// A caller's request body: hyper's stream, or none at all (a request the
/// HTTP/1 fast path took, which has no body by construction).
#[derive(Debug)]
pub enum Inbound {
    Hyper(Incoming),
    Empty,
}

/// The caller's `Incoming`, passed through unchanged, after the bytes
/// already read from it, if any.
#[derive(Debug)]
pub struct CallerBody {
    /// Read ahead of sending; goes out first.
    prefix: Option<Bytes>,
    /// The rest of the caller's stream; `None` for a body read whole.
    inner: Option<Incoming>,
    /// Set once reading the caller's stream failed; shared with the sender.
    /// `None` for a body read whole, which cannot fail.
    failed: Option<Arc<AtomicBool>>,
}

/// Tells, after the upstream call, whether the caller's body was at fault.
#[derive(Debug, Clone)]
pub struct CallerFault(Option<Arc<AtomicBool>>);

impl CallerFault {
    pub fn happened(&self) -> bool {
        self.0.as_ref().is_some_and(|f| f.load(Ordering::Acquire))
    }
}

impl CallerBody {
    pub fn new(inner: Incoming) -> (CallerBody, CallerFault) {
        let failed = Arc::new(AtomicBool::new(false));
        let fault = CallerFault(Some(failed.clone()));
        let body = CallerBody {
            prefix: None,
            inner: Some(inner),
            failed: Some(failed),
        };
        (body, fault)
    }

    /// `prefix` (already read from the caller), then the rest of `inner`.
    pub fn prefixed(prefix: Bytes, inner: Incoming) -> (CallerBody, CallerFault) {
        let (mut body, fault) = CallerBody::new(inner);
        body.prefix = Some(prefix).filter(|p| !p.is_empty());
        (body, fault)
    }

    /// The whole body, when it was read ahead (a stream gives `None`).
    pub fn in_hand(&self) -> Option<Bytes> {
        match self.inner {
            None => Some(self.prefix.clone().unwrap_or_default()),
            Some(_) => None,
        }
    }

    /// A body read whole, which can be sent again.
    pub fn buffered(bytes: Bytes) -> (CallerBody, CallerFault) {
        let body = CallerBody {
            prefix: Some(bytes).filter(|b| !b.is_empty()),
            inner: None,
            failed: None,
        };
        (body, CallerFault(None))
    }
}

impl HttpBody for CallerBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if let (Poll::Ready(Some(Err(_))), Some(failed)) = (&polled, &self.failed) {
            failed.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let ahead = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let rest = self
            .inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint);
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + ahead);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + ahead);
        }
        hint
    }
}
