//! The browser side of a user login: `/_proxy/oauth/login` and
//! `/_proxy/oauth/callback`.
//!
//! `login` accepts only a signed, unexpired, unused link (see
//! `credentials::login_link`), remembers a random `state` for the user the
//! link names, sets it in a short-lived HttpOnly, SameSite=Lax cookie, and
//! sends the browser to the platform. `callback` requires the `state` the
//! platform echoes to match both the cookie and a pending login, exchanges
//! the code, and stores the grant. Every failure shows a page and stores
//! nothing.
//!
//! `HEAD` changes nothing: link scanners and mail clients probe links with
//! it, and a probe must not use up a one-time link or start a login.
//!
//! Anyone can send these endpoints anything, so a caller's mistake (a bad,
//! expired or reused link, a stray callback) logs at debug, and values that
//! come from the request are logged as `&str` fields, which the text log
//! writes quoted and escaped (a `%0A` in a user name cannot forge a line).
//! Warn and error are for what the operator must fix.

use crate::body::Body;
use crate::credentials::Credentials;
use crate::credentials::grants::now_ms;
use crate::credentials::login_link;
use crate::credentials::token_endpoint::{OAuthError, exchange_code};
use crate::state::Snapshot;
use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::{Either, Full};
use std::collections::HashMap;

const COOKIE: &str = "atomgit_proxy_oauth_state";

fn query(req: &http::request::Parts) -> HashMap<String, String> {
    url::form_urlencoded::parse(req.uri.query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

pub async fn login(req: http::request::Parts, snap: &Snapshot) -> Response<Body> {
    let (Some(oauth), Some(store)) = (snap.config.oauth.as_ref(), snap.store.as_ref()) else {
        return page(
            StatusCode::NOT_FOUND,
            "Login is not set up",
            "This proxy has no user routes (no <code>oauth:</code> and <code>store:</code> in its config).",
        );
    };
    let q = query(&req);
    let (Some(user), Some(exp), Some(nonce), Some(sig)) =
        (q.get("user"), q.get("exp"), q.get("nonce"), q.get("sig"))
    else {
        tracing::debug!("login: incomplete link");
        return page(
            StatusCode::BAD_REQUEST,
            "Incomplete login link",
            "Copy the whole link that <code>atomgit-proxy login</code> printed.",
        );
    };
    let key = match store.link_key().await {
        Ok(k) => k,
        Err(e) => {
            tracing::error!("login: cannot read the link key: {e}");
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Login unavailable",
                "The proxy cannot read its link key; see its log.",
            );
        }
    };
    let exp_s: u64 = exp.parse().unwrap_or(0);
    let app_name = q.get("app").map(String::as_str);
    if !login_link::verify_for_app(&key, user, app_name, exp_s, nonce, sig) {
        tracing::debug!(user = user.as_str(), "login: link with a bad signature");
        return page(
            StatusCode::FORBIDDEN,
            "Invalid login link",
            "This link was not issued by this proxy. Ask the operator to run <code>atomgit-proxy login USER</code>.",
        );
    }
    if exp_s <= now_ms() / 1000 {
        tracing::debug!(user = user.as_str(), "login: expired link");
        return page(
            StatusCode::GONE,
            "Login link expired",
            &format!(
                "Links work for 10 minutes. Ask for a new one: <code>atomgit-proxy login {}</code>.",
                esc(user)
            ),
        );
    }
    if req.method == Method::HEAD {
        // A probe: answered without using the link up or starting a login.
        return page(
            StatusCode::OK,
            "Login link",
            "Open this link in a browser to log in.",
        );
    }
    match store.use_link(nonce, exp_s).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!(user = user.as_str(), "login: link used again");
            return page(
                StatusCode::GONE,
                "Login link already used",
                &format!(
                    "Each link works once. Ask for a new one: <code>atomgit-proxy login {}</code>.",
                    esc(user)
                ),
            );
        }
        Err(e) => return store_trouble(&e),
    }
    let Some(app) = login_app(snap, user, app_name) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Unknown app",
            "This link names an app the proxy's config does not have. Ask for a new link.",
        );
    };
    // The app travels in the state (checked against the cookie and the
    // pending logins), so the callback exchanges the code with it.
    let state = format!("{}.{}", hex::encode(rand::random::<[u8; 24]>()), app.name);
    if let Err(e) = store.insert_login(&state, user).await {
        return store_trouble(&e);
    }
    let mut target = oauth.authorize_url.clone();
    target
        .query_pairs_mut()
        .append_pair("client_id", app.client_id.as_deref().unwrap_or_default())
        .append_pair("redirect_uri", oauth.redirect_uri.as_str())
        .append_pair("state", &state)
        .append_pair("response_type", "code");
    let secure = if oauth.redirect_uri.scheme() == "https" {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={state}; Path=/_proxy/oauth/; Max-Age=600; HttpOnly; SameSite=Lax{secure}"
    );
    tracing::info!(
        user = user.as_str(),
        "login: sending the browser to the platform"
    );
    let mut resp = page(StatusCode::FOUND, "Redirecting", "Continuing to AtomGit…");
    if let (Ok(location), Ok(cookie)) = (
        HeaderValue::try_from(target.as_str()),
        HeaderValue::try_from(cookie),
    ) {
        resp.headers_mut().insert(http::header::LOCATION, location);
        resp.headers_mut().insert(http::header::SET_COOKIE, cookie);
    }
    resp
}

