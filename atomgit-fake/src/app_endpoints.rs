//! The app-identity endpoints: app JWT verification, `GET /app/installations`
//! and `POST /app/installations/{id}/access_tokens` (which mints `ats_` tokens).

use http::header::AUTHORIZATION;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Value, json};

use super::TokenOwner;
use super::respond::{self, Resp};
use super::state::{FakeState, to_platform_time, wall_after};

/// How far ahead of the fake's clock an `exp` may be: the platform family's
/// ten minutes plus a little slack for the caller's clock and the round trip.
const MAX_EXP_AHEAD_SECS: i64 = 600 + 30;

/// How far ahead of the fake's clock an `iat` may be.
const IAT_SLACK_SECS: i64 = 30;

/// Routes everything under `/app/`.
pub(super) async fn handle(shared: &FakeState, req: Request<Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    let (method, path, headers) = (&parts.method, parts.uri.path(), &parts.headers);
    if path == "/app/installations" {
        if method != Method::GET {
            return respond::message(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        }
        // Counted whether or not the JWT is good: tests use this to see how
        // often the proxy asks at all.
        shared.lock().installation_lists += 1;
        if let Err(why) = check_jwt(shared, headers) {
            return respond::message(StatusCode::UNAUTHORIZED, &why);
        }
        return list_installations(shared);
    }
    let id = path
        .strip_prefix("/app/installations/")
        .and_then(|rest| rest.strip_suffix("/access_tokens"))
        .and_then(|id| id.parse::<u64>().ok());
    match id {
        Some(id) if method == Method::POST => {
            // Small JSON; bounded so a bad caller cannot grow the fake.
            let body = Limited::new(body, 64 * 1024).collect().await;
            let delay = shared.lock().mint_delay;
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            match body {
                Ok(body) => mint(shared, id, headers, &body.to_bytes()),
                Err(_) => respond::message(StatusCode::BAD_REQUEST, "unreadable body"),
            }
        }
        Some(_) => respond::message(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"),
        None => respond::message(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// Verifies the app JWT the way the platform does; the error text is safe to
/// return (it never contains the token).
/// Answers the id of the app whose key signed it.
fn check_jwt(shared: &FakeState, headers: &HeaderMap) -> Result<u64, String> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (Some(v), None) => v,
        (None, _) => return Err("A JSON web token could not be decoded".into()),
        (Some(_), Some(_)) => return Err("multiple authorization headers".into()),
    };
    let jwt = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or("expected 'Authorization: Bearer <JWT>'")?;
    let keys: Vec<(u64, &jsonwebtoken::DecodingKey)> = shared
        .key
        .iter()
        .map(|k| (shared.app_id, k))
        .chain(shared.extra_keys.iter().map(|(id, k)| (*id, k)))
        .collect();
    if keys.is_empty() {
        return Err("the fake has no app public key configured".into());
    }

    // Only the signature is left to jsonwebtoken; the claim rules are the
    // platform's and are checked below so the messages say what was wrong.
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    // The app is the one whose key verifies the signature.
    let mut decoded = Err(String::new());
    for (id, key) in keys {
        match jsonwebtoken::decode::<Value>(jwt.trim(), key, &validation) {
            Ok(data) => {
                decoded = Ok((id, data.claims));
                break;
            }
            Err(e) => decoded = Err(format!("A JSON web token could not be decoded: {e}")),
        }
    }
    let (app_id, claims) = decoded?;

    let iss_ok = match claims.get("iss") {
        Some(Value::String(s)) => s.trim() == app_id.to_string(),
        Some(Value::Number(n)) => n.as_u64() == Some(app_id),
        _ => false,
    };
    if !iss_ok {
        return Err(format!("'iss' must be the app id {app_id}"));
    }
    if !claims.get("iat").is_some_and(Value::is_number) {
        return Err("'iat' claim is missing".into());
    }
    let exp = claims
        .get("exp")
        .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
        .ok_or("'exp' claim is missing")?;
    let now = shared.now().timestamp();
    let iat = claims.get("iat").and_then(Value::as_i64).unwrap_or(0);
    if iat > now + IAT_SLACK_SECS {
        return Err("'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued".into());
    }
    if exp <= now {
        return Err("'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires".into());
    }
    if exp > now + MAX_EXP_AHEAD_SECS {
        return Err("'Expiration time' claim ('exp') is too far in the future".into());
    }
    Ok(app_id)
}

fn permissions() -> Value {
    json!({
        "emails": "write",
        "checks": "write",
        "contents": "write",
        "keys": "write",
        "statuses": "write"
    })
}

fn list_installations(shared: &FakeState) -> Resp {
    let installations = shared.lock().installations.clone();
    let list: Vec<Value> = installations
        .iter()
        .enumerate()
        .map(|(idx, inst)| {
            // A stable 24-hex-digit id in the platform's style.
            let org_id = format!("{:024x}", 0x62c3_ea55_0000_0000_u64 + inst.id);
            // The platform's sample shows `events` holding fragments of a
            // JSON object; the first installation carries that quirk.
            let events = if idx == 0 {
                json!(["{\"code\":\"push\"", "\"desc\":\"push event\"}"])
            } else {
                json!(["push"])
            };
            json!({
                "access_tokens_url": format!("{}/app/installations/{}/access_tokens", shared.base_url, inst.id),
                "account": {
                    "id": 10_000 + inst.id,
                    "org_name": inst.account,
                    "organization_id": org_id,
                    "path": inst.account,
                },
                "app_id": shared.app_id,
                "app_slug": "atomgit-proxy-fake",
                "created_at": shared.created_at,
                "events": events,
                "id": inst.id,
                "permissions": permissions(),
                "repository_selection": "ALL",
                "target_id": org_id,
                "updated_at": shared.created_at,
            })
        })
        .collect();
    respond::json(StatusCode::OK, &Value::Array(list))
}

fn mint(shared: &FakeState, id: u64, headers: &HeaderMap, body: &[u8]) -> Resp {
    let app_id = match check_jwt(shared, headers) {
        Ok(app_id) => app_id,
        Err(why) => return respond::message(StatusCode::UNAUTHORIZED, &why),
    };
    let asked: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) => return respond::message(StatusCode::BAD_REQUEST, "Problems parsing JSON"),
        }
    };
    let mut inner = shared.lock();
    inner.mint_bodies.push(asked.clone());
    if let Some(code) = inner.failure {
        return respond::text(
            respond::status_or_500(code),
            "injected failure of the token endpoint",
        );
    }
    let Some(account) = inner.account_of(id).map(str::to_owned) else {
        return respond::message(StatusCode::NOT_FOUND, "Not Found");
    };
    let lifetime = inner.token_lifetime;
    let token = inner.issue_token("ats_", TokenOwner::Installation(id), lifetime);
    *inner.mints.entry(id).or_default() += 1;
    // GitHub-App semantics: the token gets what was asked, within what the
    // app has; unless the fake is told to ignore the scope.
    let scoped = !inner.ignore_scope;
    let repositories = asked
        .get("repositories")
        .and_then(Value::as_array)
        .filter(|_| scoped)
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .map(str::to_lowercase)
                .collect::<Vec<_>>()
        });
    let granted = match asked.get("permissions").and_then(Value::as_object) {
        Some(p) if scoped => Value::Object(
            p.iter()
                .filter(|(k, _)| permissions().get(k.as_str()).is_some())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        _ => permissions(),
    };
    if let Some(rec) = inner.tokens.get_mut(&token) {
        rec.repositories = repositories.clone();
        rec.app = Some(app_id);
    }
    drop(inner);
    let mut answer = json!({
        "expires_at": to_platform_time(shared.now() + (wall_after(lifetime) - chrono::Utc::now()), true),
        "permissions": granted,
        "repository_selection": "ALL",
        "token": token,
    });
    if let Some(repos) = repositories {
        answer["repository_selection"] = json!("selected");
        answer["repositories"] = Value::Array(
            repos
                .iter()
                .map(|r| json!({ "name": r, "full_name": format!("{account}/{r}") }))
                .collect(),
        );
    }
    respond::json(StatusCode::OK, &answer)
}
