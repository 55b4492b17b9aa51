//! Raw file types to a validated [`Config`], collecting every problem.
//!
//! Validation never stops at the first error: `check` must list them all, each
//! naming its field, so an operator fixes a config in one pass.

use super::file::{self, ConfigFile, InstallationFile, RouteFile, SecretFile};
use super::secret::{self, Secret};
use super::{
    AppConfig, ClientConfig, Config, DEFAULT_AUTHORIZE_URL, DEFAULT_LISTEN, DEFAULT_UPSTREAM,
    ListenAddr, OAuthConfig, Problem, UpstreamConfig,
};
use crate::routes::{InstallationSelector, Route, RouteCredential, RouteTable};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Accumulates problems while validation goes on.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
            line: None,
        });
    }
}

pub(super) fn parse_and_validate(text: &str, base: &Path) -> Result<Config, Vec<Problem>> {
    let raw: ConfigFile = serde_yaml::from_str(text).map_err(|e| vec![yaml_problem(&e)])?;
    let mut problems = Problems::default();
    let config = build(raw, base, &mut problems);
    let mut found = problems.0;
    if found.is_empty() {
        if let Some(config) = config {
            return Ok(config);
        }
    }
    locate_lines(&mut found, text);
    Err(found)
}

fn yaml_problem(e: &serde_yaml::Error) -> Problem {
    // serde_yaml writes "routes[0].match: unknown field ..."; split the path
    // off so the problem names its field like every other.
    let msg = e.to_string();
    let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
    let (field, message) = match msg.split_once(": ") {
        Some((f, m)) if !f.contains(' ') => (f.to_owned(), m.to_owned()),
        _ => ("(yaml)".to_owned(), msg),
    };
    Problem {
        field,
        message,
        line: e.location().map(|l| l.line()),
    }
}

/// Best effort: point a problem at the line where its last key is written,
/// when that key occurs exactly once in the file.
fn locate_lines(problems: &mut [Problem], text: &str) {
    for p in problems.iter_mut().filter(|p| p.line.is_none()) {
        let Some(key) = p.field.rsplit('.').next() else {
            continue;
        };
        let key = key.split('[').next().unwrap_or(key);
        if key.is_empty() || key.starts_with('(') {
            continue;
        }
        let needle = format!("{key}:");
        let hits: Vec<usize> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| {
                let t = l.trim_start().trim_start_matches("- ");
                t.starts_with(&needle)
                    || l.contains(&format!("{{ {needle}"))
                    || l.contains(&format!(", {needle}"))
            })
            .map(|(i, _)| i + 1)
            .collect();
        if let [line] = hits[..] {
            p.line = Some(line);
        }
    }
}

