//! The user-authorization endpoints: the browser-facing authorize page (whose
//! one user approves at once) and `POST /login/oauth/access_token` for
//! `authorization_code` and `refresh_token` grants, in JSON or form encoding.

use std::collections::HashMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::TokenOwner;
use super::respond::{self, Resp};
use super::state::{
    CODE_LIFETIME, CodeRecord, FakeState, Inner, RefreshRecord, expires_value, instant_after,
    random_hex, wall_after,
};

/// Token requests are a handful of short fields; anything bigger is abuse.
const MAX_TOKEN_BODY: usize = 64 * 1024;

/// `GET /login/oauth/authorize`: approve at once and bounce back with a code.
pub(super) fn authorize(shared: &FakeState, method: &Method, query: Option<&str>) -> Resp {
    if method != Method::GET {
        return respond::html(StatusCode::METHOD_NOT_ALLOWED, page("Method not allowed"));
    }
    let params: HashMap<String, String> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    if params.get("client_id") != Some(&shared.oauth.client_id) {
        return respond::html(StatusCode::BAD_REQUEST, page("Unknown client_id"));
    }
    let Some(redirect_uri) = params.get("redirect_uri").filter(|s| !s.is_empty()) else {
        return respond::html(StatusCode::BAD_REQUEST, page("Missing redirect_uri"));
    };
    if params
        .get("response_type")
        .is_some_and(|t| t.as_str() != "code")
    {
        return respond::html(StatusCode::BAD_REQUEST, page("Unsupported response_type"));
    }
    let Ok(mut target) = url::Url::parse(redirect_uri) else {
        return respond::html(StatusCode::BAD_REQUEST, page("Invalid redirect_uri"));
    };

    let code = random_hex(10);
    shared.lock().codes.insert(
        code.clone(),
        CodeRecord {
            client_id: shared.oauth.client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            user: shared.oauth.user.clone(),
            expires: instant_after(CODE_LIFETIME),
        },
    );
    {
        // Appends to any query the redirect URI already has; the serializer
        // percent-encodes `state` so the client decodes it byte-exact.
        let mut pairs = target.query_pairs_mut();
        pairs.append_pair("code", &code);
        if let Some(state) = params.get("state") {
            pairs.append_pair("state", state);
        }
    }
    respond::redirect(target.as_str())
}

fn page(msg: &str) -> String {
    format!(
        "<!doctype html><html><head><title>AtomGit (fake)</title></head>\
         <body><h1>Authorization failed</h1><p>{msg}</p></body></html>"
    )
}

/// `POST /login/oauth/access_token`.
pub(super) async fn access_token(shared: &FakeState, req: Request<Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    let want_json = accepts_json(&parts.headers);
    if parts.method != Method::POST {
        return error(
            want_json,
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "use POST",
        );
    }
    // Read the (small) body first so the connection stays reusable even when
    // the answer is an injected failure.
    let bytes = match Limited::new(body, MAX_TOKEN_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return error(
                want_json,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "unreadable or oversized body",
            );
        }
    };
    let delay = shared.lock().oauth_delay;
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    if let Some(code) = shared.lock().failure {
        return respond::text(
            respond::status_or_500(code),
            "injected failure of the token endpoint",
        );
    }
    let fields = match parse_fields(&parts.headers, parts.uri.query(), &bytes) {
        Ok(f) => f,
        Err(why) => return error(want_json, StatusCode::BAD_REQUEST, "invalid_request", why),
    };
    let oauth = &shared.oauth;
    if fields.get("client_id") != Some(&oauth.client_id)
        || fields.get("client_secret") != Some(&oauth.client_secret)
    {
        return error(
            want_json,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "The client_id and/or client_secret passed are incorrect.",
        );
    }
    match fields.get("grant_type").map(String::as_str) {
        Some("refresh_token") => refresh(shared, &fields, want_json),
        None | Some("authorization_code") => exchange(shared, &fields, want_json),
        Some(_) => error(
            want_json,
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be authorization_code or refresh_token",
        ),
    }
}

fn exchange(shared: &FakeState, fields: &HashMap<String, String>, want_json: bool) -> Resp {
    let Some(code) = fields.get("code") else {
        return error(
            want_json,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "code is required",
        );
    };
    let mut inner = shared.lock();
    // Removed on every attempt: a code is good for exactly one try.
    let Some(rec) = inner.codes.remove(code) else {
        return bad_grant(want_json, "The code passed is incorrect or expired.");
    };
    if Instant::now() >= rec.expires {
        return bad_grant(want_json, "The code passed is incorrect or expired.");
    }
    if fields.get("client_id") != Some(&rec.client_id) {
        return bad_grant(want_json, "The code was issued to another client.");
    }
    if fields
        .get("redirect_uri")
        .is_some_and(|r| *r != rec.redirect_uri)
    {
        return bad_grant(
            want_json,
            "The redirect_uri does not match the one the code was issued for.",
        );
    }
    inner.code_exchanges += 1;
    let grant = issue(&mut inner, shared, &rec.user, None);
    drop(inner);
    grant_response(shared, want_json, &grant)
}

