//! The conditional cache: asking the platform cheaply, never skipping it.
//!
//! A 200 GET with an `ETag` or `Last-Modified` is kept per credential (in a
//! `moka` LRU weighed in bytes, bounded by `cache.max_bytes`). The next GET
//! for the same resource goes upstream with `If-None-Match` /
//! `If-Modified-Since`; a 304 is answered from the stored body as a 200
//! marked `x-atomgit-proxy-cache: revalidated`. Nothing is served without
//! asking the platform, so a cached answer is never staler than the
//! platform says. Identical GETs in flight at once share one upstream
//! request ([`inflight`]). Answers still stream to the caller while they
//! are copied ([`crate::body::tee`]).
//!
//! # Layout
//! - [`entry`]: keys, stored entries, what may be stored.
//! - [`inflight`]: leaders and followers of identical GETs.

pub mod entry;
pub mod inflight;

use crate::body::UpstreamBody;
use crate::body::{Body, tee};
use crate::config::CacheConfig;
use bytes::Bytes;
use entry::{Entry, EntryKey};
use http::header::CONTENT_LENGTH;
use http::response::Parts;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};
use inflight::{Inflight, Lead};
use std::sync::Arc;

/// Says how the proxy's cache took part in an answer.
pub const CACHE_HEADER: HeaderName = HeaderName::from_static("x-atomgit-proxy-cache");

/// Stored answers and the GETs in flight.
pub struct ResponseCache {
    /// What this cache was built from; a reload compares it to decide reuse.
    pub config: CacheConfig,
    store: moka::sync::Cache<EntryKey, Arc<Entry>>,
    inflight: Arc<Inflight>,
}

/// How the answer to a cacheable GET that went upstream came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// The platform's own answer, streamed (and copied when storable).
    Miss,
    /// The platform said 304; the stored body was sent.
    Revalidated,
}

impl Served {
    /// The `result` label of `atomgit_proxy_cache_total`.
    pub fn label(self) -> &'static str {
        match self {
            Served::Miss => "miss",
            Served::Revalidated => "revalidated",
        }
    }
}

impl ResponseCache {
    /// `None` when `max_bytes` is 0 (off).
    pub fn new(config: CacheConfig) -> Option<ResponseCache> {
        if config.max_bytes == 0 {
            return None;
        }
        // LRU, as the contract says, rather than moka's default TinyLFU,
        // which would refuse to admit a new entry that is asked for once.
        let store = moka::sync::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|k: &EntryKey, v: &Arc<Entry>| v.weight(k))
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .build();
        Some(ResponseCache {
            config,
            store,
            inflight: Arc::default(),
        })
    }

    /// The stored entry for `key`.
    pub fn get(&self, key: &EntryKey) -> Option<Arc<Entry>> {
        self.store.get(key)
    }

    /// Leads or follows the flight of `key`.
    pub fn join(&self, key: &EntryKey) -> inflight::Joined {
        self.inflight.join(key)
    }

    /// Bytes held now (after pending evictions run), for tests.
    pub fn weighted_size(&self) -> u64 {
        self.store.run_pending_tasks();
        self.store.weighted_size()
    }

    /// The caller's answer to a cacheable GET, and how it came to be: a
    /// 304 to a conditional the proxy added becomes the stored 200; a
    /// storable 200 streams while it is copied into the store (and to any
    /// followers); anything else passes and drops a stale entry.
    pub fn answer(
        &self,
        key: EntryKey,
        stored: Option<Arc<Entry>>,
        lead: Option<Lead>,
        mut parts: Parts,
        body: UpstreamBody,
    ) -> (Response<Body>, Served) {
        if let (StatusCode::NOT_MODIFIED, Some(stored)) = (parts.status, &stored) {
            let fresh = Arc::new(stored.refreshed(&parts.headers));
            self.store.insert(key, fresh.clone());
            if let Some(lead) = lead {
                lead.publish(fresh.clone());
            }
            return (respond_from(&fresh, "revalidated"), Served::Revalidated);
        }
        let limit = self.config.max_entry_bytes;
        parts
            .headers
            .insert(CACHE_HEADER, HeaderValue::from_static("miss"));
        if !entry::storable(parts.status, &parts.headers, limit) {
            if stored.is_some() {
                self.store.invalidate(&key);
            }
            // `lead` drops here: followers ask the platform themselves.
            return (
                Response::from_parts(parts, Either::Left(Either::Left(body))),
                Served::Miss,
            );
        }
        let mut headers = parts.headers.clone();
        headers.remove(CACHE_HEADER);
        let store = self.store.clone();
        let on_end: tee::OnEnd = Box::new(move |body: Option<Bytes>| match body {
            Some(body) => {
                let entry = Arc::new(Entry { headers, body });
                store.insert(key, entry.clone());
                if let Some(lead) = lead {
                    lead.publish(entry);
                }
            }
            // Too large or cut short: the old entry no longer matches.
            None => store.invalidate(&key),
        });
        let tee = tee::Tee::new(body, limit, on_end);
        (
            Response::from_parts(parts, Either::Left(Either::Right(tee))),
            Served::Miss,
        )
    }
}

/// A 200 made from a stored entry, marked with how (`revalidated`, `shared`).
pub fn respond_from(entry: &Entry, how: &'static str) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Full::new(entry.body.clone())));
    *resp.headers_mut() = entry.headers.clone();
    let headers = resp.headers_mut();
    headers.insert(CONTENT_LENGTH, HeaderValue::from(entry.body.len()));
    headers.remove(http::header::TRANSFER_ENCODING);
    headers.insert(CACHE_HEADER, HeaderValue::from_static(how));
    resp
}
