//! The durable grant store: user grants in one JSON file.
//!
//! Written atomically (temporary file in the same folder, fsync, rename,
//! fsync the folder) with mode 0600, so a crash or a full disk leaves either
//! the old file or the new one, never half of one. A file that cannot be
//! read or parsed stops the start and is never overwritten: it may hold the
//! only copy of a refresh token. A failed write keeps the old file and the
//! new grant in memory, and is reported.
//!
//! Each grant records the platform it was obtained for ([`GrantBinding`]):
//! a user token is only ever sent to that upstream, for that OAuth client.
//!
//! File I/O runs on tokio's blocking pool (the async methods), never on a
//! runtime worker: an fsync can take as long as the disk likes. The file is
//! read again only when it changed since this process last read or wrote it
//! (`FileStamp`), so the checks before each refresh are one `stat`.

use super::grants_file::{self, StoreError};
use crate::config::{AppConfig, Secret, UpstreamConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Bumped on an incompatible change; a newer file is refused, not rewritten.
pub const FORMAT_VERSION: u32 = 1;

/// One user's grant.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Grant {
    pub access_token: String,
    /// Epoch milliseconds, as the platform's quirk states it.
    pub access_expires_at_ms: u64,
    pub refresh_token: String,
    pub refresh_expires_at_ms: Option<u64>,
    /// Set when the platform refused the refresh token: only a new login helps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<String>,
    /// Epoch milliseconds of the last change: the newer copy wins when the
    /// file and memory disagree (another process refreshed).
    pub updated_at_ms: u64,
    /// The platform this grant was obtained for. `None` in stores written
    /// before grants were bound: such a grant is adopted by the config that
    /// first uses it (see `credentials::user`), since such a store only ever
    /// served one config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_to: Option<GrantBinding>,
}

/// What a user grant belongs to: the upstream its token is sent to and the
/// OAuth client that obtained it. Not the app's key: rotating the JWT key
/// leaves the OAuth client, and so every user grant, valid.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct GrantBinding {
    /// `{origin}{base_path}` of the upstream.
    pub upstream: String,
    pub app_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

impl GrantBinding {
    /// The binding of grants obtained under this app and upstream.
    pub fn of(app: &AppConfig, upstream: &UpstreamConfig) -> GrantBinding {
        GrantBinding {
            upstream: upstream.base_url(),
            app_id: app.id,
            client_id: app.client_id.clone(),
        }
    }
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("access_expires_at_ms", &self.access_expires_at_ms)
            .field("revoked", &self.revoked)
            .field("bound_to", &self.bound_to)
            .finish_non_exhaustive()
    }
}