fn refresh(shared: &FakeState, fields: &HashMap<String, String>, want_json: bool) -> Resp {
    let mut inner = shared.lock();
    let Some(old) = fields.get("refresh_token") else {
        inner.refused_refreshes += 1;
        return error(
            want_json,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "refresh_token is required",
        );
    };
    let live = inner
        .refresh
        .get(old)
        .filter(|r| Instant::now() < r.expires)
        .map(|r| (r.user.clone(), r.expires_wall));
    let Some((user, old_wall)) = live else {
        inner.refresh.remove(old);
        inner.refused_refreshes += 1;
        return bad_grant(
            want_json,
            "The refresh token is invalid, expired or revoked.",
        );
    };
    let keep = if shared.oauth.rotate_refresh_tokens {
        inner.refresh.remove(old);
        None
    } else {
        Some((old.clone(), old_wall))
    };
    inner.refreshes += 1;
    let grant = issue(&mut inner, shared, &user, keep);
    drop(inner);
    grant_response(shared, want_json, &grant)
}

struct Grant {
    access: String,
    access_until: DateTime<Utc>,
    refresh: String,
    refresh_until: DateTime<Utc>,
}

/// Issues an `atu_` token and either keeps the given refresh token or issues
/// a new one.
fn issue(
    inner: &mut Inner,
    shared: &FakeState,
    user: &str,
    keep: Option<(String, DateTime<Utc>)>,
) -> Grant {
    let lifetime = inner.access_lifetime;
    let access = inner.issue_token("atu_", TokenOwner::User(user.to_owned()), lifetime);
    let access_until = wall_after(lifetime);
    let (refresh, refresh_until) = keep.unwrap_or_else(|| {
        let token = format!("refresh_{}", random_hex(16));
        let lifetime = shared.oauth.refresh_lifetime;
        let until = wall_after(lifetime);
        inner.refresh.insert(
            token.clone(),
            RefreshRecord {
                user: user.to_owned(),
                expires: instant_after(lifetime),
                expires_wall: until,
            },
        );
        (token, until)
    });
    Grant {
        access,
        access_until,
        refresh,
        refresh_until,
    }
}

fn grant_response(shared: &FakeState, want_json: bool, g: &Grant) -> Resp {
    let format = shared.oauth.expires_format;
    let expires_in = expires_value(format, g.access_until);
    let refresh_expires_in = expires_value(format, g.refresh_until);
    if want_json {
        respond::json(
            StatusCode::OK,
            &json!({
                "access_token": g.access,
                "expires_in": expires_in,
                "refresh_token": g.refresh,
                "refresh_token_expires_in": refresh_expires_in,
            }),
        )
    } else {
        respond::form(
            StatusCode::OK,
            &[
                ("access_token", g.access.clone()),
                ("expires_in", expires_in.to_string()),
                ("refresh_token", g.refresh.clone()),
                ("refresh_token_expires_in", refresh_expires_in.to_string()),
            ],
        )
    }
}

fn bad_grant(want_json: bool, description: &str) -> Resp {
    error(
        want_json,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        description,
    )
}

/// OAuth error in the encoding the client asked for.
fn error(want_json: bool, status: StatusCode, code: &str, description: &str) -> Resp {
    if want_json {
        respond::json(
            status,
            &json!({ "error": code, "error_description": description }),
        )
    } else {
        respond::form(
            status,
            &[
                ("error", code.to_owned()),
                ("error_description", description.to_owned()),
            ],
        )
    }
}

fn accepts_json(headers: &HeaderMap) -> bool {
    headers.get_all(ACCEPT).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.to_ascii_lowercase().contains("application/json"))
    })
}

/// Reads the request's fields from the query string and the body (JSON or
/// form-encoded; the body wins). Non-string JSON scalars are stringified.
fn parse_fields(
    headers: &HeaderMap,
    query: Option<&str>,
    body: &Bytes,
) -> Result<HashMap<String, String>, &'static str> {
    let mut fields: HashMap<String, String> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let is_json = if content_type.is_empty() {
        body.trim_ascii_start().starts_with(b"{")
    } else {
        content_type.contains("json")
    };
    if is_json {
        let value: Value = serde_json::from_slice(body).map_err(|_| "body is not valid JSON")?;
        let Value::Object(map) = value else {
            return Err("body must be a JSON object");
        };
        for (k, v) in map {
            let s = match v {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => continue,
            };
            fields.insert(k, s);
        }
    } else {
        fields.extend(url::form_urlencoded::parse(body).into_owned());
    }
    Ok(fields)
}
