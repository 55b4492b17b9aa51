//! The durable grant store: user grants in one JSON file, the
//! `GrantsDocument`.
//!
//! Each change is written through, atomically (see [`super::grants_file`]).
//! A file that cannot be read or parsed stops the start and is never
//! overwritten: it may hold the only copy of a refresh token. A failed write
//! keeps the old file and the new grant in memory, and is reported.
//!
//! Each grant records the platform it was obtained for ([`GrantBinding`]):
//! a user token is only ever sent to that upstream, for that OAuth client.

use super::grants_file::{self, StoreError};
use crate::config::{AppConfig, Secret, UpstreamConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
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

/// The store file's JSON document.
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
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl GrantStore {
    /// Loads the store; a missing file is an empty store (created on first write).
    pub fn open(path: &Path) -> Result<GrantStore, StoreError> {
        let data = read_document(path)?.unwrap_or_else(|| GrantsDocument {
            version: FORMAT_VERSION,
            ..GrantsDocument::default()
        });
        Ok(GrantStore {
            path: path.to_path_buf(),
            data: Mutex::new(data),
            write: Mutex::new(()),
            dirty: std::sync::atomic::AtomicBool::new(false),
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

    /// Adopts the file's copy of `user`'s grant if it is newer than ours:
    /// another process (`atomgit-proxy token`, a replica sharing the volume)
    /// may have refreshed it, and our refresh token may be dead since.
    pub fn sync_from_disk(&self, user: &str) {
        let Ok(Some(disk)) = read_document(&self.path) else {
            return;
        };
        let Some(theirs) = disk.grants.get(user) else {
            return;
        };
        let mut data = self.data();
        let newer = data
            .grants
            .get(user)
            .is_none_or(|ours| theirs.updated_at_ms > ours.updated_at_ms);
        if newer {
            data.grants.insert(user.to_owned(), theirs.clone());
        }
    }

    /// Stores `grant` for `user` in memory, then writes the file. On a write
    /// error the in-memory grant stays (it is the freshest there is) and the
    /// error is returned for the caller to report.
    pub fn put(&self, user: &str, grant: Grant) -> Result<(), StoreError> {
        self.data().grants.insert(user.to_owned(), grant);
        self.persist()
    }

    /// Records a login link nonce as used. False if it already was.
    pub fn use_link(&self, nonce: &str, expires_at_s: u64) -> Result<bool, StoreError> {
        {
            let mut data = self.data();
            let now_s = now_ms() / 1000;
            data.used_links.retain(|_, exp| *exp >= now_s);
            if data.used_links.contains_key(nonce) {
                return Ok(false);
            }
            data.used_links.insert(nonce.to_owned(), expires_at_s);
        }
        self.persist().map(|()| true)
    }

    /// An exclusive lock on `{store}.lock`, held while a refresh runs so that
    /// processes sharing the store refresh one at a time (advisory `flock`;
    /// released when the returned file is dropped).
    pub async fn lock_for_refresh(&self) -> std::io::Result<std::fs::File> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || grants_file::lock(&path))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Writes the file again if the last write failed.
    pub fn persist_if_dirty(&self) -> Result<(), StoreError> {
        if self.dirty.load(std::sync::atomic::Ordering::SeqCst) {
            self.persist()?;
            tracing::info!(store = %self.path.display(), "grant store written again after an earlier failure");
        }
        Ok(())
    }

    fn persist(&self) -> Result<(), StoreError> {
        let _writer = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = {
            let data = self.data();
            serde_json::to_vec_pretty(&*data).map_err(|e| StoreError::Write {
                path: self.path.clone(),
                source: std::io::Error::other(e),
            })?
        };
        let result =
            grants_file::write_atomically(&self.path, &bytes).map_err(|source| StoreError::Write {
                path: self.path.clone(),
                source,
            });
        self.dirty
            .store(result.is_err(), std::sync::atomic::Ordering::SeqCst);
        result
    }
}

/// Reads the document, refusing a format this build does not know.
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

    #[test]
    fn a_store_written_before_bindings_still_reads_and_bindings_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grants.json");
        std::fs::write(
            &path,
            br#"{"version": 1, "grants": {"alice": {"access_token": "atu_1",
                "access_expires_at_ms": 1, "refresh_token": "r", "refresh_expires_at_ms": null,
                "updated_at_ms": 1}}}"#,
        )
        .unwrap();
        let store = GrantStore::open(&path).unwrap();
        assert_eq!(store.get("alice").unwrap().bound_to, None);
        let binding = GrantBinding {
            upstream: "https://api.atomgit.com".into(),
            app_id: 75,
            client_id: Some("c1".into()),
        };
        let mut g = grant("atu_2");
        g.bound_to = Some(binding.clone());
        store.put("alice", g).unwrap();
        let again = GrantStore::open(&path).unwrap();
        assert_eq!(again.get("alice").unwrap().bound_to, Some(binding));
    }

    #[test]
    fn grants_survive_a_reopen_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grants.json");
        let store = GrantStore::open(&path).unwrap();
        store.put("alice", grant("atu_1")).unwrap();
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

    #[test]
    fn a_failed_write_keeps_the_file_and_the_grant_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grants.json");
        let store = GrantStore::open(&path).unwrap();
        store.put("alice", grant("atu_1")).unwrap();
        let before = std::fs::read(&path).unwrap();
        {
            let _ro = ReadOnly::new(dir.path());
            let err = store.put("alice", grant("atu_2")).unwrap_err();
            assert!(matches!(err, StoreError::Write { .. }), "{err}");
            assert!(err.to_string().contains("previous file is intact"));
        }
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(store.get("alice").unwrap().access_token, "atu_2");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
        // Once the folder is writable again, the retry saves the newer grant.
        store.persist_if_dirty().unwrap();
        assert_eq!(
            GrantStore::open(&path)
                .unwrap()
                .get("alice")
                .unwrap()
                .access_token,
            "atu_2"
        );
    }

    #[test]
    fn links_work_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = GrantStore::open(&dir.path().join("g.json")).unwrap();
        let exp = now_ms() / 1000 + 600;
        assert!(store.use_link("n1", exp).unwrap());
        assert!(!store.use_link("n1", exp).unwrap());
        let reopened = GrantStore::open(&dir.path().join("g.json")).unwrap();
        assert!(!reopened.use_link("n1", exp).unwrap());
    }
}
