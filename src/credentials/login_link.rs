//! One-time login links: only the operator can start a user login.
//!
//! `atomgit-proxy login USER` signs (HMAC-SHA256) a link naming the user, an
//! expiry and a random nonce with a key kept beside the grant store
//! ([`link_key_path`]; created on first use, mode 0600), or for a fleet one
//! derived from `store.encryption_key` (see `store::crypto`), so every
//! replica verifies it. The proxy checks the signature and expiry and
//! records the nonce as used in the store, so a link works once, even across
//! a restart and in the whole fleet. Without a link nobody can bind a token to a user name.

use crate::config::link_key_path;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;
use url::Url;

/// How long a printed link stays valid.
pub const LINK_LIFETIME: Duration = Duration::from_secs(600);

type HmacSha256 = Hmac<Sha256>;

/// Reads the link key, creating it on first use. Creation is exclusive, so
/// two processes racing to create it agree on one key.
pub fn load_or_create_key(store: &Path) -> std::io::Result<Vec<u8>> {
    let path = link_key_path(store);
    match std::fs::read_to_string(&path) {
        Ok(text) => return hex::decode(text.trim()).map_err(std::io::Error::other),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let key: [u8; 32] = rand::random();
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut file) => {
            file.write_all(hex::encode(key).as_bytes())?;
            file.sync_all()?;
            Ok(key.to_vec())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(&path)?;
            hex::decode(text.trim()).map_err(std::io::Error::other)
        }
        Err(e) => Err(e),
    }
}

fn mac(key: &[u8], user: &str, app: Option<&str>, exp: u64, nonce: &str) -> HmacSha256 {
    // HMAC takes keys of any length.
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(format!("atomgit-proxy login\n{user}\n{exp}\n{nonce}").as_bytes());
    // Only links naming an app sign one, so links without stay as they were.
    if let Some(app) = app {
        mac.update(format!("\napp={app}").as_bytes());
    }
    mac
}

/// A one-time login link for `user`: the login endpoint beside the OAuth
/// `redirect_uri` (so on the proxy's address, behind whatever prefix a reverse
/// proxy in front adds), signed with the key beside `store`, valid for
/// [`LINK_LIFETIME`]. Both `atomgit-proxy login` and the `dev` demo print it.
pub fn link_for(redirect_uri: &Url, store: &Path, user: &str) -> std::io::Result<String> {
    let key = load_or_create_key(store).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "reading or creating the link key beside {}: {e}",
                store.display()
            ),
        )
    })?;
    Ok(link_with_key(redirect_uri, &key, user, None))
}

/// A login link signed with `key` (for a fleet: derived from the store's
/// `encryption_key`, see `store::link_key_for`), for a login with the app
/// named `app` (under `apps:`; signed too) or the config's only one.
pub fn link_with_key(redirect_uri: &Url, key: &[u8], user: &str, app: Option<&str>) -> String {
    let exp = super::grants::now_ms() / 1000 + LINK_LIFETIME.as_secs();
    let mut link = redirect_uri.clone();
    let path = link.path().trim_end_matches("/callback").to_owned();
    link.set_path(&format!("{path}/login"));
    link.set_query(Some(&sign_for_app(key, user, app, exp)));
    link.to_string()
}

/// The query string of a login link for `user`, expiring at `exp` (epoch s).
pub fn sign(key: &[u8], user: &str, exp: u64) -> String {
    sign_for_app(key, user, None, exp)
}

/// [`sign`], with the app the login is for (signed too).
pub fn sign_for_app(key: &[u8], user: &str, app: Option<&str>, exp: u64) -> String {
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let sig = hex::encode(mac(key, user, app, exp, &nonce).finalize().into_bytes());
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("user", user);
    if let Some(app) = app {
        query.append_pair("app", app);
    }
    query
        .append_pair("exp", &exp.to_string())
        .append_pair("nonce", &nonce)
        .append_pair("sig", &sig)
        .finish()
}

/// Whether `sig` is ours for these values (compared in constant time).
pub fn verify(key: &[u8], user: &str, exp: u64, nonce: &str, sig: &str) -> bool {
    verify_for_app(key, user, None, exp, nonce, sig)
}

/// [`verify`] for a link that may name an app.
pub fn verify_for_app(
    key: &[u8],
    user: &str,
    app: Option<&str>,
    exp: u64,
    nonce: &str,
    sig: &str,
) -> bool {
    let Ok(sig) = hex::decode(sig) else {
        return false;
    };
    mac(key, user, app, exp, nonce).verify_slice(&sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_links_verify_and_tampering_fails() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("grants.json");
        let key = load_or_create_key(&store).unwrap();
        assert_eq!(load_or_create_key(&store).unwrap(), key, "the key is kept");
        let q: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(sign(&key, "alice", 2_000_000_000).as_bytes())
                .into_owned()
                .collect();
        assert!(verify(&key, "alice", 2_000_000_000, &q["nonce"], &q["sig"]));
        assert!(!verify(
            &key,
            "mallory",
            2_000_000_000,
            &q["nonce"],
            &q["sig"]
        ));
        assert!(!verify(
            &key,
            "alice",
            2_000_000_001,
            &q["nonce"],
            &q["sig"]
        ));
        assert!(!verify(
            b"other key",
            "alice",
            2_000_000_000,
            &q["nonce"],
            &q["sig"]
        ));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(link_key_path(&store))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_link_is_the_login_page_beside_the_callback_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("grants.json");
        // A reverse proxy's prefix in front of `/_proxy/` stays in the link.
        let redirect = Url::parse("https://ci.example/gh/_proxy/oauth/callback").unwrap();
        let link = Url::parse(&link_for(&redirect, &store, "alice").unwrap()).unwrap();
        assert_eq!(link.host_str(), Some("ci.example"));
        assert_eq!(link.path(), "/gh/_proxy/oauth/login");
        let q: std::collections::HashMap<String, String> =
            link.query_pairs().into_owned().collect();
        assert_eq!(q["user"], "alice");
        let exp: u64 = q["exp"].parse().unwrap();
        let now = crate::credentials::grants::now_ms() / 1000;
        assert!(exp > now && exp <= now + LINK_LIFETIME.as_secs());
        let key = load_or_create_key(&store).unwrap();
        assert!(verify(&key, "alice", exp, &q["nonce"], &q["sig"]));
    }
}
