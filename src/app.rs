//! A running proxy: the shared state, its listeners, reloads and shutdown.

use crate::config::Config;
use crate::proxy::Proxy;
use crate::server::{self, Listener};
use crate::state::{Shared, Snapshot};
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Default mode of a unix socket listener: owner and group may connect.
pub const UNIX_SOCKET_MODE: u32 = 0o660;

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
    let grace = config.shutdown_grace;
    let shared = Shared::new(Snapshot::build(config, None)?);
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
    Ok(Running {
        proxy,
        addrs,
        stop: Some(stop_tx),
        task,
    })
}

/// Re-reads the config file and swaps in a new snapshot if, and only if, the
/// whole of it is valid. On failure the old snapshot keeps serving.
pub fn reload(shared: &Shared) -> Result<(), String> {
    let current = shared.snapshot.load_full();
    let Some(path) = current.config.path.clone() else {
        return Err("this config was not loaded from a file; nothing to reload".into());
    };
    let outcome = Config::load(&path)
        .map_err(|e| e.to_string())
        .and_then(|config| Snapshot::build(config, Some(&current)));
    let label = |outcome: &str| crate::metrics::OutcomeLabels {
        outcome: outcome.into(),
    };
    let mut status = shared.reload.lock().unwrap_or_else(|p| p.into_inner());
    match outcome {
        Ok(next) => {
            let listen_changed = next.config.listen != current.config.listen;
            let app = next.config.app.fingerprint;
            shared.snapshot.store(Arc::new(next));
            // Tokens minted under another app identity must not be used again.
            shared.credentials.retain_app(&app);
            status.last_error = None;
            shared.metrics.reload_failed.set(0);
            shared.metrics.reloads.get_or_create(&label("ok")).inc();
            if listen_changed {
                tracing::warn!(
                    "`listen` changed: listeners are bound at start only; restart the proxy to use the new addresses"
                );
            }
            tracing::info!(config = %path.display(), "config reloaded");
            Ok(())
        }
        Err(e) => {
            status.last_error = Some(e.clone());
            shared.metrics.reload_failed.set(1);
            shared.metrics.reloads.get_or_create(&label("error")).inc();
            tracing::error!(config = %path.display(), "config reload failed; the previous config keeps serving: {e}");
            Err(e)
        }
    }
}

/// Resolves on SIGTERM or SIGINT; reloads on SIGHUP meanwhile.
pub async fn signals(shared: Arc<Shared>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received"); return; }
            _ = int.recv() => { tracing::info!("SIGINT received"); return; }
            _ = hup.recv() => {
                tracing::info!("SIGHUP received: reloading config");
                let _ = reload(&shared);
            }
        }
    }
}
