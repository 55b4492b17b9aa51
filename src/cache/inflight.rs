//! Shared in-flight GETs: identical cacheable GETs for one credential that
//! arrive while one is being answered wait for it instead of each asking.
//!
//! The first becomes the leader; the others follow. When the leader's
//! answer is complete and storable, followers get a copy of it. When it is
//! not (not a validated 200, too large, the leader's caller hung up),
//! followers are told to go upstream themselves: an answer meant for one
//! caller is never passed around. The leader's handle tells followers from
//! `Drop` at the latest (as pingora's read-through cache does), so a
//! cancelled leader cannot strand them.

use super::entry::{Entry, EntryKey};
use dashmap::DashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::watch;

/// What followers learn.
#[derive(Clone)]
enum Outcome {
    Pending,
    Ready(Arc<Entry>),
    GoYourself,
}

/// The requests in flight, by key.
#[derive(Default)]
pub struct Inflight {
    flights: DashMap<EntryKey, (u64, watch::Receiver<Outcome>)>,
    next_id: AtomicU64,
}

/// The result of joining a key.
pub enum Joined {
    /// Go upstream, and publish the outcome (boxed: a lead carries its key).
    Leader(Box<Lead>),
    /// Wait for the leader.
    Follower(Follow),
}

/// The leader's duty to tell its followers.
pub struct Lead {
    inflight: Arc<Inflight>,
    key: EntryKey,
    id: u64,
    tx: watch::Sender<Outcome>,
}

/// A follower's wait.
pub struct Follow(watch::Receiver<Outcome>);

impl Inflight {
    /// Leads `key` if nobody does, else follows its leader.
    pub fn join(self: &Arc<Self>, key: &EntryKey) -> Joined {
        use dashmap::mapref::entry::Entry as Slot;
        match self.flights.entry(key.clone()) {
            Slot::Occupied(o) => Joined::Follower(Follow(o.get().1.clone())),
            Slot::Vacant(v) => {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = watch::channel(Outcome::Pending);
                v.insert((id, rx));
                Joined::Leader(Box::new(Lead {
                    inflight: self.clone(),
                    key: key.clone(),
                    id,
                    tx,
                }))
            }
        }
    }

    /// Keys being answered now (for tests and status).
    pub fn len(&self) -> usize {
        self.flights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flights.is_empty()
    }
}

impl Lead {
    /// Hands the complete answer to every follower.
    pub fn publish(self, entry: Arc<Entry>) {
        self.close(Outcome::Ready(entry));
    }

    fn close(&self, outcome: Outcome) {
        // Removed first: a request arriving from now on asks the platform
        // itself instead of taking an answer it did not wait for.
        self.inflight
            .flights
            .remove_if(&self.key, |_, (id, _)| *id == self.id);
        self.tx.send_if_modified(|current| {
            if matches!(current, Outcome::Pending) {
                *current = outcome;
                true
            } else {
                false
            }
        });
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        self.close(Outcome::GoYourself);
    }
}

impl Follow {
    /// The leader's answer, or `None`: go upstream yourself.
    pub async fn outcome(mut self) -> Option<Arc<Entry>> {
        let seen = self
            .0
            .wait_for(|o| !matches!(o, Outcome::Pending))
            .await
            .ok()?;
        match &*seen {
            Outcome::Ready(entry) => Some(entry.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::CacheKey;
    use bytes::Bytes;

    fn key() -> EntryKey {
        EntryKey {
            credential: CacheKey::Installation {
                app: crate::config::AppFingerprint::of(
                    1,
                    "http://x",
                    &crate::config::Secret::new("k"),
                ),
                id: 14,
                scope: None,
            },
            path_and_query: "/a".into(),
            accept: None,
            api_version: None,
            accept_encoding: None,
        }
    }

    #[tokio::test]
    async fn followers_get_the_leaders_answer() {
        let inflight = Arc::new(Inflight::default());
        let Joined::Leader(lead) = inflight.join(&key()) else {
            panic!("first must lead")
        };
        let Joined::Follower(follow) = inflight.join(&key()) else {
            panic!("second must follow")
        };
        let waiting = tokio::spawn(follow.outcome());
        lead.publish(Arc::new(Entry {
            headers: Default::default(),
            body: Bytes::from_static(b"x"),
        }));
        let got = waiting.await.unwrap().expect("shared");
        assert_eq!(got.body, "x");
        assert!(inflight.is_empty());
        assert!(matches!(inflight.join(&key()), Joined::Leader(_)));
    }

    #[tokio::test]
    async fn a_dropped_leader_sends_followers_upstream() {
        let inflight = Arc::new(Inflight::default());
        let lead = inflight.join(&key());
        let Joined::Follower(follow) = inflight.join(&key()) else {
            panic!("second must follow")
        };
        drop(lead);
        assert!(follow.outcome().await.is_none());
        assert!(inflight.is_empty());
    }
}
