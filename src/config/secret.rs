//! Secrets: where they come from, and a wrapper that keeps them out of logs.

use super::file::SecretFile;
use std::fmt;
use std::path::Path;

/// A secret value. `Debug` and `Display` never show it, so a stray `{:?}` in a
/// log line or an error message cannot leak a key or token.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The raw value, for the one place that must send or use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Reads a secret from its source. Relative paths are relative to `base`
/// (the config file's folder). The error says where it looked, never what it found.
pub fn resolve(source: &SecretFile, base: &Path) -> Result<Secret, String> {
    match source {
        SecretFile::Value(v) if v.is_empty() => Err("value is empty".into()),
        SecretFile::Value(v) => Ok(Secret::new(v.clone())),
        SecretFile::Env(name) => match std::env::var(name) {
            Ok(v) if v.is_empty() => Err(format!("environment variable {name} is empty")),
            Ok(v) => Ok(Secret::new(v)),
            Err(_) => Err(format!("environment variable {name} is not set")),
        },
        SecretFile::File(path) => {
            let full = base.join(path);
            match std::fs::read_to_string(&full) {
                // Files written by editors and `echo` end in a newline that is not
                // part of the secret.
                Ok(v) if v.trim().is_empty() => Err(format!("file {} is empty", full.display())),
                Ok(v) => Ok(Secret::new(v.trim_end_matches(['\r', '\n']).to_owned())),
                Err(e) => Err(format!("cannot read {}: {e}", full.display())),
            }
        }
    }
}
