//! Resources with validators, for conditional requests: `GET .../etag/{name}`
//! answers a small JSON document with a stable `ETag` and `Last-Modified`,
//! and 304 when `If-None-Match` (or `If-Modified-Since`) still matches.
//! The document names the credential that asked, so a test can tell whose
//! answer a caller got. Query knobs: `no_store=1` adds
//! `Cache-Control: no-store`, `cookie=1` a `Set-Cookie`, `bytes=N` pads the
//! body to N bytes, `slow_ms=N` answers after N ms, `gate=1` sends the
//! first half of the body at once and the rest only when the test opens
//! the gate ([`super::FakeAtomGit::open_gate`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::sync::{Semaphore, mpsc};

use http::header::{
    CACHE_CONTROL, ETAG, HeaderMap, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, SET_COOKIE,
};
use http::{HeaderValue, StatusCode};
use serde_json::json;

use super::respond::{self, Resp};

/// `name` -> (version, content): a changed resource gets a new version.
#[derive(Debug)]
pub(super) struct Resources {
    pub map: HashMap<String, (u64, String)>,
    /// Holds back the second half of `gate=1` bodies; a permit lets one go.
    pub gate: Arc<Semaphore>,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            map: HashMap::new(),
            gate: Arc::new(Semaphore::new(0)),
        }
    }
}

impl Resources {
    pub fn set(&mut self, name: &str, content: &str) {
        let entry = self
            .map
            .entry(name.to_owned())
            .or_insert_with(first_version);
        entry.0 += 1;
        entry.1 = content.to_owned();
    }

    fn get(&self, name: &str) -> (u64, String) {
        self.map.get(name).cloned().unwrap_or_else(first_version)
    }
}

/// What a resource nobody set serves.
fn first_version() -> (u64, String) {
    (1, "first".to_owned())
}

/// The validators of version `v`: the same for every credential, as a
/// platform's ETag of a public resource would be.
fn validators(name: &str, v: u64) -> (String, String) {
    let etag = format!("\"{name}-v{v}\"");
    // A fixed date per version: 2024-01-01 plus `v` days.
    let day = 1 + (v % 28);
    let last_modified = format!("Mon, {day:02} Jan 2024 00:00:00 GMT");
    (etag, last_modified)
}

pub(super) async fn serve(
    resources: (u64, String),
    gate: Arc<Semaphore>,
    name: &str,
    owner: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Resp {
    let mut no_store = false;
    let mut cookie = false;
    let mut pad = 0usize;
    let mut slow = 0u64;
    let mut gated = false;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "no_store" => no_store = v == "1",
            "cookie" => cookie = v == "1",
            "bytes" => pad = v.parse().unwrap_or(0).min(16 << 20),
            "slow_ms" => slow = v.parse().unwrap_or(0).min(10_000),
            "gate" => gated = v == "1",
            _ => {}
        }
    }
    if slow > 0 {
        tokio::time::sleep(Duration::from_millis(slow)).await;
    }
    let (version, content) = resources;
    let (etag, last_modified) = validators(name, version);
    let matches = match headers.get(IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        Some(inm) => inm.split(',').any(|t| t.trim() == etag || t.trim() == "*"),
        None => headers
            .get(IF_MODIFIED_SINCE)
            .is_some_and(|v| v.as_bytes() == last_modified.as_bytes()),
    };
    let mut resp = if matches {
        let mut r = respond::text(StatusCode::NOT_MODIFIED, "");
        r.headers_mut().remove(http::header::CONTENT_TYPE);
        r
    } else {
        let doc = json!({ "name": name, "version": version, "content": content, "owner": owner });
        let mut text = doc.to_string();
        if text.len() < pad {
            text.push_str(&" ".repeat(pad - text.len()));
        }
        if gated {
            gated_json(text, gate)
        } else {
            respond::json_text(StatusCode::OK, text)
        }
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&last_modified) {
        h.insert(LAST_MODIFIED, v);
    }
    if no_store {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if cookie {
        h.insert(SET_COOKIE, HeaderValue::from_static("session=1"));
    }
    resp
}

impl Resources {
    pub fn current(&self, name: &str) -> (u64, String) {
        self.get(name)
    }
}

/// A JSON answer whose second half waits for a permit of `gate`.
fn gated_json(text: String, gate: Arc<Semaphore>) -> Resp {
    let (tx, rx) = mpsc::channel(2);
    let bytes = Bytes::from(text);
    let half = bytes.len() / 2;
    tokio::spawn(async move {
        if tx.send(bytes.slice(..half)).await.is_err() {
            return;
        }
        if let Ok(permit) = gate.acquire().await {
            permit.forget();
            let _ = tx.send(bytes.slice(half..)).await;
        }
    });
    let mut resp = http::Response::new(ChannelBody(rx).boxed());
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Frames as a task sends them.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}
