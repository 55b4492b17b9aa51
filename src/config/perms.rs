//! Secret files other users can read: warned about, as ssh does.
//!
//! A private key, client secret or key file, the grant store (refresh
//! tokens) and the login-link key (it mints logins) are credentials; a mode
//! that lets the group or others read them hands the app's identity to every
//! account on the machine. It is a warning, not an error: the operator may
//! have reasons (a group-shared secret volume), and refusing to start over it
//! would turn a hardening hint into an outage.

use super::{Config, link_key_path};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

impl Config {
    /// One line per secret file readable by group or others. Files that do
    /// not exist yet are skipped: the proxy creates the store and link key
    /// itself, with mode 0600.
    pub fn file_warnings(&self) -> Vec<String> {
        let store_files = self
            .store_path
            .iter()
            .flat_map(|store| [store.clone(), link_key_path(store)]);
        let files: Vec<PathBuf> = self
            .secret_files
            .iter()
            .cloned()
            .chain(store_files)
            .collect();
        files.iter().filter_map(|f| too_open(f)).collect()
    }
}

/// The warning for `path`, when its mode lets group or others read or write it.
fn too_open(path: &Path) -> Option<String> {
    // Follows symlinks: what matters is the mode of the file that is read.
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "permissions {mode:04o} for {path} are too open: other users on this machine can \
             read this secret; restrict it with `chmod 600 {path}`",
            path = path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_or_world_access_is_too_open() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.pem");
        std::fs::write(&file, "x").unwrap();
        for (mode, warned) in [(0o600, false), (0o400, false), (0o640, true), (0o644, true)] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let warning = too_open(&file);
            assert_eq!(warning.is_some(), warned, "{mode:o}: {warning:?}");
            if let Some(w) = warning {
                assert!(
                    w.contains(&format!("{mode:04o}")) && w.contains("chmod 600"),
                    "{w}"
                );
            }
        }
        assert!(too_open(&dir.path().join("missing")).is_none());
    }
}
