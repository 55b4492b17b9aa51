//! The server: listeners, the accept loop, and graceful shutdown.
//!
//! `run` takes listeners that are already bound, so tests bind
//! `127.0.0.1:0` and read the port before starting it. Shutdown stops every
//! accept loop, lets in-flight requests finish (bounded by the grace period),
//! then returns.
//!
//! # Layout
//! - `workers.rs`: the worker threads that serve the accepted connections.
//! - `connection.rs`: one connection: the fast path first, then hyper's
//!   service and watchdog (timeouts, 431).
//! - `lane.rs`: the HTTP/1.1 fast path for requests without a body.
//! - `activity.rs`: what a connection is doing, which the watchdog reads.

mod activity;
mod connection;
mod lane;
mod workers;

pub use lane::{LANE_ENV, enabled as http1_fast_path};
pub use workers::{WORKERS_ENV, count as worker_count};

use crate::config::ListenAddr;
use crate::proxy::{ConnInfo, Proxy};
use activity::Timeouts;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_util::either::Either;

/// A bound listener.
pub enum Listener {
    Tcp(TcpListener),
    /// The path is removed when the listener shuts down.
    Unix(UnixListener, PathBuf),
}

impl Listener {
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "tcp".into(), |a| a.to_string()),
            Listener::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }
}

/// Binds every address. A stale unix socket file (left by a crash) is
/// replaced; the socket gets `unix_mode` so a sidecar sharing the volume can
/// connect while others on the machine cannot.
pub fn bind(addrs: &[ListenAddr], unix_mode: u32) -> io::Result<Vec<Listener>> {
    let mut out = Vec::new();
    for addr in addrs {
        let listener = match addr {
            ListenAddr::Tcp(sa) => {
                let std = std::net::TcpListener::bind(sa)
                    .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {sa}: {e}")))?;
                std.set_nonblocking(true)?;
                Listener::Tcp(TcpListener::from_std(std)?)
            }
            ListenAddr::Unix(path) => Listener::Unix(bind_unix(path, unix_mode)?, path.clone()),
        };
        out.push(listener);
    }
    Ok(out)
}

fn bind_unix(path: &std::path::Path, mode: u32) -> io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ));
        }
        // Nobody answering on it means a crashed run left it behind.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by a running process", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on unix:{}: {e}", path.display()),
        )
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Serves until `shutdown` completes, then drains for at most `grace`.
///
/// The limits and the connection timeouts are read here, once: a reload does
/// not rebind listeners, so changing `limits.max_connections`,
/// `limits.max_header_bytes`, `timeouts.idle` or `timeouts.header_read`
/// takes a restart.
pub async fn run(
    listeners: Vec<Listener>,
    proxy: Proxy,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let limits = proxy.shared().snapshot.load().config.limits.clone();
    let settings = connection::Settings {
        timeouts: Timeouts {
            idle: limits.idle_timeout,
            header_read: limits.header_read_timeout,
        },
        max_header_bytes: limits.max_header_bytes,
        shutdown_grace: grace,
        lane: lane::enabled(),
    };
    // One count for every listener: file descriptors are the process's.
    let cap = limits.max_connections.clamp(1, MAX_CONNECTIONS_CAP);
    let slots = Arc::new(Semaphore::new(cap));
    let (stop_tx, stop_rx) = watch::channel(false);
    let serve = workers::Serve {
        proxy,
        settings,
        stop: stop_rx.clone(),
    };
    let workers = Arc::new(workers::Workers::start(workers::count(), serve));
    let mut loops = tokio::task::JoinSet::new();
    for listener in listeners {
        loops.spawn(accept_loop(
            listener,
            workers.clone(),
            slots.clone(),
            stop_rx.clone(),
        ));
    }
    shutdown.await;
    tracing::info!("shutting down: no new connections; waiting for in-flight requests");
    let _ = stop_tx.send(true);
    loops.join_all().await;
    // Every connection holds a slot until it has closed, so having them all
    // back means every connection is done.
    let all_closed = slots.acquire_many(cap as u32);
    if tokio::time::timeout(grace, all_closed).await.is_err() {
        tracing::warn!(
            grace_s = grace.as_secs(),
            "in-flight requests did not finish within the grace period; closing them"
        );
    }
    // The accept loops are done, so this is the last reference.
    if let Some(workers) = Arc::into_inner(workers) {
        workers.finish().await;
    }
}

/// Far above any sensible `limits.max_connections`, and small enough for
/// one `acquire_many`.
const MAX_CONNECTIONS_CAP: usize = 1 << 24;

/// The connection builder: the HTTP/1 read buffer and the HTTP/2 header
/// list bounded by `limits.max_header_bytes`.
fn builder(settings: &connection::Settings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper answers 431 to a head that fills the buffer; it refuses buffers
    // under 8 KiB, and the service checks the exact limit (connection.rs).
    // Its own header-read timer is off: it would also close idle keep-alive
    // connections after `header_read`, while `activity.rs` keeps both rules.
    builder
        .http1()
        .max_buf_size(settings.max_header_bytes.max(8192))
        .header_read_timeout(None);
    // HTTP/2 counts 32 bytes more per header than the service does, so a
    // head the service would pass is not refused here first.
    let h2_list = settings
        .max_header_bytes
        .saturating_add(H2_HEADER_OVERHEAD_ALLOWANCE);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(h2_list).unwrap_or(u32::MAX));
    builder
}

/// 32 bytes for each of 128 headers (hyper's HTTP/1 parser takes at most 100).
const H2_HEADER_OVERHEAD_ALLOWANCE: usize = 32 * 128;

/// Accepts until told to stop. A slot under `limits.max_connections` is
/// taken before `accept`: past the cap, new connections wait in the
/// kernel's backlog, where they cost nothing and hurt no open connection.
async fn accept_loop(
    listener: Listener,
    workers: Arc<workers::Workers>,
    slots: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let local = match &listener {
        Listener::Tcp(l) => l.local_addr().ok(),
        Listener::Unix(..) => None,
    };
    let mut errors = AcceptErrors::default();
    'serve: loop {
        let permit = tokio::select! {
            _ = stop.changed() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let io = loop {
            tokio::select! {
                _ = stop.changed() => break 'serve,
                accepted = accept(&listener) => match accepted {
                    Ok(io) => break io,
                    Err(e) => {
                        // Out of file descriptors and the like: the loop
                        // must go on, but neither spin nor flood the log.
                        errors.record(&e);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        };
        let info = ConnInfo { local };
        workers.assign(io, connection::Held::new(permit), info);
    }
    if let Listener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
}

/// Accept failures, logged at most once a second with how many were not.
#[derive(Default)]
struct AcceptErrors {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    fn record(&mut self, e: &io::Error) {
        let now = Instant::now();
        if self
            .last_logged
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
        {
            self.unlogged += 1;
            return;
        }
        tracing::warn!(error = %e, more_since_last = self.unlogged, "accept failed");
        self.last_logged = Some(now);
        self.unlogged = 0;
    }
}

/// Either kind of stream, as one type for the connection builder.
type Stream = Either<tokio::net::TcpStream, tokio::net::UnixStream>;

async fn accept(listener: &Listener) -> io::Result<Stream> {
    Ok(match listener {
        Listener::Tcp(l) => {
            let (s, _) = l.accept().await?;
            s.set_nodelay(true)?;
            Either::Left(s)
        }
        Listener::Unix(l, _) => Either::Right(l.accept().await?.0),
    })
}
