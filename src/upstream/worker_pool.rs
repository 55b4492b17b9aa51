//! A worker thread's own hyper HTTP/1 connections to a plain-`http`
//! upstream, for requests whose body streams (the rest take `lane.rs`).
//!
//! hyper-util's pooled client costs, per request, a pool lookup under a
//! mutex (hashing the scheme and authority), a wrapper that puts the
//! connection back on drop, and a spawned task that waits for the
//! connection to be ready again. On a worker none of that is needed: the
//! connections here are only ever used by this thread, so a plain list
//! works. A connection goes back on the list as soon as its request is
//! handed to it; a checkout takes the most recently used one that is ready
//! (its previous response has ended) and drops the closed and the stale.
//!
//! TLS upstreams (which may speak HTTP/2) keep hyper-util's client: the
//! handshake dwarfs what a simpler pool saves.

use super::Upstream;
use crate::body::CallerBody;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// An error on the way to a response, as `error_chain` reads it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A connection unused this long is closed, as hyper-util's pool does.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// At most this many connections kept per worker and upstream.
const MAX_KEPT: usize = 512;

struct Kept {
    /// The `Upstream` it belongs to (gone: a reload replaced it).
    owner: Weak<()>,
    sender: SendRequest<CallerBody>,
    since: Instant,
}

thread_local! {
    static KEPT: RefCell<Vec<Kept>> = const { RefCell::new(Vec::new()) };
}

/// Sends `req` on one of this thread's connections, or a new one. A request
/// that a kept connection closed under before taking it is sent again on a
/// new one, as hyper-util's client does.
pub async fn send(
    up: &Upstream,
    mut req: Request<CallerBody>,
) -> Result<Response<Incoming>, BoxError> {
    // An HTTP/1 request line carries the origin form; `Host` is already set.
    let origin_form = req
        .uri()
        .path_and_query()
        .map_or_else(|| http::Uri::from_static("/"), |pq| pq.clone().into());
    *req.uri_mut() = origin_form;
    let mut kept = checkout(&up.alive);
    loop {
        let reused = kept.is_some();
        let mut sender = match kept.take() {
            Some(sender) => sender,
            None => connect(up).await?,
        };
        let sent = sender.try_send_request(req);
        // Back on the list at once: it is not ready (so nobody takes it)
        // until this response has ended.
        checkin(&up.alive, sender);
        match sent.await {
            Ok(resp) => return Ok(resp),
            Err(mut e) => match e.take_message() {
                Some(unsent) if reused => req = unsent,
                _ => return Err(e.into_error().into()),
            },
        }
    }
}

/// The most recently kept ready connection to `owner`'s upstream, dropping
/// on the way what is closed, stale, or of an upstream that is gone.
fn checkout(owner: &Arc<()>) -> Option<SendRequest<CallerBody>> {
    KEPT.with_borrow_mut(|kept| {
        let now = Instant::now();
        let mut i = kept.len();
        while i > 0 {
            i -= 1;
            let k = &kept[i];
            let alive = k.owner.strong_count() > 0;
            if !alive || k.sender.is_closed() || now.duration_since(k.since) > IDLE_TIMEOUT {
                kept.swap_remove(i);
                continue;
            }
            if std::ptr::eq(k.owner.as_ptr(), Arc::as_ptr(owner)) && k.sender.is_ready() {
                return Some(kept.swap_remove(i).sender);
            }
        }
        None
    })
}

fn checkin(owner: &Arc<()>, sender: SendRequest<CallerBody>) {
    KEPT.with_borrow_mut(|kept| {
        if kept.len() < MAX_KEPT && !sender.is_closed() {
            kept.push(Kept {
                owner: Arc::downgrade(owner),
                sender,
                since: Instant::now(),
            });
        }
    })
}

/// A new connection, driven by a task on this thread.
async fn connect(up: &Upstream) -> Result<SendRequest<CallerBody>, BoxError> {
    let tcp = tcp_connect(up).await?;
    let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// A TCP connection to the upstream, within its connect timeout.
pub(super) async fn tcp_connect(up: &Upstream) -> Result<tokio::net::TcpStream, BoxError> {
    let authority = &up.config.authority;
    // `[::1]` is how a URI writes an IPv6 address; the socket wants `::1`.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let timeout = up.config.connect_timeout;
    let tcp = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port)))
        .await
    {
        Err(_) => {
            return Err(format!("tcp connect to {authority} timed out after {timeout:?}").into());
        }
        Ok(Err(e)) => return Err(format!("tcp connect to {authority}: {e}").into()),
        Ok(Ok(tcp)) => tcp,
    };
    tcp.set_nodelay(true)?;
    Ok(tcp)
}
