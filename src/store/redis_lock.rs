//! Redis locks: `SET NX PX` with a random owner id, a lease renewed every
//! few seconds while held, and released by the owner only (Lua
//! compare-and-delete), so a holder that dies (SIGKILL, a lost node) blocks
//! the others for at most [`LOCK_LEASE`], and a holder whose lease ran out
//! never deletes the lock of the one that took it next.

use super::{StoreOpLabels, store_errors};
use ::redis::Script;
use ::redis::aio::ConnectionManager;
use std::sync::LazyLock;
use std::time::Duration;

/// A lock's lease: a holder that dies blocks others at most this long.
pub const LOCK_LEASE: Duration = Duration::from_secs(10);
/// How often a held lock's lease is renewed (well inside the lease).
const RENEW_EVERY: Duration = Duration::from_secs(3);
/// Between attempts to take a held lock.
pub const LOCK_POLL: Duration = Duration::from_millis(50);
/// The longest a renewal or release may take.
const CALL_TIMEOUT: Duration = super::redis::OP_TIMEOUT;

/// Renews the lease if we still own the lock.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0",
    )
});

/// Deletes the lock if we still own it: never another holder's.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0",
    )
});

/// A lock this process holds: its lease is renewed until it is dropped,
/// and dropping it deletes the key if (and only if) we still own it.
pub(super) struct HeldLock {
    renew: tokio::task::JoinHandle<()>,
    release: Option<(ConnectionManager, String, String)>,
}

impl HeldLock {
    pub(super) fn start(conn: ConnectionManager, key: String, owner: String) -> HeldLock {
        let (mut c, k, o) = (conn.clone(), key.clone(), owner.clone());
        let renew = tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                let mut call = RENEW.key(&k);
                call.arg(&o).arg(LOCK_LEASE.as_millis() as u64);
                let renewed = tokio::time::timeout(CALL_TIMEOUT, call.invoke_async::<i64>(&mut c));
                match renewed.await {
                    Ok(Ok(1)) => {}
                    Ok(Ok(_)) => {
                        tracing::warn!(
                            "a store lock's lease ran out while held; the write that follows is compared-and-set"
                        );
                        return;
                    }
                    _ => {
                        store_errors()
                            .get_or_create(&StoreOpLabels { op: "lock_renew" })
                            .inc();
                    }
                }
            }
        });
        HeldLock {
            renew,
            release: Some((conn, key, owner)),
        }
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        self.renew.abort();
        let Some((mut conn, key, owner)) = self.release.take() else {
            return;
        };
        // Released in its own task: a drop cannot wait. If it never runs
        // (runtime gone), the lease frees the lock.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut call = RELEASE.key(&key);
                call.arg(&owner);
                if !matches!(
                    tokio::time::timeout(CALL_TIMEOUT, call.invoke_async::<i64>(&mut conn)).await,
                    Ok(Ok(_))
                ) {
                    store_errors()
                        .get_or_create(&StoreOpLabels { op: "lock_release" })
                        .inc();
                }
            });
        }
    }
}
