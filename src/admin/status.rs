//! `GET /_proxy/status`: an HTML page for operators, in the spirit of
//! HAProxy's stats page: routes and their credentials, token expiry times,
//! user grants (with the command that fixes a missing or revoked one), the
//! platform's quota as last seen, the last reload and recent upstream
//! errors. It refreshes itself: a small script fetches `?part=content`
//! every few seconds and swaps it in.
//!
//! Never a secret: tokens, keys and grants are shown by their times and
//! states only. Every value is HTML-escaped. With `clients:`, the page asks
//! for a key by Basic auth (any user name, the key as password), so a
//! browser prompts for it.

use crate::body::Body;
use crate::error::ProxyError;
use crate::routes::{InstallationSelector, RouteCredential};
use crate::state::{Shared, Snapshot};
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const PAGE: &str = include_str!("status.html");

/// How often the page refreshes itself.
pub const REFRESH: Duration = Duration::from_secs(3);

/// How long the page waits to resolve an installation account (a cached
/// lookup is instant; a platform that hangs must not hang the page).
const LOOKUP_WAIT: Duration = Duration::from_millis(800);

/// The page, or just its content (`?part=content`, for the refresh).
pub async fn status(
    parts: &http::request::Parts,
    shared: &Arc<Shared>,
    snap: &Arc<Snapshot>,
    caller: Result<(), ProxyError>,
) -> Response<Body> {
    if let Err(e) = caller {
        let mut resp = e.into_response(None);
        resp.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="atomgit-proxy", charset="UTF-8""#),
        );
        return resp;
    }
    let content = content(shared, snap).await;
    let only_content = parts.uri.query() == Some("part=content");
    let body = if only_content {
        content
    } else {
        PAGE.replace("{{refresh_ms}}", &REFRESH.as_millis().to_string())
            .replace(
                "{{updated}}",
                &esc(&format!("updated {}", clock(SystemTime::now()))),
            )
            .replace("{{content}}", &content)
    };
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The page runs only its own inline script and talks only to itself.
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    *resp.status_mut() = StatusCode::OK;
    resp
}

/// The sections, as HTML.
async fn content(shared: &Arc<Shared>, snap: &Arc<Snapshot>) -> String {
    let mut out = String::new();
    overview(&mut out, shared, snap);
    routes(&mut out, shared, snap).await;
    users(&mut out, snap).await;
    quota(&mut out, shared);
    reload(&mut out, shared);
    errors(&mut out, shared);
    out
}

fn overview(out: &mut String, shared: &Shared, snap: &Snapshot) {
    let config = &snap.config;
    let listen: Vec<String> = config.listen.iter().map(ToString::to_string).collect();
    let file = config
        .path
        .as_ref()
        .map_or_else(|| "(embedded)".to_owned(), |p| p.display().to_string());
    let _ = write!(
        out,
        "<section id=\"overview\"><h2>Proxy</h2><table>\
         <tr><th>version</th><td>{}</td></tr>\
         <tr><th>serving since</th><td>{}</td></tr>\
         <tr><th>config</th><td><code>{}</code></td></tr>\
         <tr><th>listen</th><td>{}</td></tr>\
         <tr><th>upstream</th><td>{}</td></tr>\
         <tr><th>app</th><td>{}</td></tr>\
         <tr><th>callers</th><td>{}</td></tr></table></section>",
        esc(env!("CARGO_PKG_VERSION")),
        esc(&clock(shared.activity.started)),
        esc(&file),
        esc(&listen.join(", ")),
        esc(&config.upstream.base_url()),
        esc(&apps(shared, snap)),
        if config.clients.is_empty() {
            "no client keys (loopback only)".to_owned()
        } else {
            let names: Vec<&str> = config.clients.iter().map(|c| &*c.name).collect();
            esc(&names.join(", "))
        },
    );
}

/// The app identities: the id alone for one app, `name (id N)` for each of
/// several; with the platform's clock offset once a refused JWT showed one.
fn apps(shared: &Shared, snap: &Snapshot) -> String {
    let several = snap.config.apps.len() > 1;
    let shown: Vec<String> = snap
        .config
        .apps
        .iter()
        .map(|app| {
            let mut text = if several {
                format!("{} (id {})", app.name, app.id)
            } else {
                app.id.to_string()
            };
            let offset = shared.credentials.clock_offset(app);
            if offset != 0 {
                text.push_str(&format!(", platform clock {offset:+}s"));
            }
            text
        })
        .collect();
    shown.join("; ")
}

