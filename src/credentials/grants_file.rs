//! The grant store's file on disk: how it is read, replaced and locked.
//! What it holds is [`super::grants`]'s business.
//!
//! Replaced atomically (temporary file in the same folder, fsync, rename,
//! fsync the folder) with mode 0600, so a crash or a full disk leaves either
//! the old file or the new one, never half of one. A file that cannot be
//! read or parsed is reported by place and kind of fault, never quoted: it
//! holds refresh tokens.

use serde::de::DeserializeOwned;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("grant store {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "grant store {path}: not a valid grant file ({detail}); it was left untouched: fix or move it away"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error("grant store {path}: cannot write: {source}; the previous file is intact")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Reads and parses the JSON at `path`; `None` when there is no file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    // serde_json's message can quote a value it choked on, and this file
    // holds refresh tokens: say where and what kind of fault, never the text.
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "not valid JSON",
            serde_json::error::Category::Data => "JSON of the wrong shape",
            serde_json::error::Category::Eof => "cut short",
        };
        StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("{kind} at line {} column {}", e.line(), e.column()),
        }
    })
}

/// Temporary file beside the target, fsync, rename over it, fsync the
/// folder. Returns the written file's metadata, taken through the open file
/// after the rename (which changes its ctime): a file another process
/// renames over ours later does not match it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<std::fs::Metadata> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("grants");
    let tmp = dir.join(format!(
        ".{name}.{}.{:x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        let written = file.metadata()?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(written)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Opens (creating) `{store}.lock`, the file whose advisory `flock` the
/// processes sharing a store take one at a time while refreshing. Blocks on
/// the file system: call it off the runtime's threads.
pub fn open_lock_file(store: &Path) -> std::io::Result<std::fs::File> {
    let mut name = store
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".lock");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(store.with_file_name(name))
}
