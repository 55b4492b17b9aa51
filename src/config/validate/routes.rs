//! Compiling routes: prefixes normalised, methods parsed, hosts lowercased,
//! one credential each.

use super::Problems;
use crate::config::file::InstallationSpecFile;
use crate::config::file::{InstallationFile, RouteFile};
use crate::routes::{Access, InstallationSelector, Route, RouteCredential, TokenScope};
use std::collections::HashSet;
use std::sync::Arc;

pub(super) fn routes(
    raw: &[RouteFile],
    clients: &HashSet<&str>,
    api_version: Option<&http::HeaderValue>,
    apps: &[&str],
    problems: &mut Problems,
) -> Vec<Route> {
    let mut names = std::collections::HashMap::new();
    let mut out = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let at = |f: &str| format!("routes[{i}].{f}");
        if r.name.trim().is_empty() {
            problems.add(at("name"), "is empty");
        } else if let Some(first) = names.get(r.name.as_str()) {
            problems.add(at("name"), format!("is the same as routes[{first}].name"));
        } else {
            names.insert(r.name.as_str(), i);
        }
        let m = &r.matcher;
        let prefix = if !m.path_prefix.starts_with('/') {
            problems.add(at("match.path_prefix"), "must start with /");
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
        } else if crate::routes::path::check(&m.path_prefix).is_err() {
            // Such a prefix could never match a request the proxy accepts.
            problems.add(
                at("match.path_prefix"),
                "must be a plain path: no `.` or `..` segment, in any encoding, and no NUL",
            );
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
                .enumerate()
                .filter_map(|(k, text)| {
                    match http::Method::from_bytes(text.to_ascii_uppercase().as_bytes()) {
                        Ok(method) => Some(method),
                        Err(_) => {
                            problems.add(
                                at(&format!("match.methods[{k}]")),
                                "expected an HTTP method like GET",
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
            for (k, _) in list
                .iter()
                .enumerate()
                .filter(|(_, c)| !clients.contains(c.as_str()))
            {
                problems.add(
                    at(&format!("match.clients[{k}]")),
                    "names no client under `clients:`",
                );
            }
            list.iter().map(|c| Arc::<str>::from(c.as_str())).collect()
        });
        let (credential, scope) = match (&r.installation, &r.user) {
            (Some(_), Some(_)) => {
                problems.add(
                    at("installation"),
                    "a route has exactly one of `installation:` and `user:`, not both",
                );
                (None, None)
            }
            (None, None) => {
                problems.add(at("installation"), "a route needs `installation:` ({ id: N }, { account: NAME } or auto) or `user: NAME`");
                (None, None)
            }
            (Some(InstallationFile::Auto), None) => (
                Some(RouteCredential::Installation(InstallationSelector::Auto)),
                None,
            ),
            (Some(InstallationFile::Spec(spec)), None) => {
                let selector = selector(spec, &at("installation"), problems);
                let scope = scope(spec, &at("installation"), problems);
                (selector.map(RouteCredential::Installation), scope)
            }
            (None, Some(u)) if u.trim().is_empty() || u.contains(['/', ' ']) => {
                problems.add(at("user"), "must be a user name");
                (None, None)
            }
            (None, Some(u)) => (Some(RouteCredential::User(u.trim().into())), None),
        };
        let route_api_version = match &r.api_version {
            Some(v) => api_version_header(v, &at("api_version"), problems),
            None => api_version.cloned(),
        };
        let app = match (&r.app, apps) {
            (Some(name), _) if apps.contains(&name.as_str()) => {
                Some(Arc::<str>::from(name.as_str()))
            }
            (Some(_), []) => None,
            (Some(_), _) => {
                problems.add(
                    at("app"),
                    format!("names no app under `apps:` (apps: {})", apps.join(", ")),
                );
                None
            }
            (None, [only]) => Some(Arc::<str>::from(*only)),
            (None, []) => None,
            (None, _) => {
                problems.add(
                    at("app"),
                    format!(
                        "is required when there are several apps (apps: {})",
                        apps.join(", ")
                    ),
                );
                None
            }
        };
        if let (Some(prefix), Some(credential), Some(app)) = (prefix, credential, app) {
            out.push(Route {
                name: r.name.as_str().into(),
                prefix,
                methods,
                host,
                clients: route_clients,
                strip_prefix: r.strip_prefix,
                credential,
                api_version: route_api_version,
                scope: scope.map(Arc::new),
                app,
            });
        }
    }
    out
}

/// An `api_version` value as the header it is sent as. The message never
/// quotes the value.
pub(super) fn api_version_header(
    text: &str,
    field: &str,
    problems: &mut Problems,
) -> Option<http::HeaderValue> {
    let text = text.trim();
    let ok = !text.is_empty() && text.len() <= 64 && text.bytes().all(|b| b.is_ascii_graphic());
    match http::HeaderValue::from_str(text) {
        Ok(v) if ok => Some(v),
        _ => {
            problems.add(
                field,
                "expected an API version like \"2023-02-21\" (printable ASCII, no spaces)",
            );
            None
        }
    }
}

/// Exactly one of `id`, `account` and `auto: true`.
fn selector(
    spec: &InstallationSpecFile,
    at: &str,
    problems: &mut Problems,
) -> Option<InstallationSelector> {
    match (spec.id, &spec.account, spec.auto) {
        (Some(id), None, None) => Some(InstallationSelector::Id(id)),
        (None, Some(a), None) if a.trim().is_empty() => {
            problems.add(format!("{at}.account"), "is empty");
            None
        }
        (None, Some(a), None) => Some(InstallationSelector::Account(a.trim().to_lowercase())),
        (None, None, Some(true)) => Some(InstallationSelector::Auto),
        (None, None, Some(false)) => {
            problems.add(
                format!("{at}.auto"),
                "can only be true; use `id:` or `account:` instead",
            );
            None
        }
        _ => {
            problems.add(
                at,
                "needs exactly one of `id:`, `account:` and `auto: true`",
            );
            None
        }
    }
}

/// The token's limits, if the route sets any.
fn scope(spec: &InstallationSpecFile, at: &str, problems: &mut Problems) -> Option<TokenScope> {
    if spec.repositories.is_none() && spec.permissions.is_none() {
        return None;
    }
    let repositories = spec.repositories.as_ref().map(|repos| {
        let field = format!("{at}.repositories");
        if repos.is_empty() {
            problems.add(&field, "is empty; omit it to allow every repository");
        }
        let mut names: Vec<String> = repos
            .iter()
            .enumerate()
            .filter_map(|(k, name)| {
                let name = name.trim();
                let bad = name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if bad {
                    problems.add(
                        format!("{field}[{k}]"),
                        "expected a repository name (letters, digits, `-`, `_`, `.`; no owner)",
                    );
                    return None;
                }
                Some(name.to_lowercase())
            })
            .collect();
        names.sort();
        names.dedup();
        names
    });
    let permissions = spec.permissions.as_ref().map(|perms| {
        let field = format!("{at}.permissions");
        if perms.is_empty() {
            problems.add(&field, "is empty; omit it to allow every permission");
        }
        perms
            .iter()
            .filter_map(|(name, level)| {
                let ok_name =
                    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
                if !ok_name {
                    problems.add(&field, "expected permission names like contents or issues");
                    return None;
                }
                match Access::parse(level.trim()) {
                    Some(access) => Some((name.clone(), access)),
                    None => {
                        problems.add(format!("{field}.{name}"), "expected read or write");
                        None
                    }
                }
            })
            .collect()
    });
    Some(TokenScope {
        repositories,
        permissions,
    })
}
