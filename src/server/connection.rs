//! One accepted connection: its service, its watchdog, and how it closes.
//!
//! The watchdog closes a connection that has nothing in flight for
//! `timeouts.idle`, or whose request head is not complete within
//! `timeouts.header_read` (see `activity.rs` for what is measured). An idle
//! connection is asked to close gracefully first (HTTP/2 gets a GOAWAY, an
//! idle HTTP/1 connection closes at once) and dropped if that does not finish
//! in time: a peer that never answers the GOAWAY's PING cannot keep it. A
//! late head is dropped at once: a graceful close would go on reading it.

use super::Stream;
use super::activity::{self, Activity, Expiry, Timeouts, Watched};
use super::lane::{self, Rewind};
use super::workers::Load;
use crate::body::Inbound;
use crate::error::ProxyError;
use crate::proxy::{ConnInfo, Proxy};
use bytes::Bytes;
use http::{Request, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use prometheus_client::metrics::gauge::Gauge;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::Instant;

/// How long a connection the watchdog closes may take to say goodbye
/// (GOAWAY, PING, final GOAWAY) before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What every connection shares, fixed when the server starts.
#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    pub timeouts: Timeouts,
    /// Larger request heads get 431 (see [`head_size`]).
    pub max_header_bytes: usize,
    /// How long a connection may drain once the server shuts down.
    pub shutdown_grace: Duration,
    /// Connections start on the HTTP/1.1 fast path (`lane.rs`).
    pub lane: bool,
}

/// What a connection holds until it closes: its place under
/// `limits.max_connections` and, on a worker, its count in that worker's load.
pub(super) struct Held {
    _permit: OwnedSemaphorePermit,
    _load: Option<Load>,
}

impl Held {
    pub fn new(permit: OwnedSemaphorePermit) -> Held {
        Held {
            _permit: permit,
            _load: None,
        }
    }

    pub fn on_worker(self, load: Load) -> Held {
        Held {
            _load: Some(load),
            ..self
        }
    }
}

/// What a connection holds, and its count in the open-connections gauge;
/// all given back when the task ends, however it ends.
struct Slot {
    _held: Held,
    open: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Serves `io` on its own task until it closes.
pub(super) fn spawn(
    io: Stream,
    held: Held,
    builder: &auto::Builder<TokioExecutor>,
    proxy: &Proxy,
    info: ConnInfo,
    settings: Settings,
    stop: watch::Receiver<bool>,
) {
    let open = proxy.shared().metrics.open_connections.clone();
    open.inc();
    let slot = Slot { _held: held, open };
    let (builder, proxy) = (builder.clone(), proxy.clone());
    tokio::spawn(async move {
        let (mut io, mut stop) = (io, stop);
        let prefix = if settings.lane {
            match lane::serve(&mut io, &proxy, &info, settings, &mut stop).await {
                lane::Outcome::Closed => return drop(slot),
                lane::Outcome::Handoff(prefix) => prefix,
            }
        } else {
            Bytes::new()
        };
        serve_hyper(
            Rewind::new(prefix, io),
            &builder,
            &proxy,
            info,
            settings,
            stop,
        )
        .await;
        drop(slot);
    });
}

/// Serves the rest of a connection with hyper.
async fn serve_hyper(
    io: Rewind<Stream>,
    builder: &auto::Builder<TokioExecutor>,
    proxy: &Proxy,
    info: ConnInfo,
    settings: Settings,
    stop: watch::Receiver<bool>,
) {
    let activity = Activity::new();
    let service = {
        let (proxy, activity) = (proxy.clone(), activity.clone());
        let limit = settings.max_header_bytes;
        service_fn(move |req: Request<Incoming>| {
            // Taken before the service runs: from here until the response
            // body ends, the connection is not idle.
            let in_flight = activity.begin(req.version() == Version::HTTP_2);
            let (proxy, info) = (proxy.clone(), info.clone());
            async move {
                let resp = if head_size(&req) > limit {
                    ProxyError::HeadTooLarge { limit }.into_response(None)
                } else {
                    proxy.handle(req.map(Inbound::Hyper), &info).await
                };
                Ok::<_, Infallible>(resp.map(|body| activity::Held::new(body, in_flight)))
            }
        })
    };
    let io = TokioIo::new(Watched::new(io, activity.clone()));
    let conn = builder.serve_connection(io, service);
    watch_over(conn, &activity, settings, stop).await;
}

/// Drives `conn` to its end, closing it on a timeout or on shutdown.
async fn watch_over<C>(
    conn: C,
    activity: &Activity,
    settings: Settings,
    mut stop: watch::Receiver<bool>,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let mut conn = std::pin::pin!(conn);
    let first = activity
        .deadline(settings.timeouts)
        .map_or(Instant::now() + settings.timeouts.header_read, |(at, _)| at);
    let timer = tokio::time::sleep_until(first);
    let mut timer = std::pin::pin!(timer);
    // Once told to close: when to stop waiting for it.
    let mut closing = false;
    loop {
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            // A dropped sender (the server is gone) counts as shutdown too.
            _ = stop.wait_for(|stop| *stop), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
                timer.as_mut().reset(Instant::now() + settings.shutdown_grace);
            }
            () = &mut timer => {
                if closing {
                    tracing::debug!("connection did not close in time; dropping it");
                    return;
                }
                // The timer fires at the deadline last computed, or early
                // (see activity.rs): look again. Any deadline still to come
                // is at least the shorter timeout away (a request in flight
                // ends now at the earliest; a head starts now at the
                // earliest), so looking again that far on never misses one.
                let now = Instant::now();
                let soonest = now + settings.timeouts.idle.min(settings.timeouts.header_read);
                let next = match activity.deadline(settings.timeouts) {
                    None => soonest,
                    Some((at, _)) if at > now => at.min(soonest),
                    // Nothing is in flight and the head is late: a graceful
                    // close would keep reading it, so drop the connection.
                    Some((_, Expiry::HeaderRead)) => {
                        tracing::debug!("header read timeout: closing connection");
                        return;
                    }
                    Some((_, Expiry::Idle)) => {
                        tracing::debug!("idle timeout: closing connection");
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                        now + CLOSE_GRACE
                    }
                };
                timer.as_mut().reset(next);
            }
        }
    }
}

/// The request head's size as HTTP/1.1 writes it: request line, one
/// `name: value` line per header, blank line. HTTP/2 requests are measured
/// the same way (the authority as a `Host` line), so the limit means the
/// same on both. hyper already refuses larger HTTP/1 heads once they fill
/// its read buffer, which cannot be smaller than 8 KiB; this check makes the
/// limit exact below that and on HTTP/2.
pub(super) fn head_size<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len());
    let authority = uri
        .authority()
        .map_or(0, |a| a.as_str().len() + "host: \r\n".len());
    let line = req.method().as_str().len() + target + " HTTP/1.1\r\n ".len();
    let headers: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + ": \r\n".len())
        .sum();
    line + authority + headers + "\r\n".len()
}
