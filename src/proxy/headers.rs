//! Header surgery on the forwarding path: hop-by-hop removal, the caller's
//! own credentials removed, and pointing `Link`/`Location` back at the proxy.

use crate::wire::head::surely_none;
use http::header::{
    AUTHORIZATION, CONNECTION, COOKIE, HeaderMap, HeaderName, HeaderValue, LINK, LOCATION,
};

/// Whether `name` describes one connection, not the message (RFC 9110
/// §7.6.1), or is `proxy-connection`, which old clients still send. A match
/// on the text, which compiles to a length switch.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Removes hop-by-hop headers, including every name the `Connection` header
/// lists. Callers set `Authorization` only after this, so a caller sending
/// `Connection: authorization` cannot strip the injected token.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if surely_none(headers, is_hop_by_hop) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    // Only the names there are removed: removing an absent name still
    // hashes it, and the list has nine (an upstream's `Connection:
    // keep-alive` would cost ten hashed removals per answer).
    let present: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name) || listed.contains(name))
        .cloned()
        .collect();
    for name in &present {
        headers.remove(name);
    }
}

/// What the caller holds for the proxy, never for the platform: its client
/// key (`Authorization`), and cookies, which a browser attaches for the
/// proxy's address (the login's state cookie among them). `Cookie2` is the
/// obsolete RFC 2965 spelling some clients still send.
static CALLER_CREDENTIALS: [HeaderName; 3] =
    [AUTHORIZATION, COOKIE, HeaderName::from_static("cookie2")];

/// Removes the caller's credentials; the injected token is set after this.
pub fn strip_caller_credentials(headers: &mut HeaderMap) {
    if surely_none(headers, |name| CALLER_CREDENTIALS.contains(name)) {
        return;
    }
    for name in &CALLER_CREDENTIALS {
        headers.remove(name);
    }
}

/// Rewrites absolute upstream URLs in `Link` and `Location` to go through the
/// proxy, so a client following pagination or a redirect stays on the proxy
/// (and keeps getting a token injected). `proxy_base` is only built when a
/// header actually needs it.
pub fn rewrite_links(
    headers: &mut HeaderMap,
    upstream_base: &str,
    proxy_base: impl FnOnce() -> String,
) {
    if surely_none(headers, |name| name == LINK || name == LOCATION)
        || !headers.contains_key(LINK) && !headers.contains_key(LOCATION)
    {
        return;
    }
    let proxy_base = proxy_base();
    if let Some(loc) = headers.get(LOCATION).and_then(|v| v.to_str().ok())
        && let Some(new) = rewrite_url(loc, upstream_base, &proxy_base)
        && let Ok(v) = HeaderValue::try_from(new)
    {
        headers.insert(LOCATION, v);
    }
    let links: Vec<HeaderValue> = headers
        .get_all(LINK)
        .iter()
        .map(|v| match v.to_str() {
            Ok(text) => rewrite_link_value(text, upstream_base, &proxy_base)
                .and_then(|t| HeaderValue::try_from(t).ok())
                .unwrap_or_else(|| v.clone()),
            Err(_) => v.clone(),
        })
        .collect();
    if !links.is_empty() {
        headers.remove(LINK);
        for v in links {
            headers.append(LINK, v);
        }
    }
}

/// `url` with `upstream_base` replaced by `proxy_base`, when it points at the
/// upstream (on a segment boundary, scheme and host compared case-insensitively).
fn rewrite_url(url: &str, upstream_base: &str, proxy_base: &str) -> Option<String> {
    let head = url.get(..upstream_base.len())?;
    if !head.eq_ignore_ascii_case(upstream_base) {
        return None;
    }
    let rest = &url[upstream_base.len()..];
    if !(rest.is_empty() || rest.starts_with(['/', '?', '#'])) {
        return None;
    }
    Some(format!("{proxy_base}{rest}"))
}

/// Rewrites each `<...>` target of a `Link` value; `None` when none changed.
fn rewrite_link_value(value: &str, upstream_base: &str, proxy_base: &str) -> Option<String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    let mut changed = false;
    while let Some(open) = rest.find('<') {
        let Some(close) = rest[open..].find('>').map(|c| open + c) else {
            break;
        };
        out.push_str(&rest[..=open]);
        let target = &rest[open + 1..close];
        match rewrite_url(target, upstream_base, proxy_base) {
            Some(new) => {
                out.push_str(&new);
                changed = true;
            }
            None => out.push_str(target),
        }
        rest = &rest[close..];
    }
    out.push_str(rest);
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hop_by_hop_names_are_the_rfcs() {
        for name in [
            CONNECTION,
            HeaderName::from_static("keep-alive"),
            HeaderName::from_static("proxy-connection"),
            http::header::PROXY_AUTHENTICATE,
            http::header::PROXY_AUTHORIZATION,
            http::header::TE,
            http::header::TRAILER,
            http::header::TRANSFER_ENCODING,
            http::header::UPGRADE,
        ] {
            assert!(is_hop_by_hop(&name), "{name}");
        }
        for name in [
            "authorization",
            "content-length",
            "x-te",
            "connections",
            "host",
        ] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
    }

    #[test]
    fn connection_listed_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret , authorization"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("authorization", HeaderValue::from_static("Bearer caller"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn link_targets_on_the_upstream_are_rewritten() {
        let mut h = HeaderMap::new();
        h.insert(
            LINK,
            HeaderValue::from_static(
                r#"<https://API.atomgit.com/orgs/x/repos?page=2>; rel="next", <https://other.example/x>; rel="help", <https://api.atomgit.comevil/x>; rel="last""#,
            ),
        );
        h.insert(
            LOCATION,
            HeaderValue::from_static("https://api.atomgit.com/repos/x/y"),
        );
        rewrite_links(&mut h, "https://api.atomgit.com", || {
            "http://127.0.0.1:8080/as/alice".into()
        });
        assert_eq!(
            h.get(LINK).unwrap(),
            r#"<http://127.0.0.1:8080/as/alice/orgs/x/repos?page=2>; rel="next", <https://other.example/x>; rel="help", <https://api.atomgit.comevil/x>; rel="last""#
        );
        assert_eq!(
            h.get(LOCATION).unwrap(),
            "http://127.0.0.1:8080/as/alice/repos/x/y"
        );
    }

    #[test]
    fn relative_and_foreign_locations_stay() {
        let mut h = HeaderMap::new();
        h.insert(LOCATION, HeaderValue::from_static("/relative"));
        rewrite_links(&mut h, "https://api.atomgit.com", || "http://p".into());
        assert_eq!(h.get(LOCATION).unwrap(), "/relative");
        assert_eq!(
            rewrite_url(
                "https://api.atomgit.com",
                "https://api.atomgit.com",
                "http://p"
            ),
            Some("http://p".into())
        );
    }
}
