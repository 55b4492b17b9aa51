//! The OAuth token endpoint: exchanging a code, refreshing a grant.
//!
//! The platform's quirk: `expires_in` and `refresh_token_expires_in` are
//! absolute epoch *milliseconds*, not a duration. The classic OAuth meaning
//! (seconds from now) must still work, so the magnitude decides (see
//! [`expiry_ms`]). The answer may be JSON or form-encoded.
//!
//! Every grant made here is stamped with the platform it came from (the
//! upstream and OAuth client of the call), so it is never used elsewhere.

use super::grants::{Grant, GrantBinding, now_ms};
use crate::config::{AppConfig, OAuthEndpoints};
use crate::upstream::Upstream;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::Value;
use std::collections::HashMap;

/// The documented lifetime of a user token, for an answer that omits it.
const DEFAULT_ACCESS_LIFETIME_MS: u64 = 8 * 3600 * 1000;

/// How a token-endpoint call failed.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The platform refused the code or refresh token: only a new login helps.
    #[error("the platform refused the grant ({status}): {detail}")]
    Refused { status: u16, detail: String },
    /// Anything that may pass: network, timeouts, 5xx, 429, a refused client secret.
    #[error("{0}")]
    Failed(String),
}

/// Reads an expiry: 10^11 and up is epoch milliseconds, 10^9 up to that is
/// epoch seconds, anything smaller is seconds from `now_ms`.
pub fn expiry_ms(value: u64, now_ms: u64) -> u64 {
    const EPOCH_MS_FLOOR: u64 = 100_000_000_000;
    const EPOCH_S_FLOOR: u64 = 1_000_000_000;
    if value >= EPOCH_MS_FLOOR {
        value
    } else if value >= EPOCH_S_FLOOR {
        value.saturating_mul(1000)
    } else {
        now_ms.saturating_add(value.saturating_mul(1000))
    }
}

/// Exchanges an authorization code.
pub async fn exchange_code(
    upstream: &Upstream,
    app: &AppConfig,
    oauth: &OAuthEndpoints,
    code: &str,
) -> Result<Grant, OAuthError> {
    let body = serde_json::json!({
        "client_id": app.client_id,
        "client_secret": app.client_secret.as_ref().map(|s| s.expose()),
        "code": code,
        "grant_type": "authorization_code",
        "redirect_uri": oauth.redirect_uri.as_str(),
    });
    call(upstream, app, oauth, body, None).await
}

/// Refreshes a grant. A refresh token the answer leaves out stays the same.
pub async fn refresh(
    upstream: &Upstream,
    app: &AppConfig,
    oauth: &OAuthEndpoints,
    grant: &Grant,
) -> Result<Grant, OAuthError> {
    let body = serde_json::json!({
        "client_id": app.client_id,
        "client_secret": app.client_secret.as_ref().map(|s| s.expose()),
        "grant_type": "refresh_token",
        "refresh_token": grant.refresh_token,
    });
    call(upstream, app, oauth, body, Some(grant)).await
}

async fn call(
    upstream: &Upstream,
    app: &AppConfig,
    oauth: &OAuthEndpoints,
    body: Value,
    previous: Option<&Grant>,
) -> Result<Grant, OAuthError> {
    let req = http::Request::builder()
        .method(http::Method::POST)
        .uri(oauth.token_url.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, crate::USER_AGENT)
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| OAuthError::Failed(format!("cannot build the token request: {e}")))?;
    let resp = upstream
        .call(req)
        .await
        .map_err(|e| OAuthError::Failed(format!("token endpoint: {e}")))?;
    let fields = parse_fields(&resp.headers, &resp.body);
    let status = resp.status.as_u16();
    if !resp.status.is_success() {
        // The platform's own error code, never its whole body: it could echo
        // what we sent.
        let detail = fields
            .get("error")
            .map(|e| match fields.get("error_description") {
                Some(d) => format!("{e}: {d}"),
                None => e.clone(),
            })
            .unwrap_or_else(|| resp.status.canonical_reason().unwrap_or("error").to_owned());
        let transient = resp.status.is_server_error()
            || matches!(status, 401 | 408 | 429)
            || resp.status.is_informational()
            || resp.status.is_redirection();
        return Err(if transient {
            let hint = if status == 401 {
                " (check app.client_id and app.client_secret)"
            } else {
                ""
            };
            OAuthError::Failed(format!("token endpoint answered {status}: {detail}{hint}"))
        } else {
            OAuthError::Refused { status, detail }
        });
    }
    grant_from(&fields, previous, GrantBinding::of(app, &upstream.config))
}

