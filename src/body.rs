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
//! and holds nothing.

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
pub type Body = Either<Either<Incoming, tee::Tee>, Full<Bytes>>;

/// The caller's `Incoming`, passed through unchanged.
#[derive(Debug)]
pub struct CallerBody {
    inner: Incoming,
    /// Set once reading the caller's body failed; shared with the sender.
    failed: Arc<AtomicBool>,
}

/// Tells, after the upstream call, whether the caller's body was at fault.
#[derive(Debug, Clone)]
pub struct CallerFault(Arc<AtomicBool>);

impl CallerFault {
    pub fn happened(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl CallerBody {
    pub fn new(inner: Incoming) -> (CallerBody, CallerFault) {
        let failed = Arc::new(AtomicBool::new(false));
        let fault = CallerFault(failed.clone());
        (CallerBody { inner, failed }, fault)
    }
}

impl HttpBody for CallerBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            self.failed.store(true, Ordering::Release);
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
