//! Local callers: who is calling, proven by a key.
//!
//! Keys arrive as `Authorization: Bearer KEY`, `Authorization: token KEY`, or
//! Basic auth with the key as the password, because git-style and legacy
//! tools can often send only a token or only a password.

use crate::config::ClientConfig;
use crate::error::ProxyError;
use base64::Engine;
use http::HeaderMap;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The caller's name, `None` when no clients are configured.
pub fn identify(
    headers: &HeaderMap,
    clients: &[ClientConfig],
) -> Result<Option<Arc<str>>, ProxyError> {
    if clients.is_empty() {
        return Ok(None);
    }
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(presented_key)
        .ok_or(ProxyError::UnauthorizedClient)?;
    // Compare digests so every comparison has the same length, and look at
    // every client so the time taken does not say which (if any) matched.
    let want: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let mut found = None;
    for client in clients {
        if bool::from(client.key_digest.ct_eq(&want)) {
            found = Some(client.name.clone());
        }
    }
    found.map(Some).ok_or(ProxyError::UnauthorizedClient)
}

/// The key in an `Authorization` value, in any of the accepted forms:
/// borrowed from the header, except a Basic password, which must be decoded.
fn presented_key(value: &str) -> Option<Cow<'_, str>> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token") {
        return (!rest.is_empty()).then_some(Cow::Borrowed(rest));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_, password) = text.split_once(':')?;
        return (!password.is_empty()).then(|| Cow::Owned(password.to_owned()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn clients() -> Vec<ClientConfig> {
        vec![
            ClientConfig::new("ci", &Secret::new("ci-key-0123456789abcdef")),
            ClientConfig::new("ops", &Secret::new("ops-key-0123456789abcdef")),
        ]
    }

    fn with_auth(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn every_key_form_is_accepted() {
        let basic = base64::engine::general_purpose::STANDARD
            .encode("x-access-token:ops-key-0123456789abcdef");
        for (header, who) in [
            ("Bearer ci-key-0123456789abcdef", "ci"),
            ("token ci-key-0123456789abcdef", "ci"),
            (&format!("Basic {basic}") as &str, "ops"),
        ] {
            assert_eq!(
                identify(&with_auth(header), &clients()).unwrap().as_deref(),
                Some(who)
            );
        }
    }

    #[test]
    fn missing_or_wrong_keys_are_refused() {
        assert!(matches!(
            identify(&HeaderMap::new(), &clients()),
            Err(ProxyError::UnauthorizedClient)
        ));
        assert!(matches!(
            identify(&with_auth("Bearer nope"), &clients()),
            Err(ProxyError::UnauthorizedClient)
        ));
        assert!(matches!(
            identify(&with_auth("Digest x"), &clients()),
            Err(ProxyError::UnauthorizedClient)
        ));
        assert_eq!(identify(&HeaderMap::new(), &[]).unwrap(), None);
    }
}
