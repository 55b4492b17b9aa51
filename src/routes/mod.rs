//! Routes: which credential a request is sent with.
//!
//! Routes are compiled at config load (prefix normalised, methods parsed, host
//! lowercased) and matched here in file order; the first match wins.
//!
//! # Layout
//! - this file: routes, the table, selection, the owner of an `auto` route.
//! - [`path`]: hostile paths, refused before any route is looked at.
//! - `owner`: the owner an `installation: auto` route acts for.

mod owner;
pub mod path;
pub mod scope;

pub use owner::owner_from_path;
pub use scope::{Access, TokenScope};

use http::Method;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: Arc<str>,
    /// Normalised: starts with `/`, no trailing `/` unless it is exactly `/`.
    pub prefix: String,
    /// `None` matches any method.
    pub methods: Option<Vec<Method>>,
    /// Lowercased host without port; `None` matches any host.
    pub host: Option<String>,
    /// Client names allowed to use this route; `None` allows every client.
    pub clients: Option<Vec<Arc<str>>>,
    /// Forward the path with `prefix` removed.
    pub strip_prefix: bool,
    /// What the request is sent as.
    pub credential: RouteCredential,
    /// `X-Api-Version` to send when the caller sends none (the route's, else
    /// the top-level one), built once at load.
    pub api_version: Option<http::HeaderValue>,
    /// What an installation token is limited to (`repositories`,
    /// `permissions`); `None`: all the installation allows.
    pub scope: Option<Arc<TokenScope>>,
    /// The name of the app (under `apps:`) the credential belongs to.
    pub app: Arc<str>,
}

/// Who a route acts as. A user grant is just one more variant here; the
/// credential layer resolves each to a token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RouteCredential {
    Installation(InstallationSelector),
    User(Arc<str>),
}

/// How a route names its installation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum InstallationSelector {
    Id(u64),
    /// Account path, lowercased (the platform matches it case-insensitively).
    Account(String),
    /// The owner named by the request path.
    Auto,
}

impl fmt::Display for RouteCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteCredential::Installation(InstallationSelector::Id(id)) => {
                write!(f, "installation id {id}")
            }
            RouteCredential::Installation(InstallationSelector::Account(a)) => {
                write!(f, "installation account {a}")
            }
            RouteCredential::Installation(InstallationSelector::Auto) => {
                f.write_str("installation auto (owner from path)")
            }
            RouteCredential::User(u) => write!(f, "user {u}"),
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.prefix)?;
        if let Some(methods) = &self.methods {
            let m: Vec<&str> = methods.iter().map(Method::as_str).collect();
            write!(f, " [{}]", m.join(", "))?;
        }
        if let Some(host) = &self.host {
            write!(f, " host={host}")?;
        }
        if let Some(clients) = &self.clients {
            write!(f, " clients={}", clients.join(","))?;
        }
        if self.strip_prefix {
            f.write_str(" (strip prefix)")?;
        }
        write!(f, " -> {}", self.credential)?;
        if &*self.app != "default" {
            write!(f, " (app {})", self.app)?;
        }
        if let Some(scope) = &self.scope {
            write!(f, " scoped to {scope}")?;
        }
        Ok(())
    }
}

impl Route {
    /// Whether `path` lies under this route's prefix, on whole segments:
    /// `/orgs/ab` covers `/orgs/ab` and `/orgs/ab/x`, not `/orgs/abc`.
    fn covers(&self, path: &str) -> bool {
        covers(self.prefix.as_bytes(), path.as_bytes())
    }

    /// Whether a [`path::reading`] lies under this route's prefix, read the
    /// same way. A prefix that cannot be read covers nothing, so a path
    /// matching it raw is refused as ambiguous.
    fn covers_reading(&self, reading: &[u8]) -> bool {
        path::reading(&self.prefix).is_ok_and(|prefix| covers(&prefix, reading))
    }

    /// `overrides` are the methods named by `X-HTTP-Method-Override` and its
    /// kin: the platform may act on one of them, so each must be admitted too.
    fn admits(&self, method: &Method, overrides: &[Method], host: Option<&str>) -> bool {
        let method_ok = self
            .methods
            .as_ref()
            .is_none_or(|m| m.contains(method) && overrides.iter().all(|o| m.contains(o)));
        let host_ok = match (&self.host, host) {
            (None, _) => true,
            (Some(want), Some(got)) => strip_port(got).eq_ignore_ascii_case(want),
            (Some(_), None) => false,
        };
        method_ok && host_ok
    }