fn build(raw: ConfigFile, base: &Path, problems: &mut Problems) -> Option<Config> {
    let listen = listen_addrs(raw.listen.as_deref(), base, problems);
    let upstream = upstream(&raw, base, problems);
    let refresh_margin = duration_or(
        raw.tokens
            .as_ref()
            .and_then(|t| t.refresh_margin.as_deref()),
        "tokens.refresh_margin",
        Duration::from_secs(300),
        problems,
    );
    let timeouts = raw.timeouts.as_ref();
    let shutdown_grace = duration_or(
        timeouts.and_then(|t| t.shutdown.as_deref()),
        "timeouts.shutdown",
        Duration::from_secs(30),
        problems,
    );
    let clients = clients(raw.clients.as_deref().unwrap_or_default(), base, problems);
    if raw.clients.as_ref().is_some_and(Vec::is_empty) {
        problems.add(
            "clients",
            "is empty; remove it to run without caller authentication",
        );
    }
    if clients.is_empty() && !raw.allow_unauthenticated {
        for (i, addr) in listen.iter().enumerate() {
            if let ListenAddr::Tcp(sa) = addr {
                if !sa.ip().is_loopback() {
                    problems.add(
                        format!("listen[{i}]"),
                        format!(
                            "{sa} is reachable from other machines but no `clients:` are configured, \
                             so anyone there could use the app's credentials; add `clients:` with keys, \
                             or set `allow_unauthenticated: true` to accept that"
                        ),
                    );
                }
            }
        }
    }
    let unix_socket_mode = match &raw.unix_socket_mode {
        None => 0o660,
        Some(mode) => {
            let digits = match mode {
                file::FileMode::Number(n) => n.to_string(),
                file::FileMode::Text(t) => t.trim().trim_start_matches("0o").to_owned(),
            };
            match u32::from_str_radix(&digits, 8) {
                Ok(m) if m <= 0o777 => m,
                _ => {
                    problems.add(
                        "unix_socket_mode",
                        format!("`{digits}` is not an octal file mode like \"0660\""),
                    );
                    0o660
                }
            }
        }
    };
    let files = referenced_files(&raw, base);
    let client_names: HashSet<&str> = clients.iter().map(|c| &*c.name).collect();
    let routes = routes(&raw.routes, &client_names, problems);
    let needs_user = routes
        .iter()
        .any(|r| matches!(r.credential, RouteCredential::User(_)));
    let app = app(&raw.app, base, upstream.as_ref(), needs_user, problems);
    let oauth = oauth(&raw, upstream.as_ref(), needs_user, problems);
    let store_path = raw.store.as_ref().map(|s| base.join(&s.path));
    if needs_user && store_path.is_none() {
        problems.add(
            "store.path",
            "is required when a route has `user:` (user grants are kept there)",
        );
    }
    Some(Config {
        path: None,
        listen,
        unix_socket_mode,
        files,
        upstream: upstream?,
        app: Arc::new(app?),
        oauth,
        store_path,
        clients,
        allow_unauthenticated: raw.allow_unauthenticated,
        refresh_margin,
        shutdown_grace,
        routes: RouteTable::new(routes),
    })
}

/// Files named by secret sources and the CA setting, resolved.
fn referenced_files(raw: &ConfigFile, base: &Path) -> Vec<std::path::PathBuf> {
    let secrets = std::iter::once(&raw.app.private_key)
        .chain(raw.app.client_secret.as_ref())
        .chain(raw.clients.iter().flatten().map(|c| &c.key));
    secrets
        .filter_map(|s| match s {
            SecretFile::File(p) => Some(base.join(p)),
            _ => None,
        })
        .chain(raw.upstream_ca_file.as_ref().map(|p| base.join(p)))
        .collect()
}

fn listen_addrs(raw: Option<&[String]>, base: &Path, problems: &mut Problems) -> Vec<ListenAddr> {
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
    let mut out = Vec::new();
    for (i, text) in raw.iter().enumerate() {
        let parsed = if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                Err("a unix socket needs a path: unix:/path/to.sock".to_owned())
            } else {
                Ok(ListenAddr::Unix(base.join(path)))
            }
        } else {
            text.parse().map(ListenAddr::Tcp).map_err(|_| {
                format!("`{text}` is not host:port (e.g. 127.0.0.1:8080, [::1]:8080) or unix:/path")
            })
        };
        match parsed {
            Ok(addr) if out.contains(&addr) => {
                problems.add(format!("listen[{i}]"), format!("{text} is listed twice"))
            }
            Ok(addr) => out.push(addr),
            Err(msg) => problems.add(format!("listen[{i}]"), msg),
        }
    }
    out
}

