//! Routes: which credential a request is sent with.
//!
//! Routes are compiled at config load (prefix normalised, methods parsed, host
//! lowercased) and matched here in file order; the first match wins.

use http::Method;
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
        write!(f, " -> {}", self.credential)
    }
}

impl Route {
    /// Whether `path` lies under this route's prefix, on whole segments:
    /// `/orgs/ab` covers `/orgs/ab` and `/orgs/ab/x`, not `/orgs/abc`.
    fn covers(&self, path: &str) -> bool {
        if self.prefix == "/" {
            return true;
        }
        match path.strip_prefix(self.prefix.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
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

/// `Host` header without its port (IPv6 literals keep their brackets).
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Why no route was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    /// Nothing matched.
    NoRoute,
    /// A route matched but excludes this caller (and no later route took it).
    ForbiddenClient { route: Arc<str> },
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
    pub fn select(
        &self,
        method: &Method,
        overrides: &[Method],
        path: &str,
        host: Option<&str>,
        client: Option<&str>,
    ) -> Result<&Route, Miss> {
        let mut excluded: Option<&Route> = None;
        for route in &self.routes {
            if route.covers(path) && route.admits(method, overrides, host) {
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

/// Whether `path` has a `.` or `..` segment, literally or percent-encoded.
/// Routes match on the raw path, so `/orgs/a/../../orgs/b` would pass a
/// route (and its client restriction) for `/orgs/a` and then be read as
/// `/orgs/b` by anything that normalises it; such paths are refused.
pub fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|segment| {
        // Count dots, each written `.` or `%2e`/`%2E`; anything else means
        // an ordinary segment. No allocation: this runs on every request.
        let (mut rest, mut dots) = (segment.as_bytes(), 0);
        while !rest.is_empty() && dots < 3 {
            match rest {
                [b'.', tail @ ..] => rest = tail,
                [b'%', b'2', b'e' | b'E', tail @ ..] => rest = tail,
                _ => return false,
            }
            dots += 1;
        }
        rest.is_empty() && (dots == 1 || dots == 2)
    })
}

/// The owner an `auto` route acts for: `{owner}` in `/repos/{owner}/...`,
/// `/orgs/{owner}/...` or `/users/{owner}/...`, lowercased.
pub fn owner_from_path(path: &str) -> Option<String> {
    let mut segments = path.trim_start_matches('/').split('/');
    let kind = segments.next()?;
    if !matches!(kind, "repos" | "orgs" | "users") {
        return None;
    }
    let owner = segments.next().filter(|s| !s.is_empty())?;
    let decoded = percent_encoding::percent_decode_str(owner)
        .decode_utf8()
        .ok()?;
    Some(decoded.to_lowercase())
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
    fn dot_segments_are_found_in_any_spelling() {
        for bad in [
            "/orgs/a/../b",
            "/orgs/a/./b",
            "/..",
            "/orgs/%2e%2E/b",
            "/x/.%2e",
        ] {
            assert!(has_dot_segment(bad), "{bad}");
        }
        for good in [
            "/orgs/a.b/repos",
            "/repos/x/...",
            "/orgs/a/.well-known",
            "/",
        ] {
            assert!(!has_dot_segment(good), "{good}");
        }
    }

    #[test]
    fn owner_comes_from_known_path_shapes() {
        assert_eq!(
            owner_from_path("/repos/Yanqianyu/demo").as_deref(),
            Some("yanqianyu")
        );
        assert_eq!(owner_from_path("/orgs/ORG/repos").as_deref(), Some("org"));
        assert_eq!(owner_from_path("/users/u").as_deref(), Some("u"));
        assert_eq!(owner_from_path("/user/repos"), None);
        assert_eq!(owner_from_path("/repos/"), None);
    }
}