    fn allows_client(&self, client: Option<&str>) -> bool {
        match (&self.clients, client) {
            (None, _) => true,
            (Some(allowed), Some(c)) => allowed.iter().any(|a| &**a == c),
            (Some(_), None) => false,
        }
    }

    /// The path to send upstream: with the prefix removed when configured.
    pub fn forward_path<'a>(&self, path: &'a str) -> &'a str {
        if !self.strip_prefix || self.prefix == "/" {
            return path;
        }
        match path.get(self.prefix.len()..) {
            Some("") | None => "/",
            Some(rest) => rest,
        }
    }

    /// What to put back in front of an upstream path so a rewritten link
    /// routes through this same route again.
    pub fn reverse_prefix(&self) -> &str {
        if self.strip_prefix && self.prefix != "/" {
            &self.prefix
        } else {
            ""
        }
    }
}

fn covers(prefix: &[u8], path: &[u8]) -> bool {
    if prefix == b"/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with(b"/"),
        None => false,
    }
}

/// `Host` header without its port (IPv6 literals keep their brackets).
/// Byte searches: every request's `Host` passes here, and `str`'s pattern
/// searchers cost several times as much on a short name.
pub fn strip_port(host: &str) -> &str {
    let bytes = host.as_bytes();
    let end = if bytes.first() == Some(&b'[') {
        bytes.iter().position(|&b| b == b']').map(|i| i + 1)
    } else {
        bytes.iter().rposition(|&b| b == b':')
    };
    // Cut at an ASCII byte: always a character boundary.
    end.map_or(host, |end| &host[..end])
}

/// Why no route was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    /// Nothing matched.
    NoRoute,
    /// A route matched but excludes this caller (and no later route took it).
    ForbiddenClient { route: Arc<str> },
    /// The path as written takes one route, but decoded (`%61` as `a`, `%2F`
    /// as `/`, `;params` cut, `//` as `/`) it takes another or none.
    AmbiguousPath,
}