pub async fn callback(
    req: http::request::Parts,
    snap: &Snapshot,
    credentials: &Credentials,
) -> Response<Body> {
    let (Some(oauth), Some(store)) = (snap.config.oauth.as_ref(), snap.store.as_ref()) else {
        return page(
            StatusCode::NOT_FOUND,
            "Login is not set up",
            "This proxy has no user routes.",
        );
    };
    if req.method == Method::HEAD {
        // Taking the pending login and spending the code is for the browser.
        return page(
            StatusCode::OK,
            "Login callback",
            "Nothing was done: open this page with GET.",
        );
    }
    let q = query(&req);
    let cookie_state = req
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned());
    if let Some(error) = q.get("error") {
        tracing::debug!(
            error = error.as_str(),
            "login: the callback reports an error from the platform"
        );
        return page(
            StatusCode::BAD_REQUEST,
            "Login not completed",
            &format!(
                "AtomGit answered: <code>{}</code>. Nothing was stored.",
                esc(error)
            ),
        );
    }
    let (Some(state), Some(code)) = (q.get("state"), q.get("code")) else {
        tracing::debug!("login: callback without state or code");
        return page(
            StatusCode::BAD_REQUEST,
            "Login not completed",
            "The callback has no <code>state</code> or <code>code</code>. Nothing was stored.",
        );
    };
    if cookie_state.as_deref() != Some(state.as_str()) {
        tracing::debug!("login: callback state does not match the browser's cookie");
        return page(
            StatusCode::BAD_REQUEST,
            "Login not completed",
            "This browser did not start this login (state mismatch). Nothing was stored; open your login link again in this browser.",
        );
    }
    let taken = match store.take_login(state).await {
        Ok(taken) => taken,
        Err(e) => return store_trouble(&e),
    };
    let Some(user) = taken else {
        tracing::debug!("login: unknown, used or expired state");
        return page(
            StatusCode::BAD_REQUEST,
            "Login not completed",
            "This login was already completed or has expired. Nothing was stored; ask for a new link.",
        );
    };
    let app = state
        .rsplit_once('.')
        .and_then(|(_, name)| snap.config.app_named(name))
        .unwrap_or(&snap.config.app);
    let grant = match exchange_code(&snap.upstream, app, oauth, code).await {
        Ok(g) => g,
        Err(OAuthError::Refused { status, detail }) => {
            tracing::warn!(
                user = user.as_str(),
                status,
                detail = detail.as_str(),
                "login: the platform refused the code"
            );
            return page(
                StatusCode::BAD_REQUEST,
                "Login not completed",
                "AtomGit refused the authorization code (used or expired). Nothing was stored; ask for a new link.",
            );
        }
        Err(OAuthError::Failed(msg)) => {
            tracing::warn!(
                user = user.as_str(),
                error = msg.as_str(),
                "login: code exchange failed"
            );
            return page(
                StatusCode::BAD_GATEWAY,
                "Login not completed",
                "AtomGit's token endpoint could not be reached or failed. Nothing was stored; try a new link later.",
            );
        }
    };
    let durable = store.put_grant(&user, grant, None).await;
    credentials.forget_user(&user);
    let mut body = format!(
        "atomgit-proxy now acts as <strong>{}</strong> on its user routes. You can close this page.",
        esc(&user)
    );
    if let Err(e) = durable {
        tracing::error!(
            user = user.as_str(),
            "login: {e}; the grant is kept in memory only"
        );
        body.push_str("<p class=warn>The proxy could not save the grant to its store; it is kept in memory and saved when the store answers again. See the proxy's log.</p>");
    }
    tracing::info!(user = user.as_str(), "login: grant stored");
    let mut resp = page(StatusCode::OK, &format!("Logged in as {user}"), &body);
    let clear = format!("{COOKIE}=; Path=/_proxy/oauth/; Max-Age=0; HttpOnly; SameSite=Lax");
    if let Ok(v) = HeaderValue::try_from(clear) {
        resp.headers_mut().insert(http::header::SET_COOKIE, v);
    }
    resp
}

