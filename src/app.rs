//! A running proxy: the shared state, its listeners, reloads and shutdown.

use crate::config::Config;
use crate::proxy::Proxy;
use crate::server::{self, Listener};
use crate::state::{Shared, Snapshot};
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A proxy serving in the background, as tests and `dev` start it.
pub struct Running {
    pub proxy: Proxy,
    /// What each listener is bound to (`127.0.0.1:PORT` or `unix:/path`).
    pub addrs: Vec<String>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    pub fn shared(&self) -> &Arc<Shared> {
        self.proxy.shared()
    }

    /// Stops accepting, drains in-flight requests, and waits for that.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Builds the runtime for `config` and serves on `listeners` until shut down.
pub fn start(config: Config, listeners: Vec<Listener>) -> Result<Running, String> {
    Ok(start_snapshot(Snapshot::build(config, None)?, listeners))
}

/// Serves an already built runtime on `listeners` until shut down.
pub fn start_snapshot(snapshot: Snapshot, listeners: Vec<Listener>) -> Running {
    let grace = snapshot.config.shutdown_grace;
    let shared = Shared::new(snapshot);
    let proxy = Proxy::new(shared);
    let addrs = listeners.iter().map(Listener::describe).collect();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server::run(
        listeners,
        proxy.clone(),
        async move {
            let _ = stop_rx.await;
        },
        grace,
    ));
    Running {
        proxy,
        addrs,
        stop: Some(stop_tx),
        task,
    }
}

/// Resolves on SIGTERM or SIGINT; reloads on SIGHUP meanwhile.
pub async fn signals(shared: Arc<Shared>) {
    Signals::install().run(shared).await
}

/// The process's signal handlers, installed before anything else of the
/// process starts: a SIGTERM or SIGHUP that arrives while the config loads or
/// the listeners bind is then held for [`Signals::run`] instead of taking its
/// default action (ending the process).
pub struct Signals(Option<[tokio::signal::unix::Signal; 3]>);

impl Signals {
    /// Installs handlers for SIGTERM, SIGINT and SIGHUP (needs a runtime).
    pub fn install() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(int), Ok(hup)) => Signals(Some([term, int, hup])),
            _ => Signals(None),
        }
    }

    /// Resolves on SIGTERM or SIGINT; reloads on SIGHUP meanwhile.
    pub async fn run(self, shared: Arc<Shared>) {
        let Some([mut term, mut int, mut hup]) = self.0 else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM received"); return; }
                _ = int.recv() => { tracing::info!("SIGINT received"); return; }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP received: reloading config");
                    let _ = crate::reload::reload_off_runtime(shared.clone()).await;
                }
            }
        }
    }
}
