//! Guards run on every request before anything else: what a web page, a
//! rebound DNS name or a method trick must not make the proxy do.
//!
//! A proxy on a developer's loopback is reachable by every page their browser
//! opens. Browsers mark what a page sends: `Origin` on cross-origin (and most
//! non-GET) requests, `Sec-Fetch-Site` on all of them. A DNS-rebinding page
//! hides its origin by making its own name resolve to 127.0.0.1, but the
//! browser still sends that name as `Host`. So these checks read only
//! headers, run before client keys are checked or any credential is touched,
//! and allocate nothing on an ordinary request.
//!
//! The OAuth pair is exempt from the origin and host checks: the platform
//! redirects the browser to the callback (a cross-site navigation, by a name
//! the operator chose), and both endpoints have their own state check.

use crate::config::BrowserPolicy;
use crate::error::ProxyError;
use crate::routes::strip_port;
use crate::wire::head::surely_none;
use http::header::ORIGIN;
use http::{HeaderMap, HeaderName, Method};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Headers through which frameworks let a `POST` act as another method; the
/// platform (or something in front of it) may honour them, so a route's
/// `methods` must hold for them too.
pub const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// [`METHOD_OVERRIDES`] as header names, so that looking them up parses nothing.
static OVERRIDE_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static(METHOD_OVERRIDES[0]),
    HeaderName::from_static(METHOD_OVERRIDES[1]),
    HeaderName::from_static(METHOD_OVERRIDES[2]),
];

static SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// The endpoints that browsers reach by the platform's redirect.
fn is_oauth_pair(path: &str) -> bool {
    matches!(path, "/_proxy/oauth/login" | "/_proxy/oauth/callback")
}

/// All checks of this module, in order. `host` is the authority the caller
/// addressed (see `forward::inbound_host`).
pub fn check(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    host: Option<&str>,
    policy: &BrowserPolicy,
) -> Result<(), ProxyError> {
    refuse_method(method)?;
    if is_oauth_pair(path) {
        return Ok(());
    }
    check_origin(headers, policy)?;
    if policy.check_host
        && let Some(host) = host
        && !host_allowed(host, policy)
    {
        return Err(ProxyError::ForbiddenHost);
    }
    Ok(())
}

/// `TRACE` echoes the request (cookies and keys included) back to whoever
/// can read the answer; `CONNECT` would ask the platform for a tunnel. Neither
/// has a use through an API proxy.
pub fn refuse_method(method: &Method) -> Result<(), ProxyError> {
    if method == Method::TRACE || method == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed(method.clone()));
    }
    Ok(())
}

/// The methods named by override headers, each value (or comma-separated
/// item) uppercased as the frameworks that honour them do. Empty, and
/// without allocating, when none is sent: the common case.
pub fn method_overrides(headers: &HeaderMap) -> Result<Vec<Method>, ProxyError> {
    let mut found = Vec::new();
    if surely_none(headers, |k| OVERRIDE_HEADERS.contains(k)) {
        return Ok(found);
    }
    for (name, header) in METHOD_OVERRIDES.iter().zip(&OVERRIDE_HEADERS) {
        for value in headers.get_all(header) {
            let text = value.to_str().map_err(|_| bad_override(name))?;
            for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                let method = Method::from_bytes(item.to_ascii_uppercase().as_bytes())
                    .map_err(|_| bad_override(name))?;
                refuse_method(&method)?;
                found.push(method);
            }
        }
    }
    Ok(found)
}

fn bad_override(name: &str) -> ProxyError {
    ProxyError::BadRequest(format!("`{name}` does not name an HTTP method"))
}

/// A request from a web page is refused unless its `Origin` is listed. A page
/// that sends no `Origin` (a GET by `<img>` or a form navigation) is still
/// marked by `Sec-Fetch-Site`; `same-origin` and `none` (typed or bookmarked
/// by the user) pass. A listed origin passes whatever `Sec-Fetch-Site` says,
/// since a page elsewhere is always `cross-site` to the loopback.
fn check_origin(headers: &HeaderMap, policy: &BrowserPolicy) -> Result<(), ProxyError> {
    if surely_none(headers, |k| k == ORIGIN || k == SEC_FETCH_SITE) {
        // No browser marks at all: a tool's request.
        return Ok(());
    }
    let mut origins = headers.get_all(ORIGIN).iter().peekable();
    if origins.peek().is_some() {
        // Every `Origin` must be listed (`null` never is): a second header
        // must not smuggle a refused one past a listed one.
        let listed = origins.all(|v| {
            v.to_str().is_ok_and(|o| {
                policy
                    .allowed_origins
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(o.trim()))
            })
        });
        return if listed {
            Ok(())
        } else {
            Err(ProxyError::ForbiddenOrigin)
        };
    }
    let cross = headers.get_all(&SEC_FETCH_SITE).iter().any(|v| {
        let v = v.as_bytes().trim_ascii();
        v.eq_ignore_ascii_case(b"cross-site") || v.eq_ignore_ascii_case(b"same-site")
    });
    if cross {
        return Err(ProxyError::ForbiddenOrigin);
    }
    Ok(())
}