impl Grant {
    pub fn access_token(&self) -> Secret {
        Secret::new(self.access_token.clone())
    }
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantsDocument {
    version: u32,
    #[serde(default)]
    grants: BTreeMap<String, Grant>,
    /// Login links already used (nonce to expiry, epoch seconds), so a link
    /// works once even across a restart.
    #[serde(default)]
    used_links: BTreeMap<String, u64>,
}

/// The store: the file's content in memory, written through on each change.
pub struct GrantStore {
    path: PathBuf,
    data: Mutex<GrantsDocument>,
    /// Serialises writers so two renames never interleave.
    write: Mutex<()>,
    /// The last write failed: memory holds grants the file does not (a
    /// rotated refresh token, maybe the only live one). Retried before the
    /// next refresh, so it reaches the disk as soon as the disk takes it.
    dirty: std::sync::atomic::AtomicBool,
    /// The file as this process last read or wrote it.
    seen: Mutex<Option<FileStamp>>,
}

/// Which file version is on disk, as `stat` tells it. Every writer replaces
/// the file by renaming a new one over it, so a change shows as a new inode;
/// size and times catch an edit in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    fn read(path: &Path) -> Option<FileStamp> {
        std::fs::metadata(path).ok().map(|m| FileStamp::of(&m))
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl GrantStore {
    /// Loads the store; a missing file is an empty store (created on first write).
    pub fn open(path: &Path) -> Result<GrantStore, StoreError> {
        // Taken before the read: a write landing after it is read next time.
        let seen = FileStamp::read(path);
        let data = read_document(path)?.unwrap_or_else(|| GrantsDocument {
            version: FORMAT_VERSION,
            ..GrantsDocument::default()
        });
        Ok(GrantStore {
            path: path.to_path_buf(),
            data: Mutex::new(data),
            write: Mutex::new(()),
            dirty: std::sync::atomic::AtomicBool::new(false),
            seen: Mutex::new(seen),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn data(&self) -> std::sync::MutexGuard<'_, GrantsDocument> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, user: &str) -> Option<Grant> {
        self.data().grants.get(user).cloned()
    }

    pub fn users(&self) -> Vec<String> {
        self.data().grants.keys().cloned().collect()
    }

    /// Adopts the file's copy of each grant that is newer than ours: another
    /// process (`atomgit-proxy token`, a replica sharing the volume) may have
    /// refreshed it, and our refresh token may be dead since. Reads the file
    /// only if it changed since we last read or wrote it.
    pub async fn sync_from_disk(self: &Arc<Self>) {
        let _ = self.off_runtime(GrantStore::sync_blocking).await;
    }

    fn sync_blocking(&self) {
        let now = FileStamp::read(&self.path);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if now.is_some() && now == *seen {
            return;
        }
        let Ok(Some(disk)) = read_document(&self.path) else {
            return;
        };
        *seen = now;
        drop(seen);
        let mut data = self.data();
        for (user, theirs) in disk.grants {
            let newer = data
                .grants
                .get(&user)
                .is_none_or(|ours| theirs.updated_at_ms > ours.updated_at_ms);
            if newer {
                data.grants.insert(user, theirs);
            }
        }
    }

    /// Stores `grant` for `user` in memory, then writes the file. On a write
    /// error the in-memory grant stays (it is the freshest there is) and the
    /// error is returned for the caller to report. The write finishes even
    /// if the caller stops waiting for it.
    pub async fn put(self: &Arc<Self>, user: &str, grant: Grant) -> Result<(), StoreError> {
        self.data().grants.insert(user.to_owned(), grant);
        self.persist().await
    }

    /// Records a login link nonce as used. False if it already was.
    pub async fn use_link(
        self: &Arc<Self>,
        nonce: &str,
        expires_at_s: u64,
    ) -> Result<bool, StoreError> {
        {
            let mut data = self.data();
            let now_s = now_ms() / 1000;
            data.used_links.retain(|_, exp| *exp >= now_s);
            if data.used_links.contains_key(nonce) {
                return Ok(false);
            }
            data.used_links.insert(nonce.to_owned(), expires_at_s);
        }
        self.persist().await.map(|()| true)
    }

    /// An exclusive lock on `{store}.lock`, held while a refresh runs so that
    /// processes sharing the store refresh one at a time (advisory `flock`;
    /// released when the returned file is dropped).
    ///
    /// Taken with non-blocking attempts a short sleep apart rather than a
    /// blocking `flock`: a blocked call would hold a blocking-pool thread
    /// for as long as another process keeps the lock, even after the caller
    /// gave up waiting, while this stops when its future is dropped.
    pub async fn lock_for_refresh(&self) -> std::io::Result<std::fs::File> {
        const RETRY: std::time::Duration = std::time::Duration::from_millis(20);
        let path = self.path.clone();
        let file = tokio::task::spawn_blocking(move || grants_file::open_lock_file(&path))
            .await
            .map_err(std::io::Error::other)??;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(std::fs::TryLockError::WouldBlock) => tokio::time::sleep(RETRY).await,
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
        }
    }

    /// Writes the file again if the last write failed.
    pub async fn persist_if_dirty(self: &Arc<Self>) -> Result<(), StoreError> {
        if self.dirty.load(std::sync::atomic::Ordering::SeqCst) {
            self.persist().await?;
            tracing::info!(store = %self.path.display(), "grant store written again after an earlier failure");
        }
        Ok(())
    }

    /// Writes memory to the file, on the blocking pool.
    async fn persist(self: &Arc<Self>) -> Result<(), StoreError> {
        self.off_runtime(GrantStore::persist_blocking)
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::Write {
                    path: self.path.clone(),
                    source: std::io::Error::other(e),
                })
            })
    }

    fn persist_blocking(&self) -> Result<(), StoreError> {
        let _writer = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = {
            let data = self.data();
            serde_json::to_vec_pretty(&*data).map_err(|e| StoreError::Write {
                path: self.path.clone(),
                source: std::io::Error::other(e),
            })?
        };
        let result = match write_file(&self.path, &bytes) {
            Ok(written) => {
                // What we wrote holds everything we know: no need to read it back.
                *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(written);
                Ok(())
            }
            Err(source) => Err(StoreError::Write {
                path: self.path.clone(),
                source,
            }),
        };
        self.dirty
            .store(result.is_err(), std::sync::atomic::Ordering::SeqCst);
        result
    }

    /// Runs `f` on tokio's blocking pool. The task runs to its end even if
    /// the caller stops waiting, so a write is never cut off half-way.
    async fn off_runtime<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&GrantStore) -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store)).await
    }
}