/// The answer's fields, from JSON or a form-encoded body.
fn parse_fields(headers: &http::HeaderMap, body: &[u8]) -> HashMap<String, String> {
    let is_json = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"))
        || body.trim_ascii_start().starts_with(b"{");
    if is_json {
        let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
            return HashMap::new();
        };
        map.into_iter()
            .filter_map(|(k, v)| match v {
                Value::String(s) => Some((k, s)),
                Value::Number(n) => Some((k, n.to_string())),
                _ => None,
            })
            .collect()
    } else {
        url::form_urlencoded::parse(body).into_owned().collect()
    }
}

fn grant_from(
    fields: &HashMap<String, String>,
    previous: Option<&Grant>,
    bound_to: GrantBinding,
) -> Result<Grant, OAuthError> {
    let now = now_ms();
    let number = |name: &str| -> Result<Option<u64>, OAuthError> {
        fields
            .get(name)
            .map(|v| {
                v.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite() && *n >= 0.0)
                    .map(|n| n as u64)
                    .ok_or_else(|| {
                        OAuthError::Failed(format!("token endpoint: `{name}` is not a number"))
                    })
            })
            .transpose()
    };
    let access_token = fields
        .get("access_token")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| OAuthError::Failed("token endpoint: the answer has no access_token".into()))?
        .clone();
    let refresh_token = match (
        fields.get("refresh_token").filter(|t| !t.is_empty()),
        previous,
    ) {
        (Some(t), _) => t.clone(),
        (None, Some(prev)) => prev.refresh_token.clone(),
        (None, None) => {
            return Err(OAuthError::Failed(
                "token endpoint: the answer has no refresh_token".into(),
            ));
        }
    };
    let access_expires_at_ms =
        number("expires_in")?.map_or(now + DEFAULT_ACCESS_LIFETIME_MS, |v| expiry_ms(v, now));
    let refresh_expires_at_ms = match number("refresh_token_expires_in")? {
        Some(v) => Some(expiry_ms(v, now)),
        None => previous.and_then(|p| p.refresh_expires_at_ms),
    };
    Ok(Grant {
        access_token,
        access_expires_at_ms,
        refresh_token,
        refresh_expires_at_ms,
        revoked: None,
        updated_at_ms: now,
        bound_to: Some(bound_to),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_684_137_356_606; // 2023-05-15 07:55:56 UTC

    fn binding() -> GrantBinding {
        GrantBinding {
            upstream: "https://api.atomgit.com".into(),
            app_id: 75,
            client_id: Some("c1".into()),
        }
    }

    #[test]
    fn expires_in_reads_by_magnitude() {
        // The platform's sample: epoch milliseconds, eight hours after issue.
        assert_eq!(expiry_ms(1_684_166_156_606, NOW), 1_684_166_156_606);
        // Epoch seconds.
        assert_eq!(expiry_ms(1_684_166_156, NOW), 1_684_166_156_000);
        // Classic OAuth: seconds from now.
        assert_eq!(expiry_ms(28_800, NOW), NOW + 28_800_000);
        assert_eq!(expiry_ms(999_999_999, NOW), NOW + 999_999_999_000);
        assert_eq!(expiry_ms(100_000_000_000, NOW), 100_000_000_000);
    }

    #[test]
    fn json_and_form_answers_both_parse() {
        let mut json = http::HeaderMap::new();
        json.insert(
            http::header::CONTENT_TYPE,
            "application/json".parse().unwrap(),
        );
        let f = parse_fields(&json, br#"{"access_token":"atu_1","expires_in":1684166156606,"refresh_token":"refresh_1","refresh_token_expires_in":1700034956606}"#);
        let g = grant_from(&f, None, binding()).unwrap();
        assert_eq!(g.bound_to, Some(binding()));
        assert_eq!(
            (g.access_token.as_str(), g.access_expires_at_ms),
            ("atu_1", 1_684_166_156_606)
        );
        assert_eq!(g.refresh_expires_at_ms, Some(1_700_034_956_606));

        let f = parse_fields(
            &http::HeaderMap::new(),
            b"access_token=atu_2&expires_in=28800&token_type=bearer",
        );
        let prev = Grant {
            refresh_token: "refresh_old".into(),
            ..g
        };
        let g = grant_from(&f, Some(&prev), binding()).unwrap();
        assert_eq!(g.refresh_token, "refresh_old");
        let lifetime = g.access_expires_at_ms - g.updated_at_ms;
        assert_eq!(lifetime, 28_800_000);
    }

    #[test]
    fn an_answer_without_a_token_is_an_error() {
        assert!(grant_from(&HashMap::new(), None, binding()).is_err());
    }
}
