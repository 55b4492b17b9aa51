//! Reloading: a new snapshot built whole, or nothing changes.
//!
//! Triggered by SIGHUP (see `app::signals`) and by the watcher here. The
//! watcher watches *folders*, not files: editors replace a file by renaming
//! a new one over it, and Kubernetes swaps a ConfigMap by renaming a `..data`
//! symlink, and a watch on the old file would see neither. Any event in a
//! watched folder starts a short debounce; then the content of every file
//! the config is built from is hashed, and only a changed hash reloads. So
//! bursts of events make one reload, and unrelated files in the folder (the
//! grant store, say) make none.

use crate::config::Config;
use crate::metrics::OutcomeLabels;
use crate::state::{Shared, Snapshot};
use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Quiet time after the last event before the files are compared.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

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
    let label = |outcome: &str| OutcomeLabels {
        outcome: outcome.into(),
    };
    let mut status = shared.reload.lock().unwrap_or_else(|p| p.into_inner());
    match outcome {
        Ok(next) => {
            let listen_changed = next.config.listen != current.config.listen;
            let app = next.config.app.fingerprint;
            shared.snapshot.store(Arc::new(next));
            // Tokens minted under another app identity must not be used
            // again; everything else is kept, so a reload mints nothing.
            shared.credentials.retain_app(&app);
            status.last_error = None;
            shared.metrics.reload_failed.set(0);
            shared.metrics.reloads.get_or_create(&label("ok")).inc();
            if listen_changed {
                tracing::warn!(
                    "`listen` changed, but listeners are bound at start only: restart the proxy to use the new addresses"
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

/// A running watcher; dropping it stops watching.
pub struct WatchHandle {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches the folders of every file the current config is built from and
/// reloads when their content changes.
pub fn watch(shared: Arc<Shared>) -> notify::Result<WatchHandle> {
    let (tx, rx) = mpsc::channel::<()>(1);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            // A full channel already holds a wake-up: nothing is lost.
            let _ = tx.try_send(());
        }
    })?;
    let mut state = WatchState {
        watcher,
        folders: BTreeSet::new(),
        digest: digest(&shared.snapshot.load().config.files),
    };
    state.sync_folders(&shared.snapshot.load().config.files)?;
    let task = tokio::spawn(state.run(shared, rx));
    Ok(WatchHandle { task })
}

struct WatchState {
    watcher: notify::RecommendedWatcher,
    folders: BTreeSet<PathBuf>,
    /// Hash of the files as last loaded (or last seen failing).
    digest: [u8; 32],
}

impl WatchState {
    async fn run(mut self, shared: Arc<Shared>, mut rx: mpsc::Receiver<()>) {
        while rx.recv().await.is_some() {
            // Debounce: wait until events stop for a moment.
            while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
            let files = shared.snapshot.load().config.files.clone();
            let now = digest(&files);
            // After a failed reload the files it wanted (a key not there yet)
            // are not among the hashed ones: retry on any event until it works.
            let failing = shared
                .reload
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .last_error
                .is_some();
            if now == self.digest && !failing {
                continue;
            }
            self.digest = now;
            tracing::info!("config files changed: reloading");
            if reload(&shared).is_ok() {
                let files = shared.snapshot.load().config.files.clone();
                // The new config may name other files; hash what it names.
                self.digest = digest(&files);
                if let Err(e) = self.sync_folders(&files) {
                    tracing::warn!("cannot watch the new config's folders: {e}");
                }
            }
        }
    }

    /// Watches exactly the folders holding `files`.
    fn sync_folders(&mut self, files: &[PathBuf]) -> notify::Result<()> {
        let wanted: BTreeSet<PathBuf> = files.iter().map(|f| folder_of(f)).collect();
        for gone in self.folders.difference(&wanted) {
            let _ = self.watcher.unwatch(gone);
        }
        for new in wanted.difference(&self.folders) {
            self.watcher.watch(new, RecursiveMode::NonRecursive)?;
        }
        self.folders = wanted;
        Ok(())
    }
}

fn folder_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Hash of the files' contents (following symlinks, as a reload reads them);
/// an unreadable file hashes as its name, so it changes the digest too.
fn digest(files: &[PathBuf]) -> [u8; 32] {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.as_os_str().as_encoded_bytes());
        match std::fs::read(f) {
            Ok(bytes) => {
                h.update((bytes.len() as u64).to_be_bytes());
                h.update(&bytes);
            }
            Err(_) => h.update(b"\0unreadable"),
        }
    }
    h.finalize().into()
}