fn read_document(path: &Path) -> Result<Option<GrantsDocument>, StoreError> {
    let Some(document) = grants_file::read_json::<GrantsDocument>(path)? else {
        return Ok(None);
    };
    if document.version != FORMAT_VERSION {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!(
                "format version {} (this build reads version {FORMAT_VERSION})",
                document.version
            ),
        });
    }
    Ok(Some(document))
}

/// [`grants_file::write_atomically`], returning the stamp of the file written.
fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<FileStamp> {
    grants_file::write_atomically(path, bytes).map(|written| FileStamp::of(&written))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn grant(token: &str) -> Grant {
        Grant {
            access_token: token.into(),
            access_expires_at_ms: now_ms() + 3_600_000,
            refresh_token: "refresh_x".into(),
            refresh_expires_at_ms: None,
            revoked: None,
            updated_at_ms: now_ms(),
            bound_to: None,
        }
    }

    #[tokio::test]
    async fn a_store_written_before_bindings_still_reads_and_bindings_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grants.json");
        std::fs::write(
            &path,
            br#"{"version": 1, "grants": {"alice": {"access_token": "atu_1",
                "access_expires_at_ms": 1, "refresh_token": "r", "refresh_expires_at_ms": null,
                "updated_at_ms": 1}}}"#,
        )
        .unwrap();
        let store = Arc::new(GrantStore::open(&path).unwrap());
        assert_eq!(store.get("alice").unwrap().bound_to, None);
        let binding = GrantBinding {
            upstream: "https://api.atomgit.com".into(),
            app_id: 75,
            client_id: Some("c1".into()),
        };
        let mut g = grant("atu_2");
        g.bound_to = Some(binding.clone());
        store.put("alice", g).await.unwrap();
        let again = GrantStore::open(&path).unwrap();
        assert_eq!(again.get("alice").unwrap().bound_to, Some(binding));
    }

    #[tokio::test]
    async fn grants_survive_a_reopen_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grants.json");
        let store = Arc::new(GrantStore::open(&path).unwrap());
        store.put("alice", grant("atu_1")).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = GrantStore::open(&path).unwrap();
        assert_eq!(again.get("alice").unwrap().access_token, "atu_1");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"version\": 1"), "{text}");
    }

    #[test]
    fn a_corrupt_file_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grants.json");
        std::fs::write(&path, b"{ not json").unwrap();
        let err = GrantStore::open(&path).err().unwrap();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"{ not json");
        std::fs::write(&path, br#"{"version": 9, "grants": {}}"#).unwrap();
        assert!(GrantStore::open(&path).is_err());
        // A value of the wrong type is named by place, never quoted: it may
        // be a refresh token.
        std::fs::write(
            &path,
            br#"{"version": 1, "grants": {"alice": {"access_expires_at_ms": "secret_refresh_value"}}}"#,
        )
        .unwrap();
        let err = GrantStore::open(&path).err().unwrap().to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(
            !err.contains("secret_refresh_value") && !err.contains("alice"),
            "{err}"
        );
    }

    /// Makes `dir` read-only for this process, even as root (where mode bits
    /// do not bind): chmod, and the immutable attribute when that is not enough.
    struct ReadOnly<'a>(&'a Path);

    impl<'a> ReadOnly<'a> {
        fn new(dir: &'a Path) -> Self {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o500)).unwrap();
            let guard = ReadOnly(dir);
            if std::fs::write(dir.join(".probe"), b"x").is_ok() {
                std::fs::remove_file(dir.join(".probe")).unwrap();
                let status = std::process::Command::new("chattr")
                    .arg("+i")
                    .arg(dir)
                    .status();
                assert!(
                    status.is_ok_and(|s| s.success()),
                    "cannot make {} read-only (chattr +i failed)",
                    dir.display()
                );
                assert!(
                    std::fs::write(dir.join(".probe"), b"x").is_err(),
                    "folder still writable"
                );
            }
            guard
        }
    }

    impl Drop for ReadOnly<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(self.0)
                .status();
            let _ = std::fs::set_permissions(self.0, std::fs::Permissions::from_mode(0o700));
        }
    }

    #[tokio::test]
    async fn a_failed_write_keeps_the_file_and_the_grant_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grants.json");
        let store = Arc::new(GrantStore::open(&path).unwrap());
        store.put("alice", grant("atu_1")).await.unwrap();
        let before = std::fs::read(&path).unwrap();
        {
            let _ro = ReadOnly::new(dir.path());
            let err = store.put("alice", grant("atu_2")).await.unwrap_err();
            assert!(matches!(err, StoreError::Write { .. }), "{err}");
            assert!(err.to_string().contains("previous file is intact"));
        }
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(store.get("alice").unwrap().access_token, "atu_2");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
        // Once the folder is writable again, the retry saves the newer grant.
        store.persist_if_dirty().await.unwrap();
        assert_eq!(
            GrantStore::open(&path)
                .unwrap()
                .get("alice")
                .unwrap()
                .access_token,
            "atu_2"
        );
    }

    #[tokio::test]
    async fn links_work_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(GrantStore::open(&dir.path().join("g.json")).unwrap());
        let exp = now_ms() / 1000 + 600;
        assert!(store.use_link("n1", exp).await.unwrap());
        assert!(!store.use_link("n1", exp).await.unwrap());
        let reopened = Arc::new(GrantStore::open(&dir.path().join("g.json")).unwrap());
        assert!(!reopened.use_link("n1", exp).await.unwrap());
    }

    /// Two processes sharing the file, as replicas or `atomgit-proxy token`
    /// do: each one's writes are seen by the other's next sync, for every
    /// user, though an unchanged file is not read again.
    #[tokio::test]
    async fn a_sync_adopts_what_another_process_wrote_since() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grants.json");
        let here = Arc::new(GrantStore::open(&path).unwrap());
        here.put("alice", grant("atu_1")).await.unwrap();
        let there = Arc::new(GrantStore::open(&path).unwrap());
        let mut newer = grant("atu_2");
        newer.updated_at_ms += 1;
        there.put("alice", newer).await.unwrap();
        there.put("bob", grant("atu_b")).await.unwrap();
        here.sync_from_disk().await;
        assert_eq!(here.get("alice").unwrap().access_token, "atu_2");
        assert_eq!(here.get("bob").unwrap().access_token, "atu_b");
        // An older copy on disk never replaces a newer one in memory.
        let mut newest = grant("atu_3");
        newest.updated_at_ms += 2;
        here.put("alice", newest).await.unwrap();
        there.sync_from_disk().await;
        assert_eq!(there.get("alice").unwrap().access_token, "atu_3");
        let mut stale = grant("atu_old");
        stale.updated_at_ms = 1;
        grants_file::write_atomically(
            &path,
            &serde_json::to_vec(&GrantsDocument {
                version: FORMAT_VERSION,
                grants: BTreeMap::from([("alice".to_owned(), stale)]),
                used_links: BTreeMap::new(),
            })
            .unwrap(),
        )
        .unwrap();
        here.sync_from_disk().await;
        assert_eq!(here.get("alice").unwrap().access_token, "atu_3");
    }
}
