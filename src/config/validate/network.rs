//! Validation of where the proxy listens and what it talks to: listeners,
//! the upstream, and the OAuth endpoints.

use super::{Problems, duration_or};
use crate::config::file::ConfigFile;
use crate::config::{
    DEFAULT_AUTHORIZE_URL, DEFAULT_LISTEN, DEFAULT_UPSTREAM, ListenAddr, OAuthEndpoints,
    UpstreamConfig,
};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

pub(super) fn listen_addrs(
    raw: Option<&[String]>,
    base: &Path,
    problems: &mut Problems,
) -> Vec<ListenAddr> {
    let raw = match raw {
        None => {
            return vec![ListenAddr::Tcp(
                DEFAULT_LISTEN.parse().expect("constant address"),
            )];
        }
        Some([]) => {
            problems.add("listen", "is empty; omit it for the default 127.0.0.1:8080");
            return Vec::new();
        }
        Some(list) => list,
    };
    let mut out: Vec<ListenAddr> = Vec::new();
    for (i, text) in raw.iter().enumerate() {
        let parsed = if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                Err("a unix socket needs a path: unix:/path/to.sock".to_owned())
            } else {
                Ok(ListenAddr::Unix(base.join(path)))
            }
        } else {
            text.parse().map(ListenAddr::Tcp).map_err(|_| {
                "expected host:port (e.g. 127.0.0.1:8080, [::1]:8080) or unix:/path".to_owned()
            })
        };
        match parsed {
            Ok(addr) if out.contains(&addr) => problems.add(
                format!("listen[{i}]"),
                "is the same address as an earlier entry",
            ),
            Ok(addr) => out.push(addr),
            Err(msg) => problems.add(format!("listen[{i}]"), msg),
        }
    }
    out
}

pub(super) fn upstream(
    raw: &ConfigFile,
    base: &Path,
    problems: &mut Problems,
) -> Option<UpstreamConfig> {
    let text = raw.upstream.as_deref().unwrap_or(DEFAULT_UPSTREAM);
    let timeouts = raw.timeouts.as_ref();
    let connect_timeout = duration_or(
        timeouts.and_then(|t| t.connect.as_deref()),
        "timeouts.connect",
        Duration::from_secs(10),
        problems,
    );
    let response_timeout = duration_or(
        timeouts.and_then(|t| t.response.as_deref()),
        "timeouts.response",
        Duration::from_secs(60),
        problems,
    );
    let extra_ca_pem = raw.upstream_ca_file.as_ref().and_then(|p| {
        let full = base.join(p);
        match std::fs::read(&full) {
            Ok(pem) => {
                let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice()).collect();
                if certs.is_empty() || certs.iter().any(Result::is_err) {
                    problems.add(
                        "upstream_ca_file",
                        format!("{} holds no valid PEM certificate", full.display()),
                    );
                    None
                } else {
                    Some(pem)
                }
            }
            Err(e) => {
                problems.add(
                    "upstream_ca_file",
                    format!("cannot read {}: {e}", full.display()),
                );
                None
            }
        }
    });
    let url = match url::Url::parse(text) {
        Ok(u) => u,
        Err(e) => {
            // url's errors are fixed phrases; the text itself is not shown.
            problems.add(
                "upstream",
                format!("expected a URL like https://api.atomgit.com ({e})"),
            );
            return None;
        }
    };
    let scheme = match url.scheme() {
        "https" => http::uri::Scheme::HTTPS,
        "http" if url.host().is_some_and(|h| is_loopback_host(&h)) => http::uri::Scheme::HTTP,
        "http" => {
            problems.add("upstream", "http:// is allowed only to loopback hosts (tokens would travel in clear text); use https://");
            return None;
        }
        _ => {
            problems.add("upstream", "expected an https:// URL");
            return None;
        }
    };
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        problems.add(
            "upstream",
            "must be a plain base URL without credentials, query or fragment",
        );
        return None;
    }
    let host = url.host_str().unwrap_or_default();
    let authority_text = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    let authority = match authority_text.parse::<http::uri::Authority>() {
        Ok(a) => a,
        Err(e) => {
            problems.add("upstream", format!("bad host: {e}"));
            return None;
        }
    };
    Some(UpstreamConfig {
        origin: format!("{}://{authority}", scheme.as_str()),
        scheme,
        authority,
        base_path: url.path().trim_end_matches('/').to_owned(),
        extra_ca_pem,
        connect_timeout,
        response_timeout,
    })
}

pub(super) fn is_loopback_host(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => IpAddr::V4(*ip).is_loopback(),
        url::Host::Ipv6(ip) => IpAddr::V6(*ip).is_loopback(),
    }
}

pub(super) fn oauth(
    raw: &ConfigFile,
    upstream: Option<&UpstreamConfig>,
    needs_user: bool,
    problems: &mut Problems,
) -> Option<OAuthEndpoints> {
    let Some(o) = raw.oauth.as_ref() else {
        if needs_user {
            problems.add("oauth.redirect_uri", "is required when a route has `user:`");
        }
        return None;
    };
    let mut url_field = |field: &str, value: Option<&str>| -> Option<url::Url> {
        let value = value?;
        match url::Url::parse(value) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
            Ok(_) => {
                problems.add(field, "must be an http(s) URL");
                None
            }
            Err(e) => {
                problems.add(field, format!("expected an http(s) URL ({e})"));
                None
            }
        }
    };
    let authorize_url = url_field(
        "oauth.authorize_url",
        Some(o.authorize_url.as_deref().unwrap_or(DEFAULT_AUTHORIZE_URL)),
    );
    let redirect_uri = url_field("oauth.redirect_uri", o.redirect_uri.as_deref());
    let default_token_url = upstream.map(|u| format!("{}/login/oauth/access_token", u.base_url()));
    let token_url = url_field(
        "oauth.token_url",
        o.token_url.as_deref().or(default_token_url.as_deref()),
    );
    if let Some(t) = token_url.as_ref() {
        let loopback = t.host().is_some_and(|h| is_loopback_host(&h));
        if t.scheme() == "http" && !loopback {
            problems.add("oauth.token_url", "http:// is allowed only to loopback hosts (client secrets would travel in clear text)");
        }
    }
    if o.redirect_uri.is_none() {
        problems.add(
            "oauth.redirect_uri",
            "is required (the proxy's /_proxy/oauth/callback as the browser reaches it)",
        );
    } else if redirect_uri
        .as_ref()
        .is_some_and(|u| !u.path().ends_with("/_proxy/oauth/callback"))
    {
        problems.add(
            "oauth.redirect_uri",
            "must point at this proxy's /_proxy/oauth/callback",
        );
    }
    Some(OAuthEndpoints {
        authorize_url: authorize_url?,
        redirect_uri: redirect_uri?,
        token_url: token_url?,
    })
}
