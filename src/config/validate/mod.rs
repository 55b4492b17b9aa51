//! Raw file types to a validated [`Config`], collecting every problem.
//!
//! Validation never stops at the first error: `check` must list them all, each
//! naming its field, so an operator fixes a config in one pass.

mod apps;
mod collect;
mod hints;
mod keys;
mod limits;
mod lines;
mod network;
mod quota;
mod routes;
mod yaml_errors;

use super::file::{self, ConfigFile, SecretFile};
use super::secret::{self, Secret};
use super::{ClientConfig, Config, ListenAddr, Problem};
use crate::routes::{RouteCredential, RouteTable};
use network::{listen_addrs, oauth, upstream};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Accumulates problems while validation goes on.
#[derive(Default)]
pub(super) struct Problems(Vec<Problem>);

impl Problems {
    pub(super) fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
            line: None,
        });
    }
}

/// Why a text did not validate: every problem, and the files it names (so a
/// reload that failed for a missing key file is retried when it appears).
pub(super) struct Rejected {
    pub problems: Vec<Problem>,
    pub files: Vec<PathBuf>,
}

pub(super) fn parse_and_validate(text: &str, base: &Path) -> Result<Config, Rejected> {
    let parsed = collect::parse(text);
    let mut found = parsed.problems;
    let mut files = Vec::new();
    if let Some(raw) = parsed.raw {
        files = referenced_files(&raw, base);
        let mut problems = Problems::default();
        let config = build(raw, base, &mut problems);
        if found.is_empty()
            && problems.0.is_empty()
            && let Some(config) = config
        {
            return Ok(config);
        }
        let mut semantic: Vec<Problem> = problems
            .0
            .into_iter()
            .filter(|p| !collect::is_consequence(&p.field, &parsed.reported))
            .collect();
        for p in &mut semantic {
            p.line = p.line.or_else(|| lines::line_of_field(text, &p.field));
        }
        locate_lines(&mut semantic, text);
        found.extend(semantic);
    }
    if found.is_empty() {
        // Unreachable in practice: a config that did not build said why.
        found.push(Problem {
            field: "(file)".into(),
            message: "cannot be read as a config".into(),
            line: None,
        });
    }
    collect::sort(&mut found);
    collect::name_routes(&mut found, &parsed.doc);
    Err(Rejected {
        problems: found,
        files,
    })
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
        Duration::from_secs(25),
        problems,
    );
    let limits = limits::limits(&raw, problems);
    let quota = quota::quota(&raw, problems);
    let cache = quota::cache(&raw, problems);
    let clients = clients(raw.clients.as_deref().unwrap_or_default(), base, problems);
    if raw.clients.as_ref().is_some_and(Vec::is_empty) {
        problems.add(
            "clients",
            "is empty; remove it to run without caller authentication",
        );
    }
    if clients.is_empty() && !raw.allow_unauthenticated {
        for (i, addr) in listen.iter().enumerate() {
            if let ListenAddr::Tcp(sa) = addr
                && !sa.ip().is_loopback()
            {
                problems.add(
                    format!("listen[{i}]"),
                    "is reachable from other machines but no `clients:` are configured, \
                     so anyone there could use the app's credentials; add `clients:` with keys, \
                     or set `allow_unauthenticated: true` to accept that",
                );
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
                        "expected an octal file mode like \"0660\"",
                    );
                    0o660
                }
            }
        }
    };
    let files = referenced_files(&raw, base);
    let secret_files = secret_files(&raw, base);
    let client_names: HashSet<&str> = clients.iter().map(|c| &*c.name).collect();
    let api_version = raw
        .api_version
        .as_deref()
        .and_then(|v| routes::api_version_header(v, "api_version", problems));
    let raw_apps = apps::raw_apps(&raw, problems);
    let app_names: Vec<&str> = raw_apps.iter().map(|(n, ..)| n.as_str()).collect();
    let routes = routes::routes(
        &raw.routes,
        &client_names,
        api_version.as_ref(),
        &app_names,
        problems,
    );
    let needs_user = routes
        .iter()
        .any(|r| matches!(r.credential, RouteCredential::User(_)));
    let apps = apps::apps(&raw_apps, base, upstream.as_ref(), &routes, problems);
    let oauth = oauth(&raw, upstream.as_ref(), needs_user, problems);
    let (store_path, store_redis) = super::store::store(raw.store.as_ref(), base, problems);
    if needs_user && raw.store.is_none() {
        problems.add(
            "store.path",
            "is required when a route has `user:` (user grants are kept there)",
        );
    }
    let browser = limits::browser_policy(
        &raw,
        &listen,
        &routes,
        oauth.as_ref(),
        clients.is_empty(),
        problems,
    );
    Some(Config {
        path: None,
        listen,
        unix_socket_mode,
        files,
        secret_files,
        upstream: upstream?,
        app: apps.first()?.clone(),
        apps,
        oauth,
        store_path,
        store_redis,
        clients,
        allow_unauthenticated: raw.allow_unauthenticated,
        refresh_margin,
        shutdown_grace,
        limits,
        browser,
        routes: RouteTable::new(routes),
        quota,
        cache,
        audit: raw.audit,
    })
}

/// Files named by secret sources and the CA setting, resolved.
fn referenced_files(raw: &ConfigFile, base: &Path) -> Vec<PathBuf> {
    let mut files = secret_files(raw, base);
    files.extend(raw.upstream_ca_file.as_ref().map(|p| base.join(p)));
    files
}

/// Files secrets are read from, resolved.
fn secret_files(raw: &ConfigFile, base: &Path) -> Vec<PathBuf> {
    let store = raw.store.as_ref();
    let apps = raw
        .app
        .iter()
        .chain(raw.apps.iter().flat_map(|a| a.values()));
    let secrets = apps
        .flat_map(|a| std::iter::once(&a.private_key).chain(a.client_secret.as_ref()))
        .chain(store.and_then(|s| s.redis.as_ref()).map(|r| &r.url))
        .chain(store.and_then(|s| s.encryption_key.as_ref()))
        .chain(raw.clients.iter().flatten().map(|c| &c.key));
    secrets
        .filter_map(|s| match s {
            SecretFile::File(p) => Some(base.join(p)),
            _ => None,
        })
        .collect()
}

pub(super) fn duration_or(
    text: Option<&str>,
    field: &str,
    default: Duration,
    problems: &mut Problems,
) -> Duration {
    match text {
        None => default,
        // humantime's error quotes part of the text: not shown.
        Some(t) => humantime::parse_duration(t).unwrap_or_else(|_| {
            problems.add(field, "expected a duration like 30s, 5m or 8h");
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
    let mut seen = std::collections::HashMap::new();
    let mut out = Vec::new();
    for (i, c) in raw.iter().enumerate() {
        if c.name.trim().is_empty() {
            problems.add(format!("clients[{i}].name"), "is empty");
        } else if let Some(first) = seen.get(c.name.as_str()) {
            problems.add(
                format!("clients[{i}].name"),
                format!("is the same as clients[{first}].name"),
            );
        } else {
            seen.insert(c.name.as_str(), i);
        }
        if let Some(key) = secret(&c.key, &format!("clients[{i}].key"), base, problems) {
            if key.expose().len() < 16 {
                problems.add(
                    format!("clients[{i}].key"),
                    "is shorter than 16 characters; use a long random key",
                );
            } else {
                out.push(ClientConfig::new(&c.name, &key));
            }
        }
    }
    out
}
