//! Forwarded requests whose whole body is in hand, over this worker's own
//! HTTP/1.1 connections to a plain-`http` upstream (see [`crate::wire`]).
//!
//! Written out by [`super::Upstream::prepare`], the head and body go out in
//! one write; the answer's head is read by the request's own task, and its
//! body off the socket by whoever streams it to the caller. A request that
//! streams its body (an upload larger than the 401 recovery keeps, see
//! `proxy/retry.rs`) goes through hyper's client instead
//! (`worker_pool.rs`), which writes it while reading the answer.
//!
//! A kept connection the upstream closed just as it was taken is replaced
//! and the request sent again, as hyper-util's pool does, but only when
//! nothing of an answer arrived and the request either never left or is
//! idempotent: a request the platform may have acted on is not repeated.

use super::worker_pool::{self, BoxError};
use super::{ForwardError, Upstream};
use crate::body::UpstreamBody;
use crate::wire::body::Decoder;
use crate::wire::client::{self, Conn, ResponseBody};
use crate::wire::head;
use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{HeaderValue, Method, Response, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, timeout_at};

/// The largest response head read; hyper's client allows about as much.
const MAX_HEAD: usize = 64 * 1024;

/// How an exchange on one connection failed.
struct Failed {
    /// Something of the answer arrived, or the write completed and the
    /// method is not safe to repeat: the request is not sent again.
    final_: bool,
    error: BoxError,
}

/// A request written out for one of this worker's connections.
pub struct Written {
    /// Kept as written: freezing it would allocate a shared header, and it
    /// is only ever read.
    out: BytesMut,
    method: Method,
    idempotent: bool,
}

impl Written {
    /// `head` with `host`, `authorization` and `body`, whose whole is in
    /// hand, in one buffer.
    pub fn new(
        head: &http::request::Parts,
        host: &HeaderValue,
        authorization: &HeaderValue,
        body: Bytes,
    ) -> Written {
        // A body, or a caller's explicit `Content-Length: 0`, is announced.
        let length = (!body.is_empty() || head.headers.contains_key(CONTENT_LENGTH))
            .then_some(body.len() as u64);
        let mut out = BytesMut::with_capacity(512 + body.len());
        head::put_request(&mut out, head, host, authorization, length);
        out.extend_from_slice(&body);
        let idempotent = matches!(
            head.method,
            Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
        );
        Written {
            out,
            method: head.method.clone(),
            idempotent,
        }
    }
}

/// Sends a written request on a kept connection, or a new one, giving up
/// at `deadline`.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice; see `proxy`"
)]
pub fn send(
    up: &Upstream,
    req: Written,
    deadline: Instant,
) -> impl Future<Output = Result<Response<UpstreamBody>, ForwardError>> {
    async move {
        let mut kept = client::checkout(&up.alive);
        loop {
            let reused = kept.is_some();
            let mut conn = match kept.take() {
                Some(conn) => conn,
                None => {
                    let connect = Box::pin(worker_pool::tcp_connect(up));
                    let io = timeout_at(deadline, connect)
                        .await
                        .map_err(|_| ForwardError::TimedOut)??;
                    Conn::new(io, &up.alive)
                }
            };
            let mut timer = conn.timer(deadline);
            let exchanged = tokio::select! {
                biased;
                exchanged = exchange(&mut conn, &req.out, req.idempotent) => exchanged,
                () = timer.as_mut() => return Err(ForwardError::TimedOut),
            };
            conn.keep_timer(timer);
            match exchanged {
                Ok(resp) => {
                    let shape =
                        head::response_shape(&req.method, resp.status, resp.version, &resp.headers)
                            .map_err(|e| ForwardError::Failed(e.into()))?;
                    let reusable =
                        shape.keep_alive && shape.framing != crate::wire::body::Framing::Close;
                    let body = ResponseBody::new(conn, Decoder::new(shape.framing), reusable);
                    return Ok(Response::from_parts(resp, UpstreamBody::Lane(body)));
                }
                Err(failed) if reused && !failed.final_ => {
                    tracing::debug!(error = %failed.error, "kept upstream connection was closed; sending on a new one");
                }
                Err(failed) => return Err(ForwardError::Failed(failed.error)),
            }
        }
    }
}

/// Writes the request and reads the answer's head (past any `100 Continue`).
async fn exchange(
    conn: &mut Conn,
    out: &[u8],
    idempotent: bool,
) -> Result<http::response::Parts, Failed> {
    let retry = |error: BoxError| Failed {
        final_: false,
        error,
    };
    conn.rewind();
    if let Err(e) = conn.io.write_all(out).await {
        return Err(retry(e.into()));
    }
    // Written: repeating is safe only for an idempotent method, and only
    // while nothing of an answer has come back.
    let mut received = false;
    let failed = |received: bool, error: BoxError| Failed {
        final_: received || !idempotent,
        error,
    };
    loop {
        // Usually empty until the first read: nothing to parse yet.
        let taken = if conn.buf.is_empty() {
            Ok(None)
        } else {
            head::take_response(&mut conn.buf)
        };
        match taken {
            Ok(Some(parts)) if parts.status == StatusCode::SWITCHING_PROTOCOLS => {
                return Err(failed(true, "the upstream switched protocols".into()));
            }
            Ok(Some(parts)) if parts.status.is_informational() => continue,
            Ok(Some(parts)) => return Ok(parts),
            Ok(None) if conn.buf.len() > MAX_HEAD => {
                return Err(failed(
                    true,
                    "the upstream's response head is too large".into(),
                ));
            }
            Ok(None) => {}
            Err(e) => return Err(failed(true, e.into())),
        }
        match conn.fill().await {
            Ok(0) => {
                let e = "the upstream closed the connection before answering";
                return Err(failed(received, e.into()));
            }
            Ok(_) => received = true,
            Err(e) => return Err(failed(received, e.into())),
        }
    }
}
