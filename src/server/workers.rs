//! The worker threads: thread per core, as nginx and pingora do it.
//!
//! Each worker is an OS thread running its own single-threaded tokio
//! runtime. The accept loops hand every accepted connection to the worker
//! serving the fewest, and from then on the connection, its requests, their
//! upstream exchanges (each worker has its own upstream pool, see
//! [`crate::upstream`]) and any task they spawn stay on that one thread: no
//! work-stealing scheduler moves them, and no request crosses a thread on
//! its way upstream and back: a wake-up is a local queue push, never a
//! futex call to another thread. With the per-worker upstream connections
//! this cut the CPU per small request by about a third against tokio's
//! multi-thread runtime (README, Performance).
//!
//! The count is the number of cores (`std::thread::available_parallelism`),
//! or `ATOMGIT_PROXY_WORKERS`; `0` serves every connection on the caller's
//! runtime, as before this module existed.
//!
//! A worker ends once its sender is dropped: after the server has drained,
//! or when the server's future is dropped (a test that never shuts down),
//! so a worker thread never outlives its server by more than a moment.

use super::Stream;
use super::connection::{self, Settings};
use crate::proxy::{ConnInfo, Proxy};
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// The environment variable that sets the worker count.
pub const WORKERS_ENV: &str = "ATOMGIT_PROXY_WORKERS";

/// How long a worker's runtime waits for its blocking tasks (store writes
/// and the like) when it ends, before leaving them behind.
const BLOCKING_GRACE: Duration = Duration::from_secs(1);

/// A connection on its way to a worker: the socket, out of the accepting
/// runtime's reactor, and what it must hold until it closes.
struct Handoff {
    io: StdStream,
    held: connection::Held,
    info: ConnInfo,
}

enum StdStream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

/// What every connection of one server shares.
#[derive(Clone)]
pub(super) struct Serve {
    pub proxy: Proxy,
    pub settings: Settings,
    pub stop: watch::Receiver<bool>,
}

/// One worker as the accept loops see it.
struct Worker {
    tx: mpsc::UnboundedSender<Handoff>,
    /// Connections it serves now; the accept loops pick the smallest.
    load: Arc<AtomicUsize>,
    done: oneshot::Receiver<()>,
}

/// The running workers of one server.
pub(super) struct Workers {
    workers: Vec<Worker>,
    serve: Serve,
    /// The connection builder for serving on the caller's runtime when no
    /// worker started: built once, not per connection.
    fallback: auto::Builder<TokioExecutor>,
}

/// The worker count: `ATOMGIT_PROXY_WORKERS` if set and valid, else the
/// number of cores.
pub fn count() -> usize {
    if let Ok(text) = std::env::var(WORKERS_ENV) {
        match text.trim().parse::<usize>() {
            Ok(n) => return n.min(1024),
            Err(_) => tracing::warn!(
                value = %text,
                "{WORKERS_ENV} is not a number; using one worker per core"
            ),
        }
    }
    std::thread::available_parallelism().map_or(1, usize::from)
}

impl Workers {
    /// Starts `n` workers. One that cannot start (no thread or runtime) is
    /// left out with a warning; with none, connections are served on the
    /// caller's runtime.
    pub fn start(n: usize, serve: Serve) -> Workers {
        let mut workers = Vec::with_capacity(n);
        for index in 0..n {
            match spawn_worker(index, serve.clone()) {
                Ok(w) => workers.push(w),
                Err(e) => tracing::warn!(error = %e, worker = index, "cannot start a worker"),
            }
        }
        let fallback = super::builder(&serve.settings);
        Workers {
            workers,
            serve,
            fallback,
        }
    }

    /// Serves `io` on the least busy worker.
    pub fn assign(&self, io: Stream, held: connection::Held, info: ConnInfo) {
        let Some(worker) = self
            .workers
            .iter()
            .min_by_key(|w| w.load.load(Ordering::Relaxed))
        else {
            let serve = &self.serve;
            connection::spawn(
                io,
                held,
                &self.fallback,
                &serve.proxy,
                info,
                serve.settings,
                serve.stop.clone(),
            );
            return;
        };
        // Taking it out of this runtime's reactor lets the worker's own
        // reactor drive it; it stays non-blocking throughout.
        let io = match io {
            tokio_util::either::Either::Left(s) => s.into_std().map(StdStream::Tcp),
            tokio_util::either::Either::Right(s) => s.into_std().map(StdStream::Unix),
        };
        let io = match io {
            Ok(io) => io,
            Err(e) => {
                tracing::debug!(error = %e, "cannot hand a connection to a worker");
                return;
            }
        };
        let held = held.on_worker(Load::take(&worker.load));
        // A worker that is gone (it panicked) drops the connection; the
        // others go on serving.
        let _ = worker.tx.send(Handoff { io, held, info });
    }

    /// Ends every worker (call after draining: what is still open is
    /// dropped) and waits until they have.
    pub async fn finish(self) {
        let mut done = Vec::with_capacity(self.workers.len());
        for worker in self.workers {
            drop(worker.tx);
            done.push(worker.done);
        }
        for d in done {
            let _ = d.await;
        }
    }
}

fn spawn_worker(index: usize, serve: Serve) -> std::io::Result<Worker> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (done_tx, done) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("atomgit-proxy-worker-{index}"))
        .spawn(move || {
            runtime.block_on(serve_handoffs(rx, serve));
            runtime.shutdown_timeout(BLOCKING_GRACE);
            let _ = done_tx.send(());
        })?;
    Ok(Worker {
        tx,
        load: Arc::new(AtomicUsize::new(0)),
        done,
    })
}

/// A worker's life: serve each connection handed over, until the server
/// drops its sender.
async fn serve_handoffs(mut rx: mpsc::UnboundedReceiver<Handoff>, serve: Serve) {
    crate::upstream::mark_worker_thread();
    let builder = super::builder(&serve.settings);
    while let Some(Handoff { io, held, info }) = rx.recv().await {
        let io = match io {
            StdStream::Tcp(s) => {
                tokio::net::TcpStream::from_std(s).map(tokio_util::either::Either::Left)
            }
            StdStream::Unix(s) => {
                tokio::net::UnixStream::from_std(s).map(tokio_util::either::Either::Right)
            }
        };
        match io {
            Ok(io) => connection::spawn(
                io,
                held,
                &builder,
                &serve.proxy,
                info,
                serve.settings,
                serve.stop.clone(),
            ),
            Err(e) => tracing::debug!(error = %e, "a worker cannot take a connection"),
        }
    }
}

/// One connection counted in its worker's load until it closes.
pub(super) struct Load(Arc<AtomicUsize>);

impl Load {
    fn take(load: &Arc<AtomicUsize>) -> Load {
        load.fetch_add(1, Ordering::Relaxed);
        Load(load.clone())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