fn upstream(raw: &ConfigFile, base: &Path, problems: &mut Problems) -> Option<UpstreamConfig> {
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
            problems.add("upstream", format!("`{text}` is not a URL: {e}"));
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
        other => {
            problems.add(
                "upstream",
                format!("scheme `{other}` is not supported; use https://"),
            );
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

fn is_loopback_host(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => IpAddr::V4(*ip).is_loopback(),
        url::Host::Ipv6(ip) => IpAddr::V6(*ip).is_loopback(),
    }
}

fn duration_or(
    text: Option<&str>,
    field: &str,
    default: Duration,
    problems: &mut Problems,
) -> Duration {
    match text {
        None => default,
        Some(t) => humantime::parse_duration(t).unwrap_or_else(|e| {
            problems.add(
                field,
                format!("`{t}` is not a duration like 30s, 5m or 8h: {e}"),
            );
            default
        }),
    }
}

fn secret(
    source: &SecretFile,
    field: &str,
    base: &Path,
    problems: &mut Problems,
) -> Option<Secret> {
    secret::resolve(source, base)
        .map_err(|msg| problems.add(field, msg))
        .ok()
}

fn clients(raw: &[file::ClientFile], base: &Path, problems: &mut Problems) -> Vec<ClientConfig> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, c) in raw.iter().enumerate() {
        if c.name.trim().is_empty() {
            problems.add(format!("clients[{i}].name"), "is empty");
        } else if !seen.insert(c.name.as_str()) {
            problems.add(
                format!("clients[{i}].name"),
                format!("`{}` is used twice", c.name),
            );
        }
        if let Some(key) = secret(&c.key, &format!("clients[{i}].key"), base, problems) {
            if key.expose().len() < 16 {
                problems.add(
                    format!("clients[{i}].key"),
                    "is shorter than 16 characters; use a long random key",
                );
            } else {
                out.push(ClientConfig {
                    name: c.name.as_str().into(),
                    key,
                });
            }
        }
    }
    out
}

fn app(
    raw: &file::AppFile,
    base: &Path,
    upstream: Option<&UpstreamConfig>,
    needs_user: bool,
    problems: &mut Problems,
) -> Option<AppConfig> {
    let id = match &raw.id {
        file::AppId::Number(n) => Some(*n),
        file::AppId::Text(t) => t.trim().parse().ok().or_else(|| {
            problems.add("app.id", format!("`{t}` is not a numeric app id"));
            None
        }),
    };
    let pem = secret(&raw.private_key, "app.private_key", base, problems);
    let key = pem.as_ref().and_then(|pem| parse_key(pem, problems));
    let client_secret = raw
        .client_secret
        .as_ref()
        .and_then(|s| secret(s, "app.client_secret", base, problems));
    if needs_user {
        if raw.client_id.is_none() {
            problems.add("app.client_id", "is required when a route has `user:`");
        }
        if raw.client_secret.is_none() {
            problems.add("app.client_secret", "is required when a route has `user:`");
        }
    }
    let (id, key, pem) = (id?, key?, pem?);
    let mut hasher = Sha256::new();
    hasher.update(id.to_be_bytes());
    hasher.update(upstream.map(UpstreamConfig::base_url).unwrap_or_default());
    hasher.update([0]);
    hasher.update(pem.expose());
    Some(AppConfig {
        id,
        key,
        fingerprint: hasher.finalize().into(),
        client_id: raw.client_id.clone(),
        client_secret,
    })
}

/// Parses the PEM and signs one throwaway JWT, so a key the signer cannot use
/// (wrong type, truncated) fails at load instead of on the first request.
fn parse_key(pem: &Secret, problems: &mut Problems) -> Option<jsonwebtoken::EncodingKey> {
    let key = match jsonwebtoken::EncodingKey::from_rsa_pem(pem.expose().as_bytes()) {
        Ok(k) => k,
        Err(e) => {
            problems.add(
                "app.private_key",
                format!("not an RSA private key in PEM (PKCS#1 or PKCS#8): {e}"),
            );
            return None;
        }
    };
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    match jsonwebtoken::encode(&header, &serde_json::json!({"probe": true}), &key) {
        Ok(_) => Some(key),
        Err(e) => {
            problems.add(
                "app.private_key",
                format!("cannot sign an RS256 JWT with this key: {e}"),
            );
            None
        }
    }
}

fn oauth(
    raw: &ConfigFile,
    upstream: Option<&UpstreamConfig>,
    needs_user: bool,
    problems: &mut Problems,
) -> Option<OAuthConfig> {
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
                problems.add(field, format!("`{value}` is not a URL: {e}"));
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
    Some(OAuthConfig {
        authorize_url: authorize_url?,
        redirect_uri: redirect_uri?,
        token_url: token_url?,
    })
}

