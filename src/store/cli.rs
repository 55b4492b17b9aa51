//! `atomgit-proxy store import` and `store list`.
//!
//! Import copies grants from a JSON grant file into the configured store,
//! never over a newer grant (by `updated_at_ms`), so running it twice, or
//! after the fleet refreshed, changes nothing. List shows each user's grant
//! state and expiry, never a token.

use super::{Store, Written};
use crate::credentials::grants::{Grant, GrantStore, now_ms};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

/// What an import did, for the summary line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Imported {
    pub written: Vec<String>,
    /// The store's copy was as new or newer.
    pub kept: Vec<String>,
}

/// Copies every grant of the file at `from` into `store`.
pub async fn import(store: &Arc<dyn Store>, from: &Path) -> anyhow::Result<Imported> {
    if !from.exists() {
        anyhow::bail!("{}: no such grant file", from.display());
    }
    let source = Arc::new(GrantStore::open(from)?);
    let mut done = Imported::default();
    for user in source.users() {
        let Some(grant) = source.get(&user) else {
            continue;
        };
        // Twice at most: a conflict means someone wrote between our read
        // and write, and the next read shows whether theirs is newer.
        let mut written = false;
        for _ in 0..2 {
            let current = store.grant(&user).await?;
            if current
                .as_ref()
                .is_some_and(|c| c.grant.updated_at_ms >= grant.updated_at_ms)
            {
                break;
            }
            let version = current.map_or(0, |c| c.version);
            let expected = (store.backend() == "redis").then_some(version);
            if store.put_grant(&user, grant.clone(), expected).await? == Written::Stored {
                written = true;
                break;
            }
        }
        if written {
            done.written.push(user);
        } else {
            done.kept.push(user);
        }
    }
    Ok(done)
}

/// One line per user: name, state and expiry (no secret).
pub async fn list(store: &Arc<dyn Store>) -> anyhow::Result<String> {
    let mut grants = store.grants().await?;
    grants.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<16} {:<26} refresh expires",
        "user", "state", "access expires"
    );
    for (user, grant) in &grants {
        let _ = writeln!(
            out,
            "{user:<24} {:<16} {:<26} {}",
            state(grant),
            when(Some(grant.access_expires_at_ms)),
            when(grant.refresh_expires_at_ms)
        );
    }
    Ok(out)
}

fn state(grant: &Grant) -> &'static str {
    let now = now_ms();
    if grant.revoked.is_some() {
        "revoked"
    } else if grant.refresh_expires_at_ms.is_some_and(|at| at <= now) {
        "refresh-expired"
    } else if grant.access_expires_at_ms <= now {
        "access-expired"
    } else {
        "ok"
    }
}

fn when(ms: Option<u64>) -> String {
    match ms.and_then(|ms| chrono::DateTime::from_timestamp_millis(ms as i64)) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        None => "-".into(),
    }
}
