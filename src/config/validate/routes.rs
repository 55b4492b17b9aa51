//! Compiling routes: prefixes normalised, methods parsed, hosts lowercased,
//! one credential each.

use super::Problems;
use crate::config::file::{InstallationFile, RouteFile};
use crate::routes::{InstallationSelector, Route, RouteCredential};
use std::collections::HashSet;
use std::sync::Arc;

pub(super) fn routes(
    raw: &[RouteFile],
    clients: &HashSet<&str>,
    api_version: Option<&http::HeaderValue>,
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
        let route_api_version = match &r.api_version {
            Some(v) => api_version_header(v, &at("api_version"), problems),
            None => api_version.cloned(),
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
                api_version: route_api_version,
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
