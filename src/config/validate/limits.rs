//! Validation of the defences: connection and header limits, the server's
//! timeouts, and which `Origin` and `Host` values a browser may use.

use super::{Problems, duration_or};
use crate::config::file::{ByteSizeFile, ConfigFile};
use crate::config::{BrowserPolicy, Limits, ListenAddr, OAuthEndpoints};
use crate::routes::Route;

pub(super) fn limits(raw: &ConfigFile, problems: &mut Problems) -> Limits {
    let default = Limits::default();
    let timeouts = raw.timeouts.as_ref();
    let idle_timeout = duration_or(
        timeouts.and_then(|t| t.idle.as_deref()),
        "timeouts.idle",
        default.idle_timeout,
        problems,
    );
    let header_read_timeout = duration_or(
        timeouts.and_then(|t| t.header_read.as_deref()),
        "timeouts.header_read",
        default.header_read_timeout,
        problems,
    );
    for (field, d) in [
        ("timeouts.idle", idle_timeout),
        ("timeouts.header_read", header_read_timeout),
    ] {
        if d.is_zero() {
            problems.add(field, "must be longer than 0s");
        }
    }
    let Some(l) = raw.limits.as_ref() else {
        return Limits {
            idle_timeout,
            header_read_timeout,
            ..default
        };
    };
    let max_header_bytes = match &l.max_header_bytes {
        None => default.max_header_bytes,
        Some(size) => match byte_size(size) {
            // Below 1 KiB not even an ordinary request fits; hyper's h1
            // parser needs at least 8 KiB of read buffer, so it is floored
            // there (see server/mod.rs) while the limit itself is enforced exactly.
            Some(n) if (1024..=16 * 1024 * 1024).contains(&n) => n,
            _ => {
                problems.add(
                    "limits.max_header_bytes",
                    "expected a size between 1KiB and 16MiB, written like 64KiB or 65536",
                );
                default.max_header_bytes
            }
        },
    };
    let mut count = |field: &str, value: Option<usize>, default: usize| match value {
        None => default,
        Some(0) => {
            problems.add(field, "must be at least 1");
            default
        }
        Some(n) => n,
    };
    Limits {
        max_header_bytes,
        max_connections: count(
            "limits.max_connections",
            l.max_connections,
            default.max_connections,
        ),
        max_upstream_requests: count(
            "limits.max_upstream_requests",
            l.max_upstream_requests,
            default.max_upstream_requests,
        ),
        idle_timeout,
        header_read_timeout,
    }
}

/// `64KiB`, `1MiB`, `65536`: bytes, or `None` when it is no size.
pub(super) fn byte_size(size: &ByteSizeFile) -> Option<usize> {
    let n = match size {
        ByteSizeFile::Number(n) => *n,
        ByteSizeFile::Text(t) => t.trim().parse::<bytesize::ByteSize>().ok()?.as_u64(),
    };
    usize::try_from(n).ok()
}

pub(super) fn browser_policy(
    raw: &ConfigFile,
    listen: &[ListenAddr],
    routes: &[Route],
    oauth: Option<&OAuthEndpoints>,
    check_host: bool,
    problems: &mut Problems,
) -> BrowserPolicy {
    let mut allowed_origins = Vec::new();
    for (i, text) in raw.allowed_origins.iter().flatten().enumerate() {
        match url::Url::parse(text) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.path() == "/"
                    && u.query().is_none()
                    && u.username().is_empty() =>
            {
                // `Origin` is serialised as the URL's ASCII origin.
                allowed_origins.push(u.origin().ascii_serialization());
            }
            _ => problems.add(
                format!("allowed_origins[{i}]"),
                "expected an origin like https://tools.example.com (scheme, host, optional port; no path)",
            ),
        }
    }
    let mut allowed_hosts: Vec<String> = Vec::new();
    for (i, text) in raw.allowed_hosts.iter().flatten().enumerate() {
        let host = text.trim().to_ascii_lowercase();
        let valid = !host.is_empty()
            && host.parse::<http::uri::Authority>().is_ok()
            && !host.contains(['@', '/']);
        if valid {
            allowed_hosts.push(crate::routes::strip_port(&host).to_owned());
        } else {
            problems.add(
                format!("allowed_hosts[{i}]"),
                "expected a host name or address like tools.local (a port is ignored)",
            );
        }
    }
    let mut any_ip_literal = false;
    for addr in listen {
        if let ListenAddr::Tcp(sa) = addr {
            if sa.ip().is_unspecified() {
                any_ip_literal = true;
            }
            allowed_hosts.push(match sa {
                std::net::SocketAddr::V4(v4) => v4.ip().to_string(),
                std::net::SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
            });
        }
    }
    allowed_hosts.extend(routes.iter().filter_map(|r| r.host.clone()));
    if let Some(host) = oauth.and_then(|o| o.redirect_uri.host_str()) {
        allowed_hosts.push(host.to_ascii_lowercase());
    }
    allowed_hosts.sort();
    allowed_hosts.dedup();
    BrowserPolicy {
        allowed_origins,
        check_host,
        allowed_hosts,
        any_ip_literal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_read_with_binary_units() {
        let text = |t: &str| byte_size(&ByteSizeFile::Text(t.into()));
        assert_eq!(text("64KiB"), Some(65536));
        assert_eq!(text("1MiB"), Some(1 << 20));
        assert_eq!(text("4096"), Some(4096));
        assert_eq!(byte_size(&ByteSizeFile::Number(8192)), Some(8192));
        assert_eq!(text("lots"), None);
    }
}
