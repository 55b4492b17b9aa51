//! What the conditional cache keeps, under which key, and the rules for
//! what may be kept at all.

use crate::credentials::CacheKey;
use bytes::Bytes;
use http::header::{
    ACCEPT, ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG,
    IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, LAST_MODIFIED,
    RANGE, SET_COOKIE, TRANSFER_ENCODING, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

/// The API version header the platform selects representations by.
pub const API_VERSION: HeaderName = HeaderName::from_static("x-api-version");

/// One representation of one resource, as one credential sees it: the
/// credential, the upstream path and query, and the headers that choose a
/// representation (`Accept`, `X-Api-Version`, `Accept-Encoding`, since a
/// stored gzip body must not reach a caller that cannot read it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntryKey {
    pub credential: CacheKey,
    pub path_and_query: String,
    pub accept: Option<HeaderValue>,
    pub api_version: Option<HeaderValue>,
    pub accept_encoding: Option<HeaderValue>,
}

impl EntryKey {
    /// The key of a GET the cache may handle: `None` for other methods and
    /// for requests with the caller's own conditional or range headers,
    /// which pass through untouched.
    pub fn of(
        credential: &CacheKey,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> Option<EntryKey> {
        if method != Method::GET {
            return None;
        }
        let callers_own = [
            IF_NONE_MATCH,
            IF_MODIFIED_SINCE,
            IF_MATCH,
            IF_UNMODIFIED_SINCE,
            IF_RANGE,
            RANGE,
        ];
        if callers_own.iter().any(|h| headers.contains_key(h))
            || has_token(headers, &CACHE_CONTROL, "no-store")
        {
            return None;
        }
        let one = |name: &HeaderName| {
            let mut all = headers.get_all(name).iter();
            match (all.next(), all.next()) {
                (first, None) => Ok(first.cloned()),
                // Several values: too rare to be worth a combined key.
                _ => Err(()),
            }
        };
        Some(EntryKey {
            credential: credential.clone(),
            path_and_query: path_and_query.to_owned(),
            accept: one(&ACCEPT).ok()?,
            api_version: one(&API_VERSION).ok()?,
            accept_encoding: one(&ACCEPT_ENCODING).ok()?,
        })
    }
}

/// A stored 200: the platform's headers (hop-by-hop removed, links not yet
/// rewritten: each caller gets its own) and the whole body.
#[derive(Debug)]
pub struct Entry {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Entry {
    /// Bytes the entry holds, for the cache's weigher.
    pub fn weight(&self, key: &EntryKey) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        let total = self.body.len() + headers + key.path_and_query.len() + 128;
        u32::try_from(total).unwrap_or(u32::MAX)
    }

    /// Makes `request` conditional on this entry's validators.
    pub fn add_conditionals(&self, request: &mut HeaderMap) {
        if let Some(etag) = self.headers.get(ETAG) {
            request.insert(IF_NONE_MATCH, etag.clone());
        }
        if let Some(lm) = self.headers.get(LAST_MODIFIED) {
            request.insert(IF_MODIFIED_SINCE, lm.clone());
        }
    }

    /// This entry updated by a 304's headers (RFC 9111 §4.3.4: the stored
    /// headers take the new values), keeping what describes the stored body.
    pub fn refreshed(&self, not_modified: &HeaderMap) -> Entry {
        let mut headers = self.headers.clone();
        let keep = [
            CONTENT_LENGTH,
            CONTENT_TYPE,
            CONTENT_ENCODING,
            TRANSFER_ENCODING,
        ];
        for name in not_modified.keys() {
            if keep.contains(name) {
                continue;
            }
            headers.remove(name);
            for v in not_modified.get_all(name) {
                headers.append(name.clone(), v.clone());
            }
        }
        Entry {
            headers,
            body: self.body.clone(),
        }
    }
}

/// Whether an answer may be kept: a 200 with a validator, not `no-store`
/// (nor `private`-to-a-cookie: no `Set-Cookie`), not `Vary: *`, and not
/// announced larger than `max_entry_bytes`.
pub fn storable(status: StatusCode, headers: &HeaderMap, max_entry_bytes: usize) -> bool {
    if status != StatusCode::OK {
        return false;
    }
    if !headers.contains_key(ETAG) && !headers.contains_key(LAST_MODIFIED) {
        return false;
    }
    if headers.contains_key(SET_COOKIE) {
        return false;
    }
    if has_token(headers, &CACHE_CONTROL, "no-store") || has_token(headers, &VARY, "*") {
        return false;
    }
    let announced = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    announced.is_none_or(|n| n <= max_entry_bytes as u64)
}

/// Whether a comma-separated header lists `token` (alone or as `token=...`).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split('=')
                .next()
                .is_some_and(|n| n.trim().eq_ignore_ascii_case(token))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(headers: &HeaderMap) -> Option<EntryKey> {
        let cred = CacheKey::User {
            user: "alice".into(),
            platform: std::sync::Arc::new(crate::credentials::grants::GrantBinding {
                upstream: "http://p".into(),
                app_id: 1,
                client_id: None,
            }),
        };
        EntryKey::of(&cred, &Method::GET, "/x?a=1", headers)
    }

    #[test]
    fn callers_own_conditionals_bypass_the_cache() {
        let mut h = HeaderMap::new();
        assert!(key(&h).is_some());
        h.insert(IF_NONE_MATCH, HeaderValue::from_static("\"a\""));
        assert!(key(&h).is_none());
        let mut h = HeaderMap::new();
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        assert!(key(&h).is_none(), "the caller asked for nothing to be kept");
    }

    #[test]
    fn only_plain_validated_200s_are_stored() {
        let mut h = HeaderMap::new();
        assert!(!storable(StatusCode::OK, &h, 100), "no validator");
        h.insert(ETAG, HeaderValue::from_static("\"a\""));
        assert!(storable(StatusCode::OK, &h, 100));
        assert!(!storable(StatusCode::NOT_FOUND, &h, 100));
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("101"));
        assert!(!storable(StatusCode::OK, &h, 100), "too large");
        h.remove(CONTENT_LENGTH);
        h.insert(CACHE_CONTROL, HeaderValue::from_static("private, No-Store"));
        assert!(!storable(StatusCode::OK, &h, 100));
        h.remove(CACHE_CONTROL);
        h.insert(SET_COOKIE, HeaderValue::from_static("a=b"));
        assert!(!storable(StatusCode::OK, &h, 100));
    }

    #[test]
    fn a_304_refreshes_headers_but_not_the_body_description() {
        let mut stored = HeaderMap::new();
        stored.insert(ETAG, HeaderValue::from_static("\"a\""));
        stored.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        stored.insert("x-ratelimit-remaining", HeaderValue::from_static("9"));
        let entry = Entry {
            headers: stored,
            body: Bytes::from_static(b"{}"),
        };
        let mut nm = HeaderMap::new();
        nm.insert("x-ratelimit-remaining", HeaderValue::from_static("8"));
        nm.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let fresh = entry.refreshed(&nm);
        assert_eq!(fresh.headers["x-ratelimit-remaining"], "8");
        assert_eq!(fresh.headers[CONTENT_TYPE], "application/json");
        assert_eq!(fresh.body, entry.body);
    }
}
