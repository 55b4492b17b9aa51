//! The file backend: the JSON grant file of `credentials::grants`, as a
//! single proxy (or replicas sharing one volume) always used it.
//!
//! The refresh lock is the file's `flock`; pending logins and installation
//! tokens stay in this process's memory. A grant's version is its
//! `updated_at_ms`; writes are not compared-and-set, because the `flock`
//! already makes refreshes take turns and each re-reads the file first.

use super::{LockGuard, Store, StoreError, StoreHealth, Version, Versioned, Written};
use crate::credentials::grants::{Grant, GrantStore};
use crate::credentials::grants_file;
use crate::credentials::pending_logins::PendingLogins;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub struct FileStore {
    grants: Arc<GrantStore>,
    /// Logins started on this proxy (a file store serves one process's browser flow).
    logins: PendingLogins,
    identity: String,
}

impl FileStore {
    pub fn open(path: &Path) -> Result<FileStore, grants_file::StoreError> {
        Ok(FileStore {
            grants: Arc::new(GrantStore::open(path)?),
            logins: PendingLogins::default(),
            identity: Self::identity_of(path),
        })
    }

    pub fn identity_of(path: &Path) -> String {
        format!("file:{}", path.display())
    }

    pub fn grant_store(&self) -> &Arc<GrantStore> {
        &self.grants
    }
}

fn file_error(e: grants_file::StoreError) -> StoreError {
    StoreError::File(e.to_string())
}

#[async_trait::async_trait]
impl Store for FileStore {
    fn backend(&self) -> &'static str {
        "file"
    }

    fn identity(&self) -> &str {
        &self.identity
    }

    async fn grant(&self, user: &str) -> Result<Option<Versioned>, StoreError> {
        // Another process sharing the file may have refreshed since.
        self.grants.sync_from_disk().await;
        Ok(self.grants.get(user).map(|grant| Versioned {
            version: grant.updated_at_ms,
            grant,
        }))
    }

    fn cached_grant(&self, user: &str) -> Option<Grant> {
        self.grants.get(user)
    }

    async fn put_grant(
        &self,
        user: &str,
        grant: Grant,
        _expected: Option<Version>,
    ) -> Result<Written, StoreError> {
        self.grants
            .put(user, grant)
            .await
            .map(|()| Written::Stored)
            .map_err(file_error)
    }

    async fn grants(&self) -> Result<Vec<(String, Grant)>, StoreError> {
        self.grants.sync_from_disk().await;
        Ok(self
            .grants
            .users()
            .into_iter()
            .filter_map(|u| self.grants.get(&u).map(|g| (u, g)))
            .collect())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.grants.persist_if_dirty().await.map_err(file_error)
    }

    async fn lock_refresh(
        &self,
        user: &str,
        wait: Duration,
    ) -> Result<Option<LockGuard>, StoreError> {
        match tokio::time::timeout(wait, self.grants.lock_for_refresh()).await {
            Ok(Ok(file)) => Ok(Some(LockGuard::new(file))),
            Ok(Err(e)) => {
                // As before fleets: a file store that cannot be locked (a
                // read-only volume) still serves its one process.
                tracing::warn!(
                    user,
                    "cannot take the grant store's refresh lock ({e}); refreshing without it"
                );
                Ok(Some(LockGuard::new(())))
            }
            Err(_) => Ok(None),
        }
    }

    async fn link_key(&self) -> Result<Vec<u8>, StoreError> {
        // File I/O (and an fsync when the key is created): off the runtime.
        let path = self.grants.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            crate::credentials::login_link::load_or_create_key(&path)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .map_err(|e| StoreError::File(format!("cannot read the link key: {e}")))
    }

    async fn use_link(&self, nonce: &str, expires_at_s: u64) -> Result<bool, StoreError> {
        self.grants
            .use_link(nonce, expires_at_s)
            .await
            .map_err(file_error)
    }

    async fn insert_login(&self, state: &str, user: &str) -> Result<(), StoreError> {
        self.logins.insert(state.to_owned(), user.to_owned());
        Ok(())
    }

    async fn take_login(&self, state: &str) -> Result<Option<String>, StoreError> {
        Ok(self.logins.take(state))
    }

    async fn health(&self) -> StoreHealth {
        StoreHealth {
            backend: "file",
            state: "ok",
            error: None,
        }
    }
}