async fn routes(out: &mut String, shared: &Shared, snap: &Snapshot) {
    out.push_str(
        "<section id=\"routes\"><h2>Routes</h2><table><tr><th>route</th><th>match</th>\
         <th>credential</th><th>token</th></tr>",
    );
    let several_apps = snap.config.apps.len() > 1;
    for route in snap.config.routes.iter() {
        // The route's app and scope: its token is the one cached for both.
        let ctx = snap.context_for(route);
        let token = match &route.credential {
            RouteCredential::Installation(InstallationSelector::Auto) => {
                "<span class=\"muted\">one per owner in the path</span>".to_owned()
            }
            RouteCredential::Installation(selector) => {
                let id = tokio::time::timeout(
                    LOOKUP_WAIT,
                    shared.credentials.installation_id(&ctx, selector, ""),
                )
                .await;
                match id {
                    Ok(Ok(id)) => match shared.credentials.cached_installation_token(&ctx, id) {
                        Some(t) => expiry(t.expires_at),
                        None => "<span class=\"muted\">none minted yet</span>".to_owned(),
                    },
                    Ok(Err(e)) => format!("<span class=\"bad\">{}</span>", esc(&e.to_string())),
                    Err(_) => "<span class=\"warn\">looking the installation up</span>".to_owned(),
                }
            }
            RouteCredential::User(_) => "<span class=\"muted\">see Users</span>".to_owned(),
        };
        let _ = write!(
            out,
            "<tr><td><b>{}</b></td><td><code>{}</code></td><td>{}</td><td>{token}</td></tr>",
            esc(&route.name),
            esc(&route.prefix),
            esc(&credential_text(route, several_apps)),
        );
    }
    if snap.config.routes.iter().next().is_none() {
        out.push_str("<tr><td colspan=\"4\" class=\"muted\">no routes</td></tr>");
    }
    out.push_str("</table></section>");
}

/// The route's credential, with its app when there are several and its
/// token scope when it has one.
fn credential_text(route: &crate::routes::Route, several_apps: bool) -> String {
    let mut text = route.credential.to_string();
    if several_apps {
        text.push_str(&format!(" (app {})", route.app));
    }
    if let Some(scope) = &route.scope {
        text.push_str(&format!(" [{scope}]"));
    }
    text
}

async fn users(out: &mut String, snap: &Snapshot) {
    let mut users: Vec<&str> = Vec::new();
    for route in snap.config.routes.iter() {
        if let RouteCredential::User(u) = &route.credential
            && !users.contains(&&**u)
        {
            users.push(u);
        }
    }
    if users.is_empty() {
        return;
    }
    out.push_str(
        "<section id=\"users\"><h2>Users</h2><table><tr><th>user</th><th>grant</th>\
         <th>access token</th><th>to do</th></tr>",
    );
    let config_file = snap
        .config
        .path
        .as_ref()
        .map_or_else(|| "FILE".to_owned(), |p| p.display().to_string());
    let now_ms = crate::credentials::grants::now_ms();
    for user in users {
        let grant = match &snap.store {
            // Read afresh: another process (`login`, `token`, a replica)
            // may have written it. With the store away, what this process
            // last saw.
            Some(store) => match store.grant(user).await {
                Ok(found) => found.map(|v| v.grant),
                Err(_) => store.cached_grant(user),
            },
            None => None,
        };
        let login = format!(
            "run <code>atomgit-proxy login -c {} {}</code>",
            esc(&config_file),
            esc(user)
        );
        let (state, token, todo) = match grant {
            None => (
                "<span class=\"bad\">missing</span>".to_owned(),
                String::new(),
                login,
            ),
            Some(g) if g.revoked.is_some() => (
                "<span class=\"bad\">revoked</span>".to_owned(),
                String::new(),
                login,
            ),
            Some(g)
                if g.bound_to
                    .as_ref()
                    .is_some_and(|b| *b != *snap.grant_binding) =>
            {
                (
                    "<span class=\"bad\">for another platform or app</span>".to_owned(),
                    String::new(),
                    login,
                )
            }
            Some(g) if g.refresh_expires_at_ms.is_some_and(|r| r <= now_ms) => (
                "<span class=\"bad\">expired</span>".to_owned(),
                String::new(),
                login,
            ),
            Some(g) => {
                let token = if g.access_expires_at_ms > now_ms {
                    format!("valid until {}", esc(&clock_ms(g.access_expires_at_ms)))
                } else {
                    "expired; refreshed on the next request".to_owned()
                };
                let refresh = g
                    .refresh_expires_at_ms
                    .map(|r| format!("; login good until {}", esc(&clock_ms(r))))
                    .unwrap_or_default();
                (
                    format!("<span class=\"ok\">logged in</span>{refresh}"),
                    token,
                    "<span class=\"muted\">nothing</span>".to_owned(),
                )
            }
        };
        let _ = write!(
            out,
            "<tr><td><b>{}</b></td><td>{state}</td><td>{token}</td><td>{todo}</td></tr>",
            esc(user)
        );
    }
    out.push_str("</table></section>");
}

