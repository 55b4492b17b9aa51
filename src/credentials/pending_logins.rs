//! Logins started in a browser, waiting for the platform's callback.
//!
//! The login page remembers a random `state` for the user its link names;
//! the callback takes it back. This is the file store's keeping, in memory
//! only: a login outlives neither a restart nor [`PENDING_LIFETIME`], and a
//! state works once. A fleet keeps them in Redis instead (`store::redis`),
//! so the callback may reach another replica.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// A started login must come back within this.
pub const PENDING_LIFETIME: Duration = Duration::from_secs(600);
/// Bounds memory if someone opens many links (each needs a valid link).
const MAX_PENDING: usize = 1000;

/// Logins waiting for the platform's callback, by `state`.
#[derive(Default)]
pub struct PendingLogins {
    by_state: Mutex<HashMap<String, (String, Instant)>>,
}

impl PendingLogins {
    /// Remembers that `state` belongs to a login of `user`. Expired logins
    /// are dropped, and the oldest one when the map is full.
    pub fn insert(&self, state: String, user: String) {
        let mut map = self.by_state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, (_, at)| now.duration_since(*at) < PENDING_LIFETIME);
        if map.len() >= MAX_PENDING
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(state, (user, now));
    }

    /// The user of a pending login, removing it: a state works once.
    pub fn take(&self, state: &str) -> Option<String> {
        let mut map = self.by_state.lock().unwrap_or_else(|p| p.into_inner());
        let (user, at) = map.remove(state)?;
        (Instant::now().duration_since(at) < PENDING_LIFETIME).then_some(user)
    }
}