fn routes(raw: &[RouteFile], clients: &HashSet<&str>, problems: &mut Problems) -> Vec<Route> {
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let at = |f: &str| format!("routes[{i}].{f}");
        if r.name.trim().is_empty() {
            problems.add(at("name"), "is empty");
        } else if !names.insert(r.name.as_str()) {
            problems.add(
                at("name"),
                format!("`{}` is used by an earlier route", r.name),
            );
        }
        let m = &r.matcher;
        let prefix = if !m.path_prefix.starts_with('/') {
            problems.add(
                at("match.path_prefix"),
                format!("`{}` must start with /", m.path_prefix),
            );
            None
        } else if m.path_prefix.starts_with("/_proxy")
            && (m.path_prefix.len() == 7 || m.path_prefix[7..].starts_with('/'))
        {
            problems.add(
                at("match.path_prefix"),
                "/_proxy/ is reserved for the proxy's own endpoints",
            );
            None
        } else if m.path_prefix.contains(['?', '#']) {
            problems.add(at("match.path_prefix"), "must be a path, without ? or #");
            None
        } else {
            let trimmed = m.path_prefix.trim_end_matches('/');
            Some(if trimmed.is_empty() {
                "/".to_owned()
            } else {
                trimmed.to_owned()
            })
        };
        let methods = m.methods.as_ref().map(|list| {
            if list.is_empty() {
                problems.add(
                    at("match.methods"),
                    "is empty; omit it to match every method",
                );
            }
            list.iter()
                .filter_map(|text| {
                    match http::Method::from_bytes(text.to_ascii_uppercase().as_bytes()) {
                        Ok(method) => Some(method),
                        Err(_) => {
                            problems.add(
                                at("match.methods"),
                                format!("`{text}` is not an HTTP method"),
                            );
                            None
                        }
                    }
                })
                .collect()
        });
        let host = m.host.as_ref().map(|h| h.trim().to_ascii_lowercase());
        if host
            .as_ref()
            .is_some_and(|h| h.is_empty() || h.contains(['/', ' ']))
        {
            problems.add(at("match.host"), "must be a bare host name");
        }
        let route_clients = m.clients.as_ref().map(|list| {
            for c in list.iter().filter(|c| !clients.contains(c.as_str())) {
                problems.add(
                    at("match.clients"),
                    format!("`{c}` is not a client named under `clients:`"),
                );
            }
            list.iter().map(|c| Arc::<str>::from(c.as_str())).collect()
        });
        let credential = match (&r.installation, &r.user) {
            (Some(_), Some(_)) => {
                problems.add(
                    at("installation"),
                    "a route has exactly one of `installation:` and `user:`, not both",
                );
                None
            }
            (None, None) => {
                problems.add(at("installation"), "a route needs `installation:` ({ id: N }, { account: NAME } or auto) or `user: NAME`");
                None
            }
            (Some(InstallationFile::Id(id)), None) => {
                Some(RouteCredential::Installation(InstallationSelector::Id(*id)))
            }
            (Some(InstallationFile::Account(a)), None) if a.trim().is_empty() => {
                problems.add(at("installation.account"), "is empty");
                None
            }
            (Some(InstallationFile::Account(a)), None) => Some(RouteCredential::Installation(
                InstallationSelector::Account(a.trim().to_lowercase()),
            )),
            (Some(InstallationFile::Auto), None) => {
                Some(RouteCredential::Installation(InstallationSelector::Auto))
            }
            (None, Some(u)) if u.trim().is_empty() || u.contains(['/', ' ']) => {
                problems.add(at("user"), "must be a user name");
                None
            }
            (None, Some(u)) => Some(RouteCredential::User(u.trim().into())),
        };
        if let (Some(prefix), Some(credential)) = (prefix, credential) {
            out.push(Route {
                name: r.name.as_str().into(),
                prefix,
                methods,
                host,
                clients: route_clients,
                strip_prefix: r.strip_prefix,
                credential,
            });
        }
    }
    out
}
