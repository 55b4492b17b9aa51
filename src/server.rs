//! The server: listeners, the accept loop, and graceful shutdown.
//!
//! `run` takes listeners that are already bound, so tests bind
//! `127.0.0.1:0` and read the port before starting it. Shutdown stops every
//! accept loop, lets in-flight requests finish (bounded by the grace period),
//! then returns.

use crate::config::ListenAddr;
use crate::proxy::{ConnInfo, Proxy};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio_util::either::Either;

/// How long a caller may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

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
pub async fn run(
    listeners: Vec<Listener>,
    proxy: Proxy,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut loops = tokio::task::JoinSet::new();
    for listener in listeners {
        loops.spawn(accept_loop(listener, proxy.clone(), stop_rx.clone()));
    }
    shutdown.await;
    tracing::info!("shutting down: no new connections; waiting for in-flight requests");
    let _ = stop_tx.send(true);
    let drains = loops.join_all().await;
    let all = futures_util::future::join_all(drains.into_iter().map(|g| g.shutdown()));
    if tokio::time::timeout(grace, all).await.is_err() {
        tracing::warn!(
            grace_s = grace.as_secs(),
            "in-flight requests did not finish within the grace period; closing them"
        );
    }
}

/// Accepts until told to stop; returns the connections still open so the
/// caller can wait for them.
async fn accept_loop(
    listener: Listener,
    proxy: Proxy,
    mut stop: watch::Receiver<bool>,
) -> GracefulShutdown {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A caller that opens a connection and trickles its headers must not
    // hold it (and its memory) forever.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let local = match &listener {
        Listener::Tcp(l) => l.local_addr().ok(),
        Listener::Unix(..) => None,
    };
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = accept(&listener) => match accepted {
                Ok(io) => {
                    let proxy = proxy.clone();
                    let info = ConnInfo { local };
                    let service = service_fn(move |req| {
                        let (proxy, info) = (proxy.clone(), info.clone());
                        async move { Ok::<_, Infallible>(proxy.handle(req, &info).await) }
                    });
                    let conn = builder.serve_connection(io, service).into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: the loop must go
                    // on, but not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    if let Listener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
    graceful
}

/// Either kind of stream, as one type for the connection builder.
type Stream = Either<tokio::net::TcpStream, tokio::net::UnixStream>;

async fn accept(listener: &Listener) -> io::Result<TokioIo<Stream>> {
    Ok(TokioIo::new(match listener {
        Listener::Tcp(l) => {
            let (s, _) = l.accept().await?;
            s.set_nodelay(true)?;
            Either::Left(s)
        }
        Listener::Unix(l, _) => Either::Right(l.accept().await?.0),
    }))
}