/// The routes of one snapshot.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        RouteTable { routes }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    pub fn get(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| &*r.name == name)
    }

    /// First route that matches and admits `client`. A route that matches but
    /// excludes the client is remembered so the caller learns it is forbidden
    /// rather than that nothing exists.
    ///
    /// Matching is on the path as written, which is what goes upstream. A
    /// platform that decodes it first must not read another route's path
    /// (`/orgs/%61` is `/orgs/a` to it, `/orgs//a` too), so the route is
    /// also selected for the decoded [`path::reading`], and if the two differ
    /// the request is refused. Paths without `%`, `\`, `;` or `//` read as
    /// written and skip this.
    pub fn select(
        &self,
        method: &Method,
        overrides: &[Method],
        path: &str,
        host: Option<&str>,
        client: Option<&str>,
    ) -> Result<&Route, Miss> {
        match path::reading(path) {
            Ok(reading) => {
                let decoded = match &reading {
                    Cow::Borrowed(_) => None,
                    Cow::Owned(reading) => Some(&reading[..]),
                };
                self.select_read(method, overrides, path, decoded, host, client)
            }
            Err(_) => {
                // A miss forwards nothing, whatever the reading.
                self.first(method, overrides, host, client, |r| r.covers(path))?;
                Err(Miss::AmbiguousPath)
            }
        }
    }

    /// [`RouteTable::select`] with the path already read (see
    /// [`path::checked_reading`]; `decoded` is `None` when it reads as
    /// written), so the path is not read twice.
    pub fn select_read(
        &self,
        method: &Method,
        overrides: &[Method],
        path: &str,
        decoded: Option<&[u8]>,
        host: Option<&str>,
        client: Option<&str>,
    ) -> Result<&Route, Miss> {
        let route = self.first(method, overrides, host, client, |r| r.covers(path))?;
        let Some(reading) = decoded else {
            return Ok(route);
        };
        match self.first(method, overrides, host, client, |r| {
            r.covers_reading(reading)
        }) {
            Ok(other) if std::ptr::eq(other, route) => Ok(route),
            _ => Err(Miss::AmbiguousPath),
        }
    }

    fn first(
        &self,
        method: &Method,
        overrides: &[Method],
        host: Option<&str>,
        client: Option<&str>,
        covers: impl Fn(&Route) -> bool,
    ) -> Result<&Route, Miss> {
        let mut excluded: Option<&Route> = None;
        for route in &self.routes {
            if covers(route) && route.admits(method, overrides, host) {
                if route.allows_client(client) {
                    return Ok(route);
                }
                excluded.get_or_insert(route);
            }
        }
        Err(match excluded {
            Some(route) => Miss::ForbiddenClient {
                route: route.name.clone(),
            },
            None => Miss::NoRoute,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, prefix: &str) -> Route {
        Route {
            name: name.into(),
            prefix: prefix.into(),
            methods: None,
            host: None,
            clients: None,
            strip_prefix: false,
            credential: RouteCredential::Installation(InstallationSelector::Auto),
            api_version: None,
            scope: None,
            app: "default".into(),
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let r = route("a", "/orgs/ab");
        assert!(r.covers("/orgs/ab"));
        assert!(r.covers("/orgs/ab/"));
        assert!(r.covers("/orgs/ab/repos"));
        assert!(!r.covers("/orgs/abc"));
        assert!(!r.covers("/orgs/a"));
        assert!(route("root", "/").covers("/anything"));
    }

    #[test]
    fn strip_prefix_keeps_a_leading_slash() {
        let mut r = route("a", "/as/alice");
        r.strip_prefix = true;
        assert_eq!(r.forward_path("/as/alice/user/repos"), "/user/repos");
        assert_eq!(r.forward_path("/as/alice"), "/");
        assert_eq!(r.reverse_prefix(), "/as/alice");
    }

    #[test]
    fn host_ignores_port_and_case() {
        let mut r = route("a", "/");
        r.host = Some("tools.local".into());
        assert!(r.admits(&Method::GET, &[], Some("Tools.Local:8080")));
        assert!(!r.admits(&Method::GET, &[], Some("other.local")));
        assert!(!r.admits(&Method::GET, &[], None));
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        for (host, name) in [
            ("127.0.0.1:19081", "127.0.0.1"),
            ("localhost", "localhost"),
            ("[::1]", "[::1]"),
            ("[::1", "[::1"),
            ("", ""),
            ("a:b:c", "a:b"),
            ("h\u{e9}te:1", "h\u{e9}te"),
        ] {
            assert_eq!(strip_port(host), name, "{host}");
        }
    }

    #[test]
    fn every_override_must_be_admitted() {
        let mut r = route("a", "/");
        r.methods = Some(vec![Method::GET, Method::POST]);
        assert!(r.admits(&Method::POST, &[Method::GET], None));
        assert!(!r.admits(&Method::GET, &[Method::DELETE], None));
        assert!(!r.admits(&Method::GET, &[Method::GET, Method::PUT], None));
        assert!(route("any", "/").admits(&Method::GET, &[Method::DELETE], None));
    }

    #[test]
    fn excluded_client_is_forbidden_unless_a_later_route_matches() {
        let mut ci_only = route("ci", "/orgs");
        ci_only.clients = Some(vec!["ci".into()]);
        let table = RouteTable::new(vec![ci_only.clone()]);
        assert_eq!(
            table
                .select(&Method::GET, &[], "/orgs/x", None, Some("other"))
                .unwrap_err(),
            Miss::ForbiddenClient { route: "ci".into() }
        );
        let table = RouteTable::new(vec![ci_only, route("all", "/")]);
        let r = table
            .select(&Method::GET, &[], "/orgs/x", None, Some("other"))
            .unwrap();
        assert_eq!(&*r.name, "all");
        assert_eq!(
            RouteTable::new(vec![route("a", "/x")])
                .select(&Method::GET, &[], "/y", None, None)
                .unwrap_err(),
            Miss::NoRoute
        );
    }

    #[test]
    fn a_path_read_into_another_route_is_ambiguous() {
        let table = RouteTable::new(vec![route("a", "/orgs/a"), route("orgs", "/orgs")]);
        let pick = |path| {
            table
                .select(&Method::GET, &[], path, None, None)
                .map(|r| &*r.name)
        };
        assert_eq!(pick("/orgs/a/x"), Ok("a"));
        assert_eq!(pick("/orgs/b/x"), Ok("orgs"));
        assert_eq!(pick("/orgs/b%2Fx"), Ok("orgs"));
        assert_eq!(pick("/orgs/a/b%2Fx"), Ok("a"));
        for path in [
            "/orgs/%61/x",
            "/orgs//a/x",
            "/orgs/a%2Fx",
            "/orgs/a\\x",
            "/orgs/a;p/x",
        ] {
            assert_eq!(pick(path), Err(Miss::AmbiguousPath), "{path}");
        }
        // Nothing matches as written: nothing is forwarded, so no refusal.
        let only_a = RouteTable::new(vec![route("a", "/orgs/a")]);
        assert_eq!(
            only_a
                .select(&Method::GET, &[], "/orgs/%61", None, None)
                .unwrap_err(),
            Miss::NoRoute
        );
    }
}
