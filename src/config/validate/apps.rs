//! The app identities: `app:` (one app, named `default`) or `apps:` (a map
//! of name to the same fields), never both. Each gets its own key, JWT,
//! installation directory, tokens and OAuth client; routes name theirs with
//! `app: NAME` (required when there are several).

use super::file::{AppFile, AppId, ConfigFile};
use super::{Problems, secret};
use crate::config::{AppConfig, AppFingerprint, Secret, UpstreamConfig};
use crate::routes::{Route, RouteCredential};
use std::path::Path;
use std::sync::Arc;

/// The name of the app `app:` declares.
pub const DEFAULT_APP: &str = "default";

/// The apps as written: (name, fields, the field path they are reported under).
pub(super) fn raw_apps<'a>(
    raw: &'a ConfigFile,
    problems: &mut Problems,
) -> Vec<(String, &'a AppFile, String)> {
    match (&raw.app, &raw.apps) {
        (Some(_), Some(_)) => {
            problems.add(
                "apps",
                "`app:` and `apps:` are both set; use `app:` for one app or `apps:` for several, not both",
            );
            Vec::new()
        }
        (None, None) => {
            problems.add("app", "is required (or `apps:` for several apps)");
            Vec::new()
        }
        (Some(app), None) => vec![(DEFAULT_APP.to_owned(), app, "app".to_owned())],
        (None, Some(apps)) => {
            if apps.is_empty() {
                problems.add("apps", "is empty; name at least one app");
            }
            apps.iter()
                .filter_map(|(name, app)| {
                    let ok = !name.is_empty()
                        && name.len() <= 64
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                    if !ok {
                        problems.add(
                            "apps",
                            "app names are letters, digits, `-` and `_` (at most 64)",
                        );
                        return None;
                    }
                    Some((name.clone(), app, format!("apps.{name}")))
                })
                .collect()
        }
    }
}

/// Validates every app; `routes` (already given their app) say which apps
/// need an OAuth client.
pub(super) fn apps(
    raw: &[(String, &AppFile, String)],
    base: &Path,
    upstream: Option<&UpstreamConfig>,
    routes: &[Route],
    problems: &mut Problems,
) -> Vec<Arc<AppConfig>> {
    raw.iter()
        .filter_map(|(name, app_file, field)| {
            let needs_user = routes.iter().any(|r| {
                &*r.app == name.as_str() && matches!(r.credential, RouteCredential::User(_))
            });
            app(name, app_file, field, base, upstream, needs_user, problems).map(Arc::new)
        })
        .collect()
}

fn app(
    name: &str,
    raw: &AppFile,
    at: &str,
    base: &Path,
    upstream: Option<&UpstreamConfig>,
    needs_user: bool,
    problems: &mut Problems,
) -> Option<AppConfig> {
    let id = match &raw.id {
        AppId::Number(n) => Some(*n),
        AppId::Text(t) => t.trim().parse().ok().or_else(|| {
            problems.add(format!("{at}.id"), "expected a numeric app id like 75");
            None
        }),
    };
    let key_field = format!("{at}.private_key");
    let pem = secret(&raw.private_key, &key_field, base, problems);
    let key = pem
        .as_ref()
        .and_then(|pem| parse_key(pem, &key_field, problems));
    // Only user routes use the client secret: an installation-only config
    // (the example as shipped) must not fail on an unset variable.
    let client_secret = raw
        .client_secret
        .as_ref()
        .filter(|_| needs_user)
        .and_then(|s| secret(s, &format!("{at}.client_secret"), base, problems));
    if needs_user {
        if raw.client_id.is_none() {
            problems.add(
                format!("{at}.client_id"),
                "is required when a route has `user:`",
            );
        }
        if raw.client_secret.is_none() {
            problems.add(
                format!("{at}.client_secret"),
                "is required when a route has `user:`",
            );
        }
    }
    let (id, key, pem) = (id?, key?, pem?);
    let upstream_base = upstream.map(UpstreamConfig::base_url).unwrap_or_default();
    Some(AppConfig {
        name: name.into(),
        id,
        key,
        fingerprint: AppFingerprint::of(id, &upstream_base, &pem),
        client_id: raw.client_id.clone(),
        client_secret,
    })
}

/// Parses the PEM and signs one throwaway JWT, so a key the signer cannot use
/// (wrong type, truncated) fails at load instead of on the first request.
fn parse_key(
    pem: &Secret,
    field: &str,
    problems: &mut Problems,
) -> Option<jsonwebtoken::EncodingKey> {
    let key = match jsonwebtoken::EncodingKey::from_rsa_pem(pem.expose().as_bytes()) {
        Ok(k) => k,
        // The PEM parser's errors can quote the armour's label: not shown.
        Err(_) => {
            problems.add(field, super::keys::why_not_rsa_private(pem.expose()));
            return None;
        }
    };
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    match jsonwebtoken::encode(&header, &serde_json::json!({"probe": true}), &key) {
        Ok(_) => Some(key),
        Err(_) => {
            problems.add(field, "cannot sign an RS256 JWT with this key");
            None
        }
    }
}
