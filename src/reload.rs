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
//!
//! After a failed attempt the files hashed are the ones the *rejected*
//! config names (a key file that does not exist yet among them), so its fix
//! is noticed and nothing else is; and attempts are spaced by a backoff that
//! doubles up to a minute, so a folder that keeps changing cannot make a
//! storm of failing reloads.
//!
//! A reload blocks: it reads files, probes the app key with an RSA
//! signature, and may build a new TLS client. The watcher and SIGHUP run it
//! on tokio's blocking pool ([`reload_off_runtime`]), never on a worker that
//! is serving requests.

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
use tokio::time::Instant;

/// Quiet time after the last event before the files are compared.
pub const DEBOUNCE: Duration = Duration::from_millis(250);
/// The longest a debounce lasts: a file rewritten all the time in a watched
/// folder (the grant store beside the config) must not hold a reload off.
pub const DEBOUNCE_MAX: Duration = Duration::from_secs(2);
/// Wait after a failed attempt before the watcher tries again; it doubles
/// with each failure, up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// [`reload`] on tokio's blocking pool. It runs to its end even if the
/// caller stops waiting, so a snapshot is swapped in whole or not at all.
pub async fn reload_off_runtime(shared: Arc<Shared>) -> Result<(), String> {
    tokio::task::spawn_blocking(move || reload(&shared))
        .await
        .unwrap_or_else(|e| Err(format!("the reload failed: {e}")))
}

/// Re-reads the config file and swaps in a new snapshot if, and only if, the
/// whole of it is valid. On failure the old snapshot keeps serving. Blocks
/// (file reads, RSA, TLS): from async code, use [`reload_off_runtime`].
pub fn reload(shared: &Shared) -> Result<(), String> {
    let current = shared.snapshot.load_full();
    let Some(path) = current.config.path.clone() else {
        return Err("this config was not loaded from a file; nothing to reload".into());
    };
    let outcome = match Config::load(&path) {
        Err(e) => Err((e.to_string(), e.files)),
        Ok(config) => {
            let files = config.files.clone();
            Snapshot::build(config, Some(&current)).map_err(|e| (e, files))
        }
    };
    let label = |outcome: &str| OutcomeLabels {
        outcome: outcome.into(),
    };
    let mut status = shared.reload.lock().unwrap_or_else(|p| p.into_inner());
    status.at = Some(std::time::SystemTime::now());
    match outcome {
        Ok(next) => {
            for warning in next.config.file_warnings() {
                tracing::warn!("{warning}");
            }
            let listen_changed = next.config.listen != current.config.listen;
            let apps: Vec<_> = next.config.apps.iter().map(|a| a.fingerprint).collect();
            shared.quota.follow(&next);
            shared.snapshot.store(Arc::new(next));
            // Tokens minted under another app identity must not be used
            // again; everything else is kept, so a reload mints nothing.
            shared.credentials.retain_apps(&apps);
            status.last_error = None;
            status.failed_files = Vec::new();
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
        Err((e, files)) => {
            status.last_error = Some(e.clone());
            status.failed_files = files;
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
        digest: [0; 32],
        backoff: BACKOFF_MIN,
        not_before: None,
    };
    let files = state.watched_files(&shared);
    state.digest = digest(&files);
    state.sync_folders(&files)?;
    let task = tokio::spawn(state.run(shared, rx));
    Ok(WatchHandle { task })
}

struct WatchState {
    watcher: notify::RecommendedWatcher,
    folders: BTreeSet<PathBuf>,
    /// Hash of the watched files as last loaded (or last seen failing).
    digest: [u8; 32],
    /// Wait after the next failure.
    backoff: Duration,
    /// After a failure: no attempt before this.
    not_before: Option<Instant>,
}

impl WatchState {
    async fn run(mut self, shared: Arc<Shared>, mut rx: mpsc::Receiver<()>) {
        while rx.recv().await.is_some() {
            // Debounce: wait until events stop for a moment (or too long).
            let give_up = Instant::now() + DEBOUNCE_MAX;
            while Instant::now() < give_up
                && let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await
            {}
            if let Some(at) = self.not_before {
                tokio::time::sleep_until(at).await;
                // What came meanwhile is covered by the comparison below.
                while rx.try_recv().is_ok() {}
            }
            // Hashing the files and reloading read files and sign: off the
            // runtime, taking the watcher's state along and back.
            let task_shared = shared.clone();
            let checked = tokio::task::spawn_blocking(move || {
                self.check(&task_shared);
                self
            })
            .await;
            self = match checked {
                Ok(state) => state,
                Err(e) => {
                    tracing::error!("config watcher stopped: {e}");
                    return;
                }
            };
        }
    }

    /// Reloads if the watched files' content changed, then watches what the
    /// outcome names and sets the backoff.
    fn check(&mut self, shared: &Shared) {
        let files = self.watched_files(shared);
        let now = digest(&files);
        if now == self.digest {
            return;
        }
        tracing::info!("config files changed: reloading");
        let ok = reload(shared).is_ok();
        // Hash what the outcome names: the new config's files, or the
        // rejected one's. (A write landing between the reload's read and
        // this hash is seen at the next change; the window is the load.)
        let files = self.watched_files(shared);
        self.digest = digest(&files);
        if let Err(e) = self.sync_folders(&files) {
            tracing::warn!("cannot watch the config's folders: {e}");
        }
        if ok {
            self.backoff = BACKOFF_MIN;
            self.not_before = None;
        } else {
            self.not_before = Some(Instant::now() + self.backoff);
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// The files whose content decides a reload: those of the config in
    /// force, or, while the last attempt failed (here or by SIGHUP), those
    /// the rejected config names.
    fn watched_files(&self, shared: &Shared) -> Vec<PathBuf> {
        let status = shared.reload.lock().unwrap_or_else(|p| p.into_inner());
        if status.last_error.is_some() && !status.failed_files.is_empty() {
            return status.failed_files.clone();
        }
        drop(status);
        shared.snapshot.load().config.files.clone()
    }

    /// Watches exactly the folders holding `files`.
    fn sync_folders(&mut self, files: &[PathBuf]) -> notify::Result<()> {
        let wanted: BTreeSet<PathBuf> = files.iter().map(|f| folder_of(f)).collect();
        for gone in self.folders.difference(&wanted) {
            let _ = self.watcher.unwatch(gone);
        }
        let mut result = Ok(());
        let mut watching = wanted.clone();
        for new in wanted.difference(&self.folders) {
            // A folder that does not exist (yet) is skipped and tried again
            // at the next sync; the others are still watched.
            if let Err(e) = self.watcher.watch(new, RecursiveMode::NonRecursive) {
                watching.remove(new);
                result = Err(e);
            }
        }
        self.folders = watching;
        result
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