fn quota(out: &mut String, shared: &Shared) {
    // The quota's own record per credential (shared by the fleet with
    // Redis), as `readyz` shows it.
    let budgets = shared.quota.snapshot();
    out.push_str(
        "<section id=\"quota\"><h2>Platform quota</h2><table><tr><th>credential</th>\
         <th>remaining</th><th>used</th><th>resets</th><th>held back</th></tr>",
    );
    for q in &budgets {
        let remaining = match (q.remaining, q.limit) {
            (Some(r), Some(limit)) => format!("{r} of {limit}"),
            (Some(r), None) => r.to_string(),
            (None, _) => "unknown".to_owned(),
        };
        let class = if q.remaining == Some(0) { "bad" } else { "ok" };
        let used = q.used.map(|u| u.to_string()).unwrap_or_default();
        let reset = q
            .reset
            .map(|s| esc(&clock(SystemTime::UNIX_EPOCH + Duration::from_secs(s))))
            .unwrap_or_default();
        let held = match q.blocked_for_secs {
            Some(secs) => format!("<span class=\"bad\">429 for {secs} s</span>"),
            None => "no".to_owned(),
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"{class}\">{remaining}</td><td>{used}</td><td>{reset}</td><td>{held}</td></tr>",
            esc(&q.credential),
        );
    }
    if budgets.is_empty() {
        out.push_str(
            "<tr><td colspan=\"5\" class=\"muted\">no response with x-ratelimit headers yet</td></tr>",
        );
    }
    out.push_str("</table></section>");
}

fn reload(out: &mut String, shared: &Shared) {
    let status = shared
        .reload
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    out.push_str("<section id=\"reload\"><h2>Config reload</h2>");
    match (status.at, &status.last_error) {
        (None, _) => out.push_str("<p class=\"empty\">no reload since the start</p>"),
        (Some(at), None) => {
            let _ = write!(
                out,
                "<p class=\"empty\"><span class=\"ok\">ok</span> at {}</p>",
                esc(&clock(at))
            );
        }
        (Some(at), Some(e)) => {
            let _ = write!(
                out,
                "<p class=\"empty\"><span class=\"bad\">failed</span> at {}; the previous config keeps serving</p>\
                 <pre class=\"error\">{}</pre>",
                esc(&clock(at)),
                esc(e)
            );
        }
    }
    out.push_str("</section>");
}

fn errors(out: &mut String, shared: &Shared) {
    let recent = shared.activity.recent_errors();
    out.push_str("<section id=\"errors\"><h2>Recent upstream errors</h2>");
    if recent.is_empty() {
        out.push_str("<p class=\"empty\">none</p></section>");
        return;
    }
    out.push_str("<table><tr><th>time</th><th>route</th><th>status</th><th>error</th></tr>");
    for e in recent {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"bad\">{}</td><td><code>{}</code></td></tr>",
            esc(&clock(e.at)),
            esc(e.route.as_deref().unwrap_or("-")),
            e.status,
            esc(e.code),
        );
    }
    out.push_str("</table></section>");
}

/// A token's expiry, from the tokio instant it is kept as.
fn expiry(at: tokio::time::Instant) -> String {
    let now = tokio::time::Instant::now();
    let wall = SystemTime::now() + at.saturating_duration_since(now);
    if at <= now {
        return "<span class=\"bad\">expired</span>".to_owned();
    }
    let left = at - now;
    format!(
        "valid until {} <span class=\"muted\">({} min left)</span>",
        esc(&clock(wall)),
        left.as_secs() / 60
    )
}

fn clock(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%Y-%m-%d %H:%M:%S UTC")
        .to_string()
}

fn clock_ms(ms: u64) -> String {
    clock(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

/// HTML-escapes text for element content and quoted attributes. Five
/// replacements: not worth a dependency.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn escaping_leaves_no_markup() {
        assert_eq!(
            esc("<script>\"a\" & 'b'</script>"),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
    }
}