/// The store could not record the login: nothing was started or stored.
fn store_trouble(e: &crate::store::StoreError) -> Response<Body> {
    tracing::error!("login: {e}");
    let (status, what) = match e {
        crate::store::StoreError::Unavailable(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "The proxy's shared store is unreachable; try again in a moment.",
        ),
        crate::store::StoreError::File(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "The proxy cannot write its grant store; see its log.",
        ),
    };
    page(status, "Login unavailable", what)
}

/// The app a login is for: the link's, else the app of the first route
/// acting as `user`, else the config's first.
fn login_app<'a>(
    snap: &'a Snapshot,
    user: &str,
    named: Option<&str>,
) -> Option<&'a std::sync::Arc<crate::config::AppConfig>> {
    use crate::routes::RouteCredential;
    if let Some(name) = named {
        return snap.config.app_named(name);
    }
    let route = snap
        .config
        .routes
        .iter()
        .find(|r| matches!(&r.credential, RouteCredential::User(u) if &**u == user));
    Some(route.map_or(&snap.config.app, |r| snap.config.app_of(r)))
}

/// Escapes text for HTML.
fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A small, self-contained page: a person reads it.
fn page(status: StatusCode, title: &str, body_html: &str) -> Response<Body> {
    let ok = status.is_success();
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · atomgit-proxy</title>
<style>
body{{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;background:#f4f5f7;color:#1f2328;display:flex;min-height:100vh;align-items:center;justify-content:center}}
main{{background:#fff;border-radius:12px;box-shadow:0 2px 12px rgba(0,0,0,.08);padding:2rem 2.5rem;max-width:34rem;border-top:6px solid {accent}}}
h1{{font-size:1.4rem;margin:0 0 .75rem}} code{{background:#eef0f3;padding:.1em .35em;border-radius:4px}}
.warn{{color:#9a6700}} footer{{margin-top:1.5rem;color:#656d76;font-size:.85rem}}
</style></head>
<body><main><h1 id="title">{title}</h1><div id="message">{body_html}</div><footer>atomgit-proxy</footer></main></body></html>
"#,
        title = esc(title),
        accent = if ok { "#1f883d" } else { "#cf222e" },
    );
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(html))));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    resp
}