/// Whether `host` (`name[:port]`) may be served without a client key: a
/// loopback name or address, any IP literal when listening on a wildcard
/// address, or a name the config knows. Case-insensitive; a trailing dot
/// (`localhost.`) is the same name.
fn host_allowed(host: &str, policy: &BrowserPolicy) -> bool {
    let name = strip_port(host);
    let name = name.strip_suffix('.').unwrap_or(name);
    // The two names nearly every local caller uses, before any parsing.
    if name == "127.0.0.1" || name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let ip_loopback = if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        match v6.parse::<Ipv6Addr>() {
            Ok(ip) => {
                Some(ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()))
            }
            Err(_) => None,
        }
    } else {
        name.parse::<Ipv4Addr>().ok().map(|ip| ip.is_loopback())
    };
    match ip_loopback {
        Some(true) => return true,
        // An IP literal cannot be a rebound DNS name.
        Some(false) if policy.any_ip_literal => return true,
        _ => {}
    }
    policy.allowed_hosts.iter().any(|allowed| {
        let allowed = allowed.strip_suffix('.').unwrap_or(allowed);
        allowed.eq_ignore_ascii_case(name) || same_ipv6(allowed, name)
    })
}

/// `[::1]` and `[0:0::1]` are one address: IPv6 literals compare parsed.
fn same_ipv6(a: &str, b: &str) -> bool {
    let parse = |s: &str| {
        s.strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|s| s.parse::<Ipv6Addr>().ok())
    };
    matches!((parse(a), parse(b)), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn policy() -> BrowserPolicy {
        BrowserPolicy {
            allowed_origins: vec!["https://tools.example.com".into()],
            check_host: true,
            allowed_hosts: vec!["127.0.0.1".into(), "[::1]".into(), "tools.local".into()],
            any_ip_literal: false,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn browser_marks_and_overrides_are_found_among_many_headers() {
        // Past the scan's limit the names are looked up: same answers.
        for fillers in [0, 20] {
            let mut h = HeaderMap::new();
            for i in 0..fillers {
                h.insert(
                    HeaderName::from_bytes(format!("x-filler-{i}").as_bytes()).unwrap(),
                    HeaderValue::from_static("1"),
                );
            }
            assert!(
                check_origin(&h, &policy()).is_ok(),
                "{fillers}: a tool's request"
            );
            assert!(method_overrides(&h).unwrap().is_empty());
            h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
            assert!(
                check_origin(&h, &policy()).is_err(),
                "{fillers}: cross-site"
            );
            h.remove("sec-fetch-site");
            h.insert("origin", HeaderValue::from_static("https://evil.example"));
            assert!(
                check_origin(&h, &policy()).is_err(),
                "{fillers}: unlisted origin"
            );
            h.insert("x-http-method-override", HeaderValue::from_static("delete"));
            assert_eq!(method_overrides(&h).unwrap(), vec![Method::DELETE]);
        }
    }

    #[test]
    fn loopback_and_listed_hosts_pass_others_do_not() {
        let p = policy();
        for ok in [
            "localhost",
            "LocalHost.:8080",
            "127.0.0.1:9",
            "127.5.6.7",
            "[::1]:80",
            "[0:0::1]",
            "[::ffff:127.0.0.1]",
            "Tools.Local:1",
            "tools.local.",
        ] {
            assert!(host_allowed(ok, &p), "{ok}");
        }
        for bad in [
            "rebind.attacker.example:8080",
            "localhost.evil",
            "evil.localhost",
            "10.0.0.1",
            "[fe80::1]",
            "tools.local.evil",
        ] {
            assert!(!host_allowed(bad, &p), "{bad}");
        }
        let wildcard = BrowserPolicy {
            any_ip_literal: true,
            ..p
        };
        assert!(host_allowed("10.0.0.1:8080", &wildcard));
        assert!(host_allowed("[fe80::1]", &wildcard));
        assert!(!host_allowed("rebind.attacker.example", &wildcard));
    }

    #[test]
    fn origins_must_all_be_listed() {
        let p = policy();
        assert!(check_origin(&headers(&[("origin", "HTTPS://Tools.Example.com")]), &p).is_ok());
        for bad in [
            &[("origin", "null")][..],
            &[("origin", "https://evil.example")],
            &[
                ("origin", "https://tools.example.com"),
                ("origin", "https://evil.example"),
            ],
            &[("sec-fetch-site", "cross-site")],
            &[("sec-fetch-site", "Same-Site")],
        ] {
            assert!(
                matches!(
                    check_origin(&headers(bad), &p),
                    Err(ProxyError::ForbiddenOrigin)
                ),
                "{bad:?}"
            );
        }
        for fine in ["same-origin", "none"] {
            assert!(check_origin(&headers(&[("sec-fetch-site", fine)]), &p).is_ok());
        }
    }

    #[test]
    fn overrides_are_read_uppercased_and_trace_is_refused() {
        assert!(method_overrides(&HeaderMap::new()).unwrap().is_empty());
        let found = method_overrides(&headers(&[
            ("x-http-method-override", "delete"),
            ("x-method-override", "PUT, patch"),
        ]))
        .unwrap();
        assert_eq!(found, [Method::DELETE, Method::PUT, Method::PATCH]);
        assert!(matches!(
            method_overrides(&headers(&[("x-http-method", "trace")])),
            Err(ProxyError::MethodNotAllowed(_))
        ));
        assert!(matches!(
            method_overrides(&headers(&[("x-http-method", "no good")])),
            Err(ProxyError::BadRequest(_))
        ));
    }
}
